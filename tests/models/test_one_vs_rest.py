"""One-vs-rest feature-convex classifiers: model, per-class certificates, recipe, run folders."""

from __future__ import annotations

import json
import math

import pytest
import torch
from click.testing import CliRunner

import asymcert
from asymcert.certify.attacks import pgd_attack
from asymcert.certify.feature_convex import certify_feature_convex
from asymcert.certify.one_vs_rest import class_radii_key
from asymcert.certify.result import Certificate, Guarantee
from asymcert.data.tasks import Dataset, TaskData
from asymcert.errors import ConvexityError
from asymcert.models import build_model
from asymcert.models.one_vs_rest import OneVsRestConvex
from asymcert.report.metrics import certified_accuracy
from asymcert.train.balance import fit_balance
from asymcert.train.config import TrainConfig
from asymcert.train.one_vs_rest import OneVsRestRecipe
from asymcert.train.recipes import FeatureConvexRecipe, predict_scores
from tests.conftest import small_feature_convex

SHAPE = (1, 6, 6)
NORMS = (1.0, 2.0, math.inf)


def _members_model(k: int = 3, kind: str = "icnn") -> OneVsRestConvex:
    """K spread-out random members, each with its own feature-map statistics (not shared)."""
    members = [small_feature_convex(kind, SHAPE, seed=s) for s in range(k)]
    return OneVsRestConvex(members, input_range=(0.0, 1.0)).eval()


def _config_model(k: int = 4) -> OneVsRestConvex:
    """A model built from its config, every member's φ fitted on the same inputs (shared φ)."""
    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "one-vs-rest-convex",
            "input_shape": list(SHAPE),
            "input_range": [0, 1],
            "num_classes": k,
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "icnn", "widths": [12, 6]},
        }
    )
    x = torch.rand(50, *SHAPE)
    for m in model.members:
        m.feature_map.fit(x)
    model.set_balance(torch.linspace(-0.2, 0.2, k))
    return model.eval()


def test_shapes_config_and_shared_features():
    model = _config_model(4)
    x = torch.rand(7, *SHAPE)
    assert model(x).shape == (7, 4)
    assert model.features(x).shape == (7, 4, *SHAPE)
    assert model._shared_feature_map()
    assert model.num_classes == 4 and model.member_feature_lipschitz(2) == [1.0] * 4
    for k, m in enumerate(model.members):  # column k is member k's own score
        torch.testing.assert_close(model(x)[:, k], m(x), rtol=0, atol=0)
    rebuilt = build_model(json.loads(json.dumps(model.config())))
    assert isinstance(rebuilt, OneVsRestConvex) and rebuilt.config() == model.config()
    separate = _members_model(3)
    assert not separate._shared_feature_map() and separate(x).shape == (7, 3)
    with pytest.raises(ValueError, match="at least 2"):
        OneVsRestConvex([small_feature_convex(seed=0)])


def test_save_load_round_trip(tmp_path):
    model = _members_model(3, kind="convex-conv")
    x = torch.rand(9, *SHAPE)
    asymcert.save(model, tmp_path / "ovr.safetensors")
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    asymcert.save(model, run_dir)
    for path in (tmp_path / "ovr.safetensors", run_dir):
        loaded = asymcert.load(path)
        assert isinstance(loaded, OneVsRestConvex) and loaded.input_range == (0.0, 1.0)
        torch.testing.assert_close(loaded(x), model(x), rtol=0, atol=0)
        a, b = asymcert.certify(loaded, x, norms=NORMS), asymcert.certify(model, x, norms=NORMS)
        assert torch.equal(a.predicted, b.predicted)
        for p in NORMS:
            assert torch.equal(a.radii[p], b.radii[p])


@pytest.mark.parametrize("builder", [_members_model, _config_model])
def test_radii_equal_each_members_own_binary_certificate(builder):
    model = builder()
    x = torch.rand(40, *SHAPE)
    cert = asymcert.certify(model, x, norms=NORMS)
    assert not cert.binary and cert.method == "one-vs-rest-convex"
    assert cert.predicted.shape == (40,) and cert.predicted.dtype == torch.int64
    scores = model(x)
    assert torch.equal(cert.predicted, scores.argmax(dim=1))
    assert torch.equal(cert.extra["flags"], scores > 0)
    assert 0 < int(cert.extra["flags"].sum()) < cert.extra["flags"].numel()  # flagged and unflagged pairs
    for k, member in enumerate(model.members):
        own = certify_feature_convex(member, x, NORMS)
        assert torch.equal(cert.extra["flags"][:, k], own.sensitive)
        for p in NORMS:
            assert torch.equal(cert.extra[class_radii_key(p)][:, k], own.radii[p])
    for p in NORMS:
        r = cert.radii[p]
        assert r.dtype == torch.float64 and r.shape == (40,)
        expect = cert.extra[class_radii_key(p)].gather(1, cert.predicted[:, None]).squeeze(1)
        assert torch.equal(r, expect)
        assert bool((r[~cert.extra["predicted_flagged"]] == 0).all())
        assert bool((r[cert.extra["predicted_flagged"]] > 0).all())


def test_pgd_inside_the_radius_never_removes_the_class_flag():
    torch.manual_seed(1)
    model = _members_model(3)
    x = torch.rand(48, *SHAPE)
    cert = asymcert.certify(model, x, norms=NORMS)
    gen = torch.Generator().manual_seed(0)
    checked = broken_outside = 0
    for k, member in enumerate(model.members):
        rows = cert.extra["flags"][:, k]
        if not bool(rows.any()):
            continue
        xs = x[rows]
        for p in NORMS:
            r = cert.extra[class_radii_key(p)][rows, k]
            one = torch.ones(len(xs), dtype=torch.long)
            adv = pgd_attack(
                member,
                xs,
                r * (1 - 1e-6),
                p,
                steps=60,
                restarts=2,
                targeted_decision=one,
                input_range=(0.0, 1.0),
                generator=gen,
            )
            with torch.no_grad():
                assert bool((model(adv)[:, k] > 0).all()), f"class {k} lost its flag inside the ℓ{p} radius"
            checked += len(xs)
            far = pgd_attack(
                member,
                xs,
                (4 * r).clamp(max=1e3),
                p,
                steps=60,
                targeted_decision=one,
                input_range=(0.0, 1.0),
                generator=gen,
            )
            with torch.no_grad():
                broken_outside += int((model(far)[:, k] <= 0).sum())
    assert checked > 0
    assert broken_outside > 0  # the same attack does remove flags at 4× the radius: it is not toothless


def test_negative_convex_weight_is_rejected(tmp_path):
    model = _config_model(3)
    asymcert.save(model, tmp_path / "bad.safetensors")
    with torch.no_grad():
        model.members[1].convex.hidden[0].weight[0, 0] = -0.5
    with pytest.raises(ConvexityError, match="member 1"):
        model.validate()
    with pytest.raises(ConvexityError):
        asymcert.certify(model, torch.rand(2, *SHAPE))
    with pytest.raises(ConvexityError, match=r"member 1.*not saved"):
        asymcert.save(model, tmp_path / "bad.safetensors")
    assert asymcert.load(tmp_path / "bad.safetensors").validate() is None  # the earlier, sound file is kept
    asymcert.save(model, tmp_path / "bad.safetensors", validate=False)
    with pytest.raises(ConvexityError, match="member 1"):
        asymcert.load(tmp_path / "bad.safetensors")
    model.project()
    model.validate()


def test_recipe_trains_members_on_their_own_binary_tasks():
    torch.manual_seed(0)
    k = 3
    x = torch.rand(120, *SHAPE)
    y = torch.arange(120) % k
    x[:, 0, :2] += (y[:, None, None] == 0) * 0.5  # make the classes learnable
    data = TaskData(
        Dataset(x[:90], y[:90]), Dataset(x[90:], y[90:]), Dataset(x[90:], y[90:]), class_names=("a", "b", "c")
    )
    model = build_model(
        {
            "kind": "one-vs-rest-convex",
            "input_shape": list(SHAPE),
            "num_classes": k,
            "convex": {"kind": "icnn", "widths": [8]},
        }
    )
    cfg = TrainConfig(jacobian_reg=0.01)
    recipe, member_recipe = OneVsRestRecipe(cfg), FeatureConvexRecipe(cfg)
    recipe.prepare(model, data.train)
    model.train()
    xb, yb = x[:16], y[:16]
    total, stats = recipe.loss(model, xb, yb, 0.0)
    parts = [member_recipe.loss(m, xb, (yb == i).long(), 0.0)[0] for i, m in enumerate(model.members)]
    torch.testing.assert_close(total, sum(parts))
    assert set(stats) == {"bce", "jac"}
    # the gradient on member k is its own binary-task gradient
    g_all = torch.autograd.grad(total, list(model.members[1].parameters()), allow_unused=True)
    g_own = torch.autograd.grad(parts[1], list(model.members[1].parameters()), allow_unused=True)
    for a, b in zip(g_all, g_own):
        if a is not None:
            torch.testing.assert_close(a, b)
    out = recipe.evaluate(model, data.val, 64)
    fitted = [float(m.balance) for m in model.members]
    scores = predict_scores(model, data.val.x, 64, torch.device("cpu"))
    for i, m in enumerate(model.members):  # b_k fitted on the validation split, class k vs rest
        m.set_balance(0.0)
        raw = predict_scores(m, data.val.x, 64, torch.device("cpu"))
        assert fitted[i] == pytest.approx(fit_balance(raw, (data.val.y == i).long()))
        m.set_balance(fitted[i])
    assert out["accuracy"] == pytest.approx(float((scores.argmax(1) == data.val.y).float().mean()))
    with pytest.raises(ValueError, match="members"):
        recipe.prepare(model, Dataset(x[:4], torch.tensor([0, 1, 2, 5])))


def test_certified_accuracy_needs_the_true_class_flagged():
    pred = torch.tensor([0, 1, 2, 2])
    labels = torch.tensor([0, 1, 2, 0])
    radius = torch.tensor([0.5, 0.0, 0.3, 0.9], dtype=torch.float64)
    flagged = torch.tensor([True, False, True, True])
    flags = torch.nn.functional.one_hot(pred, 3).bool() & flagged[:, None]
    cert = Certificate(
        pred,
        {2.0: radius},
        "one-vs-rest-convex",
        Guarantee.FLAG,
        binary=False,
        extra={"flags": flags, "predicted_flagged": flagged},
    )
    acc = certified_accuracy(cert, labels, 2.0, torch.tensor([0.0, 0.4]))
    # input 1 is correct but not flagged: never certified, not even at r = 0; input 3 is wrong
    assert acc.tolist() == [0.5, 0.25]


def test_cli_run_on_small_idx_data(fashion_dir, tmp_path):
    from asymcert.cli import main

    out = tmp_path / "ovr"
    res = CliRunner().invoke(
        main,
        [
            "run",
            "fashion-mnist",
            "--model",
            "one-vs-rest-convex",
            "--data-dir",
            str(fashion_dir),
            "--epochs",
            "2",
            "--out",
            str(out),
            "--quiet",
            "--model-set",
            'convex={"kind": "icnn", "widths": [16]}',
            "--set",
            "batch_size=32",
        ],
    )
    assert res.exit_code == 0, res.output
    for name in (
        "model.safetensors",
        "run.json",
        "history.json",
        "certificates.safetensors",
        "results.json",
        "report.md",
        "certified_linf.png",
    ):
        assert (out / name).is_file(), name
    run = json.loads((out / "run.json").read_text())
    assert run["model"]["kind"] == "one-vs-rest-convex" and run["model"]["num_classes"] == 10
    assert run["train"]["optimizer"] == "sgd" and run["train"]["jacobian_reg"] == 0.01
    results = json.loads((out / "results.json").read_text())
    assert results["method"] == "one-vs-rest-convex" and "n_sensitive" not in results
    assert set(results["certified_accuracy"]) == {"l1", "l2", "linf"}
    assert set(results["flags"]) == {"none", "one", "several", "true_class"}
    assert "NOT that the argmax stays" in (out / "report.md").read_text()
    model = asymcert.load(out)
    assert isinstance(model, OneVsRestConvex) and model.num_classes == 10
    x = torch.rand(3, 1, 28, 28)
    cert = asymcert.certify(model, x, norms=("inf",))
    assert cert.predicted.shape == (3,) and cert.radii[math.inf].shape == (3,)
    assert cert.extra["scores"].shape == (3, 10)


def test_audit_attacks_the_class_flag_and_finds_no_violation():
    """The audit attacks what a one-vs-rest certificate promises (the predicted class stays flagged),
    not the argmax, and so finds no violation."""
    from asymcert.audit import audit

    model = _members_model(3)
    torch.manual_seed(5)
    x = torch.rand(40, *SHAPE)
    report = audit(model, x, None, steps=30, restarts=1, exact=False)
    assert report.violations == 0
    norms = report.methods["one-vs-rest-convex"].norms.values()
    attacked = sum(item.attack.attacked for item in norms if item.attack is not None)
    assert attacked > 10


def test_class_radii_around_float64_inputs_are_lowered_by_the_rounding_as_the_radii_are():
    """The (N, K) class radii were left at the float32 inputs' values while the radii were lowered for the
    rounding of float64 inputs: the predicted class's radius stood above cert.radius(p) on 191 of 200 rows
    (review 27g). Both follow the same rule now, and are nested across norms alike."""
    model = _config_model(4)
    torch.manual_seed(1)
    x64 = torch.rand(200, *SHAPE, dtype=torch.float64)
    cert = asymcert.certify(model, x64, norms=(1, 2, "inf"))
    for p in (1.0, 2.0, math.inf):
        of_predicted = cert.extra[class_radii_key(p)].gather(1, cert.predicted[:, None]).squeeze(1)
        assert torch.equal(of_predicted.double(), cert.radius(p).double()), p
    c1, c2, cinf = (cert.extra[class_radii_key(p)] for p in (1.0, 2.0, math.inf))
    assert bool((c1 >= c2).all()) and bool((c2 >= cinf).all())
