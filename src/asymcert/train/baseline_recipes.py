"""Training recipes of the baselines (their families are in :mod:`asymcert.families`).

Settings come from ``TrainConfig.extra`` (every key optional; defaults sized for CPU):

* ``relu-smoothing`` (:class:`NoiseRecipe`): BCE on the base model's score for inputs with the
  model's own smoothing noise (Gaussian / Laplace / uniform of standard deviation σ, or splitting
  noise with a random offset per input), the training half of Cohen et al. Selection metric:
  balanced accuracy of the base model on noisy validation inputs (one fixed draw).
* ``relu-ibp`` (:class:`BoundPropagationRecipe`): IBP (Gowal et al. 2018) or CROWN-IBP (Zhang et
  al. 2020) certified training. ``eps`` (0.1) in ℓ``norm`` (``"inf"``) ramps linearly from 0 after
  ``warmup`` (0.1 of training) to full at ``ramp_end`` (0.6); the loss is
  κ·BCE(s, y) + (1 − κ)·BCE(s_worst, y) with κ going 1 → ``kappa_end`` (0.5) along the ramp;
  s_worst = the score's lower bound on sensitive inputs, and on the other class the clean score
  (``robust_classes="sensitive"``, the asymmetric setting) or its upper bound (``"both"``).
  ``bound``: ``"ibp"`` or ``"crown-ibp"`` (then β·CROWN-IBP + (1 − β)·IBP with β 1 → 0 along the
  ramp). Selection metric: ½(TNR + share of sensitive validation inputs verified at ``eps``).
* ``orthogonal`` (:class:`OrthogonalRecipe`): BCE(τ(s − m(2y − 1)), y), a margin ``margin`` (0.5,
  ℓ2 raw units) and temperature ``temperature`` (8). Selection metric: balanced accuracy.
"""

from __future__ import annotations

import math
from typing import Any, Protocol, cast

import torch
import torch.nn.functional as F
from torch import nn

from asymcert.certify.bound_propagation import (
    backward_lower_bound,
    ibp_boxes,
    layer_shapes,
    score_lower_bound,
    sequential_layers,
)
from asymcert.certify.result import normalize_norm
from asymcert.certify.smoothing import sample_noise, split_quantize
from asymcert.data.tasks import Dataset
from asymcert.train.balance import balanced_accuracy
from asymcert.train.config import TrainConfig
from asymcert.train.recipes import predict_scores


def _step_generator(seed: int, progress: float) -> torch.Generator:
    """A CPU generator fixed by (seed, training progress): resumed runs redraw the same noise."""
    return torch.Generator().manual_seed((int(seed) * 1_000_003 + round(progress * 2**31)) % (2**62))


def _rates(scores: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
    """(TPR, TNR) of the decision scores > 0."""
    pos, neg = y == 1, y == 0
    return (
        float((scores[pos] > 0).float().mean()) if bool(pos.any()) else 0.0,
        float((scores[neg] <= 0).float().mean()) if bool(neg.any()) else 0.0,
    )


class _FitsInput(Protocol):
    def fit_input(self, x: torch.Tensor) -> None: ...


class _Base:
    """Shared hooks: fit the input shift before training; nothing per epoch or after steps."""

    def __init__(self, config: TrainConfig) -> None:
        self.extra = dict(config.extra or {})
        self.seed = int(config.seed)

    def prepare(self, model: nn.Module, train: Dataset) -> None:
        cast(_FitsInput, model).fit_input(train.x)  # every baseline model has fit_input

    def on_epoch_start(self, model: nn.Module, epoch: int, progress: float) -> None:
        pass

    def after_step(self, model: nn.Module) -> None:
        pass


def _smoothing(model: nn.Module) -> dict[str, Any]:
    """The ``smoothing`` settings ({"noise", "sigma", ...}) of a "relu-smoothing" base classifier."""
    return cast("dict[str, Any]", model.smoothing)


def add_noise(x: torch.Tensor, noise: str, sigma: float, generator: torch.Generator) -> torch.Tensor:
    """x plus smoothing noise (splitting: quantised with a random offset per input)."""
    if noise == "splitting":
        lam = sigma * math.sqrt(3.0)
        s = torch.rand(x.shape[0], generator=generator, dtype=torch.float64) * 2 * lam
        return split_quantize(x.double(), s.to(x.device), lam).to(x.dtype)
    return x + sample_noise(noise, tuple(x.shape), sigma, generator, x.dtype).to(x.device)


class NoiseRecipe(_Base):
    """Gaussian (or the model's other) noise augmentation for a smoothing base classifier."""

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        sm = _smoothing(model)
        noisy = add_noise(x, sm["noise"], float(sm["sigma"]), _step_generator(self.seed, progress))
        bce = F.binary_cross_entropy_with_logits(model(noisy), y.float())
        return bce, {"bce": bce.item()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val: Dataset, batch_size: int) -> dict[str, float]:
        device = next(model.parameters()).device
        sm = _smoothing(model)
        noisy = add_noise(val.x, sm["noise"], float(sm["sigma"]), torch.Generator().manual_seed(self.seed + 12345))
        noisy_scores = predict_scores(model, noisy, batch_size, device)
        clean = predict_scores(model, val.x, batch_size, device)
        return {
            "metric": balanced_accuracy(noisy_scores, val.y),
            "noisy_accuracy": float(((noisy_scores > 0).long() == val.y).float().mean()),
            "accuracy": float(((clean > 0).long() == val.y).float().mean()),
        }


class BoundPropagationRecipe(_Base):
    """IBP / CROWN-IBP certified training with an ε ramp and a κ schedule (see the module docstring)."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        e = self.extra
        self.eps = float(e.get("eps", 0.1))
        self.norm = normalize_norm(e.get("norm", "inf"))
        self.bound = str(e.get("bound", "ibp"))
        if self.bound not in ("ibp", "crown-ibp"):
            raise ValueError(f"bound must be 'ibp' or 'crown-ibp', got {self.bound!r}")
        self.warmup = float(e.get("warmup", 0.1))
        self.ramp_end = float(e.get("ramp_end", 0.6))
        self.kappa_end = float(e.get("kappa_end", 0.5))
        self.robust_classes = str(e.get("robust_classes", "sensitive"))
        if self.robust_classes not in ("sensitive", "both"):
            raise ValueError(f"robust_classes must be 'sensitive' or 'both', got {self.robust_classes!r}")

    def ramp(self, progress: float) -> float:
        """Share of the final ε at training progress ``progress`` ∈ [0, 1]."""
        if progress <= self.warmup:
            return 0.0
        return min(1.0, (progress - self.warmup) / max(1e-12, self.ramp_end - self.warmup))

    def bounds(self, model: nn.Module, x: torch.Tensor, eps: float, beta: float) -> tuple[torch.Tensor, torch.Tensor]:
        """Differentiable (lower, upper) bounds of the score over the ε-ball: (N,), (N,)."""
        layers = sequential_layers(model)
        boxes = ibp_boxes(layers, x, eps, self.norm)
        lower, upper = boxes[-1][0].reshape(-1), boxes[-1][1].reshape(-1)
        if self.bound == "crown-ibp" and beta > 0:
            shapes = layer_shapes(layers, x)
            e = torch.full((x.shape[0],), eps, dtype=x.dtype, device=x.device)
            spec = torch.cat(
                [
                    torch.ones(x.shape[0], 1, 1, dtype=x.dtype, device=x.device),
                    -torch.ones(x.shape[0], 1, 1, dtype=x.dtype, device=x.device),
                ],
                dim=1,
            )
            crown = backward_lower_bound(layers, len(layers), spec, x, e, self.norm, boxes, shapes)
            lower = beta * crown[:, 0] + (1 - beta) * lower
            upper = beta * (-crown[:, 1]) + (1 - beta) * upper
        return lower, upper

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        r = self.ramp(progress)
        eps, kappa, beta = self.eps * r, 1.0 - (1.0 - self.kappa_end) * r, 1.0 - r
        score = model(x)
        yf = y.float()
        clean = F.binary_cross_entropy_with_logits(score, yf)
        if eps <= 0:
            return clean, {"bce": clean.item(), "eps": 0.0}
        lower, upper = self.bounds(model, x, eps, beta)
        other = upper if self.robust_classes == "both" else score
        worst = torch.where(y == 1, lower, other)
        robust = F.binary_cross_entropy_with_logits(worst, yf)
        loss = kappa * clean + (1 - kappa) * robust
        return loss, {"bce": clean.item(), "robust": robust.item(), "eps": eps}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val: Dataset, batch_size: int) -> dict[str, float]:
        device = next(model.parameters()).device
        was = model.training
        model.eval()
        scores, lowers = [], []
        for i in range(0, len(val), batch_size):
            xb = val.x[i : i + batch_size].to(device)
            scores.append(model(xb).float().cpu())
            lowers.append(score_lower_bound(model, xb, self.eps, self.norm, self.bound).float().cpu())
        model.train(was)
        s, lb = torch.cat(scores), torch.cat(lowers)
        tpr, tnr = _rates(s, val.y)
        pos = val.y == 1
        verified = float(((lb > 0) & (s > 0))[pos].float().mean()) if bool(pos.any()) else 0.0
        return {
            "metric": 0.5 * (tnr + verified),
            "accuracy": float(((s > 0).long() == val.y).float().mean()),
            "balanced_accuracy": 0.5 * (tpr + tnr),
            "verified_sensitive": verified,
        }


class OrthogonalRecipe(_Base):
    """BCE with a margin on the 1-Lipschitz score: BCE(τ(s − m(2y − 1)), y)."""

    def __init__(self, config: TrainConfig) -> None:
        super().__init__(config)
        self.margin = float(self.extra.get("margin", 0.5))
        self.temperature = float(self.extra.get("temperature", 8.0))

    def loss(self, model: nn.Module, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        s = model(x)
        z = self.temperature * (s - self.margin * (2 * y.float() - 1))
        bce = F.binary_cross_entropy_with_logits(z, y.float())
        return bce, {"bce": bce.item()}

    @torch.no_grad()
    def evaluate(self, model: nn.Module, val: Dataset, batch_size: int) -> dict[str, float]:
        device = next(model.parameters()).device
        s = predict_scores(model, val.x, batch_size, device)
        pos = val.y == 1
        robust = float((s[pos] > self.margin).float().mean()) if bool(pos.any()) else 0.0
        return {
            "metric": balanced_accuracy(s, val.y),
            "accuracy": float(((s > 0).long() == val.y).float().mean()),
            "sensitive_score_above_margin": robust,
        }
