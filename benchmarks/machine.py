"""The machine description every benchmark writes next to its numbers."""

from __future__ import annotations

import os
import platform

import torch


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
