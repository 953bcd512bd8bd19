"""The fast bounded pass of the convex conv net: its rounding bounds hold, its two backends agree,
and the certifier built on it matches the float64 path and the model's own decisions."""

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

import asymcert
from asymcert.certify import bounded_convex
from asymcert.certify.bounded_convex import bound_constants, bounded_pass, gamma, supports_bounded
from asymcert.certify.feature_convex import score_and_feature_gradient
from asymcert.models import build_model

NORMS = (1.0, 2.0, math.inf)


def conv_model(seed: int, input_shape=(1, 7, 6), channels: int = 3, stem_kernel: int = 3, blocks: int = 2,
               fmap=None, scale: float = 30.0) -> torch.nn.Module:
    """A random convex conv classifier with spread-out weights, batch-norm statistics and balance."""
    torch.manual_seed(seed)
    model = build_model({"kind": "feature-convex", "input_shape": list(input_shape),
                         "feature_map": fmap or [{"kind": "shift"}],
                         "convex": {"kind": "convex-conv", "channels": channels, "stem_kernel": stem_kernel,
                                    "blocks": blocks}})
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "block_convs" in name and name.endswith("weight") or "readout.weight" in name:
                p.mul_(scale)
        model.train()
        x = torch.rand(64, *input_shape)
        model.feature_map.fit(x)
        for _ in range(3):
            model(x)
    model.eval()
    with torch.no_grad():
        model.set_balance(-float(model(x).median()))
    return model


def reference(model, x):
    return score_and_feature_gradient(copy.deepcopy(model).double(), x.double())


def check_bounds(model, x, backend, dtype, uniform=None):
    bp = bounded_pass(model, x, backend=backend, dtype=dtype, uniform=uniform)
    s64, g64 = reference(model, x)
    # h_P ≤ g everywhere, so the lower end always holds; with the exact pattern both ends hold
    assert bool((bp.score - bp.score_error <= s64).all())
    sure = ~bp.uncertain
    assert bool(((bp.score - s64).abs() <= bp.score_error)[sure].all())
    err = (bp.grad.double() - g64).abs()
    assert bool((err <= bp.grad_error.double())[sure].all())
    return bp, s64, g64


@pytest.mark.parametrize("backend,uniform", [("cpp", False), ("cpp", True), ("torch", None)])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_rounding_bounds_contain_the_float64_reference(backend, uniform, dtype):
    model = conv_model(0)
    x = torch.rand(200, 1, 7, 6)
    bp, s64, _ = check_bounds(model, x, backend, dtype, uniform)
    assert int((~bp.uncertain).sum()) > 100  # the two-sided checks were not vacuous
    rel = float((bp.score_error / s64.abs()).median())
    # bounds are useful, not vacuous: float32 elementwise ~1e-3, uniform looser; float64 far below 1e-5
    assert rel < ((1e-2 if not uniform else 0.2) if dtype == torch.float32 else 1e-8)


@settings(max_examples=15, deadline=None)
@given(seed=st.integers(0, 10_000), c_in=st.sampled_from([1, 3]), channels=st.integers(1, 5),
       stem_kernel=st.sampled_from([1, 3, 5]), blocks=st.integers(0, 3), h=st.integers(3, 9), w=st.integers(3, 9),
       concat_abs=st.booleans())
def test_bounds_hold_for_random_architectures(seed, c_in, channels, stem_kernel, blocks, h, w, concat_abs):
    fmap = [{"kind": "shift"}] + ([{"kind": "concat-abs"}] if concat_abs else [])
    model = conv_model(seed, (c_in, h, w), channels, stem_kernel, blocks, fmap)
    x = torch.rand(40, c_in, h, w)
    for backend, uniform in (("cpp", False), ("cpp", True), ("torch", None)):
        check_bounds(model, x, backend, torch.float32, uniform)


def test_kernel_and_pytorch_paths_agree_within_their_bounds():
    model = conv_model(1, (1, 9, 9), channels=4, stem_kernel=5)
    x = torch.rand(300, 1, 9, 9)
    a = bounded_pass(model, x, "cpp", torch.float32)
    b = bounded_pass(model, x, "torch", torch.float32)
    sure = ~(a.uncertain | b.uncertain)
    assert int(sure.sum()) > 200
    assert bool(((a.score - b.score).abs() <= a.score_error + b.score_error)[sure].all())
    gap = (a.grad - b.grad).abs()
    assert bool((gap <= a.grad_error + b.grad_error)[sure].all())


def test_float64_pass_matches_float64_autograd():
    model = conv_model(2)
    x = torch.rand(100, 1, 7, 6)
    bp = bounded_pass(model, x)  # float64, the default
    s64, g64 = reference(model, x)
    assert not bool(bp.uncertain.any())
    torch.testing.assert_close(bp.score, s64, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(bp.grad, g64, rtol=1e-12, atol=1e-12)


def test_gamma_and_constants():
    u = 2.0 ** -24
    assert gamma(10, u) == pytest.approx(10 * u / (1 - 10 * u))
    with pytest.raises(ValueError):
        gamma(2 ** 24, u)
    consts = bound_constants(conv_model(0).convex, torch.float32)
    assert len(consts.blocks) == 2 and consts.stem > gamma(10, u) and consts.grad > gamma(27, u)


def test_bad_arguments_are_rejected():
    model = conv_model(0)
    x = torch.rand(4, 1, 7, 6)
    with pytest.raises(ValueError, match="dtype"):
        bounded_pass(model, x, dtype=torch.float16)
    with pytest.raises(ValueError, match="backend"):
        bounded_pass(model, x, backend="gpu")
    with pytest.raises(ValueError, match="bounded"):
        asymcert.certify(build_model({"kind": "feature-convex", "input_shape": [1, 7, 6],
                                      "convex": {"kind": "icnn", "widths": [4]}}), x, precision="bounded")


def test_which_models_the_bounded_path_covers():
    conv = conv_model(0)
    assert supports_bounded(conv, torch.device("cpu"))
    assert not supports_bounded(conv, torch.device("cuda"))
    even = conv_model(0, stem_kernel=4)
    assert not supports_bounded(even, torch.device("cpu"))
    icnn = build_model({"kind": "feature-convex", "input_shape": [1, 7, 6], "convex": {"kind": "icnn", "widths": [4]}})
    assert not supports_bounded(icnn, torch.device("cpu"))


def test_certifier_radii_match_the_float64_path_and_never_exceed_it():
    model = conv_model(3)
    x = torch.rand(300, 1, 7, 6)
    fast = asymcert.certify(model, x, norms=NORMS)  # auto → bounded
    ref = asymcert.certify(model, x, norms=NORMS, precision="float64")
    assert torch.equal(fast.predicted, ref.predicted)
    assert int(fast.sensitive.sum()) > 50
    for p in NORMS:
        torch.testing.assert_close(fast.radii[p], ref.radii[p], rtol=1e-7, atol=0)


@pytest.mark.parametrize("kind", ["conv", "icnn"])
def test_decisions_are_the_models_own_even_on_the_boundary(kind):
    """Inputs bisected onto the decision boundary: the certifier reports the model's own decision
    (conv nets through the bounded pass, ICNNs through the float64 path)."""
    if kind == "conv":
        model = conv_model(4)
    else:
        from tests.conftest import small_feature_convex
        model = small_feature_convex("icnn", input_shape=(1, 7, 6), seed=4)
    x = torch.rand(400, 1, 7, 6)
    with torch.no_grad():
        s = model(x)
    pos, neg = x[s > 0][:40], x[s <= 0][:40]
    lo, hi = torch.zeros(40, 1, 1, 1), torch.ones(40, 1, 1, 1)
    with torch.no_grad():
        for _ in range(60):  # s(neg + t (pos − neg)) crosses 0 between lo and hi
            mid = (lo + hi) / 2
            up = model(neg + mid * (pos - neg)) > 0
            hi = torch.where(up.view(-1, 1, 1, 1), mid, hi)
            lo = torch.where(up.view(-1, 1, 1, 1), lo, mid)
    edge = torch.cat([neg + lo * (pos - neg), neg + hi * (pos - neg)])
    with torch.no_grad():
        own = model(edge) > 0
    cert = asymcert.certify(model, edge, norms=NORMS)
    assert torch.equal(cert.sensitive, own)
    assert int(own.sum()) > 0 and int((~own).sum()) > 0
    torch.testing.assert_close(cert.extra["score"], model(edge).detach(), rtol=1e-4, atol=1e-5)


def test_without_the_kernel_the_pytorch_path_gives_the_same_certificates(monkeypatch):
    model = conv_model(5)
    x = torch.rand(100, 1, 7, 6)
    with_kernel = asymcert.certify(model, x, norms=NORMS)
    monkeypatch.setattr(bounded_convex._KERNEL, "state", {"lib": None, "tried": True, "error": "disabled for the test"})
    without = asymcert.certify(model, x, norms=NORMS)
    assert torch.equal(with_kernel.predicted, without.predicted)
    for p in NORMS:
        torch.testing.assert_close(with_kernel.radii[p], without.radii[p], rtol=1e-9, atol=0)
    with pytest.raises(RuntimeError, match="unavailable"):
        bounded_pass(model, x, backend="cpp")
