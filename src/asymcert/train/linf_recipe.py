"""Training recipe of ℓ∞-distance nets (Zhang et al. 2022, "v2") (family ``linf-dist``).

Per iteration, with progress t ∈ [0, 1] of the whole run and ``p_phases`` = (a, b):

* ratio ρ = clip((t − a)/(b − a), 0, 1); every distance layer gets p = p₀·(p₁/p₀)^ρ
  (8 → 1000), and p = ∞ once ρ = 1 (the last 1 − b of training; p₁ ≥ 100 as in the authors' code);
* λ = λ₀·(λ₁/λ₀)^ρ (geometric decay over the growth phase);
* loss = mean_i w_i·clip(max_{j≠y} ub(g_j − g_y)/θ, 0, 1) + λ·CE(s·g, y), θ = 2ε_train in
  normalised units (ε_train / σ). For the plain net ub(g_j − g_y) = g_j − g_y + θ (each logit is
  1-Lipschitz), i.e. clip(max_{j≠y}(g_j − g_y)/θ + 1, 0, 1); for the +MLP net ub comes from IBP
  through the head on the feature box z_L ± ε_train. s = the model's learned ``logit_scale()``.
  For binary models with ``robust_classes="sensitive"`` (the asymmetric setting, default) only
  sensitive inputs (y = 1) get the robust bound; the others get their nominal gap plus
  ``clean_margin``·θ (no radius, a correct decision with a small margin; see
  :meth:`LinfDistRecipe.asymmetric_gaps`).

Settings (``TrainConfig.extra``, every key optional): ``eps_train`` (raw units, default
3·``eps_eval``), ``eps_eval`` (0.1, raw units: the validation certificate radius), ``lambda``
([0.05, 0.0002]), ``p_start`` (8), ``p_end`` (1000), ``p_phases`` ([0.0556, 0.889]: the MNIST
fractions 25/450 and 400/450), ``robust_classes`` ("sensitive" or "both"), ``clean_margin`` (0.1:
the non-sensitive inputs' margin, a fraction of θ). The optimiser settings
(Adam β = (0.9, 0.99), eps 1e-10, lr 0.03, cosine per iteration, no weight decay) are
:data:`LINF_TRAIN_DEFAULTS`, to be merged under a task's own settings when ``--model linf-dist``
is asked for on a task whose default model is of another family.

Short runs: λ is the weight of the only term that moves misclassified inputs (the hinge is flat
at 1 for them), so with the paper's λ (0.05 → 0.0002, tuned for 450 epochs) a run of a few epochs
barely learns. In a 6-epoch ablation (3 × 256 net, 10k Fashion-MNIST images) λ = 0.5 → 0.005 gave
60.6% clean / 47.4% certified at ε = 0.1 against 31.1% / 26.6% with the paper's λ (both with
ε_train = 0.15); use the larger λ for runs of less than a few dozen epochs.

Validation (the selection metric) runs at p = ∞ in eval mode: multiclass — the share of
validation inputs classified correctly with certified ℓ∞ radius ≥ ``eps_eval``; binary —
½(TNR + share of sensitive inputs flagged with radius ≥ ``eps_eval``).
"""

from __future__ import annotations

import math
import warnings
from typing import TYPE_CHECKING, Any, cast

import torch
import torch.nn.functional as F
from torch import nn

from asymcert.certify.linf_dist import head_verified, top2_margin
from asymcert.data.tasks import Dataset
from asymcert.train.config import TrainConfig

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.linf_dist_net import LinfDistNet

INF = math.inf

LINF_EXTRA_DEFAULTS: dict[str, Any] = {
    "betas": [0.9, 0.99],
    "adam_eps": 1e-10,
    "eps_eval": 0.1,
    "eps_train": 0.3,
    "lambda": [0.05, 0.0002],
    "p_start": 8.0,
    "p_end": 1000.0,
    "p_phases": [25 / 450, 400 / 450],
    "robust_classes": "sensitive",
    "clean_margin": 0.1,
}
LINF_TRAIN_DEFAULTS: dict[str, Any] = {
    "epochs": 100,
    "batch_size": 512,
    "optimizer": "adam",
    "lr": 0.03,
    "schedule": "cosine",
    "weight_decay": 0.0,
    "extra": dict(LINF_EXTRA_DEFAULTS),
}
"""Training settings for ``--model linf-dist`` (the paper's optimiser; 100 epochs instead of 450 so
that a CPU run is feasible). ``eps_eval``/``eps_train`` are for Fashion-MNIST/MNIST at ε = 0.1;
for another task set ``eps_eval`` to its report radius and ``eps_train`` to about 2–3× that."""


def p_schedule(
    progress: float, p_start: float = 8.0, p_end: float = 1000.0, phases: tuple[float, float] = (25 / 450, 400 / 450)
) -> float:
    """The ℓp exponent at training progress ``progress`` ∈ [0, 1] (∞ after the growth phase).

    p = p_start before ``phases[0]``, p_start·(p_end/p_start)^ρ with ρ rising linearly to 1 at
    ``phases[1]``, then ∞ (when p_end ≥ 100; otherwise p_end).
    """
    rho = growth_ratio(progress, phases)
    if rho >= 1.0 and p_end >= 100:
        return INF
    return float(p_start * (p_end / p_start) ** rho)


def growth_ratio(progress: float, phases: tuple[float, float]) -> float:
    """ρ = clip((progress − a)/(b − a), 0, 1) for phases (a, b); 1 when b ≤ a."""
    a, b = float(phases[0]), float(phases[1])
    if b <= a:
        return 1.0
    return min(max((progress - a) / (b - a), 0.0), 1.0)


def mixture_loss(
    logits: torch.Tensor,
    y: torch.Tensor,
    theta: float,
    lam: float,
    scale: torch.Tensor | float,
    upper_gaps: torch.Tensor | None = None,
    weights: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The v2 loss: mean w·clip(max_{j≠y} ub_j/θ, 0, 1) + λ·CE(s·g, y).

    Args:
        logits: (N, K) g. y: (N,) labels. theta: θ = 2ε_train (normalised units).
        lam: λ. scale: s (tensor with grad, or float).
        upper_gaps: (N, K) upper bounds of g_j − g_y at ε_train; default (plain net) g_j − g_y + θ.
        weights: (N,) per-input weight of the hinge term (default 1).
    Returns:
        (loss, hinge mean, CE), all 0-dim.
    """
    if upper_gaps is None:
        upper_gaps = logits - logits.gather(1, y[:, None]) + theta
    gaps = upper_gaps.scatter(1, y[:, None], -INF)
    hinge = (gaps.amax(dim=1) / theta).clamp(0.0, 1.0)
    if weights is not None:
        hinge = hinge * weights
    hinge = hinge.mean()
    ce = F.cross_entropy(scale * logits, y)
    return hinge + lam * ce, hinge, ce


def head_upper_gaps(model: LinfDistNet, z: torch.Tensor, y: torch.Tensor, eps: float) -> torch.Tensor:
    """IBP upper bounds of g_j − g_y over the feature box z ± eps, through the +MLP head (differentiable).

    Args:
        z: (N, w) features z_L. y: (N,) labels. eps: normalised radius.
    Returns:
        (N, K), column y equal to 0.
    """
    if model.head_hidden is None or model.head_out is None:
        raise ValueError("head_upper_gaps needs the +MLP variant (a plain net has no head_hidden/head_out)")
    w1, b1 = model.head_hidden.weight, model.head_hidden.bias
    w2, b2 = model.head_out.weight, model.head_out.bias
    pc = z @ w1.t() + b1
    pr = eps * w1.abs().sum(dim=1)
    t_lo, t_hi = torch.tanh(pc - pr), torch.tanh(pc + pr)
    tc, tr = (t_hi + t_lo) / 2, (t_hi - t_lo) / 2
    dw = w2[None, :, :] - w2[y][:, None, :]  # row j minus row y
    db = b2[None, :] - b2[y][:, None]
    return torch.einsum("nkh,nh->nk", dw, tc) + torch.einsum("nkh,nh->nk", dw.abs(), tr) + db


class LinfDistRecipe:
    """The ℓ∞-dist net recipe (see the module docstring)."""

    def __init__(self, config: TrainConfig) -> None:
        user = dict(config.extra or {})
        e = {**LINF_EXTRA_DEFAULTS, **user}
        self.eps_eval = float(e["eps_eval"])
        self.eps_train = float(user["eps_train"]) if "eps_train" in user else 3 * self.eps_eval
        lam = e["lambda"]
        self.lam = (float(lam), float(lam)) if isinstance(lam, (int, float)) else (float(lam[0]), float(lam[1]))
        self.p_start, self.p_end = float(e["p_start"]), float(e["p_end"])
        self.phases = (float(e["p_phases"][0]), float(e["p_phases"][1]))
        self.robust_classes = str(e["robust_classes"])
        self.clean_margin = float(e["clean_margin"])
        if not 0.0 <= self.clean_margin <= 1.0:
            raise ValueError(f"clean_margin must be in [0, 1] (a fraction of θ), got {self.clean_margin}")
        if self.robust_classes not in ("sensitive", "both"):
            raise ValueError(f"robust_classes must be 'sensitive' or 'both', got {self.robust_classes!r}")
        if self.eps_train <= 0 or self.eps_eval <= 0:
            raise ValueError("eps_train and eps_eval must be positive (raw input units)")
        if min(self.lam) <= 0:
            raise ValueError(f"lambda must be positive, got {lam}")

    # -------------------------------------------------------------- schedules

    def p_at(self, progress: float) -> float:
        """p of every distance layer at ``progress``."""
        return p_schedule(progress, self.p_start, self.p_end, self.phases)

    def lambda_at(self, progress: float) -> float:
        """λ at ``progress``: λ₀·(λ₁/λ₀)^ρ."""
        rho = growth_ratio(progress, self.phases)
        return self.lam[0] * (self.lam[1] / self.lam[0]) ** rho

    # -------------------------------------------------------------- hooks

    def prepare(self, model: nn.Module, train: Dataset) -> None:
        net = cast("LinfDistNet", model)  # this recipe trains LinfDistNet models
        net.fit_input(train.x)
        net.set_p(self.p_at(0.0))
        top = int(train.y.max()) if len(train) else 0
        if top >= net.num_classes:
            raise ValueError(
                f"training labels go up to {top} but the model has {net.num_classes} classes; "
                f"set the model's num_classes (--model-set num_classes=K)"
            )
        if not net.binary and top <= 1 and net.num_classes > 2:
            warnings.warn(
                "the training labels are only 0/1 but the ℓ∞-dist model is a "
                f"{net.num_classes}-class model; for a binary sensitive-class task build it with "
                "num_classes=2, binary=true (--model-set num_classes=2 --model-set binary=true)",
                RuntimeWarning,
                stacklevel=2,
            )

    def on_epoch_start(self, model: nn.Module, epoch: int, progress: float) -> None:
        net = cast("LinfDistNet", model)  # this recipe trains LinfDistNet models
        net.set_p(self.p_at(progress))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        net = cast("LinfDistNet", model)  # this recipe trains LinfDistNet models
        p = self.p_at(progress)
        net.set_p(p)
        lam = self.lambda_at(progress)
        eps = self.eps_train / net.std
        z = net.features(x)
        logits = net.logits_from_features(z)
        gaps = head_upper_gaps(net, z, y, eps) if net.out is None else None
        if net.binary and self.robust_classes == "sensitive":
            gaps = self.asymmetric_gaps(logits, y, 2 * eps, gaps)
        loss, hinge, ce = mixture_loss(logits, y, 2 * eps, lam, net.logit_scale(), gaps)
        return loss, {
            "hinge": hinge.item(),
            "ce": ce.item(),
            "p": min(p, 1e4),
            "lambda": lam,
            "scale": net.logit_scale().item(),
        }

    def asymmetric_gaps(
        self, logits: torch.Tensor, y: torch.Tensor, theta: float, robust: torch.Tensor | None
    ) -> torch.Tensor:
        """Upper gaps of the asymmetric binary loss: robust for sensitive inputs, nominal for the others.

        A sensitive input (y = 1) keeps its upper bound of g_j − g_y over the training ball (``robust``,
        or g_j − g_y + θ for the plain net); a non-sensitive one needs no radius, only a correct
        decision with a small margin: g_j − g_y + ``clean_margin``·θ. Without that term the only
        force on non-sensitive inputs would be λ·CE with λ decaying to 2e-4, and "flag everything"
        (hinge 0) is nearly free: 10 epochs on Fashion-MNIST shirts did exactly that.

        Args:
            logits: (N, 2) g. y: (N,) labels in {0, 1}. theta: θ (normalised units).
            robust: (N, 2) upper gaps over the training ball, or None for g_j − g_y + θ.
        Returns:
            (N, 2) gaps for :func:`mixture_loss` (column y is masked there).
        """
        nominal = logits - logits.gather(1, y[:, None])
        robust = nominal + theta if robust is None else robust
        return torch.where((y == 1)[:, None], robust, nominal + self.clean_margin * theta)

    def after_step(self, model: nn.Module) -> None:
        pass

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val: Dataset, batch_size: int) -> dict[str, float]:
        net = cast("LinfDistNet", model)  # this recipe trains LinfDistNet models
        device = next(net.parameters()).device
        p_before = net.p
        was = net.training
        net.set_p(INF)
        net.eval()
        try:
            eps = self.eps_eval / net.std
            preds, certs = [], []
            for i in range(0, len(val), batch_size):
                xb = val.x[i : i + batch_size].to(device)
                z, y_last = net.features_and_distances(xb)
                logits = net.logits_from_features(z)
                cls = (logits[:, 1] > logits[:, 0]).long() if net.binary else logits.argmax(dim=1)
                if net.out is None:
                    ok = head_verified(net, y_last, torch.full((len(xb),), eps, device=device), cls, None, 0.0)
                else:
                    ok = top2_margin(logits, cls) / 2 >= eps * (1 + 1e-5)
                preds.append(cls.cpu())
                certs.append(ok.cpu())
            pred, cert = torch.cat(preds), torch.cat(certs)
        finally:
            net.set_p(p_before)
            net.train(was)
        correct = pred == val.y
        out = {"accuracy": float(correct.float().mean())}
        if net.binary:
            pos, neg = val.y == 1, val.y == 0
            tpr_cert = float((correct & cert)[pos].float().mean()) if bool(pos.any()) else 0.0
            tnr = float(correct[neg].float().mean()) if bool(neg.any()) else 0.0
            out.update(metric=0.5 * (tnr + tpr_cert), certified_tpr=tpr_cert, tnr=tnr)
        else:
            out.update(metric=float((correct & cert).float().mean()))
        out["certified"] = out["metric"] if not net.binary else out["certified_tpr"]
        return out


__all__ = [
    "LINF_EXTRA_DEFAULTS",
    "LINF_TRAIN_DEFAULTS",
    "LinfDistRecipe",
    "growth_ratio",
    "head_upper_gaps",
    "mixture_loss",
    "p_schedule",
]
