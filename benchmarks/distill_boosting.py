"""Can the default SpamBase model learn from gradient boosting? Distillation, judged by inner cross-validation.

    python benchmarks/distill_boosting.py --weights 0,0.5,0.8 --seeds 0,1

HistGradientBoosting reaches about 95.4% on SpamBase; the certified default about 93.4% (five outer
folds, ``spambase_cv.py``). This script trains the default recipe (``asymcert run spambase``'s task,
threat model and settings) with a knowledge-distillation term whose teacher is boosting: the loss is
(1 − w)·(the recipe's loss) + w·T²·BCE(s/T, sigmoid(t/T)) (``asymcert.train.distill``, T = 1), w from
``--weights`` (0 = the default itself).

The teacher's score t of a training email is **cross-fitted**: the training split is cut into 5
stratified folds (seed 100) and each email is scored by a HistGradientBoosting model (random_state 0)
trained on the other four, so t is what boosting predicts for an email it has not seen (a boosting
model scores its own training emails almost perfectly, which would teach nothing the labels do not).
asymcert's teachers are saved asymcert models that score any input; this one is a table of scores of
the training emails, so the script replaces ``asymcert.train.recipes.load_teacher`` with that table in
its worker processes (an experiment, not a feature; nothing of it ships in the package).

It runs on the inner cross-validation folds of ``spambase_cv.py`` (4 folds of the fixed split's training
+ validation emails; the fixed test split is never read) and reports, per weight, the validation accuracy
(mean over seeds per fold, then mean and standard error over folds) and the share of the validation spam
certified at ℓ1 radius 0.5 / 1 / 2 of the threat model's units, next to boosting's own validation accuracy.
Run folders go to ``--out`` (default ``runs/distill_boosting``); writes
``benchmarks/results/distill_boosting.json``.
"""

from __future__ import annotations

import argparse
import math
import statistics
import sys
from concurrent.futures import ProcessPoolExecutor
from dataclasses import asdict
from multiprocessing import get_context
from pathlib import Path

import numpy as np
import torch
from common import int_list, machine, positive_int, write_results  # benchmarks/common.py
from sklearn.ensemble import HistGradientBoostingClassifier
from spambase_cv import INNER_FOLDS, Job, Outcome, by_name, fold_data, per_fold, run_job, stratified_folds, table
from torch import nn

import asymcert.train.recipes as recipes
from asymcert.errors import AsymcertError

TEACHER_FOLDS, TEACHER_FOLD_SEED = 5, 100
TEACHER_PREFIX = "boosting-cross-fitted-fold-"


class ScoreTable(nn.Module):
    """A frozen teacher that knows the scores of given inputs only: x (N, d) float32 → scores (N,)."""

    def __init__(self, x: np.ndarray, scores: np.ndarray) -> None:
        super().__init__()
        self.table = {row.astype(np.float32).tobytes(): float(s) for row, s in zip(x, scores)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        rows = x.detach().cpu().float().numpy()
        return torch.tensor([self.table[r.tobytes()] for r in rows], dtype=torch.float32, device=x.device)


def cross_fitted_scores(x: np.ndarray, y: np.ndarray) -> np.ndarray:
    """(N,) boosting's decision function of each row, from a model trained on the other folds."""
    folds = stratified_folds(y, TEACHER_FOLDS, seed=TEACHER_FOLD_SEED)
    scores = np.empty(len(y))
    for f in range(TEACHER_FOLDS):
        model = HistGradientBoostingClassifier(random_state=0).fit(x[folds != f], y[folds != f])
        scores[folds == f] = model.decision_function(x[folds == f])
    return scores


def boosting_teacher(path: str) -> nn.Module:
    """The replacement of ``load_teacher``: the cross-fitted score table of inner fold ``path``'s training split."""
    train = fold_data("inner", int(path.removeprefix(TEACHER_PREFIX))).train
    x, y = train.x.numpy(), train.y.numpy()
    return ScoreTable(x, cross_fitted_scores(x, y))


def distilled_job(job: Job) -> Outcome:
    """``spambase_cv.run_job`` with the boosting teacher in place of saved-model teachers."""
    recipes.load_teacher = boosting_teacher
    recipes.check_teacher_input = lambda *args: None  # the table checks its rows itself (KeyError)
    return run_job(job)


def boosting_validation(fold: int) -> tuple[float, float]:
    """(validation accuracy of boosting trained on the whole training split, accuracy of the cross-fitted
    scores on the training split), percent."""
    data = fold_data("inner", fold)
    x, y = data.train.x.numpy(), data.train.y.numpy()
    model = HistGradientBoostingClassifier(random_state=0).fit(x, y)
    fitted = 100 * float(np.mean((cross_fitted_scores(x, y) > 0) == y))
    return 100 * model.score(data.val.x.numpy(), data.val.y.numpy()), fitted


def jobs(weights: list[float], seeds: list[int], out: Path) -> list[Job]:
    """One job per (weight, fold, seed); weight 0 is the default recipe without a teacher."""
    todo = []
    for w in weights:
        for fold in range(INNER_FOLDS):
            train = {} if w == 0 else {"teacher": f"{TEACHER_PREFIX}{fold}", "distill_weight": w}
            todo += [Job("inner", f"w={w:g}", train, {}, fold, s, str(out / f"w{w:g}_f{fold}_s{s}")) for s in seeds]
    return todo


def weight_list(text: str) -> list[float]:
    """An argparse type: comma-separated distillation weights in [0, 1]."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError:
        raise argparse.ArgumentTypeError(f"not comma-separated numbers: {text!r}") from None
    if not values or not all(0 <= v <= 1 for v in values):
        raise argparse.ArgumentTypeError(f"weights must be in [0, 1], got {text!r}")
    return values


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--weights", type=weight_list, default=[0.0, 0.5, 0.8])
    ap.add_argument("--seeds", type=int_list, default=[0, 1])
    ap.add_argument("--jobs", type=positive_int, default=2, help="processes at a time")
    ap.add_argument("--out", default="runs/distill_boosting", help="folder of the run folders")
    args = ap.parse_args()
    try:
        with ProcessPoolExecutor(args.jobs, mp_context=get_context("spawn")) as pool:
            outcomes = list(pool.map(distilled_job, jobs(args.weights, args.seeds, Path(args.out))))
            teacher = list(pool.map(boosting_validation, range(INNER_FOLDS)))
    except AsymcertError as exc:
        sys.exit(f"distill_boosting: {exc}")
    groups = by_name(outcomes)
    lines = table(groups)
    for name, group in groups.items():
        folds = per_fold(group)
        se = statistics.stdev(folds) / math.sqrt(len(folds))
        lines.append(f"{name}: validation accuracy {statistics.mean(folds):.2f}% (SE over folds {se:.2f})")
    val = [t[0] for t in teacher]
    lines.append(f"boosting (uncertified teacher) validation accuracy per fold: {' / '.join(f'{v:.2f}' for v in val)}")
    print("\n".join(lines))
    write_results(
        "distill_boosting",
        {"machine": machine(), "seeds": args.seeds, "weights": args.weights, "runs": [asdict(o) for o in outcomes],
         "boosting_validation": val, "cross_fitted_training_accuracy": [t[1] for t in teacher]},
    )  # fmt: skip


if __name__ == "__main__":
    main()
