"""The run-folder lock, atomic writes (permissions, disk full), stale temp files, strict JSON, RunRecord."""

from __future__ import annotations

import errno
import json
import math
import os
import signal
import subprocess
import sys
import time
from dataclasses import MISSING, fields, replace
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from asymcert.checkpoint import atomic_write, created_folders, signals_held
from asymcert.errors import CheckpointError, RunFolderBusyError, WriteError
from asymcert.jsontext import parse_json
from asymcert.runfolder import (
    LOCK_FILE,
    THREAT_MODEL_SOURCES,
    CertificateMode,
    RunRecord,
    dumps_strict,
    exclusive,
    exclusive_output,
    output_lock_path,
    remove_stale_temp_files,
    stale_temp_files,
    write_json,
)
from tests.conftest import examples
from tests.typed_json import (
    BOOL,
    DICT,
    INT,
    LIST,
    NULL,
    NUMBER,
    STR,
    certificate_modes,
    json_native,
    json_objects,
    replaced,
    same,
    schema_paths,
    seconds,
    strict,
    texts,
    without,
    wrong_values,
)
from tests.typed_json import json_values as finite_json_values

HOLD = """
import sys, time
from asymcert.runfolder import exclusive
with exclusive(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def _holder(folder: Path) -> subprocess.Popen:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(folder)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout.readline().strip() == "locked"
    return proc


def test_lock_is_exclusive_between_processes_and_dies_with_its_holder(tmp_path):
    proc = _holder(tmp_path)
    try:
        with pytest.raises(RunFolderBusyError, match=LOCK_FILE), exclusive(tmp_path):
            pass
    finally:
        proc.send_signal(signal.SIGKILL)  # a crash: no cleanup code runs
        proc.wait()
    with exclusive(tmp_path):  # the OS released the dead process's lock
        assert (tmp_path / LOCK_FILE).exists()


def test_lock_is_reentrant_in_one_process_and_released_at_the_end(tmp_path):
    with exclusive(tmp_path):
        with exclusive(tmp_path):  # `run` holds it while its train/certify/report steps take it again
            pass
        probe = subprocess.run(
            [sys.executable, "-c", HOLD.replace("time.sleep(120)", "pass"), str(tmp_path)],
            capture_output=True,
            text=True,
            timeout=120,
        )
        assert probe.returncode != 0 and "RunFolderBusyError" in probe.stderr
    proc = _holder(tmp_path)  # free again once the outer block ends
    proc.kill()
    proc.wait()


def test_missing_folder_is_not_created_unless_asked(tmp_path):
    with pytest.raises(CheckpointError, match="not a run folder"), exclusive(tmp_path / "nope"):
        pass
    assert not (tmp_path / "nope").exists()
    with exclusive(tmp_path / "new", create=True):
        pass
    assert (tmp_path / "new").is_dir()


@pytest.mark.parametrize("umask,mode", [(0o022, 0o644), (0o077, 0o600), (0o002, 0o664)])
def test_atomic_write_respects_the_umask(tmp_path, umask, mode):
    old = os.umask(umask)
    try:
        atomic_write(tmp_path / "a.json", lambda tmp: tmp.write_text("{}"))
        write_json(tmp_path / "b.json", {"x": 1})
    finally:
        os.umask(old)
    for name in ("a.json", "b.json"):
        assert (tmp_path / name).stat().st_mode & 0o777 == mode, name


def test_disk_full_is_one_line_naming_the_file_and_keeps_the_old_file(tmp_path):
    target = tmp_path / "results.json"
    target.write_text("old")

    def full(tmp):
        tmp.write_text("half")
        raise OSError(errno.ENOSPC, "No space left on device")

    with pytest.raises(WriteError, match="No space left on device") as info:
        atomic_write(target, full)
    assert str(target) in str(info.value) and "\n" not in str(info.value)
    assert target.read_text() == "old"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["results.json"]  # no temp file left


def test_safetensors_write_failure_is_a_write_error(tmp_path):
    from safetensors import SafetensorError

    def fail(tmp):
        raise SafetensorError("Error while serializing: IoError(No space left on device)\nmore detail")

    with pytest.raises(WriteError, match=r"model.safetensors: Error while serializing") as info:
        atomic_write(tmp_path / "model.safetensors", fail)
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_errors_of_our_own_pass_through_atomic_write(tmp_path):
    def refuse(tmp):
        raise CheckpointError("a reason of our own")

    with pytest.raises(CheckpointError, match="a reason of our own"):
        atomic_write(tmp_path / "x", refuse)


def test_stale_temp_files_match_atomic_writes_only(tmp_path):
    """Only asymcert's own pattern ``.<name>.asymcert-<8>.tmp``: a user's ``.<name>.<8 characters>`` (notes, a dated
    backup) beside a run's or an output's files is kept (it was deleted as a stale temporary file)."""
    half = (".train_state.pt.asymcert-k3x_9a0q.tmp", ".run.json.asymcert-abcdefgh.tmp", ".a.png.asymcert-0123_abc.tmp")
    for name in half:
        (tmp_path / name).write_text("half")
    mine = [LOCK_FILE, ".hidden", ".notes.txt", "run.json", ".x.ABCDEFGH", ".x.abc", ".run.json.abcdefgh"]
    mine += [".results.csv.notes_v2", ".results.csv.20240101", ".model.onnx.readme_1", ".x.asymcert-abcdefgh"]
    mine += [".x.asymcert-abcdefgh.tmp.old", ".x.asymcert-ABCDEFGH.tmp", ".x.asymcert-abc.tmp"]
    for name in mine:
        (tmp_path / name).write_text("keep")
    (tmp_path / ".dir.asymcert-abcdefgh.tmp").mkdir()
    for p in tmp_path.iterdir():
        _age(p)
    assert [p.name for p in stale_temp_files(tmp_path)] == sorted(half)
    assert [p.name for p in stale_temp_files(tmp_path, target="run.json")] == [".run.json.asymcert-abcdefgh.tmp"]
    remove_stale_temp_files(tmp_path)
    assert stale_temp_files(tmp_path) == [] and all((tmp_path / name).read_text() == "keep" for name in mine)
    assert (tmp_path / ".dir.asymcert-abcdefgh.tmp").is_dir()


def test_a_killed_atomic_write_leaves_a_temp_file_that_matches_the_pattern(tmp_path):
    """The pattern is the one atomic_write really uses: kill a write half-way and look."""
    code = (
        "import os, sys\nfrom pathlib import Path\nfrom asymcert.checkpoint import atomic_write\n"
        "atomic_write(Path(sys.argv[1]) / 'train_state.pt', lambda tmp: os.kill(os.getpid(), 9))\n"
    )
    subprocess.run([sys.executable, "-c", code, str(tmp_path)], timeout=120)
    left = [p.name for p in tmp_path.iterdir()]
    assert len(left) == 1 and left[0].startswith(".train_state.pt.asymcert-") and left[0].endswith(".tmp")
    assert stale_temp_files(tmp_path) == []  # (too young to tell from a write that has not locked it yet)
    _age(tmp_path / left[0])
    assert [p.name for p in stale_temp_files(tmp_path)] == left


def _age(path: Path, seconds: float = 60.0) -> None:
    """Set ``path``'s modification time ``seconds`` in the past."""
    past = time.time() - seconds
    os.utime(path, (past, past))


WRITE_SLOWLY = """
import sys, time
from pathlib import Path
from asymcert.checkpoint import atomic_write, created_folders, signals_held
def write(tmp):
    tmp.write_text("half")
    print("writing", flush=True)
    time.sleep(120)
atomic_write(Path(sys.argv[1]) / "traffic.csv", write)
"""


def test_a_live_writes_temporary_file_is_never_taken_for_a_stale_one(tmp_path):
    """`report DIR` (holding the run folder's lock) removed the temporary file of a `certify --input --out
    DIR/traffic.csv` still writing, which then failed (audit 29a F8): a live write locks its temporary file."""
    proc = subprocess.Popen([sys.executable, "-c", WRITE_SLOWLY, str(tmp_path)], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout.readline().strip() == "writing"
        (live,) = [p for p in tmp_path.iterdir() if p.name.startswith(".traffic.csv.asymcert-")]
        _age(live)
        with exclusive(tmp_path):
            assert stale_temp_files(tmp_path) == [] and remove_stale_temp_files(tmp_path) == []
        assert live.exists()
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait()
    assert [p.name for p in stale_temp_files(tmp_path)] == [live.name]  # its writer is dead: now it is stale


finite_or_not = st.floats(allow_nan=True, allow_infinity=True)
json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | finite_or_not | st.text(max_size=5),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=5), inner, max_size=4),
    max_leaves=20,
)


def _refuse(const):
    raise ValueError(f"non-standard JSON constant {const}")


@settings(max_examples=examples(200), deadline=None)
@given(json_values)
def test_strict_json_is_standard_json_and_keeps_every_finite_value(value):
    text = dumps_strict(value)
    back = json.loads(text, parse_constant=_refuse)

    def same(a, b):
        if isinstance(a, float) and not math.isfinite(a):
            return b is None
        if isinstance(a, dict):
            return isinstance(b, dict) and a.keys() == b.keys() and all(same(a[k], b[k]) for k in a)
        if isinstance(a, (list, tuple)):
            return isinstance(b, list) and len(a) == len(b) and all(same(x, y) for x, y in zip(a, b))
        return a == b

    assert same(value, back)


def test_strict_json_through_a_default_hook():
    class Odd:
        pass

    assert json.loads(dumps_strict({"a": Odd()}, default=lambda o: [math.inf, 1.5])) == {"a": [None, 1.5]}


@pytest.mark.parametrize(
    "text,message",
    [
        ("[1, 2]", "must hold a JSON object, found list"),
        ("{}", "lacks the key 'task'"),
        ("nope", "not valid JSON"),
        ('{"task": {"name": "t"}, "model": {}, "train": []}', "'train' must be an object"),
        ('{"task": {"name": "t"}, "model": {}, "train": {}, "binary": "yes"}', "'binary' must be true or false"),
        ('{"task": {"name": "t"}, "model": {}, "train": {}, "training": {"best": 3}}', "'training' must be"),
        ('{"task": {"name": "t"}, "model": {}, "train": {}, "splits": {"test": 1.5}}', "'splits' must be"),
        ('{"task": {"name": "t"}, "model": {}, "train": {}, "report_radii": {"l1": [-1]}}', "finite radii ≥ 0"),
        ('{"task": {"name": "t"}, "model": {}, "train": {}, "report_radii": {"l1": [1e999]}}', "finite radii ≥ 0"),
        # a mistyped input shape reached the threat model's resolve as a str: a traceback (CLI fuzz, session 32)
        ('{"task": {"name": "t"}, "model": {"input_shape": "6"}, "train": {}}', "'model.input_shape' must be a list"),
        ('{"task": {"name": "t"}, "model": {"input_shape": [0]}, "train": {}}', "'model.input_shape' must be a list"),
        ('{"task": {"name": "t"}, "model": {"input_shape": [true]}, "train": {}}', "integers ≥ 1, found list"),
    ],
)
def test_run_record_names_the_bad_key(text, message):
    with pytest.raises(CheckpointError, match=message) as info:
        RunRecord.from_json(text, "run.json")
    assert "\n" not in str(info.value)


def test_run_record_round_trips_and_keeps_unknown_keys():
    raw = {
        "task": {"name": "t"},
        "model": {"kind": "k"},
        "train": {"lr": 0.1},
        "binary": False,
        "report_radii": {"l2": [0.5, 1]},
        "training": {"seconds": 1.0, "best": {"epoch": 2}},
        "newer": {"a": 1},
    }
    rec = RunRecord.from_json(json.dumps(raw))
    assert rec.binary is False and rec.training["best"]["epoch"] == 2 and rec.extra == {"newer": {"a": 1}}
    assert rec.to_dict() == {**RunRecord(task={"name": "t"}, model={}, train={}).to_dict(), **raw}


def test_an_output_files_lock_is_one_per_file_whatever_its_spelling(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    (tmp_path / "a").mkdir()
    same = output_lock_path(tmp_path / "r.csv")
    assert output_lock_path("r.csv") == same == output_lock_path(tmp_path / "a" / ".." / "r.csv")
    (tmp_path / "link.csv").symlink_to(tmp_path / "r.csv")
    assert output_lock_path(tmp_path / "link.csv") == same
    assert output_lock_path(tmp_path / "s.csv") != same
    assert same == tmp_path.resolve() / ".r.csv.asymcert.lock"  # beside the file, whatever TMPDIR or USER say


OTHER_ENV_WRITER = """
import sys
from asymcert.runfolder import exclusive_output
with exclusive_output(sys.argv[1]):
    print("locked", flush=True)
    sys.stdin.readline()
"""


def test_an_output_file_has_one_writer_whatever_the_writers_environment(tmp_path):
    """The lock lived in <TMPDIR>/asymcert-<USER>/: a writer with another TMPDIR or USER was let in (audit 29a F2).
    Now it is beside the file; it is deleted after the write, and a second writer waits for nothing."""
    target = tmp_path / "r.csv"
    env = {**os.environ, "TMPDIR": str(tmp_path), "USER": "someone-else", "LOGNAME": "someone-else"}
    proc = subprocess.Popen(
        [sys.executable, "-c", OTHER_ENV_WRITER, str(target)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        assert proc.stdout.readline().strip() == "locked"
        busy = pytest.raises(RunFolderBusyError, match="being written by another asymcert process")
        with busy, exclusive_output(target):
            pass
    finally:
        proc.stdin.write("\n")
        proc.stdin.flush()
        proc.wait(timeout=60)
    assert not output_lock_path(target).exists()  # deleted by its last holder
    with exclusive_output(target):
        assert output_lock_path(target).exists()
    assert not output_lock_path(target).exists()


def test_a_rename_is_flushed_to_disk_with_its_folder(tmp_path, monkeypatch):
    """After the rename, the folder itself is fsynced (a power loss could otherwise lose the new name; audit 29a)."""
    synced = []
    real = os.fsync

    def recording(fd):
        synced.append(os.readlink(f"/proc/self/fd/{fd}"))
        return real(fd)

    monkeypatch.setattr(os, "fsync", recording)
    atomic_write(tmp_path / "sub" / "a.json", lambda tmp: tmp.write_text("{}"))
    assert synced[-1] == str((tmp_path / "sub").resolve())
    assert any(p.endswith(".tmp") for p in synced[:-1])  # (the file's own data first)


def test_only_folders_made_here_are_removed_when_refused(tmp_path, monkeypatch):
    """`--out nA/../keep/x.csv` with `keep/` the user's (empty) folder and `nA` missing: a refusal removed `keep/`
    (review 29d #3). Now only `nA`, which the command made, goes."""
    monkeypatch.chdir(tmp_path)
    (tmp_path / "keep").mkdir()
    with pytest.raises(RuntimeError), created_folders(Path("nA/../keep/sub")):
        assert (tmp_path / "nA").is_dir() and (tmp_path / "keep" / "sub").is_dir()
        raise RuntimeError("refused")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["keep"] and list((tmp_path / "keep").iterdir()) == []


def test_an_output_lock_is_never_taken_through_a_symlink(tmp_path):
    """A dangling symlink planted at the lock's name was followed: an empty file appeared at its target and stayed
    (review 29d #6). Now the lock refuses it, one line, and creates nothing."""
    target = tmp_path / "elsewhere" / "planted"
    (tmp_path / "elsewhere").mkdir()
    output_lock_path(tmp_path / "x.csv").symlink_to(target)
    with pytest.raises(WriteError, match="cannot lock"), exclusive_output(tmp_path / "x.csv"):
        pass
    assert not target.exists()


def test_stopped_while_taking_an_output_lock_leaves_no_lock_file(tmp_path, monkeypatch):
    """Ctrl-C while the lock beside the output was being taken left the lock file and the new folder (review 29d
    #5)."""
    real = os.stat

    def interrupted(path, *args, **kwargs):
        if str(path).endswith(".asymcert.lock"):
            raise KeyboardInterrupt
        return real(path, *args, **kwargs)

    monkeypatch.setattr(os, "stat", interrupted)
    with pytest.raises(KeyboardInterrupt), exclusive_output(tmp_path / "new" / "x.csv"):
        pass
    monkeypatch.undo()
    assert list(tmp_path.iterdir()) == []


def test_held_signals_come_back_once_with_their_handlers(monkeypatch):
    """SIGINT and SIGTERM both arriving while held: SIGTERM (the stop request) is raised after the block, SIGINT
    not dropped silently into a swapped handler, and both handlers are the earlier ones again (review 29d #7)."""
    seen = []

    class Stop(Exception):
        pass

    def on_term(signum, frame):
        seen.append("TERM")
        raise Stop

    old_int = signal.getsignal(signal.SIGINT)
    old_term = signal.signal(signal.SIGTERM, on_term)
    try:
        with pytest.raises(Stop), signals_held():
            os.kill(os.getpid(), signal.SIGINT)
            os.kill(os.getpid(), signal.SIGTERM)
            time.sleep(0.05)
            assert seen == []  # (held)
        assert seen == ["TERM"]
        assert signal.getsignal(signal.SIGINT) is old_int and signal.getsignal(signal.SIGTERM) is on_term
    finally:
        signal.signal(signal.SIGTERM, old_term)


# ------------------------------------------------------------- properties of run.json's and certify.json's JSON
# Both are written by write_json (dumps_strict, indented) and read back with parse_json: RunRecord.from_json for
# run.json, CertificateMode.from_dict of parse_json's value for certify.json.
CHECKS = settings(max_examples=examples(80), deadline=None)
_TASK_KEYS = ("name", "npz", "csv", "images")
_OPTIONAL = ("training", "feature_names", "threat_model")  # (not written while None)
_FIELDS = [f.name for f in fields(RunRecord) if f.name != "extra"]
finite_radii = st.sampled_from([0.0, 5e-324, 1e-300, 0.5, 1.0, 1e300, 1.7976931348623157e308]) | st.floats(
    min_value=0.0, allow_nan=False, allow_infinity=False
)


@st.composite
def run_records(draw):
    """Any run.json record: each task kind, optional keys present or not, keys of newer versions."""
    task = {**draw(st.dictionaries(texts.filter(lambda k: k not in _TASK_KEYS), finite_json_values, max_size=2))}
    task[draw(st.sampled_from(_TASK_KEYS))] = draw(texts)
    training = {"seconds": draw(st.none() | seconds), "best": draw(json_objects), "epochs": draw(st.integers(0, 99))}
    return RunRecord(
        task=task,
        model=draw(json_objects),
        train=draw(json_objects),
        task_description=draw(texts),
        preset=draw(st.none() | texts),
        data_dir=draw(st.none() | texts),
        class_names=draw(st.lists(texts, max_size=3)),
        binary=draw(st.booleans()),
        report_radii=draw(st.dictionaries(texts, st.lists(finite_radii, max_size=3), max_size=3)),
        splits=draw(st.dictionaries(texts, st.integers(0, 10**12), max_size=3)),
        training=draw(st.none() | st.just(training)),
        feature_names=draw(st.none() | st.lists(texts, max_size=3)),
        threat_model=draw(st.none() | json_objects),
        extra=draw(st.dictionaries(texts.filter(lambda k: k not in _FIELDS), finite_json_values, max_size=2)),
    )


RUN_SCHEMA = {
    ("task",): {DICT},
    ("model",): {DICT},
    ("train",): {DICT},
    ("task_description",): {STR},
    ("preset",): {STR, NULL},
    ("data_dir",): {STR, NULL},
    ("class_names",): {LIST},
    ("binary",): {BOOL},
    ("report_radii",): {DICT},
    ("report_radii", "*"): {LIST},
    ("report_radii", "*", "#"): {NUMBER},
    ("splits",): {DICT},
    ("splits", "*"): {INT},
    ("training",): {DICT, NULL},
    ("training", "seconds"): {NUMBER, NULL},
    ("training", "best"): {DICT},
    ("feature_names",): {LIST, NULL},
    ("feature_names", "#"): {STR},
    ("threat_model",): {DICT, NULL},
}
"""What each key of run.json holds, as JSON kinds (keys of newer versions: anything)."""


def _run_json(record: RunRecord) -> str:
    return dumps_strict(record.to_dict(), indent=1) + "\n"  # as write_json writes it


def _default(name: str):
    (f,) = [f for f in fields(RunRecord) if f.name == name]
    return f.default_factory() if f.default is MISSING else f.default  # type: ignore[misc]


@CHECKS
@given(run_records())
def test_a_run_record_comes_back_from_run_json_and_writes_the_same_file(record):
    text = _run_json(record)
    back = RunRecord.from_json(text)
    assert same(back, record) and _run_json(back) == text


@CHECKS
@given(run_records())
def test_a_run_records_json_is_strict_and_its_keys_keep_their_order(record):
    raw = record.to_dict()
    written = [k for k in _FIELDS if k not in _OPTIONAL or getattr(record, k) is not None]
    assert json_native(raw) and list(raw) == [*written, *record.extra]
    assert list(strict(_run_json(record))) == list(raw)


@CHECKS
@given(run_records())
def test_run_json_missing_a_key_is_refused_or_read_as_its_default(record):
    raw = strict(_run_json(record))
    for key in raw:
        if key in ("task", "model", "train"):
            with pytest.raises(CheckpointError, match=f"lacks the key '{key}'"):
                RunRecord.from_dict(without(raw, (key,)))
        elif key in _FIELDS:
            assert same(RunRecord.from_dict(without(raw, (key,))), replace(record, **{key: _default(key)}))
        else:
            extra = {k: v for k, v in record.extra.items() if k != key}
            assert same(RunRecord.from_dict(without(raw, (key,))), replace(record, extra=extra))


@CHECKS
@given(run_records(), st.data())
def test_run_json_holding_a_wrong_type_is_one_checkpoint_error_naming_the_key(record, data):
    raw = strict(_run_json(record))
    for path, allowed in schema_paths(raw, RUN_SCHEMA):
        wrong = data.draw(wrong_values(allowed), label=str(path))
        with pytest.raises(CheckpointError, match=f"key '{path[0]}' must be") as info:
            RunRecord.from_dict(replaced(raw, path, wrong))
        assert "\n" not in str(info.value)
    with pytest.raises(CheckpointError, match="must hold a JSON object"):
        RunRecord.from_dict(data.draw(wrong_values({DICT}), label="raw"))


@CHECKS
@given(certificate_modes)
def test_a_certificate_mode_comes_back_from_certify_json(mode):
    raw = mode.to_dict()
    assert json_native(raw) and list(raw) == [f.name for f in fields(CertificateMode)]
    text = dumps_strict(raw, indent=1)
    assert list(strict(text)) == list(raw) and same(CertificateMode.from_dict(parse_json(text)), mode)


MODE_SCHEMA = {
    ("reach",): {BOOL},
    ("threat_model",): set(),  # (one of THREAT_MODEL_SOURCES: any other string is as wrong)
    ("threat_model_file",): {STR, NULL},
    ("given",): {DICT, NULL},
    ("certificates_sha256",): {STR, NULL},
}


@CHECKS
@given(certificate_modes, st.data())
def test_a_certificate_mode_missing_a_key_or_holding_a_wrong_type_is_not_recorded(mode, data):
    """CertificateMode.from_dict's convention: None for what is not a mode (the certificates' mode not recorded),
    never an error and never a half-built mode."""
    raw = strict(dumps_strict(mode.to_dict()))
    for key in raw:
        assert CertificateMode.from_dict(without(raw, (key,))) is None
    for path, allowed in schema_paths(raw, MODE_SCHEMA):
        wrong = data.draw(wrong_values(allowed).filter(lambda v: v not in THREAT_MODEL_SOURCES), label=str(path))
        assert CertificateMode.from_dict(replaced(raw, path, wrong)) is None
    assert CertificateMode.from_dict(data.draw(wrong_values({DICT}), label="raw")) is None


def test_a_certificate_mode_with_a_given_threat_model_for_another_source_is_not_recorded():
    """``given`` holds the threat model of a ``"given"`` mode only; certify.json with it under "run" or "none" was
    read as a mode (the property-test helper's observation, session 31): not one now."""
    for source in ("run", "none"):
        assert CertificateMode.from_dict({**CertificateMode(False, source).to_dict(), "given": {"scale": {}}}) is None
    mode = CertificateMode(True, "given", "tm.json", {"scale": {"0": 2.0}})
    assert CertificateMode.from_dict(mode.to_dict()) == mode


def test_a_lock_file_planted_as_a_symlink_is_refused_and_its_target_kept(tmp_path):
    """Review s34 ckpt F4: with filelock < 3.20.1 (which the requirement allowed) a `.asymcert.lock` symlink in a
    received folder had its target truncated to 0 bytes by any command that took the lock."""
    victim = tmp_path / "precious.txt"
    victim.write_text("keep me")
    folder = tmp_path / "received"
    folder.mkdir()
    (folder / ".asymcert.lock").symlink_to(victim)
    with pytest.raises(WriteError), exclusive(folder, collective=False):
        pass
    assert victim.read_text() == "keep me"
