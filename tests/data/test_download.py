"""Checksummed downloads (file:// URLs and fake openers; never the network) and the lookup chain."""

from __future__ import annotations

import hashlib
import io
import re
from contextlib import contextmanager

import numpy as np
import pytest

from asymcert.data import download as dl
from asymcert.data.download import RemoteFile, download, find_or_download, sha256_file
from asymcert.data.idx import write_idx
from asymcert.errors import DataError

PAYLOAD = bytes(range(256)) * 5000  # 1.28 MB: more than one read chunk
PAYLOAD_SHA = hashlib.sha256(PAYLOAD).hexdigest()


@pytest.fixture(autouse=True)
def online(monkeypatch):
    """Lift the suite-wide offline switch: every download here comes from a local file or fake opener."""
    monkeypatch.delenv("ASYMCERT_OFFLINE", raising=False)


@pytest.fixture
def source(tmp_path):
    path = tmp_path / "remote" / "file.bin"
    path.parent.mkdir()
    path.write_bytes(PAYLOAD)
    return path


class CountingOpener:
    """Serves bytes from a dict of URLs; counts calls; can fail after the first chunk."""

    def __init__(self, files: dict[str, bytes], fail_midway: bool = False):
        self.files, self.fail_midway, self.calls = files, fail_midway, []

    @contextmanager
    def __call__(self, url):
        self.calls.append(url)
        if url not in self.files:
            raise OSError(f"connection refused for {url}")
        stream = io.BytesIO(self.files[url])
        if self.fail_midway:
            first = stream.read(1000)

            class Broken:
                def __init__(self):
                    self.sent = False

                def read(self, n):
                    if not self.sent:
                        self.sent = True
                        return first
                    raise TimeoutError("connection reset")

            yield Broken()
        else:
            yield stream


def _leftovers(folder):
    return sorted(p.name for p in folder.iterdir() if p.name.endswith(".part") or p.name.startswith("."))


def test_download_file_url_verifies_and_places_file(tmp_path, source):
    dest = tmp_path / "cache" / "sub" / "file.bin"
    assert download(source.as_uri(), dest, PAYLOAD_SHA) == dest
    assert dest.read_bytes() == PAYLOAD
    assert sha256_file(dest) == PAYLOAD_SHA
    assert _leftovers(dest.parent) == []


def test_present_file_with_right_checksum_is_not_downloaded_again(tmp_path):
    dest = tmp_path / "file.bin"
    dest.write_bytes(PAYLOAD)
    opener = CountingOpener({})
    download("https://example.invalid/file.bin", dest, PAYLOAD_SHA, opener=opener)
    assert opener.calls == []


def test_present_file_with_wrong_checksum_raises_and_is_kept(tmp_path, source):
    dest = tmp_path / "file.bin"
    dest.write_bytes(b"something else")
    with pytest.raises(DataError, match=r"SHA-256.*Delete it"):
        download(source.as_uri(), dest, PAYLOAD_SHA)
    assert dest.read_bytes() == b"something else"


def test_checksum_mismatch_leaves_no_file(tmp_path, source):
    dest = tmp_path / "out" / "file.bin"
    with pytest.raises(DataError, match="expected " + "0" * 64):
        download(source.as_uri(), dest, "0" * 64)
    assert not dest.exists()
    assert _leftovers(dest.parent) == []


def test_failure_midway_leaves_no_partial_file(tmp_path):
    dest = tmp_path / "file.bin"
    opener = CountingOpener({"https://a/file.bin": PAYLOAD}, fail_midway=True)
    with pytest.raises(DataError, match="connection reset"):
        download("https://a/file.bin", dest, PAYLOAD_SHA, opener=opener)
    assert not dest.exists() and _leftovers(tmp_path) == []


def test_mirrors_are_tried_in_order(tmp_path):
    opener = CountingOpener({"https://b/file.bin": PAYLOAD})
    dest = download(["https://a/file.bin", "https://b/file.bin"], tmp_path / "file.bin", PAYLOAD_SHA, opener=opener)
    assert opener.calls == ["https://a/file.bin", "https://b/file.bin"]
    assert dest.read_bytes() == PAYLOAD


def test_all_mirrors_failing_names_each(tmp_path):
    with pytest.raises(DataError) as info:
        download(
            ["https://a/x", (tmp_path / "missing").as_uri()], tmp_path / "x", PAYLOAD_SHA, opener=CountingOpener({})
        )
    assert "https://a/x" in str(info.value) and "missing" in str(info.value)


def test_missing_file_url_is_a_data_error(tmp_path):
    with pytest.raises(DataError, match="download failed"):
        download((tmp_path / "nothing.bin").as_uri(), tmp_path / "x.bin", PAYLOAD_SHA)


def test_published_checksums_are_well_formed():
    remotes = [*dl.MNIST_REMOTE, *dl.FASHION_REMOTE, *dl.CIFAR10_REMOTE]
    assert len(remotes) == 9
    for remote in remotes:
        assert re.fullmatch(r"[0-9a-f]{64}", remote.sha256), remote
        assert remote.urls and all(u.endswith("/" + remote.name) for u in remote.urls)
    assert dl.CIFAR10_REMOTE[0].urls[0].startswith("https://www.cs.toronto.edu/")
    assert dl.MNIST_REMOTE[0].urls[0].startswith("https://ossci-datasets.s3.amazonaws.com/mnist/")


# ------------------------------------------------------------------ lookup chain


def _remote_files(tmp_path, names):
    """Real files served from file:// URLs, with their true checksums."""
    folder = tmp_path / "server"
    folder.mkdir(exist_ok=True)
    remotes = []
    for i, name in enumerate(names):
        (folder / name).write_bytes(PAYLOAD[: 1000 + i])
        remotes.append(RemoteFile(name, sha256_file(folder / name), ((folder / name).as_uri(),)))
    return remotes


def test_lookup_prefers_user_folder_then_cache_then_downloads(tmp_path, data_cache):
    remotes = _remote_files(tmp_path, ["a.gz", "b.gz"])
    user = tmp_path / "user"
    user.mkdir()
    for name in ("a", "b.gz"):  # an unpacked copy counts too
        (user / name).write_bytes(b"user copy")
    found = find_or_download("toy", remotes, user)
    assert found == {"a.gz": user / "a", "b.gz": user / "b.gz"}

    downloaded = find_or_download("toy", remotes, None)
    assert downloaded == {"a.gz": data_cache / "toy" / "a.gz", "b.gz": data_cache / "toy" / "b.gz"}
    assert (data_cache / "toy" / "a.gz").read_bytes() == PAYLOAD[:1000]
    # now found in the cache without any download
    opener_never_called = CountingOpener({})
    assert find_or_download("toy", remotes, None, opener=opener_never_called) == downloaded
    assert opener_never_called.calls == []


def test_network_failure_gives_one_clear_error(tmp_path, data_cache):
    remotes = [RemoteFile("train.gz", "0" * 64, ("https://unreachable.invalid/train.gz",))]
    with pytest.raises(DataError) as info:
        find_or_download("toy", remotes, tmp_path / "mine", opener=CountingOpener({}))
    message = str(info.value)
    assert "train.gz" in message and str(tmp_path / "mine") in message and str(data_cache / "toy") in message
    assert "connection refused" in message and "failed too" in message


def test_offline_switch_disables_downloads(tmp_path, data_cache, monkeypatch):
    monkeypatch.setenv("ASYMCERT_OFFLINE", "1")
    opener = CountingOpener({})
    with pytest.raises(DataError, match="Downloading is disabled"):
        find_or_download("toy", _remote_files(tmp_path, ["a.gz"]), None, opener=opener)
    assert opener.calls == []


def test_corrupted_cached_file_is_reported_not_replaced(tmp_path, data_cache):
    remotes = _remote_files(tmp_path, ["a.gz", "b.gz"])
    (data_cache / "toy").mkdir()
    (data_cache / "toy" / "b.gz").write_bytes(b"half a file")
    with pytest.raises(DataError, match=r"b.gz exists but its SHA-256"):
        find_or_download("toy", remotes, None)
    assert (data_cache / "toy" / "b.gz").read_bytes() == b"half a file"


def test_mnist_task_downloads_into_cache(tmp_path, data_cache, monkeypatch):
    """The whole chain for a built-in task: nothing local → download (file:// URLs) → load mnist-38."""
    from asymcert.data import builtin
    from asymcert.data.tasks import get_task

    rng = np.random.default_rng(1)
    server = tmp_path / "server"
    server.mkdir()
    for prefix, n in (("train", 60), ("t10k", 20)):
        write_idx(server / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28), dtype=np.uint8))
        write_idx(server / f"{prefix}-labels-idx1-ubyte.gz", np.tile(np.array([3, 8, 1], np.uint8), n // 3 + 1)[:n])
    remotes = tuple(
        RemoteFile(r.name, sha256_file(server / r.name), ((server / r.name).as_uri(),)) for r in dl.MNIST_REMOTE
    )
    monkeypatch.setattr(builtin, "MNIST_REMOTE", remotes)
    data = get_task("mnist-38").load(None)
    assert sorted(p.name for p in (data_cache / "mnist").iterdir()) == sorted(r.name for r in remotes)
    assert len(data.train) + len(data.val) == 40 and len(data.test) == 14
