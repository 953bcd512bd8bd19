"""Certificates of ℓ∞-distance nets (Zhang et al. 2021/2022), batched.

Plain net: every logit g_j is 1-Lipschitz in ℓ∞ in normalised units z = (x − μ)/σ, so for the
predicted class c and any j, g_c − g_j can shrink by at most 2‖δ_z‖∞ = 2‖δ‖∞/σ. The decision is
constant on the open ℓ∞ ball of raw radius r_∞ = σ·(g_c − max_{j≠c} g_j)/2.

+MLP net: the hidden features lie in the box z_L ± r (normalised) for ‖δ_z‖∞ ≤ r (the last
distance layer's output is also ≥ 0, which tightens the lower side); interval bound propagation
through Linear → tanh → (g_c − g_j) gives a lower bound of every margin. The bound is monotone in
r, so a batched bisection finds the largest verified r; only verified values are reported.

Other norms: ‖δ‖∞ ≤ ‖δ‖_p for every p ≥ 1, so the ℓ∞ radius is also a valid ℓp radius; it is
reported for every norm asked for (a lower bound, not the best ℓp certificate).

Float safety. A certificate covers the model's OWN decisions, computed in its dtype, so every
margin is lowered by ABSOLUTE rounding bounds (a relative slack cannot help near the decision
boundary, where the margin is within rounding of 0). With m̂ the margin computed by the reference
trace (``precision="float64"``, default: a float64 copy; ``"model"``: the model itself, in its
dtype), E_ref its own error at x and E_model(r) a rigorous bound on the difference between the
model's logits and the exact ones anywhere in the ball, the plain net certifies

    r = (m̂ − u_ref·|m̂| − 2·E_ref − 2·E_model(m̂/2)) / 2     (normalised units).

For the distance layers E follows from the IEEE model (each subtraction rounds with relative
error ≤ u, max/abs/negation are exact): E ≤ Σ_ops 1.01·u·(max magnitude of the op's result + r),
a few 1e-5 normalised units for float32 nets (negligible next to ε). For the +MLP head, interval
bound propagation runs in float64 for either precision, on the box widened by E_ref, lowered by
the standard dot-product bound γ_n = n·u/(1 − n·u) per Linear (valid for any summation order,
FMA or not; tanh accurate to 8 ulp) at u = u_model + 4·2⁻⁵³ (the float64 IBP's own rounding).
Float64 models get the same treatment with u = 2⁻⁵³. Radii are then rounded down
(:func:`safe_radius`, relative slack 1e-9 in float64, 5e-6 for ``"model"``). ``float_check=False``
(the exact function's radius, unsound for the model's float decisions near the boundary) is
refused with :class:`~asymcert.certify.modes.UnsoundOptionError`.
"""

from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING, cast

import torch
from torch import nn

from asymcert.certify import options as option_checks
from asymcert.certify.functional import DEFAULT_SLACK, safe_radius
from asymcert.certify.modes import UnsoundOptionError, check_precision, check_slack, eval_mode, unit_roundoff
from asymcert.certify.result import Certificate, Guarantee
from asymcert.nn.mean_shift import MeanShift

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.linf_dist_net import LinfDistNet

INF = math.inf


U64 = unit_roundoff(torch.float64)


def top2_margin(logits: torch.Tensor, predicted: torch.Tensor) -> torch.Tensor:
    """g_c − max_{j≠c} g_j for c = ``predicted``: (N, K), (N,) → (N,) (negative when c is not the top)."""
    gc = logits.gather(1, predicted[:, None]).squeeze(1)
    others = logits.scatter(1, predicted[:, None], -INF)
    return gc - others.amax(dim=1)


def _trace(model: LinfDistNet, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor, list]:
    """Eval-mode forward that also records what the error bound and the head's IBP need.

    Returns:
        logits (N, K); features z_L (N, w) after the last MeanShift; the last hidden distance
        layer's output y_L (N, w) before it (≥ 0); and per rounding operation a pair
        (multiplier, (N,) max |result|) in normalised units.
    """
    z = model.normalize(x)
    ops = [(2.01, z.abs().amax(dim=1))]  # (x − μ) then / σ: two roundings
    y = z
    for layer, shift in zip(model.dist, model.shifts):
        y = layer(z)
        ops.append((1.01, y.abs().amax(dim=1)))
        z = shift(y)
        ops.append((1.01, z.abs().amax(dim=1)))
    if model.out is not None:
        d = model.out(z)  # distance + bias: two roundings
        raw = d - model.out.bias if model.out.bias is not None else d
        ops.append((1.01, raw.abs().amax(dim=1)))
        ops.append((1.01, d.abs().amax(dim=1)))
        logits = -d
    else:
        logits = model.logits_from_features(z)
    return logits, z, y, ops


def distance_error_bound(ops: list, r: torch.Tensor | float, u: float) -> torch.Tensor:
    """Bound on |computed − exact| of every output of the distance layers, in normalised units.

    Args:
        ops: per rounding operation (multiplier, (N,) max |result| at the input x).
        r: (N,) or scalar ℓ∞ radius (normalised): results move by at most r inside the ball.
        u: unit roundoff of the dtype the model computes in.
    Returns:
        (N,) float64 E with |g_model(x') − g(x')| ≤ E for every ‖x' − x‖∞ ≤ σ·r (plain nets) or,
        for +MLP nets, the same bound on the features z_L.
    """
    e = torch.zeros_like(ops[0][1], dtype=torch.float64)
    for mult, mag in ops:
        e = e + mult * u * (mag.double() + r + e)
    return e


def _head_ibp_lower(
    model: LinfDistNet, lo: torch.Tensor, hi: torch.Tensor, cls: torch.Tensor, feat_err: torch.Tensor | None, u: float
) -> torch.Tensor:
    """Lower bounds of g_c − g_j − (E_c + E_j) over the feature box, for the +MLP head.

    Args:
        lo, hi: (N, w) feature box. cls: (N,) class c. feat_err: (N,) bound on the model's own
        feature error (None: no float allowance). u: the model dtype's unit roundoff.
    Returns:
        (N, K) lower bounds; column c is +inf. All > 0 ⇔ the decision c is verified.
    """
    if model.head_hidden is None or model.head_out is None:
        raise ValueError("the head IBP needs the +MLP variant (a plain net has no head_hidden/head_out)")
    w1, b1 = model.head_hidden.weight.to(lo.dtype), model.head_hidden.bias.to(lo.dtype)
    w2, b2 = model.head_out.weight.to(lo.dtype), model.head_out.bias.to(lo.dtype)
    c, rad = (hi + lo) / 2, (hi - lo) / 2
    pc = c @ w1.t() + b1
    pr = rad @ w1.abs().t()
    t_lo, t_hi = torch.tanh(pc - pr), torch.tanh(pc + pr)
    tc, tr = (t_hi + t_lo) / 2, (t_hi - t_lo) / 2
    dw = w2[cls][:, None, :] - w2[None, :, :]  # (N, K, h): row c minus row j
    db = b2[cls][:, None] - b2[None, :]
    low = torch.einsum("nkh,nh->nk", dw, tc) - torch.einsum("nkh,nh->nk", dw.abs(), tr) + db
    if feat_err is not None:
        n_in, n_h = w1.shape[1], w1.shape[0]
        g1 = n_in * u / (1 - n_in * u)
        g2 = n_h * u / (1 - n_h * u)
        zmag = torch.maximum(lo.abs(), hi.abs()) + feat_err[:, None]
        e_pre = feat_err[:, None] * w1.abs().sum(1)[None, :] + g1 * (zmag @ w1.abs().t() + b1.abs())
        tmag = torch.maximum(t_lo.abs(), t_hi.abs())
        e_t = e_pre + 8 * u * tmag
        e_g = e_t @ w2.abs().t() + g2 * ((tmag + e_t) @ w2.abs().t() + b2.abs())  # (N, K)
        low = low - (e_g.gather(1, cls[:, None]) + e_g)
    return low.scatter(1, cls[:, None], INF)


def head_verified(
    model: LinfDistNet,
    y_last: torch.Tensor,
    r: torch.Tensor,
    cls: torch.Tensor,
    ops: list | None,
    u: float,
    u_ref: float | None = None,
) -> torch.Tensor:
    """Whether IBP through the head verifies class c on the normalised ℓ∞ ball of radius r.

    The IBP runs in float64 whatever the model's dtype; with ``ops`` its result is lowered by the
    model's own rounding (unit roundoff ``u``) and by the float64 IBP's rounding (4·2⁻⁵³ per term).

    Args:
        y_last: (N, w) last hidden distance output (≥ 0) before its MeanShift, as computed by the
            reference trace. r: (N,) normalised radii. cls: (N,) classes. ops: the float-error
            trace (None: no allowance). u: the model's unit roundoff.
        u_ref: unit roundoff of the trace that computed ``y_last``: the box is widened by that
            trace's own error at x (None: not widened).
    Returns:
        (N,) bool.
    """
    y = y_last.double()
    m = cast(MeanShift, model.shifts[-1]).running_mean.double()
    r2 = r.double()[:, None]
    if ops is not None and u_ref is not None:  # the trace's own error at x, and the float64 box arithmetic
        r2 = r2 + distance_error_bound(ops, 0.0, u_ref)[:, None] + 4 * U64 * (y.abs() + r2 + m.abs())
    lo = (y - r2).clamp_min(0.0) - m
    hi = y + r2 - m
    err = distance_error_bound(ops, r.double(), u) if ops is not None else None
    return (_head_ibp_lower(model, lo, hi, cls, err, u + 4 * U64) > 0).all(dim=1)


def bisect_radius(
    verified: Callable[[torch.Tensor], torch.Tensor],
    n: int,
    dtype: torch.dtype,
    device: torch.device,
    start: float = 1.0 / 64,
    expand: int = 80,
    steps: int = 40,
) -> torch.Tensor:
    """Largest verified radius per input by batched doubling then bisection; only verified values returned.

    Args:
        verified: r (N,) → (N,) bool, monotone (true at r ⇒ true at every r' < r).
        n: batch size. start: first radius tried after 0. expand: max doublings. steps: bisections.
    Returns:
        (N,) radii r with ``verified(r)`` true (0 where it fails at 0; the last verified value when
        it holds up to start·2^expand).
    """
    zero = torch.zeros(n, dtype=dtype, device=device)
    ok0 = verified(zero)
    lo = zero.clone()
    hi = torch.full_like(zero, INF)
    r = torch.full_like(zero, start)
    for _ in range(expand):
        open_ = ok0 & torch.isinf(hi)
        if not bool(open_.any()):
            break
        v = verified(r)
        lo = torch.where(open_ & v, r, lo)
        hi = torch.where(open_ & ~v, r, hi)
        r = torch.where(open_ & v, 2 * r, r)
    active = ok0 & torch.isfinite(hi)
    for _ in range(steps):
        if not bool(active.any()):
            break
        mid = torch.where(active, (lo + hi) / 2, lo)
        v = verified(mid)
        lo = torch.where(active & v, mid, lo)
        hi = torch.where(active & ~v, mid, hi)
    return torch.where(ok0, lo, zero)


def _float64_copy(model: LinfDistNet) -> LinfDistNet:
    if all(t.dtype == torch.float64 for t in model.state_dict().values() if t.is_floating_point()):
        return model
    return copy.deepcopy(model).double()


def model_dtype(model: nn.Module) -> torch.dtype:
    return next(t for t in model.state_dict().values() if t.is_floating_point()).dtype


@torch.no_grad()
def normalized_radii(
    model: LinfDistNet,
    x: torch.Tensor,
    cls: torch.Tensor,
    precision: str = "float64",
    float_check: bool = True,
    steps: int = 40,
) -> torch.Tensor:
    """Certified ℓ∞ radius of class ``cls`` per input, in NORMALISED units (multiply by σ for raw).

    With ``float_check`` the certificate covers the model's own decisions: for plain nets the
    reference margin m̂ (computed in float64 or the model's dtype) is lowered by 2·E_ref (its own
    error at x, plus one rounding of the subtraction) and 2·E_model(r) (the model's error anywhere
    in the ball); the +MLP head is verified in float64 with both allowances (:func:`head_verified`).

    Args:
        model: a :class:`~asymcert.models.linf_dist_net.LinfDistNet` at p = ∞.
        x: (N, *input_shape) raw inputs. cls: (N,) the decision to certify.
        precision: "float64" (recompute in a float64 copy) or "model".
        float_check: subtract the bounds on the rounding errors (False: the exact function's
            radius, NOT valid for the model's float decisions near the boundary; tests only).
        steps: bisection steps (+MLP only).
    Returns:
        (N,) float64 radii ≥ 0 (0 where c is not verified even at radius 0), not yet rounded down.
    """
    ref = _float64_copy(model) if precision == "float64" else model
    with eval_mode(ref):
        xr = x.to(model_dtype(ref))
        logits, _, y_last, ops = _trace(ref, xr)
        u = unit_roundoff(model_dtype(model))
        u_ref = unit_roundoff(model_dtype(ref))
        if ref.out is not None:
            margin = top2_margin(logits, cls).double()
            if float_check:
                # E_model(x') ≤ E at radius r = margin/2 (the largest radius that can matter)
                margin = (
                    margin
                    - u_ref * margin.abs()
                    - 2 * distance_error_bound(ops, 0.0, u_ref)
                    - 2 * distance_error_bound(ops, margin.clamp_min(0) / 2, u)
                )
            return (margin / 2).clamp_min(0.0)
        check = ops if float_check else None
        # inflate the box slightly so the float64 bisection's own rounding of r cannot matter
        return bisect_radius(
            lambda r: head_verified(ref, y_last, r * (1 + 1e-9), cls, check, u, u_ref),
            x.shape[0],
            torch.float64,
            xr.device,
            steps=steps,
        )


@dataclass(frozen=True)
class LinfDistOptions:
    """Options of :func:`certify_linf_dist` (see its arguments)."""

    precision: str = "float64"
    slack: float | None = None
    validate: bool = True
    float_check: bool = True
    steps: int = 40

    def problems(self) -> list[str]:
        """Option values refused whatever the net (``steps`` is read by nets with an MLP head only; a string
        slack failed inside the radius computation)."""
        return option_checks.found(
            option_checks.nonnegative("slack", self.slack),
            option_checks.count("steps", self.steps, least=1, optional=False),
        )


def certify_linf_dist(
    model: LinfDistNet,
    x: torch.Tensor,
    norms: tuple[float, ...],
    precision: str = "float64",
    slack: float | None = None,
    validate: bool = True,
    float_check: bool = True,
    steps: int = 40,
) -> Certificate:
    """Certificates of a :class:`~asymcert.models.linf_dist_net.LinfDistNet` for a batch.

    Args:
        model: the net; ``validate()`` (p = ∞ everywhere, finite weights) runs first unless False.
        x: (N, *input_shape) raw inputs.
        norms: ℓp norms (p ≥ 1); each gets the ℓ∞ radius (valid since ‖·‖∞ ≤ ‖·‖_p).
        precision: "float64" (default) or "model" (see the module docstring).
        slack: relative amount taken off every radius, in [0, 1) (default 1e-9 in float64, 5e-6 otherwise).
        float_check: must be True (the default): margins are reduced by the rounding bounds so the
            certificate holds for the decisions the model computes in its dtype. False raises
            :class:`~asymcert.certify.modes.UnsoundOptionError`.
        steps: bisection steps of the +MLP certificate (relative precision ≈ 2^-steps of the bracket).
    Returns:
        Multiclass models: ``predicted`` the class ids (argmax of the model's own logits), radii in
        raw input units, ``binary=False``, ``extra["margin"]`` the logit margin (model dtype).
        Binary models: ``predicted`` 1 where the score g₁ − g₀ > 0, radii only for flagged inputs
        (0 otherwise: the asymmetric reading), ``binary=True``, ``extra["score"]`` s(x) and
        ``extra["symmetric_linf"]`` the ℓ∞ radius of whichever class is predicted.
    """
    if validate:
        model.validate()
    check_precision(precision)
    check_slack(slack)
    if not float_check:
        raise UnsoundOptionError(
            "float_check=False certifies the exact function, not the model's own float "
            "decisions, and is unsound near the decision boundary; use float_check=True "
            "(the default)"
        )
    with eval_mode(model), torch.no_grad():
        logits = model.logits(x)
    if model.binary:
        score = logits[:, 1] - logits[:, 0]
        cls = (score > 0).long()
    else:
        cls = logits.argmax(dim=1)
    r_norm = normalized_radii(model, x, cls, precision, float_check, steps)
    slack = (1e-9 if precision == "float64" else DEFAULT_SLACK) if slack is None else slack
    # raw radius = σ·r_norm, rounded down: safe_radius(r_norm, 1/σ)
    sigma = float(model.input_std.double())
    r_sym = safe_radius(r_norm, torch.full_like(r_norm, 1.0 / sigma), slack)
    if model.binary:
        r_inf = torch.where(cls == 1, r_sym, torch.zeros_like(r_sym))
        extra = {"score": score.detach().float(), "symmetric_linf": r_sym}
    else:
        r_inf = r_sym
        extra = {"margin": top2_margin(logits, cls).detach().float()}
    radii = {p: r_inf.clone() for p in norms}
    return Certificate(
        predicted=cls,
        radii=radii,
        method="linf-dist",
        guarantee=Guarantee.FLAG if model.binary else Guarantee.DECISION,
        binary=model.binary,
        extra=extra,
    )


__all__ = [
    "bisect_radius",
    "certify_linf_dist",
    "distance_error_bound",
    "head_verified",
    "normalized_radii",
    "top2_margin",
    "unit_roundoff",
]
