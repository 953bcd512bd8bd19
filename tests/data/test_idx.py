"""IDX reader: exact headers, gzip and plain files, every dtype, and damaged files."""

from __future__ import annotations

import gzip

import numpy as np
import pytest
import torch

from asymcert.data.idx import read_idx, write_idx
from asymcert.errors import DataError


def _idx_bytes(code: int, shape: tuple[int, ...], payload: bytes) -> bytes:
    return bytes([0, 0, code, len(shape)]) + b"".join(d.to_bytes(4, "big") for d in shape) + payload


def test_reads_hand_made_header_plain_and_gz(tmp_path):
    pixels = bytes(range(24))
    raw = _idx_bytes(0x08, (2, 3, 4), pixels)
    (tmp_path / "a-idx3-ubyte").write_bytes(raw)
    (tmp_path / "a-idx3-ubyte.gz").write_bytes(gzip.compress(raw))
    for name in ("a-idx3-ubyte", "a-idx3-ubyte.gz"):
        x = read_idx(tmp_path / name)
        assert x.shape == (2, 3, 4) and x.dtype == np.uint8
        assert x.flags.writeable
        np.testing.assert_array_equal(x.ravel(), np.arange(24))


def test_gzip_detected_by_content_not_suffix(tmp_path):
    raw = _idx_bytes(0x08, (5,), bytes([9, 8, 7, 6, 5]))
    (tmp_path / "labels-idx1-ubyte").write_bytes(gzip.compress(raw))  # gzipped, no .gz suffix
    np.testing.assert_array_equal(read_idx(tmp_path / "labels-idx1-ubyte"), [9, 8, 7, 6, 5])


def test_big_endian_int32_values(tmp_path):
    values = b"".join(v.to_bytes(4, "big", signed=True) for v in (1, -2, 70000))
    raw = _idx_bytes(0x0C, (3,), values)
    (tmp_path / "ints.idx").write_bytes(raw)
    x = read_idx(tmp_path / "ints.idx")
    assert x.dtype == np.int32 and x.dtype.isnative
    np.testing.assert_array_equal(x, [1, -2, 70000])


@pytest.mark.parametrize("dtype", [np.uint8, np.int8, np.int16, np.int32, np.float32, np.float64])
@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_write_read_roundtrip(tmp_path, dtype, suffix):
    array = (np.arange(60).reshape(3, 4, 5) - 7).astype(dtype)
    write_idx(tmp_path / f"x.idx{suffix}", array)
    back = read_idx(tmp_path / f"x.idx{suffix}")
    assert back.dtype == np.dtype(dtype) and back.shape == array.shape
    np.testing.assert_array_equal(back, array)


def test_write_rejects_unsupported_dtype(tmp_path):
    with pytest.raises(DataError, match="int64"):
        write_idx(tmp_path / "x.idx", np.zeros(3, dtype=np.int64))


@pytest.mark.parametrize("suffix", ["", ".gz"])
def test_truncated_data_is_reported(tmp_path, suffix):
    raw = _idx_bytes(0x08, (10, 28, 28), bytes(10 * 28 * 28))[:-100]
    path = tmp_path / f"t.idx{suffix}"
    path.write_bytes(gzip.compress(raw) if suffix else raw)
    with pytest.raises(DataError, match=r"declares shape \(10, 28, 28\)"):
        read_idx(path)


def test_trailing_bytes_are_reported(tmp_path):
    (tmp_path / "t.idx").write_bytes(_idx_bytes(0x08, (4,), bytes(4)) + b"junk")
    with pytest.raises(DataError, match="declares shape"):
        read_idx(tmp_path / "t.idx")


@pytest.mark.parametrize(
    "content, message",
    [
        (b"", "not an IDX file"),
        (b"PK\x03\x04 not idx", "not an IDX file"),
        (bytes([0, 0, 0x42, 1, 0, 0, 0, 1, 7]), "not an IDX file"),  # unknown dtype code
        (bytes([0, 0, 0x08, 3, 0, 0]), "truncated IDX header"),
    ],
)
def test_bad_headers(tmp_path, content, message):
    (tmp_path / "bad.idx").write_bytes(content)
    with pytest.raises(DataError, match=message):
        read_idx(tmp_path / "bad.idx")


def test_truncated_gzip_stream(tmp_path):
    rng = np.random.default_rng(0)
    compressed = gzip.compress(_idx_bytes(0x08, (50, 28, 28), rng.integers(0, 255, 50 * 784, dtype=np.uint8).tobytes()))
    (tmp_path / "cut.gz").write_bytes(compressed[: len(compressed) // 2])
    with pytest.raises(DataError, match="corrupted or truncated"):
        read_idx(tmp_path / "cut.gz")


def test_corrupted_gzip_stream(tmp_path):
    rng = np.random.default_rng(0)
    pixels = rng.integers(0, 255, 50 * 784, dtype=np.uint8).tobytes()
    compressed = bytearray(gzip.compress(_idx_bytes(0x08, (50, 28, 28), pixels)))
    compressed[200:260] = bytes(60)  # garbage in the middle of the deflate stream
    (tmp_path / "bad.gz").write_bytes(bytes(compressed))
    with pytest.raises(DataError):
        read_idx(tmp_path / "bad.gz")


def test_missing_file(tmp_path):
    with pytest.raises(DataError, match="not found"):
        read_idx(tmp_path / "nope.gz")


@pytest.mark.skipif(
    not __import__("pathlib").Path("/usr/share/datasets/fashion-mnist").is_dir(),
    reason="Debian's dataset-fashion-mnist is not installed",
)
def test_full_fashion_mnist_idx_load_equals_the_raw_bytes(data_cache):
    """The full load is the files' bytes / 255 (its speed: benchmarks/bench_data_load.py)."""
    from asymcert.data.builtin import DEBIAN_FASHION, load_fashion_mnist

    train, test = load_fashion_mnist(None)
    assert train.x.shape == (60000, 1, 28, 28) and test.x.shape == (10000, 1, 28, 28)
    assert train.x.dtype == torch.float32 and train.y.dtype == torch.int64
    for split, prefix in ((train, "train"), (test, "t10k")):
        pixels = np.frombuffer(
            gzip.decompress((DEBIAN_FASHION / f"{prefix}-images-idx3-ubyte.gz").read_bytes()), dtype=np.uint8, offset=16
        )
        labels = np.frombuffer(
            gzip.decompress((DEBIAN_FASHION / f"{prefix}-labels-idx1-ubyte.gz").read_bytes()), dtype=np.uint8, offset=8
        )
        np.testing.assert_array_equal(split.y.numpy(), labels)
        expected = pixels.reshape(split.x.shape).astype(np.float32) / np.float32(255.0)
        assert torch.equal(split.x, torch.from_numpy(expected)), prefix
    assert sorted(np.bincount(train.y.numpy())) == [6000] * 10
