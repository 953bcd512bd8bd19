"""Train an ℓ∞-distance net on 10-class Fashion-MNIST and report clean / PGD / certified accuracy.

The paper's setting (Zhang et al. 2021, Fashion-MNIST ε = 0.1): 5 distance layers of width 5120,
400 epochs, reported 87.91 / 79.64 / 77.48 % (clean / PGD / certified). This script trains the
same depth at width 1024 (4 hidden layers + the output layer) with the v2 recipe
(``asymcert.train.linf_recipe``), on CPU, for as many epochs as asked.

Usage (the full-length run; hours on a CPU)::

    OMP_NUM_THREADS=1 python benchmarks/bench_linf_train.py --epochs 100 --out runs/linf-fmnist-100

Short run::

    OMP_NUM_THREADS=1 python benchmarks/bench_linf_train.py --epochs 7 --out runs/linf-fmnist-7

Writes a run folder (``asymcert.load(OUT)`` / ``asymcert report OUT`` work on it) and
``benchmarks/results/linf_train.json``: machine, load averages, per-epoch seconds and p range,
clean / PGD / certified accuracy at ε, and the paper's numbers. PGD: ℓ∞, ``--pgd-steps`` (100)
steps of size ε/4 from a uniform random start, cross-entropy loss, an input counts as robust only
if no iterate is misclassified; run on the first ``--pgd-limit`` test inputs (it costs 100
forward/backward passes per input).
"""

from __future__ import annotations

import argparse
import json
import math
import os
import platform
import sys
import time
from pathlib import Path

import torch
import torch.nn.functional as F
from common import machine  # benchmarks/common.py

PAPER = {
    "clean": 87.91,
    "pgd": 79.64,
    "certified": 77.48,
    "source": "Zhang et al. 2021, ℓ∞-dist Net, Fashion-MNIST ε = 0.1 (5 layers × 5120, 400 epochs)",
}


def pgd_robust(
    model: torch.nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    eps: float,
    steps: int,
    step_size: float,
    low: float,
    high: float,
    generator: torch.Generator,
) -> torch.Tensor:
    """ℓ∞ PGD on the cross-entropy; (N,) bool, True where no iterate (nor the start) is misclassified."""
    delta = (torch.rand(x.shape, generator=generator) * 2 - 1) * eps
    xa = (x + delta).clamp(low, high)
    robust = torch.ones(len(x), dtype=torch.bool)
    for _ in range(steps):
        xa.requires_grad_(True)
        logits = model(xa)
        robust &= logits.argmax(1).detach() == y
        (g,) = torch.autograd.grad(F.cross_entropy(logits, y, reduction="sum"), xa)
        xa = xa.detach() + step_size * g.sign()
        xa = torch.minimum(torch.maximum(xa, x - eps), x + eps).clamp(low, high)
    with torch.no_grad():
        robust &= model(xa).argmax(1) == y
    return robust


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--epochs", type=int, default=7)
    ap.add_argument("--widths", default="1024,1024,1024,1024", help="hidden widths (output layer added)")
    ap.add_argument("--mlp-head", type=int, default=None, help="hidden size of the +MLP head (default: none)")
    ap.add_argument("--batch-size", type=int, default=512)
    ap.add_argument("--eps", type=float, default=0.1, help="test ε (raw pixel units)")
    ap.add_argument("--eps-train", type=float, default=0.3, help="training ε (raw units)")
    ap.add_argument("--phases", default=f"{25 / 450},{400 / 450}", help="p growth start,end as fractions")
    ap.add_argument("--lambda", dest="lam", default="0.05,0.0002", help="λ start,end")
    ap.add_argument("--lr", type=float, default=0.03)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--pgd-steps", type=int, default=100)
    ap.add_argument("--pgd-limit", type=int, default=1000, help="PGD on the first N test inputs")
    ap.add_argument("--train-limit", type=int, default=None, help="use only N training images (smoke runs)")
    ap.add_argument("--test-limit", type=int, default=None, help="certify only N test images (smoke runs)")
    ap.add_argument("--data-dir", default=None)
    ap.add_argument("--out", default="runs/linf-fmnist")
    ap.add_argument("--results", default=str(Path(__file__).with_name("results") / "linf_train.json"))
    args = ap.parse_args()

    import asymcert
    from asymcert.data import get_task
    from asymcert.pipeline import certify_run, train_run
    from asymcert.report.writer import write_report
    from asymcert.train.config import TrainConfig
    from asymcert.train.linf_recipe import LINF_TRAIN_DEFAULTS, LinfDistRecipe

    t_start = time.time()
    load_before = os.getloadavg()
    task = get_task("fashion-mnist")
    data = task.load(Path(args.data_dir) if args.data_dir else None)
    if args.train_limit:
        data.train = data.train.subset(slice(0, args.train_limit))
    widths = [int(w) for w in args.widths.split(",")]
    phases = [float(v) for v in args.phases.split(",")]
    lam = [float(v) for v in args.lam.split(",")]
    extra = {
        **LINF_TRAIN_DEFAULTS["extra"],
        "eps_eval": args.eps,
        "eps_train": args.eps_train,
        "p_phases": phases,
        "lambda": lam,
    }
    train = {
        **LINF_TRAIN_DEFAULTS,
        "epochs": args.epochs,
        "batch_size": args.batch_size,
        "lr": args.lr,
        "seed": args.seed,
        "device": "cpu",
        "extra": extra,
    }
    model_cfg = {
        "kind": "linf-dist",
        "widths": widths,
        "num_classes": 10,
        "binary": False,
        "mlp_head": args.mlp_head,
        "identity_init": True,
    }
    loads: dict[int, list[float]] = {}  # epoch → load average when it ended (epochs of this process only)

    def log(msg: str) -> None:
        load = list(os.getloadavg())
        if msg.startswith("epoch "):
            loads[int(msg.split()[1].split("/")[0])] = load
        print(time.strftime("%H:%M:%S"), msg, "| load", " ".join(f"{v:.1f}" for v in load), flush=True)

    out = Path(args.out)
    run = train_run(
        {"name": "fashion-mnist"},
        out,
        train_overrides=train,
        model_overrides=model_cfg,
        data=data,
        progress=False,
        log=log,
    )
    history = json.loads((out / "history.json").read_text())
    recipe = LinfDistRecipe(TrainConfig.from_dict(train))
    epochs = []
    for h in history:
        e = h["epoch"]
        p0, p1 = recipe.p_at((e - 1) / args.epochs), recipe.p_at((e - 1e-9) / args.epochs)
        epochs.append(
            {
                "epoch": e,
                "seconds": round(h["seconds"], 1),
                "p_start": p0 if math.isfinite(p0) else "inf",
                "p_end": p1 if math.isfinite(p1) else "inf",
                "loss": h.get("loss"),
                "val_accuracy": h.get("val_accuracy"),
                "val_certified": h.get("val_certified"),
                "load_after": loads.get(e),
            }
        )
        print(epochs[-1], flush=True)

    t0 = time.perf_counter()
    cert = certify_run(out, limit=args.test_limit, data=data, progress=False)
    cert_s = time.perf_counter() - t0
    results = write_report(out)
    y = data.test.y[: len(cert)]
    correct = cert.predicted.cpu() == y
    r = cert.radius(math.inf).cpu()
    clean = float(correct.double().mean())
    certified = float((correct & (r >= args.eps)).double().mean())

    model = asymcert.load(out)
    for p in model.parameters():
        p.requires_grad_(False)
    n_pgd = min(args.pgd_limit, len(cert))
    gen = torch.Generator().manual_seed(0)
    t0 = time.perf_counter()
    robust = []
    for i in range(0, n_pgd, 500):
        xb, yb = data.test.x[i : min(n_pgd, i + 500)], data.test.y[i : min(n_pgd, i + 500)]
        robust.append(pgd_robust(model, xb, yb, args.eps, args.pgd_steps, args.eps / 4, 0.0, 1.0, gen))
    pgd_s = time.perf_counter() - t0
    robust_t = torch.cat(robust) if robust else torch.zeros(0, dtype=torch.bool)
    # sanity: a certified input must never be broken by PGD
    cert_sub = (correct & (r >= args.eps))[:n_pgd]
    violations = int((cert_sub & ~robust_t).sum())

    per_epoch = [e["seconds"] for e in epochs]
    out_json = {
        "setting": {
            "task": "fashion-mnist",
            "eps": args.eps,
            "eps_train": args.eps_train,
            "widths": widths,
            "distance_layers": len(widths) + (0 if args.mlp_head else 1),
            "mlp_head": args.mlp_head,
            "epochs": args.epochs,
            "batch_size": args.batch_size,
            "lr": args.lr,
            "p_phases": phases,
            "lambda": lam,
            "train_images": len(data.train),
            "test_images": len(cert),
            "pgd": {
                "steps": args.pgd_steps,
                "step_size": args.eps / 4,
                "inputs": n_pgd,
                "restarts": 1,
                "random_start": True,
            },
            "command": "OMP_NUM_THREADS="
            + os.environ.get("OMP_NUM_THREADS", "?")
            + " python "
            + " ".join(["benchmarks/bench_linf_train.py"] + sys.argv[1:]),
        },
        "machine": {
            "cpu_model": machine()["cpu"],
            "logical_cpus": os.cpu_count(),
            "torch_threads": torch.get_num_threads(),
            "torch": torch.__version__,
            "python": platform.python_version(),
            "platform": platform.platform(),
            "loadavg_before": list(load_before),
            "loadavg_after": list(os.getloadavg()),
        },
        "training": {
            "seconds": sum(h["seconds"] for h in history),  # all epochs, resumed runs included
            "seconds_this_process": (run.training or {})["seconds"],
            "best_epoch": (run.training or {})["best"]["epoch"],
            "per_epoch_seconds": per_epoch,
            "epochs": epochs,
        },
        "results_percent": {
            "clean": round(100 * clean, 2),
            "pgd": round(100 * float(robust_t.double().mean()), 2) if n_pgd else None,
            "certified": round(100 * certified, 2),
            "clean_on_pgd_subset": round(100 * float(correct[:n_pgd].double().mean()), 2),
            "certified_on_pgd_subset": round(100 * float(cert_sub.double().mean()), 2),
        },
        "certified_but_pgd_broken": violations,
        "certify_seconds": cert_s,
        "pgd_seconds": pgd_s,
        "paper_percent": PAPER,
        "run_dir": str(out),
        "report": results.to_dict().get("certified_accuracy") if results is not None else None,
        "wall_seconds": time.time() - t_start,
    }
    Path(args.results).parent.mkdir(parents=True, exist_ok=True)
    Path(args.results).write_text(json.dumps(out_json, indent=1))
    print(json.dumps(out_json["results_percent"]), "paper", PAPER)


if __name__ == "__main__":
    main()
