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


def _train_mode_icnn(seed: int = 0, widths=(16,)):
    torch.manual_seed(seed)
    net = ICNN((1, 6, 6), widths=widths).train()
    with torch.no_grad():
        for p in net.hidden.parameters():
            p.mul_(40.0)
    return net


def test_frozen_batch_statistics_keep_values_and_running_statistics():
    from asymcert.nn.convex import frozen_batch_statistics
    net = _train_mode_icnn(widths=(16, 8))
    x = torch.rand(32, 1, 6, 6)
    state = {k: v.clone() for k, v in net.state_dict().items()}
    with frozen_batch_statistics(net):
        frozen = net(x)
    for k, v in net.state_dict().items():
        assert torch.equal(v, state[k]), f"{k} changed under frozen statistics"
    assert torch.allclose(frozen, net(x), atol=1e-6)  # the ordinary training-mode pass gives the same values
    assert not any(getattr(m, "frozen_statistics", False) for m in net.modules())  # restored on exit


def test_frozen_batch_statistics_refuse_plain_batch_norm():
    from asymcert.nn.convex import frozen_batch_statistics
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    with pytest.raises(ValueError, match="PositiveBatchNorm"):
        with frozen_batch_statistics(net):
            pass
