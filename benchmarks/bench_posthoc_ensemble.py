"""Post-hoc convex ensemble: the mean of the g's of independently trained feature-convex runs.

Runs that share one feature map φ (same config and buffers, e.g. the same task's shift x − μ) are
combined into one :class:`~asymcert.models.FeatureConvexClassifier` whose g is a
:class:`~asymcert.nn.convex.ConvexMean` of their g's; the balance shift b is fitted on the validation
split of the first run (never on test inputs), and the ensemble is certified with
:func:`asymcert.certify` (the sound default precision) on the test split, next to every member alone.

    python benchmarks/bench_posthoc_ensemble.py --runs R1 R2 R3 [--name NAME]

Writes benchmarks/results/<NAME>.json (default ``posthoc_ensemble``): clean accuracy and certified
accuracy at the run's report radii for each member and for the ensemble, under the first run's threat
model when it has one (radii in its units), else in raw input units.
"""

from __future__ import annotations

import argparse
import math

import torch
from common import machine, write_results  # benchmarks/common.py

import asymcert
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.nn.convex import ConvexMean
from asymcert.pipeline import run_data
from asymcert.report import certified_accuracy, clean_accuracy
from asymcert.runfolder import read_run_record, run_threat_model
from asymcert.train.balance import fit_balance


def combine(models: list[FeatureConvexClassifier]) -> FeatureConvexClassifier:
    """One classifier s(x) = mean_k g_k(φ(x)) + b (b = 0; fit it afterwards) from runs sharing φ."""
    first = models[0]
    for k, m in enumerate(models[1:], start=1):
        same = m.feature_map.config() == first.feature_map.config() and all(
            torch.equal(a, b) for a, b in zip(m.feature_map.buffers(), first.feature_map.buffers())
        )
        if not same or m.input_shape != first.input_shape:
            raise SystemExit(f"run {k} has another feature map or input shape than run 0; cannot combine")
    mean = ConvexMean([m.convex for m in models])
    return FeatureConvexClassifier(first.feature_map, mean, first.input_shape, first.input_range).eval()


def scores(model: FeatureConvexClassifier, x: torch.Tensor) -> torch.Tensor:
    """(N,) g(φ(x)) without the shift, in float64, batched."""
    with torch.no_grad():
        return torch.cat([model(x[i : i + 1000]) - model.balance for i in range(0, len(x), 1000)])


def evaluate(model: FeatureConvexClassifier, run: str, radii: dict[str, list[float]]) -> dict:
    """Fit b on the run's validation split, certify its test split: clean and certified accuracy (%)."""
    data = run_data(run)
    model.set_balance(fit_balance(scores(model, data.val.x), data.val.y))
    norms = tuple(math.inf if name == "linf" else float(name[1:]) for name in radii)
    cert = asymcert.certify(model, data.test.x, norms=norms, threat_model=run_threat_model(read_run_record(run)))
    row = {"clean": 100 * clean_accuracy(cert, data.test.y)}
    for (name, rs), p in zip(radii.items(), norms):
        acc = certified_accuracy(cert, data.test.y, p, torch.tensor(rs, dtype=torch.float64))
        row[name] = {f"{r:g}": round(100 * float(a), 2) for r, a in zip(rs, acc)}
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--runs", nargs="+", required=True)
    ap.add_argument("--name", default="posthoc_ensemble")
    args = ap.parse_args()
    radii = read_run_record(args.runs[0]).report_radii
    models = [asymcert.load(r).eval() for r in args.runs]
    out: dict = {"machine": machine(), "runs": args.runs, "report_radii": radii, "members": {}}
    for run, model in zip(args.runs, models):
        out["members"][run] = evaluate(model, args.runs[0], radii)
        print(run, out["members"][run])
    out["ensemble"] = evaluate(combine(models), args.runs[0], radii)
    print("ensemble", out["ensemble"])
    write_results(args.name, out)


if __name__ == "__main__":
    main()
