"""JSON text read strictly: one clear reason for anything that is not one plain JSON value.

Python's :func:`json.loads` takes a repeated key silently (the last one wins), and fails with errors of
other kinds than :class:`json.JSONDecodeError` on numbers of more than 4300 digits (``ValueError``) and
on deep nesting (``RecursionError``). :func:`parse_json` turns all of these into :class:`JsonTextError`,
whose message is one line, for the callers to word as their own error (a threat model, ``--set``, run.json).
:func:`typed` checks that a dataclass built from a JSON object holds the types it declares.
"""

from __future__ import annotations

import dataclasses
import json
import sys
import types
import typing
from typing import Any, TypeVar

T = TypeVar("T")


class JsonTextError(ValueError):
    """Text that is not one strict JSON value; the message is the reason, in one line."""


def _no_repeats(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    """A JSON object's members as a dict, refusing a key given twice."""
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            raise JsonTextError(f"key {key!r} appears twice in one object")
        out[key] = value
    return out


def _float_sized_int(digits: str) -> int:
    """The JSON integer ``digits`` as an int, refused (JsonTextError) beyond ±1.8·10³⁰⁸, where float64 ends."""
    value = int(digits)
    if abs(value) > sys.float_info.max:
        raise JsonTextError(f"the integer {digits[:12]}… ({len(digits)} digits) is beyond float64's range (1.8e308)")
    return value


def parse_json(text: str) -> Any:
    """The JSON value ``text`` holds (NaN and ±Infinity literals allowed, as in :func:`json.loads`).

    Raises:
        JsonTextError: not JSON, a key repeated in one object, a number too long to read, an integer beyond
            float64's range (every number here is used as one: ``math.isfinite`` of such an int raises
            OverflowError), or nesting too deep.
    """
    try:
        return json.loads(text, object_pairs_hook=_no_repeats, parse_int=_float_sized_int)
    except JsonTextError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonTextError(str(exc)) from None
    except RecursionError:
        raise JsonTextError("nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise JsonTextError(" ".join(str(exc).split())[:200]) from None


def typed(obj: T) -> T:
    """``obj``, a dataclass just built from the values of a JSON object, once every field holds the type it declares
    (a float field: a JSON number, int or float but no bool; containers item by item; a dataclass field is taken as
    built and checked already).

    >>> @dataclasses.dataclass
    ... class Point:
    ...     x: float
    ...     name: str | None
    >>> typed(Point(1, None))
    Point(x=1, name=None)
    >>> typed(Point("1", None))
    Traceback (most recent call last):
    TypeError: Point's x must be float, found str '1'

    Raises:
        TypeError: naming the first field that does not (a half-built object is never returned).
    """
    hints = typing.get_type_hints(type(obj))
    for f in dataclasses.fields(obj):  # type: ignore[arg-type]
        value = getattr(obj, f.name)
        if not _holds(value, hints[f.name]):
            want = hints[f.name].__name__ if isinstance(hints[f.name], type) else str(hints[f.name])
            raise TypeError(
                f"{type(obj).__name__}'s {f.name} must be {want}, found {type(value).__name__} {value!r:.80}"
            )
    return obj


def _holds(value: Any, hint: Any) -> bool:
    """Whether ``value`` is of the type ``hint``: Any, a union, float, int, tuple[X, ...], list[X], dict[K, V] or a
    class."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(_holds(value, arg) for arg in args)
    if hint in (float, int):  # (a JSON number: an int is a float's too; a bool is neither)
        return isinstance(value, (int, float) if hint is float else int) and not isinstance(value, bool)
    if origin in (tuple, list):
        return isinstance(value, origin) and all(_holds(v, args[0]) for v in value)
    if origin is dict:
        return isinstance(value, dict) and all(_holds(k, args[0]) and _holds(v, args[1]) for k, v in value.items())
    return isinstance(value, origin or hint)
