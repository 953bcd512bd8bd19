"""How far the ℓ∞ threat-model certificates are from the exact radius, on SpamBase-style models.

Per run (under its own threat model, on its test split): the exact ℓ∞ radius of every correctly flagged
test input, bracketed by mixed-integer programs (:func:`asymcert.certify.exact_linf.exact_linf_radii`),
next to the closed-form and the reach-aware certificate. Reports the share of the test spam whose exact
radius, closed form and reach radius reach each of the run's ℓ∞ report radii (the exact column is the
true robust accuracy of the model under the threat model, the ceiling any certificate could reach), the
median ratio certificate / exact, the brackets that stayed open, and the seconds of each.

    python benchmarks/exact_linf_gap.py RUN [RUN ...] [--out results/exact_linf_gap.json]
"""

from __future__ import annotations

import math
import time

import torch
from common import per_run_main  # benchmarks/common.py
from seed_table import sensitive_certified  # benchmarks/seed_table.py

import asymcert
from asymcert.certify.exact_linf import exact_linf_radii
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model

INF = (math.inf,)


def run_figures(run: str) -> dict[str, object]:
    """The figures of one run folder (see the module docstring)."""
    model = asymcert.load(run, device="cpu").eval()
    record = read_run_record(run)
    tm = run_threat_model(record)
    test = run_data(run).test
    certs, seconds = {}, {}
    for name, reach in (("closed_form", False), ("reach", True)):
        t0 = time.perf_counter()
        certs[name] = asymcert.certify(model, test.x, norms=INF, threat_model=tm, reach=reach)
        seconds[name] = time.perf_counter() - t0
    correct = (certs["closed_form"].predicted == test.y) & (test.y == 1)
    found = exact_linf_radii(model, test.x[correct], tm, time_limit=60.0)
    seconds["exact"] = found.seconds
    exact = torch.zeros(len(test.x), dtype=torch.float64)
    exact[correct] = found.hi
    levels = [float(v) for v in (record.report_radii or {}).get("linf", [])]
    shares = {
        name: sensitive_certified(certs["closed_form"].predicted, r, test.y, levels)
        for name, r in (("exact", exact), *((k, c.radii[math.inf].double()) for k, c in certs.items()))
    }
    ratios = {k: (c.radii[math.inf].double()[correct] / found.hi).median().item() for k, c in certs.items()}
    open_brackets = sum(s not in ("exact", "no flip") for s in found.status)
    return {
        "run": run,
        "units": tm.units() if tm is not None else "raw input units",
        "radii": levels,
        "certified_share": shares,
        "median_over_exact": ratios,
        "median_exact": float(found.hi[torch.isfinite(found.hi)].median()),
        "n_spam_correct": int(correct.sum()),
        "open_brackets": open_brackets,
        "above_exact": {k: int((c.radii[math.inf].double()[correct] > found.hi).sum()) for k, c in certs.items()},
        "seconds": seconds,
    }


def main() -> None:
    per_run_main(__doc__ or "", "exact_linf_gap.json", run_figures)


if __name__ == "__main__":
    main()
