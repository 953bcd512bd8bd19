"""Lipschitz feature maps φ that carry their Lipschitz constant for every ℓp norm.

A feature map is a plain ``nn.Module`` with ``lipschitz(p)``: a constant L with
‖φ(x) − φ(x')‖_p ≤ L‖x − x'‖_p for all x, x'. Statistics (means, scales) live in buffers,
so they travel with the weights; ``fit(x)`` sets them from training inputs.
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from asymcert.errors import UnknownNameError


class FeatureMap(nn.Module):
    """Base class: a map (N, *in_shape) → (N, *out_shape) with a known Lipschitz constant per norm."""

    kind: str = ""

    def lipschitz(self, p: float) -> float:
        """Lipschitz constant of the map from (ℓp, input) to (ℓp, features)."""
        raise NotImplementedError

    def fit(self, x: torch.Tensor) -> "FeatureMap":
        """Set data statistics from training inputs ``x`` (N, *in_shape). Default: nothing to fit."""
        return self

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        """Shape of one feature vector for one input of shape ``in_shape``."""
        return tuple(in_shape)

    def affine(self) -> bool:
        """True when φ(x) = A x + c (exact radii are linear/conic programs then)."""
        return False

    def config(self) -> dict[str, Any]:
        """JSON-serialisable description that :func:`build_feature_map` turns back into this map."""
        return {"kind": self.kind}


class Identity(FeatureMap):
    """φ(x) = x. Lipschitz 1 in every norm."""

    kind = "identity"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def lipschitz(self, p: float) -> float:
        return 1.0

    def affine(self) -> bool:
        return True


class Shift(FeatureMap):
    """φ(x) = x − μ with μ the mean training input (elementwise). Lipschitz 1 in every norm.

    Args:
        in_shape: shape of one input.
    """

    kind = "shift"

    def __init__(self, in_shape: tuple[int, ...]) -> None:
        super().__init__()
        self.register_buffer("mean", torch.zeros(in_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x - self.mean

    def fit(self, x: torch.Tensor) -> "Shift":
        self.mean.copy_(x.mean(dim=0).to(self.mean))
        return self

    def lipschitz(self, p: float) -> float:
        return 1.0

    def affine(self) -> bool:
        return True


class Standardize(FeatureMap):
    """φ(x) = (x − μ) / σ per feature (tabular data). Lipschitz max_i 1/σ_i in every ℓp norm.

    The scaling is part of the model, so certified radii stay in the user's raw feature units.
    σ_i below ``min_scale`` (constant features) is raised to it.
    """

    kind = "standardize"

    def __init__(self, in_shape: tuple[int, ...], min_scale: float = 1e-6) -> None:
        super().__init__()
        self.min_scale = float(min_scale)
        self.register_buffer("mean", torch.zeros(in_shape))
        self.register_buffer("scale", torch.ones(in_shape))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.scale

    def fit(self, x: torch.Tensor) -> "Standardize":
        self.mean.copy_(x.mean(dim=0).to(self.mean))
        self.scale.copy_(x.std(dim=0).clamp_min(self.min_scale).to(self.scale))
        return self

    def lipschitz(self, p: float) -> float:
        # ‖D d‖_p ≤ max|D_ii| ‖d‖_p; round up so the constant is never underestimated.
        return math.nextafter(float((1.0 / self.scale.double()).max()), math.inf)

    def affine(self) -> bool:
        return True

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "min_scale": self.min_scale}


class ConcatAbs(FeatureMap):
    """φ(x) = concat(x, |x|) along dim 1 (channels). Lipschitz 2^{1/p}: ℓ1 2, ℓ2 √2, ℓ∞ 1.

    Because | |a| − |b| | ≤ |a − b| elementwise, ‖φ(x) − φ(x')‖_p^p ≤ 2‖x − x'‖_p^p.
    """

    kind = "concat-abs"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.abs()], dim=1)

    def lipschitz(self, p: float) -> float:
        return 1.0 if math.isinf(p) else math.nextafter(2.0 ** (1.0 / p), math.inf)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (2 * in_shape[0],) + tuple(in_shape[1:])


class Compose(FeatureMap):
    """φ = φ_k ∘ … ∘ φ_1. Lipschitz constant: the product (rounded up)."""

    kind = "compose"

    def __init__(self, maps: list[FeatureMap]) -> None:
        super().__init__()
        self.maps = nn.ModuleList(maps)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for m in self.maps:
            x = m(x)
        return x

    def fit(self, x: torch.Tensor) -> "Compose":
        with torch.no_grad():
            for m in self.maps:
                m.fit(x)
                x = m(x)
        return self

    def lipschitz(self, p: float) -> float:
        lip = 1.0
        for m in self.maps:
            step = m.lipschitz(p)
            if step != 1.0:  # exact products need no rounding
                lip = math.nextafter(lip * step, math.inf)
        return lip

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        for m in self.maps:
            in_shape = m.out_shape(in_shape)
        return in_shape

    def affine(self) -> bool:
        return all(m.affine() for m in self.maps)

    def config(self) -> list[dict[str, Any]]:  # type: ignore[override]
        return [m.config() for m in self.maps]


FEATURE_MAPS: dict[str, type[FeatureMap]] = {c.kind: c for c in (Identity, Shift, Standardize, ConcatAbs)}


def build_feature_map(config: list[dict[str, Any]] | dict[str, Any], in_shape: tuple[int, ...]) -> Compose:
    """Build φ from its config: a list of ``{"kind": ...}`` steps applied in order.

    Raises:
        UnknownNameError: a step's kind is unknown.
    """
    steps = [config] if isinstance(config, dict) else list(config)
    maps: list[FeatureMap] = []
    shape = tuple(in_shape)
    for step in steps:
        step = dict(step)
        kind = step.pop("kind", None)
        if kind not in FEATURE_MAPS:
            raise UnknownNameError(f"unknown feature map {kind!r}; known: {', '.join(sorted(FEATURE_MAPS))}")
        cls = FEATURE_MAPS[kind]
        m = cls(shape, **step) if kind in ("shift", "standardize") else cls(**step)
        maps.append(m)
        shape = m.out_shape(shape)
    return Compose(maps)
