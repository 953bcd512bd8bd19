"""What a threat model's constraints and domain are worth, measured with exact radii.

For the flagged test inputs of a run with an affine φ (exact radii need one) and a threat model, in
the threat model's units and per norm:

* ``closed form``: the certified radius under the threat model (`asymcert.certify(..., threat_model=)`);
* ``exact, threat model``: the exact distance to the accepted region over the moves it allows;
* ``exact, scales only``: the exact distance with the same scales but no immutable / one-sided
  features and no domain (what an attacker free to move every feature either way needs);

and the ratios closed form / exact (tightness) and exact / exact-scales-only (the constraints' worth).

    python benchmarks/bench_threat_exact.py --run RUN [--n 200]

Writes benchmarks/results/threat_exact.json.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
from common import machine, write_results  # benchmarks/common.py

import asymcert
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model
from asymcert.threat import ThreatModel


def _quartiles(v: torch.Tensor) -> list[float]:
    v = v[torch.isfinite(v)].double()
    return [round(float(q), 4) for q in torch.quantile(v, torch.tensor([0.25, 0.5, 0.75], dtype=torch.float64))]


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", required=True)
    parser.add_argument("--n", type=int, default=200)
    args = parser.parse_args()
    record = read_run_record(args.run)
    tm = run_threat_model(record)
    if tm is None:
        raise SystemExit("the run has no threat model")
    scales_only = ThreatModel(scale={str(i): float(s) for i, s in enumerate(tm.scale.tolist())}).resolve(
        None, tm.n_features
    )
    model = asymcert.load(args.run)
    x = run_data(args.run).test.x
    flagged = asymcert.certify(model, x, norms=(2,)).sensitive
    x = x[flagged][: args.n]
    out: dict = {"run": args.run, "n_inputs": len(x), "machine": machine(), "norms": {}}
    for p in (1.0, 2.0, math.inf):
        cert = asymcert.certify(model, x, norms=(p,), threat_model=tm).radii[p]
        t0 = time.perf_counter()
        exact_tm = asymcert.exact_radius(model, x, p, threat_model=tm)
        seconds = time.perf_counter() - t0
        exact_free = asymcert.exact_radius(model, x, p, threat_model=scales_only)
        both = (cert > 0) & torch.isfinite(exact_tm) & (exact_tm > 0) & torch.isfinite(exact_free) & (exact_free > 0)
        out["norms"]["linf" if math.isinf(p) else f"l{p:g}"] = {
            "closed_form_q": _quartiles(cert[both]),
            "exact_tm_q": _quartiles(exact_tm[both]),
            "exact_scales_only_q": _quartiles(exact_free[both]),
            "tightness_q": _quartiles(cert[both] / exact_tm[both]),
            "constraints_worth_q": _quartiles(exact_tm[both] / exact_free[both]),
            "unreachable_under_tm": int(torch.isinf(exact_tm).sum()),
            "violations": int((cert > exact_tm * (1 + 1e-6)).sum()),
            "exact_seconds_per_input": seconds / max(1, len(x)),
        }
        print(p, out["norms"]["linf" if math.isinf(p) else f"l{p:g}"], flush=True)
    write_results("threat_exact", out)


if __name__ == "__main__":
    main()
