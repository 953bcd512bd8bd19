"""Strict JSON text: every way json.loads fails or silently drops data becomes one JsonTextError line."""

from __future__ import annotations

import pytest
from click.testing import CliRunner

from asymcert.cli import EXIT_REFUSED, main
from asymcert.errors import CheckpointError, ConfigError
from asymcert.jsontext import JsonTextError, parse_json
from asymcert.runfolder import RunRecord
from asymcert.threat import load_threat_model

BAD = {
    "repeated key": ('{"scale": {"f0": 1}, "scale": {"f0": 2}}', "key 'scale' appears twice"),
    "repeated inner key": ('{"scale": {"f0": 1, "f0": 2}}', "key 'f0' appears twice"),
    "long number": ('{"scale": {"f0": ' + "7" * 5000 + "}}", "4300"),
    # 400 digits: under Python's limit, but math.isfinite(int) raised OverflowError, a traceback (CLI fuzz, session 32)
    "integer beyond float64": ('{"scale": {"f0": ' + "9" * 400 + "}}", r"\(400 digits\) is beyond float64's range"),
    "negative integer beyond float64": ('{"norms": [-' + "9" * 309 + "]}", r"\(310 digits\) is beyond float64's range"),
    "deep nesting": ("[" * 100_000 + "]" * 100_000, "nested too deeply"),
    "not json": ("{scale: 1}", "Expecting property name"),
}


@pytest.mark.parametrize("case", sorted(BAD))
def test_every_failure_is_one_line(case):
    text, reason = BAD[case]
    with pytest.raises(JsonTextError, match=reason) as info:
        parse_json(text)
    assert "\n" not in str(info.value) and len(str(info.value)) < 300


def test_plain_json_reads_as_json_loads_does():
    assert parse_json('{"a": [1, 2.5, "x", null, true], "b": {"c": NaN}}')["a"] == [1, 2.5, "x", None, True]
    assert parse_json('{"a": {"k": 1}, "b": {"k": 2}}') == {"a": {"k": 1}, "b": {"k": 2}}  # same key, two objects


@pytest.mark.parametrize("case", sorted(BAD))
def test_a_threat_model_file_or_run_json_that_is_not_strict_json_is_refused_in_one_line(tmp_path, case):
    text, reason = BAD[case]
    (tmp_path / "tm.json").write_text(text)
    with pytest.raises(ConfigError, match=f"threat model file .*tm.json is not readable JSON: .*{reason}"):
        load_threat_model(tmp_path / "tm.json")
    with pytest.raises(CheckpointError, match=f"run.json is not valid JSON .*{reason}"):
        RunRecord.from_json(text)


def test_cli_settings_and_threat_models_with_such_json_get_one_line_and_exit_2(tmp_path):
    (tmp_path / "tm.json").write_text(BAD["repeated key"][0])
    args = ["train", "breast-cancer", "--out", str(tmp_path / "r")]
    res = CliRunner().invoke(main, [*args, "--threat-model", str(tmp_path / "tm.json")])
    assert res.exit_code == EXIT_REFUSED and "appears twice" in res.output and "Traceback" not in res.output
    res = CliRunner().invoke(
        main, ["train", "breast-cancer", "--set", "lr=" + "1" * 5000, "--out", str(tmp_path / "r")]
    )
    assert res.exit_code == EXIT_REFUSED and "not valid JSON" in res.output and "Traceback" not in res.output
    for setting in ("lr", "margin_radius"):
        res = CliRunner().invoke(
            main, ["train", "breast-cancer", "--set", f"{setting}=" + "9" * 400, "--out", str(tmp_path / "r")]
        )
        assert res.exit_code == EXIT_REFUSED and "beyond float64's range" in res.output, res.output
        assert "Traceback" not in res.output and len(res.output.strip().splitlines()) == 1
    assert not (tmp_path / "r").exists()


def test_integers_float64_holds_read_exactly():
    big = 2**1000
    assert parse_json(f"[{big}, -{big}, 9007199254740993]") == [big, -big, 9007199254740993]
