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
* an unconstrained (non-convex) MLP (scikit-learn ``MLPClassifier``, hidden 64-32, ReLU, Adam,
  300 epochs at most) on log1p + standardised features, its L2 strength chosen on the validation fold
  among 1e-4 / 1e-3 / 1e-2 / 1e-1 / 1, seeds 0, 1, 2 (the mean over seeds per fold).

Writes ``benchmarks/results/spambase_interactions.json`` and prints a markdown table: per model, the test
accuracy of each fold, the mean ± sd over folds and the lowest fold. Needs scikit-learn (test extra).
"""

from __future__ import annotations

import statistics
import warnings

import numpy as np
from common import machine, write_results  # benchmarks/common.py
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.exceptions import ConvergenceWarning
from sklearn.neural_network import MLPClassifier
from spambase_cv import OUTER_FOLDS, fold_data  # benchmarks/spambase_cv.py

BOOSTING = {
    "boosting, additive (no interactions)": {"interaction_cst": "no_interactions"},
    "boosting, max_depth 2": {"max_depth": 2},
    "boosting, max_depth 3": {"max_depth": 3},
    "boosting, max_depth 4": {"max_depth": 4},
    "boosting, unrestricted": {},
}
MLP_ALPHAS = (1e-4, 1e-3, 1e-2, 1e-1, 1.0)
MLP_SEEDS = (0, 1, 2)


def boosting_accuracies(fold: int) -> dict[str, float]:
    """Test accuracy (percent) of each BOOSTING model on outer ``fold``, trained on its training folds."""
    data = fold_data("outer", fold)
    x, y = data.train.x.numpy(), data.train.y.numpy()
    test_x, test_y = data.test.x.numpy(), data.test.y.numpy()
    return {
        name: 100 * HistGradientBoostingClassifier(random_state=0, **kw).fit(x, y).score(test_x, test_y)
        for name, kw in BOOSTING.items()
    }


def mlp_accuracy(fold: int) -> float:
    """Test accuracy (percent, mean over MLP_SEEDS) of the validation-chosen MLP on outer ``fold``."""
    data = fold_data("outer", fold)
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
    warnings.filterwarnings("ignore", category=ConvergenceWarning)
    per_model: dict[str, list[float]] = {}
    for fold in range(OUTER_FOLDS):
        for name, acc in boosting_accuracies(fold).items():
            per_model.setdefault(name, []).append(acc)
        per_model.setdefault("MLP 64-32 on log1p features (non-convex)", []).append(mlp_accuracy(fold))
    print("| model (uncertified) | test accuracy per fold, % | mean ± sd (min) |\n|---|---|---|")
    for name, per in per_model.items():
        folds = " / ".join(f"{v:.2f}" for v in per)
        print(f"| {name} | {folds} | {statistics.mean(per):.2f} ± {statistics.stdev(per):.2f} ({min(per):.2f}) |")
    write_results("spambase_interactions", {"machine": machine(), "folds": OUTER_FOLDS, "test_accuracy": per_model})


if __name__ == "__main__":
    main()
