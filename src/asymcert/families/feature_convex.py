"""The feature-convex family (Pfrommer et al. 2023): s(x) = g(φ(x)) + b, g input-convex, φ Lipschitz."""

from __future__ import annotations

from asymcert.certify.api import CertifierSpec
from asymcert.certify.feature_convex import FeatureConvexOptions, certify_feature_convex, max_batch
from asymcert.certify.result import Guarantee
from asymcert.certify.threat_model import feature_convex_threat
from asymcert.families.contract import CPU_EPOCHS, CompareScale, Family, MethodSpec
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.train.recipes import FeatureConvexRecipe

CERTIFIER = CertifierSpec(
    name="feature-convex",
    run=certify_feature_convex,
    threat_run=feature_convex_threat,
    options=FeatureConvexOptions,
    guarantees=frozenset({Guarantee.FLAG}),
    max_batch=max_batch,
    precision="auto: a float64 pass with proven rounding bounds where it applies, else float64 autograd; an "
    "absolute bound on the score's rounding is subtracted at every precision",
)


def compare_methods(scale: CompareScale) -> dict[str, MethodSpec]:
    """``convex``: the task's default feature-convex model and recipe (CPU-sized: 20 epochs)."""
    return {
        "convex": MethodSpec(
            family="feature-convex",
            label="feature-convex",
            model=None,
            train={} if scale.paper_scale else {"epochs": CPU_EPOCHS},
            certify={"method": "feature-convex"},
        )
    }


FAMILY = Family(
    kind="feature-convex",
    description="Lipschitz feature map φ, input-convex g: closed-form radii of the sensitive class",
    build=FeatureConvexClassifier.from_config,
    default_config={"feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [200, 50]}},
    recipe=FeatureConvexRecipe,
    certifiers=(CERTIFIER,),
    compare_methods=compare_methods,
)
