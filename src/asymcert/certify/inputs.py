"""Validation of the inputs handed to a model or a certifier."""

from __future__ import annotations

import torch
from torch import nn

from asymcert.errors import InputError, ModelError
from asymcert.nn.convex import all_finite, override_problems

CHECK_CHUNK = 4096
"""Rows whose finiteness is checked at once: the check allocates O(CHECK_CHUNK × input size) bools, whatever N."""


def check_inputs(
    x: torch.Tensor, input_shape: tuple[int, ...] | None, value_range: tuple[float, float] | None = None
) -> torch.Tensor:
    """Check a batch ``x`` of shape (N, *input_shape): a floating tensor with values, finite, optionally in range.

    N = 0 is allowed (an empty batch). Returns ``x`` unchanged.

    Raises:
        InputError: not a tensor, a tensor on the meta device (no values), not floating point, the
            wrong shape, NaN/Inf entries (naming the first bad rows), or values outside ``value_range``.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
    if x.is_meta:
        raise InputError("inputs are on the meta device, they hold no values; create them on cpu or cuda")
    if not x.is_floating_point():
        raise InputError(
            f"inputs must be floating point in raw units, got dtype {x.dtype} (convert images with x.float() / 255)"
        )
    if x.dim() == 0:
        raise InputError("inputs must have shape (N, ...), one row per input; got a scalar")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        expected = "(N, " + ", ".join(str(d) for d in input_shape) + ")"
        raise InputError(f"inputs have shape {tuple(x.shape)}, expected {expected}")
    if x.shape[0] == 0 or x[0].numel() == 0:
        return x
    bad = [] if bool(torch.isfinite(x.sum())) else _non_finite_rows(x)
    if bad:
        raise InputError(f"inputs contain NaN or Inf (first bad rows: {bad})")
    if value_range is not None:
        lo, hi = value_range
        mn, mx = (float(v) for v in torch.aminmax(x))
        if mn < lo or mx > hi:
            raise InputError(
                f"inputs range over [{mn:g}, {mx:g}] but this model expects raw values in "
                f"[{lo:g}, {hi:g}] (pixels scaled to [0, 1]?)"
            )
    return x


def _non_finite_rows(x: torch.Tensor) -> list[int]:
    """The first (up to 5) rows of ``x`` (N, ...) with a NaN or an infinite entry, CHECK_CHUNK rows at a time.

    (Called only where the sum of ``x`` is not finite: a sum of finite numbers may overflow, but a NaN or an
    infinite entry always makes the sum NaN or infinite, so a finite sum proves every entry finite in one pass.)"""
    bad: list[int] = []
    for start in range(0, x.shape[0], CHECK_CHUNK):
        chunk = x[start : start + CHECK_CHUNK]
        finite = torch.isfinite(chunk).reshape(chunk.shape[0], -1).all(dim=1)
        if not bool(finite.all()):
            bad += (torch.nonzero(~finite).flatten() + start)[: 5 - len(bad)].tolist()
            if len(bad) >= 5:
                break
    return bad


def check_model(model: nn.Module) -> None:
    """Refuse a model whose weights asymcert cannot vouch for, before a certifier that does not check them itself
    uses them: the model's own ``validate()`` when it has one (e.g. the baselines' finite-weight check), else every
    floating parameter and buffer must be finite. A model built in memory with a NaN weight was certified (IBP:
    every radius 0, every decision 0) or failed inside linear algebra (orthogonal: ``torch._LinAlgError``).
    Then, whatever its ``validate()`` checked, no module may have hooks or a replaced ``forward``
    (:func:`~asymcert.nn.convex.override_problems`): the bounds assume each layer's class computes.

    Raises:
        ModelError: naming the weights that are NaN or Inf, or every hooked or replaced module by path.
    """
    validate = getattr(model, "validate", None)
    if callable(validate):
        validate()
    else:
        bad = [name for name, t in model.state_dict().items() if t.is_floating_point() and not all_finite(t)]
        if bad:
            raise ModelError(f"model weights contain NaN or Inf: {bad[:10]}")
    overrides = override_problems(model, "")
    if overrides:
        raise ModelError("model cannot be vouched for: " + "; ".join(overrides))
