"""Feature-convex classifiers: s(x) = g(φ(x)) + b, flagged sensitive when s(x) > 0."""

from __future__ import annotations

from typing import Any, Protocol, cast

import torch
from torch import nn

from asymcert.errors import ConfigError, ConvexityError
from asymcert.models.checks import check_batch, config_input_range
from asymcert.nn.convex import (
    build_convex_net,
    convex_net_problems,
    convexity_violations,
    defining_class,
    override_problems,
    project_,
)
from asymcert.nn.feature_maps import FeatureMap, build_feature_map, feature_map_problems


class _Configurable(Protocol):
    """A network that reports the JSON config rebuilding it (every convex net of ``build_convex_net``)."""

    def config(self) -> dict[str, Any]: ...


class FeatureConvexClassifier(nn.Module):
    """A Lipschitz feature map φ followed by an input-convex network g and a balance shift b.

    ``forward(x)`` takes (N, *input_shape) inputs in raw units and returns the (N,)
    sensitive-class scores s(x) = g(φ(x)) + b; s > 0 means "flagged sensitive".

    Args:
        feature_map: φ, with ``lipschitz(p)``.
        convex: g, an input-convex network returning (N,) scores.
        input_shape: shape of one input.
        input_range: (low, high) of valid raw inputs (e.g. (0, 1) for pixels), or None.

    Example:
        >>> from asymcert.models import build_model
        >>> m = build_model({"kind": "feature-convex", "input_shape": [1, 28, 28],
        ...     "feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [16]}})
        >>> m(torch.rand(5, 1, 28, 28)).shape
        torch.Size([5])
    """

    certifier = "feature-convex"
    binary = True
    balance: torch.Tensor

    def __init__(
        self,
        feature_map: FeatureMap,
        convex: nn.Module,
        input_shape: tuple[int, ...],
        input_range: tuple[float, float] | None = None,
    ) -> None:
        super().__init__()
        self.feature_map = feature_map
        self.convex = convex
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_range = None if input_range is None else (float(input_range[0]), float(input_range[1]))
        self.register_buffer("balance", torch.zeros(()))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FeatureConvexClassifier:
        """Build from ``{"kind": "feature-convex", "input_shape", "feature_map", "convex", "input_range"}``."""
        shape = tuple(config["input_shape"])
        rng = config_input_range(config.get("input_range"), "feature-convex")
        phi = build_feature_map(config.get("feature_map", [{"kind": "identity"}]), shape)
        if not isinstance(config["convex"], dict):
            raise ConfigError(
                f"feature-convex model config: convex = {config['convex']!r} must be a JSON object "
                'like {"kind": "icnn", "widths": [200, 50]}'
            )
        g = build_convex_net(config["convex"], phi.out_shape(shape))
        return cls(phi, g, shape, rng)

    def config(self) -> dict[str, Any]:
        """The JSON config that rebuilds this model's architecture."""
        return {
            "kind": "feature-convex",
            "input_shape": list(self.input_shape),
            "input_range": None if self.input_range is None else list(self.input_range),
            "feature_map": self.feature_map.config(),
            "convex": cast(_Configurable, self.convex).config(),
        }

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): (N, *input_shape) → (N, *feature_shape)."""
        return self.feature_map(x)

    def score_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """g(f) + b for features f: (N, *feature_shape) → (N,)."""
        return self.convex(f) + self.balance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) floating inputs in raw units → (N,) scores; refuses other dtypes and shapes."""
        check_batch(x, self.input_shape, "this feature-convex model")
        return self.score_from_features(self.features(x))

    def feature_lipschitz(self, p: float) -> float:
        """Lipschitz constant of φ in ℓp."""
        return self.feature_map.lipschitz(p)

    def project(self) -> None:
        """Clamp every convexity-constrained weight to its bound (call after each optimizer step)."""
        project_(self)

    def problems(self) -> list[str]:
        """Every reason this model's certificates could be unsound (empty when it can be vouched for).

        φ must be an accepted feature map with valid parameters (:func:`feature_map_problems`), g an
        allowlisted input-convex network or one declaring its own contract (:func:`convex_net_problems`),
        every constrained weight within its bound, every weight, statistic and b finite, no module
        with hooks or a replaced forward (:func:`override_problems`), and no method the certificate
        relies on (:data:`CERTIFIED_METHODS`) overridden by a subclass.
        """
        problems = [
            f"{type(self).__name__} overrides {name}(); the certificate assumes s(x) = g(φ(x)) + b"
            for name in CERTIFIED_METHODS
            if defining_class(type(self), name) is not FeatureConvexClassifier
        ]
        phi_problems = feature_map_problems(self.feature_map, "feature_map")
        problems += phi_problems + convex_net_problems(self.convex, "convex") + convexity_violations(self)
        problems += override_problems(self, "")
        problems += [
            f"{n}: contains NaN or Inf"
            for n, t in self.state_dict().items()
            if t.is_floating_point()
            and not bool(torch.isfinite(t).all())
            and not (phi_problems and n.startswith("feature_map."))
        ]  # φ reported its own
        return list(dict.fromkeys(problems))

    def validate(self) -> None:
        """Raise :class:`ConvexityError` listing every problem of :meth:`problems` (one line)."""
        problems = self.problems()
        if problems:
            raise ConvexityError(
                "model cannot be vouched for, its certificates would be unsound: " + "; ".join(problems)
            )

    def set_balance(self, b: float) -> None:
        """Set the class-balance shift b (added to g)."""
        self.balance.fill_(float(b))


CERTIFIED_METHODS = ("forward", "features", "score_from_features", "feature_lipschitz")
"""The methods of :class:`FeatureConvexClassifier` the certificate relies on; a subclass overriding one
is refused by :meth:`FeatureConvexClassifier.problems`."""
