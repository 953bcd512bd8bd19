"""Randomized smoothing of a ReLU base classifier (Gaussian, Laplace, uniform; splitting noise)."""

from __future__ import annotations

from asymcert.certify.api import CertifierSpec
from asymcert.certify.result import Guarantee
from asymcert.certify.smoothing import (
    SmoothingOptions,
    SplittingOptions,
    certify_gaussian,
    certify_laplace,
    certify_splitting,
    certify_uniform,
)
from asymcert.families.contract import CPU_ADAM, CompareScale, Family, MethodSpec
from asymcert.models.baselines import SMOOTHING_DEFAULTS, SmoothingBaseNet
from asymcert.train.baseline_recipes import NoiseRecipe

_SAMPLED = "Monte Carlo counts with a Clopper-Pearson bound: holds with probability 1 − α"
CERTIFIERS = (
    CertifierSpec(
        "smoothing-gaussian", certify_gaussian, SmoothingOptions, frozenset({Guarantee.PROBABILISTIC}), _SAMPLED
    ),
    CertifierSpec(
        "smoothing-laplace", certify_laplace, SmoothingOptions, frozenset({Guarantee.PROBABILISTIC}), _SAMPLED
    ),
    CertifierSpec(
        "smoothing-uniform", certify_uniform, SmoothingOptions, frozenset({Guarantee.PROBABILISTIC}), _SAMPLED
    ),
    CertifierSpec(
        "smoothing-splitting",
        certify_splitting,
        SplittingOptions,
        frozenset({Guarantee.FLAG, Guarantee.DECISION}),
        "the exact probability from the base model at every cell of the splitting grid (float64)",
    ),
)

SMOOTHING_MLP = {"arch": "mlp", "widths": [256, 256]}
"""The base model in a CPU-sized comparison. It is evaluated N·(n0 + n) times (10.1 M for 1000
inputs): on a CPU an MLP (≈ 30 µs per noisy input, one thread) instead of the CNN (≈ 200 µs)."""


def compare_methods(scale: CompareScale) -> dict[str, MethodSpec]:
    """``smoothing`` (Gaussian) and ``smoothing-laplace|uniform|splitting``, σ = 0.75, α = 0.001."""
    n = 100_000 if scale.paper_scale else int(scale.n_smoothing)
    out = {}
    for noise in ("gaussian", "laplace", "uniform", "splitting"):
        name = "smoothing" if noise == "gaussian" else f"smoothing-{noise}"
        opts = {} if noise == "splitting" else {"n0": 100, "n": n, "alpha": 0.001, "seed": 0}
        model = {
            "kind": "relu-smoothing",
            **(scale.cnn_or(SMOOTHING_MLP) if scale.paper_scale else SMOOTHING_MLP),
            "smoothing": {"noise": noise, "sigma": 0.75, "n0": 100, "n": n, "alpha": 0.001, "seed": 0},
        }
        out[name] = MethodSpec(
            family="relu-smoothing",
            label=f"smoothing ({noise}, σ=0.75)",
            model=model,
            train={**CPU_ADAM, "epochs": scale.epochs(60)},
            certify={"method": f"smoothing-{noise}", **opts},
        )
    return out


FAMILY = Family(
    kind="relu-smoothing",
    description="a ReLU base classifier trained with noise, certified by randomized smoothing",
    build=SmoothingBaseNet.from_config,
    default_config={"arch": "mlp", "widths": [256, 256], "smoothing": dict(SMOOTHING_DEFAULTS)},
    recipe=NoiseRecipe,
    certifiers=CERTIFIERS,
    compare_methods=compare_methods,
)
