"""The feature-convex certificate (Pfrommer et al. 2023, Theorem 3.1), batched.

For s(x) = g(φ(x)) + b with g convex, g(y) ≥ g(φ(x)) + ∇g(φ(x))ᵀ(y − φ(x)) for every y, so
for ‖δ‖_p < r_p(x) = s(x) / (Lip_p(φ)·‖∇g(φ(x))‖_{p*}) the score stays positive: a flagged input
stays flagged. One forward and one backward pass for the whole batch (the score of input i
depends only on input i in eval mode, so the gradient of the summed score is every input's own).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from asymcert.certify.api import register_certifier
from asymcert.certify.bounded_convex import bounded_pass, supports_bounded
from asymcert.certify.modes import eval_mode
from asymcert.certify.functional import DEFAULT_SLACK, dual_norm, safe_radius
from asymcert.certify.result import Certificate


def score_and_feature_gradient(model: nn.Module, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Scores s(x) (N,) and ∇g at φ(x) (N, *feature_shape) in one forward and one backward pass.

    The model is evaluated in eval mode (batch norm uses running statistics) and restored after.
    """
    with eval_mode(model), torch.enable_grad():
        f = model.features(x).detach().requires_grad_(True)
        s = model.score_from_features(f)
        (grad,) = torch.autograd.grad(s.sum(), f)
    return s.detach(), grad


def _float64_copy(model: nn.Module) -> nn.Module:
    """A float64 copy of ``model`` (small: the convex nets here have at most a few 100k weights)."""
    if all(p.dtype == torch.float64 for p in model.parameters()):
        return model
    return copy.deepcopy(model).double()


# Multiple of (machine epsilon × magnitude) reserved for the rounding of the deployed model's own
# evaluation. Measured |s_float32 − s_float64| / (eps32 · M) stayed below 1.8 on 26,000 inputs of
# random and trained models (tests/test_soundness_feature_convex.py): 8 leaves
# a factor of 4 or more.
FLOAT_GUARD_FACTOR = 8.0


def float_guard(model: nn.Module, features: torch.Tensor, grad: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Absolute score margin (N,) that covers the rounding of a low-precision evaluation of the model.

    For piecewise-linear g, s(x) = ∇gᵀφ(x) + c + b locally, and the float error of evaluating it grows
    with M = Σ|∇g ⊙ φ(x)| + |s| + |b|; the guard is FLOAT_GUARD_FACTOR · eps(model dtype) · M.
    Zero for float64 models.
    """
    dtype = next(model.parameters()).dtype
    if dtype == torch.float64:
        return torch.zeros_like(score, dtype=torch.float64)
    magnitude = (grad.double().abs() * features.double().abs()).flatten(1).sum(1) + score.double().abs() \
        + float(model.balance.detach().abs())
    return FLOAT_GUARD_FACTOR * torch.finfo(dtype).eps * magnitude


PRECISIONS = ("auto", "bounded", "float64", "model")


def _resolve_precision(model: nn.Module, x: torch.Tensor, precision: str) -> str:
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be one of {PRECISIONS}, got {precision!r}")
    supported = supports_bounded(model, x.device)
    if precision == "bounded" and not supported:
        raise ValueError("precision='bounded' needs a float32 convex conv net (odd stem kernel) on CPU; "
                         "use 'float64'")
    if precision == "auto":
        return "bounded" if supported else "float64"
    return precision


@register_certifier("feature-convex")
def certify_feature_convex(model: nn.Module, x: torch.Tensor, norms: tuple[float, ...],
                           precision: str = "auto", slack: float | None = None,
                           guard: bool = True, validate: bool = True) -> Certificate:
    """Certificates of a :class:`~asymcert.models.FeatureConvexClassifier` for a batch.

    Args:
        model: the classifier; its convexity is checked first unless ``validate=False``.
        x: (N, *input_shape) inputs in raw units.
        norms: ℓp norms (p ≥ 1) to certify.
        precision: how float rounding is kept from enlarging a radius:
            ``"bounded"``: one float32 pass (a compiled kernel) with rigorous bounds on its rounding
            error (:mod:`asymcert.certify.bounded_convex`; convex conv nets on CPU);
            ``"float64"``: score and gradient recomputed in float64;
            ``"auto"`` (default): ``"bounded"`` where it applies, else ``"float64"``;
            ``"model"``: the model's own dtype, guarded only by the relative ``slack``.
        slack: relative amount taken off every radius (default 1e-9 for "bounded" and "float64",
            5e-6 for "model").
        guard: reserve :func:`float_guard` of the score for the rounding of the model's own
            (float32) evaluation, so that its decision, not only the exact function's, is certified.
            ``guard=False`` certifies the exact real-valued function s.
    Returns:
        Certificate with ``predicted`` 1 where the model's own s(x) > 0, radii in raw input units
        (0 where not flagged, or where the reference score disagrees), ``extra["score"]`` s(x).
        The decision is read from the reference score (the model's own with "model") where it is
        farther from 0 than the model's rounding (:func:`float_guard`), and from the model's own
        forward pass for the rest; ``extra["score"]`` is the reference score there.
    """
    if validate:
        model.validate()
    precision = _resolve_precision(model, x, precision)
    err, uncertain = None, None
    if precision == "bounded":
        bp = bounded_pass(model, x)
        score, err, features, uncertain = bp.score, bp.score_error, bp.features, bp.uncertain
        # |∇h_P| ≤ |ĝ| + E_g componentwise, so its dual norm bounds ‖∇h_P‖ (norms are monotone)
        grad, grad_bound = bp.grad, bp.grad.double().abs().add_(bp.grad_error.double())
    else:
        ref = _float64_copy(model) if precision == "float64" else model
        xr = x.double() if precision == "float64" else x
        score, grad = score_and_feature_gradient(ref, xr)
        features, grad_bound = model.features(xr).detach(), grad
    score = score.double()
    err = torch.zeros_like(score) if err is None else err
    band = float_guard(model, features, grad, score)
    flagged, own_score = _decide(model, x, score - err, score + err, band, uncertain)
    margin = score - err - (band if guard else 0.0)
    margin = torch.where(flagged, margin, torch.zeros_like(margin))
    if slack is None:
        slack = DEFAULT_SLACK if precision == "model" else 1e-9
    radii = {p: safe_radius(margin, model.lipschitz(p) * dual_norm(grad_bound, p), slack) for p in norms}
    return Certificate(predicted=flagged.long(), radii=radii, method="feature-convex",
                       deterministic=True, binary=True, extra={"score": own_score})


def _decide(model: nn.Module, x: torch.Tensor, low: torch.Tensor, high: torch.Tensor, band: torch.Tensor,
            uncertain: torch.Tensor | None) -> tuple[torch.Tensor, torch.Tensor]:
    """The model's own decisions (N,) bool and scores (N,) float32, from bounds on the exact score.

    The model's float evaluation is within ``band`` (:func:`float_guard`) of the exact score, so it is
    positive where ``low > band`` and not positive where ``high < −band`` (with the exact ReLU pattern,
    i.e. not ``uncertain``); only the remaining inputs are run through the model itself.
    """
    flagged = low > band
    undecided = ~flagged & (high >= -band)
    if uncertain is not None:
        undecided |= ~flagged & uncertain
    score = ((low + high) / 2).float()
    if bool(undecided.any()):
        with eval_mode(model), torch.no_grad():
            own = model(x[undecided])
        score[undecided] = own.float()
        flagged[undecided] = own > 0
    return flagged, score
