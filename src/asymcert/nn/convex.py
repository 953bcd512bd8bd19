"""Input-convex layers and networks g: R^q → R.

Convexity in the input holds because every constrained weight is nonnegative and every
activation (ReLU) is convex and nondecreasing. Constrained modules expose ``constraints()``,
``{parameter name: lower bound}`` (a number, or elementwise :class:`Bounds`); :func:`project_`
enforces them after an optimizer step and :func:`convexity_violations` reports any that do not hold.
Monotone features use the same machinery: :meth:`ICNN.constrain_columns` turns the pass-through
layers into :class:`SignedLinear` layers whose declared columns keep a sign, so g is nondecreasing
(or nonincreasing) in those features.

What asymcert vouches for is an allowlist (:func:`convex_net_problems`): g must be an exact
:class:`ICNN` or :class:`ConvexConvNet` whose every submodule has an allowed type in its slot
(:data:`ALLOWED_SLOTS`: free affine layers only where they act on g's input), a :class:`ConvexMean`
of such networks (an ensemble; each member checked under ``convex.members.k``, nested means refused),
or a user class that declares its own contract (:data:`CONTRACT_METHOD`). Anything else is refused by name.
"""

from __future__ import annotations

import inspect
import math
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from asymcert import distributed
from asymcert.distributed import differentiable_sum
from asymcert.errors import ConfigError, UnknownNameError


@dataclass(frozen=True)
class Bounds:
    """Elementwise bounds ``lower ≤ parameter ≤ upper`` of a constrained parameter (``constraints()`` value).

    Attributes:
        lower, upper: tensors broadcastable to the parameter's shape (e.g. (1, in_features) for one
            bound per column of a weight), −inf / +inf where there is none.
        meaning: what the bounds stand for, quoted by :func:`convexity_violations`.
    """

    lower: torch.Tensor
    upper: torch.Tensor
    meaning: str = ""


class NonnegLinear(nn.Linear):
    """A linear layer whose weight is constrained ≥ 0 (the bias is free).

    Initialised U(0, ``init_scale``) as the authors did (0.003–0.005).
    """

    def __init__(self, in_features: int, out_features: int, bias: bool = True, init_scale: float = 0.005) -> None:
        super().__init__(in_features, out_features, bias=bias)
        with torch.no_grad():
            self.weight.uniform_(0.0, init_scale)

    def constraints(self) -> dict[str, float]:
        return {"weight": 0.0}


class SignedLinear(nn.Linear):
    """A linear layer some of whose weight columns keep a sign: column j ≥ 0 where ``column_sign[j]`` is
    +1, ≤ 0 where it is −1, free where it is 0 (the bias is free).

    The signs are a non-persistent buffer (in_features,): they come from the model's config, never
    from a checkpoint. Used by :meth:`ICNN.constrain_columns` for monotone features.

    Args:
        in_features, out_features, bias: as ``nn.Linear``.
        column_sign: (in_features,) values in {−1, 0, +1}.
    """

    column_sign: torch.Tensor  # buffer (in_features,) float: −1, 0 or +1

    def __init__(self, in_features: int, out_features: int, column_sign: torch.Tensor, bias: bool = True) -> None:
        super().__init__(in_features, out_features, bias=bias)
        sign = torch.as_tensor(column_sign, dtype=torch.float32).flatten()
        if sign.numel() != in_features:
            raise ConfigError(f"SignedLinear: {sign.numel()} column signs for {in_features} input features")
        self.register_buffer("column_sign", sign.sign(), persistent=False)

    def constraints(self) -> dict[str, float | Bounds]:
        sign = self.column_sign.to(self.weight.dtype)[None, :]
        inf = torch.full_like(sign, math.inf)
        lower = torch.where(sign > 0, torch.zeros_like(sign), -inf)
        upper = torch.where(sign < 0, torch.zeros_like(sign), inf)
        return {
            "weight": Bounds(
                lower,
                upper,
                "column j must be ≥ 0 for a feature of a monotone-increasing input, ≤ 0 "
                "for one of a monotone-decreasing input",
            )
        }

    @torch.no_grad()
    def apply_signs_(self) -> None:
        """Give every signed column its sign by taking magnitudes (w ↦ sign·|w|), in place: an initialisation."""
        sign = self.column_sign.to(self.weight)[None, :]
        self.weight.copy_(torch.where(sign != 0, sign * self.weight.abs(), self.weight))


class NonnegConv2d(nn.Conv2d):
    """A convolution whose kernel is constrained ≥ 0 (the bias is free). Init U(0, ``init_scale``)."""

    def __init__(
        self,
        in_channels: int,
        out_channels: int,
        kernel_size: int,
        padding: int = 0,
        bias: bool = True,
        init_scale: float = 0.005,
    ) -> None:
        super().__init__(in_channels, out_channels, kernel_size, padding=padding, bias=bias)
        with torch.no_grad():
            self.weight.uniform_(0.0, init_scale)

    def constraints(self) -> dict[str, float]:
        return {"weight": 0.0}


class PositiveBatchNorm(nn.modules.batchnorm._BatchNorm):
    """Batch norm with its scale clamped ≥ ``min_scale`` (> 0), so it is an increasing affine map in eval.

    Works on (N, C) and (N, C, H, W). In eval mode it is x ↦ γ(x − μ)/√(σ² + ε) + β with γ > 0,
    which keeps convex functions convex.
    """

    # buffers, always present (running statistics are tracked): (C,), (C,), ()
    running_mean: torch.Tensor
    running_var: torch.Tensor
    num_batches_tracked: torch.Tensor

    def __init__(self, num_features: int, min_scale: float = 1e-3, **kwargs: Any) -> None:
        super().__init__(num_features, **kwargs)
        self.min_scale = float(min_scale)
        # set by `shared_batch_statistics`; none of it is part of the state dict
        self.share_statistics = False
        self.shared: tuple[torch.Tensor, torch.Tensor] | None = None

    def _check_input_dim(self, x: torch.Tensor) -> None:
        if x.dim() not in (2, 4):
            raise ValueError(f"expected a 2D or 4D input, got {x.dim()}D")

    def constraints(self) -> dict[str, float]:
        return {"weight": self.min_scale}

    def forward(self, x: torch.Tensor) -> torch.Tensor:

        if self.training and self.share_statistics and self.shared is not None:
            return self._normalize(x, *self.shared)
        if not (self.training and (self.share_statistics or distributed.is_distributed())):
            return super().forward(x)
        return self._explicit_forward(x)

    def _explicit_forward(self, x: torch.Tensor) -> torch.Tensor:
        """Training-mode batch norm with the statistics computed here, over the global batch of every
        process under torch.distributed (what SyncBatchNorm does on GPUs; it also runs on CPU/gloo).
        Gradients are exact. Under `shared_batch_statistics` the statistics are kept for later passes."""
        mean, var, count = self._moments(x)
        with torch.no_grad():
            self.num_batches_tracked += 1
            m = self.momentum
            if m is None:  # PyTorch's cumulative average; not implemented for explicit statistics
                raise ValueError(
                    "PositiveBatchNorm with explicit (shared or distributed) statistics needs a "
                    "numeric momentum, got None"
                )
            self.running_mean.mul_(1 - m).add_(m * mean.detach())
            self.running_var.mul_(1 - m).add_(m * var.detach() * count / (count - 1).clamp_min(1))
        if self.share_statistics:
            self.shared = (mean, var)
        return self._normalize(x, mean, var)

    def _moments(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """(mean, biased variance) per channel over the batches of every process, and the element count."""

        dims = [0] + list(range(2, x.dim()))
        count = differentiable_sum(torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device))
        total = differentiable_sum(torch.stack([x.sum(dims), (x * x).sum(dims)]))
        mean = total[0] / count
        return mean, (total[1] / count - mean * mean).clamp_min(0.0), count

    def _normalize(self, x: torch.Tensor, mean: torch.Tensor, var: torch.Tensor) -> torch.Tensor:
        """γ(x − mean)/√(var + ε) + β with per-channel statistics."""
        shape = [1, -1] + [1] * (x.dim() - 2)
        y = (x - mean.view(shape)) / torch.sqrt(var.view(shape) + self.eps)
        return y * self.weight.view(shape) + self.bias.view(shape)

    def eval_affine(self) -> tuple[torch.Tensor, torch.Tensor]:
        """(scale, shift) per channel of the eval-mode map x ↦ scale·x + shift."""
        scale = self.weight / torch.sqrt(self.running_var + self.eps)
        return scale, self.bias - scale * self.running_mean


@contextmanager
def shared_batch_statistics(model: nn.Module) -> Iterator[nn.Module]:
    """Within the block, the first training-mode pass of every batch norm of ``model`` records its
    batch's statistics, and later passes normalise with those same statistics.

    In training mode batch norm couples the inputs of a batch, so the gradient of ``score.sum()``
    with respect to the inputs is Σ_j ∂s_j/∂x_i, not input i's own gradient ∂s_i/∂x_i; the cross
    terms can cancel it (for a one-hidden-layer ICNN with batch norm, everything but the input
    pass-through cancels exactly). Run the first pass on *detached* inputs: its statistics then
    depend on the weights only, so a second pass on inputs that require grad gives every input its
    own gradient with ``score.sum()``, while the weights' gradients still flow through the
    statistics (what gradient regularisers and certified-margin losses need: holding the statistics
    constant in the weights too biases the training direction). Running statistics are updated
    once, by the first pass. Eval-mode models are unaffected.

    Raises:
        ValueError: a training-mode batch norm that is not a :class:`PositiveBatchNorm`.
    """
    plain = [
        name
        for name, m in model.named_modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm) and not isinstance(m, PositiveBatchNorm) and m.training
    ]
    if plain:
        raise ValueError(f"cannot share the statistics of batch norm layer(s) {plain}: use PositiveBatchNorm")
    norms = [m for m in model.modules() if isinstance(m, PositiveBatchNorm)]
    before = [(m.share_statistics, m.shared) for m in norms]
    for m in norms:
        m.share_statistics, m.shared = True, None
    try:
        yield model
    finally:
        for m, (flag, shared) in zip(norms, before):
            m.share_statistics, m.shared = flag, shared


def couples_batch(model: nn.Module) -> bool:
    """Whether ``model``'s outputs depend on other inputs of the batch (a batch norm in training mode)."""
    return any(isinstance(m, nn.modules.batchnorm._BatchNorm) and m.training for m in model.modules())


def constrained_parameters(model: nn.Module) -> Iterator[tuple[str, torch.Tensor, float | Bounds]]:
    """Every (qualified name, parameter, lower bound or :class:`Bounds`) that convexity or monotonicity
    depends on."""
    for mod_name, module in model.named_modules():
        if hasattr(module, "constraints"):
            for name, lower in module.constraints().items():
                param = getattr(module, name, None)
                if isinstance(param, torch.Tensor):
                    yield (f"{mod_name}.{name}" if mod_name else name), param, lower


@torch.no_grad()
def project_(model: nn.Module) -> None:
    """Clamp every constrained parameter of ``model`` to its bounds, in place."""
    for _, param, bound in constrained_parameters(model):
        if isinstance(bound, Bounds):
            param.clamp_(min=bound.lower.to(param), max=bound.upper.to(param))
        else:
            param.clamp_(min=bound)


def convexity_violations(model: nn.Module) -> list[str]:
    """Human-readable list of constrained parameters that break their bounds (empty when convex)."""
    problems = []
    for name, param, bound in constrained_parameters(model):
        if isinstance(bound, Bounds):
            problems += bounds_violations(name, param.detach(), bound)
            continue
        bad = param.detach() < bound
        if bool(bad.any()):
            problems.append(
                f"{name}: {int(bad.sum())} of {param.numel()} entries below {bound:g} "
                f"(min {float(param.detach().min()):.3g})"
            )
    return problems


def bounds_violations(name: str, param: torch.Tensor, bound: Bounds) -> list[str]:
    """One line naming ``param`` (called ``name``) and, for a 2D weight (out, in), the columns where it
    leaves ``bound`` (the first 10); empty when it does not."""
    lower, upper = bound.lower.to(param), bound.upper.to(param)
    bad = (param < lower) | (param > upper)  # NaN is reported by the models' finiteness checks
    if not bool(bad.any()):
        return []
    where = ""
    if param.dim() == 2:
        cols = torch.nonzero(bad.any(dim=0)).flatten().tolist()
        more = f" and {len(cols) - 10} more" if len(cols) > 10 else ""
        where = f" in column(s) {cols[:10]}{more}"
    below, above = bool((param < lower).any()), bool((param > upper).any())
    side = " and ".join(s for s, hit in (("below its lower bound", below), ("above its upper bound", above)) if hit)
    return [
        f"{name}: {int(bad.sum())} of {param.numel()} entries {side}{where}"
        + (f" ({bound.meaning})" if bound.meaning else "")
    ]


class ICNN(nn.Module):
    """Fully connected input-convex network with input pass-throughs (Amos et al.; the papers' MLP).

    z₁ = relu(U₀ x + c₀); z_{k+1} = relu(W_k BN(z_k) + U_k x + c_k); g(x) = W_L BN(z_L) + U_L x + c_L,
    with every W_k ≥ 0 and BN scales > 0. U_k are free. Input (N, *in_shape) is flattened.

    Args:
        in_shape: shape of one feature vector φ(x).
        widths: hidden widths, e.g. (200, 50).
        batch_norm: a positive-scale batch norm after each hidden ReLU.
    Returns from ``forward``: (N,) convex scores g(x).
    """

    kind = "icnn"

    def __init__(self, in_shape: tuple[int, ...], widths: tuple[int, ...] = (200, 50), batch_norm: bool = True) -> None:
        super().__init__()
        self.in_shape = tuple(in_shape)
        self.widths = tuple(int(w) for w in widths)
        self.batch_norm = bool(batch_norm)
        d = int(torch.Size(self.in_shape).numel())
        self.passthrough = nn.ModuleList([nn.Linear(d, w) for w in self.widths + (1,)])
        self.hidden = nn.ModuleList(
            [NonnegLinear(a, b, bias=False) for a, b in zip(self.widths, self.widths[1:] + (1,))]
        )
        self.norms = nn.ModuleList([PositiveBatchNorm(w) if self.batch_norm else nn.Identity() for w in self.widths])

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x.flatten(1)
        z = F.relu(self.passthrough[0](x))
        for k, (lin, norm) in enumerate(zip(self.hidden, self.norms)):
            out = lin(norm(z)) + self.passthrough[k + 1](x)
            z = out if k == len(self.hidden) - 1 else F.relu(out)
        return z.squeeze(1)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "widths": list(self.widths), "batch_norm": self.batch_norm}

    def constrain_columns(self, column_sign: torch.Tensor) -> None:
        """Make g nondecreasing in feature j where ``column_sign[j]`` = +1 and nonincreasing where it is −1.

        Every pass-through layer U_k becomes a :class:`SignedLinear` with these column signs (its
        weights kept, then w ↦ sign·|w| on the signed columns); with W_k ≥ 0, positive batch-norm
        scales and nondecreasing ReLUs, ∂g/∂f_j is then a sum of nonnegative terms times the signs of
        U's column j. :func:`project_` keeps the signs after every optimizer step.

        Args:
            column_sign: (d,) values in {−1, 0, +1}, d = number of features (flattened ``in_shape``).
        """
        layers = []
        for old in self.passthrough:
            lin = cast(nn.Linear, old)
            new = SignedLinear(
                lin.in_features, lin.out_features, column_sign.to(lin.weight.device), lin.bias is not None
            )
            new.to(lin.weight.device, lin.weight.dtype)
            with torch.no_grad():
                new.weight.copy_(lin.weight)
                if lin.bias is not None:
                    new.bias.copy_(lin.bias)
            new.apply_signs_()
            layers.append(new)
        self.passthrough = nn.ModuleList(layers)

    def column_signs(self) -> list[torch.Tensor | None]:
        """The column signs (d,) each pass-through layer keeps (None for a layer that keeps none)."""
        return [m.column_sign if isinstance(m, SignedLinear) else None for m in self.passthrough]


class ConvexConvNet(nn.Module):
    """The papers' convex convolutional network.

    stem: conv k×k (free weights, C channels, same padding) → ReLU; then ``blocks`` residual blocks
    z ← relu(z + conv3×3₊(BN₊(z))); then BN₊ → nonnegative linear readout to a scalar.
    Convex in the input: the stem is affine, every later weight and BN scale is nonnegative, and
    ReLU is convex and nondecreasing.

    Args:
        in_shape: (C_in, H, W) of one feature tensor φ(x).
        channels: hidden channels C (4 for Fashion-MNIST, 16 for CIFAR-10).
        stem_kernel: stem kernel size (5 for Fashion-MNIST, 11 for CIFAR-10).
        blocks: number of residual blocks.
    """

    kind = "convex-conv"

    def __init__(self, in_shape: tuple[int, ...], channels: int = 4, stem_kernel: int = 5, blocks: int = 2) -> None:
        super().__init__()
        if len(in_shape) != 3:
            raise ValueError(f"convex-conv needs image features (C, H, W), got shape {tuple(in_shape)}")
        self.in_shape = tuple(in_shape)
        self.channels, self.stem_kernel, self.n_blocks = int(channels), int(stem_kernel), int(blocks)
        c_in, h, w = self.in_shape
        self.stem = nn.Conv2d(c_in, channels, stem_kernel, padding=stem_kernel // 2)
        self.block_norms = nn.ModuleList([PositiveBatchNorm(channels) for _ in range(blocks)])
        self.block_convs = nn.ModuleList([NonnegConv2d(channels, channels, 3, padding=1) for _ in range(blocks)])
        self.out_norm = PositiveBatchNorm(channels)
        out_hw = h + 2 * (stem_kernel // 2) - stem_kernel + 1, w + 2 * (stem_kernel // 2) - stem_kernel + 1
        self.readout = NonnegLinear(channels * out_hw[0] * out_hw[1], 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        z = F.relu(self.stem(x))
        for norm, conv in zip(self.block_norms, self.block_convs):
            z = F.relu(z + conv(norm(z)))
        return self.readout(self.out_norm(z).flatten(1)).squeeze(1)

    def config(self) -> dict[str, Any]:
        return {"kind": self.kind, "channels": self.channels, "stem_kernel": self.stem_kernel, "blocks": self.n_blocks}


class ConvexMean(nn.Module):
    """The mean of K input-convex networks on the same features: g(f) = (1/K) Σ_k g_k(f).

    A nonnegative combination of convex functions is convex, so the feature-convex certificate is
    unchanged in form (∇g is the mean of the members' gradients). Members are refused as nested means.
    Built from ``{"kind": "mean", "members": [<convex config>, ...]}`` or the shorthand
    ``{"kind": "mean", "member": <convex config>, "count": K}`` (K members of one config, each with its
    own initialisation); :meth:`config` returns the form it was built from.

    Args:
        members: the K ≥ 1 input-convex networks, each (N, *in_shape) → (N,).
        shorthand: report the config as ``member``/``count`` (all members share one config).
    Returns from ``forward``: (N,) mean scores.
    """

    kind = "mean"

    def __init__(self, members: list[nn.Module], shorthand: bool = False) -> None:
        super().__init__()
        if len(members) < 1:
            raise ConfigError("convex network 'mean': members must be a non-empty list of convex networks")
        self.members = nn.ModuleList(members)
        self.shorthand = bool(shorthand)

    def member_scores(self, f: torch.Tensor) -> torch.Tensor:
        """Every member's score: (N, *in_shape) → (N, K)."""
        return torch.stack([m(f) for m in self.members], dim=1)

    def forward(self, f: torch.Tensor) -> torch.Tensor:
        return self.member_scores(f).mean(dim=1)

    def config(self) -> dict[str, Any]:
        configs = [cast(Any, m).config() for m in self.members]
        if self.shorthand and all(c == configs[0] for c in configs):
            return {"kind": self.kind, "member": configs[0], "count": len(configs)}
        return {"kind": self.kind, "members": configs}

    def constrain_columns(self, column_sign: torch.Tensor) -> None:
        """Make every member monotone in the signed features (:meth:`ICNN.constrain_columns`); the mean of
        functions nondecreasing in a feature is nondecreasing in it.

        Args:
            column_sign: (d,) values in {−1, 0, +1}.
        Raises:
            ConfigError: a member that cannot keep column signs (not an :class:`ICNN`).
        """
        bad = [f"members.{k}: {type(m).__name__}" for k, m in enumerate(self.members) if not isinstance(m, ICNN)]
        if bad:
            raise ConfigError(f"monotone features need icnn members of a mean, got {', '.join(bad)}")
        for m in self.members:
            cast(ICNN, m).constrain_columns(column_sign)

    def column_signs(self) -> list[torch.Tensor | None]:
        """The column signs (d,) of every member's pass-through layers, members in order (None: keeps none)."""
        return [s for m in self.members for s in (m.column_signs() if isinstance(m, ICNN) else [None])]


CONVEX_NETS: dict[str, type[nn.Module]] = {ICNN.kind: ICNN, ConvexConvNet.kind: ConvexConvNet}

# The allowlist: for each built-in input-convex network, the exact module types each of its slots may
# hold. Exact types, not isinstance: a subclass may override ``forward`` and lose convexity. Free
# (unconstrained) layers are allowed only where they act on the network's input (an affine map of
# the input keeps convexity); every later layer must carry its nonnegativity constraint.
ALLOWED_SLOTS: dict[type[nn.Module], dict[str, tuple[type[nn.Module], ...]]] = {
    ICNN: {
        "passthrough": (nn.Linear, NonnegLinear, SignedLinear),
        "hidden": (NonnegLinear,),
        "norms": (PositiveBatchNorm, nn.Identity),
    },
    ConvexConvNet: {
        "stem": (nn.Conv2d, NonnegConv2d),
        "block_norms": (PositiveBatchNorm,),
        "block_convs": (NonnegConv2d,),
        "out_norm": (PositiveBatchNorm,),
        "readout": (NonnegLinear,),
    },
}
CONTRACT_METHOD = "convexity_contract"
"""The contract of a user's own input-convex network g. A class that defines

    def convexity_contract(self) -> list[str]:
        # [] when forward is convex in its input; else one line per problem found

vouches that its ``forward`` (N, *feature_shape) → (N,) is convex in its input for every parameter
value that yields no problem, and returns every problem it finds in its current parameters (e.g. a
constrained weight below 0; :func:`convexity_violations` and :func:`convex_net_problems` help).
asymcert checks nothing else inside such a class. The contract must be declared by the class that
defines ``forward`` or by a subclass of it: a subclass that overrides ``forward`` without declaring
it again is refused, as is an instance whose ``forward`` or hooks were replaced."""


def defining_class(cls: type, name: str) -> type | None:
    """The class of ``cls``'s MRO whose own namespace defines attribute ``name`` (None if none does)."""
    return next((c for c in cls.__mro__ if name in vars(c)), None)


def declared_with_forward(module: nn.Module, method: str) -> bool:
    """Whether ``method`` is defined by the class that defines ``module``'s ``forward`` or by a subclass
    of it, i.e. whether the declaration can speak for the ``forward`` that actually runs."""
    forward, declared = defining_class(type(module), "forward"), defining_class(type(module), method)
    return forward is not None and declared is not None and issubclass(declared, forward)


_AMINMAX_TYPES = frozenset({torch.float16, torch.bfloat16, torch.float32, torch.float64})


def all_finite(t: torch.Tensor) -> bool:
    """Whether every value of a floating tensor is finite (no NaN, no ±inf): its least and largest value are
    (torch's min/max propagate NaN), one pass without a mask (10× ``torch.isfinite(t).all()`` on 3 million)."""
    if t.numel() == 0:
        return True
    if t.dtype not in _AMINMAX_TYPES:  # (float8 and others have no aminmax: review 27c F8)
        return bool(torch.isfinite(t.detach().float()).all())  # (widening is exact)
    low, high = torch.aminmax(t.detach().reshape(-1))
    return math.isfinite(float(low)) and math.isfinite(float(high))


def parameter_dtype(module: nn.Module) -> torch.dtype | None:
    """The dtype ``module`` computes in: its first floating parameter's (None when it has none)."""
    return next((p.dtype for p in module.parameters() if p.is_floating_point()), None)


def global_hook_problems() -> list[str]:
    """Process-wide module hooks (``torch.nn.modules.module.register_module_forward_hook`` and its kin), which run
    on every module's call and may change what any model computes; empty when none is set."""
    module = nn.modules.module
    kinds = (
        ("forward", "_global_forward_hooks"),
        ("forward pre", "_global_forward_pre_hooks"),
        ("backward", "_global_backward_hooks"),
        ("backward pre", "_global_backward_pre_hooks"),
    )
    found = [kind for kind, name in kinds if getattr(module, name, None)]
    if not found:
        return []
    return [
        f"process-wide module {' and '.join(found)} hook(s) are set (torch.nn.modules.module.register_module_"
        "*_hook), which may change what the model computes; remove them before certifying"
    ]


def override_problems(root: nn.Module, path: str, recurse: bool = True) -> list[str]:
    """Ways the modules of ``root`` may compute something else than their class's ``forward`` says.

    Reported: forward (pre-)hooks, which may replace outputs; backward hooks, which may replace the
    input gradient the certificates use; an instance attribute shadowing ``forward`` or any other method of its
    class (:func:`replaced_methods`: ``features``, ``score_from_features``, ``lipschitz``…); a class that
    overrides ``__call__``. Each message starts with the module's path under ``path`` ("" for the root's
    own names, e.g. ``convex.hidden.0``). ``recurse=False``: ``root`` itself only.
    """
    problems = []
    for name, m in root.named_modules() if recurse else [("", root)]:
        where = ".".join(part for part in (path, name) if part) or type(root).__name__
        hooks = [
            kind
            for kind, d in (
                ("forward", m._forward_hooks),
                ("forward pre", m._forward_pre_hooks),
                ("backward", m._backward_hooks),
                ("backward pre", getattr(m, "_backward_pre_hooks", {})),
            )
            if d
        ]
        if hooks:
            problems.append(f"{where}: has {' and '.join(hooks)} hook(s), which may change what it computes")
        if "forward" in vars(m) or type(m).__call__ is not nn.Module.__call__:
            problems.append(f"{where}: its forward or __call__ was replaced, so its class's guarantee does not apply")
        shadowed = [name for name in replaced_methods(m) if name != "forward"]
        if shadowed:
            names = " and ".join(shadowed)
            problems.append(f"{where}: its {names} was replaced on the instance, so its class's guarantee is void")
    return problems


def replaced_methods(module: nn.Module) -> list[str]:
    """Names of the methods of ``module``'s class that an instance attribute shadows (``m.score_from_features = f``
    replaces what certifiers call, as ``m.forward = f`` does; review s34 ovr F3), sorted."""
    cls = type(module)
    return sorted(k for k, v in vars(module).items() if callable(v) and inspect.isfunction(getattr(cls, k, None)))


def _type_label(t: type, others: tuple[type, ...]) -> str:
    """``t``'s class name, module-qualified when another of ``others`` has the same name (e.g. torch's and
    asymcert's ``PixelUnshuffle``)."""
    clash = any(o is not t and o.__name__ == t.__name__ for o in others)
    return f"{t.__module__}.{t.__qualname__}" if clash else t.__name__


def type_problems(module: nn.Module, allowed: tuple[type, ...], where: str, why: str = "") -> list[str]:
    """[] when ``module``'s type is exactly one of ``allowed``; else one message naming ``where`` (its module path).

    Exact types, not ``isinstance``: a certificate assumes the allowed class's own computation, and a subclass
    may override ``forward`` (an ``nn.Identity`` subclass computing −3·t was certified as the identity). ``why``
    is appended to the message (e.g. "; it may break convexity").
    """
    t = type(module)
    if t in allowed:
        return []
    everything = (*allowed, t)
    need = " or ".join(_type_label(a, everything) for a in allowed) or "nothing"
    name = _type_label(t, everything)
    base = next((a for a in allowed if issubclass(t, a)), None)
    if base is not None:
        name += f" (a subclass of {_type_label(base, everything)}: only the exact type is accepted)"
    return [f"{where}: {name} is not allowed here (allowed: {need}){why}"]


def conv_problems(conv: nn.Conv2d, where: str) -> list[str]:
    """Why the bound passes cannot take ``conv`` as built (empty when they can): they pad with zeros by the integer
    ``conv.padding`` (``F.conv2d``'s own padding), so a string padding ("same", "valid") and a ``padding_mode``
    other than "zeros" with a nonzero padding (circular, reflect, replicate: a CROWN radius of such a net was
    broken by PGD) are refused. Stride, dilation and groups are for the caller to handle or refuse."""
    if isinstance(conv.padding, str):
        return [f"{where}: {type(conv).__name__} has padding={conv.padding!r}; give the padding as integers"]
    if conv.padding_mode != "zeros" and any(int(p) for p in conv.padding):
        return [
            f"{where}: {type(conv).__name__} has padding_mode={conv.padding_mode!r}; only zero padding "
            "(padding_mode='zeros') is bounded"
        ]
    return []


def convex_net_problems(net: nn.Module, path: str = "convex") -> list[str]:
    """Why ``net`` cannot be vouched for as an input-convex network g (empty when it can).

    Accepted: an exact :data:`CONVEX_NETS` type whose every submodule is of an allowed type in an
    allowed slot (:data:`ALLOWED_SLOTS`), with well-formed batch norms; or a module whose class
    declares :data:`CONTRACT_METHOD` together with its ``forward`` (its own problems are reported).
    Constraint bounds are checked by :func:`convexity_violations`; hooks and replaced methods by
    :func:`override_problems`. Module paths in the messages start with ``path``.
    """
    if callable(getattr(type(net), CONTRACT_METHOD, None)):
        if not declared_with_forward(net, CONTRACT_METHOD):
            return [
                f"{path}: {type(net).__name__} overrides forward without declaring {CONTRACT_METHOD}() "
                "itself, so the inherited contract does not cover it"
            ]
        found = getattr(net, CONTRACT_METHOD)()
        if not isinstance(found, (list, tuple)) or not all(isinstance(p, str) for p in found):
            return [f"{path}: {CONTRACT_METHOD}() must return a list of problem strings, got {found!r}"]
        return [f"{path}: {problem}" for problem in found]
    if type(net) is ConvexMean:
        return convex_mean_problems(net, path)
    slots = ALLOWED_SLOTS.get(type(net))
    if slots is None:
        known = ", ".join(c.__name__ for c in ALLOWED_SLOTS)
        return [
            f"{path}: {type(net).__name__} is not a known input-convex network ({known}) "
            f"and declares no {CONTRACT_METHOD}() method"
        ]
    problems = []
    for name, module in net.named_modules():
        if not name or isinstance(module, nn.ModuleList):
            continue
        wrong = type_problems(module, slots.get(name.split(".")[0], ()), f"{path}.{name}", "; it may break convexity")
        if wrong:
            problems += wrong
        elif isinstance(module, PositiveBatchNorm):
            problems += [f"{path}.{name}: {p}" for p in batch_norm_problems(module)]
        elif isinstance(module, nn.Conv2d):
            problems += convex_conv_problems(module, f"{path}.{name}")
    return problems


def convex_conv_problems(conv: nn.Conv2d, where: str) -> list[str]:
    """Why a convolution of a :class:`ConvexConvNet` is not the one the exact and bounded passes assume (empty
    when it is): zero "same" padding (k // 2), stride 1, dilation 1, one group, as :class:`ConvexConvNet` builds
    them (the passes read the kernel and the padding only)."""
    problems = conv_problems(conv, where)
    if problems:
        return problems
    same = tuple(k // 2 for k in conv.kernel_size)
    found = {"stride": conv.stride, "dilation": conv.dilation, "groups": conv.groups, "padding": conv.padding}
    wanted = {"stride": (1, 1), "dilation": (1, 1), "groups": 1, "padding": same}
    return [
        f"{where}: {type(conv).__name__} has {key}={found[key]!r}; a convex conv net's convolutions have {key}="
        f"{wanted[key]!r}"
        for key in found
        if found[key] != wanted[key]
    ]


def convex_mean_problems(net: ConvexMean, path: str) -> list[str]:
    """Why the mean ``net`` cannot be vouched for (empty when it can): it must hold its members in
    ``members`` only, at least one, none of them a mean, each accepted by :func:`convex_net_problems`
    (messages under ``path.members.k``)."""
    problems = [
        f"{path}.{name}: {type(m).__name__} is not allowed here (a mean holds its members in 'members' only)"
        for name, m in net.named_children()
        if name != "members"
    ]
    members = getattr(net, "members", None)
    if type(members) is not nn.ModuleList or len(members) == 0:
        return problems + [f"{path}.members: a mean needs a non-empty ModuleList of convex networks"]
    for k, m in enumerate(members):
        if isinstance(m, ConvexMean):
            problems.append(f"{path}.members.{k}: nested means are not supported")
        else:
            problems += convex_net_problems(m, f"{path}.members.{k}")
    return problems


def batch_norm_problems(norm: PositiveBatchNorm) -> list[str]:
    """Why the eval-mode map of ``norm`` may not be an increasing affine map (empty when it is)."""
    problems = []
    if not norm.affine:
        problems.append("has no scale and shift (affine=False); PositiveBatchNorm needs them")
    if not norm.min_scale > 0:
        problems.append(f"min_scale {norm.min_scale!r} must be > 0")
    if not norm.eps > 0:
        problems.append(f"eps {norm.eps!r} must be > 0")
    if not norm.track_running_stats or norm.running_var is None:
        problems.append("has no running statistics (eval mode would couple the inputs of a batch)")
    elif bool((norm.running_var < 0).any()):
        problems.append("running_var has negative entries")
    return problems


def build_convex_net(config: dict[str, Any], in_shape: tuple[int, ...]) -> nn.Module:
    """Build an input-convex network g from its config ``{"kind": "icnn" | "convex-conv" | "mean", ...}``."""
    config = dict(config)
    kind = config.pop("kind", None)
    if kind == ConvexMean.kind:
        return build_convex_mean(config, in_shape)
    if kind not in CONVEX_NETS:
        known = ", ".join(sorted([*CONVEX_NETS, ConvexMean.kind]))
        raise UnknownNameError(f"unknown convex network {kind!r}; known: {known}")
    cls = CONVEX_NETS[kind]
    accepted = [name for name in inspect.signature(cls.__init__).parameters if name not in ("self", "in_shape")]
    unknown = sorted(set(config) - set(accepted))
    if unknown:
        raise UnknownNameError(f"unknown setting(s) {unknown} for convex network {kind!r}; accepted: {accepted}")
    for name, value in config.items():
        values = value if name == "widths" else [value]
        lowest = 0 if name == "blocks" else 1
        if name == "batch_norm":
            ok = isinstance(value, bool)
        else:
            ok = (
                isinstance(values, (list, tuple))
                and len(values) > 0
                and all(isinstance(v, int) and not isinstance(v, bool) and v >= lowest for v in values)
            )
        if not ok:
            need = (
                "true or false"
                if name == "batch_norm"
                else (f"a non-empty list of integers ≥ {lowest}" if name == "widths" else f"an integer ≥ {lowest}")
            )
            raise ConfigError(f"convex network {kind!r}: {name} = {value!r} must be {need}")
    return cls(tuple(in_shape), **config)


def build_convex_mean(settings: dict[str, Any], in_shape: tuple[int, ...]) -> ConvexMean:
    """Build a :class:`ConvexMean` from its settings (its config without ``kind``): ``{"members": [...]}``
    or ``{"member": {...}, "count": K}``. Members are built in order (so each gets its own
    initialisation from the current random state); a member that is itself a mean is refused.

    Raises:
        ConfigError: no members, K < 1, both forms or neither, a member that is not a JSON object or is a mean.
        UnknownNameError: another setting.
    """
    unknown = sorted(set(settings) - {"members", "member", "count"})
    if unknown:
        raise UnknownNameError(
            f"unknown setting(s) {unknown} for convex network 'mean'; accepted: ['members'] or ['member', 'count']"
        )
    shorthand = "member" in settings or "count" in settings
    if shorthand == ("members" in settings):
        raise ConfigError("convex network 'mean' needs either members = [<convex config>, ...] or member + count")
    if shorthand:
        count = settings.get("count")
        if not (isinstance(count, int) and not isinstance(count, bool) and count >= 1):
            raise ConfigError(f"convex network 'mean': count = {count!r} must be an integer ≥ 1")
        members = [settings.get("member")] * count
    else:
        members = settings["members"]
        if not isinstance(members, list) or not members:
            raise ConfigError(
                f"convex network 'mean': members = {members!r} must be a non-empty list of convex configs"
            )
    for k, member in enumerate(members):
        if not isinstance(member, dict):
            raise ConfigError(f"convex network 'mean': members.{k} = {member!r} must be a JSON object")
        if member.get("kind") == ConvexMean.kind:
            raise ConfigError(f"convex network 'mean': members.{k} is a mean; nested means are not supported")
    return ConvexMean([build_convex_net(cast(dict, m), in_shape) for m in members], shorthand=shorthand)
