"""One-vs-rest feature-convex classifiers for K classes (issue #8, "many classes").

K binary feature-convex members, member k trained "class k (sensitive) vs every other class"::

    s_k(x) = g_k(φ_k(x)) + b_k,        k = 0 … K−1,   g_k input-convex, φ_k Lipschitz

``forward(x)`` returns the (N, K) scores; s_k(x) > 0 means "flagged as class k". Several classes
(or none) may be flagged at once. The decision rule and what is certified live in
:mod:`asymcert.certify.one_vs_rest` (certifier ``"one-vs-rest-convex"``): the prediction is
argmax_k s_k(x), and the certificate of the predicted class k is member k's own sensitive-class
certificate — the radius within which s_k stays > 0 (the input stays *flagged as k*). It is not
a certificate that the argmax stays k: convexity gives a lower bound on s_k near x but no upper
bound on the other scores.

Config (``build_model``)::

    {"kind": "one-vs-rest-convex", "input_shape": [1, 28, 28], "input_range": [0, 1],
     "num_classes": 10, "feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [200, 50]}}

``feature_map`` and ``convex`` are those of a ``"feature-convex"`` model; every member gets the same
architecture (its own weights, feature-map statistics and balance shift b_k). Checkpoints hold the
members' weights under ``members.<k>.…`` (safetensors, through :func:`asymcert.save`/``load``).
"""

from __future__ import annotations

from typing import Any, cast

import torch
from torch import nn

from asymcert.errors import ConfigError, ConvexityError
from asymcert.models.checks import check_batch, config_input_range, config_int
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.nn.convex import defining_class, override_problems

MEMBER_METHODS = ("forward", "features", "score_from_features", "member_feature_lipschitz")
"""Methods the certificate relies on; a subclass that overrides one is refused."""

DEFAULT_CONFIG: dict[str, Any] = {
    "kind": "one-vs-rest-convex",
    "feature_map": [{"kind": "shift"}],
    "convex": {"kind": "icnn", "widths": [200, 50]},
}
"""What ``--model one-vs-rest-convex`` selects: ICNN MLP members 200-50 on φ(x) = x − μ (the authors'
MNIST architecture); ``num_classes`` comes from the task."""

_MEMBER_KEYS = ("feature_map", "convex")


def task_model_settings(num_classes: int) -> dict[str, Any]:
    """The model keys a run adds for a task with ``num_classes`` labels: ``{"num_classes": K}``."""
    return {"num_classes": int(num_classes)}


class OneVsRestConvex(nn.Module):
    """K feature-convex members, one per class; ``forward`` returns (N, K) scores s_k(x).

    Args:
        members: the K ≥ 2 binary members (member k: class k is its sensitive class), all with the
            same ``input_shape``.
        input_range: (low, high) of valid raw inputs, or None (default: the members').

    Example:
        >>> from asymcert.models import build_model
        >>> m = build_model({"kind": "one-vs-rest-convex", "input_shape": [1, 6, 6], "num_classes": 3,
        ...                  "feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [8]}})
        >>> m(torch.rand(5, 1, 6, 6)).shape
        torch.Size([5, 3])
    """

    certifier = "one-vs-rest-convex"
    binary = False

    def __init__(self, members: list[FeatureConvexClassifier], input_range: tuple[float, float] | None = None) -> None:
        super().__init__()
        if len(members) < 2:
            raise ValueError(f"a one-vs-rest model needs at least 2 members (classes), got {len(members)}")
        shapes = {tuple(m.input_shape) for m in members}
        if len(shapes) != 1:
            raise ValueError(f"every member must take the same input shape, got {sorted(shapes)}")
        self.members = nn.ModuleList(members)
        self.input_shape = tuple(members[0].input_shape)
        rng = input_range if input_range is not None else members[0].input_range
        self.input_range = None if rng is None else (float(rng[0]), float(rng[1]))

    @property
    def member_models(self) -> list[FeatureConvexClassifier]:
        """The members as a typed list (``members`` is the ModuleList of them that ``__init__`` built)."""
        return cast("list[FeatureConvexClassifier]", list(self.members))

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OneVsRestConvex:
        """Build from ``{"kind": "one-vs-rest-convex", "input_shape", "num_classes", "feature_map", "convex", ...}``.

        Keys of other model families (left over from a task's default model) are ignored.
        """
        if "input_shape" not in config:
            raise ConfigError("a one-vs-rest-convex config needs 'input_shape'")
        k = config_int(config.get("num_classes", 10), "num_classes", "one-vs-rest-convex", lowest=2)
        rng = config_input_range(config.get("input_range"), "one-vs-rest-convex")
        member = {
            "kind": "feature-convex",
            "input_shape": list(config["input_shape"]),
            "input_range": rng,
            **{key: config.get(key, DEFAULT_CONFIG[key]) for key in _MEMBER_KEYS},
        }
        return cls([FeatureConvexClassifier.from_config(member) for _ in range(k)], rng)

    def config(self) -> dict[str, Any]:
        """The JSON config that rebuilds this model's architecture."""
        first = self.member_models[0].config()
        return {
            "kind": "one-vs-rest-convex",
            "input_shape": list(self.input_shape),
            "input_range": None if self.input_range is None else list(self.input_range),
            "num_classes": self.num_classes,
            "feature_map": first["feature_map"],
            "convex": first["convex"],
        }

    @property
    def num_classes(self) -> int:
        """K, the number of classes (= members)."""
        return len(self.members)

    # ------------------------------------------------------------------ forward passes

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Every member's features, stacked: (N, *input_shape) → (N, K, *feature_shape).

        When all members share one feature map (the same statistics, as after training on one
        split) φ(x) is computed once and broadcast.
        """
        if self._shared_feature_map():
            f = self.member_models[0].features(x)
            return f.unsqueeze(1).expand(f.shape[0], self.num_classes, *f.shape[1:])
        return torch.stack([m.features(x) for m in self.member_models], dim=1)

    def score_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """Scores from stacked features: (N, K, *feature_shape) → (N, K), s_k = g_k(f[:, k]) + b_k.

        s_k depends only on f[:, k], so the gradient of the summed scores w.r.t. ``f`` holds every
        member's own feature gradient (one backward pass for all K certificates).
        """
        return torch.stack([m.score_from_features(f[:, k]) for k, m in enumerate(self.member_models)], dim=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) raw inputs → (N, K) scores s_k(x); s_k > 0 ⇔ flagged as class k."""
        check_batch(x, self.input_shape, "this one-vs-rest model", self)
        return self.score_from_features(self.features(x))

    def _shared_feature_map(self) -> bool:
        """True when every member's φ has the same config and bit-identical statistics."""
        first = self.member_models[0].feature_map
        cfg = first.config()
        state = first.state_dict()
        for m in self.member_models[1:]:
            if m.feature_map.config() != cfg:
                return False
            other = m.feature_map.state_dict()
            if other.keys() != state.keys() or any(
                other[k].dtype != v.dtype or not torch.equal(other[k], v) for k, v in state.items()
            ):
                return False
        return True

    # ------------------------------------------------------------------ constraints

    def member_feature_lipschitz(self, p: float) -> list[float]:
        """Per member, the ℓp Lipschitz constant of its feature map φ_k (K floats)."""
        return [m.feature_lipschitz(p) for m in self.member_models]

    def project(self) -> None:
        """Clamp every member's convexity-constrained weights (call after each optimizer step)."""
        for m in self.member_models:
            m.project()

    def problems(self) -> list[str]:
        """Every member's :meth:`FeatureConvexClassifier.problems`, prefixed ``member k``; a member that is
        not a FeatureConvexClassifier, hooks on the model or its member list, or an overridden method
        the certificate relies on."""
        problems = [
            f"{type(self).__name__} overrides {name}(); the certificate assumes s_k(x) = g_k(φ_k(x)) + b_k"
            for name in MEMBER_METHODS
            if defining_class(type(self), name) is not OneVsRestConvex
        ]
        problems += override_problems(self, "", recurse=False) + override_problems(self.members, "members", False)
        for k, m in enumerate(self.members):
            if not isinstance(m, FeatureConvexClassifier):
                problems.append(f"member {k} (class {k}): {type(m).__name__} is not a FeatureConvexClassifier")
            else:
                problems += [f"member {k} (class {k}): {p}" for p in m.problems()]
        return problems

    def validate(self) -> None:
        """Raise :class:`ConvexityError` listing every problem of every member (one line)."""
        problems = self.problems()
        if problems:
            raise ConvexityError(
                "one-vs-rest model cannot be vouched for, its certificates would be unsound: " + "; ".join(problems)
            )

    def set_balance(self, b: torch.Tensor | list[float]) -> None:
        """Set every member's class-balance shift: ``b`` holds K floats."""
        values = [float(v) for v in (b.tolist() if isinstance(b, torch.Tensor) else b)]
        if len(values) != self.num_classes:
            raise ValueError(f"need {self.num_classes} balance shifts, got {len(values)}")
        for m, v in zip(self.member_models, values):
            m.set_balance(v)

    def extra_repr(self) -> str:
        return f"num_classes={self.num_classes}, input_shape={self.input_shape}"


__all__ = ["DEFAULT_CONFIG", "OneVsRestConvex", "task_model_settings"]
