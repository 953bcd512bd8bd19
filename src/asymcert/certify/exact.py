"""Exact minimal adversarial distances of feature-convex classifiers (linear and conic programs).

For s(x) = g(φ(x)) + b with φ affine (φ(x) = a ⊙ x + c) and g an :class:`~asymcert.nn.ICNN` or a
:class:`~asymcert.nn.ConvexConvNet`, the non-sensitive region {x : s(x) ≤ 0} is convex and, because
every weight that multiplies a hidden state is nonnegative (and every batch-norm scale positive),
it is exactly the projection onto x of the polyhedron

* ICNN: z₁ ≥ U₀f + c₀, z_{k+1} ≥ W_k BN_k(z_k) + U_k f + c_k, z ≥ 0, W_L BN_L(z_L) + U_L f + c_L + b ≤ 0;
* ConvexConvNet: z₁ ≥ stem(f), z_{k+1} ≥ z_k + conv₊(BN_k(z_k)), z ≥ 0, readout(BN(z_last)) + b ≤ 0;

with f = φ(x) (every relu is relaxed to its epigraph; monotonicity makes the relaxation exact).
The smallest ‖δ‖_p that puts x + δ in that set is therefore a linear program for ℓ1 and ℓ∞
(solved with HiGHS, warm-started from one input to the next: only the right-hand side changes)
and a convex quadratic program for ℓ2 (solved with Clarabel).

The distance is computed over all of R^d, like the certificates it is compared with: the model's
``input_range`` is ignored unless ``respect_input_range=True``. Every reported radius comes with a
perturbation that is checked on the model itself (float64) before it is reported.
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import warnings
from dataclasses import dataclass
from typing import Any

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from asymcert.certify.inputs import check_inputs
from asymcert.certify.result import normalize_norm
from asymcert.errors import AsymcertError

__all__ = ["ExactRadiusSolver", "UnsupportedModelError", "exact_radius"]

# A reported perturbation δ must satisfy s(x + (1 + CHECK_SCALE)·δ) ≤ CHECK_TOL·max(1, |s(x)|).
CHECK_SCALE = 1e-6
CHECK_TOL = 1e-5


class UnsupportedModelError(AsymcertError, ValueError):
    """A model whose exact radius this module cannot compute (non-affine φ, unknown g, …)."""


# ---------------------------------------------------------------------------------------------
# The model as a chain of monotone affine layers
# ---------------------------------------------------------------------------------------------

@dataclass
class _Layer:
    """z_k = relu(M z_{k-1} + P f + c); M ≥ 0 entrywise. M is None for the first layer, P when f is absent."""

    M: sp.csr_matrix | None
    P: sp.csr_matrix | None
    c: np.ndarray


@dataclass
class _Chain:
    """s(x) = m·z_L + p·f + c_out with f = a ⊙ x + c_phi (everything float64, flattened)."""

    a: np.ndarray
    c_phi: np.ndarray
    layers: list[_Layer]
    out_m: sp.csr_matrix  # (1, w_L)
    out_p: sp.csr_matrix | None  # (1, q)
    out_c: float

    @property
    def dim(self) -> int:
        return int(self.a.shape[0])

    def features(self, x: np.ndarray) -> np.ndarray:
        """f = φ(x) for flattened inputs (N, d)."""
        return x * self.a + self.c_phi

    def score(self, x: np.ndarray) -> np.ndarray:
        """s(x) (N,) of flattened inputs (N, d), float64, by the chain (for self-checks)."""
        f = self.features(x)
        z = None
        for layer in self.layers:
            pre = np.broadcast_to(layer.c, (x.shape[0], layer.c.shape[0])).copy()
            if layer.M is not None:
                pre += (layer.M @ z.T).T
            if layer.P is not None:
                pre += (layer.P @ f.T).T
            z = np.maximum(pre, 0.0)
        out = (self.out_m @ z.T).T[:, 0] + self.out_c
        if self.out_p is not None:
            out = out + (self.out_p @ f.T).T[:, 0]
        return out


def _np(t: torch.Tensor) -> np.ndarray:
    return t.detach().cpu().double().numpy()


def _bn_affine(module: nn.Module, width: int) -> tuple[np.ndarray, np.ndarray]:
    """(scale, shift) per channel of a PositiveBatchNorm in eval mode (or of an Identity)."""
    if isinstance(module, nn.Identity):
        return np.ones(width), np.zeros(width)
    if not hasattr(module, "eval_affine") or getattr(module, "running_mean", None) is None:
        raise UnsupportedModelError(f"exact radii need batch norms with running statistics, got {module!r}")
    scale, shift = (_np(t) for t in module.eval_affine())
    if not np.all(scale > 0) or not np.all(np.isfinite(shift)):
        raise UnsupportedModelError("a batch-norm scale is not positive: the model is not input-convex")
    return scale, shift


def conv_matrix(weight: np.ndarray, height: int, width: int, padding: int) -> sp.csr_matrix:
    """The stride-1, zero-padded 2-D convolution with ``weight`` (C_out, C_in, k, k) as a sparse matrix.

    Maps a flattened (C_in, H, W) tensor to a flattened (C_out, H_out, W_out) one (no bias).
    """
    c_out, c_in, kh, kw = weight.shape
    h_out, w_out = height + 2 * padding - kh + 1, width + 2 * padding - kw + 1
    co, ci, oy, ox = np.meshgrid(np.arange(c_out), np.arange(c_in), np.arange(h_out), np.arange(w_out),
                                 indexing="ij")
    rows, cols, vals = [], [], []
    for ky in range(kh):
        for kx in range(kw):
            iy, ix = oy + ky - padding, ox + kx - padding
            ok = (iy >= 0) & (iy < height) & (ix >= 0) & (ix < width)
            v = weight[co[ok], ci[ok], ky, kx]
            nz = v != 0
            rows.append(((co * h_out + oy) * w_out + ox)[ok][nz])
            cols.append(((ci * height + iy) * width + ix)[ok][nz])
            vals.append(v[nz])
    return sp.csr_matrix((np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
                         shape=(c_out * h_out * w_out, c_in * height * width))


def _affine_feature_map(model: nn.Module, d: int, shape: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) with φ(x) = a ⊙ x + c (flattened), verified on random inputs."""
    phi = model.feature_map
    if not (hasattr(phi, "affine") and phi.affine()):
        raise UnsupportedModelError(
            f"exact radii need an affine feature map (identity/shift/standardize); "
            f"{getattr(phi, 'config', lambda: type(phi).__name__)()} is not affine")
    with torch.no_grad():
        zero = torch.zeros((1,) + shape, dtype=torch.float64)
        c = phi(zero)
        if tuple(c.shape[1:]) != shape:
            raise UnsupportedModelError("exact radii need a feature map that keeps the input shape")
        a = phi(torch.ones_like(zero)) - c
        probe = torch.randn((3,) + shape, dtype=torch.float64, generator=torch.Generator().manual_seed(0))
        err = (phi(probe) - (probe * a + c)).abs().max()
        if not bool(err <= 1e-9 * (1 + probe.abs().max() * a.abs().max() + c.abs().max())):
            raise UnsupportedModelError("the feature map is not elementwise affine (φ(x) ≠ a ⊙ x + c)")
    return _np(a).reshape(d), _np(c).reshape(d)


def _chain_of(model: nn.Module) -> _Chain:
    """The float64 layer chain of a FeatureConvexClassifier (whose weights are read in eval mode)."""
    from asymcert.models.feature_convex import FeatureConvexClassifier
    from asymcert.nn.convex import ICNN, ConvexConvNet

    if not isinstance(model, FeatureConvexClassifier):
        raise UnsupportedModelError(f"exact radii exist only for feature-convex classifiers, got "
                                    f"{type(model).__name__}")
    model.validate()  # nonnegative weights: the epigraph relaxation is exact only then
    shape = tuple(model.input_shape)
    d = int(np.prod(shape))
    a, c_phi = _affine_feature_map(model, d, shape)
    g = model.convex
    balance = float(model.balance.double())
    layers: list[_Layer] = []
    if isinstance(g, ICNN):
        U = [(sp.csr_matrix(_np(lin.weight)), _np(lin.bias)) for lin in g.passthrough]
        layers.append(_Layer(None, U[0][0], U[0][1]))
        n_hidden = len(g.hidden)
        out_m = sp.csr_matrix(np.ones((1, 1)))
        out_p, out_c = None, balance
        for k in range(n_hidden):
            W = _np(g.hidden[k].weight)
            scale, shift = _bn_affine(g.norms[k], W.shape[1])
            M = sp.csr_matrix(W * scale[None, :])
            c = W @ shift + U[k + 1][1]
            if k < n_hidden - 1:
                layers.append(_Layer(M, U[k + 1][0], c))
            else:
                out_m, out_p, out_c = M, U[k + 1][0], float(c[0]) + balance
    elif isinstance(g, ConvexConvNet):
        c_in, h, w = g.in_shape
        stem = g.stem
        if stem.stride != (1, 1) or stem.dilation != (1, 1) or stem.groups != 1:
            raise UnsupportedModelError("exact radii support stride-1, ungrouped convolutions only")
        K0 = conv_matrix(_np(stem.weight), h, w, stem.padding[0])
        ho, wo = h + 2 * stem.padding[0] - stem.kernel_size[0] + 1, w + 2 * stem.padding[1] - stem.kernel_size[1] + 1
        hw = ho * wo
        bias0 = np.zeros(g.channels) if stem.bias is None else _np(stem.bias)
        layers.append(_Layer(None, K0, np.repeat(bias0, hw)))
        eye = sp.identity(g.channels * hw, format="csr")
        for norm, conv in zip(g.block_norms, g.block_convs):
            scale, shift = _bn_affine(norm, g.channels)
            K = conv_matrix(_np(conv.weight), ho, wo, conv.padding[0])
            s_full, t_full = np.repeat(scale, hw), np.repeat(shift, hw)
            bias = np.zeros(g.channels) if conv.bias is None else _np(conv.bias)
            layers.append(_Layer((eye + K @ sp.diags(s_full)).tocsr(), None, K @ t_full + np.repeat(bias, hw)))
        scale, shift = _bn_affine(g.out_norm, g.channels)
        wr = _np(g.readout.weight)[0]
        out_m = sp.csr_matrix((wr * np.repeat(scale, hw))[None, :])
        out_c = float(wr @ np.repeat(shift, hw) + (_np(g.readout.bias)[0] if g.readout.bias is not None else 0.0)) + balance
        out_p = None
    else:
        raise UnsupportedModelError(f"exact radii support ICNN and ConvexConvNet, got {type(g).__name__}")
    return _Chain(a, c_phi, layers, out_m, out_p, out_c)


# ---------------------------------------------------------------------------------------------
# The optimisation problem: G v ≤ h(x), v = [δ-part, z_1, …, z_L, (t)]
# ---------------------------------------------------------------------------------------------

@contextlib.contextmanager
def _quiet_stdout():
    """Silence C-level stdout (HiGHS prints a banner when its first instance is created)."""
    try:
        fd = os.dup(1)
    except OSError:  # pragma: no cover
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(fd, 1)
    finally:
        os.close(fd)


class ExactRadiusSolver:
    """Exact ℓp distance from inputs to the non-sensitive region of one model, for one norm.

    The constraint matrix is built once; each input only changes the right-hand side, and the LP
    solver (HiGHS dual simplex) restarts from the previous input's optimal basis.

    Args:
        model: a :class:`~asymcert.models.FeatureConvexClassifier` with an affine feature map and an
            ICNN or ConvexConvNet g. Its eval-mode function is used (batch norms folded).
        norm: 1, 2 or ``math.inf`` (``"inf"`` accepted).
        respect_input_range: constrain x + δ to ``model.input_range`` (default: no, the distance is
            over all of R^d, which is what certificates bound).
    Raises:
        UnsupportedModelError: the model is not of that form (or its norm is not 1, 2, ∞).
    """

    def __init__(self, model: nn.Module, norm: float | str, respect_input_range: bool = False) -> None:
        self.norm = normalize_norm(norm)
        if self.norm not in (1.0, 2.0, math.inf):
            raise UnsupportedModelError(f"exact radii exist for ℓ1, ℓ2 and ℓ∞ only, not ℓ{self.norm:g}")
        self.model64 = copy.deepcopy(model).double().eval()
        self.chain = _chain_of(self.model64)
        self.input_shape = tuple(model.input_shape)
        self.input_range = model.input_range if respect_input_range else None
        if respect_input_range and model.input_range is None:
            raise UnsupportedModelError("respect_input_range=True but the model declares no input_range")
        self._build()
        self._lp = None
        self._qp = None

    # -- assembly ---------------------------------------------------------------------------
    def _build(self) -> None:
        ch, d = self.chain, self.chain.dim
        widths = [layer.c.shape[0] for layer in ch.layers]
        A = sp.diags(ch.a)
        n_delta = 2 * d if self.norm == 1 else d
        n_t = 1 if math.isinf(self.norm) else 0
        self.n_delta, self.z_off = n_delta, np.concatenate([[n_delta], n_delta + np.cumsum(widths)])
        n_var = int(self.z_off[-1]) + n_t

        def delta_block(P: sp.csr_matrix | None, rows: int) -> sp.spmatrix:
            if P is None:
                return sp.csr_matrix((rows, n_delta))
            PA = P @ A
            return sp.hstack([PA, -PA]) if self.norm == 1 else PA

        blocks: list[list[Any]] = []
        L = len(ch.layers)
        for k, layer in enumerate(ch.layers):
            row: list[Any] = [delta_block(layer.P, widths[k])] + [None] * L
            row[1 + k] = -sp.identity(widths[k])
            if layer.M is not None:
                row[k] = layer.M
            blocks.append(row)
        out = [delta_block(ch.out_p, 1)] + [None] * L
        out[L] = ch.out_m
        blocks.append(out)
        G = sp.bmat(blocks, format="csr")  # rows: hidden layers then the output row
        if n_t:
            G = sp.hstack([G, sp.csr_matrix((G.shape[0], 1))], format="csr")
            eye = sp.identity(d)
            ones = sp.csr_matrix(np.ones((d, 1)))
            zeros_z = sp.csr_matrix((d, int(self.z_off[-1]) - d))
            norm_rows = sp.vstack([sp.hstack([eye, zeros_z, -ones]), sp.hstack([-eye, zeros_z, -ones])])
            G = sp.vstack([G, norm_rows], format="csr")
        self.G = G
        self.n_var, self.n_chain_rows = n_var, int(sum(widths)) + 1
        # rhs(x) = h_const - Pstack f(x) on the chain rows; 0 on the ℓ∞ rows.
        h_const = np.concatenate([-layer.c for layer in ch.layers] + [np.array([-ch.out_c])])
        p_blocks = [layer.P if layer.P is not None else sp.csr_matrix((layer.c.shape[0], d)) for layer in ch.layers]
        p_blocks.append(ch.out_p if ch.out_p is not None else sp.csr_matrix((1, d)))
        self.Pstack = sp.vstack(p_blocks, format="csr")
        self.h_const = h_const
        self.depends = np.flatnonzero(np.diff(self.Pstack.indptr) > 0)  # rows whose rhs moves with x
        if self.depends.size == 0:
            self.depends = np.arange(self.n_chain_rows)
        self.lower = np.zeros(n_var)
        self.lower[:n_delta] = 0.0 if self.norm == 1 else -np.inf
        self.upper = np.full(n_var, np.inf)
        self.cost = np.zeros(n_var)
        if self.norm == 1:
            self.cost[:n_delta] = 1.0
        elif math.isinf(self.norm):
            self.cost[-1] = 1.0

    def rhs(self, x_flat: np.ndarray) -> np.ndarray:
        """Right-hand sides h(x) (N, rows) of G v ≤ h for flattened float64 inputs (N, d)."""
        f = self.chain.features(x_flat)
        h = self.h_const[None, :] - (self.Pstack @ f.T).T
        if self.G.shape[0] > self.n_chain_rows:
            h = np.hstack([h, np.zeros((x_flat.shape[0], self.G.shape[0] - self.n_chain_rows))])
        return h

    def _delta_bounds(self, x_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        lower, upper = self.lower.copy(), self.upper.copy()
        if self.input_range is not None:
            lo, hi = self.input_range
            d = self.chain.dim
            if self.norm == 1:
                upper[:d], upper[d:2 * d] = hi - x_flat, x_flat - lo
            else:
                lower[:d], upper[:d] = lo - x_flat, hi - x_flat
        return lower, upper

    # -- solvers ----------------------------------------------------------------------------
    def _solve_lp(self, h: np.ndarray, x_flat: np.ndarray, time_limit: float | None) -> tuple[str, np.ndarray | None]:
        import highspy

        if self._lp is None:
            with _quiet_stdout():
                lp_solver = highspy.Highs()
            lp_solver.setOptionValue("output_flag", False)
            Gc = self.G.tocsc()
            lp = highspy.HighsLp()
            lp.num_col_, lp.num_row_ = self.n_var, Gc.shape[0]
            lp.col_cost_ = self.cost
            lower, upper = self._delta_bounds(x_flat)
            lp.col_lower_, lp.col_upper_ = lower, upper
            lp.row_lower_ = np.full(Gc.shape[0], -highspy.kHighsInf)
            lp.row_upper_ = h
            lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
            lp.a_matrix_.start_ = Gc.indptr.astype(np.int32)
            lp.a_matrix_.index_ = Gc.indices.astype(np.int32)
            lp.a_matrix_.value_ = Gc.data
            lp_solver.passModel(lp)
            self._lp = lp_solver
        else:
            rows = self.depends
            self._lp.changeRowsBounds(rows.size, rows.astype(np.int32), np.full(rows.size, -highspy.kHighsInf),
                                      h[rows])
            if self.input_range is not None:
                lower, upper = self._delta_bounds(x_flat)
                cols = np.arange(self.n_delta, dtype=np.int32)
                self._lp.changeColsBounds(cols.size, cols, lower[:self.n_delta], upper[:self.n_delta])
        self._lp.setOptionValue("time_limit", float(time_limit) if time_limit else highspy.kHighsInf)
        self._lp.run()
        status = self._lp.getModelStatus()
        if status == highspy.HighsModelStatus.kOptimal:
            return "optimal", np.asarray(self._lp.getSolution().col_value)
        if status == highspy.HighsModelStatus.kInfeasible:
            return "infeasible", None
        # Anything else (time limit, numerical trouble): drop the basis so the next input starts clean.
        self._lp = None
        return self._lp_status_name(status), None

    @staticmethod
    def _lp_status_name(status: Any) -> str:
        return str(status).split(".")[-1].removeprefix("k").lower()

    def _solve_qp(self, h: np.ndarray, x_flat: np.ndarray, time_limit: float | None) -> tuple[str, np.ndarray | None]:
        try:
            import clarabel
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise UnsupportedModelError("exact ℓ2 radii need the `clarabel` package (pip install clarabel)") from exc
        d = self.chain.dim
        # Constraints: G v ≤ h, z ≥ 0 (−z ≤ 0), and the optional box on δ.
        n_z = self.n_var - self.n_delta
        rows = [self.G, sp.hstack([sp.csr_matrix((n_z, self.n_delta)), -sp.identity(n_z)])]
        b = [h, np.zeros(n_z)]
        if self.input_range is not None:
            lo, hi = self.input_range
            eye = sp.hstack([sp.identity(d), sp.csr_matrix((d, n_z))])
            rows += [eye, -eye]
            b += [hi - x_flat, x_flat - lo]
        A = sp.vstack(rows, format="csc")
        b_all = np.concatenate(b)
        P = sp.diags(np.concatenate([np.ones(d), np.zeros(n_z)]), format="csc")
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        settings.tol_gap_abs = settings.tol_gap_rel = 1e-10
        settings.tol_feas = 1e-10
        if time_limit:
            settings.time_limit = float(time_limit)
        solver = clarabel.DefaultSolver(P, np.zeros(self.n_var), A, b_all, [clarabel.NonnegativeConeT(A.shape[0])],
                                        settings)
        sol = solver.solve()
        status = str(sol.status)
        if status in ("Solved", "AlmostSolved"):
            return "optimal", np.asarray(sol.x)
        if "Infeasible" in status and "Dual" not in status:
            return "infeasible", None
        return status.lower(), None

    # -- public -----------------------------------------------------------------------------
    def solve(self, x: torch.Tensor, time_limit: float | None = None) -> tuple[torch.Tensor, torch.Tensor, list[str]]:
        """Exact radii of a batch.

        Args:
            x: (N, *input_shape) inputs in raw units.
            time_limit: seconds allowed per input (None: no limit); an input that runs out gets NaN.
        Returns:
            radii (N,) float64 in raw input units (0 where s(x) ≤ 0, inf where no input at all is
            non-sensitive, NaN where the solver failed or its answer did not pass the check),
            perturbations δ (N, *input_shape) float64 (zero where the radius is 0, inf or NaN), and
            a status string per input.
        """
        check_inputs(x, self.input_shape, None)
        n, d = x.shape[0], self.chain.dim
        x_flat = x.detach().cpu().double().reshape(n, d).numpy()
        with torch.no_grad():
            score = self.model64(torch.from_numpy(x_flat).reshape((n,) + self.input_shape)).numpy()
        chain_score = self.chain.score(x_flat)
        if n and not np.allclose(chain_score, score, rtol=1e-7, atol=1e-7 * (1 + np.abs(score).max())):
            raise UnsupportedModelError("internal error: the layer chain does not reproduce the model's scores "
                                        f"(max gap {np.abs(chain_score - score).max():.3g})")
        radii = np.zeros(n)
        deltas = np.zeros((n, d))
        status = ["not flagged"] * n
        h_all = self.rhs(x_flat)
        for i in np.flatnonzero(score > 0):  # one optimisation problem per flagged input
            solve = self._solve_qp if self.norm == 2 else self._solve_lp
            st, v = solve(h_all[i], x_flat[i], time_limit)
            status[i] = st
            if st == "infeasible":
                radii[i] = math.inf
                continue
            if v is None:
                radii[i] = math.nan
                continue
            delta = v[:d] - v[d:2 * d] if self.norm == 1 else v[:d]
            deltas[i] = delta
            radii[i] = float(np.abs(delta).sum() if self.norm == 1 else
                             np.abs(delta).max() if math.isinf(self.norm) else np.sqrt(delta @ delta))
        # Check every reported perturbation on the model itself, in float64.
        solved = np.array([s == "optimal" for s in status], dtype=bool)
        if solved.any():
            x_adv = x_flat[solved] + (1.0 + CHECK_SCALE) * deltas[solved]
            with torch.no_grad():
                s_adv = self.model64(torch.from_numpy(x_adv).reshape((-1,) + self.input_shape)).numpy()
            tol = CHECK_TOL * np.maximum(1.0, np.abs(score[solved]))
            bad = np.flatnonzero(solved)[s_adv > tol]
            for i in bad:
                status[i] = "check failed"
            if bad.size:
                warnings.warn(f"exact ℓ{self.norm:g} radius: the solver's perturbation did not reach the "
                              f"non-sensitive region for {bad.size} input(s) (rows {bad[:5].tolist()}); "
                              "their radius is NaN", RuntimeWarning, stacklevel=3)
                radii[bad] = math.nan
                deltas[bad] = 0.0
        failed = [i for i, s in enumerate(status) if s not in ("optimal", "not flagged", "infeasible", "check failed")]
        if failed:
            warnings.warn(f"exact ℓ{self.norm:g} radius: the solver stopped early ({status[failed[0]]}) for "
                          f"{len(failed)} input(s); their radius is NaN", RuntimeWarning, stacklevel=3)
        out_dev = x.device
        return (torch.from_numpy(radii).to(out_dev),
                torch.from_numpy(deltas).reshape((n,) + self.input_shape).to(out_dev), status)


def exact_radius(model: nn.Module, x: torch.Tensor, norm: float | str, return_perturbation: bool = False,
                 time_limit: float | None = None, respect_input_range: bool = False
                 ) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The exact ℓp distance from each input to the model's non-sensitive region {s ≤ 0}.

    This is the largest radius any sound certificate can give: ``certify(...).radius(p) ≤
    exact_radius(...)`` for every input. Computed over all of R^d (the model's ``input_range`` is
    ignored unless ``respect_input_range=True``).

    Args:
        model: a :class:`~asymcert.models.FeatureConvexClassifier` whose feature map is affine
            (identity / shift / standardize) and whose g is an ICNN or a ConvexConvNet; its
            eval-mode function is used.
        x: (N, *input_shape) inputs in raw units.
        norm: 1, 2 or ``math.inf`` (ℓ2 needs the ``clarabel`` package).
        return_perturbation: also return the minimal perturbations δ (N, *input_shape).
        time_limit: seconds allowed per input; an input that runs out gets NaN (with a warning).
        respect_input_range: also require x + δ ∈ ``model.input_range``.
    Returns:
        (N,) float64 radii in raw input units on ``x``'s device: 0 for inputs not flagged
        sensitive, ``inf`` when no input at all is non-sensitive, NaN (with a warning) where the
        solver failed or its perturbation did not reach {s ≤ 0} on the float64 model.
        With ``return_perturbation``: ``(radii, delta)``.
    Raises:
        UnsupportedModelError: the model is not of the form above (e.g. a ConcatAbs feature map).

    Example:
        >>> import torch, asymcert
        >>> from asymcert.models import build_model
        >>> m = build_model({"kind": "feature-convex", "input_shape": [3],
        ...     "feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [8]}}).eval()
        >>> exact_radius(m, torch.rand(4, 3), "inf").shape
        torch.Size([4])
    """
    solver = ExactRadiusSolver(model, norm, respect_input_range=respect_input_range)
    radii, delta, _ = solver.solve(x, time_limit=time_limit)
    return (radii, delta) if return_perturbation else radii
