"""Regularisers."""

from __future__ import annotations

import torch


def jacobian_penalty(score: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """‖∂g/∂φ‖_F over a batch, differentiable, without a batch × batch × features Jacobian.

    With one scalar score per input, the gradient of ``score.sum()`` w.r.t. ``features`` (N, ...)
    holds every input's own gradient row, from one backward pass with ``create_graph=True``.
    (In training mode batch norm couples the inputs of a batch; the summed gradient then also
    carries those cross terms, which only regularise more.)

    Args:
        score: (N,) scores computed from ``features`` (which must require grad).
        features: (N, *feature_shape).
    Returns:
        Scalar sqrt(Σ_i ‖∇_f s_i‖²), the sum running over the global batch under torch.distributed.
    """
    from asymcert.distributed import differentiable_sum

    (grad,) = torch.autograd.grad(score.sum(), features, create_graph=True)
    # Under DDP the norm is over the global batch: every process gets the same value, and the
    # all-reduce's backward plus DDP's gradient averaging give exactly the one-process gradient.
    return differentiable_sum(grad.pow(2).sum()).clamp_min(1e-12).sqrt()
