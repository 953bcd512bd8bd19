"""The functional core of every certificate: dual norms, Lipschitz constants and safe radii.

All functions are pure and batched. Radii come out in float64 and are rounded *down*: a radius
is never larger than the exact real-number quotient of the margin and denominator it is given.
Soundness against the model's rounding is the caller's part: the margin handed to
:func:`safe_radius` must already be a lower bound on the exact margin (an absolute error bound
subtracted), and the denominator an upper bound up to ``slack`` (see :data:`DEFAULT_SLACK`).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import torch

# Relative slack for the rounding of a float32 GRADIENT NORM (and of the Lipschitz bound a radius
# is divided by): a relative error there changes a radius by the same relative amount wherever
# the input is. It must never stand in for the rounding of the SCORE: near the decision boundary
# |s| is as small as its own rounding error, whose relative size is unbounded, so certifiers
# subtract an absolute bound on the score's error from the margin (e.g.
# `feature_convex.float_guard`, the bounded pass's E_s) and use this slack only for the
# denominator. The measured relative error of a float32 dual norm of ∇g is ≤ 2.7·eps32 on the
# test models (eps32 ≈ 1.2e-7); 5e-6 ≈ 42·eps32. The audit (`asymcert audit`) recomputes every
# certificate in float64 and reports any float32 radius above its float64 value.
DEFAULT_SLACK = 5e-6


def dual_exponent(p: float) -> float:
    """q with 1/p + 1/q = 1: 1 ↔ ∞, 2 ↔ 2."""
    if p == 1:
        return math.inf
    if math.isinf(p):
        return 1.0
    return p / (p - 1.0)


def lp_norm(v: torch.Tensor, p: float) -> torch.Tensor:
    """ℓp norm of each row of ``v`` (N, ...) → (N,), computed in float64 without overflow."""
    v = v.reshape(v.shape[0], -1).double()
    if math.isinf(p):  # max|v_i| = max(max v, −min v), exactly (NaN stays NaN): 4× vector_norm's speed here
        return torch.maximum(v.amax(dim=1), v.amin(dim=1).neg_()).abs_()  # (abs: +0.0 for a row of −0.0)
    if p == 1:
        return torch.linalg.vector_norm(v, ord=p, dim=1)
    if p == 2:  # one pass; rescale only when the squares may have overflowed or underflowed
        return checked_l2(torch.linalg.vector_norm(v, ord=2, dim=1), lambda: v)
    return _scaled_norm(v.abs(), p)


def checked_l2(norms: torch.Tensor, rows: Callable[[], torch.Tensor]) -> torch.Tensor:
    """ℓ2 norms (N,) computed from a plain sum of squares, with the rows where those squares may have overflowed or
    underflowed (a norm not finite, or below 10⁻¹⁴⁰) recomputed with scaling from ``rows()`` (N, d) float64, asked
    for only then."""
    risky = ~torch.isfinite(norms) | (norms < 1e-140)
    if not bool(risky.any()):
        return norms
    return torch.where(risky, _scaled_norm(rows().abs(), 2.0), norms)


def _scaled_norm(v: torch.Tensor, p: float) -> torch.Tensor:
    """ℓp norm of nonnegative rows, scaled by the row max so that v^p neither overflows nor underflows."""
    scale = v.amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float64).tiny)
    return scale.squeeze(1) * (v / scale).pow(p).sum(dim=1).pow(1.0 / p)


def dual_norm(v: torch.Tensor, p: float) -> torch.Tensor:
    """The dual of the ℓp norm, ‖v‖_{p*}, row-wise: (N, ...) → (N,) float64."""
    return lp_norm(v, dual_exponent(p))


def lp_lipschitz_of_linear_diag(scale: torch.Tensor, p: float) -> float:
    """Lipschitz constant in ℓp→ℓp of x ↦ scale ⊙ x: max |scale_i| for every p."""
    return float(scale.abs().max())


def safe_radius(margin: torch.Tensor, denominator: torch.Tensor, slack: float = DEFAULT_SLACK) -> torch.Tensor:
    """``margin / denominator`` rounded down, 0 where the margin is not positive.

    Args:
        margin: (N,) how far the decision value is from its threshold (e.g. s(x) > 0).
        denominator: (N,) the Lipschitz bound on how fast it can move per unit of input norm.
        slack: relative amount taken off to absorb the relative float error in ``denominator`` (and
            the division); the margin's error must already be subtracted (absolute, not relative).
    Returns:
        (N,) float64 radii ≥ 0 in the same units as ``margin / denominator``; ``inf`` where the
        denominator is 0 and the margin positive (a constant decision), 0 where it is NaN or negative.
    """
    m = margin.double()
    d = denominator.double()
    constant = torch.where(d == 0, math.inf, 0.0)  # (a NaN or negative denominator certifies nothing)
    r = torch.where(d > 0, m / d.clamp_min(torch.finfo(torch.float64).tiny), constant)
    r = r * (1.0 - slack)
    # one more ulp down for the float64 division itself (an infinite radius stays infinite)
    r = torch.where(torch.isinf(r), r, torch.nextafter(r, torch.zeros_like(r)))
    return torch.where(m > 0, r.clamp_min(0.0), torch.zeros_like(r))


def lipschitz_margin_radius(margin: torch.Tensor, lipschitz: float, slack: float = DEFAULT_SLACK) -> torch.Tensor:
    """Radius of a decision ``margin > 0`` whose value is ``lipschitz``-Lipschitz: margin / L, rounded down."""
    return safe_radius(margin, torch.full_like(margin, float(lipschitz), dtype=torch.float64), slack)
