"""Checks of certifier option values, shared by the options dataclasses' ``problems()``.

Each returns the problem with one option's value as one phrase naming it (None when it is fine), so that
:func:`~asymcert.certify.api.make_options` can refuse every bad value of a call at once, before any input is
read: a value that is not what the option takes was silently truncated, ignored, looped on forever or turned
into negative radii (options audit 27d).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Collection, Mapping
from typing import Any

import numpy as np


def _real(value: Any) -> bool:
    """A real number (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _whole(value: Any) -> bool:
    """An integer (Python's or NumPy's), not a bool."""
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def positive(name: str, value: Any, optional: bool = True) -> str | None:
    """A finite number > 0 (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not (_real(value) and math.isfinite(value) and value > 0):
        return f"{name} must be a finite number > 0, got {value!r}"
    return None


def nonnegative(name: str, value: Any, optional: bool = True) -> str | None:
    """A finite number ≥ 0 (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not (_real(value) and math.isfinite(value) and value >= 0):
        return f"{name} must be a finite number ≥ 0, got {value!r}"
    return None


def fraction(name: str, value: Any, optional: bool = True) -> str | None:
    """A number in (0, 1) (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not (_real(value) and 0 < value < 1):
        return f"{name} must be a number in (0, 1), got {value!r}"
    return None


def count(name: str, value: Any, least: int = 1, optional: bool = True) -> str | None:
    """An integer ≥ ``least`` (not a bool, not a float; None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not (_whole(value) and value >= least):
        return f"{name} must be an integer ≥ {least}, got {value!r}"
    return None


def integer(name: str, value: Any, optional: bool = True) -> str | None:
    """Any integer (a seed; not a bool, not a float; None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not _whole(value):
        return f"{name} must be an integer, got {value!r}"
    return None


def one_of(name: str, value: Any, allowed: Collection[str]) -> str | None:
    """One of the ``allowed`` names."""
    if value not in allowed:
        return f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
    return None


def per_norm_positive(name: str, value: Any) -> str | None:
    """None, a finite number > 0, or a mapping of norms to such numbers."""
    if isinstance(value, Mapping):
        bad = [positive(f"{name}[{p!r}]", v, optional=False) for p, v in value.items()]
        return next((b for b in bad if b), None)
    return positive(name, value)


def of_type(name: str, value: Any, kind: type, optional: bool = True) -> str | None:
    """An instance of ``kind`` (None allowed when ``optional``)."""
    if value is None and optional:
        return None
    if not isinstance(value, kind):
        return f"{name} must be a {kind.__module__}.{kind.__qualname__}, got {type(value).__name__}"
    return None


def found(*problems: str | None) -> list[str]:
    """The problems that are not None, in order."""
    return [p for p in problems if p is not None]
