"""Randomized smoothing of MULTI-CLASS base models (N, K) logits: Gaussian sampling against a closed form, and
deterministic splitting with K = 3 against a brute-force recomputation in the test.

Promises checked:

- Gaussian, 3-class affine base whose third class never wins (its logit is −50 < max(a, −a)): the smoothed top-class
  probability is Φ(dist/σ) exactly (dist: the ℓ2 distance to the class-0/1 hyperplane), p_lower is below it, the ℓ2
  radius is σΦ⁻¹(p_lower) rounded down, below dist and close to it (n = 100,000), radii go to BOTH classes (DECISION
  guarantee, ``binary=False``), and the affine worst-case move of 0.999·r (straight at the hyperplane) keeps the
  decision of the smoothed classifier (the base decision, for an affine base);
- splitting, 3-class ReLU base: the exact probabilities agree with a brute-force average over 20,000 offsets written
  here from the module's quantizer formula q_i = 2λ(⌊(x_i − s)/2λ⌋ + 1); the ℓ1 radius is 2λ(p − ½) rounded down;
  random ℓ1 moves of 0.999·r keep the exact argmax and p > ½ for the certified class.
"""

from __future__ import annotations

import math

import torch
from scipy.stats import norm
from torch import nn

import asymcert
from asymcert.certify.smoothing import splitting_probabilities


class _ThreeClassAffine(nn.Module):
    """logits (N, 3) = (a, −a, −50) with a = u·x + c."""

    def __init__(self, u: torch.Tensor, c: float) -> None:
        super().__init__()
        self.u, self.c = nn.Parameter(u.clone()), nn.Parameter(torch.tensor(c))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        a = x.flatten(1) @ self.u + self.c
        return torch.stack([a, -a, torch.full_like(a, -50.0)], dim=1)


def test_gaussian_multiclass_radius_matches_the_closed_form_for_both_classes():
    """p_lower ≤ Φ(dist/σ), r₂ = σΦ⁻¹(p_lower) rounded down, r₂ < dist, and the worst-case move keeps the decision."""
    d, sigma, c = 8, 0.5, 0.1
    u = torch.randn(d, generator=torch.Generator().manual_seed(0))
    unit = u.double() / u.double().norm()
    dist = torch.tensor([0.2, 0.4, 0.7, 1.0, 0.3, 0.6, 0.9, 1.2], dtype=torch.float64)
    side = torch.tensor([1, 1, 1, 1, -1, -1, -1, -1], dtype=torch.float64)  # class 0 (a > 0) or class 1
    base = torch.randn(len(dist), d, generator=torch.Generator().manual_seed(1), dtype=torch.float64)
    base = base - ((base @ u.double() + c) / u.double().norm())[:, None] * unit  # onto the hyperplane a = 0
    x = (base + (side * dist)[:, None] * unit).float()
    model = _ThreeClassAffine(u, c)
    cert = asymcert.certify(
        model,
        x,
        norms=(2,),
        method="smoothing-gaussian",
        sigma=sigma,
        n0=100,
        n=100_000,
        alpha=0.001,
        generator=torch.Generator().manual_seed(2),
        batch=200_000,
    )
    assert not cert.binary and not bool(cert.abstained.any())
    expected_class = torch.where(side > 0, 0, 1)
    assert torch.equal(cert.predicted, expected_class)
    p_true = torch.from_numpy(norm.cdf((dist / sigma).numpy()))
    p_lower = cert.extra["p_lower"].double()
    assert bool((p_lower <= p_true).all())
    r2 = cert.radii[2.0]
    closed = sigma * torch.from_numpy(norm.ppf(p_lower.numpy()))
    assert bool((r2 <= closed).all()) and torch.allclose(r2, closed, rtol=1e-9, atol=1e-12)
    assert bool((r2 < dist).all()), "above the exact radius of the smoothed classifier"
    assert bool((r2 > dist - 0.03).all())
    assert bool((r2[side < 0] > 0).all()) and bool((r2[side > 0] > 0).all())  # both classes get radii
    # the worst case for an affine base: straight at the hyperplane; the smoothed decision is the base argmax there
    moved = (x.double() - (side * 0.999 * r2)[:, None] * unit).float()
    with torch.no_grad():
        assert torch.equal(model(moved).argmax(1), expected_class)
        beyond = (x.double() - (side * 1.001 * dist)[:, None] * unit).float()  # past the hyperplane: the other class
        assert torch.equal(model(beyond).argmax(1), 1 - expected_class)


def _brute_force_splitting(net: nn.Module, x: torch.Tensor, lam: float, k: int, offsets: int = 20_000) -> torch.Tensor:
    """(N, K) float64: the average over s = 2λ(j + ½)/offsets of the base decision at q_i = 2λ(⌊(x_i − s)/2λ⌋ + 1)."""
    width = 2 * lam
    out = torch.zeros(len(x), k, dtype=torch.float64)
    s_all = width * (torch.arange(offsets, dtype=torch.float64) + 0.5) / offsets
    with torch.no_grad():
        for s in s_all.split(2000):
            q = width * (torch.floor((x.double()[None] - s[:, None, None]) / width) + 1)  # (S, N, d)
            dec = net(q.reshape(-1, x.shape[1]).to(x.dtype)).argmax(1).reshape(len(s), len(x))
            out += torch.nn.functional.one_hot(dec, k).double().sum(0)
    return out / offsets


def test_splitting_with_three_classes_keeps_the_exact_decision_inside_the_l1_radius():
    """Exact p = brute force (±0.003); r₁ = 2λ(p − ½) rounded down; random ℓ1 moves of 0.999·r₁ keep the argmax."""
    d, k, sigma = 12, 3, 0.3
    lam = sigma * math.sqrt(3)
    torch.manual_seed(0)
    net = nn.Sequential(nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, k))
    x = torch.randint(0, 256, (60, d), generator=torch.Generator().manual_seed(1)).float() / 255
    with torch.no_grad():  # spread the decisions over the three classes on these inputs
        net[2].bias -= net(x).mean(0)
    probs = splitting_probabilities(net, x, lam, k)
    brute = _brute_force_splitting(net, x, lam, k)
    assert float((probs - brute).abs().max()) <= 3e-3
    cert = asymcert.certify(net, x, norms=(1,), method="smoothing-splitting", sigma=sigma)
    assert cert.deterministic and not cert.binary
    r1 = cert.radii[1.0]
    p_top = probs.gather(1, cert.predicted[:, None])[:, 0]
    assert bool((r1 <= (2 * lam * (p_top - 0.5)).clamp_min(0)).all())
    pos = r1 > 0
    assert torch.allclose(r1[pos], 2 * lam * (p_top[pos] - 0.5), rtol=0, atol=1e-8)
    assert bool((r1[p_top <= 0.5] == 0).all())
    assert int(pos.sum()) >= 10 and len(cert.predicted[pos].unique()) >= 2, "too few certified rows / classes"
    gen = torch.Generator().manual_seed(3)
    for _ in range(4):
        delta = torch.randn(int(pos.sum()), d, generator=gen, dtype=torch.float64)
        delta = delta / delta.abs().sum(1, keepdim=True) * (0.999 * r1[pos])[:, None]
        moved = (x[pos].double() + delta).float()
        inside = (moved.double() - x[pos].double()).abs().sum(1) < r1[pos]
        p_moved = splitting_probabilities(net, moved, lam, k)
        same = p_moved.argmax(1) == cert.predicted[pos]
        held = p_moved.gather(1, cert.predicted[pos][:, None])[:, 0] > 0.5
        assert bool((same & held)[inside].all()), "an ℓ1 move inside the radius changed the smoothed decision"
        assert int(inside.sum()) >= 0.9 * int(pos.sum())
