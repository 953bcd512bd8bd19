"""Certification throughput of the exported ONNX graph in onnxruntime against ``asymcert.certify``.

The default Fashion-MNIST architecture (task ``fashion-mnist-shirts``: a one-hidden-layer ICNN of
4096 units on shifted pixels; random weights, φ fitted, the balance at the median so that half the
inputs are flagged), the same 2000 inputs, ℓ1/ℓ2/ℓ∞ radii, best of ``--repeats`` interleaved rounds:

* ``onnxruntime``: one ``InferenceSession.run`` of the certifying graph (score, flagged and three
  radii computed in the graph; CPU execution provider, ``--threads`` intra-op threads);
* ``certify_auto``: ``asymcert.certify(model, x, norms=(1, 2, inf))`` (the default precision);
* ``certify_model``: the same with ``precision="model"`` (the float32 reference the graph mirrors).

Also reports the agreement of the radii (max relative gap, count above the library's).

    python benchmarks/bench_onnx.py [--n 2000] [--threads 1] [--repeats 3]

Writes benchmarks/results/onnx.json (with the load average before and after).
"""

from __future__ import annotations

import argparse
import math
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from bench_icnn_speed import default_model, interleaved  # benchmarks/bench_icnn_speed.py
from common import machine, write_results  # benchmarks/common.py

import asymcert
from asymcert.export import OPSET, to_onnx

NORMS = (1.0, 2.0, math.inf)
KEYS = ("radius_l1", "radius_l2", "radius_linf")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--threads", type=int, default=1)
    ap.add_argument("--repeats", type=int, default=3)
    args = ap.parse_args()
    torch.set_num_threads(args.threads)
    load_before = [round(v, 2) for v in os.getloadavg()]
    torch.manual_seed(0)
    x = torch.rand(args.n, 1, 28, 28)
    model = default_model(x)
    with tempfile.TemporaryDirectory() as tmp:
        t0 = time.perf_counter()
        path = to_onnx(model, Path(tmp) / "model.onnx")
        export_seconds = time.perf_counter() - t0
        opts = ort.SessionOptions()
        opts.intra_op_num_threads = args.threads
        opts.inter_op_num_threads = 1
        sess = ort.InferenceSession(str(path), opts, providers=["CPUExecutionProvider"])
        xn = x.numpy()
        fns = {
            "onnxruntime": lambda: sess.run(None, {"x": xn}),
            "certify_auto": lambda: asymcert.certify(model, x, norms=NORMS),
            "certify_model": lambda: asymcert.certify(model, x, norms=NORMS, precision="model"),
        }
        best = interleaved(fns, args.repeats)
        out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": xn})))
    cert = asymcert.certify(model, x, norms=NORMS)
    agreement = {}
    for p, key in zip(NORMS, KEYS):
        mine, lib = torch.from_numpy(out[key]).double(), cert.radii[p].double()
        pos = lib > 0
        agreement[key] = {
            "above_library": int((mine > lib).sum()),
            "median_relative_gap": float(((lib[pos] - mine[pos]) / lib[pos]).median()),
            "max_relative_gap": float(((lib[pos] - mine[pos]) / lib[pos]).max()),
        }
    flagged_equal = bool(np.array_equal(out["flagged"], cert.predicted_flagged().numpy()))
    results = {
        "model": "fashion-mnist-shirts default (ICNN 4096, shift), random weights",
        "n": args.n,
        "threads": args.threads,
        "opset": OPSET,
        "onnxruntime_version": ort.__version__,
        "torch_version": torch.__version__,
        "export_seconds": round(export_seconds, 3),
        "inputs_per_second": {k: round(args.n / v, 1) for k, v in best.items()},
        "seconds": {k: round(v, 4) for k, v in best.items()},
        "flagged_equal": flagged_equal,
        "flagged_fraction": float(cert.predicted_flagged().float().mean()),
        "radius_agreement": agreement,
        "load_average_before": load_before,
        "machine": machine(),
    }
    print({k: results[k] for k in ("inputs_per_second", "flagged_equal", "radius_agreement")})
    write_results("onnx", results)


if __name__ == "__main__":
    main()
