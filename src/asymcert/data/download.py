"""Checksummed downloads into the data cache, and the lookup chain that ends in one.

Lookup order for a dataset's files (:func:`find_or_download`): the user's folder (``--data-dir``),
the cache (``sources.cache_dir()/<dataset>``), system folders (e.g. Debian's
``/usr/share/datasets/fashion-mnist``), then a download into the cache. Files found in a folder are
used as they are (a user's or Debian's copy may be recompressed); a download is always checked
against its SHA-256 before it is moved into place, and a cached file with the wrong checksum is
reported, never silently replaced. Set ``ASYMCERT_OFFLINE=1`` to never download.
"""

from __future__ import annotations

import hashlib
import http.client
import logging
import os
import tempfile
import urllib.request
from collections.abc import Callable, Sequence
from contextlib import AbstractContextManager, suppress
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO

from asymcert.data.sources import cache_dir, find_files
from asymcert.errors import DataError
from asymcert.files import sha256_regular

log = logging.getLogger(__name__)

Opener = Callable[[str], AbstractContextManager[BinaryIO]]
"""``opener(url)`` returns a context manager whose value has ``read(n) -> bytes`` (like ``urlopen``)."""

OFFLINE_ENV = "ASYMCERT_OFFLINE"
_CHUNK = 1 << 20


@dataclass(frozen=True)
class RemoteFile:
    """One published dataset file: its name, its SHA-256 and the URLs (mirrors) it is served from."""

    name: str
    sha256: str
    urls: tuple[str, ...]


def _remote(base_urls: Sequence[str], name: str, sha256: str) -> RemoteFile:
    return RemoteFile(name, sha256, tuple(base.rstrip("/") + "/" + name for base in base_urls))


# SHA-256 of the official MNIST files, as pinned by TensorFlow Datasets and many public projects
# (cross-checked in several independent repositories). torchvision publishes the MD5s:
# train-images f68b3c2dcbeaaa9fbdd348bbdeb94873, train-labels d53e105ee54ea40749a09fcbcd1e9432,
# t10k-images 9fb629c4189551a2d022fa330f9573f3, t10k-labels ec29112dd5afa0611ce80d1b7f02629c.
MNIST_MIRRORS = ("https://ossci-datasets.s3.amazonaws.com/mnist", "https://yann.lecun.com/exdb/mnist")
MNIST_REMOTE = tuple(
    _remote(MNIST_MIRRORS, name, sha)
    for name, sha in (
        ("train-images-idx3-ubyte.gz", "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609"),
        ("train-labels-idx1-ubyte.gz", "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c"),
        ("t10k-images-idx3-ubyte.gz", "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6"),
        ("t10k-labels-idx1-ubyte.gz", "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6"),
    )
)

# Fashion-MNIST (Zalando Research). Published MD5s: train-images 8d4fb7e6c68d591d4c3dfef9ec88bf0d,
# train-labels 25c81989df183df01b3e8a0aad5dffbe, t10k-images bef4ecab320f06d8554ea6380940ec79,
# t10k-labels bb300cfdad3c16e7a12a480ee83cd310; the SHA-256s below are those of the same files.
# (Debian's dataset-fashion-mnist package recompresses them, so its .gz files differ byte-wise;
# they are found as a system folder and never checksummed.)
FASHION_MIRRORS = (
    "https://fashion-mnist.s3.eu-central-1.amazonaws.com",
    "http://fashion-mnist.s3-website.eu-central-1.amazonaws.com",
)
FASHION_REMOTE = tuple(
    _remote(FASHION_MIRRORS, name, sha)
    for name, sha in (
        ("train-images-idx3-ubyte.gz", "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84"),
        ("train-labels-idx1-ubyte.gz", "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845"),
        ("t10k-images-idx3-ubyte.gz", "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073"),
        ("t10k-labels-idx1-ubyte.gz", "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5"),
    )
)

# CIFAR-10, python version (Krizhevsky). Published MD5 c58f30108f718f92721af3b95e74349a.
CIFAR10_REMOTE = (
    _remote(
        ("https://www.cs.toronto.edu/~kriz",),
        "cifar-10-python.tar.gz",
        "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce",
    ),
)


def sha256_file(path: Path) -> str:
    """Hex SHA-256 of the regular file at ``path`` (read in 1 MiB chunks; a FIFO or a device, e.g. a symlink to
    /dev/zero in a received run folder, is refused with an OSError, not read for ever: review s34 ckpt F5)."""
    return sha256_regular(path, _CHUNK)


def _urlopen(url: str) -> AbstractContextManager[BinaryIO]:
    request = urllib.request.Request(url, headers={"User-Agent": "asymcert"})
    return urllib.request.urlopen(request, timeout=60)


def download(url: str | Sequence[str], dest: str | Path, sha256: str, opener: Opener | None = None) -> Path:
    """Download ``url`` (or the first working mirror of a list) to ``dest``, verified by SHA-256.

    The bytes stream into a temporary file in ``dest``'s folder, are hashed on the way, and the file is
    moved into place with ``os.replace`` only when the checksum matches: ``dest`` never holds a partial
    or wrong file. A ``dest`` already present with the right checksum is returned without downloading.

    Args:
        url: one URL or several mirrors, tried in order (``file://`` URLs work too).
        dest: final path of the file.
        sha256: expected hex digest.
        opener: replaces ``urllib.request.urlopen`` (tests).
    Returns:
        ``dest`` as a Path.
    Raises:
        DataError: ``dest`` exists with another checksum (it is left alone), or no mirror delivered
            the file with the right checksum (the message gives each mirror's failure).
    """
    dest, sha256 = Path(dest), sha256.lower()
    if dest.exists():
        actual = sha256_file(dest)
        if actual != sha256:
            raise DataError(
                f"{dest} exists but its SHA-256 is {actual}, not the published {sha256}: it is corrupted "
                f"or a different file. Delete it to download it again, or replace it with the official file."
            )
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    failures = []
    for candidate in [url] if isinstance(url, str) else list(url):
        try:
            _fetch_verified(candidate, dest, sha256, opener or _urlopen)
            return dest
        except DataError as exc:
            failures.append(f"{candidate}: {exc}")
    raise DataError(f"could not download {dest.name}:\n  " + "\n  ".join(failures or ["no URL given"]))


def _fetch_verified(url: str, dest: Path, sha256: str, opener: Opener) -> None:
    """Stream ``url`` into a temporary file next to ``dest``; ``os.replace`` it there if the hash matches."""
    log.info("downloading %s to %s", url, dest)
    fd, tmp = tempfile.mkstemp(prefix=f".{dest.name}.asymcert-", suffix=".part", dir=dest.parent)
    try:
        digest = hashlib.sha256()
        with os.fdopen(fd, "wb") as out:
            try:
                with opener(url) as response:
                    while chunk := response.read(_CHUNK):
                        digest.update(chunk)
                        out.write(chunk)
            except (OSError, http.client.HTTPException, ValueError) as exc:  # URLError, timeouts, bad URL
                raise DataError(f"download failed ({exc})") from exc
        if digest.hexdigest() != sha256:
            raise DataError(f"downloaded data has SHA-256 {digest.hexdigest()}, expected {sha256}")
        os.chmod(tmp, 0o644)
        os.replace(tmp, dest)
    finally:
        with suppress(FileNotFoundError):
            os.unlink(tmp)


def downloads_allowed() -> bool:
    """False when ``ASYMCERT_OFFLINE`` is set to anything but ``""``/``0``."""
    return os.environ.get(OFFLINE_ENV, "").strip() in ("", "0")


def find_or_download(
    dataset: str,
    files: Sequence[RemoteFile],
    data_dir: Path | None,
    system_dirs: Sequence[Path] = (),
    opener: Opener | None = None,
    hint: str = "",
) -> dict[str, Path]:
    """Find ``files`` in the user folder, the cache or ``system_dirs``; else download them into the cache.

    Args:
        dataset: cache subfolder name, e.g. ``"mnist"``.
        files: the published files.
        data_dir: the user's folder (``--data-dir``) or None.
        system_dirs: read-only folders searched after the cache.
        opener: replaces ``urlopen`` (tests).
        hint: extra sentence for the error message (e.g. other accepted layouts).
    Returns:
        ``{file name: path}`` for every file.
    Raises:
        DataError: not found and not downloadable; one message listing the folders searched, the
            file names to place there, and why the download failed.
    """
    names = [f.name for f in files]
    try:
        return find_files(dataset, names, data_dir, list(system_dirs))
    except DataError as missing:
        message = str(missing) + (f"\n{hint}" if hint else "")
        if not downloads_allowed():
            raise DataError(f"{message}\nDownloading is disabled ({OFFLINE_ENV} is set).") from None
        target = cache_dir() / dataset
        try:
            return {f.name: download(f.urls, target / f.name, f.sha256, opener) for f in files}
        except DataError as failed:
            raise DataError(f"{message}\nDownloading them into {target} failed too: {failed}") from None
