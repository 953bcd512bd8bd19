"""How far past the float guard's measured factor 8 a sum built to lose its terms takes float32 (README, "Float
safety").

The layout: one term −1.0 first, then K − 1 terms t = 2.9e-8, below half an ulp of 1.0 (2⁻²⁴ ≈ 5.96e-8), so a
sum that adds them one by one to the running total drops each. A feature-convex model with that score: φ = identity on
K features, an ICNN with one hidden unit whose weight is 0, the last pass-through row [−1, 1, …, 1], at
x = [1, t, …, t]. For each K: the float32 error of the model's own forward pass (PyTorch) and of onnxruntime's Gemm on
the same row, in units of eps32·A (A = Σ|terms| = 1 + (K − 1)·t, the magnitude the guard is a multiple of), against
the exact sum in rational arithmetic. Then a balance that puts the exact score at half the float32 error above 0:
the library certifies x as flagged (its reference is float64) with an ℓ∞ radius, while the float32 model's own score
at x is below 0.

    python benchmarks/summation_loss.py        # writes benchmarks/results/summation_loss.json (one run)
"""

from __future__ import annotations

import math
import tempfile
from fractions import Fraction
from pathlib import Path

import numpy as np
import torch
from common import write_results

import asymcert
from asymcert.models import build_model

EPS32 = float(torch.finfo(torch.float32).eps)
T = float(np.float32(2.9e-8))


def lossy_model(k: int, balance: float = 0.0) -> torch.nn.Module:
    """The module docstring's model on k features (float32, eval, validated)."""
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [k],
            "feature_map": [],
            "convex": {"kind": "icnn", "widths": [1], "batch_norm": False},
        }
    ).eval()
    with torch.no_grad():
        for p in model.convex.parameters():
            p.zero_()
        model.convex.passthrough[-1].weight.fill_(1.0)
        model.convex.passthrough[-1].weight[0, 0] = -1.0
        model.set_balance(balance)
    model.validate()
    return model


def lossy_input(k: int) -> torch.Tensor:
    """x = [1, t, …, t] (1, k) float32."""
    x = torch.full((1, k), T)
    x[0, 0] = 1.0
    return x


def exact_score(k: int, balance: float = 0.0) -> Fraction:
    """The model's score at x in rational arithmetic: −1 + (k − 1)·t + balance."""
    return Fraction(-1) + (k - 1) * Fraction(T) + Fraction(balance)


def _onnxruntime_error(k: int) -> float | None:
    """onnxruntime's float32 Gemm of the row, minus the exact sum, in eps32·A (None without onnx/onnxruntime)."""
    try:
        import onnx
        import onnxruntime as ort
        from onnx import TensorProto, helper
    except ImportError:
        return None
    w = np.full((1, k), 1.0, np.float32)
    w[0, 0] = -1.0
    x = lossy_input(k).numpy()
    graph = helper.make_graph(
        [helper.make_node("Gemm", ["x", "W"], ["y"], transB=1)],
        "row",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", k])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 1])],
        [helper.make_tensor("W", TensorProto.FLOAT, w.shape, w.flatten().tolist())],
    )
    with tempfile.TemporaryDirectory() as folder:
        path = Path(folder) / "row.onnx"
        onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]), path)
        y = float(ort.InferenceSession(str(path)).run(None, {"x": x})[0][0, 0])
    return float((Fraction(y) - exact_score(k)) / Fraction(EPS32 * (1 + (k - 1) * T)))


def one_size(k: int) -> dict[str, object]:
    """The errors and the library's verdict for K = k (module docstring)."""
    magnitude = 1 + (k - 1) * T
    x = lossy_input(k)
    score32 = float(lossy_model(k)(x)[0])
    error = float((Fraction(score32) - exact_score(k)) / Fraction(EPS32 * magnitude))
    # the exact score at half the float32 error's size above 0: flagged in exact arithmetic, not in float32
    balance = float(np.float32(-float(exact_score(k)) - error * EPS32 * magnitude / 2))
    shifted = lossy_model(k, balance)
    cert = asymcert.certify(shifted, x, norms=(math.inf,))
    return {
        "K": k,
        "torch_error_eps_A": round(error, 2),
        "onnxruntime_error_eps_A": None if (e := _onnxruntime_error(k)) is None else round(e, 2),
        "shifted_exact_score": float(exact_score(k, balance)),
        "shifted_float32_score": float(shifted(x)[0]),
        "shifted_certified_linf": float(cert.radii[math.inf][0]),
    }


def main() -> None:
    rows = [one_size(k) for k in (64, 512, 4096, 16384)]
    for row in rows:
        print(row)
    print(write_results("summation_loss", {"rows": rows, "guard_factor": 8.0}))


if __name__ == "__main__":
    main()
