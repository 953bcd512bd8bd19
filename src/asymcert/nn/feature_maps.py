"""Lipschitz feature maps φ that carry their Lipschitz constant for every ℓp norm.

A feature map is a plain ``nn.Module`` with ``lipschitz(p)``: a constant L with
‖φ(x) − φ(x')‖_p ≤ L‖x − x'‖_p for all x, x'. Statistics (means, scales) live in buffers,
so they travel with the weights; ``fit(x)`` sets them from training inputs.
"""

from __future__ import annotations

import inspect
import itertools
import math
from typing import Any, cast

import torch
from torch import nn

from asymcert.errors import ConfigError, ModelError, UnknownNameError
from asymcert.nn.convex import all_finite, declared_with_forward, defining_class

Bounds = tuple[torch.Tensor, torch.Tensor]
"""A pair (lower, upper) of elementwise bounds."""

CHECKED_NORMS = (1.0, 2.0, math.inf)
"""Norms at which :func:`feature_map_problems` evaluates every map's declared Lipschitz constant."""


class FeatureMap(nn.Module):
    """Base class: a map (N, *in_shape) → (N, *out_shape) with a known Lipschitz constant per norm."""

    kind: str = ""

    def lipschitz(self, p: float) -> float:
        """Lipschitz constant of the map from (ℓp, input) to (ℓp, features)."""
        raise NotImplementedError

    def fit(self, x: torch.Tensor) -> FeatureMap:
        """Set data statistics from training inputs ``x`` (N, *in_shape). Default: nothing to fit."""
        return self

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one feature vector for one input of shape ``in_shape``."""
        return tuple(in_shape)

    def affine(self) -> bool:
        """True when φ(x) = A x + c (exact radii are linear/conic programs then)."""
        return False

    def slope_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Per-coordinate slope intervals of this map composed after maps with intervals ``lo``, ``hi``.

        A coordinate-wise map sends input coordinate i to K feature coordinates (flat index k·n + i
        of the feature vector, n = number of input coordinates), and for every x and every move of
        x_i alone, φ_{k·n+i}(x + δ e_i) − φ_{k·n+i}(x) = c·δ with c ∈ [lo[k, i], hi[k, i]]. Given the
        intervals (K, n) float64 of the features fed to this map, return those (K', n) of its
        output, or None when the map is not coordinate-wise (threat-model certificates then fall
        back to the ℓp one). Default: None. Only counted when declared with ``forward``.
        """
        return None

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        """Bounds on the weights a linear function of this map's outputs puts on its inputs, per move.

        For a coordinate-wise map whose every output feature reads one input feature: given float64
        bounds (N, K_out, n) on weights w of the output features (flat index k·n + i), return bounds
        (N, K_in, n) such that for every x and every move of one raw input coordinate i,
        Σ_out w_out·Δφ_out = Σ_in ŵ_in·Δin with each ŵ_in inside its bounds, rounded outward
        (:func:`round_down`, :func:`round_up`). Tighter than summing :meth:`slope_bounds` when the
        output features of one input move together (hinges: a prefix sum, not a sum of magnitudes).
        None: not declared (the threat-model certificate then sums slope intervals). Only counted
        when declared with ``forward``.
        """
        return None

    def reach_image(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds | None:
        """Bounds on this map's outputs while its inputs stay in the box [lo, hi], rounded outward.

        Args and result: float64 (N, K, n) boxes (copy k of input coordinate i at [:, k, i], as in
        :meth:`weight_bounds`). None: not declared (the steps after this one then use their global
        :meth:`weight_bounds`). Only counted when declared with ``forward``.
        """
        return None

    def reach_weight_bounds(
        self, w_lo: torch.Tensor, w_hi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> Bounds | None:
        """:meth:`weight_bounds` for moves that keep this map's inputs inside the box [lo, hi] (N, K_in, n).

        Tighter where the map's slope depends on where it is taken (log1p's 1/(1 + x), the hinges a
        box does not reach). None: not declared (:meth:`weight_bounds` is used). Only counted when
        declared with ``forward``.
        """
        return None

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description that :func:`build_feature_map` turns back into this map."""
        return {"kind": self.kind}

    def problems(self) -> list[str]:
        """Why this map's parameters break the formula of its Lipschitz constant (empty when they do not).

        Default: every floating buffer and parameter must be finite. Maps whose formula needs a sign
        or a nonzero value add that.
        """
        return [
            f"{name}: contains NaN or Inf"
            for name, t in self.state_dict().items()
            if t.is_floating_point() and not all_finite(t)
        ]

    def validate(self) -> None:
        """Raise :class:`~asymcert.errors.ModelError` listing every problem of :func:`feature_map_problems`."""
        problems = feature_map_problems(self, type(self).__name__)
        if problems:
            raise ModelError(
                "feature map cannot be vouched for, its Lipschitz constant would be wrong: " + "; ".join(problems)
            )


class Identity(FeatureMap):
    """φ(x) = x. Lipschitz 1 in every norm."""

    kind = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def lipschitz(self, p: float) -> float:
        return 1.0

    def affine(self) -> bool:
        return True

    def slope_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lo, hi

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w_lo, w_hi

    def reach_image(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
        return lo, hi


class Shift(FeatureMap):
    """φ(x) = x − μ with μ the mean training input (elementwise). Lipschitz 1 in every norm.

    Args:
        in_shape: shape of one input.
    """

    kind = "shift"
    mean: torch.Tensor  # buffer (*in_shape)

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean

    def fit(self, x: torch.Tensor) -> Shift:
        self.mean.copy_(x.mean(dim=0).to(self.mean))
        return self

    def lipschitz(self, p: float) -> float:
        return 1.0

    def affine(self) -> bool:
        return True

    def slope_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return lo, hi

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return w_lo, w_hi

    def reach_image(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
        mean = self.mean.to(lo.dtype).reshape(lo.shape[1:])
        return round_down(lo - mean), round_up(hi - mean)


class Log1p(FeatureMap):
    """φ(x) = log(1 + max(x, 0)) elementwise: for heavy-tailed nonnegative counts and frequencies.

    Each coordinate is 1-Lipschitz on all of R (slope 1/(1 + x) ≤ 1 for x > 0, 0 below), so the map
    is 1-Lipschitz in every ℓp norm, also for perturbations that leave x ≥ 0; and it is nondecreasing
    in every coordinate. Values below 0 are treated as 0.
    """

    kind = "log1p"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.log1p(torch.clamp(x, min=0.0))

    def lipschitz(self, p: float) -> float:
        return 1.0

    def slope_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # each coordinate's difference quotient is in [0, 1]
        return interval_product(lo, hi, torch.zeros_like(lo), torch.ones_like(hi))

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # w·c with c ∈ [0, 1]: exact, no rounding
        return torch.clamp(w_lo, max=0.0), torch.clamp(w_hi, min=0.0)

    def reach_image(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
        # log1p is not correctly rounded: widened by two units in the last place each way
        low = torch.log1p(torch.clamp(lo, min=0.0))
        high = torch.log1p(torch.clamp(hi, min=0.0))
        return torch.clamp(round_down(round_down(low)), min=0.0), round_up(round_up(high))

    def reach_weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
        # a quotient of log1p(max(·, 0)) between two points of [lo, hi] is in [1/(1 + hi), 1/(1 + max(lo, 0))]
        # (mean value theorem; 0 when the box reaches below 0, where the map is flat)
        c_lo = torch.where(lo >= 0, round_down(1.0 / round_up(1.0 + hi)), torch.zeros_like(lo))
        c_hi = torch.clamp(round_up(1.0 / round_down(1.0 + torch.clamp(lo, min=0.0))), max=1.0)
        low, high = interval_product(w_lo, w_hi, c_lo, c_hi)
        global_lo, global_hi = self.weight_bounds(w_lo, w_hi)  # both sound: keep the tighter ends
        return torch.maximum(round_down(low), global_lo), torch.minimum(round_up(high), global_hi)


class Standardize(FeatureMap):
    """φ(x) = (x − μ) / σ per feature (tabular data). Lipschitz max_i 1/|σ_i| in every ℓp norm.

    The scaling is part of the model, so certified radii stay in the user's raw feature units.
    A feature whose σ_i is below ``min_scale`` (constant on the data fitted) gets σ_i = 1: the model learns
    nothing from it, and 1/min_scale would make φ's Lipschitz constant, so every plain ℓp radius, that many
    times worse (a constant column cost a user's radii a factor 10⁵). Every σ_i must be finite and > 0
    (:meth:`problems`), μ finite.

    Raises:
        ConfigError: ``min_scale`` not a finite number > 0.
    """

    kind = "standardize"
    mean: torch.Tensor  # buffer (*in_shape)
    scale: torch.Tensor  # buffer (*in_shape)

    def __init__(self, in_shape: tuple[int, ...], min_scale: float = 1e-6) -> None:
        super().__init__()
        if (
            isinstance(min_scale, bool)
            or not isinstance(min_scale, (int, float))
            or not math.isfinite(min_scale)
            or min_scale <= 0
        ):
            raise ConfigError(f"standardize: min_scale = {min_scale!r} must be a finite number > 0")
        self.min_scale = float(min_scale)
        self.register_buffer("mean", torch.zeros(in_shape))
        self.register_buffer("scale", torch.ones(in_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    def fit(self, x: torch.Tensor) -> Standardize:
        self.mean.copy_(x.mean(dim=0).to(self.mean))
        std = x.std(dim=0)
        self.scale.copy_(torch.where(std < self.min_scale, torch.ones_like(std), std).to(self.scale))
        return self

    def lipschitz(self, p: float) -> float:
        # ‖D d‖_p ≤ max|D_ii| ‖d‖_p (magnitudes: a sign must never shrink it); rounded up so the
        # constant is never underestimated. validate() refuses σ ≤ 0 anyway.
        return math.nextafter(float((1.0 / self.scale.double()).abs().max()), math.inf)

    def problems(self) -> list[str]:
        """NaN/Inf in μ or σ, σ_i ≤ 0 (the formula divides by σ, a std), or a min_scale that is not > 0."""
        out = super().problems()
        if not (math.isfinite(self.min_scale) and self.min_scale > 0):
            out.append(f"min_scale {self.min_scale!r} must be a finite number > 0")
        bad = ~(self.scale > 0)
        if bool(bad.any()):
            first = torch.nonzero(bad.flatten()).flatten()[:5].tolist()
            out.append(
                f"scale: {int(bad.sum())} of {self.scale.numel()} entries are not > 0 (first at flat "
                f"index {first}); (x − μ)/σ needs σ > 0"
            )
        return out

    def affine(self) -> bool:
        return True

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "min_scale": self.min_scale}

    def slope_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        inv = (1.0 / self.scale.detach().to("cpu", torch.float64)).reshape(lo.shape)
        return interval_product(lo, hi, inv, inv)

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        sigma = self.scale.to(w_lo.dtype).reshape(w_lo.shape[1:])  # σ > 0 (validate()): w/σ keeps the order
        return round_down(w_lo / sigma), round_up(w_hi / sigma)

    def reach_image(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
        mean, sigma = (t.to(lo.dtype).reshape(lo.shape[1:]) for t in (self.mean, self.scale))
        return round_down(round_down(lo - mean) / sigma), round_up(round_up(hi - mean) / sigma)


class ConcatAbs(FeatureMap):
    """φ(x) = concat(x, |x|) along dim 1 (channels). Lipschitz 2^{1/p}: ℓ1 2, ℓ2 √2, ℓ∞ 1.

    Because | |a| − |b| | ≤ |a − b| elementwise, ‖φ(x) − φ(x')‖_p^p ≤ 2‖x − x'‖_p^p.
    """

    kind = "concat-abs"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.abs()], dim=1)

    def lipschitz(self, p: float) -> float:
        return 1.0 if math.isinf(p) else math.nextafter(2.0 ** (1.0 / p), math.inf)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (2 * in_shape[0],) + tuple(in_shape[1:])

    def slope_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # |a| − |b| = c·(a − b) with c ∈ [−1, 1]: the |·| copies can move either way
        bound = torch.maximum(lo.abs(), hi.abs())
        return torch.cat([lo, -bound]), torch.cat([hi, bound])

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        half = w_lo.shape[1] // 2  # w_x·1 + w_abs·c with c ∈ [−1, 1]
        bound = torch.maximum(w_lo[:, half:].abs(), w_hi[:, half:].abs())
        return round_down(w_lo[:, :half] - bound), round_up(w_hi[:, :half] + bound)


class Hinges(FeatureMap):
    """φ(x) = concat(x, relu(x − t_1), …, relu(x − t_K)) along dim 1: per-feature piecewise-linear splines.

    With unconstrained first-layer weights, g∘φ can then bend every feature at its knots t_k (K per
    input coordinate), the thresholds tree ensembles split on. ``fit`` puts the knots at the
    quantiles k/(K+1) of each coordinate's training values above its minimum (so a sparse frequency
    gets knots among its nonzero values). Each copy moves by at most |δ_i| when x_i moves by δ_i, so
    ‖φ(x) − φ(x')‖_p^p ≤ (K+1)‖x − x'‖_p^p: Lipschitz (K+1)^{1/p}, 1 for ℓ∞. Every copy is
    nondecreasing (slopes in [0, 1] for the hinges), so monotone declarations stay valid.

    Args:
        in_shape: shape of one input.
        knots: number K ≥ 1 of knots per coordinate.

    Raises:
        ConfigError: ``knots`` not an integer ≥ 1.
    """

    kind = "hinges"
    knot_values: torch.Tensor  # buffer (K, *in_shape)

    def __init__(self, in_shape: tuple[int, ...], knots: int = 4) -> None:
        super().__init__()
        if isinstance(knots, bool) or not isinstance(knots, int) or knots < 1:
            raise ConfigError(f"hinges: knots = {knots!r} must be an integer ≥ 1")
        self.knots = knots
        self.register_buffer("knot_values", torch.zeros((knots, *in_shape)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        bent = torch.relu(x.unsqueeze(1) - self.knot_values.unsqueeze(0))  # (N, K, *in_shape)
        return torch.cat([x, bent.flatten(1, 2)], dim=1)

    def fit(self, x: torch.Tensor) -> Hinges:
        flat = x.detach().to("cpu", torch.float64).flatten(1)  # (N, n)
        levels = torch.arange(1, self.knots + 1, dtype=torch.float64) / (self.knots + 1)
        lowest = flat.amin(dim=0)
        knots = torch.empty((self.knots, flat.shape[1]), dtype=torch.float64)
        for i in range(flat.shape[1]):
            above = flat[:, i][flat[:, i] > lowest[i]].sort().values
            knots[:, i] = _quantiles(above, levels) if above.numel() else lowest[i]
        self.knot_values.copy_(knots.reshape(self.knot_values.shape).to(self.knot_values))
        return self

    def lipschitz(self, p: float) -> float:
        return 1.0 if math.isinf(p) else math.nextafter(float(self.knots + 1) ** (1.0 / p), math.inf)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return ((self.knots + 1) * in_shape[0],) + tuple(in_shape[1:])

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "knots": self.knots}

    def slope_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # relu(a − t) − relu(b − t) = c·(a − b) with c ∈ [0, 1]
        blo, bhi = interval_product(lo, hi, torch.zeros_like(lo), torch.ones_like(hi))
        return torch.cat([lo] + [blo] * self.knots), torch.cat([hi] + [bhi] * self.knots)

    def _prefix_sums(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> Bounds:
        """Bounds (N, K + 1, K_in, n) on the prefix sums w_0 + w_1 + … + w_m, m = 0…K, of the weights
        (N, (K + 1)·K_in, n) of the copies [z, relu(z − t_1), …], each sum rounded outward."""
        n_in = w_lo.shape[1] // (self.knots + 1)
        low, high = w_lo[:, :n_in], w_hi[:, :n_in]
        sums_lo, sums_hi = [low], [high]
        for j in range(1, self.knots + 1):
            low = round_down(low + w_lo[:, j * n_in : (j + 1) * n_in])
            high = round_up(high + w_hi[:, j * n_in : (j + 1) * n_in])
            sums_lo.append(low)
            sums_hi.append(high)
        return torch.stack(sums_lo, dim=1), torch.stack(sums_hi, dim=1)

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        # a move of z through knots t_1 ≤ … ≤ t_K (problems() checks the order) has quotients c_1 ≥ … ≥ c_K
        # in [0, 1] (c_j: the share of the move above t_j), so w_0 + Σ_j w_j c_j lies between the
        # smallest and the largest prefix sum w_0 + w_1 + … + w_m, m = 0…K
        sums_lo, sums_hi = self._prefix_sums(w_lo, w_hi)
        return sums_lo.amin(dim=1), sums_hi.amax(dim=1)

    def reach_image(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
        knots = self.knot_values.to(lo.dtype).reshape((self.knots, *lo.shape[1:]))
        bent_lo = torch.relu(round_down(lo.unsqueeze(1) - knots.unsqueeze(0))).flatten(1, 2)
        bent_hi = torch.relu(round_up(hi.unsqueeze(1) - knots.unsqueeze(0))).flatten(1, 2)
        return torch.cat([lo, bent_lo], dim=1), torch.cat([hi, bent_hi], dim=1)

    def reach_weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
        # inside [lo, hi] the share c_j of a move above t_j is 1 for t_j ≤ lo and 0 for t_j ≥ hi, so only
        # the prefix sums w_0 + … + w_m with #{t_j ≤ lo} ≤ m ≤ #{t_j < hi} remain (see weight_bounds)
        knots = self.knot_values.to(lo.dtype).reshape((self.knots, *lo.shape[1:]))
        first = (knots.unsqueeze(0) <= lo.unsqueeze(1)).sum(dim=1)  # (N, K_in, n)
        last = (knots.unsqueeze(0) < hi.unsqueeze(1)).sum(dim=1)
        # a box of one point lo = hi = t_j (a move that cannot go anywhere) counts t_j on both sides: keep the
        # prefix sums between the two counts, never none (which made the bounds ±∞, and ∞·0 = NaN after log1p)
        first = torch.minimum(first, last)
        m = torch.arange(self.knots + 1, device=lo.device).reshape(1, -1, *([1] * (lo.dim() - 1)))
        inside = (m >= first.unsqueeze(1)) & (m <= last.unsqueeze(1))  # (N, K + 1, K_in, n)
        stacked_lo, stacked_hi = self._prefix_sums(w_lo, w_hi)
        reach_lo = torch.where(inside, stacked_lo, _POS_INF.to(lo.device)).amin(dim=1)
        reach_hi = torch.where(inside, stacked_hi, _NEG_INF.to(lo.device)).amax(dim=1)
        return reach_lo, reach_hi

    def problems(self) -> list[str]:
        """NaN/Inf knots, knots not in nondecreasing order along the knot axis (fit() sorts them), or a
        ``knots`` count that is not the knot buffer's (the Lipschitz constant and the weight bounds count on it)."""
        out = super().problems()
        k = self.knots
        if isinstance(k, bool) or not isinstance(k, int) or k < 1 or self.knot_values.shape[0] != k:
            out.append(
                f"knots = {k!r} is not the {self.knot_values.shape[0]} rows of knot_values; the Lipschitz constant "
                "and the weight bounds count the knots"
            )
            return out
        knots = self.knot_values.flatten(1)
        if knots.shape[0] > 1 and not bool((knots[1:] >= knots[:-1]).all()):
            out.append("knot_values: not nondecreasing along the knot axis; the certificate needs t_1 ≤ … ≤ t_K")
        return out


MAX_PAIR_INPUTS = 512
"""The most inputs :class:`PairMin` takes: 512 make 131,584 features per input."""


class _ExcessMap(FeatureMap):
    """What pair-min and group-min share: each coordinate's excess h = relu(z − m) over its training minimum m
    (the ``floor`` buffer, set by ``fit``), on vectors of n coordinates."""

    floor: torch.Tensor  # buffer (n,): the training minimum of each coordinate

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("floor", torch.zeros(in_shape))

    def fit(self, x: torch.Tensor) -> _ExcessMap:
        self.floor.copy_(x.detach().amin(dim=0).to(self.floor))
        return self

    def _excess_at(self, z: torch.Tensor) -> Bounds:
        """(h, τ) (N, n) float64 at the inputs z (N, n): h = relu(z − floor), and τ = 1e-12·(1 + |z| + |floor|),
        far above the float64 error of the steps before, which the point bounds allow for."""
        floor = self.floor.double().to(z.device)
        return torch.relu(z.double() - floor), 1e-12 * (1.0 + z.double().abs() + floor.abs())

    def _excess_box(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds:
        """Bounds (N, n) on h = relu(z − floor) while z stays in the box [lo, hi] (N, 1, n), rounded outward."""
        floor = self.floor.to(lo)
        return torch.relu(round_down(lo[:, 0] - floor)), torch.relu(round_up(hi[:, 0] - floor))

    def _fits(self, boxes: torch.Tensor) -> bool:
        """Whether (N, K, n) boxes are for one copy of this map's n inputs (not for copies made before it)."""
        return boxes.shape[1] == 1 and boxes.shape[2] == self.floor.numel()


class PairMin(_ExcessMap):
    """φ(x) = concat(x, min(h_i, h_{i+k}) for k = 1…P): every pair of coordinates as an AND feature.

    h = relu(x − m) is each coordinate's excess over its training minimum m (``fit``), and pair (i, i + k)
    (indices mod n, P = ⌊n/2⌋ shifts, so every unordered pair appears, twice when n is even and k = n/2)
    is large only when both coordinates are: the interactions an additive model (hinges) cannot express,
    the depth-2 splits of tree ensembles. Output copy k of coordinate i is at flat index k·n + i.

    Lipschitz: |min(a, b) − min(a', b')| ≤ max(|a − a'|, |b − b'|), so each copy k has
    ‖Δ‖_p^p ≤ 2‖δ‖_p^p and φ is (1 + 2P)^{1/p}-Lipschitz, 1 for ℓ∞. Not coordinate-wise (declares no
    :meth:`slope_bounds`), but moving x_i alone moves copy 0 at i by δ_i and the copies (k, i) and
    (k, i − k) by c·δ_i with c ∈ [0, 1], which :meth:`weight_bounds` sums; every feature is nondecreasing
    in every coordinate. On a box (:meth:`reach_weight_bounds`) a pair whose order the box cannot change
    is attributed exactly: all of it to its smaller coordinate, none to the other. Only on one copy per raw
    coordinate (after identity, shift, log1p, standardize).

    Args:
        in_shape: shape (n,) of one input, n ≥ 2.

    Raises:
        ConfigError: an input that is not a vector of 2 to :data:`MAX_PAIR_INPUTS` coordinates.
    """

    kind = "pair-min"

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        if len(in_shape) != 1 or in_shape[0] < 2:
            raise ConfigError(f"pair-min: inputs of shape {tuple(in_shape)}; it needs vectors (n,) with n ≥ 2")
        if in_shape[0] > MAX_PAIR_INPUTS:  # (1 + ⌊n/2⌋)·n features per input: bounded memory
            raise ConfigError(
                f"pair-min: {in_shape[0]} inputs would make {(1 + in_shape[0] // 2) * in_shape[0]} features each; "
                f"at most {MAX_PAIR_INPUTS} inputs (put it before maps that multiply the features, once)"
            )
        super().__init__(in_shape)
        self.shifts = in_shape[0] // 2

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = torch.relu(x - self.floor)
        return torch.cat([x] + [torch.minimum(h, torch.roll(h, -k, dims=1)) for k in range(1, self.shifts + 1)], dim=1)

    def lipschitz(self, p: float) -> float:
        return 1.0 if math.isinf(p) else math.nextafter(float(1 + 2 * self.shifts) ** (1.0 / p), math.inf)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return ((1 + self.shifts) * in_shape[0],)

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        # (N, 1 + P, n) → (N, 1, n): ŵ_i = w_{0,i} + Σ_k (w_{k,i} c + w_{k,i−k} c') with c, c' ∈ [0, 1]
        n = w_lo.shape[2]
        if not self._weights_fit(w_lo):
            return None  # the inputs are copies of fewer raw coordinates: not derived here
        return self._pair_sums(w_lo, w_hi, self._partners(n, w_lo.device)[1])

    def _partners(self, n: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
        """(ahead, behind) (P, n): the partners i + k and i − k (mod n) of coordinate i in copy k = 1…P."""
        idx = torch.arange(n, device=device)
        k = torch.arange(1, self.shifts + 1, device=device)[:, None]
        return torch.remainder(idx[None] + k, n), torch.remainder(idx[None] - k, n)

    def point_weight_bounds(
        self, w_lo: torch.Tensor, w_hi: torch.Tensor, z: torch.Tensor
    ) -> tuple[Bounds, Bounds, torch.Tensor] | None:
        """:meth:`weight_bounds` at the point z (N, n) (this map's input), per direction, and a constant.

        Returns ((lo, hi) for moves up, (lo, hi) for moves down, each (N, 1, n), and C (N,) ≥ 0) such that
        for every move δ of z, Σ w·Δφ ≥ Σ_{i up} lo_up,i·δ_i + Σ_{i down} hi_dn,i·δ_i − C: decompose δ into
        its decreases, then its increases in order of decreasing h = relu(z − floor) (ties: lower index
        first). A decrease of z_i cannot move min(h_i, h_j) when h_j = 0 (h_j only falls before it); an
        increase cannot move it when h_j ≤ h_i and j comes later (not yet moved, or decreased). Those
        pairs are left out of the sums; C bounds what the rounding of h (τ = 1e-12·(1 + |z| + |floor|),
        far above the float64 error of the steps before) could still let them move: |w|·(τ_i + τ_j) each,
        summed as 4·max τ·Σ|w| (every pair copy, both coordinates, both directions).
        None where :meth:`weight_bounds` is (inputs that are copies).
        """
        n = w_lo.shape[2]
        if not self._weights_fit(w_lo):
            return None
        keep, const = self._point_keeps(w_lo, w_hi, z)
        behind = self._partners(n, z.device)[1]
        up = self._pair_sums(w_lo, w_hi, behind, _kept(keep["ahead", "up"]), _kept(keep["behind", "up"]))
        down = self._pair_sums(w_lo, w_hi, behind, _kept(keep["ahead", "down"]), _kept(keep["behind", "down"]))
        return up, down, const

    def _point_keeps(
        self, w_lo: torch.Tensor, w_hi: torch.Tensor, z: torch.Tensor
    ) -> tuple[dict[tuple[str, str], torch.Tensor], torch.Tensor]:
        """The pairs :meth:`point_weight_bounds` keeps, (side, direction) → (N, P, n) bool, and its constant C (N,)."""
        n = self.floor.numel()
        h, tau = self._excess_at(z)  # (N, n)
        idx = torch.arange(n, device=z.device)
        ahead, behind = self._partners(n, z.device)
        keep = {}
        for side, partner in (("ahead", ahead), ("behind", behind)):
            h_p, h_i = h[:, partner], h[:, None, :]  # (N, P, n): the partner's and the mover's excess
            later = (h_p < h_i) | ((h_p == h_i) & (partner > idx)[None])
            keep[side, "up"], keep[side, "down"] = ~later, h_p > 0
        # each left-out pair moves by at most τ_i + τ_j within one segment, and each pair weight is counted
        # by both its coordinates and both directions: C ≤ 2·(2·max τ)·Σ|w| over the pair copies
        mag = torch.maximum(w_lo[:, 1:].abs(), w_hi[:, 1:].abs()).sum(dim=(1, 2))
        const = 4.0 * tau.amax(dim=1) * mag
        return keep, round_up(const * (1.0 + 1e-9))

    def reach_point_weight_bounds(
        self, w_lo: torch.Tensor, w_hi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, z: torch.Tensor
    ) -> tuple[Bounds, Bounds, torch.Tensor] | None:
        """:meth:`point_weight_bounds` for moves that keep every input inside the box [lo, hi] (N, 1, n) ∋ z.

        Both arguments hold on the same decomposition of a move (decreases, then increases by decreasing
        h), each step inside the box: a pair the point bound leaves out stays out, and a kept one has the
        share :meth:`reach_weight_bounds` gives it. Same constant C. None where either bound is.
        """
        n = w_lo.shape[2]
        if not self._weights_fit(w_lo) or not self._fits(lo):
            return None
        keep, const = self._point_keeps(w_lo, w_hi, z)
        shares = dict(zip(("ahead", "behind"), self._reach_shares(lo, hi)))
        behind = self._partners(n, lo.device)[1]
        found = []
        for way in ("up", "down"):
            both = [(c_lo * keep[side, way], c_hi * keep[side, way]) for side, (c_lo, c_hi) in shares.items()]
            found.append(self._pair_sums(w_lo, w_hi, behind, both[0], both[1]))
        return found[0], found[1], const

    def _pair_sums(
        self,
        w_lo: torch.Tensor,
        w_hi: torch.Tensor,
        behind: torch.Tensor,
        share_a: Bounds | None = None,
        share_b: Bounds | None = None,
    ) -> Bounds:
        """(N, 1, n) bounds on ŵ_i = w_{0,i} + Σ_k (w_{k,i} c + w_{k,i−k} c'), rounded outward, with the shares
        c of the copies (k, i) in ``share_a`` and c' of the copies (k, i − k) in ``share_b``: (lo, hi) (N, P, n)
        with values 0 or 1, or None for [0, 1]."""
        index = behind.unsqueeze(0).expand(w_lo.shape[0], -1, -1)
        pairs_lo, pairs_hi = w_lo[:, 1:], w_hi[:, 1:]
        sides = (
            (pairs_lo, pairs_hi, share_a),
            (torch.gather(pairs_lo, 2, index), torch.gather(pairs_hi, 2, index), share_b),
        )
        parts_lo, parts_hi = [], []
        for low, high, share in sides:
            if share is None:  # c ∈ [0, 1]
                parts_lo.append(low.clamp(max=0.0))
                parts_hi.append(high.clamp(min=0.0))
                continue
            c_lo, c_hi = share  # w·c over w ∈ [low, high], c ∈ {c_lo, c_hi} ⊂ {0, 1}: exact, no rounding
            zero = torch.zeros_like(low)
            parts_lo.append(torch.minimum(torch.where(c_lo > 0, low, zero), torch.where(c_hi > 0, low, zero)))
            parts_hi.append(torch.maximum(torch.where(c_lo > 0, high, zero), torch.where(c_hi > 0, high, zero)))
        terms_lo = torch.cat([w_lo[:, :1], *parts_lo], dim=1)
        terms_hi = torch.cat([w_hi[:, :1], *parts_hi], dim=1)
        # absolute allowance for the float64 sum of 1 + 2P terms: (T + 1)·eps·Σ|terms| ≥ (T − 1)·u·Σ|terms|
        grow = (terms_lo.shape[1] + 1) * EPS64
        low_sum = round_down(terms_lo.sum(dim=1, keepdim=True) - grow * terms_lo.abs().sum(dim=1, keepdim=True))
        high_sum = round_up(terms_hi.sum(dim=1, keepdim=True) + grow * terms_hi.abs().sum(dim=1, keepdim=True))
        return low_sum, high_sum

    def _weights_fit(self, w_lo: torch.Tensor) -> bool:
        """Whether (N, 1 + P, n) weights are for this map's outputs on one copy of its n inputs (not for
        copies made before it: then its bounds are not derived)."""
        return w_lo.shape[1] == 1 + self.shifts and w_lo.shape[2] == self.floor.numel()

    def problems(self) -> list[str]:
        """NaN/Inf floor, or a ``shifts`` count other than ⌊n/2⌋ (the Lipschitz constant counts the copies)."""
        out = super().problems()
        if self.shifts != self.floor.numel() // 2 or isinstance(self.shifts, bool):
            out.append(f"shifts = {self.shifts!r}, but {self.floor.numel()} inputs make {self.floor.numel() // 2}")
        return out

    def reach_image(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds | None:
        # copy 0 is z itself; min is monotone in both arguments, so copy k lies in
        # [min(h_lo,i, h_lo,i+k), min(h_hi,i, h_hi,i+k)] (exact: min does not round)
        if not self._fits(lo):
            return None
        h_lo, h_hi = self._excess_box(lo, hi)
        ahead = self._partners(lo.shape[2], lo.device)[0]
        pairs_lo = torch.minimum(h_lo[:, None, :], h_lo[:, ahead])
        pairs_hi = torch.minimum(h_hi[:, None, :], h_hi[:, ahead])
        return torch.cat([lo, pairs_lo], dim=1), torch.cat([hi, pairs_hi], dim=1)

    def _reach_shares(self, lo: torch.Tensor, hi: torch.Tensor) -> list[Bounds]:
        """Share intervals (c_lo, c_hi) (N, P, n) in {0, 1} of the copies (k, i) and (k, i − k) for moves of z_i
        inside the box [lo, hi] (N, 1, n), the partner anywhere in its own: see :meth:`reach_weight_bounds`."""
        h_lo, h_hi = self._excess_box(lo, hi)
        floor = self.floor.to(lo)
        linear, flat = lo[:, 0] >= floor, hi[:, 0] <= floor  # (N, n): relu's quotient exactly 1 / exactly 0
        shares = []
        for partner in self._partners(lo.shape[2], lo.device):
            mine = h_hi[:, None, :] <= h_lo[:, partner]  # (N, P, n)
            theirs = h_lo[:, None, :] >= h_hi[:, partner]
            c_lo = (mine & ~theirs & linear[:, None, :]).to(lo.dtype)
            c_hi = (~theirs & ~flat[:, None, :]).to(lo.dtype)
            shares.append((c_lo, c_hi))
        return shares

    def reach_weight_bounds(
        self, w_lo: torch.Tensor, w_hi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> Bounds | None:
        # moving z_i inside the box (the partner j anywhere in its own): min(h_i, h_j) is h_i throughout when
        # h_i's largest value is at most h_j's smallest, and h_j throughout (share 0) when h_i's smallest is at
        # least h_j's largest; h_i's own share is 1 when the box lies above the floor, 0 when below it
        n = w_lo.shape[2]
        if not self._weights_fit(w_lo) or not self._fits(lo):
            return None
        shares = self._reach_shares(lo, hi)
        behind = self._partners(n, lo.device)[1]
        low, high = self._pair_sums(w_lo, w_hi, behind, shares[0], shares[1])
        global_lo, global_hi = self._pair_sums(w_lo, w_hi, behind)  # both sound: keep the tighter ends
        return torch.maximum(low, global_lo), torch.minimum(high, global_hi)


def _kept(keep: torch.Tensor) -> Bounds:
    """Share intervals (:meth:`PairMin._pair_sums`) for a mask: [0, 1] where ``keep``, exactly 0 elsewhere."""
    return torch.zeros_like(keep, dtype=torch.float64), keep.to(torch.float64)


MAX_GROUP_FEATURES = 2**18
"""The most features per input :class:`GroupMin` makes (262,144: 57 inputs at order 3 make 30,951)."""


def _group_features(n: int, order: int) -> int:
    """Features per input of :class:`GroupMin` on n inputs at ``order``: n per set size class, rounded up
    (counted set size by set size, and refused as soon as the count passes the limit: C(20000, k) summed to
    k = 10000 took 36 s and ended in Python's 4300-digit error).

    Raises:
        ConfigError: more than :data:`MAX_GROUP_FEATURES` features.
    """
    sets = 0
    for k in range(2, order + 1):
        sets += math.comb(n, k)
        features = n * (1 + -(-sets // n))
        if features > MAX_GROUP_FEATURES:
            least = "" if k == order else "at least "
            raise ConfigError(
                f"group-min: {n} inputs at order {order} would make {least}{features} features each; at most "
                f"{MAX_GROUP_FEATURES} (lower the order, or select fewer inputs)"
            )
    return n * (1 + -(-sets // n))


class GroupMin(_ExcessMap):
    """φ(x) = concat(x, min_{i ∈ S} h_i for every set S of 2 … ``order`` coordinates): AND features of pairs,
    triples, …, the splits of trees of that depth that pair-min (order 2) stops short of.

    h = relu(x − m) is each coordinate's excess over its training minimum m (``fit``), as for
    :class:`PairMin`. The sets are enumerated in lexicographic order (all pairs, then all triples, …) and
    padded with constant-zero features to a multiple of n, so the output is (1 + C) copies of n (copy 0 is
    x itself; flat index n + s is set s).

    Lipschitz: |min_S h − min_S h'| ≤ max_{i ∈ S} |δ_i|, so ‖Δφ‖_p^p ≤ Σ_i (1 + c)|δ_i|^p with c the number
    of sets that contain a coordinate (the same for all): (1 + c)^{1/p}, 1 for ℓ∞. Not coordinate-wise, but
    moving x_i alone moves each set containing i by a share in [0, 1] of δ_i, which :meth:`weight_bounds`
    sums; every feature is nondecreasing in every coordinate. Only on one copy per raw coordinate (after
    identity, shift, log1p, standardize).

    Args:
        in_shape: shape (n,) of one input, n ≥ 2.
        order: the largest set size, an integer ≥ 2 (2 gives the pairs of :class:`PairMin`, once each).

    Raises:
        ConfigError: an input that is not a vector of n ≥ 2 coordinates, an order that is not an integer
            in [2, n], or more than :data:`MAX_GROUP_FEATURES` features per input.
    """

    kind = "group-min"
    members: torch.Tensor  # buffer (S, order) long, not saved: the coordinates of set s, n where it has fewer

    def __init__(self, in_shape: tuple[int, ...], order: int = 3) -> None:
        if len(in_shape) != 1 or in_shape[0] < 2:
            raise ConfigError(f"group-min: inputs of shape {tuple(in_shape)}; it needs vectors (n,) with n ≥ 2")
        n = in_shape[0]
        if isinstance(order, bool) or not isinstance(order, int) or not 2 <= order <= n:
            raise ConfigError(f"group-min: order = {order!r} must be an integer from 2 to the {n} inputs")
        features = _group_features(n, order)
        super().__init__(in_shape)
        self.order = order
        self.register_buffer("members", _set_members(n, order, features // n - 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self._minima(torch.relu(x - self.floor))], dim=1)

    def _minima(self, h: torch.Tensor) -> torch.Tensor:
        """(N, S_pad) min_{i ∈ S} h_i of every set S for values h (N, n); 0 on the padding."""
        h = torch.cat([h, torch.full_like(h[:, :1], math.inf)], dim=1)  # column n: the padding's member
        low = h[:, self.members[:, 0]]
        for j in range(1, self.order):
            low = torch.minimum(low, h[:, self.members[:, j]])
        padding = self.members[:, 0] == self.floor.numel()
        return torch.where(padding, torch.zeros_like(low), low)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "order": self.order}

    def containing(self) -> int:
        """How many sets contain each coordinate: Σ_{k=2}^{order} C(n − 1, k − 1)."""
        n = self.floor.numel()
        return sum(math.comb(n - 1, k - 1) for k in range(2, self.order + 1))

    def lipschitz(self, p: float) -> float:
        return 1.0 if math.isinf(p) else math.nextafter(float(1 + self.containing()) ** (1.0 / p), math.inf)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (self.members.shape[0] + in_shape[0],)

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        # (N, 1 + C, n) → (N, 1, n): ŵ_i = w_{0,i} + Σ_{S ∋ i} w_S c_S with c_S ∈ [0, 1]
        if not self._weights_fit(w_lo):
            return None  # the inputs are copies of fewer raw coordinates: not derived here
        return self._member_sums(w_lo, w_hi, None)

    def point_weight_bounds(
        self, w_lo: torch.Tensor, w_hi: torch.Tensor, z: torch.Tensor
    ) -> tuple[Bounds, Bounds, torch.Tensor] | None:
        """:meth:`weight_bounds` at the point z (N, n) (this map's input), per direction, and a constant C (N,).

        As :meth:`PairMin.point_weight_bounds`, on the same decomposition of a move (its decreases, then its
        increases in order of decreasing h, ties: lower index first): an increase of z_i cannot move min_S h
        when another member j of S has h_j < h_i, or h_j = h_i and j > i (j moves later, or fell); a decrease
        cannot move it when another member has h_j = 0. Those (set, member) pairs are left out. C bounds what
        the rounding of h (τ = 1e-12·(1 + |z| + |floor|)) could still let them move: each left-out pair moves
        by at most |w_S|·Σ_{j ∈ S} τ_j, counted for each of the ``order`` members and both directions, so
        C = 2·order²·max τ·Σ|w_S|. None where :meth:`weight_bounds` is.
        """
        if not self._weights_fit(w_lo):
            return None
        keeps, const = self._point_keeps(w_lo, w_hi, z)
        return self._member_sums(w_lo, w_hi, keeps["up"]), self._member_sums(w_lo, w_hi, keeps["down"]), const

    def reach_point_weight_bounds(
        self, w_lo: torch.Tensor, w_hi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor, z: torch.Tensor
    ) -> tuple[Bounds, Bounds, torch.Tensor] | None:
        """:meth:`point_weight_bounds` (it holds for every move, so inside any box [lo, hi] too; the box's
        shares are not derived for sets)."""
        return self.point_weight_bounds(w_lo, w_hi, z)

    def _point_keeps(
        self, w_lo: torch.Tensor, w_hi: torch.Tensor, z: torch.Tensor
    ) -> tuple[dict[str, list[torch.Tensor]], torch.Tensor]:
        """Direction → per member slot j, (N, S_pad) bool: whether :meth:`point_weight_bounds` keeps set s for
        its j-th member; and the constant C (N,)."""
        h, tau = self._excess_at(z)
        h = torch.cat([h, torch.full_like(h[:, :1], math.inf)], dim=1)  # the padding's member: never the minimum
        keeps: dict[str, list[torch.Tensor]] = {"up": [], "down": []}
        for j in range(self.order):
            mine, up, down = h[:, self.members[:, j]], None, None
            for k in range(self.order):
                if k == j:
                    continue
                theirs = h[:, self.members[:, k]]
                first = (self.members[:, k] < self.members[:, j])[None]
                step_up, step_down = (theirs > mine) | ((theirs == mine) & first), theirs > 0
                up = step_up if up is None else up & step_up
                down = step_down if down is None else down & step_down
            keeps["up"].append(cast(torch.Tensor, up))
            keeps["down"].append(cast(torch.Tensor, down))
        n = self.floor.numel()
        mag = torch.maximum(w_lo.flatten(1)[:, n:].abs(), w_hi.flatten(1)[:, n:].abs()).sum(dim=1)
        const = 2.0 * self.order**2 * tau.amax(dim=1) * mag
        return keeps, round_up(const * (1.0 + 1e-9))

    def _member_sums(self, w_lo: torch.Tensor, w_hi: torch.Tensor, keeps: list[torch.Tensor] | None) -> Bounds:
        """(N, 1, n) bounds on w_{0,i} + Σ_{S ∋ i} w_S c_S, c_S ∈ [0, 1], over the sets kept for member i
        (``keeps``: per member slot, (N, S_pad) bool; None: every set), rounded outward."""
        n = self.floor.numel()
        out = []
        for first, sets, down in (
            (w_lo, w_lo.flatten(1)[:, n:].clamp(max=0.0), True),
            (w_hi, w_hi.flatten(1)[:, n:].clamp(min=0.0), False),
        ):
            pad = torch.zeros_like(first[:, 0, :1])
            total = torch.cat([first[:, 0], pad], dim=1)  # column n collects the padding
            size = torch.cat([first[:, 0].abs(), pad], dim=1)
            for j in range(self.order):
                terms = sets if keeps is None else torch.where(keeps[j], sets, torch.zeros_like(sets))
                index = self.members[:, j].expand(terms.shape[0], -1)
                total = total.scatter_add(1, index, terms)
                size = size.scatter_add(1, index, terms.abs())
            # absolute allowance for a float64 sum of T = 1 + containing() terms in any order: (T + 1)·eps·Σ|terms|
            grow = (self.containing() + 2) * EPS64 * size[:, :n]
            out.append(round_down(total[:, :n] - grow) if down else round_up(total[:, :n] + grow))
        return out[0].unsqueeze(1), out[1].unsqueeze(1)

    def reach_image(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds | None:
        # copy 0 is z itself; min is monotone in every member, so set S lies in [min_S h_lo, min_S h_hi]
        # (exact: min does not round); the padding is 0
        if not self._fits(lo):
            return None
        n = self.floor.numel()
        h_lo, h_hi = self._excess_box(lo, hi)
        low, high = per_copy(self._minima(h_lo), n), per_copy(self._minima(h_hi), n)
        return torch.cat([lo, low], dim=1), torch.cat([hi, high], dim=1)

    def problems(self) -> list[str]:
        """NaN/Inf floor, or an ``order`` that is not the member table's (the Lipschitz constant counts the
        sets of 2 … order coordinates that contain each one)."""
        out = super().problems()
        n, order = self.floor.numel(), self.order
        if isinstance(order, bool) or not isinstance(order, int) or not 2 <= order <= n:
            out.append(f"order = {order!r} must be an integer from 2 to the {n} inputs")
        elif self.members.shape[1] != order or self.members.shape[0] != _group_features(n, order) - n:
            out.append(f"order = {order} is not that of the member table ({self.members.shape[1]} members a set)")
        return out

    def _weights_fit(self, w_lo: torch.Tensor) -> bool:
        """Whether (N, 1 + C, n) weights are for this map's outputs on one copy of its n inputs."""
        n = self.floor.numel()
        return w_lo.shape[2] == n and w_lo.shape[1] * n == self.members.shape[0] + n


def _set_members(n: int, order: int, copies: int) -> torch.Tensor:
    """(copies·n, order) long: the members of every set of 2 … ``order`` of n coordinates in lexicographic order,
    padded with n (no coordinate) to ``order`` members and with all-n rows to copies·n rows."""
    rows = [list(s) + [n] * (order - k) for k in range(2, order + 1) for s in itertools.combinations(range(n), k)]
    rows += [[n] * order] * (copies * n - len(rows))
    return torch.tensor(rows, dtype=torch.long).reshape(-1, order)


class Compose(FeatureMap):
    """φ = φ_k ∘ … ∘ φ_1. Lipschitz constant: the product (rounded up)."""

    kind = "compose"

    def __init__(self, maps: list[FeatureMap]) -> None:
        super().__init__()
        self.maps = nn.ModuleList(maps)

    @property
    def feature_maps(self) -> list[FeatureMap]:
        """The composed maps as a typed list (``maps`` is the ModuleList of them)."""
        return cast("list[FeatureMap]", list(self.maps))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.maps:
            x = m(x)
        return x

    def fit(self, x: torch.Tensor) -> Compose:
        with torch.no_grad():
            for m in self.feature_maps:
                m.fit(x)
                x = m(x)
        return self

    def lipschitz(self, p: float) -> float:
        lip = 1.0
        for m in self.feature_maps:
            step = m.lipschitz(p)
            if step != 1.0:  # exact products need no rounding
                lip = math.nextafter(lip * step, math.inf)
        return lip

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        for m in self.feature_maps:
            in_shape = m.out_shape(in_shape)
        return in_shape

    def affine(self) -> bool:
        return all(m.affine() for m in self.feature_maps)

    def config(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [m.config() for m in self.feature_maps]

    def slope_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        bounds: tuple[torch.Tensor, torch.Tensor] | None = (lo, hi)
        for m in self.feature_maps:
            if bounds is None:
                return None
            bounds = coordinate_slopes_step(m, *bounds)
        return bounds

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor] | None:
        bounds: tuple[torch.Tensor, torch.Tensor] | None = (w_lo, w_hi)
        for m in reversed(self.feature_maps):
            if bounds is None:
                return None
            bounds = coordinate_weights_step(m, *bounds)
        return bounds

    def reach_image(self, lo: torch.Tensor, hi: torch.Tensor) -> Bounds | None:
        box: Bounds | None = (lo, hi)
        for m in self.feature_maps:
            if box is None:
                return None
            box = reach_image_step(m, box)
        return box

    def reach_weight_bounds(
        self, w_lo: torch.Tensor, w_hi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
    ) -> Bounds | None:
        steps = self.feature_maps
        return reach_weights_back(steps, (w_lo, w_hi), reach_input_boxes(steps, (lo, hi)))


FEATURE_MAPS: dict[str, type[FeatureMap]] = {
    c.kind: c for c in (Identity, Shift, Log1p, Standardize, ConcatAbs, Hinges, PairMin, GroupMin)
}


def feature_map_problems(phi: nn.Module, path: str = "feature_map") -> list[str]:
    """Why ``phi`` cannot be vouched for as a Lipschitz feature map (empty when it can).

    Accepted: a :class:`Compose` of accepted maps, or a :class:`FeatureMap` whose class declares
    ``lipschitz(p)`` together with its ``forward`` (the built-in maps of :data:`FEATURE_MAPS`, or a
    user's subclass defining both), whose parameters pass its :meth:`FeatureMap.problems` and whose
    constants at :data:`CHECKED_NORMS` are finite numbers > 0. Refused: a plain ``nn.Module``, a
    FeatureMap that declares no constants, a subclass overriding ``forward`` but inheriting
    ``lipschitz``. Paths in the messages start with ``path`` (e.g. ``feature_map.maps.0``).
    """
    name = type(phi).__name__
    if not isinstance(phi, FeatureMap):
        return [
            f"{path}: {name} is not a FeatureMap; a feature map must declare its Lipschitz constant "
            "per norm (subclass asymcert.nn.FeatureMap and define lipschitz(p))"
        ]
    if defining_class(type(phi), "lipschitz") is FeatureMap:
        return [f"{path}: {name} does not declare its Lipschitz constants (define lipschitz(p))"]
    if not declared_with_forward(phi, "lipschitz"):
        return [
            f"{path}: {name} overrides forward without declaring lipschitz(p) itself, so the inherited "
            "constant does not cover it"
        ]
    if isinstance(phi, Compose):
        return [p for i, m in enumerate(phi.maps) for p in feature_map_problems(m, f"{path}.maps.{i}")]
    found = phi.problems()
    return [f"{path}: {p}" for p in (found or lipschitz_problems(phi))]


def lipschitz_problems(phi: FeatureMap, norms: tuple[float, ...] = CHECKED_NORMS) -> list[str]:
    """Norms at which ``phi.lipschitz(p)`` fails or is not a finite number > 0 (one line each)."""
    problems = []
    for p in norms:
        try:
            value = phi.lipschitz(p)
        except Exception as exc:
            problems.append(f"lipschitz({p:g}) raised {type(exc).__name__}: {exc}")
            continue
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or value <= 0:
            problems.append(f"lipschitz({p:g}) = {value!r} is not a finite number > 0")
    return problems


def interval_product(
    lo: torch.Tensor, hi: torch.Tensor, mlo: torch.Tensor, mhi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """[lo, hi] · [mlo, mhi] elementwise, ``mlo``/``mhi`` of any shape with lo's number of elements."""
    mlo, mhi = mlo.reshape(lo.shape).to(lo), mhi.reshape(lo.shape).to(lo)
    corners = torch.stack([lo * mlo, lo * mhi, hi * mlo, hi * mhi])
    return corners.amin(dim=0), corners.amax(dim=0)


_OUTWARD = 2.0**-51
"""|v|·2⁻⁵¹ is at least two units in the last place of a normal float64 v, so v ∓ |v|·2⁻⁵¹, itself
rounded, still lies beyond the exact value that v rounds (by at most half a unit)."""
EPS64 = torch.finfo(torch.float64).eps
"""2⁻⁵², the machine epsilon (2u) of float64: the one definition the certifiers' rounding allowances use."""
_TINY = 2.0**-1074  # the smallest subnormal: one unit in the last place below 2⁻¹⁰²²
_NEG_INF = torch.tensor(-math.inf, dtype=torch.float64)
_POS_INF = torch.tensor(math.inf, dtype=torch.float64)


def _quantiles(ordered: torch.Tensor, levels: torch.Tensor) -> torch.Tensor:
    """Quantiles at ``levels`` of sorted values (linear interpolation, as ``torch.quantile``, which refuses
    more than 2²⁴ values). Nondecreasing in the level."""
    position = levels * (len(ordered) - 1)
    below = position.floor().long()
    above = torch.clamp(below + 1, max=len(ordered) - 1)
    share = position - below
    return torch.lerp(ordered[below], ordered[above], share)


def _graph_safe(v: torch.Tensor) -> bool:
    """Whether outward rounding must use differentiable, ONNX-exportable ops: while tracing for export, or
    when ``v`` carries a gradient (the certified-margin loss). Otherwise ``torch.nextafter`` is used,
    one unit in the last place and three passes instead of eight (the traffic path's hot spot)."""
    return v.requires_grad or torch.jit.is_tracing()


def per_copy(t: torch.Tensor, n: int) -> torch.Tensor:
    """Values (N, K·n) of φ's features, or bounds on their weights, as (N, K, n): copy k of input i at [:, k, i].
    The batch is reshape's −1 and K is computed: (N, −1, n) fails on an empty batch (N = 0), and so does
    (N, K, n) in onnxruntime, whose reshape fusion turns it into (0, −1, n)."""
    return t.reshape(-1, t.shape[1] // n, n)


def round_down(v: torch.Tensor) -> torch.Tensor:
    """A float64 lower bound of the exact value whose correctly rounded result is ``v``.

    A computed 0 stays 0: a sum or product rounds to 0 only when it is exactly 0, unless it underflows
    (|exact| < 2⁻¹⁰⁷⁵). An overflow to +∞ gives the largest float. Without a gradient and outside
    tracing: the next float below (``torch.nextafter``); else v − |v|·2⁻⁵¹ − 2⁻¹⁰⁷⁴ (plain ops, at least
    two units lower), which ONNX exports and autograd differentiates.
    """
    if not _graph_safe(v):
        return torch.where(v == 0, v, torch.nextafter(v, _NEG_INF.to(v.device)))
    down = v - v.abs() * _OUTWARD - (v != 0).to(v.dtype) * _TINY
    return torch.where(v == math.inf, torch.finfo(torch.float64).max, down)  # an overflow was ≥ the largest float


def round_up(v: torch.Tensor) -> torch.Tensor:
    """A float64 upper bound of the exact value whose correctly rounded result is ``v`` (see :func:`round_down`)."""
    if not _graph_safe(v):
        return torch.where(v == 0, v, torch.nextafter(v, _POS_INF.to(v.device)))
    up = v + v.abs() * _OUTWARD + (v != 0).to(v.dtype) * _TINY
    return torch.where(v == -math.inf, -torch.finfo(torch.float64).max, up)


def rounded_to(t: torch.Tensor, dtype: torch.dtype, up: bool) -> torch.Tensor:
    """``t`` as numbers of ``dtype``, each the nearest one at or above its value (``up``) or at or below it
    (a bound or a box edge that must not move inward when stored in a narrower type)."""
    wide = t.double()
    near = wide.to(dtype)
    outward, toward = (near.double() < wide, math.inf) if up else (near.double() > wide, -math.inf)
    return torch.where(outward, torch.nextafter(near, torch.full_like(near, toward)), near)


def _declared_bounds(phi: nn.Module, method: str, lo: torch.Tensor, hi: torch.Tensor) -> Bounds | None:
    """``phi.<method>(lo, hi)`` when ``phi`` is a FeatureMap that declares ``method`` with its forward, else None."""
    if not isinstance(phi, FeatureMap) or not declared_with_forward(phi, method):
        return None
    return cast("Bounds | None", getattr(phi, method)(lo, hi))


def coordinate_weights_step(phi: nn.Module, w_lo: torch.Tensor, w_hi: torch.Tensor) -> Bounds | None:
    """``phi.weight_bounds(w_lo, w_hi)`` when ``phi`` is a FeatureMap that declares it with its forward, else None."""
    return _declared_bounds(phi, "weight_bounds", w_lo, w_hi)


def coordinate_weights(
    phi: nn.Module, w_lo: torch.Tensor, w_hi: torch.Tensor, n_inputs: int
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Bounds (N, n_inputs) float64 on the raw-input weights ŵ of a linear function of φ's features.

    For bounds (N, K·n_inputs) on the weights w of φ's flattened features: for every x and every move
    of one input coordinate i by t, wᵀ(φ(x + t e_i) − φ(x)) = ŵ_i·t with ŵ_i inside the returned bounds
    (:meth:`FeatureMap.weight_bounds`, chained backwards through the steps). None when a step does not
    declare it.
    """
    bounds = coordinate_weights_step(phi, per_copy(w_lo.double(), n_inputs), per_copy(w_hi.double(), n_inputs))
    if bounds is None:
        return None
    return bounds[0].reshape(w_lo.shape[0], n_inputs), bounds[1].reshape(w_lo.shape[0], n_inputs)


def reach_image_step(phi: nn.Module, box: Bounds) -> Bounds | None:
    """``phi.reach_image(*box)`` when ``phi`` is a FeatureMap that declares it with its forward, else None."""
    return _declared_bounds(phi, "reach_image", *box)


def reach_weights_step(phi: nn.Module, weights: Bounds, box: Bounds | None) -> Bounds | None:
    """``phi.reach_weight_bounds(*weights, *box)`` when declared with its forward and the box is known,
    else its global :meth:`FeatureMap.weight_bounds` (sound for every box), else None."""
    if box is not None and isinstance(phi, FeatureMap) and declared_with_forward(phi, "reach_weight_bounds"):
        found = phi.reach_weight_bounds(*weights, *box)
        if found is not None:
            return found
    return coordinate_weights_step(phi, *weights)


def reach_input_boxes(steps: list[FeatureMap] | list[nn.Module], box: Bounds | None) -> list[Bounds | None]:
    """The box each step's inputs stay in (N, K, n) while the first step's stay in ``box``, pushed forward by
    :meth:`FeatureMap.reach_image` (None from a step that does not declare it on)."""
    boxes = [box]
    for m in steps[:-1]:
        last = boxes[-1]
        boxes.append(None if last is None else reach_image_step(m, last))
    return boxes


def reach_weights_back(
    steps: list[FeatureMap] | list[nn.Module], weights: Bounds | None, boxes: list[Bounds | None]
) -> Bounds | None:
    """Weight bounds on the outputs of ``steps`` → on their inputs, each step's :func:`reach_weights_step` on
    its input box (``boxes``, from :func:`reach_input_boxes`) in reverse; None when a step declares none."""
    for m, box in zip(reversed(steps), reversed(boxes)):
        if weights is None:
            return None
        weights = reach_weights_step(m, weights, box)
    return weights


def reach_matters(phi: nn.Module) -> bool:
    """Whether some step of φ declares :meth:`FeatureMap.reach_weight_bounds` (log1p, hinges, pair-min): else the
    weight bounds on any box are the global ones, and a reach search cannot enlarge a radius."""
    if isinstance(phi, Compose):
        return any(reach_matters(m) for m in phi.feature_maps)
    return isinstance(phi, FeatureMap) and declared_with_forward(phi, "reach_weight_bounds")


def coordinate_weights_within(
    phi: nn.Module, w_lo: torch.Tensor, w_hi: torch.Tensor, lo: torch.Tensor, hi: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor] | None:
    """:func:`coordinate_weights` for moves that keep every raw input inside the box [lo, hi] (N, n) float64.

    Each step uses :meth:`FeatureMap.reach_weight_bounds` on the box its inputs stay in (pushed forward
    by :meth:`FeatureMap.reach_image`) where declared, its global weight bounds otherwise, so the
    result is never wider than :func:`coordinate_weights`. None when a step declares neither.
    """
    n = lo.shape[1]
    box = (lo.double().reshape(lo.shape[0], 1, n), hi.double().reshape(hi.shape[0], 1, n))
    bounds = reach_weights_step(phi, (per_copy(w_lo.double(), n), per_copy(w_hi.double(), n)), box)
    if bounds is None:
        return None
    return bounds[0].reshape(w_lo.shape[0], n), bounds[1].reshape(w_lo.shape[0], n)


def coordinate_slopes_step(phi: nn.Module, lo: torch.Tensor, hi: torch.Tensor) -> Bounds | None:
    """``phi.slope_bounds(lo, hi)`` when ``phi`` is a FeatureMap that declares it with its forward, else None."""
    return _declared_bounds(phi, "slope_bounds", lo, hi)


def coordinate_slopes(phi: nn.Module, n_inputs: int) -> tuple[torch.Tensor, torch.Tensor] | None:
    """Slope intervals (K, n_inputs) float64 of a coordinate-wise φ (see :meth:`FeatureMap.slope_bounds`).

    None when φ is not coordinate-wise (or does not declare its slopes with its forward).
    """
    one = torch.ones((1, n_inputs), dtype=torch.float64)
    return coordinate_slopes_step(phi, one, one)


def build_feature_map(config: list[dict[str, Any]] | dict[str, Any], in_shape: tuple[int, ...]) -> Compose:
    """Build φ from its config: a list of ``{"kind": ...}`` steps applied in order.

    Raises:
        UnknownNameError: a step's kind is unknown.
        ConfigError: the config is not a step or a list of steps (JSON objects), or a setting is bad.
    """
    steps = [config] if isinstance(config, dict) else config
    if not isinstance(steps, (list, tuple)) or not all(isinstance(step, dict) for step in steps):
        raise ConfigError(f'feature_map = {config!r} must be a list of steps like {{"kind": "shift"}}')
    maps: list[FeatureMap] = []
    shape = tuple(in_shape)
    for step in steps:
        step = dict(step)
        kind = step.pop("kind", None)
        if kind not in FEATURE_MAPS:
            raise UnknownNameError(f"unknown feature map {kind!r}; known: {', '.join(sorted(FEATURE_MAPS))}")
        cls = FEATURE_MAPS[kind]
        params = inspect.signature(cls.__init__).parameters
        accepted = [
            n for n, prm in params.items() if n not in ("self", "in_shape") and prm.kind is prm.POSITIONAL_OR_KEYWORD
        ]
        unknown = sorted(set(step) - set(accepted))
        if unknown:
            raise UnknownNameError(f"unknown setting(s) {unknown} for feature map {kind!r}; accepted: {accepted}")
        m = cls(shape, **step) if "in_shape" in params else cls(**step)
        maps.append(m)
        shape = m.out_shape(shape)
    return Compose(maps)
