"""The user's own data as tasks: an ``.npz`` file, a CSV table, or a folder of class image folders.

Each function reads and validates the data at once (errors surface before any training), makes
seeded stratified splits (20% of each class to test, 20% of the rest to validation) and returns a
:class:`Task` with defaults chosen from the input rank: feature vectors (N, d) get a standardising
feature map and an ICNN MLP; images get a mean shift and an ICNN MLP. Inputs stay in the user's
raw units (image folders: pixels in [0, 1]); certified radii are in those units.
"""

from __future__ import annotations

import contextlib
import copy
import csv
import math
import re
import zipfile
import zlib
from collections import Counter
from collections.abc import Hashable, Iterator, Sequence
from pathlib import Path
from typing import Any

import numpy as np

from asymcert.data.images import image_mode, list_image_folder, read_images
from asymcert.data.tasks import Task, TaskData, fast_preset, task_data_from_arrays
from asymcert.errors import DataError
from asymcert.text import first_few

INF = math.inf

TABULAR_MODEL = {
    "kind": "feature-convex",
    "feature_map": [{"kind": "standardize"}],
    "convex": {"kind": "icnn", "widths": [64, 32]},
}
TABULAR_TRAIN = {"epochs": 100, "batch_size": 32, "optimizer": "adam", "lr": 1e-3, "jacobian_reg": 0.0}
_HINGES = {"kind": "hinges", "knots": 4}
_ONE_UNIT_G = {"kind": "icnn", "widths": [1], "batch_norm": False}
TABULAR_PRESETS = {
    # SpamBase's recipe without its log1p step, for features of any sign: each feature standardized and bent
    # at 4 training quantiles (hinges), g an ICNN with one hidden unit (benchmarks/README.md, "Presets for
    # your own tabular data")
    "hinges": {"model": {"feature_map": [{"kind": "standardize"}, _HINGES], "convex": _ONE_UNIT_G}},
    # SpamBase's default model: log1p first, for nonnegative heavy-tailed counts and frequencies
    "log1p-hinges": {
        "model": {"feature_map": [{"kind": "log1p"}, {"kind": "standardize"}, _HINGES], "convex": _ONE_UNIT_G}
    },
}
IMAGE_MODEL = {
    "kind": "feature-convex",
    "feature_map": [{"kind": "shift"}],
    "convex": {"kind": "icnn", "widths": [200, 50]},
}
IMAGE_TRAIN = {
    "epochs": 60,
    "batch_size": 64,
    "lr": 1e-3,
    "optimizer": "sgd",
    "momentum": 0.9,
    "lr_decay": 0.99,
    "jacobian_reg": 0.01,
}
_MISSING = {"", "na", "nan", "n/a", "null", "none", "?"}
# What a CSV cell may spell as a number: ASCII decimal, optional sign, point and exponent ("1", "-0.5", ".5",
# "5.", "1e-3", "+2E6"), or an infinity (refused later as not finite). Python's float() also reads "1_0" as 10
# and "١٢" or full-width "１２" as 12: text no CSV writer produces for a number, so it is refused as text.
_CSV_NUMBER = re.compile(r"[+-]?(?:[0-9]+\.?[0-9]*|\.[0-9]+)(?:[eE][+-]?[0-9]+)?|[+-]?(?:inf|infinity)", re.IGNORECASE)
_BOOLEANS = {"true": 1.0, "false": 0.0}  # as pandas writes a bool column (Parquet booleans read as 1 / 0 too)


def _labels_found(y: np.ndarray) -> str:
    values = np.unique(y)
    shown = ", ".join(repr(v.item() if hasattr(v, "item") else v) for v in values[:20])
    return shown + (f", ... ({len(values)} labels)" if len(values) > 20 else "")


def label_mask(y: np.ndarray, wanted: Hashable) -> np.ndarray:
    """Where ``y`` equals ``wanted``; ``"3"`` matches the integer label 3 and vice versa.

    Args:
        y: (N,) labels, integers or strings.
        wanted: a label value or its text.
    Returns:
        (N,) bool.
    """
    if y.dtype.kind in "iub":
        try:
            return y == int(str(wanted).strip())
        except ValueError:
            return np.zeros(len(y), dtype=bool)
    if y.dtype.kind == "f":
        try:
            # any hashable label value; float() raising TypeError is the "no match" case below
            return np.asarray(y == float(wanted))  # type: ignore[arg-type]
        except (TypeError, ValueError):
            return np.zeros(len(y), dtype=bool)
    text = np.char.strip(y.astype(str))
    mask = text == str(wanted).strip()
    if not mask.any():  # "3.0" in the file vs 3 asked, or the reverse
        mask = np.array([_same_number(t, wanted) for t in text], dtype=bool)
    return mask


def _same_number(text: str, wanted: Hashable) -> bool:
    try:
        return float(text) == float(str(wanted))
    except ValueError:
        return False


def binary_labels(
    y: np.ndarray, sensitive_class: Hashable, other_class: Hashable | None, source: str
) -> tuple[np.ndarray, tuple[str, str]]:
    """Which examples to keep and their 1 (sensitive) / 0 (other) labels.

    Returns:
        (keep (N,) bool, class names (other, sensitive)); labels are ``sensitive[keep]``.
    Raises:
        DataError: no labels, or a requested class absent (the message lists the labels found).
    """
    if len(y) == 0:
        raise DataError(f"{source}: no examples")
    sensitive = label_mask(y, sensitive_class)
    if not sensitive.any():
        raise DataError(f"{source}: sensitive class {sensitive_class!r} not among the labels found: {_labels_found(y)}")
    if other_class is None:
        other = ~sensitive
        other_name = f"not {sensitive_class}"
    else:
        other = label_mask(y, other_class)
        other_name = str(other_class)
        if str(other_class).strip() == str(sensitive_class).strip():
            raise DataError(f"{source}: sensitive and other class are both {sensitive_class!r}")
    if not other.any():
        wanted = repr(other_class) if other_class is not None else "any label but the sensitive one"
        raise DataError(f"{source}: other class ({wanted}) has no example; labels found: {_labels_found(y)}")
    return sensitive | other, (other_name, str(sensitive_class))


def check_finite(x: np.ndarray, source: str, row_names: Sequence[str] | None = None) -> None:
    """Reject NaN/Inf inputs, naming the first offending rows.

    Raises:
        DataError: some entry is NaN or infinite.
    """
    bad = np.flatnonzero(~np.isfinite(x.reshape(len(x), -1)).all(axis=1))
    if bad.size:
        names = [row_names[i] if row_names else f"example {i}" for i in bad[:5]]
        more = f" and {bad.size - 5} more" if bad.size > 5 else ""
        raise DataError(f"{source}: NaN or infinite values in {', '.join(names)}{more}; fix or remove these rows")


FLOAT32_MAX = float(np.finfo(np.float32).max)


def check_float32_range(
    x: np.ndarray, source: str, row_names: Sequence[str] | None = None, column_names: Sequence[str] | None = None
) -> None:
    """Reject values that overflow float32 (|x| > 3.4028235e38), the dtype models train in.

    Args:
        x: (N, ...) finite inputs. row_names: per-row names. column_names: names of the d features of (N, d) inputs.
    Raises:
        DataError: names the first too-large entry (row and column or index) and how many there are.
    """
    if x.dtype.kind != "f" or x.dtype.itemsize <= 4:
        return
    big = np.abs(x) > FLOAT32_MAX
    if not big.any():
        return
    first = tuple(int(i) for i in np.argwhere(big)[0])
    row = row_names[first[0]] if row_names else f"example {first[0]}"
    if x.ndim == 2:
        where = f"column {column_names[first[1]]!r}" if column_names else f"feature {first[1]}"
    else:
        where = f"index {first[1:]}"
    count = int(big.sum())
    raise DataError(
        f"{source}: {row}, {where}: {float(x[first]):g} is beyond the float32 range (|x| ≤ "
        f"{FLOAT32_MAX:.4g}) that models train in"
        + (f" ({count} such values)" if count > 1 else "")
        + "; rescale the data"
    )


def utf8_labels(y: np.ndarray) -> np.ndarray:
    """(N,) labels with bytes decoded as UTF-8 text (b"spam" → "spam", undecodable bytes replaced); others as
    they are. Training and ``certify --input`` read bytes labels alike."""
    return np.char.decode(y, "utf-8", errors="replace") if y.dtype.kind == "S" else y


def exact_float64(values: np.ndarray, source: str) -> np.ndarray:
    """Integers or booleans (any shape) as float64, refused unless every value is held exactly.

    Raises:
        DataError: an integer beyond 2⁵³ that float64 would round (names ``source``).
    """
    wide = values.astype(np.float64)
    with np.errstate(invalid="ignore"):  # 2**64 − 1 rounds to 2**64, which uint64 cannot hold: refused below
        back = wide.astype(values.dtype)
    if values.dtype.kind != "b" and not np.array_equal(back, values):
        raise DataError(f"{source}: x holds integers beyond 2**53, which float64 cannot hold exactly")
    return wide


def _check_exact_integers(x: np.ndarray, source: str, rows: int = 1 << 16) -> None:
    """Refuse 64-bit integer inputs x (N, ...) that float64 would round (:func:`exact_float64`), as
    ``certify --input`` does; checked ``rows`` rows at a time (narrower integers always fit)."""
    if x.dtype.kind in "iu" and x.dtype.itemsize > 4:
        for start in range(0, len(x), rows):
            exact_float64(x[start : start + rows], source)


def _check_labels(y: np.ndarray, n: int, source: str) -> None:
    """Labels: (n,) integers, strings or finite numbers."""
    if y.ndim != 1 or len(y) != n:
        raise DataError(f"{source}: labels must have shape ({n},), found {y.shape}")
    if y.dtype.kind not in "biufUS":
        raise DataError(f"{source}: labels must be integers or text, found dtype {y.dtype}")
    if y.dtype.kind == "f" and not np.isfinite(y).all():
        bad = np.flatnonzero(~np.isfinite(y))
        raise DataError(f"{source}: labels contain NaN or Inf (examples {bad[:5].tolist()})")


def _as_images(x: np.ndarray, source: str) -> np.ndarray:
    """(N, H, W) → (N, 1, H, W); (N, H, W, C) with C in {1, 3, 4} and H > 4 → (N, C, H, W)."""
    if x.ndim == 3:
        return x[:, None]
    if x.ndim == 4:
        if x.shape[3] in (1, 3, 4) and x.shape[1] not in (1, 3, 4):
            return x.transpose(0, 3, 1, 2)
        return x
    raise DataError(f"{source}: inputs of shape {x.shape} are not supported; use (N, d), (N, H, W) or (N, C, H, W)")


def tabular_radii(median_std: float, dim: int) -> dict[float, tuple[float, ...]]:
    """Report radii for feature vectors in raw units: ℓ∞ ≈ 1, 2, 5, 10% of the median feature std,
    ℓ2 = ℓ∞·√d and ℓ1 = ℓ∞·d (the same per-feature budget), rounded to two significant digits."""

    def nice(v: float) -> float:
        return float(f"{v:.2g}")

    base = [median_std * f for f in (0.01, 0.02, 0.05, 0.1)]
    return {
        1: tuple(nice(b * dim) for b in base),
        2: tuple(nice(b * math.sqrt(dim)) for b in base),
        INF: tuple(nice(b) for b in base),
    }


def image_radii(pixel_range: float) -> dict[float, tuple[float, ...]]:
    """The image report radii of the built-in tasks, scaled to a pixel range (1 for [0, 1] pixels)."""
    base = {1: (1.0, 2.0, 4.0, 8.0), 2: (0.25, 0.5, 1.0, 2.0), INF: (0.01, 0.02, 0.04, 0.08)}
    return {p: tuple(float(f"{r * pixel_range:.3g}") for r in radii) for p, radii in base.items()}


def task_from_arrays(
    x: np.ndarray,
    y: np.ndarray,
    sensitive_class: Hashable,
    other_class: Hashable | None = None,
    name: str = "user",
    *,
    source: str = "data",
    row_names: Sequence[str] | None = None,
    seed: int = 42,
    test_fraction: float = 0.2,
    val_fraction: float = 0.2,
    meta: dict[str, Any] | None = None,
) -> Task:
    """A binary task from in-memory arrays (shared by the file loaders).

    Args:
        x: (N, d) features or (N, H, W) / (N, C, H, W) / (N, H, W, C) images, raw units.
        y: (N,) labels (ints or strings).
        sensitive_class: label of the class to certify (becomes 1).
        other_class: label of the other class (becomes 0); None: every other label.
        name: task name. source: file name for messages. row_names: per-row names for messages.
        seed, test_fraction, val_fraction: split settings (see :func:`stratified_split`).
        meta: extra entries for ``TaskData.meta`` (e.g. ``feature_names``).
    Returns:
        A Task whose ``load`` returns the already split data (sensitive = 1, other = 0).
    Raises:
        DataError: shapes, labels, NaN/Inf, or too few examples of a class for three splits.
    """
    x, y = np.asarray(x), utf8_labels(np.asarray(y))  # bytes labels: text, as certify --input writes them
    if x.ndim < 2:
        raise DataError(f"{source}: inputs must have shape (N, ...) with one row per example, found {x.shape}")
    _check_labels(y, len(x), source)
    if x.dtype.kind not in "biuf":
        raise DataError(f"{source}: inputs must be numbers, found dtype {x.dtype}")
    _check_exact_integers(x, source)
    if len(x) == 0:
        raise DataError(f"{source}: no examples (inputs of shape {x.shape})")
    if 0 in x.shape[1:]:
        raise DataError(f"{source}: inputs of shape {x.shape} have no features")
    check_finite(x, source, row_names)
    check_float32_range(x, source, row_names, (meta or {}).get("feature_names"))
    keep, class_names = binary_labels(y, sensitive_class, other_class, source)
    labels = label_mask(y[keep], sensitive_class).astype(np.int64)
    inputs = x[keep] if x.ndim == 2 else _as_images(x[keep], source)
    try:
        data = task_data_from_arrays(
            inputs, labels, class_names, test_fraction=test_fraction, val_fraction=val_fraction, seed=seed
        )
    except DataError as exc:
        raise DataError(f"{source}: {exc}") from None
    data.meta.update(meta or {})
    return _task(name, f"{source}: {class_names[1]} (sensitive) vs {class_names[0]}", data)


def _task(name: str, description: str, data: TaskData) -> Task:
    train_x = data.train.x
    presets = fast_preset()
    withheld: dict[str, str] = {}
    if train_x.ndim == 2:
        median_std = float(data.meta["feature_scale"].median())
        model, train, radii = TABULAR_MODEL, TABULAR_TRAIN, tabular_radii(median_std, train_x.shape[1])
        withheld = log1p_withheld(data)
        presets |= {name: copy.deepcopy(p) for name, p in TABULAR_PRESETS.items() if name not in withheld}
    else:
        pixel_range = float(train_x.max() - train_x.min()) or 1.0
        model, train, radii = IMAGE_MODEL, IMAGE_TRAIN, image_radii(pixel_range)
        shape = tuple(train_x.shape[1:])
        why = f"it takes flat feature vectors, x of shape (N, d), and these inputs have shape {shape}"
        withheld = dict.fromkeys(TABULAR_PRESETS, why)  # (walkthrough 26c F10: "presets: ['fast']")
    return Task(
        name=name,
        description=description,
        load=lambda data_dir: data,
        model=copy.deepcopy(model),
        train=dict(train),
        presets=presets,
        withheld_presets=withheld,
        report_radii=radii,
    )


def log1p_withheld(data: TaskData) -> dict[str, str]:
    """``{"log1p-hinges": why}`` when a training value (x (N, d)) is below 0, naming its feature; else {}."""
    negative = (data.train.x < 0).any(dim=0).nonzero().flatten().tolist()
    if not negative:
        return {}
    names = data.meta.get("feature_names") or [f"feature {i}" for i in range(data.train.x.shape[1])]
    shown = first_few([names[i] for i in negative], 3)
    return {
        "log1p-hinges": f"{shown} take(s) values below 0 in training, and log1p reads every value below 0 as 0 "
        "(use --preset hinges)"
    }


def read_npz(path: Path, labels_required: bool = True) -> tuple[np.ndarray, np.ndarray | None]:
    """The ``x`` and ``y`` arrays of an ``.npz`` file, read whole without unpickling anything (``y`` None when
    absent and not ``labels_required``); for training. :class:`NpzStream` reads them a chunk at a time.

    Raises:
        DataError: see :func:`read_npz_named`.
    """
    x, y, _ = read_npz_named(path, labels_required)
    return x, y


def read_npz_named(path: Path, labels_required: bool = True) -> tuple[np.ndarray, np.ndarray | None, list[str] | None]:
    """:func:`read_npz`, plus the columns' names from an optional ``feature_names`` array (None when absent;
    :func:`check_feature_names`).

    Raises:
        DataError: not an .npz archive (a .npy file, a pickle, a damaged zip), no ``x`` or ``y``, a member
            that is not a NumPy array file (damaged, or not .npy: e.g. a pickle, never unpickled), arrays of
            Python objects (``allow_pickle=False``: they are never loaded), or bad ``feature_names``.
    """
    _check_npz_magic(path)
    try:
        loaded = np.load(path, allow_pickle=False)
    except (OSError, ValueError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    if not isinstance(loaded, np.lib.npyio.NpzFile):
        raise DataError(_NPY_NOT_NPZ.format(path=path))
    with loaded as archive:
        keys = ("x", "y") if labels_required or "y" in archive.files else ("x",)
        _check_keys(path, archive.files, keys)
        wanted = (*keys, FEATURE_NAMES) if FEATURE_NAMES in archive.files else keys
        out = [_npz_array(archive, key, path) for key in wanted]
    features = check_feature_names(out[-1], out[0].shape, path) if len(wanted) > len(keys) else None
    return out[0], (out[1] if len(keys) > 1 else None), features


def _npz_array(archive: Any, key: str, path: Path) -> np.ndarray:
    """Array ``key`` of an open np.load archive, refused (DataError) when it needs unpickling or is damaged."""
    try:
        value = archive[key]
    except ValueError as exc:  # object arrays: refused unread
        raise DataError(_UNPICKLE.format(path=path, key=key, why=_one_line(exc))) from None
    except (OSError, zipfile.BadZipFile, EOFError) as exc:
        raise DataError(f"{path}: array {key!r} is damaged ({_one_line(exc)})") from None
    if not isinstance(value, np.ndarray):  # np.load hands a member without the .npy magic over as bytes
        raise DataError(_NOT_NPY.format(path=path, key=key))
    return value


FEATURE_NAMES = "feature_names"
"""The optional npz array naming x's columns, ``np.savez(f, x=x, y=y, feature_names=np.array(names))``: a run
trained on it has named features (threat models and ``--monotone`` by name), and traffic is matched by name."""

MAX_FEATURE_NAMES = 1 << 20
"""Names a ``feature_names`` array may hold, each of at most :data:`MAX_LABEL_BYTES` bytes, and at most
:data:`MAX_NAMES_BYTES` in all."""
MAX_NAMES_BYTES = 64 << 20
"""Bytes of a ``feature_names`` array read (its header's count × width: 16,384 names of 1024 characters)."""


def check_feature_names(names: np.ndarray, x_shape: tuple[int, ...], path: Path) -> list[str]:
    """An npz's ``feature_names`` (d,) as text, one per column of its x (N, d).

    Raises:
        DataError: as :func:`check_names_header`; bytes that are not UTF-8, an empty or a repeated name.
    """
    check_names_header(names.dtype, names.shape, x_shape, path)
    if names.dtype.kind == "S":
        text = []
        for i, raw in enumerate(names.tolist()):
            try:
                text.append(raw.decode("utf-8"))
            except UnicodeDecodeError:
                raise DataError(f"{path}: {FEATURE_NAMES}[{i}] is not UTF-8 text ({raw[:40]!r})") from None
    else:
        text = [str(v) for v in names.tolist()]
    empty = [i for i, name in enumerate(text) if not name.strip()]
    if empty:
        raise DataError(f"{path}: {FEATURE_NAMES}[{empty[0]}] is empty; name every column of x")
    twice = [name for name, count in Counter(text).items() if count > 1]
    if twice:
        raise DataError(f"{path}: {FEATURE_NAMES} holds {', '.join(map(repr, twice[:5]))} more than once")
    return text


def check_names_header(dtype: np.dtype, shape: tuple[int, ...], x_shape: tuple[int, ...], path: Path) -> None:
    """Refuse ``feature_names`` of this dtype and shape, from its header alone (nothing read): not text, x not of
    shape (N, d), not one name per column, names wider than :data:`MAX_LABEL_BYTES` bytes (1024 characters),
    more than :data:`MAX_FEATURE_NAMES` names or :data:`MAX_NAMES_BYTES` in all (DataError naming the file)."""
    if dtype.kind not in "US":
        raise DataError(f"{path}: {FEATURE_NAMES} must hold text, one name per column of x; found dtype {dtype}")
    if len(x_shape) != 2:
        raise DataError(f"{path}: {FEATURE_NAMES} names the columns of an x of shape (N, d); x has shape {x_shape}")
    if tuple(shape) != (x_shape[1],):
        raise DataError(
            f"{path}: {FEATURE_NAMES} has shape {tuple(shape)}; it must name each of x's {x_shape[1]} columns, "
            f"({x_shape[1]},)"
        )
    count, width = x_shape[1], dtype.itemsize
    if width > MAX_LABEL_BYTES or count > MAX_FEATURE_NAMES or count * width > MAX_NAMES_BYTES:
        raise DataError(
            f"{path}: {FEATURE_NAMES} holds {count} names of {width} bytes each (dtype {dtype}); at most "
            f"{MAX_FEATURE_NAMES} names of {MAX_LABEL_BYTES} bytes (1024 characters), "
            f"{MAX_NAMES_BYTES >> 20} MiB in all"
        )


MAX_LABEL_BYTES = 4096  # per label of a streamed y: 1024 characters of a <U dtype
_NPY_NOT_NPZ = "{path}: a single array (.npy), not an .npz archive; save with np.savez(path, x=inputs, y=labels)"
_UNPICKLE = (
    "{path}: array {key!r} cannot be read without unpickling Python objects ({why}); save numbers or text, "
    "e.g. np.asarray(values, dtype=str) (pandas: df.columns.to_numpy(dtype=str))"
)
_NOT_NPY = (
    "{path}: member {key!r} is not a NumPy array file (damaged, or not .npy); save with np.savez(path, x=..., y=...)"
)
_DAMAGED = (OSError, ValueError, EOFError, zipfile.BadZipFile, zlib.error)


def _check_npz_magic(path: Path) -> bytes:
    """The first 6 bytes of the file, refused unless a zip (.npz) or one array (.npy): a pickle, text, ...

    Raises:
        DataError: unreadable, or not a zip nor an .npy file.
    """
    try:
        with open(path, "rb") as f:
            magic = f.read(6)
    except OSError as exc:
        raise DataError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
    if not magic.startswith((b"PK", b"\x93NUMPY")):
        raise DataError(
            f"{path}: not an .npz archive (a zip of .npy arrays); save with np.savez(path, x=..., y=...)"
            + _parquet_hint(path)
        )
    return magic


def _parquet_hint(path: Path) -> str:
    """A hint for a Parquet file (its first 4 bytes are "PAR1") given where CSV or npz is read, else "" (review 28c
    F4: said only "training does not read it" under certify --input too)."""
    try:
        with open(path, "rb") as f:
            parquet = f.read(4) == b"PAR1"
    except OSError:
        return ""
    return (
        "; this is a Parquet file: `certify --input` reads it by the suffix .parquet, and training reads CSV "
        "(--csv, --label-column) or npz, e.g. pandas.read_parquet(path).to_csv('train.csv', index=False)"
        if parquet
        else ""
    )


def _check_keys(path: Path, files: Sequence[str], keys: Sequence[str]) -> None:
    """Refuse an archive whose arrays (``files``, names without ``.npy``) lack one of ``keys``."""
    missing = [k for k in keys if k not in files]
    if missing:
        raise DataError(
            f"{path}: no array named {' or '.join(missing)} (arrays found: {list(files)}); "
            f"save with np.savez(path, x=inputs, y=labels)"
        )


FORTRAN_LIMIT = 128 * 2**20
"""Bytes of a Fortran-order npz array that certifying traffic reads whole (e.g. ``np.savez(f, x=df.to_numpy())``);
a larger one is refused (C order is streamed a chunk of rows at a time, whatever its size)."""


class NpyMember:
    """One array of an open ``.npz`` archive, its header read and its stream at the first value.

    Attributes:
        key: the array's name (``x``). shape: its shape, from the header. dtype: its dtype as written
            (byte order included). stream: the member, decompressed as it is read. objects: its dtype holds
            Python objects (reading it would unpickle): refused with a DataError, unless ``objects_ok``, when the
            member is left unread (its stream closed) for the caller to pass over (an optional ``y``).
    """

    def __init__(self, archive: zipfile.ZipFile, key: str, path: Path, objects_ok: bool = False) -> None:
        self.key, self.path = key, path
        info = archive.getinfo(key if key in archive.namelist() else key + ".npy")  # np.load's lookup order
        try:
            self.stream = archive.open(info)
        except (*_DAMAGED, NotImplementedError, RuntimeError) as exc:  # a bad local header, method, password
            raise DataError(f"{path}: array {key!r} cannot be read ({_one_line(exc)})") from None
        try:
            self.shape, fortran, self.dtype = self._header()
            offset = self.stream.tell()
        except DataError:
            self.stream.close()
            raise
        except _DAMAGED as exc:
            self.stream.close()
            raise DataError(f"{path}: array {key!r} is damaged ({_one_line(exc)})") from None
        self.objects = bool(self.dtype.hasobject)  # Python objects: reading them would unpickle
        if self.objects:
            self.stream.close()
            if objects_ok:  # (the caller leaves it out, unread: an optional y)
                return
            raise DataError(_UNPICKLE.format(path=path, key=key, why=f"dtype {self.dtype}"))
        if self.dtype.shape:  # a subarray dtype: each "value" is itself an array
            self.stream.close()
            raise DataError(f"{path}: array {key!r} has dtype {self.dtype}, an array per entry; save plain values")
        need = offset + math.prod(self.shape) * self.dtype.itemsize
        have = info.file_size
        if need > have:
            self.stream.close()
            raise DataError(
                f"{path}: array {key!r} is damaged: its header says shape {self.shape} of {self.dtype} "
                f"({need} bytes), the archive holds {have} bytes; the file is truncated"
            )
        self.whole: np.ndarray | None = None  # a Fortran-order array, read whole at the first rows asked for
        self.fortran_bytes = need - offset if fortran and sum(n > 1 for n in self.shape) > 1 else 0  # (else: the
        if self.fortran_bytes > FORTRAN_LIMIT:  # same bytes as C order, one axis longer than 1)
            self.stream.close()
            raise DataError(
                f"{path}: array {key!r} is saved in Fortran (column) order and is {self.fortran_bytes} bytes, more "
                f"than the {FORTRAN_LIMIT} read whole; save np.ascontiguousarray({key}) to have it streamed"
            )
        self.next_row = 0

    def _fortran(self, size: int) -> np.ndarray:
        """The whole array of a Fortran-order member (column after column: rows cannot be read a chunk at a
        time), in C order (memory: about 2 × ``size``, at most 2 × :data:`FORTRAN_LIMIT`)."""
        data = self.read_bytes(size)
        values = np.frombuffer(data, dtype=self.dtype, count=math.prod(self.shape)).reshape(self.shape, order="F")
        return np.ascontiguousarray(values, dtype=self.dtype.newbyteorder("="))

    def read_bytes(self, size: int) -> bytes:
        """The next ``size`` bytes of the member. DataError: it ends early or fails its checksum (damaged)."""
        try:
            data = self.stream.read(size) if size else b""
        except _DAMAGED as exc:
            raise DataError(f"{self.path}: array {self.key!r} is damaged ({_one_line(exc)})") from None
        if len(data) < size:
            raise DataError(f"{self.path}: array {self.key!r} is damaged: its data ends early (truncated)")
        return data

    def _header(self) -> tuple[tuple[int, ...], bool, np.dtype]:
        """(shape, fortran_order, dtype) from the .npy header (format 1.0 or 2.0; ValueError otherwise).

        Raises:
            DataError: the member does not start as a .npy file does (e.g. a pickle: never unpickled).
        """
        try:
            version = np.lib.format.read_magic(self.stream)
        except ValueError:
            raise DataError(_NOT_NPY.format(path=self.path, key=self.key)) from None
        if version == (1, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_1_0(self.stream)
        elif version == (2, 0):
            shape, fortran, dtype = np.lib.format.read_array_header_2_0(self.stream)
        else:  # 3.0 only encodes field names in UTF-8: never numbers or text
            raise ValueError(f".npy format {version[0]}.{version[1]} is not read; save numbers or text")
        if any(n < 0 for n in shape):
            raise ValueError(f"negative shape {shape}")
        return tuple(shape), bool(fortran), dtype

    def read_rows(self, rows: int) -> np.ndarray:
        """The next ``rows`` rows, (rows, *shape[1:]) in native byte order: ``rows`` × row bytes read, no more.

        Raises:
            DataError: the member ends early or fails its checksum (damaged), naming the file and array.
        """
        if self.fortran_bytes and self.whole is None:
            self.whole = self._fortran(self.fortran_bytes)
        if self.whole is not None:
            part = self.whole[self.next_row : self.next_row + rows]
            self.next_row += rows
            return part
        count = rows * math.prod(self.shape[1:])
        size = count * self.dtype.itemsize
        data = self.read_bytes(size)
        if not size:
            return np.zeros((rows, *self.shape[1:]), dtype=self.dtype.newbyteorder("="))
        values = np.frombuffer(data, dtype=self.dtype, count=count)
        return values.astype(self.dtype.newbyteorder("="), copy=True).reshape(rows, *self.shape[1:])


class NpzStream:
    """The ``x`` (N, ...) and ``y`` (N,) of an ``.npz`` file read a chunk of rows at a time, for certifying
    traffic: memory bounded by the chunk whatever N (a decompression bomb is never held whole), no array
    loaded by ``np.load`` and none unpickled. Opening reads only the zip directory and the arrays' headers; an
    array saved in Fortran order is read whole at its first chunk (up to :data:`FORTRAN_LIMIT` bytes).

    Attributes:
        x: the inputs' :class:`NpyMember`. y: the labels', None when the file has none (and they are optional),
            or when they are optional and an array of Python objects (never read: see ``y_unread``).
        y_unread: the dtype of an optional ``y`` left out because it holds Python objects (the caller says so),
            else None.
        feature_names: x's column names (:data:`FEATURE_NAMES`), None when the file has none.
    Raises:
        DataError: as :func:`read_npz` (not an .npz, a .npy file, a damaged zip, no ``x``, object arrays other
            than an optional ``y``),
            plus Fortran-order arrays over FORTRAN_LIMIT bytes, members shorter than their headers say, and
            labels wider than ``MAX_LABEL_BYTES``.
    """

    def __init__(self, path: Path, labels_required: bool = False) -> None:
        if _check_npz_magic(path).startswith(b"\x93NUMPY"):
            raise DataError(_NPY_NOT_NPZ.format(path=path))
        self.path = path
        try:
            self._archive = zipfile.ZipFile(path)
        except _DAMAGED as exc:
            raise DataError(f"{path}: not a readable .npz file ({_one_line(exc)})") from None
        with contextlib.ExitStack() as opened:
            opened.callback(self._archive.close)
            files = [n[:-4] if n.endswith(".npy") else n for n in self._archive.namelist()]
            keys = ("x", "y") if labels_required or "y" in files else ("x",)
            _check_keys(path, files, keys)
            self.x = NpyMember(self._archive, "x", path)
            opened.callback(self.x.stream.close)
            self.y, self.y_unread = self._labels(keys, labels_required)
            if self.y is not None:
                opened.callback(self.y.stream.close)
            if self.y is not None and self.y.dtype.itemsize > MAX_LABEL_BYTES:  # a chunk of them would not be small
                raise DataError(
                    f"{path}: y holds labels of {self.y.dtype.itemsize} bytes each (dtype {self.y.dtype}); "
                    f"labels may take at most {MAX_LABEL_BYTES} bytes"
                )
            self.feature_names = self._names() if FEATURE_NAMES in files else None
            opened.pop_all()

    def _labels(self, keys: Sequence[str], required: bool) -> tuple[NpyMember | None, np.dtype | None]:
        """(y's member, None); (None, its dtype) for optional labels of Python objects, left unread (walkthrough
        27f: a y saved from pandas as dtype object refused the whole file, though certifying needs no labels)."""
        if "y" not in keys:
            return None, None
        member = NpyMember(self._archive, "y", self.path, objects_ok=not required)
        return (None, member.dtype) if member.objects else (member, None)

    def _names(self) -> list[str]:
        """The ``feature_names`` array (:func:`check_feature_names`), read whole once its header shows it one name
        per column of x, each small (:func:`check_names_header`: a 2 MB file asked 4.5 GB before)."""
        member = NpyMember(self._archive, FEATURE_NAMES, self.path)
        with contextlib.closing(member.stream):
            check_names_header(member.dtype, member.shape, self.x.shape, self.path)
            names = member.read_rows(member.shape[0])
        return check_feature_names(names, self.x.shape, self.path)

    def chunks(self, chunk: int) -> Iterator[tuple[np.ndarray, np.ndarray | None]]:
        """(x rows (n, ...), y rows (n,) or None), ``chunk`` ≥ 1 rows at a time (the last may be shorter).

        Raises:
            DataError: x is not (N, ...) or y not (N,), before any value is read; a damaged member.
        """
        if not self.x.shape:
            raise DataError(f"{self.path}: x has shape (); it must hold one input per row, (N, ...)")
        n = self.x.shape[0]
        if self.y is not None and self.y.shape != (n,):
            raise DataError(f"{self.path}: y has shape {self.y.shape}; it must hold one label per input of x, ({n},)")
        for start in range(0, n, chunk):
            rows = min(chunk, n - start)
            yield self.x.read_rows(rows), (self.y.read_rows(rows) if self.y is not None else None)

    def close(self) -> None:
        """Close the members' streams and the archive."""
        for member in (self.x, self.y):
            if member is not None:
                member.stream.close()
        self._archive.close()

    def __enter__(self) -> NpzStream:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split())[:200]


def task_from_npz(
    path: str | Path,
    sensitive_class: Hashable,
    other_class: Hashable | None = None,
    name: str | None = None,
    *,
    seed: int = 42,
) -> Task:
    """A task from an ``.npz`` file with ``x`` (N, ...) inputs in raw units and ``y`` (N,) labels, its features
    named by an optional ``feature_names`` (d,) array (:data:`FEATURE_NAMES`; else by position).

    Images (N, H, W) get a channel axis; (N, H, W, C) with C in {1, 3, 4} is moved to channel-first.

    Raises:
        DataError: unreadable file, missing ``x``/``y``, object arrays, or invalid data (see
            :func:`task_from_arrays`).
    """
    path = Path(path)
    x, y, names = read_npz_named(path)
    assert y is not None  # labels_required=True: read_npz refused a file without y
    meta = None if names is None else {"feature_names": names}
    return task_from_arrays(
        x, y, sensitive_class, other_class, name or path.stem, source=str(path), seed=seed, meta=meta
    )


def _check_header(path: Path, header: list[str], ignore: tuple[str, ...] = ()) -> None:
    """Refuse a header with an empty or repeated column name, unless ignored: features (and threat models) go
    by name.

    Raises:
        DataError: naming the empty columns' positions (1 = first) or the repeated names.
    """
    empty = [i + 1 for i, name in enumerate(header) if not name and "" not in ignore]
    if empty:
        raise DataError(
            f"{path}: column(s) {', '.join(map(str, empty))} of the header have no name; name every column "
            "(a pandas index? write it with index=False, or skip it with --ignore-column '')"
        )
    twice = [name for name, count in Counter(header).items() if count > 1 and name not in ignore]
    if twice:
        raise DataError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once in the header")


MAX_CSV_ROW_CHARS = 2**24
"""The most characters one CSV row (a header or a record, quoted line breaks included) may hold: 16,777,216.
Python's csv reader builds a whole row, every field a string, before its length can be checked: about 6.5
bytes of memory per character, so a file of one 2 GB line would take 13 GB before it is refused. A row of
feature vectors is far shorter (150,528 pixel values of a 224 × 224 colour image, ~2 MB written out)."""


class BoundedCsvRows:
    """``csv.reader`` over an open text file, refusing (DataError naming the line) a row longer than
    :data:`MAX_CSV_ROW_CHARS` characters as soon as that many are read, so memory stays bounded whatever the
    file. Iterates rows (list[str]); ``line_num`` as the csv reader's."""

    def __init__(self, f: Any, path: Path, limit: int | None = None) -> None:
        self._f, self._path, self._used = f, path, 0
        self._limit = MAX_CSV_ROW_CHARS if limit is None else limit
        self._reader = csv.reader(self._lines())

    def _lines(self) -> Iterator[str]:
        while True:
            line = self._f.readline(self._limit - self._used + 1)
            if not line:
                return
            self._used += len(line)
            if self._used > self._limit:
                raise DataError(
                    f"{self._path}: line {self._reader.line_num + 1}: a row of more than {self._limit:,} characters; "
                    "not a table of feature vectors this tool reads"
                )
            yield line

    @property
    def line_num(self) -> int:
        return self._reader.line_num

    def __iter__(self) -> Iterator[list[str]]:
        return self

    def __next__(self) -> list[str]:
        self._used = 0
        return next(self._reader)


def read_csv_table(
    path: str | Path, label_column: str, ignore_columns: Sequence[str] = ()
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    """Read a CSV with a header row: numeric feature columns and one label column; ``ignore_columns`` are
    skipped unread (e.g. a file hash or an ID: text that is no feature).

    Returns:
        x (N, d) float64, y (N,) label strings, feature column names, row names ("row i (line L)").
    Raises:
        DataError: no header, unknown label column or column to ignore, ragged rows, missing or non-numeric
            values (naming the row, line and column).
    """
    path = Path(path)
    try:
        with path.open(newline="", encoding="utf-8-sig") as f:
            ignore = (ignore_columns,) if isinstance(ignore_columns, str) else tuple(ignore_columns)  # one name
            return _parse_csv(BoundedCsvRows(f, path), path, label_column, ignore)
    except (OSError, UnicodeDecodeError, csv.Error) as exc:
        if isinstance(exc, DataError):
            raise
        raise DataError(f"{path}: not a readable CSV file ({exc}){_parquet_hint(path)}") from exc


def _parse_csv(
    reader: Any, path: Path, label_column: str, ignore: tuple[str, ...] = ()
) -> tuple[np.ndarray, np.ndarray, list[str], list[str]]:
    header = [h.strip() for h in next(reader, [])]
    if not header:
        raise DataError(f"{path}: empty file; expected a header row naming the columns")
    if label_column not in header:
        raise DataError(f"{path}: no column {label_column!r}; columns are: {', '.join(header)}")
    _check_header(path, header, ignore)
    unknown = [c for c in ignore if c not in header or c == label_column]
    if unknown:
        raise DataError(f"{path}: cannot ignore column(s) {', '.join(map(repr, unknown))}: not a feature column")
    label_at = header.index(label_column)
    skip = {label_at, *(i for i, h in enumerate(header) if h in ignore)}
    features = [h for i, h in enumerate(header) if i not in skip]
    if not features:
        left = "every other column is ignored" if ignore else "it is the only column"
        raise DataError(f"{path}: no feature columns besides the label column {label_column!r} ({left})")
    rows, labels, names = [], [], []
    for number, row in enumerate(reader, start=1):
        if not any(cell.strip() for cell in row):
            continue  # blank line
        where = f"row {number} (line {reader.line_num})"
        if len(row) != len(header):
            raise DataError(f"{path}: {where} has {len(row)} fields, the header has {len(header)}")
        labels.append(row[label_at].strip())
        try:
            rows.append([csv_number(cell, path, where, header[i]) for i, cell in enumerate(row) if i not in skip])
        except NotANumberError as exc:  # text where a feature belongs: perhaps a column that is no feature
            raise DataError(
                f"{exc} (a column that is no feature, an ID or a hash? skip it with --ignore-column)"
            ) from None
        names.append(where)
        if not labels[-1]:
            raise DataError(f"{path}: {where} has no label in column {label_column!r}")
    if not rows:
        raise DataError(f"{path}: no data rows after the header")
    return np.array(rows, dtype=np.float64).reshape(len(rows), len(features)), np.array(labels), features, names


class NotANumberError(DataError):
    """A CSV cell holds text that is not a number (not a missing value): perhaps a column that is no feature."""


def csv_number(cell: str, path: Path, where: str, column: str) -> float:
    """The number in one CSV cell, or a one-line DataError naming the file, row, line and column
    (:class:`NotANumberError` for text that is not a number, a plain DataError for a missing value).
    Numbers are ASCII decimals (``_CSV_NUMBER``: sign, digits, point, exponent) or infinities, and ``True`` /
    ``False`` (any case) are 1 / 0; surrounding whitespace is ignored."""
    text = cell.strip()
    if text.lower() in _MISSING:
        raise DataError(f"{path}: {where} is missing a value in column {column!r}; fill it in or drop the row")
    if text.lower() in _BOOLEANS:  # pandas writes a bool column as True / False; Parquet booleans read as 1 / 0 too
        return _BOOLEANS[text.lower()]
    if _CSV_NUMBER.fullmatch(text) is None:
        raise NotANumberError(f"{path}: {where}, column {column!r}: {text!r} is not a number")
    return float(text)


def task_from_csv(
    path: str | Path,
    label_column: str,
    sensitive_class: Hashable,
    other_class: Hashable | None = None,
    name: str | None = None,
    *,
    seed: int = 42,
    ignore_columns: Sequence[str] = (),
) -> Task:
    """A task from a CSV table (header row; numeric features; labels in ``label_column``, any text;
    ``ignore_columns`` skipped).

    Raises:
        DataError: see :func:`read_csv_table` and :func:`task_from_arrays`.
    """
    path = Path(path)
    x, y, features, rows = read_csv_table(path, label_column, ignore_columns)
    return task_from_arrays(
        x,
        y,
        sensitive_class,
        other_class,
        name or path.stem,
        source=str(path),
        row_names=rows,
        seed=seed,
        meta={"feature_names": features},
    )


def task_from_image_folder(
    path: str | Path,
    sensitive_class: str,
    other_class: str | None = None,
    size: int | None = None,
    name: str | None = None,
    *,
    seed: int = 42,
) -> Task:
    """A task from a folder of class folders (``path/<class>/<image>``), pixels scaled to [0, 1].

    Args:
        path: the folder holding one subfolder per class.
        sensitive_class: the sensitive class's folder name.
        other_class: the other class's folder name; None: all other folders.
        size: centre crop/pad every image to ``size`` × ``size``; None: all images must share a size.
        name: task name (default: the folder's name).
    Returns:
        A Task with x (N, C, H, W) float32; C = 1 when every image is grayscale, else 3 (RGB).
    Raises:
        DataError: missing folders (the message lists those found), unreadable images, mixed sizes.
    """
    path = Path(path)
    classes = list_image_folder(path)
    names = np.array([c for c, files in classes.items() for _ in files])
    keep, class_names = binary_labels(names, sensitive_class, other_class, f"{path} (class folders)")
    files = [f for c in classes for f in classes[c]]
    kept = [f for f, k in zip(files, keep) if k]
    x = read_images(kept, image_mode(kept), size)
    y = label_mask(names[keep], sensitive_class).astype(np.int64)
    try:
        data = task_data_from_arrays(x.astype(np.float32) / 255.0, y, class_names, seed=seed)
    except DataError as exc:
        raise DataError(f"{path}: {exc}") from None
    return _task(name or path.name, f"{path}: {class_names[1]} (sensitive) vs {class_names[0]}", data)
