"""How far two versions of the code certify apart: decisions, reported scores and radii of one run's model.

    PYTHONPATH=OLD/src python benchmarks/certificates_diff.py save RUN old.safetensors   # OLD: a worktree of a commit
    python benchmarks/certificates_diff.py save RUN new.safetensors
    python benchmarks/certificates_diff.py diff old.safetensors new.safetensors

``save`` certifies the run's test split and 4,000 random inputs of its input shape (seed 0, in [0, 1)) with
``asymcert.certify(model, x, norms=(1, 2, inf))`` on one thread and writes decisions, scores and radii
(safetensors, no pickle). ``diff`` prints, per input set, whether decisions and scores are bitwise equal and the
largest relative difference of the radii per norm.
"""

from __future__ import annotations

import argparse
import math

import torch
from safetensors.torch import load_file, save_file

import asymcert
from asymcert.pipeline import run_data

NORMS = (1.0, 2.0, math.inf)


def save(run: str, out: str) -> None:
    """Certify the run's test inputs and 4,000 random ones; write their certificates to ``out``."""
    torch.set_num_threads(1)
    model = asymcert.load(run)
    test = run_data(run).test.x
    random = torch.rand(4000, *test.shape[1:], generator=torch.Generator().manual_seed(0))
    tensors = {}
    for name, x in (("test", test), ("random", random)):
        cert = asymcert.certify(model, x, norms=NORMS)
        tensors[f"{name}.predicted"] = cert.predicted.contiguous()
        tensors[f"{name}.score"] = cert.extra["score"].contiguous()
        for p in NORMS:
            tensors[f"{name}.radius_{p:g}"] = cert.radii[p].contiguous()
    save_file(tensors, out)


def diff(old: str, new: str) -> None:
    """Print how the certificates in ``new`` differ from those in ``old``."""
    a, b = load_file(old), load_file(new)
    for name in ("test", "random"):
        same = {k: torch.equal(a[f"{name}.{k}"], b[f"{name}.{k}"]) for k in ("predicted", "score")}
        rel = []
        for p in NORMS:
            ra, rb = a[f"{name}.radius_{p:g}"], b[f"{name}.radius_{p:g}"]
            finite = torch.isfinite(ra) & (ra > 0)
            same_inf = torch.equal(torch.isinf(ra), torch.isinf(rb)) and torch.equal(ra == 0, rb == 0)
            worst = float(((ra - rb).abs() / ra.abs())[finite].max()) if bool(finite.any()) else 0.0
            rel.append(f"l{p:g} {worst:.2g}{'' if same_inf else ' (zeros or infinities differ)'}")
        flagged = int(a[f"{name}.predicted"].sum())
        print(
            f"{name}: {flagged} flagged; decisions equal {same['predicted']}, scores equal {same['score']}; "
            f"largest relative radius difference: {', '.join(rel)}"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = parser.add_subparsers(dest="mode", required=True)
    s = sub.add_parser("save")
    s.add_argument("run")
    s.add_argument("out")
    d = sub.add_parser("diff")
    d.add_argument("old")
    d.add_argument("new")
    args = parser.parse_args()
    if args.mode == "save":
        save(args.run, args.out)
    else:
        diff(args.old, args.new)


if __name__ == "__main__":
    main()
