"""Run-folder hygiene: one writer per folder, no stale temporary files, strict JSON, a typed ``run.json``.

- **One writer.** ``train``, ``certify``, ``report`` and ``run`` hold an exclusive OS lock on
  ``DIR/.asymcert.lock`` (``filelock``: ``flock`` on POSIX, ``LockFileEx`` on Windows) while they
  work. A second writer is refused at once with :class:`~asymcert.errors.RunFolderBusyError`. The
  operating system drops the lock when its process dies, so a crashed run never leaves it held.
  Under ``torchrun`` only rank 0 (the one process that writes) takes it and tells the others
  whether it got it (one broadcast), so every rank fails or proceeds together.
- **One writer per results file.** ``certify --input … --out FILE`` holds an OS lock for ``FILE`` while it
  works (:func:`exclusive_output`), on ``.FILE.asymcert.lock`` beside it, deleted when done; a second writer of
  the same file is refused at once.
- **No stale temporary files.** :func:`~asymcert.checkpoint.atomic_write` writes
  ``.<name>.asymcert-<8 random characters>.tmp`` next to its target and renames it; a process killed in
  between leaves that file behind. The next command that holds the lock removes them
  (:func:`remove_stale_temp_files`): files of exactly that pattern, never a user's ``.<name>.<anything>``, and
  never one a live process is writing (it holds an OS lock on it).
- **Strict JSON.** Every JSON file the package writes goes through :func:`dumps_strict`:
  non-finite floats become ``null`` (``NaN``/``Infinity`` are not JSON and many readers refuse them).
- **A typed run.json.** :class:`RunRecord` reads it and names the missing or ill-typed key.
"""

from __future__ import annotations

import contextlib
import json
import math
import os
import re
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field, fields
from pathlib import Path
from typing import Any

from filelock import FileLock, Timeout

try:  # POSIX: results files are locked with flock beside them (Windows: filelock)
    import fcntl
except ImportError:  # pragma: no cover
    fcntl = None  # type: ignore[assignment]

from asymcert import distributed
from asymcert.checkpoint import (
    MODEL_FILE,
    TEMP_SUFFIX,
    TEMP_TAG,
    atomic_write,
    created_folders,
    is_stale_temp,
    read_config,
)
from asymcert.errors import AsymcertError, CheckpointError, RunFolderBusyError, WriteError
from asymcert.files import read_regular_text
from asymcert.jsontext import JsonTextError, parse_json
from asymcert.threat import ResolvedThreatModel, ThreatModel

LOCK_FILE = ".asymcert.lock"
"""A run folder's lock; an output file ``name``'s is ``.<name>`` + this beside it (:func:`output_lock_path`)."""
RUN_FILE = "run.json"
CERT_FILE = "certificates.safetensors"
"""The certificates of the run's test split (:mod:`asymcert.certify.certfile`)."""
CERTIFY_FILE = "certify.json"
"""How the certificates of a run folder were computed (:class:`CertificateMode`)."""
RESULTS_FILE, REPORT_FILE = "results.json", "report.md"
"""The report's numbers and text (:mod:`asymcert.report.writer`)."""
AUDIT_FILES = ("audit.json", "audit.md")
"""The soundness audit of the run's model (:mod:`asymcert.audit`)."""
PLOT_GLOB = "certified_*.png"
"""The report's plots, one per norm (``certified_l2.png``)."""
TEMP_NAME = re.compile(rf"^\.(?P<target>.+){re.escape(TEMP_TAG)}(?P<suffix>[a-z0-9_]{{8}}){re.escape(TEMP_SUFFIX)}$")
"""Names of :func:`~asymcert.checkpoint.atomic_write`'s temporary files: ``.<target>.asymcert-<8 characters of
``tempfile.mkstemp``>.tmp``."""

_LOCKS: dict[str, FileLock] = {}  # one lock object per folder: re-entrant within a process


# --------------------------------------------------------------------------------------------- locks
def _acquire(folder: Path) -> FileLock:
    """Take ``folder``'s lock without waiting (re-entrant within this process and thread)."""
    lock = _LOCKS.setdefault(str(folder.resolve()), FileLock(str(folder / LOCK_FILE), timeout=0))
    hint = f" (it holds {folder / LOCK_FILE}); wait for it to finish or use another --out folder"
    return _take(lock, folder, hint)


def _take(lock: FileLock, target: Path, hint: str) -> FileLock:
    """Take ``lock``, the writer lock of ``target`` (a run folder or a results file), without waiting.

    Raises:
        RunFolderBusyError: another process holds it ("<target> is being written …" and ``hint``).
        WriteError: the lock file cannot be created or locked.
    """
    try:
        Path(lock.lock_file).parent.mkdir(mode=0o700, parents=True, exist_ok=True)  # (a run folder exists already)
        lock.acquire(timeout=0)
    except Timeout:
        raise RunFolderBusyError(f"{target} is being written by another asymcert process{hint}") from None
    except OSError as exc:
        raise WriteError(f"cannot lock {target} ({lock.lock_file}: {exc.strerror or exc})") from exc
    return lock


@contextmanager
def exclusive(folder: str | Path, create: bool = False, collective: bool = True) -> Iterator[Path]:
    """Hold ``folder``'s writer lock for the ``with`` block; yields the folder as a Path.

    Args:
        folder: the run folder.
        create: make the folder (and parents) when missing; else a missing folder is refused.
        collective: under ``torchrun``, every rank must enter together: rank 0 locks and
            broadcasts the outcome. False: only this process locks (callers that run on rank 0 only).
    Raises:
        RunFolderBusyError: another process holds the lock (every rank raises it).
        CheckpointError: the folder does not exist and ``create`` is False.
        WriteError: the folder or its lock file cannot be created.
    """
    folder = Path(folder)
    if not create and not folder.is_dir():
        raise CheckpointError(f"{folder} is not a run folder (no such folder)")
    shared = collective and distributed.is_distributed()
    lock, error = None, None
    if distributed.is_main() or not shared:
        try:
            folder.mkdir(parents=True, exist_ok=True)
            lock = _acquire(folder)
        except AsymcertError as exc:
            error = exc
        except OSError as exc:
            error = WriteError(f"cannot create the run folder {folder}: {exc.strerror or exc}")
    if shared and distributed.broadcast_float(0.0 if error else 1.0) < 0.5 and error is None:
        error = RunFolderBusyError(f"{folder}: rank 0 could not take the run folder's lock; see its error")
    if error is not None:
        raise error
    try:
        yield folder
    finally:
        if lock is not None:
            lock.release()


def being_written(folder: str | Path) -> bool:
    """True when another process holds ``folder``'s writer lock (a run still training, or being certified into);
    False when free, or when the lock cannot be taken to find out (a read-only folder). A folder without the lock
    file (a model saved by hand, never written by an asymcert command) is free, and is left without one: asking
    writes nothing."""
    if not (Path(folder) / LOCK_FILE).exists():
        return False
    try:
        with exclusive(folder, collective=False):
            return False
    except RunFolderBusyError:
        return True
    except (WriteError, CheckpointError):
        return False


def output_lock_path(path: str | Path) -> Path:
    """Where :func:`exclusive_output` locks ``path``: ``.<name>.asymcert.lock`` beside it, by its resolved path (every
    spelling of one file, relative, absolute or through a symlink, gets the same lock; whatever the environment's
    temporary folder or user name, audit 29a F2)."""
    target = Path(path).resolve()
    return target.parent / f".{target.name}{LOCK_FILE}"


@contextmanager
def exclusive_output(path: str | Path) -> Iterator[Path]:
    """Hold the writer lock of one output file or folder (not a run folder) for the ``with`` block, and remove the
    temporary files that interrupted writes of that file left beside it (:func:`stale_temp_files`). Its folder is
    made when missing, and removed again if the block raises (:func:`~asymcert.checkpoint.created_folders`).

    The lock is an OS lock (``flock``) on :func:`output_lock_path`, deleted when released (the next writer's
    check that the file it locked is still the one at that path makes that safe); a killed writer leaves that
    empty file, which the next writer reuses.

    Raises:
        RunFolderBusyError: another process is writing ``path``.
        WriteError: the lock, or the folder, cannot be created.
    """
    path = Path(path)
    hint = "; wait for it to finish or write another file"
    with created_folders(path.parent), _output_lock(output_lock_path(path), path, hint):
        for stale in stale_temp_files(path.parent, target=path.name):
            stale.unlink(missing_ok=True)
        yield path


@contextmanager
def _output_lock(lock_path: Path, target: Path, hint: str) -> Iterator[None]:
    """Hold the lock of :func:`exclusive_output` (Windows: filelock's, which deletes its file on release)."""
    if fcntl is None:  # pragma: no cover
        lock = _take(FileLock(str(lock_path), timeout=0), target, hint)
        try:
            yield
        finally:
            lock.release()
        return
    fd = _locked_sidecar(lock_path, target, hint)
    try:
        yield
    finally:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)  # (while held: a writer that opened it before retries on a new file)
        os.close(fd)


def _locked_sidecar(lock_path: Path, target: Path, hint: str) -> int:
    """A descriptor of ``lock_path`` holding its ``flock``, checked to be the file at that path (not one its last
    holder deleted on release). Raises RunFolderBusyError (held) or WriteError (cannot be made or locked)."""
    for _ in range(64):
        try:  # (never through a symlink planted at that name)
            fd = os.open(lock_path, os.O_RDONLY | os.O_CREAT | getattr(os, "O_NOFOLLOW", 0), 0o666)
        except OSError as exc:
            raise WriteError(f"cannot lock {target} ({lock_path}: {exc.strerror or exc})") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            raise RunFolderBusyError(f"{target} is being written by another asymcert process{hint}") from None
        except BaseException as exc:
            os.close(fd)
            if isinstance(exc, OSError):
                raise WriteError(f"cannot lock {target} ({lock_path}: {exc.strerror or exc})") from exc
            raise
        if _still_there(fd, lock_path):
            return fd
        os.close(fd)
    raise WriteError(f"cannot lock {target} ({lock_path} is replaced as fast as it is locked)")


def _still_there(fd: int, lock_path: Path) -> bool:
    """Whether the locked ``fd`` is the file at ``lock_path`` (not one its last holder deleted); stopped while it
    checks (Ctrl-C), the lock it holds is deleted and released, as the holder's release would."""
    try:
        return os.path.samestat(os.fstat(fd), os.stat(lock_path, follow_symlinks=False))
    except FileNotFoundError:
        return False
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(lock_path)
        os.close(fd)
        raise


def certificate_outputs(folder: str | Path) -> list[Path]:
    """The paths of a run folder's files computed from its certificates, present or not: their mode, the report
    and its plots (what :func:`~asymcert.pipeline.certify_run` removes before writing new certificates)."""
    folder = Path(folder)
    return [folder / CERTIFY_FILE, folder / RESULTS_FILE, folder / REPORT_FILE, *sorted(folder.glob(PLOT_GLOB))]


def model_outputs(folder: str | Path) -> list[Path]:
    """The files of a run folder computed from its model: certificates, their mode, the report and its plots,
    the audit (what :func:`remove_model_outputs` removes when the model is about to change)."""
    folder = Path(folder)
    found = [folder / CERT_FILE, *certificate_outputs(folder), *(folder / n for n in AUDIT_FILES)]
    return [p for p in found if p.is_file() and not p.is_symlink()]


def remove_model_outputs(folder: str | Path) -> list[Path]:
    """Delete :func:`model_outputs` (call while holding the folder's lock, before training changes the model:
    they would describe the model of an earlier session); returns them."""
    gone = model_outputs(folder)
    for path in gone:
        path.unlink(missing_ok=True)
    return gone


def warn_if_unfinished(record: RunRecord, run_dir: str | Path) -> None:
    """Warn (``UserWarning``) when run.json has no training summary: the run was interrupted, or is still
    training, and its model is the best epoch saved so far, not the finished run's."""
    if record.training is None:
        warnings.warn(
            f"{run_dir}: its training has not finished (interrupted, or still running); this is the model of the "
            "best epoch saved so far: rerun the same train or run command to finish it",
            stacklevel=3,
        )


def stale_temp_files(folder: str | Path, target: str | None = None) -> list[Path]:
    """Temporary files of interrupted atomic writes in ``folder`` (call while holding its lock), or of the
    writes of one file ``target`` in it only (while holding that file's :func:`exclusive_output`): files of that
    pattern that no live process is writing (:func:`~asymcert.checkpoint.is_stale_temp`; a results file written
    into a run folder holds only its own lock, audit 29a F8)."""
    folder = Path(folder)
    if not folder.is_dir():
        return []
    found = (p for p in folder.iterdir() if (m := TEMP_NAME.match(p.name)) and target in (None, m["target"]))
    return sorted(p for p in found if p.is_file() and not p.is_symlink() and is_stale_temp(p))


def remove_stale_temp_files(folder: str | Path) -> list[Path]:
    """Delete :func:`stale_temp_files` (only safe while holding the folder's lock); returns them."""
    removed = []
    for path in stale_temp_files(folder):
        try:
            path.unlink()
            removed.append(path)
        except FileNotFoundError:
            pass
    return removed


# --------------------------------------------------------------------------------------- strict JSON
def json_number(value: float) -> float | str | None:
    """A float for a JSON file that keeps ∞: itself when finite, ``"inf"``/``"-inf"`` for ±∞, None for NaN
    (audit.json and results.json radii; :func:`strict_jsonable` writes ∞ as null instead)."""
    if math.isfinite(value):
        return value
    return None if math.isnan(value) else ("inf" if value > 0 else "-inf")


def strict_jsonable(obj: Any) -> Any:
    """``obj`` with every non-finite float (NaN, ±inf) replaced by None, tuples as lists (recursively)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: strict_jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict_jsonable(v) for v in obj]
    return obj


def dumps_strict(obj: Any, default: Callable[[Any], Any] | None = None, **kwargs: Any) -> str:
    """``json.dumps`` that writes standard JSON only: non-finite floats become ``null``.

    ``default`` (for objects JSON does not know) has its results made strict too.
    """
    wrapped = None if default is None else (lambda o: strict_jsonable(default(o)))
    return json.dumps(strict_jsonable(obj), allow_nan=False, default=wrapped, **kwargs)


def write_json(path: str | Path, obj: Any, indent: int | None = 1, **kwargs: Any) -> None:
    """Write ``obj`` as strict JSON to ``path`` atomically (see :func:`~asymcert.checkpoint.atomic_write`)."""
    atomic_write(Path(path), json_writer(obj, indent, **kwargs))


def json_writer(obj: Any, indent: int | None = 1, **kwargs: Any) -> Callable[[Path], None]:
    """``write(tmp)`` writing ``obj`` as strict JSON (for :func:`~asymcert.checkpoint.atomic_write` and
    :func:`~asymcert.checkpoint.stage`); a value strict JSON cannot hold is refused here, before any file."""
    text = dumps_strict(obj, indent=indent, **kwargs) + "\n"

    def write(tmp: Path) -> None:
        tmp.write_text(text, encoding="utf-8")

    return write


# ----------------------------------------------------------------- how a set of certificates was made
THREAT_MODEL_SOURCES = ("run", "given", "none")
"""Where the threat model of a set of certificates came from (:attr:`CertificateMode.threat_model`)."""


@dataclass(frozen=True)
class CertificateMode:
    """How a set of certificates was computed: closed form or reach-aware radii, under which threat model.

    Attributes:
        reach: True for reach-aware radii (the certifier option ``reach``, ``certify --reach``), False for
            the closed form.
        threat_model: ``"run"`` (the run's own, from run.json), ``"given"`` (another one, e.g.
            ``--threat-model FILE``) or ``"none"`` (plain ℓp balls in raw input units).
        threat_model_file: the file the threat model was read from (None: not read from a file, or not known).
        given: the given threat model's JSON (:meth:`~asymcert.threat.ThreatModel.to_dict`); None unless
            ``threat_model`` is ``"given"``.
        certificates_sha256: hex SHA-256 of the certificates file described (None: tied to no file).
    """

    reach: bool
    threat_model: str
    threat_model_file: str | None = None
    given: dict[str, Any] | None = None
    certificates_sha256: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of :data:`CERTIFY_FILE` (:meth:`from_dict` reads it back)."""
        return asdict(self)

    @classmethod
    def from_dict(cls, raw: Any) -> CertificateMode | None:
        """The mode a JSON object records (keys of newer versions ignored); None when it is not one (``given`` set
        for a mode other than ``"given"`` included: property tests of session 31)."""
        names = [f.name for f in fields(cls)]
        if not isinstance(raw, dict) or any(name not in raw for name in names):
            return None
        ok = isinstance(raw["reach"], bool) and raw["threat_model"] in THREAT_MODEL_SOURCES
        ok = ok and all(raw[k] is None or isinstance(raw[k], str) for k in ("threat_model_file", "certificates_sha256"))
        ok = ok and (raw["given"] is None or (isinstance(raw["given"], dict) and raw["threat_model"] == "given"))
        return cls(**{name: raw[name] for name in names}) if ok else None


def certificate_mode(
    own: dict[str, Any] | None, tm: ResolvedThreatModel | None, reach: bool, threat_model_file: str | None = None
) -> CertificateMode:
    """The :class:`CertificateMode` of certificates of a run whose own threat model is ``own`` (run.json's
    ``threat_model``; None: it has none) computed under ``tm`` (None: plain ℓp balls): ``"run"`` when ``tm``
    came from the run's own (same content), else ``"given"`` (with its content when ``tm`` knows its source).
    ``threat_model_file`` is recorded only when a threat model was used (``tm`` not None)."""
    if tm is None:
        return CertificateMode(bool(reach), "none")
    used = tm.source
    if used is None:  # resolved by hand: what it came from is not known
        return CertificateMode(bool(reach), "given", threat_model_file)
    if own is not None and ThreatModel.from_dict(own, f"{RUN_FILE}'s threat_model").to_dict() == used.to_dict():
        return CertificateMode(bool(reach), "run", threat_model_file)
    return CertificateMode(bool(reach), "given", threat_model_file, strict_jsonable(used.to_dict()))


# ------------------------------------------------------------------------------------- typed run.json
def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float)) and not isinstance(v, bool)


def _is_radius(v: Any) -> bool:
    """A report radius of run.json: a finite number ≥ 0 (a negative one was tabulated as is, audit units30 F1)."""
    return _is_number(v) and math.isfinite(v) and v >= 0


def _is_shape(v: Any) -> bool:
    """An input shape of run.json's model: a nonempty list of integers ≥ 1."""
    return (
        isinstance(v, list) and len(v) > 0 and all(isinstance(n, int) and not isinstance(n, bool) and n >= 1 for n in v)
    )


def _check(ok: bool, source: str, key: str, want: str, value: Any) -> None:
    if not ok:
        raise CheckpointError(f"{source}: key {key!r} must be {want}, found {type(value).__name__} {value!r:.80}")


_TASK_KEYS = ("name", "npz", "csv", "images")


@dataclass
class RunRecord:
    """The content of ``run.json``: what was trained on which data, and how training went.

    Attributes:
        task: the task spec, ``{"name": ...}`` or user data ``{"npz"|"csv"|"images": path, ...}``.
        model: the model config (``model.config()``).
        train: the training settings (``TrainConfig.to_dict()``).
        task_description, preset, data_dir, class_names, binary: as given to ``train``.
        report_radii: norm label ("l1", "l2", "linf") → radii of the report tables (each finite, ≥ 0), in the run's
            own units: its threat model's when it has one, else raw input units.
        splits: split name → number of inputs.
        training: ``{"seconds", "best", "epochs", "processes"}`` once training finished, else None.
        feature_names: the input columns of a run trained on a CSV, by name (None otherwise); new
            traffic is read by these names (``asymcert certify RUN --input FILE.csv``).
        threat_model: the run's threat model (:meth:`asymcert.threat.ThreatModel.to_dict`), which its
            certificates and reports use by default (None: plain ℓp balls in raw input units).
        extra: keys this version does not know, kept as they are.
    """

    task: dict[str, Any]
    model: dict[str, Any]
    train: dict[str, Any]
    task_description: str = ""
    preset: str | None = None
    data_dir: str | None = None
    class_names: list[str] = field(default_factory=list)
    binary: bool = True
    report_radii: dict[str, list[float]] = field(default_factory=dict)
    splits: dict[str, int] = field(default_factory=dict)
    training: dict[str, Any] | None = None
    feature_names: list[str] | None = None
    threat_model: dict[str, Any] | None = None
    extra: dict[str, Any] = field(default_factory=dict)

    @classmethod
    def from_json(cls, text: str, source: str = RUN_FILE) -> RunRecord:
        """Parse ``run.json``'s text; CheckpointError (one line) when it is not JSON or not a run record."""
        try:
            raw = parse_json(text)
        except JsonTextError as exc:
            raise CheckpointError(f"{source} is not valid JSON ({exc})") from None
        return cls.from_dict(raw, source)

    @classmethod
    def from_dict(cls, raw: Any, source: str = RUN_FILE) -> RunRecord:
        """Check every key's type (naming the first bad or missing one) and build the record."""
        if not isinstance(raw, dict):
            raise CheckpointError(f"{source} must hold a JSON object, found {type(raw).__name__}")
        for key in ("task", "model", "train"):
            if key not in raw:
                raise CheckpointError(
                    f"{source} lacks the key {key!r}; is this a run folder written by `asymcert train`?"
                )
            _check(isinstance(raw[key], dict), source, key, "an object", raw[key])
        task = raw["task"]
        _check(
            any(isinstance(task.get(k), str) for k in _TASK_KEYS),
            source,
            "task",
            f"an object naming one of {list(_TASK_KEYS)}",
            task,
        )
        shape = raw["model"].get("input_shape")
        _check(shape is None or _is_shape(shape), source, "model.input_shape", "a list of integers ≥ 1", shape)
        _check_optional(raw, source)
        known = {f.name for f in fields(cls)} - {"extra"}
        return cls(
            **{k: v for k, v in raw.items() if k in known}, extra={k: v for k, v in raw.items() if k not in known}
        )

    @property
    def binary_features(self) -> list[str]:
        """The features whose training values are all 0 or 1 (run.json's ``binary_features``, kept in
        :attr:`extra`; :func:`~asymcert.pipeline.binary_features`), by name or flat index; [] when it has none."""
        flags = self.extra.get("binary_features")
        return flags if isinstance(flags, list) else []

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``run.json`` (``training`` only once there is one)."""
        out = {f.name: getattr(self, f.name) for f in fields(self) if f.name != "extra"}
        for optional in ("training", "feature_names", "threat_model"):
            if out[optional] is None:
                del out[optional]
        return {**out, **self.extra}


def _check_optional(raw: dict[str, Any], source: str) -> None:
    """Type checks of run.json's optional keys."""
    checks: dict[str, tuple[Callable[[Any], bool], str]] = {
        "task_description": (lambda v: isinstance(v, str), "a string"),
        "preset": (lambda v: v is None or isinstance(v, str), "a string or null"),
        "data_dir": (lambda v: v is None or isinstance(v, str), "a string or null"),
        "class_names": (lambda v: isinstance(v, list), "a list"),
        "binary": (lambda v: isinstance(v, bool), "true or false"),
        "feature_names": (
            lambda v: v is None or (isinstance(v, list) and all(isinstance(c, str) for c in v)),
            "a list of strings",
        ),
        "threat_model": (lambda v: v is None or isinstance(v, dict), "an object or null"),
        "report_radii": (
            lambda v: (
                isinstance(v, dict) and all(isinstance(r, list) and all(_is_radius(x) for x in r) for r in v.values())
            ),
            "an object of lists of finite radii ≥ 0",
        ),
        "splits": (
            lambda v: isinstance(v, dict) and all(isinstance(n, int) and not isinstance(n, bool) for n in v.values()),
            "an object of integers",
        ),
        "training": (
            lambda v: (
                v is None
                or (
                    isinstance(v, dict)
                    and isinstance(v.get("best", {}), dict)
                    and (v.get("seconds") is None or _is_number(v.get("seconds")))
                )
            ),
            "an object with 'seconds' (number) and 'best' (object)",
        ),
    }
    for key, (ok, want) in checks.items():
        if key in raw:
            _check(ok(raw[key]), source, key, want, raw[key])


def read_run_record(run_dir: str | Path) -> RunRecord:
    """The :class:`RunRecord` of a run folder.

    Raises:
        CheckpointError: no ``run.json``, or one that is unreadable, not JSON, or lacks/mistypes a key.
    """
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no {RUN_FILE}); train one with `asymcert train`")
    try:
        text = read_regular_text(path)
    except (OSError, UnicodeDecodeError) as exc:
        raise CheckpointError(f"{path} cannot be read ({exc})") from None
    record = RunRecord.from_json(text, str(path))
    _check_model_features(Path(run_dir), record)
    return record


def _check_model_features(run_dir: Path, record: RunRecord) -> None:
    """Refuse run.json's ``feature_names`` when the run's model file says it was trained on other columns (the
    names its training data had, which :func:`~asymcert.checkpoint.save` keeps in its metadata): new traffic
    would be read by the wrong columns and a threat model would constrain the wrong features. Nothing to
    compare (no model file yet, an unreadable one, a model saved without them) is no refusal here.

    Raises:
        CheckpointError: naming the first position where the two lists differ.
    """
    try:
        _, meta = read_config(run_dir / MODEL_FILE)
    except CheckpointError:
        return
    trained = (meta.get("task_meta") or {}).get("feature_names") if isinstance(meta, dict) else None
    if not isinstance(trained, list) or record.feature_names is None:
        return
    trained = [str(n) for n in trained]
    if list(record.feature_names) == trained:
        return
    pairs = list(zip(record.feature_names, trained))
    at = next((i for i, (a, b) in enumerate(pairs) if a != b), len(pairs))
    mine = record.feature_names[at] if at < len(record.feature_names) else "(none)"
    theirs = trained[at] if at < len(trained) else "(none)"
    raise CheckpointError(
        f"{run_dir / RUN_FILE}: feature_names differ from the columns its model was trained on ({MODEL_FILE}): "
        f"position {at} is {mine!r} there, {theirs!r} in the model; the run folder was edited or mixed"
    )


def run_threat_model(
    record: RunRecord, override: ThreatModel | None = None, plain: bool = False
) -> ResolvedThreatModel | None:
    """The threat model to certify a run under: ``override``, else the run's own (None with ``plain``).

    Raises:
        ConfigError: a threat model that names features the run does not have (or run.json's is malformed).
    """
    if plain:
        return None
    own = record.threat_model
    tm = override or (None if own is None else ThreatModel.from_dict(own, f"{RUN_FILE}'s threat_model"))
    if tm is None:
        return None
    return tm.resolve(record.feature_names, math.prod(record.model.get("input_shape") or [0]))


def load_run_threat_model(run_dir: str | Path) -> ResolvedThreatModel | None:
    """A run folder's own threat model, resolved to its features (None: the run has none): what ``certify``,
    ``audit`` and ``certify --input`` use unless told otherwise, for ``asymcert.certify(model, x, threat_model=...)``.

    Raises:
        CheckpointError: no run folder, or a malformed run.json. ConfigError: a threat model that does not fit.
    """
    return run_threat_model(read_run_record(run_dir))
