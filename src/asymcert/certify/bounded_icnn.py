"""The fast rigorous reference for one-hidden-layer ICNNs: a float32 pass for the ReLU pattern, exact
integer products for the gradient and the score.

The certified function is s(x) = g(φ(x)) + b with g(f) = wᵀ relu(U₀ f + c₀) + U₁ f + c₁ (an
:class:`~asymcert.nn.convex.ICNN` with one hidden layer of width W, no batch norm, w ≥ 0), all
weights float32 and taken as exact real numbers; f = φ(x) is the exact real feature vector (d entries).

Why a pattern may be wrong and the result still be sound. Fix any on/off pattern P ∈ {0, 1}^W and let
h_P(y) = wᵀ(P ⊙ (U₀ y + c₀)) + U₁ y + c₁. Since relu(t) ≥ P_j·t for P_j ∈ {0, 1} and w ≥ 0,
h_P ≤ g everywhere, and h_P is affine: h_P(y) = ∇h_Pᵀ y + κ_P with ∇h_P = U₁ᵀ + U₀ᵀ(P ⊙ w) and
κ_P = (P ⊙ w)ᵀc₀ + c₁. So g(y) ≥ h_P(f) + ∇h_Pᵀ(y − f) for every y, and a certificate built from a
lower bound on h_P(f) + b and an upper bound on |∇h_P| is valid whatever P is (when P is the true
pattern, h_P(f) = g(f) and ∇h_P = ∇g(f)). P only decides how tight the radius is, and whether an
UPPER bound on s is known (``uncertain``, used to decide "not flagged" without the model).

The pass, for N inputs:

1. φ in float64, step by step, with an elementwise bound e_φ on |f̂₆₄ − f| (:func:`features_with_error`;
   shift, standardize, concat-abs and identity steps, whose float64 operations are correctly rounded:
   a subtraction or a division adds u₆₄/(1 − u₆₄)·|result| (+2⁻¹⁰⁷⁴ for a division's underflow),
   |·| and concatenation add nothing, a division by σ scales the incoming bound by 1/|σ|).
2. Pattern: t̂ = fl₃₂(U₀ f̂ + c₀) with f̂ = fl₃₂(f̂₆₄), one float32 matrix product, P = [t̂ > 0].
   Its error, for ANY summation order and with or without FMA (γ_n = n·u/(1 − n·u), u = 2⁻²⁴):
   |t̂_j − t_j| ≤ |U₀ⱼ|·|f̂ − f| + γ_{d+1}(|U₀ⱼ|·|f̂| + |c₀ⱼ|) + ζ, with |f̂ − f| ≤ u|f̂| + e_φ + 2⁻¹⁵⁰
   and ζ = (d + 2)·2⁻¹²⁴·(1 + ‖U₀‖_max)(1 + max‖f̂‖₂) covering underflow even with flush-to-zero.
   By Cauchy–Schwarz this is at most α_n ρ_j + β_j with α_n = (γ_{d+1} + u)‖f̂_n‖₂ + ‖e_φ,n‖₂ +
   √d·2⁻¹⁵⁰, ρ_j = ‖U₀ⱼ‖₂, β_j = γ_{d+1}|c₀ⱼ| + ζ (each inflated by BOUND_SAFETY and rounded up to
   float32, which covers the float32 evaluation of α ρ + β). A unit with |t̂| ≤ α ρ + β is a
   *candidate*, and so is every unit of a row with ‖f̂‖₂·max ρ + max|c₀| ≥ 2¹²⁰ (elsewhere no partial
   sum can overflow, so t̂ is finite): its t is recomputed in float64 from f̂₆₄, with bound
   γ_{d+1}(u₆₄)(|U₀ⱼ|·|f̂₆₄| + |c₀ⱼ|) + |U₀ⱼ|·e_φ + (d + 1)·2⁻¹⁰⁷⁴ (the |U₀ⱼ|· terms again by
   Cauchy–Schwarz), and P_j is set to [t₆₄ > 0];
   where |t₆₄| does not exceed that bound the input is ``uncertain`` (P may differ from the true
   pattern: still sound, see above). Elsewhere P is the true pattern. On CPUs with bfloat16 matrix hardware
   the float32 product is replaced by two bfloat16 products with their own rigorous bound
   (:mod:`asymcert.certify.icnn_pattern`; the same P, about twice as fast). Units with w_j = 0 are left out
   of every product: they add nothing to h_P or g, whatever their pattern.
3. Gradient and κ_P, exactly up to a fixed residual. Ũ = [diag(w)U₀ | w ⊙ c₀] (W × (d+1)) is exact in
   float64 (a product of two float32 numbers has at most 48 significant bits). Each column i is scaled
   by 2^{k_i} so that its largest entry lies in [32, 64), then split by S rounding steps (round,
   subtract, ×2⁷) as 2^{k_i}Ũ_{·i} = Σ_{s<S} 2^{−7s} q_s + R with integers |q_s| ≤ 64 and
   |R| ≤ 2^{6−7S}, all exact in float64 (power-of-two scalings, and a − round(a) keeps a's low bits):
   |R_{ji}| ≤ 2^{1−7S} = 2⁻²⁷ (S = 4) of the column's largest entry. The products P q_s are integer
   matrix products (``torch._int_mm``, int8 × int8 → int32: every partial sum is below W·64 < 2³¹,
   and with P ∈ {0, 1} even a pairwise int16 accumulation of u8 × s8 products (AVX2 without VNNI,
   with either operand shifted by 128) stays below 129·64·2 < 2¹⁵, so nothing saturates), so
   (P Ũ)_{ni} = 2^{−k_i}Σ_s 2^{−7s}(P q_s)_{ni} + ε_{ni}, the first term assembled exactly in float64
   (every partial sum is a multiple of 2^{−7(S−1)} below 2⁴⁰ for W < 2²², then a power-of-two
   scaling), and |ε_{ni}| ≤ 2^{−k_i}Σ_j|R_{ji}| =: r_i (a per-model vector, summed in float64 and
   inflated by (1 + γ_W(u₆₄))·BOUND_SAFETY).
4. ĝ = U₁ + (P Ũ)_{:, :d} in float64: E_g = r_{:d} + u₆₄/(1 − u₆₄)·|ĝ| bounds |ĝ − ∇h_P| (one rounding).
   ŝ = ĝᵀ f̂₆₄ + (P Ũ)_{:, d} + c₁ + b in float64; with ∇h_P = ĝ + δ (|δ| ≤ E_g) and f = f̂₆₄ + η
   (|η| ≤ e_φ), h_P(f) + b − ŝ_exact = δᵀf̂₆₄ + ∇h_Pᵀη + ε_d, so
   |ŝ − (h_P(f) + b)| ≤ E_gᵀ|f̂₆₄| + (|ĝ| + E_g)ᵀe_φ + r_d + γ_{d+3}(u₆₄)(|ĝ|ᵀ|f̂₆₄| + |(PŨ)_{:,d}| + |c₁| + |b|),
   the whole inflated by BOUND_SAFETY (1 + 10⁻³), which covers the float64 rounding of these
   nonnegative sums (relative error below γ_{d+4}(u₆₄) ≈ 10⁻¹³).

Nothing but the pattern depends on float32 rounding, so the score and gradient are as accurate as the
float64 recomputation (bounds ~10⁻⁸ relative), at the cost of one float32 matrix product, S integer
matrix products (about 6× faster each on CPUs with VNNI) and O(N·W) elementwise work. Steps 3–4 after the
integer products run as one pass per row of a compiled kernel (``nn/_convex_kernels/icnn_gradient.cpp``; the
same gradient and bounds bitwise as PyTorch's operations, which are used where no compiler works).
Applies on CPU to exact ICNNs with one hidden layer, no batch norm, no hidden bias, float32 weights,
a feature map of the steps above, and IEEE float32 products in PyTorch's precision settings
(:func:`supports_bounded_icnn`); elsewhere ``"auto"`` uses the float64 path.
``tests/certify/test_bounded_icnn.py`` checks every bound against float64 and exact rational arithmetic.
"""

from __future__ import annotations

import ctypes
import math
import warnings
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, cast

import numpy as np
import torch
from torch import nn

from asymcert import _native
from asymcert.certify.bounded_convex import BOUND_SAFETY, U64, BoundedPass, up32
from asymcert.certify.icnn_pattern import Bf16Product, bf16_candidates, bf16_product, pattern_products
from asymcert.certify.modes import gamma, matmul_unit_roundoff
from asymcert.certify.scope import Sources, call_scope, kept_while_unchanged, scoped_per_call
from asymcert.nn.convex import ICNN
from asymcert.nn.feature_maps import Compose, ConcatAbs, Identity, Shift, Standardize

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.feature_convex import FeatureConvexClassifier

U32 = 2.0**-24
SLICES = 4  # integer slices of Ũ: residual below 2⁻²⁷ of each column's largest entry
SLICE_BITS = 7  # every slice |q| ≤ 64
ROW_TILE = 512  # rows of the float32 pattern pass per matrix product (keeps t̂ in cache)
SUMS = 9  # row sums of the gradient pass (:func:`_gradient_and_sums`)
PAIR_CHUNK = 1 << 18  # candidate units recomputed in float64 at once (all of them: 1.7 GB at 16.8 M pairs)
_STEPS = (Identity, Shift, Standardize, ConcatAbs)
_GRADIENT_SRC = Path(__file__).resolve().parent.parent / "nn" / "_convex_kernels" / "icnn_gradient.cpp"


def _steps(phi: nn.Module) -> list[nn.Module] | None:
    """The elementary maps of φ in order, or None when one of them is not an exact supported type."""
    if type(phi) is Compose:
        out: list[nn.Module] = []
        for m in phi.feature_maps:
            inner = _steps(m)
            if inner is None:
                return None
            out += inner
        return out
    return [phi] if type(phi) in _STEPS else None


def supports_bounded_icnn(model: nn.Module, device: torch.device) -> bool:
    """Whether :func:`icnn_bounded_pass` covers ``model`` on ``device``: CPU, g an exact :class:`ICNN`
    with one hidden layer, no batch norm and no hidden bias, float32 weights, φ made of identity /
    shift / standardize / concat-abs steps, IEEE float32 products in every PyTorch precision setting
    (:func:`~asymcert.certify.modes.matmul_unit_roundoff`: no bfloat16 or TF32 products)."""
    g, phi = getattr(model, "convex", None), getattr(model, "feature_map", None)
    if (
        device.type != "cpu"
        or type(g) is not ICNN
        or phi is None
        or _steps(phi) is None
        or not hasattr(model, "balance")
    ):
        return False
    if len(g.widths) != 1 or g.widths[0] >= 2**22 or type(g.norms[0]) is not nn.Identity:
        return False
    hidden = cast(nn.Linear, g.hidden[0])
    params = [p for p in g.parameters()]
    return (
        hidden.bias is None
        and all(p.dtype == torch.float32 for p in params)
        and matmul_unit_roundoff(torch.float32, device) == U32
        and hasattr(torch, "_int_mm")
        and icnn_constants(cast("FeatureConvexClassifier", model)) is not None
    )


def features_with_error(phi: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """φ(x) in float64 and an elementwise bound on its distance to the exact real φ(x).

    Args:
        phi: a feature map accepted by :func:`supports_bounded_icnn`.
        x: (N, *input_shape) inputs (their float values are the exact inputs).
    Returns:
        (f, e): (N, *feature_shape) float64 each, |f − φ(x)| ≤ e elementwise.
    """
    steps = _steps(phi)
    if steps is None:
        raise TypeError(f"{type(phi).__name__} is not a feature map of the bounded ICNN pass")
    up = U64 / (1.0 - U64)
    f = x.double()
    e = torch.zeros_like(f)
    for k, m in enumerate(steps):
        if isinstance(m, Shift):
            f = f - m.mean.double()
            e = f.abs().mul_(up) if k == 0 else e + up * f.abs()  # (the first step's e is its own error alone)
        elif isinstance(m, Standardize):
            diff = f - m.mean.double()
            scale = m.scale.double()
            f = diff / scale
            e = (e + up * diff.abs()) / scale.abs() + up * f.abs() + 2.0**-1074
        elif isinstance(m, ConcatAbs):
            f, e = torch.cat([f, f.abs()], dim=1), torch.cat([e, e], dim=1)
    return f, e.mul_(BOUND_SAFETY)


@dataclass
class IcnnConstants:
    """Per-model data of the pass (see the module docstring), for the W hidden units with w_j ≠ 0 only (the others
    add nothing to h_P or g, whatever their pattern: 674 of the demo model's 4096).

    Attributes:
        u0: (W, d) float32 U₀; c0: (W,) float32 c₀; u0_64, c0_64: the same in float64.
        rho: (W,) float32 ‖U₀ⱼ‖₂ rounded up (× BOUND_SAFETY); rho64: the same in float64.
        beta: (W,) float32 β_j rounded up.
        zeta_f: multiple of (1 + max‖f̂‖₂) in ζ.
        q: (W, S·(d+1)) int8 slices, slice s in columns s·(d+1) … (s+1)·(d+1) − 1.
        col_scale: (d+1,) float64 2^{−k_i − 7(S−1)}; resid: (d+1,) float64 r_i.
        u1: (d,) float64 U₁; c1, balance: c₁ and b (float32 values, exact as floats).
        bf16: the bfloat16 pattern product (:mod:`asymcert.certify.icnn_pattern`), None where the float32
            product is used.
    """

    u0: torch.Tensor
    c0: torch.Tensor
    u0_64: torch.Tensor
    c0_64: torch.Tensor
    rho: torch.Tensor
    rho64: torch.Tensor
    beta: torch.Tensor
    zeta_f: float
    q: torch.Tensor
    col_scale: torch.Tensor
    resid: torch.Tensor
    u1: torch.Tensor
    c1: float
    balance: float
    bf16: Bf16Product | None


def _slices(table: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Split the exact float64 (W, m) ``table`` column-wise into SLICES int8 matrices (see the docstring).

    Returns:
        (q (W, SLICES·m) int8, col_scale (m,) float64 2^{−k_i−7(S−1)}, resid (m,) float64 ≥ Σ_j |R_ji|·2^{−k_i}).
    """
    top = table.abs().amax(0)
    _, expo = torch.frexp(top)  # top = mant·2^expo with mant ∈ [0.5, 1): top·2^(6−expo) ∈ [32, 64)
    k = torch.where(top > 0, 6 - expo, torch.zeros_like(expo)).to(torch.float64)
    a = torch.ldexp(table, k)  # exact: a power-of-two scaling
    parts = []
    for _ in range(SLICES):
        q = torch.round(a)
        parts.append(q)
        a = (a - q) * 2.0**SLICE_BITS  # exact: a − round(a) keeps a's low bits; then a power of two
    resid_units = a.abs().sum(0) * 2.0 ** (-SLICE_BITS * SLICES)  # Σ|R| in units of 2^{−k}
    q8 = torch.cat(parts, 1)
    if bool((q8.abs() > 64).any()):
        raise AssertionError("integer slice out of range")  # cannot happen: |a| ≤ 64 at every step
    scale = torch.ldexp(torch.ones_like(k), -k)
    resid = resid_units * scale * (1.0 + gamma(table.shape[0], U64)) * BOUND_SAFETY
    return q8.to(torch.int8), scale * 2.0 ** (-SLICE_BITS * (SLICES - 1)), resid


def _build_constants(model: FeatureConvexClassifier) -> IcnnConstants | None:
    """The :class:`IcnnConstants` of ``model`` (None when its weights' range is not covered)."""
    g = cast(ICNN, model.convex)
    first, last = cast(nn.Linear, g.passthrough[0]), cast(nn.Linear, g.passthrough[1])
    u0 = first.weight.detach().float().contiguous()
    width, d = u0.shape
    c0 = first.bias.detach().float() if first.bias is not None else torch.zeros(width)
    w = cast(nn.Linear, g.hidden[0]).weight.detach().double().reshape(-1)
    active = (w != 0).nonzero().flatten()  # a unit with w_j = 0 adds nothing to h_P, whatever its pattern
    active = active if active.numel() else torch.zeros(1, dtype=torch.long)  # (keep one: shapes stay non-empty)
    u0, c0, w = u0[active].contiguous(), c0[active].contiguous(), w[active]
    u0_64, c0_64 = u0.double(), c0.double()
    table = torch.cat([w[:, None] * u0_64, (w * c0_64)[:, None]], 1)  # exact products of float32 numbers
    if not bool(torch.isfinite(table).all()):
        return None
    q, col_scale, resid = _slices(table)
    g_fwd = gamma(d + 1, U32)
    c1 = float(last.bias.detach().double().sum()) if last.bias is not None else 0.0
    bal = float(model.balance.detach().double())
    zeta = (d + 2) * 2.0**-124 * (1.0 + float(u0_64.abs().max()))
    if not bool(((col_scale > 2.0**-900) & (col_scale < 2.0**900)).all()):
        return None  # weights whose exact scaling would under- or overflow: not covered
    return IcnnConstants(
        u0=u0,
        c0=c0,
        u0_64=u0_64,
        c0_64=c0_64,
        rho=up32(u0_64.norm(dim=1) * BOUND_SAFETY),
        rho64=u0_64.norm(dim=1) * BOUND_SAFETY,
        beta=up32(g_fwd * c0_64.abs() * BOUND_SAFETY),
        zeta_f=zeta * BOUND_SAFETY,
        q=q,
        col_scale=col_scale,
        resid=resid,
        u1=last.weight.detach().double().reshape(-1),
        c1=c1,
        balance=bal,
        bf16=bf16_product(u0, c0),
    )


def icnn_constants(model: FeatureConvexClassifier) -> IcnnConstants | None:
    """:class:`IcnnConstants` of ``model`` (None where not covered), kept until one of the tensors they are built
    from changes (:func:`~asymcert.certify.scope.kept_while_unchanged`: a write through ``.data``, as in
    ``p.data.clamp_(min=0)``, moves neither the data pointer nor the version counter, and constants keyed on
    those certified the weights of before: scores off by 15, ℓ2 radii by 3.6 on the demo model). The comparison
    runs once per certificate call (:func:`~asymcert.certify.scope.scoped_per_call`; weights cannot change
    within one)."""
    return scoped_per_call("icnn-constants", model, (pattern_products(),), lambda: _checked_constants(model))


def _checked_constants(model: FeatureConvexClassifier) -> IcnnConstants | None:
    """:func:`icnn_constants` outside a certificate call: the kept constants if the weights are bitwise those
    they were built from, else new ones."""
    kind = f"icnn-constants:{pattern_products()}"  # (a changed setting is seen by models certified before it)
    return kept_while_unchanged(kind, model, _constant_sources(model), lambda: _build_constants(model))


def _constant_sources(model: FeatureConvexClassifier) -> Sources:
    """The tensors :func:`_build_constants` reads, by their role (U₀ and c₀, w, U₁ and c₁, b; a missing bias as
    an empty tensor), not by their place among the model's parameters."""
    g = cast(ICNN, model.convex)
    first, last, hidden = (cast(nn.Linear, m) for m in (g.passthrough[0], g.passthrough[1], g.hidden[0]))
    none = torch.empty(0)
    tensors = {"u0": first.weight, "c0": first.bias, "w": hidden.weight, "u1": last.weight, "c1": last.bias}
    return [(k, none if t is None else t.detach()) for k, t in {**tensors, "b": model.balance}.items()]


@torch.no_grad()
def icnn_bounded_pass(model: FeatureConvexClassifier, x: torch.Tensor) -> BoundedPass:
    """Score, feature gradient and rigorous bounds on their errors for a model of :func:`supports_bounded_icnn`.

    Args:
        model: the classifier (its float32 weights are taken as exact).
        x: (N, *input_shape) raw inputs on CPU.
    Returns:
        :class:`~asymcert.certify.bounded_convex.BoundedPass` for h_P (module docstring): score and
        score_error (N,) float64, grad and grad_error (N, *feature_shape) float64, uncertain (N,)
        bool, features (N, *feature_shape) float64 φ(x).

    Raises:
        ValueError: a model outside :func:`supports_bounded_icnn`.
    """
    with call_scope():  # (the support check and the pass compare the weights with the kept constants once)
        if not supports_bounded_icnn(model, x.device):
            raise ValueError("icnn_bounded_pass needs a model accepted by supports_bounded_icnn")
        consts = icnn_constants(model)
    assert consts is not None  # (supports_bounded_icnn checked it)
    f64, e_phi = features_with_error(model.feature_map, x)
    n = f64.shape[0]
    f, e = f64.reshape(n, -1), e_phi.reshape(n, -1)
    pattern, uncertain = _pattern(consts, f, e)
    grad, grad_err, sums = _gradient_and_sums(consts, pattern, f, e)
    score, score_err = _score(consts, sums)
    shape = f64.shape
    norms = torch.stack([sums[:, 6], sums[:, 7].sqrt(), sums[:, 8]], 1)
    return BoundedPass(score, score_err, grad.view(shape), grad_err.view(shape), uncertain, f64, norms)


def _pattern(consts: IcnnConstants, f: torch.Tensor, e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The ReLU pattern P (N, W) bool and ``uncertain`` (N,) bool: step 2 of the module docstring (the float32
    product, or the bfloat16 one of :mod:`asymcert.certify.icnn_pattern` where ``consts.bf16`` is set), then
    the candidates' signs in float64 (:func:`_repair`).

    Args:
        f: (N, d) float64 features f̂₆₄; e: (N, d) float64 bound on |f̂₆₄ − f|.
    """
    if consts.bf16 is not None:
        pattern, r, c = bf16_candidates(consts.bf16, f, e)
    else:
        pattern, r, c = _float32_candidates(consts, f, e)
    uncertain = torch.zeros(f.shape[0], dtype=torch.bool)
    if r.numel():
        sign, unsure = _repair(consts, f, e, r, c)
        pattern[r, c] = sign
        uncertain[r[unsure]] = True
    return pattern, uncertain


def _float32_candidates(
    consts: IcnnConstants, f: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The float32 product's pattern [t̂ > 0] (N, W) bool and its candidate units as row and column indices (K,)
    int64, sorted by row then column (step 2 of the module docstring)."""
    n, d = f.shape
    f32 = f.float()
    norm = f32.double().norm(dim=1)
    # rows where the float32 product could overflow (or φ did) get every unit recomputed in float64
    risky = ~(norm * float(consts.rho.max()) + float(consts.c0.abs().max()) < 2.0**120)
    alpha = up32(((gamma(d + 1, U32) + U32) * norm + e.norm(dim=1) + math.sqrt(d) * 2.0**-150) * BOUND_SAFETY)
    biggest = float(norm[~risky].max()) if bool((~risky).any()) else 0.0
    beta = up32(consts.beta.double() + consts.zeta_f * (1.0 + biggest))
    width = consts.u0.shape[0]
    pattern = torch.empty(n, width, dtype=torch.bool)
    tile = min(n, ROW_TILE)  # one tile's buffers, reused: t̂, its candidate bound and the candidates
    t_buf, bound_buf, cand_buf = (
        torch.empty(tile, width),
        torch.empty(tile, width),
        torch.empty(tile, width, dtype=torch.bool),
    )
    any_risky = bool(risky.any())
    rows, cols = [], []
    for lo in range(0, n, ROW_TILE):
        hi = min(n, lo + ROW_TILE)
        t = torch.addmm(consts.c0, f32[lo:hi], consts.u0.t(), out=t_buf[: hi - lo])
        torch.gt(t, 0.0, out=pattern[lo:hi])
        bound = torch.addr(beta, alpha[lo:hi], consts.rho, out=bound_buf[: hi - lo])
        cand = torch.le(t.abs_(), bound, out=cand_buf[: hi - lo])
        if any_risky:
            cand[risky[lo:hi]] = True
        idx = torch.from_numpy(np.flatnonzero(cand.numpy()))  # (NumPy's: 8× torch.nonzero's speed on a sparse mask)
        rows.append(idx // width + lo)
        cols.append(idx % width)
    return pattern, torch.cat(rows), torch.cat(cols)


def _repair(
    consts: IcnnConstants, f: torch.Tensor, e: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Pre-activations of the candidate units (rows[k], cols[k]) in float64 with their rigorous bounds.

    Returns:
        (sign (K,) bool [t₆₄ > 0], unsure (K,) bool: |t₆₄| not above its error bound, so the sign of
        the exact t is unknown).
    """
    d = f.shape[1]
    # |t₆₄ − t| ≤ |U₀ⱼ|·(γ_{d+1}(u₆₄)|f̂₆₄| + e_φ) + γ_{d+1}(u₆₄)|c₀ⱼ| + (d + 1)·2⁻¹⁰⁷⁴, and by
    # Cauchy–Schwarz |U₀ⱼ|·v ≤ ‖U₀ⱼ‖₂‖v‖₂ (both norms inflated by BOUND_SAFETY below)
    g64 = gamma(d + 1, U64)
    row_term = torch.addcmul(e, f.abs(), torch.tensor(g64, dtype=torch.float64)).norm(dim=1)
    signs, unsures = [], []
    for lo in range(0, rows.numel(), PAIR_CHUNK):  # (memory: one chunk's pairs, whatever their number)
        r, c = rows[lo : lo + PAIR_CHUNK], cols[lo : lo + PAIR_CHUNK]
        first, last = int(r[0]), int(r[-1])  # (sorted: the chunk's rows are f[first : last + 1])
        cj = consts.c0_64[c]
        t = _dot_products(f[first : last + 1], consts.u0_64, r - first, c) + cj
        err = consts.rho64[c] * row_term[r] * BOUND_SAFETY + g64 * cj.abs() + (d + 1) * 2.0**-1074
        signs.append(t > 0)
        unsures.append(~(t.abs() > err * BOUND_SAFETY))
    return torch.cat(signs), torch.cat(unsures)


def _dot_products(f: torch.Tensor, u: torch.Tensor, rows: torch.Tensor, cols: torch.Tensor) -> torch.Tensor:
    """f[rows[k]] · u[cols[k]] (K,) float64 for f (N, d) and u (W, d), pairs sorted by row, then by column (as
    :func:`_pattern` finds them): each one float64 dot product of d terms, summed in some order, as the bound of
    :func:`_repair` allows. A sampled matrix product (``torch.sparse.sampled_addmm``) reads f and u once; gathering
    K rows of each took 9× longer (14 ms against 1.6 ms for 5,500 pairs on the demo model)."""
    n = f.shape[0]
    if not bool((rows[1:] > rows[:-1]).logical_or_((rows[1:] == rows[:-1]) & (cols[1:] > cols[:-1])).all()):
        raise AssertionError("candidate pairs out of order")  # cannot happen: _pattern lists them row by row
    crow = torch.zeros(n + 1, dtype=torch.int64)
    torch.cumsum(torch.bincount(rows, minlength=n), 0, out=crow[1:])
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # (PyTorch warns once that sparse CSR tensors are in beta)
        mask = torch.sparse_csr_tensor(
            crow, cols, torch.zeros(len(cols), dtype=f.dtype), (n, u.shape[0]), check_invariants=False
        )
        return torch.sparse.sampled_addmm(mask, f, u.t()).values()


def _gradient_and_sums(
    consts: IcnnConstants, pattern: torch.Tensor, f: torch.Tensor, e: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """∇h_P (N, d) float64, its error bound E_g (N, d) and row sums (N, 9) float64 (steps 3–4): those :func:`_score`
    needs, ĝᵀf̂₆₄, |ĝ|ᵀ|f̂₆₄|, |f̂₆₄|ᵀr, |ĝ|ᵀe_φ, e_φᵀr and κ_P − c₁ = (P ⊙ w)ᵀc₀, then ΣG, ΣG² and max G of G = |ĝ| + E_g
    (the radii's dual norms), in one pass of the compiled kernel (``icnn_gradient.cpp``) where it builds, else by
    :func:`_gradient` and :func:`_row_sums`: the same gradient and bounds bitwise, the sums in another order (each
    bound holds for any order; the norms' relative rounding, about d·2⁻⁵³, is within the radii's slack).

    Args:
        pattern: (N, W) bool P; f: (N, d) float64 features f̂₆₄; e: (N, d) float64 bound on |f̂₆₄ − f|.
    """
    n, m = pattern.shape[0], consts.col_scale.numel()
    d = m - 1
    if n == 0:
        empty = torch.zeros(0, d, dtype=torch.float64)
        return empty, empty.clone(), torch.zeros(0, SUMS, dtype=torch.float64)
    parts = torch._int_mm(pattern.view(torch.int8), consts.q)  # (N, S·m) int32: slice s in columns s·m … (s+1)·m − 1
    lib = _GRADIENT_KERNEL.get()
    if lib is None:
        grad, grad_err, kappa = _gradient(consts, parts)
        big = grad.abs().add_(grad_err)
        norms = torch.stack([big.sum(1), torch.linalg.vecdot(big, big), big.amax(1)], 1)
        return grad, grad_err, torch.cat([_row_sums(consts, f, e, grad), kappa[:, None], norms], 1)
    f, e = f.contiguous(), e.contiguous()
    grad, grad_err = torch.empty(n, d, dtype=torch.float64), torch.empty(n, d, dtype=torch.float64)
    sums = torch.empty(n, SUMS, dtype=torch.float64)
    shapes = {parts: (n, SLICES * m), consts.col_scale: (m,), consts.u1: (d,), consts.resid: (m,), f: (n, d), e: (n, d)}
    for t, shape in shapes.items():  # (the kernel reads raw memory: every layout is checked first)
        if tuple(t.shape) != shape or not t.is_contiguous() or t.device.type != "cpu":
            raise AssertionError(f"gradient kernel input of shape {tuple(t.shape)}, expected {shape} contiguous")
        if t.dtype != (torch.int32 if t is parts else torch.float64):
            raise AssertionError(f"gradient kernel input of dtype {t.dtype}")
    lib.asymcert_icnn_gradient(
        parts.data_ptr(),
        n,
        d,
        SLICES,
        *(t.data_ptr() for t in (consts.col_scale, consts.u1, consts.resid)),
        U64 / (1.0 - U64),
        *(t.data_ptr() for t in (f, e, grad, grad_err, sums)),
        1 if n < 64 else torch.get_num_threads(),
    )
    return grad, grad_err, sums


def _gradient(consts: IcnnConstants, parts: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """∇h_P (N, d) float64, its error bound E_g (N, d) and κ_P − c₁ = (P ⊙ w)ᵀc₀ (N,) float64 from the integer
    products ``parts`` (N, S·m) int32 = P q_s (step 3), by PyTorch's operations.

    (P Ũ) is assembled exactly from integer products; κ's own error bound is ``consts.resid[d]``.
    """
    n, m = parts.shape[0], consts.col_scale.numel()
    d = m - 1
    parts = parts.view(n, SLICES, m)
    pu = parts[:, 0].double()
    for s in range(1, SLICES):  # exact: every partial sum is a multiple of 2^(−7(S−1)) below 2⁴⁰
        pu.add_(parts[:, s], alpha=2.0 ** (-SLICE_BITS * s))
    pu.mul_(consts.col_scale * 2.0 ** (SLICE_BITS * (SLICES - 1)))  # exact: a power-of-two scaling
    grad = pu[:, :d] + consts.u1
    grad_err = consts.resid[:d] + (U64 / (1.0 - U64)) * grad.abs()
    return grad, grad_err, pu[:, d]


def _row_sums(consts: IcnnConstants, f: torch.Tensor, e: torch.Tensor, grad: torch.Tensor) -> torch.Tensor:
    """ĝᵀf̂₆₄, |ĝ|ᵀ|f̂₆₄|, |f̂₆₄|ᵀr, |ĝ|ᵀe_φ and e_φᵀr (N, 5) float64 (:func:`_score`), by PyTorch's operations."""
    r = consts.resid[: f.shape[1]]
    fa, ga = f.abs(), grad.abs()
    return torch.stack(
        [torch.linalg.vecdot(grad, f), torch.linalg.vecdot(ga, fa), fa @ r, torch.linalg.vecdot(ga, e), e @ r], 1
    )


def _score(consts: IcnnConstants, sums: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ŝ = ĝᵀf̂₆₄ + κ + c₁ + b (N,) float64 and the bound on |ŝ − (h_P(f) + b)| of the module docstring (step 4),
    from the row sums of :func:`_gradient_and_sums` (N, 9).

    E_g = r + c|ĝ| (:func:`_gradient`, c = u₆₄/(1 − u₆₄)) enters as E_gᵀ|f̂₆₄| = rᵀ|f̂₆₄| + c|ĝ|ᵀ|f̂₆₄| and
    (|ĝ| + E_g)ᵀe_φ = (1 + c)|ĝ|ᵀe_φ + rᵀe_φ: the same nonnegative sums, in fewer passes.
    """
    d = consts.u1.numel()
    c = U64 / (1.0 - U64)
    dot, terms, f_r, g_e, e_r, kappa = sums[:, :6].unbind(1)
    score = dot + kappa + consts.c1 + consts.balance
    mag = terms + kappa.abs() + (abs(consts.c1) + abs(consts.balance))
    err = f_r + c * terms + (1.0 + c) * g_e + e_r
    err = err + consts.resid[d] + gamma(d + 3, U64) * mag
    return score, err * BOUND_SAFETY


def _declare(lib: ctypes.CDLL) -> None:
    p, i = ctypes.c_void_p, ctypes.c_int64
    lib.asymcert_icnn_gradient.argtypes = [p, i, i, i, p, p, p, ctypes.c_double, p, p, p, p, p, ctypes.c_int]
    lib.asymcert_icnn_gradient.restype = None


_GRADIENT_KERNEL = _native.LazyKernel(
    "ICNN gradient C++ kernel",
    # (no FMA contraction: the gradient and its bound come out bitwise as PyTorch's operations compute them)
    lambda: _native.build_and_load(
        _GRADIENT_SRC, "asymcert_icnn_gradient_abi_version", 2, _declare, _native.COMMON_FLAGS + ["-ffp-contract=off"]
    ),
)
