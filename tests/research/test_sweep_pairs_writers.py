"""`sweep pairs` and its --out folder: one sweep per folder, and never a run folder (as `sweep reg` in test_sweeps.py).

Promises checked through the command line:

- a second `sweep pairs` into a folder another process holds is refused with RunFolderBusyError: exit 3, one line,
  before anything is written (the folder holds only the holder's lock file);
- `sweep pairs --out RUN` (a run folder) is refused with exit 2 in one line, and the run's results.json is untouched.
"""

from __future__ import annotations

from click.testing import CliRunner

from asymcert.cli import EXIT_BUSY, EXIT_REFUSED, main
from tests.conftest import folder_held
from tests.research.test_sweeps import pairs_args


def test_a_second_pair_sweep_into_a_held_folder_is_refused_with_exit_3(fashion_dir, tmp_path):
    """Another process holds --out: exit 3 in one line, nothing written next to its lock."""
    busy = tmp_path / "busy"
    with folder_held(busy):
        res = CliRunner().invoke(main, pairs_args(busy, fashion_dir))
        assert res.exit_code == EXIT_BUSY, res.output
        assert len(res.output.strip().splitlines()) == 1 and "Traceback" not in res.output, res.output
        assert sorted(p.name for p in busy.iterdir()) == [".asymcert.lock"]


def test_a_pair_sweep_into_a_run_folder_is_refused_and_leaves_it_alone(fashion_dir, tmp_path):
    """--out RUN: exit 2 in one line naming the run folder; results.json keeps the run's content."""
    run = tmp_path / "run"
    run.mkdir()
    (run / "run.json").write_text('{"task": {}}')
    (run / "results.json").write_text("the run's")
    res = CliRunner().invoke(main, pairs_args(run, fashion_dir))
    assert res.exit_code == EXIT_REFUSED and "is a run folder" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1, res.output
    assert (run / "results.json").read_text() == "the run's"
    assert sorted(p.name for p in run.iterdir()) == ["results.json", "run.json"]
