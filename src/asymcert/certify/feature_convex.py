"""The feature-convex certificate (Pfrommer et al. 2023, Theorem 3.1), batched.

For s(x) = g(φ(x)) + b with g convex, g(y) ≥ g(φ(x)) + ∇g(φ(x))ᵀ(y − φ(x)) for every y, so
for ‖δ‖_p < r_p(x) = s(x) / (Lip_p(φ)·‖∇g(φ(x))‖_{p*}) the score stays positive: a flagged input
stays flagged. One forward and one backward pass for the whole batch (the score of input i
depends only on input i in eval mode, so the gradient of the summed score is every input's own).

Float safety. s and ∇g are computed by a *reference* in floating point, so the certificate uses

    margin = ŝ − E_ref − [guard] · band,    denominator = Lip_p(φ) · ‖G‖_{p*},    r = margin / denominator,

rounded down, where E_ref is an ABSOLUTE bound on |ŝ − s| (a relative slack cannot be sound near
the decision boundary, where |s| is as small as its own rounding error), G bounds |∇g| (or carries
a relative slack for the gradient norm, whose relative error does not grow near the boundary), and
band (:func:`float_guard`) covers the rounding of the deployed model's own forward pass at the
attacked point. Per precision:

* ``"bounded"``: E_ref and G from the rigorous bounds of :mod:`asymcert.certify.bounded_convex`
  (convex conv nets) or :mod:`asymcert.certify.bounded_icnn` (one-hidden-layer ICNNs without batch norm).
* ``"float64"``: E_ref = :func:`rounding_bound` at float64's eps (FLOAT64_REFERENCE_FACTOR) and
  float64's underflow term.
* ``"model"``: E_ref = :func:`float_guard` (the model's own arithmetic, TF32 where PyTorch allows it),
  and a relative slack of :data:`~asymcert.certify.functional.DEFAULT_SLACK` × (eps / eps32) for
  the gradient norm.

Every such bound is factor·eps·M (relative to a magnitude M, measured) PLUS an absolute underflow term
(:func:`underflow_bound`, rigorous in its model): where every term is subnormal-sized, eps·M is far below the
≤ τ per operation that underflow (or flush-to-zero) loses, and a score of a few subnormals would otherwise be
certified as if exact (or the deployed model's own 0 inside the radius missed).
"""

from __future__ import annotations

import copy
import functools
import math
from dataclasses import dataclass, replace
from typing import TYPE_CHECKING, TypeAlias, TypeVar, cast

import torch
from torch import nn

from asymcert.certify import options as option_checks
from asymcert.certify.bounded_convex import batch_norm_terms, bounded_pass, supports_bounded
from asymcert.certify.bounded_icnn import icnn_bounded_pass, supports_bounded_icnn
from asymcert.certify.functional import DEFAULT_SLACK, checked_l2, dual_exponent, dual_norm, safe_radius
from asymcert.certify.magnitude import FLOAT32_SAFE, Magnitudes, network_magnitudes, reads_only_tensors, underflow_error
from asymcert.certify.modes import UnsoundOptionError, eval_mode, matmul_unit_roundoff
from asymcert.certify.result import RAW_UNITS, Certificate, Guarantee
from asymcert.certify.scope import Sources, call_scope, chunk_scope, kept_while_unchanged, scoped, scoped_per_call
from asymcert.certify.tangent_cuts import TangentCuts, multi_cut_feature_radii, tangent_margins
from asymcert.nn.convex import ICNN, ConvexConvNet, ConvexMean
from asymcert.nn.feature_maps import EPS64, FeatureMap

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.feature_convex import FeatureConvexClassifier
    from asymcert.models.one_vs_rest import OneVsRestConvex

    # models with features(x), score_from_features(f) and feature_lipschitz(p): binary, or K members at once
    ConvexModel: TypeAlias = FeatureConvexClassifier | OneVsRestConvex

M = TypeVar("M", bound=nn.Module)

EPS32 = torch.finfo(torch.float32).eps
# Relative slack of "bounded" and "float64": the float64 dual norm, Lipschitz product and division
# carry a relative error below γ_n(2⁻⁵³) ≈ 1e-10 for n < 10⁶ entries.
FLOAT64_SLACK = 1e-9


def score_and_feature_gradient(model: ConvexModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores s(x) (N,) and ∇g at φ(x) (N, *feature_shape) in one forward and one backward pass."""
    score, grad, _ = score_gradient_features(model, x)
    return score, grad


def score_gradient_features(model: ConvexModel, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Scores s(x) (N,), ∇g at φ(x) and the features φ(x) (both (N, *feature_shape)), one forward and one
    backward pass. The model is evaluated in eval mode (batch norm uses running statistics) and restored after.
    """
    with eval_mode(model), torch.enable_grad():
        f = model.features(x).detach().requires_grad_(True)
        s = model.score_from_features(f)
        (grad,) = torch.autograd.grad(s.sum(), f)
    return s.detach(), grad, f.detach()


def _float64_copy(model: M) -> M:
    """A float64 copy of ``model`` (small: the convex nets here have at most a few 100k weights)."""
    if all(p.dtype == torch.float64 for p in model.parameters()):
        return model
    return copy.deepcopy(model).double()


# Multiple of (machine epsilon × magnitude M, see `rounding_bound`) reserved for the rounding of
# the deployed model's own float evaluation of the score. MEASURED, not proven (M does not see
# every internal cancellation): |s_float32 − s_float64| / (eps32 · M) stayed below 1.8 on 26,000
# inputs of random and trained models (tests/certify/test_soundness_feature_convex.py), and
# |s_float32 − s_exact| / (eps32 · M) below 1.1 against exact rational arithmetic on 300 tiny random
# conv nets, half of them with a balance that cancels the score to a few ulps
# (tests/certify/test_bounded_convex.py; before M included the constant terms, a dead net whose constant
# cancelled to −1.4e-8 reached 46). Within a certified ball M grows at most from M to M + 2s ≤ 3M
# (same ReLU pattern: |s| and Σ|∇g ⊙ φ| move by at most Lip·‖∇g‖·r ≤ s), and only where s ≈ M, far
# from the boundary; 8 covers the attacked point.
FLOAT_GUARD_FACTOR = 8.0
# The same for the float64 reference of precision="float64": measured |s_float64 − s_exact| /
# (eps64 · M) ≤ 1.5 on the tiny nets above; 64 costs nothing (radii move by ~1e-14 relative).
FLOAT64_REFERENCE_FACTOR = 64.0


FEATURE_VALUES_PER_BATCH = 2**20
"""The most feature values φ(x) of one batch the certifier holds at once (8 MiB in float64)."""
NO_BATCH_LIMIT = 2**62


def max_batch(model: nn.Module) -> int:
    """The most inputs to certify at once: their features φ(x) hold at most :data:`FEATURE_VALUES_PER_BATCH`
    values (4096 inputs of SpamBase's default, 285 features each; 211 of its ``pairs`` preset, 4959).

    The certificate keeps several float64 tensors of φ(x)'s size (features, gradient, their products);
    wide maps such as pair-min made a batch of 4096 hold 1.1 GB and run at half the speed per input
    (benchmarks/README.md, "Certifying new traffic"). Models without a feature map, or with one that cannot
    say its output shape (a foreign module the certifier's validation then refuses by name): no limit of its own.
    """
    feature_map, shape = getattr(model, "feature_map", None), getattr(model, "input_shape", None)
    out_shape = getattr(feature_map, "out_shape", None)
    if shape is None or not callable(out_shape):
        return NO_BATCH_LIMIT
    try:
        width = math.prod(out_shape(tuple(shape)))
    except AttributeError:  # a module without out_shape inside φ: validation names it
        return NO_BATCH_LIMIT
    return max(1, FEATURE_VALUES_PER_BATCH // max(1, width))


def evaluation_eps(model: ConvexModel) -> float:
    """Machine epsilon (2u) of the model's own forward pass: its dtype's, or TF32's/bfloat16's where
    PyTorch's settings let float32 products on the model's device run in reduced precision."""
    p = next(model.parameters())
    return 2.0 * matmul_unit_roundoff(p.dtype, p.device)


def rounding_bound(
    features: torch.Tensor,
    grad: torch.Tensor,
    score: torch.Tensor,
    constants: float | torch.Tensor,
    eps: float,
    factor: float = FLOAT_GUARD_FACTOR,
    floor: torch.Tensor | None = None,
    underflow: float = 0.0,
) -> torch.Tensor:
    """Absolute bound (N,) float64 on the rounding error of one evaluation of s at machine epsilon ``eps``.

    For piecewise-linear g, s(x) = ∇gᵀφ(x) + c + b locally, and the float error of evaluating it grows
    with M = Σ|∇g ⊙ φ(x)| + |s| + C, C the magnitude of the constant terms c + b
    (:func:`constant_magnitude`); the bound is ``factor`` · eps · M (see FLOAT_GUARD_FACTOR) + ``underflow``.
    It is absolute, so it stays valid where s is a cancellation near 0 (a relative bound would not).

    Args:
        features: (N, *feature_shape) φ(x); grad: same shape, ∇g(φ(x)); score: (N,) s(x);
        constants: C ≥ |b| (a float, or (N,) per input: :func:`constant_terms`);
        eps: machine epsilon of the arithmetic (2⁻²³ float32, 2⁻⁵² float64);
        factor: the measured multiple (FLOAT_GUARD_FACTOR or FLOAT64_REFERENCE_FACTOR).
        floor: (N,) a magnitude M may not be below: A of :func:`score_magnitudes`, which sees terms that cancel.
        underflow: the absolute underflow term of the evaluation's format (:func:`underflow_bound`), which
            eps·M does not see (an underflow's error is not relative to any magnitude).
    """
    magnitude = (grad.double() * features.double()).abs_().flatten(1).sum(1) + score.double().abs() + constants
    if floor is not None:
        magnitude = torch.maximum(magnitude, floor.to(magnitude))
    return factor * eps * magnitude + underflow


def underflow_bound(model: FeatureConvexClassifier, features: torch.Tensor, dtype: torch.dtype | None = None) -> float:
    """Absolute bound on the error underflow adds to the score of one evaluation of s in ``dtype`` (None: the
    model's own, its parameters') at features of ``features``' shape (N, *feature_shape): 2·τ·N_u, rounded up
    (τ = ``dtype``'s smallest NORMAL number, 2⁻¹²⁶ float32, 2⁻¹⁰²² float64; N_u = Σ over the values the
    evaluation computes of the operations producing each, times how much an error there reaches the score:
    :mod:`asymcert.certify.magnitude`).

    Why τ, not the smallest subnormal: with IEEE gradual underflow a product errs by at most half the smallest
    subnormal (2⁻¹⁵⁰, 2⁻¹⁰⁷⁵) and a sum not at all, but PyTorch on CPU may flush denormals
    (``torch.set_flush_denormal(True)`` sets flush-to-zero and denormals-are-zero; bfloat16 and oneDNN kernels
    flush), which loses up to τ per operation and reads a subnormal operand as 0; the deployed model may run
    either way, and the bounded ICNN pass's ζ covers flush-to-zero too. A constant per model and format (no
    growth across a ball); ~1e-38·N_u in float32: for a normal model it does not change M's bound's float64
    value. Not covered: subnormal PARAMETERS read as 0 (an error relative to the activations they multiply),
    and underflow inside φ's steps before its last (counted at φ's output only).
    """
    mags = model_magnitudes(model, tuple(features.shape[1:]))
    return underflow_error(mags, next(model.parameters()).dtype if dtype is None else dtype)


def _bn_constant(norm: nn.Module) -> torch.Tensor:
    """(C,) float64 |β| + |γ·μ/√(σ² + ε)|: the magnitudes of an eval batch norm's constant terms (0 for Identity)."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return torch.zeros(())
    weight, bias, mean, var = batch_norm_terms(norm)
    scale = weight.double() / torch.sqrt(var.double() + norm.eps)
    return bias.double().abs() + (scale * mean.double()).abs()


def constant_magnitude(model: FeatureConvexClassifier) -> float:
    """Σ of the magnitudes of the constant terms summed at g's output layer, plus |b|.

    In a region where g is constant (every ReLU off) the score is just these terms, which may cancel
    to almost nothing while their rounding does not; Σ|∇g ⊙ φ| + |s| does not see them. Convex conv
    net: Σ w_readout·(|β| + |γμ/σ|) of the output batch norm + |readout bias|; ICNN: the same for the
    last hidden layer and its batch norm, + |bias of the last pass-through|; a mean of networks: the
    mean of its members' terms. Other g: |b| only.
    """
    return float(model.balance.detach().abs()) + _net_constant(model.convex)


def _net_constant(g: nn.Module) -> float:
    """The constant-term magnitude of one convex network g (see :func:`constant_magnitude`)."""
    if isinstance(g, ConvexMean):
        return sum(_net_constant(m) for m in g.members) / len(g.members)
    if isinstance(g, ConvexConvNet):
        w = g.readout.weight.detach().double().abs().view(g.channels, -1).sum(1)
        return float((w * _bn_constant(g.out_norm)).sum() + g.readout.bias.detach().double().abs().sum())
    total = 0.0
    if isinstance(g, ICNN):
        last = cast(nn.Linear, g.passthrough[-1]).bias  # ICNN.passthrough holds nn.Linear
        total += 0.0 if last is None else float(last.detach().double().abs().sum())
        if g.hidden:
            w = cast(nn.Linear, g.hidden[-1]).weight.detach().double().abs().sum(0)
            total += float((w * _bn_constant(g.norms[-1])).sum())
    return total


def constant_terms(model: FeatureConvexClassifier, features: torch.Tensor) -> float | torch.Tensor:
    """C of :func:`rounding_bound`: :func:`constant_magnitude`, and for a mean of networks g = (1/K) Σ g_k
    also the members' own magnitudes mean_k(Σ|∇g_k ⊙ φ| + |g_k|) per input (N,) float64, since the
    averaged gradient and score may cancel terms whose rounding each member still makes."""
    constant = constant_magnitude(model)
    g = model.convex
    if not isinstance(g, ConvexMean):
        return constant
    dtype = next(g.parameters()).dtype
    with torch.enable_grad():
        f = features.detach().to(dtype).requires_grad_(True)
        scores = g.member_scores(f)
        terms = []
        for k in range(scores.shape[1]):
            (grad_k,) = torch.autograd.grad(scores[:, k].sum(), f, retain_graph=k + 1 < scores.shape[1])
            terms.append(
                (grad_k.double() * f.detach().double()).abs().flatten(1).sum(1) + scores[:, k].detach().double().abs()
            )
    return constant + torch.stack(terms, 1).mean(1)


def float_guard(
    model: FeatureConvexClassifier, features: torch.Tensor, grad: torch.Tensor, score: torch.Tensor
) -> torch.Tensor:
    """Absolute score margin (N,) float64 that covers the rounding of the deployed model's own evaluation.

    :func:`rounding_bound` at :func:`evaluation_eps` of the model (float32: 8·2⁻²³·M; float64
    models: 8·2⁻⁵²·M; float32 on CUDA with TF32 allowed: 8·2⁻⁹·M), with |b| replaced by
    :func:`constant_magnitude` (which includes it): :func:`relative_guard` plus the underflow term of the
    model's dtype (:func:`underflow_bound`: 2·2⁻¹²⁶·N_u for float32, TF32 and bfloat16; 2·2⁻¹⁰²²·N_u float64).
    """
    return relative_guard(model, features, grad, score) + underflow_bound(model, features)


def relative_guard(
    model: FeatureConvexClassifier, features: torch.Tensor, grad: torch.Tensor, score: torch.Tensor
) -> torch.Tensor:
    """(N,) float64 8·eps·max(M, A): :func:`float_guard` without its (constant) underflow term, the part that
    grows with A across a ball (:func:`guarded_lp_radii`, :mod:`asymcert.certify.threat_guard`)."""

    def compute() -> torch.Tensor:
        floor, _ = score_magnitudes(model, features)
        terms = constant_terms(model, features)
        return rounding_bound(features, grad, score, terms, evaluation_eps(model), floor=floor)

    return scoped("guard", (model, features, grad, score), (), compute, chunk=True)


def model_magnitudes(model: FeatureConvexClassifier, feature_shape: tuple[int, ...]) -> Magnitudes:
    """The :class:`~asymcert.certify.magnitude.Magnitudes` of s = g(f) + b on features of ``feature_shape``
    (computed once per model inside a :func:`~asymcert.certify.scope.call_scope`), φ's own parameters counted in H."""
    shape = _network_shape(model.convex, feature_shape)

    def compute() -> Magnitudes:
        mags = network_magnitudes(model.convex, shape, float(model.balance.detach()))
        return replace(mags, overflow0=mags.overflow0 + feature_map_magnitude(model.feature_map))

    def kept() -> Magnitudes:  # (across calls while g, φ and b are bitwise unchanged: 11 ms a call on the demo model)
        if not reads_only_tensors(model.convex):  # a user's own network may read more (review 28a F2)
            return compute()
        return kept_while_unchanged(f"magnitudes{shape}", model, magnitude_sources(model), compute)

    return scoped("magnitudes", (model,), shape, kept)


def magnitude_sources(model: FeatureConvexClassifier) -> Sources:
    """Everything :func:`model_magnitudes` reads, by role: every parameter and buffer of g and φ under its name (a
    tied tensor under each of its names), b, and the printed form of g and φ (their layer types and settings,
    such as a batch norm's ε), as bytes."""
    out: Sources = []
    for prefix, module in (("g", model.convex), ("phi", model.feature_map)):
        named = [*module.named_parameters(remove_duplicate=False), *module.named_buffers(remove_duplicate=False)]
        out += [(f"{prefix}.{name}", t.detach()) for name, t in named]
        out.append((f"{prefix}()", torch.frombuffer(bytearray(repr(module).encode()), dtype=torch.uint8)))
    return [*out, ("b", model.balance.detach())]


def _network_shape(g: nn.Module, shape: tuple[int, ...]) -> tuple[int, ...]:
    """The feature shape g takes (its ``in_shape``; a mean's members'), else ``shape`` (features may come flat)."""
    first = g.members[0] if isinstance(g, ConvexMean) and len(g.members) else g
    found = getattr(first, "in_shape", None)
    return tuple(int(v) for v in found) if found is not None else shape


def feature_map_magnitude(phi: nn.Module) -> float:
    """Σ of the magnitudes of φ's parameters and buffers (means, scales, knots), float64: with the inputs'
    magnitude it bounds every value φ computes on the way (|x − μ| ≤ |x| + |μ|; a division by σ or a log1p
    gives a feature, which H counts itself), so H sees an x − μ that overflows although (x − μ)/σ would not."""
    tensors = [*phi.parameters(), *phi.buffers()]
    return float(sum(t.detach().double().abs().sum() for t in tensors if t.is_floating_point()))


def score_magnitudes(model: FeatureConvexClassifier, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, H) (N,) float64 at features φ(x) (N, *feature_shape): the magnitude of the terms the score sums, and
    the sum of the magnitudes of every value its evaluation computes (:mod:`asymcert.certify.magnitude`)."""
    shape = tuple(features.shape[1:])
    return scoped("at", (model, features), (), lambda: model_magnitudes(model, shape).at(features), chunk=True)


def growth_caps(
    model: FeatureConvexClassifier, x: torch.Tensor, features: torch.Tensor, norms: tuple[float, ...]
) -> dict[float, tuple[torch.Tensor, torch.Tensor]]:
    """Per norm, two radii (N,) float64 in raw input units: within the first, A grows at most to 3A (so
    :func:`float_guard`'s factor 8 still covers the deployed model's rounding); within the second, H with the
    input's own magnitude stays below :data:`~asymcert.certify.magnitude.FLOAT32_SAFE` (no value overflows).
    A move of ℓp size r moves φ by at most Lip_p(φ)·r, A by ‖a‖_q times that, H by ‖h‖_q·Lip_p(φ)·r + ‖x' − x‖₁.
    For trained models both lie far beyond the certified radii; they bind for weights that cancel."""
    mags = model_magnitudes(model, tuple(features.shape[1:]))
    a, h = score_magnitudes(model, features)
    size = x.detach().double().flatten(1).abs().sum(1)
    d = x[0].numel()
    caps = {}
    inner, inner_rates = phi_steps(model, x, norms)
    for p in norms:
        lip = model.feature_lipschitz(p)
        grow_a, grow_h = mags.growth(p)
        ones = 1.0 if p == 1.0 else (d ** (1.0 - 1.0 / p) if math.isfinite(p) else float(d))  # ‖1‖_q
        grow_inner = inner_rates[p]
        room = (FLOAT32_SAFE - h - size - inner).clamp_min(0.0)
        over = ratio(room, grow_h * lip + ones + grow_inner)
        caps[p] = (ratio(2.0 * a, grow_a * lip) * (1.0 - 1e-9), over * (1.0 - 1e-9))
    return caps


def ratio(top: torch.Tensor, rate: torch.Tensor | float) -> torch.Tensor:
    """top / rate (N,), ∞ where the rate (a number, or (N,)) is 0: nothing grows."""
    rate = torch.as_tensor(rate, dtype=top.dtype, device=top.device)
    return torch.where(rate > 0, top / rate.clamp_min(1e-300), torch.full_like(top, math.inf))


def overflow_risk(model: FeatureConvexClassifier, x: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """(N,) bool: inputs whose float32 evaluation may overflow (H with the input's magnitude and φ's intermediate
    values past :data:`~asymcert.certify.magnitude.FLOAT32_SAFE`, or not finite): the model itself decides them,
    radius 0."""
    _, h = score_magnitudes(model, features)
    total = h + x.detach().double().flatten(1).abs().sum(1) + phi_steps(model, x, ())[0]
    return ~(total < FLOAT32_SAFE)


def phi_steps(
    model: FeatureConvexClassifier, x: torch.Tensor, norms: tuple[float, ...]
) -> tuple[torch.Tensor, dict[float, float]]:
    """The values φ computes between its steps (a Compose's outputs before the last step; its own output is in H):
    their magnitude Σ|z_k| (N,) float64 at x (N, *shape), and per norm how fast it grows per unit of raw ℓp move
    (Σ_k n_k^{1−1/p}·Π_{j≤k} Lip_p(step j), from the steps' declared constants). An intermediate value may
    overflow float32 although the step after it shrinks it (standardize with σ = 1e-30, then log1p)."""

    def compute() -> tuple[torch.Tensor, dict[float, float]]:
        steps = scoped_per_call("steps64", model, (), lambda: _steps64(model))
        z = x.detach().double()
        size = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
        lips, rates = dict.fromkeys(norms, 1.0), dict.fromkeys(norms, 0.0)
        with torch.no_grad():
            for step in steps:
                z = step(z)
                size = size + z.flatten(1).abs().sum(1)
                width = z[0].numel()
                for p in norms:
                    lips[p] *= float(cast(FeatureMap, step).lipschitz(p))
                    rates[p] += (width ** (1.0 - 1.0 / p) if math.isfinite(p) else float(width)) * lips[p]
        return size, rates

    return scoped("phi", (model, x), norms, compute, chunk=True)


def _steps64(model: FeatureConvexClassifier) -> list[nn.Module]:
    """φ's steps before its last (a Compose's), as float64 modules (copies, when their parameters are float32)."""
    steps = list(getattr(model.feature_map, "feature_maps", []))[:-1]
    return [copy.deepcopy(step).double() if _has_float32(step) else step for step in steps]


def _has_float32(module: nn.Module) -> bool:
    """Whether any floating parameter or buffer of ``module`` is not float64."""
    return any(t.dtype != torch.float64 for t in (*module.parameters(), *module.buffers()) if t.is_floating_point())


def reference_error(
    model: FeatureConvexClassifier, features: torch.Tensor, grad: torch.Tensor, score: torch.Tensor, precision: str
) -> torch.Tensor:
    """Bound (N,) on |ŝ − s| for the score ŝ of the ``"float64"`` or ``"model"`` reference: :func:`rounding_bound`
    with the underflow term of its format (float64's, or the model's own through :func:`float_guard`)."""
    if precision == "float64":
        floor, _ = score_magnitudes(model, features)
        terms = constant_terms(model, features)
        below = underflow_bound(model, features, torch.float64)
        return rounding_bound(features, grad, score, terms, EPS64, FLOAT64_REFERENCE_FACTOR, floor, below)
    return float_guard(model, features, grad, score)


def required_slack(model: ConvexModel, precision: str) -> float:
    """Smallest relative slack that keeps ``precision``'s radii sound (the gradient norm's rounding).

    ``"model"``: DEFAULT_SLACK (5e-6) per float32 eps of the model's arithmetic (measured relative
    error of the float32 dual norm ≤ 2.7·eps32 on the test models; 42·eps32 reserved); otherwise
    :data:`FLOAT64_SLACK`.
    """
    if precision != "model":
        return FLOAT64_SLACK
    return max(FLOAT64_SLACK, DEFAULT_SLACK * evaluation_eps(model) / EPS32)


PRECISIONS = ("auto", "bounded", "float64", "model")


def _resolve_precision(model: ConvexModel, x: torch.Tensor, precision: str) -> str:
    if precision not in PRECISIONS:
        raise UnsoundOptionError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    supported = supports_bounded(model, x.device) or supports_bounded_icnn(model, x.device)
    if precision == "bounded" and not supported:
        raise UnsoundOptionError(
            "precision='bounded' needs, on CPU, a convex conv net (odd stem kernel) or a one-hidden-layer "
            "ICNN without batch norm (φ of shift/standardize/concat-abs steps); use 'auto' or 'float64'"
        )
    if precision == "auto":
        return "bounded" if supported else "float64"
    return precision


def checked_slack(model: ConvexModel, precision: str, slack: float | None) -> float:
    """``slack`` or, when None, the precision's own allowance (:func:`required_slack`).

    Raises:
        UnsoundOptionError: a slack below that allowance (it would not cover the gradient norm's
            rounding) or not below 1.
    """
    need = required_slack(model, precision)
    if slack is None:
        return need
    if not need <= float(slack) < 1.0:
        raise UnsoundOptionError(
            f"slack={slack!r} with precision={precision!r} must be in [{need:.3g}, 1): "
            "less would not cover the rounding of the gradient norm"
        )
    return float(slack)


@dataclass
class Reference:
    """The score and feature gradient a certificate is computed from, with bounds on their errors.

    Attributes:
        score: (N,) float64 ŝ; error: (N,) float64 bound on |ŝ − s|.
        grad: (N, *feature_shape) ĝ ≈ ∇g(φ(x)); grad_error: a bound on |ĝ − ∇g| of the same shape
            ("bounded") or None (the float64/model paths, whose gradient error is a relative slack).
        features: (N, *feature_shape) φ(x).
        uncertain: (N,) bool where the bounded pass's ReLU pattern may differ from the exact one, else None.
        grad_norms: (N, 3) ‖·‖₁, ‖·‖₂, ‖·‖_∞ of :attr:`grad_bound` where the pass summed them, else None.
    """

    score: torch.Tensor
    error: torch.Tensor
    grad: torch.Tensor
    grad_error: torch.Tensor | None
    features: torch.Tensor
    uncertain: torch.Tensor | None
    grad_norms: torch.Tensor | None = None

    @functools.cached_property
    def grad_bound(self) -> torch.Tensor:
        """A tensor whose dual norm bounds ‖∇g‖: |ĝ| + E_g (bounded), else ĝ (computed once)."""
        if self.grad_error is None:
            return self.grad
        # |∇h_P| ≤ |ĝ| + E_g componentwise, so its dual norm bounds ‖∇h_P‖ (norms are monotone)
        return self.grad.double().abs().add_(self.grad_error.double())

    def dual_norm(self, p: float) -> torch.Tensor:
        """‖:attr:`grad_bound`‖ in the dual of ℓp (N,) float64: the pass's own sums where it has them (an ℓ2 sum of
        squares that may have underflowed or overflowed is recomputed, :func:`~asymcert.certify.functional.checked_l2`,
        as :func:`~asymcert.certify.functional.dual_norm` does it)."""
        column = {1.0: 0, 2.0: 1, math.inf: 2}.get(dual_exponent(p))
        if self.grad_norms is None or column is None:
            return dual_norm(self.grad_bound, p)
        norm = self.grad_norms[:, column]
        if column == 1:
            return checked_l2(norm, lambda: self.grad_bound.reshape(len(norm), -1).double())
        return norm


def reference(model: FeatureConvexClassifier, x: torch.Tensor, precision: str) -> Reference:
    """Score, gradient and their error bounds for a resolved precision (see :class:`Reference`)."""
    if precision == "bounded":
        bp = icnn_bounded_pass(model, x) if supports_bounded_icnn(model, x.device) else bounded_pass(model, x)
        return Reference(bp.score, bp.score_error, bp.grad, bp.grad_error, bp.features, bp.uncertain, bp.grad_norms)
    ref = _float64_copy(model) if precision == "float64" else model
    xr = x.double() if precision == "float64" else x
    # φ of the float64 copy equals the model's own φ on float64 inputs (its buffers widened exactly)
    score, grad, features = score_gradient_features(ref, xr)
    score = score.double()
    return Reference(score, reference_error(model, features, grad, score, precision), grad, None, features, None)


@dataclass(frozen=True)
class FeatureConvexOptions:
    """Options of :func:`certify_feature_convex` (see its arguments)."""

    precision: str = "auto"
    slack: float | None = None
    guard: bool = True
    validate: bool = True
    cuts: int = 0
    reach: bool = False

    def problems(self) -> list[str]:
        """Option values refused before any input is read (``cuts`` and ``reach`` by their own checks)."""
        return option_checks.found(option_checks.nonnegative("slack", self.slack))


def check_cuts(cuts: object) -> int:
    """The ``cuts`` option as an int: 0 or 1 (the closed form) or K ≥ 2 tangent planes.

    Raises:
        UnsoundOptionError: anything else (a bool, a float, a negative number).
    """
    if isinstance(cuts, bool) or not isinstance(cuts, int) or cuts < 0:
        raise UnsoundOptionError(
            f"cuts must be an integer ≥ 0 (0: the closed form; K ≥ 2: K tangent planes), got {cuts!r}"
        )
    return cuts


def check_reach(reach: object) -> bool:
    """The ``reach`` option as a bool.

    Raises:
        UnsoundOptionError: anything but True or False.
    """
    if not isinstance(reach, bool):
        raise UnsoundOptionError(f"reach must be true or false, got {reach!r}")
    return reach


def certify_feature_convex(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    norms: tuple[float, ...],
    precision: str = "auto",
    slack: float | None = None,
    guard: bool = True,
    validate: bool = True,
    cuts: int = 0,
    reach: bool = False,
) -> Certificate:
    """Certificates of a :class:`~asymcert.models.FeatureConvexClassifier` for a batch.

    Every precision × guard combination is sound: with ``guard=False`` no radius exceeds the exact
    certificate s/(Lip·‖∇g‖) of the real-valued function (up to the rigorous or measured bounds
    below), with ``guard=True`` the deployed model's own float decision does not flip inside it.
    Each subtracts an ABSOLUTE bound on its score's rounding (see the module docstring):

    Args:
        model: the classifier; its convexity is checked first unless ``validate=False``.
        x: (N, *input_shape) inputs in raw units.
        norms: ℓp norms (p ≥ 1) to certify.
        precision: where the score and gradient come from:
            ``"bounded"``: one pass with rigorous bounds on its rounding error: a compiled float64
            kernel for convex conv nets (:mod:`asymcert.certify.bounded_convex`), a float32 pattern
            pass and exact integer products for one-hidden-layer ICNNs without batch norm
            (:mod:`asymcert.certify.bounded_icnn`); CPU only. Rigorous.
            ``"float64"``: score and gradient recomputed in float64 with autograd, minus
            :func:`rounding_bound` at float64's eps (measured constant, ~1e-15 relative).
            ``"auto"`` (default): ``"bounded"`` where it applies, else ``"float64"``.
            ``"model"``: the model's own dtype and device (fast on GPUs), minus :func:`float_guard`
            for its score (measured constant, ~1e-6 relative in float32, larger with TF32) and a
            relative slack of 5e-6 × (its eps / float32's eps) for its gradient norm.
        slack: relative amount taken off every radius; default (and minimum) 1e-9, or the gradient
            allowance of "model" (:func:`required_slack`); a smaller value is refused.
        guard: also reserve :func:`float_guard` for the rounding of the deployed model's own
            evaluation at the attacked point, so that its decision, not only the exact function's, is
            certified. ``guard=False`` certifies the exact real-valued function s.
        cuts: 0 (default): the closed form above. K ≥ 2: also the multi-cut certificate of
            :mod:`asymcert.certify.tangent_cuts` (K tangent planes of g along a Kelley path, combined by
            a fitted λ, float64 with the same rounding bounds and guard), and each radius is the larger
            of the two: never below the closed form; K − 1 more forward/backward passes per norm.
        reach: under a threat model only (:func:`~asymcert.certify.threat_model.feature_convex_threat`):
            True enlarges radii by φ's slopes where a move can reach (default False: the closed
            form). Without a threat model it changes nothing.
    Returns:
        Certificate with ``predicted`` 1 where the model's own s(x) > 0, radii (N,) float64 in raw
        input units (0 where not flagged, or where the margin is not positive), ``extra["score"]``.
        The decision is read from the reference score where it is farther from 0 than its error plus
        the model's rounding, and from the model's own forward pass for the rest; ``extra["score"]``
        (N,) float32 is the reference score there (the model's own elsewhere).

    Raises:
        UnsoundOptionError: an unknown precision, "bounded" where it does not apply, or a slack
            below the precision's allowance.
    """
    cuts = check_cuts(cuts)
    check_reach(reach)
    with call_scope(), chunk_scope():
        ref, flagged, margin, own_score, slack = flag_margins(model, x, precision, slack, guard, validate)
        radii = lp_radii(model, ref, margin, norms, slack)
        if guard:  # the deployed model's rounding and range, as the guard assumes them, across the ball
            radii = guarded_lp_radii(model, x, ref, margin, radii)
        if cuts > 1:
            more = tangent_cut_radii(model, x, norms, cuts, guard, slack)
            if guard:  # (the multi-cut radii are not linear in the margin: the slope caps)
                caps = growth_caps(model, x, ref.features, norms)
                more = {p: torch.minimum(r, torch.minimum(*caps[p]).to(r)) for p, r in more.items()}
            radii = {p: torch.where(flagged, torch.maximum(r, more[p].to(r)), r) for p, r in radii.items()}
    return flag_certificate(flagged, radii, own_score)


GROWTH = 3.0
"""How far A may grow from the magnitude the guard reserved at x while its factor 8 still covers the rounding
(measured ≤ 1.8·eps·M, :data:`FLOAT_GUARD_FACTOR`): beyond, the margin pays for the excess."""


def guarded_lp_radii(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    ref: Reference,
    margin: torch.Tensor,
    radii: dict[float, torch.Tensor],
) -> dict[float, torch.Tensor]:
    """Raw ℓp radii r = margin / D (N,) lowered so that the guard covers the deployed model's rounding across
    the ball: A(x') ≤ A(x) + ‖a‖_q·Lip_p(φ)·r (:mod:`asymcert.certify.magnitude`), and where that exceeds
    GROWTH × the magnitude the guard reserved at x, the margin pays 8·eps·(A(x')/GROWTH − it):
    r ≤ (margin + k·(mag − A/GROWTH)) / (D + k·G/GROWTH), k = 8·eps (a change of about 10⁻⁶ of A for
    trained models, the whole radius for weights that cancel). Also capped where H may overflow."""
    mags = model_magnitudes(model, tuple(ref.features.shape[1:]))
    a, _ = score_magnitudes(model, ref.features)
    k = FLOAT_GUARD_FACTOR * evaluation_eps(model)
    mag = relative_guard(model, ref.features, ref.grad, ref.score) / k  # (the underflow term does not grow)
    caps = growth_caps(model, x, ref.features, tuple(radii))
    out = {}
    for p, r in radii.items():
        r64, m64 = r.double(), margin.double().to(r.device)
        grow = mags.growth(p)[0] * model.feature_lipschitz(p)
        rate = torch.where(r64 > 0, m64 / r64.clamp_min(1e-300), torch.zeros_like(r64))  # ≥ D: r was rounded down
        solved = (m64 + k * (mag.to(r64) - a.to(r64) / GROWTH)) / (rate + k * grow / GROWTH)
        needs = (a.to(r64) + grow * r64) / GROWTH > mag.to(r64)
        lowered = torch.where(needs, torch.minimum(r64, solved.clamp_min(0.0) * (1 - 1e-9)), r64)  # (∞ too)
        out[p] = torch.minimum(lowered, caps[p][1].to(lowered)).to(r)
    return out


def tangent_cut_radii(
    model: FeatureConvexClassifier, x: torch.Tensor, norms: tuple[float, ...], cuts: int, guard: bool, slack: float
) -> dict[float, torch.Tensor]:
    """Multi-cut radii per norm: (N,) float64 raw input units, sound for any Lipschitz φ (0 where s ≤ margin).

    Float64 scores and gradients (:func:`reference_error` at "float64" per cut point), the deployed
    model's :func:`float_guard` at the worst cut point when ``guard``; see
    :func:`~asymcert.certify.tangent_cuts.multi_cut_feature_radii`.
    """
    m64 = _float64_copy(model)
    n = x.shape[0]
    with eval_mode(m64), torch.no_grad():
        f0 = m64.features(x.double())
    z0, shape = f0.reshape(n, -1), tuple(f0.shape[1:])

    def score_grad(z: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        with eval_mode(m64), torch.enable_grad():
            f = z.reshape((n, *shape)).detach().requires_grad_(True)
            s = m64.score_from_features(f)
            (grad,) = torch.autograd.grad(s.sum(), f)
        return s.detach().double(), grad.reshape(n, -1).double()

    def error(z: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return reference_error(model, z, w, s, "float64")

    def band(z: torch.Tensor, w: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
        return float_guard(model, z, w, s)

    s0, w0 = score_grad(z0)
    first = TangentCuts(tangent_margins(z0, z0, s0, w0, error(z0, w0, s0))[:, None], w0[:, None])
    return {
        p: multi_cut_feature_radii(
            score_grad, error, band if guard else None, z0, first, p, model.feature_lipschitz(p), slack, cuts
        )
        for p in norms
    }


def lp_radii(
    model: FeatureConvexClassifier, ref: Reference, margin: torch.Tensor, norms: tuple[float, ...], slack: float
) -> dict[float, torch.Tensor]:
    """r_p = margin / (Lip_p(φ)·‖G‖_{p*}) rounded down, per norm: (N,) float64 each, raw input units."""
    return {p: safe_radius(margin, model.feature_lipschitz(p) * ref.dual_norm(p), slack) for p in norms}


def flag_certificate(
    flagged: torch.Tensor, radii: dict[float, torch.Tensor], own_score: torch.Tensor, units: str = RAW_UNITS
) -> Certificate:
    """The binary FLAG certificate of a feature-convex model: decisions (N,) bool, radii per norm (N,),
    the model's own scores (N,) as ``extra["score"]``, and the radii's units."""
    return Certificate(
        predicted=flagged.long(),
        radii=radii,
        method="feature-convex",
        guarantee=Guarantee.FLAG,
        binary=True,
        extra={"score": own_score},
        units=units,
    )


def flag_margins(
    model: FeatureConvexClassifier, x: torch.Tensor, precision: str, slack: float | None, guard: bool, validate: bool
) -> tuple[Reference, torch.Tensor, torch.Tensor, torch.Tensor, float]:
    """The common part of every feature-convex certificate (options as :func:`certify_feature_convex`).

    Returns:
        (reference, flagged (N,) bool, margin (N,) float64 — a lower bound on s(x) minus the guard, 0
        where not flagged —, the model's own scores (N,) float32, the checked slack).
    """
    if validate:
        model.validate()
    precision = _resolve_precision(model, x, precision)
    slack = checked_slack(model, precision, slack)
    ref = reference(model, x, precision)
    band = float_guard(model, ref.features, ref.grad, ref.score)
    risky = overflow_risk(model, x, ref.features)
    flagged, own_score = _decide(model, x, ref.score - ref.error, ref.score + ref.error, band, ref.uncertain, risky)
    margin = ref.score - ref.error - (band if guard else 0.0)
    margin = torch.where(flagged & ~(risky & guard), margin, torch.zeros_like(margin))
    return ref, flagged, margin, own_score, slack


def _decide(
    model: FeatureConvexClassifier,
    x: torch.Tensor,
    low: torch.Tensor,
    high: torch.Tensor,
    band: torch.Tensor,
    uncertain: torch.Tensor | None,
    own: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own decisions (N,) bool and scores (N,) float32, from bounds on the exact score.

    The model's float evaluation is within ``band`` (:func:`float_guard`) of the exact score, so it is
    positive where ``low > band`` and not positive where ``high < −band`` (with the exact ReLU pattern,
    i.e. not ``uncertain``); only the remaining inputs, and those ``own`` (N,) bool names (whose evaluation may
    overflow), are run through the model itself.
    """
    flagged = (low > band) & (True if own is None else ~own)
    undecided = ~flagged & (high >= -band)
    if uncertain is not None:
        undecided |= ~flagged & uncertain
    if own is not None:
        undecided |= own
    score = ((low + high) / 2).float()
    if bool(undecided.any()):
        with eval_mode(model), torch.no_grad():
            own = model(x[undecided])
        score[undecided] = own.float()
        flagged[undecided] = own > 0
    return flagged, score
