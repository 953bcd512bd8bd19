import itertools
import math
from fractions import Fraction

import pytest
import torch
from hypothesis import assume, given, settings
from hypothesis import strategies as st

from asymcert.errors import ConfigError, UnknownNameError
from asymcert.nn.feature_maps import (
    Standardize,
    _quantiles,
    build_feature_map,
    feature_map_problems,
    round_down,
    round_up,
)
from tests.conftest import examples

NORMS = [1.0, 1.5, 2.0, 3.0, math.inf]
CONFIGS = [
    [{"kind": "identity"}],
    [{"kind": "shift"}],
    [{"kind": "concat-abs"}],
    [{"kind": "shift"}, {"kind": "concat-abs"}],
    [{"kind": "standardize"}],
]


def _norm(v, p):
    return torch.linalg.vector_norm(v.flatten(1), ord=p, dim=1)


@pytest.mark.parametrize("config", CONFIGS)
@pytest.mark.parametrize("p", NORMS)
def test_declared_lipschitz_bounds_empirical_ratio(config, p):
    torch.manual_seed(0)
    phi = build_feature_map(config, (2, 5)).double()
    phi.fit(torch.randn(50, 2, 5).double() * 3 + 1)
    x, y = torch.randn(400, 2, 5).double(), torch.randn(400, 2, 5).double()
    y[::2] = -x[::2]  # sign flips: where |x| - |y| is tightest for concat-abs
    ratio = _norm(phi(x) - phi(y), p) / _norm(x - y, p)
    assert float(ratio.max()) <= phi.lipschitz(p) * (1 + 1e-12)
    # the constant is tight (within a few percent) on these pairs or their worst direction
    assert float(ratio.max()) >= 0.5 * phi.lipschitz(p)


def test_concat_abs_constants():
    phi = build_feature_map([{"kind": "concat-abs"}], (3, 4, 4))
    assert phi.lipschitz(1) >= 2.0 and phi.lipschitz(2) >= math.sqrt(2) and phi.lipschitz(math.inf) == 1.0
    assert phi.out_shape((3, 4, 4)) == (6, 4, 4)
    assert not phi.affine()


def test_standardize_lipschitz_is_largest_inverse_scale():
    phi = build_feature_map([{"kind": "standardize"}], (3,))
    phi.fit(torch.tensor([[0.0, 0.0, 0.0], [2.0, 20.0, 0.2]]))
    std = torch.tensor([2.0, 20.0, 0.2]).div(math.sqrt(2))
    assert phi.lipschitz(2) == pytest.approx(float(1 / std.min()), rel=1e-6)
    assert phi.lipschitz(2) >= float(1 / std.double().min())


def test_unknown_feature_map_names_the_known_ones():
    with pytest.raises(UnknownNameError, match="shift"):
        build_feature_map([{"kind": "nope"}], (3,))


@settings(max_examples=30, deadline=None)
@given(st.floats(1.0, 50.0), st.integers(1, 4))
def test_compose_lipschitz_is_product(p, n):
    phi = build_feature_map([{"kind": "concat-abs"}] * n, (1, 2))
    single = build_feature_map([{"kind": "concat-abs"}], (1, 2)).lipschitz(p)
    assert phi.lipschitz(p) >= single**n * (1 - 1e-12)
    assert phi.lipschitz(p) <= single**n * (1 + 1e-9)


@pytest.mark.parametrize("config", CONFIGS)
def test_every_built_in_map_is_accepted_and_checks_its_statistics(config):
    from asymcert.nn.feature_maps import feature_map_problems

    phi = build_feature_map(config, (2, 5))
    phi.fit(torch.randn(20, 2, 5))
    assert feature_map_problems(phi) == []
    phi.validate()
    stats = [m for m in phi.maps if "mean" in dict(m.named_buffers())]
    for m in stats:
        with torch.no_grad():
            m.mean[0, 1] = math.nan
    problems = feature_map_problems(phi)
    assert len(problems) == len(stats) and all("mean: contains NaN or Inf" in p for p in problems)


@settings(derandomize=True, max_examples=examples(50), deadline=None)
@given(
    a=st.lists(st.floats(-5, 1e4, allow_nan=False), min_size=6, max_size=6),
    b=st.lists(st.floats(-5, 1e4, allow_nan=False), min_size=6, max_size=6),
)
def test_log1p_is_1_lipschitz_in_every_norm_and_nondecreasing(a, b):
    """Measured against the declared constant, in float64, with negative inputs (moves below 0) too."""
    phi = build_feature_map([{"kind": "log1p"}], (6,)).double()
    xa, xb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    for p in (1.0, 2.0, math.inf):
        assert phi.lipschitz(p) == 1.0
        moved = float(torch.linalg.vector_norm(phi(xa) - phi(xb), ord=p))
        assert moved <= float(torch.linalg.vector_norm(xa - xb, ord=p)) * (1 + 1e-12)
    high = torch.maximum(xa, xb)
    assert bool((phi(high) >= phi(xa)).all() and (phi(high) >= phi(xb)).all())  # monotone


def test_log1p_round_trips_and_is_not_affine():
    phi = build_feature_map([{"kind": "log1p"}, {"kind": "standardize"}], (3,))
    assert phi.config()[0] == {"kind": "log1p"} and not phi.affine()
    assert build_feature_map(phi.config(), (3,)).config() == phi.config()
    assert torch.equal(phi.maps[0](torch.tensor([[-2.0, 0.0, math.e - 1]])), torch.tensor([[0.0, 0.0, 1.0]]))


# ---------------------------------------------------------------------------------------------
# hinges: per-feature piecewise-linear splines
# ---------------------------------------------------------------------------------------------


def test_hinges_knots_sit_at_quantiles_of_the_values_above_each_minimum():
    phi = build_feature_map([{"kind": "hinges", "knots": 3}], (3,)).double()
    sparse = torch.cat([torch.zeros(60), torch.arange(1.0, 41.0)])  # 60 % zeros, then 1 … 40
    x = torch.stack([sparse, torch.arange(100.0), torch.full((100,), 7.0)], dim=1).double()
    phi.fit(x)
    knots = phi.maps[0].knot_values
    assert knots.shape == (3, 3)
    levels = torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64)
    assert torch.allclose(knots[:, 0], torch.quantile(torch.arange(1.0, 41.0).double(), levels))
    assert bool((knots[:, 0] > 0).all())  # knots among the nonzero frequencies, not at 0
    assert torch.allclose(knots[:, 1], torch.quantile(torch.arange(1.0, 100.0).double(), levels))
    assert knots[:, 2].tolist() == [7.0, 7.0, 7.0]  # a constant feature: no bend inside its values
    out = phi(torch.tensor([[0.0, 50.0, 8.0]], dtype=torch.float64))
    assert phi.out_shape((3,)) == (12,) and out.shape == (1, 12)
    assert out[0, :3].tolist() == [0.0, 50.0, 8.0]  # the identity copy first
    assert out[0, 3:].reshape(3, 3)[:, 1].tolist() == [50.0 - float(k) if k < 50.0 else 0.0 for k in knots[:, 1]]
    assert out[0, 3:].reshape(3, 3)[:, 2].tolist() == [1.0, 1.0, 1.0]


@settings(derandomize=True, max_examples=examples(60), deadline=None)
@given(
    a=st.lists(st.floats(-10, 10, allow_nan=False), min_size=4, max_size=4),
    b=st.lists(st.floats(-10, 10, allow_nan=False), min_size=4, max_size=4),
    knots=st.integers(1, 6),
)
def test_hinges_lipschitz_bounds_every_pair_and_is_attained(a, b, knots):
    phi = build_feature_map([{"kind": "hinges", "knots": knots}], (4,)).double()
    phi.fit(torch.randn(40, 4, generator=torch.Generator().manual_seed(knots), dtype=torch.float64))
    xa, xb = torch.tensor([a], dtype=torch.float64), torch.tensor([b], dtype=torch.float64)
    top = float(phi.maps[0].knot_values.max())
    for p in NORMS:
        moved = float(torch.linalg.vector_norm(phi(xa) - phi(xb), ord=p))
        # float64 rounding of x − t (|t| < 10, |x| ≤ 10) may add up to (K + 1)·4e-15 absolute
        allowed = phi.lipschitz(p) * float(torch.linalg.vector_norm(xa - xb, ord=p)) * (1 + 1e-12)
        assert moved <= allowed + (knots + 1) * 1e-14
        # one coordinate moving above every knot moves all K + 1 copies by the same step
        high = torch.full((1, 4), top + 1.0, dtype=torch.float64)
        step = high.clone()
        step[0, 2] += 0.5
        ratio = float(torch.linalg.vector_norm(phi(step) - phi(high), ord=p)) / 0.5
        assert ratio == pytest.approx(1.0 if math.isinf(p) else (knots + 1) ** (1 / p), rel=1e-12)
        assert ratio <= phi.lipschitz(p) * (1 + 1e-12)


def test_hinges_on_images_round_trip_and_bad_settings_are_refused():
    phi = build_feature_map([{"kind": "shift"}, {"kind": "hinges", "knots": 2}], (2, 3, 3))
    phi.fit(torch.rand(30, 2, 3, 3))
    assert phi(torch.rand(5, 2, 3, 3)).shape == (5, 6, 3, 3) and phi.out_shape((2, 3, 3)) == (6, 3, 3)
    again = build_feature_map(phi.config(), (2, 3, 3))
    assert again.config() == phi.config() == [{"kind": "shift"}, {"kind": "hinges", "knots": 2}]
    assert not phi.affine()
    for bad in (0, -1, 2.5, True, "3"):
        with pytest.raises(ConfigError, match="knots"):
            build_feature_map([{"kind": "hinges", "knots": bad}], (3,))
    with torch.no_grad():
        phi.maps[1].knot_values[1, 0, 2, 2] = math.inf
    problems = feature_map_problems(phi)
    assert len(problems) == 1 and "feature_map.maps.1: knot_values: contains NaN or Inf" in problems[0]


def test_hinges_with_knots_out_of_order_are_refused_by_name():
    phi = build_feature_map([{"kind": "hinges", "knots": 3}], (4,))
    phi.fit(torch.randn(50, 4, generator=torch.Generator().manual_seed(0)))
    assert feature_map_problems(phi) == []
    with torch.no_grad():
        phi.maps[0].knot_values[:, 2] = torch.tensor([0.5, -0.5, 1.0])  # the prefix-sum bound needs t_1 ≤ t_2
    problems = feature_map_problems(phi)
    assert len(problems) == 1 and "knot_values: not nondecreasing along the knot axis" in problems[0]


@pytest.mark.parametrize(
    "spec, attribute, value, message",
    [
        ({"kind": "hinges", "knots": 2}, "knots", 1, "knots = 1 is not the 2 rows of knot_values"),
        ({"kind": "hinges", "knots": 2}, "knots", 3, "knots = 3 is not the 2 rows of knot_values"),
        ({"kind": "pair-min"}, "shifts", 0, "shifts = 0, but 5 inputs make 2"),
        ({"kind": "pair-min"}, "shifts", 3, "shifts = 3, but 5 inputs make 2"),
        ({"kind": "group-min", "order": 3}, "order", 1, "order = 1 must be an integer from 2 to the 5 inputs"),
        ({"kind": "group-min", "order": 3}, "order", 2, "order = 2 is not that of the member table"),
    ],
)
def test_a_count_set_apart_from_its_buffers_is_refused_by_name(spec, attribute, value, message):
    """The Lipschitz constants and weight bounds count knots, shifts and set sizes from these attributes while
    forward reads the buffers: an attribute edited alone passed validate() and certified radii above the true
    distance (hinges: ℓ1 0.150 against 0.1) or crashed (session 32's adversarial review)."""
    phi = build_feature_map([spec], (5,))
    phi.fit(torch.randn(50, 5, generator=torch.Generator().manual_seed(0)))
    assert feature_map_problems(phi) == []
    setattr(phi.maps[0], attribute, value)
    problems = feature_map_problems(phi)
    assert len(problems) == 1 and message in problems[0], problems


@settings(derandomize=True, max_examples=examples(200), deadline=None)
@given(
    a=st.floats(-1e200, 1e200, allow_nan=False, allow_infinity=False),
    b=st.floats(-1e100, 1e100, allow_nan=False, allow_infinity=False),
)
def test_outward_rounding_brackets_the_exact_sum_product_and_quotient(a, b):
    """round_down(fl(a ∘ b)) ≤ a ∘ b ≤ round_up(fl(a ∘ b)) exactly (Fractions), and an exact 0 stays 0."""
    ta, tb = torch.tensor(a, dtype=torch.float64), torch.tensor(b, dtype=torch.float64)
    results = [(ta + tb, Fraction(a) + Fraction(b)), (ta * tb, Fraction(a) * Fraction(b))]
    if b != 0:
        results.append((ta / tb, Fraction(a) / Fraction(b)))
    for computed, exact in results:
        assume(not (float(computed) == 0 and exact != 0))  # underflow to 0 (|exact| < 2⁻¹⁰⁷⁵): documented
        # nextafter without a gradient; plain differentiable ops (as traced for ONNX) with one
        for v in (computed, computed.clone().requires_grad_(True)):
            low, high = float(round_down(v).detach()), float(round_up(v).detach())
            assert low == -math.inf or Fraction(low) <= exact
            assert high == math.inf or exact <= Fraction(high)
            assert not (math.isinf(low) and math.isinf(high))  # an overflow keeps one finite side
            if exact == 0:
                assert low == 0.0 == high


@settings(derandomize=True, max_examples=examples(60), deadline=None)
@given(values=st.lists(st.floats(-1e6, 1e6), min_size=1, max_size=300), knots=st.integers(1, 9))
def test_hinge_quantiles_equal_torch_quantile_to_the_bit(values, knots):
    """The knots' own quantiles (torch.quantile refuses more than 2²⁴ values) are torch.quantile's."""
    ordered = torch.tensor(sorted(values), dtype=torch.float64)
    levels = torch.arange(1, knots + 1, dtype=torch.float64) / (knots + 1)
    assert torch.equal(_quantiles(ordered, levels), torch.quantile(ordered, levels))


# ---------------------------------------------------------------------------------------------
# pair-min: every pair of coordinates as an AND feature
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("n", [2, 5, 6])
def test_pair_min_holds_every_pair_once_per_shift_and_the_input(n):
    phi = build_feature_map([{"kind": "pair-min"}], (n,)).double()
    data = torch.randn(40, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    phi.fit(data)
    x = torch.randn(7, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    out = phi(x)
    assert out.shape == (7, (1 + n // 2) * n) == (7, *phi.out_shape((n,)))
    h = (x - data.amin(dim=0)).clamp_min(0)
    assert torch.equal(out[:, :n], x)
    seen = set()
    for k in range(1, n // 2 + 1):
        for i in range(n):
            j = (i + k) % n
            assert float(out[0, k * n + i]) == float(torch.minimum(h[0, i], h[0, j]))
            seen.add(frozenset((i, j)))
    assert len(seen) == n * (n - 1) // 2  # every unordered pair


def _set_map(kind, n):
    """(φ, ℓ1 size of its move when the smallest of n coordinates, all above the floor, moves by 1): pair-min
    moves it and each of its pairs (the pair of shift n/2 twice when n is even), group-min every set holding it."""
    if kind == "pair-min":
        return build_feature_map([{"kind": "pair-min"}], (n,)).double(), 1.0 + (n - 1) + (1 if n % 2 == 0 else 0)
    order = int(kind[-1])
    containing = sum(math.comb(n - 1, k - 1) for k in range(2, order + 1))
    return build_feature_map([{"kind": "group-min", "order": order}], (n,)).double(), 1.0 + containing


@settings(derandomize=True, max_examples=examples(90), deadline=None)
@given(
    n=st.integers(2, 7),
    kind=st.sampled_from(["pair-min", "group-min 2", "group-min 3"]),
    seed=st.integers(0, 2**16),
    p=st.sampled_from(NORMS),
)
def test_pair_and_group_min_lipschitz_bounds_every_pair_of_inputs_and_is_attained_for_l1(n, kind, seed, p):
    assume(kind != "group-min 3" or n >= 3)
    phi, moved_l1 = _set_map(kind, n)
    gen = torch.Generator().manual_seed(seed)
    phi.fit(torch.randn(30, n, generator=gen, dtype=torch.float64))
    x, y = torch.randn(200, n, generator=gen, dtype=torch.float64) * 3, torch.randn(200, n, generator=gen).double() * 3
    ratio = _norm(phi(x) - phi(y), p) / _norm(x - y, p)
    assert float(ratio.max()) <= phi.lipschitz(p) * (1 + 1e-12)
    # a move of the smallest coordinate, above every floor, moves it and everything that holds it alike
    high = torch.full((1, n), 100.0, dtype=torch.float64)
    high[0, 0] = 50.0
    moved = high.clone()
    moved[0, 0] -= 1.0
    if p == 1.0:
        assert float(_norm(phi(high) - phi(moved), 1)) == moved_l1
        assert phi.lipschitz(1.0) == pytest.approx(moved_l1, rel=1e-15)


def test_pair_min_refuses_what_is_not_a_vector_and_round_trips():
    for shape in [(1,), (2, 3), ()]:
        with pytest.raises(ConfigError, match="pair-min"):
            build_feature_map([{"kind": "pair-min"}], shape)
    assert build_feature_map([{"kind": "pair-min"}], (512,)).out_shape((512,)) == (257 * 512,)
    with pytest.raises(ConfigError, match=r"pair-min: 1653 inputs would make 1367031 features each; at most 512"):
        build_feature_map([{"kind": "pair-min"}, {"kind": "pair-min"}], (57,))  # pairs of pairs
    config = [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "pair-min"}, {"kind": "hinges", "knots": 2}]
    phi = build_feature_map(config, (5,))
    phi.fit(torch.rand(30, 5) * 4)
    assert build_feature_map(phi.config(), (5,)).config() == phi.config() and phi.out_shape((5,)) == (3 * 3 * 5,)
    assert [step["kind"] for step in phi.config()] == [step["kind"] for step in config]
    assert feature_map_problems(phi) == []
    with torch.no_grad():
        phi.maps[2].floor[1] = math.inf
    assert any("floor: contains NaN or Inf" in p for p in feature_map_problems(phi))


# ---------------------------------------------------------------------------------------------
# group-min: every set of 2 … order coordinates as an AND feature
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(("n", "order"), [(2, 2), (5, 2), (5, 3), (6, 4)])
def test_group_min_holds_every_set_once_and_pads_with_zeros(n, order):
    phi = build_feature_map([{"kind": "group-min", "order": order}], (n,)).double()
    data = torch.randn(40, n, generator=torch.Generator().manual_seed(n), dtype=torch.float64)
    phi.fit(data)
    x = torch.randn(7, n, generator=torch.Generator().manual_seed(1), dtype=torch.float64) * 2
    out = phi(x)
    sets = [s for k in range(2, order + 1) for s in itertools.combinations(range(n), k)]
    width = n * (1 + -(-len(sets) // n))  # padded to whole copies of n
    assert out.shape == (7, width) == (7, *phi.out_shape((n,)))
    h = (x - data.amin(dim=0)).clamp_min(0)
    assert torch.equal(out[:, :n], x)
    expected = torch.stack([h[:, list(s)].amin(dim=1) for s in sets], dim=1)
    assert torch.equal(out[:, n : n + len(sets)], expected)
    assert bool((out[:, n + len(sets) :] == 0).all())


def test_group_min_refuses_bad_settings_and_round_trips():
    for shape in [(1,), (2, 3), ()]:
        with pytest.raises(ConfigError, match="group-min"):
            build_feature_map([{"kind": "group-min"}], shape)
    for order in [1, 6, 2.5, True]:
        with pytest.raises(ConfigError, match=rf"group-min: order = {order!r} must be an integer from 2 to the 5"):
            build_feature_map([{"kind": "group-min", "order": order}], (5,))
    with pytest.raises(ConfigError, match=r"group-min: 120 inputs at order 3 would make 288120 features each"):
        build_feature_map([{"kind": "group-min", "order": 3}], (120,))
    config = [
        {"kind": "log1p"},
        {"kind": "standardize"},
        {"kind": "group-min", "order": 3},
        {"kind": "hinges", "knots": 2},
    ]
    phi = build_feature_map(config, (5,))
    phi.fit(torch.rand(30, 5) * 4)
    assert build_feature_map(phi.config(), (5,)).config() == phi.config() and phi.out_shape((5,)) == (3 * 5 * 5,)
    assert feature_map_problems(phi) == []
    assert "maps.2.members" not in phi.state_dict()  # derived from n and the order, not saved
    with torch.no_grad():
        phi.maps[2].floor[1] = math.nan
    assert any("floor: contains NaN or Inf" in p for p in feature_map_problems(phi))


def test_standardize_leaves_a_constant_feature_unscaled():
    """A column constant on the data fitted gets σ = 1, not min_scale: its 1/σ would be φ's Lipschitz constant."""
    x = torch.randn(100, 3) * torch.tensor([2.0, 1.0, 0.5])
    x[:, 1] = 7.0
    phi = Standardize((3,)).fit(x)
    assert phi.scale[1] == 1.0 and torch.allclose(phi.scale[[0, 2]], x[:, [0, 2]].std(dim=0))
    assert phi.lipschitz(2.0) == pytest.approx(1 / float(x[:, 2].std()), rel=1e-6)


def test_group_min_of_many_inputs_at_a_high_order_is_refused_at_once(monkeypatch):
    """C(20000, k) summed to k = 10000 took 36 s before the limit was checked and ended in Python's 4300-digit
    error (review 27a F4): the count stops at the first set size that passes the limit."""
    sizes = []
    comb = math.comb
    monkeypatch.setattr(math, "comb", lambda n, k: sizes.append(k) or comb(n, k))
    with pytest.raises(ConfigError, match=r"group-min: 20000 inputs at order 10000 would make at least \d+ features"):
        build_feature_map([{"kind": "group-min", "order": 10000}], (20000,))
    assert sizes == [2]
    monkeypatch.undo()
    for n, order in [(6, 6), (9, 4), (57, 3)]:
        sets = sum(1 for k in range(2, order + 1) for _ in itertools.combinations(range(n), k))
        assert build_feature_map([{"kind": "group-min", "order": order}], (n,)).out_shape((n,)) == (
            n * (1 + -(-sets // n)),
        )
