"""Hypothesis strategies of the typed results (summaries, run results, sweep results, certificate modes) and what
their JSON round-trip properties share: a NaN-aware comparison, and JSON values of a kind a key does not allow."""

from __future__ import annotations

import copy
import json
import math
from collections.abc import Iterator, Sequence
from dataclasses import fields, is_dataclass
from typing import Any

from hypothesis import strategies as st

from asymcert.certify.result import Guarantee
from asymcert.certify.summary import CertifiedSummary, Detection, FlagShares, NormSummary, RunResults
from asymcert.runfolder import THREAT_MODEL_SOURCES, CertificateMode

# ------------------------------------------------------------------------------------------- values
texts = st.text(max_size=8)  # any unicode but lone surrogates (which JSON text cannot hold as UTF-8)
EDGE_RADII = [0.0, 5e-324, 1e-310, 1e-300, 1e-9, 0.5, 1.0, 2.0, 1e15, 1e300, 1.7976931348623157e308, math.inf]
radii = st.one_of(st.sampled_from(EDGE_RADII), st.floats(min_value=0.0, allow_nan=False, allow_infinity=True))
"""Report radii: 0, tiny (subnormal), huge, ∞ and anything ≥ 0 in between."""
labelled_radii = radii.map(lambda r: float(f"{r:g}"))
"""Radii that their ``results.json`` label (``f"{r:g}"``, 6 significant digits) gives back exactly."""
shares = st.one_of(st.sampled_from([0.0, 1.0, 0.5]), st.floats(min_value=0.0, max_value=1.0))
medians = st.one_of(st.sampled_from([0.0, 5e-324, 1.7976931348623157e308, math.inf, math.nan]), radii)
seconds = st.floats(min_value=0.0, max_value=1e9)
finite = st.floats(allow_nan=False, allow_infinity=False)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite | texts,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(texts, inner, max_size=3),
    max_leaves=8,
)
json_objects = st.dictionaries(texts, json_values, max_size=3)


@st.composite
def norm_summaries(draw: st.DrawFn, exact: bool = True) -> NormSummary:
    """A norm's figures; ``exact``: distinct radii that their labels give back (else any, repeats too)."""
    rs = draw(st.lists(labelled_radii, unique=True, max_size=4) if exact else st.lists(radii, max_size=5))
    accuracy = draw(st.lists(shares | st.just(math.nan), min_size=len(rs), max_size=len(rs)))
    return NormSummary(tuple(rs), tuple(accuracy), draw(medians))


@st.composite
def summaries(draw: st.DrawFn, exact: bool = True) -> CertifiedSummary:
    """Any summary: every guarantee, with detection figures, flag shares, both or neither, norms or none."""
    guarantee = draw(st.sampled_from(Guarantee))
    detection = draw(st.none() | st.builds(Detection, st.integers(0, 10**12), shares, shares))
    return CertifiedSummary(
        method=draw(st.sampled_from(["feature-convex", "smoothing"]) | texts),
        guarantee=guarantee,
        alpha=draw(st.none() | st.floats(min_value=1e-300, max_value=0.5)),
        n_inputs=draw(st.integers(0, 10**12)),
        units=draw(st.sampled_from(["raw input units", "threat-model units (δ_i / scale_i)"]) | texts),
        clean_accuracy=draw(shares),
        certify_seconds_total=draw(seconds),
        norms=draw(st.dictionaries(st.sampled_from(["l1", "l2", "linf"]) | texts, norm_summaries(exact), max_size=3)),
        detection=detection,
        flags=draw(st.none() | st.builds(FlagShares, shares, shares, shares, shares)),
    )


certificate_modes = st.builds(
    CertificateMode,
    reach=st.booleans(),
    threat_model=st.sampled_from(THREAT_MODEL_SOURCES),
    threat_model_file=st.none() | texts,
    given=st.none() | json_objects,
    certificates_sha256=st.none() | st.text("0123456789abcdef", min_size=64, max_size=64),
).filter(lambda m: m.given is None or m.threat_model == "given")
"""Any mode certify.json can record (its ``given`` only for a ``"given"`` threat model)."""


@st.composite
def run_results(draw: st.DrawFn, task_and_plots: bool = True) -> RunResults:
    """Any run results (``task_and_plots`` False: without task and plots, as a sweep point keeps them)."""
    empty: st.SearchStrategy[dict[str, Any]] = st.just({})
    return RunResults(
        summary=draw(summaries()),
        report_radii_source=draw(st.dictionaries(texts, st.sampled_from(["run.json", "quantiles"]) | texts)),
        report_radii_settable=draw(st.booleans()),
        certificate_mode=draw(st.none() | certificate_modes),
        task=draw(json_objects if task_and_plots else empty),
        training_seconds=draw(st.none() | seconds),
        best_epoch=draw(st.none() | st.integers(1, 10**6)),
        validation_flat=draw(st.booleans()),
        plots=draw(st.dictionaries(texts, texts, max_size=3) if task_and_plots else empty),
        plots_missing=draw(st.none() | texts),
    )


# ------------------------------------------------------------------------------------------ checks
def same(a: Any, b: Any) -> bool:
    """``a == b`` field by field, NaN equal to NaN, with the same types (a None is no float) and key order."""
    if is_dataclass(a) and not isinstance(a, type):
        return type(a) is type(b) and all(same(getattr(a, f.name), getattr(b, f.name)) for f in fields(a))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a):
        return math.isnan(b)
    if isinstance(a, dict):
        return isinstance(b, dict) and list(a) == list(b) and all(same(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return type(a) is type(b) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
    return type(a) is type(b) and a == b


def refuse_constant(name: str) -> None:
    raise ValueError(f"not strict JSON: {name}")


def strict(text: str) -> Any:
    """The value of strict JSON ``text`` (NaN and Infinity refused), checked to be written back as it is."""
    value = json.loads(text, parse_constant=refuse_constant)
    json.dumps(value, allow_nan=False)
    return value


def json_native(value: Any) -> bool:
    """Whether ``value`` is made of JSON's own types only (dicts with str keys, lists, str, int, float, bool, None)."""
    if isinstance(value, dict):
        return all(isinstance(k, str) and json_native(v) for k, v in value.items())
    if isinstance(value, list):
        return all(json_native(v) for v in value)
    return value is None or type(value) in (str, int, float, bool)


# ------------------------------------------------------------------------------- wrong JSON values
NUMBER, INT, STR, BOOL, NULL, LIST, DICT = "number", "int", "str", "bool", "null", "list", "dict"
_KINDS: dict[str, st.SearchStrategy[Any]] = {
    INT: st.integers(-(10**20), 10**20),
    "float": st.floats(allow_nan=False, allow_infinity=False),
    STR: texts.filter(lambda s: s not in ("inf", "-inf")),  # (json_number's ∞: a number where numbers go)
    BOOL: st.booleans(),
    NULL: st.none(),
    LIST: st.lists(st.integers() | texts, max_size=2),
    DICT: st.dictionaries(texts, st.integers() | texts, max_size=2),
}


def wrong_values(allowed: set[str]) -> st.SearchStrategy[Any]:
    """JSON values of a kind ``allowed`` does not hold (``NUMBER``: int or float; ``INT``: int only)."""
    held = set(allowed) | ({INT, "float"} if NUMBER in allowed else set())
    return st.sampled_from(sorted(set(_KINDS) - held)).flatmap(_KINDS.__getitem__)


Path = tuple[Any, ...]


def paths(value: Any, pattern: Sequence[str]) -> Iterator[Path]:
    """The paths into ``value`` that ``pattern`` names: keys as they are, ``"*"`` any key of a dict, ``"#"`` any
    index of a list."""
    if not pattern:
        yield ()
        return
    head, rest = pattern[0], pattern[1:]
    if head == "#":
        keys: list[Any] = list(range(len(value))) if isinstance(value, list) else []
    elif not isinstance(value, dict):
        keys = []
    else:
        keys = list(value) if head == "*" else [head] if head in value else []
    for key in keys:
        for tail in paths(value[key], rest):
            yield (key, *tail)


def replaced(value: Any, path: Path, new: Any) -> Any:
    """A deep copy of ``value`` with the item at ``path`` replaced by ``new``."""
    out = copy.deepcopy(value)
    inner = out
    for key in path[:-1]:
        inner = inner[key]
    inner[path[-1]] = new
    return out


def without(value: Any, path: Path) -> Any:
    """A deep copy of ``value`` without the item at ``path``."""
    out = copy.deepcopy(value)
    inner = out
    for key in path[:-1]:
        inner = inner[key]
    del inner[path[-1]]
    return out


def schema_paths(value: Any, schema: dict[tuple[str, ...], set[str]]) -> list[tuple[Path, set[str]]]:
    """Every path into ``value`` that a pattern of ``schema`` names, with the JSON kinds it allows."""
    return [(path, allowed) for pattern, allowed in schema.items() for path in paths(value, pattern)]


SUMMARY_SCHEMA: dict[tuple[str, ...], set[str]] = {
    ("method",): {STR},
    ("guarantee",): {STR},
    ("alpha",): {NUMBER, NULL},
    ("n_inputs",): {INT},
    ("units",): {STR},
    ("clean_accuracy",): {NUMBER},
    ("certify_seconds_total",): {NUMBER},
    ("certified_accuracy",): {DICT},
    ("certified_accuracy", "*"): {DICT},
    ("certified_accuracy", "*", "*"): {NUMBER, NULL},  # (null: a NaN accuracy, as strict JSON writes it)
    ("median_radius",): {DICT},
    ("median_radius", "*"): {NUMBER, NULL},  # (and "inf"/"-inf", which wrong_values never draws)
    ("n_sensitive",): {INT},
    ("sensitive_flagged_correctly",): {NUMBER},
    ("false_positive_rate",): {NUMBER},
    ("flags",): {DICT},
    ("flags", "*"): {NUMBER},
}
"""What each key of :meth:`CertifiedSummary.to_dict` holds, as JSON kinds (its derived keys ``deterministic`` and
``certify_seconds_per_input`` are not read back)."""
SUMMARY_REQUIRED = [k for (k, *rest), _ in SUMMARY_SCHEMA.items() if not rest and k != "flags"]
"""The summary's keys :meth:`CertifiedSummary.from_dict` cannot do without, when written (``flags`` is an
optional part; ``n_sensitive`` and the other detection keys are one together)."""
RUN_RESULTS_SCHEMA: dict[tuple[str, ...], set[str]] = {
    **SUMMARY_SCHEMA,
    ("report_radii_source",): {DICT},
    ("report_radii_source", "*"): {STR},
    ("report_radii_settable",): {BOOL},
    ("task",): {DICT},
    ("training_seconds",): {NUMBER, NULL},
    ("best_epoch",): {INT, NULL},
    ("validation_flat",): {BOOL},
    ("plots",): {DICT},
    ("plots", "*"): {STR},
    ("plots_missing",): {STR, NULL},
}
"""What each key of :meth:`RunResults.to_dict` holds (``certificate_mode``: anything, a wrong one read as not
recorded)."""
RUN_RESULTS_DEFAULTS = {
    "report_radii_source": {},
    "report_radii_settable": True,
    "certificate_mode": None,
    "task": {},
    "training_seconds": None,
    "best_epoch": None,
    "validation_flat": False,
    "plots": {},
    "plots_missing": None,
}
"""What :meth:`RunResults.from_dict` reads a report key missing from a file as (those of earlier versions)."""
