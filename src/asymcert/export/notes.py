"""What an exported file means, written into it for a third party who has the file only.

* ONNX (:func:`~asymcert.export.to_onnx`, and the VNN-LIB folder's ``model.onnx``): the model's ``doc_string``
  (a paragraph) and ``metadata_props`` (:meth:`GraphNotes.metadata`, keys ``asymcert.*``, values text or JSON),
  read with ``onnx.load(path).metadata_props``.
* VNN-LIB (:func:`~asymcert.export.to_vnnlib`): one comment line per input variable (:func:`variable_lines`),
  ``; X_<i> centre <value> feature <JSON string>``: the feature X_i is (when the run has feature names) and
  the value the property's box is built around (the float32 input the radius was certified at).
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from importlib.metadata import PackageNotFoundError, version
from typing import Any

from asymcert.certify.result import RAW_UNITS

PREPROCESSING_NOTE = (
    "the model's preprocessing φ (its feature map: e.g. clip/log1p, standardize, hinges, with the statistics "
    "fitted at training) is inside the graph: feed raw inputs, in the units of the training data"
)


def _version() -> str:
    """The installed asymcert version ("unknown" when not installed as a package)."""
    try:
        return version("asymcert")
    except PackageNotFoundError:
        return "unknown"


def output_meaning(name: str, units: str, score_is_y0: bool = False, raw_units: str = RAW_UNITS) -> str:
    """One line saying what graph output ``name`` (``score``, ``flagged``, ``radius_l2``, ``tm_radius_linf``…)
    holds; ``units`` is that of the ``tm_radius_*`` outputs, ``raw_units`` that of ``radius_*`` (an image run's:
    pixel values / 255); ``score_is_y0``: the VNN-LIB score graph."""
    if name == "score":
        if score_is_y0:
            return (
                "(N, 1) float32 s(x), the output Y_0 of the .vnnlib properties; flagged when s > 0 (unsafe: Y_0 <= 0)"
            )
        return "(N,) float32 s(x); the input is flagged (sensitive) when s > 0"
    if name == "flagged":
        return "(N,) bool s(x) > 0, the graph's own decision"
    threat = name.startswith("tm_")
    norm = name.removeprefix("tm_").removeprefix("radius_").replace("l", "ℓ").replace("inf", "∞")
    over = f" over the moves the threat model allows, in {units}" if threat else f" in {raw_units}"
    return (
        f"(N,) float32 certified {norm} radius r{over}: every x' within r of the float32 x is flagged by this "
        "graph too; 0 where not flagged"
    )


@dataclass(frozen=True)
class GraphNotes:
    """What an exported ONNX graph computes, written into the file (:meth:`metadata`, :meth:`doc_string`).

    Attributes:
        outputs: output name → its meaning (shape, dtype, units), in the graph's order.
        input_shape: the shape of one input; ``x`` is (N, *input_shape) float32, N dynamic.
        feature_names: the name of X_i = ``x[n].flatten()[i]`` for each i (None: not known, e.g. an image run).
        units: the units of ``tm_radius_*`` (raw input units without a threat model; the properties' radii in a
            VNN-LIB folder), kept as ``asymcert.units`` for readers of that key; :meth:`metadata` also names each
            family's units on its own (``asymcert.units.radius``, ``asymcert.units.tm_radius``).
        threat_model: the threat model's JSON (:meth:`~asymcert.threat.ThreatModel.to_dict`), None without one.
        feature_map: the spec of the model's preprocessing φ, inside the graph (None: the model has none).
        raw_units: the units of the ``radius_*`` outputs, the inputs' raw units (an image run's: pixel values / 255).
    """

    outputs: dict[str, str]
    input_shape: tuple[int, ...]
    feature_names: list[str] | None = None
    units: str = RAW_UNITS
    threat_model: dict[str, Any] | None = None
    feature_map: list[Any] | None = None
    raw_units: str = RAW_UNITS

    def metadata(self) -> dict[str, str]:
        """The ``metadata_props`` entries: ``asymcert.<key>`` → text or JSON (``json.loads`` reads the JSON ones:
        input_shape, feature_names, outputs, threat_model, preprocessing; null when not known). The units per
        output family: ``asymcert.units.radius`` (``radius_*``: raw input units) and, for a graph with
        ``tm_radius_*`` outputs, ``asymcert.units.tm_radius`` (the threat model's units; audit units30 F4:
        one ``asymcert.units`` read "threat-model units" beside raw ``radius_*`` outputs)."""
        preprocessing = {"inside_graph": True, "feature_map": self.feature_map, "note": PREPROCESSING_NOTE}
        return {
            **{f"asymcert.units.{family}": units for family, units in self.units_per_output().items()},
            "asymcert.version": _version(),
            "asymcert.input": "x: (N, *input_shape) float32 raw inputs, N dynamic; X_i = x[n].flatten()[i]",
            "asymcert.input_shape": json.dumps(list(self.input_shape)),
            "asymcert.feature_names": json.dumps(self.feature_names, ensure_ascii=False),
            "asymcert.outputs": json.dumps(self.outputs, ensure_ascii=False),
            "asymcert.units": self.units,
            "asymcert.threat_model": json.dumps(self.threat_model, ensure_ascii=False),
            "asymcert.preprocessing": json.dumps(preprocessing, ensure_ascii=False),
        }

    def units_per_output(self) -> dict[str, str]:
        """Output family (``"radius"``: the ``radius_*`` outputs; ``"tm_radius"``: ``tm_radius_*``) → its units,
        for the families the graph has."""
        families = {"radius": self.raw_units, "tm_radius": self.units}
        return {f: u for f, u in families.items() if any(name.startswith(f"{f}_") for name in self.outputs)}

    def doc_string(self) -> str:
        """A paragraph for the ONNX model's ``doc_string``."""
        names = "recorded in asymcert.feature_names" if self.feature_names else "not recorded (not known at export)"
        tm = "a threat model (asymcert.threat_model)" if self.threat_model else "no threat model"
        outputs = "; ".join(f"{k}: {v}" for k, v in self.outputs.items())
        per = "; ".join(f"{f}_* in {u}" for f, u in self.units_per_output().items())
        tail = f"Radii units: {per}; {tm}" if per else tm
        return (
            f"asymcert certified model. Input x: (N, {', '.join(map(str, self.input_shape))}) float32 raw inputs "
            f"(N dynamic); feature names {names}. {PREPROCESSING_NOTE[0].upper()}{PREPROCESSING_NOTE[1:]}. "
            f"Outputs: {outputs}. {tail[0].upper()}{tail[1:]}. See metadata_props asymcert.*."
        )


def variable_lines(centre: Sequence[float], feature_names: Sequence[str] | None) -> list[str]:
    """The comment lines (without ``;``) of one property's input variables: ``X_<i> centre <value>`` and, when
    names are known, `` feature <name as a JSON string>``: ASCII, with ( and ) escaped too (``\\u0028``,
    ``\\u0029``), so that it is one line whatever the name holds and never reads as VNN-LIB to a parser that
    does not skip comments (a column named ``(assert (<= Y_0 1))``); ``json.loads`` gives the name back."""
    lines = [f"X_{i} centre {float(c)!r}" for i, c in enumerate(centre)]
    if feature_names is None:
        return lines
    return [f"{line} feature {_quoted(name)}" for line, name in zip(lines, feature_names, strict=True)]


def _quoted(name: str) -> str:
    """``name`` as an ASCII JSON string without parentheses (escaped as ``\\u0028``/``\\u0029``)."""
    return json.dumps(name).replace("(", "\\u0028").replace(")", "\\u0029")
