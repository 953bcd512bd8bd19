"""Accuracy of a run folder's model on its task's train, validation and test splits (threshold 0).

For any asymcert run folder, including models trained without a certificate (e.g. a distillation
teacher, ``asymcert train ... --model relu-ibp --set 'extra={"eps":0}'``):

    python benchmarks/split_accuracy.py RUN [RUN ...]

Prints one line per run: the share of inputs with (score > 0) == label on each split, in percent,
and the split sizes. The splits are the run's own (:func:`asymcert.pipeline.run_data`); the score is
the saved model's, b included, so for feature-convex runs the test figure is their clean accuracy.
"""

from __future__ import annotations

import argparse
import sys

import torch

import asymcert
from asymcert.data.tasks import Dataset
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_data

CHUNK = 1000  # inputs per forward pass


@torch.no_grad()
def split_accuracy(model: torch.nn.Module, split: Dataset) -> float:
    """Percent of ``split`` (x (N, ...), y (N,) in {0, 1}) with (model(x) > 0) == y, in chunks of CHUNK."""
    scores = torch.cat([model(split.x[i : i + CHUNK]).reshape(-1) for i in range(0, len(split), CHUNK)])
    return 100.0 * float(((scores > 0).long() == split.y).float().mean())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+", help="run folders")
    args = ap.parse_args()
    for run in args.runs:
        try:
            model = asymcert.load(run, device="cpu").eval()
            data = run_data(run)
        except AsymcertError as exc:
            sys.exit(f"{run}: {exc}")
        parts = [
            f"{name} {split_accuracy(model, getattr(data, name)):.2f}% ({len(getattr(data, name))})"
            for name in ("train", "val", "test")
        ]
        print(run + ": " + ", ".join(parts))


if __name__ == "__main__":
    main()
