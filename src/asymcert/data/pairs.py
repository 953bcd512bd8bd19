"""Binary tasks made of two classes of a multi-class task (run spec ``{"name": TASK, "pair": [a, b]}``)."""

from __future__ import annotations

import copy
from pathlib import Path

from asymcert.data.tasks import Task, TaskData, binary_subset, get_task
from asymcert.data.user import IMAGE_MODEL, IMAGE_TRAIN
from asymcert.errors import ConfigError

PAIR_MODEL = copy.deepcopy(IMAGE_MODEL)
"""A pair's default model: the authors' MNIST architecture (ICNN 200-50 with pass-throughs on φ(x) = x − μ)."""
PAIR_TRAIN = {**IMAGE_TRAIN, "epochs": 5, "seed": 0, "device": "cpu"}
"""A pair's default training: the authors' recipe (SGD lr 1e-3, momentum 0.9, decay 0.99, batch 64, λ = 0.01),
5 epochs instead of 60."""

_COUNTERPART = {"mnist": "mnist-38", "fashion-mnist": "fashion-mnist-shirts", "cifar10": "cifar10-catsdogs"}


def pair_report_radii(task_name: str) -> dict[float, tuple[float, ...]]:
    """Radii (raw input units, per norm p) at which a pair's certified accuracy is tabulated: those of the
    task's binary counterpart (MNIST / Fashion-MNIST pairs: ``mnist-38`` / ``fashion-mnist-shirts``,
    CIFAR-10 pairs ``cifar10-catsdogs``; any other task its own report radii)."""
    return dict(get_task(_COUNTERPART.get(task_name, task_name)).report_radii)


def pair_data(data: TaskData, sensitive: int, other: int) -> TaskData:
    """The binary task (sensitive 1 / other 0) of two classes of a multiclass task, every split kept.

    Args:
        data: the multiclass task data (labels are class ids).
        sensitive, other: class ids.
    Returns:
        TaskData with ``class_names = (other name, sensitive name)``.
    """
    names = (data.class_names[other], data.class_names[sensitive])
    return TaskData(
        binary_subset(data.train, sensitive, other),
        binary_subset(data.val, sensitive, other),
        binary_subset(data.test, sensitive, other),
        class_names=names,
    )


def pair_task(task: Task, sensitive: int, other: int) -> Task:
    """The binary task "class ``sensitive`` (1) vs class ``other`` (0)" of the multi-class ``task``.

    Its data are the two classes of every split of ``task`` (:func:`pair_data`); its defaults are
    :data:`PAIR_MODEL` and :data:`PAIR_TRAIN`, its report radii those of :func:`pair_report_radii`.

    Raises:
        ConfigError: ``task`` is binary, or the class ids are not two different integers.
    """
    if task.binary:
        raise ConfigError(f"a class pair needs a multi-class task; {task.name!r} is binary")
    for c in (sensitive, other):
        if isinstance(c, bool) or not isinstance(c, int) or c < 0:
            raise ConfigError(f"a class pair is two class ids (integers ≥ 0), got {sensitive!r}, {other!r}")
    if sensitive == other:
        raise ConfigError(f"a class pair needs two different classes, got {sensitive} twice")

    def load(data_dir: Path | None) -> TaskData:
        data = task.load(data_dir)
        if max(sensitive, other) >= data.num_classes:
            raise ConfigError(f"{task.name} has classes 0–{data.num_classes - 1}; no class {max(sensitive, other)}")
        return pair_data(data, sensitive, other)

    return Task(
        name=f"{task.name}-{sensitive}-vs-{other}",
        description=f"{task.description}: class {sensitive} (sensitive) vs class {other}",
        load=load,
        binary=True,
        augment=task.augment,
        model=copy.deepcopy(PAIR_MODEL),
        train=dict(PAIR_TRAIN),
        report_radii=pair_report_radii(task.name),
    )
