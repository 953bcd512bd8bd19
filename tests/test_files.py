"""Reading a run folder's small files: regular files only, within a size (review s34 ckpt F1, F5, F6)."""

from __future__ import annotations

import errno
import hashlib
import os
import threading

import pytest

from asymcert.files import read_regular, read_regular_text, sha256_regular


def test_regular_files_are_read_and_hashed(tmp_path):
    (tmp_path / "a.json").write_text('{"é": 1}', encoding="utf-8")
    assert read_regular_text(tmp_path / "a.json") == '{"é": 1}'
    (tmp_path / "link").symlink_to(tmp_path / "a.json")  # a symlink to a regular file is read through
    assert read_regular(tmp_path / "link") == '{"é": 1}'.encode()
    data = os.urandom(3 * 2**20 + 5)
    (tmp_path / "big").write_bytes(data)
    assert sha256_regular(tmp_path / "big") == hashlib.sha256(data).hexdigest()


def test_a_file_larger_than_the_limit_is_refused_after_reading_the_limit(tmp_path):
    (tmp_path / "a").write_bytes(b"x" * 101)
    assert read_regular(tmp_path / "a", limit=101) == b"x" * 101
    with pytest.raises(OSError, match="larger than 100 bytes") as err:
        read_regular(tmp_path / "a", limit=100)
    assert err.value.errno == errno.EFBIG


@pytest.mark.parametrize("reader", [read_regular, sha256_regular])
def test_a_fifo_or_a_device_is_refused_at_once(tmp_path, reader):
    """A FIFO waited for a writer for ever; /dev/zero (through a symlink) filled memory or never ended."""
    os.mkfifo(tmp_path / "fifo")
    (tmp_path / "zero").symlink_to("/dev/zero")
    outcome = {}

    def read(name):
        try:
            reader(tmp_path / name)
        except OSError as exc:
            outcome[name] = str(exc)

    for name, kind in (("fifo", "a FIFO"), ("zero", "a device")):
        worker = threading.Thread(target=read, args=(name,), daemon=True)
        worker.start()
        worker.join(timeout=10)
        assert not worker.is_alive(), f"{name}: still reading after 10 s"
        assert f"not a regular file ({kind})" in outcome[name] and name in outcome[name]
    with pytest.raises(OSError, match="not a regular file"):
        reader(tmp_path)
