"""The task registry: a task is data + which class is sensitive + defaults for model, training and reports.

A task's ``load(data_dir)`` returns a :class:`TaskData` with train/val/test splits already made, as
float32 tensors in raw input units (pixels in [0, 1]). Binary tasks label the sensitive class 1 and
the other class 0; multiclass tasks keep their class ids.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from asymcert.errors import DataError, UnknownNameError
from asymcert.threat import ThreatModel

INF = math.inf


@dataclass(frozen=True)
class Dataset:
    """An in-memory split. ``x``: (N, *input_shape) float32 in raw units; ``y``: (N,) int64."""

    x: torch.Tensor
    y: torch.Tensor

    def __post_init__(self) -> None:
        if self.x.shape[0] != self.y.shape[0]:
            raise DataError(f"dataset has {self.x.shape[0]} inputs but {self.y.shape[0]} labels")

    def __len__(self) -> int:
        return int(self.x.shape[0])

    def subset(self, index: torch.Tensor | slice) -> Dataset:
        """The inputs at ``index`` (a slice, a bool mask or integer indices)."""
        return Dataset(self.x[index], self.y[index])

    @staticmethod
    def join(*parts: Dataset) -> Dataset:
        """The inputs of ``parts`` one after the other, in that order."""
        return Dataset(torch.cat([p.x for p in parts]), torch.cat([p.y for p in parts]))


@dataclass
class TaskData:
    """The three splits of a task and what a model needs to know about them."""

    train: Dataset
    val: Dataset
    test: Dataset
    class_names: tuple[str, ...]
    """Names of the labels; for binary tasks ``(other, sensitive)`` so that index 1 is sensitive."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Extra facts, e.g. ``feature_scale`` (per-feature scale folded into a tabular feature map)."""

    @property
    def input_shape(self) -> tuple[int, ...]:
        return tuple(self.train.x.shape[1:])

    @property
    def num_classes(self) -> int:
        return len(self.class_names)


Augment = Callable[[torch.Tensor, torch.Generator], torch.Tensor]


def no_augment(x: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """The identity augmentation."""
    return x


@dataclass(frozen=True)
class Task:
    """A named learning problem. Everything a one-command run needs, with paper defaults."""

    name: str
    description: str
    load: Callable[[Path | None], TaskData]
    """``load(data_dir)``: read (or download) the data and return the split task data."""
    binary: bool = True
    augment: Augment = no_augment
    """Batch augmentation for training inputs: ``augment(x (B, *shape), generator) -> (B, *shape)``."""
    model: dict[str, Any] = field(default_factory=dict)
    """Default model config (see :func:`asymcert.models.build_model`), without the input shape."""
    train: dict[str, Any] = field(default_factory=dict)
    """Default training settings (keys of :class:`asymcert.train.TrainConfig`)."""
    presets: dict[str, dict[str, Any]] = field(default_factory=dict)
    """Named overrides, e.g. ``{"fast": {"epochs": 2, ...}}``; keys ``model`` / ``train``."""
    withheld_presets: dict[str, str] = field(default_factory=dict)
    """Presets this task's data rules out, each with the reason (said when one is asked for)."""
    report_radii: dict[float, tuple[float, ...]] = field(default_factory=dict)
    """Radii (raw input units) at which reports tabulate certified accuracy, per ℓp norm."""
    threat_model: ThreatModel | None = None
    """The task's default threat model (runs use it unless told otherwise); None: plain ℓp balls."""
    threat_report_radii: dict[float, tuple[float, ...]] = field(default_factory=dict)
    """Report radii in the units of :attr:`threat_model`, per ℓp norm."""
    pixels: bool = False
    """True when the inputs are 8-bit pixel values divided by 255 (in [0, 1]): radii name those units
    (:func:`asymcert.certify.result.raw_units`), not only "raw input units"."""

    @property
    def own_report_radii(self) -> dict[float, tuple[float, ...]]:
        """The report radii in the units its runs certify in by default: :attr:`threat_report_radii` for a task with
        a threat model (its runs train and certify under it), else :attr:`report_radii` (raw input units)."""
        return self.threat_report_radii if self.threat_model is not None else self.report_radii


_TASKS: dict[str, Task] = {}


def fast_preset() -> dict[str, dict[str, Any]]:
    """The ``fast`` preset every task has: two epochs (a smoke run)."""
    return {"fast": {"train": {"epochs": 2}}}


def register_task(task: Task) -> Task:
    """Add ``task`` to the registry (replacing one of the same name) and return it."""
    _TASKS[task.name] = task
    return task


def task_names() -> list[str]:
    """Names of every registered task, sorted."""
    return sorted(_TASKS)


def get_task(name: str) -> Task:
    """The registered task called ``name``.

    Raises:
        UnknownNameError: no such task; the message lists the known ones.
    """
    try:
        return _TASKS[name]
    except KeyError:
        raise UnknownNameError(f"unknown task {name!r}; known tasks: {', '.join(sorted(_TASKS))}") from None


def split_train_val(data: Dataset, val_fraction: float = 0.2, seed: int = 42) -> tuple[Dataset, Dataset]:
    """Hold out ``val_fraction`` of ``data`` as validation with a seeded permutation."""
    generator = torch.Generator().manual_seed(seed)
    perm = torch.randperm(len(data), generator=generator)
    n_val = round(len(data) * val_fraction)
    return data.subset(perm[n_val:]), data.subset(perm[:n_val])


def binary_subset(data: Dataset, sensitive: int, other: int | None) -> Dataset:
    """Keep labels ``sensitive`` and ``other`` (all other labels when ``other`` is None); relabel 1/0."""
    keep = (data.y == sensitive) if other is None else (data.y == sensitive) | (data.y == other)
    if other is None:
        keep = torch.ones_like(keep)
    sub = data.subset(keep)
    return Dataset(sub.x, (sub.y == sensitive).long())


def pixels_to_dataset(x: np.ndarray, y: np.ndarray) -> Dataset:
    """uint8 pixels (N, C, H, W) and labels (N,) → Dataset with x float32 in [0, 1] and y int64."""
    images = torch.from_numpy(np.ascontiguousarray(x)).to(torch.float32).div_(255.0)
    return Dataset(images, torch.from_numpy(np.asarray(y, dtype=np.int64)))


def balance_classes(y: np.ndarray, seed: int = 42) -> np.ndarray:
    """Indices that downsample every class of ``y`` to the size of the smallest one, drawn with a seeded RNG.

    Returns:
        Sorted int64 indices into ``y`` (original order kept).
    """
    rng = np.random.default_rng(seed)
    classes, counts = np.unique(y, return_counts=True)
    keep = [rng.choice(np.flatnonzero(y == c), size=counts.min(), replace=False) for c in classes]
    return np.sort(np.concatenate(keep)).astype(np.int64)


def _round_half_up(value: float) -> int:
    return math.floor(value + 0.5)


def stratified_split(
    y: np.ndarray, test_fraction: float = 0.2, val_fraction: float = 0.2, seed: int = 42
) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Split indices per class: ``test_fraction`` of each class to test, then ``val_fraction`` of the rest to val.

    Every split gets at least one example of every class. Each split's indices are shuffled (seeded),
    so that "the first k test inputs" are a random sample of both classes.

    Args:
        y: (N,) labels.
        test_fraction: share of each class held out for test (e.g. 0.2).
        val_fraction: share of each class's remaining examples held out for validation.
        seed: RNG seed; the same ``y`` and seed always give the same split.
    Returns:
        (train, val, test) int64 index arrays.
    Raises:
        DataError: a class has fewer than 3 examples (one per split).
    """
    rng = np.random.default_rng(seed)
    parts: tuple[list, list, list] = ([], [], [])
    for c in np.unique(y):
        index = rng.permutation(np.flatnonzero(y == c))
        n_test = max(1, _round_half_up(len(index) * test_fraction))
        n_val = max(1, _round_half_up((len(index) - n_test) * val_fraction))
        if len(index) - n_test - n_val < 1:
            raise DataError(
                f"class {c.item()!r} (in a binary task 1 is the sensitive class, 0 the other) has only "
                f"{len(index)} example(s); train, validation and test each need at least one (add examples of it)"
            )
        parts[2].append(index[:n_test])
        parts[1].append(index[n_test : n_test + n_val])
        parts[0].append(index[n_test + n_val :])
    return tuple(rng.permutation(np.concatenate(p)).astype(np.int64) for p in parts)  # type: ignore[return-value]


def feature_stats(x: torch.Tensor) -> dict[str, torch.Tensor]:
    """Per-feature mean and scale (standard deviation; 1 where a feature is constant) of (N, d) inputs.

    Returns:
        ``{"feature_mean": (d,), "feature_scale": (d,)}`` float32, in the inputs' raw units.
    """
    mean = x.mean(0)
    scale = x.std(0, unbiased=False)
    return {"feature_mean": mean, "feature_scale": torch.where(scale > 0, scale, torch.ones_like(scale))}


def task_data_from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    class_names: tuple[str, ...],
    *,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    seed: int = 42,
) -> TaskData:
    """Stratified, seeded train/val/test splits of in-memory arrays.

    Args:
        x: (N, *input_shape) inputs in raw units (converted to float32).
        y: (N,) integer labels (for binary tasks 1 = sensitive, 0 = other).
        class_names: names of the labels 0, 1, ...
        test_fraction, val_fraction, seed: see :func:`stratified_split`.
    Returns:
        TaskData; for tabular inputs (N, d) ``meta`` holds the training split's ``feature_mean`` and
        ``feature_scale`` (see :func:`feature_stats`).
    """
    train_i, val_i, test_i = stratified_split(y, test_fraction, val_fraction, seed)
    xs = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    ys = torch.from_numpy(np.asarray(y, dtype=np.int64))
    splits = [Dataset(xs[torch.from_numpy(i)], ys[torch.from_numpy(i)]) for i in (train_i, val_i, test_i)]
    meta = feature_stats(splits[0].x) if xs.ndim == 2 else {}
    train, val, test = splits
    return TaskData(train, val, test, class_names=tuple(class_names), meta=meta)
