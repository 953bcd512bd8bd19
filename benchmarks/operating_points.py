"""SpamBase at the operating points detectors run at: detection and false-positive rates over seeds.

    python benchmarks/operating_points.py RUN [RUN ...] [--radii 0.5,1,2] [--results NAME]

Runs are ``asymcert run spambase [--set false_positive_rate=A [--set false_positive_confidence=C]] --set
seed=S`` folders, grouped by name as :mod:`seed_table` does (``NAME_sS``). Per group, one row: the
operating point the run fitted its threshold b for (run.json), the share of the validation ham it flags,
the test split's false-positive rate (ham flagged) and detection rate (spam flagged), clean accuracy, and
the share of the test spam certified at ``--radii`` of ℓ1 in the threat model's units (``results.json``),
each mean ± sample sd over seeds (min; max for false-positive rates). Below, uncertified references on
the same fixed split at the same operating points, their thresholds fitted on validation by the same rule
(:func:`asymcert.train.balance.operating_shift`; one model each, so a confidence needs no union bound over
epochs): HistGradientBoosting (random_state 0) on raw features and logistic regression (C = 0.3) on log1p +
standardised features, trained on the training split.
Writes ``benchmarks/results/operating_points.json`` (or ``NAME.json``).
"""

from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import numpy as np
import torch
from common import float_list, machine, write_results  # benchmarks/common.py
from seed_table import group_name  # benchmarks/seed_table.py
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

import asymcert
from asymcert.data.spambase import load_spambase
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record
from asymcert.train.balance import detection_rates, operating_shift


def run_figures(run: str, radii: list[float]) -> dict[str, float]:
    """One run's rates in percent: validation and test false positives, detection, clean and certified accuracy."""
    model = asymcert.load(run, device="cpu").eval()
    val = run_data(run).val
    with torch.no_grad():
        _, val_fp = detection_rates(model(val.x), val.y)
    results = json.loads((Path(run) / "results.json").read_text())
    certified = results["certified_accuracy"]["l1"]
    return {
        "val_false_positive": 100 * val_fp,
        "false_positive": 100 * results["false_positive_rate"],
        "detection": 100 * results["sensitive_flagged_correctly"],
        "clean": 100 * results["clean_accuracy"],
        **{f"certified_l1_{r:g}": 100 * certified[f"{r:g}"] for r in radii},
    }


Point = tuple[float | None, float | None]
"""An operating point: (false_positive_rate, false_positive_confidence), (None, None) for equal class accuracies."""


def point_label(point: Point) -> str:
    """How a table names an operating point."""
    rate, confidence = point
    if rate is None:
        return "equal class accuracies"
    return f"≤ {100 * rate:g}% FP" + ("" if confidence is None else f", confidence {confidence:g}")


def references(points: list[Point]) -> dict[str, dict[str, dict[str, float]]]:
    """Uncertified detectors on the fixed split at each operating point: rates in percent, keyed by
    :func:`point_label`."""
    data = load_spambase(None)
    x = {s: getattr(data, s).x.double().numpy() for s in ("train", "val", "test")}
    y = {s: getattr(data, s).y for s in ("train", "val", "test")}
    logs = {s: np.log1p(np.maximum(v, 0.0)) for s, v in x.items()}
    mean, sd = logs["train"].mean(0), logs["train"].std(0) + 1e-12
    lr = LogisticRegression(C=0.3, max_iter=3000).fit((logs["train"] - mean) / sd, y["train"].numpy())
    boost = HistGradientBoostingClassifier(random_state=0).fit(x["train"], y["train"].numpy())
    scorers = {
        "HistGradientBoosting": lambda s: boost.decision_function(x[s]),
        "logistic regression, log1p features": lambda s: lr.decision_function((logs[s] - mean) / sd),
    }
    out: dict[str, dict[str, dict[str, float]]] = {}
    for name, score in scorers.items():
        val_s, test_s = torch.from_numpy(score("val")), torch.from_numpy(score("test"))
        for point in points:
            b = operating_shift(val_s, y["val"], *point)
            detection, false_positive = detection_rates(test_s + b, y["test"])
            _, val_fp = detection_rates(val_s + b, y["val"])
            out.setdefault(name, {})[point_label(point)] = {
                "val_false_positive": 100 * val_fp,
                "false_positive": 100 * false_positive,
                "detection": 100 * detection,
            }
    return out


def _cell(values: list[float], worst: str = "min") -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    edge = min(values) if worst == "min" else max(values)
    return f"{statistics.mean(values):.2f} ± {sd:.2f} ({edge:.2f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("runs", nargs="+")
    parser.add_argument("--radii", type=float_list, default=[0.5, 1.0, 2.0])
    parser.add_argument("--results", default="operating_points", help="results/NAME.json to write")
    args = parser.parse_args()
    groups: dict[str, list[dict[str, float]]] = {}
    points: dict[str, Point] = {}
    for run in args.runs:
        name, _ = group_name(run)
        groups.setdefault(name, []).append(run_figures(run, args.radii))
        train = read_run_record(Path(run)).train
        points[name] = (train.get("false_positive_rate"), train.get("false_positive_confidence"))
    cert_head = " / ".join(f"{r:g}" for r in args.radii)
    print(f"| runs | b fitted for | val. FP % | test FP % (max) | detection % | clean % | cert. ℓ1 {cert_head} |")
    print("|---|---|---|---|---|---|---|")
    for name, rows in groups.items():
        col = {k: [r[k] for r in rows] for k in rows[0]}
        point = point_label(points[name])
        cert = " / ".join(f"{statistics.mean(col[f'certified_l1_{r:g}']):.1f}" for r in args.radii)
        print(
            f"| {name} ({len(rows)} seeds) | {point} | {statistics.mean(col['val_false_positive']):.2f} | "
            f"{_cell(col['false_positive'], 'max')} | {_cell(col['detection'])} | {_cell(col['clean'])} | {cert} |"
        )
    refs = references(sorted(set(points.values()), key=lambda p: (p[0] or -1.0, p[1] or 0.0)))
    print("\n| uncertified reference | b fitted for | val. FP % | test FP % | detection % |\n|---|---|---|---|---|")
    for model_name, per in refs.items():
        for point, row in per.items():
            print(
                f"| {model_name} | {point} | {row['val_false_positive']:.2f} | {row['false_positive']:.2f} | "
                f"{row['detection']:.2f} |"
            )
    labels = {name: point_label(p) for name, p in points.items()}
    write_results(args.results, {"machine": machine(), "runs": groups, "points": labels, "references": refs})


if __name__ == "__main__":
    main()
