"""A certificate of convex separability computed from the training data alone (issue #8).

A feature-convex classifier with the identity feature map (or a shift x − μ, which moves every
point and every convex set alike) labels an input "sensitive" when g(x) + b > 0 with g convex, so
its NON-sensitive region {x : g(x) ≤ −b} is convex. If it classifies every training input of the
other class correctly, that region contains all of them and hence their convex hull: a sensitive
training input lying inside conv(other class) is then necessarily misclassified. Deciding, for each
sensitive training input x, whether x ∉ conv{x_j : j other} therefore bounds training accuracy:

    bound = (n_other + #{sensitive x outside conv(other)}) / n.

The bound is tight (achieved): for every outside x_i there is a separating affine function
a_i(y) = w_iᵀy − c_i with a_i(x_i) > 0 > a_i(x_j) for every other-class x_j, and

    g(y) = Σ_i relu(a_i(y))   (or equally max_i a_i(y), a max of affine functions)

is convex, is 0 on every other-class input and > 0 on every outside sensitive input, so with a
threshold between 0 and min_i a_i(x_i) it classifies exactly those inputs correctly. That g is a
one-hidden-layer ICNN (free first layer, nonnegative all-ones readout): :func:`hull_classifier`
builds it as a library model. The bound is about classifiers that get every other-class input
right; trading other-class errors for sensitive ones is a different (combinatorial) question.
``reverse=True`` swaps the roles (the convex region is the sensitive one, i.e. −g convex).

How each sensitive x is decided (cheapest first, all batched over points):
1. hyperplane w = x − mean(other): x is outside when wᵀx > max_j wᵀx_j (checked in float64);
2. w = x − (nearest other point);
3. Frank–Wolfe (Gilbert's algorithm) on min_{p ∈ conv} ‖x − p‖²: each iterate gives w = x − p,
   checked the same way; batched matrix products, no LP;
4. the rest: an LP per point with HiGHS (``highspy``), the ℓ1 distance to the hull
   min ‖Xᵀλ − x‖₁ s.t. λ ≥ 0, Σλ = 1; 0 ⇔ inside. The constraint matrix is built once and only
   the right-hand side changes, so each LP warm-starts from the previous basis (dual simplex).
   A positive optimum is backed by its dual: a direction y with yᵀx − max_j yᵀx_j ≥ the optimum,
   which is re-checked in float64.
Every "outside" verdict is thus backed by an explicit separating hyperplane checked in float64;
"inside" verdicts are LP optima ≤ ``tol`` (ℓ1 distance in input units).
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import torch

from asymcert.certify.exact import _import_highspy, _quiet_stdout
from asymcert.certify.result import RAW_UNITS
from asymcert.errors import InputError
from asymcert.models import build_model

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.feature_convex import FeatureConvexClassifier
    from asymcert.nn.convex import ICNN

METHODS = ("mean", "nearest", "frank-wolfe", "lp")
"""How an input was settled, in the order tried (index = the code in ``SeparabilityResult.method``)."""


@dataclass(frozen=True)
class SeparabilitySummary:
    """The counts, bound, settings and timings of a :class:`SeparabilityResult` (no per-input arrays):
    :meth:`to_dict` is ``capacity.json``'s ``"separability"``.

    Attributes:
        n, n_sensitive, n_other: training inputs of both classes, of the tested class and of the other one.
        reverse: True when the roles of the classes were swapped.
        checked: tested-class inputs decided; outside, inside: of those, the ones outside / inside the other
            class's convex hull.
        complete: every tested-class input was decided (the bound is exact).
        bound: the upper bound on training accuracy, in [0, 1]; bound_estimate: extrapolated from the decided subset.
        settled: how many inputs each stage settled: a name of :data:`METHODS` → count, plus ``"lp-inside"``.
        lp_unverified: LP "outside" verdicts whose dual hyperplane failed the float64 re-check.
        limit, seed: the subset option used (None: every input).
        frank_wolfe_iterations: iterations of stage 3; tol: the ℓ1 distance (input units) at or below which an LP
            verdict is "inside".
        min_margin_l2: the smallest ℓ2 margin (input units) of an outside input; None when none is outside.
        distance_units: what ``tol`` and ``min_margin_l2`` are measured in: raw input units (the hull is that of
            the raw training inputs, whatever threat model the task's runs certify under; audit units31 F5).
        seconds: wall-clock seconds per stage (``"mean"``, ``"nearest"``, ``"frank-wolfe"``, ``"lp"``, ``"total"``).
    """

    n: int
    n_sensitive: int
    n_other: int
    reverse: bool
    checked: int
    outside: int
    inside: int
    complete: bool
    bound: float
    bound_estimate: float
    settled: dict[str, int]
    lp_unverified: int
    limit: int | None
    seed: int
    frank_wolfe_iterations: int
    tol: float
    min_margin_l2: float | None
    distance_units: str
    seconds: dict[str, float]

    def to_dict(self) -> dict[str, Any]:
        """The JSON object: every attribute, in their order."""
        return asdict(self)


@dataclass(frozen=True)
class SeparabilityResult:
    """Which sensitive training inputs lie outside the convex hull of the other class.

    Attributes:
        n: training inputs of both classes (the denominator of the bound).
        n_sensitive, n_other: class sizes (after ``reverse``, "sensitive" is the class tested).
        checked: (k,) int64 indices (into the tested class) of the inputs decided; all of them
            unless ``limit`` chose a random subset (``seed``).
        outside: (k,) bool, True when the input lies outside the other class's convex hull.
        method: (k,) int8 index into :data:`METHODS` of what settled each input.
        margin: (k,) float64 lower bound on the ℓ2 distance to the hull for outside inputs
            ((wᵀx − max_j wᵀx_j)/‖w‖₂ of the certifying hyperplane, input units); 0 for inside ones.
        lp_distance: (k,) float64 ℓ1 distance to the hull from the LP (NaN when no LP was run).
        normals: (k, d) float64 unit separating directions (zero rows for inside inputs), kept
            when ``keep_normals``; else None.
        seconds: wall-clock seconds per stage ("mean", "nearest", "frank-wolfe", "lp", "total").
        reverse: True when the roles of the classes were swapped.
        limit, seed: the subset option used (None: every input).
        frank_wolfe_iterations: iterations run in stage 3.
        tol: ℓ1 distance at or below which an LP verdict is "inside".
        lp_unverified: LP "outside" verdicts whose dual hyperplane failed the float64 re-check
            (counted as outside on the LP optimum alone; expected 0).
    """

    n: int
    n_sensitive: int
    n_other: int
    checked: np.ndarray
    outside: np.ndarray
    method: np.ndarray
    margin: np.ndarray
    lp_distance: np.ndarray
    normals: np.ndarray | None
    seconds: dict[str, float]
    reverse: bool = False
    limit: int | None = None
    seed: int = 0
    frank_wolfe_iterations: int = 0
    tol: float = 1e-6
    lp_unverified: int = 0

    @property
    def n_checked(self) -> int:
        """Number of tested-class inputs decided."""
        return int(self.outside.size)

    @property
    def n_outside(self) -> int:
        """Decided inputs outside the hull."""
        return int(self.outside.sum())

    @property
    def n_inside(self) -> int:
        """Decided inputs inside the hull (misclassified by every classifier that gets the other class right)."""
        return self.n_checked - self.n_outside

    @property
    def complete(self) -> bool:
        """True when every input of the tested class was decided (the bound is exact)."""
        return self.n_checked == self.n_sensitive

    @property
    def bound(self) -> float:
        """Upper bound on training accuracy, in [0, 1]: (n − #inside found) / n.

        Exact (and achieved, see the module docstring) when :attr:`complete`; with ``limit`` it is
        still a valid upper bound, since undecided inputs are counted as correct.
        """
        return (self.n - self.n_inside) / self.n

    @property
    def bound_estimate(self) -> float:
        """The bound extrapolated from the decided subset: (n_other + n_sensitive · share outside) / n."""
        share = self.n_outside / max(1, self.n_checked)
        return (self.n_other + self.n_sensitive * share) / self.n

    def settled(self) -> dict[str, int]:
        """How many inputs each stage settled, ``{method: count}`` (plus ``"lp-inside"``)."""
        out = {name: int(((self.method == i) & self.outside).sum()) for i, name in enumerate(METHODS)}
        out["lp-inside"] = int(((self.method == METHODS.index("lp")) & ~self.outside).sum())
        return out

    def summary(self) -> SeparabilitySummary:
        """The counts, bound, settings and timings (no per-input arrays)."""
        return SeparabilitySummary(
            n=self.n,
            n_sensitive=self.n_sensitive,
            n_other=self.n_other,
            reverse=self.reverse,
            checked=self.n_checked,
            outside=self.n_outside,
            inside=self.n_inside,
            complete=self.complete,
            bound=self.bound,
            bound_estimate=self.bound_estimate,
            settled=self.settled(),
            lp_unverified=self.lp_unverified,
            limit=self.limit,
            seed=self.seed,
            frank_wolfe_iterations=self.frank_wolfe_iterations,
            tol=self.tol,
            min_margin_l2=float(self.margin[self.outside].min()) if self.n_outside else None,
            distance_units=RAW_UNITS,
            seconds=dict(self.seconds),
        )


# ---------------------------------------------------------------------------------------------
# Batched hyperplane checks
# ---------------------------------------------------------------------------------------------


def _max_dot(w: np.ndarray, others: torch.Tensor, chunk: int) -> np.ndarray:
    """max_j w_iᵀx_j for every row of w (B, d) over ``others`` (n, d) float64: (B,) float64."""
    wt = torch.from_numpy(w)
    out = torch.empty(len(w), dtype=torch.float64)
    for i in range(0, len(w), chunk):
        out[i : i + chunk] = (wt[i : i + chunk] @ others.T).amax(1)
    return out.numpy()


def _check_hyperplanes(
    w: np.ndarray, x: np.ndarray, others: torch.Tensor, chunk: int, rel_tol: float = 1e-10
) -> tuple[np.ndarray, np.ndarray]:
    """Which w (B, d) separate x (B, d) from every row of ``others``, in float64.

    Returns:
        (separates (B,) bool, ℓ2 margin (B,) float64 = (wᵀx − max_j wᵀx_j)/‖w‖₂).
    """
    norm = np.linalg.norm(w, axis=1)
    gap = np.einsum("bd,bd->b", w, x) - _max_dot(w, others, chunk)
    scale = norm * (np.linalg.norm(x, axis=1) + float(others.abs().max()) + 1.0)
    ok = (gap > rel_tol * scale) & (norm > 0)
    return ok, np.where(ok, gap / np.where(norm > 0, norm, 1.0), 0.0)


def _frank_wolfe(
    x: torch.Tensor, others: torch.Tensor, start: torch.Tensor, iterations: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Gilbert's algorithm for the nearest hull point of each row of x, batched, stopping rows early.

    Args:
        x: (B, d) query points; others: (n, d) hull points; start: (B, d) starting hull points.
        iterations: at most this many steps.
    Returns:
        (found (B,) bool: a separating w = x − p was seen, w (B, d): the last or separating direction).
        Directions are candidates: the caller re-checks them in float64.
    """
    p = start.clone()
    found = torch.zeros(len(x), dtype=torch.bool)
    best = x - p
    active = torch.arange(len(x))
    for _ in range(iterations):
        if active.numel() == 0:
            break
        xa, pa = x[active], p[active]
        w = xa - pa
        dots = w @ others.T
        val, j = dots.max(1)
        sep = (w * xa).sum(1) > val
        best[active] = w
        found[active[sep]] = True
        keep = ~sep
        active, xa, pa, w, j = active[keep], xa[keep], pa[keep], w[keep], j[keep]
        s = others[j]
        step = s - pa
        denom = (step * step).sum(1)
        gamma = torch.where(denom > 0, (w * step).sum(1) / denom.clamp_min(1e-30), torch.zeros_like(denom))
        p[active] = pa + gamma.clamp(0.0, 1.0)[:, None] * step
    return found, best


# ---------------------------------------------------------------------------------------------
# LPs
# ---------------------------------------------------------------------------------------------


class HullDistanceLP:
    """ℓ1 distance from points to conv(rows of ``others``) by linear programs sharing one matrix.

    min 1ᵀs⁺ + 1ᵀs⁻  s.t.  Xᵀλ + s⁺ − s⁻ = x,  1ᵀλ = 1,  λ, s± ≥ 0   (always feasible).
    Only the right-hand side x changes between points, so HiGHS's dual simplex warm-starts.

    Args:
        others: (n, d) float64 hull points.
    """

    def __init__(self, others: np.ndarray) -> None:
        import scipy.sparse as sp

        highspy = _import_highspy()
        self.highspy = highspy
        n, d = others.shape
        self.n, self.d = n, d
        with _quiet_stdout():
            h = highspy.Highs()
        h.setOptionValue("output_flag", False)
        h.setOptionValue("threads", 1)
        h.setOptionValue("simplex_strategy", 1)  # dual simplex: only the rhs changes between solves
        top = sp.hstack([sp.csc_matrix(others.T), sp.identity(d, format="csc"), -sp.identity(d, format="csc")])
        bottom = sp.hstack([sp.csc_matrix(np.ones((1, n))), sp.csc_matrix((1, 2 * d))])
        A = sp.vstack([top, bottom]).tocsc()
        A.eliminate_zeros()
        lp = highspy.HighsLp()
        lp.num_col_, lp.num_row_ = n + 2 * d, d + 1
        lp.col_cost_ = np.concatenate([np.zeros(n), np.ones(2 * d)])
        lp.col_lower_ = np.zeros(n + 2 * d)
        lp.col_upper_ = np.full(n + 2 * d, highspy.kHighsInf)
        rhs = np.concatenate([others.mean(0), [1.0]])
        lp.row_lower_, lp.row_upper_ = rhs.copy(), rhs.copy()
        lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
        lp.a_matrix_.start_ = A.indptr.astype(np.int32)
        lp.a_matrix_.index_ = A.indices.astype(np.int32)
        lp.a_matrix_.value_ = A.data.astype(np.float64)
        h.passModel(lp)
        self.h = h
        self._rows = np.arange(d, dtype=np.int32)

    def solve(self, x: np.ndarray, time_limit: float | None = None) -> tuple[str, float, np.ndarray | None]:
        """ℓ1 distance from x (d,) to the hull.

        Returns:
            (status, distance, y): y (d,) is the dual direction of the equality rows (a separating
            direction when the distance is positive), None unless optimal.
        """
        h = self.h
        h.changeRowsBounds(self.d, self._rows, x, x)
        if time_limit is not None:
            h.setOptionValue("time_limit", float(time_limit))
        h.run()
        status = h.getModelStatus()
        if status != self.highspy.HighsModelStatus.kOptimal:
            return str(status).split(".")[-1].removeprefix("k").lower(), math.nan, None
        sol = h.getSolution()
        y = np.asarray(sol.row_dual, dtype=np.float64)[: self.d]
        return "optimal", float(h.getInfo().objective_function_value), y


# ---------------------------------------------------------------------------------------------
# The certificate
# ---------------------------------------------------------------------------------------------


def _as_matrix(x: torch.Tensor | np.ndarray, what: str) -> np.ndarray:
    a = x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)
    if a.ndim < 2 or a.shape[0] == 0:
        raise InputError(f"{what} must be a non-empty batch (N, ...), got shape {a.shape}")
    a = a.reshape(a.shape[0], -1).astype(np.float64)
    if not np.isfinite(a).all():
        raise InputError(f"{what} contains NaN or Inf")
    return a


@dataclass
class _HullState:
    """What :func:`hull_separability` knows per tested input: x (k, d) float64, the other class (N_o, d) as
    NumPy and torch, and the per-input results filled in stage by stage."""

    x: np.ndarray
    xo: np.ndarray
    others: torch.Tensor
    chunk: int
    outside: np.ndarray
    method: np.ndarray
    margin: np.ndarray
    lp_distance: np.ndarray
    normals: np.ndarray | None

    @classmethod
    def start(cls, x: np.ndarray, xo: np.ndarray, chunk: int, keep_normals: bool) -> _HullState:
        """Nothing decided yet for the k rows of ``x``."""
        k, d = x.shape
        return cls(
            x,
            xo,
            torch.from_numpy(xo),
            chunk,
            np.zeros(k, dtype=bool),
            np.full(k, -1, dtype=np.int8),
            np.zeros(k),
            np.full(k, np.nan),
            np.zeros((k, d)) if keep_normals else None,
        )

    def record(self, idx: np.ndarray, w: np.ndarray, code: int) -> None:
        """Check the hyperplanes w (len(idx), d) for rows ``idx``; mark the verified ones outside with ``code``."""
        ok, m = _check_hyperplanes(w, self.x[idx], self.others, self.chunk)
        hit = idx[ok]
        self.outside[hit], self.method[hit], self.margin[hit] = True, code, m[ok]
        if self.normals is not None:
            self.normals[hit] = w[ok] / np.linalg.norm(w[ok], axis=1, keepdims=True)


def _nearest_stage(st: _HullState) -> tuple[np.ndarray, np.ndarray]:
    """Try w = x − (nearest other point) for the undecided rows; returns the still undecided rows and their
    nearest other points' indices."""
    rest = np.flatnonzero(~st.outside)
    nearest = np.zeros(len(rest), dtype=np.int64)
    xt = torch.from_numpy(st.x)
    sq_o = (st.others * st.others).sum(1)
    for i in range(0, len(rest), st.chunk):
        rows = torch.from_numpy(rest[i : i + st.chunk])
        nearest[i : i + st.chunk] = (sq_o[None, :] - 2 * xt[rows] @ st.others.T).argmin(1).numpy()
    if len(rest):
        st.record(rest, st.x[rest] - st.xo[nearest], 1)
    keep = ~st.outside[rest]
    return rest[keep], nearest[keep]


def _frank_wolfe_stage(st: _HullState, rest: np.ndarray, nearest: np.ndarray, iterations: int) -> None:
    """Frank–Wolfe separating directions (float32 search from the nearest point, float64 check) for ``rest``."""
    if not len(rest) or iterations <= 0:
        return
    o32 = st.others.float()
    for i in range(0, len(rest), st.chunk):
        idx = rest[i : i + st.chunk]
        start = o32[torch.from_numpy(nearest[i : i + st.chunk])]
        found, w = _frank_wolfe(torch.from_numpy(st.x[idx]).float(), o32, start, iterations)
        if bool(found.any()):
            st.record(idx[found.numpy()], w[found].double().numpy(), 2)


def _lp_stage(
    st: _HullState,
    rest: np.ndarray,
    checked: np.ndarray,
    tol: float,
    time_limit: float | None,
    log: Callable[[str], None],
    t0: float,
) -> int:
    """Exact ℓ1 distances to the hull (one LP per row of ``rest``); returns how many rows the LP put outside
    without a hyperplane the float64 check could verify.

    Raises:
        RuntimeError: an LP that did not end optimal.
    """
    unverified = 0
    if not len(rest):
        return 0
    lp = HullDistanceLP(st.xo)
    for count, i in enumerate(rest.tolist()):
        status, dist, y = lp.solve(st.x[i], time_limit)
        if status != "optimal":
            raise RuntimeError(f"hull LP for input {int(checked[i])} ended with status {status!r}")
        st.lp_distance[i] = dist
        st.method[i] = METHODS.index("lp")
        if dist > tol:
            st.outside[i] = True
            assert y is not None  # an optimal LP has a solution
            unverified += 0 if _lp_normal(st, i, y) else 1
        if (count + 1) % 50 == 0:
            log(f"LP {count + 1}/{len(rest)}: {time.perf_counter() - t0:.1f}s")
    return unverified


def _lp_normal(st: _HullState, i: int, y: np.ndarray) -> bool:
    """Try ±y (the LP's dual) as row i's separating hyperplane; records its margin and normal when it checks out."""
    for sign in (1.0, -1.0):
        normal = sign * y[None, :]
        ok_s, m = _check_hyperplanes(normal, st.x[i : i + 1], st.others, st.chunk)
        if bool(ok_s[0]):
            st.margin[i] = float(m[0])
            if st.normals is not None:
                st.normals[i] = normal[0] / np.linalg.norm(normal[0])
            return True
    return False


def _checked_rows(n: int, limit: int | None, seed: int) -> np.ndarray:
    """Sorted indices of the tested inputs: all ``n``, or a random subset of ``limit`` (seed ``seed``).

    Raises:
        InputError: ``limit`` ≤ 0.
    """
    if limit is None:
        return np.arange(n)
    if limit <= 0:
        raise InputError(f"limit must be positive, got {limit}")
    return np.sort(np.random.default_rng(seed).choice(n, size=min(limit, n), replace=False))


def hull_separability(
    x_sensitive: torch.Tensor | np.ndarray,
    x_other: torch.Tensor | np.ndarray,
    *,
    limit: int | None = None,
    seed: int = 0,
    frank_wolfe_iterations: int = 100,
    tol: float = 1e-6,
    chunk: int = 1024,
    lp_time_limit: float | None = None,
    keep_normals: bool = False,
    reverse: bool = False,
    log: Callable[[str], None] | None = None,
) -> SeparabilityResult:
    """Decide for each row of ``x_sensitive`` whether it lies outside conv(rows of ``x_other``).

    Args:
        x_sensitive: (N_s, ...) inputs of the tested class (flattened to (N_s, d)), raw units.
        x_other: (N_o, ...) inputs of the class whose convex hull is tested against.
        limit: decide only a random subset of this many tested inputs (None: all).
        seed: seed of that subset (``numpy.random.default_rng(seed)``).
        frank_wolfe_iterations: Gilbert/Frank–Wolfe steps before falling back to LPs (0: none).
        tol: ℓ1 distance (input units) at or below which an LP says "inside".
        chunk: rows per batched matrix product (memory: chunk × N_o float64).
        lp_time_limit: seconds per LP (None: no limit); a timed-out LP raises.
        keep_normals: keep the unit separating directions (needed by :func:`hull_classifier`).
        reverse: recorded in the result only (the caller swapped the classes).
        log: progress messages (None: silent).
    Returns:
        A :class:`SeparabilityResult`.
    Raises:
        InputError: empty, non-finite or mismatched inputs, or a bad ``limit``.
    """
    t_total = time.perf_counter()
    xs, xo = _as_matrix(x_sensitive, "sensitive inputs"), _as_matrix(x_other, "other-class inputs")
    if xs.shape[1] != xo.shape[1]:
        raise InputError(f"the two classes have different input sizes ({xs.shape[1]} vs {xo.shape[1]})")
    log = log or (lambda msg: None)
    n_s, n_o = len(xs), len(xo)
    checked = _checked_rows(n_s, limit, seed)
    st = _HullState.start(xs[checked], xo, chunk, keep_normals)
    k, seconds = len(checked), {}
    t0 = time.perf_counter()
    st.record(np.arange(k), st.x - xo.mean(0), 0)  # 1. w = x − mean(other)
    seconds["mean"] = time.perf_counter() - t0
    log(f"hyperplane x − mean: {int(st.outside.sum())}/{k} outside")
    t0 = time.perf_counter()
    rest, nearest = _nearest_stage(st)  # 2. w = x − nearest other point (also Frank–Wolfe's start)
    seconds["nearest"] = time.perf_counter() - t0
    log(f"hyperplane x − nearest: {int(st.outside.sum())}/{k} outside")
    t0 = time.perf_counter()
    _frank_wolfe_stage(st, rest, nearest, frank_wolfe_iterations)  # 3. float32 search, float64 check
    seconds["frank-wolfe"] = time.perf_counter() - t0
    log(f"Frank–Wolfe ({frank_wolfe_iterations} steps): {int(st.outside.sum())}/{k} outside")
    t0 = time.perf_counter()
    rest = np.flatnonzero(~st.outside)
    unverified = _lp_stage(st, rest, checked, tol, lp_time_limit, log, t0)  # 4. LPs on the rest
    seconds["lp"] = time.perf_counter() - t0
    seconds["total"] = time.perf_counter() - t_total
    log(f"LPs: {len(rest)} run, {int(st.outside[rest].sum())} outside, {seconds['lp']:.1f}s")
    outside, method, margin, lp_distance, normals = st.outside, st.method, st.margin, st.lp_distance, st.normals
    return SeparabilityResult(
        n=n_s + n_o,
        n_sensitive=n_s,
        n_other=n_o,
        checked=checked,
        outside=outside,
        method=method,
        margin=margin,
        lp_distance=lp_distance,
        normals=normals,
        seconds=seconds,
        reverse=reverse,
        limit=limit,
        seed=seed,
        frank_wolfe_iterations=frank_wolfe_iterations,
        tol=tol,
        lp_unverified=unverified,
    )


def separability_bound(x: torch.Tensor, y: torch.Tensor, *, reverse: bool = False, **kwargs: Any) -> SeparabilityResult:
    """The separability certificate of a binary training set (1 = sensitive, 0 = other).

    Args:
        x: (N, ...) training inputs in raw units (a shift x − μ changes nothing).
        y: (N,) labels in {0, 1}.
        reverse: test the other class's inputs against conv(sensitive class) instead (the bound
            for classifiers whose convex region is the sensitive one).
        **kwargs: passed to :func:`hull_separability` (``limit``, ``seed``, ...).
    Returns:
        A :class:`SeparabilityResult`; ``.bound`` is the training-accuracy bound in [0, 1].
    Raises:
        InputError: labels other than 0/1, or a class with no inputs.
    """
    y = torch.as_tensor(y)
    if x.shape[0] != y.shape[0]:
        raise InputError(f"{x.shape[0]} inputs but {y.shape[0]} labels")
    if not bool(((y == 0) | (y == 1)).all()):
        raise InputError("separability needs binary labels: 1 = sensitive, 0 = other")
    pos, neg = x[y == 1], x[y == 0]
    if len(pos) == 0 or len(neg) == 0:
        raise InputError(f"separability needs both classes (got {len(pos)} sensitive, {len(neg)} other)")
    tested, hull = (neg, pos) if reverse else (pos, neg)
    return hull_separability(tested, hull, reverse=reverse, **kwargs)


def hull_classifier(
    result: SeparabilityResult,
    x_tested: torch.Tensor | np.ndarray,
    x_other: torch.Tensor | np.ndarray,
    input_shape: tuple[int, ...],
) -> torch.nn.Module:
    """The classifier that achieves the bound: a one-hidden-layer ICNN built from the certificates.

    g(y) = Σ_i relu(w_iᵀy − c_i) over the outside inputs i, with unit normals w_i and c_i midway
    between w_iᵀx_i and max_j w_iᵀx_j; b = −½ min_i (w_iᵀx_i − c_i). It is 0 on every other-class
    input and above −b on every outside input. Returned in float64 (float32 may blur tiny margins).

    Args:
        result: from :func:`hull_separability` with ``keep_normals=True`` and no ``limit``.
        x_tested, x_other: the same inputs the result was computed from.
        input_shape: shape of one input, e.g. (1, 28, 28).
    Returns:
        A float64 :class:`~asymcert.models.FeatureConvexClassifier` (identity φ, ICNN without batch
        norm) in eval mode; with ``reverse`` its score is negated by the caller's convention
        (it flags the tested class).
    Raises:
        InputError: the result has no normals or nothing outside.
    """

    if result.normals is None:
        raise InputError("hull_classifier needs a result computed with keep_normals=True")
    if result.n_outside == 0:
        raise InputError("no tested input lies outside the hull: there is nothing to separate")
    xs, xo = _as_matrix(x_tested, "tested inputs")[result.checked], _as_matrix(x_other, "other-class inputs")
    w = result.normals[result.outside]
    top = np.einsum("kd,kd->k", w, xs[result.outside])
    hull_max = _max_dot(w, torch.from_numpy(xo), 1024)
    c = 0.5 * (top + hull_max)
    k = len(w)
    model = cast(
        "FeatureConvexClassifier",
        build_model(
            {
                "kind": "feature-convex",
                "input_shape": list(input_shape),
                "feature_map": [{"kind": "identity"}],
                "convex": {"kind": "icnn", "widths": [k], "batch_norm": False},
            }
        ).double(),
    )
    g = cast("ICNN", model.convex)  # the config above builds an ICNN: passthrough (k then 1 units), hidden
    first, last = cast("list[torch.nn.Linear]", list(g.passthrough))
    with torch.no_grad():
        first.weight.copy_(torch.from_numpy(w))
        first.bias.copy_(torch.from_numpy(-c))
        cast(torch.nn.Linear, g.hidden[0]).weight.fill_(1.0)
        last.weight.zero_()
        last.bias.zero_()
        model.set_balance(-0.5 * float((top - c).min()))
    model.validate()
    return model.eval()
