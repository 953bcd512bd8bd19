"""Run folders lose nothing: refused commands change nothing, one writer at a time, strict JSON, robust reads,
and a report without matplotlib."""

from __future__ import annotations

import errno
import json
import os
import shutil
import subprocess
import sys
import time
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load as safetensors_load

import asymcert
from asymcert.audit import audit_run
from asymcert.checkpoint import MODEL_FILE
from asymcert.cli import main
from asymcert.errors import (
    AsymcertError,
    CheckpointError,
    ConfigError,
    RunFolderBusyError,
    RunFolderConflictError,
    WriteError,
)
from asymcert.export import export_run
from asymcert.pipeline import (
    CERT_FILE,
    RUN_FILE,
    certify_run,
    plan_training,
    read_run,
    resolve_task,
    run_data,
    run_pipeline,
    run_task,
    train_run,
)
from asymcert.report.writer import REPORT_FILE, RESULTS_FILE, write_report
from asymcert.runfolder import LOCK_FILE, model_outputs
from asymcert.traffic import certify_file
from asymcert.train.loop import STATE_FILE, TrainingSession

TASK = {"name": "fashion-mnist-shirts"}
SMALL_MODEL = {"convex": {"kind": "convex-conv", "channels": 2, "stem_kernel": 3, "blocks": 1}}
SMALL_TRAIN = {"batch_size": 32, "epochs": 1}
LIMIT = 24


def _train(out, fashion_dir, train=None, model=None, **kw):
    return train_run(
        TASK,
        out,
        None,
        {**SMALL_TRAIN, **(train or {})},
        {**SMALL_MODEL, **(model or {})},
        data_dir=fashion_dir,
        progress=False,
        log=lambda m: None,
        **kw,
    )


@pytest.fixture(scope="module")
def certified(fashion_dir, tmp_path_factory):
    """A trained, certified and reported run folder (copy it before changing it)."""
    out = tmp_path_factory.mktemp("wf") / "run"
    _train(out, fashion_dir)
    certify_run(out, limit=LIMIT, data_dir=fashion_dir, progress=False)
    write_report(out)
    return out


@pytest.fixture
def run_dir(certified, tmp_path):
    dst = tmp_path / "run"
    shutil.copytree(certified, dst)
    return dst


def snapshot(folder: Path) -> dict[str, tuple[bytes, int, int]]:
    """Every file's bytes, modification time and mode (the writer lock excepted)."""
    return {
        str(p.relative_to(folder)): (p.read_bytes(), p.stat().st_mtime_ns, p.stat().st_mode)
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != LOCK_FILE
    }


def strict_load(path: Path):
    """json.loads that refuses NaN/Infinity (what strict JSON readers do)."""

    def refuse(const):
        raise ValueError(f"{path.name}: non-standard JSON constant {const}")

    return json.loads(path.read_text(), parse_constant=refuse)


# ---------------------------------------------------------------- 1. a refused command changes nothing
REFUSALS = {
    "other training settings": (dict(train={"epochs": 2}), RunFolderConflictError),
    "other model": (dict(model={"convex": {**SMALL_MODEL["convex"], "channels": 3}}), RunFolderConflictError),
    "bad device": (dict(train={"device": "tpu9"}), ConfigError),
    "cuda where there is none": (dict(train={"device": "cuda:7"}), ConfigError),
    "bad learning rate": (dict(train={"lr": "fast"}), ConfigError),
    "unknown optimizer": (dict(train={"optimizer": "rmsprop"}), ConfigError),
    "unknown setting": (dict(train={"nonsense": 1}), AsymcertError),
    "zero epochs": (dict(train={"epochs": 0}), ConfigError),
    "negative epochs": (dict(train={"epochs": -3}), ConfigError),
    "zero batch size": (dict(train={"batch_size": 0}), ConfigError),
    "bad augmentation name": (dict(train={"augment": "crop2_spin"}), AsymcertError),
}


@pytest.mark.parametrize("case", sorted(REFUSALS))
def test_refused_train_changes_nothing_on_disk(run_dir, fashion_dir, case):
    kwargs, error = REFUSALS[case]
    if case == "cuda where there is none" and torch.cuda.is_available():
        pytest.skip("this machine has CUDA")
    before = snapshot(run_dir)
    with pytest.raises(error) as info:
        _train(run_dir, fashion_dir, **kwargs)
    assert "\n" not in str(info.value)
    assert snapshot(run_dir) == before


def test_another_task_into_a_run_folder_is_refused_before_writing(run_dir, tmp_path):
    """The reported defect: a shirts run folder then scored a 10-class model. Another task is refused."""
    import numpy as np

    rng = np.random.default_rng(0)
    npz = tmp_path / "own.npz"
    np.savez(npz, x=rng.random((90, 1, 28, 28)).astype(np.float32), y=rng.integers(0, 2, 90))
    before = snapshot(run_dir)
    spec = {"npz": str(npz), "sensitive_class": 1, "other_class": None}
    with pytest.raises(RunFolderConflictError, match="another task"):
        train_run(spec, run_dir, None, SMALL_TRAIN, SMALL_MODEL, progress=False, log=lambda m: None)
    assert snapshot(run_dir) == before
    assert read_run(run_dir).task == TASK


def test_a_folder_of_the_users_own_files_is_not_trained_into(fashion_dir, tmp_path):
    """An --out folder holding files but no run: refused before anything (the lock file too) is written there."""
    out = tmp_path / "mine"
    out.mkdir()
    (out / "notes.txt").write_text("mine")
    (out / ".hidden").write_text("a dot file does not count")
    with pytest.raises(RunFolderConflictError, match=r"holds files but no run \(notes.txt\)"):
        _train(out, fashion_dir)
    assert sorted(p.name for p in out.iterdir()) == [".hidden", "notes.txt"]
    plan = plan_training(TASK, None, SMALL_TRAIN, SMALL_MODEL, data_dir=fashion_dir)
    with pytest.raises(RunFolderConflictError, match=r"holds files but no run \(notes.txt\)"):
        run_pipeline(plan, out)  # `asymcert run` left its lock file here
    assert sorted(p.name for p in out.iterdir()) == [".hidden", "notes.txt"]
    (out / "notes.txt").unlink()  # only names starting with "." left: an empty folder to a run
    _train(out, fashion_dir)
    assert (out / "run.json").is_file()


def test_refused_train_into_a_new_folder_creates_nothing(fashion_dir, tmp_path):
    out = tmp_path / "never"
    with pytest.raises(ConfigError):
        _train(out, fashion_dir, train={"device": "tpu9"})
    assert not out.exists()


class _Payload:
    def __reduce__(self):
        return (Path.touch, (Path("PWNED"),))


@pytest.mark.parametrize("kind", ["malicious", "garbage", "not a state", "deep history"])
def test_tampered_train_state_is_refused_before_any_write(run_dir, fashion_dir, kind, monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    state = run_dir / STATE_FILE
    if kind == "malicious":
        torch.save({"model": _Payload()}, state)
    elif kind == "garbage":
        state.write_bytes(b"\x80\x02garbage" * 50)
    elif kind == "deep history":  # was a RecursionError traceback
        torch.save({**torch.load(state, weights_only=True), "history": "[" * 100_000 + "]" * 100_000}, state)
    else:
        torch.save({"weights": torch.zeros(3)}, state)
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as info:
        _train(run_dir, fashion_dir)
    assert "\n" not in str(info.value) and str(state) in str(info.value)
    assert "weights_only" not in str(info.value)  # torch's advice to load it unsafely is not passed on
    if kind in ("malicious", "garbage"):
        assert "not a training state asymcert wrote" in str(info.value) and "start a new run" in str(info.value)
    assert snapshot(run_dir) == before
    assert not (tmp_path / "PWNED").exists()


def test_same_settings_resume_a_finished_run_without_change_of_results(run_dir, fashion_dir):
    before = read_run(run_dir)
    after = _train(run_dir, fashion_dir)
    assert after.train == before.train and after.model == before.model
    assert after.training is not None and after.training["epochs"] == 1


@pytest.mark.parametrize("damage", ["missing", "truncated", "empty"])
def test_resuming_a_finished_run_rewrites_a_missing_or_damaged_model_file(tmp_path, fashion_dir, damage):
    """train on a finished run whose model.safetensors is gone or damaged said "model in DIR" and left it so;
    the selected weights are in train_state.pt, and the resume now writes them back, bit for bit."""
    run_dir = tmp_path / "run"
    assert (_train(run_dir, fashion_dir, train={"epochs": 3}).training or {})["best"].get("eligible", True)
    model_file = run_dir / MODEL_FILE
    good = model_file.read_bytes()
    if damage == "missing":
        model_file.unlink()
    else:
        model_file.write_bytes(good[: len(good) // 2] if damage == "truncated" else b"")
    _train(run_dir, fashion_dir, train={"epochs": 3})
    before, after = safetensors_load(good), safetensors_load(model_file.read_bytes())
    assert before.keys() == after.keys() and all(torch.equal(after[k], before[k]) for k in before)
    assert asymcert.load(run_dir).config() == asymcert.load(run_dir).config()  # loads, validated


def test_an_interrupted_run_warns_its_readers_and_its_outputs_go_when_training_goes_on(
    tmp_path, fashion_dir, monkeypatch
):
    """Certificates, report and audit of an interrupted run's model were kept next to the finished model (a
    stale "no violations" audit.md); readers of such a run now warn, and resuming training removes them."""
    run_dir, real = tmp_path / "run", TrainingSession._end_epoch

    def stop_after_two_epochs(self, epoch, *args):
        real(self, epoch, *args)
        if epoch == 1:
            raise KeyboardInterrupt

    monkeypatch.setattr(TrainingSession, "_end_epoch", stop_after_two_epochs)
    with pytest.raises(KeyboardInterrupt):
        _train(run_dir, fashion_dir, train={"epochs": 3})
    monkeypatch.undo()
    assert read_run(run_dir).training is None
    with pytest.warns(UserWarning, match="its training has not finished"):
        certify_run(run_dir, limit=LIMIT, data_dir=fashion_dir, progress=False)
    np.savez(tmp_path / "new.npz", x=np.zeros((2, 1, 28, 28), dtype=np.float32))
    with pytest.warns(UserWarning, match="its training has not finished"):
        certify_file(run_dir, tmp_path / "new.npz", tmp_path / "new.csv", progress=False)
    with pytest.warns(UserWarning, match="its training has not finished"):
        export_run(run_dir, "onnx", tmp_path / "m.onnx")
    write_report(run_dir)
    assert "Note: training has not finished" in (run_dir / REPORT_FILE).read_text()
    x = run_data(run_dir, fashion_dir).test.x[:3]
    with pytest.warns(UserWarning, match="its training has not finished"):
        report = audit_run(run_dir, x, restarts=1, steps=2, exact=False)
    assert report.training_finished is False and "training has not finished" in (run_dir / "audit.md").read_text()
    made = {p.name for p in model_outputs(run_dir)}
    assert {CERT_FILE, "certify.json", RESULTS_FILE, REPORT_FILE, "audit.json", "audit.md"} <= made, made
    _train(run_dir, fashion_dir, train={"epochs": 3})  # resumes after epoch 2 and finishes
    assert model_outputs(run_dir) == [] and (read_run(run_dir).training or {})["epochs"] == 3
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a finished run: no warning
        certify_run(run_dir, limit=LIMIT, data_dir=fashion_dir, progress=False)
    write_report(run_dir)
    assert "training has not finished" not in (run_dir / REPORT_FILE).read_text()
    _train(run_dir, fashion_dir, train={"epochs": 3})  # nothing left to train: the certificates stay
    assert (run_dir / CERT_FILE).is_file()


# ---------------------------------------------------------------- 2. one writer per run folder
HOLD = """
import sys, time
from asymcert.runfolder import exclusive
with exclusive(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture
def held(run_dir):
    """Another process holding the run folder's lock."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(run_dir)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    yield run_dir
    proc.kill()
    proc.wait()


def test_second_writer_is_refused_at_once_and_changes_nothing(held, fashion_dir):
    before = snapshot(held)
    with pytest.raises(RunFolderBusyError, match="another asymcert process"):
        _train(held, fashion_dir)
    with pytest.raises(RunFolderBusyError):
        certify_run(held, limit=4, data_dir=fashion_dir, progress=False)
    with pytest.raises(RunFolderBusyError):
        write_report(held)
    assert snapshot(held) == before


def test_run_holds_the_lock_across_train_certify_and_report(fashion_dir, tmp_path, monkeypatch):
    """`run` takes the lock once and its own steps re-enter it; a concurrent process is kept out throughout."""
    import asymcert.pipeline as wf

    seen = []
    real = wf.certify_run

    def spy(*args, **kw):
        probe = subprocess.run(
            [
                sys.executable,
                "-c",
                "import sys\nfrom asymcert.runfolder import exclusive\n"
                "from asymcert.errors import RunFolderBusyError\n"
                "try:\n    exclusive(sys.argv[1]).__enter__()\nexcept RunFolderBusyError:\n"
                "    sys.exit(3)\n",
                str(args[0]),
            ]
        )
        seen.append(probe.returncode)
        return real(*args, **kw)

    monkeypatch.setattr(wf, "certify_run", spy)
    results = run_task(
        TASK,
        tmp_path / "r",
        data_dir=fashion_dir,
        limit=8,
        progress=False,
        train_overrides=SMALL_TRAIN,
        model_overrides=SMALL_MODEL,
        log=lambda m: None,
        report=write_report,
    )
    assert seen == [3] and results is not None and results.summary.n_inputs == 8


# ---------------------------------------------------------------- 3. stale temporary files
def test_stale_temp_files_of_a_killed_write_are_removed_by_the_next_command(run_dir, fashion_dir):
    stale = [run_dir / ".train_state.pt.asymcert-k3x_9a0q.tmp", run_dir / ".run.json.asymcert-abcdefgh.tmp"]
    for p in stale:
        p.write_bytes(b"half a file")
        past = time.time() - 60  # (no process locks them, and they are older than a write that has not yet)
        os.utime(p, (past, past))
    keep = [run_dir / ".my.notes", run_dir / ".run.json.abcdefgh"]  # the user's, though like a mkstemp name
    for p in keep:
        p.write_text("mine")
    certify_run(run_dir, limit=4, data_dir=fashion_dir, progress=False)
    assert not any(p.exists() for p in stale) and all(p.read_text() == "mine" for p in keep)


def test_a_refused_command_leaves_stale_temp_files_alone(run_dir, fashion_dir):
    stale = run_dir / ".train_state.pt.asymcert-k3x_9a0q.tmp"
    stale.write_bytes(b"half")
    with pytest.raises(ConfigError):
        _train(run_dir, fashion_dir, train={"device": "tpu9"})
    assert stale.exists()


# ---------------------------------------------------------------- 4. strict JSON
def test_no_eligible_epoch_still_writes_strict_json(fashion_dir, tmp_path):
    out = tmp_path / "ineligible"
    # the margin loss makes epochs before the end of its warm-up ineligible: the final epoch is kept, and said so
    run = _train(out, fashion_dir, train={"margin_radius": 0.1, "margin_norm": 2.0, "margin_warmup": 0.9})
    training = run.training or {}
    assert training["best"]["epoch"] == 1 and training["best"]["eligible"] is False
    certify_run(out, limit=8, data_dir=fashion_dir, progress=False)
    write_report(out)
    files = sorted(out.glob("*.json"))
    assert {p.name for p in files} >= {RUN_FILE, "history.json", RESULTS_FILE}
    for path in files:
        strict_load(path)
    assert strict_load(out / RUN_FILE)["training"]["best"]["metric"] == training["best"]["metric"]
    assert (out / "model.safetensors").is_file()  # the final weights, since no epoch was selected


# ---------------------------------------------------------------- 6. reading run folders robustly
BAD_RUN_JSON = {
    "a list": ("[1, 2]", "must hold a JSON object"),
    "empty object": ("{}", "lacks the key 'task'"),
    "not JSON": ("{oops", "not valid JSON"),
    "missing model": (json.dumps({"task": TASK, "train": {}}), "lacks the key 'model'"),
    "ill-typed model": (json.dumps({"task": TASK, "model": 3, "train": {}}), "'model' must be an object"),
    "ill-typed radii": (None, "'report_radii' must be"),
    "task naming nothing": (json.dumps({"task": {"x": 1}, "model": {}, "train": {}}), "'task' must be"),
}


@pytest.mark.parametrize("case", sorted(BAD_RUN_JSON))
def test_malformed_run_json_is_one_clear_line_everywhere(run_dir, fashion_dir, case):
    text, message = BAD_RUN_JSON[case]
    if text is None:
        raw = json.loads((run_dir / RUN_FILE).read_text())
        raw["report_radii"] = {"l2": "wide"}
        text = json.dumps(raw)
    (run_dir / RUN_FILE).write_text(text)
    before = snapshot(run_dir)
    for call in (
        lambda: certify_run(run_dir, limit=4, data_dir=fashion_dir, progress=False),
        lambda: write_report(run_dir),
        lambda: run_data(run_dir),
        lambda: read_run(run_dir),
    ):
        with pytest.raises(CheckpointError, match=message) as info:
            call()
        assert "\n" not in str(info.value)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("damage", ["garbage", "truncated", "no metadata", "short radii"])
def test_corrupt_certificates_give_one_line_at_report(run_dir, damage):
    path = run_dir / CERT_FILE
    from safetensors.torch import load_file, save_file

    if damage == "garbage":
        path.write_bytes(b"\x00" * 100)
    elif damage == "truncated":
        path.write_bytes(path.read_bytes()[:200])
    elif damage == "no metadata":
        save_file(load_file(str(path)), str(path))
    else:
        t = load_file(str(path))
        t["radius_l2"] = t["radius_l2"][:3].clone()
        save_file(
            t,
            str(path),
            metadata={
                "method": "convex",
                "deterministic": "true",
                "alpha": "null",
                "seconds": "0.1",
                "binary": "true",
                "norms": '["l2"]',
            },
        )
    before = snapshot(run_dir)
    with pytest.raises(CheckpointError) as info:
        write_report(run_dir)
    assert "\n" not in str(info.value) and CERT_FILE in str(info.value)
    assert snapshot(run_dir) == before


@pytest.mark.parametrize("limit,batch", [(0, 10), (-5, 10), (None, 0), (3, -1)])
def test_certify_limits_out_of_range_are_refused(run_dir, fashion_dir, limit, batch):
    before = snapshot(run_dir)
    with pytest.raises(ConfigError):
        certify_run(run_dir, limit=limit, batch_size=batch, data_dir=fashion_dir, progress=False)
    assert snapshot(run_dir) == before


# ---------------------------------------------------------------- 7. the report without matplotlib; disk full
@pytest.fixture
def no_matplotlib(monkeypatch):
    """Imports of matplotlib fail, as in a plain `pip install asymcert`."""
    for name in [m for m in sys.modules if m == "matplotlib" or m.startswith("matplotlib.")]:
        monkeypatch.delitem(sys.modules, name)
    monkeypatch.setitem(sys.modules, "matplotlib", None)


def test_report_without_matplotlib_writes_tables_and_says_how_to_get_plots(run_dir, no_matplotlib):
    for png in run_dir.glob("*.png"):
        png.unlink()
    messages = []
    results = write_report(run_dir, log=messages.append)
    assert results is not None and results.plots == {} and not list(run_dir.glob("*.png"))
    assert "pip install 'asymcert[plot]'" in (run_dir / REPORT_FILE).read_text()
    assert strict_load(run_dir / RESULTS_FILE)["certified_accuracy"]
    assert len(messages) == 1 and "asymcert[plot]" in messages[0]


def test_run_without_matplotlib_completes_and_warns_before_training(fashion_dir, tmp_path, no_matplotlib):
    out = tmp_path / "plain"
    args = [
        "run",
        "fashion-mnist-shirts",
        "--out",
        str(out),
        "--data-dir",
        str(fashion_dir),
        "--limit",
        "8",
        "--epochs",
        "1",
        "--set",
        "batch_size=32",
        "--model-set",
        'convex={"kind": "convex-conv", "channels": 2, "stem_kernel": 3, "blocks": 1}',
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    lines = res.output.splitlines()
    assert "asymcert[plot]" in lines[0]  # said first, before the first epoch
    assert any(m.startswith("epoch 1/1") for m in lines[1:])
    assert strict_load(out / RESULTS_FILE)["n_inputs"] == 8 and (out / REPORT_FILE).is_file()
    assert not list(out.glob("*.png"))


def test_disk_full_while_reporting_is_one_line_and_keeps_the_old_report(run_dir, monkeypatch):
    old = (run_dir / REPORT_FILE).read_bytes()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(Path, "write_text", full)
    with pytest.raises(WriteError, match="No space left on device") as info:
        write_report(run_dir)
    assert "\n" not in str(info.value) and RESULTS_FILE in str(info.value)
    monkeypatch.undo()
    assert (run_dir / REPORT_FILE).read_bytes() == old
    assert not [p for p in run_dir.iterdir() if p.name.startswith(".results.json.")]


def test_disk_full_while_training_is_one_line(fashion_dir, tmp_path, monkeypatch):
    import asymcert.train.loop as loop

    def full(state, path):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(loop, "_save_state", full)
    with pytest.raises(WriteError, match=STATE_FILE):
        _train(tmp_path / "full", fashion_dir)


def test_run_json_keys_of_newer_versions_are_kept(run_dir, fashion_dir):
    """A run.json key this version does not know survives a resume that rewrites run.json."""
    raw = json.loads((run_dir / RUN_FILE).read_text())
    (run_dir / RUN_FILE).write_text(json.dumps({**raw, "later_key": [1, 2]}))
    assert read_run(run_dir).extra["later_key"] == [1, 2]
    _train(run_dir, fashion_dir)
    assert strict_load(run_dir / RUN_FILE)["later_key"] == [1, 2]


def test_a_run_with_other_training_settings_names_what_changed(run_dir, fashion_dir):
    """ "holds a run with another training settings" said neither which nor why (a phishing walkthrough asked
    for more epochs on a finished run)."""
    before = snapshot(run_dir)
    with pytest.raises(RunFolderConflictError, match=r"other training settings \(epochs: 1 → 4\); a run goes on only"):
        _train(run_dir, fashion_dir, train={"epochs": 4})
    assert snapshot(run_dir) == before


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        (["spambase"], "a task spec is an object, not list"),
        ({"name": "fashion-mnist", "pair": [1]}, r"a class pair is \[sensitive, other\], got \[1\]"),
        ({"name": "fashion-mnist", "pair": "0,1"}, "a class pair is"),
        ({"csv": "mail.csv", "label_column": "kind"}, "needs its sensitive class"),
        ({"npz": "x.npz"}, "needs its sensitive class"),
        ({"csv": "mail.csv", "sensitive_class": "spam"}, "a CSV task needs its label column"),
        ({"csv": "m.csv", "sensitive_class": "s", "label_column": "k", "ignore_columns": "id"}, "ignore_columns is a"),
        ({"csv": "m.csv", "sensitive_class": "s", "label_column": "k", "ignore_columns": [3]}, "ignore_columns is a"),
        ({"sensitive_class": "spam"}, "names no task"),
    ],
)
def test_a_bad_task_spec_in_python_is_one_config_error_naming_it(spec, message, tmp_path, monkeypatch):
    """resolve_task's refusals (the Python route to a run: the CLI never builds these specs), each before any file
    is read: the paths named do not exist."""
    monkeypatch.chdir(tmp_path)
    with pytest.raises(ConfigError, match=message):
        resolve_task(spec)
    assert list(tmp_path.iterdir()) == []
