"""Exact minimal adversarial distances of feature-convex classifiers (linear and quadratic programs).

For s(x) = g(φ(x)) + b with φ affine (φ(x) = a ⊙ x + c) and g an :class:`~asymcert.nn.convex.ICNN` or
a :class:`~asymcert.nn.convex.ConvexConvNet`, the non-sensitive region {x : s(x) ≤ 0} is convex and,
because every weight that multiplies a hidden state is nonnegative (and every batch-norm scale
positive), it is exactly the projection onto x of the polyhedron

* ICNN: z₁ ≥ U₀f + c₀, z_{k+1} ≥ W_k BN_k(z_k) + U_k f + c_k, z ≥ 0, W_L BN_L(z_L) + U_L f + c_L + b ≤ 0;
* ConvexConvNet: z₁ ≥ stem(f), z_{k+1} ≥ z_k + conv₊(BN_k(z_k)), z ≥ 0, readout(BN(z_last)) + b ≤ 0;

with f = φ(x): every ReLU is relaxed to its epigraph, and monotonicity makes the relaxation exact
(batch norms are folded as positive affine maps; convolutions become sparse matrices). The
smallest ‖δ‖_p that puts x + δ in that set is a linear program for ℓ1 and ℓ∞ (HiGHS) and a
convex quadratic program for ℓ2 (Clarabel); see :class:`ExactRadiusSolver` for how the LPs are
made fast (one matrix per model, Newton on the radius, crash bases, warm starts).

The distance is computed over all of R^d, like the certificates it is compared with: the model's
``input_range`` is ignored unless ``respect_input_range=True``. Every reported radius comes with a
perturbation that is checked on the float64 model itself before it is reported.

Under a threat model (:class:`~asymcert.threat.ResolvedThreatModel`) the variables are u = δ / unit with
unit = scale / c (:func:`solver_units`: threat-model units times one power of two c): the feature map's slope a
becomes a ⊙ unit, forbidden directions are variable bounds at 0 and the domain [lower, upper] is a
per-coordinate box on u, so the same LPs and QP give the smallest ‖u‖_p over the moves the threat model allows,
and its ‖δ / scale‖_p is the radius. (c keeps the solvers' numbers near the raw units': with scales of 10⁶ or
10⁻⁶ and u = δ / scale, the QP stopped at 1.45× the distance or called reachable flips unreachable, and the LPs'
moves failed their check; audit 30 F1.)
"""

from __future__ import annotations

import contextlib
import copy
import math
import os
import sys
import time
import warnings
from collections.abc import Iterator
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, cast

import numpy as np
import scipy.sparse as sp
import torch
from torch import nn

from asymcert.certify.bound_propagation import conv_padding
from asymcert.certify.bounded_convex import block_convs, block_norms
from asymcert.certify.inputs import check_inputs
from asymcert.certify.result import normalize_norm
from asymcert.errors import AsymcertError, ConfigError
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.nn.convex import ICNN, ConvexConvNet
from asymcert.threat import ResolvedThreatModel, ThreatModel

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.feature_convex import FeatureConvexClassifier

__all__ = [
    "ExactRadiusSolver",
    "ExactResult",
    "UnsupportedModelError",
    "conv_matrix",
    "exact_radius",
    "feature_chain",
    "resolve_threat",
]

# A reported perturbation δ must satisfy s(x + (1 + CHECK_SCALE)·δ) ≤ CHECK_TOL·|s(x)| on the float64 model:
# pushed 1e-6 beyond the boundary, it must land in (or within rounding of) {s ≤ 0}. Relative to the input's own
# score, so that a score multiplied by 1e-9 is checked as strictly (an absolute 1e-9 passed a zero move there:
# audit 33 F2).
CHECK_SCALE = 1e-6
CHECK_TOL = 1e-9


class UnsupportedModelError(AsymcertError, ValueError):
    """A model whose exact radius this module cannot compute (non-affine φ, unknown g, …)."""


def check_positive(what: str, name: str, value: object, optional: bool = False) -> None:
    """Refuse (ConfigError, one line naming ``what`` and ``name``) a ``value`` that is not a positive number:
    0, negative, NaN, a bool or not a number; None passes when ``optional``. Every exact solver checks its time
    limit (seconds, > 0; ∞ allowed) and tolerances with it."""
    if value is None and optional:
        return
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not value > 0:
        raise ConfigError(f"{what}: {name} must be a positive number, got {value!r}")


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
class LayerChain:
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
        z: np.ndarray | None = None
        for layer in self.layers:
            pre = np.broadcast_to(layer.c, (x.shape[0], layer.c.shape[0])).copy()
            if layer.M is not None:
                assert z is not None  # only the first layer has no M
                pre += (layer.M @ z.T).T
            if layer.P is not None:
                pre += (layer.P @ f.T).T
            z = np.maximum(pre, 0.0)
        assert z is not None  # a chain has at least one layer
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
    eval_affine = getattr(module, "eval_affine", None)
    if eval_affine is None or getattr(module, "running_mean", None) is None:
        raise UnsupportedModelError(f"exact radii need batch norms with running statistics, got {module!r}")
    scale, shift = (_np(t) for t in eval_affine())
    if not np.all(scale > 0) or not np.all(np.isfinite(shift)):
        raise UnsupportedModelError("a batch-norm scale is not positive: the model is not input-convex")
    return scale, shift


def conv_matrix(weight: np.ndarray, height: int, width: int, padding: int) -> sp.csr_matrix:
    """The stride-1, zero-padded 2-D convolution with ``weight`` (C_out, C_in, k, k) as a sparse matrix.

    Maps a flattened (C_in, H, W) tensor to a flattened (C_out, H_out, W_out) one (no bias).
    """
    c_out, c_in, kh, kw = weight.shape
    h_out, w_out = height + 2 * padding - kh + 1, width + 2 * padding - kw + 1
    co, ci, oy, ox = np.meshgrid(np.arange(c_out), np.arange(c_in), np.arange(h_out), np.arange(w_out), indexing="ij")
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
    return sp.csr_matrix(
        (np.concatenate(vals), (np.concatenate(rows), np.concatenate(cols))),
        shape=(c_out * h_out * w_out, c_in * height * width),
    )


def _affine_feature_map(
    model: FeatureConvexClassifier, d: int, shape: tuple[int, ...]
) -> tuple[np.ndarray, np.ndarray]:
    """(a, c) with φ(x) = a ⊙ x + c (flattened), verified on random inputs."""
    phi = model.feature_map
    if not (hasattr(phi, "affine") and phi.affine()):
        raise UnsupportedModelError(
            f"exact radii need an affine feature map (identity/shift/standardize); "
            f"{getattr(phi, 'config', lambda: type(phi).__name__)()} is not affine (through log1p, hinges and "
            f"pair-min: asymcert.certify.exact_linf / exact_lp, or `asymcert audit --exact-milp`)"
        )
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


def _checked(model: nn.Module) -> FeatureConvexClassifier:
    """``model`` as a validated feature-convex classifier (nonnegative hidden weights: the epigraph
    relaxation is exact only then), else UnsupportedModelError."""
    if not isinstance(model, FeatureConvexClassifier):
        raise UnsupportedModelError(
            f"exact radii exist only for feature-convex classifiers, got {type(model).__name__}"
        )
    model.validate()
    return model


def _chain_of(model: nn.Module) -> LayerChain:
    """The float64 layer chain of a FeatureConvexClassifier with an affine φ (weights read in eval mode)."""
    fc = _checked(model)
    shape = tuple(fc.input_shape)
    d = int(np.prod(shape))
    a, c_phi = _affine_feature_map(fc, d, shape)
    return _g_chain(fc, a, c_phi)


def feature_chain(model: nn.Module) -> LayerChain:
    """The float64 chain of g alone, in feature space: s = g(f) + b for features f (φ = identity there)."""
    fc = _checked(model)
    q = int(np.prod(fc.feature_map.out_shape(tuple(fc.input_shape))))
    return _g_chain(fc, np.ones(q), np.zeros(q))


def _g_chain(model: FeatureConvexClassifier, a: np.ndarray, c_phi: np.ndarray) -> LayerChain:
    """The chain of g (ICNN or ConvexConvNet, batch norms folded) after features f = a ⊙ x + c_phi."""
    g = model.convex
    balance = float(model.balance.double())
    layers: list[_Layer] = []
    if isinstance(g, ICNN):
        U = [(sp.csr_matrix(_np(lin.weight)), _np(lin.bias)) for lin in cast("list[nn.Linear]", list(g.passthrough))]
        layers.append(_Layer(None, U[0][0], U[0][1]))
        n_hidden = len(g.hidden)
        out_m = sp.csr_matrix(np.ones((1, 1)))
        out_p, out_c = None, balance
        for k in range(n_hidden):
            W = _np(cast(nn.Linear, g.hidden[k]).weight)
            scale, shift = _bn_affine(g.norms[k], W.shape[1])
            M = sp.csr_matrix(W * scale[None, :])
            c = W @ shift + U[k + 1][1]
            if k < n_hidden - 1:
                layers.append(_Layer(M, U[k + 1][0], c))
            else:
                out_m, out_p, out_c = M, U[k + 1][0], float(c[0]) + balance
    elif isinstance(g, ConvexConvNet):
        _, h, w = g.in_shape
        stem = g.stem
        if stem.stride != (1, 1) or stem.dilation != (1, 1) or stem.groups != 1:
            raise UnsupportedModelError("exact radii support stride-1, ungrouped convolutions only")
        pad = conv_padding(stem)
        K0 = conv_matrix(_np(stem.weight), h, w, pad[0])
        ho, wo = h + 2 * pad[0] - stem.kernel_size[0] + 1, w + 2 * pad[1] - stem.kernel_size[1] + 1
        hw = ho * wo
        bias0 = np.zeros(g.channels) if stem.bias is None else _np(stem.bias)
        layers.append(_Layer(None, K0, np.repeat(bias0, hw)))
        eye = sp.identity(g.channels * hw, format="csr")
        for norm, conv in zip(block_norms(g), block_convs(g)):
            scale, shift = _bn_affine(norm, g.channels)
            K = conv_matrix(_np(conv.weight), ho, wo, conv_padding(conv)[0])
            s_full, t_full = np.repeat(scale, hw), np.repeat(shift, hw)
            bias = np.zeros(g.channels) if conv.bias is None else _np(conv.bias)
            layers.append(_Layer((eye + K @ sp.diags(s_full)).tocsr(), None, K @ t_full + np.repeat(bias, hw)))
        scale, shift = _bn_affine(g.out_norm, g.channels)
        wr = _np(g.readout.weight)[0]
        out_m = sp.csr_matrix((wr * np.repeat(scale, hw))[None, :])
        readout_bias = _np(g.readout.bias)[0] if g.readout.bias is not None else 0.0
        out_c = float(wr @ np.repeat(shift, hw) + readout_bias) + balance
        out_p = None
    else:
        raise UnsupportedModelError(f"exact radii support ICNN and ConvexConvNet, got {type(g).__name__}")
    return LayerChain(a, c_phi, layers, out_m, out_p, out_c)


# ---------------------------------------------------------------------------------------------
# Solvers
# ---------------------------------------------------------------------------------------------


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """Silence C-level stdout (HiGHS prints a banner when its first instance is created, and scipy's HiGHS
    a debug line when a mixed-integer program's presolve maps back a new solution). Python's own buffered
    output is flushed first, so none of it is lost."""
    if sys.stdout is not None:
        sys.stdout.flush()
    try:
        saved = os.dup(1)
    except OSError:  # pragma: no cover - no stdout at all
        yield
        return
    try:
        with open(os.devnull, "w") as null:
            os.dup2(null.fileno(), 1)
            try:
                yield
            finally:
                os.dup2(saved, 1)
    finally:
        os.close(saved)


def _import_highspy() -> Any:
    try:
        import highspy
    except ImportError as exc:  # pragma: no cover - depends on the environment
        raise ImportError("exact ℓ1/ℓ∞ radii need the `highspy` package (pip install highspy)") from exc
    return highspy


def resolve_threat(threat_model: ThreatModel | ResolvedThreatModel | None, d: int) -> ResolvedThreatModel | None:
    """``threat_model`` resolved for d flattened features (a ThreatModel may name features by index only).

    Raises:
        ConfigError: a resolved threat model for another d, an unknown feature, or not a threat model.
    """
    if threat_model is None or isinstance(threat_model, ResolvedThreatModel):
        if threat_model is not None and threat_model.n_features != d:
            raise ConfigError(f"threat model is for {threat_model.n_features} features, the model has {d}")
        return threat_model
    if isinstance(threat_model, ThreatModel):
        return threat_model.resolve(None, d)
    raise ConfigError(f"threat_model must be a ThreatModel or ResolvedThreatModel, got {type(threat_model).__name__}")


def solver_factor(scale: np.ndarray) -> float:
    """c: the power of two nearest to the geometric mean of the threat model's scales (d,) (1 for none)."""
    return math.ldexp(1.0, round(float(np.mean(np.log2(scale))))) if scale.size else 1.0


def solver_units(scale: np.ndarray) -> np.ndarray:
    """(d,) raw units per unit of the solvers' variable u: ``scale`` (d,) / :func:`solver_factor`. One factor for
    every coordinate, so the minimiser of ‖u‖_p is the minimiser of ‖δ / scale‖_p = ‖u‖_p / c; a power of two,
    so the division is exact. It keeps the solvers' numbers near the raw units' whatever the scales' units."""
    return scale / solver_factor(scale)


def _domain(
    tm: ResolvedThreatModel | None, input_range: tuple[float, float] | None, d: int
) -> tuple[np.ndarray, np.ndarray]:
    """(lower, upper) (d,) float64 raw bounds on x + δ: the threat model's domain ∩ the respected input range."""
    lo, hi = (np.full(d, -np.inf), np.full(d, np.inf)) if tm is None else (_np(tm.lower), _np(tm.upper))
    if input_range is not None:
        lo, hi = np.maximum(lo, input_range[0]), np.minimum(hi, input_range[1])
    return lo, hi


def nudge_into_domain(x: np.ndarray, delta: np.ndarray, lo: np.ndarray, hi: np.ndarray) -> np.ndarray:
    """δ moved towards 0 by a few ulps where x + δ, computed in float64, would leave the domain [lo, hi]
    that x is in (solver tolerances and rounding), so that what is checked is exactly x + δ.

    Args:
        x: (..., d) raw inputs; delta: same shape, raw perturbations; lo, hi: (d,) domain bounds.
    Returns:
        The nudged δ, same shape (unchanged where x + δ stays in the domain or x is outside it).
    """
    for _ in range(8):
        y = x + delta
        over, under = (y > hi) & (x <= hi), (y < lo) & (x >= lo)
        if not (over.any() or under.any()):
            break
        step = np.maximum(np.spacing(np.abs(y)), np.spacing(np.abs(delta)))
        delta = np.where(over, np.maximum(delta - step, 0.0), delta)
        delta = np.where(under, np.minimum(delta + step, 0.0), delta)
    return delta


@dataclass
class ExactResult:
    """Exact radii of a batch (see :meth:`ExactRadiusSolver.solve`).

    Attributes:
        radii: (N,) float64 exact ℓp distance to {s ≤ 0} in raw input units, or in threat-model
            units ‖δ / scale‖_p under a threat model (0: not flagged; inf: no (allowed) move reaches a
            non-sensitive input; NaN: solver failure or failed check).
        delta: (N, *input_shape) float64 minimal perturbations δ in raw input units (0 where the
            radius is 0, inf or NaN); under a threat model x + δ is an allowed move.
        status: one string per input: "optimal", "not flagged", "unreachable", "time limit",
            "check failed" or a solver status.
        seconds: (N,) wall-clock seconds spent per input.
    """

    radii: torch.Tensor
    delta: torch.Tensor
    status: list[str]
    seconds: np.ndarray


class ExactRadiusSolver:
    """Exact ℓp distance from inputs to the non-sensitive region of one model, for one norm.

    ℓ1 and ℓ∞ use v(t) = min {s(x + δ) : ‖δ‖_p ≤ t}, a linear program in (δ, z) whose constraint
    matrix is built once. v is convex, decreasing and piecewise linear in t, so Newton's method
    from the certified lower bound t₀ = s(x)/‖∇s(x)‖_{p*} (where v ≥ 0) climbs monotonically to
    the root t* = exact radius, with dv/dt read off the LP duals; it ends after a few steps. Each
    input's first LP starts from a crash basis (the ReLU pattern at the linearised minimiser,
    primal feasible and nonsingular by construction); later steps warm-start HiGHS's dual simplex.
    ℓ2 solves min ½‖δ‖² over the same polyhedron with Clarabel. Under a threat model the variable is
    u = δ / scale with per-coordinate bounds (see the module docstring); the rest is unchanged.

    Args:
        model: a :class:`~asymcert.models.FeatureConvexClassifier` with an affine feature map and an
            ICNN or ConvexConvNet g. Its eval-mode function is used (batch norms folded).
        norm: 1, 2 or ``math.inf`` (``"inf"`` accepted).
        respect_input_range: constrain x + δ to ``model.input_range`` (default: no, the distance is
            over all of R^d, which is what certificates bound).
        threat_model: None (every move, sized ‖δ‖_p in raw units), or a
            :class:`~asymcert.threat.ResolvedThreatModel` for d = prod(input_shape) features (a
            :class:`~asymcert.threat.ThreatModel` naming features by index is resolved here). Then only
            the moves it allows count (immutable features fixed, one-sided ones moving one way, x + δ
            in its domain [lower, upper], also intersected with ``input_range`` when that is
            respected) and radii are ‖δ / scale‖_p, in threat-model units; perturbations stay raw δ.
    Raises:
        UnsupportedModelError: the model is not of that form (or its norm is not 1, 2, ∞).
        ConfigError: a threat model for another number of features, or one naming features by header.
    """

    max_newton_steps = 100

    def __init__(
        self,
        model: nn.Module,
        norm: float | str,
        respect_input_range: bool = False,
        threat_model: ThreatModel | ResolvedThreatModel | None = None,
    ) -> None:
        self.norm = normalize_norm(norm)
        if self.norm not in (1.0, 2.0, math.inf):
            raise UnsupportedModelError(f"exact radii exist for ℓ1, ℓ2 and ℓ∞ only, not ℓ{self.norm:g}")
        if respect_input_range and getattr(model, "input_range", None) is None:
            raise UnsupportedModelError("respect_input_range=True but the model declares no input_range")
        self.model64 = copy.deepcopy(model).double().eval()
        self.chain = _chain_of(self.model64)
        fc = cast("FeatureConvexClassifier", model)  # _chain_of refused every other model
        self.input_shape = tuple(fc.input_shape)
        self.input_range = fc.input_range if respect_input_range else None
        self.threat_model = resolve_threat(threat_model, self.chain.dim)
        # (d,) the threat model's scales (ones without one): radii are ‖δ / scale‖_p
        self.scale = np.ones(self.chain.dim) if self.threat_model is None else _np(self.threat_model.scale)
        # (d,) raw units per unit of the LP/QP variable u = δ / unit (see solver_units)
        self.unit = solver_units(self.scale)
        self._boxed = self.input_range is not None or self.threat_model is not None
        self._domain = _domain(self.threat_model, self.input_range, self.chain.dim)
        self._highs: Any = None
        self._build()

    # -- assembly ---------------------------------------------------------------------------
    def _build(self) -> None:
        """Constraint rows (one per hidden unit, plus the ℓ1 budget row) and the objective s."""
        ch, d = self.chain, self.chain.dim
        widths = [layer.c.shape[0] for layer in ch.layers]
        n_z = int(sum(widths))
        A = sp.diags(ch.a * self.unit)  # f(x + unit ⊙ u) = f(x) + (a ⊙ unit) ⊙ u
        nd = 2 * d if self.norm == 1 else d
        self.nd, self.n_z = nd, n_z

        def delta_block(P: sp.csr_matrix | None, rows: int) -> sp.spmatrix:
            if P is None:
                return sp.csr_matrix((rows, nd))
            PA = P @ A
            return sp.hstack([PA, -PA]) if self.norm == 1 else PA

        L = len(ch.layers)
        blocks: list[list[Any]] = []
        for k, layer in enumerate(ch.layers):
            row: list[Any] = [delta_block(layer.P, widths[k])] + [None] * L
            row[1 + k] = -sp.identity(widths[k])
            if layer.M is not None:
                row[k] = layer.M
            blocks.append(row)
        # rows: −z_k + M_k z_{k−1} + P_k A δ ≤ −c_k − P_k f(x);   objective s = cost·(δ, z) + const(x).
        self.G = sp.bmat(blocks, format="csr")
        self.cost = np.zeros(nd + n_z)
        self.cost[nd + n_z - widths[-1] :] = ch.out_m.toarray()[0]
        if ch.out_p is not None:
            self.cost[:nd] = delta_block(ch.out_p, 1).toarray()[0]
        self.cost_scale = float(np.max(np.abs(self.cost), initial=0.0)) or 1.0  # the objective's unit (m)
        self.h_const = np.concatenate([-layer.c for layer in ch.layers])
        self.Pstack = sp.vstack(
            [layer.P if layer.P is not None else sp.csr_matrix((layer.c.shape[0], d)) for layer in ch.layers],
            format="csr",
        )
        self.depends = np.flatnonzero(np.diff(self.Pstack.indptr) > 0).astype(np.int32)
        self.n_var = nd + n_z
        self.n_row = n_z + (1 if self.norm == 1 else 0)
        if self.norm == 1:
            budget = sp.hstack([sp.csr_matrix(np.ones((1, nd))), sp.csr_matrix((1, n_z))])
            self.G = sp.vstack([self.G, budget], format="csr")

    def _features_const(self, x_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """Right-hand sides (N, n_z) of the hidden-unit rows and objective constants (N,)."""
        ch = self.chain
        f = ch.features(x_flat)
        h = self.h_const[None, :] - (self.Pstack @ f.T).T
        const = np.full(x_flat.shape[0], ch.out_c)
        if ch.out_p is not None:
            const = const + (ch.out_p @ f.T).T[:, 0]
        return h, const

    def _pattern(self, x_flat: np.ndarray) -> np.ndarray:
        """(n_z,) bool: which hidden units are active (pre-activation > 0) at one input."""
        f = self.chain.features(x_flat[None])[0]
        z, active = None, []
        for layer in self.chain.layers:
            pre = layer.c.copy()
            if layer.M is not None:
                pre += layer.M @ z
            if layer.P is not None:
                pre += layer.P @ f
            active.append(pre > 0)
            z = np.maximum(pre, 0.0)
        return np.concatenate(active)

    # -- ℓ1 / ℓ∞: Newton on v(t) ---------------------------------------------------------------
    def _highs_instance(self) -> Any:
        highspy = _import_highspy()

        if self._highs is None:
            with _quiet_stdout():
                h = highspy.Highs()
            h.setOptionValue("output_flag", False)
            h.setOptionValue("presolve", "off")
            h.setOptionValue("simplex_strategy", 1)  # dual simplex: bounds/rhs change between solves
            h.setOptionValue("threads", 1)
            Gc = self.G.tocsc()
            lp = highspy.HighsLp()
            lp.num_col_, lp.num_row_ = self.n_var, self.n_row
            lp.col_cost_ = self.cost
            lower, upper = np.zeros(self.n_var), np.full(self.n_var, highspy.kHighsInf)
            lp.col_lower_, lp.col_upper_ = lower, upper
            lp.row_lower_ = np.full(self.n_row, -highspy.kHighsInf)
            lp.row_upper_ = np.concatenate([self.h_const, [0.0] * (self.n_row - self.n_z)])
            lp.a_matrix_.format_ = highspy.MatrixFormat.kColwise
            lp.a_matrix_.start_ = Gc.indptr.astype(np.int32)
            lp.a_matrix_.index_ = Gc.indices.astype(np.int32)
            lp.a_matrix_.value_ = Gc.data
            h.passModel(lp)
            self._highs = h
        return self._highs

    def _boxes(self, x_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(low, high) (N, d) float64 bounds on u = δ / unit at each input (flattened, raw units).

        ±inf where unbounded; 0 on the forbidden side of a threat model's direction constraints and
        where the domain (or the respected ``input_range``) leaves no room. low ≤ 0 ≤ high.
        """
        n, d = x_flat.shape
        low, high = np.full((n, d), -np.inf), np.full((n, d), np.inf)
        tm, scale = self.threat_model, self.unit
        if tm is not None:
            low = np.where(_np(tm.can_decrease)[None] > 0, np.minimum((_np(tm.lower) - x_flat) / scale, 0.0), 0.0)
            high = np.where(_np(tm.can_increase)[None] > 0, np.maximum((_np(tm.upper) - x_flat) / scale, 0.0), 0.0)
        if self.input_range is not None:
            lo, hi = self.input_range
            low = np.maximum(low, np.minimum((lo - x_flat) / scale, 0.0))
            high = np.minimum(high, np.maximum((hi - x_flat) / scale, 0.0))
        return low, high

    def _delta_bounds(self, t: float, box: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        """Column bounds of the u block at radius t (ℓ∞: [−t, t]; ℓ1: u± ≥ 0), limited by the box (low, high)."""
        low, high = box
        if self.norm == 1:
            return np.zeros(2 * self.chain.dim), np.concatenate([high, 0.0 - low])
        return np.maximum(-t, low), np.minimum(t, high)

    def _set_radius(self, h: Any, t: float, box: tuple[np.ndarray, np.ndarray]) -> tuple[np.ndarray, np.ndarray]:
        lower, upper = self._delta_bounds(t, box)
        if self.norm == 1:
            h.changeRowBounds(self.n_row - 1, -np.inf, t)
        else:
            cols = np.arange(self.nd, dtype=np.int32)
            h.changeColsBounds(self.nd, cols, lower, upper)
        return lower, upper

    def _crash_basis(self, t: float, xf: np.ndarray, grad: np.ndarray, lower: np.ndarray, upper: np.ndarray) -> Any:
        """A primal-feasible, nonsingular basis: δ at the linearised minimiser, hidden units by their ReLU state.

        Rows are ordered by layer and each unit's row is covered either by its own z (active: row
        tight) or its own slack (inactive: z = 0), so the basis matrix is block lower triangular
        with a ±1 diagonal.
        """
        highspy = _import_highspy()
        B = highspy.HighsBasisStatus
        d = self.chain.dim
        LOWER, BASIC, UPPER = 0, 1, 2
        col = np.full(self.n_var, LOWER, dtype=np.int64)
        delta = np.zeros(d)
        extra_row_basic = False
        if self.norm == 1:
            # all of the budget on the coordinate with the steepest descent (that still has room)
            room = np.where(grad > 0, upper[d:], upper[:d])
            score = np.where(room > 0, np.abs(grad), -1.0)
            j = int(np.argmax(score))
            step = min(t, float(room[j]))
            sign = -1.0 if grad[j] > 0 else 1.0
            delta[j] = sign * step
            idx = j if sign > 0 else d + j
            if step < t:  # the coordinate hits its box bound first: budget row stays slack
                col[idx] = UPPER
                extra_row_basic = True
            else:
                col[idx] = BASIC
        else:
            at_upper = grad < 0  # move against the gradient
            delta = np.where(at_upper, upper, lower)
            col[:d] = np.where(at_upper, UPPER, LOWER)
        active = self._pattern(xf + self.unit * delta)  # delta is in u units
        col[self.nd :][active] = BASIC
        row = np.where(active, UPPER, BASIC)
        if self.norm == 1:
            row = np.append(row, BASIC if extra_row_basic else UPPER)
        basis = highspy.HighsBasis()
        lookup = (B.kLower, B.kBasic, B.kUpper)
        basis.col_status = [lookup[v] for v in col.tolist()]
        basis.row_status = [lookup[v] for v in row.tolist()]
        basis.valid = True
        return basis

    def _slope(self, sol: Any, t: float, lower: np.ndarray, upper: np.ndarray) -> float:
        """|dv/dt| ≥ 0 from the duals: the budget row's dual (ℓ1) or the δ reduced costs at ±t (ℓ∞)."""
        if self.norm == 1:
            return abs(float(sol.row_dual[self.n_row - 1]))
        rc = np.asarray(sol.col_dual)[: self.nd]
        at_t = np.where(rc < 0, upper >= t, lower <= -t)  # the active bound is the radius, not the box
        return float(np.abs(rc[at_t]).sum())

    def _solve_lp(
        self,
        xf: np.ndarray,
        h_rows: np.ndarray,
        const: float,
        s0: float,
        grad: np.ndarray,
        t0: float,
        time_limit: float | None,
        box: tuple[np.ndarray, np.ndarray],
    ) -> tuple[str, np.ndarray | None]:
        """Newton on v(t) for one input; ``grad`` (d,) is ∇_u s, ``box`` the (low, high) bounds on u."""
        highspy = _import_highspy()

        h = self._highs_instance()
        h.changeRowsBounds(
            self.depends.size, self.depends, np.full(self.depends.size, -highspy.kHighsInf), h_rows[self.depends]
        )
        if self.norm == 1 and self._boxed:
            lower, upper = self._delta_bounds(t0, box)
            h.changeColsBounds(self.nd, np.arange(self.nd, dtype=np.int32), lower, upper)
        # the objective in units of its largest weight m, so that HiGHS's absolute tolerances and tol_v do not
        # depend on the score's scale (a score multiplied by 1e-9 changed radii by 0.5%: audit 33 F2)
        m = self.cost_scale
        h.changeColsCost(self.n_var, np.arange(self.n_var, dtype=np.int32), self.cost / m)
        const, tol_v = const / m, 1e-9 * max(1.0, abs(s0) / m)
        start = time.perf_counter()
        t, sol = t0, None
        for step in range(self.max_newton_steps):
            lower, upper = self._set_radius(h, t, box)
            if step == 0:
                h.setBasis(self._crash_basis(t, xf, grad, lower, upper))
            if time_limit is not None:
                left = time_limit - (time.perf_counter() - start)
                if left <= 0:
                    return "time limit", None
                h.setOptionValue("time_limit", float(left))
            h.run()
            status = h.getModelStatus()
            if status != highspy.HighsModelStatus.kOptimal:
                self._highs = None  # start the next input from a fresh instance
                name = (
                    "time limit"
                    if status == highspy.HighsModelStatus.kTimeLimit
                    else str(status).split(".")[-1].removeprefix("k").lower()
                )
                return name, None
            sol = h.getSolution()
            v = float(h.getInfo().objective_function_value) + const
            if abs(v) <= tol_v:
                return "optimal", np.asarray(sol.col_value)
            slope = self._slope(sol, t, lower, upper)
            if v > 0 and slope <= 1e-300:
                return "unreachable", None  # v(t') ≥ v(t) > 0 for every t' ≥ t: s never drops to 0
            t_next = t + v / slope
            if not math.isfinite(t_next) or t_next == t:
                return ("optimal" if v <= 1e3 * tol_v else "stalled"), np.asarray(sol.col_value)
            t = t_next
        return "no convergence", None

    # -- ℓ2: quadratic program -------------------------------------------------------------------
    def _qp_box_rows(
        self, xf: np.ndarray, box: tuple[np.ndarray, np.ndarray]
    ) -> tuple[list[sp.spmatrix], list[np.ndarray], sp.spmatrix, np.ndarray]:
        """The box on u as QP rows: (inequality rows, their right-hand sides, equality rows, theirs).

        Finite bounds become rows u_i ≤ high_i, −u_i ≤ −low_i; coordinates with low = high (fixed by
        a threat model) become equalities. Without a threat model the respected ``input_range`` is
        x + δ ∈ [lo, hi], as it always was for ℓ2 (not clamped at x).
        """
        d, n_z = self.chain.dim, self.n_z
        low, high = box
        if self.threat_model is None and self.input_range is not None:
            lo, hi = self.input_range
            low, high = lo - xf, hi - xf
        fixed = low == high
        up, down = np.isfinite(high) & ~fixed, np.isfinite(low) & ~fixed
        eye = sp.hstack([sp.identity(d, format="csr"), sp.csr_matrix((d, n_z))], format="csr")
        return [eye[up], -eye[down]], [high[up], -low[down]], eye[fixed], low[fixed]

    def _solve_qp(
        self,
        xf: np.ndarray,
        h_rows: np.ndarray,
        const: float,
        time_limit: float | None,
        box: tuple[np.ndarray, np.ndarray],
    ) -> tuple[str, np.ndarray | None]:
        """min ½‖u‖² over the polyhedron and the box (low, high) on u, for one input (the row s ≤ 0 is divided by
        the objective's largest weight, so that Clarabel's absolute tolerances do not depend on the score's scale:
        a score multiplied by 1e-12 gave radius 0, audit 33 F2; by s0 instead, scores near 1e-6 stalled it)."""
        try:
            import clarabel
        except ImportError as exc:  # pragma: no cover - depends on the environment
            raise ImportError("exact ℓ2 radii need the `clarabel` package (pip install clarabel)") from exc
        d, n_z = self.chain.dim, self.n_z
        # equalities (fixed coordinates), then G v ≤ h, objective row out·v + const ≤ 0, z ≥ 0, the box on u.
        m = self.cost_scale
        rows = [self.G, sp.csr_matrix(self.cost[None, :] / m), sp.hstack([sp.csr_matrix((n_z, d)), -sp.identity(n_z)])]
        b = [h_rows, np.array([-const / m]), np.zeros(n_z)]
        box_rows, box_b, eq_rows, eq_b = self._qp_box_rows(xf, box)
        rows, b = [eq_rows, *rows, *box_rows], [eq_b, *b, *box_b]
        n_eq = eq_rows.shape[0]
        A = sp.vstack(rows, format="csc")
        P = sp.diags(np.concatenate([np.ones(d), np.zeros(n_z)]), format="csc")
        settings = clarabel.DefaultSettings()
        settings.verbose = False
        settings.tol_gap_abs = settings.tol_gap_rel = 1e-10
        settings.tol_feas = 1e-10
        if self.n_var > 3000:  # conv nets: supernodal, multithreaded factorisation (4× faster than QDLDL here)
            settings.direct_solve_method = "faer"
        if time_limit is not None:
            settings.time_limit = float(time_limit)
        cones = [clarabel.ZeroConeT(n_eq)] if n_eq else []
        cones.append(clarabel.NonnegativeConeT(A.shape[0] - n_eq))
        solver = clarabel.DefaultSolver(P, np.zeros(self.n_var), A, np.concatenate(b), cones, settings)
        sol = solver.solve()
        status = str(sol.status)
        if status in ("Solved", "AlmostSolved"):  # (its point is then moved to the boundary and checked: _shrink)
            return "optimal", np.asarray(sol.x)
        if status == "PrimalInfeasible":
            return "unreachable", None
        # ("AlmostPrimalInfeasible", at reduced accuracy, is no proof that no flip exists: it said so for flips that
        # exist where the scales were 10⁻⁶, before solver_units; audit 30 F1)
        return ("time limit" if "Time" in status else status.lower()), None

    # -- per-batch helpers ------------------------------------------------------------------------
    def _score_and_gradient(self, x_flat: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(s(x) (N,), ∇_u s (N, d) = unit ⊙ ∇_x s) on the float64 model, checked against the layer chain."""
        n = x_flat.shape[0]
        x64 = torch.from_numpy(x_flat).reshape((n,) + self.input_shape).requires_grad_(True)
        with torch.enable_grad():
            score_t = self.model64(x64)
            (grad_t,) = torch.autograd.grad(score_t.sum(), x64) if n else (torch.zeros_like(x64),)
        score, grad = score_t.detach().numpy(), grad_t.reshape(n, self.chain.dim).numpy()
        chain_score = self.chain.score(x_flat)
        if n and not np.allclose(chain_score, score, rtol=1e-7, atol=1e-7 * (1 + np.abs(score).max())):
            raise UnsupportedModelError(
                "internal error: the layer chain does not reproduce the model's scores "
                f"(max gap {np.abs(chain_score - score).max():.3g})"
            )
        return score, grad * self.unit

    def _starts(
        self, score: np.ndarray, grad_u: np.ndarray, low: np.ndarray, high: np.ndarray
    ) -> tuple[np.ndarray, np.ndarray]:
        """(gnorm, t0) (N,): the dual norm of ∇_u s over the coordinates that may move (0: unreachable)
        and Newton's start, a radius below the exact one (s(x) over the dual norm of the largest
        first-order decrease per unit of u in an allowed direction; s is convex)."""
        dual = 1.0 if self.norm == math.inf else (math.inf if self.norm == 1 else 2.0)
        if not score.shape[0]:
            return np.zeros(0), np.zeros(0)
        with np.errstate(divide="ignore", invalid="ignore"):
            if self.threat_model is None:
                gnorm = np.linalg.norm(grad_u, ord=dual, axis=1)
                return gnorm, score / gnorm
            restricted = np.where((low < 0) | (high > 0), grad_u, 0.0)
            harm = np.maximum(
                np.where(high > 0, np.maximum(-grad_u, 0.0), 0.0), np.where(low < 0, np.maximum(grad_u, 0.0), 0.0)
            )
            gnorm, hnorm = (np.linalg.norm(g, ord=dual, axis=1) for g in (restricted, harm))
            return gnorm, score / np.where(hnorm > 0, hnorm, gnorm)

    def _raw_move(self, xf: np.ndarray, u: np.ndarray, box: tuple[np.ndarray, np.ndarray]) -> np.ndarray:
        """The raw perturbation δ = unit ⊙ u of a solver's u (d,). Under a threat model u is first
        clipped to its box (solver tolerances) and δ nudged by a few ulps so that x + δ, computed in
        float64, stays in the domain wherever x is in it."""
        if self.threat_model is None:
            return u
        return nudge_into_domain(xf, np.clip(u, box[0], box[1]) * self.unit, *self._domain)

    # -- public -----------------------------------------------------------------------------------
    def solve(self, x: torch.Tensor, time_limit: float | None = None) -> ExactResult:
        """Exact radii of a batch.

        Args:
            x: (N, *input_shape) inputs in raw units.
            time_limit: seconds allowed per input (None: no limit); an input that runs out gets NaN.
        Returns:
            An :class:`ExactResult`. Every finite positive radius comes with a perturbation δ for
            which the float64 model gives s(x + (1 + 1e-6)·δ) ≤ 1e-9·|s(x)|.
        """
        check_inputs(x, self.input_shape, None)
        check_positive("exact radii", "time_limit", time_limit, optional=True)
        n, d = x.shape[0], self.chain.dim
        x_flat = x.detach().cpu().double().reshape(n, d).numpy()
        score, grad_u = self._score_and_gradient(x_flat)
        h_rows, const = self._features_const(x_flat)
        low, high = self._boxes(x_flat)
        gnorm, t0 = self._starts(score, grad_u, low, high)
        radii, deltas = np.zeros(n), np.zeros((n, d))
        status = ["not flagged"] * n
        seconds = np.zeros(n)
        for i in np.flatnonzero(score > 0):  # one optimisation problem per flagged input
            t_start = time.perf_counter()
            box = (low[i], high[i])
            if gnorm[i] == 0:  # s is convex and flat along every allowed move: it stays > 0
                status[i], v = "unreachable", None
            elif self.norm == 2:
                status[i], v = self._solve_qp(x_flat[i], h_rows[i], float(const[i]), time_limit, box)
            else:
                status[i], v = self._solve_lp(
                    x_flat[i], h_rows[i], float(const[i]), float(score[i]), grad_u[i], float(t0[i]), time_limit, box
                )
            seconds[i] = time.perf_counter() - t_start
            if status[i] == "unreachable":
                radii[i] = math.inf
            elif v is None:
                radii[i] = math.nan
            else:
                deltas[i] = self._raw_move(x_flat[i], v[:d] - v[d : 2 * d] if self.norm == 1 else v[:d], box)
                radii[i] = float(np.linalg.norm(deltas[i] / self.scale, ord=self.norm))
        self._shrink(x_flat, deltas, radii, status)
        self._check(x_flat, score, deltas, radii, status)
        failed = [i for i, s in enumerate(status) if s not in ("optimal", "not flagged", "unreachable", "check failed")]
        if failed:
            warnings.warn(
                f"exact ℓ{self.norm:g} radius: the solver stopped early ({status[failed[0]]}) for "
                f"{len(failed)} input(s) (rows {failed[:5]}); their radius is NaN",
                RuntimeWarning,
                stacklevel=2,
            )
        dev = x.device
        return ExactResult(
            torch.from_numpy(radii).to(dev),
            torch.from_numpy(deltas).reshape((n,) + self.input_shape).to(dev),
            status,
            seconds,
        )

    def _along(self, x: np.ndarray, d: np.ndarray, t: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(raw points x + t·δ (k, d), their float64 scores (k,)) for inputs x, moves d (k, d) and multiples t (k,);
        clipped to the domain in the coordinates where x is in it (t > 1 may cross its bounds), which keeps each of
        them between x and x + t·δ."""
        lo, hi = self._domain
        y = x + t[:, None] * d
        y = np.where((x >= lo) & (x <= hi), np.clip(y, lo, hi), y)
        with torch.no_grad():
            return y, self.model64(torch.from_numpy(y).reshape((-1,) + self.input_shape)).numpy()

    def _shrink(self, x_flat: np.ndarray, deltas: np.ndarray, radii: np.ndarray, status: list[str]) -> None:
        """Move every solved δ (N, d) along itself to where the float64 model first gives s ≤ 0.

        An interior-point solution (ℓ2) can stop a little inside {s ≤ 0} (up to 4e-7 relative measured),
        which would overstate the radius, or a little outside it (its absolute tolerances, at scores near 1e-6).
        A move that does not reach s ≤ 0 is first grown (1 + 10⁻⁶·4^k)-fold, k < 10, until it does (else it is left
        to :meth:`_check`); then s is convex along the segment from x (s > 0) to x + t_hi·δ: bisection keeps
        s(x + t_hi·δ) ≤ 0 and stops within 2⁻⁵⁰ of the crossing; δ becomes t_hi·δ and its radius is recomputed.
        Under a threat model the points stay in the domain box, which holds x.
        """
        idx = np.flatnonzero([s == "optimal" for s in status])
        if not idx.size:
            return
        x, d = x_flat[idx], deltas[idx]
        hi = np.ones(idx.size)
        reached = self._along(x, d, hi)[1] <= 0
        for k in range(10):
            if reached.all():
                break
            grown = np.where(reached, hi, 1.0 + 1e-6 * 4.0**k)
            hi, reached = grown, reached | (self._along(x, d, grown)[1] <= 0)
        lo = np.zeros(idx.size)
        for _ in range(50):
            mid = (lo + hi) / 2
            below = self._along(x, d, mid)[1] <= 0
            lo, hi = np.where(below, lo, mid), np.where(below, mid, hi)
        keep = idx[reached]
        deltas[keep] = self._along(x[reached], d[reached], hi[reached])[0] - x[reached]
        radii[keep] = np.linalg.norm(deltas[keep] / self.scale, ord=self.norm, axis=1)

    def _check(
        self, x_flat: np.ndarray, score: np.ndarray, deltas: np.ndarray, radii: np.ndarray, status: list[str]
    ) -> None:
        """Mark NaN every radius whose perturbation does not reach {s ≤ 0} on the float64 model."""
        solved = np.array([s == "optimal" for s in status], dtype=bool)
        if not solved.any():
            return
        x_adv = x_flat[solved] + (1.0 + CHECK_SCALE) * deltas[solved]
        with torch.no_grad():
            s_adv = self.model64(torch.from_numpy(x_adv).reshape((-1,) + self.input_shape)).numpy()
        bad = np.flatnonzero(solved)[s_adv > CHECK_TOL * np.abs(score[solved])]
        for i in bad:
            status[i] = "check failed"
        if bad.size:
            warnings.warn(
                f"exact ℓ{self.norm:g} radius: the solver's perturbation did not reach the "
                f"non-sensitive region for {bad.size} input(s) (rows {bad[:5].tolist()}); "
                "their radius is NaN",
                RuntimeWarning,
                stacklevel=3,
            )
            radii[bad] = math.nan
            deltas[bad] = 0.0


def exact_radius(
    model: nn.Module,
    x: torch.Tensor,
    norm: float | str,
    return_perturbation: bool = False,
    time_limit: float | None = None,
    respect_input_range: bool = False,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
) -> torch.Tensor | tuple[torch.Tensor, torch.Tensor]:
    """The exact ℓp distance from each input to the model's non-sensitive region {s ≤ 0}.

    This is the largest radius any sound certificate can give: ``certify(...).radius(p) ≤
    exact_radius(...)`` for every input. Computed over all of R^d (the model's ``input_range`` is
    ignored unless ``respect_input_range=True``). Under a threat model, over the moves it allows,
    and ``certify(..., threat_model=tm).radius(p) ≤ exact_radius(..., threat_model=tm)``.

    Args:
        model: a :class:`~asymcert.models.FeatureConvexClassifier` whose feature map is affine
            (identity / shift / standardize) and whose g is an ICNN or a ConvexConvNet; its
            eval-mode function is used.
        x: (N, *input_shape) inputs in raw units.
        norm: 1, 2 or ``math.inf`` (ℓ2 needs the ``clarabel`` package, ℓ1/ℓ∞ ``highspy``).
        return_perturbation: also return the minimal perturbations δ (N, *input_shape).
        time_limit: seconds allowed per input; an input that runs out gets NaN (with a warning).
        respect_input_range: also require x + δ ∈ ``model.input_range``.
        threat_model: a :class:`~asymcert.threat.ResolvedThreatModel` for prod(input_shape) features
            (or a :class:`~asymcert.threat.ThreatModel` naming features by index): only moves δ it
            allows count (immutable and one-sided features, x + δ in its domain, always respected)
            and their size is ‖δ / scale‖_p, in threat-model units. None: every δ, sized ‖δ‖_p.
    Returns:
        (N,) float64 radii on ``x``'s device, in raw input units (threat-model units under a threat
        model): 0 for inputs not flagged sensitive (float64 score ≤ 0), ``inf`` when s stays > 0
        everywhere (on every allowed move), NaN (with a warning)
        where the solver failed or its perturbation did not reach {s ≤ 0} on the float64 model.
        With ``return_perturbation``: ``(radii, delta)``, δ in raw input units. Accuracy: ℓ1/ℓ∞ radii are vertex
        solutions, exact to about 1e-9 relative; ℓ2 radii come from an interior-point method, whose
        move is then bisected back to where the float64 score first reaches 0 (it could stop up to
        4e-7 relative inside), so no reported δ can be shortened along its own direction; the solver's
        absolute tolerances remain, so an ℓ2 radius below about 1e-5 under a threat model is the size of a
        verified flip but may lie far above the true minimum (measured: 1.8e-7 reported where a move of 9.8e-8
        flips, audit 27b F2), and an audit comparing certificates with it can miss an excess there.
    Raises:
        UnsupportedModelError: the model is not of the form above (e.g. a ConcatAbs or log1p
            feature map), with or without a threat model.
        ConfigError: a threat model for another number of features, or naming features by header; a time
            limit that is not None or a positive number (0, negative, NaN, a bool).
        ImportError: ``highspy`` (ℓ1, ℓ∞) or ``clarabel`` (ℓ2) is not installed.

    Example:
        >>> import torch, asymcert
        >>> from asymcert.models import build_model
        >>> m = build_model({"kind": "feature-convex", "input_shape": [3],
        ...     "feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [8]}}).eval()
        >>> exact_radius(m, torch.rand(4, 3), "inf").shape
        torch.Size([4])
    """
    solver = ExactRadiusSolver(model, norm, respect_input_range=respect_input_range, threat_model=threat_model)
    result = solver.solve(x, time_limit)
    return (result.radii, result.delta) if return_perturbation else result.radii
