"""asymcert.certify.modes: the unit roundoff read from every PyTorch float32 precision setting.

PyTorch 2.9 added ``fp32_precision`` settings next to ``torch.set_float32_matmul_precision``. Setting one
(``torch.backends.mkldnn.matmul.fp32_precision = "bf16"``) made PyTorch's legacy getter raise, and every
certificate crashed with a RuntimeError; a convolution set to bfloat16 was not read at all.
"""

from __future__ import annotations

import pytest
import torch

import asymcert
from asymcert.certify.bounded_icnn import supports_bounded_icnn
from asymcert.certify.modes import float32_formats, matmul_unit_roundoff
from asymcert.models import build_model
from tests.conftest import guard_and_gap, small_feature_convex

B = torch.backends
ENTRIES = {"backends": B, "mkldnn": B.mkldnn, "mkldnn.matmul": B.mkldnn.matmul, "mkldnn.conv": B.mkldnn.conv}


ALL_ENTRIES = {**ENTRIES, "cuda.matmul": B.cuda.matmul, "cudnn": B.cudnn, "cudnn.conv": B.cudnn.conv}


@pytest.fixture
def restore_precision():
    """Every float32 precision setting as it was before the test (the new API's values, then the legacy one)."""
    legacy = torch.get_float32_matmul_precision()
    saved = {name: entry.fp32_precision for name, entry in ALL_ENTRIES.items()}
    yield
    for name, entry in reversed(list(ALL_ENTRIES.items())):
        entry.fp32_precision = saved[name]
    torch.set_float32_matmul_precision(legacy)


def test_cuda_settings_of_the_new_api_are_read_without_a_crash(restore_precision):
    """PyTorch's CUDA allow_tf32 getters raise once the new API was used (review 28c F1): TF32 is assumed."""
    B.cuda.matmul.fp32_precision = "tf32"
    with pytest.raises(RuntimeError):
        B.cuda.matmul.allow_tf32  # noqa: B018 (the getter itself raises)
    assert matmul_unit_roundoff(torch.float32, "cuda") == 2.0**-10


def one_layer_icnn() -> torch.nn.Module:
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [6],
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "icnn", "widths": [16], "batch_norm": False},
        }
    )
    return model.eval()


def test_ieee_settings_give_float32s_own_unit_roundoff(restore_precision):
    assert matmul_unit_roundoff(torch.float32, "cpu") == 2.0**-24
    assert matmul_unit_roundoff(torch.float64, "cpu") == 2.0**-53
    torch.set_float32_matmul_precision("medium")  # bfloat16 factors: twice bfloat16's u = 2⁻⁸
    assert matmul_unit_roundoff(torch.float32, "cpu") == 2.0**-7
    assert matmul_unit_roundoff(torch.float64, "cpu") == 2.0**-53


@pytest.mark.parametrize("name", list(ENTRIES))
@pytest.mark.parametrize(("value", "u"), [("bf16", 2.0**-7), ("tf32", 2.0**-10)])
def test_every_new_setting_widens_u(restore_precision, name, value, u):
    ENTRIES[name].fp32_precision = value
    assert value in float32_formats("cpu")
    assert matmul_unit_roundoff(torch.float32, "cpu") == u
    assert not supports_bounded_icnn(one_layer_icnn(), torch.device("cpu"))


def test_certificates_run_and_shrink_when_the_two_apis_are_mixed(restore_precision):
    """The legacy getter raises once both APIs were used; certificates still run, with bfloat16's u."""
    model = small_feature_convex("icnn", seed=0)
    x = torch.rand(40, 1, 6, 6)
    ieee = asymcert.certify(model, x, norms=(2.0,), precision="model").radii[2.0]
    torch.set_float32_matmul_precision("highest")
    B.mkldnn.matmul.fp32_precision = "bf16"
    with pytest.raises(RuntimeError):
        torch.get_float32_matmul_precision()
    reduced = asymcert.certify(model, x, norms=(2.0,), precision="model").radii[2.0]
    assert bool((reduced <= ieee).all()) and bool((reduced < ieee).any())
    default = asymcert.certify(one_layer_icnn(), torch.rand(8, 6))  # the bounded pass is not chosen, no crash
    assert default.radii[2.0].shape == (8,)


@pytest.mark.parametrize("kind", ["icnn", "conv"])
def test_the_guard_covers_the_models_bfloat16_arithmetic(restore_precision, kind):
    """With oneDNN's float32 products (or convolutions) in bfloat16, the model's own scores stay within the
    guard of the exact ones: the guard is built from the u the settings allow."""
    B.mkldnn.fp32_precision = "bf16"
    for seed in range(3):
        guard, gap = guard_and_gap(small_feature_convex(kind, seed=seed), torch.rand(500, 1, 6, 6))
        assert bool((gap <= guard).all())


@pytest.mark.parametrize(
    ("value", "u"), [("BF16", 2.0**-7), ("any", 2.0**-7), ("tf32", 2.0**-10), ("strict", 2.0**-24)]
)
@pytest.mark.parametrize("var", ["ONEDNN_DEFAULT_FPMATH_MODE", "DNNL_DEFAULT_FPMATH_MODE"])
def test_onednns_own_fpmath_switch_is_read(monkeypatch, var, value, u):
    """oneDNN reads its default float32 math mode from the environment: with BF16 its float32 convolutions ran in
    bfloat16, 45× the float guard (review 28a F3)."""
    monkeypatch.setenv(var, value)
    assert matmul_unit_roundoff(torch.float32, "cpu") == u
    assert supports_bounded_icnn(one_layer_icnn(), torch.device("cpu")) == (u == 2.0**-24)
