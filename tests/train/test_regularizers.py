"""Per-input gradients, the Jacobian regulariser and the certified lower bound."""

import copy
import math

import torch

from asymcert.nn.convex import ICNN, PositiveBatchNorm
from asymcert.train.regularizers import (
    certified_lower_bound,
    jacobian_penalty,
    jacobian_penalty_from_grad,
    per_input_gradients,
)


def _train_mode_icnn(widths=(16,), seed: int = 0) -> ICNN:
    torch.manual_seed(seed)
    net = ICNN((1, 6, 6), widths=widths).double().train()
    with torch.no_grad():
        for p in net.hidden.parameters():
            p.mul_(40.0)
    return net


def _reference_gradients(net: ICNN, x: torch.Tensor) -> torch.Tensor:
    """Each input's own gradient, one input at a time, with batch norm fixed at this batch's statistics."""
    batch_stats = {}
    hooks = [
        m.register_forward_hook(lambda mod, inp, out: batch_stats.__setitem__(mod, inp[0].detach()))
        for m in net.modules()
        if isinstance(m, PositiveBatchNorm)
    ]
    with torch.no_grad():
        copy.deepcopy(net)(x)  # record the inputs of every batch norm (on a copy: running stats untouched)
    for h in hooks:
        h.remove()
    ref = copy.deepcopy(net).eval()
    for z, m in zip(batch_stats.values(), [m for m in ref.modules() if isinstance(m, PositiveBatchNorm)]):
        var, mean = torch.var_mean(z, dim=0, correction=0)
        m.running_mean.copy_(mean)
        m.running_var.copy_(var)
    rows = []
    for xi in x:
        xi = xi.unsqueeze(0).requires_grad_(True)
        (g,) = torch.autograd.grad(ref(xi)[0], xi)
        rows.append(g[0])
    return torch.stack(rows)


def test_per_input_gradients_are_each_inputs_own_gradient_under_training_mode_batch_norm():
    net = _train_mode_icnn(widths=(16, 8))
    x = torch.rand(24, 1, 6, 6, dtype=torch.float64)
    score, grad = per_input_gradients(net, x, net)
    assert torch.allclose(grad, _reference_gradients(net, x), rtol=1e-9, atol=1e-12)
    assert grad.requires_grad  # differentiable in the weights (create_graph=True)
    assert torch.allclose(score, net(x), atol=1e-12)


def test_summed_gradient_without_shared_statistics_loses_all_but_the_pass_through():
    """Why per_input_gradients exists: in training mode the batch-norm cross terms cancel the hidden
    path of a one-hidden-layer ICNN exactly, so the naive summed gradient is U_1 for every input."""
    net = _train_mode_icnn(widths=(16,))
    x = torch.rand(24, 1, 6, 6, dtype=torch.float64).requires_grad_(True)
    (naive,) = torch.autograd.grad(net(x).sum(), x)
    pass_through = net.passthrough[-1].weight.detach().reshape(1, 1, 6, 6).expand_as(naive)
    assert torch.allclose(naive, pass_through, atol=1e-10)
    _, own = per_input_gradients(net, x, net)
    assert (own - pass_through).abs().max() > 1e-3


def test_losses_on_per_input_gradients_train_along_their_true_gradient():
    """The weights' gradient of a loss built on per_input_gradients matches central differences of
    that loss: the batch statistics are constant in the inputs but not in the weights (treating them
    as constants in the weights too gave a biased training direction)."""
    net = _train_mode_icnn(widths=(16, 8))
    x = torch.rand(24, 1, 6, 6, dtype=torch.float64)
    y = (torch.arange(24) % 2).double()

    def loss() -> torch.Tensor:
        score, grad = per_input_gradients(net, x, net)
        bound = certified_lower_bound(score, grad, 0.5, 2.0, 1.0)
        return torch.nn.functional.binary_cross_entropy_with_logits(torch.where(y.bool(), bound, score), y)

    params = [p for p in net.parameters() if p.requires_grad]
    grads = torch.autograd.grad(loss(), params)
    torch.manual_seed(1)
    direction = [torch.randn_like(p) for p in params]
    analytic = sum((g * d).sum() for g, d in zip(grads, direction))
    eps = 1e-6
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.add_(sign * eps * d)
        values.append(loss().detach())
        with torch.no_grad():
            for p, d in zip(params, direction):
                p.sub_(sign * eps * d)
    numeric = (values[0] - values[1]) / (2 * eps)
    assert torch.allclose(analytic, numeric, rtol=1e-5), (analytic, numeric)


def test_jacobian_penalty_is_the_frobenius_norm_of_the_per_input_gradients():
    net = _train_mode_icnn(widths=(16, 8)).eval()  # eval mode: inputs do not interact
    x = torch.rand(10, 1, 6, 6, dtype=torch.float64)
    rows = []
    for xi in x:
        xi = xi.unsqueeze(0).requires_grad_(True)
        rows.append(torch.autograd.grad(net(xi)[0], xi)[0][0])
    expected = torch.stack(rows).pow(2).sum().sqrt()
    xg = x.clone().requires_grad_(True)
    assert torch.allclose(jacobian_penalty(net(xg), xg), expected, rtol=1e-9)
    _, grad = per_input_gradients(net, x, net)
    assert torch.allclose(jacobian_penalty_from_grad(grad), expected, rtol=1e-9)


def test_certified_lower_bound_uses_the_dual_norm():
    s = torch.tensor([1.0, 2.0], dtype=torch.float64)
    g = torch.tensor([[3.0, -4.0], [1.0, 1.0]], dtype=torch.float64)
    for p, dual in [
        (1.0, torch.tensor([4.0, 1.0])),
        (2.0, torch.tensor([5.0, math.sqrt(2)])),
        (math.inf, torch.tensor([7.0, 2.0])),
    ]:
        out = certified_lower_bound(s, g, radius=0.1, p=p, lipschitz=2.0)
        assert torch.allclose(out, s - 0.2 * dual.double())


def test_certified_lower_bound_has_finite_gradients_at_a_zero_gradient():
    for p in (1.0, 2.0, 3.0, math.inf):
        g = torch.zeros(3, 5, requires_grad=True)
        s = torch.ones(3, requires_grad=True)
        out = certified_lower_bound(s, g, radius=0.5, p=p, lipschitz=1.0)
        ds, dg = torch.autograd.grad(out.sum(), (s, g))
        assert torch.equal(out.detach(), torch.ones(3)) and torch.isfinite(dg).all() and torch.isfinite(ds).all()
