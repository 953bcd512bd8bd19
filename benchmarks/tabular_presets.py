"""The presets for your own feature vectors, measured as a user meets them: a CSV and a threat model.

    python benchmarks/tabular_presets.py [--out runs/presets] [--seeds 0,1,2] [--jobs 2]

Writes SpamBase as a user's files: ``mail.csv`` (the fixed split's 2759 training + 921 validation
emails, 57 named columns and a ``kind`` column, spam / ham) and ``today.csv`` (its 921 test emails,
which no run sees), and ``tm.json`` (the README's example threat model). Then, per configuration and
seed, what ``asymcert run --csv mail.csv --label-column kind --sensitive-class spam --threat-model
tm.json --set seed=S [ARGS]`` trains (the CSV route splits mail.csv 60/20/20 itself), and certifies
today.csv under the run's threat model as ``asymcert certify RUN --input today.csv`` would. Prints a
markdown row per configuration: accuracy on today.csv (mean ± sd over seeds, min) and the share of its
spam flagged and certified at ℓ1 radius 0.5 / 1 / 2 of the threat model's units (mean, min). Run folders
are kept in ``--out``; a finished one is reused.
"""

from __future__ import annotations

import argparse
import csv
import json
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path

import torch
from common import int_list, positive_int  # benchmarks/common.py
from seed_table import sensitive_certified  # benchmarks/seed_table.py

import asymcert
from asymcert.data.spambase import load_spambase
from asymcert.data.tasks import Dataset
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_finished, train_run
from asymcert.runfolder import read_run_record, run_threat_model
from asymcert.threat import load_threat_model
from asymcert.traffic import csv_batches

RADII = (0.5, 1.0, 2.0)
MARGIN = {"margin_radius": 0.5, "margin_norm": 1}  # SpamBase's certified-margin loss
CONFIGS: dict[str, tuple[str | None, dict]] = {
    "default (no preset)": (None, {}),
    "--preset hinges": ("hinges", {}),
    "--preset log1p-hinges": ("log1p-hinges", {}),
    "--preset hinges --set margin_radius=0.5 --set margin_norm=1": ("hinges", MARGIN),
    "--preset log1p-hinges --set margin_radius=0.5 --set margin_norm=1": ("log1p-hinges", MARGIN),
}
THREAT_MODEL = {
    "scale": {"capitalTotal": 100, "capitalAve": "std", "*": 1.0},
    "immutable": ["capitalLong"],
    "increase_only": ["george", "hp"],
    "lower": {"*": 0.0},
    "upper": {"george": 100.0, "hp": 100.0},
    "norms": [1, 2, "inf"],
}


def write_csv(path: Path, names: list[str], data: Dataset, labels: bool) -> None:
    """One row per input, the features as ``%g`` text, then ``kind`` (spam / ham) when ``labels``."""
    with path.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(names + (["kind"] if labels else []))
        for x, y in zip(data.x.tolist(), data.y.tolist(), strict=True):
            writer.writerow([f"{v:g}" for v in x] + (["spam" if y == 1 else "ham"] if labels else []))


def write_files(out: Path) -> None:
    """mail.csv, today.csv and tm.json in ``out``."""
    fixed = load_spambase(None)
    names = list(fixed.meta["feature_names"])
    out.mkdir(parents=True, exist_ok=True)
    write_csv(out / "mail.csv", names, Dataset.join(fixed.train, fixed.val), labels=True)
    write_csv(out / "today.csv", names, fixed.test, labels=False)
    (out / "tm.json").write_text(json.dumps(THREAT_MODEL, indent=1))


def measure(job: tuple[str, int, str]) -> tuple[str, float, list[float]]:
    """Train (or reuse) one run and return (configuration, accuracy % on today.csv, certified % at RADII)."""
    torch.set_num_threads(1)
    name, seed, folder = job
    out, run = Path(folder).parent.parent, Path(folder)
    preset, overrides = CONFIGS[name]
    if not run_finished(run):
        spec = {"csv": str(out / "mail.csv"), "label_column": "kind", "sensitive_class": "spam"}
        train_run(spec, run, preset, {**overrides, "seed": seed}, None, progress=False, log=lambda m: None,
                  threat_model=load_threat_model(out / "tm.json"))  # fmt: skip
    model = asymcert.load(run, device="cpu").eval()
    record = read_run_record(run)
    x = torch.cat(
        [b.x for b in csv_batches(out / "today.csv", record.feature_names or [], None, 1000)]
    )  # as certify --input
    y = load_spambase(None).test.y
    cert = asymcert.certify(model, x, norms=(1.0,), threat_model=run_threat_model(record))
    shares = sensitive_certified(cert.predicted, cert.radii[1.0], y, list(RADII))
    return name, 100.0 * float((cert.predicted == y).float().mean()), [100.0 * s for s in shares]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", default="runs/presets")
    ap.add_argument("--seeds", type=int_list, default=[0, 1, 2], help="training seeds, comma-separated")
    ap.add_argument("--jobs", type=positive_int, default=2, help="processes at a time")
    args = ap.parse_args()
    out = Path(args.out)
    todo = [(name, s, str(out / "runs" / f"c{i}_s{s}")) for i, name in enumerate(CONFIGS) for s in args.seeds]
    try:
        write_files(out)
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            results = list(pool.map(measure, todo))
    except AsymcertError as exc:
        sys.exit(f"tabular_presets: {exc}")
    print("| configuration | today.csv accuracy %, mean ± sd (min) | cert. ℓ1 r = 0.5 / 1 / 2, % mean (min) |")
    print("|---|---|---|")
    for name in CONFIGS:
        acc = [a for n, a, _ in results if n == name]
        cert = [c for n, _, c in results if n == name]
        cells = " / ".join(
            f"{statistics.mean(c[i] for c in cert):.1f} ({min(c[i] for c in cert):.1f})" for i in range(3)
        )
        sd = statistics.stdev(acc) if len(acc) > 1 else 0.0
        print(f"| `{name}` | {statistics.mean(acc):.2f} ± {sd:.2f} ({min(acc):.2f}) | {cells} |")


if __name__ == "__main__":
    main()
