"""Models are rebuilt from JSON configs: ``{"kind": <family name>, "input_shape": [...], ...}``.

The builders are registered by the model families (:func:`asymcert.families.register_family`);
this module only holds them, so that a model can be rebuilt (e.g. by :func:`asymcert.load`)
without knowing which family it belongs to.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from torch import nn

from asymcert.errors import AsymcertError, ConfigError, UnknownNameError
from asymcert.models.checks import config_int_list

ModelBuilder = Callable[[dict[str, Any]], nn.Module]
"""``builder(config) -> nn.Module``: an untrained model (data statistics unset) from its JSON config."""

_BUILDERS: dict[str, ModelBuilder] = {}


def register_builder(kind: str, builder: ModelBuilder) -> None:
    """Make ``build_model({"kind": kind, ...})`` call ``builder`` (called by the family registry)."""
    _BUILDERS[kind] = builder


def unregister_builder(kind: str) -> None:
    """Forget the builder of ``kind`` (nothing happens when none is registered)."""
    _BUILDERS.pop(kind, None)


def model_kinds() -> list[str]:
    """Every registered model kind."""
    return sorted(_BUILDERS)


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build a model (untrained, statistics unset) from its config.

    Raises:
        UnknownNameError: unknown ``kind``; the message lists the known ones.
        ConfigError: the config is not a JSON object, its ``input_shape`` is not a list of positive
            integers, a key the family needs is missing or of the wrong type, a value is out of
            range (a width ≤ 0 or not an integer, ...), or the model does not fit in memory.
    """
    if not isinstance(config, dict):
        raise ConfigError(f"a model config must be a JSON object with a 'kind', got {type(config).__name__}")
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in _BUILDERS:
        raise UnknownNameError(f"unknown model kind {kind!r}; known: {', '.join(sorted(_BUILDERS))}")
    config_int_list(config.get("input_shape"), "input_shape", kind)
    try:
        return _BUILDERS[kind](dict(config))
    except AsymcertError:
        raise
    except KeyError as exc:
        raise ConfigError(f"{kind} model config: missing key {exc}") from exc
    except (TypeError, AttributeError) as exc:  # a value of the wrong JSON type (a list where a dict belongs, ...)
        raise ConfigError(f"{kind} model config: a value has the wrong type ({exc})") from exc
    except (ValueError, OverflowError, IndexError) as exc:  # a family's own check, or a value out of range
        raise ConfigError(f"{kind} model config: {exc}") from exc
    except (RuntimeError, MemoryError) as exc:  # e.g. widths asking for more memory than there is
        first = (str(exc).strip().splitlines() or [type(exc).__name__])[0]
        raise ConfigError(f"{kind} model config cannot be built: {first}") from exc
