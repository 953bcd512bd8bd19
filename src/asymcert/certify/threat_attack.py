"""PGD attacks that respect a threat model: only allowed directions, inside the domain, sized in its units.

The attack works on u = δ / scale (threat-model units). Each iterate is first clipped to the
per-input box of allowed moves (0 on immutable features and in forbidden directions, the domain's
room elsewhere), then projected onto the ℓp ball of radius eps; the box contains 0, so that
projection (radial for ℓ2, soft-thresholding for ℓ1, clipping for ℓ∞) keeps every coordinate in
the box. The returned points are re-checked in float64: allowed directions, the domain (where x
itself was inside it) and ‖(x_adv − x) / scale‖_p ≤ eps.
"""

from __future__ import annotations

import math

import torch
from torch import nn

from asymcert.certify.attacks import _ascent_direction, _attack_loss, _decide, _forward, _row_norm, project_lp_ball
from asymcert.certify.modes import eval_mode
from asymcert.certify.result import normalize_norm
from asymcert.errors import InputError
from asymcert.threat import ResolvedThreatModel

__all__ = ["move_sizes", "threat_attack"]


def _u_box(x_flat: torch.Tensor, tm: ResolvedThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) (N, d) float64 bounds on u = δ / scale that the threat model allows at x."""
    x64 = x_flat.double().cpu()
    scale, lower, upper = tm.scale[None], tm.lower[None], tm.upper[None]
    high = torch.where(tm.can_increase[None], ((upper - x64) / scale).clamp_min(0.0), torch.zeros_like(x64))
    low = torch.where(tm.can_decrease[None], ((lower - x64) / scale).clamp_max(0.0), torch.zeros_like(x64))
    return low.to(x_flat.device), high.to(x_flat.device)


def move_sizes(x: torch.Tensor, x_adv: torch.Tensor, tm: ResolvedThreatModel, p: float) -> torch.Tensor:
    """(N,) float64 threat-model size ‖(x_adv − x) / scale‖_p of each move, ``inf`` where the move is
    not allowed (a forbidden direction, or leaving the domain from inside it)."""
    x64 = x.detach().reshape(x.shape[0], math.prod(x.shape[1:])).double().cpu()
    a64 = x_adv.detach().reshape(x.shape[0], math.prod(x.shape[1:])).double().cpu()
    delta = a64 - x64
    bad = (~tm.can_increase[None] & (delta > 0)) | (~tm.can_decrease[None] & (delta < 0))
    inside = tm.inside(x64)
    bad |= inside & ((a64 < tm.lower[None]) | (a64 > tm.upper[None]))
    size = _row_norm(delta / tm.scale[None], p)
    return torch.where(bad.any(dim=1), torch.full_like(size, math.inf), size)


def _step_u(
    model: nn.Module, xr: torch.Tensor, u: torch.Tensor, y: torch.Tensor, scale: torch.Tensor, shape: tuple[int, ...]
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Attack loss (N,), success (N,) bool and the loss gradient with respect to u (N, d) at x + scale ⊙ u."""
    ua = u.detach().requires_grad_(True)
    with torch.enable_grad():
        out = _forward(model, (xr + ua * scale).reshape((-1, *shape)))
        loss, ok = _attack_loss(out, y, out.dim() == 2)
        (grad,) = torch.autograd.grad(loss.sum(), ua)
    return loss.detach(), ok.detach(), grad


def _one_run(
    model: nn.Module, xr: torch.Tensor, er: torch.Tensor, y: torch.Tensor, u: torch.Tensor, geometry: tuple
) -> tuple[torch.Tensor, torch.Tensor]:
    """One restart from u: (best u (N, d), success (N,) bool)."""
    p, scale, low, high, steps, shape = geometry
    best, found = u.clone(), torch.zeros(xr.shape[0], dtype=torch.bool, device=xr.device)
    best_loss = torch.full((xr.shape[0],), -math.inf, dtype=torch.float64, device=xr.device)
    for t in range(steps + 1):
        loss, ok, grad = _step_u(model, xr, u, y, scale, shape)
        better = (ok & ~found) | ((ok == found) & (loss.double() > best_loss))
        best[better], best_loss[better] = u[better], loss.double()[better]
        found |= ok
        if t == steps or bool(found.all()):
            break
        blocked = ((u <= low) & (grad < 0)) | ((u >= high) & (grad > 0))
        alpha = 0.5 * (0.01 + 0.99 * 0.5 * (1.0 + math.cos(math.pi * t / max(steps - 1, 1))))
        step = _ascent_direction(grad, p, blocked, max(1, math.ceil(0.05 * u.shape[1]))) * (alpha * er)[:, None]
        u = torch.where(found[:, None], u, u + step)
        u = project_lp_ball(torch.minimum(torch.maximum(u, low), high), er, p)
    return best, found


def _restarts(
    model: nn.Module,
    xr: torch.Tensor,
    eps_t: torch.Tensor,
    y: torch.Tensor,
    geometry: tuple,
    restarts: int,
    generator: torch.Generator | None,
) -> torch.Tensor:
    """The best u (N, d) over ``restarts`` runs; inputs already flipped are not attacked again."""
    p, scale, low, high, steps, shape = geometry
    best = torch.zeros_like(xr)
    todo = torch.ones(xr.shape[0], dtype=torch.bool, device=xr.device)
    for restart in range(max(1, restarts)):
        rows = torch.nonzero(todo).flatten()
        if rows.numel() == 0:
            break
        start = torch.zeros_like(xr[rows])
        if restart:
            noise = torch.rand(start.shape, generator=generator, dtype=xr.dtype) * 2 - 1
            start = noise.to(xr.device) * eps_t[rows, None]
            start = project_lp_ball(torch.minimum(torch.maximum(start, low[rows]), high[rows]), eps_t[rows], p)
        u, ok = _one_run(model, xr[rows], eps_t[rows], y[rows], start, (p, scale, low[rows], high[rows], steps, shape))
        best[rows], todo[rows[ok]] = u, False
    return best


def threat_attack(
    model: nn.Module,
    x: torch.Tensor,
    eps: torch.Tensor | float,
    norm: float | str,
    threat_model: ResolvedThreatModel,
    steps: int = 100,
    restarts: int = 1,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """Try to flip each input's decision with a move the threat model allows, of size ≤ eps[i] (its units).

    Args:
        model: returns (N,) scores or (N, K) logits; run in eval mode.
        x: (N, *shape) clean inputs in raw units.
        eps: (N,) radii in threat-model units (a float is broadcast), finite and ≥ 0.
        norm: p ≥ 1. threat_model: resolved for d = x[0].numel() features.
        steps, restarts, generator: as :func:`~asymcert.certify.attacks.pgd_attack` (first start at x,
            later ones at random allowed points).
    Returns:
        x_adv (N, *shape) like x, with :func:`move_sizes` ≤ eps (checked in float64; x itself where
        rounding would break that).
    """
    p = normalize_norm(norm)
    n, shape = x.shape[0], tuple(x.shape[1:])
    eps64 = torch.as_tensor(eps, dtype=torch.float64, device=x.device)
    eps64 = eps64.expand(n).clone() if eps64.dim() == 0 else eps64.reshape(-1)
    if eps64.shape[0] != n or not bool(torch.isfinite(eps64).all()) or bool((eps64 < 0).any()):
        raise InputError(f"eps must be {n} finite radii ≥ 0 (or one)")
    # a hair inside the ball, so that x + scale ⊙ u rounded in x's dtype still measures ≤ eps
    eps_t = (eps64 * (1 - 1e-6)).to(x.dtype)
    xr = x.detach().reshape(n, math.prod(shape))
    low, high = (b.to(x.dtype) for b in _u_box(xr, threat_model))
    scale = threat_model.scale.to(x.device, x.dtype)[None]
    with eval_mode(model):  # the whole attack in eval mode (batch norm with running statistics)
        with torch.no_grad():
            y = _decide(_forward(model, x.detach()))
        best = _restarts(model, xr, eps_t, y, (p, scale, low, high, steps, shape), restarts, generator)
    x_adv = threat_model.project(x.detach(), (xr + best * scale).reshape(x.shape))
    legal = move_sizes(x, x_adv, threat_model, p).to(x.device) <= eps64
    return torch.where(legal.reshape((-1,) + (1,) * len(shape)), x_adv, x.detach())
