"""What a larger float-guard factor would cost a run's certificates (README, "Float safety").

The guard reserves FLOAT_GUARD_FACTOR·eps·A for the deployed model's float32 rounding; 8 is measured, not proven. This
certifies a copy of RUN's test split twice, with the factor 8 and with FACTOR (e.g. 2834 ≈ 5,667·u/eps, the worst-case
γ_n multiple of the `make demo` model: its sums have 785 and 4,882 terms), by setting the constant in the modules that
read it (a measurement, not an option of the library), and prints each certified accuracy at the run's report radii
and the ratio of the radii (median, 1%).

    python benchmarks/guard_factor_cost.py RUN FACTOR    # writes benchmarks/results/guard_factor_cost_<RUN name>.json
"""

from __future__ import annotations

import argparse
import importlib
import json
import shutil
import tempfile
from pathlib import Path

import torch
from common import write_results
from safetensors.torch import load_file

from asymcert.cli import main as main_cli

MODULES = ("asymcert.certify.feature_convex", "asymcert.certify.threat_guard", "asymcert.export.graphs")


def _set_factor(factor: float) -> None:
    """FLOAT_GUARD_FACTOR (and rounding_bound's default) = ``factor`` where the guard reads it."""
    for name in MODULES:
        importlib.import_module(name).FLOAT_GUARD_FACTOR = factor
    fc = importlib.import_module(MODULES[0])
    fc.rounding_bound.__defaults__ = (factor, *fc.rounding_bound.__defaults__[1:])


def _certified(run: Path, factor: float, folder: Path) -> tuple[dict[str, object], dict[str, torch.Tensor]]:
    """(certified accuracy per norm and radius, radii (N,) per norm label) of a copy of ``run`` certified by the
    CLI's ``certify`` with the guard factor ``factor``."""
    copy = folder / f"factor_{factor:g}"
    shutil.copytree(run, copy)
    _set_factor(factor)
    main_cli(["certify", str(copy), "--quiet"], standalone_mode=False)
    results = json.loads((copy / "results.json").read_text())
    found = load_file(copy / "certificates.safetensors")
    return results["certified_accuracy"], {k.removeprefix("radius_"): v for k, v in found.items() if "radius" in k}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run", type=Path)
    parser.add_argument("factor", type=float)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        base, base_radii = _certified(args.run, 8.0, Path(tmp))
        other, other_radii = _certified(args.run, args.factor, Path(tmp))
    ratios = {}
    for norm, r in base_radii.items():
        keep = r > 0
        q = (other_radii[norm][keep] / r[keep]).double()
        ratios[norm] = {"median": float(q.median()), "p01": float(q.quantile(0.01))}
    out = {"run": str(args.run), "factor": args.factor, "certified_8": base, "certified_factor": other}
    out["ratios"] = ratios
    print(out)
    print(write_results(f"guard_factor_cost_{args.run.name}", out))


if __name__ == "__main__":
    main()
