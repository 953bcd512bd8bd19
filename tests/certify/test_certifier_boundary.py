"""Every certifier but feature-convex, every public precision option, every norm, near the decision boundary.

A certificate promises that the model's OWN decision (float32, PyTorch's kernels) does not change
inside the radius. Near the boundary the margin is within a few ulps·magnitude of 0; there a
relative slack cannot absorb rounding, only an absolute bound can (issue 14, item 3). For each
(certifier, precision, norm) these tests build near-boundary inputs (projection onto a level set
s = t with t down to 1e-8, or bisection along segments between inputs of different predictions)
plus typical ones, and check

(a) certified ≤ an independent float64 reference computed WITHOUT the certifier's code (a float64
    copy of the model, margins and norms computed directly), and close to it away from the boundary;
(b) the float32 model's decision never flips at 0.999 × the radius: the worst-case direction where
    it is known (linear / gradient-norm-preserving models), PGD (certify/attacks.py) and random
    points on the sphere.

Randomized smoothing is probabilistic (level α) and certifies the smoothed classifier, which an
attack cannot evaluate exactly, so (b) does not apply to it; instead its radius formula is checked
against an independent scipy computation (binomial tail root for Clopper–Pearson, a root of Φ for
Φ⁻¹) and its abstention at p_lower ≤ ½ is checked at the threshold. The deterministic splitting
noise is evaluated exactly and attacked like the others.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.optimize import brentq
from scipy.stats import binom
from scipy.stats import norm as normal
from torch import nn

import asymcert
from asymcert.certify.attacks import decisions, pgd_attack
from asymcert.certify.bound_propagation import ibp_boxes, lower_bound_and_boxes, rounding_allowance, sequential_layers
from asymcert.certify.linf_dist import _trace, distance_error_bound
from asymcert.certify.modes import UnsoundOptionError
from asymcert.certify.smoothing import clopper_pearson_lower, radius_from_probability, splitting_probabilities
from asymcert.models import build_model
from asymcert.nn.feature_maps import Shift
from tests.conftest import examples

INF = math.inf
NORMS = (1.0, 2.0, INF)
FRACTIONS = (0.99, 0.999)


# ---------------------------------------------------------------------------------------------- helpers


def _lp(v: torch.Tensor, p: float) -> torch.Tensor:
    """Row ℓp norms in float64: (N, ...) → (N,)."""
    return torch.linalg.vector_norm(v.reshape(v.shape[0], -1).double(), ord=p, dim=1)


def _dual(p: float) -> float:
    return INF if p == 1 else 1.0 if math.isinf(p) else p / (p - 1)


def _worst_direction(grad: torch.Tensor, p: float) -> torch.Tensor:
    """Unit-ℓp δ minimising gradᵀδ (the steepest descent of a locally linear score): (N, d) → (N, d)."""
    g = grad.double()
    if math.isinf(p):
        return -torch.sign(g)
    if p == 1:
        k = g.abs().argmax(dim=1)
        return -torch.zeros_like(g).scatter(1, k[:, None], 1.0) * torch.sign(g.gather(1, k[:, None]))
    return -g / g.norm(dim=1, keepdim=True)


def _sphere(n: int, d: int, p: float, gen: torch.Generator) -> torch.Tensor:
    """Random unit-ℓp directions (N, d): Gaussian for ℓ2, corners for ℓ∞, Laplace-like for ℓ1."""
    if math.isinf(p):
        return torch.randint(0, 2, (n, d), generator=gen).double() * 2 - 1
    v = torch.randn(n, d, generator=gen, dtype=torch.float64)
    if p == 1:
        v = torch.sign(v) * torch.empty(n, d, dtype=torch.float64).exponential_(generator=gen)
    return v / _lp(v, p)[:, None]


def _no_flip_inside(
    model: nn.Module,
    x: torch.Tensor,
    radius: torch.Tensor,
    predicted: torch.Tensor,
    p: float,
    directions: list[torch.Tensor],
) -> int:
    """Assert the model's decision holds at every candidate x + f·r·direction (f in FRACTIONS) inside the ball.

    Returns how many candidate points were inside the open ball (the test's reach).
    """
    checked = 0
    for direction in directions:
        for f in FRACTIONS:
            xa = (x.double().flatten(1) + f * radius[:, None] * direction).to(x.dtype).reshape(x.shape)
            inside = _lp(xa - x, p) < radius
            flips = (decisions(model, xa) != predicted) & inside
            assert not bool(flips.any()), f"{int(flips.sum())} flips inside the certified ℓ{p} radius"
            checked += int(inside.sum())
    return checked


def _pgd_no_flip(model: nn.Module, x: torch.Tensor, radius: torch.Tensor, predicted: torch.Tensor, p: float) -> None:
    """PGD at 0.999·r (targeted away from the certified decision) never flips the model's decision."""
    xa = pgd_attack(
        model,
        x,
        radius * 0.999,
        p,
        steps=30,
        restarts=2,
        generator=torch.Generator().manual_seed(0),
        targeted_decision=predicted,
    )
    assert bool((_lp(xa - x, p) <= radius).all())
    assert not bool((decisions(model, xa) != predicted).any()), f"PGD flipped a decision inside the ℓ{p} radius"


def _project_to_levels(score64, x: torch.Tensor, levels: torch.Tensor, iters: int = 6) -> torch.Tensor:
    """Newton steps in float64 moving each x onto score64 = level (piecewise-linear scores converge)."""
    z = x.double().clone()
    for _ in range(iters):
        zr = z.clone().requires_grad_(True)
        s = score64(zr)
        (g,) = torch.autograd.grad(s.sum(), zr)
        g = g.flatten(1)
        z = (z.flatten(1) - ((s.detach() - levels) / (g * g).sum(1))[:, None] * g).reshape(z.shape).detach()
    return z


def _near_and_typical(score64, x: torch.Tensor, n_near: int, gen: torch.Generator) -> torch.Tensor:
    """The first ``n_near`` rows moved to float64 scores 10^U(−8, −2) (then rounded to float32), the rest as is."""
    levels = 10 ** (torch.rand(n_near, generator=gen, dtype=torch.float64) * 6 - 8)
    near = _project_to_levels(score64, x[:n_near], levels).float()
    return torch.cat([near, x[n_near:]])


# ---------------------------------------------------------------------------------------------- ibp / crown


def _linear_score_net(d: int, seed: int, hidden: int | None) -> nn.Sequential:
    """Shift → Flatten → [Linear → ReLU with stable, active units] → Linear(·, 1), float32.

    With the hidden layer the ReLUs stay on in every ball that matters (bias 8, small weights), so
    CROWN is exact and the steepest-descent direction of w_eff = W₂W₁ is the worst case.
    """
    gen = torch.Generator().manual_seed(seed)
    shift = Shift((d,))
    shift.mean.copy_(torch.rand(d, generator=gen))
    layers: list[nn.Module] = [shift, nn.Flatten()]
    if hidden:
        first = nn.Linear(d, hidden)
        with torch.no_grad():
            first.weight.copy_(torch.randn(hidden, d, generator=gen) * 0.1)
            first.bias.fill_(8.0)
        layers += [first, nn.ReLU()]
    last = nn.Linear(hidden or d, 1)
    net = nn.Sequential(*layers, last)
    with torch.no_grad():
        last.weight.copy_(torch.randn(1, hidden or d, generator=gen))
        last.bias.sub_(net(torch.full((1, d), 1.5))[0])  # s = 0 at the centre of the data box [0, 3]^d
    return net


def _effective_weight(net: nn.Sequential) -> torch.Tensor:
    """w with s(x) = w·x + c on the active region, in float64, computed directly from the weights: (d,)."""
    w = net[-1].weight.detach().double()
    if len(net) > 3:
        w = w @ net[2].weight.detach().double()
    return w[0]


@pytest.mark.parametrize("method,hidden", [("ibp", None), ("crown-ibp", 12), ("crown", 12)])
@pytest.mark.parametrize("precision", ["float64", "model"])
@settings(derandomize=True, deadline=None, max_examples=examples(2))
@given(seed=st.integers(0, 10_000))
def test_bound_propagation_near_boundary(method, hidden, precision, seed):
    d = 24
    net = _linear_score_net(d, seed, hidden)
    net64 = copy.deepcopy(net).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = _near_and_typical(lambda z: net64(z)[:, 0], torch.rand(200, d, generator=gen) * 3, 160, gen)
    with torch.no_grad():
        s64 = net64(x.double())[:, 0]
    w = _effective_weight(net)
    if hidden:  # the reference below needs every ReLU on at x (the net is affine there)
        assert bool((net64[2](net64[1](net64[0](x.double()))) > 1).all())
    cert = asymcert.certify(net, x, norms=NORMS, method=method, precision=precision, steps=16)
    assert bool(((cert.predicted == 1) == (net(x)[:, 0] > 0)).all())
    for p in NORMS:
        r = cert.radii[p]
        # (a) never above the exact distance s(x)/‖w‖_{p*} of the (affine) float64 function
        exact = s64.clamp_min(0) / w.norm(p=_dual(p))
        assert bool((r <= exact).all()), (method, precision, p)
        # away from the boundary: within the bisection's resolution (2^-16) and the rounding allowance,
        # which grows with the ball's magnitudes: ≤ 1e-3 of score at float64, C + 1 = 7 to 9 times
        # that in "model" precision (the float32 bound's own rounding), divided by ‖w‖_{p*}
        typical = s64 > 1e-2
        if hidden:  # only where the ReLUs provably stay on in the ball (pre-activations ≥ 8 − 1.5 − 4)
            typical &= exact * net[2].weight.detach().double().norm(p=_dual(p), dim=1).max() < 4
        allowance = (1e-3 if precision == "float64" else 1e-2) / w.norm(p=_dual(p))
        assert bool((r[typical] >= exact[typical] * (1 - 1e-3) - allowance).all())
        # (b) worst case (steepest descent of w), random sphere points, PGD: no flip of the float32 model
        pos = r > 0
        # some certified inputs close to the boundary (in "model" precision the float32 bound's own
        # rounding is paid C + 1 times: scores below ~1e-3 of Σ|terms| ≈ 80 get no radius there)
        near = 1e-3 if precision == "float64" else 2e-2
        assert int(pos.sum()) >= 20 and int((pos & (s64 < near)).sum()) >= 5
        dirs = [_worst_direction(w.expand(int(pos.sum()), d), p)] + [
            _sphere(int(pos.sum()), d, p, gen) for _ in range(3)
        ]
        assert _no_flip_inside(net, x[pos], r[pos], cert.predicted[pos], p, dirs) > 100
        _pgd_no_flip(net, x[pos], r[pos], cert.predicted[pos], p)


def test_bound_allowance_covers_float32_scores_and_bounds():
    """The rounding allowance bounds both the model's own float32 error and the float32 bound's error."""
    net = _linear_score_net(30, 3, 16)
    net64 = copy.deepcopy(net).double()
    layers, layers64 = sequential_layers(net), sequential_layers(net64)
    x = torch.rand(64, 30, generator=torch.Generator().manual_seed(4)) * 50  # large terms, large rounding
    eps = torch.full((64,), 0.5, dtype=torch.float64)
    u32 = torch.finfo(torch.float32).eps / 2
    with torch.no_grad():
        own = rounding_allowance(layers64, ibp_boxes(layers64, x.double(), eps, INF), u32, 0.0)
        err = (net(x)[:, 0].double() - net64(x.double())[:, 0]).abs()
        assert bool((err <= own).all()) and float(own.max()) < 1e-2
        for method in ("ibp", "crown"):
            lb32, boxes = lower_bound_and_boxes(layers, x, eps.float(), INF, method)
            lb64, _ = lower_bound_and_boxes(layers64, x.double(), eps, INF, method)
            bound_err = rounding_allowance(layers, boxes, 0.0, u32)
            assert bool(((lb32.double() - lb64).abs() <= bound_err).all()), method


# ---------------------------------------------------------------------------------------------- orthogonal


def _orthogonal_net(seed: int, d: int = 16) -> nn.Module:
    """A gradient-norm-preserving orthogonal MLP (square layers + MaxMin): ‖∇s‖₂ = 1, so s/L is tight."""
    torch.manual_seed(seed)
    model = build_model(
        {"kind": "orthogonal", "input_shape": [d], "arch": "mlp", "widths": [d, d], "input_range": None}
    )
    model.fit_input(torch.randn(64, d))
    return model.eval()


def _spectral_product(model: nn.Module) -> float:
    """L₂ computed directly: the product of the deployed weights' spectral norms (float64 SVD)."""
    out = 1.0
    for layer in model.net:
        if hasattr(layer, "weight_param"):
            out *= float(torch.linalg.matrix_norm(layer.weight.detach().double(), 2))
    return out


@pytest.mark.parametrize("precision", ["float64", "model"])
@settings(derandomize=True, deadline=None, max_examples=examples(2))
@given(seed=st.integers(0, 10_000))
def test_orthogonal_near_boundary(precision, seed):
    d = 16
    model = _orthogonal_net(seed, d)
    m64 = copy.deepcopy(model).double()
    gen = torch.Generator().manual_seed(seed + 1)
    x = _near_and_typical(m64, torch.randn(240, d, generator=gen) * 2, 200, gen)
    xr = x.double().requires_grad_(True)
    s64 = m64(xr)
    (grad,) = torch.autograd.grad(s64.sum(), xr)
    s64 = s64.detach()
    lip = _spectral_product(model)
    cert = asymcert.certify(model, x, norms=NORMS, precision=precision)
    for p in NORMS:
        r = cert.radii[p]
        c_p = math.sqrt(d) if math.isinf(p) else 1.0  # ℓ2 radius per ℓp radius (p ≤ 2: 1)
        reference = s64.clamp_min(0) / (lip * c_p)
        assert bool((r <= reference).all()), (precision, p)
        typical = s64 > 1e-2  # away from the boundary: the absolute allowance (d = 16) is < 1e-3
        assert bool((r[typical] >= (s64[typical] - 1e-3) / (lip * c_p * (1 + 1e-3))).all())
        pos = r > 0
        assert int(pos.sum()) >= 20
        k = int(pos.sum())
        dirs = [_worst_direction(grad[pos], p)] + [_sphere(k, d, p, gen) for _ in range(3)]
        assert _no_flip_inside(model, x[pos], r[pos], cert.predicted[pos], p, dirs) > 100
        _pgd_no_flip(model, x[pos], r[pos], cert.predicted[pos], p)


# ---------------------------------------------------------------------------------------------- linf-dist


def _linf_net(seed: int, mlp_head: int | None, binary: bool, d: int = 8) -> nn.Module:
    torch.manual_seed(seed)
    model = build_model(
        {
            "kind": "linf-dist",
            "input_shape": [d],
            "widths": [16],
            "input_range": None,
            "num_classes": 2 if binary else 3,
            "binary": binary,
            "mlp_head": mlp_head,
        }
    )
    model.set_p(INF)
    model.fit_input(torch.randn(64, d))
    model.eval()
    if binary:  # move the output bias so that about half of N(0, I) is flagged
        with torch.no_grad():
            model.out.bias[1] += model(torch.randn(256, d)).median()
    return model


def _linf_logits64(model: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """Logits (N, K) in float64 straight from the weights (not the model's or the certifier's code)."""
    mean, std = model.input_mean.double(), model.input_std.double()
    z = (x.double() - mean) / std
    for layer, shift in zip(model.dist, model.shifts):
        z = (z[:, None, :] - layer.weight.double()[None]).abs().amax(-1) - shift.running_mean.double()
    if model.out is not None:
        return -((z[:, None, :] - model.out.weight.double()[None]).abs().amax(-1) + model.out.bias.double())
    h = torch.tanh(z @ model.head_hidden.weight.double().T + model.head_hidden.bias.double())
    return h @ model.head_out.weight.double().T + model.head_out.bias.double()


def _linf_head_radius64(model: nn.Module, x: torch.Tensor, cls: torch.Tensor) -> torch.Tensor:
    """The exact-arithmetic IBP radius of the +MLP head (raw units), by float64 bisection in the test."""
    mean, std = model.input_mean.double(), model.input_std.double()
    y = (x.double() - mean) / std
    layer, shift = model.dist[0], model.shifts[0]
    y = (y[:, None, :] - layer.weight.double()[None]).abs().amax(-1)
    w1, b1 = model.head_hidden.weight.double(), model.head_hidden.bias.double()
    w2, b2 = model.head_out.weight.double(), model.head_out.bias.double()

    def ok(r):
        mu = shift.running_mean.double()
        lo, hi = (y - r[:, None]).clamp_min(0) - mu, y + r[:, None] - mu
        pre_lo = lo @ w1.clamp_min(0).T + hi @ w1.clamp_max(0).T + b1
        pre_hi = hi @ w1.clamp_min(0).T + lo @ w1.clamp_max(0).T + b1
        t_lo, t_hi = torch.tanh(pre_lo), torch.tanh(pre_hi)
        dw = w2[cls][:, None, :] - w2[None]  # (N, K, h)
        low = (
            (dw.clamp_min(0) * t_lo[:, None]).sum(-1)
            + (dw.clamp_max(0) * t_hi[:, None]).sum(-1)
            + b2[cls][:, None]
            - b2[None]
        )
        return (low.scatter(1, cls[:, None], INF) > 0).all(1)

    lo_r = torch.zeros(len(x), dtype=torch.float64)
    hi_r = torch.full((len(x),), 1e4, dtype=torch.float64)
    for _ in range(90):
        mid = (lo_r + hi_r) / 2
        good = ok(mid)
        lo_r, hi_r = torch.where(good, mid, lo_r), torch.where(good, hi_r, mid)
    return torch.where(ok(torch.zeros_like(lo_r)), hi_r, torch.zeros_like(hi_r)) * std


def _segment_boundary_points(model64_logits, n: int, d: int, gen: torch.Generator) -> torch.Tensor:
    """Points a + (λ* − t)(b − a) with λ* the class change on [a, b] (float64 bisection), t ~ 10^U(−7, −3)."""
    a, b = torch.randn(4 * n, d, generator=gen).double(), torch.randn(4 * n, d, generator=gen).double()
    ca = model64_logits(a).argmax(1)
    keep = ca != model64_logits(b).argmax(1)
    a, b, ca = a[keep][:n], b[keep][:n], ca[keep][:n]
    lo, hi = torch.zeros(len(a), dtype=torch.float64), torch.ones(len(a), dtype=torch.float64)
    for _ in range(60):
        mid = (lo + hi) / 2
        same = model64_logits(a + mid[:, None] * (b - a)).argmax(1) == ca
        lo, hi = torch.where(same, mid, lo), torch.where(same, hi, mid)
    t = 10 ** (torch.rand(len(a), generator=gen, dtype=torch.float64) * 4 - 7)
    return (a + (lo - t)[:, None] * (b - a)).float()


@pytest.mark.parametrize("mlp_head,binary", [(None, False), (None, True), (6, False)])
@pytest.mark.parametrize("precision", ["float64", "model"])
@settings(derandomize=True, deadline=None, max_examples=examples(3))
@given(seed=st.integers(0, 10_000))
def test_linf_dist_near_boundary(mlp_head, binary, precision, seed):
    d = 8
    model = _linf_net(seed, mlp_head, binary, d)
    gen = torch.Generator().manual_seed(seed + 1)
    logits64 = lambda z: _linf_logits64(model, z)  # noqa: E731
    x = torch.cat([_segment_boundary_points(logits64, 160, d, gen), torch.randn(40, d, generator=gen)])
    cert = asymcert.certify(model, x, norms=NORMS, precision=precision)
    cls = cert.predicted if not binary else torch.ones_like(cert.predicted)
    g64 = logits64(x)
    top = g64.gather(1, cls[:, None])[:, 0]
    margin64 = top - g64.scatter(1, cls[:, None], -INF).amax(1)
    r = cert.radii[INF]
    if mlp_head is None:
        reference = margin64.clamp_min(0) * model.input_std.double() / 2  # σ·m/2 of the exact function
        # room for the model's own error E (the stated IEEE bound) anywhere in the ball, from the EXACT
        # margin: a margin computed in float32 may sit above the exact one by up to its own error
        ops = _trace(copy.deepcopy(model).double(), x.double())[3]
        e32 = distance_error_bound(ops, r / model.input_std.double(), torch.finfo(torch.float32).eps / 2)
        assert bool((r <= (margin64 - 2 * e32).clamp_min(0) * model.input_std.double() / 2).all()), precision
    else:
        reference = _linf_head_radius64(model, x, cls)
    assert bool((r <= reference).all()), precision
    typical = margin64 > 0.05
    assert bool((r[typical] >= reference[typical] * (1 - 1e-6) - 1e-3).all())
    assert all(torch.equal(cert.radii[p], r) for p in NORMS)  # ‖δ‖∞ ≤ ‖δ‖_p
    pos = r > 0
    assert int(pos.sum()) >= 20
    dirs = [_sphere(int(pos.sum()), d, INF, gen) for _ in range(8)]
    assert _no_flip_inside(model, x[pos], r[pos], cert.predicted[pos], INF, dirs) > 100
    _pgd_no_flip(model, x[pos], r[pos], cert.predicted[pos], INF)


def test_linf_dist_refuses_unsound_options():
    model = _linf_net(0, None, False)
    x = torch.randn(4, 8)
    with pytest.raises(UnsoundOptionError, match="float_check=False"):
        asymcert.certify(model, x, float_check=False)
    with pytest.raises(UnsoundOptionError, match="precision"):
        asymcert.certify(model, x, precision="float16")
    with pytest.raises(UnsoundOptionError, match="slack"):
        asymcert.certify(model, x, slack=-1e-3)
    with pytest.raises(UnsoundOptionError, match="tolerance"):
        asymcert.certify(_linear_score_net(4, 0, None), torch.rand(3, 4), method="ibp", tolerance=-1.0)
    with pytest.raises(UnsoundOptionError, match="slack"):
        asymcert.certify(_orthogonal_net(0, 4), torch.rand(3, 4), slack=-0.5)


# ---------------------------------------------------------------------------------------------- smoothing


def _clopper_pearson_reference(k: int, n: int, alpha: float) -> float:
    """The p with P(Bin(n, p) ≥ k) = α, by root finding on the binomial tail (not the Beta quantile)."""
    if k == 0:
        return 0.0
    if k == n:
        return alpha ** (1.0 / n)
    return brentq(lambda p: binom.sf(k - 1, n, p) - alpha, 1e-300, 1.0, xtol=1e-15, rtol=1e-13)


def _phi_inverse_reference(p: float) -> float:
    """Φ⁻¹(p) as the root of Φ(z) = p (scipy's ndtr, not its ndtri)."""
    return brentq(lambda z: normal.cdf(z) - p, -40.0, 40.0, xtol=1e-15, rtol=1e-14)


@settings(derandomize=True, deadline=None, max_examples=examples(60))
@given(
    n=st.integers(1, 20_000),
    frac=st.floats(0.0, 1.0),
    alpha=st.sampled_from([1e-1, 1e-3, 1e-6]),
    sigma=st.floats(0.01, 4.0),
)
def test_smoothing_radius_matches_an_independent_scipy_computation(n, frac, alpha, sigma):
    k = round(frac * n)
    p_lower = float(clopper_pearson_lower(torch.tensor([k]), n, alpha)[0])
    p_ref = _clopper_pearson_reference(k, n, alpha)
    assert p_lower <= p_ref * (1 + 1e-9) + 1e-12 and p_lower >= p_ref * (1 - 1e-7)
    for noise in ("gaussian", "laplace", "uniform"):
        _, r = radius_from_probability(torch.tensor([p_lower], dtype=torch.float64), noise, sigma)
        r = float(r[0])
        if p_lower <= 0.5:
            assert r == 0.0  # abstain
            continue
        if noise == "gaussian":
            ref = sigma * _phi_inverse_reference(p_lower)
        elif noise == "laplace":
            ref = -(sigma / math.sqrt(2.0)) * math.log(2.0 * (1.0 - p_lower))
        else:
            ref = 2.0 * sigma * math.sqrt(3.0) * (p_lower - 0.5)
        assert r <= ref * (1 + 1e-12), noise
        assert r >= ref * (1 - 1e-9) - 1e-300, noise


@pytest.mark.parametrize("n,alpha", [(100, 1e-3), (1000, 1e-3), (10_000, 1e-6)])
def test_smoothing_abstains_exactly_below_the_threshold(n, alpha):
    """The smallest count k* whose (independent) lower bound exceeds ½ certifies; k* − 1 abstains."""
    lo, hi = n // 2, n  # the reference bound is increasing in k: bisect for the first k above ½
    while hi - lo > 1:
        mid = (lo + hi) // 2
        lo, hi = (lo, mid) if _clopper_pearson_reference(mid, n, alpha) > 0.5 else (mid, hi)
    k_star = hi
    ks = torch.tensor([k_star - 1, k_star])
    p = clopper_pearson_lower(ks, n, alpha)
    assert float(p[0]) <= 0.5 < float(p[1])
    _, r = radius_from_probability(p, "gaussian", 1.0)
    assert float(r[0]) == 0.0 and 0.0 < float(r[1]) < 1e-1


class _Constant(nn.Module):
    """A base model that flags everything: every noisy copy counts, so p_lower = α^(1/n) exactly."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.ones(x.shape[0], dtype=x.dtype)


@pytest.mark.parametrize("noise", ["gaussian", "laplace", "uniform"])
def test_smoothing_certify_end_to_end_matches_scipy(noise):
    n, alpha, sigma, d = 500, 1e-3, 0.7, 9
    x = torch.rand(3, d)
    cert = asymcert.certify(
        _Constant(), x, norms=NORMS, method=f"smoothing-{noise}", sigma=sigma, n0=10, n=n, alpha=alpha, seed=0
    )
    p = _clopper_pearson_reference(n, n, alpha)
    lam_l, lam_u = sigma / math.sqrt(2.0), sigma * math.sqrt(3.0)
    base, ref = {
        "gaussian": (2.0, sigma * _phi_inverse_reference(p)),
        "laplace": (1.0, -lam_l * math.log(2.0 * (1.0 - p))),
        "uniform": (1.0, 2.0 * lam_u * (p - 0.5)),
    }[noise]
    for q in NORMS:  # norm conversions on R^d: ℓ2 → ℓp (p > 2: / d^{1/2−1/p}); ℓ1 → ℓp: / d^{1−1/p}
        factor = (
            1.0
            if q <= base
            else (math.sqrt(d) if math.isinf(q) else d ** (0.5 - 1 / q))
            if base == 2.0
            else (d if math.isinf(q) else d ** (1 - 1 / q))
        )
        r = cert.radii[q]
        assert bool((r <= ref / factor).all()) and bool((r >= ref / factor * (1 - 1e-9)).all()), (noise, q)
    assert not bool(cert.abstained.any()) and not cert.deterministic and cert.alpha == alpha


class _Threshold(nn.Module):
    """s(x) = x₀ − c: one coordinate decides (the splitting-noise probability is then known in closed form)."""

    def __init__(self, c: float) -> None:
        super().__init__()
        self.c = c

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x[:, 0] - self.c


def test_smoothing_splitting_near_one_half_is_sound():
    """Splitting noise is deterministic: p is exact, so inputs with p just above ½ can be attacked.

    Old code fed the base model the cell CENTRE, which moves with the offset inside a cell, and
    evaluated one offset per cell: p was wrong by up to ±0.3 here and radii 20× too large.
    """
    sigma, c = 0.3, 0.2
    lam = sigma * math.sqrt(3.0)
    model = _Threshold(c)
    # independent closed form: for 0 < c < 2λ and x₀ ∈ [0, 2λ), x₀ is rounded up to 2λ (flagged) iff
    # s ≤ x₀, so p = x₀/2λ: inputs x₀ = λ + δ have p − ½ = δ/2λ ∈ 10^U(−7, −2)/… and 2λ(p − ½) = δ
    gen = torch.Generator().manual_seed(0)
    offsets = 10 ** (torch.rand(60, generator=gen, dtype=torch.float64) * 5 - 7) * 2 * lam
    x = torch.stack([lam + offsets, torch.rand(60, generator=gen, dtype=torch.float64)], dim=1)
    cert = asymcert.certify(model, x, norms=(1.0,), method="smoothing-splitting", sigma=sigma)
    r = cert.radii[1.0]
    assert bool((cert.predicted == 1).all())
    assert bool((r <= offsets).all()) and bool((r >= offsets - 1e-8).all())
    assert torch.allclose(splitting_probabilities(model, x, lam, 2)[:, 1], x[:, 0] / (2 * lam), rtol=0, atol=1e-12)
    for sign in (-1.0, 1.0):  # both directions along the deciding coordinate (the worst case) at 0.999 r
        xa = x.clone()
        xa[:, 0] += sign * 0.999 * r
        assert bool((splitting_probabilities(model, xa, lam, 2)[:, 1] > 0.5).all())
