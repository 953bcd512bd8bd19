"""Exact ℓ∞ radii of feature-convex classifiers whose φ is piecewise linear after a monotone map.

:mod:`asymcert.certify.exact` needs an affine φ. SpamBase's maps are not affine: φ = [pair-min] → hinges
∘ (positive affine) ∘ log1p (each step optional: log1p, then shift / standardize / identity, then
pair-min, then hinges). For ℓ∞ moves the exact radius is still computable:

* an ℓ∞ ball of radius r (under a threat model: its scales, allowed directions and domain, as in
  :mod:`asymcert.certify.exact`) is a box [x_lo, x_hi] in raw units;
* m = log1p(max(x, 0)) is nondecreasing and a > 0, so the box's image in v = a ⊙ m(x) + c is the box
  [a ⊙ m(x_lo) + c, a ⊙ m(x_hi) + c], and every v in it is reached from the ball;
* on that box every later step is piecewise linear: a ReLU relu(y − t) (hinges, pair-min's excess over
  its floor) whose bounds do not straddle t is 0 or y − t, one that does is h with h ≥ y − t, h ≥ 0,
  h ≤ y − t + (t − y_lo)(1 − b), h ≤ (y_hi − t)·b and a binary b; a min(a, b) whose intervals overlap
  gets one binary the same way (big-M from the bounds, pushed forward step by step);
* g is an ICNN whose hidden weights are nonnegative, so min g over the features is its epigraph linear
  program (:func:`asymcert.certify.exact.feature_chain`).

So min s over the ball is a mixed-integer linear program (HiGHS through :func:`scipy.optimize.milp`),
and a flip exists within r iff it is ≤ 0; the radius is bracketed by a search on r that starts at the
closed-form certificate (small boxes make quick programs) and doubles, then bisects. The upper end is
always the size of a move whose float64 score is ≤ 0, checked with no tolerance (so a certified radius
above it is a real violation); the lower end is the solver's word that no flip exists below it (its
tolerances, not a proof; they are relative to the box and to s(x), see :class:`Program`). Radii are in
threat-model units (‖(δ_i / scale_i)‖∞), raw units without one.
"""

from __future__ import annotations

import copy
import math
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import cast

import numpy as np
import scipy.sparse as sp
import torch
from scipy.optimize import Bounds, LinearConstraint, OptimizeResult, milp
from torch import nn

from asymcert.certify.exact import (
    LayerChain,
    UnsupportedModelError,
    _quiet_stdout,
    check_positive,
    feature_chain,
    resolve_threat,
    solver_factor,
)
from asymcert.certify.feature_convex import certify_feature_convex
from asymcert.certify.inputs import check_inputs
from asymcert.certify.threat_model import feature_convex_threat
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.nn.convex import ICNN
from asymcert.nn.feature_maps import Compose, FeatureMap, Hinges, Identity, Log1p, PairMin, Shift, Standardize
from asymcert.threat import ResolvedThreatModel, ThreatModel

__all__ = ["MAX_BOX", "PUSHES", "ExactBracket", "HingeChain", "LinfBracket", "exact_linf_radii", "hinge_chain"]

BISECTION_RTOL = 1e-4
"""The bracket [lo, hi] of each radius is narrowed until hi ≤ lo·(1 + BISECTION_RTOL)."""
MAX_SOLVES = 60
"""At most this many mixed-integer programs per input."""
ROW_SCALE = 1e3
""":func:`run_milp` scales every row to this largest coefficient (its variables are O(1)), so HiGHS's fixed row
tolerance of 1e-7 is 1e-10 of a row's own scale (at 1, the ℓ2 outer approximation stalled 1e-6 from closing)."""
RESOLVABLE = 1e-10
"""A bracket closed for an input whose score is at most this fraction of its terms' size (:func:`score_size`) is
not called "exact": the programs' offsets (:class:`Program`) carry rounding of about 1e-16 of that size, more than
their tolerances of about 1e-7 of the score there."""
PUSHES = (0.0, 1e-9, 1e-7, 1e-5)
"""How far beyond a program's point (relative to its move) a counterexample is looked for."""
MAX_BOX = 1e12
"""The largest box radius searched while no flip is known (solver units, :class:`Reach`): an unbounded reach
doubled on to about 1e15, where HiGHS refuses the bounds ("Model error"); beyond it the status is "no flip up to
r = …"."""


@dataclass(frozen=True)
class HingeChain:
    """s(x) = g(f) + b with f = hinges(pairs(v)), v = a ⊙ m(x) + c; float64, flat; each stage optional.

    Attributes:
        log1p: m = log1p(max(x, 0)) when True, else the identity.
        a, c: (n,) the positive affine step (a > 0).
        floor: (n,) pair-min's training minima, or None without pair-min; then f₀ = (v, min(h, roll(h, −k))
            for k = 1 … ⌊n/2⌋) with h = relu(v − floor), else f₀ = v.
        knots: (K, |f₀|) hinge knots (K = 0: f = f₀), else f = (f₀, relu(f₀ − t_1), …, relu(f₀ − t_K)).
        g: g in feature space (:func:`~asymcert.certify.exact.feature_chain`), balance included.
    """

    log1p: bool
    a: np.ndarray
    c: np.ndarray
    floor: np.ndarray | None
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
        """f (N, (K + 1)·|f₀|) of raw inputs x (N, n)."""
        f0 = v = self.pre(x)
        if self.floor is not None:
            h = np.maximum(v - self.floor, 0.0)
            f0 = np.concatenate([v] + [np.minimum(h, np.roll(h, -k, axis=1)) for k in range(1, v.shape[1] // 2 + 1)], 1)
        return np.concatenate([f0] + [np.maximum(f0 - t, 0.0) for t in self.knots], axis=1)


def _steps(phi: nn.Module) -> list[nn.Module]:
    return list(phi.feature_maps) if isinstance(phi, Compose) else [phi]


def _split_steps(phi: nn.Module) -> tuple[bool, list[nn.Module], PairMin | None, Hinges | None]:
    """(log1p first?, the affine steps, pair-min, the final hinges) of φ, else UnsupportedModelError naming
    the step that does not fit [log1p] → shift/standardize → [pair-min] → [hinges]."""
    steps = _steps(phi)
    log1p = bool(steps) and isinstance(steps[0], Log1p)
    steps = steps[1:] if log1p else steps
    hinges = cast(Hinges, steps.pop()) if steps and isinstance(steps[-1], Hinges) else None
    pairs = cast(PairMin, steps.pop()) if steps and isinstance(steps[-1], PairMin) else None
    for step in steps:
        if not isinstance(step, (Identity, Shift, Standardize)):
            name = step.kind if isinstance(step, FeatureMap) else type(step).__name__
            raise UnsupportedModelError(
                f"exact ℓ∞ radii need φ = [log1p] → shift/standardize → [pair-min] → [hinges]; {name!r} is not one"
            )
    return log1p, steps, pairs, hinges


def hinge_chain(model: nn.Module) -> HingeChain:
    """The :class:`HingeChain` of a feature-convex model with an ICNN g and φ = [log1p] → affine →
    [pair-min] → [hinges], on vector inputs.

    Raises:
        UnsupportedModelError: another model, φ or g (the message names it), or a chain that does not
            reproduce the model's own features on random inputs.
    """
    g = feature_chain(model)
    fc = model if isinstance(model, FeatureConvexClassifier) else None
    if fc is None or not isinstance(fc.convex, ICNN) or len(fc.input_shape) != 1:
        raise UnsupportedModelError("exact ℓ∞ radii through hinges need an ICNN g on vector inputs")
    log1p, middle, pairs, hinges = _split_steps(fc.feature_map)
    n = int(fc.input_shape[0])
    with torch.no_grad():
        zero = torch.zeros((1, n), dtype=torch.float64)
        c = _apply(middle, zero)
        a = _apply(middle, torch.ones_like(zero)) - c
    floor = None if pairs is None else pairs.floor.detach().double().cpu().numpy()
    width = n * (1 + n // 2) if pairs is not None else n
    knots = np.zeros((0, width)) if hinges is None else hinges.knot_values.detach().double().cpu().numpy()
    chain = HingeChain(log1p, a.numpy()[0], c.numpy()[0], floor, knots.reshape(-1, width), g)
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
    spread = torch.logspace(0, 3, 8, dtype=torch.float64)[:, None]
    probe = torch.randn((8, n), dtype=torch.float64, generator=gen) * spread
    with torch.no_grad():
        want = copy.deepcopy(model).double().features(probe).flatten(1).numpy()
    got = chain.features(probe.numpy())
    if got.shape != want.shape or not np.allclose(got, want, rtol=1e-9, atol=1e-9 * (1 + np.abs(want).max())):
        raise UnsupportedModelError("the feature map is not [log1p] → positive affine → [pair-min] → [hinges] as read")


# ---------------------------------------------------------------------------------------------
# One mixed-integer program: min s over a box of v
# ---------------------------------------------------------------------------------------------

Columns = tuple[np.ndarray, np.ndarray, np.ndarray]  # (indices, lower bounds, upper bounds)


class Program:
    """A mixed-integer linear program under construction: bounded columns, rows Σ coef·column ≤ upper.

    Every column also has a reference value ``ref`` (its value at the input itself) and a ``unit`` ≥ its
    largest deviation from ``ref`` over the box searched; :func:`run_milp` solves in (column − ref) / unit
    and divides each row by its largest coefficient, so HiGHS's absolute tolerances (1e-7 on rows, 1e-6 on
    the gap) are relative to the box and to the score's own size, however small those are (a score of
    1e-8 or a box of 1e-8 with tolerances of 1e-7 gave "exact" radii up to 22× too large: audit 33 F1, F2).
    Binaries have ref 0 and unit 1.
    """

    def __init__(self) -> None:
        self.bounds: list[tuple[np.ndarray, np.ndarray, bool]] = []
        self.triplets: list[tuple[np.ndarray, np.ndarray, np.ndarray]] = []
        self.upper: list[np.ndarray] = []
        self.ref = np.zeros(0)
        self.unit = np.zeros(0)
        self.n_cols = self.n_rows = 0

    def columns(
        self,
        lo: np.ndarray,
        hi: np.ndarray,
        integer: bool = False,
        ref: np.ndarray | None = None,
        unit: np.ndarray | None = None,
    ) -> Columns:
        """New columns with bounds lo, hi (k,), their reference values and units (k,) (default 0 and 1)."""
        idx = self.n_cols + np.arange(len(lo))
        self.n_cols += len(lo)
        self.bounds.append((np.asarray(lo, float), np.asarray(hi, float), integer))
        self.ref = np.concatenate([self.ref, np.zeros(len(lo)) if ref is None else np.asarray(ref, float)])
        self.unit = np.concatenate([self.unit, np.ones(len(lo)) if unit is None else positive_units(unit)])
        return idx, np.asarray(lo, float), np.asarray(hi, float)

    def rows(self, terms: Sequence[tuple[np.ndarray, np.ndarray | float]], upper: np.ndarray) -> None:
        """One row per entry of ``upper``: Σ over terms (columns, coefficients) ≤ upper."""
        r = self.n_rows + np.arange(len(upper))
        for cols, coef in terms:
            self.triplets.append((r, cols, np.broadcast_to(np.asarray(coef, float), cols.shape)))
        self.upper.append(np.asarray(upper, float))
        self.n_rows += len(upper)

    def matrix_rows(self, blocks: Sequence[tuple[sp.spmatrix, np.ndarray]], extra: list, upper: np.ndarray) -> None:
        """Rows Σ_blocks mat·x[cols] + Σ extra ≤ upper (``extra`` as in :meth:`rows`)."""
        for mat, cols in blocks:
            coo = sp.coo_matrix(mat)
            self.triplets.append((self.n_rows + coo.row, cols[coo.col], coo.data))
        self.rows(extra, upper)

    def relu(self, x: Columns, t: np.ndarray) -> Columns:
        """h = relu(x − t): exact, with a binary b (b = 1: h = x − t) where x's bounds straddle t."""
        (xc, lo, hi), big_low, big_high = x, np.maximum(t - x[1], 0.0), np.maximum(x[2] - t, 0.0)
        h = self.columns(np.maximum(lo - t, 0.0), big_high, ref=np.maximum(self.ref[xc] - t, 0.0), unit=self.unit[xc])
        b = self.columns((lo >= t).astype(float), (hi > t).astype(float), integer=True)
        self.rows([(xc, 1.0), (h[0], -1.0)], t)  # h ≥ x − t
        self.rows([(h[0], 1.0), (xc, -1.0), (b[0], big_low)], big_low - t)  # h ≤ x − t + (t − lo)(1 − b)
        self.rows([(h[0], 1.0), (b[0], -big_high)], np.zeros(len(t)))  # h ≤ (hi − t)·b
        return h

    def minimum(self, a: Columns, b: Columns) -> Columns:
        """q = min(a, b): exact, with a binary c (c = 1: q = a) where the two intervals overlap."""
        ref = np.minimum(self.ref[a[0]], self.ref[b[0]])
        unit = np.maximum(self.unit[a[0]], self.unit[b[0]])
        q = self.columns(np.minimum(a[1], b[1]), np.minimum(a[2], b[2]), ref=ref, unit=unit)
        c = self.columns((a[2] <= b[1]).astype(float), (a[1] <= b[2]).astype(float), integer=True)
        big_a, big_b = a[2] - q[1], b[2] - q[1]
        zero = np.zeros(len(q[0]))
        self.rows([(q[0], 1.0), (a[0], -1.0)], zero)
        self.rows([(q[0], 1.0), (b[0], -1.0)], zero)
        self.rows([(a[0], 1.0), (q[0], -1.0), (c[0], big_a)], big_a)  # q ≥ a − M_a(1 − c)
        self.rows([(b[0], 1.0), (q[0], -1.0), (c[0], -big_b)], zero)  # q ≥ b − M_b·c
        return q


def positive_units(unit: np.ndarray) -> np.ndarray:
    """``unit`` (k,) with its zeros (columns that cannot move) replaced by its largest entry (1 if none is
    positive), so that no column's unit is 0 and fixed columns do not dwarf the moving ones in a row."""
    unit = np.asarray(unit, float)
    top = float(np.max(unit, initial=0.0))
    return np.where(unit > 0, unit, top if top > 0 else 1.0)


def _cat(parts: list[Columns]) -> Columns:
    return (
        np.concatenate([p[0] for p in parts]),
        np.concatenate([p[1] for p in parts]),
        np.concatenate([p[2] for p in parts]),
    )


def _pick(cols: Columns, idx: np.ndarray) -> Columns:
    return cols[0][idx], cols[1][idx], cols[2][idx]


def feature_columns(prog: Program, chain: HingeChain, lo: np.ndarray, hi: np.ndarray, v0: np.ndarray) -> Columns:
    """The columns of f for v in the box [lo, hi] (n,), every piecewise-linear step exact; v0 (n,) in the box
    is the input's own v, the columns' reference (:class:`Program`), and the box's width their unit."""
    v = f0 = prog.columns(lo, hi, ref=v0, unit=hi - lo)
    n = len(lo)
    if chain.floor is not None:
        h = prog.relu(v, chain.floor)
        pairs = [prog.minimum(h, _pick(h, (np.arange(n) + k) % n)) for k in range(1, n // 2 + 1)]
        f0 = _cat([v, *pairs])
    return _cat([f0] + [prog.relu(f0, t) for t in chain.knots])


@dataclass(frozen=True)
class _Minimum:
    """min s(v) over lo ≤ v ≤ hi: ``bound`` a lower bound on the minimum (−inf: none), ``v`` a minimiser's
    v (None: no solution found), ``status`` HiGHS's message."""

    bound: float
    v: np.ndarray | None
    status: str


def score_terms(prog: Program, g: LayerChain, f: Columns) -> list[tuple[np.ndarray, np.ndarray]]:
    """Columns and coefficients whose sum is an upper bound on s − g.out_c for the features ``f``, equal to
    it at the least feasible epigraph columns z_j ≥ P_j f + M_j z_{j−1} + c_j, z_j ≥ 0 (exact: M_j ≥ 0
    and g's output weights on z are ≥ 0, so min over z of the sum is s − out_c).

    Each z's reference is its value at the features' references and its unit |P_j|·unit_f + M_j·unit_{j−1},
    a bound on how far it moves over the box (every step is 1-Lipschitz), so z ≥ ref − unit is valid too
    and is its lower bound (with z ≥ 0)."""
    z_prev: Columns | None = None
    for layer in g.layers:
        pre, width = layer.c.copy(), np.zeros(len(layer.c))
        if layer.P is not None:
            pre, width = pre + layer.P @ prog.ref[f[0]], width + abs(layer.P) @ prog.unit[f[0]]
        if layer.M is not None and z_prev is not None:
            pre, width = pre + layer.M @ prog.ref[z_prev[0]], width + layer.M @ prog.unit[z_prev[0]]
        floor = np.maximum(pre - width, 0.0)
        z = prog.columns(floor, np.full(len(layer.c), np.inf), ref=np.maximum(pre, 0.0), unit=width)
        blocks = [] if layer.P is None else [(layer.P, f[0])]
        if layer.M is not None and z_prev is not None:
            blocks.append((layer.M, z_prev[0]))
        prog.matrix_rows(blocks, [(z[0], -1.0)], -layer.c)
        z_prev = z
    assert z_prev is not None  # an ICNN has at least one layer
    terms = [(z_prev[0], g.out_m.toarray()[0])]
    if g.out_p is not None:
        terms.append((f[0], g.out_p.toarray()[0]))
    return terms


def _minimise(chain: HingeChain, lo: np.ndarray, hi: np.ndarray, v0: np.ndarray, s0: float, limit: float) -> _Minimum:
    """min s over the features of every v in the box [lo, hi] (n,), as one mixed-integer program; v0 (n,) is the
    input's own v and s0 > 0 its score (the program's objective is s / s0: see :class:`Program`)."""
    prog = Program()
    f = feature_columns(prog, chain, lo, hi, v0)
    terms = score_terms(prog, chain.g, f)
    cost = np.zeros(prog.n_cols)
    for cols, coef in terms:
        np.add.at(cost, cols, coef)
    res = run_milp(prog, cost, limit, scale=s0)
    bound = getattr(res, "mip_dual_bound", None)
    if res.status == 0 and (bound is None or not math.isfinite(bound)):  # no binaries left: an LP optimum
        bound = res.fun
    v = None if res.x is None else np.asarray(res.x[: len(lo)], dtype=float)
    bound = -math.inf if bound is None or not math.isfinite(bound) else float(bound) + chain.g.out_c
    return _Minimum(bound, v, str(res.message))


def run_milp(
    prog: Program, cost: np.ndarray, time_limit: float, gap: float = 1e-9, scale: float = 1.0
) -> OptimizeResult:
    """HiGHS (:func:`scipy.optimize.milp`) on ``prog``: minimise cost·x (cost (n_cols,)) within ``time_limit``
    seconds, stopping once the incumbent is within the relative ``gap`` of the dual bound.

    HiGHS solves in y = (x − ref) / unit (:class:`Program`), every row divided by its largest coefficient and
    the objective by ``scale`` (the size of cost·x's changes: the input's score for min s). The result's ``x``,
    ``fun`` and ``mip_dual_bound`` are mapped back to x and cost·x."""
    rows, cols, vals = (np.concatenate([t[k] for t in prog.triplets]) for k in range(3))
    a = sp.csr_matrix((vals, (rows, cols)), shape=(prog.n_rows, prog.n_cols))
    upper = np.concatenate(prog.upper) - a @ prog.ref
    a = a @ sp.diags(prog.unit)
    big = np.asarray(abs(a).max(axis=1).todense()).reshape(-1)
    big = np.where(big > 0, big, 1.0) / ROW_SCALE
    a, upper = sp.diags(1.0 / big) @ a, upper / big
    lo, hi = ((np.concatenate([b[k] for b in prog.bounds]) - prog.ref) / prog.unit for k in range(2))
    integrality = np.concatenate([np.full(len(b[0]), float(b[2])) for b in prog.bounds])
    with _quiet_stdout():  # scipy's HiGHS prints a debug line on some solves
        res = milp(
            cost * prog.unit / scale,
            integrality=integrality,
            bounds=Bounds(lo, hi),
            constraints=LinearConstraint(a.tocsr(), -np.inf, upper),
            options={"time_limit": max(time_limit, 1e-3), "mip_rel_gap": gap},
        )
    offset = float(cost @ prog.ref)
    if res.x is not None:
        res.x = prog.ref + prog.unit * np.asarray(res.x)
    for key in ("fun", "mip_dual_bound"):
        if res.get(key) is not None:
            res[key] = offset + scale * float(res[key])
    return res


# ---------------------------------------------------------------------------------------------
# The radius: bisection on r
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class ExactBracket:
    """Exact ℓ∞ (or ℓ1, ℓ2: :mod:`asymcert.certify.exact_lp`) radii bracketed per input: lo ≤ exact ≤ hi, (N,)
    float64 tensors.

    ``hi`` is the size of a move checked to reach s ≤ 0 on the float64 model (∞: none exists within the
    threat model's domain, ``lo`` = ∞ too); ``lo`` the largest radius the solver found free of flips.
    0 for inputs that are not flagged. ``status`` per input: "exact" (hi ≤ lo·(1 + rtol)), "no flip",
    "not flagged", or why the bracket stayed open ("time limit", "solver: …", "undecided at r = …"), or why a
    closed one is not trusted ("unresolved: …" where s(x) is within rounding of 0, :data:`RESOLVABLE`;
    "inconsistent: …" from :func:`~asymcert.certify.exact_lp.cross_check`).
    ``delta`` (N, n): the raw move of size ``hi`` (NaN rows where there is none), a counterexample anyone
    can re-check.
    """

    lo: torch.Tensor
    hi: torch.Tensor
    delta: torch.Tensor
    status: list[str]
    seconds: float


LinfBracket = ExactBracket
"""The name of :class:`ExactBracket` before exact ℓ1 radii existed."""


@dataclass(frozen=True)
class Reach:
    """Where the ℓ∞ ball of one input may reach, per coordinate: u ∈ [max(u_lo, −r), min(u_hi, r)], u = δ / scale.

    ``scale`` (n,) is the threat model's divided by one power of two c (:func:`~asymcert.certify.exact.solver_units`,
    so that the programs see numbers near the raw units'), and ``per_unit`` = 1 / c converts a radius r in u to
    the threat model's units (radii reported, start radii and messages are in those)."""

    x: np.ndarray
    scale: np.ndarray
    u_lo: np.ndarray
    u_hi: np.ndarray
    per_unit: float = 1.0

    @property
    def r_max(self) -> float:
        return float(np.max(np.maximum(-self.u_lo, self.u_hi), initial=0.0))

    def box(self, r: float) -> tuple[np.ndarray, np.ndarray]:
        return self.x + self.scale * np.maximum(self.u_lo, -r), self.x + self.scale * np.minimum(self.u_hi, r)


def reach_balls(x: np.ndarray, tm: ResolvedThreatModel | None) -> list[Reach]:
    """The reach of every input (N, n) under ``tm`` (its domain, directions and scales; none: all of R^n)."""
    n = x.shape[1]
    if tm is None:
        inf = np.full(n, np.inf)
        return [Reach(row, np.ones(n), -inf, inf) for row in x]
    scale, lower, upper = (t.double().numpy() for t in (tm.scale, tm.lower, tm.upper))
    c = solver_factor(scale)
    scale = scale / c
    down, up = tm.can_decrease.numpy(), tm.can_increase.numpy()
    out = []
    for row in x:
        u_lo = np.where(down, np.minimum((lower - row) / scale, 0.0), 0.0)
        u_hi = np.where(up, np.maximum((upper - row) / scale, 0.0), 0.0)
        out.append(Reach(row, scale, u_lo, u_hi, 1.0 / c))
    return out


def score_size(chain: HingeChain, x: np.ndarray) -> np.ndarray:
    """(N,) the size of the terms whose sum is s at raw inputs x (N, n): |out_c| + out_m·z + |out_p|·|f| with g's
    last hidden state z ≥ 0 (out_m ≥ 0), float64. s is known only to about 1e-16 of it (rounding)."""
    f = chain.features(x)
    z = f
    for k, layer in enumerate(chain.g.layers):
        pre = np.broadcast_to(layer.c, (len(x), len(layer.c))).copy()
        if layer.P is not None:
            pre += (layer.P @ f.T).T
        if layer.M is not None and k > 0:
            pre += (layer.M @ z.T).T
        z = np.maximum(pre, 0.0)
    size = abs(chain.g.out_c) + (chain.g.out_m @ z.T).T[:, 0]
    if chain.g.out_p is not None:
        size = size + (abs(chain.g.out_p) @ np.abs(f).T).T[:, 0]
    return np.asarray(size)


def float64_scores(model64: FeatureConvexClassifier, x: np.ndarray) -> np.ndarray:
    """s (k,) of the float64 model on raw inputs x (k, n)."""
    with torch.no_grad():
        return model64(torch.from_numpy(x).reshape((-1, *model64.input_shape))).numpy().reshape(-1)


def removes_flag(s: np.ndarray) -> np.ndarray:
    """Which float64 scores s (k,) remove the flag: s ≤ 0 exactly (no tolerance, so that a counterexample
    re-checked on the float64 model gives s ≤ 0; a tolerance of 1e-9 absolute let a zero move count at scores
    below 1e-9: audit 33 F2, F3)."""
    return s <= 0.0


def first_flip(model64: FeatureConvexClassifier, x: np.ndarray, tries: np.ndarray) -> np.ndarray | None:
    """The first of the raw inputs ``tries`` (k, n) whose float64 score is ≤ 0, as a move from x (n,), or None."""
    ok = np.flatnonzero(removes_flag(float64_scores(model64, tries)))
    return tries[ok[0]] - x if ok.size else None


def _flip_at(
    chain: HingeChain, model64: FeatureConvexClassifier, ball: Reach, r: float, s0: float, limit: float
) -> tuple[str, np.ndarray | None]:
    """("flip", the move δ (n,)) when the program finds a move within r that is checked to reach s ≤ 0
    (itself, or pushed (1 + ε)-fold for ε in PUSHES, within r·(1 + ε): the program meets its rows only to
    its tolerances), ("safe", None) when its lower bound on min s is > 0, else (why not, None): a minimum
    within the solver's tolerances of 0, or HiGHS's message (e.g. its time limit)."""
    x_lo, x_hi = ball.box(r)
    v0 = chain.pre(ball.x[None])[0]
    prog = _minimise(chain, chain.pre(x_lo[None])[0], chain.pre(x_hi[None])[0], v0, s0, limit)
    if prog.bound > 0:
        return "safe", None
    if prog.v is not None:
        move = np.clip(chain.raw(prog.v), x_lo, x_hi) - ball.x
        tries = np.stack([np.clip(ball.x + (1.0 + eps) * move, *ball.box(r * (1.0 + eps))) for eps in PUSHES])
        flip = first_flip(model64, ball.x, tries)
        if flip is not None:
            return "flip", flip
        s = float(float64_scores(model64, tries[:1])[0])
        return f"undecided at r = {r * ball.per_unit:.6g}: min s in [{prog.bound:.3g}, {s:.3g}]", None
    return f"solver: {prog.status}", None


def _bracket_one(
    chain: HingeChain, model64: FeatureConvexClassifier, ball: Reach, s0: float, limit: float, rtol: float, start: float
) -> tuple[float, float, np.ndarray | None, str]:
    """(lo, hi, the move of size hi or None, status) of one flagged input: from r = ``start`` (small boxes
    are quick programs), doubling while no flip is found, then bisection (geometric once the bracket is
    finite, halving from hi while lo is 0)."""
    deadline = time.perf_counter() + limit
    lo, hi, best = 0.0, math.inf, None
    r = min(ball.r_max, start) if start > 0 else min(ball.r_max, 1e-3)
    for _ in range(MAX_SOLVES):
        left = deadline - time.perf_counter()
        if left <= 0:
            return lo, hi, best, "time limit"
        if math.isinf(hi) and r > MAX_BOX:
            return lo, hi, None, f"no flip up to r = {lo * ball.per_unit:.6g}"
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


BracketOne = Callable[
    [HingeChain, FeatureConvexClassifier, Reach, float, float, float, float],
    tuple[float, float, "np.ndarray | None", str],
]
"""``one(chain, model64, reach, s0, time_limit, rtol, start) -> (lo, hi, move or None, status)``: one flagged
input's bracket in one norm, searched from the closed-form radius ``start``."""


def bracket_radii(
    model: nn.Module,
    x: torch.Tensor,
    threat_model: ThreatModel | ResolvedThreatModel | None,
    time_limit: float,
    rtol: float,
    p: float,
    one: BracketOne,
) -> ExactBracket:
    """Every input's ℓp bracket by ``one`` (inputs checked, the model read once, the closed-form radius as
    each search's start, unflagged inputs 0); the argument checks of :func:`exact_linf_radii`."""
    t0 = time.perf_counter()
    if not isinstance(model, FeatureConvexClassifier):
        raise UnsupportedModelError(
            f"exact radii exist only for feature-convex classifiers, got {type(model).__name__}"
        )
    model64 = copy.deepcopy(model).double().eval()
    chain = hinge_chain(model64)
    check_inputs(x, tuple(model.input_shape))
    tm = resolve_threat(threat_model, chain.a.shape[0])
    check_positive("exact radii", "time_limit", time_limit)
    check_positive("exact radii", "rtol", rtol)
    flat = x.detach().flatten(1).double().cpu().numpy()  # (N, n), N = 0 too
    if not len(flat):
        empty = torch.zeros(0, dtype=torch.float64)
        return ExactBracket(empty, empty.clone(), torch.from_numpy(flat), [], time.perf_counter() - t0)
    # where the search starts: the closed-form certificate (a guess here, never trusted as a bound)
    cert = certify_feature_convex(model, x, (p,)) if tm is None else feature_convex_threat(model, x, (p,), tm)
    closed = cert.radii[p].double().cpu().numpy()
    scores = float64_scores(model64, flat)
    sizes = score_size(chain, flat)
    lo, hi, delta, status = np.zeros(len(flat)), np.zeros(len(flat)), np.full_like(flat, np.nan), []
    for i, ball in enumerate(reach_balls(flat, tm)):
        if scores[i] <= 0:
            status.append("not flagged")
            continue
        start = float(closed[i]) / ball.per_unit  # (searches run in u = δ / ball.scale: see Reach)
        lo[i], hi[i], move, why = one(chain, model64, ball, float(scores[i]), time_limit, rtol, start)
        lo[i], hi[i] = lo[i] * ball.per_unit, hi[i] * ball.per_unit
        if move is not None:
            delta[i] = move
        if why == "exact" and scores[i] <= RESOLVABLE * sizes[i]:
            why = f"unresolved: s(x) = {scores[i]:.3g} is within rounding of 0 (its terms are {sizes[i]:.3g})"
        status.append(why)
    return ExactBracket(
        torch.from_numpy(lo), torch.from_numpy(hi), torch.from_numpy(delta), status, time.perf_counter() - t0
    )


def exact_linf_radii(
    model: nn.Module,
    x: torch.Tensor,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
    time_limit: float = 60.0,
    rtol: float = BISECTION_RTOL,
) -> ExactBracket:
    """Bracket the exact ℓ∞ radius of every input x (N, n) of a model with φ = [log1p] → affine → [pair-min]
    → [hinges].

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
    return bracket_radii(model, x, threat_model, time_limit, rtol, math.inf, _bracket_one)
