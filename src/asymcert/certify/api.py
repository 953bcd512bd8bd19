"""``certify``: one entry point that dispatches to the certifier registered for a model or a method."""

from __future__ import annotations

import math
import time
from typing import Callable, Iterable, Protocol

import torch
from torch import nn

from asymcert.certify.inputs import check_inputs
from asymcert.certify.result import Certificate, normalize_norm
from asymcert.errors import UnknownNameError


class Certifier(Protocol):
    """A certifier: ``fn(model, x, norms, **options) -> Certificate`` for one batch (already validated)."""

    def __call__(self, model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], **options) -> Certificate: ...


_CERTIFIERS: dict[str, Certifier] = {}


def register_certifier(name: str) -> Callable[[Certifier], Certifier]:
    """Decorator registering a certifier under ``name`` (e.g. ``"feature-convex"``)."""

    def deco(fn: Certifier) -> Certifier:
        _CERTIFIERS[name] = fn
        return fn

    return deco


def certifier_names() -> list[str]:
    """Names of every registered certifier."""
    _load_builtin()
    return sorted(_CERTIFIERS)


def _load_builtin() -> None:
    import asymcert.certify.feature_convex  # noqa: F401  (registers "feature-convex")
    try:  # optional families register themselves when present
        import asymcert.certify.builtin  # noqa: F401
    except ModuleNotFoundError as exc:  # pragma: no cover - only while a family is absent
        if exc.name != "asymcert.certify.builtin":
            raise


def certify(model: nn.Module, x: torch.Tensor, norms: Iterable[float | str] = (1, 2, math.inf),
            method: str | None = None, batch_size: int | None = None, check_range: bool = True,
            **options) -> Certificate:
    """Certify a batch of inputs.

    Args:
        model: a model of asymcert (or any module with an attribute ``certifier`` naming a
            registered certifier and an ``input_shape``).
        x: (N, *input_shape) inputs in raw units, on the model's device or CPU.
        norms: ℓp norms to certify (p ≥ 1; ``math.inf`` or ``"inf"`` for ℓ∞).
        method: certifier name; default ``model.certifier``.
        batch_size: split the work into chunks of this many inputs (default: all at once).
        check_range: reject inputs outside ``model.input_range`` when the model declares one.
        **options: passed to the certifier.
    Returns:
        A :class:`Certificate` with one entry per input, tensors on the model's device.

    Example:
        >>> import torch, asymcert
        >>> from asymcert.models import build_model
        >>> model = build_model({"kind": "feature-convex", "input_shape": [4],
        ...     "feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [8]}})
        >>> cert = asymcert.certify(model, torch.rand(3, 4), norms=(2, "inf"))
        >>> sorted(cert.radii) == [2.0, float("inf")]
        True
    """
    _load_builtin()
    name = method or getattr(model, "certifier", None)
    if name is None:
        raise UnknownNameError(f"{type(model).__name__} declares no certifier; pass method=, one of "
                               f"{', '.join(sorted(_CERTIFIERS))}")
    if name not in _CERTIFIERS:
        raise UnknownNameError(f"unknown certifier {name!r}; known: {', '.join(sorted(_CERTIFIERS))}")
    norms_t = tuple(dict.fromkeys(normalize_norm(p) for p in norms))
    value_range = getattr(model, "input_range", None) if check_range else None
    check_inputs(x, getattr(model, "input_shape", None), value_range)
    device = next((p.device for p in model.parameters()), x.device)
    fn = _CERTIFIERS[name]
    n = x.shape[0]
    step = n if not batch_size else max(1, int(batch_size))
    parts = []
    for start in range(0, max(n, 1), step):
        chunk = x[start:start + step].to(device)
        t0 = time.perf_counter()
        cert = fn(model, chunk, norms_t, **options)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        cert.seconds = time.perf_counter() - t0
        parts.append(cert)
    return parts[0] if len(parts) == 1 else Certificate.cat(parts)
