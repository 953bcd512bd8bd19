"""The separability certificate against brute force (scipy.spatial) on tiny point sets."""

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from scipy.spatial import ConvexHull, Delaunay

from asymcert.errors import InputError
from asymcert.research.separability import (
    METHODS,
    HullDistanceLP,
    hull_classifier,
    hull_separability,
    separability_bound,
)


def _reference_outside(x: np.ndarray, others: np.ndarray) -> np.ndarray:
    """Slow reference: outside conv(others) ⇔ in no simplex of a Delaunay triangulation."""
    return Delaunay(others).find_simplex(x) < 0


@pytest.mark.parametrize("dim", [2, 3])
@pytest.mark.parametrize("fw", [0, 100])
def test_matches_delaunay_on_random_points(dim, fw):
    rng = np.random.default_rng(dim * 10 + fw)
    others = rng.normal(size=(25, dim))
    x = rng.normal(scale=1.3, size=(60, dim))
    res = hull_separability(x, others, frank_wolfe_iterations=fw)
    expected = _reference_outside(x, others)
    assert 0 < expected.sum() < len(x)  # both verdicts occur
    np.testing.assert_array_equal(res.outside, expected)
    assert res.complete and res.n_checked == 60
    settled = res.settled()
    assert sum(settled.values()) == 60
    assert settled["lp-inside"] == res.n_inside  # "inside" is only ever an LP verdict
    if fw == 0:
        assert settled["frank-wolfe"] == 0 and settled["lp"] > 0
    # every outside verdict carries a positive ℓ2 margin, and it is a true lower bound on the distance
    assert (res.margin[res.outside] > 0).all() and (res.margin[~res.outside] == 0).all()
    for i in np.flatnonzero(res.outside)[:10]:
        # nearest hull point by dense sampling of the hull is at least as far as the margin says
        lam = rng.dirichlet(np.ones(len(others)) * 0.2, size=4000)
        assert np.linalg.norm(lam @ others - x[i], axis=1).min() >= res.margin[i] - 1e-9


def test_lp_stage_agrees_with_delaunay_and_its_distance_is_the_l1_distance():
    rng = np.random.default_rng(1)
    others = rng.uniform(size=(8, 2))
    lp = HullDistanceLP(others)
    hull = Delaunay(others)
    for x in rng.uniform(-0.5, 1.5, size=(30, 2)):
        status, dist, _ = lp.solve(x)
        assert status == "optimal"
        if hull.find_simplex(x[None])[0] >= 0:
            assert dist <= 1e-9
        else:
            assert dist > 1e-9
            # brute-force ℓ1 distance: over a fine sampling of the hull boundary (its edges)
            verts = others[ConvexHull(others).vertices]
            t = np.linspace(0, 1, 2001)[:, None]
            pts = np.concatenate([a + t * (b - a) for a, b in zip(verts, np.roll(verts, -1, 0))])
            assert dist == pytest.approx(np.abs(pts - x).sum(1).min(), abs=2e-3)


@settings(max_examples=25, deadline=None)
@given(seed=st.integers(0, 10_000), n=st.integers(4, 20), dim=st.integers(2, 4))
def test_hull_vertices_are_outside_the_hull_of_the_rest_and_the_centroid_is_inside(seed, n, dim):
    rng = np.random.default_rng(seed)
    pts = rng.normal(size=(max(n, dim + 2), dim))
    vertices = ConvexHull(pts).vertices
    for v in vertices[:3]:
        rest = np.delete(pts, v, axis=0)
        assert hull_separability(pts[v : v + 1], rest).outside[0]
    centroid = pts.mean(0, keepdims=True)
    res = hull_separability(centroid, pts)
    assert not res.outside[0] and res.method[0] == METHODS.index("lp")


def test_a_duplicate_of_an_other_class_input_is_inside():
    rng = np.random.default_rng(0)
    others = rng.normal(size=(10, 3))
    res = hull_separability(others[[3, 7]], others)
    assert not res.outside.any()
    assert res.bound == pytest.approx((12 - 2) / 12)


def _tiny_dataset():
    """2-D: other class on a circle plus its centre region; three sensitive points inside, five outside."""
    angles = np.linspace(0, 2 * np.pi, 12, endpoint=False)
    other = np.stack([np.cos(angles), np.sin(angles)], 1)
    inside = np.array([[0.0, 0.0], [0.3, -0.2], [-0.5, 0.4]])
    outside = np.array([[1.5, 0.0], [0.0, -1.4], [-1.2, -1.2], [0.99, 0.3], [2.0, 2.0]])
    x = np.concatenate([other, inside, outside]).astype(np.float32)
    y = np.array([0] * 12 + [1] * 8)
    return torch.from_numpy(x).view(-1, 1, 1, 2), torch.from_numpy(y)


def test_the_bound_is_achieved_by_the_max_of_affine_icnn():
    x, y = _tiny_dataset()
    res = separability_bound(x, y, keep_normals=True)
    assert res.n_inside == 3 and res.n_outside == 5
    assert res.bound == pytest.approx((12 + 5) / 20)
    model = hull_classifier(res, x[y == 1], x[y == 0], (1, 1, 2))
    model.validate()  # nonnegative readout: convex in the input
    with torch.no_grad():
        pred = model(x.double()) > 0
    accuracy = float((pred.long() == y).float().mean())
    assert accuracy == pytest.approx(res.bound)
    assert not pred[y == 0].any()  # every other-class input right, as the bound assumes
    # convexity on the data: the score at a midpoint is at most the mean of the scores
    with torch.no_grad():
        a, b = x[:10].double(), x[10:].double()
        assert (model((a + b) / 2) <= (model(a) + model(b)) / 2 + 1e-9).all()


def test_reverse_swaps_the_classes():
    x, y = _tiny_dataset()
    fwd, rev = separability_bound(x, y), separability_bound(x, y, reverse=True)
    assert (fwd.n_sensitive, fwd.n_other) == (8, 12) and (rev.n_sensitive, rev.n_other) == (12, 8)
    # every circle point is a vertex of conv(other ∪ …) but lies inside conv(sensitive) iff Delaunay says so
    expected = _reference_outside(x[y == 0].view(-1, 2).numpy(), x[y == 1].view(-1, 2).numpy())
    np.testing.assert_array_equal(rev.outside, expected)
    assert rev.reverse and rev.summary().reverse


def test_limit_draws_a_seeded_subset_and_keeps_a_valid_upper_bound():
    rng = np.random.default_rng(3)
    others = rng.normal(size=(30, 2))
    x = rng.normal(scale=1.2, size=(40, 2))
    full = hull_separability(x, others)
    a = hull_separability(x, others, limit=15, seed=5)
    b = hull_separability(x, others, limit=15, seed=5)
    c = hull_separability(x, others, limit=15, seed=6)
    np.testing.assert_array_equal(a.checked, b.checked)
    assert not np.array_equal(a.checked, c.checked)
    assert a.n_checked == 15 and not a.complete and a.limit == 15 and a.seed == 5
    np.testing.assert_array_equal(a.outside, full.outside[a.checked])
    assert a.bound >= full.bound


def test_bad_inputs_raise_clear_errors():
    with pytest.raises(InputError, match="different input sizes"):
        hull_separability(np.zeros((2, 3)), np.zeros((2, 4)))
    with pytest.raises(InputError, match="both classes"):
        separability_bound(torch.zeros(4, 2), torch.ones(4, dtype=torch.long))
    with pytest.raises(InputError, match="binary"):
        separability_bound(torch.zeros(4, 2), torch.tensor([0, 1, 2, 1]))
    with pytest.raises(InputError, match="NaN"):
        hull_separability(np.array([[np.nan, 0.0]]), np.zeros((3, 2)))
    res = hull_separability(np.zeros((1, 2)), np.eye(2))
    with pytest.raises(InputError, match="keep_normals"):
        hull_classifier(res, np.zeros((1, 2)), np.eye(2), (2,))


def test_the_summary_says_its_distances_are_in_raw_input_units():
    """capacity.json's separability block gave tol and min_margin_l2 with no unit, beside radii in a threat model's
    units for SpamBase (audit units31 F5): the hull is the raw inputs', and the summary now says so, after them."""
    x, y = _tiny_dataset()
    summary = separability_bound(x, y).summary().to_dict()
    keys = list(summary)
    assert summary["distance_units"] == "raw input units" and summary["min_margin_l2"] > 0
    assert keys.index("distance_units") == keys.index("min_margin_l2") + 1
