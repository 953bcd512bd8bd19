"""CIFAR-10 python batches: every accepted layout, the restricted unpickler, damaged files, the tasks."""

from __future__ import annotations

import gzip
import io
import os
import pickle
import struct
import tarfile
import tracemalloc
from typing import ClassVar

import numpy as np
import pytest

from asymcert.data import cifar
from asymcert.data.cifar import (
    ARCHIVE,
    BATCH_FOLDER,
    MAX_BATCH_BYTES,
    TEST_BATCH,
    TRAIN_BATCHES,
    load_cifar10_arrays,
    read_cifar_batch,
    write_cifar_batch,
)
from asymcert.data.tasks import get_task
from asymcert.errors import DataError

PER_BATCH = 12


def _fake_cifar(seed: int = 0) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """Six small batches; labels cycle through 0..9 shifted per batch so cats (3) and dogs (5) appear."""
    rng = np.random.default_rng(seed)
    batches = {}
    for i, name in enumerate((*TRAIN_BATCHES, TEST_BATCH)):
        y = (np.arange(PER_BATCH) + i) % 10
        batches[name] = (rng.integers(0, 256, (PER_BATCH, 3, 32, 32), dtype=np.uint8), y)
    return batches


def _write_folder(folder, batches) -> None:
    folder.mkdir(parents=True, exist_ok=True)
    for name, (x, y) in batches.items():
        write_cifar_batch(folder / name, x, y)


def _write_archive(path, batches) -> None:
    staging = path.parent / "staging"
    _write_folder(staging / BATCH_FOLDER, batches)
    with tarfile.open(path, "w:gz") as tar:
        tar.add(staging / BATCH_FOLDER, arcname=BATCH_FOLDER)


@pytest.fixture(scope="module")
def batches():
    return _fake_cifar()


def _expected(batches):
    x_train = np.concatenate([batches[n][0] for n in TRAIN_BATCHES])
    y_train = np.concatenate([batches[n][1] for n in TRAIN_BATCHES])
    return x_train, y_train, *batches[TEST_BATCH]


@pytest.mark.parametrize("layout", ["extracted", "flat", "archive"])
def test_every_layout_reads_the_same(tmp_path, data_cache, batches, layout):
    if layout == "extracted":
        _write_folder(tmp_path / "data" / BATCH_FOLDER, batches)
    elif layout == "flat":
        _write_folder(tmp_path / "data", batches)
    else:
        (tmp_path / "data").mkdir()
        _write_archive(tmp_path / "data" / ARCHIVE, batches)
    got = load_cifar10_arrays(tmp_path / "data")
    for a, b in zip(got, _expected(batches)):
        np.testing.assert_array_equal(a, b)
    assert got[0].shape == (5 * PER_BATCH, 3, 32, 32) and got[0].dtype == np.uint8 and got[1].dtype == np.int64


def test_cache_folder_is_searched(data_cache, batches):
    _write_folder(data_cache / "cifar10" / BATCH_FOLDER, batches)
    assert load_cifar10_arrays(None)[0].shape[0] == 5 * PER_BATCH


def test_official_channel_layout(tmp_path):
    """Row layout is 1024 red, 1024 green, 1024 blue values, each row-major 32 × 32."""
    data = np.arange(3072, dtype=np.int64).reshape(1, 3072) % 256
    payload = {b"data": data.astype(np.uint8), b"labels": [7]}
    x, y = read_cifar_batch(io.BytesIO(pickle.dumps(payload, protocol=2)))
    assert x.shape == (1, 3, 32, 32) and y.tolist() == [7]
    assert x[0, 1, 0, 0] == 1024 % 256 and x[0, 0, 0, 1] == 1 and x[0, 2, 1, 0] == (2048 + 32) % 256


class _Py2Pickler(pickle._Pickler):
    """Writes bytes as Python 2 ``str`` (SHORT_BINSTRING/BINSTRING opcodes), as cPickle did for the
    official batches; the pure-Python pickler is used because the C one cannot be taught this."""

    dispatch: ClassVar[dict] = dict(pickle._Pickler.dispatch)

    def _save_py2_str(self, obj: bytes) -> None:
        if len(obj) < 256:
            self.write(pickle.SHORT_BINSTRING + bytes([len(obj)]) + obj)
        else:
            self.write(pickle.BINSTRING + struct.pack("<i", len(obj)) + obj)
        self.memoize(obj)

    dispatch[bytes] = _save_py2_str


def test_python2_era_pickle_like_the_official_files():
    x = (np.arange(2 * 3072) % 251).astype(np.uint8).reshape(2, 3072)
    stream = io.BytesIO()
    _Py2Pickler(stream, protocol=2).dump(
        {
            b"batch_label": b"training batch 1 of 5",
            b"labels": [3, 5],
            b"data": x,
            b"filenames": [b"cat_1.png", b"dog_2.png"],
        }
    )
    raw = stream.getvalue().replace(b"numpy._core.multiarray", b"numpy.core.multiarray")  # numpy 1.x name
    assert b"_codecs" not in raw and b"numpy.core.multiarray\n_reconstruct" in raw
    images, labels = read_cifar_batch(io.BytesIO(raw))
    np.testing.assert_array_equal(images.reshape(2, 3072), x)
    assert labels.tolist() == [3, 5]


def test_str_keys_and_newer_protocols_are_accepted():
    for protocol in (3, 4, 5):
        payload = {"data": np.zeros((2, 3072), np.uint8), "labels": [0, 9]}
        x, y = read_cifar_batch(io.BytesIO(pickle.dumps(payload, protocol=protocol)))
        assert x.shape == (2, 3, 32, 32) and y.tolist() == [0, 9]


class _Exploit:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


def test_malicious_pickle_is_refused_without_running_code(tmp_path):
    marker = tmp_path / "pwned"
    evil = pickle.dumps({b"data": _Exploit(marker), b"labels": [1]}, protocol=2)
    with pytest.raises(DataError, match=r"refusing to load .*system"):
        read_cifar_batch(io.BytesIO(evil), "evil")
    assert not marker.exists()


def test_malicious_codec_is_refused():
    evil = pickle.dumps(b"x", protocol=2).replace(b"latin1", b"zlib_c")  # same length codec name swap
    with pytest.raises(DataError, match="refusing codec"):
        read_cifar_batch(io.BytesIO(evil))


@pytest.mark.parametrize(
    "payload, message",
    [
        ({b"labels": [1]}, "no 'data' entry"),
        ({b"data": np.zeros((2, 3072), np.uint8)}, "no 'labels' entry"),
        ({b"data": np.zeros((2, 100), np.uint8), b"labels": [1, 2]}, r"\(N, 3072\) uint8"),
        ({b"data": np.zeros((2, 3072), np.float32), b"labels": [1, 2]}, r"\(N, 3072\) uint8"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1]}, "expected 2 labels"),
        ({b"data": np.zeros((2, 3072), np.uint8), b"labels": [1, 12]}, "labels in 0..9"),
        ([1, 2, 3], "expected a dict"),
    ],
)
def test_malformed_batches(payload, message):
    with pytest.raises(DataError, match=message):
        read_cifar_batch(io.BytesIO(pickle.dumps(payload, protocol=2)))


def test_truncated_batch_file(tmp_path, batches):
    _write_folder(tmp_path / BATCH_FOLDER, batches)
    path = tmp_path / BATCH_FOLDER / "data_batch_3"
    path.write_bytes(path.read_bytes()[:5000])
    with pytest.raises(DataError, match="data_batch_3"):
        load_cifar10_arrays(tmp_path)


def test_truncated_archive(tmp_path, batches):
    archive = tmp_path / ARCHIVE
    _write_archive(archive, batches)
    archive.write_bytes(archive.read_bytes()[: archive.stat().st_size // 2])
    with pytest.raises(DataError, match=r"corrupted or truncated|not a readable"):
        load_cifar10_arrays(tmp_path)


@pytest.mark.parametrize("compressed", [False, True])
def test_oversized_archive_member_is_refused_before_reading(tmp_path, data_cache, monkeypatch, compressed):
    """A tiny archive whose header claims a 2 GiB batch: refused from the header, nothing is read."""
    info = tarfile.TarInfo(f"{BATCH_FOLDER}/data_batch_1")
    info.size = 2 * 1024**3
    raw = info.tobuf(format=tarfile.GNU_FORMAT) + b"\0" * 4096  # the 2 GiB of data are not there
    name = ARCHIVE if compressed else ARCHIVE.removesuffix(".gz")
    (tmp_path / name).write_bytes(gzip.compress(raw) if compressed else raw)
    reads = []
    real = tarfile.TarFile.extractfile
    monkeypatch.setattr(tarfile.TarFile, "extractfile", lambda self, m: reads.append(m) or real(self, m))
    with pytest.raises(DataError, match=r"2147483648 bytes, more than a CIFAR-10 batch"):
        load_cifar10_arrays(tmp_path)
    assert reads == []


def test_oversized_batch_file_is_refused_before_reading(tmp_path, data_cache, batches):
    _write_folder(tmp_path / BATCH_FOLDER, batches)
    big = tmp_path / BATCH_FOLDER / "data_batch_2"
    with big.open("r+b") as fh:  # sparse: no disk space or time spent
        fh.truncate(MAX_BATCH_BYTES + 1)
    with pytest.raises(DataError, match=r"data_batch_2.*more than a CIFAR-10 batch"):
        load_cifar10_arrays(tmp_path)


def test_archive_missing_a_batch(tmp_path, batches):
    partial = {k: v for k, v in batches.items() if k != TEST_BATCH}
    _write_archive(tmp_path / ARCHIVE, partial)
    with pytest.raises(DataError, match="lacks test_batch"):
        load_cifar10_arrays(tmp_path)


def test_nothing_found_explains_both_layouts(tmp_path, data_cache):
    with pytest.raises(DataError) as info:
        load_cifar10_arrays(tmp_path / "empty")
    message = str(info.value)
    assert ARCHIVE in message and BATCH_FOLDER in message and str(data_cache / "cifar10") in message


def test_catsdogs_task(tmp_path, data_cache, batches):
    _write_archive(tmp_path / ARCHIVE, batches)
    task = get_task("cifar10-catsdogs")
    data = task.load(tmp_path)
    _, y_train, x_test, y_test = _expected(batches)
    n_train = int(np.isin(y_train, [3, 5]).sum())
    assert len(data.train) + len(data.val) == n_train and len(data.val) == round(0.2 * n_train)
    assert len(data.test) == int(np.isin(y_test, [3, 5]).sum())
    assert data.class_names == ("dog", "cat") and data.input_shape == (3, 32, 32)
    # test split keeps file order: relabelled cats = 1, dogs = 0, pixels / 255
    keep = np.isin(y_test, [3, 5])
    np.testing.assert_array_equal(data.test.y.numpy(), (y_test[keep] == 3).astype(int))
    np.testing.assert_allclose(data.test.x.numpy(), x_test[keep] / 255.0, atol=1e-7)
    assert task.train["epochs"] == 150 and task.train["jacobian_reg"] == 0.0075
    assert task.model["feature_map"] == [{"kind": "shift"}, {"kind": "concat-abs"}]


def test_ten_class_cifar_task(tmp_path, data_cache, batches):
    _write_folder(tmp_path / BATCH_FOLDER, batches)
    task = get_task("cifar10")
    data = task.load(tmp_path)
    assert not task.binary and data.num_classes == 10 and data.class_names[3] == "cat"
    assert len(data.train) + len(data.val) == 5 * PER_BATCH and len(data.test) == PER_BATCH
    assert set(data.test.y.tolist()) <= set(range(10))


# ----- what a batch builds is bounded by the format, whatever counts it holds (26a F7) -----


def _global(module: str, name: str) -> bytes:
    return b"c" + module.encode() + b"\n" + name.encode() + b"\n"


def _measured(raw: bytes) -> tuple[str, int]:
    """(the DataError's message, peak bytes traced) of reading ``raw`` as a batch."""
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            read_cifar_batch(io.BytesIO(raw), "bomb")
        return str(info.value), tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()


def test_a_call_allocating_by_a_count_is_refused_before_it_allocates():
    """A 49-byte list(bytes(N)) built N·9 bytes (2.25 GB at N = 2.5·10⁸); here N = 4·10⁶ (36 MB before)."""
    count = 4_000_000
    raw = (
        b"\x80\x02"
        + _global("__builtin__", "list")
        + _global("__builtin__", "bytes")
        + b"J"
        + struct.pack("<i", count)
        + b"\x85R\x85R."
    )
    message, peak = _measured(raw)
    assert "refusing bytes(...) with arguments" in message and "\n" not in message
    assert peak < 2**20


def test_an_array_of_a_huge_shape_is_refused_before_it_allocates():
    shape = b"J" + struct.pack("<i", 2**31 - 1) + b"\x85"  # (2³¹ − 1,) of int64: 16 GB
    raw = (
        b"\x80\x02"
        + _global("numpy.core.multiarray", "_reconstruct")
        + _global("numpy", "ndarray")
        + shape
        + b"U\x02i8\x87R."
    )
    message, peak = _measured(raw)
    assert "more than a CIFAR-10 batch holds" in message and peak < 2**20


def _encode_many(text: str, times: int) -> bytes:
    """A protocol-2 pickle of [encode(text, "latin1")] * times, the text and codec name given once (memoised)."""
    first = (
        _global("_codecs", "encode")
        + b"q\x01X"
        + struct.pack("<I", len(text))
        + text.encode()
        + b"q\x02X\x06\x00\x00\x00latin1q\x03\x86R"
    )
    return b"\x80\x02](" + first + b"h\x01h\x02h\x03\x86R" * (times - 1) + b"e."


def test_repeated_calls_on_one_string_are_bounded_in_all(monkeypatch):
    """One memoised string encoded again and again built a copy per call (13 bytes of pickle each)."""
    monkeypatch.setattr(cifar, "MAX_BUILT_BYTES", 8 * 2**20)
    message, peak = _measured(_encode_many("x" * 2**20, 30))
    assert "more than a CIFAR-10 batch holds" in message and peak < 16 * 2**20
    message, _ = _measured(_encode_many("x" * 2**20, 7))  # within the bound: read, then refused as no batch
    assert "expected a dict" in message


def test_object_arrays_are_refused():
    payload = {b"data": np.array([[1, 2]], dtype=object), b"labels": [1]}
    message, _ = _measured(pickle.dumps(payload, protocol=2))
    assert "refusing dtype object" in message


def test_opcodes_are_counted_before_any_runs(monkeypatch):
    """1-byte opcodes each build an object (EMPTY_LIST + APPEND: 2 bytes for ~64): bounded by their count."""
    monkeypatch.setattr(cifar, "MAX_PICKLE_OPCODES", 1000)
    message, _ = _measured(b"\x80\x02]" + b"]a" * 600 + b".")
    assert "more than 1000 pickle opcodes" in message


def test_a_memo_index_no_pickler_writes_is_refused_before_any_opcode_runs():
    """9 bytes, PROTO 2, EMPTY_DICT, LONG_BINPUT 2²⁷, STOP: CPython's unpickler zero-filled a 2 GiB memo table
    (review 27a F3); refused from the opcodes. Real batches put memo entries 0, 1, … in order and still read."""
    for raw in (b"\x80\x02}r\x00\x00\x00\x08.", b"\x80\x02}q\x05.", b"(dp100000\n."):
        message, peak = _measured(raw)
        assert "a pickle memo index of" in message and "which no pickler writes" in message
        assert peak < 2**20
    payload = {b"data": np.zeros((2, 3072), dtype=np.uint8), b"labels": [1, 2], b"batch_label": b"x"}
    for protocol in (0, 2, 4):
        x, y = read_cifar_batch(io.BytesIO(pickle.dumps(payload, protocol=protocol)), "ok")
        assert x.shape == (2, 3, 32, 32) and y.tolist() == [1, 2]


def test_a_reason_without_a_message_is_named(monkeypatch):
    """Under a memory limit the reason was empty: "not a readable CIFAR-10 batch ()"."""

    def out_of_memory(self):
        raise MemoryError

    monkeypatch.setattr(cifar._SafeUnpickler, "load", out_of_memory)
    message, _ = _measured(pickle.dumps({b"labels": [1]}, protocol=2))
    assert message == "bomb: not a readable CIFAR-10 batch (MemoryError)"


@pytest.mark.parametrize("protocol", [2, 5, "py2"])
def test_a_full_size_batch_is_within_the_bounds(protocol):
    """10,000 images with long file names, as the official batches (py2) and Python 3's pickles write them."""
    x = np.zeros((10000, 3072), np.uint8)
    payload = {
        b"batch_label": b"training batch 1 of 5",
        b"labels": [i % 10 for i in range(10000)],
        b"data": x,
        b"filenames": [f"leptodactylus_pentadactylus_s_{i:06d}.png".encode() for i in range(10000)],
    }
    stream = io.BytesIO()
    if protocol == "py2":
        _Py2Pickler(stream, protocol=2).dump(payload)
    else:
        pickle.dump(payload, stream, protocol=protocol)
    images, labels = read_cifar_batch(io.BytesIO(stream.getvalue()))
    assert images.shape == (10000, 3, 32, 32) and type(images) is np.ndarray and labels[-1] == 9
