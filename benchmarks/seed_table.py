"""A markdown table over seeds: run folders grouped by name, clean and certified accuracy as mean ± sd.

    python benchmarks/seed_table.py RUN [RUN ...] [--radii 0.5,1,2] [--norm l1]

Folders named ``NAME_sS`` or ``NAME-sS`` (S = the seed) are grouped under NAME, in the order first
seen. Per group, one row: the seeds, validation and test accuracy (mean ± sample sd, min over seeds;
from the saved model on the run's own splits, :mod:`split_accuracy`), and the certified accuracy at
``--radii`` of ``--norm`` and its median radius from each run's ``results.json`` (means over seeds,
per-seed minimum in parentheses), in the units the run certified in; last, the same certified
accuracy on the validation split (mean over seeds; certified here under the run's threat model), for
choosing between configurations without the test split. A missing or unreadable folder: one line and
exit 1.
"""

from __future__ import annotations

import argparse
import json
import math
import re
import statistics
import sys
from dataclasses import dataclass
from pathlib import Path

import torch
from split_accuracy import split_accuracy  # benchmarks/split_accuracy.py

import asymcert
from asymcert.data.tasks import Dataset
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model


@dataclass(frozen=True)
class RunFigures:
    """One run's figures: accuracies in percent, certified accuracy per radius in percent, median radius."""

    val: float
    test: float
    certified: dict[str, float]
    median: float
    val_certified: dict[str, float]


def group_name(run: str) -> tuple[str, str]:
    """``runs/x/h4_s2`` → (``h4``, ``2``); a folder without a seed suffix is its own group, seed ``?``."""
    name = Path(run).name
    match = re.fullmatch(r"(.*?)[_-]s(\d+)", name)
    return (match.group(1), match.group(2)) if match else (name, "?")


def figures(run: str, norm: str, radii: list[str]) -> RunFigures:
    """Validation/test accuracy of the saved model and the certified figures of ``results.json``."""
    model = asymcert.load(run, device="cpu").eval()
    data = run_data(run)
    results = json.loads((Path(run) / "results.json").read_text())
    table = results["certified_accuracy"][norm]
    missing = [r for r in radii if r not in table]
    if missing:
        raise KeyError(f"radii {missing} not in results.json (has {sorted(table)})")
    return RunFigures(
        val=split_accuracy(model, data.val),
        test=split_accuracy(model, data.test),
        certified={r: 100.0 * table[r] for r in radii},
        median=float(results["median_radius"][norm]),
        val_certified=validation_certified(run, model, data.val, norm, radii),
    )


def validation_certified(
    run: str, model: torch.nn.Module, val: Dataset, norm: str, radii: list[str]
) -> dict[str, float]:
    """Percent of the validation split's sensitive inputs flagged and certified at each radius (the
    run's own threat model, if it has one), as results.json counts the test split's."""
    p = {"l1": 1.0, "l2": 2.0, "linf": math.inf}[norm]
    cert = asymcert.certify(model, val.x, norms=(p,), threat_model=run_threat_model(read_run_record(run)))
    shares = sensitive_certified(cert.predicted, cert.radii[p], val.y, [float(r) for r in radii])
    return {r: 100.0 * share for r, share in zip(radii, shares)}


def sensitive_certified(
    predicted: torch.Tensor, radius: torch.Tensor, y: torch.Tensor, radii: list[float]
) -> list[float]:
    """Share of the inputs of the sensitive class (y == 1) predicted as such with radius ≥ r, per r in ``radii``
    (predicted, radius, y: (N,)); 0 for every r when there is none."""
    correct = (predicted == y) & (y == 1)
    n = max(1, int((y == 1).sum()))
    return [float(((radius >= r) & correct).sum()) / n for r in radii]


def _mean_sd_min(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f} ({min(values):.2f})"


def row(name: str, seeds: list[str], runs: list[RunFigures], radii: list[str]) -> str:
    """One markdown row for a group of runs."""
    cells = [
        name,
        ", ".join(seeds),
        _mean_sd_min([r.val for r in runs]),
        _mean_sd_min([r.test for r in runs]),
        *[
            f"{statistics.mean(r.certified[t] for r in runs):.1f} ({min(r.certified[t] for r in runs):.1f})"
            for t in radii
        ],
        f"{statistics.mean(r.median for r in runs):.3f}",
        " / ".join(f"{statistics.mean(r.val_certified[t] for r in runs):.1f}" for t in radii),
    ]
    return "| " + " | ".join(cells) + " |"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders, NAME_sS")
    ap.add_argument("--norm", default="l1", help="l1, l2 or linf (default l1)")
    ap.add_argument("--radii", default="0.5,1,2", help="radii as written in results.json (default 0.5,1,2)")
    args = ap.parse_args()
    radii = [r.strip() for r in args.radii.split(",") if r.strip()]
    groups: dict[str, list[tuple[str, RunFigures]]] = {}
    for run in args.runs:
        name, seed = group_name(run)
        try:
            groups.setdefault(name, []).append((seed, figures(run, args.norm, radii)))
        except (AsymcertError, OSError, KeyError, ValueError) as exc:
            sys.exit(f"{run}: {exc}")
    header = ["group", "seeds", "val % mean ± sd (min)", "test % mean ± sd (min)"]
    header += [f"cert. {args.norm} r = {r}, % (min)" for r in radii] + [f"median {args.norm} radius"]
    header += [f"val cert. {args.norm} r = {' / '.join(radii)}, %"]
    print("| " + " | ".join(header) + " |")
    print("|" + "---|" * len(header))
    for name, members in groups.items():
        print(row(name, [s for s, _ in members], [f for _, f in members], radii))


if __name__ == "__main__":
    main()
