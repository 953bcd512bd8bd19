"""Inputs in another float type than the model's: certified at their rounding, radii lowered by it."""

from __future__ import annotations

import copy
import math
from dataclasses import replace

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
    # r − ‖e‖ per norm, then nested as every certificate is (an ℓ∞ radius around x64 covers its ℓ1 ball too)
    wants = nested_radii({p: (at32.radius(p) - lp_norm(e, p)).clamp_min(0.0) for p in NORMS})
    for p in NORMS:
        want = wants[p]
        assert bool((got.radius(p) <= at32.radius(p)).all())
        assert bool((got.radius(p) <= want).all())  # never above r − ‖e‖
        assert torch.allclose(got.radius(p), want, rtol=1e-9, atol=1e-15)  # and lowered by no more
        assert bool((got.radius(p)[at32.radius(p) > 2 * lp_norm(e, p)] > 0).all())


def test_values_that_are_numbers_of_the_models_dtype_lose_nothing():
    model = build_model({**CONFIGS[0], "input_shape": SHAPE}).eval()
    x32 = _inputs().float()
    a, b = asymcert.certify(model, x32.double()), asymcert.certify(model, x32)
    for p in NORMS:
        assert torch.equal(a.radius(p), b.radius(p))
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
            if divisor is None:  # an immutable feature: no move changes it, nothing to lower
                assert torch.equal(got.radius(p), base.radius(p))
                continue
            moved = (x64[:, feature] - x32[:, feature].double()).abs() / divisor
            want = (base.radius(p) - moved).clamp_min(0.0)
            assert torch.allclose(got.radius(p), want, rtol=1e-9, atol=1e-18), (feature, p)
            assert bool((got.radius(p) <= want).all()) and bool((got.radius(p) < base.radius(p)).any())


def test_infinite_and_zero_radii_stay():
    model = build_model({**CONFIGS[0], "input_shape": [2]}).eval()
    cert = asymcert.certify(model, torch.zeros(3, 2))
    cert.radii[2.0] = torch.tensor([math.inf, 0.0, 1.0], dtype=torch.float64)
    out = lowered_by_rounding(cert, torch.full((3, 2), 1e-3, dtype=torch.float64), None)
    assert out.radius(2.0)[0] == math.inf and out.radius(2.0)[1] == 0.0
    assert 1.0 - math.sqrt(2) * 1e-3 * (1 + 2e-9) < float(out.radius(2.0)[2]) < 1.0 - math.sqrt(2) * 1e-3


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
    exact = asymcert.certify(model, x32.double(), threat_model=tm)
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
