"""Take certified models to where detectors run: ONNX graphs that certify, and VNN-LIB properties.

* :func:`to_onnx` — one ONNX graph: input ``x`` (N, *input_shape) float32 raw inputs; outputs
  ``score`` (N,), ``flagged`` (N,) bool and ``radius_l1``/``radius_l2``/``radius_linf`` (N,)
  float32 in raw input units, computed in the graph with the library's rounding guard.
* :func:`to_vnnlib` — a VNN-COMP benchmark folder: the score graph, one ℓ∞ box property per
  certified flagged input (expected verdict ``unsat``), ``instances.csv`` and the per-norm radii.

Needs the ``asymcert[export]`` extra (onnx, onnxruntime); see docs/deploy.md.
"""

from asymcert.export.onnx import (
    OPSET,
    ExportDependencyError,
    ExportError,
    certifying_graph,
    output_names,
    radius_name,
    to_onnx,
)
from asymcert.export.run import export_run
from asymcert.export.vnnlib import to_vnnlib

__all__ = [
    "OPSET",
    "ExportDependencyError",
    "ExportError",
    "certifying_graph",
    "export_run",
    "output_names",
    "radius_name",
    "to_onnx",
    "to_vnnlib",
]
