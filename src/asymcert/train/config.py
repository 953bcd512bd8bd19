"""Training settings."""

from __future__ import annotations

from dataclasses import asdict, dataclass, fields
from typing import Any

from asymcert.errors import UnknownNameError


@dataclass
class TrainConfig:
    """Everything that decides a training run (defaults: the feature-convex paper's recipe).

    Attributes:
        epochs: passes over the training split.
        batch_size: global batch size (split over processes under torch.distributed).
        lr: learning rate. optimizer: "sgd" or "adam". momentum: SGD momentum.
        lr_decay: multiplicative learning-rate decay per epoch (exponential schedule); "cosine"
            schedules are chosen with ``schedule="cosine"`` (per iteration).
        weight_decay: L2 weight decay.
        jacobian_reg: λ of the Jacobian regulariser λ·‖∂g/∂φ‖_F (feature-convex models).
        margin_radius: certified-margin loss of feature-convex models (0 = off): for *sensitive*
            training inputs the cross-entropy is taken on s(x) − r·Lip_p(φ)·‖∇_φ g‖_{p*}, the
            certified lower bound of the score over the ℓp ball of radius r (raw input units);
            other inputs keep the plain loss, since nothing is certified for them.
        margin_norm: the p of that ball (1, 2, inf, ...). Lists of radii and norms of equal length
            use the union of the balls (the lowest of the bounds).
        margin_warmup: fraction of training over which r grows linearly from 0 (0 = from the start).
        sensitive_weight: weight of the sensitive class's cross-entropy terms (``pos_weight``; 1 = the
            plain loss).
        train_at_balance: keep the class-balance shift b that each epoch's validation pass fits in the
            logit of the next epoch (False: train on g(φ(x)) with b = 0). See the feature-convex recipe.
        seed: seeds weights, shuffling and augmentation.
        device: "auto" (CUDA when present), "cpu" or "cuda[:i]".
        augment: apply the task's training augmentation (True), none (False), or the named one
            (``"crop<padding>"``, ``"crop<padding>_flip"`` or ``"flip"``, e.g. ``"crop2_flip"``).
        eval_batch_size: batch size for validation passes.
        amp: bfloat16 autocast for training on CUDA (ignored on CPU; certification never uses it).
        workers: data-loading worker processes (shuffling and augmentation); None → 0 on CPU, 2 on
            CUDA. The batches are the same for every worker count.
    """

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "sgd"
    momentum: float = 0.9
    lr_decay: float = 0.99
    schedule: str = "exponential"
    weight_decay: float = 0.0
    jacobian_reg: float = 0.0
    margin_radius: float | list[float] = 0.0
    margin_norm: float | list[float] = 2.0
    margin_warmup: float = 0.0
    sensitive_weight: float = 1.0
    train_at_balance: bool = False
    seed: int = 0
    device: str = "auto"
    augment: bool | str = True
    eval_batch_size: int = 1000
    amp: bool = False
    workers: int | None = None
    extra: dict[str, Any] | None = None

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> "TrainConfig":
        """Build from a dict, rejecting unknown keys with a clear error."""
        known = {f.name for f in fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise UnknownNameError(f"unknown training setting(s) {sorted(unknown)}; known: {sorted(known)}")
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)
