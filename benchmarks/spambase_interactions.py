"""How much of SpamBase's accuracy needs feature interactions: uncertified references on the five outer folds.

    python benchmarks/spambase_interactions.py

#16 asks for 95.0% clean accuracy. Feature-convex models with a coordinate-wise φ (log1p, standardize,
hinges) score an email by a convex function of per-feature curves: at one hidden unit, an additive model
plus a convex ramp of a second one; wider, the spam region is a union ("any of these additive scores is
high"). This script measures, on the same five outer folds as ``spambase_cv.py outer`` (train / validation
/ test 60 / 20 / 20, each fold once the test split), what uncertified models of limited interaction order
reach, trained on the training folds only:

* HistGradientBoosting (random_state 0) on the raw features with ``interaction_cst="no_interactions"``
  (an additive model: every tree splits on one feature), with ``max_depth`` 2, 3 and 4 (interactions of
  at most that many features per tree), and unrestricted (scikit-learn's defaults);
* logistic regression (L2 strength chosen on the validation fold among 0.003 … 1) on the features of two
  certified models' φ, standardised: the default's (log1p, standardize, hinges with 4 knots) and ``--preset
  pairs``'s (log1p, standardize, pair-min, hinges with 2 knots), and the same with group-min of order 3
  (every pair and every triple of coordinates) in place of pair-min. A linear g is convex, so these are
  feature-convex models trained without the certified-margin loss: what φ allows before certificates cost;
* an unconstrained (non-convex) MLP (scikit-learn ``MLPClassifier``, hidden 64-32, ReLU, Adam,
  300 epochs at most) on log1p + standardised features, its L2 strength chosen on the validation fold
  among 1e-4 / 1e-3 / 1e-2 / 1e-1 / 1, seeds 0, 1, 2 (the mean over seeds per fold).

Writes ``benchmarks/results/spambase_interactions.json`` and prints a markdown table: per model, the test
accuracy of each fold, the mean ± sd over folds and the lowest fold. Needs scikit-learn (test extra).
"""

from __future__ import annotations

import argparse
import statistics
import warnings

import numpy as np
import torch
from common import machine, write_results  # benchmarks/common.py
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.linear_model import LogisticRegression
from sklearn.neural_network import MLPClassifier
from spambase_cv import OUTER_FOLDS, fold_data  # benchmarks/spambase_cv.py

from asymcert.data.tasks import TaskData
from asymcert.nn.feature_maps import build_feature_map
from asymcert.train.balance import fit_balance

BOOSTING = {
    "boosting, additive (no interactions)": {"interaction_cst": "no_interactions"},
    "boosting, max_depth 2": {"max_depth": 2},
    "boosting, max_depth 3": {"max_depth": 3},
    "boosting, max_depth 4": {"max_depth": 4},
    "boosting, unrestricted": {},
}
PHI = {
    "the default's": [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": 4}],
    "--preset pairs's": [
        {"kind": "log1p"},
        {"kind": "standardize"},
        {"kind": "pair-min"},
        {"kind": "hinges", "knots": 2},
    ],
    "group-min's (order 3)": [
        {"kind": "log1p"},
        {"kind": "standardize"},
        {"kind": "group-min", "order": 3},
        {"kind": "hinges", "knots": 2},
    ],
}
LOGISTIC_C = (0.003, 0.01, 0.03, 0.1, 0.3, 1.0)
MLP_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
MLP_SEEDS = (0, 1, 2)


def boosting_accuracies(data: TaskData) -> dict[str, float]:
    """Test accuracy (percent) of each BOOSTING model on an outer fold's splits ``data``, trained on its
    training split."""
    x, y = data.train.x.numpy(), data.train.y.numpy()
    test_x, test_y = data.test.x.numpy(), data.test.y.numpy()
    return {
        name: 100 * HistGradientBoostingClassifier(random_state=0, **kw).fit(x, y).score(test_x, test_y)
        for name, kw in BOOSTING.items()
    }


def logistic_accuracy(data: TaskData, phi: list[dict]) -> float:
    """Test accuracy (percent) on an outer fold's splits ``data`` of logistic regression on φ's standardised
    features, its C chosen on the validation split, at the balanced threshold asymcert fits (``fit_balance``
    on validation)."""
    fmap = build_feature_map(phi, (data.train.x.shape[1],)).double().fit(data.train.x.double())
    feats = {s: fmap(getattr(data, s).x.double()).detach().numpy() for s in ("train", "val", "test")}
    mean, sd = feats["train"].mean(0), feats["train"].std(0) + 1e-6
    z = {s: (v - mean) / sd for s, v in feats.items()}
    y = {s: getattr(data, s).y.numpy() for s in ("train", "val", "test")}
    fits = [LogisticRegression(C=c, max_iter=3000).fit(z["train"], y["train"]) for c in LOGISTIC_C]
    best = max(fits, key=lambda m: m.score(z["val"], y["val"]))
    b = fit_balance(torch.from_numpy(best.decision_function(z["val"])), torch.from_numpy(y["val"]))
    flagged = best.decision_function(z["test"]) + float(b) > 0
    return 100 * float(np.mean(flagged == y["test"]))


def mlp_accuracy(data: TaskData) -> float:
    """Test accuracy (percent, mean over MLP_SEEDS) of the validation-chosen MLP on an outer fold's splits ``data``."""
    logs = {s: np.log1p(np.maximum(getattr(data, s).x.double().numpy(), 0.0)) for s in ("train", "val", "test")}
    mean, sd = logs["train"].mean(0), logs["train"].std(0) + 1e-12
    z = {s: (v - mean) / sd for s, v in logs.items()}
    y = {s: getattr(data, s).y.numpy() for s in ("train", "val", "test")}
    accuracies = []
    for seed in MLP_SEEDS:
        fits = [
            MLPClassifier((64, 32), alpha=a, max_iter=300, random_state=seed).fit(z["train"], y["train"])
            for a in MLP_ALPHAS
        ]
        best = max(fits, key=lambda m: m.score(z["val"], y["val"]))
        accuracies.append(100 * best.score(z["test"], y["test"]))
    return statistics.mean(accuracies)


def main() -> None:
    argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter).parse_args()
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    per_model: dict[str, list[float]] = {}
    for fold in range(OUTER_FOLDS):
        data = fold_data("outer", fold)  # read once per fold, shared by every model
        for name, acc in boosting_accuracies(data).items():
            per_model.setdefault(name, []).append(acc)
        for name, phi in PHI.items():
            per_model.setdefault(f"logistic regression on {name} φ", []).append(logistic_accuracy(data, phi))
        per_model.setdefault("MLP 64-32 on log1p features (non-convex)", []).append(mlp_accuracy(data))
    print("| model (uncertified) | test accuracy per fold, % | mean ± sd (min) |\n|---|---|---|")
    for name, per in per_model.items():
        folds = " / ".join(f"{v:.2f}" for v in per)
        print(f"| {name} | {folds} | {statistics.mean(per):.2f} ± {statistics.stdev(per):.2f} ({min(per):.2f}) |")
    write_results("spambase_interactions", {"machine": machine(), "folds": OUTER_FOLDS, "test_accuracy": per_model})


if __name__ == "__main__":
    main()
