"""Properties of the sweeps' per-job result files: a finished job's ``sweep_result.json`` (the sweeps' own
``write_json``: strict JSON, its ``"settings"`` first) gives back the result a resumed sweep reuses, or is refused
in one SweepError line, never a traceback and never a half-read result."""

from __future__ import annotations

import math
import tempfile
from dataclasses import replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asymcert.research.sweep_pairs import PairResult, PairSplits
from asymcert.research.sweep_reg import RegPoint
from asymcert.research.sweeps import RESULT_FILE, SweepError, split_finished, write_json
from asymcert.runfolder import dumps_strict
from tests.conftest import examples
from tests.typed_json import (
    DICT,
    INT,
    NUMBER,
    RUN_RESULTS_SCHEMA,
    STR,
    SUMMARY_REQUIRED,
    SUMMARY_SCHEMA,
    finite,
    json_native,
    json_objects,
    replaced,
    run_results,
    same,
    schema_paths,
    seconds,
    shares,
    strict,
    summaries,
    texts,
    without,
    wrong_values,
)

CHECKS = settings(max_examples=examples(60), deadline=None)
SETTINGS = {"task": "fashion-mnist", "epochs": 1, "limit": None, "norms": ["l2"], "name": "ünïcode ✓"}
PAIR_KEYS = ["sensitive", "other", "sensitive_name", "other_name", "splits", "training_seconds", "best_epoch"]
PAIR_KEYS += ["val_balanced_accuracy", "balance", "job_seconds"]
PAIR_SCHEMA: dict[tuple[str, ...], set[str]] = {
    **{(k,): {INT} for k in ("sensitive", "other", "best_epoch")},
    **{(k,): {STR} for k in ("sensitive_name", "other_name")},
    **{(k,): {NUMBER} for k in ("training_seconds", "val_balanced_accuracy", "balance", "job_seconds")},
    ("splits",): {DICT},
    ("splits", "*"): {INT},
    **SUMMARY_SCHEMA,
}
REG_KEYS = ["feature_map", "lambda", "name", "run_dir", "model", "training_seconds", "best_epoch", "job_seconds"]
REG_SCHEMA: dict[tuple[str, ...], set[str]] = {
    **{(k,): {STR} for k in ("feature_map", "name", "run_dir")},
    ("lambda",): {NUMBER},
    ("model",): {DICT},
    ("job_seconds",): {NUMBER},
    **{k: v for k, v in RUN_RESULTS_SCHEMA.items() if k[0] not in ("task", "plots")},
}
pair_results = st.builds(
    PairResult,
    sensitive=st.integers(0, 9),
    other=st.integers(0, 9),
    sensitive_name=texts,
    other_name=texts,
    splits=st.builds(PairSplits, st.integers(0, 10**9), st.integers(0, 10**9), st.integers(0, 10**9)),
    training_seconds=seconds,
    best_epoch=st.integers(1, 10**6),
    val_balanced_accuracy=shares,
    balance=finite,
    job_seconds=seconds,
    summary=summaries(),
)
reg_points = st.builds(
    RegPoint,
    feature_map=st.sampled_from(["shift", "concat-abs"]) | texts,
    lam=st.sampled_from([0.0, 1e-300, 1e300]) | st.floats(min_value=0.0, allow_nan=False, allow_infinity=False),
    name=texts,
    run_dir=texts,
    model=json_objects,
    job_seconds=seconds,
    results=run_results(task_and_plots=False),
)


def _resumed(raw: dict, parse):
    """What a resumed sweep makes of a job folder whose result file holds ``raw`` (after its settings)."""
    with tempfile.TemporaryDirectory() as folder:
        write_json(Path(folder) / RESULT_FILE, {"settings": SETTINGS, **raw})
        done, todo = split_finished(["job"], lambda job: Path(folder), SETTINGS, parse)
    assert todo == []
    return done["job"]


def _refused(raw: dict, parse) -> None:
    """A resumed sweep refuses a job's result file holding ``raw`` in one SweepError line (a KeyError, TypeError or
    ValueError of ``parse``), never another error."""
    with pytest.raises(SweepError, match="is not a sweep result this asymcert reads") as info:
        _resumed(raw, parse)
    assert "\n" not in str(info.value)


def _strict_medians(result: PairResult) -> PairResult:
    """``result`` as a pair sweep reads it back: a non-finite median radius written null is ∞."""
    norms = {
        n: replace(s, median_radius=s.median_radius if math.isfinite(s.median_radius) else math.inf)
        for n, s in result.summary.norms.items()
    }
    return replace(result, summary=replace(result.summary, norms=norms))


@CHECKS
@given(pair_results)
def test_a_pair_result_comes_back_from_its_file_with_a_null_median_as_infinity(result):
    assert same(_resumed(result.to_dict(), PairResult.from_dict), _strict_medians(result))


@CHECKS
@given(pair_results)
def test_a_pair_results_json_is_strict_and_its_own_keys_come_first(result):
    raw = result.to_dict()
    assert json_native(raw) and list(raw) == [*PAIR_KEYS, *result.summary.to_dict()]
    assert list(strict(dumps_strict(raw))) == list(raw) and list(raw["splits"]) == ["train", "val", "test"]


@CHECKS
@given(pair_results, st.data())
def test_a_pair_result_file_missing_a_key_or_holding_a_wrong_type_is_one_sweep_error(result, data):
    raw = strict(dumps_strict(result.to_dict()))
    key = data.draw(st.sampled_from([*PAIR_KEYS, *(k for k in SUMMARY_REQUIRED if k in raw)]), label="removed")
    _refused(without(raw, (key,)), PairResult.from_dict)
    path, allowed = data.draw(st.sampled_from(schema_paths(raw, PAIR_SCHEMA)), label="path")
    _refused(replaced(raw, path, data.draw(wrong_values(allowed), label="wrong")), PairResult.from_dict)
    for path, allowed in schema_paths(raw, PAIR_SCHEMA):  # (every path, without the file: faster)
        with pytest.raises((KeyError, TypeError, ValueError)):
            PairResult.from_dict(replaced(raw, path, data.draw(wrong_values(allowed), label=str(path))))


@CHECKS
@given(reg_points)
def test_a_reg_point_comes_back_from_its_file(point):
    """Its results' medians are json_number's: ∞ as "inf" and NaN as null, both given back."""
    assert same(_resumed(point.to_dict(), RegPoint.from_dict), point)


@CHECKS
@given(reg_points)
def test_a_reg_points_json_is_strict_and_its_own_keys_come_first(point):
    raw = point.to_dict()
    report = [k for k in point.results.to_dict() if k not in (*REG_KEYS, "task", "plots")]
    assert json_native(raw) and list(raw) == [*REG_KEYS, *report]
    assert list(strict(dumps_strict(raw))) == list(raw)


@CHECKS
@given(reg_points, st.data())
def test_a_reg_point_file_missing_a_key_or_holding_a_wrong_type_is_one_sweep_error(point, data):
    raw = strict(dumps_strict(point.to_dict()))
    own = ["feature_map", "lambda", "name", "run_dir", "model", "job_seconds"]
    required = [*own, *(k for k in SUMMARY_REQUIRED if k in raw and (k != "median_radius" or raw[k]))]
    _refused(without(raw, (data.draw(st.sampled_from(required), label="removed"),)), RegPoint.from_dict)
    path, allowed = data.draw(st.sampled_from(schema_paths(raw, REG_SCHEMA)), label="path")
    _refused(replaced(raw, path, data.draw(wrong_values(allowed), label="wrong")), RegPoint.from_dict)
    for path, allowed in schema_paths(raw, REG_SCHEMA):
        with pytest.raises((KeyError, TypeError, ValueError)):
            RegPoint.from_dict(replaced(raw, path, data.draw(wrong_values(allowed), label=str(path))))
