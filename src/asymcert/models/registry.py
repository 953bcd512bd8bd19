"""Models are rebuilt from JSON configs: ``{"kind": <registered name>, "input_shape": [...], ...}``."""

from __future__ import annotations

from typing import Any, Callable

from torch import nn

from asymcert.errors import UnknownNameError

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
    """
    _load_builtin()
    kind = config.get("kind")
    if kind not in _MODELS:
        raise UnknownNameError(f"unknown model kind {kind!r}; known: {', '.join(sorted(_MODELS))}")
    return _MODELS[kind](dict(config))


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
