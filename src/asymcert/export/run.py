"""``asymcert export RUN``: a run's model as an ONNX graph, or its test inputs as VNN-LIB properties."""

from __future__ import annotations

import warnings
from collections.abc import Sequence
from pathlib import Path

from asymcert.certify.result import RAW_UNITS, raw_units
from asymcert.checkpoint import load
from asymcert.export.onnx import DEFAULT_NORMS, ExportError, checked_norms, output_names, to_onnx
from asymcert.export.vnnlib import DEFAULT_TIMEOUT, write_benchmark
from asymcert.pipeline import run_data
from asymcert.runfolder import RUN_FILE, being_written, read_run_record, run_threat_model, warn_if_unfinished
from asymcert.threat import ResolvedThreatModel, ThreatModel

FORMATS = ("onnx", "vnnlib")


def export_run(
    run_dir: str | Path,
    fmt: str,
    out: str | Path,
    certificates: bool = True,
    norms: tuple[float, ...] = DEFAULT_NORMS,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    timeout: int = DEFAULT_TIMEOUT,
    threat_model: ThreatModel | None = None,
    plain: bool = False,
) -> str:
    """Write the export of ``run_dir`` and return a one-line summary of what was written (VNN-LIB: also how many
    certified inputs were left out for an unbounded box, and how to get them exported).

    Args:
        fmt: ``"onnx"`` (one graph file at ``out``) or ``"vnnlib"`` (a VNN-COMP folder at ``out``,
            properties for the run's test inputs).
        certificates, norms: the ONNX graph's radii (``certificates=False``: score and decision only).
        limit: VNN-LIB: at most this many properties. data_dir: where the run's data lives.
        timeout: VNN-LIB: seconds per instance.
        threat_model, plain: the ONNX graph also outputs radii under ``threat_model`` (default: the run's
            own, none with ``plain``), ``tm_radius_l1``/..., in its units; VNN-LIB properties are its boxes.
    The run's ``feature_names`` (run.json) are recorded in the files (ONNX metadata, .vnnlib comments, radii.json).

    Raises:
        ExportError: an unknown format, an ONNX ``out`` without the .onnx suffix, or a model the exporter
            refuses (e.g. randomized smoothing).
    """
    if fmt not in FORMATS:
        raise ExportError(f"unknown export format {fmt!r}; known: {', '.join(FORMATS)}")
    if fmt == "onnx" and Path(out).suffix.lower() != ".onnx":
        raise ExportError(f"{out}: an ONNX graph is written as a .onnx file; give --out that suffix")
    record = read_run_record(run_dir) if (Path(run_dir) / RUN_FILE).is_file() else None  # or only a saved model
    if being_written(run_dir):  # (as certify --input says it; README review s34 F6)
        warnings.warn(
            f"{run_dir} is being written by another asymcert process (still training?): this exports its model "
            "as saved when this command started",
            stacklevel=2,
        )
    elif record is not None:
        warn_if_unfinished(record, run_dir)
    tm = run_threat_model(record, threat_model, plain) if record is not None else None
    names = None if record is None else record.feature_names  # recorded in the files: X_i ↔ feature
    raw = RAW_UNITS if record is None else raw_units(record.task)  # (an image folder's: pixel values / 255)
    model = load(run_dir)
    if fmt == "onnx":
        path = to_onnx(
            model, out, norms=norms, certificates=certificates, threat_model=tm, feature_names=names, raw_units=raw
        )
        threat = certificates and tm is not None and not tm.is_empty()
        names = output_names(checked_norms(norms) if certificates else (), threat)  # each once, as in the file
        return f"wrote {path}: input x, outputs {_with_units(names, tm, raw)}"
    x = run_data(run_dir, data_dir).test.x
    done = write_benchmark(
        model, x, out, limit=limit, timeout=timeout, threat_model=tm, feature_names=names, raw_units=raw
    )
    boxes = (
        f"raw ℓ∞ boxes, radii in {raw}"
        if tm is None or tm.is_empty()
        else f"the threat model's ℓ∞ boxes, radii in {tm.units()}"
    )
    left = len(done.unbounded)
    left_out = (
        f"; {left} certified input{'s' * (left != 1)} left out: unbounded box (an infinite radius toward a feature "
        "whose domain bound is infinite); give the threat model finite lower/upper bounds for them to be exported "
        "(listed in radii.json unbounded_boxes_left_out)"
        if left
        else ""
    )
    return (
        f"wrote {len(done.properties)} properties ({boxes}; expected verdict unsat) to {Path(out)}: "
        f"model.onnx, vnnlib/, instances.csv, radii.json{left_out}"
    )


def _with_units(names: Sequence[str], tm: ResolvedThreatModel | None, raw: str = RAW_UNITS) -> str:
    """The graph's output names, each radius family followed by its units (``radius_*`` the raw input units
    ``raw``, ``tm_radius_*`` the threat model's: audit units30 F3)."""
    families = {"radius_": raw, "tm_radius_": tm.units() if tm is not None else raw}
    parts = [n for n in names if not n.startswith(tuple(families))]
    for prefix, units in families.items():
        group = [n for n in names if n.startswith(prefix)]
        if group:
            parts.append(f"{', '.join(group)} (in {units})")
    return ", ".join(parts)
