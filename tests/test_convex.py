import pytest
import torch
from hypothesis import given, settings, strategies as st

from asymcert.errors import ConvexityError
from asymcert.nn.convex import ICNN, ConvexConvNet, convexity_violations, project_
from tests.conftest import small_feature_convex


@pytest.mark.parametrize("kind", ["icnn", "conv"])
def test_model_is_convex_along_random_segments(kind):
    model = small_feature_convex(kind).double()
    torch.manual_seed(1)
    a, b = torch.rand(200, 1, 6, 6).double(), torch.rand(200, 1, 6, 6).double()
    t = torch.rand(200, 1, 1, 1).double()
    with torch.no_grad():
        mid = model(t * a + (1 - t) * b)
        chord = t.flatten() * model(a) + (1 - t.flatten()) * model(b)
    assert bool((mid <= chord + 1e-9).all())


def test_projection_makes_negative_weights_nonnegative_and_check_reports_them():
    net = ICNN((5,), (4, 3))
    with torch.no_grad():
        net.hidden[0].weight.fill_(-1.0)
        net.norms[0].weight.fill_(-2.0)
    problems = convexity_violations(net)
    assert any("hidden.0.weight" in p for p in problems) and any("norms.0.weight" in p for p in problems)
    project_(net)
    assert convexity_violations(net) == []
    assert float(net.norms[0].weight.min()) >= 1e-3


def test_free_weights_are_not_constrained():
    net = ConvexConvNet((1, 8, 8), channels=2, stem_kernel=3, blocks=1)
    with torch.no_grad():
        net.stem.weight.fill_(-1.0)
    assert convexity_violations(net) == []


def test_validate_refuses_negative_weights():
    model = small_feature_convex("conv")
    with torch.no_grad():
        model.convex.readout.weight[0, 0] = -0.5
    with pytest.raises(ConvexityError, match="readout.weight"):
        model.validate()


@settings(max_examples=15, deadline=None)
@given(st.lists(st.integers(1, 9), min_size=1, max_size=3), st.integers(1, 6))
def test_icnn_shapes(widths, d):
    net = ICNN((d,), tuple(widths)).eval()
    assert net(torch.randn(7, d)).shape == (7,)


def test_unknown_convex_net_settings_are_named():
    import pytest
    from asymcert.errors import UnknownNameError
    from asymcert.nn.convex import build_convex_net
    with pytest.raises(UnknownNameError, match="channels"):
        build_convex_net({"kind": "icnn", "widths": [4], "channels": 4}, (1, 6, 6))
