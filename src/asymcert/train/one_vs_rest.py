"""Training recipe of one-vs-rest feature-convex models
(family ``one-vs-rest-convex``, :mod:`asymcert.families.one_vs_rest`).

Member k is trained as the binary task "class k (label 1) vs every other class (label 0)" with the
feature-convex recipe (:class:`~asymcert.train.recipes.FeatureConvexRecipe`: BCE on the logit
s_k, the Jacobian regulariser, projection onto nonnegative weights after every step). The K
members are trained side by side in one :func:`~asymcert.train.loop.fit` loop on the same
batches: the training loss is the SUM of the members' own losses, so the gradient with respect to
member k's weights is exactly its own binary-task gradient and SGD/momentum/weight decay act on
every member as if it were trained alone (the members share no parameter). What they share is the
batch order, the learning-rate schedule and the best-validation epoch.

Validation (every epoch): each member's balance shift b_k is fitted on the validation split with
its own binary labels (``FeatureConvexRecipe.evaluate``: TPR = TNR of class k vs rest); the
selection metric is then the validation accuracy of the decision argmax_k s_k(x).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from asymcert.data.tasks import Dataset
from asymcert.train.config import TrainConfig
from asymcert.train.recipes import FeatureConvexRecipe, predict_scores

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.one_vs_rest import OneVsRestConvex

ONE_VS_REST_TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 8,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "sgd",
    "momentum": 0.9,
    "lr_decay": 0.99,
    "schedule": "exponential",
    "weight_decay": 0.0,
    "jacobian_reg": 0.01,
}
"""Training settings for ``--model one-vs-rest-convex`` on a task whose default model is of another
family: the feature-convex paper's MNIST/Fashion recipe (SGD lr 1e-3, momentum 0.9, decay 0.99 per
epoch, batch 64, Jacobian regulariser λ = 0.01) with 8 epochs instead of 60 (CPU-sized: every epoch
trains K members; 10-class Fashion-MNIST took 2.5–4.5 min per epoch on a loaded 2-core CPU, see
benchmarks/README.md)."""


def member_labels(y: torch.Tensor, k: int) -> torch.Tensor:
    """Binary labels of member k: (N,) class ids → (N,) int64, 1 where the label is k, else 0."""
    return (y == k).long()


class OneVsRestRecipe:
    """The feature-convex recipe applied to every member of a one-vs-rest model (see the module doc)."""

    def __init__(self, config: TrainConfig) -> None:
        self.member = FeatureConvexRecipe(config)

    def prepare(self, model: nn.Module, train: Dataset) -> None:
        """Fit every member's feature map on the training inputs, zero its b_k, project its weights."""
        ovr = cast("OneVsRestConvex", model)  # this recipe trains OneVsRestConvex models
        labels = train.y.unique()
        if int(labels.min()) < 0 or int(labels.max()) >= ovr.num_classes:
            raise ValueError(
                f"training labels range over {int(labels.min())}..{int(labels.max())}, but the "
                f"one-vs-rest model has {ovr.num_classes} members (classes 0..{ovr.num_classes - 1})"
            )
        for m in ovr.member_models:
            self.member.prepare(m, train)

    def on_epoch_start(self, model: nn.Module, epoch: int, progress: float) -> None:
        """Every member's per-epoch state (its margin warm-up, b_k = 0 while training)."""
        ovr = cast("OneVsRestConvex", model)  # this recipe trains OneVsRestConvex models
        for m in ovr.member_models:
            self.member.on_epoch_start(m, epoch, progress)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        """Σ_k (member k's feature-convex loss on labels y == k); logs the members' mean BCE (and Jacobian term).

        Args:
            x: (B, *input_shape) raw inputs. y: (B,) class ids.
        """
        ovr = cast("OneVsRestConvex", model)  # this recipe trains OneVsRestConvex models
        total = x.new_zeros(())
        sums: dict[str, float] = {}
        for k, m in enumerate(ovr.member_models):
            loss_k, stats_k = self.member.loss(m, x, member_labels(y, k), progress)
            total = total + loss_k
            for name, v in stats_k.items():
                sums[name] = sums.get(name, 0.0) + v
        return total, {name: v / ovr.num_classes for name, v in sums.items()}

    def after_step(self, model: nn.Module) -> None:
        """Clamp every member's constrained weights back to their bounds."""
        ovr = cast("OneVsRestConvex", model)  # this recipe trains OneVsRestConvex models
        ovr.project()

    def evaluate(self, model: nn.Module, val: Dataset, batch_size: int) -> dict[str, float]:
        """Fit each b_k on ``val`` (class k vs rest), then score the argmax decision.

        A member whose class is absent from ``val`` keeps b_k = 0 (nothing to fit it on).

        Returns:
            ``metric`` and ``accuracy``: validation accuracy of argmax_k s_k; ``member_balanced``: the
            members' mean balanced accuracy; ``no_flag`` / ``multi_flag``: shares of validation inputs
            flagged by no member / by more than one.
        """
        ovr = cast("OneVsRestConvex", model)  # this recipe trains OneVsRestConvex models
        balanced, eligible = [], 1.0
        for k, m in enumerate(ovr.member_models):
            labels = member_labels(val.y, k)
            if 0 < int(labels.sum()) < len(labels):
                member = self.member.evaluate(m, Dataset(val.x, labels), batch_size)
                balanced.append(member["metric"])
                eligible = member.get("eligible", eligible)
            else:  # class k absent from validation (or the only class): b_k cannot be fitted; keep b_k = 0
                m.set_balance(0.0)
        device = next(ovr.parameters()).device
        scores = predict_scores(model, val.x, batch_size, device)
        acc = float((scores.argmax(dim=1) == val.y).float().mean())
        flags = (scores > 0).sum(dim=1)
        return {
            "metric": acc,
            "accuracy": acc,
            "member_balanced": sum(balanced) / max(1, len(balanced)),
            "no_flag": float((flags == 0).float().mean()),
            "multi_flag": float((flags > 1).float().mean()),
            "eligible": eligible,
        }


__all__ = ["ONE_VS_REST_TRAIN_DEFAULTS", "OneVsRestRecipe", "member_labels"]
