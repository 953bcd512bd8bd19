"""The typed numbers of results.json: their JSON has the keys, order and values results.json always had."""

from __future__ import annotations

import math

from asymcert.certify.result import Guarantee
from asymcert.certify.summary import CertifiedSummary, Detection, FlagShares, NormSummary, RunResults
from asymcert.report.plots import PLOT_HINT
from asymcert.runfolder import CertificateMode

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
