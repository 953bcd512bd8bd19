"""Parity of exported certifying graphs with the library on trained runs (issue #17).

For each run folder: export the certifying ONNX graph, run it in onnxruntime on the first N test
inputs, and compare with PyTorch and `asymcert.certify`: scores (max |difference|), decisions
(equal or not), radii (how many above the library's float64 radii — must be 0 — and the median and
largest relative gap on inputs away from the boundary, s ≥ 5% of the largest score).

    python benchmarks/bench_onnx_parity.py --runs RUN [RUN ...] [--n 1000]

Writes benchmarks/results/onnx_parity.json.
"""

from __future__ import annotations

import argparse
import math
import tempfile
from pathlib import Path

import numpy as np
import onnxruntime as ort
import torch
from common import write_results  # benchmarks/common.py

import asymcert
from asymcert.export import to_onnx
from asymcert.pipeline import run_data

NORMS = (1.0, 2.0, math.inf)


def _precision(model: torch.nn.Module) -> dict:
    """The library's float64 reference where the certifier has one (feature-convex), else its default."""
    return {"precision": "float64"} if hasattr(model, "convex") else {}


def parity(run_dir: str, n: int) -> dict:
    model = asymcert.load(run_dir)
    x = run_data(run_dir).test.x[:n]
    with tempfile.TemporaryDirectory() as tmp:
        path = to_onnx(model, Path(tmp) / "m.onnx", norms=NORMS)
        sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        out = dict(zip(names, sess.run(None, {"x": x.numpy().astype(np.float32)})))
    with torch.no_grad():
        torch_score = model(x)
    torch_score = torch_score[:, -1] - torch_score[:, 0] if torch_score.dim() == 2 else torch_score
    cert = asymcert.certify(model, x, norms=NORMS, **_precision(model))
    score = torch.from_numpy(out["score"]).double()
    away = score >= 0.05 * float(score.max())
    result: dict = {
        "run": run_dir,
        "model": type(model).__name__,
        "n": len(x),
        "flagged_equal": bool(np.array_equal(out["flagged"], cert.predicted.bool().numpy())),
        "max_abs_score_gap_vs_torch": float((score - torch_score.double()).abs().max()),
        "radii": {},
    }
    for p in NORMS:
        name = "radius_linf" if math.isinf(p) else f"radius_l{p:g}"
        got, want = torch.from_numpy(out[name]).double(), cert.radii[p]
        rel = ((want - got) / want)[away & (want > 0)]
        result["radii"][name] = {
            "above_library": int((got > want).sum()),
            "median_relative_gap_away": float(rel.median()) if len(rel) else None,
            "max_relative_gap_away": float(rel.max()) if len(rel) else None,
        }
    return result


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--runs", nargs="+", required=True)
    parser.add_argument("--n", type=int, default=1000)
    args = parser.parse_args()
    results = [parity(r, args.n) for r in args.runs]
    for r in results:
        print(r)
    write_results("onnx_parity", {"runs": results})


if __name__ == "__main__":
    main()
