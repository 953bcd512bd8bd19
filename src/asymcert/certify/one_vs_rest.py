"""The decision rule of one-vs-rest feature-convex models and what their certificate guarantees.

Model (:class:`~asymcert.models.one_vs_rest.OneVsRestConvex`): K scores s_k(x) = g_k(φ_k(x)) + b_k,
each g_k input-convex; s_k(x) > 0 means "x is flagged as class k".

Decision rule: ``predicted = argmax_k s_k(x)`` (the model's own float32 scores; ties go to the
lowest class id). The predicted class is *flagged* when s_pred(x) > 0 (an input may be flagged by
several members, or by none).

What is certified (the per-class sensitive-class certificate): for every class k with s_k(x) > 0,

    r_{k,p}(x) = s_k(x) / (Lip_p(φ_k) · ‖∇g_k(φ_k(x))‖_{p*})      (member k's own binary certificate)

and no δ with ‖δ‖_p < r_{k,p}(x) makes s_k(x + δ) ≤ 0: **x + δ stays flagged as class k**.
``radii[p]`` is r_{pred,p}(x) for the predicted class, 0 when the predicted class is not flagged.
This is the asymmetric guarantee an analyst needs who acts on every flag: an attacker within the
radius cannot make a flagged class-k input lose its class-k flag.

What is NOT certified: that argmax_k s_k(x + δ) stays ``pred``. Convexity gives a lower bound
(the tangent plane) on s_pred near x, but no upper bound on the other scores s_j, which may rise
above s_pred inside the radius; x + δ is then still flagged as ``pred`` but also (more strongly) as
j. ``radii`` must therefore not be read as a robustness certificate of the argmax. Certified
accuracy at r for this method is the share of inputs whose prediction is correct AND whose
(true = predicted) class is flagged with radius ≥ r (``extra["predicted_flagged"]``).

All K certificates come from one forward and one backward pass for the whole batch (the summed
scores' gradient w.r.t. the stacked per-member features holds every member's own gradient), with
the float safety of :mod:`asymcert.certify.feature_convex`, member by member: the margin is the
reference score minus an ABSOLUTE bound on its rounding (:func:`~asymcert.certify.feature_convex.
reference_error`: float64's for ``precision="float64"``, the model's own arithmetic's for
``"model"``), minus the deployed model's rounding (:func:`~asymcert.certify.feature_convex.float_guard`)
with ``guard=True``; radii rounded down (:func:`~asymcert.certify.functional.safe_radius`). Column k
equals member k's own :func:`~asymcert.certify.feature_convex.certify_feature_convex` certificate at
the same precision.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

import torch

from asymcert.certify.feature_convex import (
    Reference,
    _float64_copy,
    checked_slack,
    float_guard,
    guarded_lp_radii,
    overflow_risk,
    reference_error,
    score_and_feature_gradient,
)
from asymcert.certify.functional import dual_norm, safe_radius
from asymcert.certify.modes import check_precision, eval_mode
from asymcert.certify.result import Certificate, Guarantee, class_radii_key

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.one_vs_rest import OneVsRestConvex


@dataclass(frozen=True)
class OneVsRestOptions:
    """Options of :func:`certify_one_vs_rest` (see its arguments)."""

    precision: str = "float64"
    slack: float | None = None
    guard: bool = True
    validate: bool = True


def certify_one_vs_rest(
    model: OneVsRestConvex,
    x: torch.Tensor,
    norms: tuple[float, ...],
    precision: str = "float64",
    slack: float | None = None,
    guard: bool = True,
    validate: bool = True,
) -> Certificate:
    """Per-class sensitive-class certificates of a one-vs-rest feature-convex model (see the module doc).

    Args:
        model: a :class:`~asymcert.models.one_vs_rest.OneVsRestConvex`; every member's convexity is
            checked first unless ``validate=False``.
        x: (N, *input_shape) inputs in raw units.
        norms: ℓp norms (p ≥ 1).
        precision: ``"float64"`` (default: recomputed in float64) or ``"model"`` (the model's own
            dtype and device); both sound, as for
            :func:`~asymcert.certify.feature_convex.certify_feature_convex`.
        slack, guard: as there (``guard`` covers the rounding of the model's own float32 scores).
    Returns:
        Certificate with ``binary=False``; ``predicted`` (N,) = argmax_k s_k(x); ``radii[p]`` (N,)
        float64, raw input units: the radius within which the predicted class stays flagged (0 where
        it is not flagged). ``extra``: ``scores`` (N, K) s_k(x) (float32), ``flags`` (N, K) bool
        s_k(x) > 0, ``predicted_flagged`` (N,) bool, and per norm ``class_radii_<norm>`` (N, K)
        float64, the radius of every flagged class (0 where not flagged) — column k equals member
        k's own binary certificate.
    """
    if validate:
        model.validate()
    check_precision(precision)
    slack = checked_slack(model, precision, slack)
    with eval_mode(model), torch.no_grad():
        score = model(x)  # (N, K), the model's own decision values
    xs = x.double() if precision == "float64" else x
    ref_score, grad = score_and_feature_gradient(_float64_copy(model) if precision == "float64" else model, xs)
    flags = score > 0
    per_class: dict[float, list[torch.Tensor]] = {p: [] for p in norms}
    with eval_mode(model), torch.no_grad():
        for k, member in enumerate(model.member_models):
            s_k, feats = ref_score[:, k].double(), member.features(xs).detach()
            err = reference_error(member, feats, grad[:, k], s_k, precision)
            band = float_guard(member, feats, grad[:, k], s_k)
            margin = s_k - err - (band if guard else 0.0)
            keep = flags[:, k] & ~(overflow_risk(member, x, feats) & guard)  # (its float32 evaluation may overflow)
            margin = torch.where(keep, margin, torch.zeros_like(margin))
            radii_k = {
                p: safe_radius(margin, member.feature_lipschitz(p) * dual_norm(grad[:, k], p), slack) for p in norms
            }
            if guard:  # the deployed rounding along the ball, as for a binary model
                ref = Reference(s_k, err, grad[:, k], None, feats, None)
                radii_k = guarded_lp_radii(member, x, ref, margin, radii_k)
            for p in norms:
                per_class[p].append(radii_k[p])
    predicted = score.argmax(dim=1)
    class_radii = {p: torch.stack(r, dim=1) for p, r in per_class.items()}
    radii = {p: r.gather(1, predicted[:, None]).squeeze(1) for p, r in class_radii.items()}
    extra = {
        "scores": score.detach().float(),
        "flags": flags,
        "predicted_flagged": flags.gather(1, predicted[:, None]).squeeze(1),
        **{class_radii_key(p): r for p, r in class_radii.items()},
    }
    return Certificate(
        predicted=predicted,
        radii=radii,
        method="one-vs-rest-convex",
        guarantee=Guarantee.FLAG,
        binary=False,
        extra=extra,
    )


__all__ = ["certify_one_vs_rest", "class_radii_key"]
