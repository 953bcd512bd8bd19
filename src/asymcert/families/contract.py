"""The contract of a model family: everything asymcert needs to build, train and certify it.

A family is one :class:`Family` value, declared in one module of this package and registered once
(:func:`asymcert.families.register_family`). Nothing outside the family modules branches on a
family's name: the pipeline, compare, reports and the CLI read these fields.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from torch import nn

from asymcert.certify.api import CertifierSpec
from asymcert.models.registry import ModelBuilder
from asymcert.train.recipes import RecipeFactory

CPU_EPOCHS = 20
"""Training epochs of every method in a CPU-sized comparison (``asymcert compare`` without ``--paper-scale``)."""

SMALL_CNN: dict[str, Any] = {"arch": "cnn", "channels": [16, 32], "fc": [100]}
"""The small CNN of the baselines in a comparison (the paper's smoothing base model is a ResNet-18)."""

CPU_ADAM: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 1e-3,
    "lr_decay": 0.95,
    "schedule": "exponential",
    "batch_size": 128,
    "jacobian_reg": 0.0,
    "weight_decay": 0.0,
}
"""Training settings of the baselines in a comparison (epochs added per method)."""


@dataclass(frozen=True)
class TaskFacts:
    """What a family may derive its settings from: facts about the task and its data.

    Attributes:
        binary: the task is a sensitive-class task (labels 1 = sensitive, 0 = other).
        num_classes: number of labels in the task's data.
        report_radii: radii the task reports, per norm p (``math.inf`` for ℓ∞), raw input units (also for a task
            with a threat model: recipes that train on raw-unit balls take these, not its threat-model radii).
        train: the task's own training settings (for its default model).
    """

    binary: bool
    num_classes: int
    report_radii: Mapping[float, Sequence[float]] = field(default_factory=dict)
    train: Mapping[str, Any] = field(default_factory=dict)

    @property
    def largest_linf_radius(self) -> float | None:
        """The task's largest ℓ∞ report radius (None when it reports none)."""
        radii = self.report_radii.get(math.inf)
        return max(radii) if radii else None


@dataclass(frozen=True)
class CompareScale:
    """How large a comparison is: ``paper_scale`` (the papers' epochs and sizes) or CPU-sized defaults."""

    paper_scale: bool = False
    n_smoothing: int = 10_000
    images: bool = True
    """The task's inputs are images (C, H, W): convolutional nets where the papers use them; else (flat feature
    vectors, e.g. SpamBase) MLPs, since a CNN cannot read them."""

    def epochs(self, paper_epochs: int) -> int:
        """``paper_epochs`` at paper scale, else :data:`CPU_EPOCHS`."""
        return paper_epochs if self.paper_scale else CPU_EPOCHS

    def cnn_or(self, mlp: dict[str, Any]) -> dict[str, Any]:
        """:data:`SMALL_CNN` for image inputs, else the architecture ``mlp``."""
        return dict(SMALL_CNN) if self.images else dict(mlp)


@dataclass(frozen=True)
class MethodSpec:
    """One method of ``asymcert compare``: a family with its model, training and certifier settings.

    Attributes:
        family: the model family's name.
        label: the method's name in reports.
        model: model config overrides; None: the task's default model when it is of this family,
            else the family's default config.
        train: training settings on top of the family's (or the task's) defaults.
        certify: ``{"method": certifier name, **options}`` for :func:`asymcert.certify`.
    """

    family: str
    label: str
    model: Mapping[str, Any] | None
    train: Mapping[str, Any]
    certify: Mapping[str, Any]


def no_model_settings(facts: TaskFacts) -> dict[str, Any]:
    """A family that derives no model keys from the task."""
    return {}


def task_training(facts: TaskFacts) -> dict[str, Any]:
    """The task's own training settings (the default for families without training defaults of their own)."""
    return dict(facts.train)


def no_methods(scale: CompareScale) -> dict[str, MethodSpec]:
    """A family that adds no method to ``asymcert compare``."""
    return {}


@dataclass(frozen=True)
class Family:
    """A model family.

    Attributes:
        kind: the ``"kind"`` of its model configs (and its name).
        description: one line for listings.
        build: ``build(config) -> nn.Module``, an untrained model (see :func:`asymcert.models.build_model`).
        default_config: the model config ``--model KIND`` selects (without ``input_shape``).
        recipe: ``recipe(TrainConfig) -> Recipe``, its training recipe.
        certifiers: the certifiers it provides; ``model.certifier`` names the default one.
        model_settings: model keys derived from the task (e.g. the number of classes).
        train_defaults: training settings when the task's default model is of another family.
        compare_methods: the methods it adds to ``asymcert compare``, by name.
    """

    kind: str
    description: str
    build: ModelBuilder
    default_config: Mapping[str, Any]
    recipe: RecipeFactory
    certifiers: tuple[CertifierSpec, ...]
    model_settings: Callable[[TaskFacts], dict[str, Any]] = no_model_settings
    train_defaults: Callable[[TaskFacts], dict[str, Any]] = task_training
    compare_methods: Callable[[CompareScale], dict[str, MethodSpec]] = no_methods

    def default_model_config(self) -> dict[str, Any]:
        """A copy of :attr:`default_config` with its ``kind``."""
        return {**dict(self.default_config), "kind": self.kind}

    def owns(self, model: nn.Module) -> bool:
        """True when ``model`` is one of this family's (its ``config()["kind"]`` is :attr:`kind`)."""
        config = getattr(model, "config", None)
        return callable(config) and config().get("kind") == self.kind
