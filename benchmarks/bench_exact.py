"""Benchmark: exact ℓ∞ / ℓ1 radii of a convex conv net on N inputs, with timings and tightness.

Usage:
    python benchmarks/bench_exact.py [RUN_DIR] [--n 1000] [--norms inf,1] [--out benchmarks/results/exact.json]

RUN_DIR (default ``runs/fashion``) is a run folder of a feature-convex model with an affine
feature map; its inputs come from ``RUN_DIR/test_inputs.safetensors`` or, failing that, from the
run's task test split. Without a run folder (or with ``--random``) it builds a random Fashion-MNIST
sized ConvexConvNet (4 channels, 28×28, 2 blocks, shift feature map) and random inputs.
Nothing is trained. The issue's target: ℓ∞ and ℓ1 for 1000 inputs in under 10 minutes.
"""

from __future__ import annotations

import argparse
import json
import math
import platform
import sys
import time
from pathlib import Path

import numpy as np
import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT / "src"))

import asymcert  # noqa: E402
from asymcert.certify.exact import ExactRadiusSolver  # noqa: E402
from asymcert.certify.result import norm_label, normalize_norm  # noqa: E402


def random_fashion_model(seed: int = 0) -> torch.nn.Module:
    """A random 4-channel, 2-block ConvexConvNet on 1×28×28 with weights spread like a trained one."""
    from asymcert.models import build_model

    torch.manual_seed(seed)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [1, 28, 28],
            "input_range": [0.0, 1.0],
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2},
        }
    )
    model.feature_map.fit(torch.rand(256, 1, 28, 28))
    with torch.no_grad():
        for mod in model.modules():
            if hasattr(mod, "running_var") and mod.running_var is not None:
                mod.running_var.uniform_(0.5, 2.0)
                mod.running_mean.normal_(0.0, 0.1)
                mod.weight.uniform_(0.5, 2.0)
                mod.bias.normal_(0.0, 0.1)
        for conv in model.convex.block_convs:
            conv.weight.uniform_(0.0, 0.3)
        model.convex.readout.weight.uniform_(0.0, 0.03)
    return model.eval()


def load_inputs(run_dir: Path, n: int) -> torch.Tensor:
    file = run_dir / "test_inputs.safetensors"
    if file.is_file():
        from safetensors.torch import load_file

        return load_file(str(file))["x"][:n]
    from asymcert.pipeline import run_data

    return run_data(run_dir).test.x[:n]


def quartiles(v: np.ndarray) -> dict[str, float] | None:
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return dict(zip(("min", "q25", "median", "q75", "max"), (float(a) for a in q)))


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("run_dir", nargs="?", default="runs/fashion")
    ap.add_argument("--n", type=int, default=1000, help="number of inputs (default 1000)")
    ap.add_argument("--norms", default="inf,1", help="comma-separated norms (default inf,1)")
    ap.add_argument("--random", action="store_true", help="use a random model even if the run folder exists")
    ap.add_argument("--threads", type=int, default=1, help="torch threads (HiGHS runs on one)")
    ap.add_argument("--out", default=str(ROOT / "benchmarks" / "results" / "exact.json"))
    args = ap.parse_args(argv)
    torch.set_num_threads(args.threads)

    run_dir = Path(args.run_dir)
    if not args.random and (run_dir / "model.safetensors").is_file():
        model = asymcert.load(run_dir)
        x = load_inputs(run_dir, args.n)
        source = str(run_dir)
    else:
        model = random_fashion_model()
        torch.manual_seed(1)
        x = torch.rand(args.n, 1, 28, 28)
        with torch.no_grad():
            model.set_balance(-float(model(x).median()))  # about half flagged
        source = "random ConvexConvNet (no run folder)" if not args.random else "random ConvexConvNet (--random)"
    norms = [normalize_norm(p) for p in args.norms.split(",")]
    print(f"exact radii: {source}, {x.shape[0]} inputs of shape {tuple(x.shape[1:])}, norms {args.norms}")

    cert = asymcert.certify(model, x, norms=norms)
    flagged = cert.sensitive.cpu().numpy()
    result = {
        "source": source,
        "n_inputs": int(x.shape[0]),
        "flagged": int(flagged.sum()),
        "model": model.config(),
        "machine": {"python": platform.python_version(), "torch": torch.__version__, "cpus": torch.get_num_threads()},
        "norms": {},
    }
    total = 0.0
    for p in norms:
        t0 = time.perf_counter()
        solver = ExactRadiusSolver(model, p)
        build = time.perf_counter() - t0
        t1 = time.perf_counter()
        res = solver.solve(x)
        solve = time.perf_counter() - t1
        exact = res.radii.numpy()
        certified = cert.radius(p).cpu().numpy()
        both = (certified > 0) & (exact > 0) & np.isfinite(exact)
        sec = res.seconds[exact > 0]
        statuses: dict[str, int] = {}
        for s in res.status:
            statuses[s] = statuses.get(s, 0) + 1
        violations = int(((certified > exact * (1 + 1e-6)) & (certified > 0) & ~np.isnan(exact)).sum())
        entry = {
            "build_seconds": build,
            "solve_seconds": solve,
            "seconds_per_flagged_input": quartiles(sec),
            "mean_seconds_per_flagged_input": float(sec.mean()) if sec.size else None,
            "status": statuses,
            "certified_over_exact": quartiles(certified[both] / exact[both]),
            "exact_radius": quartiles(exact[exact > 0]),
            "certified_above_exact": violations,
            "extrapolated_seconds_for_1000_inputs": (build + solve) * 1000.0 / max(1, x.shape[0]),
        }
        result["norms"][norm_label(p)] = entry
        total += build + solve
        t = entry["certified_over_exact"] or {}
        print(
            f"  {norm_label(p)}: build {build:.2f} s, solve {solve:.1f} s "
            f"({entry['mean_seconds_per_flagged_input'] or 0:.3f} s per flagged input), status {statuses}, "
            f"certified/exact median {t.get('median', math.nan):.4f} [q25 {t.get('q25', math.nan):.4f}, "
            f"q75 {t.get('q75', math.nan):.4f}], certified > exact: {violations}"
        )
    result["total_seconds"] = total
    result["extrapolated_seconds_for_1000_inputs"] = total * 1000.0 / max(1, x.shape[0])
    print(
        f"total {total:.1f} s for {x.shape[0]} inputs → about {result['extrapolated_seconds_for_1000_inputs']:.0f} s "
        f"for 1000 (target: 600 s)"
    )
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
