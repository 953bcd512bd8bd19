"""ℓ∞-distance nets (Zhang et al. 2021/2022) as asymcert models, optionally with an MLP head.

Architecture (``build_model({"kind": "linf-dist", ...})``)::

    z₀ = (x − μ_c) / σ          per-channel mean μ_c, ONE scalar σ (an ℓ∞ ball stays an ℓ∞ ball)
    z_k = MeanShift(LinfDist(z_{k−1}))          one per entry of ``widths`` (hidden layers)
    g = −(LinfDist(z_L) + b)                     output layer: K logits          (plain net)
    g = W₂ tanh(W₁ z_L + b₁) + b₂                two-layer head, h = ``mlp_head``  ("+MLP")

At p = ∞ every hidden layer is 1-Lipschitz in ℓ∞ (MeanShift is a translation in eval mode), so
each logit of the plain net is 1-Lipschitz in ℓ∞ in normalised units and σ⁻¹-Lipschitz in raw
units: the certified radius is σ·margin/2 (certifier ``"linf-dist"``). The +MLP variant is
certified by interval bound propagation through the head.

Config keys: ``input_shape``, ``input_range``, ``widths`` (hidden widths; the paper's "5-layer"
net is 4 hidden layers + the output layer), ``num_classes`` K (default 10; 2 for a binary task),
``mlp_head`` (None or h), ``identity_init`` (True: w[i, i mod in] = −10 in every distance layer
with in ≤ out, as in the authors' code), ``binary`` (a binary sensitive-class model). Keys of
other model families (e.g. left over when a task's default model is feature-convex) are ignored.

Binary models (``binary=True``, K = 2, class 1 sensitive) return the sensitive-class score
s(x) = g₁(x) − g₀(x) of shape (N,) from ``forward`` — the contract of the feature-convex models,
s > 0 ⇔ flagged sensitive. Multiclass models return the logits (N, K). ``logits(x)`` always
returns (N, K).
"""

from __future__ import annotations

import itertools
import math
from typing import Any, cast

import torch
from torch import nn

from asymcert.errors import ConfigError, ModelError
from asymcert.models.checks import check_batch, config_input_range, config_int, config_int_list
from asymcert.nn.convex import all_finite, defining_class, override_problems, type_problems
from asymcert.nn.linf_dist import LinfDist
from asymcert.nn.mean_shift import MeanShift

INF = math.inf
IDENTITY_VALUE = 10.0
TEMPERATURE_RATIO = 0.2
"""The learned CE scale is s = 0.2·``temperature``: Adam moves a parameter by about lr per step
whatever its gradient scale, so s moves by 0.2·lr (the authors' scalar lr 0.006 = 0.2 × 0.03)."""

DEFAULT_CONFIG: dict[str, Any] = {"kind": "linf-dist", "widths": [1024] * 4, "mlp_head": None, "identity_init": True}
"""What ``--model linf-dist`` selects: 4 hidden layers of 1024 + the output layer (the paper's
"5-layer" depth at 1/5 of its width 5120, sized for CPUs). ``num_classes``/``binary`` come from
the task (see :func:`task_model_settings`)."""

CERTIFIED_METHODS = (
    "forward",
    "normalize",
    "features",
    "features_and_distances",
    "logits_from_features",
    "logits",
    "lipschitz",
    "distance_layers",
)
"""The methods the ℓ∞-dist certificate calls or assumes: a subclass overriding one is refused."""

_KEYS = ("kind", "input_shape", "input_range", "widths", "num_classes", "mlp_head", "identity_init", "binary")


def task_model_settings(binary_task: bool, num_classes: int) -> dict[str, Any]:
    """The model keys a run must add for a task: ``{"num_classes": K, "binary": bool}``.

    Args:
        binary_task: the task is a binary sensitive-class task (labels 1 = sensitive, 0 = other).
        num_classes: number of labels of the task's data.
    """
    return {"num_classes": 2 if binary_task else int(num_classes), "binary": bool(binary_task)}


class LinfDistNet(nn.Module):
    """An ℓ∞-distance net (optionally "+MLP") on raw inputs; see the module docstring.

    Args:
        input_shape: shape of one raw input, e.g. (1, 28, 28).
        widths: hidden widths (one LinfDist + MeanShift each), at least one.
        num_classes: K ≥ 2.
        input_range: (low, high) of valid raw inputs, or None.
        mlp_head: hidden size h of the Linear → tanh → Linear head, or None (plain net).
        identity_init: identity initialisation of the distance layers.
        binary: binary sensitive-class model (needs K = 2; ``forward`` returns (N,) scores).

    Buffers ``input_mean`` (C,) and ``input_std`` () hold the normalisation (raw units), set by
    :meth:`fit_input`; ``temperature`` is the learned CE scale's parameter (not used by
    ``forward`` or the certificate).
    """

    certifier = "linf-dist"
    input_mean: torch.Tensor
    input_std: torch.Tensor
    out: LinfDist | None
    head_hidden: nn.Linear | None
    head_out: nn.Linear | None

    def __init__(
        self,
        input_shape: tuple[int, ...],
        widths: list[int],
        num_classes: int = 10,
        input_range: tuple[float, float] | None = None,
        mlp_head: int | None = None,
        identity_init: bool = True,
        binary: bool = False,
    ) -> None:
        super().__init__()
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_range = None if input_range is None else (float(input_range[0]), float(input_range[1]))
        self.widths = [int(w) for w in widths]
        self.num_classes = int(num_classes)
        self.mlp_head = None if mlp_head is None else int(mlp_head)
        self.identity_init = bool(identity_init)
        self.binary = bool(binary)
        if not self.widths or min(self.widths) < 1:
            raise ValueError(f"widths must be a non-empty list of positive ints, got {widths}")
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {num_classes}")
        if self.binary and self.num_classes != 2:
            raise ValueError(f"a binary model has num_classes 2, got {num_classes}")
        if self.mlp_head is not None and self.mlp_head < 1:
            raise ValueError(f"mlp_head must be a positive hidden size or None, got {mlp_head}")
        channels = self.input_shape[0] if self.input_shape else 1
        self.register_buffer("input_mean", torch.zeros(channels))
        self.register_buffer("input_std", torch.ones(()))
        n_in = math.prod(self.input_shape)
        dims = [n_in] + self.widths
        self.dist = nn.ModuleList([LinfDist(a, b, identity_init=False) for a, b in itertools.pairwise(dims)])
        self.shifts = nn.ModuleList([MeanShift(w) for w in self.widths])
        if self.mlp_head is None:
            self.out = LinfDist(self.widths[-1], self.num_classes, bias=True)
            self.head_hidden = self.head_out = None
        else:
            self.out = None
            self.head_hidden = nn.Linear(self.widths[-1], self.mlp_head)
            self.head_out = nn.Linear(self.mlp_head, self.num_classes)
        self.temperature = nn.Parameter(torch.tensor(1.0 / TEMPERATURE_RATIO))
        self.reset_parameters()

    # ------------------------------------------------------------------ construction

    def reset_parameters(self) -> None:
        """Distance weights N(0, 1) (+ identity init where in ≤ out), output bias 0, head N(0, 1/fan_in)."""
        with torch.no_grad():
            for layer in self.distance_layers():
                layer.identity_init = self.identity_init
                layer.reset_parameters()
            if self.head_hidden is not None and self.head_out is not None:  # set together
                for lin in (self.head_hidden, self.head_out):
                    lin.weight.normal_(0.0, 1.0 / math.sqrt(lin.in_features))
                    lin.bias.zero_()
            self.temperature.fill_(1.0 / TEMPERATURE_RATIO)

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> LinfDistNet:
        """Build from ``{"kind": "linf-dist", "input_shape", "widths", "num_classes", ...}`` (see the module doc)."""
        who = "linf-dist"
        if "input_shape" not in config:
            raise ConfigError("a linf-dist config needs 'input_shape'")
        widths = config_int_list(config.get("widths", DEFAULT_CONFIG["widths"]), "widths", who)
        num_classes = config_int(config.get("num_classes", 10), "num_classes", who, lowest=2)
        head = config.get("mlp_head")
        head = None if head is None else config_int(head, "mlp_head", who)
        flags = {key: config.get(key, default) for key, default in (("identity_init", True), ("binary", False))}
        for key, value in flags.items():
            if not isinstance(value, bool):
                raise ConfigError(f"{who} model config: {key} = {value!r} must be true or false")
        return cls(
            tuple(config["input_shape"]),
            widths,
            num_classes,
            config_input_range(config.get("input_range"), who),
            head,
            flags["identity_init"],
            flags["binary"],
        )

    def config(self) -> dict[str, Any]:
        """The JSON config that rebuilds this model's architecture."""
        return {
            "kind": "linf-dist",
            "input_shape": list(self.input_shape),
            "input_range": None if self.input_range is None else list(self.input_range),
            "widths": list(self.widths),
            "num_classes": self.num_classes,
            "mlp_head": self.mlp_head,
            "identity_init": self.identity_init,
            "binary": self.binary,
        }

    def distance_layers(self) -> list[LinfDist]:
        """Every :class:`LinfDist` layer (hidden ones, then the output layer of a plain net)."""
        hidden = cast("list[LinfDist]", list(self.dist))  # ModuleList of LinfDist, built in __init__
        return hidden + ([self.out] if self.out is not None else [])

    def set_p(self, p: float) -> None:
        """Set the norm order of every distance layer (the training schedule; ∞ to certify)."""
        for layer in self.distance_layers():
            layer.p = float(p)

    @property
    def p(self) -> float:
        """The norm order of the distance layers (they always share one)."""
        return self.distance_layers()[0].p

    @torch.no_grad()
    def fit_input(self, x: torch.Tensor) -> None:
        """Set μ_c (per channel) and the scalar σ = √(mean over channels of the per-channel variance).

        Args:
            x: (N, *input_shape) training inputs in raw units.
        """
        xd = x.detach().double()
        c = self.input_mean.shape[0]
        flat = xd.transpose(0, 1).reshape(c, -1) if xd.dim() > 2 else xd.t()
        mean = flat.mean(dim=1)
        var = flat.var(dim=1, unbiased=False).mean()
        std = float(var.sqrt())
        self.input_mean.copy_(mean.to(self.input_mean))
        self.input_std.fill_(std if std > 0 else 1.0)

    @property
    def std(self) -> float:
        """σ: one unit of normalised input in raw units."""
        return float(self.input_std)

    # ------------------------------------------------------------------ forward passes

    def normalize(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) raw → (N, D) normalised and flattened, (x − μ_c)/σ."""
        shape = (1, -1) + (1,) * (x.dim() - 2)
        z = (x - self.input_mean.to(x.dtype).view(shape)) / self.input_std.to(x.dtype)
        return z.reshape(x.shape[0], math.prod(x.shape[1:]))  # (not -1: an empty batch has no size to infer)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        """Output z_L of the last hidden layer (after its MeanShift): (N, *input_shape) → (N, widths[-1])."""
        return self.features_and_distances(x)[0]

    def features_and_distances(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(z_L, y_L): the last hidden layer's output (N, widths[-1]) and y_L ≥ 0, its distances before the
        shift (N, widths[-1]), from inputs (N, *input_shape)."""
        z = y = self.normalize(x)
        for layer, shift in zip(self.dist, self.shifts):
            y = layer(z)
            z = shift(y)
        return z, y

    def logits_from_features(self, z: torch.Tensor) -> torch.Tensor:
        """Logits from the last hidden layer's output: (N, widths[-1]) → (N, K)."""
        if self.out is not None:
            return -self.out(z)
        assert self.head_hidden is not None and self.head_out is not None  # __init__ sets out or the head
        return self.head_out(torch.tanh(self.head_hidden(z)))

    def logits(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) raw inputs → (N, K) logits g(x) (unscaled: the certificate's logits)."""
        return self.logits_from_features(self.features(x))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) floating raw inputs → logits (N, K); binary models: the sensitive-class score
        g₁ − g₀, shape (N,). Other dtypes and shapes are refused (:class:`~asymcert.errors.InputError`)."""
        check_batch(x, self.input_shape, "this linf-dist model", self)
        g = self.logits(x)
        return g[:, 1] - g[:, 0] if self.binary else g

    def logit_scale(self) -> torch.Tensor:
        """The learned scale s of the training cross-entropy CE(s·g, y), a 0-dim tensor."""
        return TEMPERATURE_RATIO * self.temperature

    # ------------------------------------------------------------------ certification support

    def lipschitz(self, p: float = INF) -> float:
        """ℓ∞→ℓ∞ Lipschitz constant of every logit of the plain net in RAW units: 1/σ (p = ∞ layers),
        rounded up (never underestimated).

        Only ℓ∞ is meaningful here (radii for other norms follow from r_∞; see the certifier).
        """
        if self.out is None:
            raise ValueError("the +MLP variant has no closed-form Lipschitz constant; it is certified by IBP")
        return math.nextafter(1.0 / float(self.input_std.double()), math.inf)

    def structure_problems(self) -> list[str]:
        """Why the layers are not the ones the certificate assumes (empty when they are), by module path: every
        ``dist.k`` an exact :class:`LinfDist`, every ``shifts.k`` an exact :class:`MeanShift` (one per hidden
        layer), ``out`` an exact LinfDist (plain net) or the head two exact ``nn.Linear``; no hooks or replaced
        ``forward`` on any module (:func:`~asymcert.nn.convex.override_problems`); no method the certificate
        calls (:data:`CERTIFIED_METHODS`) overridden by a subclass."""
        problems = [
            f"{type(self).__name__} overrides {name}(); the certificate assumes LinfDistNet's"
            for name in CERTIFIED_METHODS
            if defining_class(type(self), name) is not LinfDistNet
        ]
        slots: list[tuple[str, Any, tuple[type, ...]]] = [("dist", self.dist, (nn.ModuleList,))]
        slots += [("shifts", self.shifts, (nn.ModuleList,))]
        slots += [(f"dist.{k}", m, (LinfDist,)) for k, m in enumerate(self.dist)]
        slots += [(f"shifts.{k}", m, (MeanShift,)) for k, m in enumerate(self.shifts)]
        if self.mlp_head is None:
            slots += [("out", self.out, (LinfDist,))]
        else:
            slots += [("head_hidden", self.head_hidden, (nn.Linear,)), ("head_out", self.head_out, (nn.Linear,))]
        for where, module, allowed in slots:
            missing = [f"{where}: missing"]
            problems += type_problems(module, allowed, where) if isinstance(module, nn.Module) else missing
        if len(self.dist) != len(self.widths) or len(self.shifts) != len(self.widths):
            problems.append(f"dist and shifts must hold {len(self.widths)} layers each (widths {self.widths})")
        return problems + override_problems(self, "")

    def validate(self) -> None:
        """Raise :class:`~asymcert.errors.ModelError` unless the layers are the ones the certificate assumes
        (:meth:`structure_problems`), every distance layer is at p = ∞, every weight is finite, the input scale
        σ is > 0 and every MeanShift is sound (:meth:`MeanShift.problems`)."""
        structure = self.structure_problems()
        if structure:
            raise ModelError("ℓ∞-dist net cannot be vouched for: " + "; ".join(structure))
        finite_p = [
            f"dist layer {i}: p = {layer.p:g}" for i, layer in enumerate(self.distance_layers()) if layer.p != INF
        ]
        if finite_p:
            raise ModelError(
                "an ℓ∞-dist net certifies only with p = ∞ in every distance layer (training left "
                "them at finite p; call model.set_p(math.inf) or train through the p = ∞ phase): " + ", ".join(finite_p)
            )
        bad = [n for n, t in self.state_dict().items() if t.is_floating_point() and not all_finite(t)]
        if bad:
            raise ModelError(f"model weights contain NaN or Inf: {bad}")
        if not self.std > 0:
            raise ModelError(f"input scale σ (input_std) must be positive, got {self.std}")
        shifts = [
            f"shifts.{i}: {p}"
            for i, shift in enumerate(cast("list[MeanShift]", list(self.shifts)))
            for p in shift.problems()
        ]
        if shifts:
            raise ModelError("ℓ∞-dist net cannot be vouched for: " + "; ".join(shifts))

    def extra_repr(self) -> str:
        return (
            f"input_shape={self.input_shape}, widths={self.widths}, num_classes={self.num_classes}, "
            f"mlp_head={self.mlp_head}, binary={self.binary}"
        )


__all__ = ["DEFAULT_CONFIG", "TEMPERATURE_RATIO", "LinfDistNet", "task_model_settings"]
