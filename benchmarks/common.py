"""What every benchmark shares: the machine description written next to its numbers, a best-of timer
and the results writer."""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from asymcert.errors import AsymcertError
from asymcert.report.machine import describe_machine

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """The machine description of :func:`asymcert.report.machine.describe_machine`."""
    return describe_machine()


def best_of(fn: Callable[[], Any], repeats: int = 3) -> float:
    """Best wall-clock seconds of ``repeats`` calls of ``fn`` after one warm-up call."""
    fn()
    best = math.inf
    for _ in range(repeats):
        t0 = time.perf_counter()
        fn()
        best = min(best, time.perf_counter() - t0)
    return best


def write_results(name: str, results: dict) -> Path:
    """Write ``results`` (plus the load average at the end) to ``benchmarks/results/<name>.json``."""
    results = {**results, "load_average_after": [round(v, 2) for v in os.getloadavg()]}
    RESULTS.mkdir(exist_ok=True)
    path = RESULTS / f"{name}.json"
    path.write_text(json.dumps(results, indent=1))
    print(f"wrote {path}")
    return path


def per_run_main(doc: str, default_out: str, figures_of: Callable[[str], dict[str, object]]) -> None:
    """The command line of a per-run benchmark: ``RUN [RUN ...] [--out FILE]``; prints each run's figures as
    one JSON line as soon as it has them, writes the list to ``--out`` (default ``results/<default_out>``).
    A run that cannot be read ends the program with one line naming it (exit 1)."""
    ap = argparse.ArgumentParser(description=doc, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--out", default=str(RESULTS / default_out))
    args = ap.parse_args()
    figures = []
    for run in args.runs:
        try:
            figures.append(figures_of(run))
        except (AsymcertError, OSError) as exc:
            raise SystemExit(f"{run}: {exc}") from None
        print(json.dumps(figures[-1]), flush=True)
    Path(args.out).write_text(json.dumps(figures, indent=1) + "\n")


def positive_int(text: str) -> int:
    """An argparse type: an integer ≥ 1 (else argparse's one-line usage error, exit 2)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an integer: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be ≥ 1, got {value}")
    return value


def _comma_list(convert: Callable[[str], Any], what: str, example: str) -> Callable[[str], list[Any]]:
    """An argparse type: comma-separated values of one kind (at least one); else a one-line usage error."""

    def parse(text: str) -> list[Any]:
        try:
            values = [convert(part) for part in text.split(",") if part.strip()]
        except ValueError:
            raise argparse.ArgumentTypeError(f"not comma-separated {what}: {text!r}") from None
        if not values:
            raise argparse.ArgumentTypeError(f"no {what} given")
        return values

    parse.__doc__ = f"An argparse type: comma-separated {what}, e.g. ``{example}`` (at least one)."
    return parse


int_list = _comma_list(int, "integers", "0,1,2")
float_list = _comma_list(float, "numbers", "0.5,1,2")
