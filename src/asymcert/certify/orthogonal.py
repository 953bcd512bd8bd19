"""The Lipschitz-margin certificate of 1-Lipschitz (ℓ2) networks such as the orthogonal nets.

For a score s with |s(x) − s(x')| ≤ L_p‖x − x'‖_p, a flagged input (s(x) > 0) stays flagged in
the open ℓp ball of radius s(x)/L_p. For the orthogonal nets L₂ = the product of the layers'
spectral norms (≈ 1), so r₂ = s(x) rounded down; r_p = r₂ for p ≤ 2 (‖δ‖₂ ≤ ‖δ‖_p, so r₁ ≥ r₂
holds with r₁ = r₂) and r₂/d^{1/2 − 1/p} for p > 2 (r∞ = r₂/√d). A two-logit head would give
margin/√2 instead; these nets have one score output (see :class:`~asymcert.models.baselines.OrthogonalNet`).
"""

from __future__ import annotations

import copy

import torch
from torch import nn

from asymcert.certify.api import register_certifier
from asymcert.certify.functional import lipschitz_margin_radius
from asymcert.certify.modes import check_precision, eval_mode
from asymcert.certify.result import Certificate


@register_certifier("orthogonal")
def certify_orthogonal(model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], precision: str = "float64",
                       slack: float | None = None) -> Certificate:
    """Certificates of a model with an ℓp Lipschitz constant ``model.lipschitz(p)`` and (N,) scores.

    Args:
        model: e.g. an :class:`~asymcert.models.baselines.OrthogonalNet`.
        x: (N, *input_shape) inputs in raw units.
        norms: ℓp norms to certify.
        precision: ``"float64"`` (default: score and Lipschitz constant recomputed on a float64
            copy, so float32 rounding cannot enlarge a radius) or ``"model"``.
        slack: relative amount taken off every radius (default 1e-9 in float64, 5e-6 otherwise).
    Returns:
        Certificate: predicted = (s(x) > 0) from the model itself, radii 0 where not flagged or
        where the float64 score disagrees, extra["score"].
    """
    check_precision(precision)
    with eval_mode(model), torch.no_grad():
        score = model(x).reshape(-1)
        if precision == "float64":
            ref = copy.deepcopy(model).double().eval()
            ref_score = ref(x.double()).reshape(-1)
            slack = 1e-9 if slack is None else slack
        else:
            ref, ref_score = model, score
            slack = 5e-6 if slack is None else slack
    margin = torch.where((score > 0) & (ref_score > 0), ref_score.double(), torch.zeros_like(ref_score, dtype=torch.float64))
    radii = {p: lipschitz_margin_radius(margin, ref.lipschitz(p), slack) for p in norms}
    return Certificate(predicted=(score > 0).long(), radii=radii, method="orthogonal", deterministic=True,
                       binary=True, extra={"score": score.detach().float()})
