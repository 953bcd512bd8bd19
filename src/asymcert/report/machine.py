"""The machine a measurement was taken on: every report that states a time also states this."""

from __future__ import annotations

import os
import platform
from typing import Any

import torch


def describe_machine() -> dict[str, Any]:
    """CPU model, logical cores, torch threads, versions, the device and the load average (1, 5, 15 min)."""
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
    except OSError:  # not Linux
        pass
    try:
        load = [round(v, 2) for v in os.getloadavg()]
    except OSError:  # pragma: no cover - not on every platform
        load = None
    return {
        "cpu": cpu,
        "cores": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "device": "cuda" if torch.cuda.is_available() else "cpu",
        "load_average": load,
    }
