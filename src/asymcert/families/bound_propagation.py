"""ReLU nets trained with IBP or CROWN-IBP and certified by bound propagation (bisection on ε)."""

from __future__ import annotations

from asymcert.certify.api import CertifierSpec
from asymcert.certify.bound_propagation import BoundPropagationOptions, certify_crown, certify_crown_ibp, certify_ibp
from asymcert.certify.result import Guarantee
from asymcert.families.contract import CPU_ADAM, CompareScale, Family, MethodSpec
from asymcert.models.baselines import BoundPropagationNet
from asymcert.train.baseline_recipes import BoundPropagationRecipe

IBP_MLP = {"arch": "mlp", "widths": [256, 256]}
"""The compared IBP nets' architecture on flat feature vectors (the family's default)."""
_POLICY = "bounds propagated in float64 (default) with an absolute rounding allowance; largest ε verified by bisection"
CERTIFIERS = tuple(
    CertifierSpec(name, fn, BoundPropagationOptions, frozenset({Guarantee.FLAG}), _POLICY)
    for name, fn in (("ibp", certify_ibp), ("crown-ibp", certify_crown_ibp), ("crown", certify_crown))
)


def compare_methods(scale: CompareScale) -> dict[str, MethodSpec]:
    """``ibp`` and ``crown-ibp``: a small CNN (an MLP 256-256 on flat feature vectors) trained with that bound at
    ℓ∞ ε = 0.1, certified by CROWN-IBP."""
    out = {}
    for bound in ("ibp", "crown-ibp"):
        train = {
            **CPU_ADAM,
            "lr": 5e-4,
            "epochs": scale.epochs(60),
            "extra": {"eps": 0.1, "norm": "inf", "bound": bound, "warmup": 0.1, "ramp_end": 0.6, "kappa_end": 0.5},
        }
        out[bound] = MethodSpec(
            family="relu-ibp",
            label=f"{bound.upper()}-trained {'CNN' if scale.images else 'MLP'}",
            model={"kind": "relu-ibp", **scale.cnn_or(IBP_MLP), "certifier": "crown-ibp"},
            train=train,
            certify={"method": "crown-ibp"},
        )
    return out


FAMILY = Family(
    kind="relu-ibp",
    description="a ReLU net trained with IBP / CROWN-IBP, certified by bound propagation",
    build=BoundPropagationNet.from_config,
    default_config={"arch": "mlp", "widths": [256, 256], "certifier": "crown-ibp"},
    recipe=BoundPropagationRecipe,
    certifiers=CERTIFIERS,
    compare_methods=compare_methods,
)
