"""Knowledge distillation: a frozen teacher's soft labels as an extra term of a recipe's loss.

The teacher is any model asymcert saved (a run folder or ``.safetensors``), loaded once with the
safe loader :func:`asymcert.checkpoint.load` (no pickle). It maps raw inputs (N, ...) to scores (N,)
(> 0 = sensitive) and is never trained: eval mode, no gradients, parameters frozen.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from asymcert.checkpoint import load, model_config
from asymcert.errors import AsymcertError, ConfigError


def load_teacher(path: str) -> nn.Module:
    """The teacher model of run folder (or checkpoint) ``path``, on CPU, in eval mode, frozen.

    Raises:
        ConfigError: missing, unreadable or foreign folder/file (one line naming it).
    """
    if not Path(path).exists():
        raise ConfigError(f"teacher {path!r}: no such run folder or checkpoint")
    try:
        teacher = load(path, device="cpu")
    except AsymcertError as exc:
        raise ConfigError(f"teacher {path!r} is not an asymcert model: {exc}") from None
    teacher.eval()
    for p in teacher.parameters():
        p.requires_grad_(False)
    return teacher


def check_teacher_input(teacher: nn.Module, path: str, input_shape: tuple[int, ...]) -> None:
    """Refuse a teacher whose stored ``input_shape`` differs from the task's (per-input shape, no batch axis).

    Raises:
        ConfigError: the shapes differ (one line naming the teacher and both shapes).
    """
    stored = model_config(teacher).get("input_shape")
    if stored is not None and tuple(int(s) for s in stored) != tuple(input_shape):
        raise ConfigError(
            f"teacher {path!r} takes inputs of shape {tuple(stored)}, but this task's are {tuple(input_shape)}"
        )


@torch.no_grad()
def teacher_scores(teacher: nn.Module, x: torch.Tensor) -> torch.Tensor:
    """The teacher's scores (N,) (float32, no graph) of the batch x (N, ...), in eval mode on x's device."""
    teacher.eval()
    return teacher(x).float().reshape(len(x))


def distill_loss(student: torch.Tensor, teacher: torch.Tensor, temperature: float) -> torch.Tensor:
    """T²·BCEWithLogits(student/T, sigmoid(teacher/T)), averaged over the batch.

    Args:
        student: the student's logits (N,) (with graph).
        teacher: the teacher's logits (N,) (no graph).
        temperature: T > 0; T² keeps the gradient's scale comparable across temperatures.
    """
    t = float(temperature)
    target = torch.sigmoid(teacher.to(student.dtype) / t)
    return t * t * F.binary_cross_entropy_with_logits(student / t, target)
