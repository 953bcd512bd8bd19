"""ℓ∞-dist nets: model contract, certificate soundness (PGD), Lipschitz bound, +MLP IBP, p and λ
schedules, loss values, recipe, save/load, run folders, and MeanShift under torch.distributed."""

from __future__ import annotations

import json
import math
import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from click.testing import CliRunner

import asymcert
from asymcert.certify.linf_dist import bisect_radius, head_verified, normalized_radii, top2_margin
from asymcert.data.tasks import Dataset, TaskData
from asymcert.errors import ModelError
from asymcert.families import get_family
from asymcert.models import build_model
from asymcert.models.linf_dist_net import LinfDistNet
from asymcert.nn.linf_dist import LinfDist
from asymcert.train import TrainConfig, fit
from asymcert.train.linf_recipe import LINF_TRAIN_DEFAULTS, LinfDistRecipe, growth_ratio, mixture_loss, p_schedule
from tests.conftest import HOOK_KINDS, tamper_layer

INF = math.inf
SHAPE = (1, 8, 8)


def _toy_data(n: int, seed: int, classes: int = 4) -> Dataset:
    """Images (n, 1, 8, 8) in [0, 1]: class k has a bright k-th quadrant; labels (n,)."""
    g = torch.Generator().manual_seed(seed)
    y = torch.randint(0, classes, (n,), generator=g)
    x = torch.rand(n, *SHAPE, generator=g) * 0.4
    for k in range(classes):
        r, c = divmod(k, 2)
        x[y == k, 0, 4 * r : 4 * r + 4, 4 * c : 4 * c + 4] += 0.5
    return Dataset(x.clamp(0, 1), y)


def _train(
    config: dict, epochs: int = 8, n: int = 512, seed: int = 0, classes: int = 4, labels=None
) -> torch.nn.Module:
    torch.manual_seed(seed)
    model = build_model({"kind": "linf-dist", "input_shape": list(SHAPE), "input_range": [0, 1], **config})
    train, val = _toy_data(n, seed, classes), _toy_data(256, seed + 1, classes)
    if labels is not None:
        train, val = Dataset(train.x, labels(train.y)), Dataset(val.x, labels(val.y))
    data = TaskData(train, val, val, class_names=tuple(str(i) for i in range(int(train.y.max()) + 1)))
    cfg = TrainConfig.from_dict(
        {
            **LINF_TRAIN_DEFAULTS,
            "epochs": epochs,
            "batch_size": 64,
            "device": "cpu",
            "extra": {**LINF_TRAIN_DEFAULTS["extra"], "eps_eval": 0.05, "eps_train": 0.1},
        }
    )
    fit(model, data, cfg, progress=False, log=lambda m: None)
    return model


@pytest.fixture(scope="module")
def plain_net():
    return _train({"widths": [48, 48], "num_classes": 4})


@pytest.fixture(scope="module")
def mlp_net():
    return _train({"widths": [48, 48], "num_classes": 4, "mlp_head": 24})


def _pgd_flips(model, x, cls, eps, steps=100, seed=0):
    """Batched ℓ∞ PGD (CE, random start, step eps/4, eps per input (N,)); True where some iterate flips."""
    g = torch.Generator().manual_seed(seed)
    e = eps.float().view(-1, *[1] * (x.dim() - 1))
    xa = x + (torch.rand(x.shape, generator=g) * 2 - 1) * e
    flipped = torch.zeros(len(x), dtype=torch.bool)
    for _ in range(steps):
        xa.requires_grad_(True)
        logits = model.logits(xa)
        flipped |= logits.argmax(1).detach() != cls
        (grad,) = torch.autograd.grad(F.cross_entropy(logits, cls, reduction="sum"), xa)
        xa = torch.minimum(torch.maximum(xa.detach() + e / 4 * grad.sign(), x - e), x + e)
    with torch.no_grad():
        flipped |= model.logits(xa).argmax(1) != cls
    return flipped


# ------------------------------------------------------------------ schedules and loss


def test_p_schedule_values():
    ph = (0.1, 0.9)
    assert p_schedule(0.0, 8, 1000, ph) == 8.0
    assert p_schedule(0.1, 8, 1000, ph) == 8.0
    assert p_schedule(0.5, 8, 1000, ph) == pytest.approx(8 * 125**0.5)
    assert p_schedule(0.3, 8, 1000, ph) == pytest.approx(8 * 125**0.25)
    assert p_schedule(0.9 - 1e-9, 8, 1000, ph) == pytest.approx(1000, rel=1e-6)
    assert p_schedule(0.9, 8, 1000, ph) == INF and p_schedule(1.0, 8, 1000, ph) == INF
    assert p_schedule(1.0, 8, 50, ph) == 50.0  # small p_end: no jump to ∞ (as in the authors' code)
    assert growth_ratio(0.5, (0.6, 0.6)) == 1.0
    # the defaults are the MNIST fractions 25/450 and 400/450
    assert p_schedule(24 / 450) == 8.0 and p_schedule(400 / 450) == INF


def test_recipe_sets_p_and_lambda_per_iteration():
    cfg = TrainConfig.from_dict(
        {**LINF_TRAIN_DEFAULTS, "extra": {"lambda": [0.1, 0.001], "p_phases": [0.2, 0.6], "eps_train": 0.2}}
    )
    r = LinfDistRecipe(cfg)
    assert r.lambda_at(0.0) == pytest.approx(0.1) and r.lambda_at(0.4) == pytest.approx(0.01)
    assert r.lambda_at(0.9) == pytest.approx(0.001)
    model = build_model({"kind": "linf-dist", "input_shape": [4], "widths": [6, 5], "num_classes": 3})
    r.prepare(model, Dataset(torch.rand(20, 4), torch.randint(0, 3, (20,))))
    assert all(layer.p == 8.0 for layer in model.distance_layers())
    _, stats = r.loss(model, torch.rand(8, 4), torch.randint(0, 3, (8,)), 0.4)
    assert all(layer.p == pytest.approx(8 * 125**0.5) for layer in model.distance_layers())
    assert stats["lambda"] == pytest.approx(0.01)
    r.loss(model, torch.rand(8, 4), torch.randint(0, 3, (8,)), 0.7)
    assert model.p == INF and all(layer.p == INF for layer in model.distance_layers())
    assert LinfDistRecipe(TrainConfig.from_dict({"extra": {"eps_eval": 0.05}})).eps_train == pytest.approx(0.15)


def test_loss_values_on_hand_made_logits():
    logits = torch.tensor(
        [
            [0.0, 1.0, -1.0],  # wrong by 1: hinge saturates at 1
            [2.0, 1.0, 0.0],  # right by 1, θ = 2: clip(−1/2 + 1) = 0.5
            [5.0, 0.0, 1.0],
        ]
    )  # right by 4 ≥ θ: 0
    y = torch.tensor([0, 0, 0])
    loss, hinge, ce = mixture_loss(logits, y, theta=2.0, lam=0.1, scale=2.0)
    assert hinge.item() == pytest.approx((1.0 + 0.5 + 0.0) / 3)
    expected_ce = sum(-(2 * l[0] - torch.logsumexp(2 * l, 0)).item() for l in logits) / 3
    assert ce.item() == pytest.approx(expected_ce, rel=1e-6)
    assert loss.item() == pytest.approx(hinge.item() + 0.1 * expected_ce, rel=1e-6)
    # per-input weights (binary "sensitive" robustness: only y = 1 carries the hinge)
    _, h2, _ = mixture_loss(logits, y, 2.0, 0.1, 2.0, weights=torch.tensor([0.0, 1.0, 1.0]))
    assert h2.item() == pytest.approx(0.5 / 3)
    # explicit upper gaps (the +MLP form): clip(max_{j≠y} ub_j / θ, 0, 1)
    ub = torch.tensor([[9.0, 0.5, -1.0]])
    _, h3, _ = mixture_loss(logits[:1], y[:1], 2.0, 0.0, 1.0, upper_gaps=ub)
    assert h3.item() == pytest.approx(0.25)
    # the learned scale gets a gradient
    s = torch.tensor(1.5, requires_grad=True)
    mixture_loss(logits, y, 2.0, 0.1, s)[0].backward()
    assert s.grad is not None and s.grad.abs() > 0


def test_asymmetric_gaps_keep_a_clean_margin_for_non_sensitive_inputs():
    recipe = LinfDistRecipe(TrainConfig.from_dict({**LINF_TRAIN_DEFAULTS, "device": "cpu"}))
    logits = torch.tensor([[0.0, 3.0], [0.0, -0.1], [1.0, 0.5], [0.0, 0.5]])
    y = torch.tensor([0, 0, 1, 1])
    gaps = recipe.asymmetric_gaps(logits, y, theta=2.0, robust=None)
    # y = 0: nominal gap g1 − g0 plus 0.1·θ; y = 1: g0 − g1 plus θ (the plain net's robust bound)
    torch.testing.assert_close(gaps[:, 1][:2], torch.tensor([3.2, 0.1]))
    torch.testing.assert_close(gaps[:, 0][2:], torch.tensor([2.5, 1.5]))
    _, hinge, _ = mixture_loss(logits, y, 2.0, 0.0, 1.0, upper_gaps=gaps)
    # clip(·/θ, 0, 1): 1, 0.05 (non-sensitive) and 1, 0.75 (sensitive)
    assert hinge.item() == pytest.approx((1.0 + 0.05 + 1.0 + 0.75) / 4)
    # "flag everything" is not free: every non-sensitive input flagged by a clear margin costs a full hinge
    flag_all = torch.tensor([[0.0, 5.0]] * 4)
    _, h_all, _ = mixture_loss(flag_all, y, 2.0, 0.0, 1.0, upper_gaps=recipe.asymmetric_gaps(flag_all, y, 2.0, None))
    assert h_all.item() == pytest.approx(0.5)
    with pytest.raises(ValueError, match="clean_margin"):
        LinfDistRecipe(TrainConfig.from_dict({**LINF_TRAIN_DEFAULTS, "extra": {"clean_margin": -1}}))


# ------------------------------------------------------------------ model contract


def test_model_shapes_normalisation_and_config():
    m = build_model(
        {
            "kind": "linf-dist",
            "input_shape": [3, 4, 4],
            "widths": [20, 12],
            "num_classes": 5,
            "feature_map": [{"kind": "shift"}],
        }
    )  # keys of other families are ignored
    assert m.config() == {
        "kind": "linf-dist",
        "input_shape": [3, 4, 4],
        "input_range": None,
        "widths": [20, 12],
        "num_classes": 5,
        "mlp_head": None,
        "identity_init": True,
        "binary": False,
    }
    assert m.certifier == "linf-dist" and len(m.distance_layers()) == 3
    # identity init where in ≤ out (48 → 20 is not, 20 → 12 is not; build one that is)
    m2 = build_model({"kind": "linf-dist", "input_shape": [6], "widths": [8, 8], "num_classes": 3})
    assert torch.all(m2.dist[1].weight[torch.arange(8), torch.arange(8)] == -10.0)
    assert torch.all(m2.dist[0].weight[torch.arange(8), torch.arange(8) % 6] == -10.0)
    x = torch.rand(50, 3, 4, 4) * torch.tensor([1.0, 2.0, 3.0]).view(1, 3, 1, 1)
    m.fit_input(x)
    torch.testing.assert_close(m.input_mean, x.mean((0, 2, 3)))
    expected_std = x.transpose(0, 1).reshape(3, -1).var(1, unbiased=False).mean().sqrt()
    assert m.std == pytest.approx(float(expected_std), rel=1e-5)
    assert m(x).shape == (50, 5) and m.logits(x).shape == (50, 5)
    assert get_family("linf-dist").default_model_config()["kind"] == "linf-dist"
    with pytest.raises(ValueError, match="binary"):
        build_model({"kind": "linf-dist", "input_shape": [4], "widths": [4], "num_classes": 3, "binary": True})
    with pytest.raises(ValueError, match="widths"):
        build_model({"kind": "linf-dist", "input_shape": [4], "widths": []})


def test_validate_needs_p_inf_and_finite_weights():
    m = build_model({"kind": "linf-dist", "input_shape": [4], "widths": [6], "num_classes": 3})
    m.set_p(16.0)
    with pytest.raises(ValueError, match="p = ∞"):
        asymcert.certify(m, torch.rand(3, 4))
    m.set_p(INF)
    asymcert.certify(m, torch.rand(3, 4))
    with torch.no_grad():
        m.out.weight[0, 0] = float("nan")
    with pytest.raises(ValueError, match="NaN"):
        m.validate()


def test_lipschitz_in_normalised_and_raw_units():
    torch.manual_seed(3)
    cfg = {"kind": "linf-dist", "input_shape": list(SHAPE), "widths": [40, 30, 20], "num_classes": 6}
    m = build_model(cfg).double()
    m.train()
    x = torch.rand(256, *SHAPE, dtype=torch.float64)
    m.fit_input(x * 0.5)
    for _ in range(3):
        m(x)  # running means
    m.eval()
    a = torch.rand(400, *SHAPE, dtype=torch.float64)
    b = torch.where(
        torch.rand(400, 1, 1, 1, dtype=torch.float64) < 0.5, a + (torch.rand_like(a) - 0.5) * 0.02, torch.rand_like(a)
    )
    with torch.no_grad():
        diff = (m.logits(a) - m.logits(b)).abs().amax(1)
        dz = (m.normalize(a) - m.normalize(b)).abs().amax(1)
    dx = (a - b).flatten(1).abs().amax(1)
    assert torch.all(diff <= dz * (1 + 1e-12) + 1e-12)
    assert torch.all(diff <= dx / m.std * (1 + 1e-9) + 1e-12)
    assert m.lipschitz(INF) == pytest.approx(1 / m.std)
    assert (diff / (dx / m.std)).max() > 0.2  # not vacuous


# ------------------------------------------------------------------ certificates


def test_trained_net_learns_and_certifies(plain_net):
    val = _toy_data(300, 7)
    cert = asymcert.certify(plain_net, val.x, norms=(1, 2, "inf"))
    assert not cert.binary and cert.method == "linf-dist"
    acc = float((cert.predicted == val.y).float().mean())
    assert acc > 0.9
    r = cert.radii[INF]
    assert float((r > 0).float().mean()) > 0.9
    assert torch.equal(cert.radii[1.0], r) and torch.equal(cert.radii[2.0], r)  # ‖·‖∞ ≤ ‖·‖_p
    # the radius is σ·margin/2 rounded down (up to the tiny float allowance)
    with torch.no_grad():
        margin = top2_margin(plain_net.logits(val.x), cert.predicted).double()
    expected = plain_net.std * margin / 2
    assert torch.all(r <= expected) and torch.all(r >= expected * (1 - 1e-5) - 1e-5)


def test_pgd_inside_certified_radius_never_flips(plain_net):
    x = _toy_data(200, 11).x
    cert = asymcert.certify(plain_net, x, norms=("inf",))
    r = cert.radii[INF]
    keep = r > 0
    xs, cls, eps = x[keep], cert.predicted[keep], r[keep] * 0.999
    assert not _pgd_flips(plain_net, xs, cls, eps).any()
    # the attack is not toothless: far outside the radius it flips some decisions
    assert _pgd_flips(plain_net, xs, cls, eps * 4 + 0.05, steps=40).any()


def test_mlp_head_ibp_certificate_is_sound_and_maximal(mlp_net):
    x = _toy_data(160, 13).x
    cert = asymcert.certify(mlp_net, x, norms=(2, "inf"))
    r = cert.radii[INF]
    assert float((r > 0).float().mean()) > 0.5
    keep = r > 0
    xs, cls = x[keep], cert.predicted[keep]
    assert not _pgd_flips(mlp_net, xs, cls, r[keep] * 0.999).any()
    # bisection: verified at the (normalised) radius, no longer a little above it
    mlp_net.eval()
    rn = normalized_radii(mlp_net, xs, cls)
    ref = mlp_net.double()
    try:
        with torch.no_grad():
            _, y_last = ref.features_and_distances(xs.double())
        assert head_verified(ref, y_last, rn, cls, None, 0.0).all()
        assert not head_verified(ref, y_last, rn * 1.01 + 1e-6, cls, None, 0.0).any()
    finally:
        mlp_net.float()
    assert torch.all(r <= rn * mlp_net.std)


def test_bisection_finds_threshold():
    thr = torch.tensor([0.0, 0.3, 5.0, 1e-3], dtype=torch.float64)
    out = bisect_radius(lambda r: r < thr, 4, torch.float64, torch.device("cpu"), steps=50)
    assert out[0] == 0 and torch.all(out < thr.clamp_min(1e-300) + 1e-12)
    torch.testing.assert_close(out[1:], thr[1:], rtol=1e-9, atol=1e-12)


def test_float32_error_allowance_covers_the_model(plain_net):
    """The model's own float32 logits stay within the bound E of the exact (float64) ones."""
    from asymcert.certify.linf_dist import _trace, distance_error_bound, unit_roundoff

    x = _toy_data(200, 17).x
    with torch.no_grad():
        g32 = plain_net.logits(x).double()
        ref = plain_net.double()
        try:
            g64, _, _, ops = _trace(ref, x.double())
        finally:
            plain_net.float()
    err = distance_error_bound(ops, 0.0, unit_roundoff(torch.float32))
    assert torch.all((g32 - g64).abs().amax(1) <= err)
    assert err.max() < 1e-3


def test_binary_contract(tmp_path):
    model = _train({"widths": [32, 32], "num_classes": 2, "binary": True}, epochs=6, labels=lambda y: (y == 1).long())
    x = _toy_data(200, 19).x
    s = model(x)
    assert s.shape == (200,)
    with torch.no_grad():
        g = model.logits(x)
    torch.testing.assert_close(s, g[:, 1] - g[:, 0])
    cert = asymcert.certify(model, x)
    assert cert.binary and torch.equal(cert.sensitive, s > 0)
    r = cert.radii[INF]
    assert torch.all(r[~cert.sensitive] == 0) and bool((r[cert.sensitive] > 0).any())
    sym = cert.extra["symmetric_linf"]
    assert torch.equal(sym[cert.sensitive], r[cert.sensitive]) and bool((sym[~cert.sensitive] > 0).any())
    torch.testing.assert_close(cert.extra["score"], s.detach())
    flagged = cert.sensitive & (r > 0)
    assert not _pgd_flips(model, x[flagged], torch.ones(int(flagged.sum()), dtype=torch.long), r[flagged] * 0.999).any()
    # save / load keeps the binary contract
    asymcert.save(model, tmp_path / "m.safetensors")
    back = asymcert.load(tmp_path / "m.safetensors")
    assert back.binary and torch.equal(back(x), model(x))


def test_save_load_roundtrip(plain_net, mlp_net, tmp_path):
    x = _toy_data(20, 23).x
    for i, m in enumerate((plain_net, mlp_net)):
        path = asymcert.save(m, tmp_path / f"m{i}.safetensors")
        back = asymcert.load(path)
        assert back.config() == m.config() and back.p == INF
        assert back.std == m.std and torch.equal(back.input_mean, m.input_mean)
        m.eval()
        with torch.no_grad():
            assert torch.equal(back(x), m(x))
        c1, c2 = asymcert.certify(m, x), asymcert.certify(back, x)
        assert torch.equal(c1.radii[INF], c2.radii[INF])


def test_recipe_evaluate_restores_p_and_checks_labels(plain_net):
    val = _toy_data(100, 29)
    plain_net.set_p(INF)
    cert = asymcert.certify(plain_net, val.x)  # the library's certificates of the same inputs
    correct = cert.predicted == val.y
    radius = cert.radii[INF].double()
    ranked = radius[correct].unique()  # sorted; a threshold halfway between two middle radii splits them
    eps = float(ranked[len(ranked) // 2 - 1 : len(ranked) // 2 + 1].mean())
    certified = correct & (radius >= eps)
    assert 0 < int(certified.sum()) < int(correct.sum())
    r = LinfDistRecipe(TrainConfig.from_dict({"extra": {"eps_eval": eps}}))
    plain_net.set_p(20.0)
    out = r.evaluate(plain_net, val, 64)
    assert plain_net.p == 20.0
    plain_net.set_p(INF)
    # accuracy = share predicted correctly; metric = share correct with an ℓ∞ radius ≥ eps_eval
    assert out["accuracy"] == pytest.approx(float(correct.double().mean()), abs=1e-6)
    assert out["metric"] == pytest.approx(float(certified.double().mean()), abs=1e-6)
    small = build_model({"kind": "linf-dist", "input_shape": list(SHAPE), "widths": [8], "num_classes": 3})
    with pytest.raises(ValueError, match="num_classes"):
        r.prepare(small, _toy_data(50, 1))
    with pytest.warns(RuntimeWarning, match="binary"):
        r.prepare(small, Dataset(torch.rand(10, *SHAPE), torch.randint(0, 2, (10,))))


# ------------------------------------------------------------------ run folders and CLI

SMALL_LINF = [
    "--model-set",
    "widths=[24]",
    "--set",
    "batch_size=40",
    "--set",
    'optimizer="adam"',
    "--set",
    "lr=0.03",
    "--quiet",
]


def test_cli_run_multiclass_fashion(fashion_dir, tmp_path):
    out = tmp_path / "mc"
    res = CliRunner().invoke(
        main_cli(),
        [
            "run",
            "fashion-mnist",
            "--model",
            "linf-dist",
            "--data-dir",
            str(fashion_dir),
            "--epochs",
            "2",
            "--out",
            str(out),
            *SMALL_LINF,
        ],
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "linf-dist" and "n_sensitive" not in results
    assert set(results["certified_accuracy"]) == {"l1", "l2", "linf"}
    model = asymcert.load(out)
    assert model.config()["num_classes"] == 10 and not model.binary
    assert (out / "report.md").is_file() and (out / "certified_linf.png").is_file()


def test_cli_run_binary_shirts(fashion_dir, tmp_path):
    out = tmp_path / "bin"
    res = CliRunner().invoke(
        main_cli(),
        [
            "run",
            "fashion-mnist-shirts",
            "--model",
            "linf-dist",
            "--data-dir",
            str(fashion_dir),
            "--epochs",
            "2",
            "--out",
            str(out),
            "--model-set",
            "num_classes=2",
            "--model-set",
            "binary=true",
            *SMALL_LINF,
        ],
    )
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "linf-dist" and results["n_sensitive"] > 0
    model = asymcert.load(out)
    assert model.binary and model(torch.rand(3, 1, 28, 28)).shape == (3,)


def main_cli():
    from asymcert.cli import main

    return main


# ------------------------------------------------------------------ MeanShift under torch.distributed


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _meanshift_worker(rank, world, port, x, g, result_file):
    from asymcert.nn.mean_shift import MeanShift

    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        m = MeanShift(x.shape[1])
        xs = x.tensor_split(world)[rank].clone().requires_grad_(True)
        ys = m(xs)
        (gx,) = torch.autograd.grad(ys, xs, g.tensor_split(world)[rank])
        if rank == 0:
            torch.save({"y": ys.detach(), "gx": gx, "running": m.running_mean.clone()}, result_file)
        dist.barrier()
    finally:
        dist.destroy_process_group()
    # Skip the interpreter's teardown: gloo's background threads can abort it (SIGABRT, "terminate
    # called without an active exception"; it failed 2 of about 10 full-suite runs in one session).
    # Reached only on success.
    os._exit(0)


def test_meanshift_uses_the_global_batch_under_distributed(tmp_path):
    from asymcert.nn.mean_shift import MeanShift

    torch.manual_seed(0)
    x = torch.randn(8, 3, 2, 2, dtype=torch.float64) + torch.arange(8.0, dtype=torch.float64).view(8, 1, 1, 1)
    g = torch.randn_like(x)
    m = MeanShift(3)
    xr = x.clone().requires_grad_(True)
    y = m(xr)
    (gx,) = torch.autograd.grad(y, xr, g)
    mp.spawn(_meanshift_worker, args=(2, _free_port(), x, g, tmp_path / "r.pt"), nprocs=2, join=True)
    got = torch.load(tmp_path / "r.pt", weights_only=True)
    torch.testing.assert_close(got["y"], y[:4].detach())  # rank 0's half, shifted by the GLOBAL mean
    torch.testing.assert_close(got["gx"], gx[:4])  # exact gradient through the global mean
    torch.testing.assert_close(got["running"], m.running_mean)


# ---------------------------------------------------------------- refusals (session 33 families review)


def _binary_linf(mlp_head: int | None = None) -> LinfDistNet:
    torch.manual_seed(0)
    cfg = {"kind": "linf-dist", "input_shape": [4], "widths": [8], "num_classes": 2, "binary": True}
    return build_model({**cfg, "mlp_head": mlp_head}).eval()


class _Neg3(torch.nn.Identity):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return -3.0 * t


class _ScaledLinfDist(LinfDist):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return 10.0 * super().forward(t)


@pytest.mark.parametrize(
    "slot,layer,text",
    [
        ("shifts.0", lambda m: torch.nn.Identity(), "shifts.0: Identity is not allowed here (allowed: MeanShift)"),
        ("shifts.0", lambda m: _Neg3(), "shifts.0: _Neg3 is not allowed here (allowed: MeanShift)"),
        ("dist.0", lambda m: _ScaledLinfDist(4, 8), "dist.0: _ScaledLinfDist (a subclass of LinfDist"),
    ],
)
def test_a_replaced_layer_is_refused_by_path_as_a_model_error(slot, layer, text):
    """Review s33 families 4: shifts.0 = nn.Identity() raised AttributeError: 'Identity' object has no attribute
    'problems' from validate() and certify (a raw error api._run re-raises)."""
    model = _binary_linf()
    getattr(model, slot.split(".")[0])[0] = layer(model)
    for run in (model.validate, lambda: asymcert.certify(model, torch.randn(4, 4))):
        with pytest.raises(ModelError) as err:
            run()
        assert text in str(err.value) and "\n" not in str(err.value)


def test_a_head_layer_subclass_is_refused_by_path():
    model = _binary_linf(mlp_head=6)

    class Scaled(torch.nn.Linear):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return 10.0 * super().forward(t)

    model.head_out = Scaled(6, 2)
    with pytest.raises(ModelError, match=r"head_out: Scaled \(a subclass of Linear"):
        asymcert.certify(model, torch.randn(4, 4))


@pytest.mark.parametrize("kind", HOOK_KINDS)
def test_hooks_and_replaced_forwards_are_refused_by_path(kind):
    """Review s33 families 3: a ×10 hook on dist.0 got r∞ 0.30 and 5 of 12 certified inputs flipped."""
    model = _binary_linf()
    tamper_layer(model.dist[0], kind)
    with pytest.raises(ModelError, match=r"dist\.0: (has forward|its forward)"):
        asymcert.certify(model, torch.randn(4, 4))


def test_a_subclass_overriding_a_certified_method_is_refused():
    base = _binary_linf()

    class Negated(LinfDistNet):
        def logits(self, x: torch.Tensor) -> torch.Tensor:
            return -super().logits(x)

    model = Negated(base.input_shape, base.widths, 2, binary=True).eval()
    with pytest.raises(ModelError, match=r"Negated overrides logits\(\)"):
        asymcert.certify(model, torch.randn(4, 4))


@pytest.mark.parametrize("binary,mlp_head", [(True, None), (False, None), (False, 6)])
def test_an_empty_batch_gives_an_empty_output(binary, mlp_head):
    """Review s33 families 6: model(torch.zeros(0, 4)) raised 'cannot reshape tensor of 0 elements'."""
    torch.manual_seed(0)
    cfg = {"kind": "linf-dist", "input_shape": [4], "widths": [8], "num_classes": 2 if binary else 3}
    model = build_model({**cfg, "binary": binary, "mlp_head": mlp_head}).eval()
    out = model(torch.zeros(0, 4))
    assert out.shape == ((0,) if binary else (0, 3))
    image = build_model({**cfg, "input_shape": [1, 2, 2], "binary": binary, "mlp_head": mlp_head}).eval()
    assert image(torch.zeros(0, 1, 2, 2)).shape == out.shape
