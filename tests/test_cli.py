import errno
import json
import os
import shutil
import signal
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace

import click
import numpy as np
import pytest
import torch
from click.testing import CliRunner
from filelock import FileLock
from safetensors.torch import load_file

import asymcert
from asymcert import cli as cli_module
from asymcert import pipeline as pipeline_module
from asymcert.certify.certfile import load_certificates
from asymcert.cli import (
    EXIT_BUSY,
    EXIT_CHECK_FAILED,
    EXIT_CODES,
    EXIT_INTERRUPTED,
    EXIT_IO,
    EXIT_OK,
    EXIT_PIPE,
    EXIT_REFUSED,
    EXIT_TERMINATED,
    _bars,
    entry,
    main,
)
from asymcert.report import writer as writer_module

SMALL = [
    "--model-set",
    'convex={"kind": "convex-conv", "channels": 2, "stem_kernel": 3, "blocks": 1}',
    "--set",
    "batch_size=32",
    "--quiet",
]


def test_run_writes_the_run_folder_contract(fashion_dir, tmp_path):
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main,
        ["run", "fashion-mnist-shirts", "--data-dir", str(fashion_dir), "--epochs", "2", "--out", str(out), *SMALL],
    )
    assert res.exit_code == 0, res.output
    for name in (
        "model.safetensors",
        "results.json",
        "report.md",
        "run.json",
        "certificates.safetensors",
        "certified_l1.png",
        "certified_l2.png",
        "certified_linf.png",
    ):
        assert (out / name).is_file(), name
    results = json.loads((out / "results.json").read_text())
    certs = load_file(str(out / "certificates.safetensors"))  # recomputed from the per-input file
    assert results["clean_accuracy"] == float((certs["predicted"] == certs["label"]).double().mean())
    assert results["clean_accuracy"] >= 0.5
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
    assert _summary_units(res.output) == "radii in raw input units"  # audit units30 F3: as certify says it


def _summary_units(output: str) -> str:
    """The line before the summary's "clean accuracy" line."""
    lines = output.splitlines()
    return next(lines[i - 1] for i, line in enumerate(lines) if line.startswith("clean accuracy") and i)


IMAGE_UNITS = "raw input units (pixel values / 255, in [0, 1])"


def _pngs(root, classes):
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(3)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for k in range(count):
            image.fromarray(rng.integers(0, 256, (8, 8), dtype=np.uint8), mode="L").save(root / name / f"{k}.png")
    return root


def test_run_report_and_certify_say_the_units_of_their_radii_and_an_image_folders_scaling(tmp_path):
    """Audit units30 F3: ``run`` and ``report`` printed radii without a unit; F6: an image folder's pixels are
    divided by 255, and every output said plain "raw input units"."""
    pics = _pngs(tmp_path / "pics", {"bad": 12, "good": 12})
    out = tmp_path / "run"
    args = ["run", "--images", str(pics), "--sensitive-class", "bad", "--out", str(out), *TINY]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == EXIT_OK, res.output
    assert _summary_units(res.output) == f"radii in {IMAGE_UNITS}"
    res = CliRunner().invoke(main, ["report", str(out)])
    assert res.exit_code == EXIT_OK and res.output.splitlines()[0] == f"radii in {IMAGE_UNITS}", res.output
    assert json.loads((out / "results.json").read_text())["units"] == IMAGE_UNITS
    assert f"(radii in {IMAGE_UNITS})" in (out / "report.md").read_text()
    res = CliRunner().invoke(main, ["certify", str(out), "--quiet"])
    assert res.exit_code == EXIT_OK and res.output.count(f"radii in {IMAGE_UNITS}") == 1, res.output
    assert load_certificates(out / "certificates.safetensors")[0].units == IMAGE_UNITS
    res = CliRunner().invoke(main, ["certify", str(out), "--input", str(pics), "--out", str(tmp_path / "r.csv")])
    assert res.exit_code == EXIT_OK and f"radii in {IMAGE_UNITS}; results in" in res.output, res.output
    record = json.loads((tmp_path / "r.csv.json").read_text())
    assert record["units"] == IMAGE_UNITS and IMAGE_UNITS in record["columns"]["radius_l2"]
    audit = ["audit", str(out), "--limit", "4", "--restarts", "1", "--steps", "5", "--no-exact"]
    assert CliRunner().invoke(main, audit).exit_code == EXIT_OK
    assert json.loads((out / "audit.json").read_text())["units"] == IMAGE_UNITS
    _exports_say_the_scaling(out, tmp_path)


def _exports_say_the_scaling(run, tmp_path):
    """The ONNX graph and the VNN-LIB folder of an image run state the /255 scaling too (review 30)."""
    onnx = pytest.importorskip("onnx")
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == EXIT_OK and f"radius_linf (in {IMAGE_UNITS})" in res.output, res.output
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "m.onnx")).metadata_props}
    assert meta["asymcert.units.radius"] == IMAGE_UNITS == meta["asymcert.units"]
    res = CliRunner().invoke(main, ["export", str(run), "--format", "vnnlib", "--out", str(tmp_path / "v")])
    assert res.exit_code == EXIT_OK and f"radii in {IMAGE_UNITS}" in res.output, res.output
    radii = json.loads((tmp_path / "v" / "radii.json").read_text())
    assert radii["units"] == IMAGE_UNITS and radii["units_per_radius"] == {"radius_*": IMAGE_UNITS}


def test_progress_bars_are_drawn_only_on_a_terminal(tmp_path, monkeypatch):
    """Without --quiet but with stderr redirected (a log file, CI), no bar is redrawn into the output; the
    per-epoch lines still are."""
    out = tmp_path / "bc"
    res = CliRunner().invoke(main, ["run", "breast-cancer", "--preset", "fast", "--epochs", "2", "--out", str(out)])
    assert res.exit_code == 0, res.output
    assert "\r" not in res.output and "it/s" not in res.output and "epoch 2/2" in res.output

    class Terminal:
        def isatty(self) -> bool:
            return True

    monkeypatch.setattr(sys, "stderr", Terminal())
    assert _bars(False) and not _bars(True)


def test_own_npz_data(tmp_path):
    gen = torch.Generator().manual_seed(0)
    y = torch.randint(0, 3, (300,), generator=gen)
    x = torch.randn(300, 5, generator=gen) + y[:, None].float()
    import numpy as np

    np.savez(tmp_path / "mine.npz", x=x.numpy(), y=y.numpy())
    out = tmp_path / "npz"
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--data",
            str(tmp_path / "mine.npz"),
            "--sensitive-class",
            "2",
            "--out",
            str(out),
            "--epochs",
            "30",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    assert json.loads((out / "results.json").read_text())["clean_accuracy"] > 0.6
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--data",
            str(tmp_path / "mine.npz"),
            "--sensitive-class",
            "7",
            "--out",
            str(tmp_path / "bad"),
            "--quiet",
        ],
    )
    assert res.exit_code != 0 and "7" in res.output and "Traceback" not in res.output


def test_linf_dist_family_on_a_binary_task_keeps_the_binary_contract(fashion_dir, tmp_path):
    out = tmp_path / "linf"
    res = CliRunner().invoke(
        main,
        [
            "run",
            "fashion-mnist-shirts",
            "--model",
            "linf-dist",
            "--data-dir",
            str(fashion_dir),
            "--out",
            str(out),
            "--epochs",
            "1",
            "--quiet",
            "--model-set",
            "widths=[32, 32]",
            "--set",
            "batch_size=64",
        ],
    )
    assert res.exit_code == 0, res.output
    model = asymcert.load(out)
    x = torch.rand(3, 1, 28, 28)
    assert model(x).shape == (3,)
    cert = asymcert.certify(model, x, norms=("inf",))
    assert cert.binary and cert.sensitive.shape == (3,)
    run = json.loads((out / "run.json").read_text())
    assert run["train"]["optimizer"] == "adam" and run["model"]["binary"] is True


def test_another_family_with_another_arch_builds_it_and_checks_only_the_users_keys(fashion_dir, tmp_path):
    """--model relu-ibp --model-set arch="cnn": the family's MLP default widths are its defaults, not the user's
    settings, so the CNN is built; a key the CNN ignores, when the user sets it, is still refused."""
    common = ["run", "fashion-mnist-shirts", "--model", "relu-ibp", "--data-dir", str(fashion_dir), "--quiet"]
    cnn = ["--model-set", 'arch="cnn"', "--model-set", "channels=[2, 4]", "--model-set", "fc=[8]"]
    out = tmp_path / "cnn"
    res = CliRunner().invoke(main, [*common, *cnn, "--epochs", "1", "--limit", "4", "--out", str(out)])
    assert res.exit_code == 0, res.output
    model = json.loads((out / "run.json").read_text())["model"]
    assert model["arch"] == "cnn" and model["channels"] == [2, 4] and "widths" not in model
    bad = tmp_path / "bad"
    res = CliRunner().invoke(main, [*common, *cnn, "--model-set", "widths=[8]", "--epochs", "1", "--out", str(bad)])
    assert res.exit_code != 0 and "'widths' have no effect" in res.output and not bad.exists()


def test_model_set_with_another_convex_kind_replaces_the_config(fashion_dir, tmp_path):
    """--model-set convex={...another kind...} replaces the task's convex config instead of merging it."""
    from asymcert.pipeline import _merge

    base = {"convex": {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2}, "input_shape": [1]}
    merged = _merge(base, {"convex": {"kind": "icnn", "widths": [8]}})
    assert merged["convex"] == {"kind": "icnn", "widths": [8]}
    assert _merge(base, {"convex": {"channels": 8}})["convex"]["stem_kernel"] == 5  # same kind: merged


# ------------------------------------------------------------------ one clear line, the right exit code
TINY = ["--model-set", 'convex={"kind": "icnn", "widths": [8]}', "--preset", "fast", "--epochs", "1", "--quiet"]


@pytest.fixture(scope="module")
def tiny_run(fashion_dir, tmp_path_factory):
    """A trained and certified tiny run folder (copy it before changing it)."""
    out = tmp_path_factory.mktemp("cli") / "run"
    for args in (
        ["train", "fashion-mnist-shirts", "--data-dir", str(fashion_dir), "--out", str(out), *TINY],
        ["certify", str(out), "--limit", "10", "--quiet"],
    ):
        res = CliRunner().invoke(main, args)
        assert res.exit_code == 0, res.output
    return out


def _copy(run, tmp_path):
    return Path(shutil.copytree(run, tmp_path / "copy"))


def _files(folder):
    return {p.name: p.read_bytes() for p in sorted(folder.iterdir())}


def _refused(res, code=2) -> str:
    """The one stderr line of a refused command (asserting its exit code and that nothing else was printed)."""
    assert res.exception is None or isinstance(res.exception, SystemExit), repr(res.exception)
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == code and len(lines) == 1 and lines[0].startswith("Error: "), (res.exit_code, res.output)
    return lines[0]


@pytest.mark.parametrize(
    "args, message",
    [
        (["--set", "lr=fast"], "lr must be a finite number > 0, got 'fast' (text)"),
        (["--set", "lr={bad"], "lr='{bad': the value is not valid JSON"),
        (["--set", "widths=[1,"], "not valid JSON"),
        (
            ["--set", "epochs=0", "--set", "lr=0", "--set", "optimizer=rmsprop"],
            "3 problems: epochs must be an integer ≥ 1, got 0; lr must be a finite number > 0, got 0; "
            "optimizer must be",
        ),
        (["--set", "device=tpu9"], "device must be a device name"),
        (["--device", "tpu9"], "unknown device 'tpu9'; valid devices: auto, cpu, cuda, cuda:<index> or mps"),
        (
            ["--device", "cuda:7"] if not torch.cuda.is_available() else ["--device", "cuda:999"],
            "is not available here",
        ),
        (["--epochs", "-3"], "Invalid value for '--epochs': -3 is not in the range x>=1"),
        (["--epochs", "0"], "Invalid value for '--epochs': 0 is not in the range x>=1"),
        (["--model-set", "bogus=1"], "'bogus'"),  # refused by the model builder or as a setting without effect
        (["--model-set", 'convex={"kind": "icnn", "widths": [8], "bogus": 1}'], "bogus"),
        (["--model-set", "arch=mlp"], "'arch'"),
        (["--model-set", "input_shape=[3]"], "input_shape is taken from the data"),
        (["--model-set", "nokey"], "'nokey' is not KEY=VALUE"),
    ],
)
def test_train_refuses_bad_settings_in_one_line(fashion_dir, tmp_path, args, message):
    out = tmp_path / "out"
    res = CliRunner().invoke(
        main, ["train", "fashion-mnist-shirts", "--data-dir", str(fashion_dir), "--out", str(out), "--quiet", *args]
    )
    assert message in _refused(res)
    assert not out.exists()  # refused before anything was written


@pytest.mark.parametrize(
    "args, message",
    [
        (["--limit", "0"], "Invalid value for '--limit': 0 is not in the range x>=1"),
        (["--limit", "-5"], "-5 is not in the range x>=1"),
        (["--batch-size", "0"], "Invalid value for '--batch-size': 0 is not in the range x>=1"),
        (["--norms", ","], "name at least one norm"),
        (["--norms", "0.5"], "ℓp norms need p ≥ 1"),
        (["--norms", "2,2.0"], "'2' and '2.0' name one norm (ℓ2); give each norm once"),
        (["--norms", "1,2,"], "'1,2,' has an empty entry"),
        (["--device", "tpu9"], "unknown device 'tpu9'"),
    ],
)
def test_certify_refuses_bad_options(tiny_run, tmp_path, args, message):
    folder = _copy(tiny_run, tmp_path)
    before = _files(folder)
    assert message in _refused(CliRunner().invoke(main, ["certify", str(folder), "--quiet", *args]))
    assert _files(folder) == before


@pytest.mark.parametrize(
    "damage, message",
    [
        (("certificates.safetensors", b"garbage" * 10), "is not a readable certificates file"),
        (("run.json", b"[1, 2]"), "must hold a JSON object, found list"),
        (("run.json", b"{}"), "lacks the key 'task'"),
    ],
)
def test_report_on_a_damaged_folder_is_one_line(tiny_run, tmp_path, damage, message):
    folder = _copy(tiny_run, tmp_path)
    (folder / damage[0]).write_bytes(damage[1])
    before = _files(folder)
    assert message in _refused(CliRunner().invoke(main, ["report", str(folder)]))
    assert _files(folder) == before


def test_help_documents_the_exit_codes():
    text = CliRunner().invoke(main, ["--help"]).output
    for code in EXIT_CODES:
        assert f"\n  {code} " in text.replace("\n    ", "\n  "), code


def test_exit_codes_are_distinct(tiny_run, tmp_path, monkeypatch):
    """0 success, 1 violations found, 2 refused input, 3 busy folder, 4 file-system failure, 130 interrupted."""
    runner = CliRunner()
    monkeypatch.setattr(cli_module, "audit_run", lambda *a, **k: SimpleNamespace(violations=3, certificate_mode=None))
    res = runner.invoke(main, ["audit", str(tiny_run), "--limit", "2"])
    assert res.exit_code == EXIT_CHECK_FAILED == 1 and "3 violation(s)" in res.output
    monkeypatch.setattr(cli_module, "audit_run", lambda *a, **k: SimpleNamespace(violations=0, certificate_mode=None))
    assert runner.invoke(main, ["audit", str(tiny_run), "--limit", "2"]).exit_code == EXIT_OK == 0
    assert "not a run folder" in _refused(runner.invoke(main, ["audit", str(tmp_path)]), EXIT_REFUSED)
    folder = _copy(tiny_run, tmp_path)
    lock = FileLock(str(folder / ".asymcert.lock"))
    with lock:  # another process would hold it like this
        assert "RunFolderBusyError" in _refused(runner.invoke(main, ["certify", str(folder), "--quiet"]), EXIT_BUSY)
        assert "RunFolderBusyError" in _refused(runner.invoke(main, ["audit", str(folder), "--limit", "2"]), EXIT_BUSY)
    for exc, code, message in (
        (
            OSError(errno.ENOSPC, "No space left on device", str(folder / "results.json")),
            EXIT_IO,
            "OSError: " + str(folder / "results.json") + ": No space left on device",
        ),
        (PermissionError(errno.EACCES, "Permission denied"), EXIT_IO, "Permission denied"),
        (KeyboardInterrupt(), EXIT_INTERRUPTED, "interrupted"),
    ):
        monkeypatch.setattr(cli_module, "write_report", _raiser(exc))
        assert message in _refused(runner.invoke(main, ["report", str(folder)]), code)


def test_a_full_disk_while_writing_is_one_line_and_keeps_the_old_file(tiny_run, tmp_path, monkeypatch):
    folder = _copy(tiny_run, tmp_path)
    before = (folder / "certificates.safetensors").read_bytes()

    def full(self, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device", str(self))

    monkeypatch.setattr(Path, "write_bytes", full)
    line = _refused(CliRunner().invoke(main, ["certify", str(folder), "--quiet", "--limit", "3"]), EXIT_IO)
    assert "WriteError" in line and "No space left on device" in line
    monkeypatch.undo()
    assert (folder / "certificates.safetensors").read_bytes() == before
    assert not [p for p in folder.iterdir() if p.name.startswith(".certificates")]  # no temporary file left


def test_a_report_that_cannot_be_written_after_new_certificates_leaves_no_stale_report(tiny_run, tmp_path, monkeypatch):
    """report.md failing after certificates.safetensors was replaced left the old report.md describing the old
    certificates (exit 4; walkthrough 25b F6): now there is no report of other certificates, and the line says so."""
    folder = _copy(tiny_run, tmp_path)
    real = writer_module.atomic_write

    def refuse_report(path, write):
        if Path(path).name == "report.md":
            raise asymcert.errors.WriteError(f"could not write {path}: No space left on device")
        real(path, write)

    monkeypatch.setattr(writer_module, "atomic_write", refuse_report)
    line = _refused(CliRunner().invoke(main, ["certify", str(folder), "--quiet", "--limit", "4"]), EXIT_IO)
    assert "the new certificates are written, and the report is not: `asymcert report" in line
    assert load_certificates(folder / "certificates.safetensors")[0].radii[2.0].shape == (4,)  # the new ones
    assert not (folder / "report.md").exists() and json.loads((folder / "results.json").read_text())["n_inputs"] == 4
    monkeypatch.undo()
    assert CliRunner().invoke(main, ["report", str(folder)]).exit_code == EXIT_OK
    assert (folder / "report.md").is_file()


@pytest.mark.parametrize("exc", [ZeroDivisionError("a bug"), ValueError("a bug raising a plain ValueError")])
def test_bugs_keep_their_traceback(tiny_run, monkeypatch, exc):
    """Only refusals become one line: any other exception is a bug and is not disguised as one."""
    monkeypatch.setattr(cli_module, "write_report", _raiser(exc))
    res = CliRunner().invoke(main, ["report", str(tiny_run)])
    assert res.exception is exc


def _raiser(exc):
    def fn(*args, **kwargs):
        raise exc

    return fn


def test_tasks_lists_every_task_with_its_presets():
    res = CliRunner().invoke(main, ["tasks"])
    assert res.exit_code == 0, res.output
    lines = {line.split()[0]: line for line in res.output.splitlines()}
    assert "(presets: fast, log1p-64-32, pairs)" in lines["spambase"]
    assert "(presets: fast, paper)" in lines["fashion-mnist-shirts"]
    assert set(lines) >= {"mnist-38", "cifar10-catsdogs", "malimg", "breast-cancer", "spambase"}
    # README review s34: the presets of one's own tables (hinges, log1p-hinges) were listed nowhere
    last = " ".join(res.output.splitlines()[-1].split())
    assert last == "your own data --csv, --data or --images (presets: fast; tables also hinges, log1p-hinges)"


def test_a_closed_output_pipe_is_not_a_file_system_error(tiny_run, fashion_dir, tmp_path):
    """`asymcert certify RUN | head -0`: the reader is gone before the summary line; exit 141 as a shell would
    report it, nothing on stderr, and the certificates written before the line are complete."""
    run = _copy(tiny_run, tmp_path)
    (run / "certificates.safetensors").unlink()
    args = [sys.executable, "-m", "asymcert", "certify", str(run), "--limit", "5", "--quiet"]
    proc = subprocess.Popen([*args, "--data-dir", str(fashion_dir)], stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    proc.stdout.close()  # the reader goes away at once
    err = proc.stderr.read().decode()
    assert proc.wait() == EXIT_PIPE == 141 and err == ""
    cert, _ = load_certificates(run / "certificates.safetensors")
    assert len(cert) == 5


TERM_DURING_CERTIFY = """
import sys, time
import asymcert.traffic
from asymcert.cli import main

def slow(*args, **kwargs):
    print("certifying", flush=True)
    time.sleep(60)

asymcert.traffic.certify = slow
main(sys.argv[1:], prog_name="asymcert")
"""


def test_sigterm_mid_write_is_one_line_exit_143_and_leaves_no_file(tiny_run, tmp_path):
    """`kill` (SIGTERM) while certify --input writes: one line, exit 143, and no results, record or temporary file
    (SIGTERM used to end the process at once, exit 143 with no message and the temporary file left)."""
    np.savez(tmp_path / "x.npz", x=np.zeros((3, 1, 28, 28), dtype=np.float32))
    args = ["certify", str(tiny_run), "--input", str(tmp_path / "x.npz"), "--out", str(tmp_path / "r.csv"), "--quiet"]
    proc = subprocess.Popen(
        [sys.executable, "-c", TERM_DURING_CERTIFY, *args], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    assert proc.stdout.readline().strip() == "certifying"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".r.csv.")]  # the write is under way
    proc.send_signal(signal.SIGTERM)
    _, err = proc.communicate(timeout=60)
    assert proc.returncode == EXIT_TERMINATED == 143
    # (it said that training resumes after its last finished epoch: nothing trains here)
    assert err.startswith("Error: terminated (SIGTERM); nothing was half-written") and err.count("\n") == 1
    assert "training" not in err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["x.npz"]
    assert signal.getsignal(signal.SIGTERM) == signal.SIG_DFL  # this process's handler is untouched


def test_a_stopped_command_says_how_to_go_on_for_what_it_was_doing(tiny_run, tmp_path, monkeypatch):
    """Ctrl-C in `train` resumes when rerun; in `report` (or certify) nothing trains, and nothing half-written is
    kept (every output appears whole): the line said 'training resumes' for every command."""
    runner = CliRunner()
    monkeypatch.setattr(cli_module, "train_run", _raiser(KeyboardInterrupt()))
    line = _refused(runner.invoke(main, ["train", "breast-cancer", "--out", str(tmp_path / "t")]), EXIT_INTERRUPTED)
    assert "training resumes after its last finished epoch" in line
    monkeypatch.setattr(cli_module, "write_report", _raiser(KeyboardInterrupt()))
    line = _refused(runner.invoke(main, ["report", str(_copy(tiny_run, tmp_path))]), EXIT_INTERRUPTED)
    assert "training" not in line and "nothing was half-written" in line


PROBE_BUSY = "import sys; from asymcert.runfolder import being_written; print(being_written(sys.argv[1]))"


def test_certify_holds_the_folders_lock_from_its_certificates_to_their_report(tiny_run, tmp_path, monkeypatch):
    """`certify DIR` let the lock go between writing the certificates and writing their report (about 200 ms):
    a second certify starting then also succeeded, and the first printed the second's results (audit 29a F1).
    Another process now sees the folder busy when the report starts, and an interrupt there says what is left."""
    folder = _copy(tiny_run, tmp_path)
    seen = []

    def probe_then_report(run_dir, log=None):
        probe = subprocess.run([sys.executable, "-c", PROBE_BUSY, str(run_dir)], capture_output=True, text=True)
        seen.append(probe.stdout.strip())
        raise KeyboardInterrupt

    monkeypatch.setattr(cli_module, "write_report", probe_then_report)
    line = _refused(CliRunner().invoke(main, ["certify", str(folder), "--quiet", "--limit", "3"]), EXIT_INTERRUPTED)
    assert seen == ["True"]
    assert "nothing was half-written" not in line
    assert f"the new certificates are written, and the report is not: `asymcert report {folder}` writes it" in line


def test_an_interrupt_once_the_earlier_report_is_removed_says_so(tiny_run, tmp_path, monkeypatch):
    """Ctrl-C right after the earlier certificates' report was removed (while the new certificates are written)
    said 'nothing was half-written' (audit 29a F5): now the line says the report is missing and how to get one."""
    folder = _copy(tiny_run, tmp_path)
    assert (folder / "report.md").is_file()
    monkeypatch.setattr(pipeline_module, "save_certificates", _raiser(KeyboardInterrupt()))
    line = _refused(CliRunner().invoke(main, ["certify", str(folder), "--quiet", "--limit", "3"]), EXIT_INTERRUPTED)
    assert "nothing was half-written" not in line and not (folder / "report.md").exists()
    assert "the report of the earlier certificates is removed and the new one not written" in line


def test_a_full_disk_once_the_earlier_report_is_removed_says_so(tiny_run, tmp_path, monkeypatch):
    """certify DIR removed the earlier report, then hit a full disk writing the certificates: exit 4 said only 'any
    previous version is left intact' (review 29d #2); now it also says the report is gone and how to get one."""
    folder = _copy(tiny_run, tmp_path)
    full = asymcert.errors.WriteError("could not write certificates.safetensors: No space left on device")
    monkeypatch.setattr(pipeline_module, "save_certificates", _raiser(full))
    line = _refused(CliRunner().invoke(main, ["certify", str(folder), "--quiet", "--limit", "3"]), EXIT_IO)
    assert "No space left on device" in line and not (folder / "report.md").exists()
    assert "the report of the earlier certificates is removed and the new one not written" in line


def test_a_stopped_capacity_run_does_not_promise_to_resume(tmp_path, monkeypatch):
    """Ctrl-C in `capacity` said training resumes after its last finished epoch; a rerun trains from the start
    (audit 29e #6)."""
    monkeypatch.setattr(cli_module, "capacity_report", _raiser(KeyboardInterrupt()))
    res = CliRunner().invoke(main, ["capacity", "breast-cancer", "--out", str(tmp_path / "cap")])
    line = _refused(res, EXIT_INTERRUPTED)
    assert "training resumes" not in line and "rerun the same command to start again" in line


def test_a_sigterm_under_torchrun_says_the_launcher_may_have_sent_it(tiny_run, tmp_path, monkeypatch):
    """torchrun stops every process when one fails: rank 0's line said only 'terminated (SIGTERM); rerun ... training
    resumes' (audit 29e #7). Under a process group it now says where the SIGTERM may come from."""
    monkeypatch.setattr(cli_module.distributed, "is_distributed", lambda: True)
    monkeypatch.setattr(cli_module, "write_report", _raiser(cli_module._Terminated()))
    line = _refused(CliRunner().invoke(main, ["report", str(_copy(tiny_run, tmp_path))]), EXIT_TERMINATED)
    assert "terminated (SIGTERM; under torchrun, the launcher stops every process when one fails or the job" in line
    # review s34 dist F5: "rerun the same command to go on" cannot help with another process's bad data
    assert "another process's line says why); once that is mended, nothing was half-written" in line


def test_a_peer_stopping_mid_training_is_one_line_and_a_bug_keeps_its_traceback(tiny_run, tmp_path, monkeypatch):
    """A torchrun peer killed mid-training failed DDP's all-reduce in loss.backward(): rank 0 printed gloo's 50-line
    traceback (review 29f). Inside a process group, that error is one PeerStoppedError line; any other RuntimeError
    is a bug and keeps its traceback."""
    monkeypatch.setattr(cli_module.distributed, "is_distributed", lambda: True)
    reset = RuntimeError("[pair.cc:537] Read error [127.0.0.1]:27366: Connection reset by peer. This is typically")
    monkeypatch.setattr(cli_module, "write_report", _raiser(reset))
    line = _refused(CliRunner().invoke(main, ["report", str(_copy(tiny_run, tmp_path))]), EXIT_REFUSED)
    assert line.startswith("Error: PeerStoppedError: another process of this torchrun job stopped")
    bug = RuntimeError("shape mismatch")
    monkeypatch.setattr(cli_module, "write_report", _raiser(bug))
    assert CliRunner().invoke(main, ["report", str(_copy(tiny_run, tmp_path / "b"))]).exception is bug


def test_ctrl_c_while_the_arguments_are_parsed_is_one_line_and_exit_130(monkeypatch):
    """Before invoke() catches it, click answered a Ctrl-C with "Aborted!" and exit 1, the code of a failed check
    (review 30)."""

    def interrupted(self, *args, **kwargs):
        raise KeyboardInterrupt

    monkeypatch.setattr(click.Group, "make_context", interrupted)
    res = CliRunner().invoke(main, ["tasks"])
    assert res.exit_code == 130 and res.output == "Error: interrupted; nothing was read or written\n", res.output


@pytest.mark.parametrize("command", ["train", "run"])
@pytest.mark.parametrize(
    "args, message",
    [
        ([], "name exactly one of: a TASK, --data FILE.npz, --csv FILE, --images DIR"),
        (["spambase", "--csv", "{csv}"], "name exactly one of"),
        (["--csv", "{csv}", "--images", "{dir}"], "name exactly one of"),
        (["--csv", "{csv}", "--label-column", "kind"], "--sensitive-class is required with your own data"),
        (["--csv", "{csv}", "--sensitive-class", "spam"], "--label-column is required with --csv"),
    ],
)
def test_the_task_source_is_one_and_complete_or_one_line(tmp_path, command, args, message):
    """Which data a run trains on: exactly one source, and a user file with its sensitive class (and a CSV with
    its label column), else one usage line, exit 2, and no --out folder (no test reached these before)."""
    (tmp_path / "mail.csv").write_text("a,b,kind\n1,2,spam\n3,4,ham\n")
    (tmp_path / "imgs").mkdir()
    filled = [a.format(csv=tmp_path / "mail.csv", dir=tmp_path / "imgs") for a in args]
    out = tmp_path / "out"
    res = CliRunner().invoke(main, [command, *filled, "--out", str(out), "--quiet"])
    assert message in _refused(res)
    assert not out.exists()


@pytest.mark.parametrize("command", ["train", "run"])
def test_an_out_folder_that_cannot_be_made_is_one_line_exit_4_and_leaves_nothing(tmp_path, command):
    """--out below a regular file: the run folder cannot be created (NotADirectoryError), one WriteError line,
    exit 4 (EXIT_IO), the file untouched and nothing else made (no test reached this refusal before)."""
    rows = "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(40))
    (tmp_path / "d.csv").write_text("a,b,kind\n" + rows)
    (tmp_path / "afile").write_text("mine\n")
    args = [command, "--csv", str(tmp_path / "d.csv"), "--label-column", "kind", "--sensitive-class", "1"]
    res = CliRunner().invoke(main, [*args, "--out", str(tmp_path / "afile" / "sub"), "--epochs", "1", "--quiet"])
    line = _refused(res, EXIT_IO)
    assert "WriteError: cannot create the run folder" in line and "Not a directory" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["afile", "d.csv"]
    assert (tmp_path / "afile").read_text() == "mine\n"


@pytest.mark.parametrize("command", ["train", "run"])
def test_a_named_augmentation_on_feature_vectors_is_one_line_exit_2_and_writes_nothing(tmp_path, command):
    """--set augment=flip crops and flips images; on a CSV's feature vectors it was a traceback from the
    first batch (shapes cannot be multiplied), exit 1, with run.json written (README walkthrough, session 32)."""
    rows = "".join(f"{i % 7},{(i * 3) % 5},{i % 2}\n" for i in range(40))
    (tmp_path / "d.csv").write_text("a,b,kind\n" + rows)
    args = [command, "--csv", str(tmp_path / "d.csv"), "--label-column", "kind", "--sensitive-class", "1"]
    res = CliRunner().invoke(
        main, [*args, "--out", str(tmp_path / "r"), "--epochs", "1", "--quiet", "--set", "augment=flip"]
    )
    line = _refused(res)
    assert "ConfigError: training setting augment='flip' crops and flips images" in line and "shape (2,)" in line
    assert sorted(p.name for p in tmp_path.iterdir()) == ["d.csv"]


def test_a_ctrl_c_after_the_command_finished_prints_no_traceback():
    """A SIGINT during the interpreter's teardown, once the command's work and exit code are done, landed in an
    exit handler and printed a traceback after exit 0 (session 33 traffic review: Ctrl-C just after `certify
    --input` committed its results). An exit handler here sends it at exactly that time."""
    script = (
        "import atexit, os, signal, sys, time\n"
        "atexit.register(lambda: (os.kill(os.getpid(), signal.SIGINT), time.sleep(0.2)))\n"
        "sys.argv = ['asymcert', 'tasks']\n"
        "import _asymcert_launch\n"
        "_asymcert_launch.main()\n"
    )
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, timeout=120)
    assert done.returncode == 0 and "spambase" in done.stdout, done.stderr
    assert "Traceback" not in done.stderr and "KeyboardInterrupt" not in done.stderr, done.stderr


def test_entry_in_a_callers_process_leaves_its_sigint_handler(monkeypatch):
    """entry() run in-process (a test, a notebook) keeps the caller's Ctrl-C: only the interpreter's teardown
    ignores it (a first version set SIG_IGN at once, and every later subprocess of the test run inherited it)."""
    before = signal.getsignal(signal.SIGINT)
    monkeypatch.setattr(sys, "argv", ["asymcert", "tasks"])
    with pytest.raises(SystemExit):
        entry()
    assert signal.getsignal(signal.SIGINT) is before


def test_a_received_folder_with_special_files_or_a_huge_description_is_reported_quickly(tiny_run, tmp_path):
    """Review s34 ckpt F1, F2, F5: history.json a symlink to /dev/zero filled memory (MemoryError traceback),
    certify.json a FIFO hung `report` for ever, and a 1 MB task description took a gigabyte in the plot's title."""
    run = _copy(tiny_run, tmp_path)
    (run / "history.json").unlink()
    (run / "history.json").symlink_to("/dev/zero")
    (run / "certify.json").unlink()
    os.mkfifo(run / "certify.json")
    record = json.loads((run / "run.json").read_text())
    record["task_description"] = "spam " * 200_000
    (run / "run.json").write_text(json.dumps(record))
    res = subprocess.run(
        [sys.executable, "-m", "asymcert", "report", str(run)], capture_output=True, text=True, timeout=300
    )
    assert res.returncode == 0 and "Traceback" not in res.stderr, res.stderr
    assert (run / "report.md").is_file() and "mode not recorded" in (run / "report.md").read_text().lower()
