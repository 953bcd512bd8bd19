"""Regularisers and the certified-margin logit: differentiable pieces for any training loop."""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn

from asymcert.certify.functional import dual_exponent
from asymcert.distributed import differentiable_sum
from asymcert.nn.convex import couples_batch, shared_batch_statistics


def per_input_gradients(
    score_fn: Callable[[torch.Tensor], torch.Tensor], features: torch.Tensor, model: nn.Module
) -> tuple[torch.Tensor, torch.Tensor]:
    """Every input's own gradient ∂s_i/∂φ_i, differentiable in the weights, from ONE backward pass.

    With one scalar score per input, the gradient of ``score.sum()`` holds every input's gradient row,
    provided inputs do not interact. Training-mode batch norm makes them interact (the summed
    gradient is then Σ_j ∂s_j/∂φ_i, whose cross terms can cancel the very gradient to regularise), so
    for such models the scores come from an ordinary training-mode pass on the detached features,
    and the gradients from a second pass that reuses that pass's batch statistics
    (:func:`~asymcert.nn.convex.shared_batch_statistics`): constant in the inputs, but functions of
    the weights, so that losses built on the gradients train the weights along their true gradient.
    No batch × batch × features Jacobian is built.

    Args:
        score_fn: features (N, ...) → scores (N,) (e.g. ``model.score_from_features``).
        features: (N, *feature_shape) feature tensor φ(x) (detached here).
        model: the module holding the batch norms that ``score_fn`` runs.
    Returns:
        (score (N,), grad (N, *feature_shape)); both differentiable in the weights, ``grad`` built
        with ``create_graph=True``.
    """
    f = features.detach().requires_grad_(True)
    if not couples_batch(model):
        score = score_fn(f)
        (grad,) = torch.autograd.grad(score.sum(), f, create_graph=True)
        return score, grad
    with shared_batch_statistics(model):
        score = score_fn(features.detach())  # records each batch norm's statistics (weights only)
        own = score_fn(f)  # the same values, each input on its own
    (grad,) = torch.autograd.grad(own.sum(), f, create_graph=True)
    return score, grad


def jacobian_penalty(score: torch.Tensor, features: torch.Tensor) -> torch.Tensor:
    """‖∂g/∂φ‖_F over a batch, differentiable, without a batch × batch × features Jacobian.

    With one scalar score per input, the gradient of ``score.sum()`` w.r.t. ``features`` (N, ...)
    holds every input's own gradient row, from one backward pass with ``create_graph=True`` — only
    if the inputs do not interact: compute ``score`` in eval mode or without batch norm; with
    training-mode batch norm use :func:`per_input_gradients`.

    Args:
        score: (N,) scores computed from ``features`` (which must require grad).
        features: (N, *feature_shape).
    Returns:
        Scalar sqrt(Σ_i ‖∇_f s_i‖²), the sum running over the global batch under torch.distributed.
    """
    (grad,) = torch.autograd.grad(score.sum(), features, create_graph=True)
    return jacobian_penalty_from_grad(grad)


def jacobian_penalty_from_grad(grad: torch.Tensor) -> torch.Tensor:
    """sqrt(Σ_i ‖grad_i‖²) of per-input gradients ``grad`` (N, ...), global under torch.distributed."""

    # Under DDP the norm is over the global batch: every process gets the same value, and the
    # all-reduce's backward plus DDP's gradient averaging give exactly the one-process gradient.
    return differentiable_sum(grad.pow(2).sum()).clamp_min(1e-12).sqrt()


def certified_lower_bound(
    score: torch.Tensor, grad: torch.Tensor, radius: float, p: float, lipschitz: float
) -> torch.Tensor:
    """s(x) − r·Lip_p(φ)·‖∇_φ g‖_{p*}: a lower bound of the score over the ℓp ball of radius r around x.

    For a feature-convex model the tangent plane lies below g, so s(x + δ) ≥ s(x) − ‖δ‖_p·Lip_p(φ)·
    ‖∇_φ g(φ(x))‖_{p*}; training the sensitive inputs' cross-entropy on this bound (instead of on s)
    pushes up exactly what the certificate divides. Differentiable in the weights when ``grad`` was
    computed with ``create_graph=True``.

    Args:
        score: (N,) scores s(x).
        grad: (N, ...) per-input gradients of g w.r.t. the features φ(x).
        radius: r, raw input units. p: the ball's norm (p ≥ 1, ``math.inf`` allowed).
        lipschitz: Lip_p(φ) of the feature map.
    Returns:
        (N,) lower bounds, in ``score``'s dtype.

    Example:
        >>> s = torch.tensor([1.0]); g = torch.tensor([[3.0, 4.0]])
        >>> certified_lower_bound(s, g, radius=0.1, p=2.0, lipschitz=1.0)
        tensor([0.5000])
    """

    # a training loss, in the gradient's dtype: vector_norm's backward is finite at a zero gradient
    # (certification's float64 lp_norm rescales rows, whose backward is not)
    slope = torch.linalg.vector_norm(grad.flatten(1), ord=dual_exponent(p), dim=1)
    return score - radius * lipschitz * slope.to(score.dtype)
