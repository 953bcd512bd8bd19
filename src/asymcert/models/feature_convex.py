"""Feature-convex classifiers: s(x) = g(φ(x)) + b, flagged sensitive when s(x) > 0."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Protocol, cast

import torch
from torch import nn

from asymcert.errors import ConfigError, ConvexityError
from asymcert.models.checks import check_batch, config_input_range
from asymcert.nn.convex import (
    ICNN,
    ConvexMean,
    all_finite,
    build_convex_net,
    convex_net_problems,
    convexity_violations,
    defining_class,
    override_problems,
    project_,
)
from asymcert.nn.feature_maps import (
    Compose,
    FeatureMap,
    build_feature_map,
    coordinate_slopes_step,
    feature_map_problems,
)


class _Configurable(Protocol):
    """A network that reports the JSON config rebuilding it (every convex net of ``build_convex_net``)."""

    def config(self) -> dict[str, Any]: ...


@dataclass(frozen=True)
class Monotone:
    """Input coordinates in which the score s is declared monotone (flat indices of one input).

    s is nondecreasing in every x_i, i ∈ ``increasing``, and nonincreasing in every x_i, i ∈
    ``decreasing``: then an attack that only raises the first (or only lowers the second) can never
    lower the score, nor remove a flag. Realised by a φ nondecreasing in those coordinates
    and sign constraints on g's pass-through weight columns reading their features (≥ 0 for
    increasing, ≤ 0 for decreasing); see :meth:`FeatureConvexClassifier.monotone_problems`.
    Config: ``{"increasing": [i, ...], "decreasing": [j, ...]}`` (either may be left out).
    """

    increasing: tuple[int, ...] = ()
    decreasing: tuple[int, ...] = ()

    def __bool__(self) -> bool:
        return bool(self.increasing or self.decreasing)

    @classmethod
    def from_config(cls, value: Any, n_inputs: int) -> Monotone:
        """Parse a model config's ``monotone`` value (None: no monotone coordinate) for inputs of ``n_inputs`` values.

        Raises:
            ConfigError: not such an object, an index that is not an integer in [0, n_inputs), or an
                index both increasing and decreasing (every problem in one message).
        """
        if value is None:
            return cls()
        example = '{"increasing": [0, 3], "decreasing": [5]}'
        if not isinstance(value, dict) or set(value) - {"increasing", "decreasing"}:
            raise ConfigError(f"feature-convex model config: monotone = {value!r} must be an object like {example}")
        lists = {key: value.get(key, []) for key in ("increasing", "decreasing")}
        for key, indices in lists.items():
            if not isinstance(indices, (list, tuple)) or any(
                isinstance(i, bool) or not isinstance(i, int) for i in indices
            ):
                raise ConfigError(
                    f"feature-convex model config: monotone.{key} = {indices!r} must be a list of input indices"
                )
        found = cls(tuple(sorted(set(lists["increasing"]))), tuple(sorted(set(lists["decreasing"]))))
        problems = found.problems(n_inputs)
        if problems:
            raise ConfigError("feature-convex model config: monotone: " + "; ".join(problems))
        return found

    def problems(self, n_inputs: int) -> list[str]:
        """Indices out of [0, n_inputs) and indices both increasing and decreasing (empty when none)."""
        problems = [
            f"{key} index {i} is not an input coordinate (0 to {n_inputs - 1})"
            for key, indices in (("increasing", self.increasing), ("decreasing", self.decreasing))
            for i in indices
            if not 0 <= i < n_inputs
        ]
        both = sorted(set(self.increasing) & set(self.decreasing))
        if both:
            problems.append(f"input coordinate(s) {both} are declared both increasing and decreasing")
        return problems

    def config(self) -> dict[str, list[int]]:
        """The JSON value :meth:`from_config` turns back into this declaration."""
        return {"increasing": list(self.increasing), "decreasing": list(self.decreasing)}

    def signs(self, n_inputs: int, n_per_input: int = 1) -> torch.Tensor:
        """(n_per_input·n_inputs,) float32 column signs: +1 on every feature k·n + i of an increasing
        coordinate i, −1 on those of a decreasing one, 0 elsewhere."""
        sign = torch.zeros(n_inputs, dtype=torch.float32, device="cpu")
        sign[list(self.increasing)] = 1.0
        sign[list(self.decreasing)] = -1.0
        return sign.repeat(n_per_input)


class FeatureConvexClassifier(nn.Module):
    """A Lipschitz feature map φ followed by an input-convex network g and a balance shift b.

    ``forward(x)`` takes (N, *input_shape) inputs in raw units and returns the (N,)
    sensitive-class scores s(x) = g(φ(x)) + b; s > 0 means "flagged sensitive".

    Args:
        feature_map: φ, with ``lipschitz(p)``.
        convex: g, an input-convex network returning (N,) scores.
        input_shape: shape of one input.
        input_range: (low, high) of valid raw inputs (e.g. (0, 1) for pixels), or None.
        monotone: input coordinates in which s must be nondecreasing / nonincreasing (:class:`Monotone`);
            needs an :class:`~asymcert.nn.ICNN` g and a φ nondecreasing in them. g's pass-through
            layers get the sign constraints (kept by :meth:`project`); ``model.monotone`` reports them.

    Raises:
        ConfigError: a monotone declaration that cannot be realised (bad indices, g not an ICNN, φ
            not nondecreasing in a declared coordinate: the message names the feature map step).

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
        monotone: Monotone | None = None,
    ) -> None:
        super().__init__()
        self.feature_map = feature_map
        self.convex = convex
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_range = None if input_range is None else (float(input_range[0]), float(input_range[1]))
        self.register_buffer("balance", torch.zeros(()))
        self.monotone = Monotone() if monotone is None else monotone
        if self.monotone:
            self._constrain_monotone()

    def _constrain_monotone(self) -> None:
        """Check that :attr:`monotone` can be realised and put its sign constraints on g's pass-through layers.

        The check on φ's slopes is skipped on a shape-only (meta) φ, whose values are unknown; the
        real model built next (and :meth:`validate`) checks them.
        """
        n = math.prod(self.input_shape)
        problems = self.monotone.problems(n)
        if not isinstance(self.convex, (ICNN, ConvexMean)):
            problems.append(
                f"needs an icnn convex network g or a mean of them (sign constraints on its pass-through "
                f"layers), got {type(self.convex).__name__}"
            )
        if not any(t.is_meta for t in self.feature_map.buffers()):
            problems += monotone_phi_problems(self.feature_map, n, self.monotone)
        if problems:
            raise ConfigError("feature-convex model config: monotone: " + "; ".join(problems))
        cast(ICNN | ConvexMean, self.convex).constrain_columns(self.feature_signs())

    def feature_signs(self) -> torch.Tensor:
        """(d,) float32 sign each flattened feature of φ must keep in g's pass-through columns (+1, −1, 0)."""
        n = math.prod(self.input_shape)
        per_input = math.prod(self.feature_map.out_shape(self.input_shape)) // n
        return self.monotone.signs(n, per_input)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> FeatureConvexClassifier:
        """Build from ``{"kind": "feature-convex", "input_shape", "feature_map", "convex", "input_range"}``
        and optionally ``"monotone": {"increasing": [...], "decreasing": [...]}`` (:class:`Monotone`)."""
        shape = tuple(config["input_shape"])
        rng = config_input_range(config.get("input_range"), "feature-convex")
        phi = build_feature_map(config.get("feature_map", [{"kind": "identity"}]), shape)
        if not isinstance(config["convex"], dict):
            raise ConfigError(
                f"feature-convex model config: convex = {config['convex']!r} must be a JSON object "
                'like {"kind": "icnn", "widths": [200, 50]}'
            )
        g = build_convex_net(config["convex"], phi.out_shape(shape))
        monotone = Monotone.from_config(config.get("monotone"), math.prod(shape))
        return cls(phi, g, shape, rng, monotone)

    def config(self) -> dict[str, Any]:
        """The JSON config that rebuilds this model's architecture (``monotone`` only when declared)."""
        config = {
            "kind": "feature-convex",
            "input_shape": list(self.input_shape),
            "input_range": None if self.input_range is None else list(self.input_range),
            "feature_map": self.feature_map.config(),
            "convex": cast(_Configurable, self.convex).config(),
        }
        if self.monotone:
            config["monotone"] = self.monotone.config()
        return config

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """φ(x): (N, *input_shape) → (N, *feature_shape)."""
        return self.feature_map(x)

    def score_from_features(self, f: torch.Tensor) -> torch.Tensor:
        """g(f) + b for features f: (N, *feature_shape) → (N,)."""
        return self.convex(f) + self.balance

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) floating inputs in raw units → (N,) scores; refuses other dtypes and shapes."""
        check_batch(x, self.input_shape, "this feature-convex model", self)
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
        with hooks or a replaced forward (:func:`override_problems`), no method the certificate
        relies on (:data:`CERTIFIED_METHODS`) overridden by a subclass, a declared :attr:`monotone`
        realised (:meth:`monotone_problems`), and one dtype for every parameter.
        """
        problems = [
            f"{type(self).__name__} overrides {name}(); the certificate assumes s(x) = g(φ(x)) + b"
            for name in CERTIFIED_METHODS
            if defining_class(type(self), name) is not FeatureConvexClassifier
        ]
        phi_problems = feature_map_problems(self.feature_map, "feature_map")
        problems += phi_problems + convex_net_problems(self.convex, "convex") + convexity_violations(self)
        problems += override_problems(self, "") + self.monotone_problems()
        dtypes = sorted({str(t.dtype) for t in self.parameters()})
        if len(dtypes) > 1:  # its own forward fails, and a certificate would be of a model that cannot run
            problems.append(f"parameters of several dtypes ({', '.join(dtypes)}); convert the whole model")
        problems += [
            f"{n}: contains NaN or Inf"
            for n, t in self.state_dict().items()
            if t.is_floating_point() and not all_finite(t) and not (phi_problems and n.startswith("feature_map."))
        ]  # φ reported its own
        return list(dict.fromkeys(problems))

    def monotone_problems(self) -> list[str]:
        """Why s may not be monotone in the declared coordinates (empty when it is, or none is declared).

        s = g(φ(x)) + b is nondecreasing in x_i when φ is nondecreasing in x_i (its slope intervals,
        :func:`~asymcert.nn.feature_maps.coordinate_slopes`, have lower ends ≥ 0 on every feature of
        x_i) and g is nondecreasing in those features: an :class:`~asymcert.nn.ICNN` (W_k ≥ 0, BN
        scales > 0, ReLU nondecreasing) whose every pass-through layer keeps column j ≥ 0 for each
        such feature j (≤ 0 for a decreasing coordinate). The weights' signs themselves are checked by
        :func:`~asymcert.nn.convex.convexity_violations` (naming the weight and its columns); here:
        the layers keep the declared signs, and φ's slopes.
        """
        if not self.monotone:
            return []
        n = math.prod(self.input_shape)
        problems = [f"monotone: {p}" for p in self.monotone.problems(n)]
        if problems:
            return problems
        if not isinstance(self.convex, (ICNN, ConvexMean)):
            return [f"monotone: needs an icnn convex network g or a mean of them, got {type(self.convex).__name__}"]
        want = self.feature_signs()
        for name, sign in zip(_passthrough_names(self.convex), self.convex.column_signs()):
            if (
                sign is None
                or tuple(sign.shape) != tuple(want.shape)
                or not torch.equal(sign.detach().to("cpu", torch.float32), want)
            ):
                problems.append(
                    f"{name}: does not keep the declared monotone column signs "
                    "(it must be a SignedLinear with the model's feature signs)"
                )
        return problems + [f"monotone: {p}" for p in monotone_phi_problems(self.feature_map, n, self.monotone)]

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


def _passthrough_names(g: ICNN | ConvexMean) -> list[str]:
    """The module paths of g's pass-through layers, in the order of ``g.column_signs()`` (a mean: its
    members' in turn; a member that is not an ICNN counts as one entry)."""
    if isinstance(g, ICNN):
        return [f"convex.passthrough.{k}" for k in range(len(g.passthrough))]
    return [
        f"convex.members.{i}.passthrough.{k}" if isinstance(m, ICNN) else f"convex.members.{i}"
        for i, m in enumerate(g.members)
        for k in range(len(m.passthrough) if isinstance(m, ICNN) else 1)
    ]


def monotone_phi_problems(phi: nn.Module, n_inputs: int, monotone: Monotone) -> list[str]:
    """Why ``phi`` may not be nondecreasing in every coordinate ``monotone`` declares (empty when it is).

    Walks φ's steps (:class:`~asymcert.nn.feature_maps.Compose`) and names the first one after which
    a declared coordinate has a feature whose slope interval reaches below 0 (or that is not
    coordinate-wise). Computed on the CPU in float64 from φ's current parameters.
    """
    steps = cast("list[nn.Module]", list(phi.maps)) if isinstance(phi, Compose) else [phi]
    coords = list(monotone.increasing) + list(monotone.decreasing)
    with torch.device("cpu"):
        lo = hi = torch.ones((1, n_inputs), dtype=torch.float64)
        for k, step in enumerate(steps):
            kind = getattr(step, "kind", "") or type(step).__name__
            bounds = coordinate_slopes_step(step, lo, hi)
            if bounds is None:
                return [
                    f"feature map step {k} ({kind}) is not coordinate-wise (declares no slope_bounds), so φ "
                    "is not known to be nondecreasing in the monotone coordinates"
                ]
            lo, hi = bounds
            bad = [i for i in coords if not bool((lo[:, i] >= 0).all())]
            if bad:
                return [
                    f"feature map step {k} ({kind}) is not nondecreasing in input coordinate(s) {bad[:10]}: "
                    "a monotone score needs a φ nondecreasing in every monotone coordinate (identity, shift, "
                    "log1p, standardize, hinges are; concat-abs is not)"
                ]
    return []
