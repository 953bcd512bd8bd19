"""Certify new traffic: inputs from a CSV, Parquet or npz file or an image folder → one result row per input.

``asymcert certify RUN --input FILE --out RESULTS.csv`` writes a CSV (UTF-8, lines ending in LF) with the columns
``index``, ``score``, ``flagged`` (0/1), ``radius_l1``, ``radius_l2``, ``radius_linf`` (the norms certified;
other p as ``radius_l<p>``; raw input units, or the threat model's units under one) and ``label``
when the input has the run's label column (image folders: ``file``, the image's path in the folder, and
``label``, its subfolder). A CSV is read by the run's own feature columns, by
name (any order, extra columns ignored), ``CHUNK`` rows at a time, so memory stays bounded
whatever the file's size; a Parquet file likewise (pyarrow, the ``parquet`` extra), page by page.
Nothing is written unless the whole input certifies: the output appears
by an atomic rename. The file's numbers go to :func:`asymcert.certify` as they are: float64 values (a CSV's
text) are certified at their float32 rounding, with radii lowered to hold around the file's own numbers for
edits in their type, which the model reads rounded too (:mod:`asymcert.certify.input_rounding`); a float32
npz's are certified as they are.

Next to the results, ``RESULTS.csv.json`` (:class:`ResultsRecord`) says what they are: the meaning and units of
each column, closed form or reach-aware radii, the threat model they hold under, the run and input file, and
the results file's SHA-256, which ties it to them (:func:`read_results_record` trusts it only when it matches).
"""

from __future__ import annotations

import contextlib
import csv
import itertools
import math
import os
import warnings
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any, TextIO

import numpy as np
import torch
from tqdm.auto import tqdm

from asymcert.certify import Certificate, certify
from asymcert.certify.api import OUTSIDE, certifier_spec, make_options
from asymcert.certify.result import RAW_UNITS, Guarantee, norm_label, raw_units
from asymcert.checkpoint import Staged, commit, discard, load, stage
from asymcert.data.download import sha256_file
from asymcert.data.images import IMAGE_SUFFIXES, class_folders, image_files, read_image
from asymcert.data.user import (
    FLOAT32_MAX,
    MAX_LABEL_BYTES,
    BoundedCsvRows,
    NpzStream,
    csv_number,
    exact_float64,
    utf8_labels,
)
from asymcert.errors import DataError, InputError, WriteError
from asymcert.files import read_regular_text
from asymcert.jsontext import JsonTextError, parse_json
from asymcert.runfolder import (
    CertificateMode,
    RunRecord,
    being_written,
    certificate_mode,
    dumps_strict,
    exclusive_output,
    json_writer,
    read_run_record,
    run_threat_model,
    stale_temp_files,
    strict_jsonable,
    warn_if_unfinished,
)
from asymcert.text import first_few
from asymcert.threat import ResolvedThreatModel, ThreatModel
from asymcert.train.loop import resolve_device

CHUNK = 4096
"""Inputs read and certified at once (memory: one chunk of inputs and its results)."""


@dataclass(frozen=True)
class Batch:
    """One chunk of inputs: x (B, *input_shape) in raw units, the file's own numbers (float64 from a CSV,
    the array's float dtype from an npz, float32 pixels from images), the labels as text (or None), and
    for image folders the files' paths relative to the folder (else None)."""

    x: torch.Tensor
    labels: list[str] | None
    files: list[str] | None = None


@dataclass(frozen=True)
class TrafficResult:
    """What :func:`certify_file` did: inputs certified, how many flagged, seconds spent certifying, the
    results file, the units of its radii, and how many inputs lie outside the threat model's domain
    [lower, upper] (often corrupt values: a count below 0, a share above 1), with the index of the first and where
    it leaves the domain (``outside_detail``: its first such feature by name, its value and the bound, e.g.
    ``amount = 200000 > upper 100000``); and whether another process was writing the run folder (a run still
    training: its model as saved then)."""

    n_inputs: int
    n_flagged: int
    seconds: float
    out: Path
    units: str = RAW_UNITS
    n_outside: int = 0
    first_outside: int | None = None
    run_busy: bool = False
    outside_detail: str | None = None


def csv_batches(path: Path, features: Sequence[str], label_column: str | None, chunk: int) -> Iterator[Batch]:
    """Read a CSV with a header row by the run's feature columns, ``chunk`` rows at a time.

    Raises:
        DataError: no header, a feature column missing (named), a ragged row, a value that is not a
            finite number (naming the row, line and column), text that is not UTF-8, a field longer than
            ``csv.field_size_limit()`` characters.
    """
    with path.open(newline="", encoding="utf-8-sig") as f:
        reader = BoundedCsvRows(f, path)
        try:
            header = [h.strip() for h in next(reader, [])]
            if not header:
                raise DataError(f"{path}: the file is empty (no header row)")
            check_columns(path, header, features, label_column)
            at = [header.index(c) for c in features]
            label_at = header.index(label_column) if label_column in header else None
            yield from _csv_chunks(reader, f, path, header, at, label_at, chunk)
        except UnicodeDecodeError as exc:  # (the codec reads ahead: the line is near, not exact)
            byte = exc.object[exc.start : exc.start + 1]
            raise DataError(
                f"{path}: not UTF-8 text (byte {byte!r} near line {reader.line_num + 1}); save the CSV as UTF-8"
            ) from None
        except csv.Error as exc:  # e.g. a field over csv.field_size_limit() characters
            raise DataError(f"{path}: line {reader.line_num}: not readable as CSV ({exc})") from None


def check_columns(path: Path, names: Sequence[str], features: Sequence[str], label: str | None) -> None:
    """Refuse a table (CSV header, Parquet schema) with ``names`` that lacks one of the run's ``features`` or holds
    one of them, or the ``label`` column, more than once (DataError naming them)."""
    missing = [c for c in features if c not in names]
    if missing:
        raise DataError(f"{path}: the run's feature column(s) {', '.join(missing)} are missing")
    twice = [c for c in dict.fromkeys([*features, label]) if c is not None and list(names).count(c) > 1]
    if twice:
        raise DataError(f"{path}: column(s) {', '.join(map(repr, twice))} appear more than once")


def _csv_chunks(
    reader: Iterator[list[str]],
    f: TextIO,
    path: Path,
    header: list[str],
    at: list[int],
    label_at: int | None,
    chunk: int,
) -> Iterator[Batch]:
    """The data rows of an open CSV in chunks (see :func:`csv_batches`); blank rows are skipped."""
    rows: list[list[str]] = []
    lines: list[tuple[int, int]] = []  # (data row number, line number) of each kept row, for messages
    for number, row in enumerate(reader, start=1):
        if not "".join(row).strip():
            continue
        line = getattr(reader, "line_num", number + 1)
        if len(row) != len(header):
            raise DataError(f"{path}: row {number} (line {line}) has {len(row)} fields, the header has {len(header)}")
        rows.append(row)
        lines.append((number, line))
        if len(rows) == chunk:
            yield _csv_batch(rows, lines, path, header, at, label_at)
            rows, lines = [], []
    if rows:
        yield _csv_batch(rows, lines, path, header, at, label_at)


def _csv_batch(
    rows: list[list[str]],
    lines: list[tuple[int, int]],
    path: Path,
    header: list[str],
    at: list[int],
    label_at: int | None,
) -> Batch:
    """One chunk of CSV rows as a Batch: feature columns ``at`` parsed by NumPy in one call (about 6×
    faster than cell by cell); a chunk with any cell that is not a finite float32 number, or with text
    outside csv_number's ASCII grammar that float() would still read, is parsed cell by cell instead,
    which names the first bad cell (:func:`_finite`)."""
    picked = [[row[i] for i in at] for row in rows]
    values = None
    text = "".join(itertools.chain.from_iterable(picked))
    if text.isascii() and "_" not in text:  # what float() reads beyond csv_number's grammar: "1_0", "١٢"
        with contextlib.suppress(ValueError):
            values = np.array(picked, dtype=np.float64)
    if values is None or not bool((np.abs(values) <= FLOAT32_MAX).all()):  # NaN fails too
        values = np.array(
            [
                [_finite(cell, path, f"row {number} (line {line})", header[i]) for cell, i in zip(cells, at)]
                for cells, (number, line) in zip(picked, lines)
            ],
            dtype=np.float64,
        )
    labels = [row[label_at].strip() for row in rows] if label_at is not None else None
    return Batch(torch.from_numpy(values.reshape(len(rows), len(at))), labels)


def _finite(cell: str, path: Path, where: str, column: str) -> float:
    """The number in one CSV cell (:func:`~asymcert.data.user.csv_number`), refused unless a finite float32."""
    value = csv_number(cell, path, where, column)
    if not math.isfinite(value) or abs(value) > FLOAT32_MAX:
        raise DataError(f"{path}: {where}, column {column!r}: {cell.strip()!r} is not a finite float32 number")
    return value


def npz_batches(
    path: Path, chunk: int, input_shape: Sequence[int] | None = None, features: Sequence[str] | None = None
) -> Iterator[Batch]:
    """The ``x`` (N, *input_shape) of an npz file (``y`` (N,) as labels when present), ``chunk`` inputs at a time,
    streamed (:class:`~asymcert.data.user.NpzStream`): memory bounded by the chunk whatever N. When the file
    names x's columns (``feature_names``) and the run has ``features``, the run's columns are taken by name
    (in the run's order; other columns are left out); else x is read by position. A ``y`` of Python objects
    (dtype object) is never read: the inputs come without labels, and a warning says so.

    Raises:
        DataError: x not of the run's input shape or not numbers, or a y that is not one label per input (all
            named, from the arrays' headers before any value is read); feature names lacking one of the
            run's; a damaged or truncated array; a row holding NaN or ±inf (its index and row).
    """
    with NpzStream(path) as npz:
        take = _named_columns(path, npz.feature_names, features)
        shape = npz.x.shape if take is None else (*npz.x.shape[:1], len(take))
        if input_shape and tuple(shape[1:]) != tuple(input_shape):
            want = ", ".join(["N", *map(str, input_shape)])
            raise DataError(f"{path}: x has shape {shape}; the run takes inputs of shape ({want})")
        if npz.x.dtype.kind not in "biuf":
            raise DataError(f"{path}: x must hold numbers, found dtype {npz.x.dtype}")
        start = 0
        for x, y in npz.chunks(chunk):
            labels = None if y is None else [str(v) for v in utf8_labels(y).tolist()]
            values = _as_float(x if take is None else x[:, take], path)
            _check_finite(values, path, start)
            if start == 0:  # (once its first rows passed: one line for a file refused on them)
                _first_chunk_warnings(path, npz, None if take is not None else features)
            yield Batch(torch.from_numpy(values), labels)
            start += len(values)


def _first_chunk_warnings(path: Path, npz: NpzStream, by_position: Sequence[str] | None) -> None:
    """Once an npz's first rows are read: warn that its optional ``y`` is certified without (Python objects, never
    unpickled), and that x is read by position as the run's features ``by_position`` (None: matched by name)."""
    if npz.y_unread is not None:
        warnings.warn(
            f"{path}: array 'y' (dtype {npz.y_unread}) holds Python objects, which are never unpickled, so these "
            "inputs are certified without labels (no label column); save y as text or numbers, e.g. y.astype(str)",
            stacklevel=3,
        )
    if by_position is not None:
        _by_position(path, by_position)


def _by_position(path: Path, features: Sequence[str]) -> None:
    """Warn that an npz without names is read by position as the run's ``features``: nothing checks the order."""
    shown = first_few(features, 3, repr)
    warnings.warn(
        f"{path}: no feature_names array, so x's columns are read by position as the run's ({shown}); "
        "save the names with the file (np.savez(..., feature_names=...)) to have them matched by name",
        stacklevel=4,
    )


def _named_columns(path: Path, names: Sequence[str] | None, features: Sequence[str] | None) -> list[int] | None:
    """The positions in an npz's x of the run's ``features``, by the file's column ``names``; None (read by
    position) when either is None.

    Raises:
        DataError: a feature of the run the file does not name (the first few, by name).
    """
    if features is None or names is None:
        return None
    where = {name: i for i, name in enumerate(names)}
    missing = [f for f in features if f not in where]
    if missing:
        raise DataError(f"{path}: feature_names lacks the run's feature column(s) {first_few(missing, 5, repr)}")
    return [where[f] for f in features]


def _check_finite(values: np.ndarray, path: Path, start: int) -> None:
    """Refuse a chunk (n, ...) of an input file's rows ``start`` … holding NaN or ±inf, naming the file and the
    first such row as the results index it (DataError; ``asymcert.certify`` said only "first bad rows: [0]")."""
    bad = ~np.isfinite(values.reshape(len(values), -1)).all(axis=1)
    if bool(bad.any()):
        first = start + int(np.flatnonzero(bad)[0])
        raise DataError(f"{path}: x[{first}] (index {first}, row {first + 1}) holds NaN or ±inf; fix or drop it")


def _as_float(values: np.ndarray, path: Path) -> np.ndarray:
    """An npz chunk (n, ...) of numbers as floats, exactly: float arrays as they are, others (integers,
    booleans) as float64.

    Raises:
        DataError: integers beyond 2⁵³ (float64 would round them), floats longer than 64 bits (float128, which
            would be rounded before the radius is measured from them).
    """
    if values.dtype.kind == "f":
        if values.dtype.itemsize > 8:
            raise DataError(
                f"{path}: x holds {values.dtype.name} numbers; save them as float64 or float32 (floats longer "
                "than 64 bits would be rounded before the radii are measured from them)"
            )
        return np.ascontiguousarray(values)
    return exact_float64(values, str(path))


PARQUET_BUFFER = 1 << 16
"""Bytes :func:`parquet_batches` reads of a column chunk at a time (pyarrow's ``buffer_size``): pages are
decoded as they come, so memory is bounded by one page per column read (pyarrow writes pages of about
1 MB) and the chunk, not by the file's row groups (without it, pyarrow reads a row group's columns whole)."""


def _pyarrow(purpose: str, alternative: str = "") -> tuple[Any, Any]:
    """``pyarrow`` and ``pyarrow.parquet`` (the ``parquet`` extra; optional, so imported when first needed).

    Raises:
        InputError: pyarrow is not installed ("<purpose> needs pyarrow: pip install …<alternative>").
    """
    try:
        import pyarrow as pa
        import pyarrow.parquet as pq
    except ImportError as exc:
        raise InputError(f"{purpose} needs pyarrow: pip install 'asymcert[parquet]'{alternative}") from exc
    return pa, pq


def parquet_batches(path: Path, features: Sequence[str], label_column: str | None, chunk: int) -> Iterator[Batch]:
    """Read a Parquet file by the run's feature columns (by name, any order, other columns never read),
    ``chunk`` rows at a time, streamed page by page (:data:`PARQUET_BUFFER`): memory bounded whatever the
    number of rows or the size of a row group. Feature columns must hold integers, floats or booleans; the
    label column (optional) text, bytes (read as UTF-8) or numbers, read as text.

    Raises:
        InputError: pyarrow missing.
        DataError: not a Parquet file, a feature column missing, repeated, or not numeric (named, with its
            type), a label column of lists, structs or maps, columns that hold more decoded bytes than they
            need (:func:`_check_parquet_sizes`), a missing (null) or non-finite value or one beyond float32
            (naming the row and column), an integer beyond 2⁵³.
    """
    pa, pq = _pyarrow("Parquet input", " (or give a .csv)")
    try:
        reader = pq.ParquetFile(str(path), buffer_size=PARQUET_BUFFER, pre_buffer=False)
        schema = reader.schema_arrow
    except (pa.ArrowException, OSError) as exc:
        raise DataError(f"{path}: not a readable Parquet file ({_arrow_message(exc)})") from None
    _check_parquet_columns(path, schema, features, label_column, pa)
    label = label_column if label_column is not None and label_column in schema.names else None
    _check_parquet_sizes(path, reader.metadata, features, label)
    columns = list(dict.fromkeys([*features, *([label] if label is not None else [])]))
    start, tables = 0, reader.iter_batches(batch_size=chunk, columns=columns)
    while True:
        try:
            table = next(tables, None)
        except (pa.ArrowException, OSError) as exc:  # (a damaged page, found when it is read)
            raise DataError(f"{path}: rows from index {start} on are not readable ({_arrow_message(exc)})") from None
        if table is None:
            return
        yield _parquet_batch(table, path, features, label, start)
        start += table.num_rows


PARQUET_FEATURE_BYTES = 16
"""Bytes per row a Parquet feature column may hold decoded (8 for float64, and room for the levels)."""
PARQUET_LABEL_BYTES = 256
"""Bytes per row a Parquet label column may hold decoded on average (labels are class names)."""
PARQUET_SLACK = 1 << 20
"""Bytes every column of a row group may hold on top of that (page headers, dictionaries, small files)."""
PARQUET_LABEL_GROUP_BYTES = 128 << 20
"""Bytes a Parquet label column may hold decoded in one row group, whatever its rows (a value is decoded whole:
one label of 250 MiB in a 30 kB file of 2²⁰ rows, within 256 bytes a row on average, took 3.5 GB; 10⁶ rows of
35-character class names written without a dictionary hold 37 MiB)."""


def _check_parquet_sizes(path: Path, metadata: Any, features: Sequence[str], label: str | None) -> None:
    """Refuse a Parquet file whose footer gives a column read more decoded bytes per row group than
    ``PARQUET_FEATURE_BYTES`` (features) or ``PARQUET_LABEL_BYTES`` (the label) per row, plus ``PARQUET_SLACK``:
    pyarrow decodes a page whole, so a small compressed file of a few huge cells (a 400 MiB label in a 15 kB
    file) would take that much memory (DataError naming the column and row group, before any page is read)."""
    wanted = {name: PARQUET_FEATURE_BYTES for name in features} | ({label: PARQUET_LABEL_BYTES} if label else {})
    for g in range(metadata.num_row_groups):
        group = metadata.row_group(g)
        sizes = dict.fromkeys(wanted, 0)
        for j in range(group.num_columns):
            column = group.column(j)
            top = column.path_in_schema.split(".")[0]
            if top in sizes:
                sizes[top] += max(int(column.total_uncompressed_size), 0)
        for name, size in sizes.items():
            if size > wanted[name] * group.num_rows + PARQUET_SLACK:
                raise DataError(
                    f"{path}: column {name!r} holds {size / 2**20:.1f} MiB decoded in row group {g} of "
                    f"{group.num_rows} rows, more than a {'label' if name == label else 'feature'} column "
                    f"needs ({wanted[name]} bytes a row); refused, it would be read into memory whole"
                )
            if name == label and size > PARQUET_LABEL_GROUP_BYTES:
                raise DataError(
                    f"{path}: label column {name!r} holds {size / 2**20:.1f} MiB decoded in row group {g}, more "
                    f"than the {PARQUET_LABEL_GROUP_BYTES >> 20} MiB read of a row group's labels; write the file "
                    "with smaller row groups, or without the label column"
                )


def _arrow_message(exc: BaseException) -> str:
    """pyarrow's message on one line, at most 200 characters."""
    return " ".join(str(exc).split())[:200]


def _check_parquet_columns(path: Path, schema: Any, features: Sequence[str], label: str | None, pa: Any) -> None:
    """Refuse a Parquet schema without the run's feature columns, with one of them (or the label) twice, or
    with a feature column that does not hold numbers (DataError naming them)."""
    check_columns(path, list(schema.names), features, label)
    numeric = (pa.types.is_integer, pa.types.is_floating, pa.types.is_boolean)
    wrong = [f"{c!r} ({schema.field(c).type})" for c in features if not any(t(schema.field(c).type) for t in numeric)]
    if wrong:
        raise DataError(
            f"{path}: feature column(s) {', '.join(wrong)} are not integers, floats or booleans (decimals, text, "
            "lists, ...); store them as integers or floats"
        )
    if label is not None and label in schema.names:
        kind = schema.field(label).type
        value = kind.value_type if pa.types.is_dictionary(kind) else kind
        if pa.types.is_nested(value):  # (decimals, string views, dates: read as text)
            raise DataError(
                f"{path}: label column {label!r} holds {kind}; a label is one value per row, text or a number "
                "(lists, structs, maps and unions are not read)"
            )


def _row(index: int) -> str:
    """A Parquet row named as the results name it: its ``index`` (0 = the first row)."""
    return f"index {index} (row {index + 1})"


def _parquet_batch(table: Any, path: Path, features: Sequence[str], label: str | None, start: int) -> Batch:
    """One record batch of :func:`parquet_batches` (rows ``start`` …) as a Batch of float64 features."""
    values = np.empty((table.num_rows, len(features)), dtype=np.float64)
    for j, name in enumerate(features):
        column = table.column(name)
        if column.null_count:
            row = start + int(np.flatnonzero(column.is_null().to_numpy(zero_copy_only=False))[0])
            raise DataError(f"{path}: {_row(row)}, column {name!r}: a missing value (null); fill or drop it")
        raw = column.to_numpy(zero_copy_only=False)
        values[:, j] = raw if raw.dtype.kind == "f" else exact_float64(raw, f"{path}: column {name!r}")
    bad = ~(np.abs(values) <= FLOAT32_MAX)  # (NaN too)
    if bad.any():
        i, j = (int(v) for v in np.argwhere(bad)[0])
        raise DataError(
            f"{path}: {_row(start + i)}, column {features[j]!r}: {float(values[i, j])!r} is not a finite float32 number"
        )
    labels = None
    if label is not None:
        _check_label_sizes(table.column(label), path, label, start)
        labels = ["" if v is None else _label_text(v) for v in table.column(label).to_pylist()]
    return Batch(torch.from_numpy(values), labels)


def _check_label_sizes(column: Any, path: Path, label: str, start: int) -> None:
    """Refuse a chunk's label column (a pyarrow ChunkedArray of rows ``start`` …) holding a label of more than
    :data:`MAX_LABEL_BYTES` bytes, from Arrow's own lengths, before the labels become Python strings and
    results rows: the footer's sizes are the file's own word, and a file that understated them had its 200 MiB
    label written out at 2.2 GB (review 27c F2; a dictionary column: its dictionary's labels)."""
    pa, _ = _pyarrow("Parquet input")
    import pyarrow.compute as pc  # (with pyarrow, the optional extra)

    for chunk in getattr(column, "chunks", [column]):  # (a record batch holds one array)
        values = chunk.dictionary if pa.types.is_dictionary(chunk.type) else chunk
        longest = _longest(values, pa, pc)
        if longest is not None and longest > MAX_LABEL_BYTES:
            raise DataError(
                f"{path}: column {label!r} holds a label of {longest} bytes in the rows from index {start} on; "
                f"labels may take at most {MAX_LABEL_BYTES} bytes"
            )


def _longest(values: Any, pa: Any, pc: Any) -> int | None:
    """Bytes of the longest text or binary value of a pyarrow array (views as their large forms, fixed-size
    binary by its width); None for other types (numbers, decimals, dates: small by type) or no value."""
    kind = values.type
    if pa.types.is_fixed_size_binary(kind):
        return int(kind.byte_width) if len(values) else None
    views = getattr(pa.types, "is_string_view", None), getattr(pa.types, "is_binary_view", None)  # (pyarrow ≥ 16)
    if any(is_view is not None and is_view(kind) for is_view in views):  # (no length kernel: review 27e F4)
        values = values.cast(pa.large_binary())
    elif not any(
        t(kind) for t in (pa.types.is_string, pa.types.is_large_string, pa.types.is_binary, pa.types.is_large_binary)
    ):
        return None
    return pc.max(pc.binary_length(values)).as_py()


def _label_text(value: object) -> str:
    """A Parquet label as text: binary labels decoded as UTF-8 (undecodable bytes replaced), as npz labels are."""
    return (value.decode("utf-8", errors="replace") if isinstance(value, bytes) else str(value)).strip()


def image_batches(root: Path, input_shape: Sequence[int], chunk: int) -> Iterator[Batch]:
    """The images of ``root`` as ``--images`` reads them (:func:`~asymcert.data.images.class_folders`: the images
    directly in each subfolder, labelled by its name, sorted; nothing deeper, nothing directly in ``root``), or,
    when no subfolder holds an image, the images directly in ``root``, unlabelled; decoded as the run's inputs:
    (C, H, W) with C = 1 grayscale or 3 RGB, each H × W as stored, pixels scaled to [0, 1] (as image-folder runs
    are trained), ``chunk`` at a time. File paths (relative to ``root``) and labels are :func:`name_text`.

    Raises:
        InputError: a run whose inputs are not (C, H, W) images with C ∈ {1, 3} and H = W, or no image files.
        DataError: an unreadable image, or one the run cannot take as stored (:func:`_images_of_size`).
    """
    shape = tuple(input_shape)
    if len(shape) != 3 or shape[0] not in (1, 3) or shape[1] != shape[2]:
        raise InputError(f"{root}: an image folder needs a run on square images (C, H, H); this run takes {shape}")
    classes = class_folders(root)
    files = [f for folder in classes.values() for f in folder] if classes else image_files(root)
    if not files:
        raise InputError(
            f"{root}: no image files ({', '.join(IMAGE_SUFFIXES)}) in its class subfolders or directly in it"
        )
    labels = [name_text(c) for c, folder in classes.items() for _ in folder] if classes else None
    mode = "L" if shape[0] == 1 else "RGB"
    for start in range(0, len(files), chunk):
        part = files[start : start + chunk]
        pixels = _images_of_size(part, mode, shape).astype(np.float32) / 255.0
        names = [name_text(f.relative_to(root).as_posix()) for f in part]
        yield Batch(torch.from_numpy(pixels), labels[start : start + chunk] if labels is not None else None, names)


def name_text(name: str) -> str:
    """A file or folder name as text that any output takes: Python holds each byte of a name that is not UTF-8
    as a lone surrogate (U+DC80…U+DCFF), which UTF-8 files and Parquet refuse (review s34 F1: a traceback); those
    bytes are replaced by U+FFFD, as undecodable bytes of npz and Parquet labels are (:func:`_label_text`)."""
    try:
        return name.encode("utf-8", "surrogateescape").decode("utf-8", errors="replace")
    except UnicodeEncodeError:  # (another lone surrogate, as a Windows name may hold)
        return "".join("\ufffd" if "\ud800" <= c <= "\udfff" else c for c in name)


def _images_of_size(paths: Sequence[Path], mode: str, shape: tuple[int, ...]) -> np.ndarray:
    """The images ``paths`` (N, C, H, W) uint8, each refused unless it is the run's H × W as stored: cutting one
    to size certified another picture than the file's, with no word (walkthrough 28d: a 40×40 image among 32×32
    ones was certified by its centre). Likewise a colour image for a grayscale run (``mode`` ``"L"``) is refused,
    not certified by its luma (review s34 F5); a grayscale image for an RGB run gets its grey in all three
    channels, as ``--images`` training reads the grayscale images of a mixed folder."""
    out = np.empty((len(paths), *shape), dtype=np.uint8)
    for i, path in enumerate(paths):
        image = read_image(path, mode, colour_to_gray=False)
        if image.shape[1:] != shape[1:]:
            raise DataError(
                f"{path}: {image.shape[2]}×{image.shape[1]} pixels, but the run takes {shape[2]}×{shape[1]} images; "
                "crop or resize it to that size first (asymcert certifies the pixels as they are)"
            )
        out[i] = image
    return out


TABLE_READERS = {".csv": ("a CSV", csv_batches), ".parquet": ("a Parquet file", parquet_batches)}
"""Input files read by the run's feature columns, by suffix: what they are called, and their reader."""


def input_batches(path: Path, run: RunRecord, chunk: int) -> Iterator[Batch]:
    """Batches of a traffic file by its suffix: ``.csv`` or ``.parquet`` (the run's feature columns, by name) or
    ``.npz``; or of a folder of images (:func:`image_batches`).

    Raises:
        InputError: another suffix, or a CSV for a run that was not trained on named columns.
    """
    if path.is_dir():
        return image_batches(path, run.model.get("input_shape") or [], chunk)
    suffix = path.suffix.lower()
    if suffix in TABLE_READERS:
        what, read = TABLE_READERS[suffix]
        if not run.feature_names:
            raise InputError(
                f"{path}: {what} needs a run trained on named feature columns (a CSV, or an npz with feature_names); "
                "use an .npz file"
            )
        label = run.task.get("label_column")
        return read(path, [str(c) for c in run.feature_names], label if isinstance(label, str) else None, chunk)
    if suffix == ".npz":
        names = [str(c) for c in run.feature_names] if run.feature_names else None
        return npz_batches(path, chunk, run.model.get("input_shape") or None, names)
    raise InputError(
        f"{path}: unknown input format {suffix or '(no suffix)'!r}; use .csv, .parquet, .npz or an image folder"
    )


def _result_columns(cert: Certificate, start: int, norms: Sequence[float], batch: Batch) -> dict[str, list]:
    """The result columns of one certified chunk, in output order: index, [file], [predicted: multiclass and
    one-vs-rest models], score, flagged (0/1), [abstained: smoothed models], radius_<norm>..., [label] (meanings:
    :func:`column_meanings`)."""
    kind = result_kind(cert)
    out: dict[str, list] = {"index": list(range(start, start + len(cert)))}
    if batch.files is not None:
        out["file"] = batch.files
    if kind.decision != "sensitive":
        out["predicted"] = cert.predicted.long().cpu().tolist()
    score = cert.extra.get(kind.score)
    if score is not None and kind.score == "scores":  # (N, K): the predicted class's
        score = score.gather(1, cert.predicted.to(score.device).long()[:, None])[:, 0]
    out["score"] = score.double().cpu().tolist() if score is not None else [math.nan] * len(cert)
    out["flagged"] = _flagged(cert).long().cpu().tolist()
    if cert.abstained is not None:
        out["abstained"] = cert.abstained.long().cpu().tolist()
    for p in norms:
        out[f"radius_{norm_label(p)}"] = cert.radius(p).double().cpu().tolist()
    if batch.labels is not None:
        out["label"] = batch.labels
    return out


def _flagged(cert: Certificate) -> torch.Tensor:
    """(N,) bool, a results file's ``flagged`` (and its count): binary models, flagged as the sensitive class;
    one-vs-rest, the predicted class flags the input; multiclass argmax models, every input."""
    return cert.sensitive if cert.binary else cert.predicted_flagged()


_SCORE_KEYS = ("score", "scores", "margin", "p_lower", "probability")
"""Where a certificate keeps the number a results file shows as ``score`` (the first it has; see _SCORE_MEANINGS)."""


@dataclass(frozen=True)
class ResultKind:
    """What a results file's columns mean for a model's certificates (:func:`column_meanings`).

    Attributes:
        decision: ``"sensitive"`` (binary sensitive-class models), ``"class flag"`` (one-vs-rest: the predicted
            class's own flag) or ``"decision"`` (multiclass models certifying the argmax).
        score: the certificate's ``extra`` key shown as ``score`` (one of :data:`_SCORE_KEYS`; ``""``: none).
        alpha: a probabilistic certificate's failure probability (randomized smoothing), else None.
        abstains: whether the certifier may abstain (an ``abstained`` column).
    """

    decision: str = "sensitive"
    score: str = "score"
    alpha: float | None = None
    abstains: bool = False


def result_kind(cert: Certificate) -> ResultKind:
    """The :class:`ResultKind` of ``cert``'s model."""
    decision = "sensitive" if cert.binary else "class flag" if cert.guarantee is Guarantee.FLAG else "decision"
    score = next((key for key in _SCORE_KEYS if key in cert.extra), "")
    return ResultKind(decision, score, cert.alpha, cert.abstained is not None)


CSV_LINE_END = "\n"
"""The line ending of a results CSV: LF on every platform (csv's default, CRLF, left a ``\\r`` in the last field for
``cut``, ``cmp`` and other line tools; walkthrough 27f)."""

TEXT_COLUMNS = ("file", "label")
"""The results columns that hold text of the input's (image paths, labels): the only cells that may hold ``\\r``."""


class _CsvSink:
    """Results as CSV rows, lines ending in :data:`CSV_LINE_END`; floats with 17 significant digits (``repr``: they
    round-trip exactly). A row whose text holds a bare ``\\r`` has every field quoted: csv quotes a field for the
    characters of its own line ending only, and an unquoted ``\\r`` ends a row for CSV readers."""

    def __init__(self, f: TextIO) -> None:
        self.writer = csv.writer(f, lineterminator=CSV_LINE_END)
        self.quoted = csv.writer(f, lineterminator=CSV_LINE_END, quoting=csv.QUOTE_ALL)
        self.header = False

    def write(self, columns: dict[str, list]) -> None:
        if not self.header:
            self.writer.writerow(list(columns))
            self.header = True
        cells = [[repr(v) if isinstance(v, float) else v for v in values] for values in columns.values()]
        texts = [columns[c] for c in TEXT_COLUMNS if c in columns]
        if not any("\r" in v for values in texts for v in values):
            self.writer.writerows(zip(*cells))
            return
        for row in zip(*cells):
            (self.quoted if any("\r" in v for v in row if isinstance(v, str)) else self.writer).writerow(row)


class _ParquetSink:
    """Results as one Parquet row group per chunk (pyarrow, the ``parquet`` extra), written as they come; the
    file's schema metadata holds ``metadata`` (``asymcert.units``: what the radius columns measure, ``asymcert.run``
    the run folder, ``asymcert.radii``: "closed form" or "reach-aware", ``asymcert.threat_model``: the threat model
    the radii hold under as JSON, :meth:`~asymcert.threat.ThreatModel.to_dict`, ``null`` for none or one not known:
    the unit phrase is the same for every threat model, audit units30 F7)."""

    def __init__(self, path: Path, metadata: Mapping[str, str] | None = None) -> None:
        pa, pq = _pyarrow("Parquet output", " (or write a .csv)")
        self.pa, self.pq, self.path, self.metadata = pa, pq, path, dict(metadata or {})
        self.writer: Any = None

    def write(self, columns: dict[str, list]) -> None:
        try:
            table = self.pa.table(columns).replace_schema_metadata(self.metadata)
            if self.writer is None:
                self.writer = self.pq.ParquetWriter(str(self.path), table.schema)
            self.writer.write_table(table)
        except self.pa.ArrowException as exc:  # (pyarrow's own errors; OSError is atomic_write's to report)
            raise WriteError(f"Parquet could not take the results ({' '.join(str(exc).split())[:200]})") from None

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


RECORD_VERSION = 2
"""Version of the :class:`ResultsRecord` JSON layout (``"version"``; 2 added ``threat_model`` and ``features``)."""

RECORD_OPTIONAL = ("threat_model", "features")
"""Fields of a :class:`ResultsRecord` that version 1 records lack (read back as None)."""


@dataclass(frozen=True)
class ResultsRecord:
    """What a results file of :func:`certify_file` holds, written next to it as ``RESULTS.csv.json``
    (:func:`record_path`) once the results are complete, and tied to them by their SHA-256.

    Attributes:
        results: the results file's name (in the record's own folder).
        results_sha256: hex SHA-256 of the results file's bytes when the record was written.
        run: the run folder whose model certified them, as given.
        input: the input file or image folder, as given.
        units: what the radius columns measure (raw input units, or the threat model's).
        columns: each column's meaning, in file order.
        mode: closed form or reach-aware radii, under which threat model (its ``certificates_sha256`` is
            ``results_sha256``).
        n_inputs, n_flagged: rows, and rows flagged.
        n_outside, first_outside: inputs outside the threat model's domain, and the index of the first (None: none).
        threat_model: the threat model the radii hold under, as JSON (:meth:`~asymcert.threat.ThreatModel.to_dict`),
            whichever its source (the run's own too, so the units can be read without the run folder); None: none.
        features: the input columns the model read, in its input order (CSV and Parquet inputs); None otherwise.
    """

    results: str
    results_sha256: str
    run: str
    input: str
    units: str
    columns: dict[str, str]
    mode: CertificateMode
    n_inputs: int
    n_flagged: int
    n_outside: int = 0
    first_outside: int | None = None
    threat_model: dict[str, Any] | None = None
    features: list[str] | None = None

    def to_dict(self) -> dict[str, Any]:
        """The record's JSON object (:meth:`from_dict` reads it back)."""
        return {
            "version": RECORD_VERSION,
            **{f.name: getattr(self, f.name) for f in fields(self)},
            "mode": self.mode.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: Any) -> ResultsRecord | None:
        """The record a JSON object holds; None when it is not one (wrong types, keys missing)."""
        if not isinstance(raw, dict) or any(f.name not in raw for f in fields(cls) if f.name not in RECORD_OPTIONAL):
            return None
        raw = {name: None for name in RECORD_OPTIONAL} | raw
        mode = CertificateMode.from_dict(raw["mode"])
        texts = all(isinstance(raw[k], str) for k in ("results", "results_sha256", "run", "input", "units"))
        counts = all(_is_count(raw[k]) for k in ("n_inputs", "n_flagged", "n_outside"))
        columns = isinstance(raw["columns"], dict) and all(isinstance(v, str) for v in raw["columns"].values())
        first = raw["first_outside"] is None or _is_count(raw["first_outside"])
        optional = (raw["threat_model"] is None or isinstance(raw["threat_model"], dict)) and (
            raw["features"] is None
            or (isinstance(raw["features"], list) and all(isinstance(c, str) for c in raw["features"]))
        )
        if mode is None or not (texts and counts and columns and first and optional):
            return None
        return cls(**{f.name: raw[f.name] for f in fields(cls)} | {"mode": mode})


def _is_count(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def record_path(out: str | Path) -> Path:
    """Where :func:`certify_file` writes the :class:`ResultsRecord` of results file ``out``: ``out`` + ``.json``."""
    out = Path(out)
    return out.with_name(out.name + ".json")


def read_results_record(out: str | Path) -> ResultsRecord | None:
    """The record of results file ``out`` (read from ``out`` + ``.json``), or None.

    Returns:
        A :class:`ResultsRecord`, a frozen dataclass, not a dict: its fields are attributes (``record.n_flagged``,
        not ``record["n_flagged"]``; :meth:`ResultsRecord.to_dict` gives the JSON object): ``results``,
        ``results_sha256``, ``run``, ``input``, ``units``, ``columns`` (column → meaning), ``mode``
        (:class:`~asymcert.runfolder.CertificateMode`), ``n_inputs``, ``n_flagged``, ``n_outside``,
        ``first_outside``, ``threat_model`` and ``features``. None when there is no record, it is damaged, or it
        was written for other results than those now in ``out`` (its SHA-256 differs: e.g. an interrupted rewrite
        or an edited file).

    Example:
        >>> read_results_record("no-such-results.csv") is None
        True
    """
    out = Path(out)
    try:
        record = ResultsRecord.from_dict(parse_json(read_regular_text(record_path(out))))
        return record if record is not None and record.results_sha256 == sha256_file(out) else None
    except (OSError, UnicodeDecodeError, JsonTextError):
        return None


_SCORE_MEANINGS = {
    "score": "the model's score s(x), positive when flagged (feature-convex models: the certifier's float64 reference "
    "score as float32 where its sign is sure, the model's own float32 score near 0; other models: their own score)",
    "scores": "s_k(x) of the predicted class k, positive when class k flags the input (the model's own float32 score)",
    "margin": "the margin between the two largest class scores (the model's own arithmetic)",
    "p_lower": "a lower confidence bound (level 1 − alpha) on the probability that the smoothing noise gives the "
    "predicted class; above 0.5 where a radius is certified",
    "probability": "the probability that the smoothing noise gives the predicted class (computed exactly); above 0.5 "
    "where a radius is certified",
    "": "none (NaN): this model's certificates give no score",
}
_FLAGGED_MEANINGS = {
    "sensitive": "1: the model flags the input (the sensitive class), 0: it accepts it",
    "class flag": "1: the predicted class flags the input (s_k(x) > 0), 0: no class flags it",
    "decision": "1 for every input: a multiclass model decides every input (column predicted)",
}
_RADIUS_MEANINGS = {
    "sensitive": "makes a flagged input accepted; inf: none at any size; 0 for accepted inputs",
    "class flag": "makes the predicted class's score s_k non-positive (removes its flag; another class may overtake "
    "it: the argmax is not certified); inf: none at any size; 0 when no class flags the input",
    "decision": "changes the predicted class; inf: none at any size; 0 where none is certified",
}


def column_meanings(
    units: str, norms: Sequence[float], files: bool, labels: bool, kind: ResultKind | None = None
) -> dict[str, str]:
    """What each column of a results file means, in file order (``files``: image folders' ``file`` column;
    ``labels``: the input's labels; ``kind``: the model's, :func:`result_kind`; None: a binary model's s(x))."""
    kind = kind or ResultKind()
    cols = {"index": "the input's position in the input file (0 = first row, image or array entry)"}
    if files:
        cols["file"] = "the image's path inside the input folder"
    if kind.decision != "sensitive":
        cols["predicted"] = "the predicted class: argmax_k of the class scores, as an index into the run's classes"
    cols["score"], cols["flagged"] = _SCORE_MEANINGS[kind.score], _FLAGGED_MEANINGS[kind.decision]
    if kind.abstains:
        cols["abstained"] = "1: the certifier abstains (no decision it can vouch for; radius 0), else 0"
    chance = "" if kind.alpha is None else f"with probability ≥ 1 − {kind.alpha:g} over the certifier's sampling, "
    for p in norms:
        size = "ℓ∞" if math.isinf(p) else f"ℓ{p:g}"
        cols[f"radius_{norm_label(p)}"] = (
            f"{chance}no allowed change of {size} size below this, in {units}, {_RADIUS_MEANINGS[kind.decision]}"
        )
    if labels:
        cols["label"] = "the input's label, as in the input file"
    return cols


def results_record(
    done: TrafficResult,
    sha: str,
    run_dir: Path,
    input_path: Path,
    mode: CertificateMode,
    norms: Sequence[float],
    first: Batch,
    tm: ResolvedThreatModel | None = None,
    features: Sequence[str] | None = None,
    kind: ResultKind | None = None,
) -> ResultsRecord:
    """The :class:`ResultsRecord` of the complete results file ``done.out`` whose bytes have the SHA-256 ``sha`` (its
    columns as ``first`` had them), under threat model ``tm`` (None: none) with the input columns ``features``
    (None: not a table), for a model of ``kind`` (:func:`result_kind`)."""
    columns = column_meanings(done.units, norms, first.files is not None, first.labels is not None, kind)
    return ResultsRecord(
        done.out.name,
        sha,
        str(run_dir),
        str(input_path),
        done.units,
        columns,
        CertificateMode(**{**mode.to_dict(), "certificates_sha256": sha}),
        done.n_inputs,
        done.n_flagged,
        done.n_outside,
        done.first_outside,
        _threat_json(tm),
        None if features is None else [str(c) for c in features],
    )


OUTPUT_SUFFIXES = (".csv", ".parquet")


def certify_file(
    run_dir: str | Path,
    input_path: str | Path,
    out: str | Path,
    norms: Sequence[float] = (1.0, 2.0, math.inf),
    device: str | torch.device = "cpu",
    chunk: int = CHUNK,
    progress: bool = True,
    threat_model: ThreatModel | None = None,
    plain: bool = False,
    options: Mapping[str, Any] | None = None,
    threat_model_file: str | None = None,
) -> TrafficResult:
    """Certify every input of ``input_path`` with the run's model; write one row per input to ``out``
    (``.csv``, or ``.parquet`` with pyarrow, the ``parquet`` extra).

    Radii are in raw input units, or under ``threat_model`` (default: the run's own, none with ``plain``)
    in its units (:attr:`TrafficResult.units`). ``options``: certifier options by name (e.g.
    ``{"reach": True}``), checked against the model's certifier before any input is read.
    ``threat_model_file``: the file ``threat_model`` was read from, recorded in the :class:`ResultsRecord`
    written next to ``out`` (``out`` + ``.json``) once the results are complete.

    Memory: one chunk of inputs (``chunk`` rows) and its results at a time, whatever the file's size.
    The output file appears only when every input certified (atomic rename), replacing any earlier one; a
    refused input file leaves ``out`` as it was. One writer per output file
    (:func:`~asymcert.runfolder.exclusive_output`).

    Raises:
        InputError, DataError: an unknown format, missing or repeated columns, bad values, ``out`` the input
            file itself (one line naming them).
        CheckpointError: no run folder, or a missing or corrupt model.
        RunFolderBusyError: another process is writing ``out``.
    """
    run_dir, input_path, out = Path(run_dir), Path(input_path), Path(out)
    _check_output(out, input_path)
    busy = being_written(run_dir)
    run = read_run_record(run_dir)
    if not busy:  # (busy: TrafficResult.run_busy says it is still training)
        warn_if_unfinished(run, run_dir)
    tm = run_threat_model(run, threat_model, plain)
    model = load(run_dir, device=resolve_device(str(device)))
    extra = dict(options or {})
    make_options(certifier_spec(model), None, extra)  # an option the certifier does not take: refused here
    if not input_path.exists():
        raise InputError(f"{input_path}: no such input file or folder")
    with exclusive_output(out):  # (its folder is made, and removed again if this is refused)
        for stale in stale_temp_files(out.parent, target=record_path(out).name):
            stale.unlink(missing_ok=True)
        batches = input_batches(input_path, run, chunk)
        first = next(batches, None)
        if first is None:
            raise InputError(f"{input_path}: no inputs to certify")
        norms_t = tuple(dict.fromkeys(float(p) for p in norms))
        tally = _Tally(names=run.feature_names)

        def certified(sink: _CsvSink | _ParquetSink) -> None:
            todo = _chain(first, batches)
            for batch in tqdm(todo, desc="certify", unit="chunk", disable=not progress, leave=False):
                with warnings.catch_warnings():  # counted here and reported once (TrafficResult.n_outside)
                    warnings.filterwarnings("ignore", message=f".*{OUTSIDE}")
                    cert = certify(model, batch.x, norms=norms_t, batch_size=chunk, threat_model=tm, **extra)
                sink.write(_result_columns(cert, tally.n, norms_t, batch))
                tally.add(cert, batch.x, tm)

        units = raw_units(run.task) if tm is None else tm.units()  # (an image folder's: pixel values / 255)
        file = threat_model_file if threat_model is not None else None  # the file of the threat model given
        mode = certificate_mode(run.threat_model, tm, bool(extra.get("reach")), file)
        metadata = _parquet_metadata(units, run_dir, mode, tm)
        results = stage(out, _writer(out, certified, metadata))
        try:
            done = tally.result(out, units, busy)
            columns = run.feature_names if input_path.suffix.lower() in TABLE_READERS else None
            sha = sha256_file(results.tmp)
            _commit_with_record(
                results, results_record(done, sha, run_dir, input_path, mode, norms_t, first, tm, columns, tally.kind)
            )
        finally:
            discard(results)
    return done


def _parquet_metadata(
    units: str, run_dir: Path, mode: CertificateMode, tm: ResolvedThreatModel | None
) -> dict[str, str]:
    """A Parquet results file's schema metadata (:class:`_ParquetSink`): units, run, closed form or reach-aware, and
    the threat model as JSON (``null``: none)."""
    return {
        "asymcert.units": units,
        "asymcert.run": str(run_dir),
        "asymcert.radii": "reach-aware" if mode.reach else "closed form",
        "asymcert.threat_model": dumps_strict(_threat_json(tm)),
    }


def _threat_json(tm: ResolvedThreatModel | None) -> dict[str, Any] | None:
    """The threat model radii were certified under, as JSON (:meth:`~asymcert.threat.ThreatModel.to_dict`); None
    for none, or one resolved by hand whose source is not known."""
    return None if tm is None or tm.source is None else strict_jsonable(tm.source.to_dict())


def _commit_with_record(results: Staged, record: ResultsRecord) -> None:
    """Write the record beside the staged results, then rename both into place together (a stopped command leaves
    the earlier pair or the new one, never new results beside an old record: audit 29a F3, F4)."""
    staged = stage(record_path(results.path), json_writer(record.to_dict()))
    try:
        commit(results, staged)
    finally:
        discard(staged)


def _check_output(out: Path, input_path: Path) -> None:
    """Refuse a results file ``out`` of an unknown format, or that (or its record, ``out`` + ``.json``) is the
    input itself (it would replace it) or a folder; with pyarrow missing, a Parquet one. One line each
    (InputError)."""
    if out.suffix.lower() not in OUTPUT_SUFFIXES:
        raise InputError(f"{out}: results are written as .csv or .parquet files; give --out one of those suffixes")
    for target in (out, record_path(out)):
        if input_path.exists() and (
            target.resolve() == input_path.resolve() or (target.exists() and os.path.samefile(target, input_path))
        ):
            raise InputError(f"{target}: that is the input file; write the results to another file")
        if target.is_dir():
            raise InputError(f"{target} is a folder; give --out a file name")
    if out.suffix.lower() == ".parquet":
        _ParquetSink(out)  # pyarrow missing: refused before any work


@dataclass
class _Tally:
    """Running counts of :func:`certify_file`: inputs, flagged, seconds, and inputs outside the domain (the first's
    index and :meth:`~asymcert.threat.ResolvedThreatModel.outside_detail`, its features by the run's ``names``)."""

    n: int = 0
    flagged: int = 0
    seconds: float = 0.0
    outside: int = 0
    first_outside: int | None = None
    detail: str | None = None
    names: Sequence[str] | None = None
    kind: ResultKind | None = None  # what the columns mean (result_kind of the certificates)

    def result(self, out: Path, units: str, run_busy: bool) -> TrafficResult:
        """The :class:`TrafficResult` of these counts for the results file ``out`` in ``units``."""
        return TrafficResult(
            self.n, self.flagged, self.seconds, out, units, self.outside, self.first_outside, run_busy, self.detail
        )

    def add(self, cert: Certificate, x: torch.Tensor, tm: ResolvedThreatModel | None) -> None:
        """Count one certified chunk ``cert`` of inputs x (B, *shape) (under ``tm``, when given)."""
        count, first = (0, None) if tm is None else tm.outside(x)
        if tm is not None and first is not None and self.first_outside is None:
            self.first_outside = self.n + first
            self.detail = tm.outside_detail(x[first], self.names)
        self.outside += count
        self.n += len(cert)
        self.flagged += int(_flagged(cert).sum())
        self.kind = result_kind(cert)
        self.seconds += cert.seconds


def _writer(
    out: Path, fill: Callable[[_CsvSink | _ParquetSink], None], metadata: Mapping[str, str]
) -> Callable[[Path], None]:
    """The :func:`~asymcert.checkpoint.atomic_write` callback that writes ``out``'s format (by its suffix)
    into the temporary file, ``fill`` feeding the sink chunk by chunk (Parquet: with ``metadata``)."""

    def write(tmp: Path) -> None:
        if out.suffix.lower() == ".parquet":
            sink = _ParquetSink(tmp, metadata)
            try:
                fill(sink)
            finally:
                sink.close()
            return
        with tmp.open("w", newline="", encoding="utf-8") as f:
            fill(_CsvSink(f))

    return write


def _chain(first: Batch, rest: Iterator[Batch]) -> Iterator[Batch]:
    """``first``, then every batch of ``rest``."""
    yield first
    yield from rest
