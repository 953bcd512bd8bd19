"""Option values a certifier cannot take are refused in one line naming them, before any input is read (options
audit 27d: ``start=0`` searched forever, a negative one gave radii of −9e307, σ = NaN gave NaN radii, ``batch=-1``
drew no sample, ``n=50.7`` was truncated, string slacks failed inside the radius computation)."""

from __future__ import annotations

import math
import types

import numpy as np
import pytest
import torch

import asymcert
from asymcert.certify.modes import UnsoundOptionError
from asymcert.errors import ConfigError
from asymcert.models import build_model
from tests.conftest import small_feature_convex

SMOOTHING = {"noise": "gaussian", "sigma": 0.5, "n0": 10, "n": 50, "alpha": 0.01}


def _models() -> dict[str, torch.nn.Module]:
    torch.manual_seed(0)
    return {
        "ibp": build_model({"kind": "relu-ibp", "input_shape": [6], "arch": "mlp", "widths": [8]}),
        "linf": build_model({"kind": "linf-dist", "input_shape": [6], "widths": [8], "num_classes": 3}),
        "orthogonal": build_model({"kind": "orthogonal", "input_shape": [6], "arch": "mlp", "widths": [8]}),
        "smoothing": build_model(
            {"kind": "relu-smoothing", "input_shape": [6], "arch": "mlp", "widths": [8], "smoothing": SMOOTHING}
        ),
    }


MODELS = _models()
REFUSED = [
    ("ibp", {"start": 0.0}, r"start must be a finite number > 0, got 0\.0"),
    ("ibp", {"start": -0.5}, r"start must be a finite number > 0, got -0\.5"),
    ("ibp", {"max_radius": -1.0}, r"max_radius must be a finite number > 0"),
    ("ibp", {"max_radius": math.inf}, r"max_radius must be a finite number > 0, got inf"),
    ("ibp", {"start": {2.0: math.nan}}, r"start\[2\.0\] must be a finite number > 0, got nan"),
    ("ibp", {"method": "ibp", "lower_slope": "bogus"}, r"lower_slope must be one of 'adaptive', 'zero', 'one'"),
    ("ibp", {"tolerance": True}, r"tolerance must be a finite number ≥ 0, got True"),
    ("ibp", {"steps": 2.5}, r"steps must be an integer from 0 to 64, got 2\.5"),
    ("ibp", {"steps": 20000}, r"steps must be an integer from 0 to 64, got 20000"),
    ("ibp", {"start": types.MappingProxyType({2.0: 0.1})}, r"start must be a number or a dict of numbers per norm"),
    ("smoothing", {"seed": 2**64}, r"seed must be an integer from -2\*\*63 to 2\*\*64 - 1, got 18446744073709551616"),
    ("smoothing", {"sigma": math.nan}, r"sigma must be a finite number > 0, got nan"),
    ("smoothing", {"sigma": math.inf}, r"sigma must be a finite number > 0, got inf"),
    ("smoothing", {"batch": -1}, r"batch must be an integer ≥ 1, got -1"),
    ("smoothing", {"batch": 0}, r"batch must be an integer ≥ 1, got 0"),
    ("smoothing", {"n0": 2.5}, r"n0 must be an integer ≥ 1, got 2\.5"),
    ("smoothing", {"n": True}, r"n must be an integer ≥ 1, got True"),
    ("smoothing", {"seed": 1.5}, r"seed must be an integer from -2\*\*63 to 2\*\*64 - 1, got 1\.5"),
    ("smoothing", {"generator": 123}, r"generator must be a torch\._C\.Generator, got int"),
    ("smoothing", {"alpha": 1.0}, r"alpha must be a number in \(0, 1\), got 1\.0"),
    ("smoothing", {"method": "smoothing-splitting", "sigma": -1.0}, r"sigma must be a finite number > 0"),
    ("smoothing", {"method": "smoothing-splitting", "batch": 2.5}, r"batch must be an integer ≥ 1, got 2\.5"),
    ("smoothing", {"method": "smoothing-splitting", "alpha": math.nan}, r"alpha must be a number in \(0, 1\)"),
    ("linf", {"steps": "10"}, r"steps must be an integer ≥ 1, got '10'"),
    ("linf", {"steps": -3}, r"steps must be an integer ≥ 1, got -3"),
    ("linf", {"slack": "0.5"}, r"slack must be a finite number ≥ 0, got '0\.5'"),
    ("orthogonal", {"slack": "0.1"}, r"slack must be a finite number ≥ 0, got '0\.1'"),
]


@pytest.mark.parametrize(("family", "options", "message"), REFUSED)
def test_bad_option_values_are_refused_naming_them(family, options, message):
    with pytest.raises(UnsoundOptionError, match=message):
        asymcert.certify(MODELS[family], torch.rand(2, 6), norms=(2,), **options)


def test_every_bad_value_of_a_call_is_named_at_once():
    with pytest.raises(UnsoundOptionError, match=r"sigma must be .*; n0 must be .*; batch must be"):
        asymcert.certify(MODELS["smoothing"], torch.rand(2, 6), norms=(2,), sigma=math.nan, n0=0, batch=0)


def test_a_models_own_bad_smoothing_setting_is_refused_too():
    """(Its config refuses one when built; an attribute set later is checked when it is used.)"""
    torch.manual_seed(0)
    model = build_model(
        {"kind": "relu-smoothing", "input_shape": [6], "arch": "mlp", "widths": [8], "smoothing": SMOOTHING}
    )
    model.smoothing = {**model.smoothing, "sigma": math.nan}
    with pytest.raises(UnsoundOptionError, match=r"smoothing: sigma must be a finite number > 0, got nan"):
        asymcert.certify(model, torch.rand(2, 6), norms=(2,))


def test_good_values_of_numpy_types_and_one_value_tensors_still_certify():
    x = torch.rand(3, 6)
    assert asymcert.certify(MODELS["smoothing"], x, norms=(2,), sigma=torch.tensor(0.5), seed=2**64 - 1).radii
    assert asymcert.certify(MODELS["ibp"], x, norms=(2,), start=torch.tensor(0.1), steps=64).radii
    cert = asymcert.certify(MODELS["smoothing"], x, norms=(2,), n=np.int64(40), sigma=np.float32(0.5), seed=np.int32(1))
    assert cert.radii[2.0].shape == (3,)
    assert asymcert.certify(MODELS["ibp"], x, norms=(2,), start={2.0: 0.5}, steps=3).radii[2.0].shape == (3,)
    model = small_feature_convex(seed=0)
    assert asymcert.certify(model, torch.rand(3, *model.input_shape), slack=0.5).radii[2.0].shape == (3,)
    with pytest.raises(UnsoundOptionError, match=r"slack must be a finite number ≥ 0, got '0\.5'"):
        asymcert.certify(model, torch.rand(3, *model.input_shape), slack="0.5")


def test_a_smoothing_seed_torch_cannot_take_is_refused_when_the_model_is_built():
    """A seed of 2**64 trained, then every certify ended in torch's "Overflow when unpacking long long" (review
    27e F1)."""
    config = {"kind": "relu-smoothing", "input_shape": [6], "arch": "mlp", "widths": [8]}
    with pytest.raises(ConfigError, match=r"smoothing seed = 18446744073709551616 must be an integer from"):
        build_model({**config, "smoothing": {**SMOOTHING, "seed": 2**64}})
    assert build_model({**config, "smoothing": {**SMOOTHING, "seed": 2**64 - 1}}).smoothing["seed"] == 2**64 - 1
