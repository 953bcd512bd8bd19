"""Checks of certifier option values, shared by the options dataclasses' ``problems()``.

Each returns the problem with one option's value as one phrase naming it (None when it is fine), so that
:func:`~asymcert.certify.api.make_options` can refuse every bad value of a call at once, before any input is
read: a value that is not what the option takes was silently truncated, ignored, looped on forever or turned
into negative radii (options audit 27d).
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Collection, Mapping
from typing import Any

import numpy as np
import torch

from asymcert.errors import UnsoundOptionError
from asymcert.models.checks import SEED_RANGE


def _scalar(value: Any) -> Any:
    """A one-value tensor as its Python number (``sigma=torch.tensor(0.5)`` certified before these checks)."""
    if isinstance(value, torch.Tensor) and value.numel() == 1 and value.dtype != torch.bool:
        return value.item()
    return value


def _real(value: Any) -> bool:
    """A real number (Python's, NumPy's or a one-value tensor's), not a bool."""
    value = _scalar(value)
    return isinstance(value, numbers.Real) and not isinstance(value, (bool, np.bool_))


def _whole(value: Any) -> bool:
    """An integer (Python's, NumPy's or a one-value tensor's), not a bool."""
    value = _scalar(value)
    return isinstance(value, numbers.Integral) and not isinstance(value, (bool, np.bool_))


def _check(name: str, value: Any, optional: bool, ok: Callable[[Any], bool], wanted: str) -> str | None:
    """ "``name`` must be ``wanted``, got …" unless ``ok`` holds for the value (a one-value tensor as its number), or
    it is None and ``optional``."""
    if value is None and optional:
        return None
    return None if ok(_scalar(value)) else f"{name} must be {wanted}, got {value!r}"


def positive(name: str, value: Any, optional: bool = True) -> str | None:
    """A finite number > 0 (None allowed when ``optional``)."""
    return _check(name, value, optional, lambda v: _real(v) and math.isfinite(v) and v > 0, "a finite number > 0")


def nonnegative(name: str, value: Any, optional: bool = True) -> str | None:
    """A finite number ≥ 0 (None allowed when ``optional``)."""
    return _check(name, value, optional, lambda v: _real(v) and math.isfinite(v) and v >= 0, "a finite number ≥ 0")


def fraction(name: str, value: Any, optional: bool = True) -> str | None:
    """A number in (0, 1) (None allowed when ``optional``)."""
    return _check(name, value, optional, lambda v: _real(v) and 0 < v < 1, "a number in (0, 1)")


def count(name: str, value: Any, least: int = 1, optional: bool = True, most: int | None = None) -> str | None:
    """An integer in [``least``, ``most``] (not a bool, not a float; None allowed when ``optional``)."""
    span = f"≥ {least}" if most is None else f"from {least} to {most}"
    ok = lambda v: _whole(v) and least <= v and (most is None or v <= most)  # noqa: E731
    return _check(name, value, optional, ok, f"an integer {span}")


def seed(name: str, value: Any, optional: bool = True) -> str | None:
    """An integer torch can seed a generator with, in :data:`~asymcert.models.checks.SEED_RANGE` (None allowed
    when ``optional``; 2⁶⁴ ended in torch's own "Overflow when unpacking long long")."""
    low, high = SEED_RANGE
    ok = lambda v: _whole(v) and low <= v <= high  # noqa: E731
    return _check(name, value, optional, ok, "an integer from -2**63 to 2**64 - 1")


def one_of(name: str, value: Any, allowed: Collection[str]) -> str | None:
    """One of the ``allowed`` names."""
    if value not in allowed:
        return f"{name} must be one of {', '.join(map(repr, allowed))}, got {value!r}"
    return None


def per_norm_positive(name: str, value: Any) -> str | None:
    """None, a finite number > 0, or a mapping of norms to such numbers."""
    if isinstance(value, Mapping) and not isinstance(value, dict):  # (the certifiers read dicts)
        return f"{name} must be a number or a dict of numbers per norm, got a {type(value).__name__}"
    if isinstance(value, dict):
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


def refuse(who: str, problems: list[str]) -> None:
    """Raise one :class:`~asymcert.errors.UnsoundOptionError` naming ``who`` and every problem, if there is one."""
    if problems:
        raise UnsoundOptionError(f"{who}: " + "; ".join(problems))
