"""Benchmark: exact radii by cutting planes (bracketing) and the multi-cut certificate on a run.

Usage:
    OMP_NUM_THREADS=1 python benchmarks/bench_exact_cuts.py [RUN_DIR] [--n 200] [--norms 1,2,inf]
        [--tol 1e-3] [--cuts 2,4,8] [--max-cuts 60] [--out benchmarks/results/exact_cuts.json]

RUN_DIR (default ``runs/fashion-mnist-shirts``) is a run folder of a feature-convex model with an affine
feature map; its first N test inputs are used (as benchmarks/bench_exact.py loads them). Reports per
norm: seconds per flagged input, cut rounds, bracket gaps (upper/lower − 1), tightness of the closed
form (certified / exact, exact = the upper bound where the bracket met) and the multi-cut gain.
"""

from __future__ import annotations

import argparse
import json
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))
sys.path.insert(0, str(ROOT / "benchmarks"))

from bench_exact import load_inputs, quartiles  # noqa: E402

import asymcert  # noqa: E402
from asymcert.certify.cutting_planes import BracketResult, bracket_radius  # noqa: E402
from asymcert.certify.feature_convex import certify_feature_convex  # noqa: E402
from asymcert.certify.result import norm_label, normalize_norm  # noqa: E402

CHUNK = 100  # inputs bracketed at once (each open input keeps its LP)
ROUND_MARKS = (20, 60, 100, 200, 400, 1000)  # "converged within R rounds" is reported at these R


def bench_norm(
    model: torch.nn.Module, x: torch.Tensor, p: float, tol: float, cert: dict, cuts: list[int], max_cuts: int
) -> dict:
    """Bracket and multi-cut numbers for one norm (flagged inputs only)."""
    t0 = time.perf_counter()
    parts = [
        bracket_radius(model, x[i : i + CHUNK], p, tol=tol, max_cuts=max_cuts) for i in range(0, x.shape[0], CHUNK)
    ]
    total = time.perf_counter() - t0
    res = BracketResult(
        torch.cat([r.lower for r in parts]),
        torch.cat([r.upper for r in parts]),
        torch.cat([r.delta for r in parts]),
        np.concatenate([r.iterations for r in parts]),
        [s for r in parts for s in r.status],
        np.concatenate([r.seconds for r in parts]),
    )
    flagged = np.array([s != "not flagged" for s in res.status])
    exact = res.exact(tol).numpy()[flagged]
    lower, upper = res.lower.numpy()[flagged], res.upper.numpy()[flagged]
    closed = cert[0][p][flagged]
    out = {
        "flagged": int(flagged.sum()),
        "seconds_total": total,
        "seconds_per_flagged_input": total / max(1, int(flagged.sum())),
        "seconds_per_flagged_input_quartiles": quartiles(res.seconds[flagged]),
        "iterations": quartiles(res.iterations[flagged].astype(float)),
        "converged": int(sum(s == "converged" for s in res.status)),
        "converged_within_rounds": {
            str(r): int(sum(s == "converged" and it <= r for s, it in zip(res.status, res.iterations, strict=True)))
            for r in ROUND_MARKS
            if r <= max_cuts
        },
        "statuses": {s: res.status.count(s) for s in set(res.status)},
        "bracket_gap": quartiles(upper / lower - 1.0),
        "lower_below_closed_form": int((lower < closed * (1 - 1e-9)).sum()),
        "tightness_closed_form": quartiles(closed / exact),
        "multi_cut": {},
    }
    for k in cuts:
        r = cert[k][p][flagged]
        out["multi_cut"][str(k)] = {
            "seconds_per_input_all_norms": cert[f"t{k}"] / x.shape[0],
            "gain_over_closed_form": quartiles(r / closed),
            "tightness": quartiles(r / exact),
            "above_exact": int((r > exact * (1 + 1e-12)).sum()),
        }
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run_dir", nargs="?", default="runs/fashion-mnist-shirts")
    ap.add_argument("--n", type=int, default=200)
    ap.add_argument("--norms", default="1,2,inf")
    ap.add_argument("--tol", type=float, default=1e-3)
    ap.add_argument("--cuts", default="2,4,8")
    ap.add_argument("--max-cuts", type=int, default=60, help="cut rounds per input before the bracket is reported")
    ap.add_argument("--out", default="benchmarks/results/exact_cuts.json")
    args = ap.parse_args()
    torch.manual_seed(0)
    run_dir = ROOT / args.run_dir
    model = asymcert.load(run_dir)
    x = load_inputs(run_dir, args.n)
    norms = tuple(normalize_norm(p) for p in args.norms.split(","))
    cuts = [int(k) for k in args.cuts.split(",") if k]
    t0 = time.perf_counter()
    base = asymcert.certify(model, x, norms=norms)
    cert: dict = {0: {p: base.radii[p].double().numpy() for p in norms}, "t0": time.perf_counter() - t0}
    for k in cuts:
        t0 = time.perf_counter()
        c = certify_feature_convex(model, x, norms, cuts=k)
        cert[k] = {p: c.radii[p].double().numpy() for p in norms}
        cert[f"t{k}"] = time.perf_counter() - t0
    results = {norm_label(p): bench_norm(model, x, p, args.tol, cert, cuts, args.max_cuts) for p in norms}
    report = {
        "run": args.run_dir,
        "n": int(x.shape[0]),
        "tol": args.tol,
        "max_cuts": args.max_cuts,
        "model": model.config(),
        "closed_form_seconds_per_input_all_norms": cert["t0"] / x.shape[0],
        "threads": torch.get_num_threads(),
        "machine": platform.processor() or platform.machine(),
        "norms": results,
    }
    out = ROOT / args.out
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=1, default=float))
    print(json.dumps(report["norms"], indent=1, default=float))


if __name__ == "__main__":
    main()
