"""Randomized smoothing: closed-form checks on linear base classifiers, abstention, seeding, and the
deterministic splitting-noise certificate."""

from __future__ import annotations

import math

import pytest
import torch
from scipy.stats import norm
from torch import nn

import asymcert
from asymcert.certify.smoothing import (
    clopper_pearson_lower,
    radius_from_probability,
    sample_counts,
    splitting_probabilities,
)
from asymcert.models import build_model


class LinearScore(nn.Module):
    """s(x) = w·x + c on flattened inputs: (N, *shape) → (N,)."""

    def __init__(self, w: torch.Tensor, c: float) -> None:
        super().__init__()
        self.w = nn.Parameter(w.clone())
        self.c = nn.Parameter(torch.tensor(float(c)))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x.flatten(1) @ self.w + self.c


def _linear_inputs(w: torch.Tensor, c: float, margins: torch.Tensor, seed: int = 0) -> torch.Tensor:
    """Inputs whose signed distance to the hyperplane w·x + c = 0 is exactly ``margins``."""
    gen = torch.Generator().manual_seed(seed)
    base = torch.randn(len(margins), len(w), generator=gen, dtype=torch.float64)
    unit = w.double() / w.double().norm()
    base = base - ((base @ w.double() + c) / w.double().norm())[:, None] * unit  # onto the plane
    return (base + margins.double()[:, None] * unit).float()


def test_clopper_pearson_lower_bound():
    k = torch.tensor([0, 50, 100, 100])
    lo = clopper_pearson_lower(k, 100, 0.001)
    assert lo[0] == 0 and 0.3 < lo[1] < 0.5
    assert math.isclose(float(lo[2]), 0.001 ** (1 / 100), rel_tol=1e-9)  # k = n: α^(1/n)
    assert bool((lo[1:] <= k[1:] / 100).all())


def test_gaussian_radius_matches_the_closed_form_of_a_linear_classifier():
    torch.manual_seed(0)
    d, sigma, c = 10, 0.5, 0.2
    w = torch.randn(d)
    margins = torch.tensor([0.1, 0.25, 0.4, 0.6, 0.8, 1.0, -0.3, -0.8])  # signed exact distances
    x = _linear_inputs(w, c, margins)
    model = LinearScore(w, c)
    cert = asymcert.certify(
        model,
        x,
        norms=(2, "inf", 1),
        method="smoothing-gaussian",
        sigma=sigma,
        n0=100,
        n=100_000,
        alpha=0.001,
        generator=torch.Generator().manual_seed(1),
        batch=200_000,
    )
    assert not cert.deterministic and cert.alpha == 0.001 and cert.method == "smoothing-gaussian"
    p_true = torch.from_numpy(norm.cdf(margins.double().numpy() / sigma))
    sens = margins > 0
    assert torch.equal(cert.predicted, sens.long())
    p_lower = cert.extra["p_lower"].double()
    assert bool((p_lower[sens] <= p_true[sens]).all())
    r2 = cert.radii[2.0]
    expected = sigma * torch.from_numpy(norm.ppf(p_lower[sens].numpy()))
    assert torch.allclose(r2[sens], expected, rtol=1e-9, atol=1e-12)  # σΦ⁻¹(p_lower), rounded down
    assert bool((r2[sens] <= expected).all())
    exact = margins.double()[sens]
    assert bool((r2[sens] < exact).all())  # below the exact radius |w·x + c| / ‖w‖
    assert bool((r2[sens] > exact - 0.03).all())  # and close to it with n = 100,000
    assert bool((r2[~sens] == 0).all())  # asymmetric: no radius for the other class
    assert not bool(cert.abstained.any())
    assert torch.allclose(cert.radii[math.inf], r2 / math.sqrt(d), rtol=1e-9)
    assert torch.equal(cert.radii[1.0], r2)


def test_abstains_where_the_smoothed_probability_is_near_one_half():
    torch.manual_seed(1)
    w = torch.randn(6)
    x = _linear_inputs(w, 0.0, torch.tensor([0.0, 0.0, 0.0, 1e-4, 1.0]))
    cert = asymcert.certify(
        LinearScore(w, 0.0), x, norms=(2,), method="smoothing-gaussian", sigma=0.5, n0=100, n=2000, seed=3
    )
    assert bool(cert.abstained[:4].all()) and not bool(cert.abstained[4])
    assert bool((cert.radii[2.0][:4] == 0).all()) and float(cert.radii[2.0][4]) > 0


def test_same_seed_same_certificate():
    torch.manual_seed(2)
    w = torch.randn(8)
    x = _linear_inputs(w, 0.1, torch.linspace(-0.2, 0.5, 6))

    def run(seed):
        return asymcert.certify(
            LinearScore(w, 0.1),
            x,
            method="smoothing-gaussian",
            sigma=0.4,
            n0=50,
            n=3000,
            generator=torch.Generator().manual_seed(seed),
            batch=1000,
        )

    a, b, other = run(7), run(7), run(8)
    assert torch.equal(a.predicted, b.predicted) and torch.equal(a.extra["count"], b.extra["count"])
    for p in a.radii:
        assert torch.equal(a.radii[p], b.radii[p])
    assert not torch.equal(a.extra["count"], other.extra["count"])


def test_batched_sampling_counts_every_sample_once():
    model = LinearScore(torch.ones(3), 0.0)
    x = torch.tensor([[5.0, 5.0, 5.0], [-5.0, -5.0, -5.0], [0.0, 0.0, 0.0]])
    counts = sample_counts(model, x, 777, "gaussian", 0.1, torch.Generator().manual_seed(0), 2, batch=100)
    assert counts.sum(1).tolist() == [777, 777, 777]
    assert counts[0].tolist() == [0, 777] and counts[1].tolist() == [777, 0]


@pytest.mark.parametrize("noise,method", [("laplace", "smoothing-laplace"), ("uniform", "smoothing-uniform")])
def test_l1_radius_of_a_one_dimensional_threshold_is_nearly_exact(noise, method):
    # base(x) = [x > 0.3]: in one dimension the ℓ1 bound of both noises is tight, radius = x − 0.3
    model = LinearScore(torch.ones(1), -0.3)
    sigma = 0.5
    x = torch.tensor([[0.35], [0.5], [0.8], [1.0], [0.0]])
    cert = asymcert.certify(
        model, x, norms=(1, 2, "inf"), method=method, sigma=sigma, n0=100, n=100_000, seed=4, batch=200_000
    )
    exact = (x[:4, 0] - 0.3).double()
    r1 = cert.radii[1.0][:4]
    assert bool((r1 < exact).all()) and bool((r1 > exact - 0.03).all())
    assert cert.radii[1.0][4] == 0 and cert.predicted[4] == 0
    assert torch.equal(cert.radii[1.0], cert.radii[2.0])  # d = 1
    base, r = radius_from_probability(cert.extra["p_lower"].double(), noise, sigma)
    assert base == 1.0 and torch.allclose(r[:4], r1, rtol=1e-9)


def _quantized(n, shape, seed):
    return torch.randint(0, 256, (n, *shape), generator=torch.Generator().manual_seed(seed)).float() / 255


def _small_net(seed, d=12):
    torch.manual_seed(seed)
    return nn.Sequential(nn.Flatten(), nn.Linear(d, 16), nn.ReLU(), nn.Linear(16, 1), nn.Flatten(0))


def test_splitting_probability_is_the_exact_average_over_offsets():
    net = _small_net(0)
    x = _quantized(6, (12,), 0)
    with torch.no_grad():  # centre the scores on these inputs so that the offsets split some decisions
        net[3].bias -= net(x).median()
    lam = 0.4 * math.sqrt(3)  # 2λ < 1: inputs wrap around the grid
    probs = splitting_probabilities(net, x, lam, 2)
    exact = probs[:, 1]
    counts = sample_counts(net, x, 40_000, "splitting", 0.4, torch.Generator().manual_seed(1), 2, batch=80_000)
    mc = counts[:, 1].double() / 40_000
    assert torch.allclose(exact, mc, atol=0.012)
    # the offset cells' weights add up to one for every input: the class probabilities are a distribution
    torch.testing.assert_close(probs.sum(dim=1), torch.ones(len(x), dtype=torch.float64), rtol=0, atol=1e-12)
    assert bool(((exact > 0.05) & (exact < 0.95)).any())  # some inputs are not decided by every offset


def test_splitting_probability_is_lipschitz_in_l1_and_certificates_hold():
    net = _small_net(1)
    sigma = 0.3
    lam = sigma * math.sqrt(3)
    x = _quantized(40, (12,), 2)
    gen = torch.Generator().manual_seed(3)
    xp = (x + (torch.rand(x.shape, generator=gen) - 0.5) * 0.3 * (torch.rand(x.shape, generator=gen) < 0.3)).clamp(0, 1)
    p, pp = (splitting_probabilities(net, z, lam, 2)[:, 1] for z in (x, xp))
    dist = (x - xp).double().abs().sum(1)
    assert bool(((p - pp).abs() <= dist / (2 * lam) + 1e-9).all())
    cert = asymcert.certify(net, x, norms=(1, 2, "inf"), method="smoothing-splitting", sigma=sigma)
    assert cert.deterministic and cert.alpha is None
    r1 = cert.radii[1.0]
    sens = (cert.predicted == 1) & (r1 > 0)
    assert int(sens.sum()) >= 3
    # any perturbation strictly inside the ℓ1 radius keeps the (exact) smoothed decision
    for _ in range(3):
        delta = torch.randn(x.shape, generator=gen, dtype=torch.float64)
        delta = delta / delta.abs().sum(1, keepdim=True) * r1[:, None] * (1 - 1e-6)
        moved = asymcert.certify(
            net, (x.double() + delta)[sens].float(), norms=(1,), method="smoothing-splitting", sigma=sigma
        )
        assert bool((moved.predicted == 1).all())
        assert bool((moved.extra["probability"] > 0.5).all())
    assert torch.allclose(cert.radii[math.inf], r1 / 12, rtol=1e-9)
    assert torch.allclose(cert.radii[2.0], r1 / math.sqrt(12), rtol=1e-9)


def test_model_defaults_and_multiclass_base_models(tmp_path):
    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "relu-smoothing",
            "input_shape": [1, 4, 4],
            "widths": [8],
            "smoothing": {"noise": "laplace", "sigma": 0.3, "n0": 20, "n": 200, "alpha": 0.01},
        }
    )
    assert model.certifier == "smoothing-laplace"
    asymcert.save(model, tmp_path)
    loaded = asymcert.load(tmp_path)
    assert loaded.smoothing == model.smoothing
    x = torch.rand(5, 1, 4, 4)
    cert = asymcert.certify(loaded, x)
    assert cert.method == "smoothing-laplace" and cert.alpha == 0.01 and cert.binary
    assert int(cert.extra["count"].max()) <= 200
    multi = nn.Sequential(nn.Flatten(), nn.Linear(16, 3))
    cert = asymcert.certify(multi, x, norms=(2,), method="smoothing-gaussian", n0=20, n=300, sigma=0.2)
    assert not cert.binary and set(cert.predicted.tolist()) <= {0, 1, 2}
    with pytest.raises(asymcert.InputError, match=r"has no option .sigmaa."):
        asymcert.certify(multi, x, method="smoothing-gaussian", sigmaa=0.2)


def test_noise_recipe_trains_on_noisy_inputs():
    from asymcert.data.tasks import Dataset, TaskData
    from asymcert.train import TrainConfig, fit

    def blobs(n, seed):
        gen = torch.Generator().manual_seed(seed)
        y = torch.randint(0, 2, (n,), generator=gen)
        x = 0.5 + (y.float()[:, None] - 0.5) * 2.0 * torch.ones(4) / 2 + 0.1 * torch.randn(n, 4, generator=gen)
        return Dataset(x, y)

    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "relu-smoothing",
            "input_shape": [4],
            "widths": [16],
            "smoothing": {"noise": "gaussian", "sigma": 0.25, "n0": 50, "n": 500},
        }
    )
    cfg = TrainConfig(epochs=6, batch_size=64, optimizer="adam", lr=1e-2, device="cpu", augment=False, seed=3)
    result = fit(
        model,
        TaskData(blobs(512, 0), blobs(256, 1), blobs(256, 2), ("other", "sensitive")),
        cfg,
        progress=False,
        log=lambda m: None,
    )
    assert result.best["val_noisy_accuracy"] > 0.9
    test = blobs(64, 2)
    cert = asymcert.certify(model, test.x, norms=(2,))
    sens = test.y == 1
    assert float((cert.radii[2.0][sens] > 0.1).double().mean()) > 0.8
