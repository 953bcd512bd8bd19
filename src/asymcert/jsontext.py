"""JSON text read strictly: one clear reason for anything that is not one plain JSON value.

Python's :func:`json.loads` takes a repeated key silently (the last one wins), and fails with errors of
other kinds than :class:`json.JSONDecodeError` on numbers of more than 4300 digits (``ValueError``) and
on deep nesting (``RecursionError``). :func:`parse_json` turns all of these into :class:`JsonTextError`,
whose message is one line, for the callers to word as their own error (a threat model, ``--set``, run.json).
"""

from __future__ import annotations

import json
from typing import Any


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


def parse_json(text: str) -> Any:
    """The JSON value ``text`` holds (NaN and ±Infinity literals allowed, as in :func:`json.loads`).

    Raises:
        JsonTextError: not JSON, a key repeated in one object, a number too long to read, or nesting too deep.
    """
    try:
        return json.loads(text, object_pairs_hook=_no_repeats)
    except JsonTextError:
        raise
    except json.JSONDecodeError as exc:
        raise JsonTextError(str(exc)) from None
    except RecursionError:
        raise JsonTextError("nested too deeply") from None
    except ValueError as exc:  # e.g. an integer of more than 4300 digits
        raise JsonTextError(" ".join(str(exc).split())[:200]) from None
