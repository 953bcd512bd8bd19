"""Bound propagation through standard ReLU networks: IBP, CROWN-IBP and CROWN, batched.

Supported networks: an ``nn.Sequential`` (or a model with such a ``.net``) of ``nn.Linear``,
``nn.Conv2d``, ``nn.ReLU``, ``nn.Flatten``, ``nn.Identity`` and
:class:`~asymcert.nn.feature_maps.Shift` (x − μ), nested Sequentials allowed. Exact types only (a
subclass may override ``forward``; refused by module path), convolutions zero-padded by integers (any
stride, dilation and groups; ``padding_mode`` "circular", "reflect" or "replicate" is refused), and
no hooks or replaced ``forward`` on any module (:func:`~asymcert.certify.inputs.check_model`).

The perturbation set is the ℓp ball {x' : ‖x' − x‖_p ≤ ε} around every input (any p ≥ 1, ε per
input), over all of R^d (the input range is not intersected, like every other certificate here).

* IBP (Gowal et al. 2018): interval arithmetic; the first affine layer is bounded exactly over
  the ball (centre ± ε‖row‖_{p*}).
* CROWN (Zhang et al. 2018): backward linear relaxation. Each unstable ReLU (l < 0 < u) is
  bounded above by the chord u(z − l)/(u − l) and below by αz with α = 1 if u ≥ −l else 0
  ("adaptive"; ``lower_slope`` can fix α to 0 or 1). The linear bound is concretised over the
  ball with the dual norm: min_{‖δ‖_p ≤ ε} aᵀ(x + δ) = aᵀx − ε‖a‖_{p*}.
* CROWN-IBP (Zhang et al. 2020): IBP bounds for the pre-activation of every ReLU, CROWN for
  the output. Full CROWN computes every ReLU's pre-activation bounds with CROWN too
  (intersected with the IBP ones, which keeps them sound and never looser).

Every function is differentiable (used for certified training) and works in the dtype of the
network and input; the certifiers run it in float64.

Certifiers ``"ibp"``, ``"crown-ibp"``, ``"crown"`` (binary score models, (N,) or (N, 1) outputs)
report per input the largest ε at which the score's lower bound was *verified* positive, found
by doubling then bisection; ``"crown-ibp"`` and ``"crown"`` use the better of their bound and
the IBP bound at each ε (both are sound, so the maximum is too).

Float safety. The certificate covers the model's OWN decisions, computed in its dtype. A bound
counts as verified when lower bound − A(ε) > tolerance·(1 + |s(x)|), where A(ε) (see
:func:`rounding_allowance`) is an ABSOLUTE bound on (a) the model's own rounding error anywhere
in the ball and (b) the rounding of the bound computation itself, from the standard dot-product
bound γ_n applied layer by layer to the interval magnitudes ((a) carried to the score by an interval
Jacobian, (b) by |W| products). A relative tolerance alone is not
enough: near the decision boundary the score is tiny and a float32 model's rounding (≈ n·u·Σ|terms|)
dwarfs any multiple of it. ``precision="float64"`` (default) computes the bounds on a float64
copy (term (b) is then negligible); ``precision="model"`` computes them in the model's dtype and
pays for (b) with a C-fold larger allowance (:func:`bound_rounding_factor`). ε is rounded up
into the dtype of the bound computation. Assumed: PyTorch's float kernels compute dot products
and direct convolutions (any order, FMA or not); reduced-precision float32 matmuls (TF32,
bfloat16) are detected from PyTorch's settings (:func:`~asymcert.certify.modes.matmul_unit_roundoff`).
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import torch
import torch.nn.functional as F
from torch import nn

from asymcert.certify import options as option_checks
from asymcert.certify.functional import dual_exponent
from asymcert.certify.inputs import check_model
from asymcert.certify.modes import UnsoundOptionError, check_precision, eval_mode, gamma, matmul_unit_roundoff
from asymcert.certify.result import Certificate, Guarantee, normalize_norm
from asymcert.errors import ModelError
from asymcert.nn.convex import conv_problems, type_problems
from asymcert.nn.feature_maps import Shift

SUPPORTED = (nn.Linear, nn.Conv2d, nn.ReLU, nn.Flatten, nn.Identity, Shift)
METHODS = ("ibp", "crown-ibp", "crown")
LOWER_SLOPES = ("adaptive", "zero", "one")
MAX_STEPS = 64
"""The most bisection steps of the radius search (each halves the bracket: 64 reach float64's resolution;
20,000 took 10 s on 2 inputs for the same radii)."""
# Maximal number of elements of one backward-pass coefficient tensor (N·M·d) in full CROWN.
_CHUNK_ELEMENTS = 1 << 23

Box = tuple[torch.Tensor, torch.Tensor]


class UnsupportedNetworkError(ModelError):
    """A network asymcert cannot vouch for because bound propagation (or the orthogonal certifier's rounding
    analysis) does not describe one of its layers: a :class:`~asymcert.errors.ModelError`, as every refused model."""


def sequential_layers(
    model: nn.Module, supported: tuple[type[nn.Module], ...] | None = None, who: str = "bound propagation"
) -> list[nn.Module]:
    """The flat list of layers of ``model`` (an ``nn.Sequential`` or a model with one as ``.net``).

    Every layer must be of exactly one of the ``supported`` types (:func:`~asymcert.nn.convex.type_problems`: a
    subclass may compute something else than the bounds assume), nested ``nn.Sequential`` (exact) allowed, and
    every convolution zero-padded by integers (:func:`~asymcert.nn.convex.conv_problems`).

    Args:
        supported: the layer types the caller can handle (default :data:`SUPPORTED`).
        who: the caller's name, for the error message.
    Raises:
        UnsupportedNetworkError: not an ``nn.Sequential``; naming by module path (e.g. ``net.3``) every layer
            outside ``supported`` and every convolution the bounds do not pad like.
    """
    supported = SUPPORTED if supported is None else supported
    inner = getattr(model, "net", None)
    net, path = (inner, "net") if isinstance(inner, nn.Sequential) else (model, "")
    if not isinstance(net, nn.Sequential):
        raise UnsupportedNetworkError(
            f"{who} needs an nn.Sequential (or a model with one as .net), got {type(model).__name__}"
        )
    out: list[nn.Module] = []
    problems = type_problems(net, (nn.Sequential,), path or type(net).__name__)
    if not problems:
        problems = _collect_layers(net, path, supported, out)
    if problems:
        raise UnsupportedNetworkError(f"{who} cannot vouch for this network: " + "; ".join(problems))
    return out


def check_chain(model: nn.Module, layers: list[nn.Module], x: torch.Tensor, score: torch.Tensor) -> None:
    """Refuse ``model`` when its scores (N,) at ``x`` are not its layer chain's (``layers`` applied in turn, what
    the bounds are computed on): a model whose ``forward`` is not ``net(x)`` (a wrapper of the user's own that
    negates or rescales it) would get bounds of another function. Both run the same operations in the same
    order for asymcert's models and plain ``nn.Sequential``s, so the values are compared exactly.

    Raises:
        UnsupportedNetworkError: naming the model's class and the first input where they differ.
    """
    chain = x
    with eval_mode(model), torch.no_grad():
        for layer in layers:
            chain = layer(chain)
    chain = chain.reshape(x.shape[0], -1)
    if chain.shape[1] != 1:
        return  # (a multi-output chain: the caller refuses it by its output count)
    differ = ~((chain[:, 0] == score) | (torch.isnan(chain[:, 0]) & torch.isnan(score)))
    if bool(differ.any()):
        i = int(torch.nonzero(differ)[0])
        raise UnsupportedNetworkError(
            f"{type(model).__name__}.forward does not compute its layer chain (.net): at input {i} it gives "
            f"{float(score[i])!r}, the chain {float(chain[i, 0])!r}; the bounds are the chain's, so its own "
            "forward cannot be vouched for"
        )


def _collect_layers(
    net: nn.Sequential, path: str, supported: tuple[type[nn.Module], ...], out: list[nn.Module]
) -> list[str]:
    """Append ``net``'s layers (nested exact ``nn.Sequential`` flattened) to ``out``; return the problems found,
    each starting with the layer's module path under ``path``."""
    problems = []
    for name, layer in net.named_children():
        where = f"{path}.{name}" if path else name
        if type(layer) is nn.Sequential:
            problems += _collect_layers(layer, where, supported, out)
            continue
        wrong = type_problems(layer, supported, where)
        problems += wrong if wrong else conv_problems(layer, where) if isinstance(layer, nn.Conv2d) else []
        out.append(layer)
    return problems


def _eps(eps: float | torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    e = torch.as_tensor(eps, dtype=x.dtype, device=x.device)
    return e.expand(x.shape[0]).clone() if e.dim() == 0 else e.reshape(x.shape[0])


def _bcast(v: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """(N,) → (N, 1, …, 1) broadcasting against ``like``."""
    return v.reshape(-1, *([1] * (like.dim() - 1)))


def dual_norm_rows(a: torch.Tensor, q: float) -> torch.Tensor:
    """ℓq norm over the last dimension, differentiable, in ``a``'s dtype: (..., d) → (...)."""
    if math.isinf(q):
        return a.abs().amax(dim=-1)
    if q == 1:
        return a.abs().sum(dim=-1)
    return torch.linalg.vector_norm(a, ord=q, dim=-1)


def _weight_row_dual_norm(layer: nn.Linear | nn.Conv2d, q: float) -> torch.Tensor:
    """‖row‖_q of every output unit of a Linear (out,) or Conv2d (out channels,) layer."""
    return dual_norm_rows(layer.weight.reshape(layer.weight.shape[0], -1), q)


def layer_shapes(layers: list[nn.Module], x: torch.Tensor) -> list[tuple[int, ...]]:
    """Shape (without batch) of the input of every layer, plus the output shape at the end."""
    shapes = [tuple(x.shape[1:])]
    with torch.no_grad():
        h = x[:1]
        for layer in layers:
            h = layer(h)
            shapes.append(tuple(h.shape[1:]))
    return shapes


def ibp_boxes(layers: list[nn.Module], x: torch.Tensor, eps: float | torch.Tensor, p: float) -> list[Box]:
    """Interval bounds of every layer's output (and of the input first): a list of len(layers) + 1 boxes.

    Args:
        layers: from :func:`sequential_layers`.
        x: (N, *input_shape) ball centres.
        eps: radius per input (N,) or a scalar, in ℓp.
        p: the norm of the ball.
    Returns:
        ``boxes[k] = (lower, upper)`` of the input of layer k (``boxes[0]``: the ball's bounding
        box x ± ε; ``boxes[-1]``: the network output), each (N, *shape).
    """
    e = _eps(eps, x)
    q = dual_exponent(p)
    centre, radius = x, _bcast(e, x).expand_as(x)
    boxes: list[Box] = [(x - radius, x + radius)]
    ball = True  # (centre, ε) still describes an ℓp ball (only shifts and reshapes so far)
    lo, hi = boxes[0]
    for layer in layers:
        if isinstance(layer, (Shift, nn.Flatten, nn.Identity)):
            if ball:
                centre = layer(centre)
            lo, hi = layer(lo), layer(hi)
        elif isinstance(layer, nn.Linear):
            if ball:
                c = layer(centre)
                r = _bcast(e, c) * _weight_row_dual_norm(layer, q)
            else:
                mid, rad = (hi + lo) / 2, (hi - lo) / 2
                c = layer(mid)
                r = F.linear(rad, layer.weight.abs())
            lo, hi, ball = c - r, c + r, False
        elif isinstance(layer, nn.Conv2d):
            if ball:
                c = layer(centre)
                r = _bcast(e, c) * _weight_row_dual_norm(layer, q).view(1, -1, 1, 1)
            else:
                mid, rad = (hi + lo) / 2, (hi - lo) / 2
                c = layer(mid)
                r = F.conv2d(rad, layer.weight.abs(), None, layer.stride, layer.padding, layer.dilation, layer.groups)
            lo, hi, ball = c - r, c + r, False
        elif isinstance(layer, nn.ReLU):
            lo, hi, ball = F.relu(lo), F.relu(hi), False
        else:  # pragma: no cover - sequential_layers rejects these
            raise UnsupportedNetworkError(type(layer).__name__)
        boxes.append((lo, hi))
    return boxes


def _conv_backward(layer: nn.Conv2d, a: torch.Tensor, weight: torch.Tensor, in_shape: tuple[int, ...]) -> torch.Tensor:
    """aᵀ·(the convolution with ``weight``): (B, C_out, H', W') → (B, *in_shape), by a transposed convolution."""
    out_shape = a.shape[1:]
    padding = conv_padding(layer)
    pad = [
        in_shape[k + 1]
        - (
            (out_shape[k + 1] - 1) * layer.stride[k]
            - 2 * padding[k]
            + layer.dilation[k] * (layer.kernel_size[k] - 1)
            + 1
        )
        for k in range(2)
    ]
    return F.conv_transpose2d(a, weight, None, layer.stride, padding, tuple(pad), layer.groups, layer.dilation)


def conv_padding(layer: nn.Conv2d) -> tuple[int, ...]:
    """``layer.padding`` as ints; string paddings ("same", "valid") are not supported by the bounds."""
    if isinstance(layer.padding, str):
        raise UnsupportedNetworkError(
            f"{type(layer).__name__} with padding={layer.padding!r} is not supported; give the padding as integers"
        )
    return layer.padding


def _relu_relaxation(lo: torch.Tensor, hi: torch.Tensor, lower_slope: str) -> tuple[torch.Tensor, ...]:
    """Slopes and intercept of the linear bounds of relu on [lo, hi]: (lower slope, upper slope, upper intercept)."""
    active = lo >= 0
    unstable = (lo < 0) & (hi > 0)
    denom = torch.where(unstable, hi - lo, torch.ones_like(hi))
    up_slope = torch.where(unstable, hi / denom, active.to(hi.dtype))
    up_icpt = torch.where(unstable, -lo * hi / denom, torch.zeros_like(hi))
    if lower_slope == "adaptive":
        alpha = (hi >= -lo).to(hi.dtype)
    elif lower_slope == "zero":
        alpha = torch.zeros_like(hi)
    elif lower_slope == "one":
        alpha = torch.ones_like(hi)
    else:
        raise ValueError(f"lower_slope must be one of {LOWER_SLOPES}, got {lower_slope!r}")
    low_slope = torch.where(unstable, alpha, active.to(hi.dtype))
    return low_slope, up_slope, up_icpt


def backward_lower_bound(
    layers: list[nn.Module],
    end: int,
    coeff: torch.Tensor,
    x: torch.Tensor,
    eps: torch.Tensor,
    p: float,
    boxes: list[Box],
    shapes: list[tuple[int, ...]],
    lower_slope: str = "adaptive",
) -> torch.Tensor:
    """CROWN: lower bounds of ``coeff · h_end`` over the ball, h_end the output of layer ``end - 1``.

    Args:
        coeff: (N, M, *shape of h_end) linear specifications (M per input).
        boxes: pre-activation bounds, ``boxes[j]`` the input box of layer j (used at ReLUs).
        shapes: from :func:`layer_shapes`.
    Returns:
        (N, M) lower bounds.
    """
    n, m = coeff.shape[:2]
    a = coeff
    bias = torch.zeros(n, m, dtype=x.dtype, device=x.device)
    for j in range(end - 1, -1, -1):
        layer = layers[j]
        if isinstance(layer, nn.Linear):
            if layer.bias is not None:
                bias = bias + a @ layer.bias
            a = a @ layer.weight
        elif isinstance(layer, nn.Conv2d):
            out_shape, in_shape = shapes[j + 1], shapes[j]
            if layer.bias is not None:
                bias = bias + torch.einsum("nmchw,c->nm", a, layer.bias)
            a = _conv_backward(layer, a.reshape(n * m, *out_shape), layer.weight, in_shape).reshape(n, m, *in_shape)
        elif isinstance(layer, nn.Flatten):
            a = a.reshape(n, m, *shapes[j])
        elif isinstance(layer, Shift):
            bias = bias - (a * layer.mean).flatten(2).sum(-1)
        elif isinstance(layer, nn.Identity):
            pass
        elif isinstance(layer, nn.ReLU):
            lo, hi = boxes[j]
            low_slope, up_slope, up_icpt = (t.unsqueeze(1) for t in _relu_relaxation(lo, hi, lower_slope))
            pos, neg = a.clamp(min=0), a.clamp(max=0)
            bias = bias + (neg * up_icpt).flatten(2).sum(-1)
            a = pos * low_slope + neg * up_slope
        else:  # pragma: no cover
            raise UnsupportedNetworkError(type(layer).__name__)
    a = a.flatten(2)
    q = dual_exponent(p)
    return (a * x.flatten(1).unsqueeze(1)).sum(-1) + bias - eps.unsqueeze(1) * dual_norm_rows(a, q)


def _unit_spec(n: int, shape: tuple[int, ...], units: torch.Tensor, like: torch.Tensor) -> torch.Tensor:
    """Rows [e_u; −e_u] for the flat unit indices ``units`` (k,) of a tensor of ``shape``: (n, 2k, *shape)."""
    d, k = math.prod(shape), units.numel()
    spec = torch.zeros(2 * k, d, dtype=like.dtype, device=like.device)
    rows = torch.arange(k, device=like.device)
    spec[rows, units] = 1.0
    spec[rows + k, units] = -1.0
    return spec.reshape(2 * k, *shape).unsqueeze(0).expand(n, -1, *shape)


def _crown_box(
    layers: list[nn.Module],
    end: int,
    x: torch.Tensor,
    e: torch.Tensor,
    p: float,
    boxes: list[Box],
    shapes: list[tuple[int, ...]],
    lower_slope: str,
    units: torch.Tensor | None = None,
) -> Box:
    """CROWN bounds (lower, upper) of the output of layer ``end - 1``, computed in chunks of units.

    ``units``: flat indices of the units to bound (default all); the others get (−inf, inf).
    """
    n, shape = x.shape[0], shapes[end]
    d = math.prod(shape)
    units = torch.arange(d, device=x.device) if units is None else units.to(x.device)
    per_unit = 2 * max(1, n * max(math.prod(s) for s in shapes[: end + 1]))
    step = max(1, _CHUNK_ELEMENTS // per_unit)
    lo = torch.full((n, d), -math.inf, dtype=x.dtype, device=x.device)
    hi = torch.full((n, d), math.inf, dtype=x.dtype, device=x.device)
    for s in range(0, units.numel(), step):
        chunk = units[s : s + step]
        both = backward_lower_bound(layers, end, _unit_spec(n, shape, chunk, x), x, e, p, boxes, shapes, lower_slope)
        lo[:, chunk], hi[:, chunk] = both[:, : chunk.numel()], -both[:, chunk.numel() :]
    return lo.reshape(n, *shape), hi.reshape(n, *shape)


def crown_boxes(
    layers: list[nn.Module], x: torch.Tensor, eps: float | torch.Tensor, p: float, lower_slope: str = "adaptive"
) -> list[Box]:
    """Like :func:`ibp_boxes`, with every ReLU's input bounds tightened by CROWN (intersected with IBP)."""
    e = _eps(eps, x)
    shapes = layer_shapes(layers, x)
    boxes = ibp_boxes(layers, x, e, p)
    for j, layer in enumerate(layers):
        if isinstance(layer, nn.ReLU) and j > 0:
            # only units unstable under IBP (for some input of the batch) can gain from CROWN: a stable
            # unit's relaxation is exact whatever its bounds
            ilo, ihi = boxes[j]
            unstable = ((ilo < 0) & (ihi > 0)).reshape(x.shape[0], -1).any(dim=0)
            units = torch.nonzero(unstable).flatten()
            if units.numel() == 0:
                continue
            lo, hi = _crown_box(layers, j, x, e, p, boxes, shapes, lower_slope, units)
            boxes[j] = (torch.maximum(boxes[j][0], lo), torch.minimum(boxes[j][1], hi))
    return boxes


def interval_bounds(model: nn.Module, x: torch.Tensor, eps: float | torch.Tensor, p: float = math.inf) -> Box:
    """IBP bounds of the network output over the ℓp ball of radius ``eps`` around each input.

    Args:
        model: an ``nn.Sequential`` of supported layers (or a model with one as ``.net``).
        x: (N, *input_shape) ball centres (raw units).
        eps: (N,) or scalar radius; p: the ℓp norm (p ≥ 1, ``math.inf`` for ℓ∞).
    Returns:
        (lower, upper), each (N, *output_shape).
    """
    return ibp_boxes(sequential_layers(model), x, eps, p)[-1]


def crown_bounds(
    model: nn.Module,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    p: float = math.inf,
    intermediate: str = "ibp",
    lower_slope: str = "adaptive",
) -> Box:
    """CROWN bounds of the network output over the ℓp ball around each input.

    Args:
        intermediate: ``"ibp"`` (CROWN-IBP: IBP bounds for the ReLU inputs) or ``"crown"``.
        lower_slope: ``"adaptive"``, ``"zero"`` or ``"one"`` (see the module docstring).
    Returns:
        (lower, upper), each (N, *output_shape). Not intersected with IBP at the output.
    """
    layers = sequential_layers(model)
    e = _eps(eps, x)
    shapes = layer_shapes(layers, x)
    if intermediate == "ibp":
        boxes = ibp_boxes(layers, x, e, p)
    elif intermediate == "crown":
        boxes = crown_boxes(layers, x, e, p, lower_slope)
    else:
        raise ValueError(f"intermediate must be 'ibp' or 'crown', got {intermediate!r}")
    return _crown_box(layers, len(layers), x, e, p, boxes, shapes, lower_slope)


def score_lower_bound(
    model: nn.Module,
    x: torch.Tensor,
    eps: float | torch.Tensor,
    p: float = math.inf,
    method: str = "crown-ibp",
    lower_slope: str = "adaptive",
) -> torch.Tensor:
    """Lower bound of a single-output network's score over the ℓp ball: (N,).

    ``"ibp"``: IBP. ``"crown-ibp"``: max(IBP, CROWN-IBP). ``"crown"``: max(IBP, CROWN). One
    backward pass with a single specification per input (cheap, used for training too).
    """
    return lower_bound_and_boxes(sequential_layers(model), x, eps, p, method, lower_slope)[0]


def lower_bound_and_boxes(
    layers: list[nn.Module],
    x: torch.Tensor,
    eps: float | torch.Tensor,
    p: float,
    method: str,
    lower_slope: str = "adaptive",
) -> tuple[torch.Tensor, list[Box]]:
    """:func:`score_lower_bound` on ``layers``, also returning the boxes it used: ((N,), boxes)."""
    if method not in METHODS:
        raise ValueError(f"unknown bound method {method!r}; known: {METHODS}")
    e = _eps(eps, x)
    boxes = crown_boxes(layers, x, e, p, lower_slope) if method == "crown" else ibp_boxes(layers, x, e, p)
    lower = boxes[-1][0].reshape(x.shape[0], -1)
    if lower.shape[1] != 1:
        raise UnsupportedNetworkError(f"score_lower_bound needs a single output, the network has {lower.shape[1]}")
    lower = lower[:, 0]
    if method == "ibp":
        return lower, boxes
    shapes = layer_shapes(layers, x)
    spec = torch.ones(x.shape[0], 1, *shapes[-1], dtype=x.dtype, device=x.device)
    crown = backward_lower_bound(layers, len(layers), spec, x, e, p, boxes, shapes, lower_slope)[:, 0]
    return torch.maximum(lower, crown), boxes


# ---------------------------------------------------------------- rounding-error allowance


def bound_rounding_factor(layers: list[nn.Module]) -> int:
    """C of :func:`rounding_allowance`: how many forward passes' worth of roundings a bound computation makes.

    IBP rounds each affine layer's centre and radius (2 passes); CROWN's backward pass multiplies
    the coefficients once per affine layer, and an error made at layer j is carried by every
    later product, so its share grows with the depth: C = 2·(number of affine layers) + 4.
    """
    return 2 * sum(isinstance(layer, (nn.Linear, nn.Conv2d)) for layer in layers) + 4


def _affine_abs(layer: nn.Linear | nn.Conv2d, v: torch.Tensor) -> torch.Tensor:
    """|W| v for a Linear or Conv2d layer, in float64 (no bias)."""
    w = layer.weight.detach().double().abs()
    if isinstance(layer, nn.Linear):
        return F.linear(v, w)
    return F.conv2d(v, w, None, layer.stride, layer.padding, layer.dilation, layer.groups)


def _forward_rounding(
    layers: list[nn.Module], boxes: list[Box], u_model: float, u_ref: float
) -> tuple[list[torch.Tensor], list[torch.Tensor], torch.Tensor]:
    """Forward half of :func:`rounding_allowance`.

    Returns:
        (local, spread, ref_err): per layer, the model's own rounding δ_k of that layer's output
        (N, *shape; zeros for exact layers) and the bound e_k (N, *shape of its INPUT) on how far
        any computed value (model or bound) is from the exact one; and the (N, *out) bound of the
        bound computation's own rounding at the output, all in float64.
    """
    u_all = u_model + bound_rounding_factor(layers) * u_ref
    u_ref_c = bound_rounding_factor(layers) * u_ref
    lo, hi = boxes[0]
    mag = torch.maximum(lo.abs(), hi.abs()).double()
    e_all = e_ref = u_ref * mag  # the ball's box x ± ε, rounded
    local, spread = [], []
    for layer, (lo, hi) in zip(layers, boxes[1:]):
        spread.append(e_all)
        if isinstance(layer, Shift):  # one rounding of x − μ
            term = mag + layer.mean.detach().double().abs()
            local.append(u_model * term)
            e_all, e_ref = e_all + u_all * term, e_ref + u_ref_c * term
        elif isinstance(layer, (nn.Linear, nn.Conv2d)):  # a dot product (fan-in terms) plus the bias
            fan_in = math.prod(layer.weight.shape[1:])
            term = _affine_abs(layer, mag)
            if layer.bias is not None:
                b = layer.bias.detach().double().abs()
                term = term + (b if isinstance(layer, nn.Linear) else b.view(1, -1, 1, 1))
            local.append(gamma(fan_in + 2, u_model) * term)
            e_all = _affine_abs(layer, e_all) + gamma(fan_in + 2, u_all) * term
            e_ref = _affine_abs(layer, e_ref) + gamma(fan_in + 2, u_ref_c) * term
        else:  # ReLU (1-Lipschitz), Flatten, Identity: exact
            if isinstance(layer, nn.Flatten):
                e_all, e_ref = layer(e_all), layer(e_ref)
            local.append(torch.zeros_like(e_all))
        mag = torch.maximum(lo.abs(), hi.abs()).double() + e_all
    return local, spread, e_ref


def _jacobian_backward(
    layer: nn.Module, jl: torch.Tensor, jh: torch.Tensor, box: Box, spread: torch.Tensor
) -> tuple[torch.Tensor, torch.Tensor]:
    """Interval [jl, jh] of ∂s/∂(layer output) → the interval of ∂s/∂(layer input), (N, *shape), float64."""
    if isinstance(layer, (nn.Linear, nn.Conv2d)):
        w = layer.weight.detach().double()
        c, r = (jl + jh) / 2, (jh - jl) / 2
        if isinstance(layer, nn.Linear):
            c, r = c @ w, r @ w.abs()
        else:
            c, r = _conv_backward(layer, c, w, box[0].shape[1:]), _conv_backward(layer, r, w.abs(), box[0].shape[1:])
        return c - r, c + r
    if isinstance(layer, nn.ReLU):  # slope 1 where surely on, 0 where surely off, [0, 1] otherwise
        lo, hi = box[0].double() - spread, box[1].double() + spread
        on, off = lo >= 0, hi <= 0
        zero = torch.zeros_like(jl)
        unstable = ~on & ~off
        return (
            torch.where(on, jl, torch.where(unstable, jl.clamp(max=0.0), zero)),
            torch.where(on, jh, torch.where(unstable, jh.clamp(min=0.0), zero)),
        )
    if isinstance(layer, nn.Flatten):
        return jl.reshape(box[0].shape), jh.reshape(box[0].shape)
    return jl, jh  # Shift, Identity


def rounding_allowance(layers: list[nn.Module], boxes: list[Box], u_model: float, u_ref: float) -> torch.Tensor:
    """Absolute bound on the rounding of the model's score and of the computed lower bound, over the ball.

    With boxes ``[lo_k, hi_k]`` holding layer k's input on the ball, every layer's own rounding is
    bounded componentwise (all in float64, any summation order):

        Shift (x − μ):    δ ≤ u·(M + |μ|)                (one rounding of the result)
        Linear / Conv2d:  δ ≤ γ_{n+2}(u)·(|W| M + |b|)   (n = fan-in: a dot product plus the bias)
        ReLU, Flatten:    δ = 0                          (exact)

    with M = max(|lo|, |hi|) + e a bound on the magnitude of the computed input, e from the
    recurrence e ← |W| e + δ. The model's score (unit roundoff u_model) then differs from the
    exact one by at most Σ_k |J_k|·δ_k, J_k the interval Jacobian of the score with respect to
    layer k's output over the widened boxes (a backward pass: ReLU slopes 1 where surely on, 0
    where surely off, [0, 1] otherwise): a mean-value argument on each layer's injected error,
    much tighter than |W|-products because signed weights cancel. The bound computation's own
    rounding (IBP/CROWN at u_ref) adds e at the output with u = C·u_ref
    (:func:`bound_rounding_factor`: every term of the bound is a product of the same |W| factors
    and magnitudes).

    Args:
        layers: from :func:`sequential_layers`. boxes: (lo, hi) per layer input and the output,
            e.g. from :func:`ibp_boxes` (any dtype).
        u_model: unit roundoff of the model's own arithmetic (:func:`matmul_unit_roundoff`).
        u_ref: unit roundoff of the arithmetic the bound was computed in.
    Returns:
        (N,) float64 allowance ≥ 0 on the score (raised by a relative 1e-6 for its own rounding).
    """
    local, spread, ref_err = _forward_rounding(layers, boxes, u_model, u_ref)
    n = boxes[0][0].shape[0]
    jl = jh = torch.ones(boxes[-1][0].shape, dtype=torch.float64, device=boxes[0][0].device)
    total = torch.zeros(n, dtype=torch.float64, device=jl.device)
    for k in range(len(layers) - 1, -1, -1):
        total = total + (torch.maximum(jl.abs(), jh.abs()) * local[k]).reshape(n, -1).sum(1)
        jl, jh = _jacobian_backward(layers[k], jl, jh, boxes[k], spread[k])
    return (total + ref_err.reshape(n, -1)[:, 0]) * (1.0 + 1e-6)


# ---------------------------------------------------------------- certified radii by bisection


def verified_radius(
    verify: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
    n: int,
    start: float,
    max_radius: float,
    steps: int,
    device: torch.device | str = "cpu",
    shrink: int = 24,
) -> torch.Tensor:
    """Largest radius per input at which ``verify`` succeeded: bracketing by factors of 2, then bisection.

    Args:
        verify: ``verify(index (k,), eps (k,)) -> (k,) bool``: does the certificate hold at radius
            ``eps`` for inputs ``index``? Must be monotone in eps for a tight answer; the answer is
            sound regardless (only radii where ``verify`` returned True are ever reported).
        n: number of inputs; start: first radius tried; max_radius: the largest radius tried.
        steps: bisection steps after bracketing (relative resolution 2^-steps).
        shrink: when ``start`` fails, halve it at most this many times looking for a verified radius
            (below start·2^-shrink the answer is 0).
    Returns:
        (n,) float64 radii, each one at which ``verify`` returned True (or 0).
    """
    lo = torch.zeros(n, dtype=torch.float64, device=device)
    hi = torch.full((n,), float(start), dtype=torch.float64, device=device)
    first = verify(torch.arange(n, device=device), hi.clone())
    failed = torch.nonzero(~first).flatten()
    for _ in range(shrink):  # downwards: halve until verified
        if failed.numel() == 0:
            break
        ok = verify(failed, hi[failed] / 2)
        lo[failed[ok]] = hi[failed[ok]] / 2
        hi[failed] = torch.where(ok, hi[failed], hi[failed] / 2)
        failed = failed[~ok]
    lo[failed] = 0.0
    open_ = first.clone()  # upwards: double while verified
    lo[first] = hi[first]
    done = open_ & (hi >= max_radius)
    open_ &= ~done
    hi[open_] = torch.clamp(hi[open_] * 2, max=max_radius)
    while bool(open_.any()):
        idx = torch.nonzero(open_).flatten()
        ok = verify(idx, hi[idx])
        good = idx[ok]
        lo[good] = hi[good]
        at_cap = good[hi[good] >= max_radius]
        open_[idx[~ok]] = False
        open_[at_cap] = False
        grow = good[hi[good] < max_radius]
        hi[grow] = torch.clamp(hi[grow] * 2, max=max_radius)
    todo = lo < hi  # capped inputs have lo == hi
    for _ in range(steps):
        idx = torch.nonzero(todo).flatten()
        if idx.numel() == 0:
            break
        mid = (lo[idx] + hi[idx]) / 2
        ok = verify(idx, mid)
        lo[idx[ok]] = mid[ok]
        hi[idx[~ok]] = mid[~ok]
    return lo


def _round_up(eps: torch.Tensor, dtype: torch.dtype) -> torch.Tensor:
    """``eps`` (float64) in ``dtype``, rounded up: a bound verified at the result holds at ``eps``."""
    e = eps.to(dtype)
    return torch.where(e.double() < eps, torch.nextafter(e, torch.full_like(e, math.inf)), e)


def _verifier(
    layers: list[nn.Module],
    xx: torch.Tensor,
    ref: torch.Tensor,
    rows_all: torch.Tensor,
    p: float,
    method: str,
    lower_slope: str,
    tol: float,
    u_model: float,
) -> Callable:
    """verify(index (k,), eps (k,) float64) → (k,) bool: lower bound − rounding allowance > tol·(1 + |s|).

    ``xx``/``layers``: the inputs and network the bound is computed on (float64 copy or the model);
    ``ref`` (N,) their scores; ``rows_all`` the rows ``index`` refers to; ``u_model`` the unit
    roundoff of the model's own arithmetic (see :func:`rounding_allowance`).
    """
    u_ref = matmul_unit_roundoff(xx.dtype, xx.device)

    def verify(idx: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
        rows = rows_all[idx]
        e = _round_up(eps.to(xx.device), xx.dtype)
        lb, boxes = lower_bound_and_boxes(layers, xx[rows], e, p, method, lower_slope)
        allow = rounding_allowance(layers, boxes, u_model, u_ref)
        return (lb.double() - allow > tol * (1 + ref[rows].abs().double())).cpu()

    return verify


def _certify_bounds(
    model: nn.Module,
    x: torch.Tensor,
    norms: tuple[float, ...],
    method: str,
    steps: int = 12,
    max_radius: dict | float | None = None,
    start: dict | float | None = None,
    precision: str = "float64",
    lower_slope: str = "adaptive",
    tolerance: float | None = None,
) -> Certificate:
    check_model(model)
    check_precision(precision)
    if tolerance is not None and not 0.0 <= float(tolerance) < math.inf:
        raise UnsoundOptionError(f"tolerance must be finite and ≥ 0 (a negative one enlarges radii), got {tolerance!r}")
    chain = sequential_layers(model)  # refuse unsupported networks before any work
    with eval_mode(model), torch.no_grad():
        score = model(x).reshape(x.shape[0], -1)
    if score.shape[1] != 1:
        raise UnsupportedNetworkError(
            f"{method} certifies single-score (binary) models; this one has {score.shape[1]} outputs"
        )
    score = score[:, 0]
    check_chain(model, chain, x, score)
    u_model = matmul_unit_roundoff(score.dtype, score.device)
    net = copy.deepcopy(model).double().eval() if precision == "float64" else model
    layers = sequential_layers(net)
    xx = x.double() if precision == "float64" else x
    tol = (1e-9 if precision == "float64" else 5e-6) if tolerance is None else float(tolerance)
    d = math.prod(x.shape[1:])
    value_range = getattr(model, "input_range", None)
    if value_range is not None and math.isfinite(value_range[1] - value_range[0]) and value_range[1] > value_range[0]:
        width = float(value_range[1] - value_range[0])
    else:  # no declared range (tabular data in raw units): the inputs' own scale
        width = max(1.0, 2.0 * float(x.abs().max())) if x.numel() else 1.0
    with eval_mode(net), torch.no_grad():
        ref = net(xx).reshape(-1)
        flagged = (score > 0) & (ref > 0)
        idx_all = torch.nonzero(flagged).flatten()
        radii = {}
        for p in norms:
            cap = _per_norm(max_radius, p, width * (d if p == 1 else d ** (1.0 / p) if not math.isinf(p) else 1.0))
            first = _per_norm(start, p, cap / 1024)
            verify = _verifier(layers, xx, ref, idx_all, p, method, lower_slope, tol, u_model)
            r = torch.zeros(x.shape[0], dtype=torch.float64, device=x.device)
            if idx_all.numel():
                r[idx_all] = verified_radius(verify, idx_all.numel(), first, cap, steps).to(x.device)
            radii[p] = r
    return Certificate(
        predicted=(score > 0).long(),
        radii=radii,
        method=method,
        guarantee=Guarantee.FLAG,
        binary=True,
        extra={"score": score.detach().float()},
    )


def _per_norm(value: dict | float | None, p: float, default: float) -> float:
    if value is None:
        return float(default)
    if isinstance(value, dict):
        table = {normalize_norm(k): v for k, v in value.items()}
        return float(table.get(p, default))
    return float(value)


_DOC = """Certify a single-score ReLU network with {name} bounds (ℓp balls, any p).

    Args:
        model: a network of supported layers (see :func:`sequential_layers`) with (N,) or (N, 1) output.
        x: (N, *input_shape) inputs in raw units.
        norms: ℓp norms to certify.
        steps: bisection steps (relative resolution 2^-steps of the bracket).
        max_radius: largest radius tried, scalar or {{p: r}} (default: the input range's width times
            d^(1/p), the ℓp diameter of the input box; without an input range, 2·max|x| instead of
            the width); inputs verified there get exactly it.
        start: first radius tried before doubling (default max_radius / 1024).
        precision: "float64" (default; bounds on a float64 copy) or "model" (bounds in the model's dtype,
            a larger rounding allowance); both sound near the boundary (see the module docstring).
        lower_slope: the CROWN lower relaxation ("adaptive", "zero", "one").
        tolerance: a bound counts as positive when, after the absolute rounding allowance, it is
            > tolerance·(1 + |s(x)|) (default 1e-9 in float64, 5e-6 in "model"; ≥ 0).
    Returns:
        Certificate with predicted = (s(x) > 0), radii 0 where not flagged, extra["score"].
    """


@dataclass(frozen=True)
class BoundPropagationOptions:
    """Options of the ``ibp``, ``crown-ibp`` and ``crown`` certifiers (see :func:`_certify_bounds`)."""

    steps: int = 12
    max_radius: dict[float, float] | float | None = None
    start: dict[float, float] | float | None = None
    precision: str = "float64"
    lower_slope: str = "adaptive"
    tolerance: float | None = None

    def problems(self) -> list[str]:
        """Every option value these certifiers cannot take (start = 0 searched forever, a negative one gave
        radii of −9e307, NaN or ∞ gave 0 everywhere, ``tolerance=True`` read as 1)."""
        return option_checks.found(
            option_checks.count("steps", self.steps, least=0, optional=False, most=MAX_STEPS),
            option_checks.per_norm_positive("max_radius", self.max_radius),
            option_checks.per_norm_positive("start", self.start),
            option_checks.one_of("lower_slope", self.lower_slope, LOWER_SLOPES),
            option_checks.nonnegative("tolerance", self.tolerance),
        )


def certify_ibp(
    model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], precision: str = "float64", **options: Any
) -> Certificate:
    return _certify_bounds(model, x, norms, "ibp", precision=precision, **options)


def certify_crown_ibp(
    model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], precision: str = "float64", **options: Any
) -> Certificate:
    return _certify_bounds(model, x, norms, "crown-ibp", precision=precision, **options)


def certify_crown(
    model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], precision: str = "float64", **options: Any
) -> Certificate:
    return _certify_bounds(model, x, norms, "crown", precision=precision, **options)


certify_ibp.__doc__ = _DOC.format(name="IBP")
certify_crown_ibp.__doc__ = _DOC.format(name="CROWN-IBP (max with IBP)")
certify_crown.__doc__ = _DOC.format(name="full CROWN (max with IBP)")
