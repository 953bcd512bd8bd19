"""One-vs-rest feature-convex model on 10-class Fashion-MNIST, next to the ℓ∞-distance net.

Reads a certified run folder of ``asymcert run fashion-mnist --model one-vs-rest-convex --out RUN``
(its ``certificates.safetensors`` over the whole test split) and, optionally, the ℓ∞-dist net's run
folder written by ``bench_linf_train.py``; tabulates for both

* clean accuracy;
* certified accuracy at ℓ∞, ℓ2 and ℓ1 radii. One-vs-rest: prediction correct AND the true class
  flagged with radius ≥ r (the class-k flag provably stays; the argmax is NOT certified).
  ℓ∞-dist net: prediction correct with a certified radius ≥ r for the argmax itself (its ℓ∞
  radius is also a valid, loose, ℓ2/ℓ1 radius);
* how many classes flag each test input;

then attacks, on the first ``--pgd-limit`` test inputs, (a) every predicted-and-flagged class
inside (1 − 1e-6)·its radius in ℓ∞, ℓ2 and ℓ1 (PGD on that member's score: any flag removed is a
soundness violation) and (b) the argmax at ℓ∞ ε = ``--eps`` (multiclass PGD), to show how far the
uncertified argmax moves. Writes ``benchmarks/results/one_vs_rest.json``.

Usage::

    OMP_NUM_THREADS=1 python benchmarks/bench_one_vs_rest.py --run runs/fashion-ovr \\
        --linf-run /work/linf_runs/fmnist-6ep --pgd-limit 500
"""

from __future__ import annotations

import argparse
import json
import math
import os
import time
from pathlib import Path

import torch
from common import machine  # benchmarks/common.py

import asymcert
from asymcert.certify.attacks import pgd_attack
from asymcert.certify.one_vs_rest import class_radii_key
from asymcert.pipeline import CERT_FILE, load_certificates, read_run, run_data
from asymcert.report.metrics import certified_accuracy, clean_accuracy

INF = math.inf
RADII = {INF: (0.01, 0.02, 0.04, 0.08, 0.1), 2.0: (0.25, 0.5, 1.0, 2.0), 1.0: (1.0, 2.0, 4.0, 8.0)}
LABEL = {INF: "linf", 2.0: "l2", 1.0: "l1"}


def table(run_dir: Path) -> dict:
    """Clean and certified accuracy (percent) of a certified run folder at :data:`RADII`."""
    cert, labels = load_certificates(run_dir / CERT_FILE)
    out = {
        "method": cert.method,
        "n_inputs": len(cert),
        "clean": round(100 * clean_accuracy(cert, labels), 2),
        "certified": {},
    }
    for p, radii in RADII.items():
        acc = certified_accuracy(cert, labels, p, torch.tensor(radii, dtype=torch.float64))
        out["certified"][LABEL[p]] = {f"{r:g}": round(100 * float(a), 2) for r, a in zip(radii, acc)}
    if "flags" in cert.extra:
        flags = cert.extra["flags"].bool()
        n = flags.sum(1)
        out["flags_percent"] = {
            "none": round(100 * float((n == 0).double().mean()), 2),
            "one": round(100 * float((n == 1).double().mean()), 2),
            "several": round(100 * float((n > 1).double().mean()), 2),
            "true_class_flagged": round(100 * float(flags.gather(1, labels[:, None]).double().mean()), 2),
        }
        out["median_radius_correct_flagged"] = {}
        ok = (cert.predicted == labels) & cert.extra["predicted_flagged"].bool()
        for p in RADII:
            out["median_radius_correct_flagged"][LABEL[p]] = float(cert.radius(p)[ok].median())
    out["certify_seconds"] = cert.seconds
    training = read_run(run_dir).training or {}
    out["training_seconds"] = training.get("seconds")
    out["best_epoch"] = training.get("best", {}).get("epoch")
    return out


def soundness(run_dir: Path, limit: int, steps: int, eps: float) -> dict:
    """PGD inside every predicted-and-flagged class's radius (flag removals = violations) and on the argmax at ε."""
    model = asymcert.load(run_dir)
    data = run_data(run_dir)
    x, y = data.test.x[:limit], data.test.y[:limit]
    cert = asymcert.certify(model, x, norms=tuple(RADII))
    gen = torch.Generator().manual_seed(0)
    out: dict = {"inputs": len(x), "steps": steps, "restarts": 2, "violations": {}, "attacked": {}}
    t0 = time.perf_counter()
    pred, flagged = cert.predicted, cert.extra["predicted_flagged"].bool()
    for p in RADII:
        violations = attacked = 0
        for k, member in enumerate(model.members):
            rows = flagged & (pred == k) & (cert.radii[p] > 0) & torch.isfinite(cert.radii[p])
            if not bool(rows.any()):
                continue
            r = cert.extra[class_radii_key(p)][rows, k] * (1 - 1e-6)
            adv = pgd_attack(
                member,
                x[rows],
                r,
                p,
                steps=steps,
                restarts=2,
                targeted_decision=torch.ones(int(rows.sum()), dtype=torch.long),
                input_range=model.input_range,
                generator=gen,
            )
            with torch.no_grad():
                violations += int((model(adv)[:, k] <= 0).sum())
            attacked += int(rows.sum())
        out["violations"][LABEL[p]], out["attacked"][LABEL[p]] = violations, attacked
    adv = pgd_attack(model, x, eps, INF, steps=steps, targeted_decision=y, input_range=model.input_range, generator=gen)
    with torch.no_grad():
        s_adv = model(adv)
    true_flag = cert.extra["flags"].bool().gather(1, y[:, None]).squeeze(1)
    still = s_adv.gather(1, y[:, None]).squeeze(1) > 0
    out["argmax_pgd"] = {
        "eps_linf": eps,
        "clean_percent": round(100 * float((pred == y).double().mean()), 2),
        "pgd_accuracy_percent": round(100 * float((s_adv.argmax(1) == y).double().mean()), 2),
        "note": "PGD on the argmax (margin loss), not on the flag",
        "true_class_flagged_before_percent": round(100 * float(true_flag.double().mean()), 2),
        "true_class_flagged_after_percent": round(100 * float((true_flag & still).double().mean()), 2),
    }
    out["seconds"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("--run", type=Path, required=True, help="certified one-vs-rest run folder")
    ap.add_argument("--linf-run", type=Path, help="certified ℓ∞-dist run folder (10-class Fashion-MNIST)")
    ap.add_argument("--pgd-limit", type=int, default=500)
    ap.add_argument("--pgd-steps", type=int, default=50)
    ap.add_argument("--eps", type=float, default=0.1)
    ap.add_argument("--command", default="", help="the command that trained --run (recorded verbatim)")
    ap.add_argument("--wall-seconds", type=float, help="wall time of that command (recorded)")
    ap.add_argument("--out", type=Path, default=Path(__file__).parent / "results" / "one_vs_rest.json")
    args = ap.parse_args()
    torch.set_num_threads(int(os.environ.get("OMP_NUM_THREADS", "1")))
    load_before = os.getloadavg()
    result = {
        "run_dir": str(args.run),
        "command": args.command,
        "wall_seconds": args.wall_seconds,
        "model": read_run(args.run).model,
        "train": read_run(args.run).train,
        "one_vs_rest": table(args.run),
    }
    if args.linf_run:
        result["linf_dist"] = {"run_dir": str(args.linf_run), **table(args.linf_run)}
    result["soundness"] = soundness(args.run, args.pgd_limit, args.pgd_steps, args.eps)
    result["machine"] = {
        "cpu": machine()["cpu"],
        "logical_cpus": os.cpu_count(),
        "torch": torch.__version__,
        "torch_threads": torch.get_num_threads(),
        "loadavg_before": load_before,
        "loadavg_after": os.getloadavg(),
    }
    result["note"] = (
        "one_vs_rest certified: correct argmax AND true class flagged with radius ≥ r (the flag of the "
        "predicted class provably stays; the argmax is not certified). linf_dist certified: the argmax "
        "itself provably stays within the ℓ∞ radius (used as a loose ℓ2/ℓ1 radius too)."
    )
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=1))
    print(
        json.dumps(
            {k: result[k] for k in ("one_vs_rest", "soundness")}
            | ({"linf_dist": result["linf_dist"]} if "linf_dist" in result else {}),
            indent=1,
        )
    )


if __name__ == "__main__":
    main()
