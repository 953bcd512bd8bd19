"""Uncertified reference models on asymcert's SpamBase split (train / validation / test, seed 42).

    python benchmarks/spambase_reference.py

Prints validation and test accuracy of: logistic regression on the default's features (φ = log1p,
standardize, hinges with K knots) for K in {2, 4}, its L2 strength C chosen on validation, both at its
own threshold (probability 0.5) and at the balanced threshold asymcert fits (equal class accuracies
on validation, :func:`asymcert.train.balance.fit_balance`); and HistGradientBoosting on the raw
features (random_state 0). Needs scikit-learn (installed with the test extra).
"""

from __future__ import annotations

import torch
from sklearn.ensemble import HistGradientBoostingClassifier
from sklearn.linear_model import LogisticRegression

from asymcert.data.spambase import load_spambase
from asymcert.nn.feature_maps import build_feature_map
from asymcert.train.balance import fit_balance


def accuracy(scores: torch.Tensor, labels: torch.Tensor) -> float:
    """Percent of (scores > 0) == labels."""
    return 100.0 * float(((scores > 0).long() == labels).double().mean())


def logistic_on_hinges(knots: int) -> str:
    """One line: the validation-chosen C and its accuracies at both thresholds."""
    data = load_spambase(None)
    phi = build_feature_map([{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": knots}], (57,))
    phi = phi.double().fit(data.train.x.double())
    feats = {name: phi(getattr(data, name).x.double()).detach().numpy() for name in ("train", "val", "test")}
    best = None
    for c in (0.03, 0.1, 0.3, 1.0, 3.0):
        model = LogisticRegression(C=c, max_iter=5000).fit(feats["train"], data.train.y.numpy())
        val = torch.tensor(model.decision_function(feats["val"]))
        if best is None or accuracy(val, data.val.y) > best[0]:
            best = (accuracy(val, data.val.y), c, model, val)
    _, c, model, val = best
    test = torch.tensor(model.decision_function(feats["test"]))
    b = fit_balance(val, data.val.y)
    return (
        f"logistic regression on hinges K={knots}, C={c:g}: own threshold val {accuracy(val, data.val.y):.2f}% "
        f"test {accuracy(test, data.test.y):.2f}% | balanced threshold val {accuracy(val + b, data.val.y):.2f}% "
        f"test {accuracy(test + b, data.test.y):.2f}%"
    )


def main() -> None:
    for knots in (2, 4):
        print(logistic_on_hinges(knots))
    data = load_spambase(None)
    hgb = HistGradientBoostingClassifier(random_state=0).fit(data.train.x.numpy(), data.train.y.numpy())
    val, test = (100.0 * hgb.score(d.x.numpy(), d.y.numpy()) for d in (data.val, data.test))
    print(f"HistGradientBoosting (raw features): val {val:.2f}% test {test:.2f}%")


if __name__ == "__main__":
    main()
