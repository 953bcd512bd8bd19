"""Recipes: what is model-family specific in training (loss, constraints, validation metric)."""

from __future__ import annotations

from collections.abc import Callable
from typing import Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from asymcert.certify.threat_model import threat_lower_bound
from asymcert.checkpoint import model_config
from asymcert.data.tasks import Dataset
from asymcert.errors import ConfigError, UnknownNameError
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.threat import ResolvedThreatModel
from asymcert.train.balance import balanced_accuracy, detection_rates, operating_shift, per_candidate_confidence
from asymcert.train.config import TrainConfig
from asymcert.train.distill import check_teacher_input, distill_loss, load_teacher, teacher_scores
from asymcert.train.regularizers import certified_lower_bound, jacobian_penalty_from_grad, per_input_gradients


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
        """Validation metrics; ``"metric"`` (higher is better) selects the best checkpoint, among the
        epochs whose ``"eligible"`` (default 1.0) is nonzero. May set state that belongs with the
        checkpoint (e.g. the balance shift b)."""


@torch.no_grad()
def predict_scores(model: nn.Module, x: torch.Tensor, batch_size: int, device: torch.device) -> torch.Tensor:
    """Model outputs for ``x`` in eval mode, batched, returned on CPU."""
    was = model.training
    model.eval()
    out = torch.cat([model(x[i : i + batch_size].to(device)).float().cpu() for i in range(0, len(x), batch_size)])
    model.train(was)
    return out


def _classifier(model: nn.Module) -> FeatureConvexClassifier:
    """``model`` as the feature-convex classifier this recipe trains (refused by :func:`recipe_for` otherwise)."""
    return cast(FeatureConvexClassifier, model)


def _member_score_fn(member: nn.Module, balance: torch.Tensor) -> Callable[[torch.Tensor], torch.Tensor]:
    """f (N, *feature_shape) ↦ g_k(f) + b (N,): one member's score with the model's balance shift b."""

    def score(f: torch.Tensor) -> torch.Tensor:
        return member(f) + balance

    return score


class FeatureConvexRecipe:
    """The feature-convex paper's recipe: BCE on the logit s(x), optional Jacobian regulariser,
    projection onto nonnegative weights after every step, and the balance shift b fitted on
    the validation split (selection metric: balanced validation accuracy; with ``false_positive_rate``
    α, b flags at most a share α of the validation inputs of the other class and the metric is the
    share of sensitive ones flagged, the detection rate at that operating point).

    With ``margin_radius`` r > 0 the sensitive inputs' BCE is taken on the certified lower bound
    s(x) − r·Lip_p(φ)·‖∇_φ g(φ(x))‖_{p*} of the score over the ℓp ball of radius r around x (convexity
    of g gives s(x + δ) ≥ s(x) + ∇sᵀδ), so training pushes up the quantity the certificate uses,
    only where a certificate is wanted. Lists of radii and norms (``margin_radius=[4, 1, 0.04]``,
    ``margin_norm=[1, 2, inf]``) take the lowest bound over the union of the balls. Both terms use
    every input's own gradient from one backward pass with ``create_graph=True``
    (:func:`~asymcert.train.regularizers.per_input_gradients`), with training-mode batch norm's
    statistics held constant in the inputs (not in the weights) in that pass. With a warm-up, only
    epochs that started at the full radius compete for the best-validation checkpoint.
    """

    def __init__(self, config: TrainConfig) -> None:
        self._epoch_progress = 0.0
        self.threat_model: ResolvedThreatModel | None = None
        self.jacobian_reg = float(config.jacobian_reg)
        radii = config.margin_radius if isinstance(config.margin_radius, (list, tuple)) else [config.margin_radius]
        norms = (
            config.margin_norm if isinstance(config.margin_norm, (list, tuple)) else [config.margin_norm] * len(radii)
        )
        if radii == [0]:  # the margin loss is off (also for 0.0); its norms do not matter
            radii, norms = [], []
        self.margins = [(float(p), float(r)) for p, r in zip(norms, radii)]
        self.margin_radius = max((r for _, r in self.margins), default=0.0)
        self.margin_warmup = float(config.margin_warmup)
        self.margin_weight = float(config.margin_weight)
        self.sensitive_weight = float(config.sensitive_weight)
        self.train_at_balance = bool(config.train_at_balance)
        self.false_positive_rate = config.false_positive_rate
        # b is refitted after every epoch and one epoch is kept: each epoch's b is a candidate (union bound)
        self.false_positive_confidence = config.false_positive_confidence  # the budget's, for the run as a whole
        # each epoch's b is one candidate of those the run chooses from: a union bound over them
        self.epoch_confidence = per_candidate_confidence(config.false_positive_confidence, config.epochs)
        self.ensemble_training = str(config.ensemble_training)
        self.teacher_path = config.teacher
        self.teacher = load_teacher(config.teacher) if config.teacher else None  # loaded once, frozen
        self.distill_weight, self.distill_temperature = float(config.distill_weight), float(config.distill_temperature)
        self._teacher_batch: torch.Tensor | None = None
        if not self.sensitive_weight > 0:
            raise ValueError(f"sensitive_weight must be > 0, got {config.sensitive_weight}")
        if len(norms) != len(radii):
            raise ValueError(
                f"margin_radius {config.margin_radius} and margin_norm {config.margin_norm} must pair up: "
                f"one norm per radius (e.g. --set margin_radius=1 --set margin_norm=2, or lists of "
                f"equal length)"
            )
        if any(r < 0 or p < 1 for p, r in self.margins) or not 0 <= self.margin_warmup <= 1:
            raise ValueError(
                f"margin loss needs margin_radius ≥ 0 and margin_norm ≥ 1 (one norm per radius) and "
                f"0 ≤ margin_warmup ≤ 1; got {config.margin_radius}, {config.margin_norm}, "
                f"{config.margin_warmup}"
            )
        if not 0 < self.margin_weight <= 1:
            raise ValueError(f"margin_weight must be in (0, 1], got {config.margin_weight}")

    def use_threat_model(self, threat_model: ResolvedThreatModel | None) -> None:
        """Take the margin loss under ``threat_model`` (radii in its units; see
        :func:`~asymcert.certify.threat_model.threat_lower_bound`) instead of over raw-unit ℓp balls."""
        self.threat_model = threat_model

    supports_distillation = True
    supports_operating_point = True

    def prepare(self, model: nn.Module, train: Dataset) -> None:
        fc = _classifier(model)
        self._ready_teacher(model, tuple(train.x.shape[1:]))
        fc.feature_map.fit(train.x)
        fc.set_balance(0.0)
        fc.project()

    def on_epoch_start(self, model: nn.Module, epoch: int, progress: float) -> None:
        """Train on g(φ(x)) with b = 0, or with ``train_at_balance`` on g(φ(x)) + b, b as the last
        validation pass fitted it (the cross-entropy is then taken at the threshold the decision
        uses; g's own bias cannot absorb b, which is refitted every epoch, so this keeps pushing g
        up, an implicit regulariser measured in benchmarks/README.md)."""
        fc = _classifier(model)
        self._epoch_progress = progress
        if not self.train_at_balance:
            fc.set_balance(0.0)

    def margin_scale(self, progress: float) -> float:
        """The warm-up factor (0 → 1) of the margin radii at ``progress`` (0 → 1) of training."""
        if self.margin_warmup <= 0:
            return 1.0
        return min(1.0, progress / self.margin_warmup)

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        """The batch's loss. For a mean of convex networks g = (1/K) Σ g_k (a ``convex`` with
        ``member_scores``) trained with ``ensemble_training="members"``: the mean over members of each
        member's own loss on s_k = g_k(φ(x)) + b (its own gradient in the margin and Jacobian terms);
        the members' parameters are disjoint, so each member gets exactly its own loss's gradient / K."""
        fc = _classifier(model)
        if self.teacher is not None:  # the same (augmented) batch, no graph; used by _loss_of
            self._ready_teacher(model, tuple(x.shape[1:]))
            self._teacher_batch = teacher_scores(self.teacher, x)
        features = fc.features(x).detach()
        members = self._trained_members(fc)
        if not members:
            return self._loss_of(fc, fc.score_from_features, fc, features, x, y, progress)
        parts = [
            self._loss_of(fc, _member_score_fn(member, fc.balance), member, features, x, y, progress)
            for member in members
        ]
        stats = {key: sum(p[1][key] for p in parts) / len(parts) for key in parts[0][1]}
        return torch.stack([p[0] for p in parts]).mean(), stats

    def _trained_members(self, fc: FeatureConvexClassifier) -> list[nn.Module]:
        """The members whose own losses are averaged (empty: one loss on the model's score)."""
        if self.ensemble_training != "members" or not callable(getattr(fc.convex, "member_scores", None)):
            return []
        return list(cast(nn.ModuleList, fc.convex.members))

    def _loss_of(
        self,
        fc: FeatureConvexClassifier,
        score_fn: Callable[[torch.Tensor], torch.Tensor],
        module: nn.Module,
        features: torch.Tensor,
        x: torch.Tensor,
        y: torch.Tensor,
        progress: float,
    ) -> tuple[torch.Tensor, dict]:
        """The loss of the scores ``score_fn(features)`` (N,) of the inputs x (N, ...) with labels y (N,),
        whose batch norms live in ``module``, and a dict of floats to log."""
        needs_grad = self.jacobian_reg > 0 or self.margin_radius > 0
        stats: dict[str, float] = {}
        penalty = torch.zeros((), device=features.device)
        if needs_grad:  # every input's own gradient (see per_input_gradients for batch norm)
            score, grad = per_input_gradients(score_fn, features, module)
        else:
            score = score_fn(features)
        logit = score
        if needs_grad:
            if self.jacobian_reg > 0:
                reg = jacobian_penalty_from_grad(grad)
                stats["jac"] = reg.item()
                penalty = self.jacobian_reg * reg
            scale = self.margin_scale(progress)
            if self.margin_radius > 0 and scale > 0:
                # the lowest score over the union of the balls: the smallest of the per-norm bounds
                bound = torch.stack(
                    [self._lower_bound(fc, score, grad, x, scale * r, p) for p, r in self.margins if r > 0]
                ).amin(dim=0)
                logit = torch.where(y.bool(), bound, score)
                stats["margin_scale"] = scale
        weight = None if self.sensitive_weight == 1.0 else logit.new_tensor(self.sensitive_weight)
        bce = F.binary_cross_entropy_with_logits(logit, y.to(logit.dtype), pos_weight=weight)
        if self.margin_weight < 1.0 and logit is not score:  # the plain score keeps a share 1 − α
            plain = F.binary_cross_entropy_with_logits(score, y.to(score.dtype), pos_weight=weight)
            bce = self.margin_weight * bce + (1.0 - self.margin_weight) * plain
        stats["bce"] = bce.item()
        total = bce + penalty
        if self.teacher is not None and self._teacher_batch is not None:
            kd = distill_loss(score, self._teacher_batch, self.distill_temperature)
            stats["distill"] = kd.item()
            total = (1 - self.distill_weight) * total + self.distill_weight * kd
        return total, stats

    def _ready_teacher(self, model: nn.Module, input_shape: tuple[int, ...]) -> None:
        """Check the teacher's input shape against ``input_shape`` and move it to ``model``'s device (once)."""
        if self.teacher is None:
            return
        device = next(model.parameters()).device
        if next(self.teacher.parameters(), torch.empty(0, device=device)).device != device:
            self.teacher.to(device)
        if self.teacher_path is not None:
            check_teacher_input(self.teacher, self.teacher_path, input_shape)
            self.teacher_path = None  # checked once

    def _lower_bound(
        self, fc: FeatureConvexClassifier, score: torch.Tensor, grad: torch.Tensor, x: torch.Tensor, r: float, p: float
    ) -> torch.Tensor:
        """The lowest score the convexity bound allows over the ℓp ball (or the threat model's moves) of radius r."""
        if self.threat_model is None:
            return certified_lower_bound(score, grad, r, p, fc.feature_lipschitz(p))
        return threat_lower_bound(score, grad, x, fc.feature_map, fc.feature_lipschitz(p), self.threat_model, r, p)

    def after_step(self, model: nn.Module) -> None:
        fc = _classifier(model)
        fc.project()

    def evaluate(self, model: nn.Module, val: Dataset, batch_size: int) -> dict[str, float]:
        fc = _classifier(model)
        device = next(fc.parameters()).device
        fc.set_balance(0.0)
        scores = predict_scores(model, val.x, batch_size, device)
        b = operating_shift(scores, val.y, self.false_positive_rate, self.epoch_confidence)
        fc.set_balance(b)
        acc = float(((scores + b > 0).long() == val.y).float().mean())
        detection, false_positive = detection_rates(scores + b, val.y)
        metric = balanced_accuracy(scores + b, val.y) if self.false_positive_rate is None else detection
        out = {"metric": metric, "accuracy": acc, "balance": b}
        out |= {"detection_rate": detection, "false_positive_rate": false_positive}
        if self.margin_radius > 0:  # only epochs trained at the full margin radius may be selected
            out["eligible"] = float(self._epoch_progress >= self.margin_warmup)
        return out


RecipeFactory = Callable[[TrainConfig], Recipe]
"""``factory(config) -> Recipe``: a family's training recipe for one run's settings."""

_RECIPES: dict[str, RecipeFactory] = {}


def register_recipe(kind: str, factory: RecipeFactory) -> None:
    """Make :func:`recipe_for` use ``factory`` for models of ``kind`` (called by the family registry)."""
    _RECIPES[kind] = factory


def unregister_recipe(kind: str) -> None:
    """Forget the recipe of ``kind`` (nothing happens when none is registered)."""
    _RECIPES.pop(kind, None)


def recipe_for(model: nn.Module, config: TrainConfig) -> Recipe:
    """The recipe of ``model``'s family (``model.config()["kind"]``) for ``config``.

    Raises:
        UnknownNameError: no family of that kind is registered.
    """
    kind = model_config(model)["kind"]
    if kind not in _RECIPES:
        raise UnknownNameError(f"no training recipe for model kind {kind!r}; known: {', '.join(sorted(_RECIPES))}")
    if config.teacher is not None and not getattr(_RECIPES[kind], "supports_distillation", False):
        raise ConfigError(f"distillation (teacher={config.teacher!r}) is only supported by the feature-convex recipe")
    if config.false_positive_rate is not None and not getattr(_RECIPES[kind], "supports_operating_point", False):
        raise ConfigError(
            f"false_positive_rate={config.false_positive_rate!r} (an operating point for the balance shift b) is only "
            f"supported by the feature-convex recipe, not by {kind!r} models"
        )
    return _RECIPES[kind](config)
