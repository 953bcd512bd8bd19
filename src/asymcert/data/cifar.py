"""Reader for CIFAR-10's "python version": pickled batches, from the archive or its extracted folder.

Accepted layouts, in each searched folder (``--data-dir``, the cache ``<cache>/cifar10``):
``cifar-10-batches-py/data_batch_1..5`` + ``test_batch``; the same batch files directly in the folder;
or the archive ``cifar-10-python.tar.gz`` (read in place, never extracted). Failing all, the archive
is downloaded into the cache and checked against its published SHA-256.

The batches are pickles. They are read by a restricted unpickler that can only build dicts, lists,
strings, bytes, ints and NumPy arrays of plain numbers: a tampered file cannot run code, and what it
builds is bounded by the format (:data:`MAX_PICKLE_OPCODES`, :data:`MAX_BUILT_BYTES`), whatever counts it holds.
"""

from __future__ import annotations

import codecs
import io
import math
import pickle
import pickletools
import tarfile
import zlib
from pathlib import Path
from typing import Any, BinaryIO

import numpy as np

from asymcert.data.download import CIFAR10_REMOTE, Opener, find_or_download
from asymcert.data.sources import candidate_dirs
from asymcert.errors import DataError

CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")
TRAIN_BATCHES = tuple(f"data_batch_{i}" for i in range(1, 6))
TEST_BATCH = "test_batch"
BATCH_FOLDER = "cifar-10-batches-py"
ARCHIVE = "cifar-10-python.tar.gz"
MAX_BATCH_BYTES = 10000 * 3072 + 2**20
"""Largest batch file accepted (bytes): 10,000 images of 3072 bytes plus 1 MiB for labels, names and
pickle framing (the official batches are 31,035,704 bytes at most). Checked before anything is read."""

CifarArrays = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""(x_train (50000, 3, 32, 32) uint8, y_train (50000,) int64, x_test (10000, 3, 32, 32) uint8, y_test)."""


def _latin1_encode(text: str, encoding: str = "latin1") -> bytes:
    """How Python 3 protocol-2 pickles store bytes; only the latin-1 codec is allowed."""
    try:
        allowed = codecs.lookup(encoding).name == "iso8859-1"
    except LookupError:
        allowed = False
    if not allowed:
        raise pickle.UnpicklingError(f"refusing codec {encoding!r} in a CIFAR batch")
    return text.encode("latin1")


MAX_PICKLE_OPCODES = 20 * 10000
"""Most pickle opcodes a batch may hold: 20 per image of a 10,000-image batch (the official batches use 3,
a label and a file name each; Python 3's protocol-2 pickles 9). Each opcode builds at most one small
object, so this bounds what a batch's opcodes build; counted before anything is built."""
MAX_BUILT_BYTES = 2 * MAX_BATCH_BYTES
"""Most bytes a batch's calls and array states may build in all (the image bytes twice: decoded from
the pickle's text, then as the array). Charged before each call allocates."""

_EXAMPLE = np.zeros(1, dtype=np.uint8)
_RECONSTRUCT: Any = _EXAMPLE.__reduce_ex__(2)[0]
_FROMBUFFER: Any = _EXAMPLE.__reduce_ex__(5)[0]
_NDARRAY = object()
"""What the global ``numpy.ndarray`` unpickles to: only ``_reconstruct`` takes it (called, it would allocate)."""


def _plain_dtype(dtype: Any) -> bool:
    """Whether ``dtype`` is a dtype of plain numbers (no objects, fields or subarrays)."""
    return (
        isinstance(dtype, np.dtype)
        and dtype.kind in "biuf"
        and dtype.fields is None
        and dtype.subdtype is None
        and not dtype.hasobject
    )


class _Budget:
    """The bytes a batch's calls may still build (starts at :data:`MAX_BUILT_BYTES`)."""

    def __init__(self) -> None:
        self.left = MAX_BUILT_BYTES

    def charge(self, nbytes: int, what: str) -> None:
        """Take ``nbytes`` (≥ 0) for ``what``, before it is built; UnpicklingError when too few are left."""
        if nbytes < 0 or nbytes > self.left:
            raise pickle.UnpicklingError(
                f"{what} would take the bytes built in all past {MAX_BUILT_BYTES}, more than a CIFAR-10 batch holds"
            )
        self.left -= nbytes


class _BatchArray(np.ndarray):
    """An array being unpickled: its state (shape, dtype, bytes) is checked and charged before numpy reads it."""

    budget: _Budget

    def __setstate__(self, state: Any) -> None:
        ok = (
            isinstance(state, tuple)
            and len(state) == 5
            and isinstance(state[4], (bytes, bytearray))
            and _plain_dtype(state[2])
        )
        if not ok:
            raise pickle.UnpicklingError("refusing an array of anything but plain numbers in a CIFAR batch")
        self.budget.charge(len(state[4]), "an array's data")
        super().__setstate__(state)


def _empty_only(cls: type) -> Any:
    """``cls`` called with no arguments only (a pickle builds an empty ``bytes`` so; ``bytes(N)`` is N bytes)."""

    def build(*args: Any, **kwargs: Any) -> Any:
        if args or kwargs:
            raise pickle.UnpicklingError(f"refusing {cls.__name__}(...) with arguments in a CIFAR batch")
        return cls()

    return build


def _allowed(budget: _Budget) -> dict[tuple[str, str], Any]:
    """The globals a CIFAR batch may name, each a callable that checks its arguments and charges ``budget``."""

    def encode(text: Any, encoding: str = "latin1") -> bytes:
        budget.charge(len(text) if isinstance(text, str) else -1, "a string")
        return _latin1_encode(text, encoding)

    def reconstruct(subtype: Any, shape: Any, dtype: Any) -> np.ndarray:
        if subtype is not _NDARRAY or not all(isinstance(n, int) and n >= 0 for n in shape):
            raise pickle.UnpicklingError("refusing numpy _reconstruct of anything but a plain array in a CIFAR batch")
        budget.charge(math.prod(shape) * np.dtype(dtype).itemsize, "an array")
        array = _RECONSTRUCT(_BatchArray, shape, dtype)
        array.budget = budget
        return array

    def dtype(*args: Any) -> np.dtype:
        made = np.dtype(*args)
        if not _plain_dtype(made):
            raise pickle.UnpicklingError(f"refusing dtype {made} in a CIFAR batch (plain numbers only)")
        return made

    def frombuffer(buffer: Any, kind: Any, shape: Any, order: Any) -> np.ndarray:
        if not _plain_dtype(kind) or not isinstance(buffer, (bytes, bytearray)):
            raise pickle.UnpicklingError("refusing numpy _frombuffer of anything but plain numbers in a CIFAR batch")
        return _FROMBUFFER(buffer, kind, shape, order)  # a view of the pickle's own bytes: nothing allocated

    builtins = {cls.__name__: _empty_only(cls) for cls in (dict, list, str, bytes, int)}
    return {
        **{(mod, name): obj for mod in ("builtins", "__builtin__") for name, obj in builtins.items()},
        **{(f"numpy.{core}.multiarray", "_reconstruct"): reconstruct for core in ("core", "_core")},
        **{(f"numpy.{core}.numeric", "_frombuffer"): frombuffer for core in ("core", "_core")},
        ("numpy", "ndarray"): _NDARRAY,
        ("numpy", "dtype"): dtype,
        ("_codecs", "encode"): encode,
    }


class _SafeUnpickler(pickle.Unpickler):
    """Builds only the objects a CIFAR batch is made of, within :data:`MAX_BUILT_BYTES`; any other global is
    refused, and so are calls that would allocate by a count (``bytes(N)``, an array of a given shape)."""

    def __init__(self, stream: BinaryIO) -> None:
        super().__init__(stream, encoding="bytes")
        self.allowed = _allowed(_Budget())

    def find_class(self, module: str, name: str) -> Any:
        try:
            return self.allowed[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(f"refusing to load {module}.{name} from a CIFAR batch") from None


def _reason(exc: BaseException) -> str:
    """One line for ``exc``: its message, else its type (a MemoryError has no message)."""
    text = " ".join(str(exc).split())[:300]
    return text or type(exc).__name__


_PUTS = frozenset({"PUT", "BINPUT", "LONG_BINPUT"})
"""Opcodes that store into the unpickler's memo at the index they give (CPython's grows its memo table to twice
that index and zero-fills it: a 9-byte pickle asking index 2²⁷ touched 2 GiB)."""


def _count_opcodes(blob: bytes, source: str) -> None:
    """Refuse a pickle of more than :data:`MAX_PICKLE_OPCODES` opcodes, or one storing into memo index i after
    fewer than i opcodes (a pickler numbers its memo entries 0, 1, … as it goes), before any is run."""
    try:
        for count, (op, arg, _) in enumerate(pickletools.genops(blob), start=1):
            if count > MAX_PICKLE_OPCODES:
                raise DataError(
                    f"{source}: more than {MAX_PICKLE_OPCODES} pickle opcodes, more than a CIFAR-10 batch holds; "
                    "is it a CIFAR-10 python batch?"
                )
            if op.name in _PUTS and isinstance(arg, int) and arg >= count:
                raise DataError(
                    f"{source}: a pickle memo index of {arg} at opcode {count}, which no pickler writes; "
                    "is it a CIFAR-10 python batch?"
                )
    except DataError:
        raise
    except Exception as exc:  # a damaged pickle fails in many ways
        raise DataError(f"{source}: not a readable CIFAR-10 batch ({_reason(exc)})") from None


def read_cifar_batch(stream: BinaryIO, source: str = "CIFAR batch") -> tuple[np.ndarray, np.ndarray]:
    """Read one pickled batch (a dict with ``data`` (N, 3072) uint8 and ``labels``, bytes or str keys).

    Args:
        stream: binary file object positioned at the pickle.
        source: the file's name for error messages.
    Returns:
        x (N, 3, 32, 32) uint8 (channel-first, as stored), y (N,) int64 in 0..9.
    Memory is bounded by the format: at most :data:`MAX_BATCH_BYTES` are read, at most
    :data:`MAX_PICKLE_OPCODES` opcodes run, and calls build at most :data:`MAX_BUILT_BYTES` in all.

    Raises:
        DataError: larger than a batch, not a pickle, a refused object or call, a missing key, or wrong
            shapes/labels; one line saying which.
    """
    blob = stream.read(MAX_BATCH_BYTES + 1)
    _check_size(len(blob), source)
    _count_opcodes(blob, source)
    try:
        batch = _SafeUnpickler(io.BytesIO(blob)).load()
    except Exception as exc:  # a damaged pickle can fail in many ways; none may escape as a crash
        raise DataError(f"{source}: not a readable CIFAR-10 batch ({_reason(exc)})") from None
    if not isinstance(batch, dict):
        raise DataError(f"{source}: expected a dict, found {type(batch).__name__}")
    data, labels = _key(batch, "data", source), _key(batch, "labels", source)
    data = np.asarray(data) if isinstance(data, np.ndarray) else data  # a plain array, not the unpickling class
    if not isinstance(data, np.ndarray) or data.dtype != np.uint8 or data.ndim != 2 or data.shape[1] != 3072:
        shape = getattr(data, "shape", None)
        raise DataError(f"{source}: 'data' must be a (N, 3072) uint8 array, found {type(data).__name__} {shape}")
    try:
        y = np.asarray(labels, dtype=np.int64)
    except (TypeError, ValueError) as exc:
        raise DataError(f"{source}: 'labels' is not a list of ints ({exc})") from exc
    if y.shape != (data.shape[0],) or (y.size and (y.min() < 0 or y.max() > 9)):
        raise DataError(f"{source}: expected {data.shape[0]} labels in 0..9, found shape {y.shape}")
    return data.reshape(-1, 3, 32, 32), y


def _key(batch: dict, name: str, source: str) -> Any:
    for key in (name.encode(), name):
        if key in batch:
            return batch[key]
    raise DataError(f"{source}: batch has no {name!r} entry (keys: {sorted(map(str, batch))})")


def write_cifar_batch(path: str | Path, x: np.ndarray, y: np.ndarray) -> None:
    """Write a batch in the official layout (protocol-2 pickle, bytes keys). Used by tests and tools.

    Args:
        x: (N, 3, 32, 32) uint8.
        y: (N,) ints in 0..9.
    """
    x = np.ascontiguousarray(x, dtype=np.uint8)
    batch = {
        b"batch_label": b"asymcert test batch",
        b"labels": [int(v) for v in y],
        b"data": x.reshape(len(x), 3072),
        b"filenames": [f"{i}.png".encode() for i in range(len(x))],
    }
    Path(path).write_bytes(pickle.dumps(batch, protocol=2))


def _concat(parts: list[tuple[np.ndarray, np.ndarray]]) -> tuple[np.ndarray, np.ndarray]:
    return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])


def _check_size(size: int, source: str) -> None:
    """Refuse a batch larger than :data:`MAX_BATCH_BYTES` before reading it (memory stays bounded)."""
    if size > MAX_BATCH_BYTES:
        raise DataError(
            f"{source}: {size} bytes, more than a CIFAR-10 batch can hold ({MAX_BATCH_BYTES}); "
            f"is it a CIFAR-10 python batch?"
        )


def _read_folder(folder: Path) -> CifarArrays:
    def read(name: str) -> tuple[np.ndarray, np.ndarray]:
        _check_size((folder / name).stat().st_size, str(folder / name))
        with (folder / name).open("rb") as f:
            return read_cifar_batch(f, str(folder / name))

    train = _concat([read(name) for name in TRAIN_BATCHES])
    return (*train, *read(TEST_BATCH))


def _read_archive(path: Path) -> CifarArrays:
    """Read the batches straight out of ``cifar-10-python.tar.gz`` (members matched by file name)."""
    wanted = set(TRAIN_BATCHES) | {TEST_BATCH}
    found: dict[str, tuple[np.ndarray, np.ndarray]] = {}
    try:
        with tarfile.open(path, "r:*") as tar:
            for member in tar:
                name = member.name.rsplit("/", 1)[-1]
                if member.isfile() and name in wanted and name not in found:
                    _check_size(member.size, f"{path}:{member.name}")  # from the header, before reading
                    handle = tar.extractfile(member)  # a regular file (isfile above): never None
                    blob = handle.read(MAX_BATCH_BYTES + 1) if handle is not None else b""
                    found[name] = read_cifar_batch(io.BytesIO(blob), f"{path}:{member.name}")
    except (tarfile.TarError, EOFError, OSError, zlib.error) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: corrupted or truncated archive ({exc}); delete it and fetch it again") from exc
    missing = sorted(wanted - set(found))
    if missing:
        raise DataError(f"{path}: archive lacks {', '.join(missing)}; is it cifar-10-python.tar.gz?")
    train = _concat([found[name] for name in TRAIN_BATCHES])
    return (*train, *found[TEST_BATCH])


def _layout(folder: Path) -> Path | None:
    """The batch folder or archive inside ``folder``, if any."""
    for sub in (folder / BATCH_FOLDER, folder):
        if all((sub / name).is_file() for name in (*TRAIN_BATCHES, TEST_BATCH)):
            return sub
    for name in (ARCHIVE, ARCHIVE.removesuffix(".gz")):
        if (folder / name).is_file():
            return folder / name
    return None


def load_cifar10_arrays(data_dir: Path | None, opener: Opener | None = None) -> CifarArrays:
    """All of CIFAR-10 as uint8 arrays, from the first folder holding it (else downloaded into the cache).

    Returns:
        x_train (50000, 3, 32, 32) uint8, y_train (50000,) int64, x_test (10000, 3, 32, 32), y_test.
    Raises:
        DataError: not found and not downloadable, or corrupted.
    """
    for folder in candidate_dirs("cifar10", data_dir):
        found = _layout(folder)
        if found is not None:
            return _read_folder(found) if found.is_dir() else _read_archive(found)
    hint = (
        f"Either {ARCHIVE} or its extracted folder {BATCH_FOLDER}/ (data_batch_1..5, test_batch) "
        f"will do; put it in one of these folders."
    )
    archive = find_or_download("cifar10", CIFAR10_REMOTE, data_dir, opener=opener, hint=hint)[ARCHIVE]
    return _read_archive(archive)
