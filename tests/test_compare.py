"""The method comparison, end to end on a small synthetic Fashion-MNIST-format task."""

from __future__ import annotations

import json

from asymcert.compare import COMPARE_JSON, COMPARE_MD, compare, compare_cli_main, method_specs
from asymcert.models import model_kinds


TINY = {
    "convex": {"model": {"convex": {"kind": "convex-conv", "channels": 2, "stem_kernel": 3, "blocks": 1}}},
    "linf-dist": {"model": {"widths": [16, 16]}, "train": {"batch_size": 64}},
    "smoothing": {"model": {"arch": "mlp", "widths": [16]}},
    "orthogonal": {"model": {"widths": [16]}},
    "ibp": {"model": {"channels": [4], "fc": [8]}},
}
METHODS = ("convex", "linf-dist", "smoothing", "orthogonal", "ibp", "no-such-method")


def test_compare_trains_certifies_reports_and_reloads(fashion_dir, tmp_path):
    overrides = {k: {**v, "train": {**v.get("train", {}), "epochs": 1}} for k, v in TINY.items()}
    out = tmp_path / "cmp"
    result = compare({"name": "fashion-mnist-shirts"}, out, methods=METHODS, preset="fast", n_smoothing=200,
                     limit=30, data_dir=fashion_dir, overrides=overrides, fail_fast=True)
    methods = result["methods"]
    for name in ("convex", "smoothing", "orthogonal", "ibp"):
        e = methods[name]
        assert e["status"] == "ok", e
        assert e["trained_now"] and e["n_inputs"] == 30
        assert (out / name / "certificates.safetensors").is_file() and (out / name / "report.md").is_file()
        assert set(e["certified_accuracy"]) == {"l1", "l2", "linf"}
        assert 0.0 <= e["clean_accuracy"] <= 1.0 and e["certify_seconds_per_input"] > 0
    assert methods["smoothing"]["deterministic"] is False and methods["smoothing"]["alpha"] == 0.001
    assert methods["ibp"]["method"] == "crown-ibp" and methods["orthogonal"]["method"] == "orthogonal"
    assert methods["no-such-method"]["status"] == "skipped" and "unknown method" in methods["no-such-method"]["reason"]
    if "linf-dist" in model_kinds():
        assert methods["linf-dist"]["status"] == "ok"
    else:
        assert methods["linf-dist"]["status"] == "skipped" and "not available" in methods["linf-dist"]["reason"]
    for png in ("compare_l1.png", "compare_l2.png", "compare_linf.png", "compare_runtime.png"):
        assert (out / png).stat().st_size > 1000
    saved = json.loads((out / COMPARE_JSON).read_text())
    assert saved["methods"]["smoothing"]["clean_accuracy"] == methods["smoothing"]["clean_accuracy"]
    md = (out / COMPARE_MD).read_text()
    assert "| method | certificate |" in md and "Not compared" in md and "no-such-method" in md
    assert "smaller than the paper" in md and "![linf](compare_linf.png)" in md

    # a second run loads the finished sub-runs instead of training them again
    messages: list[str] = []
    again = compare_cli_main("fashion-mnist-shirts", out, "smoothing,orthogonal", preset="fast", n_smoothing=200,
                             limit=30, data_dir=fashion_dir, progress=False, echo=messages.append)
    assert not again["methods"]["smoothing"]["trained_now"]
    assert again["methods"]["smoothing"]["certified_accuracy"] == methods["smoothing"]["certified_accuracy"]
    assert again["methods"]["orthogonal"]["clean_accuracy"] == methods["orthogonal"]["clean_accuracy"]
    assert any("loading the finished run" in m for m in messages) and messages[-1].endswith(COMPARE_MD)


def test_method_specs_scale():
    small, paper = method_specs(), method_specs(paper_scale=True)
    assert small["smoothing"]["certify"]["n"] == 10000 and paper["smoothing"]["certify"]["n"] == 100_000
    assert small["ibp"]["train"]["epochs"] == 20 and paper["ibp"]["train"]["epochs"] == 60
    assert paper["convex"]["train"] == {}  # the task's own (paper) settings
    assert {"convex", "linf-dist", "smoothing", "orthogonal", "ibp", "crown-ibp", "smoothing-splitting"} <= set(small)


def test_a_failing_method_is_reported_not_fatal(fashion_dir, tmp_path):
    bad = {"smoothing": {"model": {"smoothing": {"noise": "bogus"}}}}
    result = compare("fashion-mnist-shirts", tmp_path, methods=("smoothing",), limit=10, data_dir=fashion_dir,
                     overrides=bad)
    entry = result["methods"]["smoothing"]
    assert entry["status"] == "failed" and "bogus" in entry["reason"]
    assert "(failed)" in (tmp_path / COMPARE_MD).read_text()
