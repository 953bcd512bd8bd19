"""How certifiers evaluate a model: in eval mode (restored afterwards), at a checked precision, and
with the unit roundoff their rounding-error allowances use.

A certificate promises that the model's OWN decisions (computed in its dtype, by PyTorch's
kernels) do not change inside the radius. Near the decision boundary the score is tiny, and a
relative slack cannot absorb rounding there: every certifier of this package therefore takes an
ABSOLUTE bound on the rounding error of the model's score off its margin, built from the unit
roundoff u of the arithmetic (:func:`unit_roundoff`, :func:`matmul_unit_roundoff`) and the
standard dot-product bound γ_n = n·u/(1 − n·u) (:func:`gamma`; valid for any summation order,
with or without FMA).
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from torch import nn

from asymcert.errors import UnsoundOptionError

PRECISIONS = ("float64", "model")


def check_precision(precision: str) -> None:
    """Reject a precision other than ``"float64"`` (recompute in float64) or ``"model"`` (model dtype).

    Raises:
        UnsoundOptionError: (a ``ValueError``) naming the value and the accepted ones.
    """
    if precision not in PRECISIONS:
        raise UnsoundOptionError(f"precision must be 'float64' or 'model', got {precision!r}")


def check_slack(slack: float | None, name: str = "slack") -> None:
    """Reject a relative slack outside [0, 1) (a negative one would enlarge radii)."""
    if slack is not None and not 0.0 <= float(slack) < 1.0:
        raise UnsoundOptionError(f"{name} must be in [0, 1) (a relative amount taken off radii), got {slack!r}")


def unit_roundoff(dtype: torch.dtype) -> float:
    """u of a floating dtype: 2⁻²⁴ for float32, 2⁻⁵³ for float64 (bfloat16/half: their eps/2)."""
    return torch.finfo(dtype).eps / 2


def matmul_unit_roundoff(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """u to use for the matrix products and convolutions of a model in ``dtype`` on ``device``.

    float32 products may run in reduced precision: TF32 on CUDA (``allow_tf32`` flags, 10-bit
    mantissa) or bfloat16 (``torch.set_float32_matmul_precision("medium")``). The returned u is
    twice the unit roundoff of the narrowest format the settings allow (both factors of a product
    are rounded), so γ_n(u) still bounds a dot product's error.
    """
    u = unit_roundoff(dtype)
    if dtype != torch.float32:
        return u
    mode = torch.get_float32_matmul_precision()
    if mode == "medium":
        u = max(u, 2.0**-8)
    elif mode == "high":
        u = max(u, 2.0**-10)
    if torch.device(device).type == "cuda" and (
        torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32
    ):
        u = max(u, 2.0**-10)
    return u


def gamma(n: int, u: float) -> float:
    """γ_n = n·u / (1 − n·u): |fl(Σ_{i≤n} a_i b_i) − Σ a_i b_i| ≤ γ_n Σ |a_i b_i| (Higham, Thm 3.5).

    Raises:
        UnsoundOptionError: n·u ≥ 1/2 (the bound is meaningless; the model is too wide for its dtype).
    """
    nu = n * u
    if nu >= 0.5:
        raise UnsoundOptionError(f"a dot product of {n} terms at unit roundoff {u:g} has no useful error bound")
    return nu / (1.0 - nu)


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its training flag after, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
