"""Threat models through the pipeline and the command line: run, train, certify, certify --input, audit."""

from __future__ import annotations

import csv
import importlib.util
import json
import math
import re
import shutil

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import asymcert
from asymcert.certify.certfile import load_certificates
from asymcert.cli import EXIT_OK, EXIT_REFUSED, _other_mode_note, main
from asymcert.errors import ConfigError, InputError, RunFolderConflictError
from asymcert.pipeline import read_run, run_data, train_run
from asymcert.runfolder import CertificateMode, RunRecord
from asymcert.threat import ThreatModel
from asymcert.traffic import certify_file
from asymcert.train.balance import allowed_false_positives, per_candidate_confidence

FEATURES = ["links", "words", "caps", "age"]
TM = {
    "scale": {"caps": 10.0, "*": 1.0},
    "immutable": ["age"],
    "increase_only": ["words"],
    "lower": {"*": 0.0},
    "norms": [1, "inf"],
}


def _write(path, n, seed, labels=True):
    g = np.random.default_rng(seed)
    x = (np.abs(g.normal(size=(n, 4))) * np.array([1.0, 3.0, 20.0, 5.0])).astype(np.float32).astype(np.float64)
    y = np.where(x[:, 0] - 0.2 * x[:, 1] + 0.02 * x[:, 2] > 0.3, "spam", "ham")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*FEATURES, *(["kind"] if labels else [])])
        for row, label in zip(x, y, strict=True):
            w.writerow([*map(repr, map(float, row)), *([label] if labels else [])])
    return x.astype(np.float32), y


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("cli_threat")
    _write(root / "train.csv", 300, 0)
    (root / "tm.json").write_text(json.dumps(TM))
    return root


def _run_args(folder, out, *extra):
    return [
        "run",
        "--csv",
        str(folder / "train.csv"),
        "--label-column",
        "kind",
        "--sensitive-class",
        "spam",
        "--epochs",
        "3",
        "--out",
        str(out),
        "--quiet",
        *extra,
    ]


@pytest.fixture(scope="module")
def tm_run(folder):
    res = CliRunner().invoke(main, _run_args(folder, folder / "run", "--threat-model", str(folder / "tm.json")))
    assert res.exit_code == EXIT_OK, res.output
    return folder / "run"


def _resolved():
    return ThreatModel.from_dict(TM).resolve(FEATURES, 4)


def test_run_records_the_threat_model_and_reports_in_its_units(tm_run):
    record = read_run(tm_run)
    assert (record.threat_model or {})["immutable"] == ["age"] and record.report_radii == {}
    results = json.loads((tm_run / "results.json").read_text())
    assert results["units"] == "threat-model units (δ_i / scale_i)"
    assert set(results["certified_accuracy"]) == {"l1", "linf"}  # the threat model's norms
    assert all(results["certified_accuracy"][n] for n in ("l1", "linf"))  # radii picked from the certificates
    report = (tm_run / "report.md").read_text()
    assert "radii in threat-model units" in report and '- threat model (run.json): `{"scale"' in report
    assert "threshold b fitted for equal class accuracies on validation" in report
    cert, _ = load_certificates(tm_run / "certificates.safetensors")
    model = asymcert.load(tm_run)
    from_python = asymcert.certify(model, _test_x(tm_run), norms=(1, "inf"), threat_model=_resolved())
    for p in (1.0, math.inf):
        assert torch.equal(cert.radii[p], from_python.radii[p])


def _test_x(run_dir):
    return run_data(run_dir).test.x


def test_certify_input_uses_the_runs_threat_model_unless_told_otherwise(tm_run, tmp_path):
    x, _ = _write(tmp_path / "new.csv", 40, 5, labels=False)
    model = asymcert.load(tm_run)
    args = ["certify", str(tm_run), "--input", str(tmp_path / "new.csv"), "--quiet"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "tm.csv")])
    assert res.exit_code == EXIT_OK and "radii in threat-model units" in res.output, res.output
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "raw.csv"), "--no-threat-model"])
    assert res.exit_code == EXIT_OK and "radii in raw input units" in res.output, res.output
    with (tmp_path / "tm.csv").open() as f:
        tm_rows = list(csv.DictReader(f))
    with (tmp_path / "raw.csv").open() as f:
        raw_rows = list(csv.DictReader(f))
    assert list(tm_rows[0]) == ["index", "score", "flagged", "radius_l1", "radius_linf"]
    assert list(raw_rows[0]) == ["index", "score", "flagged", "radius_l1", "radius_l2", "radius_linf"]  # no norms named
    x64 = torch.from_numpy(x).double()  # the CSV's numbers (read as float64: edits of that type, read rounded)
    want = asymcert.certify(model, x64, norms=(1, "inf"), threat_model=_resolved())
    plain = asymcert.certify(model, x64, norms=(1, "inf"))
    for i in range(40):
        assert float(tm_rows[i]["radius_linf"]) == float(want.radii[math.inf][i])
        assert float(raw_rows[i]["radius_linf"]) == float(plain.radii[math.inf][i])
    flagged = plain.sensitive
    assert bool((want.radii[1.0][flagged] >= plain.radii[1.0][flagged]).all())  # immutable/one-sided/domain help


def test_audit_under_the_runs_threat_model(tm_run):
    res = CliRunner().invoke(main, ["audit", str(tm_run), "--limit", "40", "--steps", "30", "--restarts", "1"])
    assert res.exit_code == EXIT_OK, res.output
    report = json.loads((tm_run / "audit.json").read_text())
    assert report["units"] == "threat-model units (δ_i / scale_i)" and report["violations"] == 0
    entry = report["methods"]["feature-convex"]["norms"]
    assert entry["l1"]["attack"]["attacked"] > 0 and entry["linf"]["attack"]["max_norm_over_radius"] <= 1.0
    for norm in ("l1", "linf"):  # exact radii under the same threat model: certified ≤ exact, and close
        assert entry[norm]["exact"]["available"] and entry[norm]["exact"]["violations"] == 0
        assert 0.5 < entry[norm]["exact"]["tightness"]["median"] <= 1.0


def test_certify_rewrites_the_report_with_its_certificates_in_their_units(tm_run, tmp_path):
    other = tmp_path / "other.json"
    other.write_text(json.dumps({"scale": {"*": 2.0}}))
    res = CliRunner().invoke(main, ["certify", str(tm_run), "--threat-model", str(other), "--quiet"])
    assert res.exit_code == EXIT_OK and "radii in threat-model units" in res.output, res.output
    results = json.loads((tm_run / "results.json").read_text())  # certify rewrote the report with the certificates
    assert set(results["certified_accuracy"]) == {"l1", "l2", "linf"}  # the other file names no norms
    assert "report.md" in res.output and "radii in threat-model units" in (tm_run / "report.md").read_text()
    res = CliRunner().invoke(main, ["certify", str(tm_run), "--no-threat-model", "--norms", "2", "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    results = json.loads((tm_run / "results.json").read_text())
    assert results["units"] == "raw input units" and set(results["certified_accuracy"]) == {"l2"}
    res = CliRunner().invoke(main, ["certify", str(tm_run), "--quiet"])  # back to the run's own threat model
    assert res.exit_code == EXIT_OK, res.output
    assert json.loads((tm_run / "results.json").read_text())["units"] == "threat-model units (δ_i / scale_i)"


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ({"immutable": ["nope"]}, "unknown feature 'nope'"),
        ({"immutable": ["age"], "increase_only": ["age"]}, "'age' is both immutable and increase_only"),
        ({"scale": {"caps": -1}}, "must be a number from"),
        ({"scale": {"*": 1e-320}}, "must be a number from"),  # a traceback after the certificates were replaced
        ({"radius": 1}, "unknown key(s) ['radius']"),
    ],
)
def test_a_bad_threat_model_is_one_line_and_writes_nothing(folder, tmp_path, content, message):
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps(content))
    out = tmp_path / "never"
    res = CliRunner().invoke(main, _run_args(folder, out, "--threat-model", str(bad)))
    assert res.exit_code == EXIT_REFUSED and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output
    assert not out.exists()


def test_both_threat_model_flags_is_a_usage_error(folder, tmp_path):
    res = CliRunner().invoke(
        main, _run_args(folder, tmp_path / "x", "--threat-model", str(folder / "tm.json"), "--no-threat-model")
    )
    assert res.exit_code == EXIT_REFUSED and "exclude each other" in res.output
    assert not (tmp_path / "x").exists()


def test_a_folder_holding_a_run_with_another_threat_model_is_refused(folder, tm_run):
    spec = read_run(tm_run).task  # the same task as the command line wrote
    with pytest.raises(RunFolderConflictError, match="with another threat model;"):
        train_run(spec, tm_run, train_overrides={"epochs": 3}, progress=False, threat_model=ThreatModel())
    with pytest.raises(ConfigError, match="unknown feature 'x9'"):
        train_run(spec, folder / "new", progress=False, threat_model=ThreatModel(immutable=["x9"]))
    assert not (folder / "new").exists()


def test_std_scales_are_fixed_from_the_training_inputs(folder, tmp_path):
    (tmp_path / "std.json").write_text(json.dumps({"scale": {"*": "std", "age": 2.0}, "immutable": ["caps"]}))
    out = tmp_path / "run"
    res = CliRunner().invoke(main, _run_args(folder, out, "--threat-model", str(tmp_path / "std.json")))
    assert res.exit_code == EXIT_OK, res.output
    stored = (read_run(out).threat_model or {})["scale"]
    train_x = run_data(out).train.x.double()
    assert stored["age"] == 2.0 and set(stored) == {"age", "links", "words", "caps"}
    for i, name in enumerate(FEATURES[:3]):
        assert stored[name] == pytest.approx(float(train_x[:, i].std()), rel=1e-12)
    res = CliRunner().invoke(main, ["certify", str(out), "--threat-model", str(tmp_path / "std.json"), "--quiet"])
    assert res.exit_code == EXIT_REFUSED and 'scale "std" is fixed from the training inputs' in res.output


def test_export_carries_the_runs_threat_model_radii(tm_run, tmp_path):
    ort = pytest.importorskip("onnxruntime")
    res = CliRunner().invoke(main, ["export", str(tm_run), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == EXIT_OK and "tm_radius_l1" in res.output, res.output
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    x = _test_x(tm_run)
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x.numpy()})))
    lib = asymcert.certify(asymcert.load(tm_run), x, norms=(1,), threat_model=_resolved(), precision="float64")
    assert bool((torch.from_numpy(out["tm_radius_l1"]).double() <= lib.radii[1.0]).all())
    res = CliRunner().invoke(main, ["export", str(tm_run), "--out", str(tmp_path / "p.onnx"), "--no-threat-model"])
    assert res.exit_code == EXIT_OK and "tm_radius" not in res.output, res.output


def test_monotone_features_by_column_name_certify_at_infinity_for_harmless_moves(folder, tmp_path):
    out = tmp_path / "mono"
    args = _run_args(folder, out, "--model-set", 'monotone={"increasing": ["links", "caps"]}')
    res = CliRunner().invoke(main, args)
    assert res.exit_code == EXIT_OK, res.output
    assert read_run(out).model["monotone"] == {"increasing": [0, 2], "decreasing": []}
    model, x = asymcert.load(out), run_data(out).test.x
    bounds = {"upper": {"links": 10.0, "caps": 200.0}}  # ∞ needs every allowed move to stay in a bounded box
    spam_only_adds = ThreatModel(increase_only=["links", "caps"], immutable=["words", "age"], **bounds)
    cert = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=spam_only_adds.resolve(FEATURES, 4))
    flagged = cert.sensitive
    assert int(flagged.sum()) > 0 and all(bool(torch.isinf(cert.radii[p][flagged]).all()) for p in cert.radii)
    unbounded = ThreatModel(increase_only=["links", "caps"], immutable=["words", "age"]).resolve(FEATURES, 4)
    far = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=unbounded)
    assert all(bool((far.radii[p][flagged] > 1e3).all() & far.radii[p][flagged].isfinite().all()) for p in far.radii)
    if importlib.util.find_spec("onnx") is not None:
        _monotone_vnnlib_export(out, tmp_path, int(flagged.sum()))
    res = CliRunner().invoke(main, _run_args(folder, tmp_path / "bad", "--model-set", 'monotone={"increasing": ["x"]}'))
    assert res.exit_code == EXIT_REFUSED and "monotone: unknown feature(s) ['x']" in res.output
    assert not (tmp_path / "bad").exists()


def _monotone_vnnlib_export(run, tmp_path, n_flagged):
    """A monotone run's certified inputs (radius ∞ for harmless moves in a bounded domain): with finite upper bounds
    they are exported, each box reaching the domain's bound; toward an unbounded domain their radius is finite
    (float32 could overflow far out), so they are exported with finite boxes, none left out (the export said
    "wrote 0 properties" and nothing else)."""
    moves = {"increase_only": ["links", "caps"], "immutable": ["words", "age"]}
    (tmp_path / "open.json").write_text(json.dumps(moves))
    (tmp_path / "closed.json").write_text(json.dumps({**moves, "upper": {"links": 50.0, "caps": 900.0}}))
    args = ["export", str(run), "--format", "vnnlib", "--threat-model"]
    res = CliRunner().invoke(main, [*args, str(tmp_path / "open.json"), "--out", str(tmp_path / "open")])
    assert res.exit_code == EXIT_OK, res.output
    assert f"wrote {n_flagged} properties" in res.output and "left out" not in res.output
    for prop in json.loads((tmp_path / "open" / "radii.json").read_text())["properties"]:
        assert 1e3 < prop["radii"]["tm_radius_linf"] < math.inf
    res = CliRunner().invoke(main, [*args, str(tmp_path / "closed.json"), "--out", str(tmp_path / "closed")])
    assert res.exit_code == EXIT_OK and f"wrote {n_flagged} properties" in res.output and "left out" not in res.output
    summary = json.loads((tmp_path / "closed" / "radii.json").read_text())
    assert summary["unbounded_boxes_left_out"] == [] and len(summary["properties"]) == n_flagged
    for prop in summary["properties"]:
        text = (tmp_path / "closed" / prop["file"]).read_text()
        assert "(assert (<= X_0 50.0))" in text and "(assert (<= X_2 900.0))" in text  # the domain's box
        assert f"(assert (<= X_1 {prop['centre'][1]!r}))" in text  # immutable: fixed at the centre


def test_reach_flag_gives_the_librarys_reach_radii_on_both_paths(tm_run, tmp_path):
    x, _ = _write(tmp_path / "new.csv", 40, 6, labels=False)
    model = asymcert.load(tm_run)
    args = ["certify", str(tm_run), "--input", str(tmp_path / "new.csv"), "--quiet", "--reach"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "reach.csv")])
    assert res.exit_code == EXIT_OK, res.output
    with (tmp_path / "reach.csv").open() as f:
        rows = list(csv.DictReader(f))
    x64 = torch.from_numpy(x).double()  # the CSV's numbers, as certify --input reads them
    want = asymcert.certify(model, x64, norms=(1, "inf"), threat_model=_resolved(), reach=True)
    assert [float(r["radius_linf"]) for r in rows] == want.radii[math.inf].tolist()
    copy = tmp_path / "run"
    shutil.copytree(tm_run, copy)
    res = CliRunner().invoke(main, ["certify", str(copy), "--quiet", "--reach"])
    assert res.exit_code == EXIT_OK, res.output
    cert, _ = load_certificates(copy / "certificates.safetensors")
    direct = asymcert.certify(model, _test_x(tm_run), norms=(1, "inf"), threat_model=_resolved(), reach=True)
    assert torch.equal(cert.radii[math.inf], direct.radii[math.inf])


def test_parquet_results_say_whether_their_radii_are_reach_aware(tm_run, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    _write(tmp_path / "new.csv", 12, 9, labels=False)
    for extra, mode in (([], b"closed form"), (["--reach"], b"reach-aware")):
        out = tmp_path / f"r{len(extra)}.parquet"
        res = CliRunner().invoke(
            main, ["certify", str(tm_run), "--input", str(tmp_path / "new.csv"), "--out", str(out), *extra]
        )
        assert res.exit_code == EXIT_OK, res.output
        assert pq.read_schema(out).metadata[b"asymcert.radii"] == mode


def test_python_warnings_are_one_line_on_the_command_line(tm_run, tmp_path):
    """certify of a test split partly outside a given threat model's domain: 'warning: ...', no file path."""
    copy = tmp_path / "run"
    shutil.copytree(tm_run, copy)
    (tmp_path / "narrow.json").write_text(json.dumps({"upper": {"words": 0.5}}))
    res = CliRunner().invoke(main, ["certify", str(copy), "--threat-model", str(tmp_path / "narrow.json"), "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    assert "warning: " in res.output and "lie outside the threat model's domain" in res.output
    assert "UserWarning" not in res.output and ".py:" not in res.output


def test_an_option_the_certifier_does_not_take_is_refused_before_any_output(tm_run, tmp_path):
    _write(tmp_path / "new.csv", 10, 7, labels=False)
    with pytest.raises(InputError, match="has no option 'bogus'"):
        certify_file(tm_run, tmp_path / "new.csv", tmp_path / "out.csv", progress=False, options={"bogus": 1})
    assert not (tmp_path / "out.csv").exists()


@pytest.mark.parametrize("command", ["certify", "certify-input", "audit"])
def test_reach_without_a_threat_model_to_reach_under_is_refused(tm_run, tmp_path, command):
    """--reach changes nothing without a threat model, so asking for it there is a mistake: one line, exit 2."""
    copy = tmp_path / "run"
    shutil.copytree(tm_run, copy)
    _write(tmp_path / "new.csv", 5, 8, labels=False)
    args = {
        "certify": ["certify", str(copy)],
        "certify-input": ["certify", str(copy), "--input", str(tmp_path / "new.csv"), "--out", str(tmp_path / "r.csv")],
        "audit": ["audit", str(copy), "--limit", "5"],
    }[command]
    before = sorted(p.name for p in copy.iterdir())
    res = CliRunner().invoke(main, [*args, "--reach", "--no-threat-model"])
    assert res.exit_code == EXIT_REFUSED and "--reach enlarges radii under a threat model" in res.output, res.output
    assert sorted(p.name for p in copy.iterdir()) == before and not (tmp_path / "r.csv").exists()


def test_exact_milp_with_no_exact_is_refused(tm_run, tmp_path):
    """--exact-milp asks for exact radii and --no-exact for none: one line saying so, exit 2, the folder unchanged
    (it ran and audit.md said "exact=False": audit 33 F7)."""
    copy = tmp_path / "run"
    shutil.copytree(tm_run, copy)
    before = sorted(p.name for p in copy.iterdir())
    res = CliRunner().invoke(main, ["audit", str(copy), "--limit", "5", "--exact-milp", "--no-exact"])
    assert res.exit_code == EXIT_REFUSED and "the two flags conflict" in res.output, res.output
    assert sorted(p.name for p in copy.iterdir()) == before


@pytest.mark.parametrize("command", [["certify"], ["audit", "--limit", "5"], ["export", "--format", "vnnlib"]])
def test_a_data_dir_for_a_run_of_its_own_file_is_refused(tm_run, tmp_path, command):
    """A CSV run reads its own file: --data-dir was ignored without a word (session 33 ONNX review); now one line,
    exit 2, nothing written."""
    copy = tmp_path / "run"
    shutil.copytree(tm_run, copy)
    before = sorted(p.name for p in copy.iterdir())
    extra = ["--out", str(tmp_path / "bench")] if command[0] == "export" else []
    res = CliRunner().invoke(main, [command[0], str(copy), *command[1:], *extra, "--data-dir", str(tmp_path / "no")])
    assert res.exit_code == EXIT_REFUSED, res.output
    assert "--data-dir is where a built-in task's data lives" in res.output and "train.csv" in res.output
    assert len(res.output.strip().splitlines()) == 1
    assert sorted(p.name for p in copy.iterdir()) == before and not (tmp_path / "bench").exists()


@pytest.mark.parametrize(
    "fmt, extra, message",
    [
        ("vnnlib", ["--norms", "2"], "--norms does not apply to --format vnnlib"),
        ("vnnlib", ["--no-certificates"], "--no-certificates does not apply to --format vnnlib"),
        ("onnx", ["--limit", "5"], "--limit does not apply to --format onnx"),
        ("onnx", ["--limit", "5", "--timeout", "9"], "--limit and --timeout do not apply to --format onnx"),
        ("onnx", ["--data-dir", "somewhere"], "--data-dir does not apply to --format onnx"),
    ],
)
def test_export_options_of_the_other_format_are_refused(tm_run, tmp_path, fmt, extra, message):
    out = tmp_path / ("m.onnx" if fmt == "onnx" else "bench")
    res = CliRunner().invoke(main, ["export", str(tm_run), "--format", fmt, "--out", str(out), *extra])
    assert res.exit_code == EXIT_REFUSED and message in res.output, res.output
    assert not out.exists()


def test_vnnlib_export_uses_the_runs_threat_model_boxes(tm_run, tmp_path):
    pytest.importorskip("onnx")
    res = CliRunner().invoke(main, ["export", str(tm_run), "--format", "vnnlib", "--out", str(tmp_path / "b")])
    assert res.exit_code == EXIT_OK and "the threat model's ℓ∞ boxes" in res.output, res.output
    summary = json.loads((tmp_path / "b" / "radii.json").read_text())
    assert summary["units"] == _resolved().units() and summary["threat_model"] == ThreatModel.from_dict(TM).to_dict()
    assert summary["properties"] and all("tm_radius_linf" in p["radii"] for p in summary["properties"])


VARIABLE = re.compile(r"^; X_(\d+) centre (\S+)(?: feature (\".*\"))?$", re.MULTILINE)


def test_exports_name_the_runs_features_and_centres_for_a_third_party(tm_run, tmp_path):
    """With the exported files only (no asymcert, no run.json): which feature each X_i is, the point each box is
    built around, what the graph's outputs mean and the threat model (nothing recorded them before)."""
    onnx = pytest.importorskip("onnx")
    for args in (["--out", str(tmp_path / "m.onnx")], ["--format", "vnnlib", "--out", str(tmp_path / "b")]):
        res = CliRunner().invoke(main, ["export", str(tm_run), *args])
        assert res.exit_code == EXIT_OK, res.output
    res = CliRunner().invoke(main, ["export", str(tm_run), "--out", str(tmp_path / "m.onnx")])
    assert (  # audit units30 F3: each radius family with its units
        "outputs score, flagged, radius_l1, radius_l2, radius_linf (in raw input units), tm_radius_l1, tm_radius_l2, "
        f"tm_radius_linf (in {_resolved().units()})"
    ) in res.output, res.output
    for path in (tmp_path / "m.onnx", tmp_path / "b" / "model.onnx"):
        proto = onnx.load(str(path))
        meta = {p.key: p.value for p in proto.metadata_props}
        assert json.loads(meta["asymcert.feature_names"]) == FEATURES
        assert json.loads(meta["asymcert.input_shape"]) == [4]
        assert json.loads(meta["asymcert.threat_model"]) == ThreatModel.from_dict(TM).to_dict()
        assert list(json.loads(meta["asymcert.outputs"])) == [o.name for o in proto.graph.output]
        assert json.loads(meta["asymcert.preprocessing"])["inside_graph"] is True
        assert meta["asymcert.units"] == _resolved().units() and "inside the graph" in proto.doc_string
    summary = json.loads((tmp_path / "b" / "radii.json").read_text())
    assert summary["feature_names"] == FEATURES and summary["properties"]
    x = _test_x(tm_run).float()
    for prop in summary["properties"]:
        found = VARIABLE.findall((tmp_path / "b" / prop["file"]).read_text())
        assert [int(i) for i, _, _ in found] == [0, 1, 2, 3]
        assert [json.loads(name) for _, _, name in found] == FEATURES
        centre = [float(c) for _, c, _ in found]
        assert centre == prop["centre"] == x[prop["index"]].tolist()


def test_audit_of_the_reach_radii(tm_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tm_run, copy)
    res = CliRunner().invoke(main, ["audit", str(copy), "--limit", "30", "--steps", "20", "--restarts", "1", "--reach"])
    assert res.exit_code == EXIT_OK, res.output
    assert json.loads((copy / "audit.json").read_text())["settings"]["certifier_options"] == {"reach": True}


def test_audit_with_exact_radii_through_hinges(folder, tmp_path):
    """--exact-milp on a hinges model (no affine φ): ℓ∞ and ℓ1 (the threat model's norms) get exact radii,
    0 violations, tightness ≤ 1; without the flag the same audit has none."""
    run = tmp_path / "hinges"
    tm = ["--threat-model", str(folder / "tm.json")]
    res = CliRunner().invoke(main, _run_args(folder, run, "--preset", "hinges", *tm))
    assert res.exit_code == EXIT_OK, res.output
    args = ["audit", str(run), "--limit", "20", "--steps", "20", "--restarts", "1"]
    res = CliRunner().invoke(main, [*args, "--exact-milp", "--exact-time-limit", "30"])
    assert res.exit_code == EXIT_OK, res.output
    written = (run / "audit.json").read_bytes()
    refused = CliRunner().invoke(main, [*args, "--exact-milp", "--exact-time-limit", "0"])
    assert refused.exit_code == 2 and "--exact-time-limit" in refused.output and "Traceback" not in refused.output
    assert (run / "audit.json").read_bytes() == written  # a refused command changes nothing
    norms = json.loads(written)["methods"]["feature-convex"]["norms"]
    for exact in (norms["linf"]["exact"], norms["l1"]["exact"]):
        assert exact["available"] and exact["violations"] == 0 and exact["open_brackets"] == 0
        assert 0 < exact["tightness"]["median"] <= 1
    assert CliRunner().invoke(main, args).exit_code == EXIT_OK
    linf = json.loads((run / "audit.json").read_text())["methods"]["feature-convex"]["norms"]["linf"]["exact"]
    assert not linf["available"] and "affine" in linf["reason"]


@pytest.mark.parametrize(("rate", "confidence"), [(0.05, None), (0.25, 0.9)], ids=["on-validation", "confident"])
def test_an_operating_point_run_keeps_its_false_positive_budget_and_its_certificates_hold(
    folder, tmp_path, rate, confidence
):
    """``--set false_positive_rate=0.05``: b flags at most 5% of the validation ham (with a confidence, at most
    the binomial tail's count at confidence 1 − 0.1/3 per epoch: 14 validation ham allow none at 25%); the
    report gives both classes' rates and the operating point; the audit's constrained attacks find no flip
    inside a radius."""
    out = tmp_path / "fpr"
    point = ["--set", f"false_positive_rate={rate}"]
    point += [] if confidence is None else ["--set", f"false_positive_confidence={confidence}"]
    res = CliRunner().invoke(main, _run_args(folder, out, "--threat-model", str(folder / "tm.json"), *point))
    assert res.exit_code == EXIT_OK, res.output
    assert read_run(out).train["false_positive_rate"] == rate
    model, data = asymcert.load(out), run_data(out)
    with torch.no_grad():
        val_flagged, test_flagged = model(data.val.x) > 0, model(data.test.x) > 0
    n_ham = int((data.val.y == 0).sum())
    per_epoch = per_candidate_confidence(confidence, 3)
    assert int(val_flagged[data.val.y == 0].sum()) <= allowed_false_positives(n_ham, rate, per_epoch)
    results = json.loads((out / "results.json").read_text())
    ham = data.test.y == 0
    assert results["false_positive_rate"] == pytest.approx(float(test_flagged[ham].double().mean()))
    assert results["sensitive_flagged_correctly"] == pytest.approx(float(test_flagged[~ham].double().mean()))
    report = (out / "report.md").read_text()
    where = "validation" if confidence is None else "new inputs, with confidence 0.9"
    assert f"at most {100 * rate:g}% of the other class flagged on {where}" in report
    audit = CliRunner().invoke(main, ["audit", str(out), "--limit", "40", "--steps", "30", "--restarts", "1"])
    assert audit.exit_code == EXIT_OK, audit.output
    assert json.loads((out / "audit.json").read_text())["violations"] == 0


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--set", "false_positive_rate=1"], "false_positive_rate must be null"),
        (["--set", 'false_positive_rate="low"'], "false_positive_rate must be null"),
        (["--model", "linf-dist", "--set", "false_positive_rate=0.1"], "only supported by the feature-convex recipe"),
        (["--set", "false_positive_confidence=0.9"], "false_positive_confidence needs false_positive_rate"),
        (
            ["--set", "false_positive_rate=0.2", "--set", "false_positive_confidence=0.9", "--set", "refit=true"],
            "false_positive_confidence needs a validation split the model did not depend on; refit=true",
        ),
        (
            ["--set", "false_positive_rate=0.001", "--set", "false_positive_confidence=0.95"],
            "cannot promise a false-positive rate ≤ 0.001 with confidence 0.983333: at least 4093 are needed (b is "
            "fitted after each of the 3 epochs and one is kept",
        ),
    ],
)
def test_a_bad_operating_point_is_one_line_and_writes_nothing(folder, tmp_path, extra, message):
    res = CliRunner().invoke(main, _run_args(folder, tmp_path / "bad", *extra))
    assert res.exit_code == EXIT_REFUSED and message in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "bad").exists()


@pytest.mark.parametrize(
    ("key", "value"), [("false_positive_rate", "abc"), ("false_positive_rate", 1.5), ("false_positive_confidence", 7)]
)
def test_a_tampered_operating_point_is_refused_before_any_write(folder, tmp_path, key, value):
    """run.json's threshold settings are what report.md describes: a value training would refuse gets one
    line and exit 2 from `certify` (before its certificates) and `report`, and the folder stays as it was."""
    out = tmp_path / "run"
    res = CliRunner().invoke(main, _run_args(folder, out, "--set", "false_positive_rate=0.05"))
    assert res.exit_code == EXIT_OK, res.output
    record = json.loads((out / "run.json").read_text())
    record["train"][key] = value
    (out / "run.json").write_text(json.dumps(record))
    before = {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()}
    for command in (["certify", str(out), "--quiet"], ["report", str(out)]):
        res = CliRunner().invoke(main, command)
        assert res.exit_code == EXIT_REFUSED and f"run.json's training settings: {key} must be" in res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert {p.name: p.read_bytes() for p in out.iterdir() if p.is_file()} == before


@pytest.mark.parametrize("value", ["nan", "inf", "-1", "0", "soon"])
def test_exact_time_limit_must_be_finite_seconds_above_0(value, tmp_path):
    """NaN passed click's FloatRange (every comparison with it is False)."""
    res = CliRunner().invoke(main, ["audit", str(tmp_path), "--exact-milp", "--exact-time-limit", value])
    assert res.exit_code == 2 and "--exact-time-limit" in res.output and "seconds" in res.output
    assert "Traceback" not in res.output


def test_data_dir_with_the_users_own_data_is_refused(tmp_path):
    (tmp_path / "d.csv").write_text("a,b\n1,x\n")
    args = ["--csv", str(tmp_path / "d.csv"), "--label-column", "b", "--sensitive-class", "x"]
    for command in ("run", "train"):
        res = CliRunner().invoke(main, [command, *args, "--data-dir", "/nonexistent", "--out", str(tmp_path / "r")])
        assert res.exit_code == 2 and "--data-dir is where a built-in TASK's data lives" in res.output
    assert not (tmp_path / "r").exists()


def test_ignore_column_trains_without_a_text_column_and_certify_input_reads_the_same_file(tmp_path):
    g = np.random.default_rng(2)
    x = g.normal(size=(200, 3))
    y = np.where(x[:, 0] > 0, "malware", "benign")
    with (tmp_path / "m.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["sha256", "a", "b", "c", "family"])
        w.writerows([[f"{i:064x}", *map(repr, map(float, row)), label] for i, (row, label) in enumerate(zip(x, y))])
    args = ["--csv", str(tmp_path / "m.csv"), "--label-column", "family", "--sensitive-class", "malware"]
    out = tmp_path / "r"
    res = CliRunner().invoke(main, ["run", *args, "--ignore-column", "sha256", "--epochs", "1", "--out", str(out)])
    assert res.exit_code == 0, res.output
    run = json.loads((out / "run.json").read_text())
    assert run["feature_names"] == ["a", "b", "c"] and run["task"]["ignore_columns"] == ["sha256"]
    res = CliRunner().invoke(
        main, ["certify", str(out), "--input", str(tmp_path / "m.csv"), "--out", str(tmp_path / "o.csv")]
    )
    assert res.exit_code == 0 and "certified 200 inputs" in res.output, res.output
    res = CliRunner().invoke(main, ["run", "breast-cancer", "--ignore-column", "x", "--out", str(tmp_path / "b")])
    assert res.exit_code == 2 and "--ignore-column names columns of a --csv file" in res.output
    assert not (tmp_path / "b").exists()


def _digit_csv(path):
    g = np.random.default_rng(5)
    x = g.normal(size=(120, 4))
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["", "0", "1", "2", "label"])  # a pandas index first (df.to_csv()), then columns named by digits
        w.writerows([[i, *map(repr, map(float, row[1:])), "spam" if row[1] > 0 else "ham"] for i, row in enumerate(x)])


def test_a_threat_model_may_not_name_an_ignored_column_and_the_order_of_ignored_columns_is_no_setting(tmp_path):
    """--ignore-column 0 with {"immutable": ["0"]} froze column "1" (the name "0" fell back to index 0); now refused.
    A pandas index column (no name) is skipped with --ignore-column '', and the flags' order does not matter."""
    _digit_csv(tmp_path / "d.csv")
    (tmp_path / "tm.json").write_text('{"immutable": ["0"]}')
    base = ["train", "--csv", str(tmp_path / "d.csv"), "--label-column", "label", "--sensitive-class", "spam"]
    base += ["--epochs", "1", "--quiet", "--out", str(tmp_path / "r")]
    res = CliRunner().invoke(
        main, [*base, "--ignore-column", "", "--ignore-column", "0", "--threat-model", str(tmp_path / "tm.json")]
    )
    assert res.exit_code == 2 and "names column(s) '0', which --ignore-column drops" in res.output, res.output
    assert not (tmp_path / "r").exists()
    res = CliRunner().invoke(main, base)
    assert res.exit_code == 2 and "have no name" in res.output and "--ignore-column ''" in res.output
    res = CliRunner().invoke(main, [*base, "--ignore-column", "", "--ignore-column", "0"])
    assert res.exit_code == 0, res.output
    assert json.loads((tmp_path / "r" / "run.json").read_text())["feature_names"] == ["1", "2"]
    res = CliRunner().invoke(main, [*base, "--ignore-column", "0", "--ignore-column", ""])  # the same run, resumed
    assert res.exit_code == 0, res.output


def test_inputs_outside_the_domain_are_one_warning_naming_the_test_input(tm_run, tmp_path):
    """certify warned once per chunk of --batch-size inputs, and "input 13 of those certified" counted within the
    chunk, not the test split (review 30): one warning for the split, naming the first test input outside it."""
    run = tmp_path / "run"
    shutil.copytree(tm_run, run)
    x = _test_x(run)
    cap = float(x[:8, 2].max())  # the first 8 test inputs inside: the first one outside is in the second chunk
    capped = tmp_path / "capped.json"
    capped.write_text(json.dumps({"upper": {"caps": cap}}))
    outside = torch.nonzero(x[:, 2].double() > cap).flatten().tolist()
    assert 2 <= len(outside) < len(x) and outside[0] >= 8
    res = CliRunner().invoke(main, ["certify", str(run), "--threat-model", str(capped), "--batch-size", "7"])
    assert res.exit_code == EXIT_OK, res.output
    lines = [line for line in res.output.splitlines() if "outside the threat model's domain" in line]
    assert len(lines) == 1, lines
    assert f"{len(outside)} of {len(x)} input(s)" in lines[0]
    assert f"(the first: test input {outside[0]}, counted from 0: caps = " in lines[0]


def test_an_audit_that_certifies_otherwise_than_the_folder_says_so(tm_run, tmp_path):
    """After `certify --no-threat-model`, `audit` (the run's own threat model by default) wrote audit.md in other
    units than report.md's with nothing saying they differ (audit units31): one note line now says how each was
    certified and which options audit those; none when they agree."""
    copy = tmp_path / "run"
    shutil.copytree(tm_run, copy)
    args = ["audit", str(copy), "--limit", "20", "--steps", "10", "--restarts", "1", "--no-exact"]
    assert CliRunner().invoke(main, ["certify", str(copy), "--no-threat-model", "--quiet"]).exit_code == EXIT_OK
    res = CliRunner().invoke(main, args)
    notes = [line for line in res.output.splitlines() if line.startswith("note: this audit certified otherwise")]
    assert res.exit_code == EXIT_OK and len(notes) == 1, res.output
    assert "audit: closed-form radii (without `--reach`), under the run's own threat model" in notes[0]
    assert "Folder: closed-form radii (without `--reach`), under no threat model" in notes[0]
    res = CliRunner().invoke(main, [*args, "--no-threat-model"])
    assert res.exit_code == EXIT_OK and "note: this audit certified otherwise" not in res.output


def test_the_audit_note_compares_threat_models_by_content_not_by_file_name(tm_run, tmp_path, monkeypatch):
    """The note compared file names (review 31b): the run's own threat model given as a file, or one file spelled
    two ways, made a note; a file edited between certify and audit did not. Now by content."""
    copy = tmp_path / "run"
    shutil.copytree(tm_run, copy)
    (tmp_path / "own.json").write_text(json.dumps(TM))
    (tmp_path / "other.json").write_text(json.dumps({**TM, "scale": {"caps": 2.0, "*": 1.0}}))
    monkeypatch.chdir(tmp_path)
    args = ["audit", str(copy), "--limit", "10", "--steps", "5", "--restarts", "1", "--no-exact"]

    def noted(*extra: str) -> bool:
        res = CliRunner().invoke(main, [*args, *extra])
        assert res.exit_code == EXIT_OK, res.output
        return "note: this audit certified otherwise" in res.output

    assert not noted("--threat-model", "own.json")  # the run's own, given as a file
    assert CliRunner().invoke(main, ["certify", str(copy), "--threat-model", "other.json", "--quiet"]).exit_code == 0
    assert not noted("--threat-model", "./other.json") and not noted("--threat-model", str(tmp_path / "other.json"))
    assert noted()  # the run's own against the folder's other.json
    (tmp_path / "other.json").write_text(json.dumps({**TM, "scale": {"caps": 3.0, "*": 1.0}}))
    assert noted("--threat-model", "other.json")  # the same name, another threat model


def test_a_threat_model_that_constrains_nothing_counts_as_none_for_the_audit_note():
    """An empty threat model certifies as none, however it is spelled ({"scale": {"*": 1}} is not ThreatModel()'s
    JSON): certificates under it and under none are not "made otherwise" (review of session 31's note)."""
    record = RunRecord(task={"name": "t"}, model={"input_shape": [4]}, train={}, feature_names=FEATURES)
    record.threat_model = {"scale": {"*": 1}, "lower": {}}
    none, run = CertificateMode(False, "none"), CertificateMode(False, "run")
    assert _other_mode_note(none, run, record) == []
    record.threat_model = TM
    assert len(_other_mode_note(none, run, record)) == 1
