"""The method comparison, end to end on a small synthetic Fashion-MNIST-format task."""

from __future__ import annotations

import json

import numpy as np
import pytest
import rdata
from click.testing import CliRunner
from safetensors.numpy import load_file

from asymcert.certify.result import Guarantee, norm_label
from asymcert.certify.summary import CertifiedSummary, Detection, NormSummary
from asymcert.cli import EXIT_REFUSED, main
from asymcert.compare import (
    COMPARE_JSON,
    COMPARE_MD,
    CPU_EPOCHS,
    ComparedMethod,
    Comparison,
    FailedMethod,
    compare,
    compare_cli_main,
    method_specs,
    render_markdown,
)
from asymcert.data.spambase import SPAMBASE_THREAT_RADII
from asymcert.errors import UnknownNameError
from asymcert.report.machine import Machine
from asymcert.runfolder import dumps_strict
from tests.conftest import folder_held
from tests.data.test_spambase import _frame as spam_frame
from tests.data.test_user import _image_folder as image_folder

# Randomized smoothing as Cohen et al. (2019, section 4) certify: n0 = 100 selection samples, n = 100,000
# estimation samples, failure probability α = 0.001 (the "paper" column of compare.md's scale notes).
COHEN = {"n0": 100, "n": 100_000, "alpha": 0.001}


def _recompute(cert_file, report_radii):
    """(clean accuracy, {norm: {radius: certified accuracy}}) straight from a certificates file.

    Read with plain safetensors/numpy, not asymcert: clean = share of inputs whose decision is the
    label; certified at r (a binary task) = share of sensitive inputs (label 1) flagged, not
    abstained, with radius ≥ r.
    """
    t = load_file(str(cert_file))
    label, correct = t["label"], t["predicted"] == t["label"]
    if "abstained" in t:
        correct &= ~t["abstained"].astype(bool)
    sensitive = label == 1
    certified = {
        norm: {
            f"{r:g}": float(np.sum(correct & sensitive & (t[f"radius_{norm}"] >= r))) / int(sensitive.sum())
            for r in radii
        }
        for norm, radii in report_radii.items()
    }
    return float(np.mean(t["predicted"] == label)), certified


TINY = {
    "convex": {"model": {"convex": {"kind": "convex-conv", "channels": 2, "stem_kernel": 3, "blocks": 1}}},
    "linf-dist": {"model": {"widths": [16, 16]}, "train": {"batch_size": 64}},
    "smoothing": {"model": {"arch": "mlp", "widths": [16]}},
    "orthogonal": {"model": {"widths": [16]}},
    "ibp": {"model": {"channels": [4], "fc": [8]}},
}
METHODS = ("convex", "linf-dist", "smoothing", "orthogonal", "ibp")


def test_compare_trains_certifies_reports_and_reloads(fashion_dir, tmp_path):
    overrides = {k: {**v, "train": {**v.get("train", {}), "epochs": 1}} for k, v in TINY.items()}
    out = tmp_path / "cmp"
    result = compare(
        {"name": "fashion-mnist-shirts"},
        out,
        methods=METHODS,
        preset="fast",
        n_smoothing=200,
        limit=30,
        data_dir=fashion_dir,
        overrides=overrides,
        fail_fast=True,
    )
    assert list(result.compared) == list(METHODS) and not result.failed
    methods = {name: e.summary for name, e in result.compared.items()}
    for name in ("convex", "smoothing", "orthogonal", "ibp"):
        e = methods[name]
        assert result.compared[name].trained_now and e.n_inputs == 30
        assert (out / name / "certificates.safetensors").is_file() and (out / name / "report.md").is_file()
        assert set(e.norms) == {"l1", "l2", "linf"}
        assert e.certify_seconds_per_input > 0
        clean, certified = _recompute(out / name / "certificates.safetensors", result.report_radii)
        assert e.clean_accuracy == clean and e.to_dict()["certified_accuracy"] == certified, name
    assert not methods["smoothing"].deterministic and methods["smoothing"].alpha == COHEN["alpha"]
    assert methods["ibp"].method == "crown-ibp" and methods["orthogonal"].method == "orthogonal"
    for png in ("compare_l1.png", "compare_l2.png", "compare_linf.png", "compare_runtime.png"):
        assert (out / png).stat().st_size > 1000
    saved = json.loads((out / COMPARE_JSON).read_text())
    assert saved == json.loads(dumps_strict(result.to_dict(), default=str))  # compare.json is the returned comparison
    assert saved["methods"]["smoothing"]["clean_accuracy"] == methods["smoothing"].clean_accuracy
    md = (out / COMPARE_MD).read_text()
    assert "| method | certificate |" in md and "Not compared" not in md
    assert "smaller than the paper" in md and "![linf](compare_linf.png)" in md

    # a second run loads the finished sub-runs instead of training them again
    messages: list[str] = []
    again = compare_cli_main(
        "fashion-mnist-shirts",
        out,
        "smoothing,orthogonal",
        preset="fast",
        n_smoothing=200,
        limit=30,
        data_dir=fashion_dir,
        progress=False,
        echo=messages.append,
    )
    assert not again.compared["smoothing"].trained_now
    assert again.compared["smoothing"].summary.norms == methods["smoothing"].norms
    assert again.compared["orthogonal"].summary.clean_accuracy == methods["orthogonal"].clean_accuracy
    assert any("loading the finished run" in m for m in messages) and messages[-1].endswith(COMPARE_MD)


def test_method_specs_scale():
    small, paper = method_specs(n_smoothing=1234), method_specs(paper_scale=True, n_smoothing=1234)
    for name in ("smoothing", "smoothing-laplace", "smoothing-uniform"):
        for specs, n in ((small, 1234), (paper, COHEN["n"])):  # the CPU size is the caller's; the paper's is fixed
            opts, model = specs[name].certify, specs[name].model["smoothing"]
            assert {k: opts[k] for k in COHEN} == {**COHEN, "n": n}, name
            assert {k: model[k] for k in COHEN} == {k: opts[k] for k in COHEN}  # the model and certifier agree
    assert paper["linf-dist"].model["widths"] == [5120] * 5  # Zhang et al. 2021's ℓ∞-dist net
    trained = [m for m in small if small[m].train.get("epochs") is not None]
    assert {small[m].train["epochs"] for m in trained} == {CPU_EPOCHS}  # one CPU budget for every method
    assert all(paper[m].train["epochs"] > CPU_EPOCHS for m in trained if m != "convex")
    assert paper["convex"].train == {}  # the task's own (paper) settings
    assert {"convex", "linf-dist", "smoothing", "orthogonal", "ibp", "crown-ibp", "smoothing-splitting"} <= set(small)


def test_a_failing_method_is_reported_not_fatal(fashion_dir, tmp_path):
    bad = {"smoothing": {"model": {"smoothing": {"noise": "bogus"}}}}
    result = compare(
        "fashion-mnist-shirts", tmp_path, methods=("smoothing",), limit=10, data_dir=fashion_dir, overrides=bad
    )
    entry = result.methods["smoothing"]
    assert isinstance(entry, FailedMethod) and "bogus" in entry.reason
    assert result.to_dict()["methods"]["smoothing"] == {"status": "failed", "reason": entry.reason}
    assert "(failed)" in (tmp_path / COMPARE_MD).read_text()


def test_compare_json_keeps_its_keys_and_their_order():
    """compare.json (:meth:`Comparison.to_dict`) kept the keys, in their order, of the dicts it was built from before
    the comparison was typed; readers of compare.json rely on them. compare.md is rendered from the typed object."""
    summary = CertifiedSummary(
        "smoothing-gaussian", Guarantee.PROBABILISTIC, 0.001, 4, "raw input units", 0.75, 0.002,
        {"l2": NormSummary((0.5, 1.0), (0.5, 0.25), 0.7)}, Detection(2, 0.5, 0.0),
    )  # fmt: skip
    ok = ComparedMethod("smoothing", "out/s", True, 1.5, {"kind": "k"}, {"epochs": 1}, 60.0, {"n": 200}, summary)
    machine = Machine("cpu", 2, 1, "2.0", "3.12", "cpu", (1.0, 2.0, 3.0))
    result = Comparison(
        {"name": "t"}, "a task", "fast", False, 4, 2, 200, ("l2",), {"l2": [0.5, 1.0]},
        {"smoothing": ok, "ibp": FailedMethod("ValueError: no")}, machine, {"l2": "compare_l2.png"},
    )  # fmt: skip
    d = result.to_dict()
    assert list(d) == [
        "task", "task_description", "preset", "paper_scale", "n_inputs", "n_sensitive", "n_smoothing", "norms",
        "units", "report_radii", "methods", "machine", "plots",
    ]  # fmt: skip
    assert list(d["methods"]["smoothing"]) == [
        "status", "label", "run_dir", "trained_now", "train_wall_seconds", "model", "train", "training_seconds",
        "certify_options", "method", "guarantee", "deterministic", "alpha", "n_inputs", "units", "clean_accuracy",
        "certify_seconds_total", "certify_seconds_per_input", "certified_accuracy", "n_sensitive",
        "sensitive_flagged_correctly", "false_positive_rate", "median_radius",
    ]  # fmt: skip
    assert d["methods"]["smoothing"]["certify_options"] == {"method": "smoothing-gaussian", "n": 200}
    assert list(d["methods"]["smoothing"]["certify_options"]) == ["method", "n"]
    assert d["methods"]["ibp"] == {"status": "failed", "reason": "ValueError: no"}
    assert list(d["machine"]) == ["cpu", "cores", "torch_threads", "torch", "python", "device", "load_average"]
    assert d["machine"]["load_average"] == [1.0, 2.0, 3.0] and d["norms"] == ["l2"]
    md = render_markdown(result)
    assert "| smoothing (`smoothing`) | smoothing-gaussian (probability 1 − 0.001) | 75.0% | 50.0% | 0.50 | 1.0 |" in md
    assert "| smoothing | 50.0% | 25.0% | 0.7 |" in md and "- `ibp` (failed): ValueError: no" in md
    assert "load average [1.0, 2.0, 3.0] when" in md and md.endswith("![l2](compare_l2.png)\n")


def test_an_unknown_method_is_refused_before_anything_is_read_or_written(tmp_path):
    """A typo in --methods used to be skipped with exit 0 and a note in compare.md; now one line, exit 2, and no
    folder (the task's data is not even looked for: data_dir holds none)."""
    with pytest.raises(UnknownNameError, match=r"unknown method\(s\) bogus, smoothng; known: .*smoothing"):
        compare(
            "fashion-mnist-shirts", tmp_path / "c", methods=("convex", "bogus", "smoothng"), data_dir=tmp_path / "no"
        )
    res = CliRunner().invoke(
        main, ["compare", "fashion-mnist-shirts", "--out", str(tmp_path / "c"), "--methods", "ibp,x"]
    )
    assert res.exit_code == EXIT_REFUSED and res.output.count("\n") == 1 and "unknown method(s) x" in res.output
    assert not (tmp_path / "c").exists()


def test_the_bound_propagation_methods_on_flat_feature_vectors_are_mlps(tmp_path):
    """`compare spambase` (or breast-cancer) gave the IBP methods the image CNN: 'arch cnn needs image inputs',
    FAILED in compare.md (docs check 29c #2). On flat feature vectors they are MLPs now; images keep the CNN."""
    flat, images = method_specs(images=False), method_specs()
    assert flat["ibp"].model["arch"] == flat["crown-ibp"].model["arch"] == "mlp"
    assert images["ibp"].model["arch"] == images["crown-ibp"].model["arch"] == "cnn"
    assert method_specs(paper_scale=True, images=False)["smoothing"].model["arch"] == "mlp"
    assert method_specs(paper_scale=True)["smoothing"].model["arch"] == "cnn"
    result = compare("breast-cancer", tmp_path, methods=("ibp",), preset="fast", limit=20)
    assert not result.failed, result.failed
    assert 0.0 <= result.compared["ibp"].summary.clean_accuracy <= 1.0
    widths = "-".join(str(w) for w in result.compared["ibp"].model["widths"])
    assert f"IBP: MLP {widths} (flat feature vectors)" in (tmp_path / COMPARE_MD).read_text()  # (it said: small CNN)


def test_a_comparison_folder_has_one_writer(fashion_dir, tmp_path):
    """Two compares into one --out both exited 0, each marking the method the other trained as failed, and the last
    one's compare.json won (audit 29e #3): the second is now refused at once (exit 3) and writes nothing."""
    out = tmp_path / "c"
    with folder_held(out):
        args = ["compare", "fashion-mnist-shirts", "--out", str(out), "--methods", "convex", "--limit", "5"]
        res = CliRunner().invoke(main, [*args, "--data-dir", str(fashion_dir)])
        assert res.exit_code == 3 and "RunFolderBusyError" in res.output
        assert sorted(p.name for p in out.iterdir()) == [".asymcert.lock"]


def test_a_comparison_with_a_failed_method_or_none_is_not_exit_0(fashion_dir, tmp_path):
    """`compare` exited 0 when every method failed (audit 29e #5) and with `--methods ,` (#10): now exit 2, the
    report written first where there is one."""
    res = CliRunner().invoke(main, ["compare", "fashion-mnist-shirts", "--out", str(tmp_path / "e"), "--methods", ","])
    assert res.exit_code == EXIT_REFUSED and "give at least one method" in res.output
    assert not (tmp_path / "e").exists()
    (tmp_path / "f" / "convex").mkdir(parents=True)
    (tmp_path / "f" / "convex" / "model.safetensors").write_text("not a model")  # (the method cannot load or train)
    args = ["compare", "fashion-mnist-shirts", "--out", str(tmp_path / "f"), "--methods", "convex", "--limit", "5"]
    res = CliRunner().invoke(main, [*args, "--data-dir", str(fashion_dir)])
    assert res.exit_code == EXIT_REFUSED and "MethodsFailedError: 1 of 1 methods failed" in res.output
    assert json.loads((tmp_path / "f" / COMPARE_JSON).read_text())["methods"]["convex"]["status"] == "failed"


def test_a_task_with_a_threat_model_is_compared_in_its_units(tmp_path):
    """`compare spambase` certified every method under the task's spammer threat model (threat-model units) but
    tabled them at the task's raw-unit report radii and said "(raw input units)" in compare.md and on the plots'
    axes (found in session 31). Now the tables use the task's threat-model report radii, and compare.json,
    compare.md and the plots say which units the radii are in. SpamBase here is a small file in kernlab's own
    format, written by the test."""
    rdata.write_rda(tmp_path / "spam.rda", {"spam": spam_frame(300)})
    out = tmp_path / "cmp"
    result = compare("spambase", out, methods=("convex",), preset="fast", data_dir=tmp_path, fail_fast=True)
    units = "threat-model units (δ_i / scale_i)"
    assert result.units == units and result.compared["convex"].summary.units == units
    assert result.report_radii == {norm_label(p): list(r) for p, r in SPAMBASE_THREAT_RADII.items()}
    clean, certified = _recompute(out / "convex" / "certificates.safetensors", result.report_radii)
    assert result.compared["convex"].summary.to_dict()["certified_accuracy"] == certified
    assert clean == result.compared["convex"].summary.clean_accuracy > 0.5
    saved = json.loads((out / COMPARE_JSON).read_text())
    assert saved["units"] == units and saved["report_radii"]["l1"] == [0.5, 1.0, 2.0, 4.0]
    md = (out / COMPARE_MD).read_text()
    assert f"radius ≥ r (radii in {units})" in md and "raw input units" not in md
    # the scale notes say how the methods were trained (the fast preset: 2 epochs; they said 20, audit units31)
    assert "  - 2 training epochs per method (paper: 60–150)" in md and "20 training epochs" not in md
    widths = "-".join(str(w) for w in method_specs(images=False)["ibp"].model["widths"])
    assert f"IBP: MLP {widths} (flat feature vectors)" in md  # (IBP not compared: it said small CNN, review 31b)


def test_a_comparison_on_an_image_folder_says_its_pixel_scaling(tmp_path):
    """compare() on an image folder (the Python route): its radii are raw input units of pixels / 255, which the
    comparison names as a run's report does (a check of session 31's units fix)."""
    root = image_folder(tmp_path / "pics", {"cats": 12, "dogs": 12}, size=(6, 6))
    spec = {"images": str(root), "sensitive_class": "cats", "other_class": "dogs"}
    tiny = {"convex": {"model": {"convex": {"kind": "icnn", "widths": [4]}}, "train": {"epochs": 1}}}
    result = compare(spec, tmp_path / "c", methods=("convex",), overrides=tiny, fail_fast=True)
    assert result.units == result.compared["convex"].summary.units == "raw input units (pixel values / 255, in [0, 1])"
    assert f"(radii in {result.units})" in (tmp_path / "c" / COMPARE_MD).read_text()
