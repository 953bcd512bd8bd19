"""PGD attacks: projections, budgets, and flips found exactly where linear models say they exist."""

from __future__ import annotations

import math

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from asymcert.certify.attacks import decision_flips, decisions, pgd_attack, project_l1_ball, project_lp_ball
from asymcert.errors import InputError

# ---------------------------------------------------------------------------------------------
# Projections
# ---------------------------------------------------------------------------------------------


def slow_l1_projection(v: np.ndarray, eps: float) -> np.ndarray:
    """Reference: bisection on the soft threshold θ with ‖soft(v, θ)‖₁ = eps (independent of sorting)."""
    if np.abs(v).sum() <= eps:
        return v.copy()
    if eps == 0:
        return np.zeros_like(v)
    lo, hi = 0.0, float(np.abs(v).max())
    for _ in range(200):
        mid = 0.5 * (lo + hi)
        if np.maximum(np.abs(v) - mid, 0).sum() > eps:
            lo = mid
        else:
            hi = mid
    return np.sign(v) * np.maximum(np.abs(v) - 0.5 * (lo + hi), 0)


finite = st.floats(-100, 100, allow_nan=False, allow_infinity=False)


@settings(max_examples=150, deadline=None)
@given(v=arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 12)), elements=finite), eps=st.floats(0, 50))
def test_l1_projection_matches_slow_reference(v, eps):
    eps_rows = np.full(v.shape[0], eps)
    eps_rows[::2] *= 0.5  # every row its own radius
    got = project_l1_ball(torch.from_numpy(v), torch.from_numpy(eps_rows)).numpy()
    for row, e, g in zip(v, eps_rows, got):
        ref = slow_l1_projection(row, e)
        np.testing.assert_allclose(g, ref, atol=1e-9 * (1 + np.abs(row).max()))
        assert np.abs(g).sum() <= e * (1 + 1e-12) + 1e-12


@settings(max_examples=100, deadline=None)
@given(v=arrays(np.float64, st.tuples(st.integers(1, 4), st.integers(1, 12)), elements=finite), eps=st.floats(0.01, 50))
def test_l1_projection_is_the_nearest_point_of_the_ball(v, eps):
    """Optimality: no random point of the ball is closer to v than its projection."""
    eps_t = torch.full((v.shape[0],), eps, dtype=torch.float64)
    proj = project_l1_ball(torch.from_numpy(v), eps_t)
    rng = np.random.default_rng(0)
    cand = torch.from_numpy(rng.normal(size=(64,) + v.shape))
    cand = torch.stack([project_l1_ball(c, eps_t) for c in cand])  # points of the ball
    d_proj = (proj - torch.from_numpy(v)).norm(dim=1)
    d_cand = (cand - torch.from_numpy(v)[None]).norm(dim=2)
    assert bool((d_proj[None] <= d_cand + 1e-9).all())


def test_projection_keeps_inside_points_and_is_idempotent():
    torch.manual_seed(0)
    v = torch.randn(20, 30, dtype=torch.float64)
    eps = torch.rand(20, dtype=torch.float64) * 5
    for p in (1.0, 2.0, math.inf, 3.0):
        once = project_lp_ball(v, eps, p)
        assert bool((once.norm(p=p, dim=1) <= eps * (1 + 1e-12)).all())
        torch.testing.assert_close(project_lp_ball(once, eps, p), once)
        inside = v * 1e-3
        big = torch.full((20,), 1e6, dtype=torch.float64)
        torch.testing.assert_close(project_lp_ball(inside, big, p), inside)


def test_l2_and_linf_projections_closed_form():
    v = torch.tensor([[3.0, 4.0], [0.5, -2.0]], dtype=torch.float64)
    eps = torch.tensor([1.0, 1.0], dtype=torch.float64)
    unit = torch.tensor([0.5, -2.0], dtype=torch.float64) / math.hypot(0.5, 2.0)
    torch.testing.assert_close(
        project_lp_ball(v, eps, 2), torch.stack([torch.tensor([0.6, 0.8], dtype=torch.float64), unit])
    )
    torch.testing.assert_close(
        project_lp_ball(v, eps, math.inf), torch.tensor([[1.0, 1.0], [0.5, -1.0]], dtype=torch.float64)
    )


# ---------------------------------------------------------------------------------------------
# Attacks on linear models, whose exact distances are known in closed form
# ---------------------------------------------------------------------------------------------


def dual_norm(w: torch.Tensor, p: float) -> torch.Tensor:
    q = 1.0 if math.isinf(p) else (math.inf if p == 1 else p / (p - 1))
    return w.norm(p=q, dim=-1)


@pytest.fixture
def linear_binary():
    torch.manual_seed(0)
    lin = torch.nn.Linear(40, 1)
    x = torch.rand(48, 40)
    with torch.no_grad():
        lin.bias -= lin(x)[:, 0].median() + 1e-3  # about half flagged, none exactly on the boundary
        s = lin(x)[:, 0]
    return lin, x, s


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf, 3.0])
def test_attack_flips_every_linear_input_just_beyond_the_exact_distance(linear_binary, p):
    lin, x, s = linear_binary
    dist = s.abs().double() / dual_norm(lin.weight[0].detach().double(), p)
    x_adv = pgd_attack(lin, x, dist * 1.02, p, steps=100, generator=torch.Generator().manual_seed(0))
    assert bool(decision_flips(lin, x, x_adv).all())
    norms = (x_adv.double() - x.double()).norm(p=p, dim=1)
    assert bool((norms <= dist * 1.02).all())


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_attack_never_exceeds_eps_and_finds_nothing_inside(linear_binary, p):
    lin, x, s = linear_binary
    dist = s.abs().double() / dual_norm(lin.weight[0].detach().double(), p)
    eps = dist * 0.98
    x_adv = pgd_attack(lin, x, eps, p, steps=30, restarts=3, generator=torch.Generator().manual_seed(0))
    assert not bool(decision_flips(lin, x, x_adv).any())
    assert bool(((x_adv.double() - x.double()).norm(p=p, dim=1) <= eps).all())


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_attack_respects_input_range(linear_binary, p):
    lin, x, s = linear_binary
    eps = torch.full((x.shape[0],), 3.0)
    x_adv = pgd_attack(
        lin, x, eps, p, steps=40, restarts=2, input_range=(0.0, 1.0), generator=torch.Generator().manual_seed(0)
    )
    assert float(x_adv.min()) >= 0.0 and float(x_adv.max()) <= 1.0
    assert bool(((x_adv.double() - x.double()).norm(p=p, dim=1) <= 3.0).all())
    if math.isinf(p):  # here the feasible set is the whole box, whose best points are corners
        w = lin.weight[0].detach()
        low_corner = torch.where(w > 0, 0.0, 1.0)[None]  # minimises s over the box
        with torch.no_grad():
            can_flip = torch.where(s > 0, lin(low_corner)[:, 0] <= 0, lin(1 - low_corner)[:, 0] > 0)
        assert bool(can_flip.any())
        assert bool((decision_flips(lin, x, x_adv) == can_flip).all())


def _linear_logit_distances(lin: torch.nn.Linear, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """ℓ2 distance from each input to the boundary with each other class (inf for its own)."""
    with torch.no_grad():
        z = lin(x).double()
    y = z.argmax(1)
    W = lin.weight.detach().double()
    gaps = (z.gather(1, y[:, None]) - z) / (W[y][:, None, :] - W[None]).norm(dim=2).clamp_min(1e-300)
    return gaps.scatter(1, y[:, None], math.inf), y


def test_two_logit_margin_attack_is_exact():
    torch.manual_seed(1)
    lin = torch.nn.Linear(20, 2)
    x = torch.randn(32, 20)
    dist = _linear_logit_distances(lin, x)[0].amin(1)
    x_adv = pgd_attack(lin, x, dist * 1.02, 2, steps=100, generator=torch.Generator().manual_seed(0))
    assert bool(decision_flips(lin, x, x_adv).all())


def test_multiclass_margin_attack_on_linear_logits():
    torch.manual_seed(1)
    lin = torch.nn.Linear(20, 4)
    x = torch.randn(32, 20)
    dists, y = _linear_logit_distances(lin, x)
    dist = dists.amin(1)
    # the union of the other classes' half-spaces is not convex, so PGD may head for the wrong one;
    # with room to spare it must reach one of them
    x_adv = pgd_attack(lin, x, dist * 1.5, 2, steps=100, restarts=3, generator=torch.Generator().manual_seed(0))
    assert bool(decision_flips(lin, x, x_adv).all())
    x_in = pgd_attack(
        lin, x, dist * 0.98, 2, steps=50, restarts=2, generator=torch.Generator().manual_seed(0), targeted_decision=y
    )
    assert not bool(decision_flips(lin, x, x_in).any())


def test_targeted_decision_pushes_unflagged_inputs_up(linear_binary):
    lin, x, s = linear_binary
    w = lin.weight[0].detach().double()
    dist = s.abs().double() / w.norm()
    target = (s > 0).long()  # escape the current decision, in both directions
    x_adv = pgd_attack(lin, x, dist * 1.05, 2, steps=50, targeted_decision=target)
    assert bool(decision_flips(lin, x, x_adv).all())
    # asking flagged inputs to escape class 0 (which they are not in) leaves nothing to find
    x_same = pgd_attack(
        lin,
        x[s > 0],
        dist[s > 0] * 1.05,
        2,
        steps=20,
        targeted_decision=torch.zeros(int((s > 0).sum()), dtype=torch.long),
    )
    assert bool((decisions(lin, x_same) == 1).all())


def test_random_restarts_are_reproducible_with_a_generator(linear_binary):
    lin, x, _ = linear_binary
    eps = torch.full((x.shape[0],), 0.01)
    a = pgd_attack(lin, x, eps, 2, steps=5, restarts=3, generator=torch.Generator().manual_seed(7))
    b = pgd_attack(lin, x, eps, 2, steps=5, restarts=3, generator=torch.Generator().manual_seed(7))
    torch.testing.assert_close(a, b)


def test_zero_radius_returns_the_input_and_bad_radii_raise(linear_binary):
    lin, x, _ = linear_binary
    x_adv = pgd_attack(lin, x, torch.zeros(x.shape[0]), math.inf, steps=5, restarts=2)
    torch.testing.assert_close(x_adv, x)
    with pytest.raises(InputError):
        pgd_attack(lin, x, torch.full((x.shape[0],), math.inf), 2)
    with pytest.raises(InputError):
        pgd_attack(lin, x, torch.ones(3), 2)
    with pytest.raises(InputError):
        pgd_attack(lin, x + 5, torch.ones(x.shape[0]), 2, input_range=(0, 1))


def test_image_shaped_inputs_and_model_mode_restored():
    from tests.conftest import small_feature_convex

    model = small_feature_convex("conv")
    model.train()
    x = torch.rand(6, 1, 6, 6)
    x_adv = pgd_attack(model, x, torch.full((6,), 0.05), math.inf, steps=5)
    assert x_adv.shape == x.shape and model.training
    assert float((x_adv - x).abs().max()) <= 0.05
