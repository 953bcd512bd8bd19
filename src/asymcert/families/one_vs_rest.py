"""One-vs-rest feature-convex models: K binary members, a sensitive-class certificate per class."""

from __future__ import annotations

from typing import Any

from asymcert.certify.api import CertifierSpec
from asymcert.certify.one_vs_rest import OneVsRestOptions, certify_one_vs_rest
from asymcert.certify.result import Guarantee
from asymcert.certify.threat_model import one_vs_rest_threat
from asymcert.families.contract import Family, TaskFacts
from asymcert.models.one_vs_rest import DEFAULT_CONFIG, OneVsRestConvex, task_model_settings
from asymcert.train.one_vs_rest import ONE_VS_REST_TRAIN_DEFAULTS, OneVsRestRecipe

CERTIFIER = CertifierSpec(
    name="one-vs-rest-convex",
    run=certify_one_vs_rest,
    threat_run=one_vs_rest_threat,
    options=OneVsRestOptions,
    guarantees=frozenset({Guarantee.FLAG}),
    precision="float64 autograd per member, minus an absolute bound on the score's rounding",
)


def model_settings(facts: TaskFacts) -> dict[str, Any]:
    """``{"num_classes": K}`` of the task."""
    return task_model_settings(facts.num_classes)


def train_defaults(facts: TaskFacts) -> dict[str, Any]:
    """The feature-convex paper's recipe, 8 epochs (see :data:`ONE_VS_REST_TRAIN_DEFAULTS`)."""
    return dict(ONE_VS_REST_TRAIN_DEFAULTS)


FAMILY = Family(
    kind="one-vs-rest-convex",
    description="K feature-convex members, one per class: certified radii for every class",
    build=OneVsRestConvex.from_config,
    default_config={k: v for k, v in DEFAULT_CONFIG.items() if k != "kind"},
    recipe=OneVsRestRecipe,
    certifiers=(CERTIFIER,),
    model_settings=model_settings,
    train_defaults=train_defaults,
)
