"""Values computed once per certificate call or per chunk of inputs, and dropped with it; and values kept across
calls while the tensors they were computed from stay bit for bit the same.

A model's weights may change between two calls in ways no counter records (a write through ``.data`` bumps no
version), so a value derived from a model outlives the call that computed it only under a bitwise comparison of
everything it read (:func:`kept_while_unchanged`): :func:`call_scope` opens a cache for one ``asymcert.certify``
call, :func:`chunk_scope` one for a chunk's tensors. Outside a scope every value is computed afresh.
"""

from __future__ import annotations

import contextlib
import contextvars
import weakref
from collections.abc import Callable, Iterator, Sequence
from typing import Any, TypeAlias, TypeVar, cast

import numpy as np
import torch

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


Sources: TypeAlias = list[tuple[str, torch.Tensor]]
_KEPT: weakref.WeakKeyDictionary[Any, dict[str, tuple[Sources, Any]]] = weakref.WeakKeyDictionary()


def kept_while_unchanged(kind: str, owner: Any, sources: Sources, compute: Callable[[], T]) -> T:
    """``compute()``, kept across calls for ``owner`` (held weakly) while ``sources``, every (role, tensor) it reads,
    are bit for bit those it was computed from: names, shapes, dtypes, devices and bytes. A copy of the tensors is
    kept with the value. The comparison reads every byte once (about 0.5 ms per million float32 numbers); compare
    by role, not by place in a parameter list: tying a weight to another and keeping the old values in a new
    parameter leaves that list bit for bit the same (review 27c F1)."""
    found = _KEPT.get(owner, {}).get(kind)
    if found is not None and same_values(found[0], sources):
        return cast(T, found[1])
    value = compute()
    _KEPT.setdefault(owner, {})[kind] = ([(name, t.detach().clone()) for name, t in sources], value)
    return value


def forget_kept() -> None:
    """Drop every value :func:`kept_while_unchanged` holds (tests; memory)."""
    _KEPT.clear()


def same_values(saved: Sequence[tuple[str, torch.Tensor]], now: Sequence[tuple[str, torch.Tensor]]) -> bool:
    """Whether ``now`` holds the (role, tensor) pairs of ``saved`` again, bit for bit."""
    return len(saved) == len(now) and all(
        na == nb and a.shape == b.shape and a.dtype == b.dtype and a.device == b.device and _same_bytes(a, b)
        for (na, a), (nb, b) in zip(saved, now, strict=True)
    )


def _same_bytes(a: torch.Tensor, b: torch.Tensor) -> bool:
    """Bitwise equality of two tensors of one shape and dtype (CPU: NumPy's byte compare, 5× torch.equal's speed)."""
    a, b = a.detach(), b.detach()
    if a.device.type != "cpu":
        return bool(torch.equal(a.reshape(-1).view(torch.uint8), b.reshape(-1).view(torch.uint8)))
    x, y = a.reshape(-1).view(torch.uint8).numpy(), b.reshape(-1).view(torch.uint8).numpy()
    if x.size % 8 == 0:  # (as 8-byte words: half the time of a byte compare)
        x, y = x.view(np.int64), y.view(np.int64)
    return bool(np.array_equal(x, y))
