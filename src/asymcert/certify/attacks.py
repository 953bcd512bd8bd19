"""Batched projected-gradient (PGD) attacks in ℓ1, ℓ2, ℓ∞ (and any ℓp), for soundness checks.

Every input gets its own radius ``eps[i]`` in raw input units. The attack tries to change the
model's decision: for a binary score model s(x) (N,) it pushes a flagged input (s > 0) to s ≤ 0
(and an unflagged one to s > 0); for multiclass logits (N, K) it maximises the margin
max_{j≠y} z_j − z_y until the argmax leaves y. The returned points always satisfy
‖x_adv − x‖_p ≤ eps (checked in float64) and lie inside ``input_range`` when one is given.

Steps are steepest-ascent steps for the norm (ℓ∞: sign; ℓ2: normalised gradient; ℓ1: the
largest-|gradient| coordinates, weighted by the gradient, as in SLIDE; other p: the dual-norm
direction), with a cosine-decaying step length, followed by a projection onto the ℓp ball
(exact Euclidean projection for ℓ1, ℓ2, ℓ∞; radial rescaling for other p) and then onto the box.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import nn

from asymcert.certify.modes import eval_mode
from asymcert.certify.result import normalize_norm
from asymcert.errors import InputError

__all__ = ["decision_flips", "decisions", "pgd_attack", "project_l1_ball", "project_lp_ball"]


# ---------------------------------------------------------------------------------------------
# Decisions
# ---------------------------------------------------------------------------------------------


def _forward(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    out = model(x)
    if out.dim() == 2 and out.shape[1] == 1:
        out = out[:, 0]
    if out.dim() not in (1, 2):
        raise InputError(f"the model returned shape {tuple(out.shape)}; expected (N,) scores or (N, K) logits")
    return out


def _decide(out: torch.Tensor) -> torch.Tensor:
    """(N,) long decisions of scores (N,) (1 where s > 0) or logits (N, K) (argmax)."""
    return (out > 0).long() if out.dim() == 1 else out.argmax(dim=1)


def decisions(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The model's decisions (N,) int64 on inputs x (N, *shape): 1/0 = flagged/not for score models, argmax for logits.

    The model is run in eval mode (and its mode restored).
    """
    with eval_mode(model), torch.no_grad():
        return _decide(_forward(model, x))


def decision_flips(model: nn.Module, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
    """(N,) bool: where the model's decision on ``x_adv`` differs from its decision on ``x``."""
    return decisions(model, x) != decisions(model, x_adv)


# ---------------------------------------------------------------------------------------------
# Projections (rows of a (N, d) matrix, each onto its own ball)
# ---------------------------------------------------------------------------------------------


def project_l1_ball(v: torch.Tensor, eps: torch.Tensor) -> torch.Tensor:
    """Euclidean projection of each row of ``v`` (N, d) onto the ℓ1 ball of radius ``eps`` (N,).

    Sort-based simplex projection (Duchi et al. 2008), batched: rows already inside are kept;
    otherwise w = sign(v)·max(|v| − θ, 0) with θ chosen so that ‖w‖₁ = eps.
    """
    n, d = v.shape
    eps = eps.to(v.dtype).reshape(n)
    a = v.abs()
    inside = a.sum(dim=1) <= eps
    u, _ = torch.sort(a, dim=1, descending=True)
    css = torch.cumsum(u, dim=1)
    j = torch.arange(1, d + 1, device=v.device, dtype=v.dtype)
    cond = u * j > css - eps[:, None]  # u_j > (Σ_{i≤j} u_i − eps)/j
    rho = (cond.to(torch.int64) * torch.arange(1, d + 1, device=v.device)).amax(dim=1).clamp_min(1)
    theta = (css.gather(1, (rho - 1)[:, None])[:, 0] - eps) / rho.to(v.dtype)
    w = torch.sign(v) * (a - theta[:, None]).clamp_min(0.0)
    w = torch.where((eps <= 0)[:, None], torch.zeros_like(w), w)
    return torch.where(inside[:, None], v, w)


def _row_norm(v: torch.Tensor, p: float) -> torch.Tensor:
    if math.isinf(p):
        return v.abs().amax(dim=1)
    if p == 1:
        return v.abs().sum(dim=1)
    if p == 2:
        return v.norm(dim=1)
    return v.abs().pow(p).sum(dim=1).pow(1.0 / p)


def project_lp_ball(v: torch.Tensor, eps: torch.Tensor, p: float) -> torch.Tensor:
    """Map each row of ``v`` (N, d) into the ℓp ball of radius ``eps`` (N,).

    Exact Euclidean projection for p = 1, 2, ∞; radial rescaling (a feasible retraction, not the
    Euclidean projection) for other p.
    """
    eps = eps.to(v.dtype).reshape(v.shape[0])
    if math.isinf(p):
        return torch.maximum(torch.minimum(v, eps[:, None]), -eps[:, None])
    if p == 1:
        return project_l1_ball(v, eps)
    norm = _row_norm(v, p)
    scale = torch.where(norm > eps, eps / norm.clamp_min(torch.finfo(v.dtype).tiny), torch.ones_like(norm))
    return v * scale[:, None]


# ---------------------------------------------------------------------------------------------
# The attack
# ---------------------------------------------------------------------------------------------


def _ascent_direction(g: torch.Tensor, p: float, blocked: torch.Tensor | None, k: int) -> torch.Tensor:
    """Unit-ℓp steepest-ascent direction for gradient rows ``g`` (N, d)."""
    if blocked is not None:
        g = torch.where(blocked, torch.zeros_like(g), g)
    tiny = torch.finfo(g.dtype).tiny
    if math.isinf(p):
        return torch.sign(g)
    if p == 2:
        return g / g.norm(dim=1, keepdim=True).clamp_min(tiny)
    if p == 1:
        k = max(1, min(k, g.shape[1]))
        idx = g.abs().topk(k, dim=1).indices
        sparse = torch.zeros_like(g).scatter_(1, idx, g.gather(1, idx))
        return sparse / sparse.abs().sum(dim=1, keepdim=True).clamp_min(tiny)
    q = p / (p - 1.0)
    a = g.abs() / g.abs().amax(dim=1, keepdim=True).clamp_min(tiny)
    direction = torch.sign(g) * a.pow(q - 1.0)
    return direction / _row_norm(direction, p).clamp_min(tiny)[:, None]


def _random_start(
    shape: tuple[int, int],
    eps: torch.Tensor,
    p: float,
    generator: torch.Generator | None,
    dtype: torch.dtype,
    device: torch.device,
) -> torch.Tensor:
    """A random point of each row's ℓp ball (N, d)."""
    n, _ = shape
    if math.isinf(p):
        u = torch.rand(shape, generator=generator, dtype=dtype, device=device) * 2 - 1
        return u * eps[:, None]
    if p == 1:  # Laplace direction
        z = torch.rand(shape, generator=generator, dtype=dtype, device=device).clamp_min(1e-12)
        sign = torch.rand(shape, generator=generator, dtype=dtype, device=device) < 0.5
        z = torch.where(sign, -1.0, 1.0).to(dtype) * (-torch.log(z))
    else:
        z = torch.randn(shape, generator=generator, dtype=dtype, device=device)
    r = torch.rand((n,), generator=generator, dtype=dtype, device=device)
    z = z / _row_norm(z, p).clamp_min(torch.finfo(dtype).tiny)[:, None]
    return z * (eps * r)[:, None]


def _project(
    delta: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, p: float, box: tuple[float, float] | None
) -> torch.Tensor:
    """Into the ball, then into the box. Clipping x + δ to a box containing x only shrinks each |δ_i|,
    so the result is in both sets."""
    delta = project_lp_ball(delta, eps, p)
    if box is not None:
        delta = (x + delta).clamp(box[0], box[1]) - x
    return delta


def _enforce_radius(
    x_adv: torch.Tensor, x: torch.Tensor, eps: torch.Tensor, p: float, box: tuple[float, float] | None
) -> torch.Tensor:
    """Guarantee ‖x_adv − x‖_p ≤ eps measured in float64 despite the rounding of x + δ."""
    eps64 = eps.double()
    for k in range(12):
        norm = _row_norm((x_adv.double() - x.double()), p)
        bad = norm > eps64
        if not bool(bad.any()):
            return x_adv
        if math.isinf(p):  # per coordinate: pull the offending coordinates just inside
            lo = (x.double() - eps64[:, None]).to(x.dtype)
            hi = (x.double() + eps64[:, None]).to(x.dtype)
            lo = torch.where(lo.double() < x.double() - eps64[:, None], torch.nextafter(lo, x), lo)
            hi = torch.where(hi.double() > x.double() + eps64[:, None], torch.nextafter(hi, x), hi)
            x_adv = torch.where(bad[:, None], torch.minimum(torch.maximum(x_adv, lo), hi), x_adv)
        else:
            shrink = (1.0 - 1e-6 * 4.0**k) * (eps64 / norm.clamp_min(1e-300)).clamp(max=1.0)
            delta = (x_adv - x) * shrink.to(x.dtype)[:, None]
            x_adv = torch.where(bad[:, None], x + delta, x_adv)
        if box is not None:
            x_adv = x_adv.clamp(box[0], box[1])
    norm = _row_norm((x_adv.double() - x.double()), p)
    return torch.where((norm > eps64)[:, None], x, x_adv)  # last resort: the clean input itself


def pgd_attack(
    model: nn.Module,
    x: torch.Tensor,
    eps: torch.Tensor | float,
    norm: float | str,
    steps: int = 100,
    restarts: int = 1,
    step_size: float | None = None,
    targeted_decision: torch.Tensor | None = None,
    input_range: tuple[float, float] | None = None,
    generator: torch.Generator | None = None,
    l1_sparsity: float = 0.05,
) -> torch.Tensor:
    """Projected gradient attack that tries to change each input's decision within its own radius.

    Args:
        model: returns (N,) scores (decision: s > 0) or (N, K) logits (decision: argmax). Run in
            eval mode; its mode is restored.
        x: (N, *shape) clean inputs in raw units.
        eps: (N,) radii in raw input units (a float is broadcast); finite and ≥ 0.
        norm: p ≥ 1 (``"inf"`` or ``math.inf`` for ℓ∞).
        steps: gradient steps per restart.
        restarts: number of starts; the first starts at x itself, the others at random points of
            the ball (drawn from ``generator``). Inputs already flipped are not attacked again.
        step_size: initial step length as a fraction of eps (default max(0.25, 2/steps)); it decays
            along a cosine to 1% of that by the last step.
        targeted_decision: (N,) the decision to move away from (default: the model's decision on x).
            Binary models: 1 → push s ≤ 0, 0 → push s > 0. Multiclass: the class to leave.
        input_range: (low, high) box that every x_adv must stay in (x must lie in it), or None.
        generator: torch.Generator for the random starts (reproducible attacks).
        l1_sparsity: ℓ1 steps move the top ⌈l1_sparsity·d⌉ coordinates by |gradient|.
    Returns:
        x_adv (N, *shape), same dtype/device as x, with ‖x_adv − x‖_p ≤ eps in float64 and
        x_adv ∈ input_range. Where no flip was found, the point with the best attack loss.

    Example:
        >>> lin = torch.nn.Linear(3, 1)
        >>> x = torch.zeros(2, 3)
        >>> x_adv = pgd_attack(lin, x, torch.full((2,), 10.0), 2, targeted_decision=torch.ones(2, dtype=torch.long))
        >>> bool((lin(x_adv)[:, 0] <= 0).all())
        True
    """
    p = normalize_norm(norm)
    eps_t, box = _attack_inputs(x, eps, input_range)
    n = x.shape[0]
    if n == 0:
        return x.clone()
    shape = tuple(x.shape[1:])
    d = int(math.prod(shape))
    x_flat = x.detach().reshape(n, d)
    eps_x = eps_t.to(x.dtype)
    alpha0 = float(step_size) if step_size is not None else max(0.25, 2.0 / max(steps, 1))
    k_sparse = max(1, math.ceil(l1_sparsity * d))

    with eval_mode(model):
        with torch.no_grad():
            clean_out = _forward(model, x.detach())
        y = _decide(clean_out) if targeted_decision is None else targeted_decision.to(x.device).long().reshape(n)
        best = _Best(
            x_flat.clone(),
            torch.full((n,), -math.inf, dtype=torch.float64, device=x.device),
            torch.zeros(n, dtype=torch.bool, device=x.device),
            clean_out.dim() == 2,
        )
        for restart in range(max(1, restarts)):
            rows = torch.nonzero(~best.ok).flatten()
            if rows.numel() == 0:
                break
            xr, er = x_flat[rows], eps_x[rows]
            if restart == 0:
                delta = torch.zeros_like(xr)
            else:
                delta = _random_start((xr.shape[0], xr.shape[1]), er, p, generator, x.dtype, x.device)
                delta = _project(delta, xr, er, p, box)
            step = _Step(p, box, steps, alpha0, k_sparse, shape)
            _attack_rows(model, best, rows, xr, er, y[rows], delta, step)
    x_adv = _enforce_radius(best.x, x_flat, eps_t, p, box)
    return x_adv.reshape(x.shape).detach()


def _attack_inputs(
    x: torch.Tensor, eps: torch.Tensor | float, input_range: tuple[float, float] | None
) -> tuple[torch.Tensor, tuple[float, float] | None]:
    """The radii (N,) float64 and the box of :func:`pgd_attack`, checked.

    Raises:
        InputError: non-float inputs, radii of the wrong length, not finite or negative, inputs outside the box.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise InputError("pgd_attack needs floating-point inputs x of shape (N, *shape)")
    n = x.shape[0]
    eps_t = torch.as_tensor(eps, dtype=torch.float64, device=x.device)
    eps_t = eps_t.expand(n).clone() if eps_t.dim() == 0 else eps_t.reshape(-1)
    if eps_t.shape[0] != n:
        raise InputError(f"eps has {eps_t.shape[0]} entries for {n} inputs")
    if not bool(torch.isfinite(eps_t).all()) or bool((eps_t < 0).any()):
        raise InputError("eps must be finite and ≥ 0 (attack inputs with an infinite radius within a finite one)")
    box = None if input_range is None else (float(input_range[0]), float(input_range[1]))
    if box is not None and n and (float(x.min()) < box[0] or float(x.max()) > box[1]):
        raise InputError(f"inputs range over [{float(x.min()):g}, {float(x.max()):g}], outside input_range {box}")
    return eps_t, box


@dataclass
class _Best:
    """The best point found so far per input: x (N, d), attack loss (N,) float64, success (N,) bool."""

    x: torch.Tensor
    loss: torch.Tensor
    ok: torch.Tensor
    multiclass: bool


@dataclass(frozen=True)
class _Step:
    """The step rule of one attack: norm p, box, steps, initial step fraction, ℓ1 sparsity, input shape."""

    p: float
    box: tuple[float, float] | None
    steps: int
    alpha0: float
    k_sparse: int
    shape: tuple[int, ...]


def _attack_loss(out: torch.Tensor, y: torch.Tensor, multiclass: bool) -> tuple[torch.Tensor, torch.Tensor]:
    """(N,) loss to ascend (the margin towards leaving decision ``y``) and (N,) bool: the decision left ``y``."""
    if multiclass:
        true = out.gather(1, y[:, None])[:, 0]
        other = out.scatter(1, y[:, None], -math.inf).amax(dim=1)
        return other - true, out.argmax(dim=1) != y
    return torch.where(y == 1, -out, out), (out > 0).long() != y


def _attack_rows(
    model: nn.Module,
    best: _Best,
    rows: torch.Tensor,
    xr: torch.Tensor,
    er: torch.Tensor,
    yr: torch.Tensor,
    delta: torch.Tensor,
    rule: _Step,
) -> None:
    """One restart on the inputs ``rows``: ``rule.steps`` projected steps from ``xr + delta``, cosine-decayed
    step length; updates ``best`` in place (any success beats no success, then the higher loss)."""
    done = torch.zeros(rows.numel(), dtype=torch.bool, device=xr.device)
    for t in range(rule.steps + 1):
        xa = (xr + delta).detach().requires_grad_(t < rule.steps)
        with torch.enable_grad():
            out = _forward(model, xa.reshape((-1, *rule.shape)))
            loss, ok = _attack_loss(out, yr, best.multiclass)
            grad = torch.autograd.grad(loss.sum(), xa)[0] if t < rule.steps else None
        ld, ok = loss.detach().double(), ok.detach() & ~done
        improve = (ok & ~best.ok[rows]) | ((ok == best.ok[rows]) & (ld > best.loss[rows]) & ~done)
        sel = rows[improve]
        best.x[sel] = xa.detach()[improve]
        best.loss[sel] = ld[improve]
        best.ok[sel] = best.ok[sel] | ok[improve]
        done = done | ok
        if t == rule.steps or bool(done.all()):
            break
        frac = t / max(rule.steps - 1, 1)
        alpha = rule.alpha0 * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * frac)))
        assert grad is not None  # computed for every t < steps, and t == steps ended the loop above
        blocked = None
        if rule.box is not None:  # coordinates at a box face whose ascent direction points outward
            blocked = ((xa.detach() <= rule.box[0]) & (grad < 0)) | ((xa.detach() >= rule.box[1]) & (grad > 0))
        direction = _ascent_direction(grad, rule.p, blocked, rule.k_sparse)
        step = direction * (alpha * er)[:, None]
        step = torch.where(done[:, None], torch.zeros_like(step), step)
        delta = _project(delta + step, xr, er, rule.p, rule.box)
