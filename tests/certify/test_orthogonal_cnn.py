"""The orthogonal certifier on Cayley-convolution nets (``arch: "cnn"``), and the models it must refuse.

The CNN path adds the Fourier-domain convolutions and their FFT error bound (an assumed constant) to the
rounding analysis. The promise checked here is the same as for the MLPs: the float32 model's own decision
does not change in the open ℓp ball of the certified radius, in both precisions, on typical inputs and on
inputs within 1e-7…1e-2 of the boundary; and no radius exceeds the float64 reference s⁺ / (L₂ · c_p), with
L₂ the product of the layers' spectral norms computed in the test (float64 SVD of every frequency's mixing
matrix and of every dense weight), not by the certifier or ``model.lipschitz``.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch
from torch import nn

import asymcert
from asymcert.certify.bound_propagation import UnsupportedNetworkError
from asymcert.errors import ModelError
from asymcert.models import build_model
from asymcert.nn.feature_maps import Shift
from asymcert.nn.orthogonal import CayleyConv2d, CayleyLinear, GroupSort
from tests.certify.test_certifier_boundary import _no_flip_inside, _pgd_no_flip, _sphere, _worst_direction
from tests.conftest import near_boundary

INF = math.inf
NORMS = (1.0, 2.0, INF)
SHAPE = (1, 8, 8)
CNN = {"kind": "orthogonal", "input_shape": list(SHAPE), "arch": "cnn", "channels": [4, 8], "fc": [16], "kernel": 3}


def _cnn(seed: int) -> nn.Module:
    """A Cayley-convolution net on 1×8×8 inputs in [0, 1], its output bias moved so that half of U(0, 1) is flagged."""
    torch.manual_seed(seed)
    model = build_model({**CNN, "input_range": [0, 1]})
    model.fit_input(torch.rand(64, *SHAPE))
    model.eval()
    with torch.no_grad():
        model.net[-1].bias -= model(torch.rand(256, *SHAPE)).median()
    return model


def _spectral_product64(model: nn.Module) -> float:
    """L₂ from the weights in float64: a circular convolution's norm is the largest spectral norm of its
    per-frequency mixing matrices (Parseval); MaxMin/GroupSort, PixelUnshuffle, Flatten and Shift are 1-Lipschitz."""
    out = 1.0
    with torch.no_grad():
        for layer in model.net:
            if isinstance(layer, CayleyConv2d):
                out *= float(torch.linalg.matrix_norm(layer.frequency_weights().to(torch.complex128), 2).max())
            elif isinstance(layer, CayleyLinear):
                out *= float(torch.linalg.matrix_norm(layer.weight.double(), 2))
            else:
                assert isinstance(layer, Shift | GroupSort | nn.PixelUnshuffle | nn.Flatten), type(layer)
    return out


@pytest.mark.parametrize("precision", ["float64", "model"])
@pytest.mark.parametrize("seed", [0, 1])
def test_cnn_radii_are_below_the_float64_reference_and_hold_under_attack(seed, precision):
    """Orthogonal CNN, typical + near-boundary inputs: r_p ≤ s64⁺/(L₂·c_p) (independent float64), close to it
    away from the boundary, and neither the worst direction of the local gradient, random sphere points nor
    PGD at 0.999·r flips the float32 decision."""
    model = _cnn(seed)
    gen = torch.Generator().manual_seed(seed + 10)
    x = torch.rand(200, *SHAPE, generator=gen)
    xs = torch.cat([x, near_boundary(model, x)])
    n_typical = len(x)
    m64 = copy.deepcopy(model).double()
    xr = xs.double().requires_grad_(True)
    s64 = m64(xr).reshape(-1)
    (grad,) = torch.autograd.grad(s64.sum(), xr)
    s64, grad = s64.detach(), grad.flatten(1)
    lip = _spectral_product64(model)
    assert abs(lip - 1.0) < 1e-4  # orthogonal layers: the reference is not vacuous
    cert = asymcert.certify(model, xs, norms=NORMS, precision=precision)
    d = math.prod(SHAPE)
    for p in NORMS:
        r = cert.radii[p]
        c_p = math.sqrt(d) if math.isinf(p) else 1.0
        reference = s64.clamp_min(0) / (lip * c_p)
        assert bool((r <= reference).all()), (precision, p, float((r - reference).max()))
        typical = s64 > 1e-2
        assert bool((r[typical] >= (s64[typical] - 1e-3) / (lip * c_p * (1 + 1e-3))).all()), (precision, p)
        pos = r > 0
        assert int(pos[:n_typical].sum()) >= 20 and int(pos[n_typical:].sum()) >= 10  # near-boundary rows too
        k = int(pos.sum())
        dirs = [_worst_direction(grad[pos], p)] + [_sphere(k, d, p, gen) for _ in range(3)]
        assert _no_flip_inside(model, xs[pos], r[pos], cert.predicted[pos], p, dirs) > 100
        _pgd_no_flip(model, xs[pos], r[pos], cert.predicted[pos], p)


def test_an_unknown_layer_is_refused_by_name():
    """A layer whose rounding the orthogonal certifier does not analyse (nn.Linear) is refused, naming it."""
    torch.manual_seed(0)
    model = build_model({"kind": "orthogonal", "input_shape": [6], "arch": "mlp", "widths": [8, 8]}).eval()
    model.net.insert(1, nn.Linear(6, 6))
    with pytest.raises(UnsupportedNetworkError, match="Linear"):
        asymcert.certify(model, torch.rand(5, 6))


@pytest.mark.parametrize(
    "config,param",
    [
        ({"input_shape": [6], "arch": "mlp", "widths": [8, 8]}, "net.2.weight_param"),
        ({k: v for k, v in CNN.items() if k != "kind"}, "net.4.weight_param"),
    ],
    ids=["mlp", "cnn"],
)
def test_a_nan_weight_is_refused_naming_the_parameter(config, param):
    """An in-memory orthogonal net with a NaN parameter is refused by asymcert.certify with a ModelError naming it."""
    torch.manual_seed(0)
    model = build_model({"kind": "orthogonal", **config}).eval()
    with torch.no_grad():
        model.get_parameter(param).view(-1)[0] = math.nan
    with pytest.raises(ModelError, match=r"NaN or Inf.*" + param.replace(".", r"\.")):
        asymcert.certify(model, torch.rand(4, *config["input_shape"]))
