"""Exceptions with messages that name the problem. Every user-facing failure raises one of these."""

from __future__ import annotations


class AsymcertError(Exception):
    """Base class of every error asymcert raises on purpose."""


class InputError(AsymcertError, ValueError):
    """Inputs of the wrong shape, dtype or range, or containing NaN/Inf."""


class ConvexityError(AsymcertError, ValueError):
    """A model whose convexity-constrained weights are negative (its certificates would be unsound)."""


class CheckpointError(AsymcertError, OSError):
    """A missing, unreadable or corrupted checkpoint."""


class DataError(AsymcertError, OSError):
    """A dataset that is missing, corrupted, or in an unexpected format."""


class UnknownNameError(AsymcertError, KeyError):
    """An unknown task, model, certifier or norm name. The message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""
