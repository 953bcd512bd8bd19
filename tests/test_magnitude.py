"""Magnitude bounds of a convex network's evaluation, and the certificates that rely on them: weights that cancel,
moves that overflow float32, parameters whose float32 evaluation is not finite (hostile-file audit 26a F1–F3)."""

from __future__ import annotations

import math

import pytest
import torch

import asymcert
from asymcert.certify.feature_convex import model_magnitudes
from asymcert.certify.magnitude import absolute_pass, network_magnitudes
from asymcert.models import build_model
from asymcert.nn.convex import ConvexMean
from tests.conftest import small_feature_convex

NORMS = (1.0, 2.0, math.inf)


def _intermediates(model, f: torch.Tensor) -> torch.Tensor:
    """Σ of |every output of every submodule of g| (N,) at features f: what H must bound."""
    total = [f.detach().abs().flatten(1).sum(1)]
    hooks = [
        m.register_forward_hook(lambda _m, _i, out: total.append(out.detach().abs().flatten(1).sum(1)))
        for m in model.convex.modules()
        if not list(m.children())
    ]
    with torch.no_grad():
        model.convex(f)
    for h in hooks:
        h.remove()
    return torch.stack(total).sum(0)


@pytest.mark.parametrize("kind", ["icnn", "conv", "mean"])
def test_the_absolute_evaluation_bounds_the_score_and_every_value_computed(kind):
    if kind == "mean":
        members = [small_feature_convex("icnn", seed=s).convex for s in range(3)]
        model = small_feature_convex("icnn")
        model.convex = ConvexMean(members)
    else:
        model = small_feature_convex(kind)
    model = model.double().eval()
    x = torch.rand(50, 1, 6, 6, dtype=torch.float64) * 3
    with torch.no_grad():
        f = model.features(x)
        s = model(x)
    mags = network_magnitudes(model.convex, tuple(f.shape[1:]), float(model.balance))
    a, h = mags.at(f)
    assert bool((s.abs() <= a * (1 + 1e-12)).all())
    assert bool((_intermediates(model, f) <= h * (1 + 1e-12)).all())
    # linear in |f|: the coefficients reproduce the absolute pass itself
    a2, h2 = absolute_pass(model.convex, f.abs())
    assert torch.allclose(a, a2 + abs(float(model.balance)), rtol=1e-12)
    assert torch.allclose(h, h2 + f.abs().flatten(1).sum(1) + abs(float(model.balance)), rtol=1e-12)
    # growth per ℓp move of the features: A(f') − A(f) ≤ ‖a‖_q‖f' − f‖_p
    g = torch.Generator().manual_seed(1)
    moved = f + torch.randn(f.shape, generator=g, dtype=torch.float64)
    for p in NORMS:
        grow_a, _ = mags.growth(p)
        step = torch.linalg.vector_norm((moved - f).flatten(1), p, dim=1)
        assert bool((mags.at(moved)[0] <= a + grow_a * step + 1e-9).all())


def _cancelling(n: int, k: float = 1.0e7):
    """g(f) = relu(k·Σf) − (k + 1)·Σf + 1: convex (hidden weight 1 ≥ 0, pass-through free), gradient −1 per
    feature, but its float32 sums carry terms of size k·Σf that cancel."""
    m = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [n],
            "feature_map": [{"kind": "identity"}],
            "convex": {"kind": "icnn", "widths": [1], "batch_norm": False},
        }
    )
    with torch.no_grad():
        m.convex.passthrough[0].weight.fill_(k)
        m.convex.passthrough[0].bias.zero_()
        m.convex.hidden[0].weight.fill_(1.0)
        m.convex.passthrough[1].weight.fill_(-(k + 1.0))
        m.convex.passthrough[1].bias.fill_(1.0)
    return m.eval()


def _lowest_own_score(model, x: torch.Tensor, radius: float, tries: int = 3000) -> float:
    """The lowest float32 score of the model's own at moves of every feature up by up to 0.999·radius (ℓ∞)."""
    g = torch.Generator().manual_seed(0)
    corner = x + 0.999 * radius
    moves = [corner] + [x + torch.rand(x.shape, generator=g) * 0.999 * radius for _ in range(tries)]
    with torch.no_grad():
        return min(float(model(m.float()).min()) for m in moves)


@pytest.mark.parametrize("threat", [False, True])
def test_weights_that_cancel_get_a_radius_the_deployed_model_keeps(threat):
    """The guard was 8·eps·(Σ|∇g ⊙ φ| + |s| + C) at x: about 2·10⁻⁴ here, while at the corner of the certified
    ℓ∞ ball (3.9·10⁻³ before) the float32 sums carry terms of 10⁷·Σf and the model's own score was 0.0."""
    n = 256
    model = _cancelling(n)
    x = torch.full((1, n), 1e-6)
    tm = asymcert.ThreatModel.from_dict({}).resolve(None, n) if threat else None
    cert = asymcert.certify(model, x, norms=NORMS, threat_model=tm)
    assert bool(cert.sensitive[0])
    r = float(cert.radius(math.inf)[0])
    assert 0 < r < 1e-3
    assert _lowest_own_score(model, x, r) > 0.5
    # the exact function (guard=False) keeps the radius of its gradient: 1 / 256 minus the rounding
    exact = asymcert.certify(model, x, norms=NORMS, threat_model=tm, guard=False)
    assert float(exact.radius(math.inf)[0]) > 3e-3


def _monotone_model():
    """s increasing in input 0, φ = standardize with σ₀ ≈ 0.01: raising input 0 to 10³⁶ overflows φ to ∞,
    where a pass-through weight of exactly 0 makes ∞·0 = NaN."""
    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [4],
            "feature_map": [{"kind": "standardize"}],
            "convex": {"kind": "icnn", "widths": [8], "batch_norm": False},
            "monotone": {"increasing": [0]},
        }
    )
    x = torch.rand(200, 4) * torch.tensor([0.03, 1.0, 1.0, 1.0])
    model.feature_map.fit(x)
    with torch.no_grad():
        model.convex.passthrough[0].weight[0, 0] = 0.0
        model.set_balance(-float(model(x).median()))
    return model.eval(), x


def test_a_monotone_move_to_the_edge_of_float32_is_not_certified_infinite():
    model, x = _monotone_model()
    unbounded = asymcert.ThreatModel.from_dict({"immutable": ["1", "2", "3"], "increase_only": ["0"]}).resolve(None, 4)
    cert = asymcert.certify(model, x, norms=NORMS, threat_model=unbounded)
    flagged = cert.sensitive
    assert int(flagged.sum()) > 20
    r = cert.radius(math.inf)[flagged]
    assert bool(torch.isfinite(r).all()) and float(r.min()) > 100  # finite (it was ∞), still far
    with torch.no_grad():
        far = x[flagged].clone()
        far[:, 0] = 3e38  # an allowed move beyond the radius: the model's own score is NaN there (∞·0)
        assert bool(torch.isnan(model(far)).any())
        inside = x[flagged].clone()
        inside[:, 0] += (0.999 * r).float()
        assert bool((model(inside) > 0).all())
    # a bounded domain keeps the infinite certificate: every allowed move stays where float32 holds
    bounded = asymcert.ThreatModel.from_dict(
        {"immutable": ["1", "2", "3"], "increase_only": ["0"], "upper": {"0": 100.0}}
    ).resolve(None, 4)
    assert bool(
        torch.isinf(asymcert.certify(model, x, norms=NORMS, threat_model=bounded).radius(math.inf)[flagged]).all()
    )


def test_parameters_whose_float32_evaluation_is_not_finite_certify_nothing():
    """σ = 10⁻⁴⁰ passes validate (σ > 0) but its float32 φ is ±∞ and the score NaN or ∞: decided as the model
    decides (NaN: not flagged), with radius 0 (certify said flagged, score ∞, finite radii)."""
    model, x = _monotone_model()
    with torch.no_grad():
        model.feature_map.maps[0].scale[1] = 1e-40
        own = model(x)
    assert int(torch.isfinite(own).sum()) < 20 and bool(torch.isnan(own).any())
    for tm in (None, asymcert.ThreatModel.from_dict({}).resolve(None, 4)):
        cert = asymcert.certify(model, x, norms=NORMS, threat_model=tm)
        assert torch.equal(cert.sensitive, own > 0)
        assert all(float(cert.radius(p).max()) == 0.0 for p in NORMS)


def test_the_magnitudes_are_recomputed_whenever_the_model_changes():
    """Kept once per model state (they cost a pass of the absolute network): a weight changed in place, a
    replaced parameter or another dtype gives new ones, computed from the new weights."""
    model = small_feature_convex("icnn")
    shape = tuple(model.features(torch.rand(1, 1, 6, 6)).shape[1:])
    first = model_magnitudes(model, shape)
    assert model_magnitudes(model, shape) is first
    with torch.no_grad():
        model.convex.passthrough[0].weight.mul_(2.0)
    second = model_magnitudes(model, shape)
    assert second is not first and float(second.overflow.sum()) > float(first.overflow.sum())
    model.convex.passthrough[0].weight = torch.nn.Parameter(model.convex.passthrough[0].weight.detach() * 3)
    third = model_magnitudes(model, shape)
    assert float(third.overflow.sum()) > float(second.overflow.sum())
    assert model_magnitudes(model.double(), shape) is not third
