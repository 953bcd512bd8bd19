"""Certification throughput: asymcert's batched certificate vs the authors' per-input method.

The authors' code certifies one input at a time: a batch of one, `torch.autograd.functional.jacobian`
of g at φ(x), then the dual norm. asymcert does the whole batch at once. Both run here on the same
model, inputs and machine, in one process; the ratio is the result. asymcert's precisions:
"auto" (the default: the compiled float64 pass with rigorous rounding bounds for conv nets, else
float64), "float64" (PyTorch recomputation in float64), "model" (the model's dtype, with an absolute
bound on its own rounding).

    python benchmarks/bench_certify.py [--run runs/fashion-mnist-shirts] [--n 2000] [--n-ref 200] [--threads T]

Without --run, randomly initialised models of the paper architectures are used (throughput does
not depend on the weights). Writes benchmarks/results/certify.json (certify_<T>thread.json with
--threads T).
"""

from __future__ import annotations

import argparse
import math

import torch
from common import best_of, machine, write_results  # benchmarks/common.py

import asymcert
from asymcert.certify.functional import dual_norm
from asymcert.models import build_model

ARCHS = {
    "convex-conv (Fashion-MNIST, authors')": {
        "kind": "feature-convex",
        "input_shape": [1, 28, 28],
        "feature_map": [{"kind": "shift"}],
        "convex": {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2},
    },
    "icnn-mlp 200-50 (MNIST, authors')": {
        "kind": "feature-convex",
        "input_shape": [1, 28, 28],
        "feature_map": [{"kind": "shift"}],
        "convex": {"kind": "icnn", "widths": [200, 50]},
    },
}
NORMS = (1.0, 2.0, math.inf)


def per_input_reference(model, x: torch.Tensor) -> torch.Tensor:
    """The authors' way: one input at a time, autograd.functional.jacobian, in the model's dtype."""
    model.eval()
    out = []
    for i in range(x.shape[0]):
        f = model.features(x[i : i + 1])
        jac = torch.autograd.functional.jacobian(lambda z: model.score_from_features(z), f)
        s = model.score_from_features(f).detach()
        out.append(
            torch.stack([s[0] / (model.feature_lipschitz(p) * dual_norm(jac.reshape(1, -1), p)[0]) for p in NORMS])
        )
    return torch.stack(out)


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--run", help="run folder whose model replaces the random conv net")
    ap.add_argument("--n", type=int, default=2000)
    ap.add_argument("--n-ref", type=int, default=200, help="inputs for the slow per-input reference")
    ap.add_argument("--threads", type=int, help="torch (and kernel) threads; default: all cores")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    torch.manual_seed(0)
    results = {"machine": machine(), "n": args.n, "n_ref": args.n_ref, "models": {}}
    for name, cfg in ARCHS.items():
        model = asymcert.load(args.run) if (args.run and "conv" in name) else build_model(cfg).eval()
        x = torch.rand(args.n, *model.input_shape)
        row = {}
        ref_t = best_of(lambda model=model, x=x: per_input_reference(model, x[: args.n_ref]), repeats=1) / args.n_ref
        row["per_input_reference_s"] = ref_t
        for precision in ("auto", "float64", "model"):
            t = (
                best_of(
                    lambda model=model, x=x, precision=precision: asymcert.certify(
                        model, x, norms=NORMS, precision=precision
                    )
                )
                / args.n
            )
            row[f"batched_{precision}_s"] = t
            row[f"speedup_{precision}"] = ref_t / t
        results["models"][name] = row
        print(
            f"{name}: per-input {1e3 * ref_t:.3f} ms; "
            + "; ".join(
                f"{prec} {1e3 * row[f'batched_{prec}_s']:.4f} ms ({row[f'speedup_{prec}']:.1f}x)"
                for prec in ("auto", "float64", "model")
            )
        )
    write_results("certify" if not args.threads else f"certify_{args.threads}thread", results)


if __name__ == "__main__":
    main()
