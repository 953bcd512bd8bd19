"""``to_onnx``: one ONNX graph that scores, decides and certifies (see :mod:`asymcert.export.graphs`).

The graph is traced by PyTorch's TorchScript-based exporter (``torch.onnx.export(..., dynamo=False)``)
at :data:`OPSET`; it holds standard operators only (MatMul/Gemm, Conv, ConvTranspose, Relu, Greater,
Cast, Where, ReduceMax/ReduceSum, Sqrt, Abs, Sub, Div, Mul, Concat, Max/Min), with a dynamic batch axis.
``onnx`` is needed to write it and ``onnxruntime`` to run it: both are the ``asymcert[export]`` extra.
"""

from __future__ import annotations

import importlib
import math
import warnings
from pathlib import Path
from types import ModuleType
from typing import Any

import torch
from torch import nn

from asymcert.certify.modes import eval_mode
from asymcert.certify.result import RAW_UNITS, normalize_norm
from asymcert.checkpoint import atomic_write
from asymcert.errors import AsymcertError, ModelError
from asymcert.export.graphs import FeatureConvexGraph, LinfDistGraph, OrthogonalGraph, ThreatFallbackGraph
from asymcert.export.notes import GraphNotes, output_meaning
from asymcert.models.baselines import OrthogonalNet, SmoothingBaseNet
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.models.linf_dist_net import LinfDistNet
from asymcert.nn.convex import global_hook_problems
from asymcert.runfolder import exclusive_output
from asymcert.threat import ResolvedThreatModel, ThreatModel

OPSET = 17
"""ONNX opset of the exported graphs (onnxruntime ≥ 1.12 runs it)."""
DEFAULT_NORMS: tuple[float, ...] = (1.0, 2.0, math.inf)
INPUT_NAME = "x"


class ExportDependencyError(AsymcertError, ImportError):
    """``onnx`` (or ``onnxruntime``) is not installed: ``pip install 'asymcert[export]'``."""


class ExportError(ModelError):
    """A model the exporter cannot write as a sound certifying graph (the message says why)."""


def require(name: str) -> ModuleType:
    """Import ``name`` (``"onnx"`` or ``"onnxruntime"``), or raise :class:`ExportDependencyError` (how to get it)."""
    try:
        return importlib.import_module(name)
    except ImportError as exc:
        raise ExportDependencyError(
            f"exporting needs the {name!r} package, which is not installed ({exc}); "
            "install it with: pip install 'asymcert[export]' (onnx and onnxruntime)"
        ) from None


def radius_name(p: float) -> str:
    """The graph output of the ℓp radius: ``radius_l1``, ``radius_l2``, ``radius_linf``."""
    return "radius_linf" if math.isinf(p) else f"radius_l{p:g}"


def output_names(norms: tuple[float, ...], threat: bool = False) -> list[str]:
    """``["score", "flagged", radius_name(p) for p in norms]``, then with ``threat`` ``"tm_" + radius_name(p)``."""
    return ["score", "flagged"] + [radius_name(p) for p in norms] + [f"tm_{radius_name(p)}" for p in norms if threat]


def checked_norms(norms: tuple[float | str, ...]) -> tuple[float, ...]:
    """The graph's norms: ``norms`` as floats (``"inf"`` → ∞), each once in the order first given.

    Raises:
        ExportError: a norm other than 1, 2, ∞ (or not a norm at all: InputError).
    """
    found = tuple(dict.fromkeys(normalize_norm(p) for p in norms))
    bad = [p for p in found if p not in (1.0, 2.0, math.inf)]
    if bad:
        raise ExportError(f"the exported graphs certify the ℓ1, ℓ2 and ℓ∞ norms only, got {bad}")
    return found


def require_float32(model: nn.Module) -> None:
    """Refuse a model whose floating parameters or buffers are not all float32 (model.double(), .half()).

    The graphs compute in float32 and their certificates are those of the float32 model (its weights as
    float32 constants, its float32 arithmetic), so a float64 or float16 model is refused, not converted.

    Raises:
        ExportError: naming the dtype(s) found and what to export instead.
    """
    found = {t.dtype for t in (*model.parameters(), *model.buffers()) if t.is_floating_point()} - {torch.float32}
    if found:
        names = ", ".join(sorted(str(d).removeprefix("torch.") for d in found))
        raise ExportError(
            f"cannot export a {names} model: the exported graph computes in float32, so export a float32 model "
            "(model.float(), or copy.deepcopy(model).float() to keep this one), whose certificates are then the "
            "ones the graph computes"
        )


def certifying_graph(
    model: nn.Module,
    norms: tuple[float | str, ...] = DEFAULT_NORMS,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
) -> nn.Module:
    """The plain-ops module the exporter traces: x (N, *input_shape) → (score, flagged, *radii).

    Args:
        model: a feature-convex classifier (g an ICNN, a convex conv net or a mean of those), a binary plain ℓ∞-dist
            net, or an orthogonal net of the ``"mlp"`` arch; validated first (the same checks as
            ``asymcert.certify``).
        norms: norms p ∈ {1, 2, ∞} (or ``"inf"``) to certify; ``()`` gives the score graph.

    Raises:
        ExportError: randomized smoothing (its certificates are Monte-Carlo estimates, not a
            deterministic function of x), a model that is not float32 (:func:`require_float32`) or another
            model the exporter does not support.
    """
    if isinstance(model, SmoothingBaseNet):
        raise ExportError(
            "randomized smoothing cannot be exported: its certificate is a Monte-Carlo estimate over "
            "random noise (not a deterministic function of the input), so no graph can compute it"
        )
    require_float32(model)
    for problem in global_hook_problems():  # the tracer calls every module: such hooks would be in the graph
        raise ExportError(problem)
    checked = checked_norms(norms)
    threat_model = resolved_threat_model(threat_model, model)
    tm = threat_model if threat_model is not None and checked and not threat_model.is_empty() else None
    try:
        if isinstance(model, FeatureConvexClassifier):
            model.validate()
            return FeatureConvexGraph(model, checked, tm).eval()
        if isinstance(model, LinfDistNet):
            model.validate()
            return _with_threat(LinfDistGraph(model, checked), tm)
        if isinstance(model, OrthogonalNet):
            model.validate()
            return _with_threat(OrthogonalGraph(model, checked), tm)
    except ModelError as exc:
        raise ExportError(f"cannot export this {type(model).__name__}: {exc}") from None
    raise ExportError(
        f"cannot export a {type(model).__name__}: the exporter supports feature-convex classifiers, "
        "binary ℓ∞-dist nets and orthogonal nets"
    )


def resolved_threat_model(
    threat_model: ThreatModel | ResolvedThreatModel | None, model: nn.Module
) -> ResolvedThreatModel | None:
    """``threat_model`` for ``model``'s flattened inputs: a :class:`ThreatModel` (features by index, as
    ``asymcert.certify`` takes it) is resolved here; a ``ResolvedThreatModel`` or None is returned as is."""
    if not isinstance(threat_model, ThreatModel):
        return threat_model
    shape = getattr(model, "input_shape", None)
    if shape is None:
        raise ExportError("a threat model needs a model with an input_shape")
    return threat_model.resolve(None, math.prod(shape))


def _with_threat(graph: nn.Module, tm: ResolvedThreatModel | None) -> nn.Module:
    """``graph`` (eval mode), followed by the generic threat-model radii when ``tm`` is given."""
    return (graph if tm is None else ThreatFallbackGraph(graph, tm)).eval()


def checked_feature_names(feature_names: list[str] | None, shape: tuple[int, ...]) -> list[str] | None:
    """``feature_names`` (one per element of an input of ``shape``, flattened), or None.

    Raises:
        ExportError: not as many names as the input has elements, or a name that is not a string.
    """
    if feature_names is None:
        return None
    names = list(feature_names)
    if len(names) != math.prod(shape) or not all(isinstance(n, str) for n in names):
        raise ExportError(
            f"feature_names must be {math.prod(shape)} strings, one per element of an input of shape {shape}; "
            f"got {len(names)}"
        )
    return names


def graph_notes(
    model: nn.Module,
    names: list[str],
    shape: tuple[int, ...],
    feature_names: list[str] | None,
    tm: ResolvedThreatModel | None,
    score_is_y0: bool = False,
    raw_units: str = RAW_UNITS,
) -> GraphNotes:
    """The :class:`~asymcert.export.notes.GraphNotes` of a graph of ``model`` with outputs ``names`` under
    ``tm`` (None or empty: none), its inputs in ``raw_units``: what the file records of itself for a third party."""
    threat = tm is not None and not tm.is_empty()
    units = tm.units() if tm is not None and threat else raw_units
    config_of = getattr(model, "config", None)
    config: dict[str, Any] = config_of() if callable(config_of) else {}
    return GraphNotes(
        outputs={name: output_meaning(name, units, score_is_y0, raw_units) for name in names},
        input_shape=shape,
        feature_names=checked_feature_names(feature_names, shape),
        units=units,
        threat_model=tm.source.to_dict() if tm is not None and threat and tm.source is not None else None,
        feature_map=config.get("feature_map"),
        raw_units=raw_units,
    )


def to_onnx(
    model: nn.Module,
    path: str | Path,
    norms: tuple[float | str, ...] = DEFAULT_NORMS,
    certificates: bool = True,
    input_shape: tuple[int, ...] | None = None,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
    feature_names: list[str] | None = None,
    raw_units: str = RAW_UNITS,
) -> Path:
    """Write ``model`` as one ONNX graph with its certificates computed in the graph.

    Graph input ``x``: (N, *input_shape) float32 raw inputs (N dynamic). Outputs: ``score`` (N,)
    float32 s(x); ``flagged`` (N,) bool, s(x) > 0; and per norm p ``radius_l1``/``radius_l2``/
    ``radius_linf`` (N,) float32 in raw input units: every x' with ‖x' − x‖_p < r is flagged by the
    same graph too (0 where not flagged). Radii are never above ``asymcert.certify``'s float64
    radii up to the graph's own guard (docs/deploy.md), and within ~1e-5 relative of them. The file
    records what it computes (``doc_string``, ``metadata_props`` ``asymcert.*``: :mod:`asymcert.export.notes`).

    Args:
        model: see :func:`certifying_graph`.
        path: the .onnx file to write (replaced whole if it exists); missing folders on its way are created,
            and removed again when the export fails.
        norms: the radii to output.
        certificates: False: the score graph only (outputs ``score`` and ``flagged``).
        input_shape: shape of one input (default ``model.input_shape``).
        threat_model: also output ``tm_radius_l1``/... (N,) float32, the radii under this threat model in
            its units (feature-convex: the closed form of :mod:`asymcert.certify.threat_model`; other
            models: the generic fallback), never above ``asymcert.certify(..., threat_model=)``'s.
            An empty threat model adds nothing (its radii are the ℓp ones).
        feature_names: the name of each element of a flattened input (e.g. a CSV run's columns, run.json's
            ``feature_names``), recorded in the file's metadata (None: not recorded).
        raw_units: the inputs' raw units as the file states them (an image run's: pixel values / 255,
            :func:`~asymcert.certify.result.raw_units`).
    Returns:
        The path written.

    Raises:
        ExportError: see :func:`certifying_graph`; ``feature_names`` not one string per input element.
        ExportDependencyError: ``onnx`` is missing.
    """
    threat_model = resolved_threat_model(threat_model, model)
    graph = certifying_graph(model, norms if certificates else (), threat_model)
    threat = certificates and threat_model is not None and not threat_model.is_empty()
    names = output_names(checked_norms(norms) if certificates else (), threat)
    shape = tuple(input_shape or getattr(model, "input_shape"))  # noqa: B009 (every supported model has one)
    notes = graph_notes(model, names, shape, feature_names, threat_model if threat else None, raw_units=raw_units)
    with eval_mode(model):
        return export_module(graph, path, shape, names, notes)


def export_module(
    graph: nn.Module, path: str | Path, input_shape: tuple[int, ...], names: list[str], notes: GraphNotes | None = None
) -> Path:
    """Trace ``graph`` (x (N, *input_shape) → outputs ``names``, batch axis dynamic) into an ONNX file at ``path``,
    with ``notes`` (when given) as its ``doc_string`` and ``metadata_props``.

    The file appears whole or not at all (written beside ``path``, checked, then renamed onto it; an earlier
    file stays as it was when anything fails), and one process writes ``path`` at a time.

    Raises:
        ExportDependencyError: ``onnx`` is missing. RunFolderBusyError: another process writes ``path``.
        WriteError: the file system refused the write.
    """
    onnx = require("onnx")
    out = Path(path)

    def write(tmp: Path) -> None:
        example = torch.zeros(2, *input_shape)
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation notice
            torch.onnx.export(
                graph.eval(),
                (example,),
                str(tmp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=names,
                dynamic_axes={INPUT_NAME: {0: "N"}, **{n: {0: "N"} for n in names}},
                opset_version=OPSET,
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        proto.producer_name = "asymcert"
        if notes is not None:
            proto.doc_string = notes.doc_string()
            onnx.helper.set_model_props(proto, notes.metadata())
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))

    with exclusive_output(out):
        atomic_write(out, write)
    return out
