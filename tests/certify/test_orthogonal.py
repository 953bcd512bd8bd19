"""The orthogonal certifier refuses, in one asymcert line naming the layer by module path, every network its
error analysis and Lipschitz constant do not describe (session 33 families review, findings 2, 3 and 5): a subclass
of an allowed layer, hooks or a replaced ``forward``, torch's own ``nn.PixelUnshuffle`` (no declared constant). A
nested ``nn.Sequential`` is certified like the flat net."""

from __future__ import annotations

import math

import pytest
import torch
from torch import nn

import asymcert
from asymcert.certify.bound_propagation import UnsupportedNetworkError
from asymcert.errors import ModelError
from asymcert.models import build_model
from tests.conftest import HOOK_KINDS, one_line, tamper_layer


class _Scale3(nn.Identity):
    """An ``nn.Identity`` subclass computing 3·t (lipschitz(2) still reported 1 and r2 = s(x): 5/5 flipped)."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return 3.0 * t


def _orthogonal() -> nn.Module:
    torch.manual_seed(0)
    return build_model({"kind": "orthogonal", "input_shape": [4], "arch": "mlp", "widths": [8]}).eval()


def test_an_identity_subclass_is_refused_by_path():
    model = _orthogonal()
    model.net.insert(3, _Scale3())
    with pytest.raises(UnsupportedNetworkError) as err:
        asymcert.certify(model, torch.randn(4, 4), norms=(2,))
    assert "net.3: _Scale3 (a subclass of Identity: only the exact type is accepted)" in one_line(err)
    with pytest.raises(ModelError, match=r"net\.3: no ℓ2 Lipschitz constant known for _Scale3"):
        model.lipschitz(2)  # (reported 1.0000000053 before)


@pytest.mark.parametrize("kind", HOOK_KINDS)
def test_hooks_and_replaced_forwards_are_refused_by_path(kind):
    """A ×10 forward hook on net.2 got r2 = 1.2051 and 4/4 certified inputs flipped."""
    model = _orthogonal()
    tamper_layer(model.net[2], kind)
    with pytest.raises(ModelError) as err:
        asymcert.certify(model, torch.randn(4, 4), norms=(2,))
    assert "net.2: " in one_line(err)


def test_torch_pixel_unshuffle_is_refused_by_path():
    """A PyTorch RuntimeError before; torch's nn.PixelUnshuffle declares no Lipschitz constant (asymcert's does)."""
    model = _orthogonal()
    model.net.insert(3, nn.PixelUnshuffle(1))
    with pytest.raises(UnsupportedNetworkError) as err:
        asymcert.certify(model, torch.randn(4, 4), norms=(2,))
    assert "net.3: torch.nn.modules.pixelshuffle.PixelUnshuffle is not allowed here" in one_line(err)


def test_a_nested_sequential_is_certified_like_the_flat_net():
    """A bare TypeError before: the layer walk flattened it, the Lipschitz product read direct children only."""
    flat, nested = _orthogonal(), _orthogonal()
    nested.net.insert(3, nn.Sequential(nn.Identity()))
    x = torch.randn(16, 4, generator=torch.Generator().manual_seed(1))
    assert flat.lipschitz(2) <= nested.lipschitz(2) <= flat.lipschitz(2) * (1 + 1e-15)  # (one more rounding up)
    a, b = asymcert.certify(flat, x, norms=(2, math.inf)), asymcert.certify(nested, x, norms=(2, math.inf))
    for p in a.radii:
        assert bool((b.radii[p] <= a.radii[p]).all()) and torch.allclose(a.radii[p], b.radii[p], rtol=1e-12, atol=0)
    assert bool((b.radii[2.0] > 0).any())


class _TripledWrapper(nn.Module):
    """A user's own class with an orthogonal net as ``.net`` and its Lipschitz constants, whose forward is 3·net(x)."""

    certifier = "orthogonal"

    def __init__(self, inner: nn.Module) -> None:
        super().__init__()
        self.net = inner.net
        self.input_shape = inner.input_shape
        self.inner_lipschitz = inner.lipschitz

    def lipschitz(self, p: float) -> float:
        return self.inner_lipschitz(p)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return 3.0 * self.net(x).squeeze(-1)


def test_a_forward_that_is_not_its_layer_chain_is_refused():
    """The radii are the chain's s/L: a forward that triples it would get radii 3× too large."""
    model = _TripledWrapper(_orthogonal()).eval()
    with pytest.raises(UnsupportedNetworkError, match=r"_TripledWrapper\.forward does not compute its layer chain"):
        asymcert.certify(model, torch.rand(8, 4), norms=(2,))
