"""ℓ∞-dist layers: fast path vs reference, gradients, stability, Lipschitz, interval bounds, conv."""

from __future__ import annotations

import math
import os
import shutil

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asymcert.nn import linf_dist as L
from asymcert.nn.linf_dist import LinfDist, LinfDistConv2d, interval_bounds, linf_dist, linf_dist_reference

INF = float("inf")
FAST = ["cpp", "torch"]  # "cpp" falls back to "torch" when no compiler; both are fast-path code


def _numpy_distances(x: torch.Tensor, w: torch.Tensor, p: float) -> np.ndarray:
    """Independent float64 ℓp distances (N, O) of rows x (N, K) to rows w (O, K), by numpy's vector norm."""
    t = x.detach().double().numpy()[:, None, :] - w.detach().double().numpy()[None, :, :]
    return np.linalg.norm(t, ord=p, axis=-1)


def _grads(fn, x, w, g):
    y = fn(x, w)
    return (y, *torch.autograd.grad(y, (x, w), g))


def _leaf(*shape, dtype=torch.float64, scale=1.0, seed=0):
    gen = torch.Generator().manual_seed(seed)
    return (torch.randn(*shape, generator=gen, dtype=dtype) * scale).requires_grad_()


def test_kernels_build_when_compiler_present():
    if os.environ.get("ASYMCERT_NO_KERNELS") or not (shutil.which("g++") or shutil.which("c++")):
        pytest.skip("no compiler / kernels disabled")
    assert L.kernels() is not None, L.kernel_error()
    x, w = _leaf(7, 33, seed=3).detach(), _leaf(19, 33, seed=4).detach()
    for p in (INF, 1.0, 8.0, 8.5):  # the compiled kernel's distances, against numpy in float64
        np.testing.assert_allclose(linf_dist(x, w, p, backend="cpp").numpy(), _numpy_distances(x, w, p), rtol=1e-12)


def test_build_failure_is_reported(tmp_path, monkeypatch):
    monkeypatch.setenv("CXX", "/bin/false")
    monkeypatch.setenv("ASYMCERT_KERNEL_DIR", str(tmp_path))
    monkeypatch.setattr(L, "_KERNEL_SRC", tmp_path / "x.cpp")
    (tmp_path / "x.cpp").write_text("int f() { return 0; }\n")
    with pytest.raises(RuntimeError):
        L._build_and_load()
    assert not list(tmp_path.glob("*.so"))


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [INF, 1.0, 2.0, 2.5, 8.0, 88.7, 1000.0])
@pytest.mark.parametrize("shape", [(1, 1, 1), (5, 3, 7), (33, 130, 65), (6, 70, 131)])
def test_fast_matches_reference(backend, dtype, p, shape):
    B, K, O = shape
    x, w = _leaf(B, K, dtype=dtype, seed=1), _leaf(O, K, dtype=dtype, seed=2)
    g = torch.randn(B, O, dtype=dtype, generator=torch.Generator().manual_seed(3))
    y, gx, gw = _grads(lambda a, b: linf_dist(a, b, p, backend), x, w, g)
    yr, gxr, gwr = _grads(lambda a, b: linf_dist_reference(a, b, p), x, w, g)
    tol = dict(rtol=1e-4, atol=1e-4) if dtype == torch.float32 else dict(rtol=1e-9, atol=1e-9)
    if p == 1000.0 and dtype == torch.float32:  # (|t|/y)^999 amplifies float rounding of y
        tol = dict(rtol=2e-3, atol=2e-3)
    torch.testing.assert_close(y, yr, **tol)
    torch.testing.assert_close(gx, gxr, **tol)
    torch.testing.assert_close(gw, gwr, **tol)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_inf_backward_is_exact_argmax_scatter(backend, dtype):
    # continuous random data: no ties, so the reference's amax gradient is the argmax scatter
    x, w = _leaf(17, 45, dtype=dtype, seed=4), _leaf(70, 45, dtype=dtype, seed=5)
    g = torch.randn(17, 70, dtype=dtype, generator=torch.Generator().manual_seed(6))
    y, gx, gw = _grads(lambda a, b: linf_dist(a, b, INF, backend), x, w, g)
    yr, gxr, gwr = _grads(lambda a, b: linf_dist_reference(a, b, INF), x, w, g)
    assert torch.equal(y, yr)
    torch.testing.assert_close(gx, gxr, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
    torch.testing.assert_close(gw, gwr, rtol=0, atol=1e-12 if dtype == torch.float64 else 1e-5)
    # explicitly: one nonzero per (b, o), at the first argmax, with sign(x − w)
    t = x.detach()[:, None, :] - w.detach()[None]
    i = t.abs().argmax(-1)
    s = torch.sign(torch.gather(t, 2, i[..., None]))[..., 0]
    ex = torch.zeros_like(x).scatter_add_(1, i, s * g)
    torch.testing.assert_close(gx, ex, rtol=0, atol=1e-5)


@pytest.mark.parametrize("backend", FAST)
def test_inf_ties_first_max_wins(backend):
    x = torch.tensor([[0.0, 0.0, 0.0]], requires_grad=True)
    w = torch.tensor([[1.0, -1.0, 1.0], [0.5, 2.0, -2.0]], requires_grad=True)
    y = linf_dist(x, w, INF, backend)
    y.backward(torch.ones_like(y))
    assert y.tolist() == [[1.0, 2.0]]
    assert x.grad.tolist() == [[-1.0, -1.0, 0.0]]  # o=0: k=0, sign(0−1) = −1; o=1: k=1, sign(0−2)
    assert w.grad.tolist() == [[1.0, 0.0, 0.0], [0.0, 1.0, 0.0]]


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("p", [1.5, 2.0, 2.5, 8.0, 8.5, 13.7, 27.3])
def test_gradcheck_finite_p(backend, p):
    x, w = _leaf(4, 9, seed=7), _leaf(6, 9, seed=8)
    assert torch.autograd.gradcheck(lambda a, b: linf_dist(a, b, p, backend), (x, w), eps=1e-6, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
def test_gradcheck_inf(backend):
    x, w = _leaf(3, 8, seed=9), _leaf(5, 8, seed=10)
    assert torch.autograd.gradcheck(lambda a, b: linf_dist(a, b, INF, backend), (x, w), eps=1e-7, atol=1e-6)


@pytest.mark.parametrize("backend", FAST)
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_p1000_no_overflow(backend, dtype):
    x = _leaf(9, 300, dtype=dtype, scale=1e3, seed=11)
    w = _leaf(40, 300, dtype=dtype, scale=1e3, seed=12)
    y = linf_dist(x, w, 1000.0, backend)
    y.sum().backward()
    for t in (y, x.grad, w.grad):
        assert torch.isfinite(t).all()
    yinf = linf_dist(x.detach(), w.detach(), INF, backend)
    assert (y >= yinf * (1 - 1e-5)).all() and (y <= yinf * 300 ** (1 / 1000) * (1 + 1e-5)).all()


# ---- general (non-integer) p: the vectorised exp2/log2 kernel against the reference
P_GRID = [1.0, 2.0, 8.0, 8.5, 13.7, 27.3, 100.0, 1000.0, INF]


def _rel_err(a: torch.Tensor, ref: torch.Tensor) -> float:
    """Largest error relative to the largest reference magnitude (the scale of the output)."""
    a, ref = a.detach().double(), ref.detach().double()
    return float((a - ref).abs().max() / ref.abs().max().clamp_min(1e-300))


@pytest.mark.parametrize("p", P_GRID)
@pytest.mark.parametrize("shape", [(37, 300, 70), (8, 1100, 33)])
def test_float32_as_exact_as_the_reference(p, shape):
    """float32 fast path vs the float64 reference of the same inputs: its error must be of the
    order of float32 rounding, forward and backward.

    The backward's terms (|t|/y)^(p−1) amplify the rounding of |t|/y about (p − 1)-fold (in the
    reference too, except at the exact maximum, where its |t|/m is exactly 1), hence the
    (p − 1)·2^−24 allowance for the gradients."""
    B, K, O = shape
    x, w = _leaf(B, K, dtype=torch.float32, seed=21), _leaf(O, K, dtype=torch.float32, seed=22)
    g = torch.randn(B, O, generator=torch.Generator().manual_seed(23))
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    exact = _grads(lambda a, b: linf_dist_reference(a, b, p), xd, wd, g.double())
    fast = _grads(lambda a, b: linf_dist(a, b, p), x, w, g)
    ref32 = _grads(lambda a, b: linf_dist_reference(a, b, p), x, w, g)
    amp = 0.0 if p == INF else 3 * (p - 1) * 2.0**-24
    for name, f, r, e in zip(("y", "gx", "gw"), fast, ref32, exact):
        ef, er = _rel_err(f.detach(), e.detach()), _rel_err(r.detach(), e.detach())
        assert ef <= 3 * er + 4e-7 + (amp if name != "y" else 0.0), (name, ef, er)
    assert float(((fast[0].detach().double() - exact[0].detach()) / exact[0].detach()).abs().max()) < 1e-6


@pytest.mark.parametrize("p", P_GRID)
def test_float64_matches_reference_tightly(p):
    x, w = _leaf(13, 150, seed=24), _leaf(40, 150, seed=25)
    g = torch.randn(13, 40, dtype=torch.float64, generator=torch.Generator().manual_seed(26))
    y, gx, gw = _grads(lambda a, b: linf_dist(a, b, p), x, w, g)
    yr, gxr, gwr = _grads(lambda a, b: linf_dist_reference(a, b, p), x, w, g)
    torch.testing.assert_close(y, yr, rtol=1e-12, atol=1e-12)
    torch.testing.assert_close(gx, gxr, rtol=1e-10, atol=1e-10)
    torch.testing.assert_close(gw, gwr, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("scale", [1e-30, 1e30])
@pytest.mark.parametrize("p", [8.5, 27.3, 1000.0])
def test_general_p_extreme_scales(dtype, scale, p):
    """No overflow / underflow / NaN at huge or tiny inputs (everything is scaled by the row max)."""
    x = _leaf(9, 200, dtype=dtype, scale=scale, seed=27)
    w = _leaf(30, 200, dtype=dtype, scale=scale, seed=28)
    y = linf_dist(x, w, p)
    y.sum().backward()
    for t in (y, x.grad, w.grad):
        assert torch.isfinite(t).all()
    xd, wd = x.detach().double().requires_grad_(), w.detach().double().requires_grad_()
    yr = linf_dist_reference(xd, wd, p)
    yr.sum().backward()
    assert _rel_err(y, yr.detach()) < 1e-5
    assert _rel_err(x.grad, xd.grad) < 1e-3 and _rel_err(w.grad, wd.grad) < 1e-3


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("p", [8.5, 13.7, 100.0])
def test_general_p_zero_differences(dtype, p):
    """t = 0 entries give exactly zero terms; a zero distance (y = 0) gives y = 0 and finite
    gradients (the reference's are NaN there: d(S^{1/p}) at S = 0)."""
    x = torch.randn(3, 90, dtype=dtype, generator=torch.Generator().manual_seed(29))
    w = torch.randn(4, 90, dtype=dtype, generator=torch.Generator().manual_seed(30))
    w[1, :50] = x[1, :50]
    w[2, 60:] = x[2, 60:]
    x, w = x.requires_grad_(), w.requires_grad_()
    g = torch.randn(3, 4, dtype=dtype, generator=torch.Generator().manual_seed(31))
    y, gx, gw = _grads(lambda a, b: linf_dist(a, b, p), x, w, g)
    yr, gxr, gwr = _grads(lambda a, b: linf_dist_reference(a, b, p), x, w, g)
    tol = dict(rtol=1e-5, atol=1e-5) if dtype == torch.float32 else dict(rtol=1e-10, atol=1e-10)
    for a, b in ((y, yr), (gx, gxr), (gw, gwr)):
        torch.testing.assert_close(a, b, **tol)
    # a whole zero row
    w0 = w.detach().clone()
    w0[0] = x.detach()[0]
    w0.requires_grad_()
    y0, gx0, gw0 = _grads(lambda a, b: linf_dist(a, b, p), x, w0, g)
    assert y0[0, 0] == 0 and torch.isfinite(gx0).all() and torch.isfinite(gw0).all()
    torch.testing.assert_close(y0[:, 1:], y[:, 1:], rtol=0, atol=0)


def _float64_matches_reference(B: int, K: int, O: int, p: float, seed: int):
    """Random float64 inputs (B, K), weights (O, K) and output gradient; the fast path's output and
    gradients equal the reference's. Returns (x, w, g, y)."""
    x, w = _leaf(B, K, seed=seed), _leaf(O, K, seed=seed + 1)
    g = torch.randn(B, O, dtype=torch.float64, generator=torch.Generator().manual_seed(seed + 2))
    y, gx, gw = _grads(lambda a, b: linf_dist(a, b, p), x, w, g)
    yr, gxr, gwr = _grads(lambda a, b: linf_dist_reference(a, b, p), x, w, g)
    torch.testing.assert_close(y, yr, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(gx, gxr, rtol=1e-8, atol=1e-8)
    torch.testing.assert_close(gw, gwr, rtol=1e-8, atol=1e-8)
    return x, w, g, y


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 9),
    K=st.integers(1, 140),
    O=st.integers(1, 70),
    p=st.floats(1.0, 64.0, allow_nan=False),
    seed=st.integers(0, 2**16),
)
def test_property_general_p(B, K, O, p, seed):
    """Random real p and shapes (tile edges, K across the summation blocks): float64 fast path
    equals the reference to 1e−9, float32 stays within float rounding of it."""
    x, w, g, _ = _float64_matches_reference(B, K, O, p, seed)
    # float32: against the float64 reference of the float32-rounded inputs
    x32, w32 = x.detach().float().requires_grad_(), w.detach().float().requires_grad_()
    y32, gx32, gw32 = _grads(lambda a, b: linf_dist(a, b, p), x32, w32, g.float())
    xe, we = x32.detach().double().requires_grad_(), w32.detach().double().requires_grad_()
    ye, gxe, gwe = _grads(lambda a, b: linf_dist_reference(a, b, p), xe, we, g.float().double())
    assert float(((y32.detach().double() - ye.detach()) / ye.detach().clamp_min(1e-30)).abs().max()) < 2e-6
    tol = 1e-6 * max(p, 4.0)  # the backward's rounding is amplified ~(p − 1)-fold
    assert _rel_err(gx32.detach(), gxe.detach()) < tol and _rel_err(gw32.detach(), gwe.detach()) < tol


@settings(max_examples=25, deadline=None)
@given(
    B=st.integers(1, 12),
    K=st.integers(1, 70),
    O=st.integers(1, 80),
    p=st.sampled_from([INF, 1.0, 3.0, 7.5, 16.0]),
    seed=st.integers(0, 2**16),
)
def test_property_random_shapes(B, K, O, p, seed):
    x, w, _, y = _float64_matches_reference(B, K, O, p, seed)
    np.testing.assert_allclose(y.detach().numpy(), _numpy_distances(x, w, p), rtol=1e-12, atol=1e-12)


@settings(max_examples=20, deadline=None)
@given(seed=st.integers(0, 2**16), eps=st.floats(1e-4, 3.0))
def test_one_lipschitz_linf(seed, eps):
    torch.manual_seed(seed)
    layer = LinfDist(20, 30)
    x = torch.randn(16, 20)
    x2 = x + (torch.rand_like(x) * 2 - 1) * eps
    with torch.no_grad():
        dy = (layer(x) - layer(x2)).abs().amax(1)
    dx = (x - x2).abs().amax(1)
    assert (dy <= dx * (1 + 1e-6) + 1e-6).all()
    assert layer.lipschitz(INF) == 1.0


def test_lipschitz_bounds_hold_in_l2():
    torch.manual_seed(0)
    layer = LinfDist(12, 9, p=4.0)
    lip = layer.lipschitz(2.0)
    x = torch.randn(200, 12)
    x2 = x + 0.1 * torch.randn_like(x)
    with torch.no_grad():
        ratio = (layer(x) - layer(x2)).norm(dim=1) / (x - x2).norm(dim=1)
    assert (ratio <= lip).all()
    assert LinfDistConv2d(3, 4, 3).lipschitz(INF) == 1.0
    assert LinfDist(4, 4, p=2.0).lipschitz(INF) == pytest.approx(2.0, rel=1e-12)


def test_p_settable_after_construction():
    torch.manual_seed(0)
    layer = LinfDist(10, 6)
    x = torch.randn(5, 10, dtype=torch.float64)
    layer = layer.double()
    for p in (8.0, 2.0, 1000.0, INF):
        layer.p = p
        torch.testing.assert_close(layer(x), linf_dist_reference(x, layer.weight, p))
    ref2 = torch.cdist(x, layer.weight.detach(), p=2.0)
    layer.p = 2.0
    torch.testing.assert_close(layer(x), ref2)


def test_init_bias_identity():
    torch.manual_seed(0)
    layer = LinfDist(8, 20, identity_init=True, bias=True)
    w = layer.weight.detach()
    rows = torch.arange(20)
    assert (w[rows, rows % 8] == -10).all()
    assert 0.7 < w[w != -10].std() < 1.3
    x = 0.1 * torch.randn(4, 8)
    with torch.no_grad():
        layer.bias.fill_(0.5)
        torch.testing.assert_close(layer(x), x[:, rows % 8] + 10.5)
    wide_in = LinfDist(20, 8, identity_init=True)
    assert not (wide_in.weight == -10).any()
    assert LinfDist(3, 4).bias is None


@pytest.mark.parametrize("bias", [False, True])
def test_interval_bounds_contain_and_attain(bias):
    torch.manual_seed(0)
    layer = LinfDist(7, 11, bias=bias)
    if bias:
        with torch.no_grad():
            layer.bias.normal_()
    c = torch.randn(3, 7)
    r = torch.rand(3, 7) * 0.8
    lo, up = interval_bounds(layer, c - r, c + r)
    lo2, up2 = layer.bounds(c, r)
    assert torch.equal(lo, lo2) and torch.equal(up, up2)
    with torch.no_grad():
        for _ in range(50):
            xs = c + (torch.rand_like(c) * 2 - 1) * r
            y = layer(xs)
            assert (y <= up + 1e-6).all() and (y >= lo - 1e-6).all()
        w, b = layer.weight, (layer.bias if bias else torch.zeros(11))
        for n in range(3):
            # upper attained at the corner x_i = c_i + r_i·sign(c_i − w_i) (ties: either way)
            corner = c[n] + r[n] * torch.where(c[n] >= w, 1.0, -1.0)  # (11, 7), one corner per neuron
            yu = (corner - w).abs().amax(1) + b
            torch.testing.assert_close(yu, up[n])
            # lower attained at the projection of w_o onto the box
            proj = torch.minimum(torch.maximum(w, c[n] - r[n]), c[n] + r[n])
            yl = (proj - w).abs().amax(1) + b
            torch.testing.assert_close(yl, lo[n])
    with pytest.raises(ValueError):
        LinfDist(3, 2, p=8.0).interval_bounds(torch.zeros(1, 3), torch.ones(1, 3))
    with pytest.raises(ValueError):
        layer.interval_bounds(c + 1, c)


def _conv_loop(x, w, stride, padding, groups, p):
    n, _, h, wd = x.shape
    o, cg, kh, kw = w.shape
    xp = torch.nn.functional.pad(x, (padding[1], padding[1], padding[0], padding[0]))
    ho = (h + 2 * padding[0] - kh) // stride[0] + 1
    wo = (wd + 2 * padding[1] - kw) // stride[1] + 1
    out = torch.zeros(n, o, ho, wo, dtype=x.dtype)
    og = o // groups
    for b in range(n):
        for oc in range(o):
            g = oc // og
            for i in range(ho):
                for j in range(wo):
                    r0, c0 = i * stride[0], j * stride[1]
                    patch = xp[b, g * cg : (g + 1) * cg, r0 : r0 + kh, c0 : c0 + kw]
                    d = (patch - w[oc]).abs().flatten()
                    out[b, oc, i, j] = d.max() if p == INF else d.pow(p).sum().pow(1 / p)
    return out


@pytest.mark.parametrize(
    "cfg",
    [
        dict(cin=2, cout=3, k=3, stride=1, padding=0, groups=1, p=INF),
        dict(cin=4, cout=6, k=(2, 3), stride=(2, 1), padding=1, groups=2, p=INF),
        dict(cin=3, cout=3, k=2, stride=2, padding=(0, 1), groups=3, p=INF),
        dict(cin=2, cout=4, k=3, stride=1, padding=1, groups=2, p=2.0),
    ],
)
def test_conv_matches_loop(cfg):
    torch.manual_seed(0)
    layer = LinfDistConv2d(
        cfg["cin"],
        cfg["cout"],
        cfg["k"],
        stride=cfg["stride"],
        padding=cfg["padding"],
        groups=cfg["groups"],
        p=cfg["p"],
    ).double()
    x = torch.randn(2, cfg["cin"], 5, 6, dtype=torch.float64, requires_grad=True)
    y = layer(x)
    yr = _conv_loop(x, layer.weight, layer.stride, layer.padding, layer.groups, cfg["p"])
    torch.testing.assert_close(y, yr)
    g = torch.randn_like(y)
    gx, gw = torch.autograd.grad(y, (x, layer.weight), g)
    gxr, gwr = torch.autograd.grad(yr, (x, layer.weight), g)
    torch.testing.assert_close(gx, gxr)
    torch.testing.assert_close(gw, gwr)


def test_conv_interval_bounds_and_lipschitz():
    torch.manual_seed(0)
    layer = LinfDistConv2d(2, 4, 3, padding=1, groups=2)
    c = torch.randn(2, 2, 5, 5)
    lo, up = layer.bounds(c, 0.3)
    assert lo.shape == up.shape == (2, 4, 5, 5)
    with torch.no_grad():
        for _ in range(20):
            y = layer(c + (torch.rand_like(c) * 2 - 1) * 0.3)
            assert (y <= up + 1e-6).all() and (y >= lo - 1e-6).all()
        x2 = c + (torch.rand_like(c) * 2 - 1) * 0.05
        assert (layer(c) - layer(x2)).abs().amax() <= (c - x2).abs().amax() + 1e-6


def test_nonfinite_inputs_follow_torch():
    x = torch.tensor([[0.0, float("nan")], [1.0, 2.0]])
    w = torch.tensor([[0.0, 0.0]])
    y = linf_dist(x, w)
    assert math.isnan(y[0, 0]) and y[1, 0] == 2.0
    x = torch.tensor([[0.0, float("inf")]])
    assert linf_dist(x, w)[0, 0] == INF


def test_bad_arguments():
    with pytest.raises(ValueError):
        LinfDist(3, 4, p=0.5)
    with pytest.raises(ValueError):
        linf_dist(torch.zeros(2, 3), torch.zeros(4, 5))
    with pytest.raises(ValueError):
        linf_dist(torch.zeros(2, 3), torch.zeros(4, 3), backend="cuda-magic")
    with pytest.raises(ValueError):
        linf_dist(torch.zeros(2, 0), torch.zeros(4, 0))
    with pytest.raises(ValueError):
        LinfDistConv2d(3, 4, 3, groups=2)


def test_no_grad_and_empty_batch():
    layer = LinfDist(5, 3)
    with torch.no_grad():
        assert layer(torch.zeros(0, 5)).shape == (0, 3)
    x = torch.randn(4, 5, generator=torch.Generator().manual_seed(0))
    y = layer(x)
    assert y.requires_grad
    y.sum().backward()
    # p = ∞: ∂y[b, o]/∂w[o, k] = −sign(x[b, k] − w[o, k]) at the argmax k of |x[b] − w[o]| (float32, as the
    # layer computes it), else 0; summed over the batch
    t = x.numpy()[:, None, :] - layer.weight.detach().numpy()[None, :, :]
    k = np.abs(t).argmax(axis=-1)
    expected = np.zeros(layer.weight.shape)
    for b, o in np.ndindex(*k.shape):
        expected[o, k[b, o]] -= np.sign(t[b, o, k[b, o]])
    np.testing.assert_array_equal(layer.weight.grad.double().numpy(), expected)


@pytest.mark.skipif(not os.environ.get("ASYMCERT_TEST_COMPILE"), reason="torch.compile takes minutes on 2 cores")
@pytest.mark.parametrize("p", [INF, 2.0, 8.5])
def test_compile_backend(p):
    x, w = _leaf(13, 37, dtype=torch.float32, seed=1), _leaf(21, 37, dtype=torch.float32, seed=2)
    g = torch.randn(13, 21)
    y, gx, gw = _grads(lambda a, b: linf_dist(a, b, p, "compile"), x, w, g)
    yr, gxr, gwr = _grads(lambda a, b: linf_dist_reference(a, b, p), x, w, g)
    assert L._compile_broken["error"] is None
    for a, b in ((y, yr), (gx, gxr), (gw, gwr)):
        torch.testing.assert_close(a, b, rtol=1e-4, atol=1e-4)
