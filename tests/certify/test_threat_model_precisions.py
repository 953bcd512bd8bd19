"""Threat-model radii of a feature-convex model in every precision and with the guard off, on a ONE-hidden-layer
ICNN with φ = standardize (the model ``precision="bounded"`` accepts, and for which ``auto`` means bounded).

Promises checked, on typical inputs and on inputs within 1e-7…1e-2 of the boundary:

- no radius exceeds (and, away from the boundary, every radius is within 0.2% of) the independent float64
  tangent-plane radius s / ‖scale ⊙ harm‖_dual (harm: the largest allowed fall of s per unit move of each
  coordinate, from autograd through a float64 copy; exact for φ affine and g convex), computed here without
  the certifier's code;
- the threat model's own attack at 0.999·r, its moves re-measured with ``move_sizes`` in float64, never makes
  the float32 decision flip (guard on) nor the float64 score ≤ 0 (guard on or off: with the guard off the
  radius certifies the exact function, so the attack runs on a float64 copy).
"""

from __future__ import annotations

import copy
import math

import pytest
import torch

import asymcert
from asymcert.certify.bounded_icnn import supports_bounded_icnn
from asymcert.certify.threat_attack import move_sizes, threat_attack
from asymcert.models import build_model
from tests.conftest import near_boundary
from tests.test_threat import TM as THREAT_TESTS_TM

NORMS = (1.0, 2.0, math.inf)
DUAL = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}
EPS64 = torch.finfo(torch.float64).eps
TM = THREAT_TESTS_TM  # (scales, an immutable feature, one-way moves and bounds, on 6 features)


def _one_layer_icnn(seed: int = 0) -> tuple[torch.nn.Module, torch.Tensor]:
    """(model, x): ICNN widths [16] without batch norm on standardize(x), hidden weights ×200 (curved), the
    balance at the median score of x (256, 6) in the threat model's domain [0, 3]."""
    x = torch.rand(256, 6, generator=torch.Generator().manual_seed(seed)) * 3
    torch.manual_seed(seed)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [6],
            "feature_map": [{"kind": "standardize"}],
            "convex": {"kind": "icnn", "widths": [16], "batch_norm": False},
        }
    ).eval()
    with torch.no_grad():
        for name, p in model.named_parameters():
            if "hidden" in name:
                p.mul_(200.0)
        model.feature_map.fit(x)
        model.balance -= model(x).median()
    return model, x


def _tangent_radius64(model, x, tm, p: float) -> tuple[torch.Tensor, torch.Tensor]:
    """(s64 (N,), upper (N,)): the float64 tangent-plane radius in threat-model units, with s raised by
    8·eps64 times the magnitude of its terms (the float64 score's own rounding)."""
    m64 = copy.deepcopy(model).double()
    x64 = x.double().requires_grad_(True)
    f = m64.features(x64)
    s = m64.score_from_features(f)
    grad_f, grad = torch.autograd.grad(s.sum(), [f, x64])
    s = s.detach()
    mag = (grad_f * f.detach()).abs().sum(1) + s.abs() + float(m64.balance.abs())
    up, down = tm.directions(x)
    harm = torch.maximum(torch.where(up, (-grad).clamp_min(0), 0.0), torch.where(down, grad.clamp_min(0), 0.0))
    den = torch.linalg.vector_norm(harm * tm.scale, ord=DUAL[p], dim=1)
    return s, (s + 8 * EPS64 * mag).clamp_min(0) / den


@pytest.mark.parametrize("guard", [True, False], ids=["guard", "no-guard"])
@pytest.mark.parametrize("precision", ["bounded", "model", "auto"])
@pytest.mark.parametrize("near", [False, True], ids=["typical", "near-boundary"])
def test_threat_radii_of_a_one_layer_icnn_hold_in_every_precision(near, precision, guard):
    """precision bounded/model/auto × guard on/off under a threat model with one-way moves, an immutable
    feature and a domain: r ≤ the independent float64 tangent radius, and threat_attack at 0.999·r (moves
    checked in float64) flips neither the float32 decision (guard on) nor the float64 score."""
    model, x = _one_layer_icnn()
    assert supports_bounded_icnn(model, torch.device("cpu"))  # so "auto" is the bounded path, not float64
    if near:
        x = near_boundary(model, x)
    tm = TM.resolve(None, 6)
    cert = asymcert.certify(model, x, norms=NORMS, threat_model=tm, precision=precision, guard=guard)
    flagged = cert.predicted.bool()
    m64 = copy.deepcopy(model).double()
    gen = torch.Generator().manual_seed(1)
    for p in NORMS:
        r = cert.radii[p]
        s64, upper = _tangent_radius64(model, x, tm, p)
        assert bool((r[flagged] <= upper[flagged] * (1 + 1e-9)).all()), (precision, guard, p)
        # and tight away from the boundary (measured: within 8e-4 of it); near_boundary's scores stop at 1e-2, where
        # the guard's absolute allowance is ~0.2% of s, so one of them landing a hair above 1e-2 made this a coin toss
        away = flagged & (s64 > 1.5e-2)
        assert bool((r[away] >= upper[away] * 0.998).all()), (precision, guard, p)
        rows = flagged & torch.isfinite(r) & (r > 0)
        assert int(rows.sum()) >= 20, f"ℓ{p}: too few positive radii to attack"
        if near:
            assert int((rows & (s64 < 1e-3)).sum()) >= 5  # some attacked rows are really near the boundary
        xf, rf = x[rows], r[rows] * 0.999
        target, start = (model, xf) if guard else (m64, xf.double())
        adv = threat_attack(target, start, rf, p, tm, steps=60, restarts=2, generator=gen)
        assert bool((move_sizes(start, adv, tm, p) <= rf).all())
        with torch.no_grad():
            assert int((m64(adv.double()) <= 0).sum()) == 0, f"ℓ{p}: float64 score ≤ 0 inside the radius"
            if guard:
                assert int((model(adv) <= 0).sum()) == 0, f"ℓ{p}: the model's decision flipped inside the radius"
        # the attack has teeth: at 4× the radius it flips many of the same inputs
        far = threat_attack(target, start, r[rows] * 4, p, tm, steps=60, restarts=2, generator=gen)
        with torch.no_grad():
            assert int((m64(far.double()) <= 0).sum()) > 0.3 * int(rows.sum())
