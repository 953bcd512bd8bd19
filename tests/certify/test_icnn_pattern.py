"""The bfloat16 pattern products of the fast ICNN reference (asymcert.certify.icnn_pattern): the bound holds
against float64 on every unit (and needs each of its parts), signs outside it are the exact signs, the
compiled kernel and the PyTorch path agree, crowded, overflowing and non-finite rows are all candidates, and
the accumulation check rejects a product that rounds its partial sums to bfloat16."""

from __future__ import annotations

import math
from fractions import Fraction

import pytest
import torch

import asymcert
from asymcert.certify import bounded_icnn, icnn_pattern
from asymcert.certify.bounded_icnn import features_with_error, icnn_bounded_pass, icnn_constants
from asymcert.certify.icnn_pattern import C8, CANDIDATE_CAP, U32, bf16_candidates, bf16_product, product_within_bound
from asymcert.certify.modes import gamma
from asymcert.certify.scope import forget_kept
from asymcert.models import build_model
from tests.certify.test_bounded_icnn import icnn_model

pytestmark = pytest.mark.skipif(not icnn_pattern.fast_bfloat16(), reason="no bfloat16 matrix hardware here")


@pytest.fixture(params=["kernel", "pytorch"])
def classify_path(request, monkeypatch):
    """Run a test with the compiled kernel and with PyTorch's operations in its place."""
    if request.param == "pytorch":
        monkeypatch.setitem(icnn_pattern._KERNEL.state, "lib", None)
        monkeypatch.setitem(icnn_pattern._KERNEL.state, "tried", True)
    elif icnn_pattern._KERNEL.get() is None:
        pytest.skip(f"no compiled kernel: {icnn_pattern._KERNEL.error}")
    return request.param


def exact_preactivations(model, x):
    """t = U₀f + c₀ in float64 (N, W) and a bound on its own error (d·2⁻⁵³ relative to |U₀||f| + |c₀|)."""
    f, e = features_with_error(model.feature_map, x)
    f = f.reshape(len(x), -1)
    first = model.convex.passthrough[0]
    u, c = first.weight.detach().double(), first.bias.detach().double()
    t = f @ u.t() + c
    err = (
        gamma(f.shape[1] + 1, 2.0**-53) * (f.abs() @ u.abs().t() + c.abs()) + e.reshape(len(x), -1).abs() @ u.abs().t()
    )
    return t, err


def parts(model, x):
    """The bfloat16 products' sum ŝ (N, W) float64 and the bound's parts: the rank-one and constant part, the
    output-rounding part c₈(|t̂₁| + |t̂₂|)."""
    consts = icnn_constants(model)
    prod = consts.bf16
    f, e = features_with_error(model.feature_map, x)
    f, e = f.reshape(len(x), -1), e.reshape(len(x), -1)
    first, second, rows, risky = icnn_pattern._row_terms(prod, f, e)
    t1, t2 = (first @ prod.first.t()).double(), (second @ prod.second.t()).double()
    base = prod.beta.double() + rows.double() @ prod.cols.double()
    return t1 + t2, base, C8 * (t1.abs() + t2.abs()), risky


MODELS = [
    dict(seed=0, fmap="shift"),
    dict(seed=1, fmap="standardize", widths=(64,)),
    dict(seed=2, fmap="shift+concat-abs", input_shape=(1, 6, 7)),
    dict(seed=3, fmap="identity", scale=1e-20),
    dict(seed=4, fmap="shift", scale=1e15),
]


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: f"{s['fmap']}-{s['seed']}")
def test_the_bound_contains_the_exact_preactivation_and_needs_its_rounding_part(spec):
    model = icnn_model(**spec)
    x = torch.rand(300, *model.input_shape)
    assert icnn_constants(model).bf16 is not None
    t, err = exact_preactivations(model, x)
    s, base, rounding, risky = parts(model, x)
    assert not bool(risky.any())
    gap = (t - s).abs()
    assert bool((gap <= base + rounding + err).all())
    assert bool((gap > base + err).any())  # without the bfloat16 rounding of the outputs it would fail


@pytest.mark.parametrize("spec", MODELS, ids=lambda s: f"{s['fmap']}-{s['seed']}")
def test_signs_outside_the_bound_are_exact_and_the_pattern_matches_the_float32_pass(spec, classify_path, monkeypatch):
    model = icnn_model(**spec)
    x = torch.cat([torch.rand(200, *model.input_shape), torch.zeros(1, *model.input_shape)])
    t, err = exact_preactivations(model, x)
    consts = icnn_constants(model)
    f, e = features_with_error(model.feature_map, x)
    f, e = f.reshape(len(x), -1), e.reshape(len(x), -1)
    pattern, rows, cols = bf16_candidates(consts.bf16, f, e)
    known = torch.ones_like(pattern)
    known[rows, cols] = False
    decided = known & (t.abs() > err)
    assert bool((pattern[decided] == (t[decided] > 0)).all())
    order = rows * pattern.shape[1] + cols
    assert bool((order[1:] > order[:-1]).all())  # sorted by row, then column, as _repair needs
    p_bf16, unsure_bf16 = bounded_icnn._pattern(consts, f, e)
    monkeypatch.setattr(consts, "bf16", None)
    p_f32, unsure_f32 = bounded_icnn._pattern(consts, f, e)
    sure = ~(unsure_bf16 | unsure_f32)
    assert bool(torch.equal(p_bf16[sure], p_f32[sure]))


def test_crowded_overflowing_and_non_finite_rows_are_all_candidates(classify_path):
    model = icnn_model(5, fmap="identity", widths=(CANDIDATE_CAP + 36,))
    x = torch.rand(8, *model.input_shape)
    with torch.no_grad():  # every unit of row 0 on its kink: t = 0 exactly
        first = model.convex.passthrough[0]
        first.weight.copy_(torch.randint(-3, 4, first.weight.shape).float())
        x[0] = torch.randint(0, 3, x[0].shape).float()
        first.bias.copy_(-(first.weight @ x[0].flatten()))
    x[1, 0, 0, 0] = 1e37  # its sums could overflow float32 (the bound refuses anything from 2¹²⁰ on)
    x[2, 0, 0, 1] = math.nan
    consts = icnn_constants(model)
    f, e = features_with_error(model.feature_map, x)
    f, e = f.reshape(len(x), -1), e.reshape(len(x), -1)
    _, rows, cols = bf16_candidates(consts.bf16, f, e)
    width = consts.u0.shape[0]
    for row in (0, 1, 2):
        assert bool(torch.equal(cols[rows == row], torch.arange(width)))
    assert int((rows >= 3).sum()) < (len(x) - 3) * width // 4


def test_the_kernel_and_pytorch_list_the_same_candidates(monkeypatch):
    if icnn_pattern._KERNEL.get() is None:
        pytest.skip("no compiled kernel")
    model = icnn_model(6, fmap="standardize", widths=(200,))
    x = torch.rand(700, *model.input_shape)
    x[5] = 1e30
    consts = icnn_constants(model)
    f, e = features_with_error(model.feature_map, x)
    f, e = f.reshape(len(x), -1), e.reshape(len(x), -1)
    with_kernel = bf16_candidates(consts.bf16, f, e)
    monkeypatch.setitem(icnn_pattern._KERNEL.state, "lib", None)
    without = bf16_candidates(consts.bf16, f, e)
    for a, b in zip(with_kernel, without, strict=True):
        assert bool(torch.equal(a, b))


def rounded_partial_sums(block: int):
    """A product that rounds its running sum to bfloat16 every ``block`` terms (what the check must reject)."""

    def product(a, b):
        acc = torch.zeros(a.shape[0], b.shape[0])
        for lo in range(0, a.shape[1], block):
            acc = (acc + a[:, lo : lo + block].float() @ b[:, lo : lo + block].float().t()).bfloat16().float()
        return acc.bfloat16()

    return product


@pytest.mark.parametrize("k", [17, 785, 1569])
def test_the_accumulation_check_passes_float32_sums_and_rejects_bfloat16_partial_sums(k):
    assert icnn_pattern.accumulates_in_float32(k)
    assert product_within_bound(k, lambda a, b: (a.double() @ b.double().t()).float().bfloat16())
    assert product_within_bound(k, lambda a, b: (a.float() @ b.float().t()).bfloat16())
    assert not product_within_bound(k, rounded_partial_sums(16))
    assert not product_within_bound(k, lambda a, b: (a.double() @ b.double().t() * (1 + 2.0**-7)).bfloat16())


def test_the_float32_pass_is_used_where_bfloat16_is_not_checked_or_not_wanted(monkeypatch):
    model = icnn_model(0)
    u0, c0 = icnn_constants(model).u0, icnn_constants(model).c0
    assert bf16_product(u0, c0) is not None
    monkeypatch.setattr(icnn_pattern, "PATTERN_PRODUCTS", "float32")
    assert bf16_product(u0, c0) is None
    monkeypatch.setattr(icnn_pattern, "PATTERN_PRODUCTS", "auto")
    monkeypatch.setattr(icnn_pattern, "accumulates_in_float32", lambda k: False)
    assert bf16_product(u0, c0) is None
    monkeypatch.setattr(icnn_pattern, "accumulates_in_float32", lambda k: True)
    monkeypatch.setattr(icnn_pattern, "fast_bfloat16", lambda: False)
    assert bf16_product(u0, c0) is None
    huge = u0.clone()
    huge[0, 0] = torch.finfo(torch.float32).max  # bf16 rounds it up to inf
    monkeypatch.setattr(icnn_pattern, "fast_bfloat16", lambda: True)
    assert bf16_product(huge, c0) is None


@pytest.mark.parametrize("fmap", ["shift", "shift+concat-abs"])
def test_certificates_are_bitwise_those_of_the_float32_pass(fmap, monkeypatch):
    model = icnn_model(7, fmap=fmap, widths=(48,))
    x = torch.rand(400, *model.input_shape)
    norms = (1.0, 2.0, math.inf)
    assert icnn_constants(model).bf16 is not None
    fast = asymcert.certify(model, x, norms=norms)
    monkeypatch.setattr(icnn_pattern, "PATTERN_PRODUCTS", "float32")
    forget_kept()
    assert icnn_constants(model).bf16 is None
    slow = asymcert.certify(model, x, norms=norms)
    assert bool(torch.equal(fast.predicted, slow.predicted))
    assert all(bool(torch.equal(fast.radii[p], slow.radii[p])) for p in norms)
    assert bool(torch.equal(fast.extra["score"], slow.extra["score"]))
    assert U32 == 2.0**-24


@pytest.mark.parametrize("step", [16, 1024])
def test_zero_units_padding_the_products_are_never_read(step, classify_path, monkeypatch):
    """Products padded with zero units (a faster width) give the same pattern and candidates as unpadded ones."""
    monkeypatch.setattr(icnn_pattern, "WIDTH_STEP", step)
    model = icnn_model(8, fmap="standardize", widths=(60 if step == 16 else 900,))
    x = torch.rand(300, *model.input_shape)
    consts = icnn_constants(model)
    width = consts.u0.shape[0]
    assert consts.bf16.first.shape[0] == -(-width // step) * step > width
    f, e = features_with_error(model.feature_map, x)
    f, e = f.reshape(len(x), -1), e.reshape(len(x), -1)
    padded = bf16_candidates(consts.bf16, f, e)
    monkeypatch.setattr(icnn_pattern, "WIDTH_STEP", 1)
    plain = bf16_candidates(bf16_product(consts.u0, consts.c0), f, e)
    assert padded[0].shape == (len(x), width)
    for a, b in zip(padded, plain, strict=True):
        assert bool(torch.equal(a, b))


def test_features_too_small_to_square_in_float32_keep_their_bound():
    """Features near 2⁻⁷⁹: their float32 squares underflow, and norms taken in float32 were 0, which dropped every
    term of the bound; the unit's sign came out wrong with no word of doubt, and the score's interval missed the
    exact score (review 28a F1). Exact rational arithmetic decides here."""
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [2],
            "feature_map": [{"kind": "identity"}],
            "convex": {"kind": "icnn", "widths": [1], "batch_norm": False},
        }
    ).eval()
    a, b = 1.5030897855758667, 1.0020524263381958
    g = model.convex
    with torch.no_grad():
        g.passthrough[0].weight.copy_(torch.tensor([[a, b]]))
        g.passthrough[0].bias.zero_()
        g.hidden[0].weight.fill_(2.0**80)
        g.passthrough[1].weight.zero_()
        g.passthrough[1].bias.zero_()
    x = torch.tensor([[2.0**-79, -3 * 2.0**-80]])
    t = Fraction(a) * Fraction(2.0**-79) + Fraction(b) * Fraction(-3 * 2.0**-80)
    assert t > 0
    with torch.no_grad():
        model.set_balance(-float(Fraction(2.0**80) * t) * 0.9)
    exact = Fraction(2.0**80) * t + Fraction(float(model.balance))
    assert icnn_constants(model).bf16 is not None
    bp = icnn_bounded_pass(model, x)
    low, high = float(bp.score - bp.score_error), float(bp.score + bp.score_error)
    assert bool(bp.uncertain[0]) or Fraction(low) <= exact <= Fraction(high)
    assert bool(asymcert.certify(model, x).predicted[0] == 1)


def test_the_pattern_setting_is_seen_by_models_certified_before_it(monkeypatch):
    """Constants kept across calls were built under the setting of their day (review 28a F4)."""
    model = icnn_model(9)
    asymcert.certify(model, torch.rand(20, *model.input_shape))
    assert icnn_constants(model).bf16 is not None
    monkeypatch.setattr(icnn_pattern, "PATTERN_PRODUCTS", "float32")
    assert icnn_constants(model).bf16 is None
    monkeypatch.setattr(icnn_pattern, "PATTERN_PRODUCTS", "auto")
    assert icnn_constants(model).bf16 is not None
