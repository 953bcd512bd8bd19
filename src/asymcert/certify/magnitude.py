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
"""

from __future__ import annotations

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
    """

    rounding: torch.Tensor
    rounding0: float
    overflow: torch.Tensor
    overflow0: float

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
    with torch.enable_grad():
        a, h = absolute_pass(g, af)
        (da,) = torch.autograd.grad(a.sum(), af, retain_graph=True)
        (dh,) = torch.autograd.grad(h.sum(), af)
    extra = abs(float(balance))
    return Magnitudes(
        da.flatten().detach(),
        float(a.sum().detach()) + extra,
        dh.flatten().detach() + 1.0,
        float(h.sum().detach()) + extra,
    )


def reads_only_tensors(g: nn.Module) -> bool:
    """Whether :func:`absolute_pass` of ``g`` reads nothing but g's parameters, buffers and printed settings: g is
    exactly an :class:`ICNN` or a :class:`ConvexConvNet`, or a :class:`ConvexMean` of such networks. A network of
    the user's own may read any attribute (a plain float), so its magnitudes are never kept across calls."""
    if type(g) is ConvexMean:
        return all(reads_only_tensors(m) for m in g.members)
    return type(g) in (ICNN, ConvexConvNet)


def absolute_pass(g: nn.Module, af: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, H) (N,) of the absolute evaluation of g on |f| = ``af`` (N, *feature_shape) float64 (see the module
    docstring; H here without the features themselves, which :func:`network_magnitudes` adds).

    A network of the user's own (one that declares ``convexity_contract``) may declare ``absolute_pass(af)``
    returning the same (linear in ``af``, nonnegative coefficients); without it its A and H are 0: the float
    guard then sees only the gradient's terms M, as before this bound existed (README, "How a certificate is
    computed").
    """
    if isinstance(g, ConvexMean):
        parts = [absolute_pass(m, af) for m in g.members]
        return torch.stack([a for a, _ in parts]).mean(0), torch.stack([h for _, h in parts]).sum(0)
    if isinstance(g, ICNN):
        return _icnn_absolute(g, af.flatten(1))
    if isinstance(g, ConvexConvNet):
        return _conv_absolute(g, af)
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


def _icnn_absolute(g: ICNN, af: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, H) of an ICNN: z₁ = relu(U₀f + c₀), z_{k+1} = relu(W_k BN(z_k) + U_k f + c_k), in magnitudes."""
    a = _linear_absolute(g.passthrough[0], af)
    total = a.sum(1)
    for k, (lin, norm) in enumerate(zip(g.hidden, g.norms)):
        normed, constants = _norm_absolute(norm, a)
        a = _linear_absolute(lin, normed) + _linear_absolute(g.passthrough[k + 1], af)
        total = total + normed.sum(1) + a.sum(1) + constants
    return a.sum(1), total


def _conv_absolute(g: ConvexConvNet, af: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """(A, H) of a convex conv net: stem, residual blocks z ← relu(z + conv(BN(z))), BN, readout, in magnitudes."""

    def conv(layer: nn.Conv2d, a: torch.Tensor) -> torch.Tensor:
        bias = None if layer.bias is None else layer.bias.detach().double().abs()
        return F.conv2d(a, layer.weight.detach().double().abs(), bias, padding=layer.padding)

    a = conv(g.stem, af)
    total = a.flatten(1).sum(1)
    for norm, block in zip(g.block_norms, g.block_convs):
        normed, constants = _norm_absolute(norm, a)
        step = conv(cast(nn.Conv2d, block), normed)
        a = a + step
        total = total + (normed + step + a).flatten(1).sum(1) + constants
    normed, constants = _norm_absolute(g.out_norm, a)
    out = _linear_absolute(g.readout, normed.flatten(1)).sum(1)
    return out, total + normed.flatten(1).sum(1) + out + constants
