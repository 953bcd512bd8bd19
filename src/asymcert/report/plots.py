"""Plots (matplotlib is an optional extra: ``pip install asymcert[plot]``)."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from types import ModuleType

import torch

PLOT_HINT = "plots need matplotlib, which is not installed: pip install 'asymcert[plot]' gives the plots"


def plotting_available() -> bool:
    """True when matplotlib can be imported (it is the optional extra ``asymcert[plot]``)."""
    try:
        _pyplot()
    except ImportError:
        return False
    return True


def _pyplot() -> ModuleType:
    """matplotlib.pyplot on the file-only Agg backend; ImportError naming the extra when it is missing."""
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError as exc:
        raise ImportError(PLOT_HINT) from exc
    return plt


def plot_certified_curves(
    curves: Sequence[tuple[str, torch.Tensor, torch.Tensor]],
    norm_name: str,
    path: Path,
    title: str = "",
    units: str = "raw input units",
) -> Path:
    """One PNG: certified accuracy (y, %) against radius (x, in ``units``) for each labelled curve.

    Args:
        curves: (label, radii (R,), certified accuracy (R,) in [0, 1]) per method.
    """
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    for label, radii, acc in curves:
        ax.plot(radii.numpy(), 100 * acc.numpy(), label=label, linewidth=1.8)
    ax.set_xlabel(f"{norm_name} radius ({units})")
    ax.set_ylabel("certified accuracy (%)")
    ax.set_ylim(0, 100)
    ax.set_xlim(left=0)
    ax.grid(alpha=0.3)
    ax.set_title(title or f"Certified accuracy, {norm_name}")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_runtimes(times: Sequence[tuple[str, float]], path: Path, title: str = "Certification time per input") -> Path:
    """A horizontal bar chart of seconds per input with a log axis."""
    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 0.5 + 0.45 * len(times)), dpi=120)
    labels = [t[0] for t in times]
    ax.barh(labels, [max(t[1], 1e-9) for t in times])
    ax.set_xscale("log")
    ax.set_xlabel("seconds per input (log scale)")
    ax.set_title(title)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
