"""The spambase task: kernlab's spam.rda (written here in the real R format), the split, refusals."""

from __future__ import annotations

import io
import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
import rdata
from click.testing import CliRunner

import asymcert
from asymcert.cli import main
from asymcert.data import get_task
from asymcert.data.sources import cache_dir
from asymcert.data.spambase import SPAM_REMOTE, SPAMBASE_THREAT_MODEL, SYSTEM_DIRS, load_spambase, read_spam_rda
from asymcert.errors import DataError
from asymcert.threat import ThreatModel

NAMES = [f"word_freq_{i}" for i in range(54)] + ["capitalAve", "capitalLong", "capitalTotal"]


def _frame(n: int = 120, seed: int = 0) -> pd.DataFrame:
    g = np.random.default_rng(seed)
    x = np.abs(g.normal(size=(n, 57))) * np.r_[np.full(54, 0.5), 3.0, 50.0, 300.0]
    spam = x[:, 0] + x[:, 1] > 0.9
    frame = pd.DataFrame(x, columns=NAMES)
    frame["type"] = pd.Categorical(np.where(spam, "spam", "nonspam"), categories=["nonspam", "spam"])
    return frame


def test_reads_the_r_file_exactly_and_splits_stratified(tmp_path):
    frame = _frame()
    rdata.write_rda(tmp_path / "spam.rda", {"spam": frame})
    x, y, names = read_spam_rda(tmp_path / "spam.rda")
    assert names == NAMES and np.array_equal(x, frame[NAMES].to_numpy()) and y.sum() == (frame["type"] == "spam").sum()
    data = load_spambase(tmp_path)
    assert len(data.train) + len(data.val) + len(data.test) == 120 and data.class_names == ("nonspam", "spam")
    assert data.meta["feature_names"] == NAMES
    rate = float(y.mean())
    for split in (data.train, data.val, data.test):
        assert abs(float(split.y.float().mean()) - rate) < 0.1  # stratified


@pytest.mark.parametrize(
    ("write", "message"),
    [
        (lambda p: p.write_bytes(b"not an R file"), "not a readable R data file"),
        (lambda p: rdata.write_rda(p, {"other": _frame()}), "no data frame 'spam'"),
        (lambda p: rdata.write_rda(p, {"spam": _frame().drop(columns=NAMES[:3])}), "expected 57 feature columns"),
    ],
)
def test_foreign_files_are_refused_in_one_error(tmp_path, write, message, recwarn):
    write(tmp_path / "spam.rda")
    with pytest.raises(DataError, match=message):
        load_spambase(tmp_path)
    assert not [w for w in recwarn if "rdata" in str(w.filename)]  # no warnings besides the one error


def test_a_missing_file_says_where_it_looked_and_how_to_get_it(tmp_path, monkeypatch):
    monkeypatch.delenv("ASYMCERT_OFFLINE", raising=False)  # the tests' default: no downloads
    monkeypatch.setenv("ASYMCERT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr("asymcert.data.spambase.SYSTEM_DIRS", (tmp_path / "system",))
    asked = []

    def unreachable(url):
        asked.append(url)
        raise OSError("network is unreachable")

    with pytest.raises(DataError, match="apt-get download r-cran-kernlab") as info:
        load_spambase(tmp_path / "nothing", opener=unreachable)
    assert str(tmp_path / "nothing") in str(info.value) and "network is unreachable" in str(info.value)
    assert asked == [SPAM_REMOTE.urls[0]] and not (tmp_path / "cache" / "spambase" / "spam.rda").exists()


def test_a_download_that_is_not_the_pinned_file_is_refused(tmp_path, monkeypatch):
    monkeypatch.delenv("ASYMCERT_OFFLINE", raising=False)
    monkeypatch.setenv("ASYMCERT_DATA", str(tmp_path / "cache"))
    monkeypatch.setattr("asymcert.data.spambase.SYSTEM_DIRS", (tmp_path / "system",))
    rdata.write_rda(tmp_path / "other.rda", {"spam": _frame()})  # a valid file, but not kernlab's
    served = (tmp_path / "other.rda").read_bytes()
    with pytest.raises(DataError, match=r"(?i)sha-?256|checksum"):
        load_spambase(None, opener=lambda url: io.BytesIO(served))
    assert not (tmp_path / "cache" / "spambase" / "spam.rda").exists()
    monkeypatch.setenv("ASYMCERT_OFFLINE", "1")
    with pytest.raises(DataError, match="Downloading is disabled"):
        load_spambase(None, opener=lambda url: io.BytesIO(served))


def test_run_spambase_end_to_end_on_a_file_in_the_real_format(tmp_path):
    rdata.write_rda(tmp_path / "spam.rda", {"spam": _frame(200)})
    out = tmp_path / "run"
    args = ["run", "spambase", "--preset", "fast", "--data-dir", str(tmp_path), "--out", str(out), "--quiet"]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    results = json.loads((out / "results.json").read_text())
    assert results["n_inputs"] == 40 and json.loads((out / "run.json").read_text())["feature_names"] == NAMES
    # the task's threat model applies by default: radii in its units, at its report radii
    assert results["units"] == "threat-model units (δ_i / scale_i)"
    assert results["certified_accuracy"]["l1"].keys() == {"0.5", "1", "2", "4"}
    assert json.loads((out / "run.json").read_text())["threat_model"] == SPAMBASE_THREAT_MODEL.to_dict()


def test_the_default_trains_hinges_and_the_presets_their_own_models(tmp_path):
    rdata.write_rda(tmp_path / "spam.rda", {"spam": _frame(200)})
    kinds = {}
    for preset in (None, "pairs", "log1p-64-32"):
        out = tmp_path / str(preset)
        args = ["run", "spambase", "--set", "epochs=1", "--data-dir", str(tmp_path), "--out", str(out), "--quiet"]
        res = CliRunner().invoke(main, args + (["--preset", preset] if preset else []))
        assert res.exit_code == 0, res.output
        model = asymcert.load(out)
        kinds[preset] = ([m.kind for m in model.feature_map.maps], model.convex.widths)
        assert json.loads((out / "results.json").read_text())["units"] == "threat-model units (δ_i / scale_i)"
    assert kinds[None] == (["log1p", "standardize", "hinges"], (1,))
    assert kinds["pairs"] == (["log1p", "standardize", "pair-min", "hinges"], (1,))
    assert kinds["log1p-64-32"] == (["log1p", "standardize"], (64, 32))
    knots = asymcert.load(tmp_path / "None").feature_map.maps[2].knot_values
    assert knots.shape == (4, 57) and bool((knots[1:] >= knots[:-1]).all()) and bool((knots != 0).any())
    knots = asymcert.load(tmp_path / "pairs").feature_map.maps[3].knot_values
    assert knots.shape == (2, 57 * 29) and bool((knots[1:] >= knots[:-1]).all()) and bool((knots != 0).any())


def test_the_threat_model_file_in_docs_is_the_tasks_own():
    shipped = json.loads((Path(__file__).resolve().parents[2] / "docs/threat_models/spambase.json").read_text())
    assert ThreatModel.from_dict(shipped).to_dict() == SPAMBASE_THREAT_MODEL.to_dict() == shipped
    assert get_task("spambase").threat_model is SPAMBASE_THREAT_MODEL


def test_the_real_spambase_when_present():
    found = [d / "spam.rda" for d in (cache_dir() / "spambase", *SYSTEM_DIRS) if (d / "spam.rda").is_file()]
    if not found:
        pytest.skip("kernlab's spam.rda is not on this machine (scripts/setup.sh fetches it)")
    x, y, names = read_spam_rda(found[0])
    assert x.shape == (4601, 57) and int(y.sum()) == 1813 and names[-1] == "capitalTotal"
    assert float(x[:, -1].max()) == 15841.0 and get_task("spambase").binary
    tm = SPAMBASE_THREAT_MODEL.resolve(names, 57)  # every name it uses is a real column
    assert tm.scale[names.index("capitalTotal")] == 100.0 and bool((x >= tm.lower.numpy()).all())
