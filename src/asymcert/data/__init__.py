"""Datasets: on-disk formats, checksummed downloads, and the task registry.

Registered tasks (see :mod:`asymcert.data.builtin`): ``mnist-38``, ``fashion-mnist-shirts``,
``cifar10-catsdogs``, ``malimg``, ``breast-cancer`` (binary, sensitive = 1) and ``mnist``,
``fashion-mnist``, ``cifar10`` (10 classes). The user's own data: :func:`task_from_npz`,
:func:`task_from_csv`, :func:`task_from_image_folder`; Malimg at another image size:
:func:`make_malimg_task`. Checksummed downloads: :mod:`asymcert.data.download`.
"""

from asymcert.data import builtin as builtin  # registers the built-in tasks (after the registry in tasks)
from asymcert.data.malimg import make_malimg_task
from asymcert.data.tasks import Dataset, Task, TaskData, get_task, register_task, task_names
from asymcert.data.user import task_from_arrays, task_from_csv, task_from_image_folder, task_from_npz

__all__ = [
    "Dataset",
    "Task",
    "TaskData",
    "get_task",
    "make_malimg_task",
    "register_task",
    "task_from_arrays",
    "task_from_csv",
    "task_from_image_folder",
    "task_from_npz",
    "task_names",
]
