import json
import shutil
import signal
import subprocess
import sys
import time

import pytest
import rdata
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import asymcert
from asymcert.certify.result import Guarantee, norm_label
from asymcert.certify.summary import CertifiedSummary, NormSummary, RunResults
from asymcert.cli import main
from asymcert.data.spambase import SPAMBASE_THREAT_RADII
from asymcert.pipeline import read_run
from asymcert.research import sweep_reg as sweep_reg_module
from asymcert.research.sweep_pairs import PairResult, pair_data, sweep_pairs
from asymcert.research.sweep_reg import RegPoint, reg_cli_main, sweep_reg
from asymcert.research.sweeps import (
    RESULT_FILE,
    SweepError,
    pareto_front,
    parse_float_list,
    read_result,
    split_finished,
)
from tests.conftest import folder_held
from tests.data.test_spambase import _frame as spam_frame

CLASSES = [0, 3, 6]  # the classes of the small Fashion-MNIST fixture
TINY = {"batch_size": 32}


def _dominates(p, q):
    return all(a >= b for a, b in zip(p, q)) and any(a > b for a, b in zip(p, q))


# ---------------------------------------------------------------- Pareto front (pure function)


def test_pareto_front_hand_made():
    pts = [(0.9, 0.1), (0.8, 0.5), (0.7, 0.4), (0.5, 0.6), (0.5, 0.6), (0.9, 0.05), (0.2, 0.2)]
    assert pareto_front(pts) == [True, True, False, True, True, False, False]
    assert pareto_front([]) == []
    assert pareto_front([(0.3, 0.3)]) == [True]


@settings(max_examples=200, deadline=None)
@given(st.lists(st.tuples(st.integers(0, 6), st.integers(0, 6)), min_size=1, max_size=25))
def test_pareto_front_properties(points):
    front = pareto_front(points)
    for p, on in zip(points, front):
        dominated = any(_dominates(q, p) for q in points)
        assert on == (not dominated)  # no front point is dominated; every other point is
        if not on:
            assert any(_dominates(q, p) for q, f in zip(points, front) if f)  # ... by a front point


# ---------------------------------------------------------------- class-pair sweep


@pytest.fixture(scope="module")
def pair_sweep(fashion_dir, tmp_path_factory):
    out = tmp_path_factory.mktemp("pairs")
    lines: list[str] = []
    summary = sweep_pairs(
        "fashion-mnist", out, CLASSES, epochs=1, workers=1, data_dir=fashion_dir, train_overrides=TINY, log=lines.append
    )
    return out, summary, lines


def test_pair_sweep_writes_files_and_matrices_match_the_pairs(pair_sweep):
    out, _, _ = pair_sweep
    for name in (
        "results.json",
        "sweep.md",
        "heatmap_clean_accuracy.png",
        "heatmap_median_radius_l1.png",
        "heatmap_median_radius_l2.png",
        "heatmap_median_radius_linf.png",
        "heatmap_asymmetry_l2.png",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    assert results["classes"] == CLASSES and len(results["pairs"]) == 6
    mats = results["matrices"]
    for i, a in enumerate(CLASSES):
        for j, b in enumerate(CLASSES):
            if a == b:
                assert mats["clean_accuracy"][i][j] is None
                continue
            pair = json.loads((out / "pairs" / f"{a}-{b}" / RESULT_FILE).read_text())
            assert (pair["sensitive"], pair["other"]) == (a, b)
            assert mats["clean_accuracy"][i][j] == pair["clean_accuracy"]
            for n in ("l1", "l2", "linf"):
                assert mats["median_radius"][n][i][j] == pair["median_radius"][n]
                assert mats["asymmetry"][n][i][j] == pytest.approx(
                    pair["median_radius"][n] - mats["median_radius"][n][j][i]
                )
    top = results["most_asymmetric"]["l2"][0]
    assert top["difference"] == max(abs(v) for row in mats["asymmetry"]["l2"] for v in row if v is not None)
    md = (out / "sweep.md").read_text()
    assert "ICNN MLP 200-50" in md and "1 epoch," in md and "heatmap_clean_accuracy.png" in md
    assert asymcert.load(out / "pairs" / "0-6")(torch.rand(3, 1, 28, 28)).shape == (3,)


def test_pair_sweep_progress_lines_name_the_radii_units(pair_sweep):
    """Each finished pair's console line gives its median radii with their units (it named none, unlike
    sweep.md and the heatmaps: README walkthrough, session 32)."""
    _, _, lines = pair_sweep
    done = [line for line in lines if "median radius" in line]
    assert len(done) == 6 and all("(raw pixel units; " in line for line in done), lines


def test_pair_folders_are_run_folders(pair_sweep, fashion_dir, tmp_path):
    """`asymcert report`, `certify` and `audit` open a pair's folder; the report matches the sweep's numbers."""
    out, _, _ = pair_sweep
    run_dir = tmp_path / "6-0"
    shutil.copytree(out / "pairs" / "6-0", run_dir)
    assert read_run(run_dir).task == {"name": "fashion-mnist", "pair": [6, 0]}
    pair = json.loads((run_dir / RESULT_FILE).read_text())
    res = CliRunner().invoke(main, ["report", str(run_dir)])
    assert res.exit_code == 0, res.output
    report = json.loads((run_dir / "results.json").read_text())
    assert report["clean_accuracy"] == pair["clean_accuracy"] and report["n_inputs"] == pair["n_inputs"]
    (run_dir / "certificates.safetensors").unlink()
    res = CliRunner().invoke(main, ["certify", str(run_dir), "--data-dir", str(fashion_dir)])
    assert res.exit_code == 0, res.output
    assert CliRunner().invoke(main, ["report", str(run_dir)]).exit_code == 0  # from the new certificates
    assert json.loads((run_dir / "results.json").read_text())["clean_accuracy"] == pair["clean_accuracy"]
    res = CliRunner().invoke(
        main,
        [
            "audit",
            str(run_dir),
            "--limit",
            "8",
            "--steps",
            "5",
            "--restarts",
            "1",
            "--no-exact",
            "--data-dir",
            str(fashion_dir),
        ],
    )
    assert res.exit_code == 0, res.output


def test_pair_data_relabels_and_keeps_splits(fashion_dir):
    from asymcert.data.tasks import get_task

    data = get_task("fashion-mnist").load(fashion_dir)
    pd = pair_data(data, 6, 0)
    assert pd.class_names == ("T-shirt/top", "Shirt")
    assert int((pd.test.y == 1).sum()) == int((data.test.y == 6).sum())
    assert len(pd.test) == int(((data.test.y == 6) | (data.test.y == 0)).sum())


def test_pair_sweep_resumes_and_rejects_other_settings(pair_sweep, fashion_dir):
    out, first, _ = pair_sweep
    (out / "pairs" / "3-6" / RESULT_FILE).unlink()
    lines: list[str] = []
    again = sweep_pairs(
        "fashion-mnist", out, CLASSES, epochs=1, workers=1, data_dir=fashion_dir, train_overrides=TINY, log=lines.append
    )
    assert again.run.trained_now == 1 and again.run.reused == 5
    assert "5 finished before, 1 to train" in lines[0]
    assert again.matrices.clean_accuracy == first.matrices.clean_accuracy  # seeded: same result
    assert again.pairs[(0, 3)] == PairResult.from_dict(first.pairs[(0, 3)].to_dict())  # read back from its file
    assert json.loads((out / "results.json").read_text())["pairs"]["0-3"] == first.to_dict()["pairs"]["0-3"]
    with pytest.raises(SweepError, match="other settings"):
        sweep_pairs("fashion-mnist", out, CLASSES, epochs=2, workers=1, data_dir=fashion_dir, train_overrides=TINY)


@pytest.mark.parametrize(
    "text, message",
    [("[" * 100_000 + "]" * 100_000, "nested too deeply"), ("[1]", "JSON list"), ("{", "not a readable")],
)
def test_a_damaged_result_file_is_one_sweep_error(tmp_path, text, message):
    (tmp_path / RESULT_FILE).write_text(text)
    with pytest.raises(SweepError, match=message) as info:
        read_result(tmp_path, {"epochs": 1})
    assert "\n" not in str(info.value) and "delete it" in str(info.value)


def test_pair_sweep_pool_of_two_workers_matches_in_process(pair_sweep, fashion_dir, tmp_path):
    _, first, _ = pair_sweep
    summary = sweep_pairs(
        "fashion-mnist", tmp_path / "pool", [0, 6], epochs=1, workers=2, data_dir=fashion_dir, train_overrides=TINY
    )
    assert summary.run.trained_now == 2 and summary.run.workers == 2
    for key in ((0, 6), (6, 0)):
        assert summary.pairs[key].clean_accuracy == pytest.approx(first.pairs[key].clean_accuracy)
        assert summary.pairs[key].median_radius("l2") == pytest.approx(first.pairs[key].median_radius("l2"), rel=1e-5)


# ---------------------------------------------------------------- regularisation sweep


def test_reg_sweep_table_and_pareto(fashion_dir, tmp_path, monkeypatch):
    out = tmp_path / "reg"
    panels = []
    real_plot = sweep_reg_module.plot_pareto

    def plot(drawn, path, title):
        panels.extend(drawn)
        return real_plot(drawn, path, title)

    monkeypatch.setattr(sweep_reg_module, "plot_pareto", plot)
    summary = sweep_reg(
        "fashion-mnist-shirts",
        out,
        lambdas=[0.0, 0.1],
        feature_maps=["shift", "concat-abs"],
        epochs=1,
        workers=1,
        limit=40,
        data_dir=fashion_dir,
    )
    assert (out / "pareto.png").is_file() and (out / "sweep.md").is_file()
    assert len(summary.entries) == 4
    for n, front in summary.pareto.items():
        key = f"{front.radius:g}"
        pts = [(e.clean_accuracy, e.certified_accuracy(n)[key]) for e in summary.entries]
        assert front.front == [e.name for e, on in zip(summary.entries, pareto_front(pts)) if on]
    for e in summary.entries:
        run = out / "runs" / e.name
        assert (run / "run.json").is_file() and (run / "certificates.safetensors").is_file()
        assert json.loads((run / "run.json").read_text())["train"]["jacobian_reg"] == e.lam
        assert RegPoint.from_dict(json.loads((run / RESULT_FILE).read_text())).to_dict() == e.to_dict()
    md = (out / "sweep.md").read_text()
    assert "concat-abs" in md and "pareto.png" in md
    # audit units30 F3: the tables, the panels and the printed fronts say in which units r is
    # (a built-in image task: its pixels / 255, session 34 image review F7)
    units = "raw input units (pixel values / 255, in [0, 1])"
    assert summary.units == units and f"### Certified accuracy, ℓ2 (radii in {units})" in md
    assert f"radius ≥ r (radii in {units})" in md
    assert panels and all(title.endswith(f" ({units})") for title, _ in panels)
    lines = []
    again = reg_cli_main(
        "fashion-mnist-shirts",
        out,
        lambdas="0,0.1",
        feature_maps="shift,concat-abs",
        epochs=1,
        workers=1,
        limit=40,
        data_dir=fashion_dir,
        echo=lines.append,
    )
    assert again.run.trained_now == 0 and again.run.reused == 4
    assert again.to_dict()["entries"] == summary.to_dict()["entries"]  # every point read back from its file
    fronts = [line for line in lines if line.startswith("Pareto front")]
    assert fronts and all(" in raw input units (pixel values / 255, in [0, 1])): " in line for line in fronts), lines


# ---------------------------------------------------------------- command line


def pairs_args(out, fashion_dir) -> list[str]:
    """`asymcert sweep pairs` of Fashion-MNIST's classes 0 and 6 into ``out``: one epoch, one worker, 20 inputs."""
    args = ["sweep", "pairs", "fashion-mnist", "--out", str(out), "--classes", "0,6", "--epochs", "1"]
    return [*args, "--workers", "1", "--limit", "20", "--data-dir", str(fashion_dir)]


def test_cli_sweep_pairs_runs(fashion_dir, tmp_path):
    out = tmp_path / "cli"
    res = CliRunner().invoke(main, pairs_args(out, fashion_dir))
    assert res.exit_code == 0, res.output
    assert "[2/2]" in res.output and (out / "sweep.md").is_file()


@pytest.mark.parametrize(
    "args, message",
    [
        (["pairs", "no-such-task"], "unknown task 'no-such-task'"),
        (["pairs", "fashion-mnist-shirts"], "needs a 10-class task"),
        (["pairs", "fashion-mnist", "--classes", "0,x"], "not a comma-separated list of integers"),
        (["pairs", "fashion-mnist", "--workers", "0"], "--workers must be ≥ 1"),
        (["reg", "fashion-mnist", "--lambdas", "0.1"], "needs a binary feature-convex task"),
        (["reg", "fashion-mnist-shirts", "--lambdas", "0,abc"], "'abc' is not a number"),
        (["reg", "fashion-mnist-shirts", "--lambdas", "-1"], "must be a finite number ≥ 0"),
        (["reg", "fashion-mnist-shirts", "--feature-maps", "shift,nope"], "unknown feature map 'nope'"),
    ],
)
def test_cli_sweep_errors_are_one_line(args, message, tmp_path):
    res = CliRunner().invoke(main, ["sweep", *args, "--out", str(tmp_path / "x")])
    assert res.exit_code != 0
    assert message in res.output and "Traceback" not in res.output
    assert len(res.output.strip().splitlines()) == 1, res.output


def test_cli_pairs_class_without_data(fashion_dir, tmp_path):
    res = CliRunner().invoke(
        main,
        [
            "sweep",
            "pairs",
            "fashion-mnist",
            "--classes",
            "0,1",
            "--data-dir",
            str(fashion_dir),
            "--out",
            str(tmp_path / "x"),
        ],
    )
    assert res.exit_code != 0 and "class 1 (Trouser) has no train inputs" in res.output


def test_parse_float_list():
    assert parse_float_list("0, 1e-3,0.01", "--lambdas") == [0.0, 0.001, 0.01]
    with pytest.raises(SweepError, match="repeated"):
        parse_float_list("0.1,0.1", "--lambdas")
    with pytest.raises(SweepError, match="at least one"):
        parse_float_list(" , ", "--lambdas")


STOP_A_POOL = """
import signal, sys, time
from asymcert.research.sweeps import run_jobs

def stop(signum, frame):
    raise KeyboardInterrupt  # as the CLI turns SIGTERM into its KeyboardInterrupt

signal.signal(signal.SIGTERM, stop)
started = time.perf_counter()
try:
    run_jobs([6.0 + i / 100 for i in range(6)], time.sleep, {}, workers=2, on_done=lambda *a: print("done", flush=True))
except KeyboardInterrupt:
    print(f"stopped {time.perf_counter() - started:.1f}", flush=True)
"""


def test_a_signal_stops_a_pool_sweep_now_not_after_every_queued_job():
    """SIGTERM to `sweep --workers 2` ran every queued job (the pool's exit waits for them) before exiting: 37 s
    instead of 13 s in a review's reproduction. Six 6-second jobs on two workers take 18 s or more; a SIGTERM
    once the first jobs are running now ends it, its workers too, without another job finishing."""
    proc = subprocess.Popen([sys.executable, "-c", STOP_A_POOL], stdout=subprocess.PIPE, text=True)
    time.sleep(4.0)  # the workers have started (spawned, importing asymcert) and are in their first jobs
    proc.send_signal(signal.SIGTERM)
    out, _ = proc.communicate(timeout=60)
    assert "done" not in out and out.startswith("stopped"), out
    assert float(out.split()[1]) < 12.0, out


def test_a_sweep_folder_has_one_sweep_and_is_never_a_run_folder(fashion_dir, tmp_path):
    """A second sweep into a folder another is writing was refused only after its work, with exit 2, and its report
    replaced the winner's (audit 29e #4); `--out RUN` replaced the run's results.json (#1). Now: RunFolderBusyError
    (exit 3) and a refusal of run folders, both before anything is written."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"task": {}}')
    (run / "results.json").write_text("the run's")
    args = ["sweep", "reg", "fashion-mnist-shirts", "--lambdas", "0", "--feature-maps", "shift", "--epochs", "1"]
    res = CliRunner().invoke(main, [*args, "--out", str(run), "--data-dir", str(fashion_dir), "--workers", "1"])
    assert res.exit_code == 2 and "is a run folder" in res.output and (run / "results.json").read_text() == "the run's"
    busy = tmp_path / "busy"
    with folder_held(busy):
        with pytest.raises(asymcert.RunFolderBusyError):
            sweep_reg(
                "fashion-mnist-shirts",
                busy,
                lambdas=[0.0],
                feature_maps=["shift"],
                epochs=1,
                workers=1,
                limit=10,
                data_dir=fashion_dir,
            )
        assert sorted(p.name for p in busy.iterdir()) == [".asymcert.lock"]


def test_the_pareto_radius_is_one_every_point_was_certified_at():
    """`sweep reg spambase` looked up the task's radius 0.51 in runs certified under the threat model's own radii:
    KeyError, a traceback and no report (audit 29e #2). The front now uses a radius every point has."""
    from asymcert.research.sweep_reg import ParetoFront, _fronts

    def point(name: str, clean: float, accuracy: tuple[float, ...]) -> RegPoint:
        l1 = NormSummary((0.5, 1.0, 2.0), accuracy, 1.0)
        summary = CertifiedSummary(
            "feature-convex", Guarantee.FLAG, None, 10, "raw input units", clean, 0.1, {"l1": l1}
        )
        return RegPoint("shift", 0.0, name, name, {}, 1.0, RunResults(summary))

    entries = [point("a", 0.9, (0.7, 0.5, 0.2)), point("b", 0.8, (0.8, 0.6, 0.1))]
    fronts = _fronts(entries, {"l1": 0.51, "l2": 1.0})
    assert fronts == {"l1": ParetoFront(1.0, ["a", "b"])}
    assert _fronts(entries, {"l1": 2.0})["l1"].radius == 2.0


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["sweep", "reg", "no-such-task"], "unknown task 'no-such-task'"),
        (["sweep", "pairs", "no-such-task"], "unknown task 'no-such-task'"),
        (["sweep", "reg", "breast-cancer", "--lambdas", "abc"], "--lambdas: 'abc' is not a number"),
    ],
)
def test_a_refused_sweep_is_one_line_exit_2_and_makes_no_folder(tmp_path, args, message):
    """Pinned (coverage audit 30: the sweep error tests checked the message only)."""
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "out")])
    assert res.exit_code == 2 and message in res.output and len(res.output.strip().splitlines()) == 1, res.output
    assert not (tmp_path / "out").exists()


def test_a_reg_sweep_of_a_task_with_a_threat_model_tables_its_own_radii(tmp_path):
    """`sweep reg spambase` trained and certified every grid point under the spammer threat model but took the
    task's raw-unit report radii for its tables and its Pareto radius (0.51, found in no point's results: the front
    fell back to another radius, audit 29e #2). It now takes the threat model's report radii, which every point's
    results hold. SpamBase here is a small file in kernlab's own format, written by the test."""
    rdata.write_rda(tmp_path / "spam.rda", {"spam": spam_frame(300)})
    sweep = sweep_reg("spambase", tmp_path / "reg", lambdas=[0.0], feature_maps=["shift"], epochs=1, data_dir=tmp_path)
    assert sweep.report_radii == {norm_label(p): list(r) for p, r in SPAMBASE_THREAT_RADII.items()}
    assert sweep.units == "threat-model units (δ_i / scale_i)"
    (point,) = sweep.entries
    assert sweep.pareto["l1"].radius == 1.0  # the second-smallest of the task's ℓ1 radii, now in the points' units
    assert "1" in point.certified_accuracy("l1") and "0.51" not in point.certified_accuracy("l1")


def test_a_result_file_this_version_cannot_read_is_one_sweep_error(tmp_path):
    """A pair result from an older asymcert (no "guarantee" key) resumed into a KeyError traceback (review 31): now
    one line naming the file and saying to delete it."""
    settings = {"epochs": 1}
    job = tmp_path / "0-3"
    job.mkdir()
    (job / RESULT_FILE).write_text(json.dumps({"settings": settings, "method": "feature-convex"}))
    with pytest.raises(SweepError, match=r"is not a sweep result this asymcert reads \(KeyError") as info:
        split_finished(["0-3"], lambda name: tmp_path / name, settings, PairResult.from_dict)
    assert "\n" not in str(info.value) and "delete it to recompute the job" in str(info.value)
    assert split_finished(["1-2"], lambda name: tmp_path / name, settings, PairResult.from_dict) == ({}, ["1-2"])
    summary = CertifiedSummary("feature-convex", Guarantee.FLAG, None, 4, "raw input units", 0.5, 0.1, {})
    wrong = {**summary.to_dict(), "certified_accuracy": [], "median_radius": {}, "settings": settings}
    (job / RESULT_FILE).write_text(json.dumps(wrong))  # valid JSON of the wrong shape (review 31b)
    with pytest.raises(SweepError, match=r"reads \((TypeError|AttributeError): .*delete it to recompute the job"):
        split_finished(["0-3"], lambda name: tmp_path / name, settings, CertifiedSummary.from_dict)
