"""SpamBase accuracy beyond one split: cross-validated selection and accuracy over five test folds.

    python benchmarks/spambase_cv.py inner --grid benchmarks/spambase_cv_grid.json --seeds 0,1 --jobs 2
    python benchmarks/spambase_cv.py outer --grid benchmarks/spambase_cv_grid.json --configs default --seeds 0

Both split the emails into stratified folds (:func:`stratified_folds`, seed 0) and train each
configuration of ``--grid`` (a JSON object: name → {"train": training settings, "model": model
settings}, as ``--set`` / ``--model-set`` would give them) with ``asymcert``'s own SpamBase task, its
default threat model and pipeline, one thread per process, ``--jobs`` processes at a time. Run folders
go to ``--out/MODE/NAME_fF_sS``; a finished one is reused.

``inner`` never reads the fixed test split: it cuts the fixed split's training and validation emails
(2759 + 921) into 4 folds; each fold in turn is the validation split (919–921 emails) and the other three
train (2759–2761), the sizes of the real run. Per configuration: validation accuracy of the saved model and
the share of the validation spam certified at ℓ1 radius 0.5 / 1 / 2 of the threat model's units, means
over folds and seeds. **Selection rule** (declared before any of these runs was made): let B be the
configuration with the highest mean accuracy and SE the standard error of its 4 per-fold accuracies
(each the mean over seeds); among the configurations whose mean accuracy is at least B's − SE, pick the
one certifying the most validation spam at ℓ1 r = 1 (the one-standard-error rule: accuracy differences
inside the noise are not allowed to buy away certified accuracy). Session 15 applies the same rule, again
declared before its runs (this paragraph and the grid were committed first), to
``spambase_cv_pairs.json``: the default against φ = log1p → standardize → pair-min → hinges (2 or 4 knots),
the pair interactions an additive model lacks, seeds 0,1.

``outer`` estimates how much the fixed test split matters: all 4601 emails in 5 folds; for fold k the
test split is fold k, validation fold k + 1 (mod 5), training the other three (60 / 20 / 20, like the
fixed split). Per configuration and fold: test accuracy and certified share of the test spam; and, on
the same folds, uncertified references (scikit-learn): logistic regression on log1p + standardised
features, L2 strength chosen on validation, and HistGradientBoosting (random_state 0) on raw features,
both trained on the training folds only.

Writes ``benchmarks/results/spambase_cv_MODE.json`` (or ``--results NAME``) and prints a markdown table.
"""

from __future__ import annotations

import argparse
import json
import math
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict, dataclass
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from common import int_list, machine, positive_int, write_results  # benchmarks/common.py
from seed_table import sensitive_certified  # benchmarks/seed_table.py
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression
from split_accuracy import split_accuracy  # benchmarks/split_accuracy.py

import asymcert
from asymcert.data.spambase import load_spambase
from asymcert.data.tasks import Dataset, TaskData, feature_stats
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_finished, train_run
from asymcert.runfolder import read_run_record, run_threat_model

RADII = (0.5, 1.0, 2.0)  # ℓ1 radii of the threat model's units, as the README's SpamBase table
FOLD_SEED = 0
INNER_FOLDS, OUTER_FOLDS = 4, 5


@dataclass(frozen=True)
class Job:
    """One training run: a configuration on one fold with one training seed."""

    mode: str  # "inner" or "outer"
    name: str
    train: dict
    model: dict
    fold: int
    seed: int
    out: str


@dataclass(frozen=True)
class Outcome:
    """A run's figures on its evaluation split (inner: the validation fold; outer: the test fold), in percent."""

    name: str
    fold: int
    seed: int
    accuracy: float
    certified: tuple[float, ...]  # share of the split's spam flagged and certified at each of RADII
    val_accuracy: float


def stratified_folds(y: np.ndarray, k: int, seed: int = FOLD_SEED) -> np.ndarray:
    """(N,) fold ids in 0..k−1: each class's indices, permuted with ``seed``, dealt round-robin."""
    rng = np.random.default_rng(seed)
    folds = np.empty(len(y), dtype=np.int64)
    for c in np.unique(y):
        index = rng.permutation(np.flatnonzero(y == c))
        folds[index] = np.arange(len(index)) % k
    return folds


def fold_data(mode: str, fold: int) -> TaskData:
    """The splits of ``fold`` (see the module docstring); the test split is never the fixed one in ``inner``."""
    fixed = load_spambase(None)
    pool = Dataset.join(fixed.train, fixed.val) if mode == "inner" else Dataset.join(fixed.train, fixed.val, fixed.test)
    k = INNER_FOLDS if mode == "inner" else OUTER_FOLDS
    folds = torch.from_numpy(stratified_folds(pool.y.numpy(), k))
    val_fold = fold if mode == "inner" else (fold + 1) % k
    val = pool.subset(folds == val_fold)
    test = val if mode == "inner" else pool.subset(folds == fold)
    train = pool.subset((folds != val_fold) & (folds != fold) if mode == "outer" else folds != fold)
    meta = {**feature_stats(train.x), "feature_names": fixed.meta["feature_names"]}
    return TaskData(train, val, test, class_names=fixed.class_names, meta=meta)


def _quiet(message: str) -> None:
    """Training's per-epoch messages, dropped (many runs at a time)."""


def run_job(job: Job) -> Outcome:
    """Train (or reuse) the job's run folder and measure it on its evaluation split."""
    torch.set_num_threads(1)
    data = fold_data(job.mode, job.fold)
    out = Path(job.out)
    if not run_finished(out):
        train_run({"name": "spambase"}, out, train_overrides={**job.train, "seed": job.seed},
                  model_overrides=job.model or None, data=data, progress=False, log=_quiet)  # fmt: skip
    model = asymcert.load(out, device="cpu").eval()
    split = data.val if job.mode == "inner" else data.test
    cert = asymcert.certify(model, split.x, norms=(1.0,), threat_model=run_threat_model(read_run_record(out)))
    shares = sensitive_certified(cert.predicted, cert.radii[1.0], split.y, list(RADII))
    return Outcome(
        job.name, job.fold, job.seed, split_accuracy(model, split), tuple(100 * s for s in shares),
        split_accuracy(model, data.val),
    )  # fmt: skip


def by_name(outcomes: list[Outcome]) -> dict[str, list[Outcome]]:
    """The outcomes grouped by configuration name, in order of first appearance."""
    groups: dict[str, list[Outcome]] = {}
    for o in outcomes:
        groups.setdefault(o.name, []).append(o)
    return groups


def per_fold(outcomes: list[Outcome], value: str = "accuracy") -> list[float]:
    """Per fold (ascending), the mean over seeds of ``value`` ("accuracy" or "certified" at r = 1)."""
    folds: dict[int, list[float]] = {}
    for o in outcomes:
        folds.setdefault(o.fold, []).append(o.accuracy if value == "accuracy" else o.certified[1])
    return [statistics.mean(folds[f]) for f in sorted(folds)]


def select(groups: dict[str, list[Outcome]]) -> tuple[str, str, float]:
    """The one-standard-error rule of the module docstring: (chosen, best by accuracy, the SE used)."""
    mean = {name: statistics.mean(per_fold(o)) for name, o in groups.items()}
    best = max(mean, key=lambda n: mean[n])
    folds = per_fold(groups[best])
    se = statistics.stdev(folds) / math.sqrt(len(folds))
    eligible = [n for n in groups if mean[n] >= mean[best] - se]
    chosen = max(eligible, key=lambda n: statistics.mean(per_fold(groups[n], "certified")))
    return chosen, best, se


def references(fold: int) -> dict[str, float]:
    """Test accuracy (percent) of the uncertified references on outer ``fold``, trained on its training folds."""
    data = fold_data("outer", fold)
    x = {s: np.log1p(getattr(data, s).x.double().numpy()) for s in ("train", "val", "test")}
    y = {s: getattr(data, s).y.numpy() for s in ("train", "val", "test")}
    mean, sd = x["train"].mean(0), x["train"].std(0) + 1e-12
    z = {s: (v - mean) / sd for s, v in x.items()}
    fits = [LogisticRegression(C=c, max_iter=5000).fit(z["train"], y["train"]) for c in (0.03, 0.1, 0.3, 1, 3, 10)]
    logistic = max(fits, key=lambda m: m.score(z["val"], y["val"]))
    raw = {s: getattr(data, s).x.numpy() for s in ("train", "test")}
    boosting = HistGradientBoostingClassifier(random_state=0).fit(raw["train"], y["train"])
    return {
        "logistic_log1p": 100 * logistic.score(z["test"], y["test"]),
        "hist_gradient_boosting": 100 * boosting.score(raw["test"], y["test"]),
    }


def jobs(args: argparse.Namespace) -> list[Job]:
    """Every (configuration, fold, seed) of the command line, in that order."""
    try:
        grid = json.loads(Path(args.grid).read_text())
    except (OSError, ValueError) as exc:
        sys.exit(f"{args.grid}: not a readable JSON grid ({exc})")
    if not isinstance(grid, dict) or not all(isinstance(c, dict) for c in grid.values()):
        sys.exit(f'{args.grid}: a grid is an object of name → {{"train": {{...}}, "model": {{...}}}}')
    names = args.configs.split(",") if args.configs else list(grid)
    unknown = [n for n in names if n not in grid]
    if unknown:
        sys.exit(f"{args.grid}: no configuration {unknown} (has {sorted(grid)})")
    k = INNER_FOLDS if args.mode == "inner" else OUTER_FOLDS
    seeds = args.seeds
    out = Path(args.out) / args.mode
    return [
        Job(args.mode, n, grid[n].get("train", {}), grid[n].get("model", {}), f, s, str(out / f"{n}_f{f}_s{s}"))
        for n in names
        for f in range(k)
        for s in seeds
    ]


def _cell(values: list[float]) -> str:
    sd = statistics.stdev(values) if len(values) > 1 else 0.0
    return f"{statistics.mean(values):.2f} ± {sd:.2f} ({min(values):.2f})"


def _folds_cell(per: list[float]) -> str:
    return " / ".join(f"{v:.2f}" for v in per) + f" | {_cell(per)}"


def table(groups: dict[str, list[Outcome]]) -> list[str]:
    """Markdown rows: per configuration, the accuracy of each fold (mean over seeds), their mean ± sd and
    min, and the certified shares at RADII (means over every run)."""
    rows = [
        "| configuration | runs | accuracy per fold, % | mean ± sd over folds (min) | cert. ℓ1 r = 0.5 / 1 / 2, % |"
    ]
    rows.append("|---|---|---|---|---|")
    for name, outcomes in groups.items():
        certified = " / ".join(f"{statistics.mean(o.certified[i] for o in outcomes):.1f}" for i in range(len(RADII)))
        rows.append(f"| {name} | {len(outcomes)} | {_folds_cell(per_fold(outcomes))} | {certified} |")
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("mode", choices=("inner", "outer"))
    ap.add_argument("--grid", default=str(Path(__file__).parent / "spambase_cv_grid.json"))
    ap.add_argument("--configs", default="", help="comma-separated names of the grid (default: all)")
    ap.add_argument("--seeds", type=int_list, default=[0], help="training seeds, comma-separated")
    ap.add_argument("--jobs", type=positive_int, default=2, help="processes at a time")
    ap.add_argument("--out", default="runs/cv", help="folder of the run folders")
    ap.add_argument("--results", default="", help="name of the results file (default: spambase_cv_MODE)")
    args = ap.parse_args()
    todo = jobs(args)
    try:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            outcomes = list(pool.map(run_job, todo))
            refs = list(pool.map(references, range(OUTER_FOLDS))) if args.mode == "outer" else []
    except AsymcertError as exc:
        sys.exit(f"spambase_cv: {exc}")
    groups = by_name(outcomes)
    lines = table(groups)
    summary: dict = {"mode": args.mode, "seeds": ",".join(map(str, args.seeds)), "machine": machine()}
    if args.mode == "inner":
        chosen, best, se = select(groups)
        lines.append(f"\nHighest mean accuracy: {best} (SE {se:.2f}); chosen by the one-SE rule: **{chosen}**")
        summary |= {"best_accuracy": best, "standard_error": se, "chosen": chosen}
    for ref in refs[0] if refs else []:
        per = [r[ref] for r in refs]
        lines.append(f"| {ref} (uncertified) | {len(per)} | {_folds_cell(per)} | – |")
        summary.setdefault("references", {})[ref] = per
    print("\n".join(lines))
    summary["runs"] = [asdict(o) for o in outcomes]
    write_results(args.results or f"spambase_cv_{args.mode}", summary)


if __name__ == "__main__":
    main()
