"""Validation of the inputs handed to a model or a certifier."""

from __future__ import annotations

import torch

from asymcert.errors import InputError


def check_inputs(x: torch.Tensor, input_shape: tuple[int, ...] | None,
                 value_range: tuple[float, float] | None = None) -> torch.Tensor:
    """Check a batch ``x`` of shape (N, *input_shape): a floating tensor, finite, optionally in range.

    Returns ``x`` unchanged. Raises :class:`InputError` naming the problem otherwise.
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"inputs must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(f"inputs must be floating point in raw units, got dtype {x.dtype} "
                         "(convert images with x.float() / 255)")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        expected = "(N, " + ", ".join(str(d) for d in input_shape) + ")"
        raise InputError(f"inputs have shape {tuple(x.shape)}, expected {expected}")
    if x.shape[0] == 0:
        return x
    finite = torch.isfinite(x).reshape(x.shape[0], -1).all(dim=1)
    if not bool(finite.all()):
        bad = torch.nonzero(~finite).flatten()[:5].tolist()
        raise InputError(f"inputs contain NaN or Inf (first bad rows: {bad})")
    if value_range is not None:
        lo, hi = value_range
        mn, mx = float(x.min()), float(x.max())
        if mn < lo or mx > hi:
            raise InputError(f"inputs range over [{mn:g}, {mx:g}] but this model expects raw values in "
                             f"[{lo:g}, {hi:g}] (pixels scaled to [0, 1]?)")
    return x
