"""The ONNX graph's plain radii (no threat model) near the decision boundary, attacked in onnxruntime.

The graph's radius promises that onnxruntime's own ``flagged`` output does not change inside it; near the boundary
onnxruntime may round the score differently from PyTorch, so the promise is checked against onnxruntime itself.
For every exported model family, on inputs bisected to float64 scores 1e-7…1e-2 (``near_boundary``): PGD at
0.999·r, the steepest-descent direction of the float64 copy's gradient (computed in the test, independent of the
certifier) and random sphere points at 0.999·r (and 0.99·r) are evaluated by onnxruntime, and no flagged input
becomes unflagged.
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

from asymcert.certify.attacks import pgd_attack
from tests.certify.test_certifier_boundary import _sphere, _worst_direction
from tests.conftest import near_boundary
from tests.export.test_onnx import MODELS, SHAPE, _run, _session

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

KEYS = {1.0: "radius_l1", 2.0: "radius_l2", math.inf: "radius_linf"}


def _lp(v: torch.Tensor, p: float) -> torch.Tensor:
    return torch.linalg.vector_norm(v.flatten(1).double(), ord=p, dim=1)


@pytest.mark.parametrize("name", list(MODELS))
def test_near_boundary_onnx_radii_hold_in_onnxruntime(name, tmp_path):
    """Near-boundary inputs flagged with an ONNX radius r > 0: no attack point strictly inside r (PGD, the float64
    gradient's worst direction, sphere points) is unflagged by onnxruntime."""
    model = MODELS[name]()
    x = near_boundary(model, torch.rand(300, *SHAPE, generator=torch.Generator().manual_seed(2)))
    sess = _session(model, tmp_path)
    got = _run(sess, x)
    xr = x.double().requires_grad_(True)
    s64 = copy.deepcopy(model).double()(xr)
    (grad,) = torch.autograd.grad(s64.sum(), xr)
    grad = grad.flatten(1)
    gen = torch.Generator().manual_seed(0)
    d = math.prod(SHAPE)
    for p, key in KEYS.items():
        r = got[key].double()
        keep = got["flagged"] & (r > 0)
        assert int(keep.sum()) >= 20, f"{key}: too few near-boundary inputs with a radius"
        assert float(s64.detach()[keep].min()) < 1e-3  # some of them are within 1e-3 of the boundary
        xs, rk = x[keep], r[keep]
        points = [pgd_attack(model, xs, (0.999 * rk).float(), p, steps=60, restarts=2, generator=gen)]
        for direction in [_worst_direction(grad[keep], p)] + [_sphere(len(xs), d, p, gen) for _ in range(3)]:
            for f in (0.99, 0.999):
                points.append((xs.double().flatten(1) + f * rk[:, None] * direction).float().reshape(xs.shape))
        checked = 0
        for pt in points:
            inside = _lp(pt.double() - xs.double(), p) < rk
            unflagged = ~_run(sess, pt)["flagged"] & inside
            assert not bool(unflagged.any()), f"{key}: {int(unflagged.sum())} onnxruntime flips inside the radius"
            checked += int(inside.sum())
        assert checked > 5 * int(keep.sum())  # most of the 9 points per input are strictly inside the ball
