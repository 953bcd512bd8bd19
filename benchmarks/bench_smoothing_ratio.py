"""Per-input certification time: the feature-convex certificate vs randomized smoothing, one process.

Smoothing (Gaussian, n0 = 100 selection + n = 10,000 estimation samples, Clopper–Pearson at
α = 0.001) runs on two base classifiers of `asymcert compare`: its CPU default (an MLP 256-256) and
its paper-scale base (a small CNN, 16-32 channels + FC 100; the paper used a ResNet-18, larger
still). Certification time does not depend on the weights, so the bases are randomly initialised;
the feature-convex model is the trained default run when --run is given.

    python benchmarks/bench_smoothing_ratio.py [--run runs/fashion-default] [--n-smooth 20] [--threads T]

Writes benchmarks/results/smoothing_ratio.json.
"""

from __future__ import annotations

import argparse
import math

import torch
from common import best_of, machine, write_results  # benchmarks/common.py

import asymcert
from asymcert.families.contract import SMALL_CNN
from asymcert.families.smoothing import SMOOTHING_MLP
from asymcert.models import build_model

CONVEX = {
    "kind": "feature-convex",
    "input_shape": [1, 28, 28],
    "input_range": [0.0, 1.0],
    "feature_map": [{"kind": "shift"}],
    "convex": {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2},
}
NORMS = (1.0, 2.0, math.inf)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="run folder of a trained feature-convex model (default: the paper architecture)")
    ap.add_argument("--n-convex", type=int, default=2000, help="inputs certified by the feature-convex model")
    ap.add_argument("--n-smooth", type=int, default=20, help="inputs certified by smoothing")
    ap.add_argument("--n", type=int, default=10_000, help="smoothing estimation samples")
    ap.add_argument("--threads", type=int)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(max(args.n_convex, args.n_smooth), 1, 28, 28)
    convex = asymcert.load(args.run) if args.run else build_model(CONVEX).eval()
    t_convex = best_of(lambda: asymcert.certify(convex, x[: args.n_convex], norms=NORMS), 3) / args.n_convex
    out = {
        "machine": machine(),
        "n_smoothing": args.n,
        "n0": 100,
        "alpha": 0.001,
        "feature_convex_s_per_input": t_convex,
        "smoothing": {},
    }
    print(f"feature-convex: {1e3 * t_convex:.4f} ms per input")
    for name, arch in (
        ("mlp 256-256 (compare default)", SMOOTHING_MLP),
        ("cnn 16-32-fc100 (compare paper-scale)", SMALL_CNN),
    ):
        base = build_model(
            {
                "kind": "relu-smoothing",
                "input_shape": [1, 28, 28],
                "input_range": [0.0, 1.0],
                **arch,
                "smoothing": {"noise": "gaussian", "sigma": 0.75},
            }
        ).eval()
        xs = x[: args.n_smooth]
        t = (
            best_of(
                lambda base=base, xs=xs: asymcert.certify(base, xs, norms=NORMS, n0=100, n=args.n, alpha=0.001, seed=0),
                1,
            )
            / args.n_smooth
        )
        out["smoothing"][name] = {"s_per_input": t, "ratio": t / t_convex}
        print(f"smoothing, {name}: {1e3 * t:.1f} ms per input = {t / t_convex:.0f}x the feature-convex time")
    write_results("smoothing_ratio", out)


if __name__ == "__main__":
    main()
