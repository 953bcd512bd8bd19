"""The fast bounded pass of the convex conv net: its rounding bounds hold (against exact rational
arithmetic on tiny nets, and against float64 on random architectures), its two backends agree, and
the certifier built on it matches the float64 path and the model's own decisions."""

import copy
import math
from fractions import Fraction

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from hypothesis import example, given, settings
from hypothesis import strategies as st

import asymcert
from asymcert.certify import bounded_convex
from asymcert.certify.bounded_convex import bound_constants, bounded_pass, supports_bounded
from asymcert.certify.feature_convex import FLOAT_GUARD_FACTOR, float_guard, reference_error, score_and_feature_gradient
from asymcert.certify.modes import gamma
from asymcert.models import build_model
from tests.conftest import examples

NORMS = (1.0, 2.0, math.inf)


def conv_model(
    seed: int,
    input_shape=(1, 7, 6),
    channels: int = 3,
    stem_kernel: int = 3,
    blocks: int = 2,
    fmap=None,
    scale: float = 30.0,
) -> torch.nn.Module:
    """A random convex conv classifier with spread-out weights, batch-norm statistics and balance."""
    torch.manual_seed(seed)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": list(input_shape),
            "feature_map": fmap or [{"kind": "shift"}],
            "convex": {"kind": "convex-conv", "channels": channels, "stem_kernel": stem_kernel, "blocks": blocks},
        }
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if ("block_convs" in name and name.endswith("weight")) or "readout.weight" in name:
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


def reference_rounding(model, x):
    """(N,) allowance for the float64 reference's own rounding: FLOAT_GUARD_FACTOR·eps64 times the
    magnitude of the readout's terms, Σ|w|·(|a|·(|z| + |μ|) + |β|) + |bias| + |b| (z the output batch
    norm's input). The score is often a cancellation of those terms, so |s| says nothing of the
    reference's error; the exact-arithmetic test below needs no such allowance."""
    m64 = copy.deepcopy(model).double().eval()
    norm = m64.convex.out_norm
    seen = []
    hook = norm.register_forward_hook(lambda mod, inp, out: seen.append(inp[0].detach()))
    with torch.no_grad():
        m64(x.double())
    hook.remove()
    a = (norm.weight / torch.sqrt(norm.running_var + norm.eps)).abs().view(1, -1, 1, 1)
    y = a * (seen[0].abs() + norm.running_mean.abs().view(1, -1, 1, 1)) + norm.bias.abs().view(1, -1, 1, 1)
    mag = y.flatten(1) @ m64.convex.readout.weight.abs().flatten() + m64.convex.readout.bias.abs() + m64.balance.abs()
    return FLOAT_GUARD_FACTOR * torch.finfo(torch.float64).eps * mag.detach()


def check_bounds(model, x, backend, dtype, uniform=None):
    bp = bounded_pass(model, x, backend=backend, dtype=dtype, uniform=uniform)
    s64, g64 = reference(model, x)
    tol = reference_rounding(model, x)
    # h_P ≤ g everywhere, so the lower end always holds; with the exact pattern both ends hold
    assert bool((bp.score - bp.score_error <= s64 + tol).all())
    sure = ~bp.uncertain
    assert bool(((bp.score - s64).abs() <= bp.score_error + tol)[sure].all())
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


@settings(max_examples=examples(15), deadline=None)
@given(
    seed=st.integers(0, 10_000),
    c_in=st.sampled_from([1, 3]),
    channels=st.integers(1, 5),
    stem_kernel=st.sampled_from([1, 3, 5]),
    blocks=st.integers(0, 3),
    h=st.integers(3, 9),
    w=st.integers(3, 9),
    concat_abs=st.booleans(),
)
# issue 14: every ReLU off on 34 of 40 inputs, s = Σ w·shift + bias + b cancels to −2.1e-9, and the
# bound was 1e-12·|s| (2.1e-21) against a true error of 1.2e-17
@example(seed=1670, c_in=1, channels=1, stem_kernel=3, blocks=1, h=5, w=8, concat_abs=False)
def test_bounds_hold_for_random_architectures(seed, c_in, channels, stem_kernel, blocks, h, w, concat_abs):
    fmap = [{"kind": "shift"}] + ([{"kind": "concat-abs"}] if concat_abs else [])
    model = conv_model(seed, (c_in, h, w), channels, stem_kernel, blocks, fmap)
    x = torch.rand(40, c_in, h, w)
    for backend, uniform in (("cpp", False), ("cpp", True), ("torch", None)):
        check_bounds(model, x, backend, torch.float32, uniform)


# ------------------------------------------------------------------------------------------
# exact rational reference: every float32/float64 weight and input is an exact rational; only the
# batch-norm square root is irrational, and it is taken to 2⁻³²⁰ relative (far below any bound here)

SQRT_BITS = 320


def _fractions(t: torch.Tensor) -> np.ndarray:
    return np.vectorize(Fraction, otypes=[object])(t.detach().double().cpu().numpy())


def _conv_matrix(weight: torch.Tensor, in_shape, padding) -> np.ndarray:
    """The convolution as an exact (out, in) matrix: each entry of a one-hot convolution is one weight."""
    n_in = int(np.prod(in_shape))
    eye = torch.eye(n_in, dtype=torch.float64).view(n_in, *in_shape)
    return _fractions(F.conv2d(eye, weight.detach().double(), padding=padding).reshape(n_in, -1).T)


def _bn_exact(norm, hw: int) -> tuple[np.ndarray, np.ndarray]:
    """Per feature (C·H·W,) exact scale γ/√(σ² + ε) (to 2⁻³²⁰) and shift β − scale·μ."""
    scale, shift = [], []
    for g, b, m, v in zip(
        *(t.detach().double().tolist() for t in (norm.weight, norm.bias, norm.running_mean, norm.running_var))
    ):
        q = Fraction(v) + Fraction(norm.eps)
        root = Fraction(math.isqrt(q.numerator * q.denominator << (2 * SQRT_BITS)), q.denominator << SQRT_BITS)
        scale.append(Fraction(g) / root)
        shift.append(Fraction(b) - scale[-1] * Fraction(m))
    return np.repeat(np.array(scale, dtype=object), hw), np.repeat(np.array(shift, dtype=object), hw)


def exact_conv_classifier(model, x):
    """Exact s(x) and ∇g(φ(x)) of a convex conv classifier: lists of N Fractions / object arrays."""
    net, f = model.convex, _fractions(x)
    for m in model.feature_map.maps:
        assert m.kind in ("shift", "concat-abs"), m.kind
        f = f - _fractions(m.mean)[None] if m.kind == "shift" else np.concatenate([f, np.abs(f)], axis=1)
    shape, hw = f.shape[1:], f.shape[2] * f.shape[3]
    m0, b0 = _conv_matrix(net.stem.weight, shape, net.stem.padding), np.repeat(_fractions(net.stem.bias), hw)
    hidden = (net.channels,) + shape[1:]
    blocks = [
        (_conv_matrix(cv.weight, hidden, cv.padding), np.repeat(_fractions(cv.bias), hw), *_bn_exact(nm, hw))
        for cv, nm in zip(net.block_convs, net.block_norms)
    ]
    a_out, c_out = _bn_exact(net.out_norm, hw)
    w_out = _fractions(net.readout.weight).reshape(-1)
    const = Fraction(float(net.readout.bias.detach())) + Fraction(float(model.balance))
    scores, grads = [], []
    for fi in f:
        t = m0.dot(fi.reshape(-1)) + b0
        masks = [t > 0]
        z = np.where(masks[0], t, Fraction(0))
        for mat, bias, a, c in blocks:
            r = z + mat.dot(a * z + c) + bias
            masks.append(r > 0)
            z = np.where(masks[-1], r, Fraction(0))
        scores.append((w_out * (a_out * z + c_out)).sum() + const)
        g = np.where(masks[-1], w_out * a_out, Fraction(0))
        for k in range(len(blocks) - 1, -1, -1):
            g = np.where(masks[k], g + blocks[k][2] * blocks[k][0].T.dot(g), Fraction(0))
        grads.append(m0.T.dot(g).reshape(shape))
    return scores, grads


def check_exact_bounds(model, x, s_exact, g_exact, backend, dtype, uniform=None):
    """The bounded pass against exact values: ŝ − E_s ≤ s always (h_P ≤ g); |ŝ − s| ≤ E_s and
    |ĝ − ∇| ≤ E_g (componentwise) wherever the pass is sure of its ReLU pattern."""
    bp = bounded_pass(model, x, backend=backend, dtype=dtype, uniform=uniform)
    for i, (s, g) in enumerate(zip(s_exact, g_exact)):
        s_hat, e_s = Fraction(float(bp.score[i])), Fraction(float(bp.score_error[i]))
        assert s_hat - e_s <= s, (backend, dtype, i)
        if bool(bp.uncertain[i]):
            continue
        assert abs(s_hat - s) <= e_s, (backend, dtype, i, float(s_hat - s), float(e_s))
        gap = np.abs(_fractions(bp.grad[i]) - g) - _fractions(bp.grad_error[i])
        assert all(v <= 0 for v in gap.reshape(-1)), (backend, dtype, i)
    return bp


PASSES = [
    ("cpp", torch.float32, False),
    ("cpp", torch.float32, True),
    ("cpp", torch.float64, None),
    ("torch", torch.float32, None),
    ("torch", torch.float64, None),
]


def test_bounds_hold_exactly_when_the_score_cancels_to_almost_zero():
    """The issue-14 example: every ReLU off on most inputs, so ŝ is the folded constant
    Σ w·shift + bias + b, which cancels to −2.1e-9. Its bound must be relative to the terms, not to ŝ
    (the old bound 1e-12·|ŝ| = 2.1e-21 was below the true error 1.2e-17)."""
    model = conv_model(1670, (1, 5, 8), channels=1, stem_kernel=3, blocks=1)
    x = torch.rand(40, 1, 5, 8)
    s_exact, g_exact = exact_conv_classifier(model, x)
    assert sum(abs(s) < 1e-8 for s in s_exact) > 20  # the cancelling inputs are there
    for backend, dtype, uniform in PASSES:
        check_exact_bounds(model, x, s_exact, g_exact, backend, dtype, uniform)


@settings(max_examples=examples(12), deadline=None)
@given(
    seed=st.integers(0, 10_000),
    c_in=st.sampled_from([1, 2]),
    channels=st.integers(1, 2),
    stem_kernel=st.sampled_from([1, 3]),
    blocks=st.integers(0, 2),
    h=st.integers(2, 4),
    w=st.integers(2, 4),
    concat_abs=st.booleans(),
    cancel=st.booleans(),
)
# found by the "explore" profile: a dead net (every ReLU off) whose constant Σ w·shift + bias + b cancels
# to −1.4e-8; the float32 model's rounding was 46·eps32·M while the guard's M did not count those terms
@example(seed=408, c_in=1, channels=1, stem_kernel=1, blocks=1, h=3, w=4, concat_abs=False, cancel=False)
def test_bounds_hold_against_exact_arithmetic_on_tiny_nets(
    seed, c_in, channels, stem_kernel, blocks, h, w, concat_abs, cancel
):
    """With ``cancel`` the balance b is set to −g(x₀) rounded to float32, so that s(x₀) is a few float32
    ulps of g: a near-boundary input whose score is a cancellation."""
    fmap = [{"kind": "shift"}] + ([{"kind": "concat-abs"}] if concat_abs else [])
    model = conv_model(seed, (c_in, h, w), channels, stem_kernel, blocks, fmap)
    x = torch.rand(6, c_in, h, w)
    if cancel:
        s_exact, _ = exact_conv_classifier(model, x[:1])
        with torch.no_grad():
            model.set_balance(float(model.balance) - float(s_exact[0]))
    s_exact, g_exact = exact_conv_classifier(model, x)
    for backend, dtype, uniform in PASSES:
        check_exact_bounds(model, x, s_exact, g_exact, backend, dtype, uniform)
    # the measured rounding bounds the certifiers subtract hold here too: the float64 reference's
    # (precision="float64"; and the allowance check_bounds gives it) and the float32 model's own
    s64, g64 = reference(model, x)
    f64 = model.features(x.double())
    with torch.no_grad():
        s32 = model(x).double()
    for s_ref, bound in (
        (s64, reference_error(model, f64, g64, s64, "float64")),
        (s64, reference_rounding(model, x)),
        (s32, float_guard(model, f64, g64, s64)),
    ):
        assert all(abs(Fraction(float(a)) - s) <= Fraction(float(t)) for a, s, t in zip(s_ref, s_exact, bound))


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
    u = 2.0**-24
    assert gamma(10, u) == pytest.approx(10 * u / (1 - 10 * u))
    with pytest.raises(ValueError):
        gamma(2**24, u)
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
        asymcert.certify(
            build_model(
                {"kind": "feature-convex", "input_shape": [1, 7, 6], "convex": {"kind": "icnn", "widths": [4]}}
            ),
            x,
            precision="bounded",
        )


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
