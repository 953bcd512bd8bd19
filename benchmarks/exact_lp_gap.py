"""How far the ℓ1 / ℓ2 threat-model certificates, and the attacks that judged them, are from the exact radius.

Per run (under its own threat model, on its test split): the exact ℓp radius of the first LIMIT correctly
flagged test inputs (the split is a seeded shuffle, so a random sample), bracketed by mixed-integer
programs (:mod:`asymcert.certify.exact_lp`, TIME_LIMIT seconds and relative tolerance RTOL each), next to
the closed-form and reach-aware certificates and to the smallest flip PGD finds
(:func:`asymcert.audit.attack_upper_bounds`, what ``asymcert audit`` reported as tightness before exact ℓ1 /
ℓ2 radii existed). Reports the share of those inputs whose exact radius (its bracket's lower end: surely
robust; its upper end: not surely broken) and certificates reach each of the run's ℓp report radii, the
median ratios certificate / exact and PGD / exact, the statuses of the brackets, a cross-check (PGD flips
below a bracket's lower end would prove the solver wrong), and the seconds of each.

    python benchmarks/exact_lp_gap.py --norm 1 RUN [RUN ...]   # → results/exact_lp_gap_l1.json
"""

from __future__ import annotations

import argparse
import json
import time
from collections import Counter
from pathlib import Path

import torch
from common import RESULTS  # benchmarks/common.py

import asymcert
from asymcert.audit import attack_upper_bounds
from asymcert.certify.exact_lp import exact_l1_radii, exact_l2_radii
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model

LIMIT = 30  # correctly flagged test inputs per run
TIME_LIMIT = 20.0  # seconds per input
RTOL = 1e-3
SOLVERS = {1.0: exact_l1_radii, 2.0: exact_l2_radii}


def _share(radii: torch.Tensor, levels: list[float]) -> list[float]:
    """Percent of the inputs with radius ≥ r, per r in ``levels``."""
    return [100.0 * float((radii >= r).double().mean()) for r in levels]


def run_figures(run: str, p: float) -> dict[str, object]:
    """The ℓp figures of one run folder (see the module docstring)."""
    model = asymcert.load(run, device="cpu").eval()
    record = read_run_record(run)
    tm = run_threat_model(record)
    test = run_data(run).test
    plain = asymcert.certify(model, test.x, norms=(p,), threat_model=tm)
    x = test.x[(plain.predicted == test.y) & (test.y == 1)][:LIMIT]
    certs, seconds = {}, {}
    for name, reach in (("closed_form", False), ("reach", True)):
        t0 = time.perf_counter()
        certs[name] = asymcert.certify(model, x, norms=(p,), threat_model=tm, reach=reach).radii[p].double()
        seconds[name] = time.perf_counter() - t0
    t0 = time.perf_counter()
    pgd = attack_upper_bounds(model, x, asymcert.certify(model, x, norms=(p,), threat_model=tm), p, threat_model=tm)
    seconds["pgd"] = time.perf_counter() - t0
    found = SOLVERS[p](model, x, tm, time_limit=TIME_LIMIT, rtol=RTOL)
    seconds["exact"] = found.seconds
    levels = [float(v) for v in (record.report_radii or {}).get(f"l{p:g}", [])]
    shares = {"exact_lo": _share(found.lo, levels), "exact_hi": _share(found.hi, levels)}
    shares |= {k: _share(c, levels) for k, c in certs.items()}
    ratios = {k: (c / found.hi).median().item() for k, c in certs.items()}
    return {
        "run": run,
        "norm": p,
        "units": tm.units() if tm is not None else "raw input units",
        "n_inputs": len(x),
        "radii": levels,
        "share_percent": shares,
        "median_over_exact": ratios | {"pgd_flip": (pgd / found.hi).median().item()},
        "median_exact": found.hi.median().item(),
        "max_relative_gap": ((found.hi - found.lo) / found.lo).max().item(),
        "status": dict(Counter(s.split(":")[0] for s in found.status)),
        "above_exact": {k: int((c > found.hi).sum()) for k, c in certs.items()},
        "pgd_below_certificate": int((pgd < certs["closed_form"]).sum()),
        "pgd_below_exact_lo": int((pgd < found.lo * (1 - 1e-6)).sum()),
        "seconds": seconds,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("runs", nargs="+")
    ap.add_argument("--norm", type=float, choices=sorted(SOLVERS), required=True)
    ap.add_argument("--out", default="", help="default: results/exact_lp_gap_l<norm>.json")
    args = ap.parse_args()
    figures = []
    for run in args.runs:
        try:
            figures.append(run_figures(run, args.norm))
        except (AsymcertError, OSError) as exc:
            raise SystemExit(f"{run}: {exc}") from None
        print(json.dumps(figures[-1]), flush=True)
    out = Path(args.out or RESULTS / f"exact_lp_gap_l{args.norm:g}.json")
    out.write_text(json.dumps(figures, indent=1) + "\n")


if __name__ == "__main__":
    main()
