"""A BINARY ℓ∞-dist net with an MLP head (``binary=True, mlp_head=6``: s = logit₁ − logit₀ through a tanh layer), near
its boundary and on typical inputs, in precision "float64" and "model".

Promises checked (the FLAG guarantee: class 1 is the sensitive class):

- ``predicted`` is the model's own decision s > 0, and every unflagged input has radius 0;
- (float64 recomputation) every ℓ∞ radius is at most the exact-arithmetic IBP radius of the head that the test computes
  by its own interval arithmetic and bisection in float64 (``_linf_head_radius64`` with class 1), and at least 90% of
  it away from the boundary; the ℓ1 and ℓ2 radii equal the ℓ∞ one (‖δ‖∞ ≤ ‖δ‖_p);
- random ℓ∞-sphere corners at fractions of r and PGD at 0.999·r (targeted away from the flag) never unflag an input.
"""

from __future__ import annotations

import math

import pytest
import torch

import asymcert
from asymcert.models import build_model
from tests.certify.test_certifier_boundary import (
    _linf_head_radius64,
    _linf_logits64,
    _no_flip_inside,
    _pgd_no_flip,
    _sphere,
)
from tests.conftest import near_boundary

INF = math.inf
NORMS = (1.0, 2.0, INF)
D = 8


def _binary_head_net(seed: int) -> torch.nn.Module:
    """ℓ∞-dist layer (16) + tanh head (6) → 2 logits, binary; the class-1 bias moved so ~half of N(0, I) is flagged."""
    torch.manual_seed(seed)
    model = build_model(
        {
            "kind": "linf-dist",
            "input_shape": [D],
            "widths": [16],
            "input_range": None,
            "num_classes": 2,
            "binary": True,
            "mlp_head": 6,
        }
    )
    model.set_p(INF)
    model.fit_input(torch.randn(64, D))
    model.eval()
    with torch.no_grad():
        model.head_out.bias[1] -= model(torch.randn(256, D)).median()
    return model


@pytest.mark.parametrize("precision", ["float64", "model"])
@pytest.mark.parametrize("seed", [0, 1, 2])
def test_binary_linf_dist_with_mlp_head_near_the_boundary(seed, precision):
    """r ≤ the float64 IBP radius of the head (tight away from the boundary); no flag lost inside r."""
    model = _binary_head_net(seed)
    assert model.out is None and model.binary
    gen = torch.Generator().manual_seed(seed + 1)
    logits64 = lambda z: _linf_logits64(model, z)  # noqa: E731
    base = torch.randn(300, D, generator=gen)
    x = torch.cat([near_boundary(model, base, low=1e-6, high=1e-2), base[:60]])  # float64 scores 1e-6…1e-2
    cert = asymcert.certify(model, x, norms=NORMS, precision=precision)
    with torch.no_grad():
        s = model(x)
    assert cert.binary and torch.equal(cert.predicted, (s > 0).long())
    flagged = cert.predicted == 1
    assert 0.2 < float(flagged[-60:].double().mean()) < 0.8
    r = cert.radii[INF]
    assert bool((r[~flagged] == 0).all())
    assert all(torch.equal(cert.radii[p], r) for p in NORMS)
    g64 = logits64(x)
    margin64 = g64[:, 1] - g64[:, 0]
    reference = _linf_head_radius64(model, x, torch.ones(len(x), dtype=torch.long))
    assert bool((r <= reference).all()), "above the float64 IBP radius of the head"
    # away from the boundary (this head's margins are small: |s| ≲ 0.05 on N(0, I))
    typical = flagged & (margin64 > 3e-3) & (torch.arange(len(x)) >= len(x) - 60)
    assert int(typical.sum()) >= 8
    assert bool((r[typical] >= reference[typical] * 0.9).all()), "far below the float64 IBP radius"
    pos = r > 0
    near_pos = pos & (torch.arange(len(x)) < len(x) - 60)
    assert int(pos.sum()) >= 20 and int(near_pos.sum()) >= 10
    dirs = [_sphere(int(pos.sum()), D, INF, gen) for _ in range(8)]
    assert _no_flip_inside(model, x[pos], r[pos], cert.predicted[pos], INF, dirs) > 100
    _pgd_no_flip(model, x[pos], r[pos], cert.predicted[pos], INF)
