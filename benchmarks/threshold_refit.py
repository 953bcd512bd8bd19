"""What the decision threshold is worth: saved runs rescored with thresholds refitted on their training split.

    python benchmarks/threshold_refit.py RUN [RUN ...]

No retraining. Per run folder: the raw scores g(φ(x)) of the train, validation and test splits; the
threshold refitted on the *training* split two ways, equal class accuracies
(:func:`asymcert.train.balance.fit_balance`, the rule the recipe applies on validation) and highest
accuracy; the validation and test accuracy of each; and, at the run's own shift b, the ham flagged and
the spam missed on validation and test. Folders named ``NAME_sS`` are grouped under NAME (means over
seeds). A missing or unreadable folder: one line and exit 1.
"""

from __future__ import annotations

import argparse
import statistics
import sys

import torch
from seed_table import group_name  # benchmarks/seed_table.py

import asymcert
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_data
from asymcert.train.balance import fit_balance


def accuracy_shift(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """The shift b maximising the accuracy of ``scores + b > 0`` (N,), midway between neighbouring scores;
    among equally good thresholds, the middle one."""
    s, order = torch.sort(scores.double())
    y = labels[order].bool()
    negatives_below = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum((~y).long(), 0)])
    positives_above = int(y.sum()) - torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(y.long(), 0)])
    correct = negatives_below + positives_above
    best = torch.nonzero(correct == correct.max()).flatten().tolist()
    k = best[len(best) // 2]
    lo = s[k - 1] if k > 0 else s[0] - 1.0
    hi = s[k] if k < len(s) else s[-1] + 1.0
    return -float(0.5 * (lo + hi))


def percent(scores: torch.Tensor, labels: torch.Tensor, shift: float) -> float:
    """Accuracy in percent of ``scores + shift > 0``."""
    return 100.0 * float(((scores + shift > 0).long() == labels).double().mean())


def run_figures(run: str) -> tuple[list[float], list[int]]:
    """([val, test] at the balanced shift, [val, test] at the accuracy shift), [ham flagged, spam missed] on
    validation then test at the run's own shift."""
    model = asymcert.load(run, device="cpu").eval()
    data = run_data(run)
    b = float(model.balance)
    with torch.no_grad():
        raw = {name: model(getattr(data, name).x).flatten().double() - b for name in ("train", "val", "test")}
    shifts = (fit_balance(raw["train"], data.train.y), accuracy_shift(raw["train"], data.train.y))
    accs = [percent(raw[name], getattr(data, name).y, t) for t in shifts for name in ("val", "test")]
    errors = []
    for name in ("val", "test"):
        y, flagged = getattr(data, name).y.bool(), raw[name] + b > 0
        errors += [int((flagged & ~y).sum()), int((~flagged & y).sum())]
    return accs, errors


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    args = ap.parse_args()
    groups: dict[str, list[tuple[list[float], list[int]]]] = {}
    for run in args.runs:
        try:
            groups.setdefault(group_name(run)[0], []).append(run_figures(run))
        except (AsymcertError, OSError) as exc:
            sys.exit(f"{run}: {exc}")
    print("| runs | balanced: val / test % | highest accuracy: val / test % | own b: ham flagged / spam missed |")
    print("|---|---|---|---|")
    for name, figures in groups.items():
        mean = [statistics.mean(f[0][i] for f in figures) for i in range(4)]
        errors = [" / ".join(str(f[1][i]) for f in figures) for i in range(4)]
        print(
            f"| {name} ({len(figures)}) | {mean[0]:.2f} / {mean[1]:.2f} | {mean[2]:.2f} / {mean[3]:.2f} | "
            f"{errors[0]}, {errors[1]}; {errors[2]}, {errors[3]} |"
        )


if __name__ == "__main__":
    main()
