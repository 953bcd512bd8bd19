"""What the backward weight bounds are worth: threat-model certificates of runs with and without them.

    python benchmarks/bench_threat_bounds.py RUN [RUN ...] [--radii 0.5,1,2] [--out results/threat_bounds.json]

For each run folder: certify its test split under the run's own threat model at ℓ1, once as the
library does (φ's weight bounds chained backwards, :func:`asymcert.nn.feature_maps.coordinate_weights`)
and once with them switched off, so that every copy's slope interval is summed on its own (the bound
before session 12, :func:`asymcert.certify.threat_model.harm_coefficients`). Prints and writes the
certified accuracy of the test inputs of the sensitive class at ``--radii`` and the median radius of
the correctly flagged ones, both ways. Both are sound; the second is never larger.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from pathlib import Path
from typing import Any

import torch
from seed_table import sensitive_certified  # benchmarks/seed_table.py

import asymcert
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model

threat_model_module = importlib.import_module("asymcert.certify.threat_model")


def certified(run: str, radii: list[float], weight_bounds: bool) -> dict[str, Any]:
    """Certified accuracy (share of the test split's sensitive inputs) at ``radii`` and the median ℓ1 radius."""
    model = asymcert.load(run, device="cpu")
    data = run_data(run)
    tm = run_threat_model(read_run_record(run))
    if tm is None:
        raise ValueError("the run has no threat model")
    original = threat_model_module.coordinate_weights
    if not weight_bounds:
        threat_model_module.coordinate_weights = lambda *args: None
    try:
        cert = asymcert.certify(model, data.test.x, norms=(1,), threat_model=tm)
    finally:
        threat_model_module.coordinate_weights = original
    r, y = cert.radii[1.0], data.test.y
    shares = sensitive_certified(cert.predicted, r, y, radii)
    return {
        "certified": {f"{t:g}": share for t, share in zip(radii, shares)},
        "median_radius": float(r[(cert.predicted == y) & (y == 1)].median()),
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--radii", default="0.5,1,2")
    ap.add_argument("--out", default=None, help="JSON file to write (default: print only)")
    args = ap.parse_args()
    radii = [float(t) for t in args.radii.split(",") if t.strip()]
    rows = {}
    for run in args.runs:
        try:
            rows[run] = {way: certified(run, radii, way == "weight_bounds") for way in ("weight_bounds", "summed")}
        except (AsymcertError, OSError, ValueError, KeyError) as exc:
            sys.exit(f"{run}: {exc}")
        both = rows[run]
        print(
            run,
            " | ".join(
                f"{way}: "
                + " / ".join(f"{100 * v:.1f}" for v in both[way]["certified"].values())
                + f" % (median {both[way]['median_radius']:.3f})"
                for way in both
            ),
        )
    if args.out:
        Path(args.out).write_text(json.dumps({"norm": "l1", "radii": radii, "runs": rows}, indent=1) + "\n")


if __name__ == "__main__":
    torch.set_num_threads(1)
    main()
