"""What a run's report and audit say beside the numbers: the share certified at every radius when radii are ∞,
how the certificates were computed (closed form or reach-aware, under which threat model), and a note when the
false-positive budget is too small for the threshold and the epoch choice to be more than noise."""

from __future__ import annotations

import csv
import json
import logging
import math
import os
import shutil
import subprocess
import sys
from dataclasses import replace

import numpy as np
import pytest
import torch
from click.testing import CliRunner

import asymcert
from asymcert.audit import audit_run
from asymcert.certify.certfile import load_certificates, save_certificates
from asymcert.certify.result import Certificate, Guarantee
from asymcert.certify.summary import RunResults
from asymcert.cli import EXIT_OK, EXIT_REFUSED, main
from asymcert.pipeline import CERT_FILE, CERTIFY_FILE, plan_training, read_certificate_mode, run_data
from asymcert.report import writer as writer_module
from asymcert.report.plots import plotting_available
from asymcert.report.writer import _validation_flat, render_markdown, report_radii, summarize, write_report
from asymcert.runfolder import RunRecord, read_run_record, run_threat_model
from asymcert.threat import ThreatModel
from asymcert.train import TrainConfig
from asymcert.train.balance import FEW_FALSE_POSITIVES, FalsePositiveBudget
from asymcert.train.loop import false_positive_budget, warn_small_budget

FEATURES = ["links", "words", "caps", "age"]
ONE_IMMUTABLE = {"immutable": ["age"], "lower": {"*": 0.0}}
ALL_IMMUTABLE = {"immutable": FEATURES}


def _write(path, n, seed):
    g = np.random.default_rng(seed)
    x = (np.abs(g.normal(size=(n, 4))) * np.array([1.0, 3.0, 20.0, 5.0])).astype(np.float32).astype(np.float64)
    y = np.where(x[:, 0] - 0.2 * x[:, 1] + 0.02 * x[:, 2] > 0.3, "spam", "ham")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*FEATURES, "kind"])
        for row, label in zip(x, y, strict=True):
            w.writerow([*map(repr, map(float, row)), label])


def _run_args(folder, out, *extra):
    csv_args = ["--csv", str(folder / "train.csv"), "--label-column", "kind", "--sensitive-class", "spam"]
    return ["run", *csv_args, "--epochs", "3", "--out", str(out), "--quiet", *extra]


@pytest.fixture(scope="module")
def folder(tmp_path_factory):
    root = tmp_path_factory.mktemp("report_modes")
    _write(root / "train.csv", 300, 0)
    (root / "one.json").write_text(json.dumps(ONE_IMMUTABLE))
    (root / "all.json").write_text(json.dumps(ALL_IMMUTABLE))
    return root


@pytest.fixture(scope="module")
def tm_run(folder):
    """A run under a threat model with one immutable feature (finite radii)."""
    res = CliRunner().invoke(main, _run_args(folder, folder / "run", "--threat-model", str(folder / "one.json")))
    assert res.exit_code == EXIT_OK, res.output
    return folder / "run"


@pytest.fixture
def run_copy(tm_run, tmp_path):
    copy = tmp_path / "run"
    shutil.copytree(tm_run, copy)
    return copy


def _results(run_dir):
    return json.loads((run_dir / "results.json").read_text(), parse_constant=_no_constant)


def _no_constant(name):
    raise AssertionError(f"results.json holds {name}, which is not JSON")


def _record(**fields):
    """A run record of task "t" with no model settings, training settings or training summary unless given."""
    return RunRecord(**{"task": {"name": "t"}, "model": {}, "train": {}, **fields})


# ----------------------------------------------------------------------------------- radii all ∞


def test_all_infinite_radii_fill_the_tables_with_every_radius(folder, tmp_path):
    """Every feature immutable: every flagged input's radius is ∞. The report says the share certified at every
    radius (it was an empty table, `l1: ` on the console and {} in results.json)."""
    out = tmp_path / "all"
    res = CliRunner().invoke(main, _run_args(folder, out, "--threat-model", str(folder / "all.json")))
    assert res.exit_code == EXIT_OK, res.output
    cert, labels = load_certificates(out / CERT_FILE)
    pool = (cert.predicted == 1) & (labels == 1)
    assert pool.any() and all(bool(torch.isinf(r[pool]).all()) for r in cert.radii.values())
    results = _results(out)
    share = results["sensitive_flagged_correctly"]
    assert results["certified_accuracy"] == {n: {"inf": share} for n in ("l1", "l2", "linf")}
    assert results["median_radius"] == {"l1": "inf", "l2": "inf", "linf": "inf"}
    report = (out / "report.md").read_text()
    assert "| ℓ1 radius | every radius (∞) |" in report and f"| certified accuracy | {100 * share:.1f}% |" in report
    assert f"l1: every radius (∞): {100 * share:.1f}%" in res.output


def _binary(radii):
    r = torch.tensor(radii, dtype=torch.float64)
    return Certificate(torch.ones(len(r), dtype=torch.long), {1.0: r}, "custom", Guarantee.FLAG), torch.ones(len(r))


def test_some_infinite_radii_add_an_every_radius_column_to_the_picked_radii():
    cert, labels = _binary([0.5, 1.0, 2.0, math.inf, math.inf, 0.0])
    radii = report_radii(cert, labels, {})["l1"]
    assert radii[-1] == math.inf and all(0 < r < math.inf for r in radii[:-1])
    results = summarize(cert, labels, {"l1": radii})
    assert results.norms["l1"].table()["inf"] == pytest.approx(2 / 6)
    assert report_radii(cert, labels, {"l1": [0.5, 1.0]})["l1"] == [0.5, 1.0, math.inf]  # the run's own radii, too
    finite, finite_labels = _binary([0.5, 1.0])
    assert math.inf not in report_radii(finite, finite_labels, {})["l1"]  # no column where no radius is ∞


def test_a_table_with_no_radius_says_nothing_is_certified():
    cert, labels = _binary([0.0, 0.0])
    results = summarize(cert, labels, report_radii(cert, labels, {}))
    assert results.norms["l1"].table() == {}
    assert "ℓ1: no test input is certified at any radius > 0." in render_markdown(_record(), RunResults(results))


# ----------------------------------------------------------------------------------- the certificate mode


def test_report_says_closed_form_or_reach_and_which_threat_model(run_copy, folder):
    runner = CliRunner()
    assert _results(run_copy)["certificate_mode"]["reach"] is False
    assert "Certificates: closed-form radii (without `--reach`), under the run's own threat model (run.json)." in (
        (run_copy / "report.md").read_text()
    )
    res = runner.invoke(main, ["certify", str(run_copy), "--reach", "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    mode = _results(run_copy)["certificate_mode"]
    assert mode["reach"] is True and mode["threat_model"] == "run"
    assert "Certificates: reach-aware radii (`--reach`), under the run's own" in (run_copy / "report.md").read_text()
    res = runner.invoke(main, ["certify", str(run_copy), "--threat-model", str(folder / "all.json"), "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    mode = _results(run_copy)["certificate_mode"]
    assert mode["threat_model"] == "given" and mode["given"]["immutable"] == FEATURES
    given = f"the threat model of `{folder / 'all.json'}` (--threat-model), not the run's own"
    assert given in (run_copy / "report.md").read_text() and mode["threat_model_file"] == str(folder / "all.json")
    res = runner.invoke(main, ["certify", str(run_copy), "--no-threat-model", "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    assert _results(run_copy)["certificate_mode"]["threat_model"] == "none"
    assert "under no threat model (plain ℓp balls in raw input units)" in (run_copy / "report.md").read_text()


def test_a_mode_file_of_other_certificates_is_not_believed(run_copy):
    mode = read_certificate_mode(run_copy)
    assert mode is not None and (mode.reach, mode.threat_model, mode.given) == (False, "run", None)
    cert, labels = load_certificates(run_copy / CERT_FILE)
    save_certificates(run_copy / CERT_FILE, cert, labels.flip(0))  # certificates written by other means
    assert read_certificate_mode(run_copy) is None
    results = write_report(run_copy)
    assert results is not None and results.certificate_mode is None
    assert "Certificates: mode not recorded" in (run_copy / "report.md").read_text()
    (run_copy / CERTIFY_FILE).write_text("{not json")
    assert read_certificate_mode(run_copy) is None


def test_audit_says_reach_and_names_the_threat_model(run_copy, folder):
    args = ["audit", str(run_copy), "--limit", "20", "--steps", "10", "--restarts", "1", "--no-exact"]
    res = CliRunner().invoke(main, [*args, "--reach"])
    assert res.exit_code == EXIT_OK, res.output
    text = (run_copy / "audit.md").read_text()
    assert "Certificates: reach-aware radii (`--reach`), under the run's own threat model (run.json)." in text
    assert json.loads((run_copy / "audit.json").read_text())["certificate_mode"]["reach"] is True
    res = CliRunner().invoke(main, [*args, "--threat-model", str(folder / "all.json")])
    assert res.exit_code == EXIT_OK, res.output
    text = (run_copy / "audit.md").read_text()
    assert "closed-form radii" in text and f"the threat model of `{folder / 'all.json'}` (--threat-model)" in text
    res = CliRunner().invoke(main, [*args, "--no-threat-model"])
    assert res.exit_code == EXIT_OK, res.output
    assert "under no threat model" in (run_copy / "audit.md").read_text()


def test_audit_run_names_the_threat_model_file_it_is_given(run_copy, folder):
    record = read_run_record(run_copy)
    tm = run_threat_model(record, ThreatModel.from_dict(ALL_IMMUTABLE))
    data = run_data(run_copy)
    path = str(folder / "all.json")
    report = audit_run(
        run_copy, data.test.x[:10], threat_model_file=path, threat_model=tm, restarts=1, steps=5, exact=False
    )
    assert report.certificate_mode is not None and report.certificate_mode.threat_model_file == path
    assert f"the threat model of `{path}` (--threat-model), not the run's own" in (run_copy / "audit.md").read_text()


# ----------------------------------------------------------------------------------- small false-positive budgets


def test_budget_is_small_below_the_documented_threshold():
    assert FalsePositiveBudget(FEW_FALSE_POSITIVES - 1, 500, 0.019).small
    assert not FalsePositiveBudget(FEW_FALSE_POSITIVES, 500, 0.02).small
    note = FalsePositiveBudget(3, 164, 0.02).note()
    assert "3 allowed false positive(s) among 164 validation inputs of the other class" in note
    assert "use more validation data (at least 500 of the other class)" in note
    assert "or a larger false_positive_rate (at least 0.061)" in note


def test_a_small_budget_warns_at_the_start_of_training(folder, caplog):
    plan = plan_training({"csv": str(folder / "train.csv"), "label_column": "kind", "sensitive_class": "spam"})
    n_other = int((plan.data.val.y == 0).sum())
    small = TrainConfig.from_dict({"false_positive_rate": 0.02})
    assert false_positive_budget(plan.data, small) == FalsePositiveBudget(math.floor(0.02 * n_other), n_other, 0.02)
    refit = TrainConfig.from_dict({"false_positive_rate": 0.02, "refit": True})
    assert false_positive_budget(plan.data, refit).other == n_other + int((plan.data.train.y == 0).sum())
    assert false_positive_budget(plan.data, TrainConfig.from_dict({})) is None
    with caplog.at_level(logging.WARNING, logger="asymcert"):
        warn_small_budget(plan.data, TrainConfig.from_dict({"false_positive_rate": 0.99}))
        assert not caplog.records  # 0.99·n allowed: no warning
        warn_small_budget(plan.data, small)
    assert [r.getMessage() for r in caplog.records] == [f"warning: {false_positive_budget(plan.data, small).note()}"]


def test_a_small_budget_is_a_stderr_line_and_a_note_in_the_report(folder, tmp_path):
    out = tmp_path / "fpr"
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    cmd = [sys.executable, "-m", "asymcert", *_run_args(folder, out, "--set", "false_positive_rate=0.02")]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr
    budget = read_run_record(out).training["false_positive_budget"]
    assert budget["allowed"] < FEW_FALSE_POSITIVES and budget["rate"] == 0.02
    warning = [line for line in done.stderr.splitlines() if line.startswith("warning: the threshold b rests on")]
    assert len(warning) == 1 and "epoch 1/3" in done.stdout and "warning" not in done.stdout
    note = f"Note: the threshold b rests on {budget['allowed']} allowed false positive(s) among {budget['other']}"
    assert note in (out / "report.md").read_text()


def test_no_note_without_a_false_positive_rate(tm_run):
    assert "false_positive_budget" not in read_run_record(tm_run).training
    assert "Note:" not in (tm_run / "report.md").read_text()


def test_plots_of_norms_no_longer_certified_are_removed(run_copy):
    """certify --norms 2 after the default norms left certified_l1.png and certified_linf.png beside a report of
    ℓ2 only (walkthrough 25a); the report's plots are now exactly the norms it reports."""
    pytest.importorskip("matplotlib")
    assert {p.name for p in run_copy.glob("certified_*.png")} == {
        "certified_l1.png",
        "certified_l2.png",
        "certified_linf.png",
    }
    res = CliRunner().invoke(main, ["certify", str(run_copy), "--norms", "2", "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    assert [p.name for p in run_copy.glob("certified_*.png")] == ["certified_l2.png"]
    assert _results(run_copy)["plots"] == {"l2": "certified_l2.png"}


def test_python_gets_the_runs_own_threat_model_and_with_it_the_cli_radii(tm_run, tmp_path):
    """asymcert.certify in Python used raw-unit balls unless given the run's threat model, and nothing named how to
    get it (walkthrough 25a): load_run_threat_model resolves run.json's, and the radii equal certify --input's."""
    tm = asymcert.load_run_threat_model(tm_run)
    assert tm is not None and tm.can_increase.tolist() == [f != "age" for f in FEATURES]
    _write(tmp_path / "new.csv", 40, 5)
    res = CliRunner().invoke(
        main,
        ["certify", str(tm_run), "--input", str(tmp_path / "new.csv"), "--out", str(tmp_path / "r.csv"), "--quiet"],
    )
    assert res.exit_code == EXIT_OK, res.output
    with (tmp_path / "r.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    with (tmp_path / "new.csv").open(newline="") as f:
        x = torch.tensor([[float(r[c]) for c in FEATURES] for r in csv.DictReader(f)], dtype=torch.float64)
    cert = asymcert.certify(asymcert.load(tm_run), x, threat_model=tm)  # the CSV's numbers, as float64
    assert int(cert.sensitive.sum()) >= 5
    assert [float(r["radius_l1"]) for r in rows] == cert.radius(1.0).tolist()


def test_new_certificates_without_plotting_leave_no_plots_of_the_old_ones(run_copy, monkeypatch):
    """Without matplotlib, a report of new certificates kept the PNGs of the earlier ones; `report` alone keeps the
    plots, which still describe the certificates in the folder."""
    assert list(run_copy.glob("certified_*.png")) or not plotting_available()
    monkeypatch.setattr(writer_module, "plotting_available", lambda: False)
    before = sorted(p.name for p in run_copy.glob("certified_*.png"))
    results = write_report(run_copy)
    assert (
        results is not None
        and results.plots == {}
        and sorted(p.name for p in run_copy.glob("certified_*.png")) == before
    )
    res = CliRunner().invoke(main, ["certify", str(run_copy), "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    assert list(run_copy.glob("certified_*.png")) == [] and "plots_missing" in _results(run_copy)


def test_the_report_names_flag_features_and_what_a_radius_means_for_them(folder, tmp_path, tm_run):
    """A malware walkthrough's report listed ℓ1 radii 0.3–1.4 on 28 flags of 33 features without saying that a
    radius below 1 covers no flip of one; runs with 0/1 features now get a note naming them, others none."""
    g = np.random.default_rng(4)
    x = g.normal(size=(300, 3))
    flag = (g.random(300) < 0.4).astype(float)
    y = np.where(x[:, 0] + 1.5 * flag > 0.5, "spam", "ham")
    with (tmp_path / "f.csv").open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "has_link", "kind"])
        w.writerows([[*map(repr, map(float, row)), repr(float(v)), label] for row, v, label in zip(x, flag, y)])
    args = ["--csv", str(tmp_path / "f.csv"), "--label-column", "kind", "--sensitive-class", "spam"]
    res = CliRunner().invoke(main, ["run", *args, "--epochs", "2", "--out", str(tmp_path / "r"), "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    assert json.loads((tmp_path / "r" / "run.json").read_text())["binary_features"] == ["has_link"]
    report = (tmp_path / "r" / "report.md").read_text()
    assert "Note: 1 feature(s) take only the values 0 and 1 in training (`has_link`)" in report
    assert "binary_features" not in json.loads((tm_run / "run.json").read_text())
    assert "take only the values 0 and 1" not in (tm_run / "report.md").read_text()


def test_npz_runs_name_their_flags_by_index_and_take_monotone_indices_as_text(tmp_path):
    """An npz run (no column names) had no binary_features and no note, and monotone refused "3" (the way a
    threat model names its features) with 'named columns: none (not a CSV)' (walkthrough 26c F1, F3)."""
    g = np.random.default_rng(5)
    x = g.normal(size=(300, 4)).astype(np.float32)
    x[:, 2] = (g.random(300) < 0.4).astype(np.float32)
    y = (x[:, 0] + 1.5 * x[:, 2] > 0.5).astype(np.int64)
    np.savez(tmp_path / "d.npz", x=x, y=y)
    base = ["run", "--data", str(tmp_path / "d.npz"), "--sensitive-class", "1", "--epochs", "1", "--quiet"]
    res = CliRunner().invoke(
        main, [*base, "--model-set", 'monotone={"increasing": ["2", 0]}', "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == EXIT_OK, res.output
    run = json.loads((tmp_path / "r" / "run.json").read_text())
    assert run["binary_features"] == ["2"] and run["model"]["monotone"] == {"increasing": [0, 2], "decreasing": []}
    assert "take only the values 0 and 1 in training (`2`)" in (tmp_path / "r" / "report.md").read_text()
    res = CliRunner().invoke(
        main, [*base, "--model-set", 'monotone={"increasing": ["two"]}', "--out", str(tmp_path / "s")]
    )
    assert res.exit_code == 2 and 'data without named columns takes flat indices (3 or "3")' in res.output


def test_a_model_kept_from_the_first_of_many_epochs_is_noted():
    """Epoch 1 of 100 was kept under margin_radius=1 and the report said only "best validation epoch 1"
    (walkthrough 27f)."""
    cert, labels = _binary([0.5, 1.0])
    results = RunResults(summarize(cert, labels, report_radii(cert, labels, {})), training_seconds=60.0)
    run = _record(train={"epochs": 100, "margin_radius": 1.0}, training={})
    note = "Note: the model kept is from epoch 1 of 100: no later epoch did better on the validation split."
    assert note + " With the certified-margin loss (margin_radius = 1.0" in render_markdown(
        run, replace(results, best_epoch=1)
    )
    assert note not in render_markdown(run, replace(results, best_epoch=29))
    plain = replace(run, train={"epochs": 100})
    assert note in render_markdown(plain, replace(results, best_epoch=1))
    assert "certified-margin" not in render_markdown(plain, replace(results, best_epoch=1))
    assert "Note: the model kept" not in render_markdown(
        replace(run, train={"epochs": 3}), replace(results, best_epoch=1)
    )


def test_the_first_epoch_note_names_the_units_training_took_the_margin_in():
    """Audit units30 F2: the note said "in the radii's units", which after ``certify --no-threat-model`` are raw
    units, while training took the margin in the run's threat model's units."""
    cert, labels = _binary([0.5, 1.0])
    results = RunResults(summarize(cert, labels, report_radii(cert, labels, {})), best_epoch=1)  # raw units now
    run = _record(train={"epochs": 100, "margin_radius": 5}, training={})
    tm_run = replace(run, threat_model=ONE_IMMUTABLE)
    own = "(margin_radius = 5, in the units of the run's own threat model (δ_i / scale_i), as in training)"
    assert own in render_markdown(tm_run, results) and own not in render_markdown(run, results)
    assert "(margin_radius = 5, in raw input units)" in render_markdown(run, results)
    assert "the radii's units" not in render_markdown(tm_run, results)


def test_the_report_names_monotone_features_by_name_when_the_run_has_names():
    """Walkthrough 27f #14: the report showed ``"monotone": {"increasing": [3, 6, 10]}``, indices only."""
    cert, labels = _binary([0.5, 1.0])
    results = RunResults(summarize(cert, labels, report_radii(cert, labels, {})))
    model = {"kind": "feature-convex", "monotone": {"increasing": [3, 1], "decreasing": [0]}}
    run = _record(model=model, feature_names=FEATURES)
    report = render_markdown(run, results)
    assert "- monotone features: the score never falls as `age` or `words` rises; it never rises as `links` rises" in (
        report
    )
    assert '- model: `{"kind": "feature-convex"}`' in report and "[3, 1]" not in report
    unnamed = render_markdown(replace(run, feature_names=None), results)  # no names: the indices, as run.json has them
    assert '"monotone": {"increasing": [3, 1], "decreasing": [0]}' in unnamed and "monotone features" not in unnamed
    none = replace(run, model={"kind": "feature-convex", "monotone": {"increasing": [], "decreasing": []}})
    assert "monotone features" not in render_markdown(none, results)


def test_the_report_says_how_its_radii_are_chosen_and_how_to_choose_them(run_copy, folder):
    """Walkthrough 27f #14: the radii grid looked arbitrary, and nothing said run.json's ``report_radii`` sets it."""
    write_report(run_copy)
    picked = (
        "Radii r of the tables: ℓ1, ℓ2, ℓ∞: the 10%, 25%, 50%, 75% quantiles of the finite certified radii of the "
        "correctly flagged sensitive-class test inputs, to 2 significant digits; to choose your own, set "
        '`report_radii` in run.json (norm → radii in these units, e.g. `"report_radii": {"l1": [1, 2, 5]}`) and run '
        "`asymcert report` on this folder."
    )
    assert picked in (run_copy / "report.md").read_text()
    assert _results(run_copy)["report_radii_source"] == dict.fromkeys(("l1", "l2", "linf"), "quantiles")
    record = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps({**record, "report_radii": {"l1": [0.5, 1]}}))
    res = CliRunner().invoke(main, ["report", str(run_copy)])  # as the sentence says
    assert res.exit_code == EXIT_OK, res.output
    report = (run_copy / "report.md").read_text()
    assert "Radii r of the tables: ℓ1: run.json's `report_radii`; ℓ2, ℓ∞: the 10%, 25%, 50%, 75% quantiles" in report
    assert "| ℓ1 radius | 0.5 | 1 |" in report
    res = CliRunner().invoke(main, ["certify", str(run_copy), "--no-threat-model", "--quiet"])  # other units
    assert res.exit_code == EXIT_OK, res.output
    assert "run.json's `report_radii` are in the run's own units, not these, so they are not used." in (
        (run_copy / "report.md").read_text()
    )
    res = CliRunner().invoke(main, ["certify", str(run_copy), "--quiet"])  # the run's own units again
    assert res.exit_code == EXIT_OK, res.output
    (run_copy / "run.json").write_text(json.dumps({**record, "report_radii": {"l1": []}}))  # review 28c: no choice
    assert CliRunner().invoke(main, ["report", str(run_copy)]).exit_code == EXIT_OK
    report = (run_copy / "report.md").read_text()
    assert "no test input is certified at any radius" not in report and "| ℓ1 radius | 0.5 | 1 |" not in report
    assert _results(run_copy)["report_radii_source"]["l1"] == "quantiles"


def test_a_validation_metric_that_never_moved_is_named_as_the_reason(tmp_path):
    """Walkthrough 28b: the same validation metric at every epoch (saturated data) kept epoch 1, and the note blamed
    the margin; history.json says so, and odd history files are read as "not flat"."""
    cert, labels = _binary([0.5, 1.0])
    results = RunResults(summarize(cert, labels, report_radii(cert, labels, {})), best_epoch=1)
    run = _record(train={"epochs": 100, "margin_radius": 1.0}, training={})
    text = render_markdown(run, replace(results, validation_flat=True))
    assert "The validation metric was the same at every epoch" in text and "margin too large" in text  # (28c F5)
    plain = replace(run, train={"epochs": 100})
    flat_plain = render_markdown(plain, replace(results, validation_flat=True))
    assert "The validation metric was the same at every epoch" in flat_plain and "margin" not in flat_plain
    assert "was the same" not in render_markdown(run, replace(results, validation_flat=False))
    history = tmp_path / "history.json"
    cases = {
        json.dumps([{"epoch": k, "val_metric": 0.8208} for k in range(1, 8)]): True,
        json.dumps([{"epoch": k, "val_metric": 0.8 + k / 100} for k in range(1, 8)]): False,
        json.dumps([{"epoch": k, "val_metric": 0.8} for k in range(1, 4)]): False,
        json.dumps([{"epoch": 1, "val_metric": True}] * 6): False,
        json.dumps({"epoch": 1}): False,
        "[1, 2": False,
    }
    for text, flat in cases.items():
        history.write_text(text)
        assert _validation_flat(tmp_path) is flat, text
    history.unlink()
    assert _validation_flat(tmp_path) is False


def test_run_json_radii_are_not_used_under_another_threat_model_of_the_same_unit_phrase(run_copy, folder):
    """Audit units30 F1: under a threat model other than the run's own (same unit phrase, other scales) run.json's
    ``report_radii`` (in the run's own units) were tabulated as if in the new units."""
    scaled = folder / "scaled.json"
    scaled.write_text(json.dumps({**ONE_IMMUTABLE, "scale": {"caps": 10.0}}))
    record = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps({**record, "report_radii": {"l1": [0.5, 1]}}))
    res = CliRunner().invoke(main, ["certify", str(run_copy), "--threat-model", str(scaled), "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    results = _results(run_copy)
    assert results["report_radii_source"]["l1"] == "quantiles" and results["report_radii_settable"] is False
    report = (run_copy / "report.md").read_text()
    assert "| ℓ1 radius | 0.5 | 1 |" not in report
    assert "run.json's `report_radii` are in the run's own units, not these, so they are not used." in report
    same = folder / "same.json"  # the run's own threat model from another file: its units, so its radii
    same.write_text(json.dumps(ONE_IMMUTABLE))
    res = CliRunner().invoke(main, ["certify", str(run_copy), "--threat-model", str(same), "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    assert _results(run_copy)["report_radii_source"]["l1"] == "run.json"
    assert "| ℓ1 radius | 0.5 | 1 |" in (run_copy / "report.md").read_text()


def test_run_json_radii_are_not_used_when_the_certificates_do_not_say_under_which_threat_model(run_copy):
    record = json.loads((run_copy / "run.json").read_text())
    (run_copy / "run.json").write_text(json.dumps({**record, "report_radii": {"l1": [0.5, 1]}}))
    (run_copy / CERTIFY_FILE).unlink()
    results = write_report(run_copy)
    assert results is not None and results.report_radii_source["l1"] == "quantiles"
    assert results.report_radii_settable is False
    text = " ".join((run_copy / "report.md").read_text().split())
    assert "do not say which threat model they were made under, so they are not used; `asymcert certify`" in text
    assert "`asymcert certify` on this folder records it and uses them again." in text


@pytest.mark.parametrize("radius", ["-1", "1e400"])
def test_a_negative_or_infinite_report_radius_is_one_line_and_nothing_is_written(run_copy, radius):
    """Audit units30: ``{"l1": [-1]}`` was tabulated as "ℓ1 radius | -1"."""
    record = json.loads((run_copy / "run.json").read_text())
    text = json.dumps({**record, "report_radii": {"l1": [0.5, "R"]}}).replace('"R"', radius)
    (run_copy / "run.json").write_text(text)
    before = {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()}
    for args in (["report", str(run_copy)], ["certify", str(run_copy), "--quiet"]):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == EXIT_REFUSED, res.output
        assert "'report_radii' must be an object of lists of finite radii ≥ 0" in res.output
        assert {p.name: p.stat().st_mtime_ns for p in run_copy.iterdir()} == before
