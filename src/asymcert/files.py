"""Reading the small files of a run folder that may come from someone else: regular files only, within a size.

A folder received from a colleague or downloaded can hold a FIFO (opening it for reading waits for a writer for
ever), a device (``/dev/zero`` never ends) or a huge file where a few kilobytes of JSON belong (review s34 ckpt
F1, F5, F6). :func:`read_regular` opens without blocking, checks what it opened, and reads at most ``limit`` bytes.
"""

from __future__ import annotations

import errno
import hashlib
import os
import stat
from pathlib import Path

SMALL_FILE_LIMIT = 64 * 2**20
"""Bytes read at most of a run folder's JSON files (run.json, certify.json, a results record, a threat model)."""


def _open_regular(path: Path) -> int:
    """A file descriptor of the regular file at ``path`` (symlinks followed), opened without waiting on a FIFO.

    Raises:
        OSError: no such file, unreadable, or not a regular file (EINVAL, naming what it is).
    """
    fd = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0))
    mode = os.fstat(fd).st_mode
    if not stat.S_ISREG(mode):
        os.close(fd)
        kind = "a FIFO" if stat.S_ISFIFO(mode) else "a device" if stat.S_ISCHR(mode) or stat.S_ISBLK(mode) else None
        raise OSError(errno.EINVAL, f"not a regular file ({kind or 'a folder or socket'})", str(path))
    return fd


def read_regular(path: str | Path, limit: int = SMALL_FILE_LIMIT) -> bytes:
    """The bytes of the regular file at ``path``, at most ``limit`` of them.

    Raises:
        OSError: see :func:`_open_regular`; or the file is larger than ``limit`` bytes (EFBIG).
    """
    with os.fdopen(_open_regular(Path(path)), "rb") as f:
        data = f.read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"larger than {limit} bytes, more than such a file ever holds", str(path))
    return data


def read_regular_text(path: str | Path, limit: int = SMALL_FILE_LIMIT) -> str:
    """:func:`read_regular` decoded as UTF-8 (raises UnicodeDecodeError when it is not)."""
    return read_regular(path, limit).decode("utf-8")


def sha256_regular(path: str | Path, chunk: int = 2**20) -> str:
    """Hex SHA-256 of the regular file at ``path``, read ``chunk`` bytes at a time (a FIFO or a device is refused,
    OSError, not read for ever)."""
    digest = hashlib.sha256()
    with os.fdopen(_open_regular(Path(path)), "rb") as f:
        while block := f.read(chunk):
            digest.update(block)
    return digest.hexdigest()
