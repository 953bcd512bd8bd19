"""The Lipschitz-margin certificate of 1-Lipschitz (ℓ2) networks such as the orthogonal nets.

For a score s with |s(x) − s(x')| ≤ L_p‖x − x'‖_p, a flagged input (s(x) > 0) stays flagged in
the open ℓp ball of radius s(x)/L_p. For the orthogonal nets L₂ = the product of the layers'
spectral norms (≈ 1), so r₂ = s(x) rounded down; r_p = r₂ for p ≤ 2 (‖δ‖₂ ≤ ‖δ‖_p, so r₁ ≥ r₂
holds with r₁ = r₂) and r₂/d^{1/2 − 1/p} for p > 2 (r∞ = r₂/√d). A two-logit head would give
margin/√2 instead; these nets have one score output (see :class:`~asymcert.models.baselines.OrthogonalNet`).

Float safety: the certificate covers the model's OWN decisions. s is the score the model's layers
would compute in exact arithmetic with their deployed weights (float32 Cayley weights as stored;
the Fourier-domain convolutions with their float64 mixing matrices); L_p = ``model.lipschitz(p)``
is its constant. The model's float score differs from s by at most a(x) + b(x)·r anywhere in the
ℓ2 ball of radius r (:func:`score_error_bound`, an ℓ2-normwise forward error analysis: γ_n for
dot products, one rounding per subtraction/addition, and for every FFT the normwise bound
``FFT_ERROR_CONSTANT``·log₂(N)·u — Higham, *Accuracy and Stability*, Thm 24.2 gives ≈ 6.7 for
radix 2; this constant is the one assumption). So with ŝ the score computed by the reference
(float64 copy, or the model itself for ``precision="model"``) and a_ref its own error at x,

    r_p = (ŝ − a_ref − a) / (L_p + b·c_p),     c_p = max(1, d^{1/2 − 1/p}) (ℓ2 radius per ℓp radius),

rounded down: an ABSOLUTE allowance, sound for margins within rounding of 0, where a relative
slack is not.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import cast

import torch
from torch import nn

from asymcert.certify import options as option_checks
from asymcert.certify.bound_propagation import check_chain, sequential_layers
from asymcert.certify.functional import safe_radius
from asymcert.certify.inputs import check_model
from asymcert.certify.modes import check_precision, check_slack, eval_mode, gamma, matmul_unit_roundoff
from asymcert.certify.result import Certificate, Guarantee
from asymcert.nn.feature_maps import Shift
from asymcert.nn.orthogonal import CayleyConv2d, CayleyLinear, GroupSort, MaxMin, PixelUnshuffle

FFT_ERROR_CONSTANT = 10.0
"""Assumed: a length-N FFT (PyTorch's pocketfft) has normwise relative error ≤ this · log₂(N) · u."""
EXACT_LAYERS = (nn.Flatten, nn.Identity, GroupSort, MaxMin, PixelUnshuffle)
"""Permutations and reshapes: exact in floating point and 1-Lipschitz (exact types: a subclass may compute more;
torch's own ``nn.PixelUnshuffle`` declares no Lipschitz constant, asymcert's :class:`PixelUnshuffle` does)."""
U64 = torch.finfo(torch.float64).eps / 2


def orthogonal_layers(model: nn.Module) -> list[nn.Module]:
    """The flat layer list of ``model.net`` (or ``model``) for the error analysis.

    Raises:
        UnsupportedNetworkError: not an ``nn.Sequential``, or a layer whose rounding is not analysed (exact
            types only: a subclass of an allowed layer is refused by module path).
    """
    return sequential_layers(
        model, (Shift, CayleyLinear, CayleyConv2d) + EXACT_LAYERS, "the orthogonal certifier's rounding analysis"
    )


def _conv_relative_error(layer: CayleyConv2d, lip: float, u: float) -> float:
    """κ with ‖computed − exact‖₂ ≤ κ·‖input‖₂ for the Fourier-domain convolution (bias excluded).

    rfft2 in float64 then cast to the compute dtype (relative fwd), mixing by q rounded to that
    dtype (u‖q_f‖_F) with complex dot products (√2·γ_{c_in+2}), irfft2 in that dtype; the
    unnormalised transforms scale norms by n (forward) and ≤ √2/n (inverse of a half spectrum).
    """
    log_n = math.log2(layer.size * layer.size)
    fwd = FFT_ERROR_CONSTANT * log_n * U64 + u
    with torch.no_grad():
        f_max = float(torch.linalg.matrix_norm(layer.frequency_weights(), "fro").max())
    mix = (u + math.sqrt(2.0) * gamma(layer.in_channels + 2, u)) * f_max * (1.0 + fwd)
    inv = FFT_ERROR_CONSTANT * log_n * u * (lip + mix + fwd * lip)
    return math.sqrt(2.0) * (lip * fwd + mix) + inv


def _layer_step(layer: nn.Module, ideal: nn.Module, u: float, n: tuple, e: tuple) -> tuple[tuple, tuple]:
    """One layer of :func:`score_error_bound`: (‖ĥ‖ bound, error bound), each a pair (at r = 0, per unit r)."""
    if isinstance(layer, EXACT_LAYERS):
        return n, e
    if isinstance(layer, Shift):  # x − μ: one rounding of the result
        mu = float(layer.mean.detach().double().norm())
        out = (n[0] + mu, n[1])
        d = (u * out[0], u * out[1])
        return (out[0] + d[0], out[1] + d[1]), (e[0] + d[0], e[1] + d[1])
    # orthogonal_layers admits only these besides the exact layers and Shift; ``ideal`` is the same layer
    layer, ideal = cast("CayleyLinear | CayleyConv2d", layer), cast("CayleyLinear | CayleyConv2d", ideal)
    lip = float(ideal.lipschitz(2))
    bias = 0.0 if layer.bias is None else float(layer.bias.detach().double().norm())
    if isinstance(layer, CayleyLinear):
        q, q_ideal = layer.weight.detach().double(), cast(CayleyLinear, ideal).weight.detach().double()
        g = gamma(layer.in_features + 1, u)
        # ‖ |Q| |h| ‖₂ ≤ ‖ |Q| ‖₂ ‖h‖₂ (SVD in float64, raised for its own error)
        qabs = float(torch.linalg.matrix_norm(q.abs(), 2)) * (1 + 1e-10)
        gap = float(torch.linalg.matrix_norm(q - q_ideal, "fro")) * (1 + 1e-12)  # reference weights ≠ deployed
        d = (g * (qabs * n[0] + bias) + gap * n[0], (g * qabs + gap) * n[1])
    else:  # CayleyConv2d
        bias *= layer.size  # the bias map: one value per channel over n × n positions
        k = _conv_relative_error(layer, lip, u)
        d = (k * n[0] + u * ((lip + k) * n[0] + bias), (k + u * (lip + k)) * n[1])  # + one rounding of y + b
    out = (lip * n[0] + bias + d[0], lip * n[1] + d[1])
    return out, (lip * e[0] + d[0], lip * e[1] + d[1])


def score_error_bound(
    layers: list[nn.Module], ideal: list[nn.Module], x: torch.Tensor, u: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """(a, b), each (N,) float64: |computed score(x') − s(x')| ≤ a + b·r whenever ‖x' − x‖₂ ≤ r.

    Args:
        layers: the layers that compute (the model's, or its float64 copy's).
        ideal: the model's own layers, defining s (same length; may be ``layers`` itself).
        x: (N, *input_shape) inputs (any float dtype; exact in float64).
        u: unit roundoff of the computation (:func:`~asymcert.certify.modes.matmul_unit_roundoff`).
    """
    xs = x.detach().double().reshape(x.shape[0], -1)
    norm = xs.norm(dim=1)
    start = 0
    if layers and isinstance(layers[0], Shift):  # the input is exact: ‖x' − μ‖ ≤ ‖x − μ‖ + r
        diff = (xs - layers[0].mean.detach().double().reshape(1, -1)).norm(dim=1) * (1 + 1e-12)
        n, e = (diff * (1 + u), torch.full_like(diff, 1 + u)), (u * diff, torch.full_like(diff, u))
        start = 1
    else:
        n, e = (norm, torch.ones_like(norm)), (torch.zeros_like(norm), torch.zeros_like(norm))
    for layer, ref in zip(layers[start:], ideal[start:]):
        n, e = _layer_step(layer, ref, u, n, e)
    return e[0] * (1 + 1e-9), e[1] * (1 + 1e-9)


def _l2_per_lp(p: float, d: int) -> float:
    """c_p: an ℓp ball of radius r lies in the ℓ2 ball of radius c_p·r (R^d)."""
    if p <= 2:
        return 1.0
    return math.sqrt(d) if math.isinf(p) else d ** (0.5 - 1.0 / p)


@dataclass(frozen=True)
class OrthogonalOptions:
    """Options of :func:`certify_orthogonal` (see its arguments)."""

    precision: str = "float64"
    slack: float | None = None

    def problems(self) -> list[str]:
        """Option values refused (a string slack failed inside the radius computation)."""
        return option_checks.found(option_checks.nonnegative("slack", self.slack))


def certify_orthogonal(
    model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], precision: str = "float64", slack: float | None = None
) -> Certificate:
    """Certificates of a model with an ℓp Lipschitz constant ``model.lipschitz(p)`` and (N,) scores.

    Args:
        model: e.g. an :class:`~asymcert.models.baselines.OrthogonalNet` (an ``nn.Sequential`` of
            the layers :func:`orthogonal_layers` accepts, as ``model.net`` or the model itself).
        x: (N, *input_shape) inputs in raw units.
        norms: ℓp norms to certify.
        precision: ``"float64"`` (default: score recomputed on a float64 copy) or ``"model"`` (the
            model's own score, whose rounding is then allowed for twice). Both are sound near the
            boundary: the margin is reduced by an absolute rounding bound (module docstring).
        slack: relative amount taken off every radius, in [0, 1) (default 1e-9 in float64, 5e-6 otherwise).
    Returns:
        Certificate: predicted = (s(x) > 0) from the model itself, radii 0 where not flagged, where
        the reference score disagrees, or where the margin is within the rounding allowance;
        extra["score"].
    """
    check_model(model)
    check_precision(precision)
    check_slack(slack)
    layers = orthogonal_layers(model)
    with eval_mode(model), torch.no_grad():
        score = model(x).reshape(-1)
        check_chain(model, layers, x, score)
        u_model = matmul_unit_roundoff(score.dtype, score.device)
        a, b = score_error_bound(layers, layers, x, u_model)
        if precision == "float64":
            ref = copy.deepcopy(model).double().eval()
            ref_score = ref(x.double()).reshape(-1)
            a_ref, _ = score_error_bound(orthogonal_layers(ref), layers, x, U64)
            slack = 1e-9 if slack is None else slack
        else:
            ref_score, a_ref = score, a
            slack = 5e-6 if slack is None else slack
    a, b, a_ref = a.to(score.device), b.to(score.device), a_ref.to(score.device)
    ok = (score > 0) & (ref_score > 0)
    margin = torch.where(ok, ref_score.double() - a_ref - a, torch.zeros_like(a))
    d = math.prod(x.shape[1:])
    lipschitz = cast("Callable[[float], float]", model.lipschitz)  # the documented contract of the model
    radii = {p: safe_radius(margin, float(lipschitz(p)) + b * _l2_per_lp(p, d), slack) for p in norms}
    return Certificate(
        predicted=(score > 0).long(),
        radii=radii,
        method="orthogonal",
        guarantee=Guarantee.FLAG,
        binary=True,
        extra={"score": score.detach().float()},
    )
