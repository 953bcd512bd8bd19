"""The fast feature-convex certificate: float32 passes with rigorous bounds on their rounding error.

Why it is sound. Fix the ReLU on/off pattern P that a float32 forward pass chooses, right or wrong,
and replace every ReLU by its chosen linear piece (t or 0). The result h_P is affine, and h_P ≤ g
*everywhere*: relu(t) ≥ t and relu(t) ≥ 0, and everything downstream of a ReLU in an input-convex
net (nonnegative weights, positive batch-norm scales, residual additions, ReLUs) is nondecreasing.
So for every y, g(y) ≥ h_P(y) = h_P(f) + ∇h_Pᵀ(y − f), and a certificate built from h_P(f) and
∇h_P is as valid as one built from g(f) and ∇g(f) (they coincide when P is the true pattern).

This module computes h_P(f) and ∇h_P in float32 (fast convolutions in channels-last memory
format), together with elementwise upper bounds on the rounding error of both, by the standard
model of floating-point arithmetic: a sum of n products computed in any order carries an error of
at most γ_n = n·u / (1 − n·u) times the sum of the products' magnitudes (u = 2⁻²⁴ for float32),
and errors already in the operands propagate through |W|. The bounds cost one more convolution
per layer. The final certificate uses

    margin = ŝ − E_s,   denominator = Lip_p(φ) · (‖ĝ‖_{p*} + ‖E_g‖_{p*}),

a lower bound on h_P(f) + b and an upper bound on ‖∇h_P‖_{p*}. The long readout sum is done in
float64, and its bound is γ_{n+1} times the magnitudes of its terms, never of its result: the
score is often a difference of large terms (the constant Σ w·shift + bias + b folded from the
output batch norm cancels against the balance b), and a bound relative to |ŝ| would then be far
too small. Batch norm is folded into (scale, shift) correctly rounded from the exact real values
(exact rational arithmetic around a rigorously bracketed square root), so every folded parameter
is within one rounding of its exact value, as the γ factors assume.
The bounds assume direct (non-Winograd, non-FFT, non-TF32) convolution arithmetic,
which is what PyTorch's CPU convolutions use; on other devices the float64 path is chosen.
``tests/certify/test_bounded_convex.py`` checks every bound against exact rational arithmetic on tiny nets
(including scores that cancel to ~0) and against float64 on random architectures.
"""

from __future__ import annotations

import ctypes
import math
from dataclasses import dataclass
from fractions import Fraction
from pathlib import Path
from typing import TYPE_CHECKING, cast

import torch
import torch.nn.functional as F
from torch import nn

from asymcert import _native
from asymcert.certify.modes import gamma
from asymcert.errors import ConvexityError
from asymcert.nn.convex import ConvexConvNet, NonnegConv2d, PositiveBatchNorm
from asymcert.nn.feature_maps import rounded_to

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.feature_convex import FeatureConvexClassifier

UNIT_ROUNDOFF = {torch.float32: 2.0**-24, torch.float64: 2.0**-53}
U64 = UNIT_ROUNDOFF[torch.float64]
# Relative allowance for the rounding of the (nonnegative) bound computations themselves.
BOUND_SAFETY = 1.0 + 1e-3
BACKENDS = ("auto", "cpp", "torch")


def up32(t: torch.Tensor) -> torch.Tensor:
    """``t`` as float32, each value rounded up (for nonnegative bounds, and constants that must not shrink)."""
    return rounded_to(t, torch.float32, up=True)


def compound(*rel: float) -> float:
    """∏(1 + r) − 1 for relative errors r ≥ 0, without forming 1 + r (which rounds 1 + 2⁻⁵³ to 1)."""
    out = 0.0
    for r in rel:
        out = out + r + out * r
    return out


@dataclass
class BoundedPass:
    """Score and gradient of h_P with rounding-error bounds, for N inputs.

    Attributes:
        score: (N,) float64 ŝ ≈ h_P(φ(x)) + b.
        score_error: (N,) float64 bound on |ŝ − (h_P(φ(x)) + b)|.
        grad: (N, *feature_shape) float32 ĝ ≈ ∇h_P.
        grad_error: (N, *feature_shape) float32 elementwise bound on |ĝ − ∇h_P|.
        uncertain: (N,) bool, True where some pre-activation lies within its error bound of 0, so
            that P may differ from the exact pattern (the bounds still hold for h_P ≤ g).
        features: (N, *feature_shape) float64 φ(x).
        grad_norms: (N, 3) float64 ‖G‖₁, ‖G‖₂, ‖G‖_∞ of G = |ĝ| + grad_error where the pass sums them itself
            (:mod:`asymcert.certify.bounded_icnn`), else None.
    """

    score: torch.Tensor
    score_error: torch.Tensor
    grad: torch.Tensor
    grad_error: torch.Tensor
    uncertain: torch.Tensor
    features: torch.Tensor
    grad_norms: torch.Tensor | None = None


@dataclass(frozen=True)
class BoundConstants:
    """The γ factors of :func:`bounded_pass` for one net (shared by the PyTorch and C++ paths).

    Attributes:
        stem: error of the stem pre-activation per unit of |W0|·|φ| + |b0|.
        blocks: per residual block (α, β, γ_n): the error conv runs on a(α z + β e) + α|c| with bias
            γ_n·|bias|.
        grad: error of the feature gradient per unit of |W0|ᵀ(g masked).
        readout: error of the float64 readout sum ŝ = Σ wa·z + const per unit of Σ|wa·z| + |const|
            (γ_{n+1} for the sum, and the rounding of wa = w·a itself).
    """

    stem: float
    blocks: tuple[tuple[float, float, float], ...]
    grad: float
    readout: float


def block_convs(net: ConvexConvNet) -> list[NonnegConv2d]:
    """The block convolutions of ``net`` as a typed list (the ModuleList ``block_convs``)."""
    return cast("list[NonnegConv2d]", list(net.block_convs))


def block_norms(net: ConvexConvNet) -> list[PositiveBatchNorm]:
    """The block batch norms of ``net`` as a typed list (the ModuleList ``block_norms``)."""
    return cast("list[PositiveBatchNorm]", list(net.block_norms))


def conv_bias(conv: nn.Conv2d) -> torch.Tensor:
    """(C_out,) bias of ``conv``; the convex conv net builds every convolution with one."""
    if conv.bias is None:
        raise ConvexityError(f"{type(conv).__name__} has no bias; the bounded pass needs one")
    return conv.bias


def conv_padding(conv: nn.Conv2d) -> tuple[int, ...]:
    """``conv.padding`` as ints (the convex conv net builds its convolutions with integer padding)."""
    if isinstance(conv.padding, str):
        raise ConvexityError(f"{type(conv).__name__} has padding {conv.padding!r}; the bounded pass needs ints")
    return conv.padding


def batch_norm_terms(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, ...]:
    """(γ, β, μ, σ²) of an affine batch norm with running statistics, each (C,) and detached."""
    w, b, m, v = norm.weight, norm.bias, norm.running_mean, norm.running_var
    if w is None or b is None or m is None or v is None:
        raise ConvexityError(f"{type(norm).__name__} needs affine weights and running statistics")
    return w.detach(), b.detach(), m.detach(), v.detach()


def bound_constants(net: ConvexConvNet, dtype: torch.dtype = torch.float64) -> BoundConstants:
    """The rounding-error factors of ``net``'s certificate pass in ``dtype`` (see the module docstring)."""
    u = UNIT_ROUNDOFF[dtype]
    stem = gamma(net.stem.weight[0].numel() + 1, u) + 2 * u  # the sum, and φ's own rounding (and cast)
    blocks = []
    # componentwise relative error of the backward, starting with wa32: wa = fl64(w·a) with a correctly
    # rounded (two float64 roundings), then cast to ``dtype`` (one more)
    rho = compound(u, U64, U64)
    for conv in block_convs(net):
        g_n = gamma(conv.weight[0].numel() + 1, u)
        # |y| ≤ (1 + 2u)(a z + |c|) and |y − exact| ≤ a·e + 4u(a z + |c|)
        blocks.append((g_n * (1 + 2 * u) + 4 * u * (1 + g_n), 1 + g_n, g_n))
        n_back = conv.weight.shape[0] * conv.weight.shape[2] * conv.weight.shape[3]
        # the sum, a's rounding (float64, then the cast), the product, the add
        rho = compound(rho, gamma(n_back, u), U64, u, u, u)
    w0 = net.stem.weight
    g_stem = gamma(w0.shape[0] * w0.shape[2] * w0.shape[3], u)
    grad = (g_stem + (1 + g_stem) * rho / (1 - rho)) * BOUND_SAFETY
    readout = gamma(net.readout.weight.shape[1] + 1, U64) + 3 * U64
    return BoundConstants(stem=stem, blocks=tuple(blocks), grad=grad, readout=readout)


def supports_bounded(model: nn.Module, device: torch.device) -> bool:
    """Whether :func:`bounded_pass` covers ``model`` on ``device``: a convex conv net with an odd stem
    kernel, on CPU (on GPUs, TF32 and Winograd/FFT convolutions would void the error model)."""
    convex = getattr(model, "convex", None)
    return isinstance(convex, ConvexConvNet) and device.type == "cpu" and convex.stem_kernel % 2 == 1


def _sqrt_bracket(q: Fraction, bits: int) -> tuple[Fraction, Fraction]:
    """(lo, hi) with lo ≤ √q ≤ hi and hi − lo = 1/(denominator(q)·2^bits), for a rational q ≥ 0."""
    n, d = q.numerator, q.denominator
    root = math.isqrt((n * d) << (2 * bits))  # root ≤ √(n·d·4^bits) < root + 1
    return Fraction(root, d << bits), Fraction(root + 1, d << bits)


def _rounded(lo: Fraction, hi: Fraction) -> float | None:
    """The float64 nearest to every number in [lo, hi], or None when the bracket straddles a rounding boundary."""
    a, b = float(lo), float(hi)  # float(Fraction) rounds correctly, and rounding is monotone
    return a if a == b else None


def _exact_affine(weight: float, bias: float, mean: float, var: float, eps: float) -> tuple[float, float]:
    """Correctly rounded (scale, shift) of x ↦ weight·(x − mean)/√(var + eps) + bias, all inputs exact."""
    w, b, m = Fraction(weight), Fraction(bias), Fraction(mean)
    q = Fraction(var) + Fraction(eps)
    if q <= 0:
        raise ConvexityError(f"batch norm with variance + eps = {float(q)!r} is not a positive-scale map")
    for bits in (128, 512, 2048):
        lo, hi = _sqrt_bracket(q, bits)
        scales = sorted((w / hi, w / lo))
        shifts = sorted((b - scales[0] * m, b - scales[1] * m))
        scale, shift = _rounded(*scales), _rounded(*shifts)
        if scale is not None and shift is not None:
            return scale, shift
    # the exact value lies within 2^-2000 (relative) of a rounding boundary: either side is one rounding
    return float(scales[0]), float(shifts[0])


def _affine(norm: nn.modules.batchnorm._BatchNorm) -> tuple[torch.Tensor, torch.Tensor]:
    """Eval batch norm as float64 (scale, shift) per channel, each correctly rounded from its exact value.

    A plain float64 evaluation of shift = β − scale·μ can lose every digit when β ≈ scale·μ; the
    error model of :func:`bound_constants` needs each to be within one rounding of the exact value.
    """
    weight, bias, mean, var = batch_norm_terms(norm)
    rows = zip(weight.double().tolist(), bias.double().tolist(), mean.double().tolist(), var.double().tolist())
    pairs = [_exact_affine(w, b, m, v, float(norm.eps)) for w, b, m, v in rows]
    dev = weight.device
    return (
        torch.tensor([a for a, _ in pairs], dtype=torch.float64, device=dev),
        torch.tensor([c for _, c in pairs], dtype=torch.float64, device=dev),
    )


def _channel(v: torch.Tensor) -> torch.Tensor:
    return v.view(1, -1, 1, 1)


def _readout(model: FeatureConvexClassifier, spatial: tuple[int, ...]) -> tuple[torch.Tensor, torch.Tensor, float]:
    """(wa, const, const_error): the readout folded with the output batch norm, s = Σ wa ⊙ z + const.

    ``wa`` (C, *spatial) float64, the shape of the last block's output; ``const`` () float64 =
    Σ w·shift + readout bias + balance, and ``const_error`` a bound on |const − its exact value|:
    the terms often cancel (that is what the balance is for), so the bound is γ_{n+2} times the sum of
    their magnitudes, plus the rounding of each shift, never a multiple of |const|.
    """
    net = cast(ConvexConvNet, model.convex)  # callers check supports_bounded
    a64, c64 = _affine(net.out_norm)
    w_out = net.readout.weight.detach().double().view(net.channels, *spatial)
    wa = w_out * a64.view(-1, 1, 1)
    terms = w_out * c64.view(-1, 1, 1)
    bias, balance = net.readout.bias.detach().double().sum(), model.balance.detach().double()
    const = terms.sum() + bias + balance
    terms_mag = float(terms.abs().sum())
    magnitude = terms_mag + float(bias.abs()) + float(balance.abs())
    const_error = gamma(terms.numel() + 2, U64) * magnitude + U64 * terms_mag
    return wa, const, const_error


@torch.no_grad()
def bounded_pass(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    backend: str = "auto",
    dtype: torch.dtype = torch.float64,
    uniform: bool | None = None,
) -> BoundedPass:
    """Score, feature gradient and their rounding bounds of a feature-convex conv classifier.

    Args:
        model: a :class:`~asymcert.models.FeatureConvexClassifier` whose g is a
            :class:`~asymcert.nn.convex.ConvexConvNet` (float32; batch norm is applied with its
            running statistics, i.e. eval-mode semantics, whatever the module's training flag).
        x: (N, *input_shape) raw inputs.
        backend: ``"cpp"`` (the compiled kernel), ``"torch"`` (PyTorch ops, the reference) or
            ``"auto"`` (the kernel when it builds).
        dtype: arithmetic of the pass: float64 (default; bounds of order 1e-13 relative) or float32
            (twice as fast, bounds of order 1e-3 relative on trained nets).
        uniform: (kernel only) bound the error maps by per-image constants instead of error
            convolutions: about a third less work, looser bounds. Default: True in float64 (where the
            bounds stay near 1e-8 relative), False in float32. The PyTorch path always uses the
            elementwise bounds.
    Returns:
        :class:`BoundedPass` (see its fields); φ(x) is evaluated in float64.
    """
    if dtype not in UNIT_ROUNDOFF:
        raise ValueError(f"dtype must be float32 or float64, got {dtype}")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    lib = kernels() if backend in ("auto", "cpp") else None
    if backend == "cpp" and lib is None:
        raise RuntimeError(f"the convex-conv kernel is unavailable: {kernel_error()}")
    f64 = model.features(x.double())
    if lib is not None:
        return _kernel_pass(lib, model, f64, dtype, dtype == torch.float64 if uniform is None else uniform)
    return _torch_pass(model, f64, dtype)


def _torch_pass(model: FeatureConvexClassifier, f64: torch.Tensor, dtype: torch.dtype) -> BoundedPass:
    """The bounded pass with PyTorch ops (channels-last convolutions): the reference of the kernel."""
    net = cast(ConvexConvNet, model.convex)  # callers check supports_bounded
    consts = bound_constants(net, dtype)
    u = UNIT_ROUNDOFF[dtype]
    cl = torch.channels_last
    f = f64.to(dtype).contiguous(memory_format=cl)
    n_batch = f.shape[0]

    w0 = net.stem.weight.to(dtype).contiguous(memory_format=cl)
    w0_abs = w0.abs()
    b0 = conv_bias(net.stem).to(dtype)
    stem_pad = conv_padding(net.stem)
    t = F.conv2d(f, w0, b0, padding=stem_pad)
    err = F.conv2d(f.abs(), w0_abs, b0.abs(), padding=stem_pad).mul_(consts.stem)
    uncertain = (t.abs() <= err).flatten(1).any(1)
    masks = [t > 0]
    z = t.clamp_min_(0.0)
    err.mul_(masks[0])

    scales, weights = [], []  # per block, reused by the backward
    for norm, conv, (alpha, beta, g_n) in zip(block_norms(net), block_convs(net), consts.blocks):
        a64, c64 = _affine(norm)
        a, c = _channel(a64.to(dtype)), _channel(c64.to(dtype))
        w = conv.weight.to(dtype).contiguous(memory_format=cl)
        scales.append(a)
        weights.append(w)
        bias = conv_bias(conv).to(dtype)
        y = torch.addcmul(c, z, a)
        v = torch.addcmul(c.abs() * alpha, torch.add(z, err, alpha=beta / alpha), a * alpha)
        r = F.conv2d(y, w, bias, padding=conv_padding(conv)).add_(z)
        err = err.add_(F.conv2d(v, w, bias.abs() * g_n, padding=conv_padding(conv))).add_(r.abs(), alpha=u)
        uncertain |= (r.abs() <= err).flatten(1).any(1)
        mask = r > 0
        masks.append(mask)
        z = r.clamp_min_(0.0)
        err.mul_(mask)

    wa, const, const_err = _readout(model, z.shape[2:])
    wa_hwc = wa.permute(1, 2, 0).reshape(-1)  # channels-last order, matches z's memory layout
    z_flat = z.permute(0, 2, 3, 1).reshape(n_batch, -1).double()
    score = z_flat @ wa_hwc + const
    err_flat = err.permute(0, 2, 3, 1).reshape(n_batch, -1).double()
    magnitude = z_flat.abs() @ wa_hwc.abs() + const.abs()
    score_err = err_flat @ wa_hwc.abs() + consts.readout * magnitude + const_err

    # backward with the pattern fixed; every factor before the stem is nonnegative
    g = wa.to(dtype).unsqueeze(0) * masks[-1]
    for k in range(len(net.block_convs) - 1, -1, -1):
        back = F.conv_transpose2d(g, weights[k], padding=conv_padding(block_convs(net)[k]))
        g = torch.addcmul(g, back, scales[k]).mul_(masks[k])
    grad = F.conv_transpose2d(g, w0, padding=stem_pad)
    grad_err = F.conv_transpose2d(g, w0_abs, padding=stem_pad).mul_(consts.grad)
    return BoundedPass(
        score=score,
        score_error=score_err * BOUND_SAFETY,
        grad=grad.contiguous(),
        grad_error=grad_err.contiguous(),
        uncertain=uncertain,
        features=f64,
    )


# --------------------------------------------------------------------------------------------
# the compiled kernel

_KERNEL_SRC = Path(__file__).resolve().parent.parent / "nn" / "_convex_kernels" / "convex_conv.cpp"


def _declare(lib: ctypes.CDLL) -> None:
    P, I, N, D = ctypes.c_void_p, ctypes.c_int64, ctypes.c_int, ctypes.c_double
    for sfx in ("f32", "f64"):
        fn = getattr(lib, f"asymcert_convex_conv_certify_{sfx}")
        fn.argtypes = [P, I, N, N, N, N, N, N, P, P, P, P, P, P, P, P, D, P, P, P, P, P, P, N]
        fn.restype = None


_KERNEL = _native.LazyKernel(
    "convex-conv C++ kernel",
    lambda: _native.build_and_load(_KERNEL_SRC, "asymcert_convex_conv_abi_version", 4, _declare),
)


def kernels() -> ctypes.CDLL | None:
    """The compiled convex-conv kernel, built on first call; None when unavailable (the reason is in
    :func:`kernel_error`; ``ASYMCERT_NO_KERNELS=1`` disables it)."""
    return _KERNEL.get()


def kernel_error() -> str | None:
    """Why :func:`kernels` returned None (after it was called), else None."""
    return _KERNEL.error


def _kernel_pass(
    lib: ctypes.CDLL, model: FeatureConvexClassifier, f64: torch.Tensor, dtype: torch.dtype, uniform: bool
) -> BoundedPass:
    net = cast(ConvexConvNet, model.convex)  # callers check supports_bounded
    consts = bound_constants(net, dtype)
    f = f64.to(dtype).contiguous()
    n, c_in, h, w = f.shape
    c = net.channels
    affines = [_affine(norm) for norm in block_norms(net)]
    n_blocks = len(affines)

    def to_dtype(t: torch.Tensor) -> torch.Tensor:
        return t.detach().to(dtype).contiguous()

    a_blocks = to_dtype(torch.stack([a for a, _ in affines])) if n_blocks else torch.zeros(0)
    c_blocks = to_dtype(torch.stack([s for _, s in affines])) if n_blocks else torch.zeros(0)
    w_blocks = to_dtype(torch.stack([cv.weight for cv in block_convs(net)])) if n_blocks else torch.zeros(0)
    b_blocks = to_dtype(torch.stack([conv_bias(cv) for cv in block_convs(net)])) if n_blocks else torch.zeros(0)
    wa, const, const_err = _readout(model, (h, w))
    wa = wa.contiguous()
    wa32 = wa.to(dtype).contiguous()
    prm = torch.tensor(
        [UNIT_ROUNDOFF[dtype], consts.stem, consts.grad]
        + [v for blk in consts.blocks for v in blk]
        + [1.0 if uniform else 0.0, consts.readout],
        dtype=torch.float64,
    )
    w0, b0 = to_dtype(net.stem.weight), to_dtype(conv_bias(net.stem))
    score = torch.empty(n, dtype=torch.float64)
    score_err = torch.empty(n, dtype=torch.float64)
    grad = torch.empty(n, c_in, h, w, dtype=dtype)
    grad_err = torch.empty(n, c_in, h, w, dtype=dtype)
    uncertain = torch.empty(n, dtype=torch.uint8)
    threads = 1 if n < 64 else torch.get_num_threads()
    getattr(lib, f"asymcert_convex_conv_certify_{'f32' if dtype == torch.float32 else 'f64'}")(
        f.data_ptr(),
        n,
        c_in,
        h,
        w,
        c,
        net.stem_kernel,
        n_blocks,
        w0.data_ptr(),
        b0.data_ptr(),
        w_blocks.data_ptr(),
        b_blocks.data_ptr(),
        a_blocks.data_ptr(),
        c_blocks.data_ptr(),
        wa.data_ptr(),
        wa32.data_ptr(),
        float(const),
        prm.data_ptr(),
        score.data_ptr(),
        score_err.data_ptr(),
        grad.data_ptr(),
        grad_err.data_ptr(),
        uncertain.data_ptr(),
        threads,
    )
    return BoundedPass(
        score=score,
        score_error=(score_err + const_err) * BOUND_SAFETY,
        grad=grad,
        grad_error=grad_err,
        uncertain=uncertain.bool(),
        features=f64,
    )
