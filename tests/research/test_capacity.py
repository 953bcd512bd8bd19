"""Convex capacity: the accuracy-maximising shift, the scaled initialisation, recipes and the CLI report."""

import itertools
import json
import os

import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

from asymcert.cli import main
from asymcert.data.tasks import Dataset
from asymcert.errors import UnknownNameError
from asymcert.models import build_model
from asymcert.research.capacity import (
    RECIPES,
    Recipe,
    max_accuracy_shift,
    resolve_recipes,
    run_capacity,
    run_recipe,
    scaled_init_,
)
from tests.conftest import folder_held


@settings(max_examples=60, deadline=None)
@given(scores=st.lists(st.integers(-5, 5), min_size=1, max_size=25), data=st.data())
def test_max_accuracy_shift_matches_brute_force(scores, data):
    labels = data.draw(st.lists(st.integers(0, 1), min_size=len(scores), max_size=len(scores)))
    s, y = torch.tensor(scores, dtype=torch.float64), torch.tensor(labels)
    b, acc = max_accuracy_shift(s, y)
    realised = float(((s + b > 0).long() == y).float().mean())
    assert realised == pytest.approx(acc)
    # brute force over every threshold between / around the distinct scores
    cuts = sorted(set(scores))
    thresholds = [cuts[0] - 1] + [(a + c) / 2 for a, c in itertools.pairwise(cuts)] + [cuts[-1] + 1]
    best = max(float(((s > t).long() == y).float().mean()) for t in thresholds)
    assert acc == pytest.approx(best)


@pytest.mark.parametrize(
    "convex",
    [
        {"kind": "icnn", "widths": [32, 16]},
        {"kind": "icnn", "widths": [24], "batch_norm": False},
        {"kind": "convex-conv", "channels": 3, "stem_kernel": 3, "blocks": 2},
    ],
)
def test_scaled_init_keeps_convexity_and_standardises_the_output(convex):
    torch.manual_seed(0)
    model = build_model(
        {"kind": "feature-convex", "input_shape": [1, 8, 8], "feature_map": [{"kind": "shift"}], "convex": convex}
    )
    x = torch.rand(256, 1, 8, 8)
    model.feature_map.fit(x)
    with torch.no_grad():
        scaled_init_(model.convex, model.features(x), torch.Generator().manual_seed(1))
        model.validate()  # every constrained weight still nonnegative
        model.train()
        f = model.features(x)
        out = model.convex(f)
        g = model.convex
        first = g.passthrough[0](f.flatten(1)) if convex["kind"] == "icnn" else g.stem(f)
    assert abs(float(out.mean())) < 0.05 and 0.9 < float(out.std()) < 1.1  # neither vanishing nor exploding
    assert 0.3 < float((first > 0).float().mean()) < 0.7  # about half of the first ReLUs active


def test_scaled_init_rejects_other_networks():
    with pytest.raises(UnknownNameError, match="ICNN and ConvexConvNet"):
        scaled_init_(torch.nn.Linear(3, 1), torch.zeros(2, 3))


def test_resolve_recipes():
    assert resolve_recipes("none") == [] and resolve_recipes("") == [] and resolve_recipes([]) == []
    for typo in (",", " , ", ",,"):  # (audit 29e #10: it meant "none", silently)
        with pytest.raises(UnknownNameError, match="no recipe name"):
            resolve_recipes(typo)
    assert resolve_recipes("all") == list(RECIPES)
    assert resolve_recipes("icnn-wide, paper-conv") == ["icnn-wide", "paper-conv"]
    with pytest.raises(UnknownNameError, match=r"unknown capacity recipe.*known: paper-conv"):
        resolve_recipes("icnn-wide,nope")


def _separable(n: int = 200, seed: int = 0) -> Dataset:
    """Sensitive inputs outside a ball, other inside it: separable by a convex set, not linearly."""
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, 1, 2, 2, generator=g)
    r = x.flatten(1).norm(dim=1)
    keep = (r < 1.4) | (r > 2.2)  # a margin between the classes
    return Dataset(x[keep], (r[keep] > 2.0).long())


def test_a_recipe_fits_a_convex_separable_set_and_reports_per_epoch_accuracy():
    train = _separable()
    spec = {
        "description": "tiny",
        "convex": {"kind": "icnn", "widths": [64], "batch_norm": False},
        "train": {"optimizer": "adam", "lr": 1e-2, "batch_size": 32, "epochs": 15},
        "init": "scaled",
    }
    recipe = Recipe.from_dict(spec)
    assert recipe.to_dict() == spec and recipe.init == "scaled"
    res = run_recipe("tiny", train, settings=recipe, seed=0)
    assert len(res.accuracy_per_epoch) == 15 == len(res.loss_per_epoch)
    assert res.train_accuracy == max(res.accuracy_per_epoch)
    assert res.accuracy_per_epoch[res.best_epoch - 1] == res.train_accuracy
    assert res.train_accuracy >= 0.97  # a linear classifier cannot exceed the larger class share here
    assert res.train_accuracy > float(train.y.float().mean().clamp_min(1 - train.y.float().mean())) + 0.1
    assert res.settings.train["augment"] is False and res.settings.train["jacobian_reg"] == 0.0
    assert res.to_dict()["settings"]["convex"] == spec["convex"] and res.settings.train["epochs"] == 15
    assert res.parameters == 4 * 64 + 64 + 64 + 4 + 1


def test_run_capacity_returns_one_row_per_recipe_and_calls_back():
    train = _separable(120)
    seen = []
    out = run_capacity(train, "icnn-paper", epochs=1, on_result=lambda rs: seen.append(len(rs)))
    assert [r.name for r in out] == ["icnn-paper"] and seen == [1]
    res = out[0]
    assert len(res.accuracy_per_epoch) == 1 and res.best_epoch == 1 and res.train_accuracy == res.accuracy_per_epoch[0]
    share = float(train.y.double().mean())
    assert res.train_accuracy >= max(share, 1 - share) - 1e-6  # the fitted shift b can flag all inputs or none
    assert res.train_accuracy * len(train.y) == pytest.approx(round(res.train_accuracy * len(train.y)), abs=1e-3)


def test_cli_capacity_writes_json_markdown_and_plot(fashion_dir, tmp_path):
    out = tmp_path / "cap"
    res = CliRunner().invoke(
        main,
        [
            "capacity",
            "fashion-mnist-shirts",
            "--data-dir",
            str(fashion_dir),
            "--out",
            str(out),
            "--recipes",
            "icnn-paper",
            "--epochs",
            "2",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert "separability bound" in res.output
    for name in ("capacity.json", "capacity.md", "capacity.png"):
        assert (out / name).is_file(), name
    rep = json.loads((out / "capacity.json").read_text())
    sep = rep["separability"]
    assert sep["complete"] and sep["checked"] == sep["n_sensitive"] == rep["n_sensitive"]
    assert sep["outside"] + sep["inside"] == sep["checked"]
    assert sum(sep["settled"].values()) == sep["checked"]
    assert sep["bound"] == pytest.approx((rep["n_train"] - sep["inside"]) / rep["n_train"])
    assert rep["constructed"]["train_accuracy"] == pytest.approx(sep["bound"])  # the bound is achieved
    (row,) = rep["recipes"]
    assert row["recipe"] == "icnn-paper" and row["epochs"] == 2 and 0.5 <= row["train_accuracy"] <= 1.0
    assert len(rep["runs"][0]["accuracy_per_epoch"]) == 2
    md = (out / "capacity.md").read_text()
    assert "Bound on training accuracy" in md and "| icnn-paper |" in md
    assert rep["command"].startswith("asymcert capacity fashion-mnist-shirts --out ") and "--epochs 2" in rep["command"]


def test_cli_capacity_limit_and_reverse_bound_only(fashion_dir, tmp_path):
    out = tmp_path / "cap"
    res = CliRunner().invoke(
        main,
        [
            "capacity",
            "fashion-mnist-shirts",
            "--data-dir",
            str(fashion_dir),
            "--out",
            str(out),
            "--recipes",
            "none",
            "--limit",
            "5",
            "--seed",
            "3",
            "--reverse",
            "--fw-iterations",
            "0",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    rep = json.loads((out / "capacity.json").read_text())
    assert rep["separability"]["checked"] == 5 and rep["separability"]["reverse"]
    assert rep["separability"]["settled"]["frank-wolfe"] == 0 and rep["separability"]["frank_wolfe_iterations"] == 0
    assert rep["machine_at_start"]["cores"] >= 1
    assert not rep["separability"]["complete"] and rep["recipes"] == []
    assert not (out / "capacity.png").exists()


def test_cli_capacity_errors_are_one_line(fashion_dir, tmp_path):
    runner = CliRunner()
    res = runner.invoke(
        main,
        [
            "capacity",
            "fashion-mnist-shirts",
            "--data-dir",
            str(fashion_dir),
            "--out",
            str(tmp_path / "a"),
            "--recipes",
            "bogus",
        ],
    )
    assert res.exit_code != 0 and "unknown capacity recipe(s) bogus" in res.output
    assert "Traceback" not in res.output
    res = runner.invoke(main, ["capacity", "fashion-mnist", "--out", str(tmp_path / "b"), "--recipes", "none"])
    assert res.exit_code != 0 and "needs a binary task" in res.output
    res = runner.invoke(main, ["capacity", "no-such-task", "--out", str(tmp_path / "c")])
    assert res.exit_code != 0 and "unknown task 'no-such-task'" in res.output


def test_capacity_holds_its_folder_and_a_refusal_makes_none(fashion_dir, tmp_path):
    """capacity took no lock on --out (two writers both succeeded) and made the folder before loading its data, so a
    refusal left one behind (coverage audit 30): now one capacity per folder (exit 3), never a run folder, and a
    task whose data is missing creates nothing."""
    runner = CliRunner()
    args = ["capacity", "fashion-mnist-shirts", "--recipes", "none", "--limit", "5"]
    missing = ["capacity", "cifar10-catsdogs", "--recipes", "none", "--data-dir", str(tmp_path / "no-data")]
    res = runner.invoke(main, [*missing, "--out", str(tmp_path / "a")])  # (no CIFAR-10 here, no download in tests)
    assert res.exit_code == 2 and len(res.output.strip().splitlines()) == 1 and not (tmp_path / "a").exists()
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"task": {}}')
    res = runner.invoke(main, [*args, "--data-dir", str(fashion_dir), "--out", str(run)])
    assert res.exit_code == 2 and "is a run folder" in res.output and sorted(os.listdir(run)) == ["run.json"]
    busy = tmp_path / "busy"
    with folder_held(busy):
        res = runner.invoke(main, [*args, "--data-dir", str(fashion_dir), "--out", str(busy)])
        assert res.exit_code == 3 and "RunFolderBusyError" in res.output
        assert sorted(p.name for p in busy.iterdir()) == [".asymcert.lock"]
