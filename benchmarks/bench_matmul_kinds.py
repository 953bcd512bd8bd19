"""What each kind of matrix product costs here, at the two shapes of the default Fashion model's sound pass.

The sound default (:mod:`asymcert.certify.bounded_icnn`) spends its time in two products per batch of N
inputs: the ReLU pattern t = U₀ f (N × 784 by 784 × 4096, float32, with a proven error bound for any
summation order) and the gradient P Ũ (N × 4096 by 4096 × 785, four exact int8 slices through
``torch._int_mm``). #16 asks for 30× the authors' per-input method, which needs more than the unsound float32
forward + backward (see benchmarks/README.md). This machine's CPU has AMX (bf16 and int8 tile units), so
this script measures, at both shapes, in one process with interleaved rounds (best of ``--repeats``):

* ``float32``: ``a @ b`` at PyTorch's default float32 precision ("highest": true float32 products);
* ``bf16_out``: both operands bfloat16, result bfloat16 (oneDNN on AMX; the result is rounded to 8 bits);
* ``float32_via_bf16``: float32 operands and result with ``torch.backends.mkldnn.matmul.fp32_precision =
  "bf16"`` (oneDNN rounds the operands to bfloat16 inside);
* ``int8``: ``torch._int_mm`` on int8 operands (int32 result, exact);

and, under cProfile, where the sound default's own time goes on N random inputs of the default architecture
(random weights, as ``bench_icnn_speed.py`` without ``--run``): the float32 pattern product (``addmm``), the
int8 gradient slices (``_int_mm``) and everything else.

    python benchmarks/bench_matmul_kinds.py [--n 4000] [--threads 1] [--repeats 3]

Writes ``benchmarks/results/matmul_kinds.json`` (``matmul_kinds_<T>thread.json`` with ``--threads T``) and
prints milliseconds, GOP/s and the speed relative to float32 per shape.
"""

from __future__ import annotations

import argparse
import cProfile
import math
import pstats
from collections.abc import Callable

import torch
from bench_icnn_speed import default_model, interleaved  # benchmarks/bench_icnn_speed.py
from common import machine, positive_int, write_results  # benchmarks/common.py

import asymcert

SHAPES = {"pattern U0 f": (784, 4096), "gradient P U": (4096, 785)}  # (inner K, output columns)


def _kinds(n: int, k: int, m: int) -> dict[str, Callable[[], torch.Tensor]]:
    """The products of an (n, k) by a (k, m) matrix, one callable per kind (random operands)."""
    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, k, generator=gen), torch.randn(k, m, generator=gen) * 0.05
    a16, b16 = a.bfloat16(), b.bfloat16()
    a8 = torch.randint(-64, 64, (n, k), generator=gen, dtype=torch.int8)
    b8 = torch.randint(-64, 64, (k, m), generator=gen, dtype=torch.int8)

    def via_bf16() -> torch.Tensor:
        before = torch.backends.mkldnn.matmul.fp32_precision
        torch.backends.mkldnn.matmul.fp32_precision = "bf16"
        try:
            return a @ b
        finally:
            torch.backends.mkldnn.matmul.fp32_precision = before

    return {
        "float32": lambda: a @ b,
        "bf16_out": lambda: a16 @ b16,
        "float32_via_bf16": via_bf16,
        "int8": lambda: torch._int_mm(a8, b8),
    }


def default_pass_profile(n: int) -> dict[str, float]:
    """Seconds of one ``asymcert.certify`` of n random images by the default architecture (the sound default
    precision), in total and inside ``torch.addmm`` (the float32 pattern product) and ``torch._int_mm``."""
    x = torch.rand(n, 1, 28, 28, generator=torch.Generator().manual_seed(1))
    model = default_model(x)
    asymcert.certify(model, x[: max(1, n // 8)], norms=(1.0, 2.0, math.inf))  # warm-up
    profile = cProfile.Profile()
    profile.runcall(asymcert.certify, model, x, norms=(1.0, 2.0, math.inf))
    stats = pstats.Stats(profile).stats  # type: ignore[attr-defined]
    inside = {name: 0.0 for name in ("addmm", "_int_mm")}
    for (_, _, func), (_, _, own, _, _) in stats.items():
        for name in inside:
            if func == f"<built-in method torch.{name}>":
                inside[name] += own
    total = pstats.Stats(profile).total_tt  # type: ignore[attr-defined]
    return {"total": total, "float32_pattern_addmm": inside["addmm"], "int8_gradient": inside["_int_mm"]}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--n", type=positive_int, default=4000, help="rows (inputs) per product")
    ap.add_argument("--threads", type=positive_int, default=None, help="torch threads (default: PyTorch's)")
    ap.add_argument("--repeats", type=positive_int, default=3)
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    out: dict[str, object] = {"machine": machine(), "n": args.n, "threads": torch.get_num_threads(), "shapes": {}}
    print("| shape | kind | ms | GOP/s | speed vs float32 |\n|---|---|---|---|---|")
    for label, (k, m) in SHAPES.items():
        seconds = interleaved(_kinds(args.n, k, m), args.repeats)
        ops = 2.0 * args.n * k * m
        out["shapes"][label] = {"k": k, "m": m, "seconds": seconds}  # type: ignore[index]
        for kind, s in seconds.items():
            print(f"| {label} | {kind} | {s * 1e3:.1f} | {ops / s / 1e9:.0f} | {seconds['float32'] / s:.2f}× |")
    out["default_pass"] = profile = default_pass_profile(args.n)
    print(
        f"sound default pass, {args.n} inputs: {profile['total']:.3f} s, of which float32 pattern product "
        f"{profile['float32_pattern_addmm']:.3f} s, int8 gradient slices {profile['int8_gradient']:.3f} s"
    )
    suffix = f"_{args.threads}thread" if args.threads else ""
    write_results(f"matmul_kinds{suffix}", out)


if __name__ == "__main__":
    main()
