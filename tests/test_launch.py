"""The ``asymcert`` command's entry point (``_asymcert_launch``): a Ctrl-C while the package loads is one line."""

from __future__ import annotations

import signal
import subprocess
import sys
import threading
import time
import types
from pathlib import Path

import pytest

import _asymcert_launch

LINE = "Error: interrupted while asymcert was starting; nothing was read or written\n"


def test_an_interrupt_during_the_import_is_held_then_one_line_and_exit_130(monkeypatch, capsys):
    imported = []

    def interrupted(name: str) -> object:
        signal.raise_signal(signal.SIGINT)  # (no KeyboardInterrupt here: the import goes on to its end)
        imported.append(name)
        return object()

    monkeypatch.setattr(_asymcert_launch.importlib, "import_module", interrupted)
    with pytest.raises(SystemExit) as stopped:
        _asymcert_launch.main()
    assert (stopped.value.code, imported) == (130, ["asymcert.cli"])
    assert capsys.readouterr().err == LINE
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler


def test_an_ignored_sigint_stays_ignored(monkeypatch):
    monkeypatch.setattr(_asymcert_launch.importlib, "import_module", lambda name: signal.getsignal(signal.SIGINT))
    previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        with pytest.raises(AttributeError):  # (the fake module has no entry(); what matters is the handler)
            _asymcert_launch.main()
        assert signal.getsignal(signal.SIGINT) is signal.SIG_IGN
    finally:
        signal.signal(signal.SIGINT, previous)


def test_it_runs_the_command_line(monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", ["asymcert", "--version"])
    with pytest.raises(SystemExit) as done:
        _asymcert_launch.main()
    assert done.value.code == 0
    out = capsys.readouterr().out
    assert out.endswith(", version 0.1.0\n"), out  # (click names the program after sys.argv[0])


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
@pytest.mark.parametrize("delay", [0.3, 0.6])
def test_ctrl_c_at_start_prints_no_traceback(delay):
    """A real SIGINT while PyTorch, NumPy and SciPy are still being imported (1-2 s here). Before the launcher
    held it back, it printed a traceback; landing inside NumPy's import it ended in a RecursionError (exit 1)."""
    launch = "import _asymcert_launch; _asymcert_launch.main()"
    process = subprocess.Popen(
        [sys.executable, "-c", launch, "tasks"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True
    )
    time.sleep(delay)
    process.send_signal(signal.SIGINT)
    out, err = process.communicate(timeout=60)
    assert (process.returncode, out, err) == (130, "", LINE)


def test_the_command_is_the_launcher():
    """pyproject.toml's ``asymcert`` script is this entry point (the package's own would start too late)."""
    tomllib = pytest.importorskip("tomllib")  # (Python 3.11+)
    pyproject = tomllib.loads((Path(__file__).resolve().parents[1] / "pyproject.toml").read_text(encoding="utf-8"))
    assert pyproject["project"]["scripts"] == {"asymcert": "_asymcert_launch:main"}


def test_it_runs_outside_the_main_thread(monkeypatch):
    """signal.signal works only in the main thread: the launcher raised ValueError in any other (review 30)."""
    ran, errors = [], []
    monkeypatch.setattr(
        _asymcert_launch.importlib, "import_module", lambda name: types.SimpleNamespace(entry=lambda: ran.append(name))
    )

    def launch() -> None:
        try:
            _asymcert_launch.main()
        except BaseException as exc:  # (the assertion below shows it)
            errors.append(exc)

    worker = threading.Thread(target=launch)
    worker.start()
    worker.join(30)
    assert (ran, errors) == (["asymcert.cli"], [])
