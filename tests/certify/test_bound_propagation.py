"""IBP / CROWN-IBP / CROWN: bounds against brute force, tightness order, sound certified radii."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import asymcert
from asymcert.certify.bound_propagation import (
    UnsupportedNetworkError,
    crown_bounds,
    interval_bounds,
    score_lower_bound,
    verified_radius,
)
from asymcert.nn.feature_maps import Shift


def _project(delta: torch.Tensor, eps: torch.Tensor, p: float) -> torch.Tensor:
    flat = delta.flatten(1)
    if math.isinf(p):
        return torch.maximum(
            torch.minimum(delta, eps.view(-1, *[1] * (delta.dim() - 1))), -eps.view(-1, *[1] * (delta.dim() - 1))
        )
    norm = flat.norm(dim=1).clamp_min(1e-12)
    scale = torch.clamp(eps / norm, max=1.0)
    return delta * scale.view(-1, *[1] * (delta.dim() - 1))


def pgd_min_score(
    score_fn, x: torch.Tensor, eps: torch.Tensor, p: float, steps: int = 60, restarts: int = 3, seed: int = 0
) -> torch.Tensor:
    """Smallest score s(x + δ) found by batched PGD with ‖δ‖_p ≤ eps (p = 2 or ∞): (N,).

    Every returned value is the score of a point checked to lie inside the ball.
    """
    gen = torch.Generator().manual_seed(seed)
    best = score_fn(x).detach()
    e = eps.to(x.dtype)
    view = (-1, *[1] * (x.dim() - 1))
    for _ in range(restarts):
        delta = _project((torch.rand(x.shape, generator=gen, dtype=x.dtype) * 2 - 1) * e.view(view), e, p)
        for _ in range(steps):
            delta.requires_grad_(True)
            s = score_fn(x + delta)
            (g,) = torch.autograd.grad(s.sum(), delta)
            with torch.no_grad():
                if math.isinf(p):
                    step = -g.sign() * (e.view(view) / 8)
                else:
                    step = -g / g.flatten(1).norm(dim=1).clamp_min(1e-12).view(view) * (e.view(view) / 8)
                delta = _project(delta + step, e, p)
        with torch.no_grad():
            d = delta.detach()
            norms = d.flatten(1).abs().amax(1) if math.isinf(p) else d.flatten(1).norm(dim=1)
            assert bool((norms <= e * (1 + 1e-9) + 1e-12).all())
            best = torch.minimum(best, score_fn(x + d))
    return best


def _mlp(widths, d_in, seed, shift=True, dtype=torch.float64):
    torch.manual_seed(seed)
    layers = [Shift((d_in,))] if shift else []
    prev = d_in
    for w in widths:
        layers += [nn.Linear(prev, w), nn.ReLU()]
        prev = w
    layers.append(nn.Linear(prev, 1))
    net = nn.Sequential(*layers).to(dtype)
    if shift:
        net[0].mean.copy_(torch.rand(d_in, dtype=dtype))
    return net


def _cnn(seed, dtype=torch.float64):
    torch.manual_seed(seed)
    net = nn.Sequential(
        Shift((1, 8, 8)),
        nn.Conv2d(1, 4, 4, 2, 1),
        nn.ReLU(),
        nn.Conv2d(4, 6, 3, 1, 1),
        nn.ReLU(),
        nn.Flatten(),
        nn.Linear(96, 12),
        nn.ReLU(),
        nn.Linear(12, 2),
    ).to(dtype)
    net[0].mean.copy_(torch.rand(1, 8, 8, dtype=dtype))
    return net


def _ball_samples(x: torch.Tensor, eps: float, p: float, n: int, gen: torch.Generator) -> torch.Tensor:
    """n points of the ℓp ball around one input x (1, *shape): interior and boundary/vertices."""
    d = x[0].numel()
    if math.isinf(p):
        u = torch.rand(n, d, generator=gen, dtype=x.dtype) * 2 - 1
        u[: n // 2] = u[: n // 2].sign()  # vertices of the box
    elif p == 2:
        g = torch.randn(n, d, generator=gen, dtype=x.dtype)
        u = g / g.norm(dim=1, keepdim=True) * torch.rand(n, 1, generator=gen, dtype=x.dtype).pow(1 / d)
    else:
        e = -torch.log(torch.rand(n, d, generator=gen, dtype=x.dtype))
        u = e / e.sum(1, keepdim=True) * torch.sign(torch.randn(n, d, generator=gen, dtype=x.dtype))
        u[: n // 2] = 0  # vertices ±e_i of the ℓ1 ball
        idx = torch.randint(0, d, (n // 2,), generator=gen)
        u[torch.arange(n // 2), idx] = torch.sign(torch.randn(n // 2, generator=gen, dtype=x.dtype))
    return x + eps * u.reshape(n, *x.shape[1:])


@pytest.mark.parametrize("p,eps", [(math.inf, 0.08), (2.0, 0.5), (1.0, 1.5)])
@pytest.mark.parametrize("kind", ["mlp", "cnn"])
def test_bounds_contain_sampled_outputs(kind, p, eps):
    net = _mlp([12, 8], 10, 1) if kind == "mlp" else _cnn(2)
    shape = (10,) if kind == "mlp" else (1, 8, 8)
    gen = torch.Generator().manual_seed(3)
    x = torch.rand(4, *shape, generator=gen, dtype=torch.float64)
    bounds = {
        "ibp": interval_bounds(net, x, eps, p),
        "crown-ibp": crown_bounds(net, x, eps, p),
        "crown": crown_bounds(net, x, eps, p, intermediate="crown"),
    }
    for i in range(len(x)):
        with torch.no_grad():
            out = net(_ball_samples(x[i : i + 1], eps, p, 3000, gen))
            out = torch.cat([out, net(x[i : i + 1])])
        for name, (lo, hi) in bounds.items():
            assert bool((out >= lo[i] - 1e-10).all()), name
            assert bool((out <= hi[i] + 1e-10).all()), name
    # CROWN's intermediate bounds are intersected with IBP's: full CROWN is never looser than IBP
    width = {k: (h - l).detach() for k, (l, h) in bounds.items()}
    assert float(width["crown"].mean()) <= float(width["ibp"].mean())


def test_bounds_hold_against_pgd_extremes():
    net = _mlp([16, 16], 6, 4)
    x = torch.rand(8, 6, generator=torch.Generator().manual_seed(0), dtype=torch.float64)
    eps = torch.full((8,), 0.2, dtype=torch.float64)
    for p in (math.inf, 2.0):
        worst = pgd_min_score(lambda z: net(z)[:, 0], x, eps, p)
        for method in ("ibp", "crown-ibp", "crown"):
            lb = score_lower_bound(net, x, eps, p, method)
            assert bool((lb <= worst + 1e-10).all()), (p, method)


def test_exact_on_affine_networks():
    torch.manual_seed(0)
    net = nn.Sequential(Shift((5,)), nn.Linear(5, 7), nn.Linear(7, 1)).double()
    x = torch.rand(3, 5, dtype=torch.float64)
    w = (net[2].weight @ net[1].weight)[0]
    centre = net(x)[:, 0]
    for p, q in ((math.inf, 1.0), (2.0, 2.0), (1.0, math.inf)):
        lo, hi = crown_bounds(net, x, 0.3, p)
        slack = 0.3 * torch.linalg.vector_norm(w, ord=q)
        assert torch.allclose(lo[:, 0], centre - slack, atol=1e-12)
        assert torch.allclose(hi[:, 0], centre + slack, atol=1e-12)
        # one affine layer after the input: IBP is exact too
        lo1, hi1 = interval_bounds(net[:2], x, 0.3, p)
        assert torch.allclose(hi1 - lo1, 2 * 0.3 * torch.linalg.vector_norm(net[1].weight, ord=q, dim=1).expand(3, 7))


@pytest.mark.parametrize("seed", range(6))
def test_crown_within_ibp_on_one_hidden_layer(seed):
    net = _mlp([20], 8, seed, shift=False)
    x = torch.rand(16, 8, generator=torch.Generator().manual_seed(seed), dtype=torch.float64)
    for p, eps in ((math.inf, 0.1), (2.0, 0.3)):
        li, ui = interval_bounds(net, x, eps, p)
        # with the zero lower slope the CROWN relaxation of every neuron is at least as tight as IBP's
        lc, uc = crown_bounds(net, x, eps, p, lower_slope="zero")
        assert bool((lc >= li - 1e-12).all()) and bool((uc <= ui + 1e-12).all())
        # the adaptive slope (default) is tighter on average
        la, ua = crown_bounds(net, x, eps, p)
        assert float((ua - la).mean().detach()) <= float((ui - li).mean().detach())


def test_verified_radius_reports_only_verified_values():
    truth = torch.tensor([0.0, 1e-4, 0.3, 0.9999, 5.0], dtype=torch.float64)
    calls = []

    def verify(idx, eps):
        calls.append(eps.clone())
        return eps < truth[idx]  # strict: at the true radius itself verification fails

    r = verified_radius(verify, len(truth), start=1 / 1024, max_radius=1.0, steps=14)
    assert bool((r < truth).sum() == 4) and r[4] == 1.0  # capped at max_radius (verified there)
    assert r[0] == 0 and bool((r[1:4] > truth[1:4] * (1 - 2**-13)).all())
    assert bool((r <= truth).all())


@pytest.mark.parametrize("arch,methods", [("cnn", ("ibp", "crown-ibp")), ("mlp", ("ibp", "crown-ibp", "crown"))])
def test_certified_radii_are_sound_under_attack(arch, methods):
    torch.manual_seed(0)
    from asymcert.models import build_model

    shape = [1, 8, 8] if arch == "cnn" else [6]
    model = build_model(
        {
            "kind": "relu-ibp",
            "input_shape": shape,
            "arch": arch,
            "channels": [4, 8],
            "fc": [16],
            "widths": [16, 16],
            "input_range": [0, 1],
        }
    )
    model.fit_input(torch.rand(32, *shape))
    with torch.no_grad():
        model.net[-1].bias.fill_(0.5 if arch == "cnn" else 0.1)
    x = torch.rand(16, *shape, generator=torch.Generator().manual_seed(1))
    m64 = copy.deepcopy(model).double()
    radii = {}
    for method in methods:
        cert = asymcert.certify(model, x, norms=(2, "inf"), method=method)
        assert cert.deterministic and cert.method == method
        flagged = cert.predicted == 1
        assert int(flagged.sum()) >= 4
        for p in (2.0, math.inf):
            r = cert.radii[p]
            assert bool((r[~flagged] == 0).all())
            pos = flagged & (r > 0)
            assert int(pos.sum()) >= 3
            worst = pgd_min_score(m64, x[pos].double(), r[pos] * (1 - 1e-9), p, steps=30, restarts=2)
            assert bool((worst > 0).all()), (method, p)
            # the bound itself holds at the reported radius
            assert bool((score_lower_bound(m64, x[pos].double(), r[pos], p, method) > 0).all())
        radii[method] = cert.radii[math.inf]
    # CROWN-IBP / CROWN take the better of their bound and IBP's at every ε: never smaller radii
    for method in methods[1:]:
        assert bool((radii[method] >= radii["ibp"] * (1 - 2**-11)).all())


def test_attack_finds_flips_beyond_the_radius_sometimes():
    """The attack used above is not toothless: well past the certified radius it flips decisions."""
    net = _mlp([16], 6, 7, dtype=torch.float32)
    model = nn.Sequential(*net)
    x = torch.rand(40, 6, generator=torch.Generator().manual_seed(2))
    cert = asymcert.certify(model, x, norms=("inf",), method="crown")
    pos = (cert.predicted == 1) & (cert.radii[math.inf] > 0)
    r = cert.radii[math.inf][pos].float()
    worst = pgd_min_score(lambda z: model(z)[:, 0], x[pos], 4 * r + 0.05, math.inf)
    assert bool((worst <= 0).any())


def test_rejects_unsupported_layers_and_multi_output():
    net = nn.Sequential(nn.Linear(3, 4), nn.Tanh(), nn.Linear(4, 1))
    with pytest.raises(UnsupportedNetworkError, match="Tanh"):
        interval_bounds(net, torch.rand(2, 3), 0.1)
    with pytest.raises(UnsupportedNetworkError, match="single"):
        asymcert.certify(nn.Sequential(nn.Linear(3, 2)), torch.rand(2, 3), method="ibp")


def test_relu_ibp_model_round_trips_and_certifies_by_default(tmp_path):
    from asymcert.models import build_model

    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "relu-ibp",
            "input_shape": [5],
            "widths": [8],
            "input_range": None,
            "convex": {"ignored": "keys of another family"},
        }
    )
    asymcert.save(model, tmp_path)
    loaded = asymcert.load(tmp_path)
    assert loaded.config() == model.config() and loaded.certifier == "crown-ibp"
    x = torch.randn(6, 5)
    a, b = asymcert.certify(model, x), asymcert.certify(loaded, x)
    assert torch.equal(a.predicted, b.predicted)
    for p in a.radii:
        assert torch.equal(a.radii[p], b.radii[p])


def _blobs(n: int, seed: int, d: int = 4, gap: float = 1.0):
    from asymcert.data.tasks import Dataset

    gen = torch.Generator().manual_seed(seed)
    y = torch.randint(0, 2, (n,), generator=gen)
    x = 0.5 + (y.float()[:, None] - 0.5) * gap * torch.ones(d) / math.sqrt(d) + 0.15 * torch.randn(n, d, generator=gen)
    return Dataset(x, y)


def test_ibp_recipe_ramps_eps_and_trains_a_certifiable_net():
    from asymcert.data.tasks import TaskData
    from asymcert.models import build_model
    from asymcert.train import TrainConfig, fit
    from asymcert.train.baseline_recipes import BoundPropagationRecipe

    cfg = TrainConfig(
        epochs=12,
        batch_size=64,
        optimizer="adam",
        lr=5e-3,
        device="cpu",
        augment=False,
        extra={"eps": 0.1, "norm": "inf", "bound": "crown-ibp", "warmup": 0.2, "ramp_end": 0.5},
    )
    recipe = BoundPropagationRecipe(cfg)
    assert recipe.ramp(0.1) == 0.0 and recipe.ramp(0.35) == pytest.approx(0.5) and recipe.ramp(0.9) == 1.0
    data = TaskData(_blobs(512, 0), _blobs(256, 1), _blobs(256, 2), class_names=("other", "sensitive"))
    torch.manual_seed(0)
    model = build_model({"kind": "relu-ibp", "input_shape": [4], "widths": [32, 32]})
    result = fit(model, data, cfg, progress=False, log=lambda m: None)
    assert result.history[0]["eps"] < 0.1 and result.history[-1]["eps"] == pytest.approx(0.1)
    assert result.best["val_verified_sensitive"] > 0.8
    cert = asymcert.certify(model, data.test.x, norms=("inf",))
    sens = data.test.y == 1
    assert float((cert.radii[math.inf][sens] >= 0.1).double().mean()) > 0.8


def test_shared_attack_never_flips_inside_bound_propagation_radii():
    attacks = pytest.importorskip("asymcert.certify.attacks")
    from asymcert.models import build_model

    torch.manual_seed(5)
    model = build_model(
        {
            "kind": "relu-ibp",
            "input_shape": [1, 8, 8],
            "arch": "cnn",
            "channels": [4, 8],
            "fc": [16],
            "input_range": [0, 1],
        }
    )
    model.fit_input(torch.rand(32, 1, 8, 8))
    with torch.no_grad():
        model.net[-1].bias.fill_(0.5)
    x = torch.rand(16, 1, 8, 8, generator=torch.Generator().manual_seed(2))
    for method in ("ibp", "crown-ibp"):
        cert = asymcert.certify(model, x, norms=(1, 2, "inf"), method=method)
        for p, r in cert.radii.items():
            pos = r > 0
            assert int(pos.sum()) >= 3
            # a little below the radius: the float64 certificate vs the float32 model's rounding
            x_adv = attacks.pgd_attack(
                model, x[pos], r[pos] * (1 - 1e-4), p, steps=40, restarts=2, generator=torch.Generator().manual_seed(0)
            )
            assert not bool(attacks.decision_flips(model, x[pos], x_adv).any()), (method, p)
