"""Inputs in another float type than the model's: certified at their rounding, radii lowered by it."""

from __future__ import annotations

import copy
import math
from dataclasses import replace
from fractions import Fraction

import pytest
import torch

import asymcert
from asymcert.certify.api import nested_radii
from asymcert.certify.attacks import pgd_attack
from asymcert.certify.functional import lp_norm
from asymcert.certify.input_rounding import lowered_by_rounding, to_model_dtype
from asymcert.errors import ConfigError, InputError
from asymcert.models import build_model
from asymcert.threat import ThreatModel
from tests.conftest import near_boundary

SHAPE = [1, 4, 4]
CONFIGS = [
    {"kind": "feature-convex", "feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [8]}},
    {"kind": "feature-convex", "feature_map": [{"kind": "shift"}], "convex": {"kind": "convex-conv"}},
    {
        "kind": "one-vs-rest-convex",
        "num_classes": 3,
        "feature_map": [{"kind": "shift"}],
        "convex": {"kind": "icnn", "widths": [8]},
    },
    {"kind": "relu-ibp", "widths": [8]},
    {"kind": "linf-dist", "widths": [16, 16], "num_classes": 3},
    {"kind": "orthogonal", "arch": "mlp", "widths": [16, 16]},
]
NORMS = (1.0, 2.0, math.inf)


def _half_spacing32(z: torch.Tensor) -> torch.Tensor:
    """Half the float32 spacing at each magnitude z (normal numbers): 2^(⌊log2 z⌋ − 24)."""
    return torch.ldexp(torch.full_like(z, 2.0**-24), (torch.frexp(z).exponent - 1).double())


def _read_lowered(r: torch.Tensor, v: torch.Tensor, p: float, scale=None, movable=None) -> torch.Tensor:
    """r − ‖(|e_i| + h_i) / scale_i‖_p over the movable features, h_i half the float32 spacing at |v_i| + r·scale_i:
    the radius r at fl32(v) as it holds for float64 moves from v, read rounded (module input_rounding)."""
    flat = v.flatten(1).double()
    scale = torch.ones(flat.shape[1], dtype=torch.float64) if scale is None else scale
    e = (flat - flat.float().double()).abs()
    terms = (e + _half_spacing32(flat.abs() + r[:, None] * scale)) / scale
    if movable is not None:
        terms = torch.where(movable[None, :], terms, 0.0)
    return (r - lp_norm(terms, p)).clamp_min(0.0)


def _inputs(n: int = 64) -> torch.Tensor:
    """float64 inputs (both classes of the untrained models here) that are almost never float32 numbers."""
    return 3 * torch.randn(n, *SHAPE, generator=torch.Generator().manual_seed(3), dtype=torch.float64)


@pytest.mark.parametrize("config", CONFIGS, ids=lambda c: f"{c['kind']}-{c.get('convex', {}).get('kind', '')}")
def test_float64_inputs_get_the_float32_inputs_radii_lowered_by_the_rounding(config):
    torch.manual_seed(0)
    model = build_model({**config, "input_shape": SHAPE}).eval()
    x64 = _inputs()
    x32 = x64.float()
    got = asymcert.certify(model, x64, norms=NORMS)  # used to be a RuntimeError (dtypes) for most families
    at32 = asymcert.certify(model, x32, norms=NORMS)
    assert torch.equal(got.predicted, at32.predicted)
    e = (x64 - x32.double()).abs()
    assert bool((e > 0).all()) and int((at32.radius(2.0) > 0).sum()) >= 30
    # r − ‖e + h‖ per norm (h: the read rounding of the point reached, review s32 F3), then nested as every
    # certificate is (an ℓ∞ radius around x64 covers its ℓ1 ball too)
    wants = nested_radii({p: _read_lowered(at32.radius(p), x64, p) for p in NORMS})
    for p in NORMS:
        want = wants[p]
        assert bool((got.radius(p) <= at32.radius(p)).all())
        assert bool((got.radius(p) <= want).all())  # never above r − ‖e + h‖ (nested)
        assert torch.allclose(got.radius(p), want, rtol=1e-9, atol=1e-15)  # and lowered by no more
        assert bool((got.radius(p)[at32.radius(p) > 4 * lp_norm(e, p)] > 0).all())


def test_float32_numbers_given_as_float64_lose_only_the_read_rounding():
    """Float32 numbers given in float64: e = 0, but an attacker's float64 edit of them is read rounded (review s32
    F3/F4), so the radius loses ‖h‖, half the float32 spacing at the values reachable; given as float32 (the
    attacker's numbers float32 too, as the ONNX graph's are) nothing."""
    model = build_model({**CONFIGS[0], "input_shape": SHAPE}).eval()
    x32 = _inputs().float()
    a, b = asymcert.certify(model, x32.double()), asymcert.certify(model, x32)
    wants = nested_radii({p: _read_lowered(b.radius(p), x32.double(), p) for p in NORMS})
    for p in NORMS:
        assert bool((a.radius(p) <= wants[p]).all()) and bool((a.radius(p) < b.radius(p))[b.radius(p) > 0].all())
        assert torch.allclose(a.radius(p), wants[p], rtol=1e-9, atol=1e-15)
    assert to_model_dtype(x32.double(), torch.float32)[1] is None
    assert to_model_dtype(x32.half(), torch.float32)[1] is None  # widening is exact


def test_under_a_threat_model_only_movable_features_count_in_its_units():
    model = build_model({**CONFIGS[0], "input_shape": [4]}).eval()
    tm = ThreatModel(immutable=[0], scale={1: 10.0}).resolve(None, 4)
    x32 = 3 * torch.randn(32, 4, generator=torch.Generator().manual_seed(5))
    base = asymcert.certify(model, x32, threat_model=tm)
    assert int((base.radius(1.0) > 0).sum()) >= 5
    ulp = torch.finfo(torch.float32).eps
    for feature, divisor in ((0, None), (1, 10.0), (2, 1.0)):
        x64 = x32.double()
        x64[:, feature] += 0.25 * ulp * x64[:, feature].abs()  # below half an ulp: the same float32 input
        got = asymcert.certify(model, x64, threat_model=tm)
        for p in NORMS:
            movable = torch.tensor([False, True, True, True])  # an immutable feature: no move changes it
            want = _read_lowered(base.radius(p), x64, p, tm.scale, movable)
            if divisor is not None:
                moved = (x64[:, feature] - x32[:, feature].double()).abs() / divisor
                assert bool((want <= (base.radius(p) - moved).clamp_min(0.0)).all())
            assert torch.allclose(got.radius(p), want, rtol=1e-9, atol=1e-18), (feature, p)
            assert bool((got.radius(p) <= want).all()) and bool((got.radius(p) < base.radius(p)).any())


def test_infinite_and_zero_radii_stay():
    model = build_model({**CONFIGS[0], "input_shape": [2]}).eval()
    cert = asymcert.certify(model, torch.zeros(3, 2))
    cert.radii[2.0] = torch.tensor([math.inf, 0.0, 1.0], dtype=torch.float64)
    rounding = torch.full((3, 2), 1e-3, dtype=torch.float64)
    out = lowered_by_rounding(cert, torch.zeros(3, 2, dtype=torch.float64), rounding, None, torch.float32)
    assert out.radius(2.0)[0] == math.inf and out.radius(2.0)[1] == 0.0
    lowered = 1.0 - math.sqrt(2) * (1e-3 + 2.0**-24)  # e and half the float32 spacing at |0| + r = 1
    assert lowered - math.sqrt(2) * 1e-3 * 2e-9 < float(out.radius(2.0)[2]) < lowered


def test_a_rounding_too_large_to_measure_under_a_tiny_scale_leaves_radius_0_never_nan():
    """A scale of 1e-320 raw units per unit makes ‖e / scale‖ overflow float64 (ℓ2's sum of squares first): the
    radii become 0, flagged or not, never NaN; an exactly representable input loses nothing."""
    model = build_model({**CONFIGS[0], "input_shape": [4]}).eval()
    with pytest.raises(ConfigError, match="must be a number from"):  # a threat model may not say so any more
        ThreatModel(scale={0: 1e-320}).resolve(None, 4)
    tm = ThreatModel(scale={0: 1.0}).resolve(None, 4)
    tm = replace(tm, scale=tm.scale.clone().index_fill_(0, torch.tensor([0]), 1e-320))  # (resolved by hand)
    x32 = 3 * torch.randn(32, 4, generator=torch.Generator().manual_seed(6))
    x64 = x32.double()
    x64[:, 0] += 1e-9 * x64[:, 0].abs()  # below half an ulp of float32: e / scale overflows float64
    got = asymcert.certify(model, x64, threat_model=tm)
    exact = asymcert.certify(model, x32, threat_model=tm)  # (as float64: a read rounding over 1e-320, 0 too)
    assert int((exact.radius(2.0) > 0).sum()) >= 5
    for p in NORMS:
        assert not bool(got.radius(p).isnan().any()) and bool((got.radius(p) == 0).all()), p
        assert bool((exact.radius(p) >= 0).all()) and not bool(exact.radius(p).isnan().any())


def test_values_beyond_the_models_float_range_are_refused():
    model = build_model({**CONFIGS[0], "input_shape": [2]}).eval()
    with pytest.raises(InputError, match=r"beyond the range of the model.s torch\.float32"):
        asymcert.certify(model, torch.tensor([[1.0, 1e39]], dtype=torch.float64))


@pytest.mark.parametrize("norm", [2.0, math.inf])
def test_pgd_inside_the_lowered_radius_of_float64_inputs_near_the_boundary_flips_none(norm):
    """Float64 inputs a quarter ulp closer to the boundary than their float32 rounding, bisected to scores
    of 1e-7 … 1e-2: PGD within 0.99 × the lowered radius, from the float64 values, flips neither the real-valued
    score (a float64 copy) nor the float32 model's decision."""
    torch.manual_seed(0)
    model = build_model({**CONFIGS[0], "input_shape": SHAPE}).eval()
    x32 = near_boundary(model, _inputs(200).float())
    xg = x32.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(model(xg).sum(), xg)
    x64 = x32.double() - 0.25 * torch.finfo(torch.float32).eps * x32.double().abs() * grad.double().sign()
    assert bool((x64.float() == x32).all())
    cert = asymcert.certify(model, x64, norms=(norm,))
    keep = cert.predicted.bool() & (cert.radius(norm) > 0) & torch.isfinite(cert.radius(norm))
    assert int(keep.sum()) >= 20
    m64 = copy.deepcopy(model).double()
    eps = 0.99 * cert.radius(norm)[keep]
    gen = torch.Generator().manual_seed(1)
    adv = pgd_attack(m64, x64[keep], eps, norm, steps=80, restarts=2, generator=gen)
    assert bool((adv - x64[keep]).flatten(1).norm(p=norm, dim=1).le(eps * (1 + 1e-9)).all())
    with torch.no_grad():
        assert bool((m64(adv) > 0).all()) and bool((model(adv.float()) > 0).all())


def _linear_model(weights: list[float], bias: float = 0.0) -> torch.nn.Module:
    """s(x) = weights·x + bias (identity φ; an ICNN whose hidden unit is dead, so g is linear: convex)."""
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [len(weights)],
            "feature_map": [{"kind": "identity"}],
            "convex": {"kind": "icnn", "widths": [1], "batch_norm": False},
        }
    ).eval()
    with torch.no_grad():
        for p in model.convex.parameters():
            p.zero_()
        model.convex.passthrough[1].weight.copy_(torch.tensor([weights]))
        model.convex.passthrough[1].bias.fill_(bias)
    return model


def _one_sided_linear_model() -> torch.nn.Module:
    """s(x) = b − x0 − 10·x1, b = float32(6.0001) (review s32 F3's minimal case)."""
    model = _linear_model([-1.0, -10.0])
    model.set_balance(6.0001)
    return model


def test_the_point_the_attacker_reaches_is_read_rounded_too():
    """Review s32 F3 (minimal, exact arithmetic): v = (1 + 3e-8, 0.5 + 1e-9) is read as x = (1, 0.5); raising the
    free x0 by just under the radius reached, read by the float32 model, a score of exactly 0 at r − ‖e‖
    (fl32(v + δ) − x exceeds ‖δ‖ + ‖e‖ by almost half an ulp). The radius now keeps the read score > 0."""
    model = _one_sided_linear_model()
    b = Fraction(float(model.balance))
    v = torch.tensor([[1.0 + 3e-8, 0.5 + 1e-9]], dtype=torch.float64)
    tm = ThreatModel(decrease_only=[1])
    old = 1.001058031151158e-4  # the radius before: r at x lowered by ‖e‖ only
    for p in NORMS:
        r = float(asymcert.certify(model, v, norms=(p,), threat_model=tm, guard=False).radius(p)[0])
        assert old * (1 - 1e-3) < r < old
        for size in (r * (1 - 1e-9), old * (1 - 1e-9)):
            read = torch.tensor([[float(v[0, 0]) + size, float(v[0, 1])]], dtype=torch.float64).float()[0].tolist()
            if size < r:
                assert b - Fraction(read[0]) - 10 * Fraction(read[1]) > 0, (p, size)
            else:  # the old radius: the move it allowed is read with a score of exactly 0
                assert b - Fraction(read[0]) - 10 * Fraction(read[1]) == 0


def test_a_float64_edit_of_a_float32_number_is_read_rounded():
    """Review s32 F4's read rounding: 1e6 (a float32 number) given as float64, s = x − 999999.9375; a float64 edit
    of 0.035 is read as a move of 0.0625 (a whole float32 spacing), so the ℓ∞ radius is half of it, not 0.0625."""
    model = _linear_model([1.0], -999999.9375)
    v = torch.tensor([[1e6]], dtype=torch.float64)
    r = float(asymcert.certify(model, v, norms=(math.inf,), guard=False).radius(math.inf)[0])
    assert r == pytest.approx(0.03125, rel=1e-6) and r <= 0.03125
    assert float(asymcert.certify(model, v.float(), norms=(math.inf,), guard=False).radius(math.inf)[0]) > 0.0624
    for edit in (0.035, r * (1 - 1e-12)):
        read = float(torch.tensor([1e6 - edit], dtype=torch.float64).float())
        assert (Fraction(read) - Fraction(999999.9375) > 0) == (edit < r)


def _fuzzer_case_5017() -> tuple[torch.nn.Module, torch.Tensor, ThreatModel]:
    """Review s32's fuzz2 seed 5017: an ICNN (8 units) on identity features, a float64 input, x1 decrease-only."""
    torch.manual_seed(5017)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [2],
            "feature_map": [{"kind": "identity"}],
            "convex": {"kind": "icnn", "widths": [8], "batch_norm": False},
        }
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand_like(p) if "hidden" in name else torch.randn_like(p))
    model.eval().set_balance(1.3332988023757935)
    v = torch.tensor([[1.58186680065828, -0.18262546605789975]], dtype=torch.float64)
    return model, v, ThreatModel(decrease_only=[1], upper={1: -0.18262546605789975})


def test_fuzzer_case_read_at_the_edge_of_the_radius_keeps_its_score():
    """fuzz2 seed 5017, guard=False, reach: the move found within the old radius (x0 up by 0.0065692724 < r =
    0.0065692730) is read by the float32 model where the float64 score is −3.3e-8. Inside the new radius every
    move along it is read with a positive score, and the old move lies outside it."""
    model, v, tm = _fuzzer_case_5017()
    m64 = copy.deepcopy(model).double()
    found = 0.006569272390915768
    for p in NORMS:
        r = float(
            asymcert.certify(
                model, v, norms=(p,), threat_model=tm, guard=False, reach=True, precision="float64"
            ).radius(p)[0]
        )
        assert 0.006569 < r <= found
        for size in (r * (1 - 1e-9), r * (1 - 1e-6), found):
            read = (v + torch.tensor([[size, 0.0]], dtype=torch.float64)).float().double()
            with torch.no_grad():
                score = float(m64(read)[0])
            assert (score > 0) or size >= r, (p, size, score)
        with torch.no_grad():
            assert float(m64((v + torch.tensor([[found, 0.0]], dtype=torch.float64)).float().double())[0]) < 0
