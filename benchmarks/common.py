"""What every benchmark shares: the machine description written next to its numbers, a best-of timer
and the results writer."""

from __future__ import annotations

import json
import math
import os
import platform
import time
from pathlib import Path
from typing import Any, Callable

import torch

RESULTS = Path(__file__).parent / "results"


def machine() -> dict:
    """CPU model, logical cores, torch threads, versions, device and the current load average."""
    cpu = "?"
    try:
        cpu = next((line.split(":", 1)[1].strip() for line in open("/proc/cpuinfo")
                    if line.startswith("model name")), "?")
    except OSError:
        pass
    return {"cpu": cpu, "cores": os.cpu_count(), "threads": torch.get_num_threads(), "torch": torch.__version__,
            "python": platform.python_version(), "load_average": [round(v, 2) for v in os.getloadavg()],
            "device": "cuda" if torch.cuda.is_available() else "cpu"}


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
