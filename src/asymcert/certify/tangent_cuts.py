"""Sound radii from several tangent planes of a convex g (the multi-cut certificate and its evaluator).

For s = g(φ(x)) + b with g convex, every tangent ℓ_k(z) = g(z_k) + ∇g(z_k)ᵀ(z − z_k) is a global lower
bound of g. A non-flagged feature point z has ℓ_k(z) + b ≤ 0 for every k, hence for every λ ≥ 0
(not all 0) the single half-space Σ_k λ_k (ℓ_k(z) + b) ≤ 0 contains the whole non-flagged region. In
the move v = z − z0 from z0 = φ(x) that half-space reads c·v ≥ m with

    m = Σ_k λ_k m_k,  m_k = ℓ_k(z0) + b = s_k + ∇g(z_k)ᵀ(z0 − z_k),   c = −Σ_k λ_k ∇g(z_k),

so the distance from z0 to it (m / ‖c‖_{p*}, or with a box on v the greedy closed forms of
:func:`halfspace_box_distance`) is a sound radius for ANY λ ≥ 0: a solver only proposes λ, the radius is
then evaluated here in float64 from margins m_k that already had their rounding subtracted. λ = e₀
(the tangent at z0 alone) is the closed-form certificate. Nothing here imports the certifier itself:
:mod:`asymcert.certify.feature_convex` hands in the guarded margin and a bound on the score's rounding.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import torch

from asymcert.certify.functional import dual_exponent, safe_radius
from asymcert.nn.feature_maps import EPS64

# Relative allowance for the float64 rounding of a gradient ∇g(z_k) (as the closed form's FLOAT64_SLACK:
# products of a few weight matrices carry a relative error ~depth·2⁻⁵³ of their magnitudes).
GRAD_REL_ERROR = 1e-9

ScoreError = Callable[[torch.Tensor, torch.Tensor, torch.Tensor], torch.Tensor]


@dataclass
class TangentCuts:
    """K tangent planes per input, written as moves from z0 (all float64).

    Attributes:
        margins: (N, K) m_k: a LOWER bound on ℓ_k(z0) + b (rounding, and a guard if any, subtracted).
        normals: (N, K, n) ∇g(z_k) (flattened features; in u-space under a box: scaled by the move's slope).
    """

    margins: torch.Tensor
    normals: torch.Tensor


def tangent_margins(
    z0: torch.Tensor, zk: torch.Tensor, sk: torch.Tensor, wk: torch.Tensor, sk_error: torch.Tensor
) -> torch.Tensor:
    """Lower bounds (N,) on ℓ_k(z0) + b = s_k + w_kᵀ(z0 − z_k) for one cut per input.

    Args:
        z0, zk: (N, n) feature points; sk: (N,) float64 s at z_k; wk: (N, n) ∇g(z_k) (float64);
        sk_error: (N,) bound on |ŝ_k − s_k|.
    Returns:
        (N,) float64: ŝ_k − sk_error + ŵ_kᵀ(z0 − z_k) minus the float64 dot product's rounding and
        :data:`GRAD_REL_ERROR` × Σ|w_k ⊙ (z0 − z_k)| for the gradient's own rounding.
    """
    diff = z0.double() - zk.double()
    w = wk.double()
    mag = (w.abs() * diff.abs()).sum(1)
    n = diff.shape[1]
    return sk.double() - sk_error.double() + (w * diff).sum(1) - ((n + 2) * EPS64 + GRAD_REL_ERROR) * mag


def combine(cuts: TangentCuts, lam: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(m, c): (N,) margin lower bound and (N, n) direction −Σλ_k w_k of the λ-combined half-space c·v ≥ m.

    Raises:
        ValueError: λ with a negative or non-finite entry, or all zero, in some row (the combination
            is sound only for λ ≥ 0; its scale does not matter).
    """
    lam = lam.double()
    if not bool(torch.isfinite(lam).all()) or bool((lam < 0).any()) or bool((lam.sum(1) <= 0).any()):
        raise ValueError("tangent weights λ must be finite, ≥ 0 and not all 0 in every row")
    lam = lam / lam.sum(1, keepdim=True)
    m = (lam * cuts.margins).sum(1)
    # K-term sum of λ_k m_k: its rounding is ≤ (K + 1)·eps·Σλ|m_k|
    m = m - (lam.shape[1] + 1) * EPS64 * (lam * cuts.margins.abs()).sum(1)
    c = -torch.einsum("nk,nkd->nd", lam, cuts.normals.double())
    return m, c


def halfspace_box_distance(
    c: torch.Tensor, m: torch.Tensor, p: float, low: torch.Tensor | None = None, high: torch.Tensor | None = None
) -> torch.Tensor:
    """A lower bound (N,) float64 on min ‖v‖_p over {c·v ≥ m, low ≤ v ≤ high} (inf: empty; 0 where m ≤ 0).

    Coordinate i helps by |c_i| per unit moved the sign(c_i) way, up to its room (high_i or −low_i);
    no optimum moves it by more than m/|c_i|, so rooms are capped there. The max help f(t) at budget t
    is concave and piecewise linear: ℓ∞ f = min_j (S_j + t·C_j) over rooms sorted up, ℓ1 over |c| sorted
    down, and ℓ2 bounded through its Lagrangian dual; each inverse is a max over the pieces. Sums are
    inflated by 4·d·eps and the result taken down by 2e-9 relative (and one ulp).

    Args:
        c: (N, d) float64; m: (N,) float64; p: 1, 2 or inf; low/high: (N, d) with low ≤ 0 ≤ high (None: R^d).
    """
    c, m = c.double(), m.double()
    a = c.abs()
    if high is None or low is None:
        room = torch.full_like(a, math.inf)
    else:
        room = torch.where(c > 0, high.double(), -low.double()).clamp_min(0.0)
    pos = m > 0
    mm = torch.where(pos, m, torch.ones_like(m))[:, None]
    room = torch.where(a > 0, torch.minimum(room, mm / a.clamp_min(1e-300)), torch.zeros_like(a))
    infl = 4.0 * c.shape[1] * EPS64
    reach = (a * room).sum(1) * (1 + infl)
    if math.isinf(p):
        t = _linf_inverse(a, room, mm[:, 0], infl)
    elif p == 1:
        t = _l1_inverse(a, room, mm[:, 0], infl)
    else:
        t = _l2_lower(a, room, mm[:, 0], infl)
    t = t.clamp_min(0.0) * (1 - 2e-9)  # 1e-9 for the gradients' relative rounding (GRAD_REL_ERROR), 1e-9 the rest
    t = torch.nextafter(t, torch.zeros_like(t))
    t = torch.where(reach < mm[:, 0], torch.full_like(t, math.inf), t)
    return torch.where(pos, t, torch.zeros_like(t))


def _linf_inverse(a: torch.Tensor, room: torch.Tensor, m: torch.Tensor, infl: float) -> torch.Tensor:
    """max_j (m − S_j)/C_j with rooms sorted up: S_j = Σ_{i<j} |c|·room, C_j = Σ_{i≥j} |c|."""
    order = torch.argsort(room, dim=1)
    r, w = room.gather(1, order), a.gather(1, order)
    s_before = torch.cumsum(w * r, 1) - w * r
    c_after = torch.flip(torch.cumsum(torch.flip(w, [1]), 1), [1])
    num = m[:, None] * (1 - infl) - s_before * (1 + infl)
    t = torch.where(c_after > 0, num / (c_after * (1 + infl)).clamp_min(1e-300), torch.full_like(num, -math.inf))
    return t.amax(1)


def _l1_inverse(a: torch.Tensor, room: torch.Tensor, m: torch.Tensor, infl: float) -> torch.Tensor:
    """max_j (R_j + (m − S_j)/|c|_(j)) with |c| sorted down: S_j = Σ_{i<j}|c|·room, R_j = Σ_{i<j} room."""
    order = torch.argsort(a, dim=1, descending=True)
    r, w = room.gather(1, order), a.gather(1, order)
    s_before = torch.cumsum(w * r, 1) - w * r
    r_before = torch.cumsum(r, 1) - r
    num = m[:, None] * (1 - infl) - s_before * (1 + infl)
    t = torch.where(w > 0, r_before * (1 - infl) + num / (w * (1 + infl)).clamp_min(1e-300), -math.inf)
    return t.amax(1)


def _l2_lower(a: torch.Tensor, room: torch.Tensor, m: torch.Tensor, infl: float) -> torch.Tensor:
    """√(2·D(μ*)) with D(μ) = μm + Σ_i min_{0≤v≤room}(½v² − μ|c_i|v) (weak duality: any μ ≥ 0 is a lower
    bound on ½‖v‖²); μ* = max_j (m − S_j)/Q_j over breakpoints room/|c| sorted up (water-filling)."""
    mu = _water_level(a, room, m)
    v = torch.minimum(mu[:, None] * a, room)
    terms = 0.5 * v * v - mu[:, None] * a * v
    dual = mu * m + terms.sum(1)
    err = infl * (mu * m + terms.abs().sum(1))
    return torch.sqrt((2.0 * (dual - err)).clamp_min(0.0))


def _water_level(a: torch.Tensor, room: torch.Tensor, m: torch.Tensor) -> torch.Tensor:
    """The ℓ2 water level μ ≥ 0 (N,) of v_i = min(μ·a_i, room_i) for a (N, d) ≥ 0, rooms (N, d) and
    targets m (N,): the largest (m − S_j)/Q_j over the breakpoints room/a sorted up (S_j: Σ a·room below
    breakpoint j, Q_j: Σ a² from j on), clamped at 0."""
    brk = torch.where(a > 0, room / a.clamp_min(1e-300), torch.zeros_like(a))
    order = torch.argsort(brk, dim=1)
    r, w = room.gather(1, order), a.gather(1, order)
    s_before = torch.cumsum(w * r, 1) - w * r
    q_after = torch.flip(torch.cumsum(torch.flip(w * w, [1]), 1), [1])
    mu = torch.where(q_after > 0, (m[:, None] - s_before) / q_after.clamp_min(1e-300), -math.inf).amax(1)
    return mu.clamp_min(0.0)


def worst_move(c: torch.Tensor, t: torch.Tensor, p: float) -> torch.Tensor:
    """The move v (N, n) of ℓp size t (N,) that maximises c·v (no box): at t = m/‖c‖_{p*} the closest
    point of c·v ≥ m."""
    if math.isinf(p):
        return t[:, None] * torch.sign(c)
    if p == 1:
        idx = c.abs().argmax(1)
        v = torch.zeros_like(c)
        v[torch.arange(c.shape[0]), idx] = t * torch.sign(c[torch.arange(c.shape[0]), idx])
        return v
    q = dual_exponent(p)
    mag = c.abs().pow(q - 1.0)
    direction = torch.sign(c) * mag / torch.linalg.vector_norm(mag, ord=p, dim=1, keepdim=True).clamp_min(1e-300)
    return t[:, None] * direction


def box_move(c: torch.Tensor, m: torch.Tensor, p: float, room: torch.Tensor) -> torch.Tensor:
    """The smallest-ℓp move v (N, d) with c·v = m (N,) > 0 and |v_i| ≤ room_i (N, d) in the direction sign(c_i)
    (the minimiser behind :func:`halfspace_box_distance`; as far as the rooms allow where they cannot reach m).

    ℓ∞: v_i = sign(c_i)·min(t, room_i); ℓ1: rooms filled by |c| descending; ℓ2: v_i = sign(c_i)·min(μ|c_i|, room_i).
    """
    a, m = c.abs(), m.double().clamp_min(0.0)
    room = torch.where(a > 0, torch.minimum(room, m[:, None] / a.clamp_min(1e-300)), torch.zeros_like(a))
    if math.isinf(p):
        mag = torch.minimum(_linf_inverse(a, room, m, 0.0).clamp_min(0.0)[:, None], room)
    elif p == 1:
        order = torch.argsort(a, dim=1, descending=True)
        r, w = room.gather(1, order), a.gather(1, order)
        before = torch.cumsum(w * r, 1) - w * r
        take = torch.minimum(r, ((m[:, None] - before) / w.clamp_min(1e-300)).clamp_min(0.0))
        mag = torch.zeros_like(a).scatter(1, order, torch.where(w > 0, take, torch.zeros_like(take)))
    else:
        mag = torch.minimum(_water_level(a, room, m)[:, None] * a, room)
    return torch.sign(c) * mag


def best_weights(cuts: TangentCuts, p: float, steps: int = 60, lr: float = 0.3) -> torch.Tensor:
    """λ (N, K) ≥ 0 that (approximately) maximises m(λ)/‖c(λ)‖_{p*}, by Adam on softmax logits, batched.

    Only a proposal: whatever it returns, the radius is evaluated soundly by :func:`combine` and the
    caller's division. Starts from λ ≈ e₀ and keeps each row's best λ seen (so never worse than e₀).
    """
    n, k = cuts.margins.shape
    q = dual_exponent(p)
    theta = torch.full((n, k), -8.0, dtype=torch.float64)
    theta[:, 0] = 0.0
    theta.requires_grad_(True)
    opt = torch.optim.Adam([theta], lr=lr)
    best = torch.zeros(n, k, dtype=torch.float64)
    best[:, 0] = 1.0
    best_val = _ratio(cuts, best, q).detach()
    for _ in range(steps):
        lam = torch.softmax(theta, 1)
        val = _ratio(cuts, lam, q)
        better = val.detach() > best_val
        best = torch.where(better[:, None], lam.detach(), best)
        best_val = torch.where(better, val.detach(), best_val)
        opt.zero_grad()
        (-val.clamp_min(-1e300)).sum().backward()
        opt.step()
    return best


def _ratio(cuts: TangentCuts, lam: torch.Tensor, q: float) -> torch.Tensor:
    """m(λ)/‖c(λ)‖_q (N,), differentiable in λ (an objective only; not a certified value)."""
    m = (lam * cuts.margins).sum(1)
    c = torch.einsum("nk,nkd->nd", lam, cuts.normals)
    return m / torch.linalg.vector_norm(c, ord=q, dim=1).clamp_min(1e-300)


def feature_space_radii(cuts: TangentCuts, lam: torch.Tensor, p: float, lipschitz: float, slack: float) -> torch.Tensor:
    """The sound input-space radius (N,) float64 of the λ-combined cut: m(λ)/(Lip_p(φ)·‖c(λ)‖_{p*}), rounded down.

    0 where m(λ) ≤ 0. The relative ``slack`` covers the rounding of the dual norm and the product, as
    in the closed form (:func:`~asymcert.certify.functional.safe_radius`).
    """
    m, c = combine(cuts, lam)
    q = dual_exponent(p)
    return safe_radius(m, lipschitz * torch.linalg.vector_norm(c, ord=q, dim=1), slack)


def multi_cut_feature_radii(
    score_grad: Callable[[torch.Tensor], tuple[torch.Tensor, torch.Tensor]],
    score_error: ScoreError,
    guard: ScoreError | None,
    z0: torch.Tensor,
    first: TangentCuts,
    p: float,
    lipschitz: float,
    slack: float,
    cuts: int,
) -> torch.Tensor:
    """Radii (N,) float64 of the multi-cut certificate for one norm, cut points found by Kelley steps.

    Starting from the tangent at z0 (``first``, K = 1), each step moves to the closest point of the
    current best λ-combined half-space (:func:`worst_move`, at 1.02× its distance), adds the tangent
    there (one batched ``score_grad`` call for all inputs), and re-fits λ (:func:`best_weights`). The
    largest ``guard`` over z0 and the cut points (the deployed model's rounding near the ball's edge)
    is subtracted from every margin before the radius is evaluated.

    Args:
        score_grad: z (N, n) → (s(z) (N,), ∇g(z) (N, n)), both float64 (z in flattened feature space).
        score_error: (z, ∇g, s) → (N,) bound on the rounding of the float64 s(z).
        guard: (z, ∇g, s) → (N,) the deployed model's rounding allowance, or None (exact function).
        z0: (N, n) float64 φ(x); first: the tangent at z0 (margin: rounding subtracted, no guard).
        p: the norm; lipschitz: Lip_p(φ); slack: the closed form's relative slack; cuts: K ≥ 1.
    """
    tc = first
    lam = torch.zeros_like(tc.margins)
    lam[:, 0] = 1.0
    sk, wk = score_grad(z0)
    band = guard(z0, wk, sk) if guard is not None else torch.zeros_like(sk)
    for _ in range(cuts - 1):
        m, c = combine(tc, lam)
        t = (m / torch.linalg.vector_norm(c, ord=dual_exponent(p), dim=1).clamp_min(1e-300)).clamp_min(0.0)
        t = torch.where(torch.isfinite(t), t, torch.zeros_like(t))
        zk = z0 + worst_move(c, 1.02 * t, p)
        sk, wk = score_grad(zk)
        mk = tangent_margins(z0, zk, sk, wk, score_error(zk, wk, sk))
        if guard is not None:
            band = torch.maximum(band, guard(zk, wk, sk))
        tc = TangentCuts(torch.cat([tc.margins, mk[:, None]], 1), torch.cat([tc.normals, wk.double()[:, None]], 1))
        lam = best_weights(tc, p)
    guarded = TangentCuts(tc.margins - band[:, None], tc.normals)
    return feature_space_radii(guarded, lam, p, lipschitz, slack)
