"""Loading the full Fashion-MNIST (70,000 images) from Debian's gzipped IDX files, against numpy's own
read of the same bytes, in one run.

asymcert: ``load_fashion_mnist(None)`` (find the files, the checked IDX reader, the image/label pair
checks, uint8 → float32 in [0, 1]). Reference: ``gzip.decompress`` + ``np.frombuffer`` of the same four
files and the same float32 conversion, with no checks. Both give identical tensors (checked here), so
the ratio is what the reader's checks and plumbing cost. This replaces the timed unit test
(``elapsed < 10.0`` in tests/data/test_idx.py): a speed target is a ratio measured in one run.

    ASYMCERT_OFFLINE=1 python benchmarks/bench_data_load.py [--repeats 5] [--target 1.5]

Writes benchmarks/results/data_load.json; exits 1 when the ratio misses the target.
"""

from __future__ import annotations

import argparse
import gzip
import os
import sys
import tempfile
from pathlib import Path

import numpy as np
import torch
from common import best_of, machine, write_results  # benchmarks/common.py

from asymcert.data.builtin import DEBIAN_FASHION, load_fashion_mnist

FILES = {
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz"),
}


def numpy_read(folder: Path) -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The reference: {split: (x (N, 1, 28, 28) float32 in [0, 1], y (N,) int64)} by plain numpy, no checks."""
    out = {}
    for split, (images, labels) in FILES.items():
        pixels = np.frombuffer(gzip.decompress((folder / images).read_bytes()), dtype=np.uint8, offset=16)
        y = np.frombuffer(gzip.decompress((folder / labels).read_bytes()), dtype=np.uint8, offset=8)
        x = pixels.reshape(len(y), 1, 28, 28).astype(np.float32) / np.float32(255.0)
        out[split] = torch.from_numpy(x), torch.from_numpy(y.astype(np.int64))
    return out


def asymcert_read() -> dict[str, tuple[torch.Tensor, torch.Tensor]]:
    """The library's full Fashion-MNIST load, in the reference's layout."""
    train, test = load_fashion_mnist(None)
    return {"train": (train.x, train.y), "test": (test.x, test.y)}


def main() -> int:
    ap = argparse.ArgumentParser()
    ap.add_argument("--repeats", type=int, default=5, help="timed calls of each (best is kept), after one warm-up")
    ap.add_argument("--target", type=float, default=1.5, help="largest accepted asymcert / numpy time ratio")
    args = ap.parse_args()
    folder = Path(DEBIAN_FASHION)
    if not (folder / FILES["train"][0]).is_file():
        print(f"{folder}: Debian's dataset-fashion-mnist is not installed", file=sys.stderr)
        return 2
    os.environ["ASYMCERT_OFFLINE"] = "1"
    os.environ["ASYMCERT_DATA"] = tempfile.mkdtemp(prefix="asymcert-bench-data-")  # no user cache in the way
    ours, ref = asymcert_read(), numpy_read(folder)
    for split in FILES:  # the same work: identical tensors
        assert torch.equal(ours[split][0], ref[split][0]) and torch.equal(ours[split][1], ref[split][1]), split
    t_ours = best_of(asymcert_read, args.repeats)
    t_ref = best_of(lambda: numpy_read(folder), args.repeats)
    ratio = t_ours / t_ref
    results = {
        "machine": machine(),
        "images": sum(len(v[1]) for v in ref.values()),
        "repeats": args.repeats,
        "asymcert_seconds": round(t_ours, 4),
        "numpy_seconds": round(t_ref, 4),
        "ratio_asymcert_over_numpy": round(ratio, 3),
        "target_ratio": args.target,
        "meets_target": ratio <= args.target,
    }
    print(f"asymcert {t_ours:.3f} s, numpy {t_ref:.3f} s: {ratio:.2f}× (target ≤ {args.target}×)")
    write_results("data_load", results)
    return 0 if ratio <= args.target else 1


if __name__ == "__main__":
    sys.exit(main())
