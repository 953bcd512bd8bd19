import json

import torch
from click.testing import CliRunner

import asymcert
from asymcert.cli import main

SMALL = ["--model-set", 'convex={"kind": "convex-conv", "channels": 2, "stem_kernel": 3, "blocks": 1}',
         "--set", "batch_size=32", "--quiet"]


def test_run_writes_the_run_folder_contract(fashion_dir, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(main, ["run", "fashion-mnist-shirts", "--data-dir", str(fashion_dir), "--epochs", "2",
                                    "--out", str(out), *SMALL])
    assert res.exit_code == 0, res.output
    for name in ("model.safetensors", "results.json", "report.md", "run.json", "certificates.safetensors",
                 "certified_l1.png", "certified_l2.png", "certified_linf.png"):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert 0.5 <= results["clean_accuracy"] <= 1.0
    assert set(results["certified_accuracy"]) == {"l1", "l2", "linf"}
    assert results["certify_seconds_per_input"] > 0
    model = asymcert.load(out)
    x = torch.rand(4, 1, 28, 28)
    assert model(x).shape == (4,)
    cert = asymcert.certify(model, x)
    assert cert.sensitive.shape == (4,) and cert.radii[float("inf")].shape == (4,)


def test_separate_steps_and_resume(fashion_dir, tmp_path):
    out = tmp_path / "steps"
    runner = CliRunner()
    args = ["train", "fashion-mnist-shirts", "--data-dir", str(fashion_dir), "--out", str(out), *SMALL]
    res = runner.invoke(main, args + ["--epochs", "1"])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["certify", str(out), "--norms", "2,inf", "--quiet", "--data-dir", str(fashion_dir)])
    assert res.exit_code == 0, res.output
    res = runner.invoke(main, ["report", str(out)])
    assert res.exit_code == 0, res.output
    assert "l2" in res.output and "l1:" not in res.output


def test_clear_errors_without_tracebacks(tmp_path):
    runner = CliRunner()
    res = runner.invoke(main, ["run", "no-such-task", "--out", str(tmp_path / "x")])
    assert res.exit_code != 0 and "unknown task 'no-such-task'" in res.output and "Traceback" not in res.output
    res = runner.invoke(main, ["certify", str(tmp_path)])
    assert res.exit_code != 0 and "not a run folder" in res.output
    res = runner.invoke(main, ["run", "fashion-mnist-shirts", "--out", str(tmp_path / "y"), "--set", "nonsense=1"])
    assert res.exit_code != 0 and "unknown training setting" in res.output


def test_breast_cancer_runs_offline_end_to_end(tmp_path):
    out = tmp_path / "bc"
    res = CliRunner().invoke(main, ["run", "breast-cancer", "--preset", "fast", "--out", str(out), "--quiet"])
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["n_inputs"] > 100
    assert set(results["certified_accuracy"]) == {"l1", "l2", "linf"}
    model = asymcert.load(out)
    assert model.input_range is None  # tabular features: any real value, raw units
    assert model.feature_map.lipschitz(2) > 1  # the per-feature scaling is folded into the constant


def test_own_npz_data(tmp_path):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=gen)
    x = torch.randn(300, 5, generator=gen) + y[:, None].float()
    import numpy as np
    np.savez(tmp_path / "mine.npz", x=x.numpy(), y=y.numpy())
    out = tmp_path / "npz"
    res = CliRunner().invoke(main, ["run", "--data", str(tmp_path / "mine.npz"), "--sensitive-class", "2",
                                    "--out", str(out), "--epochs", "30", "--quiet"])
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["clean_accuracy"] > 0.6
    res = CliRunner().invoke(main, ["run", "--data", str(tmp_path / "mine.npz"), "--sensitive-class", "7",
                                    "--out", str(tmp_path / "bad"), "--quiet"])
    assert res.exit_code != 0 and "7" in res.output and "Traceback" not in res.output


def test_linf_dist_family_on_a_binary_task_keeps_the_binary_contract(fashion_dir, tmp_path):
    out = tmp_path / "linf"
    res = CliRunner().invoke(main, ["run", "fashion-mnist-shirts", "--model", "linf-dist", "--data-dir",
                                    str(fashion_dir), "--out", str(out), "--epochs", "1", "--quiet",
                                    "--model-set", "widths=[32, 32]", "--set", "batch_size=64"])
    assert res.exit_code == 0, res.output
    model = asymcert.load(out)
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3,)
    cert = asymcert.certify(model, x, norms=("inf",))
    assert cert.binary and cert.sensitive.shape == (3,)
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["optimizer"] == "adam" and run["model"]["binary"] is True


def test_model_set_with_another_convex_kind_replaces_the_config(fashion_dir, tmp_path):
    """--model-set convex={...another kind...} replaces the task's convex config instead of merging it."""
    from asymcert.workflow import _merge
    base = {"convex": {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2}, "input_shape": [1]}
    merged = _merge(base, {"convex": {"kind": "icnn", "widths": [8]}})
    assert merged["convex"] == {"kind": "icnn", "widths": [8]}
    assert _merge(base, {"convex": {"channels": 8}})["convex"]["stem_kernel"] == 5  # same kind: merged
