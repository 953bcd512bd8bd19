"""Checkpoints: one safetensors file holding the weights and, in its metadata, the JSON config.

Nothing is ever unpickled: safetensors stores raw tensors, and the config is JSON.
"""

from __future__ import annotations

import json
import os
import tempfile
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import nn

from asymcert.errors import CheckpointError

MODEL_FILE = "model.safetensors"
CONFIG_KEY = "asymcert_config"


def resolve(path: str | Path) -> Path:
    """The checkpoint file for ``path``: the file itself, or ``path/model.safetensors`` for a run folder."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves a half-written file."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", dir=path.parent)
    os.close(fd)
    try:
        write(Path(tmp))
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None) -> Path:
    """Save ``model`` (which must have ``config()``) as a safetensors file; a folder gets ``model.safetensors``.

    Returns:
        The file written.
    """
    path = Path(path)
    target = path / MODEL_FILE if (path.is_dir() or path.suffix == "") else path
    config = model.config()
    metadata = {CONFIG_KEY: json.dumps(config), "asymcert_meta": json.dumps(meta or {})}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return target


def read_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, meta) stored in a checkpoint, without loading its weights."""
    file = resolve(path)
    if not file.is_file():
        raise CheckpointError(f"no checkpoint at {path} (expected a .safetensors file or a run folder "
                              f"holding {MODEL_FILE})")
    try:
        from safetensors import safe_open
        with safe_open(str(file), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors checkpoint: {exc}") from exc
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{file} holds no asymcert model config (was it saved with asymcert.save?)")
    try:
        return json.loads(metadata[CONFIG_KEY]), json.loads(metadata.get("asymcert_meta", "{}"))
    except json.JSONDecodeError as exc:
        raise CheckpointError(f"{file}: corrupted model config: {exc}") from exc


def load(path: str | Path, device: str | torch.device = "cpu", validate: bool = True) -> nn.Module:
    """Load a model saved by :func:`save` (a ``.safetensors`` file or a run folder), in eval mode.

    Args:
        path: the file, or a run folder holding ``model.safetensors``.
        device: where to put the weights.
        validate: run the model's ``validate()`` (e.g. convexity) and fail on a violation.
    Raises:
        CheckpointError: missing, unreadable or corrupted file, or weights that do not fit the config.
        ConvexityError: the model's convexity-constrained weights are negative.
    """
    from asymcert.models import build_model

    config, _ = read_config(path)
    file = resolve(path)
    model = build_model(config)
    try:
        state = load_file(str(file), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is corrupted: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: weights do not match the stored config: {exc}") from exc
    model.to(device).eval()
    if validate and hasattr(model, "validate"):
        model.validate()
    return model
