"""Bound propagation refuses, in one line naming the layer by module path, every network its bounds do not
describe (session 33 families review, findings 1–3): a convolution padded other than with zeros (CROWN's radii of
a circular-padded net were broken by PGD), a subclass of an allowed layer (an ``nn.Identity`` computing −3·t was
bounded as the identity), and hooks or a replaced ``forward`` on any module. Zero-padded convolutions with any
stride, dilation and groups are bounded, and their radii hold under PGD."""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import asymcert
from asymcert.certify.bound_propagation import METHODS, UnsupportedNetworkError
from asymcert.errors import ModelError
from asymcert.models import build_model
from tests.certify.test_bound_propagation import pgd_min_score
from tests.conftest import HOOK_KINDS, one_line, tamper_layer


class _Neg3(nn.Identity):
    """An ``nn.Identity`` subclass that is not the identity."""

    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return -3.0 * t


class _WeirdReLU(nn.ReLU):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return torch.relu(-t) * 5


class _ScaledLinear(nn.Linear):
    def forward(self, t: torch.Tensor) -> torch.Tensor:
        return super().forward(t) * 10.0


class _ConvNet(nn.Module):
    """(N, 1, 6, 6) → (N,): conv(padding 1, ``mode``) → ReLU → conv(**second) → ReLU → Linear."""

    input_shape = (1, 6, 6)

    def __init__(self, mode: str = "zeros", **second: int) -> None:
        super().__init__()
        first = nn.Conv2d(1, 4, 3, padding=1, padding_mode=mode)
        conv = nn.Conv2d(4, 4, 3, **{"padding": 1, **second})
        with torch.no_grad():
            size = conv(first(torch.zeros(1, *self.input_shape))).numel()
        self.net = nn.Sequential(first, nn.ReLU(), conv, nn.ReLU(), nn.Flatten(), nn.Linear(size, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.net(x).squeeze(-1)


def _relu_ibp() -> nn.Module:
    torch.manual_seed(0)
    return build_model({"kind": "relu-ibp", "input_shape": [4], "arch": "mlp", "widths": [8]}).eval()


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
def test_a_conv_padded_other_than_with_zeros_is_refused_by_path(mode, method):
    """Review s33 families 1: CROWN certified r∞ 0.0596 on a circular-padded net, PGD flipped it at 0.0595."""
    torch.manual_seed(0)
    model = _ConvNet(mode).eval()
    with pytest.raises(UnsupportedNetworkError) as err:
        asymcert.certify(model, torch.rand(4, 1, 6, 6), norms=("inf",), method=method)
    assert f"net.0: Conv2d has padding_mode='{mode}'" in one_line(err)


def test_padding_mode_does_not_matter_without_padding_and_zeros_is_accepted():
    torch.manual_seed(0)
    unpadded = _ConvNet().eval()
    unpadded.net[2] = nn.Conv2d(4, 4, 3, padding=0, padding_mode="circular")
    unpadded.net[5] = nn.Linear(64, 1)
    x = torch.rand(4, 1, 6, 6)
    assert asymcert.certify(unpadded, x, norms=("inf",), method="crown").radii[math.inf].shape == (4,)
    assert asymcert.certify(_ConvNet().eval(), x, norms=("inf",), method="crown").radii[math.inf].shape == (4,)


@pytest.mark.parametrize(
    "second", [{"stride": 2}, {"dilation": 2, "padding": 2}, {"groups": 2}, {"stride": 2, "dilation": 2, "groups": 4}]
)
def test_zero_padded_convs_with_stride_dilation_and_groups_hold_under_pgd(second):
    """The passes read the convolution's stride, dilation and groups: no PGD point inside 0.999·r flips."""
    torch.manual_seed(0)
    model = _ConvNet(**second).eval()
    x = torch.rand(16, 1, 6, 6, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        model.net[-1].bias -= model(x).median()
    m64 = copy.deepcopy(model).double()
    for method in ("crown", "crown-ibp"):
        for p in (math.inf, 2.0):
            r = asymcert.certify(model, x, norms=(p,), method=method).radii[p]
            keep = r > 0
            assert int(keep.sum()) >= 4
            worst = pgd_min_score(m64, x[keep].double(), 0.999 * r[keep], p, steps=80, restarts=2)
            assert bool((worst > 0).all()), (second, method, p)


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize(
    "where,layer,base",
    [("insert 3", _Neg3(), "Identity"), ("net.3", _WeirdReLU(), "ReLU"), ("net.4", _ScaledLinear(8, 1), "Linear")],
)
def test_a_subclass_of_an_allowed_layer_is_refused_by_path(where, layer, base, method):
    """Review s33 families 2: the three subclasses were certified and thousands of moves inside r flipped."""
    model = _relu_ibp()
    if where == "insert 3":
        model.net.insert(3, layer)
    else:
        model.net[int(where.split(".")[1])] = layer
    with pytest.raises(UnsupportedNetworkError) as err:
        asymcert.certify(model, torch.randn(4, 4), norms=("inf",), method=method)
    name = type(layer).__name__
    assert f"net.{3 if where == 'insert 3' else where[4:]}: {name} (a subclass of {base}" in one_line(err)


@pytest.mark.parametrize("kind", HOOK_KINDS)
@pytest.mark.parametrize("wrapped", [True, False])
def test_hooks_and_replaced_forwards_are_refused_by_path(kind, wrapped):
    """Review s33 families 3: a ×10 hook on net.2 got r∞ 1.69 under CROWN and both certified inputs flipped. Refused
    for the family's model (its validate()) and for a plain nn.Sequential (certify's model check) alike."""
    model = _relu_ibp()
    tamper_layer(model.net[2], kind)
    target = model if wrapped else model.net
    with pytest.raises(ModelError) as err:
        asymcert.certify(target, torch.randn(4, 4), norms=("inf",), method="crown")
    text = one_line(err)
    path = "net.2" if wrapped else "2"
    assert f"{path}: " in text and ("hook" in text if kind != "replaced forward" else "forward" in text)


def test_a_model_subclass_overriding_forward_is_refused():
    base = _relu_ibp()

    class Negated(type(base)):
        def forward(self, x: torch.Tensor) -> torch.Tensor:
            return -super().forward(x)

    model = Negated(base.net, base.input_shape, None, base.arch).eval()
    with pytest.raises(ModelError, match=r"Negated overrides forward\(\)"):
        asymcert.certify(model, torch.randn(4, 4), norms=("inf",), method="ibp")


class _NegatedWrapper(_ConvNet):
    """A user's own class whose ``forward`` negates its layer chain: the bounds of ``.net`` are not its score's."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return -self.net(x).squeeze(-1)


@pytest.mark.parametrize("method", METHODS)
def test_a_forward_that_is_not_its_layer_chain_is_refused(method):
    """A wrapper whose forward is −net(x) was certified with net's bounds (session 33 families fix, left open)."""
    model = _NegatedWrapper().eval()
    with pytest.raises(UnsupportedNetworkError, match=r"_NegatedWrapper\.forward does not compute its layer chain"):
        asymcert.certify(model, torch.rand(4, 1, 6, 6), norms=("inf",), method=method)


def test_a_refused_network_is_a_model_error():
    """Every model asymcert cannot vouch for is a ModelError, whichever certifier refuses it (so the exporters and
    save, which catch ModelError, name it as theirs)."""
    assert issubclass(UnsupportedNetworkError, ModelError)
    model = _ConvNet("circular").eval()
    with pytest.raises(ModelError, match="padding_mode='circular'"):
        asymcert.certify(model, torch.rand(2, 1, 6, 6), norms=("inf",), method="crown")
