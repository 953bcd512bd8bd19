"""Exact ℓ1 and ℓ2 radii of feature-convex classifiers whose φ is piecewise linear after log1p (SpamBase's maps).

ℓ1 and ℓ2 balls are not boxes, and log1p does not map them to polyhedra, so :mod:`asymcert.certify.exact_linf`'s
search over boxes does not carry over. But the size of a move is a norm of one-dimensional costs: putting
v_i = a_i·m(x_i + δ_i) + c_i (m = log1p(max(·, 0)), or the identity) at the value w costs

    κ_i(w) = |m⁻¹((w − c_i)/a_i) − x_i| / scale_i,

convex above v_i's own value v⁰_i (m⁻¹ = expm1 is convex and increasing) and concave below it, and the move's
size is ‖κ(v)‖_p. So the exact radius (in the threat model's units) is

    min ‖κ(v)‖_p   over v in the threat model's reach, subject to s(v) ≤ 0,

with s(v) the exact mixed-integer encoding of :mod:`asymcert.certify.exact_linf` (hinges, pair-min, g's
epigraph); only κ and the ℓ2 norm are nonlinear. The program here models both from below:

* each κ_i by tangents at points above v⁰_i (valid everywhere: below v⁰_i they are ≤ κ_i(v⁰_i) = 0) and,
  below v⁰_i, by the chords between consecutive breakpoints (a concave function lies above its chord on
  the chord's segment, and the chords' minimum is its interpolant; with several segments, binaries pick
  one, so the program may use the lowest chord wherever v_i lies);
* for ℓ2, each κ_i² by tangents of the square, q_i ≥ 2τκ_i − τ² (the program minimises Σ q_i ≤ ‖κ‖₂²,
  separable like κ, so each coordinate is refined on its own).

Since ‖·‖_p is nondecreasing in each κ_i ≥ 0, the program's optimum L is at most the exact radius, and the
point it finds is a real input: mapped back to raw units, its move has true size U ≥ L and reaches s ≤ 0
(checked on the float64 model). Breakpoints and tangents are then added where the model and
the truth disagree at that point (outer approximation), until U ≤ L·(1 + rtol). U is a counterexample
anyone can re-check; L is the solver's word, not a proof.

The box: a move of ℓp size c moves no coordinate by more than c (in scale units), so the program over the
box |δ_i / scale_i| ≤ R finds every flip of size ≤ R; if its bound exceeds R, or it has no solution, the
exact radius is > R. R starts at the closed-form certificate, doubles while that happens, and shrinks to U
once a counterexample is known (small boxes: tight big-M constants, quick programs).
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass, field

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from asymcert.certify.exact_linf import (
    BISECTION_RTOL,
    MAX_BOX,
    PUSHES,
    BracketOne,
    ExactBracket,
    HingeChain,
    Program,
    Reach,
    bracket_radii,
    feature_columns,
    first_flip,
    run_milp,
    score_terms,
)
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.threat import ResolvedThreatModel, ThreatModel

__all__ = ["cross_check", "exact_l1_radii", "exact_l2_radii"]

MAX_ROUNDS = 80
"""At most this many mixed-integer programs per input."""
START_TANGENTS = 16
"""Tangents of each coordinate's cost above its own value, evenly spaced up to the box's end, before refinement."""
SQUARE_TANGENTS = 8
"""ℓ2: tangents of each coordinate's squared cost, evenly spaced up to its largest value in the box."""
TIME_LIMIT, INFEASIBLE = 1, 2  # scipy.optimize.milp's statuses: out of time, no feasible point
MAX_SCALE_SPREAD = 1e6
"""The largest ratio of two movable features' scales the programs bracket. Beyond it their lower ends drift above
the exact radius: against the LP/QP radii of :mod:`asymcert.certify.exact` (affine φ), up to 4.5× for ℓ2 and 1.02×
for ℓ1 with scales 10⁸ and 1, or drawn from 10^±5 and 10^±6; within 10^±4 (random draws) and 10^±3 they held to
the bisection's tolerance (audit 30 F1). Such inputs are left unbracketed, [0, ∞), with the reason."""


@dataclass
class _Costs:
    """One input's cost per coordinate, κ_i(w) (module docstring), and the models below it and below ‖κ‖_p.

    Attributes:
        chain: the model's chain; x (n,) the input; scale (n,) the threat model's scales (ones without one).
        v0: (n,) the input's own v. p: 1 or 2.
        down: per coordinate, extra breakpoints below v0 (the box's lower end and v0 are always breakpoints).
        up: per coordinate, extra tangent points above v0 (START_TANGENTS + 1 evenly spaced ones always).
        squares: ℓ2 only, per coordinate, extra points τ of the rows q_i ≥ 2τκ_i − τ² (SQUARE_TANGENTS evenly
            spaced ones always).
    """

    chain: HingeChain
    x: np.ndarray
    scale: np.ndarray
    v0: np.ndarray
    p: float = 1.0
    down: list[list[float]] = field(default_factory=list)
    up: list[list[float]] = field(default_factory=list)
    squares: list[list[float]] = field(default_factory=list)

    def __post_init__(self) -> None:
        n = len(self.x)
        self.down, self.up, self.squares = [[] for _ in range(n)], [[] for _ in range(n)], [[] for _ in range(n)]

    def size(self, move: np.ndarray) -> float:
        """‖δ / scale‖_p of a raw move δ (n,): the radius's units."""
        return float(np.linalg.norm(move / self.scale, ord=self.p))

    def raw(self, w: np.ndarray) -> np.ndarray:
        """The raw input (n,) whose v is ``w`` (n,), the cheapest such one: coordinates at v0 stay at x."""
        at_home = np.abs(w - self.v0) <= 1e-12 * (1.0 + np.abs(self.v0))
        return np.where(at_home, self.x, self.chain.raw(w))

    def kappa(self, w: np.ndarray) -> np.ndarray:
        """κ_i(w_i) (n,): the ℓ1 cost (threat-model units) of moving each coordinate to v = w."""
        return np.abs(self.raw(w) - self.x) / self.scale

    def slope(self, w: np.ndarray) -> np.ndarray:
        """dκ_i/dw at w ≥ v0 (n,) or (k, n): d m⁻¹/dw / scale, the shape of w."""
        inner = np.ones_like(w) / self.chain.a
        if self.chain.log1p:
            inner = inner * np.exp((w - self.chain.c) / self.chain.a)
        return inner / self.scale

    def refine(self, w: np.ndarray, modelled: np.ndarray, squares: np.ndarray) -> bool:
        """Add a breakpoint (below v0) or tangent (above) where the model's κ̂ (n,) at w (n,) is below κ, and
        (ℓ2) a tangent of the square at κ̂_i where the modelled square q̂_i (n,) is below κ̂_i²; False when
        there is nothing to add."""
        true = self.kappa(w)
        tol = 1e-10 * (true + np.max(true, initial=0.0))  # relative: radii may be tiny
        added = False
        for i in np.flatnonzero(true - modelled > tol):
            points = self.down[i] if w[i] < self.v0[i] else self.up[i]
            if all(abs(w[i] - q) > 1e-12 * (1.0 + abs(q)) for q in points):
                points.append(float(w[i]))
                added = True
        if self.p == 2.0:
            sq = modelled**2
            for i in np.flatnonzero(sq - squares > 1e-10 * (sq + np.max(sq, initial=0.0))):
                self.squares[i].append(float(modelled[i]))
                added = True
        return added


def _tangent_rows(prog: Program, costs: _Costs, v: np.ndarray, k: np.ndarray, hi: np.ndarray, unit: float) -> None:
    """κ_i ≥ κ_i(t) + κ_i'(t)(v_i − t) for START_TANGENTS + 1 points t from v0_i to the box's upper end and the
    tangent points refinement added (any t ≥ v0_i gives a valid row)."""
    grid = [costs.v0 + (hi - costs.v0) * j / START_TANGENTS for j in range(START_TANGENTS + 1)]
    idx = [(i, t) for i in range(len(v)) if hi[i] > costs.v0[i] for t in [*(p[i] for p in grid), *costs.up[i]]]
    if not idx:
        return
    rows, points = np.array([i for i, _ in idx]), np.array([t for _, t in idx])
    w = np.repeat(costs.v0[None], len(idx), axis=0)  # row j: v0 with coordinate rows[j] at points[j]
    pick = (np.arange(len(idx)), rows)
    w[pick] = points
    slopes, values = costs.slope(w)[pick], costs.kappa(w)[pick]
    prog.rows([(v[rows], slopes / unit), (k[rows], -1.0 / unit)], (slopes * points - values) / unit)


def _chord_rows(prog: Program, costs: _Costs, v: np.ndarray, k: np.ndarray, lo: np.ndarray, unit: float) -> None:
    """Below v0: κ_i ≥ the chord of each segment between consecutive breakpoints; with several segments a
    binary per segment picks the one that binds (big-M: the chord's value at the box's lower end)."""
    for i in np.flatnonzero(lo < costs.v0):
        points = np.unique([lo[i], costs.v0[i], *[q for q in costs.down[i] if lo[i] < q < costs.v0[i]]])
        w = np.repeat(costs.v0[None], len(points), axis=0)
        w[:, i] = points
        values = costs.kappa(w)[:, i]
        slopes = np.diff(values) / np.diff(points)  # ≤ 0: κ falls towards v0
        upper = slopes * points[:-1] - values[:-1]  # chord: κ ≥ value_p + slope·(v − p)
        m = len(slopes)
        one = np.full(m, i)
        if m == 1:
            prog.rows([(v[one], slopes / unit), (k[one], -1.0 / unit)], upper / unit)
            continue
        big = values[:-1] + slopes * (lo[i] - points[:-1])  # each chord's largest value in the box
        y = prog.columns(np.zeros(m), np.ones(m), integer=True)
        prog.rows([(v[one], slopes / unit), (k[one], -1.0 / unit), (y[0], big / unit)], (upper + big) / unit)
        pick = sp.csr_matrix(np.ones((1, m)))
        prog.matrix_rows([(pick, y[0])], [], np.array([1.0]))
        prog.matrix_rows([(-pick, y[0])], [], np.array([-1.0]))


@dataclass(frozen=True)
class _Round:
    """One program's outcome: ``bound`` ≤ its optimum, in the radius's units (None: no feasible point); ``w``
    its v, ``modelled`` its κ̂ and ``squares`` (ℓ2) its q̂ (None: no point found); ``status`` HiGHS's message."""

    bound: float | None
    w: np.ndarray | None
    modelled: np.ndarray | None
    squares: np.ndarray | None
    status: str


def _size_columns(prog: Program, costs: _Costs, k: np.ndarray, top: np.ndarray) -> tuple[np.ndarray, float]:
    """(the columns whose sum the program minimises, their unit): the κ̂ (ℓ1), or q_i ≥ 2τκ̂_i − τ² ≥ 0 (ℓ2,
    Σ q ≤ ‖κ‖₂²). Units are thousandths of the box's largest value, so HiGHS's absolute tolerances (1e-7
    on rows, 1e-6 on the gap) stay ≤ 1e-9 of the radius however small it is; rows are scaled to match."""
    unit = max(float(np.max(top)), 1e-12) ** costs.p * 1e-3
    if costs.p == 1.0:
        return k, unit
    q = prog.columns(np.zeros(len(top)), top**2 * (1 + 1e-9) + 1e-24, unit=top**2)[0]
    grid = [top * j / SQUARE_TANGENTS for j in range(1, SQUARE_TANGENTS + 1)]
    idx = [(i, tau) for i in np.flatnonzero(top > 0) for tau in [*(g[i] for g in grid), *costs.squares[i]]]
    if idx:
        rows, tau = np.array([i for i, _ in idx]), np.array([t for _, t in idx])
        prog.rows([(k[rows], 2.0 * tau / unit), (q[rows], -1.0 / unit)], tau**2 / unit)  # 2τκ − q ≤ τ²
    return q, unit


def _solve_round(costs: _Costs, lo: np.ndarray, hi: np.ndarray, time_limit: float, cutoff: float, gap: float) -> _Round:
    """min of the modelled ‖κ̂‖_p (ℓ2: its square) over v in the box [lo, hi] (n,) subject to s(v) ≤ 0 and a
    size ≤ ``cutoff`` (a known flip's, or ∞), as one mixed-integer program solved to the relative ``gap``."""
    prog, chain = Program(), costs.chain
    f = feature_columns(prog, chain, lo, hi, costs.v0)
    n = len(lo)
    v = np.arange(n)  # feature_columns's first n columns are v
    top = np.maximum(costs.kappa(lo), costs.kappa(hi))
    k = prog.columns(np.zeros(n), top * (1 + 1e-9) + 1e-12, unit=top)[0]
    scale = max(float(np.max(top)), 1e-12) * 1e-3  # rows on κ in thousandths of its largest value
    _tangent_rows(prog, costs, v, k, hi, scale)
    _chord_rows(prog, costs, v, k, lo, scale)
    blocks = [(sp.csr_matrix(np.asarray(coef)[None]), cols) for cols, coef in score_terms(prog, chain.g, f)]
    prog.matrix_rows(blocks, [], np.array([-chain.g.out_c]))  # s ≤ 0
    size, unit = _size_columns(prog, costs, k, top)
    if math.isfinite(cutoff):  # no better point is larger than a known flip (prunes the search)
        ones = sp.csr_matrix(np.full((1, n), 1.0 / unit))
        prog.matrix_rows([(ones, size)], [], np.array([cutoff**costs.p / unit]))
    cost = np.zeros(prog.n_cols)
    cost[size] = 1.0 / unit
    res = run_milp(prog, cost, time_limit, gap)
    if res.status == INFEASIBLE:
        return _Round(None, None, None, None, str(res.message))
    bound = getattr(res, "mip_dual_bound", None)
    if res.status == 0 and (bound is None or not math.isfinite(bound)):  # no binaries: an LP optimum
        bound = res.fun
    bound = -math.inf if bound is None or not math.isfinite(bound) else max(float(bound) * unit, 0.0) ** (1 / costs.p)
    if res.x is None:
        why = "time limit" if res.status == TIME_LIMIT else f"solver: {res.message}"
        return _Round(bound, None, None, None, why)
    squares = np.asarray(res.x[size]) if costs.p == 2.0 else None
    status = "time limit" if res.status == TIME_LIMIT else str(res.message)  # a point, but no proof it is best
    return _Round(bound, np.clip(res.x[:n], lo, hi), np.asarray(res.x[k]), squares, status)


def _box(costs: _Costs, ball: Reach, r: float) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """(raw lower, raw upper, v lower, v upper) (n,) of the moves with |δ_i / scale_i| ≤ r the threat model allows."""
    x_lo, x_hi = ball.box(r)
    pre = costs.chain.pre
    return x_lo, x_hi, np.minimum(pre(x_lo[None])[0], costs.v0), np.maximum(pre(x_hi[None])[0], costs.v0)


def _check(costs: _Costs, model64: FeatureConvexClassifier, w: np.ndarray, box: tuple) -> np.ndarray | None:
    """The raw move (n,) to v = w, or that move pushed (1 + ε)-fold for ε in PUSHES (the program meets s ≤ 0
    only to its feasibility tolerance), when it is allowed and reaches s ≤ 0 on the float64 model; else None."""
    move = costs.raw(w) - costs.x
    tries = np.stack([np.clip(costs.x + (1.0 + eps) * move, box[0], box[1]) for eps in PUSHES])
    return first_flip(model64, costs.x, tries)


@dataclass
class _Search:
    """One flagged input's search (module docstring): its costs and reach, the float64 model and its score
    s0, and the bracket so far: lo ≤ exact ≤ hi, ``best`` the move of size hi."""

    costs: _Costs
    ball: Reach
    model64: FeatureConvexClassifier
    s0: float
    rtol: float
    lo: float = 0.0
    hi: float = math.inf
    best: np.ndarray | None = None

    def closed(self) -> bool:
        return self.hi <= self.lo * (1.0 + self.rtol)

    def step(self, r: float, left: float) -> tuple[float, str | None]:
        """One program over the box of radius r within ``left`` seconds: (the next box radius, None), or
        (r, the final status)."""
        box = _box(self.costs, self.ball, r)
        found = _solve_round(self.costs, box[2], box[3], left, self.hi, self.rtol / 4)
        whole = r >= self.ball.r_max  # the box holds every allowed move
        grow = min(2.0 * r, self.ball.r_max, self.hi)
        if found.bound is None:  # no flip within the box shorter than hi (the program's cutoff): never lo > hi
            self.lo = min(math.inf if whole else max(self.lo, r), self.hi)
            if whole and math.isinf(self.hi):
                return r, "no flip"
            return (r, "exact") if self.closed() else (grow, None)
        self.lo = max(self.lo, found.bound if (found.bound <= r or whole) else r)
        if found.w is None or found.modelled is None:
            return r, found.status
        move = _check(self.costs, self.model64, found.w, box)
        if move is not None and self.costs.size(move) < self.hi:
            self.hi, self.best = self.costs.size(move), move
        self.lo = min(self.lo, self.hi)  # a verified flip bounds the solver's word too (its tolerances)
        if self.closed():
            return r, "exact"
        squares = found.squares if found.squares is not None else np.zeros(0)
        refined = self.costs.refine(found.w, found.modelled, squares)
        if found.bound > r and not whole:
            return grow, None
        if not refined:
            if found.status == "time limit":  # the program stopped before its bound met its point
                return r, "time limit"
            why = "the solver's gap" if move is not None else "the program's point is not a flip"
            lo, hi = self.lo * self.ball.per_unit, self.hi * self.ball.per_unit
            return r, f"undecided ({why}): min size in [{lo:.6g}, {hi:.6g}]"
        return min(r, self.hi), None


def _bracket_one(p: float) -> BracketOne:
    """The ℓp (1 or 2) search of one flagged input, as :func:`~asymcert.certify.exact_linf.bracket_radii` runs it."""

    def one(
        chain: HingeChain,
        model64: FeatureConvexClassifier,
        ball: Reach,
        s0: float,
        limit: float,
        rtol: float,
        start: float,
    ) -> tuple[float, float, np.ndarray | None, str]:
        if ball.r_max <= 0:  # the threat model lets nothing move
            return math.inf, math.inf, None, "no flip"
        if chain.log1p and bool(np.any((ball.x < 0) & (ball.u_hi > 0))):
            return 0.0, math.inf, None, "not bracketed: x < 0 under log1p"
        movable = ball.scale[(ball.u_lo < 0) | (ball.u_hi > 0)]
        if movable.max() > MAX_SCALE_SPREAD * movable.min():  # (ℓ∞'s boxes hold: exact_linf brackets them)
            why = f"not bracketed: the movable features' scales span more than {MAX_SCALE_SPREAD:g}×"
            return 0.0, math.inf, None, why
        costs = _Costs(chain, ball.x, ball.scale, chain.pre(ball.x[None])[0], p)
        search = _Search(costs, ball, model64, s0, rtol)
        deadline = time.perf_counter() + limit
        r = min(ball.r_max, start if start > 0 else 1e-3)
        for _ in range(MAX_ROUNDS):
            left = deadline - time.perf_counter()
            if left <= 0:
                return search.lo, search.hi, search.best, "time limit"
            if math.isinf(search.hi) and r > MAX_BOX:
                return search.lo, search.hi, None, f"no flip up to r = {search.lo * ball.per_unit:.6g}"
            r, status = search.step(r, left)
            if status is not None:
                return search.lo, search.hi, search.best, status
        if math.isinf(search.hi):  # an unbounded reach (no domain) that log1p compresses: no flip at all?
            return search.lo, search.hi, None, f"no flip up to r = {search.lo * ball.per_unit:.6g}"
        return search.lo, search.hi, search.best, "open after MAX_ROUNDS programs"

    return one


def exact_l1_radii(
    model: nn.Module,
    x: torch.Tensor,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
    time_limit: float = 60.0,
    rtol: float = BISECTION_RTOL,
) -> ExactBracket:
    """Bracket the exact ℓ1 radius of every input x (N, n) of a model with φ = [log1p] → affine → [pair-min]
    → [hinges] (module docstring).

    Args:
        model: a feature-convex classifier with an ICNN g (see :func:`~asymcert.certify.exact_linf.hinge_chain`).
        x: (N, n) raw inputs. threat_model: radii in its units (Σ_i |δ_i| / scale_i), moves it allows (None:
            raw ℓ1; a :class:`~asymcert.threat.ThreatModel` names features by index).
        time_limit: seconds per input (> 0). rtol: stop once hi ≤ lo·(1 + rtol) (> 0).
    Returns:
        An :class:`~asymcert.certify.exact_linf.ExactBracket`: ``hi`` the ℓ1 size of ``delta``, a move checked
        to reach s ≤ 0 on the float64 model; ``lo`` the programs' bound. Inputs with x_i < 0 on a coordinate
        log1p reads and the attacker may raise are not bracketed (lo 0, hi ∞, a status that says so).
    Raises:
        UnsupportedModelError: a model this module cannot read (the message names why).
        InputError: inputs of the wrong shape or with NaN/Inf. ConfigError: a threat model for another
            number of features, a time limit or tolerance that is not a positive number.
    """
    return bracket_radii(model, x, threat_model, time_limit, rtol, 1.0, _bracket_one(1.0))


def exact_l2_radii(
    model: nn.Module,
    x: torch.Tensor,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
    time_limit: float = 60.0,
    rtol: float = BISECTION_RTOL,
) -> ExactBracket:
    """Bracket the exact ℓ2 radius (‖δ / scale‖₂ in the threat model's units) of every input x (N, n): as
    :func:`exact_l1_radii`, with each squared cost modelled from below by tangents (module docstring)."""
    return bracket_radii(model, x, threat_model, time_limit, rtol, 2.0, _bracket_one(2.0))


def cross_check(brackets: dict[float, ExactBracket]) -> None:
    """Mark (in place) every "exact" status whose lower end contradicts another norm's upper end for the same
    inputs: ‖δ‖_q ≤ ‖δ‖_p for q > p, so the exact ℓq radius is at most the ℓp one, and lo_q > hi_p (a verified
    flip) means the ℓq programs' word was wrong (measured: an ℓ2 "exact" radius 1.6× the same input's ℓ1 one,
    audit 33 F1). ``brackets``: per norm (1, 2, ∞) the brackets of one batch (N inputs each)."""
    for p, low_norm in brackets.items():
        for q, high_norm in brackets.items():
            if q <= p:
                continue
            bad = (high_norm.lo > low_norm.hi * (1.0 + 1e-9)).tolist()
            for i in (i for i, b in enumerate(bad) if b and high_norm.status[i] == "exact"):
                hi = float(low_norm.hi[i])
                high_norm.status[i] = f"inconsistent: lo above the ℓ{p:g} upper end {hi:.6g}"
