"""Speed of the sound default certificate of the default Fashion-MNIST model (a one-hidden-layer ICNN of
4096 units on shifted pixels) against the plain, unsound float32 forward + backward pass in PyTorch.

All on the same inputs, in one process, with the rounds interleaved (best of ``--repeats``):

* ``plain_float32``: ``model.score_from_features(f)`` and ``autograd.grad(s.sum(), f)`` w.r.t. the
  features, the model's own float32 arithmetic, no bound on anything;
* ``auto``: ``asymcert.certify(model, x, norms=(1, 2, inf))``, the default (the rigorous fast pass of
  :mod:`asymcert.certify.bounded_icnn` for this model);
* ``float64``: the same with ``precision="float64"`` (autograd recomputation in float64);
* ``per_input``: the authors' method (one input at a time, ``autograd.functional.jacobian``), on
  ``--n-ref`` inputs.

    python benchmarks/bench_icnn_speed.py [--n 4000] [--n-ref 300] [--threads T] [--run RUN_FOLDER]

Without --run the model has random weights (throughput does not depend on them; the feature map is
fitted and the balance set so that half the inputs are flagged). Writes
benchmarks/results/icnn_speed.json (icnn_speed_<T>thread.json with --threads T).
"""

from __future__ import annotations

import argparse
import math
import os
import time

import torch
from bench_certify import per_input_reference  # benchmarks/bench_certify.py
from common import machine, write_results  # benchmarks/common.py

import asymcert
from asymcert.data.builtin import FASHION_SHIRTS_MODEL
from asymcert.models import build_model

NORMS = (1.0, 2.0, math.inf)


def default_model(x: torch.Tensor) -> torch.nn.Module:
    """The default Fashion-MNIST architecture with random weights, φ fitted on ``x``, balance at the median."""
    model = build_model({**FASHION_SHIRTS_MODEL, "input_shape": [1, 28, 28], "input_range": [0.0, 1.0]})
    with torch.no_grad():
        model.feature_map.fit(x)
        model.eval()
        model.set_balance(-float(model(x).median()))
    return model


def plain_pass(model: torch.nn.Module, x: torch.Tensor) -> None:
    """The unsound float32 forward + backward w.r.t. the features."""
    f = model.features(x).detach().requires_grad_(True)
    s = model.score_from_features(f)
    torch.autograd.grad(s.sum(), f)


def interleaved(fns: dict, repeats: int) -> dict[str, float]:
    """Best seconds per function over ``repeats`` interleaved rounds (after one warm-up round)."""
    best = {name: math.inf for name in fns}
    for round_ in range(repeats + 1):
        for name, fn in fns.items():
            t0 = time.perf_counter()
            fn()
            if round_:
                best[name] = min(best[name], time.perf_counter() - t0)
    return best


def measure(model: torch.nn.Module, x: torch.Tensor, n_ref: int, repeats: int) -> dict:
    """inputs/s of every method and the ratios the issue asks for."""
    model.eval()
    fns = {
        "plain_float32": lambda: plain_pass(model, x),
        "auto": lambda: asymcert.certify(model, x, norms=NORMS),
        "float64": lambda: asymcert.certify(model, x, norms=NORMS, precision="float64"),
    }
    best = interleaved(fns, repeats)
    t0 = time.perf_counter()
    per_input_reference(model, x[:n_ref])
    per_input_s = (time.perf_counter() - t0) / n_ref
    row = {f"{name}_inputs_per_s": x.shape[0] / t for name, t in best.items()}
    row["per_input_inputs_per_s"] = 1.0 / per_input_s
    row["ratio_auto_to_plain_time"] = best["auto"] / best["plain_float32"]
    row["ratio_float64_to_plain_time"] = best["float64"] / best["plain_float32"]
    row["speedup_auto_vs_per_input"] = per_input_s * x.shape[0] / best["auto"]
    return row


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=4000)
    ap.add_argument("--n-ref", type=int, default=300, help="inputs for the slow per-input method")
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--threads", type=int, help="torch threads; default: all cores")
    ap.add_argument("--run", help="also measure the trained model of this run folder")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    x = torch.rand(args.n, 1, 28, 28)
    load_before = [round(v, 2) for v in os.getloadavg()]
    models = {"default architecture, random weights": default_model(x)}
    if args.run:
        models["trained (" + args.run + ")"] = asymcert.load(args.run)
    results = {
        "machine": machine(),
        "threads": torch.get_num_threads(),
        "n": args.n,
        "n_ref": args.n_ref,
        "load_average_before": load_before,
        "models": {},
    }
    for name, model in models.items():
        row = measure(model, x, args.n_ref, args.repeats)
        results["models"][name] = row
        print(
            f"{name}: plain float32 {row['plain_float32_inputs_per_s']:.0f}/s, auto {row['auto_inputs_per_s']:.0f}/s "
            f"({row['ratio_auto_to_plain_time']:.2f}x plain's time), float64 {row['float64_inputs_per_s']:.0f}/s "
            f"({row['ratio_float64_to_plain_time']:.2f}x), per-input {row['per_input_inputs_per_s']:.0f}/s "
            f"(auto {row['speedup_auto_vs_per_input']:.1f}x faster)"
        )
    write_results("icnn_speed" if not args.threads else f"icnn_speed_{args.threads}thread", results)


if __name__ == "__main__":
    main()
