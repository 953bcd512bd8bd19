"""How loose pair-min's ℓ∞ certificates are: exact-radius brackets on the first correctly flagged test inputs.

For a run whose φ has pair-min (SpamBase's ``--preset pairs``) the mixed-integer programs of
:mod:`asymcert.certify.exact_linf` get a binary per overlapping pair and rarely close within a time
limit; what they do give is the solver's lower end (no flip found below it) and, where one was found, a
verified flip. This prints and writes, per input, the closed-form and reach radii and the bracket, and
the ratios lower end / closed form (how much at least the certificate leaves on the table, by the
solver's word) and reach / closed form.

    python benchmarks/exact_linf_pairs.py RUN [--limit 20] [--time-limit 20] [--out results/exact_linf_pairs.json]
"""

from __future__ import annotations

import argparse
import json
import math
from pathlib import Path

import torch
from common import RESULTS, positive_int  # benchmarks/common.py

import asymcert
from asymcert.certify.exact_linf import exact_linf_radii
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model


def _quartiles(values: torch.Tensor) -> list[float]:
    finite = values[torch.isfinite(values)]
    if not finite.numel():
        return []
    return [float(finite.quantile(q)) for q in (0.25, 0.5, 0.75)]


def figures(run: str, limit: int, time_limit: float) -> dict[str, object]:
    """Closed form, reach and exact brackets (ℓ∞, the run's threat model) of the first ``limit`` test spam."""
    model = asymcert.load(run, device="cpu").eval()
    tm = run_threat_model(read_run_record(run))
    test = run_data(run).test
    cert = asymcert.certify(model, test.x, norms=(math.inf,), threat_model=tm)
    correct = (cert.predicted == test.y) & (test.y == 1)
    x, closed = test.x[correct][:limit], cert.radii[math.inf][correct][:limit].double()
    reach = asymcert.certify(model, x, norms=(math.inf,), threat_model=tm, reach=True).radii[math.inf].double()
    found = exact_linf_radii(model, x, tm, time_limit=time_limit)
    positive = closed > 0
    return {
        "run": run,
        "n": int(x.shape[0]),
        "time_limit": time_limit,
        "seconds": found.seconds,
        "closed_brackets": sum(s in ("exact", "no flip") for s in found.status),
        "flips_found": int(torch.isfinite(found.hi).sum()),
        "lo_over_closed_quartiles": _quartiles((found.lo / closed)[positive]),
        "reach_over_closed_quartiles": _quartiles((reach / closed)[positive]),
        "hi_over_closed_quartiles": _quartiles((found.hi / closed)[positive]),
        "inputs": {
            "closed": closed.tolist(),
            "reach": reach.tolist(),
            "lo": found.lo.tolist(),
            "hi": found.hi.tolist(),
        },
        "status": found.status,
    }


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("run")
    ap.add_argument("--limit", type=positive_int, default=20)
    ap.add_argument("--time-limit", type=float, default=20.0)
    ap.add_argument("--out", default=str(RESULTS / "exact_linf_pairs.json"))
    args = ap.parse_args()
    try:
        out = figures(args.run, args.limit, args.time_limit)
    except (AsymcertError, OSError) as exc:
        raise SystemExit(f"{args.run}: {exc}") from None
    print(json.dumps({k: v for k, v in out.items() if k not in ("inputs", "status")}))
    Path(args.out).write_text(json.dumps(out, indent=1) + "\n")


if __name__ == "__main__":
    main()
