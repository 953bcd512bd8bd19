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

import os
from collections.abc import Iterator
from contextlib import contextmanager, suppress

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


# twice the unit roundoff of each reduced float32 format PyTorch may use for products (both factors are rounded):
# bfloat16 keeps 8 significant bits (u = 2⁻⁸), TF32 11 (u = 2⁻¹¹)
_REDUCED_U = {"bf16": 2.0**-7, "medium": 2.0**-7, "any": 2.0**-7, "tf32": 2.0**-10, "high": 2.0**-10, "f16": 2.0**-10}
# oneDNN's own switch, read from the environment when it loads: float32 convolutions on CPU then run in bfloat16
# (review 28a F3: 2.2e-3 relative error, 45× the float guard, 3 of 2,400 decisions wrong)
_ONEDNN_FPMATH = ("ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE")


def matmul_unit_roundoff(dtype: torch.dtype, device: torch.device | str = "cpu") -> float:
    """u to use for the matrix products and convolutions of a model in ``dtype`` on ``device``.

    float32 products may run in reduced precision: TF32 (10-bit mantissa) or bfloat16, set by
    ``torch.set_float32_matmul_precision`` ("high", "medium"), by the ``fp32_precision`` settings of
    ``torch.backends`` and its oneDNN / CUDA / cuDNN matmul and convolution entries (:func:`float32_formats`),
    or on CUDA by the ``allow_tf32`` flags. The returned u is twice the unit roundoff of the narrowest
    format any of them allows (both factors of a product are rounded), so γ_n(u) still bounds a dot
    product's error; 2⁻²⁴ when every setting is IEEE float32.
    """
    u = unit_roundoff(dtype)
    if dtype != torch.float32:
        return u
    for name in float32_formats(torch.device(device).type):
        u = max(u, _REDUCED_U.get(name, u))
    return u


def float32_formats(device_type: str) -> set[str]:
    """Every float32 precision PyTorch's settings name for products on a device type ("cpu", "cuda"): the
    legacy ``torch.get_float32_matmul_precision()`` ("highest", "high", "medium") and the ``fp32_precision``
    values ("ieee", "tf32", "bf16", "none") of ``torch.backends`` and of the backend's matmul and convolution
    entries (oneDNN on CPU; CUDA and cuDNN on GPU), plus "tf32" where a CUDA ``allow_tf32`` flag is set, and on
    CPU oneDNN's own ``ONEDNN_DEFAULT_FPMATH_MODE`` / ``DNNL_DEFAULT_FPMATH_MODE`` ("strict", "bf16", "f16",
    "tf32", "any"; read from the environment, where oneDNN reads it when it loads).

    A child's value overrides its parent's in PyTorch; all are taken here, so a mix is read as its narrowest
    (looser bounds, never wrong ones). The legacy getter raises once the two APIs were mixed; then the new
    API's values stand alone (the getter's RuntimeError crashed every certificate before, session 28).
    """
    backends = torch.backends
    entries: list[object] = [backends]
    if device_type == "cuda":
        entries += [backends.cuda.matmul, backends.cudnn, getattr(backends.cudnn, "conv", None)]
    else:
        mkldnn = backends.mkldnn
        entries += [mkldnn, getattr(mkldnn, "matmul", None), getattr(mkldnn, "conv", None)]
    names = {str(getattr(entry, "fp32_precision", "none")) for entry in entries if entry is not None}
    with suppress(RuntimeError):  # (raised once the legacy and the new API were mixed: the values above stand)
        names.add(torch.get_float32_matmul_precision())
    if device_type == "cuda" and _cuda_tf32_allowed():
        names.add("tf32")
    if device_type == "cpu":
        names |= {os.environ.get(var, "strict").strip().lower() for var in _ONEDNN_FPMATH}
    return names


def _cuda_tf32_allowed() -> bool:
    """Whether a CUDA ``allow_tf32`` flag is set; True when PyTorch will not say (its getters raise once the legacy
    and the new precision API were mixed: review 28c F1; TF32 is then the safe reading)."""
    try:
        return bool(torch.backends.cuda.matmul.allow_tf32 or torch.backends.cudnn.allow_tf32)
    except RuntimeError:
        return True


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
