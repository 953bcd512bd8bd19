"""What the reach-aware threat-model certificate (``certify(..., reach=True)``) adds over the closed form.

    python benchmarks/reach_gain.py RUN [RUN ...] [--out results/reach_gain.json]

Per run (under its own threat model, on its test split): the certified accuracy of the sensitive class
at the task's report radii with and without ``reach``, the median radius of the correctly flagged
inputs, the certification time of both, and a PGD check of the reach radii (the threat model's own
attack, 3 restarts × 100 steps, inside 0.999 × each radius: flips counted, none expected). A missing or
unreadable run: one line and exit 1.
"""

from __future__ import annotations

import math
import time

import torch
from common import per_run_main  # benchmarks/common.py
from seed_table import sensitive_certified  # benchmarks/seed_table.py

import asymcert
from asymcert.certify.threat_attack import threat_attack
from asymcert.errors import AsymcertError
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model

NORMS = (1.0, 2.0, math.inf)


def _timed(model: torch.nn.Module, x: torch.Tensor, tm: object, reach: bool) -> tuple[asymcert.Certificate, float]:
    t0 = time.perf_counter()
    cert = asymcert.certify(model, x, norms=NORMS, threat_model=tm, reach=reach)
    return cert, time.perf_counter() - t0


def _flips(model: torch.nn.Module, x: torch.Tensor, cert: asymcert.Certificate, tm: object, p: float) -> int:
    """Flips PGD finds inside 0.999 × the radius of every flagged input with a positive finite radius."""
    r = cert.radii[p]
    rows = cert.sensitive & (r > 0) & torch.isfinite(r)
    gen = torch.Generator().manual_seed(0)
    adv = threat_attack(model, x[rows], r[rows] * 0.999, p, tm, steps=100, restarts=3, generator=gen)
    with torch.no_grad():
        return int((model(adv) <= 0).sum())


def run_figures(run: str) -> dict[str, object]:
    """The figures of one run folder (see the module docstring)."""
    model = asymcert.load(run, device="cpu").eval()
    record = read_run_record(run)
    tm = run_threat_model(record)
    if tm is None:
        raise AsymcertError(f"{run}: the run has no threat model; reach only applies under one")
    test = run_data(run).test
    closed, t_closed = _timed(model, test.x, tm, False)
    reach, t_reach = _timed(model, test.x, tm, True)
    radii = record.report_radii or {}
    out: dict[str, object] = {"run": run, "seconds_closed_form": t_closed, "seconds_reach": t_reach, "norms": {}}
    for p in NORMS:
        label = "linf" if math.isinf(p) else f"l{p:g}"
        levels = [float(v) for v in radii.get(label, [])]
        correct = (closed.predicted == test.y) & (test.y == 1)
        out["norms"][label] = {  # type: ignore[index]
            "radii": levels,
            "closed_form": sensitive_certified(closed.predicted, closed.radii[p], test.y, levels),
            "reach": sensitive_certified(reach.predicted, reach.radii[p], test.y, levels),
            "median_closed_form": float(closed.radii[p][correct].median()),
            "median_reach": float(reach.radii[p][correct].median()),
            "below_closed_form": int((reach.radii[p] < closed.radii[p]).sum()),
            "pgd_flips_inside_reach": _flips(model, test.x, reach, tm, p),
        }
    return out


def main() -> None:
    per_run_main(__doc__ or "", "reach_gain.json", run_figures)


if __name__ == "__main__":
    main()
