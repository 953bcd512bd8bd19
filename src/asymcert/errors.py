"""Exceptions with messages that name the problem. Every user-facing failure raises one of these."""

from __future__ import annotations


class AsymcertError(Exception):
    """Base class of every error asymcert raises on purpose."""


class InputError(AsymcertError, ValueError):
    """Inputs of the wrong shape, dtype or range, or containing NaN/Inf."""


class ModelError(AsymcertError, ValueError):
    """A model asymcert cannot vouch for: weights, statistics or settings that void its certificates
    (NaN weights, a non-positive scale, an ℓ∞-distance layer left at finite p, ...)."""


class ConvexityError(ModelError):
    """A feature-convex model asymcert cannot vouch for: g not an allowlisted input-convex network (or
    a constrained weight out of bounds), or φ without a valid Lipschitz constant."""


class CheckpointError(AsymcertError, OSError):
    """A missing, unreadable or corrupted checkpoint."""


class DataError(AsymcertError, OSError):
    """A dataset that is missing, corrupted, or in an unexpected format."""


class UnknownNameError(AsymcertError, KeyError):
    """An unknown task, model, certifier or norm name. The message lists the known ones."""

    def __str__(self) -> str:  # KeyError quotes its message; we want it plain
        return str(self.args[0]) if self.args else ""


class RunFolderBusyError(AsymcertError):
    """Another process is writing this run folder (it holds the folder's lock); a folder has one writer."""


class RunFolderConflictError(AsymcertError, ValueError):
    """A run folder that holds a run of another task, model or training settings than the one asked for."""


class PeerStoppedError(AsymcertError):
    """Under torchrun, another process of the job stopped (its own error says why) while this one waited for it."""


class MethodsFailedError(AsymcertError):
    """Some methods of a comparison failed; the report is written without them and names each one's error."""


class WriteError(AsymcertError, OSError):
    """A file that could not be written (disk full, no permission); the previous version is left intact."""


class ConfigError(AsymcertError, ValueError):
    """Settings that cannot work: an unknown device, a training setting of the wrong type or range."""


class SettingsError(ConfigError, UnknownNameError):
    """Training or model settings of the wrong type or range, or unknown ones; the message lists every problem.

    Also an :class:`UnknownNameError` (a ``KeyError``), as unknown setting names were refused with
    that class before, so code catching it keeps working.
    """

    __str__ = UnknownNameError.__str__


class UnsoundOptionError(AsymcertError, ValueError):
    """A certifier option that is unknown, out of range, or cannot give a sound certificate."""
