"""The ``asymcert`` command's entry point, kept outside the ``asymcert`` package so that it runs before it.

Importing ``asymcert`` takes one to two seconds (PyTorch, SciPy). A Ctrl-C in that time used to print a
traceback of the import machinery (audit 29a F6): no handler of asymcert's was installed yet, and nothing inside
the package can catch an interrupt of its own import. Nor is catching it enough: an interrupt that lands inside a
third-party import can leave that library half-initialised (NumPy then recursed until a ``RecursionError``) or
abort the process from C++. So this module, which imports nothing heavy, holds SIGINT back while the command line
loads, then answers a Ctrl-C that came in the meantime with the command line's one-line message and exit code
130. Nothing has been read or written at that point. (``python -m asymcert`` imports the package first and
cannot be covered this way.)
"""

from __future__ import annotations

import importlib
import signal
import sys
import threading
from types import FrameType

INTERRUPTED = 130
"""Exit code of an interrupted command, as ``asymcert.cli.EXIT_INTERRUPTED``."""

MESSAGE = "Error: interrupted while asymcert was starting; nothing was read or written"


def main() -> None:
    """Import :mod:`asymcert.cli` with SIGINT held back, then run its :func:`~asymcert.cli.entry`.

    A SIGINT that the caller ignores (``SIG_IGN``, as for background jobs of a non-interactive shell) stays
    ignored; outside the main thread nothing is held (review 30: ``signal.signal`` refused there)."""
    received: list[int] = []

    def hold(signum: int, frame: FrameType | None) -> None:
        received.append(signum)

    previous = signal.getsignal(signal.SIGINT)
    # (only the main thread may set a handler, and only there does Ctrl-C arrive: elsewhere, as before, no hold)
    holding = previous is not signal.SIG_IGN and threading.current_thread() is threading.main_thread()
    if holding:
        signal.signal(signal.SIGINT, hold)
    try:
        cli = importlib.import_module("asymcert.cli")
    finally:
        if holding:
            signal.signal(signal.SIGINT, previous)
    if received:
        print(MESSAGE, file=sys.stderr, flush=True)
        raise SystemExit(INTERRUPTED)
    cli.entry()
