"""Fuzzing the command line: bad values and tampered run folders give one line and a documented exit code.

Every outcome is a success (exit 0), a failed check (1), or a refusal (2, 3, 4): never a traceback, a
refusal is exactly one line on stderr, and a refused command leaves the run folder byte-identical
with no new file. One tiny run folder is trained per module and copied for every example.

The number of cases tried and their outcomes are printed at the end of the module (``pytest -s``) and
written as JSON to ``$ASYMCERT_FUZZ_REPORT`` when that is set.
"""

from __future__ import annotations

import collections
import hashlib
import json
import os
import pickle
import shutil
import struct
import tempfile
from dataclasses import fields
from pathlib import Path
from typing import Any

import pytest
import torch
from click.testing import CliRunner
from hypothesis import HealthCheck, example, given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file

from asymcert.cli import EXIT_CODES, main
from asymcert.train import TrainConfig

COUNTS: dict[str, collections.Counter] = collections.defaultdict(collections.Counter)
TINY = ["--model-set", 'convex={"kind": "icnn", "widths": [8]}', "--preset", "fast", "--epochs", "1", "--quiet"]
FUZZ = dict(
    derandomize=True,
    deadline=None,
    database=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.function_scoped_fixture],
)

# JSON values small enough that no model built from them can ask for much memory (ints ≤ 64)
SCALARS = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-5, 64),
    st.sampled_from([2**63, -(2**70)]),
    st.floats(allow_nan=True, allow_infinity=True),
    st.text(max_size=6),
)
JSON = st.recursive(
    SCALARS,
    lambda inner: st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=5), inner, max_size=3),
    max_leaves=6,
)


@pytest.fixture(scope="module")
def base_run(fashion_dir, tmp_path_factory) -> dict[str, Any]:
    """A trained, certified and reported tiny run folder (never changed: every example copies it)."""
    out = tmp_path_factory.mktemp("fuzz") / "run"
    runner = CliRunner()
    for args in (
        ["train", "fashion-mnist-shirts", "--data-dir", str(fashion_dir), "--out", str(out), *TINY],
        ["certify", str(out), "--limit", "20", "--quiet"],
        ["report", str(out)],
    ):
        res = runner.invoke(main, args)
        assert res.exit_code == 0, res.output
    return {"dir": out, "fashion": fashion_dir, "scratch": tmp_path_factory.mktemp("fuzz-examples")}


@pytest.fixture(scope="module", autouse=True)
def _report_counts():
    yield
    lines = [
        f"{test}: {sum(c.values())} cases: " + ", ".join(f"{k} {v}" for k, v in sorted(c.items()))
        for test, c in sorted(COUNTS.items())
    ]
    print("\nfuzz cases tried (exit code: count)\n  " + "\n  ".join(lines))
    if os.environ.get("ASYMCERT_FUZZ_REPORT"):
        Path(os.environ["ASYMCERT_FUZZ_REPORT"]).write_text(
            json.dumps({t: dict(c) for t, c in COUNTS.items()}, indent=1)
        )


def _snapshot(folder: Path) -> dict[str, str]:
    """Relative path → sha256 of every file under ``folder``."""
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file()
    }


def _copy(base: dict[str, Any]) -> Path:
    return Path(shutil.copytree(base["dir"], Path(tempfile.mkdtemp(dir=base["scratch"])) / "run"))


def _check(test: str, args: list[str], folder: Path | None = None, new_path: Path | None = None) -> int:
    """Invoke the CLI and check the contract; returns the exit code.

    ``folder``: a run folder that a refused command must leave byte-identical (no new file).
    ``new_path``: a path that a refused command must not create.
    """
    before = _snapshot(folder) if folder is not None else None
    res = CliRunner().invoke(main, args, catch_exceptions=True)
    if res.exception is not None and not isinstance(res.exception, SystemExit):
        COUNTS[test]["traceback"] += 1  # (CliRunner reports exit code 1 for these)
        raise AssertionError(f"{args} raised {type(res.exception).__name__}: {res.exception}") from res.exception
    COUNTS[test][f"exit {res.exit_code}"] += 1
    assert res.exit_code in EXIT_CODES, (args, res.exit_code, res.output)
    if res.exit_code in (0, 1):
        return res.exit_code
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert len(lines) == 1 and lines[0].startswith("Error: "), (args, res.stderr)
    if folder is not None:
        assert _snapshot(folder) == before, (args, "a refused command changed the folder", lines[0])
    if new_path is not None:
        assert not new_path.exists(), (args, "a refused command created", new_path)
    return res.exit_code


# ------------------------------------------------------------------------------------------ CLI values
def _mostly(good: st.SearchStrategy, bad: st.SearchStrategy) -> st.SearchStrategy:
    """``good`` three times out of four, so that some examples get past every check and succeed."""
    return st.integers(0, 3).flatmap(lambda i: good if i else bad)


SETTING_KEYS = st.one_of(
    st.sampled_from([f.name for f in fields(TrainConfig)]), st.text("abcxyz_", min_size=1, max_size=6)
)
VALUES = st.one_of(
    JSON.map(json.dumps),
    st.text(max_size=8),
    st.sampled_from(["fast", "{bad", "[1,", "1e-3x", "adam", "cuda:0", "tpu9", "NaN", "-Infinity"]),
)


@settings(max_examples=100, **FUZZ)
@example(sets=[("lr", "fast")], model_sets=[])
@example(sets=[("lr", "{bad")], model_sets=[])
@example(sets=[("device", "tpu9")], model_sets=[])
@example(sets=[("epochs", "-3")], model_sets=[])
@example(sets=[], model_sets=[("bogus", "1")])
@example(sets=[], model_sets=[("convex", '{"kind": "icnn", "widths": [-3]}')])
@given(
    sets=st.lists(st.tuples(SETTING_KEYS, VALUES), max_size=3),
    model_sets=st.lists(
        st.tuples(st.sampled_from(["bogus", "convex", "feature_map", "input_range", "kind"]), VALUES), max_size=2
    ),
)
def test_train_settings_fuzz(base_run, sets, model_sets):
    """``train`` with random --set/--model-set into a copy of a finished run: resumes (same settings) or refuses."""
    folder = _copy(base_run)
    args = ["train", "fashion-mnist-shirts", "--data-dir", str(base_run["fashion"]), "--out", str(folder), *TINY]
    args += [a for k, v in sets for a in ("--set", f"{k}={v}")] + [
        a for k, v in model_sets for a in ("--model-set", f"{k}={v}")
    ]
    _check("train --set/--model-set", args, folder)


@settings(max_examples=100, **FUZZ)
@example(limit="0", batch="1000", norms="1,2,inf", device="cpu")
@example(limit="-5", batch="1000", norms="1,2,inf", device="cpu")
@example(limit="5", batch="0", norms="1,2,inf", device="cpu")
@example(limit="5", batch="7", norms="0.5", device="cpu")
@example(limit="5", batch="7", norms=",", device="cpu")
@example(limit="5", batch="7", norms="2", device="tpu9")
@given(
    limit=_mostly(
        st.integers(1, 30).map(str),
        st.one_of(st.integers(-3, 0).map(str), st.sampled_from(["", "x", "1e3", str(2**70)])),
    ),
    batch=_mostly(
        st.integers(1, 40).map(str), st.one_of(st.integers(-3, 0).map(str), st.sampled_from(["", "1.5", "-0"]))
    ),
    norms=_mostly(
        st.sampled_from(["1,2,inf", "2", "linf", "inf,3.5", "1.5,l2", "2,2"]),
        st.one_of(st.sampled_from(["0", "nan", "abc", "", ",", "-inf"]), st.text(max_size=6)),
    ),
    device=_mostly(
        st.sampled_from(["cpu", "auto"]),
        st.one_of(st.sampled_from(["cuda", "cuda:x", "meta", "mps", "tpu9", ""]), st.text(max_size=5)),
    ),
)
def test_certify_options_fuzz(base_run, limit, batch, norms, device):
    folder = _copy(base_run)
    _check(
        "certify options",
        [
            "certify",
            str(folder),
            "--limit",
            limit,
            "--batch-size",
            batch,
            "--norms",
            norms,
            "--device",
            device,
            "--quiet",
        ],
        folder,
    )


@settings(max_examples=30, **FUZZ)
@example(args=["--epochs", "0"])
@example(args=["--epochs", "-3"])
@example(args=["--limit", "-5"])
@example(args=["--device", "tpu9"])
@given(
    args=st.lists(
        st.sampled_from(
            [
                "--epochs",
                "--limit",
                "--device",
                "--preset",
                "--model",
                "-1",
                "0",
                "x",
                "fast",
                "linf-dist",
                "bogus",
                "cpu",
            ]
        ),
        max_size=4,
    )
)
def test_run_options_fuzz(base_run, args):
    """``run`` with bad options into a new folder: refused before the folder is created."""
    out = Path(tempfile.mkdtemp(dir=base_run["scratch"])) / "new"
    code = _check(
        "run options (new folder)",
        [
            "run",
            "fashion-mnist-shirts",
            "--data-dir",
            str(base_run["fashion"]),
            "--out",
            str(out),
            "--quiet",
            "--epochs",
            "1",
            *args,
            "--set",
            "lr=-1",
        ],
        new_path=out,
    )
    assert code == 2  # lr=-1 is refused whatever else is given


# ---------------------------------------------------------------------------------- tampered folders
def _paths(obj: Any, prefix: tuple = ()) -> list[tuple]:
    """Every path (keys / indices) into a JSON value, the root included."""
    out = [prefix]
    items = obj.items() if isinstance(obj, dict) else enumerate(obj) if isinstance(obj, list) else []
    for k, v in items:
        out += _paths(v, prefix + (k,))
    return out


def _mutated(obj: Any, path: tuple, value: Any, delete: bool) -> Any:
    """``obj`` with the value at ``path`` replaced by ``value`` (or deleted)."""
    if not path:
        return value
    obj = obj.copy()
    if len(path) == 1 and delete:
        del obj[path[0]]
    else:
        obj[path[0]] = _mutated(obj[path[0]], path[1:], value, delete)
    return obj


class _Harmless:
    """Pickles as a call of ``os.getcwd``: a stand-in for a malicious pickle (torch must refuse to run it)."""

    def __reduce__(self):
        return os.getcwd, ()


def _rewrite_safetensors(path: Path, metadata_change: dict[str, str]) -> None:
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    save_file(load_file(str(path)), str(path), metadata={**meta, **metadata_change})


def _tamper(folder: Path, data: st.DataObject) -> str:
    """Damage one file of ``folder`` in a way drawn from ``data``; returns a label of the kind of damage."""
    target = data.draw(
        st.sampled_from(
            ["run.json", "model.safetensors", "certificates.safetensors", "train_state.pt", "history.json"]
        ),
        label="file",
    )
    path = folder / target
    blob = path.read_bytes()
    how = data.draw(st.sampled_from(["truncate", "random bytes", "structure"]), label="how")
    if how == "truncate":
        path.write_bytes(blob[: data.draw(st.integers(0, max(0, len(blob) - 1)), label="keep")])
    elif how == "random bytes":
        path.write_bytes(data.draw(st.binary(max_size=64), label="bytes"))
    elif target.endswith(".json"):
        obj = json.loads(blob)
        where = data.draw(st.sampled_from(_paths(obj)), label="path")
        path.write_text(
            json.dumps(
                _mutated(
                    obj, where, data.draw(JSON, label="value"), bool(where) and data.draw(st.booleans(), label="delete")
                )
            )
        )
    elif target == "model.safetensors":
        config = json.loads(safe_open(str(path), framework="pt").metadata()["asymcert_config"])
        where = data.draw(st.sampled_from(_paths(config)), label="config path")
        new = _mutated(config, where, data.draw(JSON, label="value"), False)
        _rewrite_safetensors(path, {"asymcert_config": json.dumps(new)})
    elif target == "certificates.safetensors":
        keys = ["binary", "guarantee", "deterministic", "method", "alpha", "norms", "seconds"]
        key = data.draw(st.sampled_from(keys))
        _rewrite_safetensors(path, {key: json.dumps(data.draw(JSON, label="value"))})
    else:  # a training state holding a pickled call: torch.load(weights_only=True) must refuse it
        torch.save({"model": _Harmless()}, path)
        return f"{target}: pickled call"
    return f"{target}: {how}"


def _header_swap(folder: Path, header: Any) -> None:
    """model.safetensors with its JSON header replaced by ``header`` (tensor bytes kept)."""
    path = folder / "model.safetensors"
    blob = path.read_bytes()
    (n,) = struct.unpack("<Q", blob[:8])
    text = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(text)) + text + blob[8 + n :])


COMMANDS = {
    "certify": lambda d: ["certify", str(d), "--limit", "10", "--quiet"],
    "report": lambda d: ["report", str(d)],
    "audit": lambda d: ["audit", str(d), "--limit", "2", "--restarts", "1", "--steps", "1", "--no-exact"],
}


@settings(max_examples=150, **FUZZ)
@given(data=st.data(), command=st.sampled_from(sorted(COMMANDS)))
def test_tampered_run_folder_fuzz(base_run, data, command):
    """certify / report / audit on a run folder with one damaged file: works, or refuses in one line."""
    folder = _copy(base_run)
    kind = _tamper(folder, data)
    COUNTS["tampered folder: kinds of damage"][kind] += 1
    _check(f"tampered folder: {command}", COMMANDS[command](folder), folder)


@settings(max_examples=30, **FUZZ)
@given(data=st.data())
def test_tampered_folder_then_train_fuzz(base_run, data):
    """``train`` resuming in a folder with one damaged file: resumes, or refuses without writing."""
    folder = _copy(base_run)
    COUNTS["tampered folder: kinds of damage"][_tamper(folder, data)] += 1
    _check(
        "tampered folder: train",
        ["train", "fashion-mnist-shirts", "--data-dir", str(base_run["fashion"]), "--out", str(folder), *TINY],
        folder,
    )


@pytest.mark.parametrize(
    "run_json",
    [
        "[1, 2]",
        "{}",
        "null",
        '"run"',
        '{"task": [], "model": {}, "train": {}}',
        '{"task": {"name": "fashion-mnist-shirts"}, "model": [], "train": {}}',
        "{",
    ],
)
@pytest.mark.parametrize("command", sorted(COMMANDS))
def test_known_bad_run_json(base_run, run_json, command):
    folder = _copy(base_run)
    (folder / "run.json").write_text(run_json)
    assert _check(f"bad run.json: {command}", COMMANDS[command](folder), folder) == 2


@pytest.mark.parametrize(
    "config", [[1, 2], {"kind": "feature-convex"}, "x", None, "widths=-3", "input_shape=[]", "kind=bogus"]
)
@pytest.mark.parametrize("command", ["certify", "audit"])
def test_known_bad_model_config(base_run, config, command):
    """A model config that is a list, lacks keys, or has a negative width: refused in one line (exit 2)."""
    folder = _copy(base_run)
    path = folder / "model.safetensors"
    real = json.loads(safe_open(str(path), framework="pt").metadata()["asymcert_config"])
    if isinstance(config, str) and "=" in config:
        key, value = config.split("=")
        config = (
            {**real, "convex": {**real["convex"], "widths": [-3]}}
            if key == "widths"
            else {**real, key: json.loads(value) if value.startswith("[") else value}
        )
    _rewrite_safetensors(path, {"asymcert_config": json.dumps(config)})
    assert _check(f"bad model config: {command}", COMMANDS[command](folder), folder) == 2


@pytest.mark.parametrize(
    "header", [[], {"x": 1}, {"balance": {"dtype": "F32", "shape": [10**12], "data_offsets": [0, 4]}}]
)
def test_model_file_with_a_foreign_header(base_run, header):
    folder = _copy(base_run)
    _header_swap(folder, header)
    assert _check("foreign safetensors header", COMMANDS["certify"](folder), folder) == 2


def test_malicious_train_state_is_refused_before_any_write(base_run):
    folder = _copy(base_run)
    (folder / "train_state.pt").write_bytes(pickle.dumps(_Harmless()))
    args = ["train", "fashion-mnist-shirts", "--data-dir", str(base_run["fashion"]), "--out", str(folder), *TINY]
    assert _check("malicious train_state.pt", args, folder) == 2
