"""Mean shift: the batch-norm of ℓ∞-distance nets without the scaling (Zhang et al. 2021)."""

from __future__ import annotations

import torch
from torch import nn

from asymcert import distributed


class MeanShift(nn.Module):
    """Subtract a per-channel mean; no scaling, so it is 1-Lipschitz in every norm.

    Training: y = x − mean of x over the batch and spatial dims (the gradient flows through
    the mean), and running_mean ← (1 − momentum)·running_mean + momentum·batch mean. Under
    torch.distributed the mean is over the GLOBAL batch of every process (summed with
    :func:`asymcert.distributed.differentiable_sum`, exact gradients), as one process would see it.
    Eval: y = x − running_mean (a translation).

    Args:
        num_features: channels C.
        momentum: weight of the newest batch mean in the running mean.

    Shapes: input (N, C) or (N, C, *spatial), output the same, in the units of the input.
    """

    running_mean: torch.Tensor  # buffer (C,)
    num_batches_tracked: torch.Tensor  # buffer (), long

    def __init__(self, num_features: int, momentum: float = 0.1) -> None:
        super().__init__()
        if not 0.0 <= momentum <= 1.0:
            raise ValueError(f"momentum must be in [0, 1], got {momentum}")
        self.num_features = int(num_features)
        self.momentum = float(momentum)
        self.register_buffer("running_mean", torch.zeros(self.num_features))
        self.register_buffer("num_batches_tracked", torch.tensor(0, dtype=torch.long))

    def _shape(self, x: torch.Tensor) -> tuple[int, ...]:
        if x.dim() < 2 or x.shape[1] != self.num_features:
            raise ValueError(f"expected (N, {self.num_features}, ...), got {tuple(x.shape)}")
        return (1, self.num_features) + (1,) * (x.dim() - 2)

    def reset_running_stats(self) -> None:
        """Running mean back to 0."""
        self.running_mean.zero_()
        self.num_batches_tracked.zero_()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """(N, C, *) → (N, C, *)."""
        shape = self._shape(x)
        if self.training:
            dims = [0] + list(range(2, x.dim()))
            mean = self._global_mean(x, dims)
            with torch.no_grad():
                self.running_mean.mul_(1.0 - self.momentum).add_(
                    mean.detach().to(self.running_mean.dtype), alpha=self.momentum
                )
                self.num_batches_tracked.add_(1)
            return x - mean.view(shape)
        return x - self.running_mean.to(x.dtype).view(shape)

    @staticmethod
    def _global_mean(x: torch.Tensor, dims: list[int]) -> torch.Tensor:
        """Per-channel mean over ``dims`` of this process's x, or of every process's x under torch.distributed."""

        if not distributed.is_distributed():
            return x.mean(dims)
        count = distributed.differentiable_sum(
            torch.tensor(float(x.numel() // x.shape[1]), dtype=x.dtype, device=x.device)
        )
        return distributed.differentiable_sum(x.sum(dims)) / count

    def interval_bounds(self, lower: torch.Tensor, upper: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Exact bounds of the eval-mode output over the box lower ≤ x ≤ upper (same shapes)."""
        if lower.shape != upper.shape:
            raise ValueError(f"lower {tuple(lower.shape)} and upper {tuple(upper.shape)} differ in shape")
        rm = self.running_mean.to(lower.dtype).view(self._shape(lower))
        return lower - rm, upper - rm

    def lipschitz(self, p: float) -> float:
        """ℓp→ℓp Lipschitz constant of the eval-mode map: 1.0 for every p (a translation)."""
        return 1.0

    def problems(self) -> list[str]:
        """Why the eval-mode map may not be the translation its Lipschitz constant 1 assumes (empty if it is).

        MeanShift has no scale; its only parameter, ``running_mean`` (C,), must be finite (a NaN or Inf
        mean makes every output NaN), and ``momentum`` in [0, 1].
        """
        problems = []
        if not bool(torch.isfinite(self.running_mean).all()):
            problems.append("running_mean contains NaN or Inf")
        if not 0.0 <= self.momentum <= 1.0:
            problems.append(f"momentum {self.momentum!r} is not in [0, 1]")
        return problems

    def extra_repr(self) -> str:
        return f"{self.num_features}, momentum={self.momentum}"


__all__ = ["MeanShift"]
