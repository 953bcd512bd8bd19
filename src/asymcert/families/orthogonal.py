"""1-Lipschitz (ℓ2) nets of orthogonal (Cayley) layers: radius = score / Lipschitz constant."""

from __future__ import annotations

from asymcert.certify.api import CertifierSpec
from asymcert.certify.orthogonal import OrthogonalOptions, certify_orthogonal
from asymcert.certify.result import Guarantee
from asymcert.families.contract import CPU_ADAM, CompareScale, Family, MethodSpec
from asymcert.models.baselines import OrthogonalNet
from asymcert.train.baseline_recipes import OrthogonalRecipe

CERTIFIER = CertifierSpec(
    name="orthogonal",
    run=certify_orthogonal,
    options=OrthogonalOptions,
    guarantees=frozenset({Guarantee.FLAG}),
    precision="float64 scores with an absolute rounding allowance; the Lipschitz constant rounded up",
)


def compare_methods(scale: CompareScale) -> dict[str, MethodSpec]:
    """``orthogonal``: an MLP 3 × 256 of Cayley layers, hinge margin 0.5."""
    train = {**CPU_ADAM, "extra": {"margin": 0.5, "temperature": 8.0}, "epochs": scale.epochs(60)}
    return {
        "orthogonal": MethodSpec(
            family="orthogonal",
            label="orthogonal (Cayley)",
            model={"kind": "orthogonal", "arch": "mlp", "widths": [256] * 3},
            train=train,
            certify={"method": "orthogonal"},
        )
    }


FAMILY = Family(
    kind="orthogonal",
    description="1-Lipschitz ℓ2 net of orthogonal layers: radius = score / L",
    build=OrthogonalNet.from_config,
    default_config={"arch": "mlp", "widths": [256, 256, 256]},
    recipe=OrthogonalRecipe,
    certifiers=(CERTIFIER,),
    compare_methods=compare_methods,
)
