"""VNN-LIB export WITHOUT a threat model on inputs within 1e-7…1e-2 of the boundary (plus typical ones): the raw ℓ∞
boxes hold in onnxruntime, the runtime a third-party verifier's check of the exported graph reads.

Promises checked for every written property (``Y_0 <= 0`` must be unsatisfiable inside its box):

- the box contains x, lies in the input range and is at most 2·radius_linf wide, and radius_linf is at most the
  library's own ℓ∞ radius of that input;
- onnxruntime's score is > 0 at the worst-case corner (each coordinate against the float64 gradient at x), at random
  corners and random points of the box, and at PGD points just inside radius_linf;
- most near-boundary inputs with a positive library radius do get properties (the check reaches them).
"""

from __future__ import annotations

import copy

import pytest
import torch

import asymcert
from asymcert.certify.attacks import pgd_attack
from asymcert.export import to_vnnlib
from tests.conftest import near_boundary
from tests.export.test_vnnlib import SHAPE, _model, parse_vnnlib

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")


def test_plain_boxes_near_the_boundary_hold_in_onnxruntime(tmp_path):
    """No point of any written box (corners, random points, PGD points) is unflagged by onnxruntime."""
    model = _model()
    x = torch.rand(80, *SHAPE, generator=torch.Generator().manual_seed(4))
    near = near_boundary(model, torch.rand(200, *SHAPE, generator=torch.Generator().manual_seed(5)))
    xs = torch.cat([x, near])
    props = to_vnnlib(model, xs, tmp_path)
    library = asymcert.certify(model, xs, norms=("inf",)).radii[float("inf")]
    near_props = [p for p in props if p.index >= len(x)]
    assert len(props) >= 30 and len(near_props) >= 10, (len(props), len(near_props))
    # (the graph's own rounding allowance may take the smallest radii to 0: no property for those)
    assert len(near_props) >= 0.8 * int((library[len(x) :] > 0).sum())
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    m64 = copy.deepcopy(model).double()
    gen = torch.Generator().manual_seed(6)
    d = xs[0].numel()
    for prop in props:
        low, high, unsafe = parse_vnnlib((tmp_path / prop.file).read_text(), d)
        assert unsafe == "Y_0 <= 0.0"
        xi, r = xs[prop.index].double().flatten(), prop.radii["radius_linf"]
        assert 0 < r <= float(library[prop.index])
        assert bool((low <= xi).all() and (xi <= high).all() and (low >= 0).all() and (high <= 1).all())
        assert float((high - low).max()) <= 2 * r
        xg = xi.view(1, *SHAPE).clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(m64(xg).sum(), xg)
        worst = torch.where(grad.flatten() > 0, low, high)[None]
        corners = torch.where(torch.rand(64, d, generator=gen) < 0.5, low, high)
        inside = low + torch.rand(64, d, generator=gen, dtype=torch.float64) * (high - low)
        points = torch.cat([worst, corners, inside]).float().view(-1, *SHAPE)
        (scores,) = sess.run(None, {"x": points.numpy()})
        assert bool((scores[:, 0] > 0).all()), f"{prop.file} (input {prop.index}): a point of the box is not flagged"
    idx = torch.tensor([p.index for p in props])
    eps = torch.tensor([p.radii["radius_linf"] for p in props], dtype=torch.float64) * (1 - 1e-6)
    adv = pgd_attack(model, xs[idx], eps, "inf", steps=60, restarts=3, input_range=(0.0, 1.0), generator=gen)
    (scores,) = sess.run(None, {"x": adv.numpy()})
    assert bool((scores[:, 0] > 0).all()), "a PGD point inside a box has Y_0 <= 0 in onnxruntime"
