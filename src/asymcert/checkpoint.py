"""Checkpoints: one safetensors file holding the weights and, in its metadata, the JSON config.

Nothing is ever unpickled: safetensors stores raw tensors, and the config is JSON.
"""

from __future__ import annotations

import contextlib
import json
import os
import signal
import tempfile
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol, cast

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from torch.nn.modules.module import (
    register_module_module_registration_hook,
    register_module_parameter_registration_hook,
)

try:  # POSIX: temporary files are locked while written (Windows: no fcntl, and no such lock)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from asymcert.errors import AsymcertError, CheckpointError, ConfigError, ModelError, UnknownNameError, WriteError
from asymcert.jsontext import JsonTextError, parse_json
from asymcert.models import build_model

MODEL_FILE = "model.safetensors"
CONFIG_KEY = "asymcert_config"
TEMP_TAG = ".asymcert-"
TEMP_SUFFIX = ".tmp"
"""A temporary file asymcert writes beside a target ``name`` is ``.<name>.asymcert-<8 random characters>.tmp``
(:func:`atomic_write`), so that it is never mistaken for a user's file."""
BUILD_STEPS_PER_TENSOR = 4
"""While :func:`load` builds the shape-only model, at most this many modules and parameters are
registered per tensor the file holds (plus :data:`BUILD_STEPS_SLACK`); asymcert's models register
about 1.4. A config asking for more (e.g. ``{"kind": "mean", "count": 10**7}`` in a 15 KB file)
cannot match the file, and is refused once it passes the bound, before it builds the rest."""
BUILD_STEPS_SLACK = 64


def resolve(path: str | Path) -> Path:
    """The checkpoint file for ``path``: the file itself, or ``path/model.safetensors`` for a run folder."""
    path = Path(path)
    return path / MODEL_FILE if path.is_dir() else path


def current_umask() -> int:
    """The process's file-creation mask (read by setting and restoring it)."""
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def _reason(exc: Exception) -> str:
    """One line saying why an I/O call failed (``strerror``, else the first line of the message)."""
    lines = str(exc).strip().splitlines()
    return getattr(exc, "strerror", None) or (lines[0] if lines else type(exc).__name__)


@dataclass
class Staged:
    """A file written whole under its temporary name beside ``path`` (:func:`stage`), not yet renamed onto it.

    Attributes:
        path: the target; tmp: ``.<name>.asymcert-<8 random characters>.tmp`` beside it; fd: an open descriptor
            of ``tmp`` holding an OS lock on it (POSIX ``flock``; -1 elsewhere) until :func:`discard`, so that no
            other process takes it for the leftover of a killed write (:func:`is_stale_temp`).
    """

    path: Path
    tmp: Path
    fd: int = -1


def stage(path: Path, write: Any) -> Staged:
    """Call ``write(tmp)`` for a temporary file beside ``path``, flush it to disk and give it the permissions of a
    file the user creates (``0o666 & ~umask``; ``mkstemp`` alone gives 0600); :func:`commit` renames it onto
    ``path``. ``path``'s folder must exist.

    Raises:
        WriteError: writing failed (disk full, no permission, ...): one line naming ``path``; the temporary file
            is removed and ``path`` is as it was.
    """
    path = Path(path)
    staged = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}{TEMP_TAG}", suffix=TEMP_SUFFIX, dir=path.parent)
        staged = Staged(path, Path(tmp), fd)
        if fcntl is not None:
            with contextlib.suppress(OSError):  # (a file system without flock: written unlocked, as on Windows)
                fcntl.flock(fd, fcntl.LOCK_EX)  # (its own new file: never waits)
        else:
            os.close(fd)
            staged.fd = -1
        write(staged.tmp)
        with open(staged.tmp, "rb") as f:
            os.fsync(f.fileno())  # a full disk may only show here, not in write()
        os.chmod(staged.tmp, 0o666 & ~current_umask())
        return staged
    except BaseException as exc:
        discard(staged)
        # (safetensors reports its own I/O failures as SafetensorError; our own errors pass through as they are)
        if isinstance(exc, (OSError, SafetensorError)) and not isinstance(exc, AsymcertError):
            raise WriteError(f"could not write {path}: {_reason(exc)}; any previous version is left intact") from exc
        raise


def commit(*staged: Staged) -> None:
    """Rename every staged file onto its target, in order, with SIGINT and SIGTERM held back until the last rename
    (in the main thread: :func:`signals_held`), so that a stopped command leaves either none or all of them renamed
    (a results file and the record that describes it change together; SIGKILL cannot be held back).

    Raises:
        WriteError: a rename failed (the files renamed before it stay renamed).
    """
    with signals_held():
        for s in staged:
            try:
                os.replace(s.tmp, s.path)
            except OSError as exc:
                raise WriteError(f"could not write {s.path}: {_reason(exc)}") from exc
    for folder in dict.fromkeys(s.path.parent for s in staged):
        _sync_folder(folder)


def _sync_folder(folder: Path) -> None:
    """Flush ``folder``'s entries to disk, so that a rename into it survives a power loss (POSIX; where a folder
    cannot be opened or synced, e.g. on Windows, the rename stands as the operating system keeps it)."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def discard(*staged: Staged | None) -> None:
    """Release the staged files' locks and remove the temporary files not renamed."""
    for s in staged:
        if s is None:
            continue
        if s.tmp.exists() and not s.tmp.is_symlink():
            s.tmp.unlink(missing_ok=True)
        if s.fd >= 0:
            os.close(s.fd)
            s.fd = -1


def atomic_write(path: Path, write: Any) -> None:
    """Call ``write(tmp_path)`` then rename onto ``path``, so a crash never leaves a half-written file
    (:func:`stage`, then :func:`commit`); ``path``'s folder is created when missing.

    The temporary file is ``.<name>.asymcert-<8 random characters>.tmp`` next to ``path`` (a process killed
    before the rename leaves it; :func:`asymcert.runfolder.remove_stale_temp_files` cleans up files of that
    pattern only, and never one a live process holds: :func:`is_stale_temp`).

    Raises:
        WriteError: writing failed (disk full, no permission, ...): one line naming ``path``; the
            previous ``path``, if any, is left as it was.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise WriteError(f"could not write {path}: {_reason(exc)}; any previous version is left intact") from exc
    staged = stage(path, write)
    try:
        commit(staged)
    finally:
        discard(staged)


STALE_AFTER_SECONDS = 10.0
"""A temporary file no process locks is a killed write's leftover once it is this old (a live write locks its file
within microseconds of creating it; :func:`is_stale_temp`)."""


def is_stale_temp(path: Path) -> bool:
    """Whether the temporary file ``path`` (of :func:`stage`'s pattern) is a killed write's leftover: no process
    holds its lock, and it is older than :data:`STALE_AFTER_SECONDS` (where locks are not available: any age)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return False
    try:
        if fcntl is None:
            return True
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            return False  # (a live write holds it)
        return time.time() - os.fstat(fd).st_mtime > STALE_AFTER_SECONDS
    finally:
        os.close(fd)


@contextmanager
def signals_held() -> Iterator[None]:
    """Hold back SIGINT and SIGTERM for the block, in the main thread: their Python handlers are swapped for one
    that notes them, and after the block the handlers are put back and the noted signal raised again, to the
    handler it was meant for (SIGTERM before SIGINT: a stop request outranks an interrupt; each once). Blocking
    them with ``pthread_sigmask`` would not do: another thread, e.g. one of PyTorch's, would take them."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    noted: set[int] = set()
    wanted = (signal.SIGINT, signal.SIGTERM)
    old = {s: signal.getsignal(s) for s in wanted}
    held = {s: h for s, h in old.items() if h is not None}  # (None: a handler set outside Python, left alone)
    for s in held:
        signal.signal(s, lambda signum, frame: noted.add(signum))
    try:
        yield
    finally:
        _restore_handlers(held)
        for signum in (signal.SIGTERM, signal.SIGINT):
            if signum in noted:
                signal.raise_signal(signum)
                break


def _restore_handlers(handlers: dict[Any, Any]) -> None:
    """Put every handler of ``handlers`` back, even when one raises as soon as it is back (a signal that arrives
    meanwhile): the restoring goes on, and the first such exception is raised once all are back."""
    todo, raised = list(handlers.items()), None
    while todo:
        try:
            while todo:
                signal.signal(*todo[0])
                todo.pop(0)
        except BaseException as exc:  # (the next round sets the same handler again: idempotent)
            raised = raised or exc
    if raised is not None:
        raise raised


@contextmanager
def created_folders(folder: Path) -> Iterator[Path]:
    """Make ``folder`` and its missing parents for the block; if the block raises (a refusal, an interrupt), remove
    the ones made here that are still empty, so that a refused command leaves nothing behind. Only folders this
    call made are removed: each is made on its own, walking the path as written (``a/../b`` makes ``a``, and a
    ``b`` that was there stays).

    Raises:
        WriteError: the folder cannot be made.
    """
    folder = Path(folder)
    made: list[Path] = []
    at = Path(folder.anchor) if folder.is_absolute() else Path()
    try:
        for part in folder.parts[1:] if folder.is_absolute() else folder.parts:
            at = at / part
            if not at.is_dir():
                try:
                    os.mkdir(at)
                except FileExistsError:  # (made meanwhile by another process: not ours)
                    continue
                made.append(at.resolve())
    except OSError as exc:
        _remove_empty(made)
        raise WriteError(f"could not create {folder}: {_reason(exc)}") from exc
    try:
        yield folder
    except BaseException:
        _remove_empty(made)
        raise


def _remove_empty(folders: list[Path]) -> None:
    """Remove ``folders`` (made in this order) that are empty, the last made first."""
    for d in reversed(folders):
        with contextlib.suppress(OSError):
            d.rmdir()


class _Configurable(Protocol):
    def config(self) -> dict[str, Any]: ...


def model_config(model: nn.Module) -> dict[str, Any]:
    """``model.config()``: the JSON config that rebuilds the model's architecture (every asymcert model has it)."""
    return cast(_Configurable, model).config()


def save(model: nn.Module, path: str | Path, meta: dict[str, Any] | None = None, validate: bool = True) -> Path:
    """Save ``model`` (which must have ``config()``) as a safetensors file; a folder gets ``model.safetensors``.

    Args:
        validate: refuse a model :func:`load` would refuse (the model ``load`` rebuilds fails its
            ``validate()``: e.g. a negative constrained weight, NaN weights), before anything is written.
            ``False`` keeps it anyway (a checkpoint mid-training), read back with ``load(..., validate=False)``.

    Returns:
        The file written.

    Raises:
        ModelError: (``validate``) the model's own problem, e.g. :class:`ConvexityError`, and the way out.
    """
    path = Path(path)
    target = path / MODEL_FILE if (path.is_dir() or path.suffix == "") else path
    config = model_config(model)
    metadata = {CONFIG_KEY: json.dumps(config), "asymcert_meta": json.dumps(meta or {})}
    tensors = {k: v.detach().cpu().contiguous().clone() for k, v in model.state_dict().items()}
    if validate:
        _check_loadable(config, tensors)
    atomic_write(target, lambda tmp: save_file(tensors, str(tmp), metadata=metadata))
    return target


def _check_loadable(config: dict[str, Any], tensors: dict[str, torch.Tensor]) -> None:
    """Refuse to save what :func:`load` would refuse: the model rebuilt from ``config`` and ``tensors``, as
    ``load`` rebuilds it (e.g. an ℓ∞-dist net at p = ∞, whatever p it was trained at), fails its ``validate()``.

    Raises:
        ModelError: that model's own problem (e.g. :class:`ConvexityError`), and the way out.
    """
    rebuilt = build_model(config)
    try:
        rebuilt.load_state_dict(tensors, strict=True)
    except RuntimeError as exc:  # e.g. a parameter registered after the model was built
        first = " ".join(str(exc).split())[:300]
        raise ModelError(f"the model's weights do not fit its config() ({first}); not saved") from None
    check = getattr(rebuilt, "validate", None)
    try:
        if check is not None:
            check()
    except ModelError as exc:
        raise type(exc)(
            f"{exc} — not saved: asymcert.load would refuse it (save(..., validate=False) keeps it anyway, "
            "e.g. mid-training, and load(..., validate=False) reads it back)"
        ) from None


def read_config(path: str | Path) -> tuple[dict[str, Any], dict[str, Any]]:
    """(config, meta) stored in a checkpoint, without loading its weights.

    Both are read with :func:`asymcert.jsontext.parse_json` (bounded nesting and number length,
    no repeated keys), so hostile metadata is one :class:`CheckpointError`, never a crash.

    Raises:
        CheckpointError: no file, not a safetensors file, no config, or a config or meta that is not
            one strict JSON object (the message names the file).
    """
    file = resolve(path)
    if not file.is_file():
        raise CheckpointError(
            f"no checkpoint at {path} (expected a .safetensors file or a run folder holding {MODEL_FILE})"
        )
    try:
        with safe_open(str(file), framework="pt") as fh:
            metadata = fh.metadata() or {}
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is not a readable safetensors checkpoint: {exc}") from exc
    if CONFIG_KEY not in metadata:
        raise CheckpointError(f"{file} holds no asymcert model config (was it saved with asymcert.save?)")
    try:
        config, meta = parse_json(metadata[CONFIG_KEY]), parse_json(metadata.get("asymcert_meta", "{}"))
    except JsonTextError as exc:
        raise CheckpointError(f"{file}: corrupted model config: {exc}") from None
    for what, value in (("model config", config), ("metadata", meta)):
        if not isinstance(value, dict):
            raise CheckpointError(f"{file}: the stored {what} is a JSON {type(value).__name__}, not an object")
    return config, meta


def load(path: str | Path, device: str | torch.device = "cpu", validate: bool = True) -> nn.Module:
    """Load a model saved by :func:`save` (a ``.safetensors`` file or a run folder), in eval mode.

    Args:
        path: the file, or a run folder holding ``model.safetensors``.
        device: where to put the weights.
        validate: run the model's ``validate()`` (e.g. convexity) and fail on a violation.
    Raises:
        CheckpointError: missing, unreadable or corrupted file, a stored config that is not a valid
            model config, or tensors whose names, shapes or kinds of dtype do not fit the config (checked
            against the file's header on a shape-only model before anything is allocated).
        UnknownNameError: the stored config names an unknown model kind.
        ModelError: (``validate``) a model asymcert cannot vouch for, e.g. :class:`ConvexityError`.
    """

    config, _ = read_config(path)
    file = resolve(path)
    with _build_budget(BUILD_STEPS_PER_TENSOR * _tensor_count(file) + BUILD_STEPS_SLACK):
        skeleton = _build_checked(build_model, config, file, torch.device("meta"))
    _check_shapes(file, skeleton)
    model = _build_checked(build_model, config, file, torch.device("cpu"))
    try:
        state = load_file(str(file), device=str(device))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is corrupted: {exc}") from exc
    try:
        model.load_state_dict(state, strict=True)
    except RuntimeError as exc:
        raise CheckpointError(f"{file}: weights do not match the stored config: {exc}") from exc
    model.to(device).eval()
    check = getattr(model, "validate", None) if validate else None
    if check is not None:
        check()
    return model


def _tensor_count(file: Path) -> int:
    """How many tensors the safetensors ``file`` holds (from its header; nothing is read)."""
    try:
        with safe_open(str(file), framework="pt") as fh:
            return len(list(fh.keys()))
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is corrupted: {exc}") from exc


@contextmanager
def _build_budget(limit: int) -> Iterator[None]:
    """Within the block, refuse (ConfigError) the module or parameter registered by this thread past ``limit``.

    A config cannot ask for more modules than the file holds tensors for: the count is checked as
    they are built, so a count of 10⁷ in a small file costs ``limit`` registrations, not 10⁷.
    """
    thread, count = threading.get_ident(), 0

    def hook(*_: Any) -> None:
        nonlocal count
        if threading.get_ident() != thread:
            return
        count += 1
        if count > limit:
            raise ConfigError(
                f"it builds more than {limit} modules and parameters, more than the file's tensors can match "
                f"({BUILD_STEPS_PER_TENSOR} per tensor, plus {BUILD_STEPS_SLACK}); a count in it is too large"
            )

    handles = [register_module_module_registration_hook(hook), register_module_parameter_registration_hook(hook)]
    try:
        yield
    finally:
        for handle in handles:
            handle.remove()


def _build_checked(build: Any, config: Any, file: Path, device: torch.device) -> nn.Module:
    """``build(config)`` on ``device`` ("meta": shapes only, nothing allocated).

    Raises:
        UnknownNameError: an unknown model kind (the message lists the known ones).
        CheckpointError: any other bad config (a list, a missing key, a negative width, ...).
    """
    try:
        with device:
            return build(config)
    except UnknownNameError as exc:  # (its type kept: a family registered elsewhere; its file named, s34 ckpt F8)
        raise UnknownNameError(f"{file}: {exc}") from exc
    except AsymcertError as exc:
        raise CheckpointError(f"{file}: the stored model config is invalid: {exc}") from exc


def _check_shapes(file: Path, skeleton: nn.Module) -> None:
    """Compare the tensor names and shapes of ``skeleton`` (built on the meta device) with the file's header.

    Runs before the real model is built, so a config asking for more memory than its file holds
    weights for (e.g. widths [10⁹] in a 1 KB file) is refused without allocating anything.
    """
    state = skeleton.state_dict()
    expected = {k: tuple(v.shape) for k, v in state.items()}
    try:
        with safe_open(str(file), framework="pt") as fh:
            # fh is a safetensors handle, not a dict: keys() is its API
            found = {k: tuple(fh.get_slice(k).get_shape()) for k in fh.keys()}  # noqa: SIM118
            dtypes = {k: str(fh.get_slice(k).get_dtype()) for k in fh.keys() if k in state}  # noqa: SIM118
    except (SafetensorError, OSError, ValueError) as exc:
        raise CheckpointError(f"{file} is corrupted: {exc}") from exc
    missing, extra = sorted(set(expected) - set(found)), sorted(set(found) - set(expected))
    wrong = [
        f"{k} {found[k]} (config says {expected[k]})"
        for k in sorted(set(expected) & set(found))
        if found[k] != expected[k]
    ]
    wrong += [
        f"{k} of dtype {dtypes[k]} (config says {state[k].dtype})"
        for k in sorted(dtypes)
        if _dtype_kind(dtypes[k]) != _dtype_kind(state[k].dtype)
    ]
    if missing or extra or wrong:
        parts = (
            ([f"missing {missing[:5]}"] if missing else [])
            + ([f"unexpected {extra[:5]}"] if extra else [])
            + ([f"mismatched {', '.join(wrong[:5])}"] if wrong else [])
        )
        raise CheckpointError(f"{file}: weights do not match the stored config: {'; '.join(parts)}")


def _dtype_kind(dtype: str | torch.dtype) -> str:
    """The kind, "float", "int" or "bool", of a safetensors dtype name ("F32", "I64", ...) or a torch dtype.

    A floating tensor of another width loads (it is converted, as ``load_state_dict`` does); an
    integer or boolean where the model holds floats (or the reverse) is refused.
    """
    name = str(dtype).upper().replace("TORCH.", "")
    if name == "BOOL":
        return "bool"
    return "float" if name.startswith(("F", "BF", "HALF", "DOUBLE")) else "int"
