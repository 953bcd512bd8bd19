"""Seconds of `certify(..., reach=True)` next to the closed form, on a run's test split and on traffic-like rows.

    python benchmarks/reach_speed.py RUN [--repeats 3] [--save RADII.safetensors] [--compare RADII.safetensors]
    PYTHONPATH=OTHER_CHECKOUT/src python benchmarks/reach_speed.py RUN --save old.safetensors   # another commit

Per call: norms ℓ1, ℓ2, ℓ∞ under the run's threat model, best of REPEATS after a first call. "traffic": the
model and rows of `bench_traffic.py --task-model spambase --threat-model threat_models/traffic57.json`
(seeded model, 4096 standard-normal rows of 57 features). Prints one JSON line: seconds, their ratio, the
number of flagged inputs (what reach's cost grows with), and which checkout of asymcert ran. ``--save`` writes
both sets' reach radii; ``--compare`` sets them against radii saved by another checkout (new / old per
flagged input: median, smallest, how many fell) and attacks every new radius with the threat model's PGD
(5 restarts × 200 steps inside 0.999 × the radius; flips counted, none expected). A missing or unreadable run:
one line and exit 1.
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import time
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file, save_file

import asymcert
from asymcert.certify.threat_attack import threat_attack
from asymcert.data import get_task
from asymcert.errors import AsymcertError
from asymcert.models import build_model
from asymcert.pipeline import run_data
from asymcert.runfolder import read_run_record, run_threat_model
from asymcert.threat import load_threat_model

NORMS = (1.0, 2.0, math.inf)
TRAFFIC_MODEL = Path(__file__).parent / "threat_models" / "traffic57.json"


def _best(model: torch.nn.Module, x: torch.Tensor, tm: object, reach: bool, repeats: int) -> tuple[float, int]:
    """(best seconds of ``repeats`` calls after a first one, flagged inputs)."""
    cert = asymcert.certify(model, x, norms=NORMS, threat_model=tm, reach=reach)
    times = []
    for _ in range(repeats):
        t0 = time.perf_counter()
        asymcert.certify(model, x, norms=NORMS, threat_model=tm, reach=reach)
        times.append(time.perf_counter() - t0)
    return min(times), int(cert.predicted.sum())


def _figures(model: torch.nn.Module, x: torch.Tensor, tm: object, repeats: int) -> dict[str, float | int]:
    closed, flagged = _best(model, x, tm, False, repeats)
    reach, _ = _best(model, x, tm, True, repeats)
    return {
        "inputs": x.shape[0],
        "flagged": flagged,
        "closed_form_s": closed,
        "reach_s": reach,
        "ratio": reach / closed,
    }


def _traffic() -> tuple[torch.nn.Module, torch.Tensor, object]:
    """bench_traffic.py's SpamBase-architecture model (seed 0) and 4096 of its rows, under traffic57.json."""
    task = get_task("spambase")
    torch.manual_seed(0)
    architecture = {"feature_map": task.model["feature_map"], "convex": task.model["convex"]}
    model = build_model({"kind": "feature-convex", "input_shape": [57], **architecture})
    model.feature_map.fit(torch.randn(1000, 57))
    tm = load_threat_model(TRAFFIC_MODEL).resolve([f"f{i}" for i in range(57)], 57)
    rows = torch.tensor(np.random.default_rng(0).normal(size=(4096, 57)), dtype=torch.float32)
    return model.eval(), rows, tm


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--save", help="write both sets' reach radii here (safetensors)")
    parser.add_argument("--compare", help="radii saved by --save with another checkout")
    args = parser.parse_args()
    try:
        model = asymcert.load(args.run, device="cpu").eval()
        tm = run_threat_model(read_run_record(args.run))
        test = run_data(args.run).test.x
    except (AsymcertError, OSError) as err:
        sys.exit(f"{args.run}: {err}")
    out = {"asymcert": str(Path(asymcert.__file__).parent), "run": args.run, "threads": torch.get_num_threads()}
    sets = {"test": (model, test, tm), "traffic": _traffic()}
    radii = {}
    for name, (net, x, threat) in sets.items():
        out[name] = _figures(net, x, threat, args.repeats)
        found = asymcert.certify(net, x, norms=NORMS, threat_model=threat, reach=True).radii
        radii.update({f"{name}_{'linf' if math.isinf(p) else f'l{p:g}'}": r.contiguous() for p, r in found.items()})
    if args.save:
        save_file(radii, args.save)
    if args.compare:
        saved = load_file(args.compare)
        for name, data in sets.items():
            mine = {key[len(name) + 1 :]: r for key, r in radii.items() if key.startswith(name + "_")}
            theirs = {key[len(name) + 1 :]: r for key, r in saved.items() if key.startswith(name + "_")}
            out[f"{name}_against_saved"] = _compare(data, mine, theirs)
    print(json.dumps(out))


def _compare(data: tuple, new: dict[str, torch.Tensor], old: dict[str, torch.Tensor]) -> dict[str, dict]:
    """Per norm (l1, l2, linf): new / old radius over the inputs both certify (median, smallest, how many fell),
    and PGD flips inside 0.999 × every new positive finite radius of (model, rows, threat model) ``data``."""
    model, rows, tm = data
    gen = torch.Generator().manual_seed(0)
    found = {}
    for name, r in new.items():
        both = (old[name] > 0) & torch.isfinite(old[name])
        ratio = r[both] / old[name][both]
        inside = (r > 0) & torch.isfinite(r)
        p = math.inf if name == "linf" else float(name[1:])
        adv = threat_attack(model, rows[inside], r[inside] * 0.999, p, tm, steps=200, restarts=5, generator=gen)
        with torch.no_grad():
            flips = int((model(adv) <= 0).sum())
        found[name] = {
            "compared": int(both.sum()),
            "median_ratio": float(ratio.median()),
            "smallest_ratio": float(ratio.min()),
            "fell": int((ratio < 1).sum()),
            "attacked": int(inside.sum()),
            "pgd_flips": flips,
        }
    return found


if __name__ == "__main__":
    main()
