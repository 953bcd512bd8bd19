"""Values computed once per certificate call or per chunk of inputs, and dropped with it.

A model's weights may change between two calls in ways no counter records (a write through ``.data`` bumps no
version), so nothing derived from a model outlives the call that computed it: :func:`call_scope` opens a cache
for one ``asymcert.certify`` call, :func:`chunk_scope` one for a chunk's tensors. Outside a scope every value is
computed afresh.
"""

from __future__ import annotations

import contextlib
import contextvars
from collections.abc import Callable, Iterator
from typing import Any, TypeAlias, TypeVar, cast

T = TypeVar("T")

_Cache: TypeAlias = dict[tuple[Any, ...], tuple[tuple[object, ...], Any]]
_CALL: contextvars.ContextVar[_Cache | None] = contextvars.ContextVar("asymcert_call", default=None)
"""Per certificate call (:func:`call_scope`): values of a model alone (magnitudes, rates, constants)."""
_CHUNK: contextvars.ContextVar[_Cache | None] = contextvars.ContextVar("asymcert_chunk", default=None)
"""Per chunk of inputs (:func:`chunk_scope`): values computed from that chunk's tensors, dropped with it."""


def scoped(
    kind: str, objects: tuple[object, ...], extra: tuple[Any, ...], compute: Callable[[], T], chunk: bool = False
) -> T:
    """``compute()``, kept for the rest of the open call scope (``chunk``: chunk scope), if one is open, under the
    identity of ``objects`` (held, so that no other object can take their address) and the values ``extra``."""
    cache = (_CHUNK if chunk else _CALL).get()
    if cache is None:
        return compute()
    key = (kind, *(id(o) for o in objects), *extra)
    found = cache.get(key)
    if found is not None and all(a is b for a, b in zip(found[0], objects, strict=True)):
        return cast(T, found[1])
    value = compute()
    cache[key] = (objects, value)
    return value


def scoped_per_call(kind: str, model: object, extra: tuple[Any, ...], compute: Callable[[], T]) -> T:
    """``compute()``, a value of ``model`` alone (and ``extra``), computed once inside a :func:`call_scope`."""
    return scoped(kind, (model,), extra, compute)


@contextlib.contextmanager
def call_scope() -> Iterator[None]:
    """While the block runs (one certificate call), :func:`scoped_per_call` values are computed once; outside,
    every call computes them afresh. Nested scopes share the outermost."""
    if _CALL.get() is not None:
        yield
        return
    token = _CALL.set({})
    try:
        yield
    finally:
        _CALL.reset(token)


@contextlib.contextmanager
def chunk_scope() -> Iterator[None]:
    """While the block runs (one chunk's certificate), values of its tensors are computed once; a new block
    starts empty, so memory holds one chunk's values, not every chunk's."""
    token = _CHUNK.set({})
    try:
        yield
    finally:
        _CHUNK.reset(token)
