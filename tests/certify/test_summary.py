"""The typed numbers of results.json: their JSON has the keys, order and values results.json always had."""

from __future__ import annotations

import math
from dataclasses import asdict, replace

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asymcert.certify.result import Guarantee
from asymcert.certify.summary import CertifiedSummary, Detection, FlagShares, NormSummary, RunResults
from asymcert.jsontext import parse_json
from asymcert.report.plots import PLOT_HINT
from asymcert.runfolder import CertificateMode, dumps_strict
from tests.conftest import examples
from tests.typed_json import (
    DICT,
    RUN_RESULTS_DEFAULTS,
    RUN_RESULTS_SCHEMA,
    SUMMARY_REQUIRED,
    SUMMARY_SCHEMA,
    json_native,
    replaced,
    run_results,
    same,
    schema_paths,
    strict,
    summaries,
    without,
    wrong_values,
)

SUMMARY_KEYS = [
    "method",
    "guarantee",
    "deterministic",
    "alpha",
    "n_inputs",
    "units",
    "clean_accuracy",
    "certify_seconds_total",
    "certify_seconds_per_input",
    "certified_accuracy",
]
REPORT_KEYS = [
    "report_radii_source",
    "report_radii_settable",
    "certificate_mode",
    "task",
    "training_seconds",
    "best_epoch",
    "validation_flat",
    "plots",
]


def _summary(**fields) -> CertifiedSummary:
    return CertifiedSummary(
        **{
            "method": "feature-convex",
            "guarantee": Guarantee.FLAG,
            "alpha": None,
            "n_inputs": 4,
            "units": "raw input units",
            "clean_accuracy": 0.75,
            "certify_seconds_total": 0.5,
            **fields,
        }
    )


def test_a_binary_summary_and_its_results_keep_the_order_of_results_json():
    norms = {"l1": NormSummary((0.5, 1, 0.5, math.inf), (0.5, 0.25, 0.5, 0.125), math.inf)}
    summary = _summary(norms=norms, detection=Detection(2, 1.0, 0.5))
    raw = summary.to_dict()
    assert list(raw) == [*SUMMARY_KEYS, "n_sensitive", "sensitive_flagged_correctly", "false_positive_rate"] + [
        "median_radius"
    ]
    assert raw["certified_accuracy"] == {"l1": {"0.5": 0.5, "1": 0.25, "inf": 0.125}}  # a radius given twice: once
    assert raw["median_radius"] == {"l1": math.inf} and raw["certify_seconds_per_input"] == 0.125
    mode = CertificateMode(False, "none")
    results = RunResults(summary, {"l1": "quantiles"}, False, mode, {"name": "t"}, 60.0, 3, False, {"l1": "p.png"})
    out = results.to_dict()
    assert list(out) == [*list(raw), *REPORT_KEYS]  # median_radius keeps its place among the summary's keys
    assert out["median_radius"] == {"l1": "inf"} and out["certificate_mode"] == mode.to_dict()
    assert "plots_missing" not in out


def test_a_summary_without_norms_puts_median_radius_after_the_radii_settings():
    flags = FlagShares(0.0, 0.5, 0.5, 0.75)
    summary = _summary(guarantee=Guarantee.PROBABILISTIC, alpha=0.001, flags=flags)
    assert list(summary.to_dict()) == [*SUMMARY_KEYS, "flags"] and not summary.deterministic
    out = RunResults(summary, plots_missing=PLOT_HINT).to_dict()
    assert list(out) == [*SUMMARY_KEYS, "flags", *REPORT_KEYS[:2], "median_radius", *REPORT_KEYS[2:], "plots_missing"]
    assert out["median_radius"] == {} and out["guarantee"] == "probabilistic" and out["flags"]["true_class"] == 0.75


def test_results_an_earlier_version_wrote_read_back_as_it_meant_them():
    """A sweep resumed from results written before report_radii_source/_settable, validation_flat and
    certificate_mode existed raised KeyError with a traceback (review 31); they now read as those versions meant."""
    summary = _summary(norms={"l1": NormSummary((0.5,), (0.5,), 1.0)}, detection=Detection(2, 1.0, 0.5))
    mode = CertificateMode(False, "none")
    raw = RunResults(summary, {"l1": "run.json"}, False, mode, {"name": "t"}, 6.0, 2).to_dict()
    for key in ("report_radii_source", "report_radii_settable", "validation_flat", "certificate_mode"):
        del raw[key]
    for key in ("training_seconds", "best_epoch"):
        del raw[key]
    back = RunResults.from_dict(raw)
    assert back.summary == RunResults.from_dict(RunResults(summary).to_dict()).summary
    assert back.report_radii_source == {} and back.report_radii_settable and not back.validation_flat
    assert back.certificate_mode is None and back.training_seconds is None and back.best_epoch is None


# ------------------------------------------------------------------ properties of the JSON round trips
# results.json is written by runfolder.write_json (dumps_strict: ∞ and NaN as null, but RunResults' medians are
# json_number's "inf" or null first) and read back with parse_json; a pair sweep's results hold a summary written
# the same way, read back with null_radius=∞ (its default).
DETECTION_KEYS = ["n_sensitive", "sensitive_flagged_correctly", "false_positive_rate"]
FLAG_KEYS = ["none", "one", "several", "true_class"]
CHECKS = settings(max_examples=examples(80), deadline=None)


def _written(obj: dict) -> str:
    return dumps_strict(obj, indent=1)  # as runfolder.write_json and the sweeps' write_json write it


def _nulls_read_as(summary: CertifiedSummary, null: float) -> CertifiedSummary:
    """``summary`` as a strict JSON file gives it back: its non-finite medians (written null) read as ``null``."""
    norms = {
        n: replace(s, median_radius=s.median_radius if math.isfinite(s.median_radius) else null)
        for n, s in summary.norms.items()
    }
    return replace(summary, norms=norms)


def _summary_keys(summary: CertifiedSummary) -> list[str]:
    return [
        *SUMMARY_KEYS,
        *(DETECTION_KEYS if summary.detection is not None else []),
        *(["flags"] if summary.flags is not None else []),
        *(["median_radius"] if summary.norms else []),
    ]


@CHECKS
@given(summaries(), st.sampled_from([math.inf, math.nan]))
def test_a_summary_comes_back_from_strict_json_with_its_null_medians_read_as_told(summary, null):
    back = CertifiedSummary.from_dict(parse_json(_written(summary.to_dict())), null_radius=null)
    assert same(back, _nulls_read_as(summary, null))


@CHECKS
@given(summaries(exact=False))
def test_a_summary_read_back_writes_the_same_file(summary):
    """Any radii (labels of 6 significant digits, a radius given twice): what is read back writes the same file."""
    text = _written(summary.to_dict())
    back = CertifiedSummary.from_dict(parse_json(text))
    assert _written(back.to_dict()) == text
    assert all(same(back.norms[n].table(), s.table()) for n, s in summary.norms.items())


@CHECKS
@given(summaries())
def test_a_summarys_json_is_strict_and_its_keys_keep_their_order(summary):
    raw = summary.to_dict()
    assert json_native(raw) and list(raw) == _summary_keys(summary)
    assert list(strict(_written(raw))) == list(raw)
    for name, norm in summary.norms.items():
        assert list(raw["certified_accuracy"][name]) == [f"{r:g}" for r in norm.radii]
    assert list(raw.get("median_radius", {})) == list(summary.norms) == list(raw["certified_accuracy"])
    assert summary.flags is None or list(raw["flags"]) == FLAG_KEYS
    assert raw["deterministic"] == (summary.guarantee is not Guarantee.PROBABILISTIC)


@CHECKS
@given(summaries())
def test_a_summary_missing_a_key_is_refused_or_read_as_documented(summary):
    raw = strict(_written(summary.to_dict()))
    expected = _nulls_read_as(summary, math.inf)
    for key in raw:
        if key in SUMMARY_REQUIRED:  # (median_radius is written once a norm is; the detection keys go together)
            with pytest.raises(KeyError):
                CertifiedSummary.from_dict(without(raw, (key,)))
        else:  # flags: an optional part; deterministic, certify_seconds_per_input: derived, not read
            back = CertifiedSummary.from_dict(without(raw, (key,)))
            assert same(back, replace(expected, flags=None) if key == "flags" else expected)
    bare = {k: v for k, v in raw.items() if k not in DETECTION_KEYS}
    assert same(CertifiedSummary.from_dict(bare), replace(expected, detection=None))


@CHECKS
@given(summaries(), st.data())
def test_a_summary_holding_a_wrong_type_is_refused_with_a_documented_error(summary, data):
    raw = strict(_written(summary.to_dict()))
    for path, allowed in schema_paths(raw, SUMMARY_SCHEMA):
        wrong = data.draw(wrong_values(allowed), label=str(path))
        with pytest.raises((KeyError, TypeError, ValueError)):
            CertifiedSummary.from_dict(replaced(raw, path, wrong))
    with pytest.raises((KeyError, TypeError, ValueError)):  # (not a JSON object at all)
        CertifiedSummary.from_dict(data.draw(wrong_values({DICT}), label="raw"))


@CHECKS
@given(run_results())
def test_run_results_come_back_from_results_json(results):
    """json_number keeps ∞ ("inf") and NaN (null) medians apart: results.json gives back every one."""
    back = RunResults.from_dict(parse_json(_written(results.to_dict())))
    assert same(back, results)


@CHECKS
@given(run_results())
def test_run_results_json_is_strict_and_its_keys_keep_their_order(results):
    raw = results.to_dict()
    summary_keys = _summary_keys(results.summary)
    head = [*summary_keys, *REPORT_KEYS[:2], *([] if "median_radius" in summary_keys else ["median_radius"])]
    assert json_native(raw) and list(raw) == [
        *head,
        *REPORT_KEYS[2:],
        *([] if results.plots_missing is None else ["plots_missing"]),
    ]
    assert list(strict(_written(raw))) == list(raw)
    assert results.certificate_mode is None or list(raw["certificate_mode"]) == list(asdict(results.certificate_mode))
    assert all(isinstance(r, float) or r in ("inf", None) for r in raw["median_radius"].values())


@CHECKS
@given(run_results())
def test_run_results_missing_a_key_are_refused_or_read_as_an_earlier_version_meant(results):
    raw = strict(_written(results.to_dict()))
    for key in raw:
        if key in SUMMARY_REQUIRED and (key != "median_radius" or results.summary.norms):
            with pytest.raises(KeyError):
                RunResults.from_dict(without(raw, (key,)))
            continue
        back = RunResults.from_dict(without(raw, (key,)))
        if key in RUN_RESULTS_DEFAULTS:
            assert same(back, replace(results, **{key: RUN_RESULTS_DEFAULTS[key]}))
        elif key == "flags":
            assert same(back, replace(results, summary=replace(results.summary, flags=None)))
        else:  # derived keys, and an empty median_radius
            assert same(back, results)


@CHECKS
@given(run_results(), st.data())
def test_run_results_holding_a_wrong_type_are_refused_with_a_documented_error(results, data):
    raw = strict(_written(results.to_dict()))
    for path, allowed in schema_paths(raw, RUN_RESULTS_SCHEMA):
        wrong = data.draw(wrong_values(allowed), label=str(path))
        with pytest.raises((KeyError, TypeError, ValueError)):
            RunResults.from_dict(replaced(raw, path, wrong))
    with pytest.raises((KeyError, TypeError, ValueError)):
        RunResults.from_dict(data.draw(wrong_values({DICT}), label="raw"))
    mode = data.draw(wrong_values({DICT}) | st.just({"reach": 1, "threat_model": "run"}), label="certificate_mode")
    assert same(RunResults.from_dict({**raw, "certificate_mode": mode}), replace(results, certificate_mode=None))
