"""``to_vnnlib``: certificates as a VNN-COMP benchmark, so that any neural-network verifier can re-check them.

Layout of the folder written (VNN-COMP's)::

    model.onnx            the score graph only: x (N, *input_shape) float32 → score (N, 1)
    vnnlib/prop_<i>.vnnlib one property per certified flagged input i: its ℓ∞ box and the unsafe region
                          Y_0 <= 0 (expected: unsat). Without a threat model the box is x_i ± r_i (clipped
                          to the model's input range); under one, the box of the moves it allows within
                          its ℓ∞ radius r_i: [x − r·scale, x + r·scale] in the allowed directions only
                          (immutable features fixed, one-sided ones moving one way), clipped to its domain
    instances.csv         onnx, vnnlib, timeout (seconds) per property, no header
    radii.json            the units, threat model and feature names (X_i's, in order); per property: input
                          index, score, the certified radii and the centre (the float32 input, d values)

Each .vnnlib file names, in comment lines ``; X_<i> centre <value> feature "<name>"``, the value its box is
built around and (when known) the feature X_i is; model.onnx records what it computes in its ``doc_string``
and ``metadata_props`` (:mod:`asymcert.export.notes`).

The folder is written beside its target (``.<name>.asymcert-<8 characters>.vnnlib``, marked as asymcert's own)
and then put in its place, so an export that fails leaves nothing, and a new export replaces an earlier
benchmark whole (no stale properties). A target whose own names are not what an export writes (a folder named
model.onnx, a folder vnnlib/X.vnnlib) is refused, never deleted.

VNN-LIB states boxes and linear constraints over inputs, so ℓ1 and ℓ2 balls (not polytopes with a
few faces: the ℓ1 ball of R^d has 2^d faces, the ℓ2 ball none) are not expressible; their radii
are in radii.json for verifiers that take norms.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import tempfile
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from asymcert.certify.api import certify
from asymcert.certify.modes import eval_mode
from asymcert.certify.result import RAW_UNITS
from asymcert.checkpoint import current_umask, signals_held
from asymcert.export.notes import variable_lines
from asymcert.export.onnx import (
    DEFAULT_NORMS,
    ExportError,
    certifying_graph,
    checked_feature_names,
    export_module,
    graph_notes,
    output_names,
    radius_name,
    require,
    require_float32,
    resolved_threat_model,
)
from asymcert.nn.feature_maps import round_down, round_up, rounded_to
from asymcert.runfolder import exclusive_output
from asymcert.threat import ResolvedThreatModel, ThreatModel

BOX_SHRINK = 1e-6
"""Relative amount the box half-width r is reduced by: the certificate is for the OPEN ball
‖δ‖∞ < r, and the decimal bounds written may round outwards by an ulp."""
DEFAULT_TIMEOUT = 300
BENCHMARK_FILES = ("model.onnx", "instances.csv", "radii.json")
PROPERTIES_DIR = "vnnlib"
STAGE_MARKER = ".asymcert-stage"
"""The file that marks a folder as asymcert's own while an export writes or replaces a benchmark (not kept in
the benchmark): a killed export's folder beside the target is removed only when it has this file and a
benchmark's files only."""


@dataclass(frozen=True)
class Property:
    """One exported property (a row of radii.json).

    Attributes:
        index: position of the input in ``x``; file: the .vnnlib path relative to the folder;
        score: s(x) float; radii: ``{"radius_l1": r, ...}`` in raw input units, and under a threat model
            ``{"tm_radius_l1": r, ...}`` in its units (the box uses ``tm_radius_linf``, else ``radius_linf``);
        centre: the point the box is built around, the float32 input (flattened, d values, raw input units).
    """

    index: int
    file: str
    score: float
    radii: dict[str, float]
    centre: list[float]


@dataclass(frozen=True)
class Benchmark:
    """What :func:`write_benchmark` wrote.

    Attributes:
        properties: the properties written (also in radii.json).
        unbounded: indices (into ``x``) of certified flagged inputs left out because their box is unbounded: an
            infinite radius toward a feature whose domain bound is infinite (radii.json ``unbounded_boxes_left_out``).
    """

    properties: list[Property]
    unbounded: list[int]


GRAPH_CHUNK = 4096
"""Inputs the certifying graph takes at once in :func:`graph_certificates`."""


class _ScoreOnly(nn.Module):
    """x (N, *input_shape) → score (N, 1): the single-output network VNN-COMP verifiers expect."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)[0].unsqueeze(1)


def graph_certificates(
    model: nn.Module,
    x: torch.Tensor,
    norms: tuple[float, ...] = DEFAULT_NORMS,
    threat_model: ResolvedThreatModel | None = None,
) -> dict[str, torch.Tensor]:
    """The certifying graph evaluated in PyTorch (float32): ``{"score", "flagged", radius_name(p)...}`` and under
    a (non-empty) ``threat_model`` ``"tm_" + radius_name(p)...`` too, each (N,). Memory: :data:`GRAPH_CHUNK` inputs
    at a time (it took the whole test split at once; coverage audit 30), plus the (N,) outputs."""
    graph = certifying_graph(model, norms, threat_model)
    threat = threat_model is not None and not threat_model.is_empty()
    with eval_mode(model), torch.no_grad():
        parts = [graph(x[i : i + GRAPH_CHUNK].float()) for i in range(0, max(len(x), 1), GRAPH_CHUNK)]
    return {name: torch.cat([part[k] for part in parts]) for k, name in enumerate(output_names(norms, threat))}


def library_capped(
    model: nn.Module, x: torch.Tensor, found: dict[str, torch.Tensor], threat_model: ResolvedThreatModel | None
) -> dict[str, torch.Tensor]:
    """``found`` (:func:`graph_certificates`) with each radius (N,) lowered to the library's certificate of the same
    float32 inputs (raw ``radius_*``; ``tm_radius_*`` under ``threat_model``), and 0 where the library does not
    flag the input: a property is written only where both the graph, evaluated in PyTorch, and the library's
    reference (float64 or rigorous) certify it. The graph's own float32 score carries the float guard's measured
    factor (README, "Float safety"), which a sum built to lose its terms exceeds; the library's reference does not
    (session 33's review: a property written at radius 2.8e-9 where the library certifies 0 was sat)."""
    out = dict(found)
    raw = certify(model, x, norms=DEFAULT_NORMS)
    named = [("", raw)]
    if threat_model is not None:
        named.append(("tm_", certify(model, x, norms=DEFAULT_NORMS, threat_model=threat_model)))
    for prefix, cert in named:
        flagged = (cert.predicted == 1).to(found["flagged"].device)
        for p in DEFAULT_NORMS:
            key = prefix + radius_name(p)
            mine = cert.radii[p].to(out[key].device, torch.float64)
            capped = torch.minimum(out[key].double(), torch.where(flagged, mine, torch.zeros_like(mine)))
            out[key] = rounded_to(capped, out[key].dtype, up=False)
    return out


def checked_inputs(x: object, model: nn.Module) -> torch.Tensor:
    """``x`` as the float32 tensor the graph takes (float64 data rounded: the radii and boxes are then the
    rounded inputs', which is what the graph reads).

    Raises:
        ExportError: not a floating tensor, or not of ``model``'s input shape (N, *input_shape), e.g. a run
            folder whose run.json names another task than its model was trained on.
    """
    if not isinstance(x, torch.Tensor) or not x.is_floating_point():
        raise ExportError(f"inputs must be a floating torch.Tensor (N, *input_shape), got {type(x).__name__}")
    shape = getattr(model, "input_shape", None)
    if shape is not None and tuple(x.shape[1:]) != tuple(shape):
        want = ", ".join(["N", *map(str, shape)])
        raise ExportError(f"the inputs have shape {tuple(x.shape)}; the model takes ({want})")
    return x.float()


def _box(x: torch.Tensor, r: float, input_range: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) float64 of one input's box x ± r·(1 − BOX_SHRINK), clipped to ``input_range``, rounded inward."""
    half = r * (1.0 - BOX_SHRINK)
    xd = x.double().flatten()
    lo, hi = round_up(xd - half), round_down(xd + half)  # inward, then never past x (below)
    if input_range is not None:
        lo, hi = lo.clamp_min(input_range[0]), hi.clamp_max(input_range[1])
    return torch.minimum(lo, xd), torch.maximum(hi, xd)


def vnnlib_text(low: torch.Tensor, high: torch.Tensor, comment: str) -> str:
    """A VNN-LIB property: inputs X_i ∈ [low_i, high_i] (flat order of x), one output Y_0, unsafe region Y_0 <= 0."""
    lines = [f"; {line}" for line in comment.splitlines()]
    lines += [f"(declare-const X_{i} Real)" for i in range(low.numel())] + ["(declare-const Y_0 Real)", ""]
    for i, (lo, hi) in enumerate(zip(low.tolist(), high.tolist())):
        lines += [f"(assert (<= X_{i} {hi!r}))", f"(assert (>= X_{i} {lo!r}))"]
    lines += ["", "; unsafe: the input is no longer flagged", "(assert (<= Y_0 0.0))", ""]
    return "\n".join(lines)


def threat_box(x: torch.Tensor, r: float, tm: ResolvedThreatModel) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) float64 (n,): every point x + δ with δ a move ``tm`` allows and max_i |δ_i| / scale_i ≤
    r·(1 − BOX_SHRINK): immutable features fixed, one-sided ones moving their way only, within [lower, upper];
    bounds rounded inward. Infinite where the move is unbounded (r = ∞ toward an infinite domain bound)."""
    xd = x.double().flatten()
    up, down = (t[0] for t in tm.directions(x.reshape(1, -1)))
    half = r * (1.0 - BOX_SHRINK) * tm.scale.double()  # scale > 0: r = ∞ gives ∞, never NaN
    far = torch.isinf(half)
    hi = torch.where(up, torch.where(far, tm.upper, round_down(xd + half).clamp_max(tm.upper)), xd)
    lo = torch.where(down, torch.where(far, tm.lower, round_up(xd - half).clamp_min(tm.lower)), xd)
    return torch.minimum(lo, xd), torch.maximum(hi, xd)


def _foreign(folder: Path) -> list[str]:
    """What ``folder`` holds that a benchmark (or its stage) written by asymcert does not: names other than
    model.onnx, instances.csv, radii.json, the stage marker and vnnlib/*.vnnlib, and those names when they are
    not what an export writes (a folder or link named model.onnx, a file named vnnlib), as relative paths."""
    other = []
    for p in folder.iterdir():
        if p.name in (*BENCHMARK_FILES, STAGE_MARKER):
            other += [] if p.is_file() and not p.is_symlink() else [f"{p.name} (a folder or link, not a file)"]
        elif p.name != PROPERTIES_DIR:
            other.append(p.name)
        elif p.is_symlink() or not p.is_dir():
            other.append(f"{p.name} (not a folder)")
        else:
            for q in p.iterdir():
                own = q.name.endswith(".vnnlib") and q.is_file() and not q.is_symlink()
                other += (
                    []
                    if own
                    else [f"{p.name}/{q.name}" + (" (a folder or link, not a file)" * q.name.endswith(".vnnlib"))]
                )
    return sorted(other)


def _check_target(out: Path) -> None:
    """Refuse an ``out`` that is a file or a link, or a folder holding anything but an earlier benchmark (it is
    replaced): other names, or its own names as something an export does not write (:func:`_foreign`)."""
    if out.is_symlink():
        raise ExportError(f"{out}: a symbolic link; a VNN-LIB benchmark is a folder, give a new or empty folder")
    if out.exists() and not out.is_dir():
        raise ExportError(f"{out}: a file; a VNN-LIB benchmark is a folder, give a new or empty folder")
    other = _foreign(out) if out.is_dir() else []
    if other:
        raise ExportError(
            f"{out}: holds other files ({', '.join(other[:3])}); an export replaces the whole folder, "
            "so give a new or empty folder, or an earlier benchmark's"
        )


def _stale_stages(out: Path) -> list[Path]:
    """The folders a killed export of ``out`` left beside it: named ``.<out>.asymcert-<8>.vnnlib`` (or
    ``…-old``: an earlier benchmark being replaced), holding :data:`STAGE_MARKER` and a benchmark's files only.
    A folder of the user's, whatever its name, is not one."""
    pattern = re.compile(rf"^\.{re.escape(out.name)}\.asymcert-[a-z0-9_]{{8}}\.vnnlib(-old)?$")
    found = [p for p in out.parent.iterdir() if pattern.match(p.name) and p.is_dir() and not p.is_symlink()]
    return sorted(p for p in found if (p / STAGE_MARKER).is_file() and not _foreign(p))


def _mark(folder: Path) -> None:
    """Write :data:`STAGE_MARKER` into ``folder``: asymcert's own, to be removed if left by a killed export."""
    (folder / STAGE_MARKER).write_text("written by asymcert's VNN-LIB export while it replaces a benchmark\n")


@contextmanager
def _staged(out: Path) -> Iterator[Path]:
    """A fresh folder beside ``out`` to write into; when the block succeeds it replaces ``out`` (an earlier
    benchmark goes whole), when it fails it is removed and ``out`` is left as it was. The caller holds ``out``'s
    writer lock (:func:`~asymcert.runfolder.exclusive_output`: one writer per ``out``, its folder made and removed
    again if the export fails or is stopped). The folders in transit are marked (:data:`STAGE_MARKER`), so that a
    killed export's are known for its own."""
    for stale in _stale_stages(out):
        shutil.rmtree(stale, ignore_errors=True)
    stage = Path(tempfile.mkdtemp(prefix=f".{out.name}.asymcert-", suffix=".vnnlib", dir=out.parent))
    os.chmod(stage, 0o777 & ~current_umask())  # a folder the user creates (mkdtemp alone gives 0700)
    try:
        _mark(stage)
        yield stage
        old = out.parent / f"{stage.name}-old"
        with signals_held():  # (stopped between the renames, `out` would be gone: review 29d #1)
            if out.exists():
                _mark(out)
                out.rename(old)
            (stage / STAGE_MARKER).unlink()
            stage.rename(out)
        shutil.rmtree(old, ignore_errors=True)
    finally:
        shutil.rmtree(stage, ignore_errors=True)


def to_vnnlib(
    model: nn.Module,
    x: torch.Tensor,
    path_dir: str | Path,
    norm: float | str = "inf",
    limit: int | None = None,
    timeout: int = DEFAULT_TIMEOUT,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
    feature_names: list[str] | None = None,
    raw_units: str = RAW_UNITS,
) -> list[Property]:
    """Write a VNN-COMP benchmark folder (layout in the module docstring) for the inputs of ``x``.

    Radii are those of the certifying graph (:func:`~asymcert.export.to_onnx`, evaluated in float32), each capped at
    the library's certificate of the same input (:func:`library_capped`), in raw input units, or under a
    (non-empty) ``threat_model`` in its units with its boxes (:func:`threat_box`); only flagged inputs with a
    positive ℓ∞ radius get a property, and not those whose box is unbounded (an infinite radius toward a feature
    whose domain bound is infinite, e.g. a monotone run's harmless moves; with finite lower/upper bounds in the
    threat model their box is the domain's and they are written): radii.json lists them, :func:`write_benchmark`
    returns them.

    Args:
        model: a model :func:`~asymcert.export.certifying_graph` accepts.
        x: (N, *input_shape) raw inputs (e.g. a run's test inputs), a floating tensor; rounded to float32, the
            graph's input type, and each box is centred on the rounded input its radius was certified at.
        path_dir: the folder to write: new, empty, or an earlier benchmark (replaced whole); missing folders on
            its way are created, and removed again when the export fails.
        norm: must be ∞ (``"inf"``): ℓ1/ℓ2 balls are not expressible in VNN-LIB.
        limit: at most this many properties (the first qualifying inputs).
        timeout: seconds per instance in instances.csv.
        threat_model: certify and box under it (None or empty: raw ℓ∞ balls).
        feature_names: the name of each element of a flattened input (run.json's ``feature_names``), written
            in every .vnnlib file, radii.json and model.onnx's metadata (None: not known).
        raw_units: what the inputs' raw units are, as written in the files (an image run's pixel values / 255:
            :func:`~asymcert.certify.result.raw_units`).
    Returns:
        The properties written (also in radii.json).

    Raises:
        ExportError: a norm other than ∞, a model that cannot be exported (one not in float32 included),
            ``feature_names`` that are not one per input element, or a ``path_dir`` that is a file or a folder
            with other files (nothing is written). ExportDependencyError: no onnx.
    """
    return write_benchmark(model, x, path_dir, norm, limit, timeout, threat_model, feature_names, raw_units).properties


def write_benchmark(
    model: nn.Module,
    x: torch.Tensor,
    path_dir: str | Path,
    norm: float | str = "inf",
    limit: int | None = None,
    timeout: int = DEFAULT_TIMEOUT,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
    feature_names: list[str] | None = None,
    raw_units: str = RAW_UNITS,
) -> Benchmark:
    """:func:`to_vnnlib` (same arguments, same folder), returning the properties written and the certified
    inputs left out (:class:`Benchmark`)."""
    if str(norm) not in ("inf", "linf") and not (isinstance(norm, float) and math.isinf(norm)):
        raise ExportError(f"VNN-LIB properties are ℓ∞ boxes; an ℓ{norm} ball is not expressible in VNN-LIB")
    require("onnx")
    require_float32(model)  # (before anything is written: the graph is float32)
    out = Path(path_dir)
    _check_target(out)
    x = checked_inputs(x, model)  # the graph's float32 inputs: each box is centred where its radius was certified
    names = checked_feature_names(feature_names, tuple(x.shape[1:]))
    resolved = resolved_threat_model(threat_model, model)
    tm = None if resolved is None or resolved.is_empty() else resolved
    with exclusive_output(out):  # (held from the first computation: a second export to `out` meanwhile is refused)
        found = graph_certificates(model, x, DEFAULT_NORMS, tm)  # refuses a model that cannot be exported, first
        found = library_capped(model, x, found, tm)
        notes = graph_notes(model, ["score"], tuple(x.shape[1:]), names, tm, score_is_y0=True, raw_units=raw_units)
        with _staged(out) as stage:
            (stage / "vnnlib").mkdir()
            score_graph = _ScoreOnly(certifying_graph(model, ()))
            export_module(score_graph, stage / "model.onnx", tuple(x.shape[1:]), ["score"], notes)
            props, unbounded = _write_properties(stage, model, x, found, tm, limit, names, raw_units)
            rows = [f"model.onnx,{p.file},{int(timeout)}" for p in props]
            (stage / "instances.csv").write_text("".join(row + "\n" for row in rows))
            summary = _summary(model, tm, props, unbounded, names, raw_units)
            (stage / "radii.json").write_text(json.dumps(summary, indent=1, ensure_ascii=False), encoding="utf-8")
    return Benchmark(props, unbounded)


def _write_properties(
    stage: Path,
    model: nn.Module,
    x: torch.Tensor,
    found: dict[str, torch.Tensor],
    tm: ResolvedThreatModel | None,
    limit: int | None,
    names: list[str] | None,
    raw_units: str = RAW_UNITS,
) -> tuple[list[Property], list[int]]:
    """Write one .vnnlib file per certified flagged input into ``stage``/vnnlib (its comments name each X_i's
    centre and feature, :func:`~asymcert.export.notes.variable_lines`); return the properties and the indices
    of certified inputs left out because their box is unbounded."""
    key = "radius_linf" if tm is None else "tm_radius_linf"
    rng = getattr(model, "input_range", None)
    units = raw_units if tm is None else tm.units()
    props: list[Property] = []
    unbounded: list[int] = []
    for i in torch.nonzero(found["flagged"] & (found[key] > 0)).flatten().tolist():
        if limit is not None and len(props) >= limit:
            break
        radii = {k: float(v[i]) for k, v in found.items() if "radius_" in k}
        low, high = _box(x[i], radii[key], rng) if tm is None else threat_box(x[i], radii[key], tm)
        if not bool(torch.isfinite(low).all() and torch.isfinite(high).all()):
            unbounded.append(i)
            continue
        name, centre = f"vnnlib/prop_{i}.vnnlib", x[i].double().flatten().tolist()
        note = f"asymcert: input {i}, score {float(found['score'][i])!r}, certified ℓ∞ radius {radii[key]!r} ({units})"
        note = "\n".join([note, "expected verdict: unsat", *variable_lines(centre, names)])
        (stage / name).write_text(vnnlib_text(low, high, note), encoding="utf-8")
        props.append(Property(i, name, float(found["score"][i]), radii, centre))
    return props, unbounded


def _units_per_radius(tm: ResolvedThreatModel | None, raw_units: str = RAW_UNITS) -> dict[str, str]:
    """radii.json's units of each family of a property's ``radii``: ``radius_*`` raw input units, ``tm_radius_*``
    (under a threat model) its units (audit units30 F4: one ``units`` read "threat-model units" over both)."""
    return {"radius_*": raw_units, **({} if tm is None else {"tm_radius_*": tm.units()})}


def _summary(
    model: nn.Module,
    tm: ResolvedThreatModel | None,
    props: list[Property],
    unbounded: list[int],
    names: list[str] | None,
    raw_units: str = RAW_UNITS,
) -> dict[str, object]:
    """radii.json: what the boxes and radii mean, the features X_i are (``feature_names``, in order; null when
    not known), and the properties (each with its ``centre``, the float32 input its box is built around)."""
    rng = getattr(model, "input_range", None)
    return {
        "note": "ℓ1/ℓ2 balls are not expressible in VNN-LIB; their radii are listed for verifiers that take norms",
        "units": raw_units if tm is None else tm.units(),  # the properties' radii: kept for readers of the key
        "units_per_radius": _units_per_radius(tm, raw_units),
        "threat_model": None if tm is None or tm.source is None else tm.source.to_dict(),
        "feature_names": names,
        "input_range": None if rng is None else list(rng),
        "unbounded_boxes_left_out": unbounded,
        "properties": [asdict(p) for p in props],
    }
