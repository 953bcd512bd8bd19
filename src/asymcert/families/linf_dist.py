"""ℓ∞-distance nets (Zhang et al. 2021/2022): 1-Lipschitz in ℓ∞ by construction, margin/2 radii."""

from __future__ import annotations

from typing import Any

from asymcert.certify.api import CertifierSpec
from asymcert.certify.linf_dist import LinfDistOptions, certify_linf_dist
from asymcert.certify.result import Guarantee
from asymcert.families.contract import CompareScale, Family, MethodSpec, TaskFacts
from asymcert.models.linf_dist_net import DEFAULT_CONFIG, LinfDistNet, task_model_settings
from asymcert.train.linf_recipe import LINF_TRAIN_DEFAULTS, LinfDistRecipe

CERTIFIER = CertifierSpec(
    name="linf-dist",
    run=certify_linf_dist,
    options=LinfDistOptions,
    guarantees=frozenset({Guarantee.FLAG, Guarantee.DECISION}),
    precision="float64 margins with an absolute rounding allowance; the model's own float decision is checked",
)


def model_settings(facts: TaskFacts) -> dict[str, Any]:
    """``{"num_classes", "binary"}`` of the task."""
    return task_model_settings(facts.binary, facts.num_classes)


def _defaults() -> dict[str, Any]:
    """A deep-enough copy of :data:`LINF_TRAIN_DEFAULTS` (its ``extra`` is a dict of its own)."""
    return {**LINF_TRAIN_DEFAULTS, "extra": dict(LINF_TRAIN_DEFAULTS.get("extra") or {})}


def train_defaults(facts: TaskFacts) -> dict[str, Any]:
    """The recipe's defaults; on a binary task, validated at its largest raw-unit ℓ∞ report radius (trained at
    2.5×). The recipe trains and validates on raw-unit ℓ∞ balls, also for a run under a threat model (whose radii it
    gets from the generic fallback, R / the largest movable scale), so the raw-unit radius is the one in its units
    (audit units31 F3: the run's reports are in the threat model's)."""
    out = _defaults()
    eps = facts.largest_linf_radius
    if facts.binary and eps:
        out["extra"] = {**out["extra"], "eps_eval": eps, "eps_train": 2.5 * eps}
    return out


def compare_methods(scale: CompareScale) -> dict[str, MethodSpec]:
    """``linf-dist``: 4 × 512 on a CPU (paper: 5 × 5120, 450 epochs)."""
    base = _defaults()
    if scale.paper_scale:
        train = {**base, "epochs": 450}  # the MNIST/Fashion schedule of the paper
    else:  # short runs need a larger CE weight λ (see asymcert.train.linf_recipe): λ 0.5 → 0.005, ε_train 0.15
        train = {
            **base,
            "epochs": scale.epochs(450),
            "extra": {**base["extra"], "lambda": [0.5, 0.005], "eps_train": 0.15},
        }
    model = {"kind": "linf-dist", "widths": [5120] * 5 if scale.paper_scale else [512] * 4}
    return {"linf-dist": MethodSpec(family="linf-dist", label="ℓ∞-dist net", model=model, train=train, certify={})}


FAMILY = Family(
    kind="linf-dist",
    description="ℓ∞-distance net: 1-Lipschitz in ℓ∞, radius = margin / 2",
    build=LinfDistNet.from_config,
    default_config={k: v for k, v in DEFAULT_CONFIG.items() if k != "kind"},
    recipe=LinfDistRecipe,
    certifiers=(CERTIFIER,),
    model_settings=model_settings,
    train_defaults=train_defaults,
    compare_methods=compare_methods,
)
