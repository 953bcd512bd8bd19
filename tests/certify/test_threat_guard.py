"""The float guard under a threat model (:mod:`asymcert.certify.threat_guard`): each norm's radii are made to hold
over the box of allowed moves of that norm's own radius, so they do not depend on the other norms asked for, and
the float32 decision holds inside them under the threat model's own attack, near the boundary too."""

from __future__ import annotations

import math

import pytest
import torch

import asymcert
from asymcert.certify.attacks import decisions
from asymcert.certify.threat_attack import move_sizes, threat_attack
from asymcert.models import build_model
from asymcert.threat import ThreatModel
from tests.conftest import near_boundary

N_FEATURES = 40
TM = ThreatModel(lower={"*": 0.0}, scale={"*": 1.0})


def _wide_model(seed: int) -> tuple[torch.nn.Module, torch.Tensor]:
    """(model, x): an ICNN on 40 raw features near 0, balanced 0.5 below the median score, where a move of the ℓ1
    radius (about 10× the ℓ∞ one) triples the magnitude of the score's terms, so its box lowers the margin."""
    torch.manual_seed(seed)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [N_FEATURES],
            "feature_map": [],
            "convex": {"kind": "icnn", "widths": [8], "batch_norm": False},
        }
    ).eval()
    x = torch.rand(64, N_FEATURES, generator=torch.Generator().manual_seed(seed)) * 1e-3
    with torch.no_grad():
        for name, p in model.named_parameters():
            p.copy_(torch.rand_like(p) if "hidden" in name else torch.randn_like(p) if "passthrough" in name else p)
        model.set_balance(-float(model(x).median()) + 0.5)
    return model, x


@pytest.mark.parametrize("reach", [False, True])
@pytest.mark.parametrize("seed", [0, 1])
def test_a_norms_guarded_radii_do_not_depend_on_the_other_norms_asked_for(seed, reach):
    """Session 32's guard sized one box by the largest radius of any norm: asked with ℓ1, the ℓ∞ radii were
    lowered by the ℓ1 box's rounding (by 1e-8…1e-7 here; with extreme scales to 0)."""
    model, x = _wide_model(seed)
    both = asymcert.certify(model, x, norms=(1.0, 2.0, math.inf), threat_model=TM, reach=reach)
    assert float(both.radii[1.0].max()) > 5 * float(both.radii[math.inf].max()) > 0  # the ℓ1 box is the wider
    for p in (2.0, math.inf):
        alone = asymcert.certify(model, x, norms=(p,), threat_model=TM, reach=reach)
        assert torch.equal(alone.radii[p], both.radii[p]), (p, (alone.radii[p] - both.radii[p]).abs().max())


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_per_norm_guarded_radii_hold_against_the_threat_attack_near_the_boundary(p):
    """The float32 decision never flips under the threat model's attack at 0.999·r, its moves re-measured in
    float64, on typical inputs and on inputs within 1e-7…1e-2 of the boundary."""
    model, x = _wide_model(2)
    tm = TM.resolve(None, N_FEATURES)
    inputs = torch.cat([x, near_boundary(model, x).clamp_min(0.0)])
    cert = asymcert.certify(model, inputs, norms=(1.0, 2.0, math.inf), threat_model=TM)
    flagged = (cert.predicted == 1) & (cert.radii[p] > 0)
    assert int(flagged.sum()) >= 20
    eps = (cert.radii[p][flagged] * 0.999).float()
    xs = inputs[flagged]
    adv = threat_attack(model, xs, eps, p, tm, steps=60, restarts=2, generator=torch.Generator().manual_seed(0))
    assert bool((move_sizes(xs, adv, tm, p) <= eps.double()).all())
    assert bool(decisions(model, adv).all()), "a flag removed inside the guarded radius"


MIXED_TM = ThreatModel(
    scale={"0": 0.5, "2": 3.0},
    immutable=["1"],
    increase_only=["2", "3"],
    decrease_only=["4"],
    lower={"*": 0.0},
    upper={"*": 1.0, "5": 1.2},
)


def _concat_abs_model() -> tuple[torch.nn.Module, torch.Tensor]:
    """(model, x): φ = standardize, concat-abs (which bounds no values over a box) and a batch-norm ICNN [16, 8] on 6
    features, balanced at the median score of its fitting inputs; x (60, 6) in the threat model's domain, many of
    them on its walls."""
    torch.manual_seed(0)
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [6],
            "feature_map": [{"kind": "standardize"}, {"kind": "concat-abs"}],
            "convex": {"kind": "icnn", "widths": [16, 8], "batch_norm": True},
        }
    )
    x = torch.rand(128, 6)
    with torch.no_grad():
        model.train()
        model.feature_map.fit(x)
        for _ in range(3):
            model(x)
        model.eval()
        model.set_balance(0.0)
        model.set_balance(-float(model(x).median()))
    tm = MIXED_TM.resolve(None, 6)
    spread = torch.rand(60, 6) * 1.2 - 0.1  # many on the domain's walls
    return model, torch.minimum(torch.maximum(spread, tm.lower.float()), tm.upper.float())


def test_a_feature_map_without_an_image_takes_the_slope_bound_over_the_box_not_the_slope_cap():
    """concat-abs declares weight bounds but no image of a box: the guard bounds A over the box of allowed moves
    by its slope (A + Σ α_i·scale_i·r, what the ONNX graph takes), where it used to cap the radius at the slope caps:
    0.62 where the unguarded radius is 0.996 (session 33's ONNX review, its finding 4, input 46)."""
    model, x = _concat_abs_model()
    guarded = asymcert.certify(model, x, norms=(math.inf,), threat_model=MIXED_TM).radii[math.inf]
    exact = asymcert.certify(model, x, norms=(math.inf,), threat_model=MIXED_TM, guard=False).radii[math.inf]
    finite = torch.isfinite(exact) & (exact > 1e-3)
    assert int(finite.sum()) >= 20
    assert bool((guarded[finite] >= exact[finite] * (1 - 1e-3)).all()), (guarded[finite] / exact[finite]).min()
    assert bool((guarded <= exact).all())


def test_guarded_radii_of_a_feature_map_without_an_image_hold_against_the_threat_attack():
    """The float32 decision never flips under the threat model's attack at 0.999·r (ℓ∞), near the boundary too."""
    model, x = _concat_abs_model()
    tm = MIXED_TM.resolve(None, 6)
    inputs = torch.cat([x, near_boundary(model, x).clamp(0.0, 1.0)])
    cert = asymcert.certify(model, inputs, norms=(math.inf,), threat_model=MIXED_TM)
    flagged = (cert.predicted == 1) & (cert.radii[math.inf] > 0) & torch.isfinite(cert.radii[math.inf])
    assert int(flagged.sum()) >= 20
    eps = cert.radii[math.inf][flagged] * 0.999
    xs = inputs[flagged]
    adv = threat_attack(model, xs, eps, math.inf, tm, steps=60, restarts=2, generator=torch.Generator().manual_seed(0))
    assert bool((move_sizes(xs, adv, tm, math.inf) <= eps).all())
    assert bool(decisions(model, adv).all()), "a flag removed inside the guarded radius"
