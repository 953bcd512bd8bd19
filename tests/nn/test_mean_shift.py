"""MeanShift: batch mean in training (with gradient), running mean in eval, no scaling."""

from __future__ import annotations

import pytest
import torch

from asymcert.nn.mean_shift import MeanShift


@pytest.mark.parametrize("shape", [(8, 5), (4, 5, 3, 2)])
def test_train_subtracts_batch_mean_with_gradient(shape):
    torch.manual_seed(0)
    m = MeanShift(5)
    x = (torch.randn(*shape, dtype=torch.float64) + 3).requires_grad_()
    y = m(x)
    dims = [0] + list(range(2, x.dim()))
    torch.testing.assert_close(y.mean(dims), torch.zeros(5, dtype=torch.float64))
    g = torch.randn_like(y)
    (gx,) = torch.autograd.grad(y, x, g)
    x2 = x.detach().clone().requires_grad_()
    (gx_ref,) = torch.autograd.grad(x2 - x2.mean(dims, keepdim=True), x2, g)
    torch.testing.assert_close(gx, gx_ref)
    assert not torch.allclose(gx, g)  # the mean is differentiated through


def test_running_mean_momentum_and_eval():
    torch.manual_seed(0)
    m = MeanShift(3, momentum=0.1)
    means = []
    for _ in range(3):
        x = torch.randn(16, 3, 4, 4) + torch.tensor([1.0, -2.0, 5.0]).view(1, 3, 1, 1)
        means.append(x.mean((0, 2, 3)))
        m(x)
    expected = torch.zeros(3)
    for bm in means:
        expected = 0.9 * expected + 0.1 * bm
    torch.testing.assert_close(m.running_mean, expected)
    assert int(m.num_batches_tracked) == 3
    m.eval()
    x = torch.randn(2, 3, 4, 4)
    torch.testing.assert_close(m(x), x - expected.view(1, 3, 1, 1))
    before = m.running_mean.clone()
    m(x)
    assert torch.equal(m.running_mean, before)  # eval does not update
    x2 = torch.randn(7, 3, dtype=torch.float64)
    torch.testing.assert_close(m(x2), x2 - expected.double())


def test_no_scaling_lipschitz_and_bounds():
    m = MeanShift(4).eval()
    m.running_mean.copy_(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    assert m.lipschitz(1.0) == m.lipschitz(2.0) == m.lipschitz(float("inf")) == 1.0
    a, b = torch.randn(10, 4), torch.randn(10, 4)
    torch.testing.assert_close(m(a) - m(b), a - b)  # a translation
    lo, up = m.interval_bounds(a - 0.1, a + 0.1)
    torch.testing.assert_close(lo, m(a) - 0.1)
    torch.testing.assert_close(up, m(a) + 0.1)


def test_bad_shapes():
    m = MeanShift(3)
    with pytest.raises(ValueError):
        m(torch.zeros(4, 5))
    with pytest.raises(ValueError):
        m(torch.zeros(4))
    with pytest.raises(ValueError):
        MeanShift(3, momentum=1.5)
    assert "momentum=0.1" in repr(m)
    assert set(dict(m.named_buffers())) == {"running_mean", "num_batches_tracked"}
