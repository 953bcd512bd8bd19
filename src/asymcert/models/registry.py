"""Models are rebuilt from JSON configs: ``{"kind": <registered name>, "input_shape": [...], ...}``."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from asymcert.errors import AsymcertError, ConfigError, UnknownNameError
from asymcert.models.checks import config_int_list

_MODELS: dict[str, Callable[[dict[str, Any]], nn.Module]] = {}


def register_model(kind: str) -> Callable:
    """Decorator registering ``builder(config) -> nn.Module`` (or a class with ``from_config``) as ``kind``."""

    def deco(obj):
        _MODELS[kind] = getattr(obj, "from_config", obj)
        return obj

    return deco


def model_kinds() -> list[str]:
    """Every registered model kind."""
    _load_builtin()
    return sorted(_MODELS)


def build_model(config: dict[str, Any]) -> nn.Module:
    """Build a model (untrained, statistics unset) from its config.

    Raises:
        UnknownNameError: unknown ``kind``; the message lists the known ones.
        ConfigError: the config is not a JSON object, its ``input_shape`` is not a list of positive
            integers, a key the family needs is missing or of the wrong type, a value is out of
            range (a width ≤ 0 or not an integer, ...), or the model does not fit in memory.
    """
    _load_builtin()
    if not isinstance(config, dict):
        raise ConfigError(f"a model config must be a JSON object with a 'kind', got {type(config).__name__}")
    kind = config.get("kind")
    if not isinstance(kind, str) or kind not in _MODELS:
        raise UnknownNameError(f"unknown model kind {kind!r}; known: {', '.join(sorted(_MODELS))}")
    config_int_list(config.get("input_shape"), "input_shape", kind)
    try:
        return _MODELS[kind](dict(config))
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


def _load_builtin() -> None:
    import asymcert.models.feature_convex  # noqa: F401
    try:
        import asymcert.models.builtin  # noqa: F401  (other families register here)
    except ModuleNotFoundError as exc:  # pragma: no cover
        if exc.name != "asymcert.models.builtin":
            raise


_DEFAULT_CONFIGS: dict[str, dict[str, Any]] = {
    "feature-convex": {"kind": "feature-convex", "feature_map": [{"kind": "shift"}],
                       "convex": {"kind": "icnn", "widths": [200, 50]}},
}


def register_default_config(kind: str, config: dict[str, Any]) -> None:
    """The config ``--model KIND`` selects when a task's default model is of another family."""
    _DEFAULT_CONFIGS[kind] = dict(config)


def default_model_config(kind: str) -> dict[str, Any]:
    """The default config of model family ``kind`` (input shape added by the run)."""
    _load_builtin()
    if kind not in _DEFAULT_CONFIGS:
        raise UnknownNameError(f"unknown model family {kind!r}; known: {', '.join(sorted(_DEFAULT_CONFIGS))}")
    return dict(_DEFAULT_CONFIGS[kind])
