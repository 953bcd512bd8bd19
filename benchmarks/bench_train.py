"""Training and certification throughput per model family, and the Jacobian-regulariser speed-up.

Training step of the authors' Fashion-MNIST convex conv net with the Jacobian regulariser, two ways,
same model, data and machine, one process:
  * authors' way: `torch.autograd.functional.jacobian(g, φ(x), create_graph=True)` builds a
    batch × batch × features Jacobian, then its Frobenius norm;
  * asymcert: one backward pass of the summed score with `create_graph=True` (every input's own
    gradient; the off-diagonal blocks are zero in eval and are never built).
Also, per model family as `asymcert compare` trains and certifies it (its own recipe: loss, optimizer
step, projection): training samples/s and certification inputs/s (smoothing at n = 1000).

    python benchmarks/bench_train.py [--steps 20] [--batch 64]

Writes benchmarks/results/train.json.
"""

from __future__ import annotations

import argparse
import math
import time

import torch
import torch.nn.functional as F
from common import machine, write_results  # benchmarks/common.py

import asymcert
from asymcert.compare import method_specs
from asymcert.data.builtin import FASHION_SHIRTS_MODEL, FASHION_SHIRTS_TRAIN
from asymcert.data.tasks import Dataset
from asymcert.models import build_model
from asymcert.models.linf_dist_net import task_model_settings
from asymcert.train import TrainConfig
from asymcert.train.loop import make_optimizer
from asymcert.train.recipes import FeatureConvexRecipe, recipe_for

FASHION_CONV = {
    "kind": "feature-convex",
    "input_shape": [1, 28, 28],
    "feature_map": [{"kind": "shift"}],
    "convex": {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2},
}
FAMILY_NAMES = {
    "convex": "feature-convex default (ICNN 4096, margin loss)",
    "linf-dist": "ℓ∞-dist net 4 × 512",
    "smoothing": "smoothing base MLP 256-256 (noise training)",
    "orthogonal": "orthogonal MLP 256 × 3",
    "crown-ibp": "CROWN-IBP CNN 16-32-fc100 (IBP training)",
}
CERTIFY_OPTIONS = {"smoothing": {"n0": 100, "n": 1000}}  # smoothing at n = 1000 (scale the rate by 10 for n = 10^4)


def family_setup(name: str) -> tuple[torch.nn.Module, TrainConfig, dict]:
    """A family's model for binary 28×28 inputs and its CPU training settings, as `asymcert compare` builds them."""
    spec = method_specs()[name]
    base = {"input_shape": [1, 28, 28], "input_range": [0.0, 1.0]}
    if spec.model is None:  # the task's default: fashion-mnist-shirts' model and recipe
        cfg = {**FASHION_SHIRTS_MODEL, **base}
        train = {**FASHION_SHIRTS_TRAIN, **spec.train}
    else:
        cfg = {**spec.model, **base}
        if spec.family == "linf-dist":
            cfg.update(task_model_settings(True, 2))
        train = dict(spec.train)
    certify_options = {k: v for k, v in spec.certify.items() if k != "method"}
    certify_options.update(CERTIFY_OPTIONS.get(name, {}))
    return build_model(cfg), TrainConfig.from_dict(train), {"method": spec.certify.get("method"), **certify_options}


def family_rates(name: str, x: torch.Tensor, y: torch.Tensor, xc: torch.Tensor, steps: int) -> dict:
    """Training samples/s (the family's own recipe: loss, step, projection; mid-schedule, progress 0.5)
    and certification inputs/s."""
    model, config, cert_opts = family_setup(name)
    recipe = recipe_for(model, config)
    recipe.prepare(model, Dataset(x, y))
    opt = make_optimizer(model, config)
    model.train()

    def step() -> None:
        loss, _ = recipe.loss(model, x, y, 0.5)
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        recipe.after_step(model)

    step()  # warm-up
    t0 = time.perf_counter()
    for _ in range(steps):
        step()
    train_rate = steps * x.shape[0] / (time.perf_counter() - t0)
    model.eval()
    if hasattr(model, "set_p"):  # an ℓ∞-dist net trained mid-schedule (finite p) certifies at p = ∞
        model.set_p(math.inf)
    method = cert_opts.pop("method")
    asymcert.certify(model, xc[:16], method=method, **cert_opts)  # warm-up (kernels, caches)
    t0 = time.perf_counter()
    cert = asymcert.certify(model, xc, method=method, **cert_opts)
    cert_rate = len(xc) / (time.perf_counter() - t0)
    return {
        "train_samples_per_s": train_rate,
        "certify_inputs_per_s": cert_rate,
        "certifier": cert.method,
        "certify_options": cert_opts,
        "train_settings": {k: v for k, v in config.to_dict().items() if v},
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
    # exactly the training recipe's loss: BCE pass + a per-input gradient pass (batch statistics held constant)
    loss, _ = FeatureConvexRecipe(TrainConfig(jacobian_reg=lam)).loss(model, x, y, 0.0)
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
    out["jacobian_reg_training"] = {
        "authors_samples_per_s": authors,
        "asymcert_samples_per_s": ours,
        "speedup": ours / authors,
    }
    print(
        f"Fashion conv net + Jacobian reg: authors' {authors:.1f} samples/s, asymcert {ours:.1f} samples/s "
        f"({ours / authors:.1f}x)"
    )
    out["families"] = {}
    xf = torch.rand(args.batch, 1, 28, 28)
    yf = torch.randint(0, 2, (args.batch,))
    for name, label in FAMILY_NAMES.items():
        xc = torch.rand(32 if name == "smoothing" else 1000, 1, 28, 28)
        row = family_rates(name, xf, yf, xc, args.steps)
        out["families"][label] = row
        print(
            f"{label}: train {row['train_samples_per_s']:.0f} samples/s, "
            f"certify {row['certify_inputs_per_s']:.1f} inputs/s ({row['certifier']})"
        )
    write_results("train", out)


if __name__ == "__main__":
    main()
