"""Orthogonal (Cayley) layers and nets: orthogonality, declared vs empirical Lipschitz, sound radii."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import asymcert
from asymcert.errors import ModelError
from asymcert.models import build_model
from asymcert.nn.orthogonal import CayleyConv2d, CayleyLinear, GroupSort, MaxMin, PixelUnshuffle, cayley, lipschitz_l2
from tests.certify.test_bound_propagation import pgd_min_score


@pytest.mark.parametrize("shape", [(10, 10), (40, 12), (12, 40), (1, 30), (30, 1)])
def test_cayley_linear_weights_are_orthogonal(shape):
    torch.manual_seed(0)
    out_f, in_f = shape
    layer = CayleyLinear(in_f, out_f)
    with torch.no_grad():
        layer.weight_param.mul_(5.0)  # far from the identity
    w = layer.weight
    gram = w.T @ w if out_f >= in_f else w @ w.T
    assert (gram - torch.eye(gram.shape[0])).abs().max() < 1e-5
    assert abs(layer.lipschitz(2) - 1.0) < 1e-5


def test_cayley_of_complex_matrices_is_unitary():
    torch.manual_seed(1)
    w = torch.randn(7, 6, 4, dtype=torch.complex128)
    q = cayley(w)
    eye = torch.eye(4, dtype=torch.complex128)
    assert (q.conj().transpose(-1, -2) @ q - eye).abs().max() < 1e-12


def test_cayley_conv_is_an_isometry_and_circular():
    torch.manual_seed(2)
    conv = CayleyConv2d(3, 6, 3, 10)
    x = torch.randn(5, 3, 10, 10)
    y = conv(x) - conv.bias.view(1, -1, 1, 1)
    ratio = y.flatten(1).norm(dim=1) / x.flatten(1).norm(dim=1)
    assert (ratio - 1).abs().max() < 1e-5
    q = conv.frequency_weights()
    gram = q.conj().transpose(-1, -2) @ q
    assert (gram - torch.eye(3, dtype=gram.dtype)).abs().max() < 1e-5
    # circular: translating the input translates the output
    y2 = conv(x.roll(3, dims=-1)) - conv.bias.view(1, -1, 1, 1)
    assert torch.allclose(y2, y.roll(3, dims=-1), atol=1e-5)
    # fewer output channels: non-expansive
    down = CayleyConv2d(6, 2, 3, 10)
    z = torch.randn(4, 6, 10, 10)
    out = down(z) - down.bias.view(1, -1, 1, 1)
    assert bool((out.flatten(1).norm(dim=1) <= z.flatten(1).norm(dim=1) * (1 + 1e-5)).all())
    assert abs(down.lipschitz(2) - 1.0) < 1e-5


def test_groupsort_and_space_to_depth_are_permutations():
    x = torch.randn(4, 6, 2, 2)
    for act in (MaxMin(), GroupSort(3)):
        y = act(x)
        assert torch.allclose(y.flatten(1).sort(dim=1).values, x.flatten(1).sort(dim=1).values)
    y = MaxMin()(x)
    assert bool((y[:, :3] >= y[:, 3:]).all())
    p = PixelUnshuffle(2)(torch.randn(2, 3, 4, 4))
    assert p.shape == (2, 12, 2, 2)


@pytest.mark.parametrize(
    "config", [{"arch": "mlp", "widths": [32, 16]}, {"arch": "cnn", "channels": [4, 8], "fc": [16], "kernel": 3}]
)
def test_declared_lipschitz_bounds_empirical_ratio(config):
    torch.manual_seed(3)
    model = build_model({"kind": "orthogonal", "input_shape": [1, 8, 8], **config})
    model.fit_input(torch.rand(20, 1, 8, 8))
    with torch.no_grad():
        for p in model.parameters():
            p.mul_(3.0)
    lip = model.lipschitz(2)
    assert 1.0 - 1e-5 < lip < 1.0 + 1e-5
    gen = torch.Generator().manual_seed(0)
    x = torch.rand(400, 1, 8, 8, generator=gen)
    xp = x + 0.3 * torch.randn(400, 1, 8, 8, generator=gen) * torch.rand(400, 1, 1, 1, generator=gen)
    with torch.no_grad():
        ratio = (model(x) - model(xp)).abs() / (x - xp).flatten(1).norm(dim=1)
    assert float(ratio.max()) <= lip * (1 + 1e-5)
    # the gradient norm (the local Lipschitz constant) is ≤ 1 too
    xg = x[:50].clone().requires_grad_(True)
    (g,) = torch.autograd.grad(model(xg).sum(), xg)
    assert float(g.flatten(1).norm(dim=1).max()) <= lip * (1 + 1e-4)
    d = 64
    assert model.lipschitz(1) == lip and model.lipschitz(math.inf) >= lip * math.sqrt(d)


def _orthogonal_model(seed: int = 4):
    torch.manual_seed(seed)
    model = build_model(
        {"kind": "orthogonal", "input_shape": [1, 8, 8], "arch": "mlp", "widths": [32, 32], "input_range": [0, 1]}
    )
    model.fit_input(torch.rand(32, 1, 8, 8))
    with torch.no_grad():
        model.net[-1].bias.fill_(0.3)
    return model


def test_certificate_is_the_score_and_norm_conversions():
    model = _orthogonal_model()
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(5))
    cert = asymcert.certify(model, x)  # model.certifier == "orthogonal", norms 1, 2, ∞
    with torch.no_grad():
        s = copy.deepcopy(model).double()(x.double())
    flagged = cert.predicted == 1
    assert 3 <= int(flagged.sum()) < 30
    r2 = cert.radii[2.0]
    assert bool((r2[~flagged] == 0).all())
    assert bool((r2[flagged] <= s[flagged]).all())
    # the absolute rounding allowance (float32 model, d = 64, ‖x − μ‖ ≈ 2) costs at most 5e-4 of ℓ2 radius
    assert bool((s[flagged] - r2[flagged] <= 5e-4 + 1e-6 * s[flagged]).all())
    assert torch.equal(cert.radii[1.0], r2)  # ‖δ‖2 ≤ ‖δ‖1: r1 = r2 is sound
    assert bool((cert.radii[math.inf] <= r2 / 8).all())  # r∞ = r2/√d, d = 64
    assert torch.allclose(cert.radii[math.inf], r2 / 8, rtol=1e-6)
    assert cert.deterministic and cert.alpha is None and cert.method == "orthogonal"


def test_orthogonal_radii_are_sound_under_attack():
    model = _orthogonal_model()
    m64 = copy.deepcopy(model).double()
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(6)).double()
    cert = asymcert.certify(model, x.float(), norms=(2, "inf"))
    for p in (2.0, math.inf):
        r = cert.radii[p]
        pos = r > 0
        assert int(pos.sum()) >= 3
        worst = pgd_min_score(m64, x[pos], r[pos] * (1 - 1e-9), p, steps=40, restarts=2)
        assert bool((worst > 0).all())


def test_orthogonal_model_round_trips(tmp_path):
    model = _orthogonal_model()
    asymcert.save(model, tmp_path)
    loaded = asymcert.load(tmp_path)
    x = torch.rand(5, 1, 8, 8)
    assert torch.equal(model(x), loaded(x))
    assert loaded.config() == model.config()
    with pytest.raises(ValueError, match="even"):
        build_model({"kind": "orthogonal", "input_shape": [4], "widths": [3]})


def test_orthogonal_recipe_learns_margins():
    from asymcert.data.tasks import Dataset, TaskData
    from asymcert.train import TrainConfig, fit

    def blobs(n, seed):
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=gen)
        x = 0.5 + (y.float()[:, None] - 0.5) * 1.5 * torch.ones(4) / 2 + 0.1 * torch.randn(n, 4, generator=gen)
        return Dataset(x, y)

    torch.manual_seed(0)
    model = build_model({"kind": "orthogonal", "input_shape": [4], "widths": [16, 16]})
    cfg = TrainConfig(
        epochs=8,
        batch_size=64,
        optimizer="adam",
        lr=1e-2,
        device="cpu",
        augment=False,
        extra={"margin": 0.3, "temperature": 8.0},
    )
    result = fit(
        model,
        TaskData(blobs(512, 0), blobs(256, 1), blobs(256, 2), ("other", "sensitive")),
        cfg,
        progress=False,
        log=lambda m: None,
    )
    assert result.best["val_accuracy"] > 0.95
    cert = asymcert.certify(model, blobs(256, 2).x, norms=(2,))
    sens = blobs(256, 2).y == 1
    # the classes are 1.5 apart in ℓ2: a 1-Lipschitz score certifies a good share of that
    assert float((cert.radii[2.0][sens] >= 0.3).double().mean()) > 0.8


def test_shared_attack_never_flips_inside_orthogonal_radii():
    attacks = pytest.importorskip("asymcert.certify.attacks")
    model = _orthogonal_model(7)
    x = torch.rand(30, 1, 8, 8, generator=torch.Generator().manual_seed(8))
    cert = asymcert.certify(model, x)
    for p, r in cert.radii.items():
        pos = r > 0
        assert int(pos.sum()) >= 3
        x_adv = attacks.pgd_attack(
            model, x[pos], r[pos] * (1 - 1e-4), p, steps=40, restarts=2, generator=torch.Generator().manual_seed(0)
        )
        assert not bool(attacks.decision_flips(model, x[pos], x_adv).any()), p


def test_lipschitz_l2_reads_nested_sequentials_and_refuses_subclasses_by_path():
    """Session 33 families review 2 and 5: an nn.Identity subclass computing 3·t counted as 1-Lipschitz, and a
    nested nn.Sequential raised a bare TypeError."""

    class Scale3(nn.Identity):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return 3.0 * t

    torch.manual_seed(0)
    layer = CayleyLinear(4, 4)
    assert lipschitz_l2(nn.Sequential(nn.Flatten(), nn.Sequential(layer, nn.Identity()))) >= layer.lipschitz(2)
    with pytest.raises(ModelError, match=r"^net\.1\.0: no ℓ2 Lipschitz constant known for Scale3$"):
        lipschitz_l2(nn.Sequential(layer, nn.Sequential(Scale3())), "net")
