"""The machine a measurement was taken on: every report that states a time also states this."""

from __future__ import annotations

import os
import platform
from dataclasses import dataclass
from typing import Any

import torch


@dataclass(frozen=True)
class Machine:
    """The machine, and its load, when a measurement was taken (:meth:`current`).

    Attributes:
        cpu: the CPU model (``/proc/cpuinfo``'s model name, else the platform's processor or machine name).
        cores: logical cores (``os.cpu_count()``; None when not known).
        torch_threads: torch's intra-op threads.
        torch, python: their versions.
        device: ``"cuda"`` when a GPU is available, else ``"cpu"``.
        load_average: the load average over 1, 5 and 15 minutes, rounded to 0.01 (None where the platform has none).
    """

    cpu: str
    cores: int | None
    torch_threads: int
    torch: str
    python: str
    device: str
    load_average: tuple[float, ...] | None

    @classmethod
    def current(cls) -> Machine:
        """This machine, now."""
        cpu = platform.processor() or platform.machine()
        try:
            with open("/proc/cpuinfo") as f:
                cpu = next((line.split(":", 1)[1].strip() for line in f if line.startswith("model name")), cpu)
        except OSError:  # not Linux
            pass
        try:
            load: tuple[float, ...] | None = tuple(round(v, 2) for v in os.getloadavg())
        except OSError:  # pragma: no cover - not on every platform
            load = None
        return cls(
            cpu=cpu,
            cores=os.cpu_count(),
            torch_threads=torch.get_num_threads(),
            torch=torch.__version__,
            python=platform.python_version(),
            device="cuda" if torch.cuda.is_available() else "cpu",
            load_average=load,
        )

    def to_dict(self) -> dict[str, Any]:
        """``{"cpu", "cores", "torch_threads", "torch", "python", "device", "load_average"}`` (a list, or None)."""
        return {
            "cpu": self.cpu,
            "cores": self.cores,
            "torch_threads": self.torch_threads,
            "torch": self.torch,
            "python": self.python,
            "device": self.device,
            "load_average": None if self.load_average is None else list(self.load_average),
        }


def describe_machine() -> dict[str, Any]:
    """CPU model, logical cores, torch threads, versions, the device and the load average (1, 5, 15 min): the JSON
    object of :meth:`Machine.current`."""
    return Machine.current().to_dict()
