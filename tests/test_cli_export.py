"""`asymcert export`: refusals are one line with exit 2 and write nothing; an --out another export holds is exit 3.

Promises checked through the command line, for ONNX and VNN-LIB:

- a refused export (an option of the other format, an ONNX --out without the .onnx suffix, bad --norms (a norm
  given twice or an empty entry included), a missing
  threat-model file, VNN-LIB from a folder without run.json, a
  randomized-smoothing model) exits 2 with one line, no traceback, and leaves no file or folder
  (not --out, nor a lock or temporary file beside it);
- an export to an --out whose writer lock another process holds exits 3 in one line, and the earlier file is
  unchanged.
"""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
import torch
from click.testing import CliRunner

from asymcert.checkpoint import save
from asymcert.cli import EXIT_BUSY, EXIT_OK, EXIT_REFUSED, main
from asymcert.export import export_run
from asymcert.models import build_model
from tests.conftest import small_feature_convex
from tests.test_runfolder import OTHER_ENV_WRITER
from tests.test_traffic import HOLD_RUN

pytest.importorskip("onnx")


@pytest.fixture(scope="module")
def run(tmp_path_factory):
    """A folder with a saved small feature-convex model (what `export` reads)."""
    folder = tmp_path_factory.mktemp("export") / "run"
    folder.mkdir()
    save(small_feature_convex("icnn", seed=0), folder)
    return folder


@pytest.fixture(scope="module")
def smoothing_run(tmp_path_factory):
    folder = tmp_path_factory.mktemp("export") / "smooth"
    folder.mkdir()
    torch.manual_seed(0)
    save(build_model({"kind": "relu-smoothing", "input_shape": [1, 4, 4], "widths": [8]}), folder)
    return folder


REFUSALS = {
    "onnx-with-limit": (["--format", "onnx", "--limit", "5"], "m.onnx", "--limit does not apply to --format onnx"),
    "vnnlib-with-norms": (["--format", "vnnlib", "--norms", "2"], "bench", "--norms does not apply to --format vnnlib"),
    "onnx-wrong-suffix": (["--format", "onnx"], "m.txt", "give --out that suffix"),
    "bad-norms": (["--format", "onnx", "--norms", "2,x"], "m.onnx", "'x' is not an ℓp norm"),
    # accepted before, and the message listed each output twice (review s33, finding 6)
    "repeated-norm": (["--norms", "inf,inf"], "m.onnx", "'inf' is given twice (ℓ∞); give each norm once"),
    "same-norm-twice": (["--norms", "2,inf,linf"], "m.onnx", "'inf' and 'linf' name one norm (ℓ∞)"),
    "empty-norm-entry": (["--norms", "1,,2"], "m.onnx", "'1,,2' has an empty entry"),
    "vnnlib-without-run-json": (["--format", "vnnlib"], "bench", "is not a run folder (no run.json)"),
    "no-threat-model-file": (["--format", "onnx", "--threat-model", "missing.json"], "m.onnx", "' does not exist"),
}


@pytest.mark.parametrize("case", list(REFUSALS))
def test_a_refused_export_is_one_line_exit_2_and_writes_nothing(run, tmp_path, case):
    """Exit 2, one line naming the problem, no traceback, and the output folder as it was (empty)."""
    extra, name, message = REFUSALS[case]
    out = tmp_path / "outdir" / name
    extra = [str(tmp_path / a) if a.endswith(".json") else a for a in extra]
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(out), *extra])
    assert res.exit_code == EXIT_REFUSED, res.output
    assert message in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert not out.exists() and not (tmp_path / "outdir").exists()
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_a_smoothing_model_is_refused_in_one_line(smoothing_run, tmp_path):
    """Randomized smoothing has no certifying graph: exit 2, one line, nothing written."""
    out = tmp_path / "outdir" / "m.onnx"
    res = CliRunner().invoke(main, ["export", str(smoothing_run), "--out", str(out)])
    assert res.exit_code == EXIT_REFUSED, res.output
    assert "smoothing" in res.output and "Traceback" not in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == []


def test_an_onnx_export_to_a_held_file_is_exit_3_and_keeps_the_earlier_file(run, tmp_path):
    """Another process holds the writer lock of --out: exit 3 in one line; the file written before is unchanged."""
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(out)])
    assert res.exit_code == EXIT_OK, res.output
    before = out.read_bytes()
    holder = subprocess.Popen(
        [sys.executable, "-c", OTHER_ENV_WRITER, str(out)], stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = CliRunner().invoke(main, ["export", str(run), "--out", str(out), "--norms", "2"])
        assert res.exit_code == EXIT_BUSY, res.output
        assert "another asymcert process" in res.output and "Traceback" not in res.output, res.output
        assert len(res.output.strip().splitlines()) == 1, res.output
        assert out.read_bytes() == before
    finally:
        holder.stdin.write("\n")
        holder.stdin.flush()
        holder.wait(timeout=60)


def test_the_message_names_each_output_once(run, tmp_path):
    """export_run given a norm twice (the library's to_onnx writes it once) listed radius_linf twice in its message
    (review s33, finding 6): the message names the file's outputs."""
    message = export_run(run, "onnx", tmp_path / "m.onnx", norms=(math.inf, 2.0, math.inf))
    assert "outputs score, flagged, radius_linf, radius_l2 (in " in message and message.count("radius_linf") == 1


def test_exporting_a_run_being_written_warns_as_certify_input_does(run, tmp_path):
    """README review s34 F6: `certify --input` warned about a run another process writes; `export` said nothing."""
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        res = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "m.onnx")])
        assert res.exit_code == EXIT_OK, res.output
        assert "is being written by another asymcert process (still training?)" in res.output
    finally:
        holder.kill()
        holder.wait()
    res = CliRunner().invoke(main, ["export", str(run), "--out", str(tmp_path / "n.onnx")])
    assert res.exit_code == EXIT_OK and "being written" not in res.output, res.output
