"""Training and certification throughput per model family, and the Jacobian-regulariser speed-up.

Training step of the authors' Fashion-MNIST convex conv net with the Jacobian regulariser, two ways,
same model, data and machine, one process:
  * authors' way: `torch.autograd.functional.jacobian(g, φ(x), create_graph=True)` builds a
    batch × batch × features Jacobian, then its Frobenius norm;
  * asymcert: one backward pass of the summed score with `create_graph=True` (every input's own
    gradient; the off-diagonal blocks are zero in eval and are never built).
Also: training samples/s and certification inputs/s of each registered model family available.

    python benchmarks/bench_train.py [--steps 20] [--batch 64]

Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import json
import math
import time
from pathlib import Path

import torch
import torch.nn.functional as F

from machine import machine  # benchmarks/machine.py

import asymcert
from asymcert.models import build_model
from asymcert.train.regularizers import jacobian_penalty

FASHION_CONV = {"kind": "feature-convex", "input_shape": [1, 28, 28], "feature_map": [{"kind": "shift"}],
                "convex": {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2}}
FAMILIES = {
    "feature-convex conv (Fashion)": FASHION_CONV,
    "feature-convex icnn 200-50": {**FASHION_CONV, "convex": {"kind": "icnn", "widths": [200, 50]}},
}


def authors_step(model, opt, x, y, lam):
    features = model.features(x)
    score = model.score_from_features(features)
    jac = torch.autograd.functional.jacobian(lambda f: model.score_from_features(f), features, create_graph=True)
    loss = F.binary_cross_entropy_with_logits(score, y.float()) + lam * torch.norm(jac)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.project()


def our_step(model, opt, x, y, lam):
    features = model.features(x).detach().requires_grad_(True)
    score = model.score_from_features(features)
    loss = F.binary_cross_entropy_with_logits(score, y.float()) + lam * jacobian_penalty(score, features)
    opt.zero_grad()
    loss.backward()
    opt.step()
    model.project()


def rate(step, model, x, y, steps, lam=0.01):
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    model.train()
    step(model, opt, x, y, lam)  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step(model, opt, x, y, lam)
    return steps * x.shape[0] / (time.perf_counter() - t0)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--batch", type=int, default=64)
    args = ap.parse_args()
    torch.manual_seed(0)
    x = torch.rand(args.batch, 1, 28, 28)
    y = torch.randint(0, 2, (args.batch,))
    out = {"machine": machine(), "batch": args.batch, "steps": args.steps}
    model = build_model(FASHION_CONV)
    authors = rate(authors_step, model, x, y, max(2, args.steps // 4))
    ours = rate(our_step, build_model(FASHION_CONV), x, y, args.steps)
    out["jacobian_reg_training"] = {"authors_samples_per_s": authors, "asymcert_samples_per_s": ours,
                                    "speedup": ours / authors}
    print(f"Fashion conv net + Jacobian reg: authors' {authors:.1f} samples/s, asymcert {ours:.1f} samples/s "
          f"({ours / authors:.1f}x)")
    out["families"] = {}
    xc = torch.rand(1000, 1, 28, 28)
    for name, cfg in FAMILIES.items():
        m = build_model(cfg)
        train_rate = rate(our_step, m, x, y, args.steps, lam=0.0)
        m.eval()
        asymcert.certify(m, xc[:100])
        t0 = time.perf_counter()
        asymcert.certify(m, xc, norms=(1, 2, math.inf))
        cert_rate = len(xc) / (time.perf_counter() - t0)
        out["families"][name] = {"train_samples_per_s": train_rate, "certify_inputs_per_s": cert_rate}
        print(f"{name}: train {train_rate:.0f} samples/s, certify {cert_rate:.0f} inputs/s")
    path = Path(__file__).parent / "results" / "train.json"
    path.write_text(json.dumps(out, indent=1))
    print(f"wrote {path}")


if __name__ == "__main__":
    main()
