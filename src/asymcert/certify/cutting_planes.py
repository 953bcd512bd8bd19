"""Exact radii to a stated tolerance by cutting planes of g, and the multi-cut certificate.

:func:`bracket_radius` brackets the exact ℓp distance from x to {s ≤ 0} for s = g(φ(x)) + b with φ
affine coordinate-wise (φ(x) = a ⊙ x + c) and any convex g whose s and ∇g autograd computes (ICNN of
any depth, ConvexConvNet, …). In u = δ / scale (raw units without a threat model) the tangent of g at
φ(x + δ_k) is the half-space n_k·u ≤ −m_k (n_k = ∇_u s(x + δ_k), m_k = its value at u = 0), which
contains every non-flagged move (Kelley). Each iteration, per input:

* lower: the distance to the current cuts ∩ the box (an LP for ℓ1/ℓ∞ with HiGHS, a K-variable dual for
  ℓ2); its multipliers λ give ONE half-space whose distance (∩ box) is evaluated soundly in float64 by
  :func:`~asymcert.certify.tangent_cuts.halfspace_box_distance` — a certificate of the exact function;
* upper: the minimiser u* and points t·u* on its ray, checked on the float64 model (s ≤ 0);
* new cuts: the tangents at u* and at the first point of the ray found non-flagged (all inputs'
  points in one batched forward and backward pass).

It stops when upper ≤ (1 + tol)·lower, at ``max_cuts`` or at the time limit (then the bracket is
reported as it is, with its status). :func:`multi_cut_radii` is the certificate form (any Lipschitz
φ, feature space, no box), also reachable as ``certify(..., cuts=K)``.
"""

from __future__ import annotations

import copy
import math
import time
import warnings
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from scipy.optimize import minimize

from asymcert.certify.exact import (
    UnsupportedModelError,
    _affine_feature_map,
    _import_highspy,
    _quiet_stdout,
    check_positive,
    nudge_into_domain,
    resolve_threat,
)
from asymcert.certify.feature_convex import certify_feature_convex, reference_error, score_and_feature_gradient
from asymcert.certify.inputs import check_inputs
from asymcert.certify.result import normalize_norm
from asymcert.certify.tangent_cuts import TangentCuts, box_move, combine, halfspace_box_distance, tangent_margins
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.threat import ResolvedThreatModel, ThreatModel

__all__ = ["BracketResult", "bracket_radius", "exact_radius_by_cuts", "multi_cut_radii"]

# probe points per round: ray multiples τ(1 + tol·step) (or 1 + step without a tangent root) and segment
# fractions toward u* (nearest the boundary first)
RAY_STEPS = np.array([0.0, 0.5, 2.0, 8.0, 64.0, 1024.0])
SEGMENT = np.array([1.0, 0.998, 0.99, 0.95, 0.8, 0.0])
FAMILY = 6
# cut rows of an LP whose dual stayed 0 for IDLE_SOLVES solves are deleted once it has more than KEEP_ROWS
IDLE_SOLVES, KEEP_ROWS = 10, 50


@dataclass
class BracketResult:
    """Brackets of the exact ℓp radius of a batch (raw units, or threat-model units ‖δ/scale‖_p).

    Attributes:
        lower: (N,) float64 sound lower bounds (certificates of the exact real-valued s; inf: no allowed
            move reaches s ≤ 0; 0 for inputs not flagged).
        upper: (N,) float64 sizes of checked perturbations (s(x + δ) ≤ 0 on the float64 model; inf: none
            found; 0 for inputs not flagged).
        delta: (N, *input_shape) float64 the perturbation of ``upper`` (raw units; 0 where none).
        iterations: (N,) int cut rounds used.
        status: per input "converged" (upper ≤ (1 + tol)·lower), "max cuts", "time limit", "not flagged"
            or "unreachable".
        seconds: (N,) wall-clock seconds, the batched passes shared equally among active inputs.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    delta: torch.Tensor
    iterations: np.ndarray
    status: list[str]
    seconds: np.ndarray

    def exact(self, tol: float) -> torch.Tensor:
        """(N,) the upper bound where the bracket met within ``tol`` (or is 0 / inf), NaN elsewhere."""
        met = self.upper <= (1 + tol) * self.lower
        same = self.upper == self.lower
        return torch.where(met | same, self.upper, torch.full_like(self.upper, math.nan))


@dataclass
class _Input:
    """One input's cuts (K, d) u-space normals and margins, and its bracket."""

    normals: list[np.ndarray] = field(default_factory=list)
    margins: list[float] = field(default_factory=list)
    lower: float = 0.0
    upper: float = math.inf
    delta: np.ndarray | None = None
    mu: np.ndarray | None = None
    s_best: float = 0.0
    lp: _HighsCuts | None = None


class _Problem:
    """The float64 model, φ's slope, the threat model's scale and the box on u for a batch."""

    def __init__(self, model: FeatureConvexClassifier, x_flat: np.ndarray, p: float, respect: bool, tm: object) -> None:
        if not isinstance(model, FeatureConvexClassifier):
            raise UnsupportedModelError(f"cutting planes need a feature-convex classifier, got {type(model).__name__}")
        if respect and model.input_range is None:
            raise UnsupportedModelError("respect_input_range=True but the model declares no input_range")
        self.model = model
        self.m64 = copy.deepcopy(model).double().eval()
        self.shape = tuple(model.input_shape)
        d = x_flat.shape[1]
        self.a, _ = _affine_feature_map(self.m64, d, self.shape)
        self.tm = resolve_threat(tm if isinstance(tm, ThreatModel | ResolvedThreatModel) else None, d)
        self.p = p
        self.scale = np.ones(d) if self.tm is None else self.tm.scale.double().numpy()
        lo, hi = np.full(d, -np.inf), np.full(d, np.inf)
        low, high = np.full_like(x_flat, -np.inf), np.full_like(x_flat, np.inf)
        if self.tm is not None:
            lo, hi = self.tm.lower.double().numpy(), self.tm.upper.double().numpy()
            inc, dec = self.tm.can_increase.numpy()[None], self.tm.can_decrease.numpy()[None]
            low = np.where(dec, np.minimum((lo - x_flat) / self.scale, 0.0), 0.0)
            high = np.where(inc, np.maximum((hi - x_flat) / self.scale, 0.0), 0.0)
        if respect:
            r0, r1 = model.input_range  # type: ignore[misc]  # checked above
            lo, hi = np.maximum(lo, r0), np.minimum(hi, r1)
            low = np.maximum(low, np.minimum((r0 - x_flat) / self.scale, 0.0))
            high = np.minimum(high, np.maximum((r1 - x_flat) / self.scale, 0.0))
        self.domain = (lo, hi)
        self.low, self.high = low, high
        self.boxed = self.tm is not None or respect

    def oracle(self, xs: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(s (M,), ∇_u s (M, d), rounding bound on s (M,)) at raw inputs xs (M, d), float64."""
        xt = torch.from_numpy(xs).reshape((-1, *self.shape))
        s, grad = score_and_feature_gradient(self.m64, xt)
        feats = self.m64.features(xt).detach()
        err = reference_error(self.model, feats, grad, s.double(), "float64")
        gx = grad.reshape(xs.shape[0], -1).double().numpy() * self.a[None]
        return s.double().numpy(), gx * self.scale[None], err.numpy()

    def scores(self, xs: np.ndarray) -> np.ndarray:
        """s (M,) float64 at raw inputs xs (M, d), forward only."""
        with torch.no_grad():
            return self.m64(torch.from_numpy(xs).reshape((-1, *self.shape))).double().numpy()

    def moved(self, x: np.ndarray, u: np.ndarray, rows: np.ndarray | list[int]) -> tuple[np.ndarray, np.ndarray]:
        """(x + δ, δ) for u-space moves u (M, d) of inputs ``rows`` (M,) at their raw inputs x (M, d): δ =
        scale ⊙ u clipped to the rows' boxes (forbidden directions exactly 0), nudged by ulps where x + δ
        in float64 would leave a domain that x is in, so that what is checked is exactly x + δ."""
        delta = nudge_into_domain(x, np.clip(u, self.low[rows], self.high[rows]) * self.scale[None], *self.domain)
        return x + delta, delta

    def size(self, delta: np.ndarray) -> np.ndarray:
        """‖δ / scale‖_p (M,)."""
        return np.linalg.norm(delta / self.scale[None], ord=self.p, axis=1)


class _HighsCuts:
    """One input's cut LP: ℓ1 directly (min Σ|u_i| over the cuts ∩ box, K rows); ℓ∞ by Newton on
    v(t) = min {max_k n_k·u + m_k : ‖u‖∞ ≤ t, box}.

    v is convex, decreasing and piecewise linear, and its root is the distance from 0 to the cuts ∩ box.
    The LP has one row per cut (plus the ℓ1 budget row) and a free z ≥ every cut, so its basis is
    small; between Newton steps only the radius changes, between rounds rows are added (and rows whose
    dual stayed 0 for IDLE_SOLVES solves are deleted beyond KEEP_ROWS: on the default ICNN 4096 this
    halves the ℓ1 time), and HiGHS's dual simplex restarts from the last basis. Newton starts from the
    last sound lower bound (v ≥ 0 there) and climbs to the root; the cut rows' duals at the end are the
    weights λ (0 for deleted rows).
    """

    def __init__(self, low: np.ndarray, high: np.ndarray, p: float, sigma: float, rho: float) -> None:
        highspy = _import_highspy()
        # variables w = u / σ and rows × ρ (σ: the closed-form radius, ρ: 1 / the first margin), so
        # that HiGHS's absolute tolerances (1e-7) do not swallow radii or margins of 1e-8
        self.sigma, self.rho, self.p = sigma, rho, p
        with _quiet_stdout():
            h = highspy.Highs()
        for name, value in (("output_flag", False), ("threads", 1), ("presolve", "off"), ("simplex_strategy", 1)):
            h.setOptionValue(name, value)
        self.inf = inf = highspy.kHighsInf
        d = low.size
        self.low, self.high = low / sigma, high / sigma
        self.d, self.h, self.nw = d, h, (2 * d if p == 1 else d)
        fin = lambda v: np.where(np.isfinite(v), v, np.where(v > 0, inf, -inf))  # noqa: E731
        if p == 1:
            h.addVars(2 * d, np.zeros(2 * d), fin(np.concatenate([self.high, -self.low])))
            h.addRow(-inf, inf, 2 * d, np.arange(2 * d, dtype=np.int32), np.ones(2 * d))  # Σ w± (free row)
        else:
            h.addVars(d, fin(self.low), fin(self.high))
        if p == 1:  # ℓ1 directly: min Σ w± over the cuts (K rows); z stays 0
            h.addVars(1, np.array([0.0]), np.array([0.0]))
            h.changeColsCost(2 * d, np.arange(2 * d, dtype=np.int32), np.ones(2 * d))
        else:
            h.addVars(1, np.array([-inf]), np.array([inf]))  # z, the model's value
            h.changeColsCost(1, np.array([self.nw], dtype=np.int32), np.array([1.0]))
        self.first_cut = 1 if p == 1 else 0
        self.cuts_seen = 0  # cuts of the caller's lists already added (some rows may be deleted since)
        self.cut_of_row: list[int] = []  # the cut (index into the caller's lists) behind each cut row
        self.idle = np.zeros(0, dtype=np.int64)  # solves since each cut row last had a nonzero dual

    def _set_radius(self, t: float) -> tuple[np.ndarray, np.ndarray]:
        if self.p == 1:
            return np.zeros(0), np.zeros(0)
        lo, hi = np.maximum(-t, self.low), np.minimum(t, self.high)
        self.h.changeColsBounds(self.d, np.arange(self.d, dtype=np.int32), lo, hi)
        return lo, hi

    def _slope(self, sol: Any, t: float, lo: np.ndarray, hi: np.ndarray) -> float:
        """|dv/dt| from the duals: the budget row's (ℓ1) or the reduced costs of w at ±t, not at the box (ℓ∞)."""
        if self.p == 1:
            return abs(float(sol.row_dual[0]))
        rc = np.asarray(sol.col_dual)[: self.d]
        at_t = np.where(rc < 0, hi >= t, lo <= -t)
        return float(np.abs(rc[at_t]).sum())

    def solve(self, normals: list[np.ndarray], margins: list[float], t0: float) -> tuple[np.ndarray, np.ndarray] | None:
        """(u*, λ ≥ 0 per cut) for the current cuts, Newton from radius t0 (u units, ≤ the root), or None."""
        highspy = _import_highspy()
        h = self.h
        new = range(self.cuts_seen, len(margins))
        if len(new):  # the new cuts' rows in one call (one by one costs HiGHS a rebuild each)
            nk = np.array([normals[k] for k in new]) * (self.sigma * self.rho)
            z = -np.ones((len(new), 1))
            rows = np.hstack([nk, -nk, z] if self.p == 1 else [nk, z])
            width = rows.shape[1]
            h.addRows(
                len(new),
                np.full(len(new), -self.inf),
                np.array([-margins[k] * self.rho for k in new]),
                rows.size,
                np.arange(0, rows.size, width, dtype=np.int32),
                np.tile(np.arange(width, dtype=np.int32), len(new)),
                rows.ravel(),
            )
            self.cut_of_row += list(new)
            self.cuts_seen = len(margins)
            self.idle = np.concatenate([self.idle, np.zeros(len(new), dtype=np.int64)])
        t, sol = t0 / self.sigma, None
        for _ in range(1 if self.p == 1 else 50):
            lo, hi = self._set_radius(t)
            h.run()
            if h.getModelStatus() != highspy.HighsModelStatus.kOptimal:
                return None
            sol = h.getSolution()
            v = float(h.getInfo().objective_function_value)
            slope = self._slope(sol, t, lo, hi)
            if v <= 1e-10 or slope <= 1e-300:
                break
            t_next = t + v / slope
            if not math.isfinite(t_next) or t_next <= t:
                break
            t = t_next
        assert sol is not None  # the loop ran at least once
        x = np.asarray(sol.col_value)
        w = x[: self.d] - x[self.d : 2 * self.d] if self.p == 1 else x[: self.d]
        duals = np.maximum(-np.asarray(sol.row_dual)[self.first_cut :], 0.0)
        lam = np.zeros(len(margins))
        lam[self.cut_of_row] = duals
        self._forget_idle_rows(duals > 0)
        return w * self.sigma, lam

    def _forget_idle_rows(self, active: np.ndarray) -> None:
        """Delete the cut rows whose dual has been 0 for IDLE_SOLVES solves once there are more than
        KEEP_ROWS (the LP stays small; λ and the lower bounds only ever use the rows solved with)."""
        self.idle = np.where(active, 0, self.idle + 1)
        drop = np.flatnonzero(self.idle >= IDLE_SOLVES)
        if len(self.cut_of_row) <= KEEP_ROWS or drop.size == 0:
            return
        self.h.deleteRows(drop.size, (drop + self.first_cut).astype(np.int32))
        keep = np.setdiff1d(np.arange(len(self.cut_of_row)), drop)
        self.cut_of_row = [self.cut_of_row[j] for j in keep]
        self.idle = self.idle[keep]


def _solve_qp(st: _Input, low: np.ndarray, high: np.ndarray) -> tuple[np.ndarray, np.ndarray] | None:
    """(u*, μ) of min ½‖u‖² over the cuts ∩ box via its K-variable dual (L-BFGS-B on μ ≥ 0)."""
    sigma, rho = _scales(st, 2.0)
    N, m = np.array(st.normals) * (sigma * rho), np.array(st.margins) * rho
    low, high = low / sigma, high / sigma
    k = m.size
    mu0 = np.zeros(k) if st.mu is None else np.concatenate([st.mu, np.zeros(k - st.mu.size)])

    def neg_dual(mu: np.ndarray) -> tuple[float, np.ndarray]:
        u = np.clip(-N.T @ mu, low, high)
        val = 0.5 * u @ u + mu @ (N @ u + m)
        return -float(val), -(N @ u + m)

    res = minimize(
        neg_dual,
        mu0,
        jac=True,
        method="L-BFGS-B",
        bounds=[(0.0, None)] * k,
        options={"maxiter": 500, "ftol": 1e-15, "gtol": 1e-12},
    )
    st.mu = res.x
    return np.clip(-N.T @ res.x, low, high) * sigma, res.x


def _scales(st: _Input, p: float) -> tuple[float, float]:
    """(σ, ρ): the first cut's distance m₀/‖n₀‖_{p*} and 1/m₀ (1 where not positive and finite)."""
    m0 = abs(st.margins[0])
    q = 1.0 / (1.0 - 1.0 / p) if 1 < p < math.inf else (math.inf if p == 1 else 1.0)
    nn = float(np.linalg.norm(st.normals[0], ord=q))
    sigma = m0 / nn if nn > 0 and m0 > 0 else 1.0
    rho = 1.0 / m0 if m0 > 0 else 1.0
    return (sigma, rho) if math.isfinite(sigma) and math.isfinite(rho) and sigma > 0 else (1.0, 1.0)


def _lower_bound(st: _Input, lam: np.ndarray, low: np.ndarray | None, high: np.ndarray | None, p: float) -> float:
    """The sound distance of the λ-combined cut (∩ box): a certificate of the exact function (0 if λ = 0)."""
    lam = np.maximum(np.nan_to_num(lam, nan=0.0), 0.0)
    if lam.sum() <= 0:
        return 0.0
    cuts = TangentCuts(torch.tensor(np.array(st.margins))[None], torch.tensor(np.array(st.normals))[None])
    m, c = combine(cuts, torch.tensor(lam)[None])
    box = (None, None) if low is None or high is None else (torch.tensor(low)[None], torch.tensor(high)[None])
    return float(halfspace_box_distance(c, m, p, *box)[0])


def _record(
    prob: _Problem,
    states: list[_Input],
    owner: list[int],
    delta: np.ndarray,
    s: np.ndarray,
    gu: np.ndarray,
    err: np.ndarray,
) -> None:
    """Add the tangents at the moves δ (M, d) (s, ∇_u s, rounding bound at x + δ) to inputs ``owner``
    (M,) (indices into ``states``), and keep every checked non-flagged point as an upper bound."""
    u = delta / prob.scale[None]
    mk = tangent_margins(
        torch.zeros_like(torch.from_numpy(u)),
        torch.from_numpy(u),
        torch.from_numpy(s),
        torch.from_numpy(gu),
        torch.from_numpy(err),
    ).numpy()
    sizes = prob.size(delta)
    for j, k in enumerate(owner):
        st = states[k]
        if s[j] <= 0 and sizes[j] < st.upper:
            st.upper, st.delta, st.s_best = float(sizes[j]), delta[j], float(s[j])
        st.normals.append(gu[j])
        st.margins.append(float(mk[j]))


def _round(prob: _Problem, states: list[_Input], x_flat: np.ndarray, idx: list[int], tol: float) -> None:
    """One cut round for inputs ``idx``: solve, bound below, add the tangents at u* and at the first
    non-flagged point of its ray (two batched passes for all of them)."""
    p, us, owner = prob.p, [], []
    for k in idx:
        st, low, high = states[k], prob.low[k], prob.high[k]
        if p != 2 and st.lp is None:
            st.lp = _HighsCuts(low, high, p, *_scales(st, p))
        sol = _solve_qp(st, low, high) if st.lp is None else st.lp.solve(st.normals, st.margins, st.lower)
        box = (low, high) if prob.boxed else (None, None)
        if sol is None:
            continue
        u, lam = sol
        st.lower = max(st.lower, _lower_bound(st, lam, box[0], box[1], p))
        if st.upper > (1 + tol) * st.lower and st.lower < math.inf:
            us.append(u)
            owner.append(k)
    if not us:
        return
    u_arr = np.array(us)
    x_adv, delta = prob.moved(x_flat[owner], u_arr, owner)
    s, gu, err = prob.oracle(x_adv)
    _record(prob, states, owner, delta, s, gu, err)
    grid = _probe_points(prob, [states[k] for k in owner], delta / prob.scale[None], s, gu, tol, owner)
    j = grid.shape[1]
    rows = np.repeat(np.array(owner), j)
    x_p, d_p = prob.moved(x_flat[rows], grid.reshape(-1, grid.shape[2]), rows)
    s_p = prob.scores(x_p)
    ok = (s_p <= 0).reshape(-1, j)
    sizes = np.where(ok, prob.size(d_p).reshape(-1, j), np.inf)
    for i, k in enumerate(owner):  # the smallest checked non-flagged point is an upper bound
        b = int(np.argmin(sizes[i]))
        if sizes[i, b] < states[k].upper:
            states[k].upper, states[k].delta = float(sizes[i, b]), d_p[i * j + b]
            states[k].s_best = float(s_p[i * j + b])
    # per family, tangents at its first non-flagged point (nearest the boundary) and at the point before it
    fam = ok.reshape(len(owner), -1, FAMILY)
    first = np.argmax(fam, axis=2)
    found = fam.any(axis=2)
    base = (np.arange(len(owner))[:, None] * j + np.arange(fam.shape[1])[None] * FAMILY + first)[found]
    before = base[(first[found] > 0)] - 1
    pick = np.unique(np.concatenate([base, before]))
    if pick.size:  # gradients only where a tangent is added
        s_k, gu_k, err_k = prob.oracle(x_p[pick])
        _record(prob, states, rows[pick].tolist(), d_p[pick], s_k, gu_k, err_k)


def _probe_points(
    prob: _Problem, sts: list[_Input], u: np.ndarray, s: np.ndarray, gu: np.ndarray, tol: float, owner: list[int]
) -> np.ndarray:
    """(M, 3·FAMILY, d) u-space points to probe for each u* (M, d) with s (M,) and ∇_u s (M, d) there.

    Three families, each ordered nearest the boundary first: the segment from the best non-flagged
    point u_b to u* (the crossing lies in α ∈ [α_chord, α_tangent], s being convex along it), the ray
    τ·u* from the tangent's root up, and u* + (1 + γ)·v with v the norm's steepest first-order step
    that zeroes the tangent at u* (Newton from u* never overshoots a convex s, so γ ≥ 0 grows it).
    """
    m, d = u.shape
    out = np.empty((m, 3, FAMILY, d))
    slope_ray = np.einsum("md,md->m", gu, u)
    tau = np.where(slope_ray < 0, 1.0 + np.maximum(s, 0.0) / np.maximum(-slope_ray, 1e-300), 1.0)
    grow = np.where(slope_ray < 0, tol, 1.0)[:, None] * RAY_STEPS[None]
    out[:, 1] = (tau[:, None] * (1.0 + grow))[:, :, None] * u[:, None, :]
    room = torch.from_numpy(np.maximum(np.where(gu < 0, prob.high[owner] - u, u - prob.low[owner]), 0.0))
    # the norm's own step, or (no non-flagged point known yet, e.g. an ℓ1 ray that never crosses) the ℓ2 one
    v = box_move(torch.from_numpy(-gu), torch.from_numpy(np.maximum(s, 0.0)), prob.p, room).numpy()
    seed = np.array([st.delta is None for st in sts])
    if seed.any() and prob.p != 2:
        v2 = box_move(torch.from_numpy(-gu[seed]), torch.from_numpy(np.maximum(s[seed], 0.0)), 2.0, room[seed])
        v[seed] = v2.numpy()
    out[:, 2] = u[:, None, :] + (1.0 + tol * RAY_STEPS)[None, :, None] * v[:, None, :]
    out[:, 0] = out[:, 1]
    for i, st in enumerate(sts):
        if st.delta is not None and s[i] > 0:
            ub = st.delta / prob.scale
            sb = min(st.s_best, 0.0)
            slope = float(gu[i] @ (u[i] - ub))
            a_t = 1.0 - s[i] / slope if slope > 0 else 1.0
            a_c = -sb / (s[i] - sb)
            alpha = a_c + (max(a_t, a_c) - a_c) * SEGMENT
            out[i, 0] = ub[None] + alpha[:, None] * (u[i] - ub)[None]
    return out.reshape(m, 3 * FAMILY, d)


def bracket_radius(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    norm: float | str,
    tol: float = 1e-3,
    max_cuts: int = 60,
    time_limit: float | None = None,
    respect_input_range: bool = False,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
) -> BracketResult:
    """Bracket the exact ℓp distance from each input to {s ≤ 0} by Kelley's cutting planes (module docstring).

    Args:
        model: a feature-convex classifier with an affine coordinate-wise φ (identity/shift/standardize)
            and any convex g autograd differentiates; its float64 eval-mode copy is used.
        x: (N, *input_shape) raw inputs. norm: 1, 2 or inf.
        tol: stop an input when upper ≤ (1 + tol)·lower. max_cuts: cut rounds per input (each adds ≤ 2).
        time_limit: seconds for the whole batch (None: none, else a positive number); inputs still open get
            "time limit".
        respect_input_range: also keep x + δ in ``model.input_range``.
        threat_model: only the moves it allows, sizes ‖δ/scale‖_p (as :func:`~asymcert.certify.exact.exact_radius`).
    Returns:
        A :class:`BracketResult`; ``lower`` is always a sound radius, ``upper`` a checked distance.
    Raises:
        UnsupportedModelError: not a feature-convex classifier, a φ that is not affine coordinate-wise
            (naming it), a norm other than 1, 2, ∞, or respect_input_range without an input_range.
        ConfigError: a time limit that is not None or a positive number (0, negative, NaN, a bool).
    """
    p = normalize_norm(norm)
    if p not in (1.0, 2.0, math.inf):
        raise UnsupportedModelError(f"cutting planes bracket ℓ1, ℓ2 and ℓ∞ radii only, not ℓ{p:g}")
    check_inputs(x, getattr(model, "input_shape", None), None)
    check_positive("cutting planes", "time_limit", time_limit, optional=True)
    model.validate()
    n = x.shape[0]
    x_flat = x.detach().cpu().double().reshape(n, int(np.prod(x.shape[1:]))).numpy()
    prob = _Problem(model, x_flat, p, respect_input_range, threat_model)
    if n == 0:  # an empty batch: empty results, as every other solver returns
        empty = torch.zeros(0, dtype=torch.float64)
        return BracketResult(
            empty, empty.clone(), torch.zeros(x.shape, dtype=torch.float64), np.zeros(0, np.int64), [], np.zeros(0)
        )
    t0 = time.perf_counter()
    states, flagged = _start(prob, x_flat)
    iterations, seconds = np.zeros(n, dtype=np.int64), np.zeros(n)
    status = ["max cuts" if f else "not flagged" for f in flagged]
    for _ in range(max_cuts):
        active = [int(k) for k in np.flatnonzero(flagged) if not _done(states[k], tol)]
        if not active:
            break
        if time_limit is not None and time.perf_counter() - t0 > time_limit:
            for k in active:
                status[k] = "time limit"
            break
        t_round = time.perf_counter()
        _round(prob, states, x_flat, active, tol)
        for k in active:
            if _done(states[k], tol):
                states[k].lp = None  # free the LP of a finished input
        iterations[active] += 1
        seconds[active] += (time.perf_counter() - t_round) / len(active)
    return _result(prob, states, flagged, status, iterations, seconds, tol, x)


def _start(prob: _Problem, x_flat: np.ndarray) -> tuple[list[_Input], np.ndarray]:
    """(one state per input x_flat (N, d), with the tangent at x; which are flagged (N,) bool). A flagged input
    with nothing movable (immutable features, or a domain without room) is unreachable from the start (the ℓ1
    LP is then infeasible, and its rounds would run out as "max cuts")."""
    states = [_Input() for _ in range(len(x_flat))]
    s, gu, err = prob.oracle(x_flat)
    _record(prob, states, list(range(len(x_flat))), np.zeros_like(x_flat), s, gu, err)
    flagged = s > 0
    stuck = np.asarray(~((prob.low < 0) | (prob.high > 0)).any(axis=1))
    for st, f, still in zip(states, flagged, stuck, strict=True):
        st.upper, st.delta = (math.inf, None) if f else (0.0, None)
        if f and still:
            st.lower = math.inf
    return states, flagged


def _done(st: _Input, tol: float) -> bool:
    return st.upper <= (1 + tol) * st.lower or st.lower == math.inf


def _result(
    prob: _Problem,
    states: list[_Input],
    flagged: np.ndarray,
    status: list[str],
    iterations: np.ndarray,
    seconds: np.ndarray,
    tol: float,
    x: torch.Tensor,
) -> BracketResult:
    """Pack the states into a :class:`BracketResult` (statuses of the finished inputs filled in)."""
    n, d = len(states), prob.scale.size
    lower, upper, delta = np.zeros(n), np.zeros(n), np.zeros((n, d))
    for k, st in enumerate(states):
        if not flagged[k]:
            continue
        lower[k], upper[k] = st.lower, st.upper
        if st.delta is not None:
            delta[k] = st.delta
        if st.lower == math.inf:
            status[k], upper[k] = "unreachable", math.inf
        elif _done(st, tol):
            status[k] = "converged"
    if any(s in ("max cuts", "time limit") for s in status):
        warnings.warn(
            f"cutting planes: {sum(s in ('max cuts', 'time limit') for s in status)} input(s) did not reach "
            f"tolerance {tol:g}; their bracket [lower, upper] is reported",
            RuntimeWarning,
            stacklevel=3,
        )
    return BracketResult(
        torch.from_numpy(lower),
        torch.from_numpy(upper),
        torch.from_numpy(delta).reshape((n, *prob.shape)),
        iterations,
        status,
        seconds,
    )


def multi_cut_radii(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    norms: tuple[float, ...],
    cuts: int = 4,
    guard: bool = True,
    precision: str = "auto",
) -> dict[float, torch.Tensor]:
    """The multi-cut certificate: radii (N,) float64 per norm, raw input units, ≥ the closed form.

    ``certify_feature_convex(..., cuts=K)``: K tangent planes of g along a Kelley path in feature
    space, combined with fitted weights λ ≥ 0 and evaluated soundly in float64 (any Lipschitz φ).
    """
    return certify_feature_convex(model, x, norms, precision=precision, guard=guard, cuts=cuts).radii


def exact_radius_by_cuts(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    norm: float | str,
    tol: float = 1e-3,
    max_cuts: int = 60,
    time_limit: float | None = None,
    respect_input_range: bool = False,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Exact radii to relative tolerance ``tol`` by :func:`bracket_radius`, like
    :func:`~asymcert.certify.exact.exact_radius` but for any convex g autograd differentiates.

    Returns:
        (radii (N,), delta (N, *input_shape)): the checked upper bound where upper ≤ (1 + tol)·lower
        (so it is within tol of the exact radius; 0 not flagged, inf unreachable), NaN (with a
        RuntimeWarning) where the bracket did not meet, δ (raw units) its perturbation.
    """
    res = bracket_radius(model, x, norm, tol, max_cuts, time_limit, respect_input_range, threat_model)
    radii = res.exact(tol)
    return radii, res.delta
