"""Certifying graphs: ``nn.Module`` s written with plain, exportable operations only.

Each graph maps x (N, *input_shape) float32 raw inputs to ``score`` (N,) float32, ``flagged`` (N,)
bool (s > 0) and, with certificates, one radius (N,) float32 per norm in raw input units (0 where
not flagged or where the margin left after the rounding guard is not positive; float32's largest value
where the quotient overflows, +∞ only where it is infinite by construction). Everything a
certificate needs is computed in the forward pass: the feature-convex gradient ∇g(φ(x)) is the
reverse pass unrolled by hand (ReLU masks times the nonnegative weights, transposed), so the
exported graph holds no autograd. Constants that depend on the weights only (Lipschitz constants,
the magnitude C of g's constant terms, the orthogonal nets' error coefficients) are computed here
in float64, rounded in the safe direction and baked into the graph.

Rounding guard (the same argument as the library's ``precision="model"``, see docs/deploy.md):
the graph evaluates s itself in float32, so the margin is lowered twice by a bound on float32
evaluation error — once for the graph's own ŝ(x), once for the deployed decision at the attacked
point — each bound inflated by :data:`INFLATE` for the graph's own rounding of the bound; the
denominator's relative error is taken off as a relative slack (:data:`GRAPH_SLACK`). Underflow's absolute
error (:func:`~asymcert.certify.magnitude.underflow_error`, float32's, twice) is taken off the margin too.
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from asymcert.certify.bounded_convex import up32
from asymcert.certify.feature_convex import FLOAT_GUARD_FACTOR, GROWTH, constant_magnitude, model_magnitudes
from asymcert.certify.functional import DEFAULT_SLACK
from asymcert.certify.magnitude import FLOAT32_SAFE, Magnitudes, underflow_error
from asymcert.certify.orthogonal import U64, orthogonal_layers, score_error_bound
from asymcert.certify.threat_guard import input_rate
from asymcert.certify.threat_model import allowed_costs, gradient_interval, gradient_signs, harm_bounds
from asymcert.errors import ModelError
from asymcert.models.baselines import OrthogonalNet
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.models.linf_dist_net import LinfDistNet
from asymcert.nn.convex import ICNN, ConvexConvNet, ConvexMean
from asymcert.nn.feature_maps import Shift, rounded_to
from asymcert.nn.mean_shift import MeanShift
from asymcert.nn.orthogonal import CayleyLinear, GroupSort
from asymcert.threat import ResolvedThreatModel

EPS32 = float(torch.finfo(torch.float32).eps)  # 2⁻²³, machine epsilon (2u) of float32
U32 = EPS32 / 2
SUBNORMAL32 = 2.0**-149
"""The smallest positive float32 (a subnormal): float32's spacing below its normal range."""
MAX32 = float(torch.finfo(torch.float32).max)
"""float32's largest finite value: a radius whose float32 quotient overflows is lowered to it (the exact
quotient is then above it), so only a radius infinite by construction is reported as +∞."""
INFLATE = 1.01
"""Relative allowance for the graph's float32 computation of an ABSOLUTE error bound (a sum of at
most ~10⁵ nonnegative terms has relative error ≤ n·u ≈ 6e-3 at n = 10⁵; the bound is a bound, so
enlarging it keeps it one)."""
GRAPH_SLACK = DEFAULT_SLACK + 16 * EPS32
"""Relative amount taken off every radius: the library's allowance for a float32 gradient norm
(DEFAULT_SLACK, measured) plus the few float32 roundings of the final subtraction, division and
multiplication in the graph (≤ u each)."""


def _up32(value: float) -> float:
    """The smallest float32 ≥ ``value`` (a constant baked into the graph must not shrink)."""
    return float(up32(torch.tensor(value, dtype=torch.float64)))


def _down32(value: float) -> float:
    """The largest float32 ≤ ``value``."""
    return float(rounded_to(torch.tensor(value, dtype=torch.float64), torch.float32, up=False))


def dual_norm32(v: torch.Tensor, p: float) -> torch.Tensor:
    """‖v‖_{p*} per row in plain ops (p = 1 → max|v|, p = 2 → scaled √Σv², p = ∞ → Σ|v|): (N, d) → (N,).

    Raises:
        ModelError: a p other than 1, 2 or ∞ (the exported graphs carry these three).
    """
    a = v.abs()
    if p == 1:
        return a.amax(dim=1)
    if math.isinf(p):
        return a.sum(dim=1)
    if p == 2:  # scaled so the squares cannot overflow or underflow
        scale = a.amax(dim=1, keepdim=True).clamp_min(torch.finfo(torch.float32).tiny)
        return scale.squeeze(1) * (a / scale).square().sum(dim=1).sqrt()
    raise ModelError(f"the exported graphs certify the ℓ1, ℓ2 and ℓ∞ norms, got ℓ{p:g}")


def capped(quotient: torch.Tensor) -> torch.Tensor:
    """A float32 quotient (N,) of positive numbers with +∞ (an overflow: the exact quotient is above
    :data:`MAX32`) lowered to :data:`MAX32`, so the radius made of it stays at most the exact one."""
    return quotient.clamp_max(MAX32)


def _radius(
    margin: torch.Tensor, denominator: torch.Tensor, flagged: torch.Tensor, endless: torch.Tensor | None = None
) -> torch.Tensor:
    """margin/denominator·(1 − GRAPH_SLACK) where flagged and margin > 0, else 0: (N,) float32.

    A quotient that overflows float32 becomes :data:`MAX32` (:func:`capped`); +∞ only where ``endless`` (N,)
    bool says the exact denominator is 0 (no allowed move lowers the score: the radius is ∞ by construction)."""
    r = capped(margin / denominator) * (1.0 - GRAPH_SLACK)
    if endless is not None:
        r = torch.where(endless, torch.full_like(r, math.inf), r)
    return torch.where(flagged & (margin > 0), r, torch.zeros_like(r))


def outward32(t: torch.Tensor) -> torch.Tensor:
    """Nonnegative float64 values t (any shape) as float32 values never below them: raised by eps32 relative
    before the cast (which rounds by at most u32), and by one subnormal step (the cast rounds by half of one
    below float32's normal range: 1e-46 became 0)."""
    return (t * (1.0 + EPS32) + SUBNORMAL32).float()


def _bn_affine(norm: nn.Module, width: int) -> tuple[torch.Tensor, torch.Tensor]:
    """(scale, shift) (width,) float32 of an eval-mode batch norm's map z ↦ scale·z + shift (Identity: 1, 0)."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return torch.ones(width), torch.zeros(width)
    mean, var = cast(torch.Tensor, norm.running_mean).double(), cast(torch.Tensor, norm.running_var).double()
    scale = norm.weight.detach().double() / torch.sqrt(var + norm.eps)
    return scale.float(), (norm.bias.detach().double() - scale * mean).float()


class _ICNNPass(nn.Module):
    """g(f) and ∇g(f) of an :class:`~asymcert.nn.ICNN` in plain ops: (N, d) → (N,), (N, d)."""

    u0: torch.Tensor  # buffers: the first pass-through layer (the others are u1, c1, … by name)
    c0: torch.Tensor

    def __init__(self, g: ICNN) -> None:
        super().__init__()
        if not g.widths:
            raise ModelError("an ICNN without hidden layers cannot be exported (its forward is not a plain affine map)")
        hidden = [cast(nn.Linear, m).weight.detach().clone() for m in g.hidden]
        for k, m in enumerate(cast("list[nn.Linear]", list(g.passthrough))):
            self.register_buffer(f"u{k}", m.weight.detach().clone())
            self.register_buffer(f"c{k}", torch.zeros(m.out_features) if m.bias is None else m.bias.detach().clone())
        for k, (w, norm) in enumerate(zip(hidden, g.norms)):
            scale, shift = _bn_affine(norm, w.shape[1])
            self.register_buffer(f"w{k}", w)
            self.register_buffer(f"s{k}", scale)
            self.register_buffer(f"t{k}", shift)
        self.depth = len(hidden)

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = f.flatten(1)
        pre = [F.linear(x, self.u0, self.c0)]
        out = pre[0]
        for k in range(self.depth):
            z = F.relu(pre[k])
            normed = z * getattr(self, f"s{k}") + getattr(self, f"t{k}")
            skip = F.linear(x, getattr(self, f"u{k + 1}"), getattr(self, f"c{k + 1}"))
            out = F.linear(normed, getattr(self, f"w{k}")) + skip
            pre.append(out)
        score = out.squeeze(1)
        up = torch.ones_like(out)  # ∂s/∂out (N, 1)
        grad = up @ getattr(self, f"u{self.depth}")
        for k in reversed(range(self.depth)):
            dz = (up @ getattr(self, f"w{k}")) * getattr(self, f"s{k}")  # through W_k ≥ 0 and BN scale > 0
            up = dz * (pre[k] > 0).to(dz.dtype)  # the ReLU mask
            grad = grad + up @ getattr(self, f"u{k}")
        return score, grad.reshape(f.shape)


class _ConvexConvPass(nn.Module):
    """g(f) and ∇g(f) of a :class:`~asymcert.nn.ConvexConvNet` in plain ops: (N, C, H, W) → (N,), (N, C, H, W)."""

    stem_w: torch.Tensor  # buffers: the stem's weight, the readout, the output batch norm's map
    stem_b: torch.Tensor
    out_s: torch.Tensor
    out_t: torch.Tensor
    read_w: torch.Tensor
    read_b: torch.Tensor

    def __init__(self, g: ConvexConvNet) -> None:
        super().__init__()
        if g.stem_kernel % 2 == 0:
            raise ModelError("a convex conv net with an even stem kernel cannot be exported (its output changes size)")
        self.pad = g.stem_kernel // 2
        self.register_buffer("stem_w", g.stem.weight.detach().clone())
        self.register_buffer("stem_b", _bias(g.stem.bias, g.channels))
        self.blocks = len(g.block_convs)
        for k, (norm, conv) in enumerate(zip(g.block_norms, g.block_convs)):
            scale, shift = _bn_affine(norm, g.channels)
            self.register_buffer(f"s{k}", scale.view(1, -1, 1, 1))
            self.register_buffer(f"t{k}", shift.view(1, -1, 1, 1))
            self.register_buffer(f"w{k}", cast(nn.Conv2d, conv).weight.detach().clone())
            self.register_buffer(f"b{k}", _bias(cast(nn.Conv2d, conv).bias, g.channels))
        scale, shift = _bn_affine(g.out_norm, g.channels)
        self.register_buffer("out_s", scale.view(1, -1, 1, 1))
        self.register_buffer("out_t", shift.view(1, -1, 1, 1))
        self.register_buffer("read_w", g.readout.weight.detach().clone())
        self.register_buffer("read_b", _bias(g.readout.bias, 1))

    def forward(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        pre = [F.conv2d(f, self.stem_w, self.stem_b, padding=self.pad)]
        z = F.relu(pre[0])
        for k in range(self.blocks):
            normed = z * getattr(self, f"s{k}") + getattr(self, f"t{k}")
            pre.append(z + F.conv2d(normed, getattr(self, f"w{k}"), getattr(self, f"b{k}"), padding=1))
            z = F.relu(pre[-1])
        out = F.linear((z * self.out_s + self.out_t).flatten(1), self.read_w, self.read_b)
        up = torch.ones_like(out) @ self.read_w  # ∂s/∂(normed z) (N, C·H·W), readout ≥ 0
        dz = up.reshape(z.shape) * self.out_s
        for k in reversed(range(self.blocks)):
            da = dz * (pre[k + 1] > 0).to(dz.dtype)  # the ReLU mask of block k
            dz = da + F.conv_transpose2d(da, getattr(self, f"w{k}"), padding=1) * getattr(self, f"s{k}")
        da = dz * (pre[0] > 0).to(dz.dtype)
        return out.squeeze(1), F.conv_transpose2d(da, self.stem_w, padding=self.pad)


def _convex_pass(g: nn.Module) -> nn.Module:
    """The plain-ops pass of one input-convex network (an ICNN or a convex conv net).

    Raises:
        ModelError: any other network (nested means included), named.
    """
    if isinstance(g, ICNN):
        return _ICNNPass(g)
    if isinstance(g, ConvexConvNet):
        return _ConvexConvPass(g)
    raise ModelError(f"cannot export a feature-convex model whose g is a {type(g).__name__}")


def _bias(bias: torch.Tensor | None, width: int) -> torch.Tensor:
    """A layer's bias (width,) as a constant (zeros when it has none)."""
    return torch.zeros(width) if bias is None else bias.detach().clone()


class FeatureConvexGraph(nn.Module):
    """Score, decision and ℓp radii of a :class:`~asymcert.models.FeatureConvexClassifier` in plain ops.

    r_p = (ŝ − 2·8·eps32·M·INFLATE) / (Lip_p(φ)·‖∇g(φ(x))‖_{p*}) · (1 − GRAPH_SLACK) with
    M = Σ|∇g ⊙ φ(x)| + |ŝ| + C (:func:`~asymcert.certify.feature_convex.rounding_bound`, C =
    :func:`~asymcert.certify.feature_convex.constant_magnitude` baked in); for a mean of K networks M
    also holds the members' own terms (1/K) Σ_k (Σ|∇g_k ⊙ φ(x)| + |g_k|), as the library's
    :func:`~asymcert.certify.feature_convex.constant_terms` does (the averaged gradient and score can
    cancel terms whose rounding each member still makes).

    Args:
        model: the classifier (validated by the caller); g an ICNN (≥ 1 hidden layer), a convex conv
            net, or a mean of those (``ConvexMean``; each member exported and averaged in the graph).
        norms: norms p ∈ {1, 2, ∞} to certify; empty: score and decision only.
        threat_model: also output radii under it, in its units (:class:`ThreatTerms`), after the ℓp ones.
    Returns from ``forward``: (score (N,), flagged (N,) bool, *radii (N,) in the order of ``norms``, then
    with a threat model *threat-model radii (N,) in the same order).

    M is at least A(φ(x)), the magnitude of the terms g sums (:mod:`asymcert.certify.magnitude`, which sees
    terms that cancel), and each radius is lowered as the library's
    :func:`~asymcert.certify.feature_convex.guarded_lp_radii` lowers it (:class:`GuardGrowth`): where A may grow
    past GROWTH·M across the ball the margin pays for the excess, and no value may overflow float32.
    """

    def __init__(
        self, model: FeatureConvexClassifier, norms: tuple[float, ...], threat_model: ResolvedThreatModel | None = None
    ) -> None:
        super().__init__()
        self.phi = model.feature_map
        if threat_model is None:
            self.threat = None
        else:
            with torch.no_grad():  # the number of features φ makes of one input
                width = model.features(torch.zeros((1, *model.input_shape), dtype=torch.float64)).numel()
            self.threat = ThreatTerms(model.feature_map, threat_model, width, gradient_signs(model))
        g = model.convex
        self.passes = nn.ModuleList(_convex_pass(m) for m in (g.members if isinstance(g, ConvexMean) else [g]))
        self.balance = float(model.balance)
        self.norms = tuple(norms)
        self.lips = [_up32(model.feature_lipschitz(p)) for p in self.norms]
        self.constant = _up32(constant_magnitude(model))
        self.guard = _up32(2 * FLOAT_GUARD_FACTOR * EPS32 * INFLATE)
        with torch.no_grad():
            shape = tuple(model.features(torch.zeros((1, *model.input_shape), dtype=torch.float64)).shape[1:])
        mags = model_magnitudes(model, shape)
        self.growth = GuardGrowth(model, mags, self.norms, threat_model)
        # underflow's absolute error (no multiple of eps·M sees it), for the graph's ŝ and the deployed one
        self.underflow = _up32(2 * underflow_error(mags, torch.float32))

    def _convex(self, f: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | float]:
        """g(f) (N,), ∇g(f) (N, *f) and, for a mean of K networks, the members' own rounding terms
        (1/K) Σ_k (Σ|∇g_k ⊙ f| + |g_k|) (N,) that the averaged gradient and score may cancel (0.0 for one)."""
        outs = [p(f) for p in self.passes]
        if len(outs) == 1:
            return outs[0][0], outs[0][1], 0.0
        score = torch.stack([s for s, _ in outs], 1).mean(1)  # as ConvexMean.forward computes it
        grad = torch.stack([d for _, d in outs], 1).mean(1)
        own = torch.stack([(d * f).abs().flatten(1).sum(1) + s.abs() for s, d in outs], 1).mean(1)
        return score, grad, own

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        f = self.phi(x)
        g, grad, own = self._convex(f)
        score = g + self.balance
        flagged = score > 0
        if not self.norms:
            return score, flagged
        big, total = self.growth.magnitudes(f, x)
        magnitude = torch.maximum((grad * f).abs().flatten(1).sum(1) + score.abs() + own + self.constant, big)
        margin = score - self.guard * magnitude - self.underflow
        margin = torch.where(total < FLOAT32_SAFE, margin, torch.zeros_like(margin))  # it may overflow: no radius
        flat = grad.flatten(1)
        radii = []
        for k, (p, lip) in enumerate(zip(self.norms, self.lips)):
            rate = lip * dual_norm32(flat, p)
            at = GuardPoint(margin, rate, magnitude, big, total)
            radii.append(self.growth.lowered(_radius(margin, rate, flagged), at, k))
        if self.threat is None:
            return (score, flagged, *radii)
        x_flat = x.flatten(1)
        fallback = [self.threat.fallback(x_flat, r) for r in radii]
        if not self.threat.coordinate_wise:
            return (score, flagged, *radii, *fallback)
        costs, harmless = self.threat.costs(x_flat, flat)
        closed = []
        for p in self.norms:
            at = GuardPoint(margin, dual_norm32(costs, p), magnitude, big, total)
            r = _radius(margin, at.rate, flagged, harmless)
            closed.append(self.growth.lowered_threat(r, at, p, self.threat, x_flat))
        # as the library: the generic fallback holds under every threat model, never report less than it
        return (score, flagged, *radii, *[torch.maximum(c, f) for c, f in zip(closed, fallback)])


class GuardGrowth(nn.Module):
    """The library's lowering of radii for the deployed rounding along the move
    (:func:`~asymcert.certify.feature_convex.guarded_lp_radii`), in plain float32 ops with constants rounded up:
    A = a·|f| + a₀ and H = h·|f| + h₀ + ‖x‖₁ (raised by INFLATE), their growth per unit of ℓp move (raw units:
    ‖a‖_q·Lip_p(φ); threat-model units: ‖α ⊙ scale‖_q over the coordinates that may move, α from φ's weight
    bounds), and r ≤ (margin + k·(M − A/GROWTH)) / (rate + k·G/GROWTH) where A + G·r may pass GROWTH·M,
    r ≤ (FLOAT32_SAFE − H) / G_H always (k = 8·eps32)."""

    a: torch.Tensor  # float32 buffers: (K·n,) coefficients of A and H, (n,) rates per threat-model unit
    h: torch.Tensor
    alpha: torch.Tensor | None
    eta: torch.Tensor | None

    def __init__(
        self, model: FeatureConvexClassifier, mags: Magnitudes, norms: tuple[float, ...], tm: ResolvedThreatModel | None
    ) -> None:
        super().__init__()
        self.register_buffer("a", up32(mags.rounding))
        self.register_buffer("h", up32(mags.overflow))
        self.a0, self.h0 = _up32(mags.rounding0), _up32(mags.overflow0)
        self.k = _up32(FLOAT_GUARD_FACTOR * EPS32)
        d = math.prod(model.input_shape)
        self.grow_a, self.grow_h = [], []
        for p in norms:
            lip = model.feature_lipschitz(p)
            ones = 1.0 if p == 1 else (float(d) if math.isinf(p) else math.sqrt(d))
            ga, gh = mags.growth(p)
            self.grow_a.append(_up32(ga * lip * INFLATE))
            self.grow_h.append(_up32((gh * lip + ones) * INFLATE))
        n = None if tm is None else tm.n_features
        alpha = None if n is None else input_rate(model, mags.rounding, n)
        eta = None if n is None else input_rate(model, mags.overflow, n)
        self.register_buffer("alpha", None if alpha is None else up32(alpha))
        self.register_buffer("eta", None if eta is None else up32(eta + 1.0))

    def magnitudes(self, f: torch.Tensor, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, H) (N,) float32 at features f and inputs x, raised by INFLATE (sums of nonnegative terms)."""
        af = f.abs().flatten(1)
        big = (af @ self.a + self.a0) * INFLATE
        total = (af @ self.h + self.h0 + x.abs().flatten(1).sum(1)) * INFLATE
        return big, total

    def _solve(
        self, r: torch.Tensor, at: GuardPoint, grow_a: torch.Tensor | float, grow_h: torch.Tensor | float
    ) -> torch.Tensor:
        """r lowered where A may pass GROWTH·M within it, and capped where H may overflow (0 stays 0)."""
        needs = (at.big + grow_a * r) / GROWTH > at.mag
        top = at.margin + self.k * (at.mag - at.big / GROWTH)
        solved = top / (at.rate + self.k * grow_a / GROWTH) * (1.0 - GRAPH_SLACK)
        lowered = torch.where(needs, torch.minimum(r, solved.clamp_min(0.0)), r)
        cap = (FLOAT32_SAFE - at.total).clamp_min(0.0) / grow_h * (1.0 - GRAPH_SLACK)
        return torch.where(r > 0, torch.minimum(lowered, cap), r)

    def lowered(self, r: torch.Tensor, at: GuardPoint, k: int) -> torch.Tensor:
        """Raw ℓp radius r (N,) of the ``k``-th norm, lowered (see the class docstring)."""
        return self._solve(r, at, self.grow_a[k], self.grow_h[k])

    def lowered_threat(
        self, r: torch.Tensor, at: GuardPoint, p: float, threat: ThreatTerms, x: torch.Tensor
    ) -> torch.Tensor:
        """Threat-model radius r (N,) for norm p, lowered with the growth per threat-model unit at x (N, n)."""
        if self.alpha is None or self.eta is None:  # (not reached: a coordinate-wise φ declares its bounds)
            raise ModelError("the feature map declares no weight bounds; the graph uses the fallback")
        up, down = threat.directions(x)
        scale = torch.where(up | down, threat.scale, torch.zeros_like(threat.scale))  # float64: a tiny scale's
        grow_a = outward32(dual_norm32(self.alpha.double() * scale, p) * INFLATE)  # product is not flushed
        grow_h = outward32(dual_norm32(self.eta.double() * scale, p) * INFLATE)
        solved = self._solve(r, at, grow_a, grow_h)
        # an infinite radius stays where every allowed move from x is bounded by the domain and A, H stay
        # covered over that box: A + Σ_i α_i·(how far x_i may move), the same with H
        x64 = x.double()
        span = torch.where(up, threat.upper - x64, torch.zeros_like(x64)) + torch.where(
            down, x64 - threat.lower, torch.zeros_like(x64)
        )
        inside = ((x64 >= threat.lower) & (x64 <= threat.upper)).all(dim=1)
        box_a = (at.big.double() + (self.alpha.double() * span).sum(dim=1)) * INFLATE
        box_h = (at.total.double() + (self.eta.double() * span).sum(dim=1)) * INFLATE
        exact = (at.margin + self.k * INFLATE * at.mag).double()  # the score less its own rounding
        keep = torch.isinf(r) & inside & (exact > self.k * box_a) & (box_h < FLOAT32_SAFE)  # (NaN, ∞: False)
        # elsewhere an infinite radius (no allowed move lowers the exact score) is capped as the library caps it:
        # A may grow until the guard takes the whole exact margin, H up to overflow (solving for finite radii
        # instead gave 3× the library's radii: walkthrough 27f)
        # (quotients that overflow float32, as with tiny scales, are lowered to MAX32: never ∞ here)
        budget = (exact / self.k).float()
        room = capped((FLOAT32_SAFE - at.total).clamp_min(0.0) / grow_h)
        endless = torch.minimum(capped((budget - at.big).clamp_min(0.0) / grow_a), room) * (1.0 - GRAPH_SLACK)
        return torch.where(keep, r, torch.where(torch.isinf(r), endless, solved))


@dataclass(frozen=True)
class GuardPoint:
    """What :class:`GuardGrowth` lowers one norm's radii from, (N,) float32 each: the margin, the rate at which
    the radius spends it (its denominator), the magnitude M the guard reserved, A and H at x."""

    margin: torch.Tensor
    rate: torch.Tensor
    mag: torch.Tensor
    big: torch.Tensor
    total: torch.Tensor


class ThreatTerms(nn.Module):
    """The threat model's move costs a (N, n) in the graph: the library's own
    :func:`~asymcert.certify.threat_model.harm_bounds` (φ's weight bounds, or its slope intervals) and
    allowed directions, in float64 (ONNX double operations) with the scales and the domain as exact
    float64 constants, so the graph's costs are the library's. ``coordinate_wise`` False: φ declares
    neither weight bounds nor slopes, and the graph uses the generic fallback (raw radius / the largest
    movable scale). ``width``: the number of features φ makes of one input (default: one per input).
    ``signs`` (width,): the signs of ∇g's components that g's weights fix (monotone features,
    :func:`~asymcert.certify.threat_model.gradient_signs`), kept as the library keeps them.
    """

    scale: torch.Tensor  # float64 buffers: (n,) scale, domain and allowed directions
    lower: torch.Tensor
    upper: torch.Tensor
    can_increase: torch.Tensor
    can_decrease: torch.Tensor
    signs: torch.Tensor | None

    def __init__(
        self, phi: nn.Module, tm: ResolvedThreatModel, width: int | None = None, signs: torch.Tensor | None = None
    ) -> None:
        super().__init__()
        self.phi = phi
        self.register_buffer("signs", None if signs is None else signs.double().clone())
        zero = torch.zeros((1, tm.n_features if width is None else width), dtype=torch.float64)
        self.coordinate_wise = harm_bounds(phi, zero, zero, tm.n_features) is not None  # as the library decides
        self.register_buffer("scale", tm.scale.double().clone())
        self.register_buffer("lower", tm.lower.double().clone())
        self.register_buffer("upper", tm.upper.double().clone())
        self.register_buffer("can_increase", tm.can_increase.clone())
        self.register_buffer("can_decrease", tm.can_decrease.clone())

    def directions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down) (N, n) bool: where each coordinate of x (N, n) may move up / down (as
        :meth:`~asymcert.threat.ResolvedThreatModel.directions`: compared in float64)."""
        x64 = x.double()
        return self.can_increase & (x64 < self.upper), self.can_decrease & (x64 > self.lower)

    def costs(self, x: torch.Tensor, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(a (N, n) float32, never below the float64 costs; harmless (N,) bool, every float64 cost exactly 0:
        no allowed move lowers the score, the radius is ∞ by construction) from raw inputs x (N, n) and ∇g (N, K·n).

        The float32 ∇g gets ± GRAPH_SLACK·max_k |∇g_k| per component, as the library's precisions
        without a rigorous gradient error do (:func:`~asymcert.certify.threat_model.gradient_interval`),
        so sums that cancel are covered too."""
        grad_lo, grad_hi = gradient_interval(grad, None, GRAPH_SLACK, self.signs)
        harms = harm_bounds(self.phi, grad_lo, grad_hi, self.scale.shape[0])
        if harms is None:  # not reached: coordinate_wise was checked when the graph was built
            raise ModelError("the feature map declares no weight bounds or slopes; the graph uses the fallback")
        costs = allowed_costs(harms, self.directions(x), self.scale)
        # rounded up (a cost of 1e-46 became 0 in float32, its radius ∞); only exact zeros make an infinite radius
        return outward32(costs), costs.amax(dim=1) == 0

    def fallback(self, x: torch.Tensor, radius: torch.Tensor) -> torch.Tensor:
        """Raw ℓp radii (N,) → threat-model radii: r / max_{movable i} scale_i, rounded down (∞ if none moves;
        :data:`MAX32` where the float32 quotient overflows, e.g. scales near float32's smallest normal)."""
        up, down = self.directions(x)
        top = torch.where(up | down, self.scale, torch.zeros_like(self.scale)).amax(dim=1).float()
        scaled = torch.where(top > 0, capped(radius / top), torch.full_like(radius, math.inf)) * (1.0 - 4 * EPS32)
        return torch.where(radius > 0, scaled, torch.zeros_like(radius))


class ThreatFallbackGraph(nn.Module):
    """A certifying graph whose raw ℓp radii are followed by the generic threat-model radii
    (:meth:`ThreatTerms.fallback`): for the families without a threat-model closed form."""

    def __init__(self, inner: nn.Module, threat_model: ResolvedThreatModel) -> None:
        super().__init__()
        self.inner = inner
        self.threat = ThreatTerms(nn.Identity(), threat_model)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        out = self.inner(x)
        x_flat = x.flatten(1)
        return (*out, *[self.threat.fallback(x_flat, r) for r in out[2:]])


class LinfDistGraph(nn.Module):
    """Score, decision and radii of a binary, plain :class:`~asymcert.models.linf_dist_net.LinfDistNet`.

    The distance layers are written as Sub → Abs → ReduceMax over a broadcast (N, out, in) tensor
    (exact but for one rounding per subtraction, as the library's error analysis assumes). With
    E(r) = the library's :func:`~asymcert.certify.linf_dist.distance_error_bound` computed in the
    graph from the same per-operation magnitudes, the normalised radius is
    (m̂ − u|m̂| − 2E(0) − 2E(m̂/2))·INFLATE-guarded / 2, raw radius σ times that (rounded down);
    every ℓp radius is the ℓ∞ one (‖δ‖∞ ≤ ‖δ‖_p).

    Raises:
        ModelError: a multiclass model (no single score), or the +MLP variant (certified by a
            bisection over interval bounds, not a closed form).
    """

    mean: torch.Tensor  # buffer (1, C, 1, ...): μ_c

    def __init__(self, model: LinfDistNet, norms: tuple[float, ...]) -> None:
        super().__init__()
        if not model.binary or model.out is None:
            raise ModelError(
                "only binary, plain ℓ∞-dist nets export (a multiclass net has no single score; the +MLP "
                "variant is certified by a bisection over interval bounds, not a closed form)"
            )
        self.register_buffer(
            "mean", model.input_mean.detach().float().view(1, -1, *([1] * (len(model.input_shape) - 1)))
        )
        self.sigma = float(model.input_std)
        layers = model.distance_layers()
        self.depth = len(layers) - 1
        for k, layer in enumerate(layers):
            self.register_buffer(f"w{k}", layer.weight.detach().float().unsqueeze(0))  # (1, out, in)
            self.register_buffer(f"b{k}", _bias(layer.bias, layer.out_features).float())
        for k, shift in enumerate(model.shifts):
            self.register_buffer(f"m{k}", cast(MeanShift, shift).running_mean.detach().float())
        self.norms = tuple(norms)
        self.raw = _down32(self.sigma / 2 * (1.0 - GRAPH_SLACK))  # normalised margin → raw radius

    def _distance(self, z: torch.Tensor, k: int) -> torch.Tensor:
        """‖z − w_o‖∞ for every row o of layer k: (N, in) → (N, out)."""
        return (z.unsqueeze(1) - getattr(self, f"w{k}")).abs().amax(dim=2)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        z = ((x - self.mean) / self.sigma).flatten(1)
        mags = [(2.01, z.abs().amax(dim=1))]  # (x − μ) then / σ: two roundings
        for k in range(self.depth):
            y = self._distance(z, k)
            z = y - getattr(self, f"m{k}")
            mags += [(1.01, y.abs().amax(dim=1)), (1.01, z.abs().amax(dim=1))]
        raw = self._distance(z, self.depth)
        d = raw + getattr(self, f"b{self.depth}")
        mags += [(1.01, raw.abs().amax(dim=1)), (1.01, d.abs().amax(dim=1))]
        logits = -d
        score = logits[:, 1] - logits[:, 0]
        flagged = score > 0
        if not self.norms:
            return score, flagged
        half = score.clamp_min(0.0) / 2
        e0, e1 = torch.zeros_like(score), torch.zeros_like(score)
        for mult, mag in mags:  # distance_error_bound at r = 0 and r = m̂/2
            e0 = e0 + mult * U32 * (mag + e0)
            e1 = e1 + mult * U32 * (mag + half + e1)
        margin = score - INFLATE * (U32 * score.abs() + 2 * e0 + 2 * e1)
        r = torch.where(flagged & (margin > 0), margin * self.raw, torch.zeros_like(margin))
        return (score, flagged, *[r for _ in self.norms])


class OrthogonalGraph(nn.Module):
    """Score, decision and ℓp radii of an :class:`~asymcert.models.baselines.OrthogonalNet` (``"mlp"`` arch).

    The layers are Shift → Flatten → (Linear with the deployed Cayley weights Q as constants → MaxMin)*
    → Linear, evaluated twice: in float32 (the graph's ``score`` and ``flagged``, the deployed model's
    own arithmetic) and in float64 (the reference, as the library's default precision). The library's
    normwise error bounds (:func:`~asymcert.certify.orthogonal.score_error_bound`) are affine in
    ‖x − μ‖₂: a₃₂(x) = A·‖x − μ‖₂ + B for the float32 evaluation anywhere in the ball (plus b·r), a₆₄(x)
    likewise for the float64 reference at x; the coefficients are baked in (rounded up), so

        r_p = (ŝ₆₄ − (1 + 1e-9)·(a₆₄(x) + a₃₂(x))) / (L_p + b·c_p) · (1 − GRAPH_SLACK),

    the library's float64 certificate (ŝ₆₄ from the same float64 copy of the model the library uses,
    a₆₄ its bound), rounded down into float32.

    Raises:
        ModelError: a layer other than Shift, Flatten, CayleyLinear, MaxMin (the Fourier-domain
            Cayley convolutions of the ``"cnn"`` arch are not exported).
    """

    mu: torch.Tensor  # buffer (1, *input_shape): the Shift's μ
    mu64: torch.Tensor  # the same in float64

    def __init__(self, model: OrthogonalNet, norms: tuple[float, ...]) -> None:
        super().__init__()
        layers = orthogonal_layers(model)
        if not isinstance(layers[0], Shift) or not all(
            isinstance(m, (Shift, nn.Flatten, CayleyLinear, GroupSort)) for m in layers
        ):
            raise ModelError(
                "only orthogonal nets of the 'mlp' arch export (Shift, Flatten, CayleyLinear, MaxMin layers)"
            )
        # the reference is the library's: a float64 copy of the model (Cayley weights recomputed in float64)
        reference = orthogonal_layers(copy.deepcopy(model).double().eval())
        self.register_buffer("mu", layers[0].mean.detach().float().unsqueeze(0))
        self.register_buffer("mu64", cast(Shift, reference[0]).mean.detach().double().unsqueeze(0))
        self.steps: list[str] = []
        for k, (m, ref) in enumerate(zip(layers[1:], reference[1:])):
            if isinstance(m, CayleyLinear) and isinstance(ref, CayleyLinear):
                self.register_buffer(f"q{k}", m.weight.detach().float().clone())
                self.register_buffer(f"c{k}", _bias(m.bias, m.out_features).float())
                self.register_buffer(f"q64_{k}", ref.weight.detach().double().clone())
                self.register_buffer(f"c64_{k}", _bias(ref.bias, ref.out_features).double())
                self.steps.append(f"linear{k}")
            elif isinstance(m, GroupSort):
                if m.group_size != 2:
                    raise ModelError(f"only MaxMin (GroupSort of 2) exports, got group size {m.group_size}")
                self.steps.append("maxmin")
        d = math.prod(model.input_shape)
        self.coef_a, self.coef_b, denominators = _orthogonal_constants(model, layers, norms, d)
        self.coef_a64, self.coef_b64 = _affine_error(model, reference, layers, U64)
        self.norm_inflate = 1.0 + (d + 4) * 2.0 * U64
        self.norms = tuple(norms)
        self.denominators = [_up32(v) for v in denominators]

    def _pass(self, h: torch.Tensor, suffix: str) -> torch.Tensor:
        """The layers after the shift on h (N, d), with the constants ``q{suffix}k``/``c{suffix}k``."""
        for step in self.steps:
            if step == "maxmin":
                a, b = h.chunk(2, dim=1)
                h = torch.cat([torch.maximum(a, b), torch.minimum(a, b)], dim=1)
            else:
                k = step[len("linear") :]
                h = F.linear(h, getattr(self, f"q{suffix}{k}"), getattr(self, f"c{suffix}{k}"))
        return h.squeeze(1)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, ...]:
        score = self._pass((x - self.mu).flatten(1), "")
        flagged = score > 0
        if not self.norms:
            return score, flagged
        h64 = (x.double() - self.mu64).flatten(1)
        diff = h64.square().sum(1).sqrt() * self.norm_inflate
        reference = self._pass(h64, "64_")
        allowance = (self.coef_a + self.coef_a64) * diff + (self.coef_b + self.coef_b64)
        margin = reference - (1 + 1e-9) * allowance  # computed in float64: a relative 1e-9 covers its rounding
        radii = []
        for den in self.denominators:
            r = margin / den * (1.0 - GRAPH_SLACK) * (1.0 - EPS32)  # the last factor: the cast rounds up ≤ u32
            radii.append(torch.where(flagged & (margin > 0), r, torch.zeros_like(r)).float())
        return (score, flagged, *radii)


def _affine_error(
    model: OrthogonalNet, computing: list[nn.Module], ideal: list[nn.Module], u: float
) -> tuple[float, float]:
    """(A, B) with a(x) ≤ A·‖x − μ‖₂ + B: :func:`score_error_bound` at x of layers ``computing`` against the
    deployed ``ideal`` ones at unit roundoff ``u``, from its values at ‖x − μ‖₂ = 0 and 1 (it is affine in
    that norm; x = μ and μ + e₁, exact in float64), raised by 1e-6 relative."""
    mu = cast(Shift, ideal[0]).mean.detach().double().reshape(1, -1)
    xs = torch.cat([mu, mu + torch.nn.functional.one_hot(torch.tensor([0]), mu.shape[1]).double()])
    with torch.no_grad():
        a, _ = score_error_bound(computing, ideal, xs.reshape(2, *model.input_shape), u)
    unit = float((xs[1] - xs[0]).norm())
    return max(0.0, float(a[1] - a[0]) / unit) * (1 + 1e-6), float(a[0]) * (1 + 1e-6)


def _orthogonal_constants(
    model: OrthogonalNet, layers: list[nn.Module], norms: tuple[float, ...], d: int
) -> tuple[float, float, list[float]]:
    """(A, B, [L_p + b·c_p per norm]), float32-safe: a(x) ≤ A·‖x − μ‖₂ + B in float32 arithmetic (u32).

    a is affine in ‖x − μ‖₂ (every step of the library's analysis is), so two evaluations at
    ‖x − μ‖₂ = 0 and = 1 (x = μ and μ + e₁, exact in float64) give its coefficients; both are raised
    by 1e-6 relative for the float64 evaluation and rounded up to float32.
    """
    mu = cast(Shift, layers[0]).mean.detach().double().reshape(1, -1)
    xs = torch.cat([mu, mu + torch.nn.functional.one_hot(torch.tensor([0]), mu.shape[1]).double()])
    xs = xs.reshape(2, *model.input_shape)
    with torch.no_grad():
        a, b = score_error_bound(layers, layers, xs, U32)
    unit = float((xs[1].reshape(-1) - mu.reshape(-1)).norm())
    coef_a = max(0.0, float(a[1] - a[0]) / unit) * (1 + 1e-6)
    coef_b = float(a[0]) * (1 + 1e-6)
    slope = float(b.max()) * (1 + 1e-6)
    dens = [
        float(model.lipschitz(p)) + slope * (1.0 if p <= 2 else math.sqrt(d) if math.isinf(p) else d ** (0.5 - 1 / p))
        for p in norms
    ]
    return _up32(coef_a), _up32(coef_b), [v * (1 + 1e-9) for v in dens]
