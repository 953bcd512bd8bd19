"""``to_vnnlib``: certificates as a VNN-COMP benchmark, so that any neural-network verifier can re-check them.

Layout of the folder written (VNN-COMP's)::

    model.onnx            the score graph only: x (N, *input_shape) float32 → score (N, 1)
    vnnlib/prop_<i>.vnnlib one property per certified flagged input i: the ℓ∞ box x_i ± r_i (clipped to
                          the model's input range) and the unsafe region Y_0 <= 0 (expected: unsat)
    instances.csv         onnx, vnnlib, timeout (seconds) per property, no header
    radii.json            per property: input index, score, and the certified radius per norm

VNN-LIB states boxes and linear constraints over inputs, so ℓ1 and ℓ2 balls (not polytopes with a
few faces: the ℓ1 ball of R^d has 2^d faces, the ℓ2 ball none) are not expressible; their radii
are in radii.json for verifiers that take norms.
"""

from __future__ import annotations

import json
import math
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from asymcert.certify.modes import eval_mode
from asymcert.export.onnx import DEFAULT_NORMS, ExportError, certifying_graph, export_module, radius_name, require

BOX_SHRINK = 1e-6
"""Relative amount the box half-width r is reduced by: the certificate is for the OPEN ball
‖δ‖∞ < r, and the decimal bounds written may round outwards by an ulp."""
DEFAULT_TIMEOUT = 300


@dataclass(frozen=True)
class Property:
    """One exported property (a row of radii.json).

    Attributes:
        index: position of the input in ``x``; file: the .vnnlib path relative to the folder;
        score: s(x) float; radii: ``{"radius_l1": r, ...}`` in raw input units (the box uses ``radius_linf``).
    """

    index: int
    file: str
    score: float
    radii: dict[str, float]


class _ScoreOnly(nn.Module):
    """x (N, *input_shape) → score (N, 1): the single-output network VNN-COMP verifiers expect."""

    def __init__(self, graph: nn.Module) -> None:
        super().__init__()
        self.graph = graph

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.graph(x)[0].unsqueeze(1)


def graph_certificates(
    model: nn.Module, x: torch.Tensor, norms: tuple[float, ...] = DEFAULT_NORMS
) -> dict[str, torch.Tensor]:
    """The certifying graph evaluated in PyTorch (float32): ``{"score", "flagged", radius_name(p)...}``, each (N,)."""
    graph = certifying_graph(model, norms)
    with eval_mode(model), torch.no_grad():
        out = graph(x.float())
    names = ["score", "flagged"] + [radius_name(p) for p in norms]
    return dict(zip(names, out))


def _box(x: torch.Tensor, r: float, input_range: tuple[float, float] | None) -> tuple[torch.Tensor, torch.Tensor]:
    """(low, high) float64 of one input's box x ± r·(1 − BOX_SHRINK), clipped to ``input_range``."""
    half = r * (1.0 - BOX_SHRINK)
    xd = x.double().flatten()
    lo, hi = xd - half, xd + half
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


def to_vnnlib(
    model: nn.Module,
    x: torch.Tensor,
    path_dir: str | Path,
    norm: float | str = "inf",
    limit: int | None = None,
    timeout: int = DEFAULT_TIMEOUT,
) -> list[Property]:
    """Write a VNN-COMP benchmark folder (layout in the module docstring) for the inputs of ``x``.

    Radii are those of the certifying graph (:func:`~asymcert.export.to_onnx`, evaluated in float32),
    in raw input units; only flagged inputs with a positive ℓ∞ radius get a property.

    Args:
        model: a model :func:`~asymcert.export.certifying_graph` accepts.
        x: (N, *input_shape) raw inputs (e.g. a run's test inputs).
        path_dir: the folder to write (created).
        norm: must be ∞ (``"inf"``): ℓ1/ℓ2 balls are not expressible in VNN-LIB.
        limit: at most this many properties (the first qualifying inputs).
        timeout: seconds per instance in instances.csv.
    Returns:
        The properties written (also in radii.json).

    Raises:
        ExportError: a norm other than ∞, or a model that cannot be exported. ExportDependencyError: no onnx.
    """
    if str(norm) not in ("inf", "linf") and not (isinstance(norm, float) and math.isinf(norm)):
        raise ExportError(f"VNN-LIB properties are ℓ∞ boxes; an ℓ{norm} ball is not expressible in VNN-LIB")
    require("onnx")
    out = Path(path_dir)
    (out / "vnnlib").mkdir(parents=True, exist_ok=True)
    export_module(_ScoreOnly(certifying_graph(model, ())), out / "model.onnx", tuple(x.shape[1:]), ["score"])
    found = graph_certificates(model, x)
    rng = getattr(model, "input_range", None)
    props: list[Property] = []
    for i in torch.nonzero(found["flagged"] & (found["radius_linf"] > 0)).flatten().tolist():
        if limit is not None and len(props) >= limit:
            break
        radii = {k: float(v[i]) for k, v in found.items() if k.startswith("radius_")}
        low, high = _box(x[i], radii["radius_linf"], rng)
        name = f"vnnlib/prop_{i}.vnnlib"
        note = f"asymcert: input {i}, score {float(found['score'][i])!r}, certified ℓ∞ radius {radii['radius_linf']!r}"
        (out / name).write_text(vnnlib_text(low, high, note + "\nexpected verdict: unsat"))
        props.append(Property(i, name, float(found["score"][i]), radii))
    rows = [f"model.onnx,{p.file},{int(timeout)}" for p in props]
    (out / "instances.csv").write_text("".join(row + "\n" for row in rows))
    summary = {
        "note": "ℓ1/ℓ2 balls are not expressible in VNN-LIB; their radii (raw input units) are listed "
        "for verifiers that take norms",
        "input_range": None if rng is None else list(rng),
        "properties": [asdict(p) for p in props],
    }
    (out / "radii.json").write_text(json.dumps(summary, indent=1))
    return props
