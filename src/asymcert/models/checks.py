"""Cheap checks: a model's own ``forward`` on every batch (O(1): dtype and shape only, no scan), and
the values of a model config at build time (one :class:`~asymcert.errors.ConfigError` naming the key).

A full scan for NaN/Inf and the input range belongs to :func:`asymcert.certify.inputs.check_inputs`,
which ``asymcert.certify`` runs; ``forward`` is on the training hot path and checks only what a
caller can get wrong without noticing (uint8 pixels, a missing batch dimension, a transposed image).
"""

from __future__ import annotations

import math
from typing import Any

import torch
from torch import nn

from asymcert.errors import ConfigError, InputError
from asymcert.nn.convex import parameter_dtype


def check_batch(x: torch.Tensor, input_shape: tuple[int, ...], who: str, model: nn.Module | None = None) -> None:
    """Refuse ``x`` unless it is a floating (N, *input_shape) tensor, no wider than ``model`` computes in.

    Raises:
        InputError: naming ``who`` (the model), the dtype or shape received and the one expected; float64 inputs
            for a float32 model (the model would have to round them; ``asymcert.certify`` takes them).
    """
    if not isinstance(x, torch.Tensor):
        raise InputError(f"{who} takes a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise InputError(
            f"{who} takes floating-point inputs in raw units, got dtype {x.dtype} (convert images with x.float() / 255)"
        )
    dtype = None if model is None else parameter_dtype(model)
    if dtype is not None and torch.finfo(x.dtype).bits > torch.finfo(dtype).bits:
        raise InputError(
            f"{who} computes in {dtype} and got {x.dtype} inputs; round them with x.to({dtype}) "
            "(asymcert.certify takes them as they are and lowers its radii for that rounding)"
        )
    if tuple(x.shape[1:]) != tuple(input_shape) or x.dim() != len(input_shape) + 1:
        expected = "(N, " + ", ".join(str(d) for d in input_shape) + ")"
        raise InputError(f"{who} takes inputs of shape {expected}, got {tuple(x.shape)}")


SEED_RANGE = (-(2**63), 2**64 - 1)
"""The seeds torch's generators take (``torch.Generator.manual_seed``): a smoothing seed outside them is refused."""


def config_int(value: Any, name: str, who: str, lowest: int = 1, highest: int | None = None) -> int:
    """``value`` when it is an integer in [``lowest``, ``highest``] (not a bool, not 2.5, not "3").

    Raises:
        ConfigError: naming ``who`` (the model family) and the setting ``name``.
    """
    if (
        isinstance(value, bool)
        or not isinstance(value, int)
        or value < lowest
        or (highest is not None and value > highest)
    ):
        span = f"≥ {lowest}" if highest is None else f"from {lowest} to {highest}"
        raise ConfigError(f"{who} model config: {name} = {value!r} must be an integer {span}")
    return value


def config_int_list(value: Any, name: str, who: str, allow_empty: bool = False) -> list[int]:
    """``value`` as a list when it is a list of integers ≥ 1 (non-empty unless ``allow_empty``).

    Raises:
        ConfigError: naming ``who`` and ``name``.
    """
    ok = (
        isinstance(value, (list, tuple))
        and (allow_empty or len(value) > 0)
        and all(isinstance(v, int) and not isinstance(v, bool) and v >= 1 for v in value)
    )
    if not ok:
        need = "a list of integers ≥ 1" if allow_empty else "a non-empty list of integers ≥ 1"
        raise ConfigError(f"{who} model config: {name} = {value!r} must be {need}")
    return list(value)


def config_input_range(value: Any, who: str) -> tuple[float, float] | None:
    """``value`` as (low, high) when it is None or two finite numbers with low < high (raw input units).

    Raises:
        ConfigError: naming ``who``.
    """
    if value is None:
        return None
    ok = (
        isinstance(value, (list, tuple))
        and len(value) == 2
        and all(isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v) for v in value)
    )
    if not ok or not value[0] < value[1]:
        raise ConfigError(
            f"{who} model config: input_range = {value!r} must be null or [low, high], "
            "two finite numbers with low < high"
        )
    return float(value[0]), float(value[1])
