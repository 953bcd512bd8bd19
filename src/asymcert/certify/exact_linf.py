"""Exact ℓ∞ radii of feature-convex classifiers whose φ is piecewise linear after a monotone map.

:mod:`asymcert.certify.exact` needs an affine φ. SpamBase's maps are not affine: φ = hinges ∘ (positive
affine) ∘ log1p, coordinate-wise (each step optional: log1p, then shift / standardize / identity, then
hinges). For ℓ∞ moves the exact radius is still computable:

* an ℓ∞ ball of radius r (under a threat model: its scales, allowed directions and domain, as in
  :mod:`asymcert.certify.exact`) is a box [x_lo, x_hi] in raw units;
* m = log1p(max(x, 0)) is nondecreasing and a > 0, so the box's image in v = a ⊙ m(x) + c is the box
  [a ⊙ m(x_lo) + c, a ⊙ m(x_hi) + c], and every v in it is reached from the ball;
* on that box the features f = (v, relu(v − t_k)) are piecewise linear in v: a hinge whose knot t the
  box does not straddle is 0 or v − t there, one that it straddles is h with h ≥ v − t, h ≥ 0,
  h ≤ v − t + (t − v_lo)(1 − b), h ≤ (v_hi − t)·b and a binary b;
* g is an ICNN whose hidden weights are nonnegative, so min g over the features is its epigraph linear
  program (:func:`asymcert.certify.exact.feature_chain`).

So min s over the ball is a mixed-integer linear program (HiGHS through :func:`scipy.optimize.milp`),
and a flip exists within r iff it is ≤ 0; the radius is bracketed by bisection on r. The upper end is
always the size of a move that was checked to reach s ≤ 0 on the float64 model (so a certified radius
above it is a real violation); the lower end is the solver's word that no flip exists below it (its
tolerances, not a proof). Radii are in threat-model units (‖(δ_i / scale_i)‖∞), raw units without one.
"""

from __future__ import annotations

import copy
import math
import time
from dataclasses import dataclass

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, milp
from torch import nn

from asymcert.certify.exact import CHECK_TOL, LayerChain, UnsupportedModelError, feature_chain, resolve_threat
from asymcert.certify.inputs import check_inputs
from asymcert.errors import ConfigError
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.nn.convex import ICNN
from asymcert.nn.feature_maps import Compose, FeatureMap, Hinges, Identity, Log1p, Shift, Standardize
from asymcert.threat import ResolvedThreatModel, ThreatModel

__all__ = ["HingeChain", "LinfBracket", "exact_linf_radii", "hinge_chain"]

BISECTION_RTOL = 1e-4
"""The bracket [lo, hi] of each radius is narrowed until hi ≤ lo·(1 + BISECTION_RTOL)."""
MAX_SOLVES = 60
"""At most this many mixed-integer programs per input."""


@dataclass(frozen=True)
class HingeChain:
    """s(x) = g(f) + b with f = (v, relu(v − t_1), …, relu(v − t_K)), v = a ⊙ m(x) + c, all float64, flat.

    Attributes:
        log1p: m = log1p(max(x, 0)) when True, else the identity.
        a, c: (n,) the positive affine step (a > 0).
        knots: (K, n) hinge knots (K = 0: f = v); feature k·n + i is knot k − 1 of coordinate i.
        g: g in feature space (:func:`~asymcert.certify.exact.feature_chain`), balance included.
    """

    log1p: bool
    a: np.ndarray
    c: np.ndarray
    knots: np.ndarray
    g: LayerChain

    def pre(self, x: np.ndarray) -> np.ndarray:
        """v (N, n) of raw inputs x (N, n)."""
        return self.a * (np.log1p(np.maximum(x, 0.0)) if self.log1p else x) + self.c

    def raw(self, v: np.ndarray) -> np.ndarray:
        """A raw input x (n,) with pre(x) = v (the inverse of m where it is one-to-one)."""
        y = (v - self.c) / self.a
        return np.expm1(y) if self.log1p else y

    def features(self, x: np.ndarray) -> np.ndarray:
        """f (N, (K + 1)·n) of raw inputs x (N, n)."""
        v = self.pre(x)
        return np.concatenate([v] + [np.maximum(v - t, 0.0) for t in self.knots], axis=1)


def _steps(phi: nn.Module) -> list[nn.Module]:
    return list(phi.feature_maps) if isinstance(phi, Compose) else [phi]


def _split_steps(phi: nn.Module) -> tuple[bool, list[nn.Module], Hinges | None]:
    """(log1p first?, the affine steps, the final hinges) of φ, else UnsupportedModelError naming the step."""
    steps = _steps(phi)
    log1p = bool(steps) and isinstance(steps[0], Log1p)
    steps = steps[1:] if log1p else steps
    hinges = steps[-1] if steps and isinstance(steps[-1], Hinges) else None
    middle = steps[:-1] if hinges is not None else steps
    for step in middle:
        if not isinstance(step, (Identity, Shift, Standardize)):
            name = step.kind if isinstance(step, FeatureMap) else type(step).__name__
            raise UnsupportedModelError(
                f"exact ℓ∞ radii need φ = [log1p] → shift/standardize → [hinges], coordinate-wise; {name!r} is not one"
            )
    return log1p, middle, hinges


def hinge_chain(model: nn.Module) -> HingeChain:
    """The :class:`HingeChain` of a feature-convex model with an ICNN g and φ = [log1p] → affine → [hinges].

    Raises:
        UnsupportedModelError: another model, φ or g (the message names it), or a chain that does not
            reproduce the model's own features on random inputs.
    """
    g = feature_chain(model)
    fc = model if isinstance(model, FeatureConvexClassifier) else None
    if fc is None or not isinstance(fc.convex, ICNN):
        raise UnsupportedModelError("exact ℓ∞ radii through hinges need an ICNN g")
    log1p, middle, hinges = _split_steps(fc.feature_map)
    n = int(np.prod(fc.input_shape))
    with torch.no_grad():
        zero = torch.zeros((1, n), dtype=torch.float64)
        c = _apply(middle, zero)
        a = _apply(middle, torch.ones_like(zero)) - c
    knots = np.zeros((0, n)) if hinges is None else hinges.knot_values.detach().double().cpu().numpy().reshape(-1, n)
    chain = HingeChain(log1p, a.numpy()[0], c.numpy()[0], knots, g)
    if not bool(np.all(chain.a > 0)):
        raise UnsupportedModelError("exact ℓ∞ radii through hinges need an increasing affine step (a > 0)")
    _self_check(fc, chain, n)
    return chain


def _apply(steps: list[nn.Module], x: torch.Tensor) -> torch.Tensor:
    for step in steps:
        x = copy.deepcopy(step).double()(x)
    return x


def _self_check(model: FeatureConvexClassifier, chain: HingeChain, n: int) -> None:
    """The chain's features must equal the float64 model's on random inputs (both signs, heavy tails)."""
    gen = torch.Generator().manual_seed(0)
    probe = (
        torch.randn((8, n), dtype=torch.float64, generator=gen) * torch.logspace(0, 3, 8, dtype=torch.float64)[:, None]
    )
    with torch.no_grad():
        want = copy.deepcopy(model).double().features(probe.reshape((8, *model.input_shape))).flatten(1).numpy()
    got = chain.features(probe.numpy())
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-9, atol=1e-9 * (1 + np.abs(want).max())):
        raise UnsupportedModelError("the feature map is not [log1p] → positive affine → [hinges] as read")


# ---------------------------------------------------------------------------------------------
# One mixed-integer program: min s over a box of v
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class _Program:
    """min s(v) over lo ≤ v ≤ hi: ``bound`` a lower bound on the minimum (−inf: none), ``v`` a minimiser's
    v (None: no solution found), ``status`` HiGHS's message."""

    bound: float
    v: np.ndarray | None
    status: str


def _hinge_rows(chain: HingeChain, lo: np.ndarray, hi: np.ndarray) -> tuple[sp.csr_matrix, np.ndarray, np.ndarray]:
    """Rows A·[v, h, b] ≤ u (u: (R,)) that make h = relu(v − t) for every hinge, and (b_lo, b_hi) bounds of
    the binaries: fixed at 0 (1) where the box lies below (above) the knot, free where it straddles it."""
    n, k = lo.shape[0], chain.knots.shape[0]
    m = n * k
    t = chain.knots.reshape(m)
    v_of = np.tile(np.arange(n), k)
    lo_k, hi_k = lo[v_of], hi[v_of]
    idx, h_col, b_col = np.arange(m), n + np.arange(m), n + m + np.arange(m)
    big_low = np.maximum(t - lo_k, 0.0)  # h ≤ v − t + (t − v_lo)(1 − b)
    big_high = np.maximum(hi_k - t, 0.0)  # h ≤ (v_hi − t)·b
    rows = np.concatenate([idx, idx, idx, m + idx, m + idx, 2 * m + idx, 2 * m + idx])
    cols = np.concatenate([v_of, h_col, b_col, h_col, b_col, v_of, h_col])
    vals = np.concatenate([-np.ones(m), np.ones(m), big_low, np.ones(m), -big_high, np.ones(m), -np.ones(m)])
    a = sp.csr_matrix((vals, (rows, cols)), shape=(3 * m, n + 2 * m))
    upper = np.concatenate([-t + big_low, np.zeros(m), t])  # … ≤ −t + (t − v_lo), h − (v_hi − t)b ≤ 0, v − h ≤ t
    b_lo = (lo_k >= t).astype(float)
    b_hi = (hi_k > t).astype(float)
    return a, upper, np.stack([b_lo, b_hi])


def _placed(block: sp.spmatrix, col: int, width: int) -> sp.csr_matrix:
    """``block`` (R, w) as the columns col … col + w − 1 of an (R, width) matrix."""
    coo = sp.coo_matrix(block)
    return sp.csr_matrix((coo.data, (coo.row, coo.col + col)), shape=(coo.shape[0], width))


def _g_rows(g: LayerChain, n_f: int, z_start: int) -> tuple[sp.csr_matrix, np.ndarray, list[int]]:
    """Rows P_j f + M_j z_{j−1} − z_j ≤ −c_j of g's epigraph, over columns [f (0 … n_f − 1), …, z_1, …, z_L]
    (z_1 from ``z_start``), and the first column of each z_j."""
    widths = [layer.c.shape[0] for layer in g.layers]
    starts = list(z_start + np.concatenate([[0], np.cumsum(widths)[:-1]]).astype(int))
    width = z_start + int(sum(widths))
    blocks, upper = [], []
    for j, layer in enumerate(g.layers):
        parts = [_placed(-sp.identity(widths[j]), starts[j], width)]
        if layer.P is not None:
            parts.append(_placed(layer.P, 0, width))
        if layer.M is not None:
            parts.append(_placed(layer.M, starts[j - 1], width))
        blocks.append(sum(parts[1:], parts[0]))
        upper.append(-layer.c)
    return sp.vstack(blocks).tocsr(), np.concatenate(upper), starts


def _minimise(chain: HingeChain, lo: np.ndarray, hi: np.ndarray, time_limit: float) -> _Program:
    """min s over the features of every v in the box [lo, hi] (n,), as one mixed-integer program."""
    n, m, g = lo.shape[0], chain.knots.size, chain.g
    n_f, z_start = n + m, n + 2 * m
    a_h, u_h, b_bounds = _hinge_rows(chain, lo, hi)
    a_g, u_g, starts = _g_rows(g, n_f, z_start)
    width = a_g.shape[1]
    a = sp.vstack([_placed(a_h, 0, width), a_g]).tocsr()
    upper = np.concatenate([u_h, u_g])
    cost = np.zeros(width)
    cost[starts[-1] : starts[-1] + g.out_m.shape[1]] = g.out_m.toarray()[0]
    if g.out_p is not None:
        cost[:n_f] += g.out_p.toarray()[0]
    h_hi = np.maximum(np.tile(hi, m // n if n else 0) - chain.knots.reshape(m), 0.0)
    col_lo = np.concatenate([lo, np.zeros(m), b_bounds[0], np.zeros(width - z_start)])
    col_hi = np.concatenate([hi, h_hi, b_bounds[1], np.full(width - z_start, np.inf)])
    integrality = np.zeros(width)
    integrality[n_f:z_start] = 1
    res = milp(
        cost,
        integrality=integrality,
        bounds=Bounds(col_lo, col_hi),
        constraints=LinearConstraint(a, -np.inf, upper),
        options={"time_limit": max(time_limit, 1e-3), "mip_rel_gap": 1e-9},
    )
    bound = getattr(res, "mip_dual_bound", None)
    if res.status == 0 and bound is None:  # a pure LP (no binaries): optimal means the minimum itself
        bound = res.fun
    v = None if res.x is None else np.asarray(res.x[:n], dtype=float)
    return _Program(-math.inf if bound is None else float(bound) + g.out_c, v, str(res.message))


# ---------------------------------------------------------------------------------------------
# The radius: bisection on r
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class LinfBracket:
    """Exact ℓ∞ radii bracketed per input: lo ≤ exact ≤ hi, (N,) float64 tensors.

    ``hi`` is the size of a move checked to reach s ≤ 0 on the float64 model (∞: none exists within the
    threat model's domain, ``lo`` = ∞ too); ``lo`` the largest radius the solver found free of flips.
    0 for inputs that are not flagged. ``status`` per input: "exact" (hi ≤ lo·(1 + rtol)), "no flip",
    "not flagged", or why the bracket stayed open ("time limit", "solver: …"). ``delta`` (N, n): the raw
    move of size ``hi`` (NaN rows where there is none), a counterexample anyone can re-check.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    delta: torch.Tensor
    status: list[str]
    seconds: float


@dataclass(frozen=True)
class _Ball:
    """Where the ℓ∞ ball of one input may reach, per coordinate: u ∈ [max(u_lo, −r), min(u_hi, r)]."""

    x: np.ndarray
    scale: np.ndarray
    u_lo: np.ndarray
    u_hi: np.ndarray

    @property
    def r_max(self) -> float:
        return float(np.max(np.maximum(-self.u_lo, self.u_hi), initial=0.0))

    def box(self, r: float) -> tuple[np.ndarray, np.ndarray]:
        return self.x + self.scale * np.maximum(self.u_lo, -r), self.x + self.scale * np.minimum(self.u_hi, r)


def _balls(x: np.ndarray, tm: ResolvedThreatModel | None) -> list[_Ball]:
    """The reach of every input (N, n) under ``tm`` (its domain, directions and scales; none: all of R^n)."""
    n = x.shape[1]
    if tm is None:
        inf = np.full(n, np.inf)
        return [_Ball(row, np.ones(n), -inf, inf) for row in x]
    scale, lower, upper = (t.double().numpy() for t in (tm.scale, tm.lower, tm.upper))
    down, up = tm.can_decrease.numpy(), tm.can_increase.numpy()
    out = []
    for row in x:
        u_lo = np.where(down, np.minimum((lower - row) / scale, 0.0), 0.0)
        u_hi = np.where(up, np.maximum((upper - row) / scale, 0.0), 0.0)
        out.append(_Ball(row, scale, u_lo, u_hi))
    return out


def _flip_at(
    chain: HingeChain, model64: FeatureConvexClassifier, ball: _Ball, r: float, s0: float, limit: float
) -> tuple[str, np.ndarray | None]:
    """("flip", the move δ (n,)) when the program finds a move within r that is checked to reach s ≤ 0,
    ("safe", None) when its lower bound on min s is > 0, else (HiGHS's message, None)."""
    x_lo, x_hi = ball.box(r)
    prog = _minimise(chain, chain.pre(x_lo[None])[0], chain.pre(x_hi[None])[0], limit)
    if prog.bound > 0:
        return "safe", None
    if prog.v is not None:
        moved = np.clip(chain.raw(prog.v), x_lo, x_hi)
        with torch.no_grad():
            s = float(model64(torch.from_numpy(moved[None]).reshape((1, *model64.input_shape))))
        if s <= CHECK_TOL * max(1.0, abs(s0)):
            return "flip", moved - ball.x
    return f"solver: {prog.status}", None


def _bracket_one(
    chain: HingeChain, model64: FeatureConvexClassifier, ball: _Ball, s0: float, limit: float, rtol: float
) -> tuple[float, float, np.ndarray | None, str]:
    """(lo, hi, the move of size hi or None, status) of one flagged input: bisection on r (geometric
    once the bracket is finite, halving from hi while lo is 0, doubling while no flip is found)."""
    deadline = time.perf_counter() + limit
    lo, hi, best = 0.0, math.inf, None
    r = ball.r_max if math.isfinite(ball.r_max) else 1.0
    for _ in range(MAX_SOLVES):
        left = deadline - time.perf_counter()
        if left <= 0:
            return lo, hi, best, "time limit"
        outcome, move = _flip_at(chain, model64, ball, r, s0, left)
        if move is not None:
            size = float(np.max(np.abs(move) / ball.scale, initial=0.0))
            # a verified flip bounds both ends (lo too, should the solver have called a larger box safe)
            lo, hi, best = min(lo, size), min(hi, size), move if size < hi else best
        elif outcome == "safe":
            lo = max(lo, r)
            if r >= ball.r_max:
                return math.inf, math.inf, None, "no flip"
        else:
            return lo, hi, best, outcome
        if hi <= lo * (1.0 + rtol):
            return lo, hi, best, "exact"
        r = 2.0 * r if math.isinf(hi) else (hi / 2.0 if lo == 0 else math.sqrt(lo * hi))
    return lo, hi, best, "open after MAX_SOLVES programs"


def exact_linf_radii(
    model: nn.Module,
    x: torch.Tensor,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
    time_limit: float = 60.0,
    rtol: float = BISECTION_RTOL,
) -> LinfBracket:
    """Bracket the exact ℓ∞ radius of every input x (N, n) of a model with φ = [log1p] → affine → [hinges].

    Args:
        model: a feature-convex classifier with an ICNN g (see :func:`hinge_chain`).
        x: (N, n) raw inputs. threat_model: radii in its units, moves it allows (None: raw ℓ∞; a
            :class:`~asymcert.threat.ThreatModel` names features by index).
        time_limit: seconds per input (> 0). rtol: stop once hi ≤ lo·(1 + rtol) (> 0).
    Raises:
        UnsupportedModelError: a model this module cannot read (the message names why).
        InputError: inputs of the wrong shape or with NaN/Inf. ConfigError: a threat model for another
            number of features, a time limit or tolerance that is not a positive number.
    """
    t0 = time.perf_counter()
    if not isinstance(model, FeatureConvexClassifier):
        raise UnsupportedModelError(
            f"exact radii exist only for feature-convex classifiers, got {type(model).__name__}"
        )
    model64 = copy.deepcopy(model).double().eval()
    chain = hinge_chain(model64)
    check_inputs(x, tuple(model.input_shape))
    tm = resolve_threat(threat_model, chain.a.shape[0])
    for name, value in (("time_limit", time_limit), ("rtol", rtol)):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
            raise ConfigError(f"exact ℓ∞ radii: {name} must be a positive number, got {value!r}")
    flat = x.detach().reshape(x.shape[0], -1).double().cpu().numpy()
    with torch.no_grad():
        scores = model64(torch.from_numpy(flat).reshape((-1, *model64.input_shape))).numpy()
    lo, hi, delta, status = np.zeros(len(flat)), np.zeros(len(flat)), np.full_like(flat, np.nan), []
    for i, ball in enumerate(_balls(flat, tm)):
        if scores[i] <= 0:
            status.append("not flagged")
            continue
        lo[i], hi[i], move, why = _bracket_one(chain, model64, ball, float(scores[i]), time_limit, rtol)
        if move is not None:
            delta[i] = move
        status.append(why)
    return LinfBracket(
        torch.from_numpy(lo), torch.from_numpy(hi), torch.from_numpy(delta), status, time.perf_counter() - t0
    )
