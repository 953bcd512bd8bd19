"""How large the numbers in a convex network's evaluation can get: linear bounds in |f|.

The deployed model evaluates g(φ(x)) in float32. Its rounding grows with the magnitudes of the terms it
sums, and its evaluation overflows (to ±inf, then NaN) when any value it computes passes float32's range.
Both are bounded, for every feature vector f, by the network's **absolute evaluation**: every weight,
bias and batch-norm term replaced by its magnitude, every ReLU by the identity, run on |f|. It is linear
in |f| with nonnegative coefficients, so

* A(f) = a·|f| + a₀ bounds the magnitudes of the terms summed into the score (what its rounding grows
  with: a unit's rounding reaches the score through the weights after it, all inside A), and
* H(f) = h·|f| + h₀ bounds the sum of the magnitudes of every value computed (φ's outputs, every unit
  before and after ReLU and batch norm, the score): no value overflows while H stays below float32's range,

and for a move f → f', A and H grow by at most ‖a‖_q·‖f' − f‖_p and ‖h‖_q·‖f' − f‖_p (q the dual of p).
Unlike Σ|∇g ⊙ φ(x)|, A sees terms that cancel: relu(10⁷·Σf) − (10⁷ + 1)·Σf has gradient −1 per feature, but
sums terms of size 10⁷·Σf whose rounding can flip a decision at a point where Σf is large.

Underflow is an ABSOLUTE error, which no multiple of eps·A covers once every term is subnormal-sized. Each
operation of the evaluation (a product, a sum, a batch norm's steps) errs by at most τ, the smallest NORMAL
number of the format (2⁻¹²⁶ float32, 2⁻¹⁰²² float64): that covers flush-to-zero and denormals-are-zero
(``torch.set_flush_denormal(True)``, bfloat16/oneDNN kernels), not only IEEE gradual underflow (≤ 2⁻¹⁵⁰ per
product, sums exact), as the bounded ICNN pass's ζ does. An error at a value reaches the score multiplied by
at most that value's coefficient in A (ReLU is 1-Lipschitz), so the score's underflow error is at most
τ·N_u with N_u = Σ over values v of ops(v)·∂A/∂v (:attr:`Magnitudes.underflow`; ops(v): the operations
producing v, plus one for reading it as 0 when subnormal), a constant of the network: it does not grow
across a ball.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import cast

import torch
import torch.nn.functional as F
from torch import nn

from asymcert.certify.bounded_convex import batch_norm_terms
from asymcert.nn.convex import ICNN, ConvexConvNet, ConvexMean

FLOAT32_SAFE = float(torch.finfo(torch.float32).max) / 2.0**20
"""Below this, a sum of magnitudes H leaves float32 a factor 2²⁰ of headroom: no value overflows."""


@dataclass(frozen=True)
class Magnitudes:
    """Linear bounds on a convex network's evaluation (module docstring), per flattened feature.

    Attributes:
        rounding: a (K·n,) float64 ≥ 0; rounding0: a₀ ≥ 0 — A(f) = a·|f| + a₀ (the score's terms).
        overflow: h (K·n,) float64 ≥ 0; overflow0: h₀ ≥ 0 — H(f) = h·|f| + h₀ (every value computed).
        underflow: N_u ≥ 0, the amplified count of operations (module docstring): the evaluation's underflow
            errs by at most τ·N_u in the score, τ the format's smallest normal number (:func:`underflow_error`).
    """

    rounding: torch.Tensor
    rounding0: float
    overflow: torch.Tensor
    overflow0: float
    underflow: float = 0.0

    def at(self, features: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, H) (N,) float64 at features (N, *feature_shape)."""
        af = features.detach().double().flatten(1).abs()
        a, h = self.rounding.to(af.device), self.overflow.to(af.device)
        return af @ a + self.rounding0, af @ h + self.overflow0

    def growth(self, p: float) -> tuple[float, float]:
        """(‖a‖_q, ‖h‖_q), q the dual of p: how fast A and H grow per unit of ℓp move of the features."""
        q = 1.0 if p == float("inf") else (float("inf") if p == 1.0 else p / (p - 1.0))
        return float(torch.linalg.vector_norm(self.rounding, q)), float(torch.linalg.vector_norm(self.overflow, q))


def network_magnitudes(g: nn.Module, feature_shape: tuple[int, ...], balance: float = 0.0) -> Magnitudes:
    """The :class:`Magnitudes` of convex network g on features of ``feature_shape`` (|b| = |balance| added).

    Networks of the user's own: see :func:`absolute_pass`.
    """
    af = torch.zeros((1, *feature_shape), dtype=torch.float64, requires_grad=True)
    taps = Taps()
    with torch.enable_grad():
        a, h = absolute_pass(g, taps(af, 2), taps)  # features: φ's last rounding, and read as 0 when subnormal
        (da, *dz) = torch.autograd.grad(a.sum(), [af, *taps.values], retain_graph=True, allow_unused=True)
        (dh,) = torch.autograd.grad(h.sum(), af)
    extra = abs(float(balance))
    return Magnitudes(
        da.flatten().detach(),
        float(a.sum().detach()) + extra,
        dh.flatten().detach() + 1.0,
        float(h.sum().detach()) + extra,
        taps.count(dz) + 2.0,  # + b: one sum and b read as 0
    )


UNDERFLOW_SAFETY = 2.0
"""Covers the relative rounding (1 + γ) that every later operation applies to a propagated underflow error, and
the float64 rounding of N_u itself."""


def underflow_error(mags: Magnitudes, dtype: torch.dtype) -> float:
    """Bound on the absolute error underflow adds to one evaluation of the score in ``dtype``: 2·τ·N_u rounded up
    (τ = the smallest normal number of ``dtype``, 2⁻¹²⁶ float32/bfloat16, 2⁻¹⁰²² float64; module docstring),
    plus float64's smallest subnormal so that the product itself is rounded up even where it underflows. Of the
    order of 1e-38·N_u in float32 and 1e-308·N_u in float64: far below eps·A for a normal model."""
    return UNDERFLOW_SAFETY * torch.finfo(dtype).tiny * mags.underflow * (1.0 + 1e-9) + 2.0**-1074


class Taps:
    """Zero tensors added to the values of an absolute pass, with the number of operations (each erring by at
    most τ under underflow) that produce each value: the gradient of A at a tap is how much an error there
    reaches the score, so N_u = Σ ops·∂A/∂tap (:meth:`count`)."""

    def __init__(self, record: bool = True) -> None:
        self.record = record
        self.values: list[torch.Tensor] = []
        self.ops: list[float] = []
        self.unamplified = 0.0

    def __call__(self, a: torch.Tensor, ops: float) -> torch.Tensor:
        """``a`` + a zero tap (recorded with ``ops``); ``a`` itself when not recording."""
        if not self.record:
            return a
        tap = torch.zeros_like(a, requires_grad=True)
        self.values.append(tap)
        self.ops.append(float(ops))
        return a + tap

    def count(self, grads: Sequence[torch.Tensor | None]) -> float:
        """N_u from the gradients of A at the taps (in order), plus :attr:`unamplified`."""
        return sum(k * float(d.sum()) for k, d in zip(self.ops, grads) if d is not None) + self.unamplified

    def unknown(self, g: nn.Module, af: torch.Tensor) -> None:
        """A network that is not one of asymcert's (no taps inside it: its A is not known either): 2 per
        parameter and per feature, without amplification."""
        self.unamplified += 2.0 * (sum(p.numel() for p in g.parameters()) + af[0].numel())


def _linear_ops(layer: nn.Module) -> float:
    """Operations producing one output of a linear layer, each erring by ≤ τ under underflow: n products,
    n − 1 sums, the bias's sum, the bias and the output read as 0 (2n + 2)."""
    return 2.0 * cast(nn.Linear, layer).in_features + 2.0


def _conv_ops(layer: nn.Conv2d) -> float:
    """As :func:`_linear_ops`, n = in_channels·kernel size."""
    return 2.0 * layer.in_channels * layer.kernel_size[0] * layer.kernel_size[1] + 2.0


def reads_only_tensors(g: nn.Module) -> bool:
    """Whether :func:`absolute_pass` of ``g`` reads nothing but g's parameters, buffers and printed settings: g is
    exactly an :class:`ICNN` or a :class:`ConvexConvNet`, or a :class:`ConvexMean` of such networks. A network of
    the user's own may read any attribute (a plain float), so its magnitudes are never kept across calls."""
    if type(g) is ConvexMean:
        return all(reads_only_tensors(m) for m in g.members)
    return type(g) in (ICNN, ConvexConvNet)


def absolute_pass(g: nn.Module, af: torch.Tensor, taps: Taps | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, H) (N,) of the absolute evaluation of g on |f| = ``af`` (N, *feature_shape) float64 (see the module
    docstring; H here without the features themselves, which :func:`network_magnitudes` adds).

    A network of the user's own (one that declares ``convexity_contract``) may declare ``absolute_pass(af)``
    returning the same (linear in ``af``, nonnegative coefficients); without it its A and H are 0: the float
    guard then sees only the gradient's terms M, as before this bound existed (README, "How a certificate is
    computed"). ``taps``: record the values' underflow taps (:class:`Taps`, for :attr:`Magnitudes.underflow`).
    """
    tap = Taps(record=False) if taps is None else taps
    if isinstance(g, ConvexMean):
        parts = [absolute_pass(m, af, tap) for m in g.members]
        k = len(parts)  # the mean: K − 1 sums, a division, read as 0
        return tap(torch.stack([a for a, _ in parts]).mean(0), k + 1), torch.stack([h for _, h in parts]).sum(0)
    if isinstance(g, ICNN):
        return _icnn_absolute(g, af.flatten(1), tap)
    if isinstance(g, ConvexConvNet):
        return _conv_absolute(g, af, tap)
    tap.unknown(g, af)
    declared = getattr(g, "absolute_pass", None)
    if callable(declared):
        a, h = declared(af)
        return a, h
    zero = af.flatten(1).sum(1) * 0.0  # (keeps the graph to af: zero coefficients)
    return zero, zero


def _norm_absolute(norm: nn.Module, a: torch.Tensor, channel_dim: int = 1) -> tuple[torch.Tensor, torch.Tensor]:
    """(|BN(z)| ≤ |γ/σ|·|z| + |β| + |γμ/σ| per channel for |z| ≤ a, and the sum of those per-channel constants
    γ/σ, |β|, |γμ/σ| themselves: an eval batch norm computes its scale before it scales, and a γ/√ε beyond
    float32 (γ = 3e38, variance 0) is ∞ there although its float64 value is finite); (a, 0) without one."""
    if not isinstance(norm, nn.modules.batchnorm._BatchNorm):
        return a, torch.zeros((), dtype=a.dtype)
    weight, bias, mean, var = (t.double() for t in batch_norm_terms(norm))
    scale = weight.abs() / torch.sqrt(var + norm.eps)
    shape = [1] * a.dim()
    shape[channel_dim] = -1
    shift = bias.abs() + (scale * mean).abs()
    return scale.view(shape) * a + shift.view(shape), (scale + shift).sum()


def _linear_absolute(layer: nn.Module, a: torch.Tensor) -> torch.Tensor:
    """|W|·a + |b| of a linear layer (N, out)."""
    linear = cast(nn.Linear, layer)  # (NonnegLinear, SignedLinear: nn.Linear's weight and bias)
    bias = linear.bias
    return F.linear(a, linear.weight.detach().double().abs(), None if bias is None else bias.detach().double().abs())


def _tapped_norm(norm: nn.Module, a: torch.Tensor, tap: Taps) -> tuple[torch.Tensor, torch.Tensor]:
    """:func:`_norm_absolute`, a batch norm's output tapped with its operations (x − μ, ×1/σ, ×γ, + β, read as 0)."""
    normed, constants = _norm_absolute(norm, a)
    return (tap(normed, 5) if isinstance(norm, nn.modules.batchnorm._BatchNorm) else normed), constants


def _icnn_absolute(g: ICNN, af: torch.Tensor, tap: Taps) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, H) of an ICNN: z₁ = relu(U₀f + c₀), z_{k+1} = relu(W_k BN(z_k) + U_k f + c_k), in magnitudes (each
    layer's outputs tapped with their operations; a batch norm's: x − μ, ×1/σ, ×γ, + β, read as 0)."""
    a = tap(_linear_absolute(g.passthrough[0], af), _linear_ops(g.passthrough[0]))
    total = a.sum(1)
    for k, (lin, norm) in enumerate(zip(g.hidden, g.norms)):
        normed, constants = _tapped_norm(norm, a, tap)
        inner = tap(_linear_absolute(lin, normed), _linear_ops(lin))
        a = inner + tap(_linear_absolute(g.passthrough[k + 1], af), _linear_ops(g.passthrough[k + 1]) + 1)
        total = total + normed.sum(1) + a.sum(1) + constants
    return a.sum(1), total


def _conv_absolute(g: ConvexConvNet, af: torch.Tensor, tap: Taps) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, H) of a convex conv net: stem, residual blocks z ← relu(z + conv(BN(z))), BN, readout, in magnitudes
    (every value tapped with its operations, as in :func:`_icnn_absolute`; a residual sum: 2)."""

    def conv(layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
        bias = None if layer.bias is None else layer.bias.detach().double().abs()
        return tap(F.conv2d(a, layer.weight.detach().double().abs(), bias, padding=layer.padding), _conv_ops(layer))

    a = conv(g.stem, af)
    total = a.flatten(1).sum(1)
    for norm, block in zip(g.block_norms, g.block_convs):
        normed, constants = _tapped_norm(norm, a, tap)
        step = conv(cast(nn.Conv2d, block), normed)
        a = tap(a + step, 2)
        total = total + (normed + step + a).flatten(1).sum(1) + constants
    normed, constants = _tapped_norm(g.out_norm, a, tap)
    out = tap(_linear_absolute(g.readout, normed.flatten(1)), _linear_ops(g.readout)).sum(1)
    return out, total + normed.flatten(1).sum(1) + out + constants
