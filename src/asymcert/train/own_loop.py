"""Your own training loop, certifiable: :func:`make_certifiable` wraps a model and its optimizer.

A user with a feature-convex model, a PyTorch optimizer and DataLoaders keeps their loop; asymcert
adds what makes its certificates hold and its radii large:

* the convexity constraint after every optimizer step (a step post-hook on the optimizer, so any
  loop that calls ``optimizer.step()`` stays safe);
* the family's loss as a function, :meth:`CertifiableTraining.loss`: binary cross-entropy on the
  score, on the certified lower bound of the score over an ℓp ball for sensitive inputs
  (``margin_radius``), plus the Jacobian regulariser (``jacobian_reg``); the same terms as
  :class:`~asymcert.train.recipes.FeatureConvexRecipe`;
* φ's data statistics (:meth:`CertifiableTraining.fit_feature_map`) and the balance shift b fitted on
  validation data, followed by a final check that refuses a model asymcert cannot vouch for
  (:meth:`CertifiableTraining.finish`).
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from typing import Any

import torch
from torch import nn
from torch.utils.hooks import RemovableHandle

from asymcert.data.tasks import Dataset
from asymcert.errors import ConfigError, InputError, ModelError
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.threat import ResolvedThreatModel, ThreatModel
from asymcert.train.balance import operating_shift
from asymcert.train.config import TrainConfig
from asymcert.train.recipes import FeatureConvexRecipe, predict_scores

_EVAL_BATCH = 4096
"""Inputs per forward pass when :meth:`CertifiableTraining.finish` scores the validation data."""

Batches = torch.Tensor | Iterable[Any]
"""Inputs (N, *input_shape) in raw units, or an iterable of batches ``x`` or ``(x, y, ...)`` (a DataLoader)."""


@dataclass
class CertifiableTraining:
    """A feature-convex model and its optimizer, made certifiable by :func:`make_certifiable`.

    Attributes:
        model: the classifier being trained (the user's own object, changed in place).
        optimizer: the user's optimizer; after each of its steps the model is projected.
        recipe: the family's loss terms for the chosen settings.
    """

    model: FeatureConvexClassifier
    optimizer: torch.optim.Optimizer
    recipe: FeatureConvexRecipe
    _hook: RemovableHandle | None = field(default=None, repr=False)
    _fitted: bool = field(default=False, repr=False)

    def fit_feature_map(self, x: Batches) -> None:
        """Fit φ's data statistics (e.g. the mean of ``shift``) on training inputs, set b = 0 and project.

        Args:
            x: training inputs (N, *input_shape), raw units, or a loader of batches.
        """
        inputs = _inputs(x)
        self.recipe.prepare(self.model, Dataset(inputs, torch.zeros(len(inputs), dtype=torch.long)))
        self._fitted = True

    def loss(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        """The family's training loss of one batch (a scalar to call ``backward()`` on).

        Args:
            x: (B, *input_shape) inputs in raw units.
            y: (B,) labels, 1 = sensitive (flagged), 0 = other.
        Raises:
            InputError: ``y`` not of shape (B,) or holding values other than 0 and 1 (labels {0, 2} gave a
                negative loss and training went on).
        Warns:
            UserWarning: once, when called before :meth:`fit_feature_map` (φ's statistics at their defaults).
        """
        if not isinstance(y, torch.Tensor) or y.shape != (x.shape[0],) or not bool(((y == 0) | (y == 1)).all()):
            found = torch.unique(y).tolist()[:5] if isinstance(y, torch.Tensor) else type(y).__name__
            raise InputError(
                f"loss takes labels of shape ({x.shape[0]},) with 1 = sensitive and 0 = other; got shape "
                f"{tuple(getattr(y, 'shape', ()))}, values {found}"
            )
        if not self._fitted:
            self._fitted = True  # warn once
            warnings.warn(
                "loss before fit_feature_map: φ's data statistics (shift means, standardize scales, hinge knots) "
                "are at their defaults; call training.fit_feature_map(train_inputs) first",
                UserWarning,
                stacklevel=2,
            )
        return self.recipe.loss(self.model, x, y, progress=1.0)[0]

    def finish(self, val: Batches, labels: torch.Tensor | None = None) -> float:
        """Check the model, then fit the balance shift b on validation data (at the operating point
        :func:`make_certifiable` was given: equal class accuracies, or at most ``false_positive_rate``
        of the other class flagged); returns b.

        Call it once training is done: b stays in the model, and a later :meth:`loss` would train at
        the threshold b (call ``model.set_balance(0.0)`` first to go on training as before).

        Args:
            val: a loader of ``(x, y)`` batches, or validation inputs (N, *input_shape) with ``labels``.
            labels: (N,) validation labels when ``val`` is a tensor.
        Raises:
            ConvexityError: the model is not one asymcert can certify (e.g. a constrained weight was
                made negative outside the optimizer), naming every problem.
            ConfigError: validation data without both classes, or not given as (x, y) batches or as
                inputs with ``labels``.
        """
        if labels is not None and not isinstance(val, torch.Tensor):
            raise ConfigError("finish takes labels only with a tensor of inputs; a loader gives (x, y) batches")
        x, y = (val, labels) if isinstance(val, torch.Tensor) else _pairs(val)
        if y is None or len(y) != len(x) or not bool((y == 1).any() and (y == 0).any()):
            raise ConfigError("finish needs validation inputs with labels of both classes (1 = sensitive, 0 = other)")
        self.model.validate()
        self.model.set_balance(0.0)
        device = next(self.model.parameters()).device
        scores = predict_scores(self.model, x, _EVAL_BATCH, device)  # eval mode, (N,) on the CPU
        recipe = self.recipe  # finish fits b once: at the confidence itself, no union bound over epochs
        b = operating_shift(scores, y.cpu(), recipe.false_positive_rate, recipe.false_positive_confidence)
        self.model.set_balance(b)
        return b

    def detach(self) -> None:
        """Remove the projection hook from the optimizer (the model is no longer kept valid)."""
        if self._hook is not None:
            self._hook.remove()
            self._hook = None


def make_certifiable(
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    *,
    margin_radius: float | Sequence[float] = 0.0,
    margin_norm: float | str | Sequence[float | str] = 2.0,
    jacobian_reg: float = 0.0,
    sensitive_weight: float = 1.0,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
    false_positive_rate: float | None = None,
    false_positive_confidence: float | None = None,
) -> CertifiableTraining:
    """Make a plain PyTorch training loop of a feature-convex model certifiable.

    Args:
        model: a :class:`~asymcert.models.FeatureConvexClassifier` (built with ``build_model``).
        optimizer: an optimizer over the model's parameters.
        margin_radius: radius of the certified-margin loss on sensitive inputs (raw input units; in
            ``threat_model``'s units when one is given);
            0 turns it off; a list takes the lowest bound over several balls.
        margin_norm: ℓp norm(s) p ≥ 1 of the margin balls (``math.inf`` or ``"inf"`` for ℓ∞), one per
            radius, or one for every radius.
        jacobian_reg: weight of the Jacobian regulariser.
        sensitive_weight: weight of the sensitive class in the cross-entropy.
        threat_model: take the margin loss over the moves this threat model allows (``margin_radius`` in
            its units); a :class:`~asymcert.threat.ThreatModel` must name features by index (or pass
            ``tm.resolve(names, d)``).
        false_positive_rate: the operating point :meth:`CertifiableTraining.finish` fits b for: None for
            equal class accuracies, α in [0, 1) to flag at most a share α of the other class.
        false_positive_confidence: with ``false_positive_rate``: the probability (0, 1) that the budget
            holds on new inputs from the validation data's distribution, not only on the validation data
            (valid when the model did not depend on the validation inputs given to ``finish``).
    Returns:
        A :class:`CertifiableTraining`; the optimizer now projects the model after every step.
    Raises:
        ModelError: ``model`` is not a feature-convex classifier.
        ConvexityError: the model is invalid before training starts.
        ConfigError: ``optimizer`` is not a torch optimizer, or holds none of the model's parameters.
        SettingsError: a loss setting out of range (names every problem).
    """
    if not isinstance(model, FeatureConvexClassifier):
        raise ModelError(f"make_certifiable trains feature-convex classifiers, got {type(model).__name__}")
    if not isinstance(optimizer, torch.optim.Optimizer):
        raise ConfigError(
            f"make_certifiable needs a torch.optim.Optimizer over the model's parameters, "
            f"got {type(optimizer).__name__}"
        )
    model.validate()
    held = {id(p) for group in optimizer.param_groups for p in group["params"]}
    if not any(id(p) in held for p in model.parameters()):
        raise ConfigError("the optimizer holds none of the model's parameters; build it from model.parameters()")
    config = TrainConfig(  # validates every setting (one-line SettingsError) as the CLI's settings are
        margin_radius=_setting(margin_radius),
        margin_norm=_setting(margin_norm),
        jacobian_reg=jacobian_reg,
        sensitive_weight=sensitive_weight,
        margin_warmup=0.0,
        train_at_balance=False,
        false_positive_rate=false_positive_rate,
        false_positive_confidence=false_positive_confidence,
    )
    recipe = FeatureConvexRecipe(config)
    if threat_model is not None:
        d = math.prod(model.input_shape)
        resolved = threat_model if isinstance(threat_model, ResolvedThreatModel) else threat_model.resolve(None, d)
        recipe.use_threat_model(resolved)
    model.set_balance(0.0)
    model.project()
    hook = optimizer.register_step_post_hook(lambda opt, args, kwargs: model.project())
    return CertifiableTraining(model, optimizer, recipe, hook)


def _setting(value: Any) -> Any:
    """A margin setting as :class:`TrainConfig` holds it: a sequence as a list, anything else as given
    (TrainConfig checks it)."""
    return list(value) if isinstance(value, Sequence) and not isinstance(value, str) else value


def _inputs(x: Batches) -> torch.Tensor:
    """Inputs as one tensor: ``x`` itself, or the first element of every batch of a loader, concatenated."""
    if isinstance(x, torch.Tensor):
        return x
    return torch.cat([b[0] if isinstance(b, (tuple, list)) else b for b in x])


def _pairs(loader: Iterable[Any]) -> tuple[torch.Tensor, torch.Tensor]:
    """All ``(x, y)`` of a loader of batches, concatenated."""
    batches = list(loader)
    if any(not isinstance(b, (tuple, list)) or len(b) < 2 for b in batches):
        raise ConfigError("finish needs a loader of (x, y) batches, or a tensor of inputs with labels=")
    if not batches:
        raise ConfigError("finish needs validation data; the loader gave no batches")
    return torch.cat([b[0] for b in batches]), torch.cat([b[1] for b in batches])
