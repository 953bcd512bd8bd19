"""Plain ``torch.nn.Module`` layers: input-convex layers, Lipschitz feature maps, ℓ∞-dist layers."""

from typing import Any

from asymcert.nn.convex import (
    ICNN,
    ConvexConvNet,
    NonnegConv2d,
    NonnegLinear,
    PositiveBatchNorm,
    convexity_violations,
    project_,
)
from asymcert.nn.feature_maps import (
    Compose,
    ConcatAbs,
    FeatureMap,
    GroupMin,
    Hinges,
    Identity,
    Log1p,
    PairMin,
    Shift,
    Standardize,
    build_feature_map,
)

__all__ = [
    "ICNN",
    "Compose",
    "ConcatAbs",
    "ConvexConvNet",
    "FeatureMap",
    "GroupMin",
    "Hinges",
    "Identity",
    "Log1p",
    "NonnegConv2d",
    "NonnegLinear",
    "PairMin",
    "PositiveBatchNorm",
    "Shift",
    "Standardize",
    "build_feature_map",
    "convexity_violations",
    "project_",
]


def __getattr__(name: str) -> Any:  # ℓ∞-dist layers load on first use
    if name in ("LinfDist", "LinfDistConv2d"):
        from asymcert.nn import linf_dist

        return getattr(linf_dist, name)
    if name == "MeanShift":
        from asymcert.nn.mean_shift import MeanShift

        return MeanShift
    raise AttributeError(name)
