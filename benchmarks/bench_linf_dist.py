"""Benchmark of the ℓ∞-dist layer: naive broadcast vs reference path vs fast path, in one run.

Usage:
    python benchmarks/bench_linf_dist.py [--batch 512] [--inp 1024] [--out 1024] [--reps 5] [--no-before]

Finite p: forward + backward at p = 8, 8.5, 13.7, 27.3, 100 next to p = ∞ (ratios in the same run).
"Before" rows time the pre-fix general-power kernel (Cephes log/exp, the same source compiled
with -DASYMCERT_CEPHES_POW; reachable only from here) on the same autograd path, for the
non-integer p.

Prints a table and writes benchmarks/results/linf_dist.json (machine, versions, times, ratios).
Times are wall-clock seconds, best of ``reps`` after one warm-up (the reference path, which is
only a correctness oracle, is timed once without warm-up to keep the run short); the machine's
load average is recorded because other processes sharing the cores inflate the times.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import torch
from common import machine  # benchmarks/common.py

from asymcert.nn import linf_dist as L

INF = float("inf")


def compiler_version() -> str:
    for cxx in (os.environ.get("CXX"), "g++", "c++"):
        if not cxx:
            continue
        try:
            return subprocess.run([cxx, "--version"], capture_output=True, text=True, timeout=30).stdout.splitlines()[0]
        except (OSError, subprocess.SubprocessError, IndexError):
            continue
    return "none"


def timeit(fn: Callable[[], object], reps: int, warm: bool = True) -> dict:
    if warm:
        fn()  # warm-up (page faults, kernel build, caches)
    wall, cpu = [], []
    for _ in range(reps):
        c0, t0 = time.process_time(), time.perf_counter()
        fn()
        wall.append(time.perf_counter() - t0)
        cpu.append(time.process_time() - c0)
    return {"best_s": min(wall), "median_s": statistics.median(wall), "cpu_s_best": min(cpu), "reps": reps}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--batch", type=int, default=512)
    ap.add_argument("--inp", type=int, default=1024)
    ap.add_argument("--out", type=int, default=1024)
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--slow-reps", type=int, default=1, help="repetitions for the naive and reference paths")
    ap.add_argument("--ps", default="8,8.5,13.7,27.3,100", help="finite p for the fwd+bwd rows")
    ap.add_argument("--no-before", action="store_true", help="skip the pre-fix kernel rows")
    ap.add_argument("--json", type=Path, default=Path(__file__).parent / "results" / "linf_dist.json")
    args = ap.parse_args()

    B, K, O = args.batch, args.inp, args.out
    ops = B * K * O
    torch.manual_seed(0)
    x = torch.randn(B, K)
    w = torch.randn(O, K)
    xg, wg = x.clone().requires_grad_(), w.clone().requires_grad_()
    load_before = os.getloadavg()
    t0 = time.perf_counter()
    lib = L.kernels()
    build_s = time.perf_counter() - t0
    fast_backend = "cpp" if lib is not None else "torch"

    def fwd_bwd(fn: Callable[..., torch.Tensor], p: float) -> Callable[[], None]:
        def run() -> None:
            xg.grad = wg.grad = None
            y = fn(xg, wg, p)
            y.backward(torch.ones_like(y))

        return run

    fast = lambda a, b, p: L.linf_dist(a, b, p)  # noqa: E731
    ref = lambda a, b, p: L.linf_dist_reference(a, b, p)  # noqa: E731
    rows: dict[str, dict] = {}
    with torch.no_grad():
        rows["naive broadcast, p=inf fwd"] = timeit(lambda: (x[:, None] - w[None]).abs().amax(-1), args.slow_reps)
        rows["reference, p=inf fwd"] = timeit(lambda: ref(x, w, INF), args.slow_reps, warm=False)
        rows["fast, p=inf fwd"] = timeit(lambda: fast(x, w, INF), args.reps)
        nt = torch.get_num_threads()
        torch.set_num_threads(1)
        rows["fast, p=inf fwd, 1 thread"] = timeit(lambda: fast(x, w, INF), args.reps)
        torch.set_num_threads(nt)
        rows["fast, p=8 fwd"] = timeit(lambda: fast(x, w, 8.0), args.reps)
    rows["reference, p=inf fwd+bwd"] = timeit(fwd_bwd(ref, INF), args.slow_reps, warm=False)
    rows["fast, p=inf fwd+bwd"] = timeit(fwd_bwd(fast, INF), args.reps)
    rows["reference, p=8 fwd+bwd"] = timeit(fwd_bwd(ref, 8.0), args.slow_reps, warm=False)
    rows["fast, p=8 fwd+bwd"] = timeit(fwd_bwd(fast, 8.0), args.reps)
    ps = [float(v) for v in args.ps.split(",")]
    before = None
    if lib is not None and not args.no_before:
        before = L._build_and_load(("ASYMCERT_CEPHES_POW",))

    def with_lib(other, fn: Callable[[], None]) -> Callable[[], None]:
        def run() -> None:
            saved = L._state["lib"]
            L._state["lib"] = other
            try:
                fn()
            finally:
                L._state["lib"] = saved

        return run

    for p in ps:
        rows[f"fast, p={p:g} fwd+bwd"] = timeit(fwd_bwd(fast, p), max(2, args.reps // 2))
        if before is not None and p != int(p):
            rows[f"before fix, p={p:g} fwd+bwd"] = timeit(with_lib(before, fwd_bwd(fast, p)), 2)
    rows["fast, p=inf fwd+bwd (again, after the finite-p rows)"] = timeit(fwd_bwd(fast, INF), args.reps)
    load_after = os.getloadavg()

    for r in rows.values():
        r["G_sub_abs_max_per_s"] = ops / r["best_s"] / 1e9
    b = {k: v["best_s"] for k, v in rows.items()}
    ratios = {
        "naive / fast, p=inf fwd": b["naive broadcast, p=inf fwd"] / b["fast, p=inf fwd"],
        "reference / fast, p=inf fwd": b["reference, p=inf fwd"] / b["fast, p=inf fwd"],
        "reference / fast, p=inf fwd+bwd": b["reference, p=inf fwd+bwd"] / b["fast, p=inf fwd+bwd"],
        "reference / fast, p=8 fwd+bwd": b["reference, p=8 fwd+bwd"] / b["fast, p=8 fwd+bwd"],
        "fast p=8 fwd+bwd / fast p=inf fwd+bwd": b["fast, p=8 fwd+bwd"] / b["fast, p=inf fwd+bwd"],
        "naive / fast 1 thread, p=inf fwd": b["naive broadcast, p=inf fwd"] / b["fast, p=inf fwd, 1 thread"],
    }
    t_inf = min(b["fast, p=inf fwd+bwd"], b["fast, p=inf fwd+bwd (again, after the finite-p rows)"])
    for p in ps:
        ratios[f"fast p={p:g} fwd+bwd / fast p=inf fwd+bwd"] = b[f"fast, p={p:g} fwd+bwd"] / t_inf
        if f"before fix, p={p:g} fwd+bwd" in b:
            ratios[f"before fix p={p:g} fwd+bwd / fast p=inf fwd+bwd"] = b[f"before fix, p={p:g} fwd+bwd"] / t_inf
            ratios[f"speed-up of the fix at p={p:g}"] = b[f"before fix, p={p:g} fwd+bwd"] / b[f"fast, p={p:g} fwd+bwd"]
    targets = {
        "p=inf fwd >= 50x naive": ratios["naive / fast, p=inf fwd"] >= 50,
        "p=inf fwd >= 10 G/s": max(
            rows["fast, p=inf fwd"]["G_sub_abs_max_per_s"], rows["fast, p=inf fwd, 1 thread"]["G_sub_abs_max_per_s"]
        )
        >= 10,
        "p=8 fwd+bwd <= 10x p=inf fwd+bwd": ratios["fast p=8 fwd+bwd / fast p=inf fwd+bwd"] <= 10,
        "every finite p fwd+bwd <= 10x p=inf fwd+bwd": all(
            ratios[f"fast p={p:g} fwd+bwd / fast p=inf fwd+bwd"] <= 10 for p in ps
        ),
    }

    print(
        f"ℓ∞-dist benchmark: batch {B}, {K} → {O}, float32, {torch.get_num_threads()} threads, "
        f"fast backend {fast_backend!r}, load average {load_before[0]:.2f} → {load_after[0]:.2f}"
    )
    print(f"{'case':52s} {'best s':>10s} {'median s':>10s} {'cpu s':>10s} {'G/s':>8s}")
    for k, r in rows.items():
        print(
            f"{k:52s} {r['best_s']:10.4f} {r['median_s']:10.4f} {r['cpu_s_best']:10.4f} {r['G_sub_abs_max_per_s']:8.2f}"
        )
    for k, v in ratios.items():
        print(f"{k:52s} {v:8.2f}")
    for k, v in targets.items():
        print(f"target {k:45s} {'met' if v else 'NOT met'}")

    result = {
        "problem": {"batch": B, "in": K, "out": O, "dtype": "float32", "sub_abs_max_ops": ops},
        "command": "python " + " ".join(["benchmarks/bench_linf_dist.py"] + sys.argv[1:]),
        "machine": {
            "cpu_model": machine()["cpu"],
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "compiler": compiler_version(),
            "loadavg_before": load_before,
            "loadavg_after": load_after,
        },
        "fast_backend": fast_backend,
        "kernel_error": L.kernel_error(),
        "kernel_build_or_load_s": build_s,
        "times": rows,
        "ratios": ratios,
        "targets_met": targets,
    }
    args.json.parent.mkdir(parents=True, exist_ok=True)
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    print(f"wrote {args.json}")


if __name__ == "__main__":
    main()
