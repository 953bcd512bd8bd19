"""Where dataset files are found: a user folder, the cache (``ASYMCERT_DATA``), a Debian package."""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path

from asymcert.errors import DataError


def cache_dir() -> Path:
    """The data cache: ``$ASYMCERT_DATA`` or ``$XDG_CACHE_HOME/asymcert`` (``~/.cache/asymcert``)."""
    env = os.environ.get("ASYMCERT_DATA")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "asymcert"


def candidate_dirs(dataset: str, data_dir: Path | None, system_dirs: Sequence[Path] = ()) -> list[Path]:
    """The folders searched for ``dataset``, in order: ``data_dir``, ``cache_dir()/dataset``, ``system_dirs``."""
    user = [Path(data_dir).expanduser()] if data_dir else []
    return user + [cache_dir() / dataset] + [Path(d) for d in system_dirs]


def find_files(
    dataset: str, names: list[str], data_dir: Path | None, system_dirs: Sequence[Path] = ()
) -> dict[str, Path]:
    """Find every file of ``names`` in one folder, searched in order: ``data_dir``, the cache, system folders.

    Each name may also be found without its ``.gz`` suffix (an unpacked copy).

    Raises:
        DataError: no folder holds them all; the message says where to put which files.
    """
    candidates = candidate_dirs(dataset, data_dir, system_dirs)
    for folder in candidates:
        found = {}
        for name in names:
            for variant in (name, name.removesuffix(".gz")):
                if (folder / variant).is_file():
                    found[name] = folder / variant
                    break
        if len(found) == len(names):
            return found
    where = "\n  ".join(str(c) for c in candidates)
    raise DataError(
        f"{dataset}: could not find {', '.join(names)}.\nLooked in:\n  {where}\n"
        f"Put the files in one of these folders (or pass --data-dir), or set ASYMCERT_DATA."
    )
