"""Recipes: what is model-family specific in training (loss, constraints, validation metric)."""

from __future__ import annotations

from typing import Protocol

import torch
import torch.nn.functional as F
from torch import nn

from asymcert.data.tasks import Dataset
from asymcert.train.balance import balanced_accuracy, fit_balance
from asymcert.train.config import TrainConfig
from asymcert.train.regularizers import jacobian_penalty


class Recipe(Protocol):
    """Hooks the training loop calls. ``progress`` runs from 0 (start) to 1 (end of training)."""

    def prepare(self, model: nn.Module, train: Dataset) -> None:
        """Before the first epoch (not on resume): e.g. fit data statistics of the feature map."""

    def on_epoch_start(self, model: nn.Module, epoch: int, progress: float) -> None:
        """At the start of every epoch (e.g. the ℓp exponent schedule)."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        """Training loss of one batch and a dict of floats to log."""

    def after_step(self, model: nn.Module) -> None:
        """After every optimizer step (e.g. the convexity projection)."""

    def evaluate(self, model: nn.Module, val: Dataset, batch_size: int) -> dict[str, float]:
        """Validation metrics; ``"metric"`` (higher is better) selects the best checkpoint.
        May set state that belongs with the checkpoint (e.g. the balance shift b)."""


@torch.no_grad()
def predict_scores(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Model outputs for ``x`` in eval mode, batched, returned on CPU."""
    was = model.training
    model.eval()
    out = torch.cat([model(x[i:i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


class FeatureConvexRecipe:
    """The feature-convex paper's recipe: BCE on the logit s(x), optional Jacobian regulariser,
    projection onto nonnegative weights after every step, and the balance shift b fitted on
    the validation split (selection metric: balanced validation accuracy)."""

    def __init__(self, config: TrainConfig) -> None:
        self.jacobian_reg = float(config.jacobian_reg)

    def prepare(self, model: nn.Module, train: Dataset) -> None:
        model.feature_map.fit(train.x)
        model.set_balance(0.0)
        model.project()

    def on_epoch_start(self, model: nn.Module, epoch: int, progress: float) -> None:
        pass

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        features = model.features(x)
        if self.jacobian_reg > 0:
            features = features.detach().requires_grad_(True)
        score = model.score_from_features(features)
        bce = F.binary_cross_entropy_with_logits(score, y.float())
        stats = {"bce": bce.item()}
        if self.jacobian_reg > 0:
            reg = jacobian_penalty(score, features)
            stats["jac"] = reg.item()
            return bce + self.jacobian_reg * reg, stats
        return bce, stats

    def after_step(self, model: nn.Module) -> None:
        model.project()

    def evaluate(self, model: nn.Module, val: Dataset, batch_size: int) -> dict[str, float]:
        device = next(model.parameters()).device
        model.set_balance(0.0)
        scores = predict_scores(model, val.x, batch_size, device)
        b = fit_balance(scores, val.y)
        model.set_balance(b)
        acc = float(((scores + b > 0).long() == val.y).float().mean())
        return {"metric": balanced_accuracy(scores + b, val.y), "accuracy": acc, "balance": b}


RECIPES: dict[str, type] = {"feature-convex": FeatureConvexRecipe}


def recipe_for(model: nn.Module, config: TrainConfig) -> Recipe:
    """The recipe registered for ``model``'s kind (``model.config()["kind"]``)."""
    kind = model.config()["kind"]
    if kind not in RECIPES:
        try:
            import asymcert.train.builtin  # noqa: F401  (other families register recipes here)
        except ModuleNotFoundError as exc:  # pragma: no cover
            if exc.name != "asymcert.train.builtin":
                raise
    if kind not in RECIPES:
        raise ValueError(f"no training recipe for model kind {kind!r}; known: {sorted(RECIPES)}")
    return RECIPES[kind](config)
