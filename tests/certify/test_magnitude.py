"""Magnitude bounds of a convex network's evaluation, and the certificates that rely on them: weights that cancel,
moves that overflow float32, parameters whose float32 evaluation is not finite (hostile-file audit 26a F1–F3)."""

from __future__ import annotations

import math

import pytest
import torch

import asymcert
from asymcert.certify.feature_convex import model_magnitudes
from asymcert.certify.magnitude import absolute_pass, network_magnitudes
from asymcert.certify.scope import call_scope
from asymcert.models import build_model
from asymcert.models.one_vs_rest import OneVsRestConvex
from asymcert.nn.convex import ConvexMean
from tests.conftest import one_unit_icnn, small_feature_convex

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
    m = one_unit_icnn(n)
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


def test_the_magnitudes_are_kept_only_while_the_weights_are_bitwise_the_same():
    """Computed once per model inside a call_scope (one certificate call), and kept across calls only while every
    tensor they read is bit for bit the same, so that a change of the weights between calls, however it is made,
    is always seen."""
    model = small_feature_convex("icnn")
    shape = tuple(model.features(torch.rand(1, 1, 6, 6)).shape[1:])
    with call_scope():
        first = model_magnitudes(model, shape)
        assert model_magnitudes(model, shape) is first
        with call_scope():  # nested: the same
            assert model_magnitudes(model, shape) is first
    assert model_magnitudes(model, shape) is first  # (the weights are the same)
    with torch.no_grad():
        model.convex.passthrough[0].weight.data.mul_(2.0)  # (no version counter moves)
    second = model_magnitudes(model, shape)
    assert float(second.overflow.sum()) > float(first.overflow.sum())
    assert float(second.overflow0) == pytest.approx(float(first.overflow0))  # (φ's parameters counted: the same)


def _flat(n: int = 256, k: float = 1.0e7):
    """g(f) = relu(k·Σf) − k·Σf + 1: exactly 1 for Σf ≥ 0 (gradient 0), but its float32 sums carry k·Σf."""
    model = _cancelling(n, k)
    with torch.no_grad():
        model.convex.passthrough[1].weight.fill_(-k)
    return model


@pytest.mark.parametrize("kind", ["binary", "one-vs-rest"])
def test_a_zero_gradient_does_not_skip_the_growth_of_a(kind):
    """∇g = 0 gave an infinite closed-form radius that the growth check skipped (review 26 F4): radii of 10²²
    while the model's own score at ℓ∞ distance 1 was 0.0. Now the margin pays for A's growth: finite radii, and
    the corner of the ℓ∞ ball keeps the flag."""
    n = 256
    model = _flat(n) if kind == "binary" else OneVsRestConvex([_flat(n), _flat(n)])
    x = torch.full((1, n), 1e-6)
    cert = asymcert.certify(model, x, norms=NORMS)
    r = float(cert.radius(math.inf)[0])
    assert 0 < r < 1e-2
    member = model if kind == "binary" else model.member_models[0]
    assert _lowest_own_score(member, x, r) > 0.5


def test_weights_written_through_data_are_seen_by_the_next_certificate():
    """Magnitudes were cached across calls by the tensors' identity and version counters, which writes through
    ``.data`` leave alone (review 26 F2): the next certificate used a harmless model's magnitudes for the cancelling
    weights, the old ℓ∞ radius 3.9e-3. Now they are computed once per call."""
    n = 256
    model, hostile = _cancelling(n), _cancelling(n)
    with torch.no_grad():
        model.convex.passthrough[0].weight.data.zero_()
        model.convex.passthrough[1].weight.data.fill_(-1.0)
    x = torch.full((1, n), 1e-6)
    asymcert.certify(model, x, norms=NORMS)
    for mine, theirs in zip(model.parameters(), hostile.parameters()):
        mine.data.copy_(theirs.data)
    again = asymcert.certify(model, x, norms=NORMS)
    assert float(again.radius(math.inf)[0]) == float(asymcert.certify(hostile, x, norms=NORMS).radius(math.inf)[0])
    assert float(again.radius(math.inf)[0]) < 1e-3


def test_a_feature_map_whose_own_steps_may_overflow_certifies_nothing():
    """Standardize with μ₀ = float32's largest value and σ₀ = 10³⁰ passes validation and computes x₀ − μ₀ = −∞ for
    x₀ ≤ −2.1·10³¹ (NaN scores), although its features are small (review 26 F3: radii of 3·10³² and ∞). H now counts
    φ's own parameters: such a model may overflow anywhere, so its decisions are its own with radius 0."""
    model = one_unit_icnn(2, "standardize")
    with torch.no_grad():
        model.feature_map.maps[0].mean.copy_(torch.tensor([torch.finfo(torch.float32).max, 0.0]))
        model.feature_map.maps[0].scale.copy_(torch.tensor([1e30, 1.0]))
        model.convex.passthrough[0].weight.zero_()
        model.convex.hidden[0].weight.zero_()
        model.convex.passthrough[1].weight.copy_(torch.tensor([[0.0, -1.0]]))
        model.convex.passthrough[1].bias.fill_(1.0)
        assert bool(torch.isnan(model(torch.tensor([[-3e31, 0.0]]))).all())
    model.validate()
    x = torch.zeros(1, 2)
    for tm in (None, asymcert.ThreatModel.from_dict({"immutable": ["1"]}).resolve(None, 2)):
        cert = asymcert.certify(model, x, norms=NORMS, threat_model=tm)
        assert bool(cert.sensitive[0]) and all(float(cert.radius(p)[0]) == 0.0 for p in NORMS)


class _MaxOfAffine(torch.nn.Module):
    """A user's own convex g: a max of affine functions, with its contract declared (and, optionally, its
    absolute evaluation)."""

    def __init__(self, d: int, declare: bool) -> None:
        super().__init__()
        self.affine = torch.nn.Linear(d, 4)
        if declare:
            self.absolute_pass = self._absolute

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(x.flatten(1)).amax(dim=1)

    def convexity_contract(self) -> list[str]:
        return []

    def _absolute(self, af: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        terms = af.flatten(1) @ self.affine.weight.detach().double().abs().T + self.affine.bias.detach().double().abs()
        return terms.sum(dim=1), terms.sum(dim=1)


def test_a_users_own_network_gives_its_magnitudes_by_declaring_them():
    """Networks asymcert does not know have A = H = 0 unless they declare ``absolute_pass`` (the guard then sees
    the gradient's terms only, as before); declared, A is theirs."""
    from asymcert.models import FeatureConvexClassifier
    from asymcert.nn.feature_maps import Compose, Shift

    for declare in (False, True):
        g = _MaxOfAffine(6, declare)
        model = FeatureConvexClassifier(Compose([Shift((6,))]), g, (6,)).eval()
        mags = model_magnitudes(model, (6,))
        want = g.affine.weight.detach().double().abs().sum(0) if declare else torch.zeros(6, dtype=torch.float64)
        assert torch.allclose(mags.rounding, want)
        cert = asymcert.certify(model, torch.randn(16, 6), norms=NORMS)
        assert bool((cert.radius(2.0) >= 0).all())


def test_a_batch_norm_scale_beyond_float32_certifies_nothing():
    """γ = 3e38 with running variance 0: the scale γ/√ε is finite in float64 and ∞ in float32, the model scores NaN
    everywhere, and certify said flagged with radii 0.25–1.5 (review 26b G2). H now counts the scale itself."""
    model = one_unit_icnn(2, batch_norm=True)
    with torch.no_grad():
        model.convex.passthrough[0].weight.zero_()
        model.convex.passthrough[0].bias.zero_()
        norm = model.convex.norms[0]
        norm.weight.fill_(3e38)
        norm.bias.zero_()
        norm.running_mean.zero_()
        norm.running_var.zero_()
        model.convex.hidden[0].weight.fill_(0.5)
        model.convex.passthrough[1].weight.fill_(-1.0)
        model.convex.passthrough[1].bias.fill_(1.0)
    model.eval().validate()
    x = torch.tensor([[0.0, 0.0], [-1.0, -1.0], [0.25, 0.25]])
    with torch.no_grad():
        assert bool(torch.isnan(model(x)).all())
    cert = asymcert.certify(model, x, norms=NORMS)
    assert not bool(cert.sensitive.any()) and all(float(cert.radius(p).max()) == 0.0 for p in NORMS)


def test_a_feature_map_step_that_overflows_before_the_next_shrinks_it_keeps_no_infinite_radius():
    """φ = standardize (σ₀ = 1e-30), then log1p: (x − μ)/σ reaches 1e39 = ∞ in float32 at x₀ = 1e9 and the score is
    NaN, though log1p hides it from φ's output; an increase-only move there was certified at ∞ (review 26b G1)."""
    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [2],
            "feature_map": [{"kind": "standardize"}, {"kind": "log1p"}],
            "convex": {"kind": "icnn", "widths": [4], "batch_norm": False},
            "monotone": {"increasing": [0]},
        }
    )
    with torch.no_grad():
        model.feature_map.maps[0].mean.zero_()
        model.feature_map.maps[0].scale.fill_(1.0)
        model.feature_map.maps[0].scale[0] = 1e-30
        model.convex.passthrough[0].weight[0, 0] = 0.0
        model.set_balance(0.0)
        model.set_balance(-float(model(torch.zeros(1, 2))[0]) + 1.0)
        assert bool(torch.isnan(model(torch.tensor([[1e9, 0.0]]))).all())
    tm = asymcert.ThreatModel.from_dict({"increase_only": ["0"], "immutable": ["1"], "upper": {"0": 1e10}})
    for reach in (False, True):
        cert = asymcert.certify(
            model.eval(), torch.zeros(1, 2), norms=NORMS, threat_model=tm.resolve(None, 2), reach=reach
        )
        assert bool(cert.sensitive[0]) and all(float(cert.radius(p)[0]) < 1e9 for p in NORMS)
