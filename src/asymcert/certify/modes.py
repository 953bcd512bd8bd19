"""How certifiers evaluate a model: in eval mode (restored afterwards) and at a checked precision."""

from __future__ import annotations

from contextlib import contextmanager
from typing import Iterator

from torch import nn

PRECISIONS = ("float64", "model")


def check_precision(precision: str) -> None:
    """Reject a precision other than ``"float64"`` (recompute in float64) or ``"model"`` (model dtype)."""
    if precision not in PRECISIONS:
        raise ValueError(f"precision must be 'float64' or 'model', got {precision!r}")


@contextmanager
def eval_mode(model: nn.Module) -> Iterator[nn.Module]:
    """Put ``model`` in eval mode for the block and restore its training flag after, even on error."""
    was_training = model.training
    model.eval()
    try:
        yield model
    finally:
        model.train(was_training)
