"""A certificate is a promise: PGD inside the certified radius never flips a flagged input."""

import math
from fractions import Fraction

import pytest
import torch

import asymcert
from asymcert.certify.attacks import decision_flips, pgd_attack
from asymcert.certify.feature_convex import float_guard, score_and_feature_gradient, underflow_bound
from asymcert.models import build_model
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.nn import ICNN
from asymcert.nn.feature_maps import Compose, Identity
from tests.conftest import guard_and_gap, near_boundary, small_feature_convex

FMAPS = [
    [{"kind": "shift"}],
    [{"kind": "shift"}, {"kind": "concat-abs"}],
    [{"kind": "log1p"}, {"kind": "shift"}],
    [{"kind": "shift"}, {"kind": "hinges", "knots": 3}],
]


def _pgd_never_flips_inside(model, x, p):
    """PGD just inside each flagged input's ℓp radius moves by at most the radius and flips none; returns
    the flagged mask (positive radii only: a radius of 0 promises nothing) and the radii attacked."""
    cert = asymcert.certify(model, x, norms=(p,))
    flagged = cert.sensitive & (cert.radii[p] > 0)
    assert int(flagged.sum()) > 5
    eps = (cert.radii[p][flagged] * (1 - 1e-6)).float()
    x_adv = pgd_attack(model, x[flagged], eps, p, steps=100, restarts=2, generator=torch.Generator().manual_seed(0))
    delta = (x_adv - x[flagged]).flatten(1)
    assert bool((torch.linalg.vector_norm(delta.double(), ord=p, dim=1) <= eps.double() * (1 + 1e-5)).all())
    assert not bool(decision_flips(model, x[flagged], x_adv).any())
    return flagged, eps


@pytest.mark.parametrize("kind", ["icnn", "conv"])
@pytest.mark.parametrize("fmap", FMAPS)
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("near", [False, True], ids=["typical", "near-boundary"])
def test_pgd_inside_the_radius_never_flips(kind, fmap, p, near):
    model = small_feature_convex(kind, feature_map=fmap, seed=3)
    x = torch.rand(64, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    if near:  # scores log-spaced over 1e-7 … 1e-2: radius 0 inside the rounding allowance, small above it
        x = near_boundary(model, torch.rand(256, 1, 6, 6, generator=torch.Generator().manual_seed(1)))
    _pgd_never_flips_inside(model, x, p)


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
@pytest.mark.parametrize("near", [False, True], ids=["typical", "near-boundary"])
@pytest.mark.parametrize("sets", [{"kind": "pair-min"}, {"kind": "group-min", "order": 3}], ids=["pairs", "triples"])
def test_pgd_inside_the_plain_radius_never_flips_through_pair_min(p, near, sets):
    """pair-min (every pair of features as an AND) and group-min (every pair and triple) on feature vectors:
    their Lipschitz constants ((1 + 2⌊n/2⌋)^{1/p}, (1 + (n − 1) + C(n − 1, 2))^{1/p}) make the plain ℓp
    radius a promise too."""
    torch.manual_seed(0)
    fmap = [{"kind": "log1p"}, {"kind": "standardize"}, sets, {"kind": "hinges", "knots": 2}]
    config = {
        "kind": "feature-convex",
        "input_shape": [7],
        "feature_map": fmap,
        "convex": {"kind": "icnn", "widths": [8]},
    }
    model = build_model(config).eval()
    x = torch.rand(512, 7, generator=torch.Generator().manual_seed(2)) * 4
    model.feature_map.fit(x)
    with torch.no_grad():
        model.balance -= model(x).median()
    if near:
        x = near_boundary(model, x)
    flagged, eps = _pgd_never_flips_inside(model, x, p)
    far = pgd_attack(model, x[flagged], eps * 60, p, steps=100, restarts=2, generator=torch.Generator().manual_seed(0))
    assert float(decision_flips(model, x[flagged], far).float().mean()) > 0.3  # the attack has teeth


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_the_same_attack_flips_beyond_a_loose_multiple_of_the_radius(p):
    """The attack is strong enough to matter: well outside the certificate it does find flips."""
    model = small_feature_convex("icnn", seed=3)
    x = torch.rand(64, 1, 6, 6)
    cert = asymcert.certify(model, x, norms=(p,))
    flagged = cert.sensitive
    eps = (cert.radii[p][flagged] * 20).float()
    x_adv = pgd_attack(model, x[flagged], eps, p, steps=100, restarts=2, generator=torch.Generator().manual_seed(0))
    assert float(decision_flips(model, x[flagged], x_adv).float().mean()) > 0.5


@pytest.mark.parametrize("kind", ["icnn", "conv"])
def test_float_guard_covers_float32_rounding_with_room_to_spare(kind):
    """|s_float32 − s_float64| stays well under the guard the certifier reserves for it."""
    from asymcert.certify.feature_convex import FLOAT_GUARD_FACTOR

    for seed in range(3):
        model = small_feature_convex(kind, feature_map=FMAPS[seed % 2], seed=seed)
        guard, gap = guard_and_gap(model, torch.rand(1000, 1, 6, 6))
        assert bool((gap <= guard / (FLOAT_GUARD_FACTOR / 4)).all())


def test_the_guard_follows_the_arithmetic_the_model_runs_in():
    """The guard is absolute and scales with the model's own arithmetic: float64 models get a float64-sized
    guard (not none), and float32 products that PyTorch may run in reduced precision (TF32/bfloat16:
    ``torch.set_float32_matmul_precision("high")``, TF32 flags on CUDA) get a TF32-sized one."""
    model = small_feature_convex("icnn", seed=0)
    x = torch.rand(20, 1, 6, 6)
    s, g = score_and_feature_gradient(model, x)
    f = model.features(x)
    base = float_guard(model, f, g, s)
    assert bool((base > 0).all())
    m64 = model.double()
    guard64 = float_guard(m64, f.double(), g.double(), s.double())
    torch.testing.assert_close(guard64, base * 2.0**-29, rtol=1e-12, atol=0)  # eps64 / eps32
    before = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("high")
        tf32 = float_guard(model.float(), f, g, s)
        radius_tf32 = asymcert.certify(model, x, norms=(2.0,), precision="model").radii[2.0]
    finally:
        torch.set_float32_matmul_precision(before)
    torch.testing.assert_close(tf32, base * 2.0**14, rtol=1e-12, atol=0)  # 2·2⁻¹⁰ / 2⁻²³
    radius = asymcert.certify(model, x, norms=(2.0,), precision="model").radii[2.0]
    assert bool((radius_tf32 <= radius).all()) and bool((radius_tf32 < radius).any())


def _linear_score(weight: float, dtype: torch.dtype = torch.float32) -> FeatureConvexClassifier:
    """s(x) = weight·x on one feature (an ICNN whose hidden unit is dead): subnormal scores for tiny weights."""
    g = ICNN((1,), widths=(1,), batch_norm=False).to(dtype)
    with torch.no_grad():
        for q in g.parameters():
            q.zero_()
        g.passthrough[1].weight.fill_(weight)
    assert float(g.passthrough[1].weight.detach()) > 0.0  # (representable: not flushed to 0 by the dtype)
    return FeatureConvexClassifier(Compose([Identity()]), g, (1,)).to(dtype).eval()


@pytest.mark.parametrize("precision", ["auto", "bounded", "float64", "model"])
def test_the_guard_covers_a_deployed_score_that_underflows_to_zero(precision):
    """s = 1e-38·x at x = 2e-7: every term is subnormal in float32, and the deployed model returns s = 0 at
    x' = 7.000038e-8. A purely relative guard (8·eps·M, M ~ 1e-45) certified ℓ∞ radii up to 2.0e-7, beyond x';
    the underflow term keeps the radius below x − x' (review s32, F2a)."""
    model = _linear_score(1e-38)
    x = torch.tensor([[2e-7]])
    xp = torch.tensor([[7.000038e-8]])
    with torch.no_grad():
        assert float(model(xp)[0]) <= 0.0  # the counterexample: the deployed model unflags there
    r = float(asymcert.certify(model, x, norms=(math.inf,), precision=precision).radii[math.inf][0])
    assert r <= float(x.double() - xp.double())


def test_the_model_reference_counts_its_own_underflow():
    """precision="model", guard=False: the float32 score of 1e-38·2.2e-7 rounds up from 2.2e-45 to 2.8e-45;
    without an underflow term the radius was 2.80e-7, 1.27× the exact distance 2.2e-7 to s ≤ 0 (F2b)."""
    model = _linear_score(1e-38)
    x = torch.tensor([[2.2e-7]])
    cert = asymcert.certify(model, x, norms=(math.inf,), precision="model", guard=False)
    exact = Fraction(float(x))  # s(x') = U·x' ≤ 0 exactly where x' ≤ 0
    assert Fraction(float(cert.radii[math.inf][0])) <= exact


@pytest.mark.parametrize("guard", [False, True])
def test_the_float64_reference_counts_float64_underflow(guard):
    """A float64 model s = 1e-300·x at x = 4e-24: the exact score 4e-324 rounds up to 4.9e-324, and the float64
    reference certified 4.94e-24, 1.235× the exact distance 4e-24 (F2c)."""
    model = _linear_score(1e-300, torch.float64)
    x = torch.tensor([[4e-24]], dtype=torch.float64)
    cert = asymcert.certify(model, x, norms=(math.inf,), precision="float64", guard=guard)
    assert Fraction(float(cert.radii[math.inf][0])) <= Fraction(float(x))


def test_the_underflow_term_is_negligible_for_normal_models():
    """The underflow term is ~1e-38 (float32) / ~1e-307 (float64) times an operation count: it leaves the
    guard of a normal model unchanged in float64."""
    model = small_feature_convex("conv", seed=0)
    x = torch.rand(8, 1, 6, 6)
    f = model.features(x)
    assert 0.0 < underflow_bound(model, f, torch.float32) < 1e-30
    assert 0.0 < underflow_bound(model, f, torch.float64) < 1e-290
    s, g = score_and_feature_gradient(model, x)
    guard = float_guard(model, f, g, s)
    assert bool((guard - underflow_bound(model, f, torch.float32) == guard).all())
