"""The baselines' networks: standard ReLU nets (MLP, small CNN) and the orthogonal ℓ2 net.

Every model maps (N, *input_shape) raw inputs to (N,) sensitive-class scores, flagged sensitive
when the score is > 0, like the feature-convex classifiers. Each is an ``nn.Sequential`` (``.net``)
that starts with a :class:`~asymcert.nn.feature_maps.Shift` (x − μ, μ the mean training input,
set by ``fit_input``) and ends in a single output unit.

Model kinds (``build_model({"kind": ..., ...})``):

* ``"relu-smoothing"``: base classifier of randomized smoothing; ``"smoothing"`` holds the noise
  (``"gaussian"``, ``"laplace"``, ``"uniform"`` or ``"splitting"``), ``sigma`` (noise standard
  deviation, raw units) and the certification defaults ``n0``, ``n``, ``alpha``, ``seed``.
  Certifier: ``"smoothing-<noise>"``.
* ``"relu-ibp"``: a ReLU net trained with IBP or CROWN-IBP, certified by bound propagation
  (``"certifier"``: ``"crown-ibp"`` default, ``"ibp"`` or ``"crown"``).
* ``"orthogonal"``: Cayley-orthogonal layers + MaxMin, 1-Lipschitz in ℓ2 by construction.
  Certifier ``"orthogonal"``: r2 = s(x) / Lip₂ (single score output, Lip₂ = 1 up to rounding).

Architectures (``"arch"``): ``"mlp"`` with ``"widths"``; ``"cnn"`` with ``"channels"`` and ``"fc"``
(ReLU nets: 4×4 stride-2 convolutions, the "small" CNN of Wong & Kolter / Gowal et al.;
orthogonal nets: circular Cayley convolutions of kernel ``"kernel"`` each followed by MaxMin and a
2× space-to-depth).
"""

from __future__ import annotations

import math
from fractions import Fraction
from typing import Any, cast

import torch
from torch import nn

from asymcert.errors import ConfigError, ModelError
from asymcert.models.checks import SEED_RANGE, check_batch, config_input_range, config_int, config_int_list
from asymcert.nn.convex import all_finite, defining_class, override_problems
from asymcert.nn.feature_maps import Shift
from asymcert.nn.orthogonal import CayleyConv2d, CayleyLinear, MaxMin, PixelUnshuffle, lipschitz_l2

SMOOTHING_DEFAULTS: dict[str, Any] = {
    "noise": "gaussian",
    "sigma": 0.75,
    "n0": 100,
    "n": 10000,
    "alpha": 0.001,
    "seed": 0,
}
NOISES = ("gaussian", "laplace", "uniform", "splitting")
BOUND_CERTIFIERS = ("ibp", "crown-ibp", "crown")


def _int_list(v: Any, name: str = "widths", kind: str = "baseline") -> list[int]:
    """``v`` when it is a (possibly empty) list of integers ≥ 1; else :class:`ConfigError` naming ``name``."""
    return config_int_list(v, name, kind, allow_empty=True)


def _smoothing_config(value: Any) -> dict[str, Any]:
    """The smoothing settings of a ``"relu-smoothing"`` config, checked (defaults for missing keys).

    Raises:
        ConfigError: not a JSON object, an unknown key, sigma not a finite number > 0, n0 or n not an
            integer ≥ 1, alpha not in (0, 1), seed not an integer.
    """
    who = "relu-smoothing"
    if value is not None and not isinstance(value, dict):
        raise ConfigError(f"{who} model config: smoothing = {value!r} must be a JSON object")
    unknown = sorted(set(value or {}) - set(SMOOTHING_DEFAULTS))
    if unknown:
        raise ConfigError(
            f"{who} model config: unknown smoothing setting(s) {unknown}; known: {sorted(SMOOTHING_DEFAULTS)}"
        )
    out = {**SMOOTHING_DEFAULTS, **(value or {})}
    real = {k: isinstance(out[k], (int, float)) and not isinstance(out[k], bool) for k in ("sigma", "alpha")}
    if not (real["sigma"] and math.isfinite(out["sigma"]) and out["sigma"] > 0):
        raise ConfigError(f"{who} model config: smoothing sigma = {out['sigma']!r} must be a finite number > 0")
    if not (real["alpha"] and 0 < out["alpha"] < 1):
        raise ConfigError(f"{who} model config: smoothing alpha = {out['alpha']!r} must be in (0, 1)")
    for key in ("n0", "n"):
        config_int(out[key], f"smoothing {key}", who)
    config_int(out["seed"], "smoothing seed", who, *SEED_RANGE)
    return out


def relu_sequential(
    input_shape: tuple[int, ...],
    arch: str,
    widths: list[int] | None = None,
    channels: list[int] | None = None,
    fc: list[int] | None = None,
) -> nn.Sequential:
    """Shift → (convolutions + ReLU) → Flatten → (Linear + ReLU)* → Linear(·, 1).

    Args:
        input_shape: shape of one input; ``"cnn"`` needs (C, H, W).
        arch: ``"mlp"`` (``widths``) or ``"cnn"`` (``channels`` of 4×4 stride-2 padding-1
            convolutions, then ``fc`` hidden widths).
    """
    layers: list[nn.Module] = [Shift(tuple(input_shape))]
    if arch == "mlp":
        layers.append(nn.Flatten())
        prev = math.prod(input_shape)
        hidden = widths or []
    elif arch == "cnn":
        if len(input_shape) != 3:
            raise ValueError(f"arch 'cnn' needs image inputs (C, H, W), got input shape {tuple(input_shape)}")
        c = input_shape[0]
        for ch in channels or []:
            layers += [nn.Conv2d(c, ch, 4, stride=2, padding=1), nn.ReLU()]
            c = ch
        layers.append(nn.Flatten())
        with torch.no_grad():
            prev = nn.Sequential(*layers)(torch.zeros(1, *input_shape)).shape[1]
        hidden = fc or []
    else:
        raise ValueError(f"unknown arch {arch!r}; use 'mlp' or 'cnn'")
    for w in hidden:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, 1))
    return nn.Sequential(*layers)


def orthogonal_sequential(
    input_shape: tuple[int, ...],
    arch: str,
    widths: list[int] | None = None,
    channels: list[int] | None = None,
    fc: list[int] | None = None,
    kernel: int = 3,
) -> nn.Sequential:
    """Shift → (CayleyConv + MaxMin + 2× space-to-depth)* → Flatten → (CayleyLinear + MaxMin)* → CayleyLinear(·, 1).

    Every width and channel count must be even (MaxMin pairs channels). ``"cnn"`` needs square
    inputs whose side is divisible by 2^len(channels).
    """
    for w in list(widths or []) + list(channels or []) + list(fc or []):
        if w % 2:
            raise ValueError(f"orthogonal nets need even widths/channels for MaxMin, got {w}")
    layers: list[nn.Module] = [Shift(tuple(input_shape))]
    if arch == "mlp":
        layers.append(nn.Flatten())
        prev = math.prod(input_shape)
        hidden = widths or []
    elif arch == "cnn":
        if len(input_shape) != 3 or input_shape[1] != input_shape[2]:
            raise ValueError(f"orthogonal 'cnn' needs square images (C, n, n), got {tuple(input_shape)}")
        c, n = input_shape[0], input_shape[1]
        for ch in channels or []:
            if n % 2:
                raise ValueError(f"feature map side {n} is odd; cannot downsample by 2 (fewer channels stages?)")
            layers += [CayleyConv2d(c, ch, kernel, n), MaxMin(), PixelUnshuffle(2)]
            c, n = 4 * ch, n // 2
        layers.append(nn.Flatten())
        prev = c * n * n
        hidden = fc or []
    else:
        raise ValueError(f"unknown arch {arch!r}; use 'mlp' or 'cnn'")
    for w in hidden:
        layers += [CayleyLinear(prev, w), MaxMin()]
        prev = w
    layers.append(CayleyLinear(prev, 1))
    return nn.Sequential(*layers)


class _SequentialScoreModel(nn.Module):
    """Common part: ``net`` (N, *input_shape) → (N, 1), ``forward`` → (N,) scores."""

    kind = ""
    binary = True

    def __init__(
        self,
        net: nn.Sequential,
        input_shape: tuple[int, ...],
        input_range: tuple[float, float] | None,
        arch: dict[str, Any],
    ) -> None:
        super().__init__()
        self.net = net
        self.input_shape = tuple(int(d) for d in input_shape)
        self.input_range = None if input_range is None else (float(input_range[0]), float(input_range[1]))
        self.arch = dict(arch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, *input_shape) floating raw inputs → (N,) scores; > 0 flags the sensitive class.
        Other dtypes and shapes are refused (:class:`~asymcert.errors.InputError`)."""
        check_batch(x, self.input_shape, f"this {self.kind or 'baseline'} model", self)
        return self.net(x).squeeze(-1)

    def fit_input(self, x: torch.Tensor) -> None:
        """Set the input shift μ to the mean of ``x`` (N, *input_shape)."""
        cast(Shift, self.net[0]).fit(x)  # relu_sequential puts the Shift first

    def config(self) -> dict[str, Any]:
        return {
            "kind": self.kind,
            "input_shape": list(self.input_shape),
            "input_range": None if self.input_range is None else list(self.input_range),
            **self.arch,
        }

    def validate(self) -> None:
        """Raise :class:`~asymcert.errors.ModelError` when a weight is NaN or Inf, a module has hooks or a replaced
        ``forward`` (:func:`~asymcert.nn.convex.override_problems`, by module path), or a subclass overrides
        ``forward`` (the certifiers bound ``net`` and read the score as its output). The layers' types are checked
        by the certifiers (exact types: :func:`~asymcert.certify.bound_propagation.sequential_layers`)."""
        bad = [n for n, t in self.state_dict().items() if t.is_floating_point() and not all_finite(t)]
        if bad:
            raise ModelError(f"model weights contain NaN or Inf: {bad}")
        problems = override_problems(self, "")
        if defining_class(type(self), "forward") is not _SequentialScoreModel:
            problems.append(f"{type(self).__name__} overrides forward(); the certificate assumes s(x) = net(x)")
        if problems:
            raise ModelError(f"{self.kind or 'baseline'} model cannot be vouched for: " + "; ".join(problems))


def _arch_config(config: dict[str, Any], default_widths: list[int]) -> dict[str, Any]:
    arch = config.get("arch", "mlp")
    if arch not in ("mlp", "cnn"):
        raise ConfigError(f"{config.get('kind')} model config: unknown arch {arch!r}; use 'mlp' or 'cnn'")
    who = str(config.get("kind"))
    out: dict[str, Any] = {"arch": arch}
    if arch == "mlp":
        out["widths"] = _int_list(config.get("widths", default_widths), "widths", who)
    else:
        out["channels"] = _int_list(config.get("channels", [16, 32]), "channels", who)
        out["fc"] = _int_list(config.get("fc", [100]), "fc", who)
    return out


class ReLUNet(_SequentialScoreModel):
    """A standard ReLU network with a single score output (MLP or small CNN)."""

    @classmethod
    def _build(cls, config: dict[str, Any]) -> tuple[nn.Sequential, tuple[int, ...], Any, dict[str, Any]]:
        shape = tuple(int(d) for d in config["input_shape"])
        arch = _arch_config(config, [256, 256])
        rng = config_input_range(config.get("input_range"), str(config.get("kind")))
        net = relu_sequential(shape, arch["arch"], arch.get("widths"), arch.get("channels"), arch.get("fc"))
        return net, shape, rng, arch


class SmoothingBaseNet(ReLUNet):
    """Base classifier of randomized smoothing (certified by ``"smoothing-<noise>"``).

    ``smoothing``: ``{"noise", "sigma", "n0", "n", "alpha", "seed"}``, the training noise and the
    default certification settings (each can be overridden in ``asymcert.certify(..., **options)``).
    """

    kind = "relu-smoothing"

    def __init__(
        self,
        net: nn.Sequential,
        input_shape: tuple[int, ...],
        input_range: tuple[float, float] | None,
        arch: dict[str, Any],
        smoothing: dict[str, Any] | None = None,
    ) -> None:
        super().__init__(net, input_shape, input_range, arch)
        self.smoothing = {**SMOOTHING_DEFAULTS, **(smoothing or {})}
        if self.smoothing["noise"] not in NOISES:
            raise ValueError(f"unknown smoothing noise {self.smoothing['noise']!r}; known: {NOISES}")

    @property
    def certifier(self) -> str:
        return f"smoothing-{self.smoothing['noise']}"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> SmoothingBaseNet:
        """Build from ``{"kind": "relu-smoothing", "input_shape", "arch", ..., "smoothing": {...}}``."""
        smoothing = _smoothing_config(config.get("smoothing"))
        net, shape, rng, arch = cls._build(config)
        return cls(net, shape, rng, arch, smoothing)

    def config(self) -> dict[str, Any]:
        return {**super().config(), "smoothing": dict(self.smoothing)}


class BoundPropagationNet(ReLUNet):
    """A ReLU net for IBP / CROWN-IBP training, certified by bound propagation."""

    kind = "relu-ibp"

    def __init__(
        self,
        net: nn.Sequential,
        input_shape: tuple[int, ...],
        input_range: tuple[float, float] | None,
        arch: dict[str, Any],
        certifier: str = "crown-ibp",
    ) -> None:
        super().__init__(net, input_shape, input_range, arch)
        if certifier not in BOUND_CERTIFIERS:
            raise ValueError(f"unknown bound certifier {certifier!r}; known: {BOUND_CERTIFIERS}")
        self.certifier = certifier

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> BoundPropagationNet:
        """Build from ``{"kind": "relu-ibp", "input_shape", "arch", ..., "certifier"}``."""
        net, shape, rng, arch = cls._build(config)
        return cls(net, shape, rng, arch, str(config.get("certifier", "crown-ibp")))

    def config(self) -> dict[str, Any]:
        return {**super().config(), "certifier": self.certifier}


class OrthogonalNet(_SequentialScoreModel):
    """A 1-Lipschitz (ℓ2) binary classifier: orthogonal layers, MaxMin, one score output.

    With one output unit s(x) and ‖s‖_Lip,2 = L ≈ 1 the ℓ2 radius is s(x)/L. (A two-logit head
    z₁ − z₂ would have Lipschitz constant √2, hence the margin/√2 of the literature; the single
    score is the same classifier class without that factor.)
    """

    kind = "orthogonal"
    certifier = "orthogonal"

    @classmethod
    def from_config(cls, config: dict[str, Any]) -> OrthogonalNet:
        """Build from ``{"kind": "orthogonal", "input_shape", "arch": "mlp"|"cnn", "widths" | "channels", "fc",
        "kernel"}``."""
        shape = tuple(int(d) for d in config["input_shape"])
        arch = _arch_config(config, [256, 256, 256])
        if arch["arch"] == "cnn":
            arch["channels"] = _int_list(config.get("channels", [8, 32]), "channels", "orthogonal")
            arch["fc"] = _int_list(config.get("fc", [256]), "fc", "orthogonal")
            arch["kernel"] = config_int(config.get("kernel", 3), "kernel", "orthogonal")
        rng = config_input_range(config.get("input_range"), "orthogonal")
        net = orthogonal_sequential(
            shape, arch["arch"], arch.get("widths"), arch.get("channels"), arch.get("fc"), arch.get("kernel", 3)
        )
        return cls(net, shape, rng, arch)

    def lipschitz(self, p: float) -> float:
        """Lipschitz constant of the score w.r.t. ℓp on the input: L₂ for p ≤ 2, L₂·d^{1/2 − 1/p} above.

        (‖δ‖₂ ≤ ‖δ‖_p for p ≤ 2 and ‖δ‖₂ ≤ d^{1/2−1/p}‖δ‖_p for p ≥ 2.) Rounded up: the exponent is
        rounded up exactly (d ≥ 1, so a larger exponent only enlarges the factor), the power and the
        square root (each within one ulp) and the product are each moved up by an ulp.
        """
        l2 = lipschitz_l2(self.net, "net")
        p = float(p)
        if p <= 2:
            return l2
        d = math.prod(self.input_shape)
        if math.isinf(p):
            factor = math.nextafter(math.sqrt(d), math.inf)
        else:
            exact = Fraction(1, 2) - 1 / Fraction(p)
            exponent = float(exact)
            exponent = exponent if Fraction(exponent) >= exact else math.nextafter(exponent, math.inf)
            factor = math.nextafter(math.nextafter(d**exponent, math.inf), math.inf)
        return math.nextafter(l2 * factor, math.inf)
