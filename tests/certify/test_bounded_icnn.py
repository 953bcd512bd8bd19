"""The fast rigorous ICNN reference (asymcert.certify.bounded_icnn): its score and gradient bounds hold
against exact rational arithmetic and float64, also at the decision boundary and at ReLU kinks, with the
gradient from the compiled kernel and from PyTorch's operations (the same bitwise, the score's sums within
their bound); "auto" picks it where it applies and its radii match the float64 path's; attacks never flip
inside them."""

import copy
import math
from fractions import Fraction

import pytest
import torch

import asymcert
from asymcert.certify import bounded_icnn, icnn_pattern
from asymcert.certify.attacks import pgd_attack
from asymcert.certify.bounded_icnn import features_with_error, icnn_bounded_pass, icnn_constants, supports_bounded_icnn
from asymcert.certify.feature_convex import (
    FLOAT64_SLACK,
    Reference,
    _float64_copy,
    _resolve_precision,
    reference,
    reference_error,
    score_and_feature_gradient,
)
from asymcert.certify.functional import dual_norm
from asymcert.certify.modes import UnsoundOptionError, gamma
from asymcert.certify.scope import forget_kept
from asymcert.models import build_model
from asymcert.nn.feature_maps import ConcatAbs, Shift, Standardize
from tests.conftest import near_boundary

NORMS = (1.0, 2.0, math.inf)
FMAPS = {
    "shift": [{"kind": "shift"}],
    "standardize": [{"kind": "standardize"}],
    "shift+concat-abs": [{"kind": "shift"}, {"kind": "concat-abs"}],
    "identity": [{"kind": "identity"}],
}


@pytest.fixture(autouse=True, params=["auto", "float32"])
def pattern_products(request, monkeypatch):
    """Every test with the pattern from bfloat16 products (where this machine has them) and from float32 ones."""
    monkeypatch.setattr(icnn_pattern, "PATTERN_PRODUCTS", request.param)
    forget_kept()
    yield request.param
    forget_kept()


@pytest.fixture(autouse=True, params=["kernel", "pytorch"])
def gradient_path(request, monkeypatch):
    """Every test with the gradient and score sums from the compiled kernel and from PyTorch's operations."""
    kernel = bounded_icnn._GRADIENT_KERNEL
    if request.param == "pytorch":
        monkeypatch.setitem(kernel.state, "lib", None)
        monkeypatch.setitem(kernel.state, "tried", True)
    elif kernel.get() is None:
        pytest.skip(f"no compiled kernel: {kernel.error}")
    return request.param


def icnn_model(seed: int, input_shape=(1, 4, 5), widths=(32,), fmap="shift", batch_norm=False, scale=1.0):
    """A random ICNN classifier with spread-out weights, fitted φ and a balance at the median score."""
    torch.manual_seed(seed)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": list(input_shape),
            "feature_map": FMAPS[fmap],
            "convex": {"kind": "icnn", "widths": list(widths), "batch_norm": batch_norm},
        }
    )
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hidden" in name:
                p.mul_(scale * 200.0)  # NonnegLinear starts at U(0, 0.005)
            elif "passthrough" in name:
                p.mul_(scale)
        x = torch.rand(256, *input_shape)
        model.feature_map.fit(x)
        model.train()
        model(x)
    model.eval()
    with torch.no_grad():
        model.set_balance(-float(model(x).median()))
    return model


def boundary_inputs(model, x: torch.Tensor) -> torch.Tensor:
    """Inputs on segments between flagged and unflagged inputs, bisected on the float64 score to |s| ≲ 1e-6."""
    return near_boundary(model, x, low=0.0, high=0.0)


def float64_reference(model, x):
    """Score, gradient (float64 autograd) and the float64 path's own score error bound."""
    m64 = _float64_copy(model)
    s, g = score_and_feature_gradient(m64, x.double())
    f = model.features(x.double()).detach()
    return s.double(), g, reference_error(model, f, g, s.double(), "float64")


def gradient_allowance(model, g64):
    """float64 autograd's own gradient error: γ_{W+1}(2⁻⁵³) times the magnitude w·|U₀| + |U₁| (≈1e-12 relative)."""
    g = model.convex
    w = g.hidden[0].weight.detach().double().reshape(-1)
    mag = w @ g.passthrough[0].weight.detach().double().abs() + g.passthrough[1].weight.detach().double().abs()[0]
    return gamma(w.numel() + 1, 2.0**-53) * 4 * mag.view_as(g64[0])


@pytest.mark.parametrize("fmap", list(FMAPS))
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_bounds_contain_float64_score_and_gradient(fmap, seed):
    model = icnn_model(seed, fmap=fmap, widths=(64,), scale=1.0 + seed)
    assert supports_bounded_icnn(model, torch.device("cpu"))
    x = torch.rand(300, *model.input_shape)
    xb = boundary_inputs(model, x)
    xs = torch.cat([x, xb])
    bp = icnn_bounded_pass(model, xs)
    s64, g64, e64 = float64_reference(model, xs)
    assert float(s64[len(x) :].abs().max()) < 1e-4  # the bisection reached the boundary
    certain = ~bp.uncertain
    assert bool(((bp.score - s64).abs() <= bp.score_error + e64)[certain].all())
    assert bool((bp.score - bp.score_error <= s64 + e64).all())  # h_P ≤ g even where P is uncertain
    diff = (bp.grad - g64).abs()
    assert bool((diff <= bp.grad_error + gradient_allowance(model, g64))[certain].all())
    # the bounds are tight: far below 1e-3 of the magnitudes
    assert float((bp.grad_error.flatten(1).norm(dim=1) / g64.flatten(1).norm(dim=1)).max()) < 1e-5


def exact_score_gradient(model, x_row):
    """Exact rational s(x) and ∇g(φ(x)) (list of Fractions), the exact pattern, via :mod:`fractions`."""
    phi = model.feature_map
    steps = bounded_icnn._steps(phi)
    f = [[Fraction(float(v)) for v in x_row.flatten(1)[c].tolist()] for c in range(x_row.shape[0])]
    for m in steps:
        if isinstance(m, Shift):
            mu = m.mean.double().reshape(len(f), -1).tolist()
            f = [[a - Fraction(b) for a, b in zip(fc, mc)] for fc, mc in zip(f, mu)]
        elif isinstance(m, Standardize):
            mu, sd = m.mean.double().reshape(len(f), -1).tolist(), m.scale.double().reshape(len(f), -1).tolist()
            f = [[(a - Fraction(b)) / Fraction(c) for a, b, c in zip(fc, mc, sc)] for fc, mc, sc in zip(f, mu, sd)]
        elif isinstance(m, ConcatAbs):
            f = f + [[abs(a) for a in fc] for fc in f]
    flat = [a for fc in f for a in fc]
    g = model.convex
    u0 = g.passthrough[0].weight.detach().double().tolist()
    c0 = g.passthrough[0].bias.detach().double().tolist()
    w = g.hidden[0].weight.detach().double().reshape(-1).tolist()
    u1 = g.passthrough[1].weight.detach().double()[0].tolist()
    c1 = Fraction(float(g.passthrough[1].bias.detach().double()[0]))
    t = [sum((Fraction(a) * b for a, b in zip(row, flat)), Fraction(c)) for row, c in zip(u0, c0)]
    s = sum((Fraction(wj) * max(tj, Fraction(0)) for wj, tj in zip(w, t)), Fraction(0))
    s += sum((Fraction(a) * b for a, b in zip(u1, flat)), Fraction(0)) + c1 + Fraction(float(model.balance))
    grad = [Fraction(a) for a in u1]
    for wj, tj, row in zip(w, t, u0):
        if tj > 0:
            grad = [gi + Fraction(wj) * Fraction(a) for gi, a in zip(grad, row)]
    return s, grad, t


@pytest.mark.parametrize("fmap", ["shift", "standardize", "shift+concat-abs"])
def test_bounds_contain_exact_rational_values(fmap):
    checked = 0
    for seed in range(6):
        model = icnn_model(10 + seed, input_shape=(1, 2, 3), widths=(7,), fmap=fmap, scale=3.0)
        x = torch.rand(40, *model.input_shape)
        xs = torch.cat([x[:8], boundary_inputs(model, x)[:8]])
        bp = icnn_bounded_pass(model, xs)
        for i in range(xs.shape[0]):
            s, grad, t = exact_score_gradient(model, xs[i])
            assert abs(Fraction(float(bp.score[i])) - s) <= Fraction(float(bp.score_error[i]))
            if not bool(bp.uncertain[i]) and all(tj != 0 for tj in t):
                for gi, gh, ge in zip(grad, bp.grad[i].flatten().tolist(), bp.grad_error[i].flatten().tolist()):
                    assert abs(Fraction(gh) - gi) <= Fraction(ge)
                checked += 1
    assert checked > 50


def test_kinks_are_repaired_or_flagged_uncertain():
    """Units whose pre-activation is within float32 rounding of 0 (or exactly 0) get the exact pattern
    from the float64 recomputation, or flag the input ``uncertain``; the bounds hold either way."""
    model = icnn_model(3, input_shape=(1, 3, 4), widths=(16,), fmap="identity", scale=2.0)
    g = model.convex
    x = torch.rand(32, *model.input_shape)
    f = x.flatten(1).double()
    with torch.no_grad():
        u0 = g.passthrough[0].weight
        # unit j puts input j exactly (in float64, near in float32) on its kink
        for j in range(8):
            g.passthrough[0].bias[j] = -float(f[j] @ u0[j].double())
        # unit 15: integer weights and an input of integers, so t = 0 exactly
        u0[15] = torch.tensor([1.0, -2.0, 1.0] + [0.0] * 9)
        g.passthrough[0].bias[15] = 0.0
    x[31] = 0.0
    x[31, 0, 0, :3] = torch.tensor([1.0, 1.0, 1.0])
    bp = icnn_bounded_pass(model, x)
    s64, g64, e64 = float64_reference(model, x)
    assert bool(bp.uncertain[31])
    certain = ~bp.uncertain
    assert bool(((bp.score - s64).abs() <= bp.score_error + e64)[certain].all())
    assert bool(((bp.grad - g64).abs() <= bp.grad_error + gradient_allowance(model, g64))[certain].all())
    assert bool((bp.score - bp.score_error <= s64 + e64).all())


def test_auto_picks_bounded_only_where_it_applies():
    cpu = torch.device("cpu")
    one = icnn_model(0)
    x = torch.rand(4, *one.input_shape)
    assert _resolve_precision(one, x, "auto") == "bounded"
    for other in (icnn_model(0, widths=(16, 8)), icnn_model(0, batch_norm=True)):
        assert not supports_bounded_icnn(other, cpu)
        assert _resolve_precision(other, x, "auto") == "float64"
        with pytest.raises(UnsoundOptionError):
            _resolve_precision(other, x, "bounded")
        a = asymcert.certify(other, x, norms=NORMS)
        b = asymcert.certify(other, x, norms=NORMS, precision="float64")
        for p in NORMS:
            assert torch.equal(a.radii[p], b.radii[p])
    for kind in ("log1p", "hinges"):  # maps whose rounding the bounded path does not model
        bent = build_model(
            {
                "kind": "feature-convex",
                "input_shape": [5],
                "feature_map": [{"kind": kind}],
                "convex": {"kind": "icnn", "widths": [8], "batch_norm": False},
            }
        )
        assert not supports_bounded_icnn(bent, cpu)
    assert not supports_bounded_icnn(one, torch.device("meta"))
    old = torch.get_float32_matmul_precision()
    try:
        torch.set_float32_matmul_precision("medium")  # bfloat16 products would void the float32 bound
        assert not supports_bounded_icnn(one, cpu)
    finally:
        torch.set_float32_matmul_precision(old)


def test_features_with_error_bounds_the_exact_features():
    model = icnn_model(4, input_shape=(1, 2, 3), fmap="standardize")
    std = model.feature_map.maps[0]
    with torch.no_grad():
        std.scale.mul_(torch.tensor(3.0).pow(torch.arange(6.0) - 3).view(1, 2, 3))
    x = torch.rand(20, *model.input_shape) * 1e3
    f, e = features_with_error(model.feature_map, x)
    mu, sd = std.mean.double(), std.scale.double()
    for i in range(3):
        for j, (xv, m, s) in enumerate(zip(x[i].flatten().tolist(), mu.flatten().tolist(), sd.flatten().tolist())):
            exact = (Fraction(xv) - Fraction(m)) / Fraction(s)
            assert abs(Fraction(float(f[i].flatten()[j])) - exact) <= Fraction(float(e[i].flatten()[j]))
            assert float(e[i].flatten()[j]) > 0 or exact == Fraction(float(f[i].flatten()[j]))


def trained_like(seed: int, fmap: str = "shift"):
    """A small one-hidden-layer ICNN trained for a few steps on a separable synthetic task."""
    model = icnn_model(seed, input_shape=(1, 6, 6), widths=(128,), fmap=fmap)
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(512, 1, 6, 6, generator=gen)
    y = (x[:, 0, :3].mean((1, 2)) > x[:, 0, 3:].mean((1, 2))).float() * 2 - 1
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(60):
        opt.zero_grad()
        torch.relu(1 - y * model(x)).mean().backward()
        opt.step()
        model.project()
    model.eval()
    with torch.no_grad():
        model.set_balance(float(model.balance) - float(model(x).median()))
    return model, x


@pytest.mark.parametrize("fmap", ["shift", "shift+concat-abs"])
def test_auto_radii_match_float64(fmap):
    worst = 0.0
    for seed in range(3):
        model, x = trained_like(seed, fmap)
        xs = torch.cat([x[:200], boundary_inputs(model, x)[:50]])
        auto = asymcert.certify(model, xs, norms=NORMS)
        f64 = asymcert.certify(model, xs, norms=NORMS, precision="float64")
        assert torch.equal(auto.predicted, f64.predicted)
        for p in NORMS:
            ra, rf = auto.radii[p], f64.radii[p]
            # never above the float64 radius by more than the float64 path's own slack (and its error)
            assert bool((ra <= rf * (1 + 2 * FLOAT64_SLACK) + 1e-12).all())
            big = rf > 1e-3 * float(rf.max())
            rel = ((ra - rf).abs() / rf)[big]
            worst = max(worst, float(rel.max()))
    print(f"max relative radius difference auto vs float64: {worst:.3g}")
    assert worst < 1e-3


def test_pgd_never_flips_inside_auto_radii_near_the_boundary():
    model, x = trained_like(7)
    near = near_boundary(model, x)  # scores 1e-7 … 1e-2: within the rounding allowance and just above it
    xs = torch.cat([near, x[:64]])
    cert = asymcert.certify(model, xs, norms=NORMS)
    assert cert.method == "feature-convex"
    with torch.no_grad():
        own = model(xs) > 0
    assert torch.equal(cert.predicted.bool(), own)
    flagged = cert.predicted.bool() & (cert.radii[2.0] > 0)
    assert int(flagged[: len(near)].sum()) > 20  # near-boundary inputs with a promise to attack
    gen = torch.Generator().manual_seed(0)
    for p in NORMS:
        eps = 0.999 * cert.radii[p][flagged]
        adv = pgd_attack(model, xs[flagged], eps, p, steps=60, restarts=2, generator=gen)
        with torch.no_grad():
            assert bool((model(adv) > 0).all())


def test_constants_are_cached_and_refreshed_when_weights_change():
    model = icnn_model(5)
    a = icnn_constants(model)
    assert icnn_constants(model) is a
    with torch.no_grad():
        model.convex.passthrough[0].weight.mul_(2.0)
    b = icnn_constants(model)
    assert b is not a
    x = torch.rand(16, *model.input_shape)
    s64, _, e64 = float64_reference(model, x)
    bp = icnn_bounded_pass(model, x)
    assert bool(((bp.score - s64).abs() <= bp.score_error + e64)[~bp.uncertain].all())


@pytest.mark.parametrize(
    "write",
    [
        lambda m: m.convex.passthrough[0].weight.data.mul_(2.0),  # .data: no version bump
        lambda m: m.convex.hidden[0].weight.data.clamp_(min=0.5),  # a projection as training loops write it
        lambda m: m.convex.passthrough[1].bias.data.add_(3.0),
        lambda m: m.convex.passthrough[0].weight.data.copy_(-m.convex.passthrough[0].weight.data),
    ],
)
def test_weights_written_through_data_are_certified_as_they_are_now(write):
    """Constants cached by data pointer and version counter certified the weights of before a ``.data`` write
    (which bumps neither): the scores and radii must be those of a fresh copy of the model as it is now."""
    model = icnn_model(7)
    x = torch.rand(64, *model.input_shape)
    before = asymcert.certify(model, x)
    with torch.no_grad():
        write(model)
    fresh = copy.deepcopy(model)
    now, want = asymcert.certify(model, x), asymcert.certify(fresh, x)
    assert not torch.equal(before.extra["score"], want.extra["score"])  # the write changed the model
    assert torch.equal(now.extra["score"], want.extra["score"])
    for p in NORMS:
        assert torch.equal(now.radii[p], want.radii[p])
    assert icnn_constants(model) is icnn_constants(model)  # unchanged weights: still cached


def test_a_tied_weight_is_seen_even_when_the_parameter_list_is_unchanged():
    """Tie the hidden weight w to U₁ and keep w's old values in a new parameter: the model's parameter list stays
    bit for bit the same, the network does not; constants compared by position certified the old w (review 27c
    F1: scores off by 1.08, 41 of 64 decisions flipped)."""
    model = icnn_model(0, widths=(20,))  # d = 20 = width: U₁ and w are both (1, 20)
    g = model.convex
    with torch.no_grad():
        g.passthrough[1].weight.abs_()  # U₁ ≥ 0, so also a valid hidden weight
    x = torch.rand(64, *model.input_shape)
    asymcert.certify(model, x)
    old = g.hidden[0].weight
    g.hidden[0].weight = g.passthrough[1].weight
    g.hidden[0].register_parameter("spare", torch.nn.Parameter(old.detach().clone()))
    now, want = asymcert.certify(model, x), asymcert.certify(copy.deepcopy(model), x)
    assert torch.equal(now.extra["score"], want.extra["score"]) and torch.equal(now.radii[2.0], want.radii[2.0])
    with torch.no_grad():
        assert float((now.extra["score"].double() - model(x).double()).abs().max()) < 1e-5


def test_weights_are_compared_once_per_certificate_call(monkeypatch):
    """The bitwise comparison of every weight (13 ms a call on the demo model when each chunk asked for the
    constants four times) runs once per ``asymcert.certify`` call, whatever its chunks."""
    model = icnn_model(8)
    calls = []
    checked = bounded_icnn._checked_constants
    monkeypatch.setattr(bounded_icnn, "_checked_constants", lambda m: calls.append(m) or checked(m))
    x = torch.rand(30, *model.input_shape)
    asymcert.certify(model, x, batch_size=7)
    assert len(calls) == 1
    asymcert.certify(model, x)
    assert len(calls) == 2
    icnn_bounded_pass(model, x)  # (called on its own: its support check and the pass share one comparison)
    assert len(calls) == 3


def test_integer_slices_reconstruct_the_table_exactly():
    model = icnn_model(6, widths=(50,), scale=7.0)
    c = icnn_constants(model)
    g = model.convex
    w = g.hidden[0].weight.detach().double().reshape(-1)
    table = torch.cat([w[:, None] * c.u0_64, (w * c.c0_64)[:, None]], 1)
    m = table.shape[1]
    q = c.q.double().view(-1, bounded_icnn.SLICES, m)
    approx = torch.zeros_like(table)
    for s in range(bounded_icnn.SLICES):
        approx = approx * 2.0**bounded_icnn.SLICE_BITS + q[:, s]
    approx = approx * c.col_scale
    resid = (table - approx).abs().sum(0)
    assert bool((resid <= c.resid).all())
    # each remainder is below 2^(1−7S) of its column's largest entry (2⁻²⁷ for S = 4)
    tiny = table.shape[0] * 2.0 ** (1 - 7 * bounded_icnn.SLICES) * table.abs().amax(0) * 1.01
    assert bool((c.resid <= tiny).all())
    assert int(c.q.abs().max()) <= 64


def test_the_gradient_kernel_and_pytorch_agree(gradient_path, monkeypatch):
    """The kernel's gradient, its bound and κ are bitwise PyTorch's; its score's sums differ only by the order of
    the additions (each within about d·2⁻⁵² of Σ|terms|), far inside the score's error bound."""
    if gradient_path == "pytorch":
        pytest.skip("compares the kernel with PyTorch")
    model = icnn_model(3, widths=(96,), fmap="shift+concat-abs", scale=2.0)
    x = torch.rand(500, *model.input_shape)
    consts = icnn_constants(model)
    f, e = (t.reshape(len(x), -1) for t in features_with_error(model.feature_map, x))
    pattern, _ = bounded_icnn._pattern(consts, f, e)
    kernel = bounded_icnn._gradient_and_sums(consts, pattern, f, e)
    monkeypatch.setitem(bounded_icnn._GRADIENT_KERNEL.state, "lib", None)
    torch_ = bounded_icnn._gradient_and_sums(consts, pattern, f, e)
    assert torch.equal(kernel[0], torch_[0]) and torch.equal(kernel[1], torch_[1])
    d = f.shape[1]
    assert torch.equal(kernel[2][:, 5], torch_[2][:, 5]) and torch.equal(kernel[2][:, 8], torch_[2][:, 8])  # κ, max G
    big = kernel[0].abs() + kernel[1]  # G = |ĝ| + E_g, whose norms the radii divide by
    assert torch.equal(kernel[2][:, 8], big.amax(1))
    for col, exact in ((6, big.sum(1)), (7, (big * big).sum(1))):
        assert bool(((kernel[2][:, col] - exact).abs() <= 2 * d * 2.0**-52 * exact).all())
    scale = torch.stack([(kernel[0] * f).abs().sum(1), *(kernel[2][:, q].abs() for q in (1, 2, 3, 4))], 1)
    assert bool(((kernel[2][:, :5] - torch_[2][:, :5]).abs() <= 2 * d * 2.0**-52 * scale).all())
    s1, e1 = bounded_icnn._score(consts, kernel[2])
    s2, _ = bounded_icnn._score(consts, torch_[2])
    mag = kernel[2][:, 1] + kernel[2][:, 5].abs() + abs(consts.c1) + abs(consts.balance)
    assert bool(((s1 - s2).abs() <= 4 * d * 2.0**-52 * mag).all())
    assert float(((s1 - s2).abs() / e1).max()) < 1e-6  # (far inside the score's error bound)


def test_the_passes_own_norms_match_the_dual_norms_and_fall_back_where_squares_underflow():
    """Reference.dual_norm reads the ICNN pass's own sums (ΣG, √ΣG², max G) instead of three more passes over G; they
    agree with functional.dual_norm to rounding, and an ℓ2 sum of squares that underflowed (G near 10⁻²⁰⁰, where
    it would read 0 and certify an infinite radius) is recomputed with scaling."""
    model = icnn_model(5, widths=(48,), fmap="standardize")
    x = torch.rand(200, *model.input_shape)
    ref = reference(model, x, "bounded")
    assert ref.grad_norms is not None
    for p in NORMS:
        own, plain = ref.dual_norm(p), dual_norm(ref.grad_bound, p)
        assert bool(((own - plain).abs() <= 1e-13 * plain).all()), p
    tiny = torch.full((3, 4), 1e-200, dtype=torch.float64)
    sums = torch.stack([tiny.sum(1), (tiny * tiny).sum(1).sqrt(), tiny.amax(1)], 1)  # (the ℓ2 column is 0)
    low = Reference(tiny[:, 0], tiny[:, 0], tiny, torch.zeros_like(tiny), tiny, None, sums)
    assert float(sums[0, 1]) == 0.0
    assert torch.allclose(low.dual_norm(2.0), torch.full((3,), 2e-200, dtype=torch.float64), rtol=1e-12, atol=0.0)
