import copy
import math

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asymcert.errors import ConvexityError
from asymcert.nn.convex import (
    ICNN,
    ConvexConvNet,
    PositiveBatchNorm,
    all_finite,
    conv_problems,
    convex_net_problems,
    convexity_violations,
    project_,
    type_problems,
)
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
    assert float(net.norms[0].weight.detach().min()) >= 1e-3


def test_free_weights_are_not_constrained():
    net = ConvexConvNet((1, 8, 8), channels=2, stem_kernel=3, blocks=1)
    with torch.no_grad():
        net.stem.weight.fill_(-1.0)
    assert convexity_violations(net) == []


def test_validate_refuses_negative_weights():
    model = small_feature_convex("conv")
    with torch.no_grad():
        model.convex.readout.weight[0, 0] = -0.5
    with pytest.raises(ConvexityError, match=r"readout.weight"):
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


def test_shared_batch_statistics_keep_values_and_update_running_statistics_once():
    from asymcert.nn.convex import shared_batch_statistics

    net = _train_mode_icnn(widths=(16, 8))
    reference = copy.deepcopy(net)
    x = torch.rand(32, 1, 6, 6)
    expected = reference(x)  # one ordinary training-mode pass
    with shared_batch_statistics(net):
        first = net(x)
        second = net(x[:5])  # a later pass normalises with the first pass's statistics
    assert torch.allclose(first, expected, atol=1e-5)
    assert torch.allclose(second, expected[:5], atol=1e-5)
    for (k, v), ref in zip(net.state_dict().items(), reference.state_dict().values()):
        assert torch.allclose(v.double(), ref.double(), rtol=1e-5, atol=1e-6), f"{k} differs from one ordinary pass"
    norms = [m for m in net.modules() if isinstance(m, PositiveBatchNorm)]
    assert all(not m.share_statistics and m.shared is None for m in norms)  # restored on exit


def test_shared_batch_statistics_refuse_plain_batch_norm():
    from asymcert.nn.convex import shared_batch_statistics

    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.BatchNorm1d(4)).train()
    with pytest.raises(ValueError, match="PositiveBatchNorm"), shared_batch_statistics(net):
        pass


def test_allowlist_names_each_slot_and_accepts_the_built_in_nets():
    from torch import nn

    from asymcert.nn.convex import NonnegConv2d, NonnegLinear, convex_net_problems

    net = ConvexConvNet((1, 8, 8), channels=2, stem_kernel=3, blocks=1)
    assert convex_net_problems(net) == [] and convex_net_problems(ICNN((5,), (4, 3), batch_norm=False)) == []
    net.stem = NonnegConv2d(1, 2, 3, padding=1)  # the stem acts on g's input: free or constrained are both fine
    assert convex_net_problems(net) == []
    net.block_convs[0] = nn.Conv2d(2, 2, 3, padding=1)  # free weights after a ReLU
    net.readout = nn.Sequential(nn.Flatten(), NonnegLinear(128, 1))  # a container the forward does not expect
    assert convex_net_problems(net, "g") == [
        "g.block_convs.0: Conv2d is not allowed here (allowed: NonnegConv2d); it may break convexity",
        "g.readout: Sequential is not allowed here (allowed: NonnegLinear); it may break convexity",
        "g.readout.0: Flatten is not allowed here (allowed: NonnegLinear); it may break convexity",
    ]


@pytest.mark.parametrize(
    "dtype", [torch.float16, torch.bfloat16, torch.float32, torch.float64, torch.float8_e5m2, torch.float8_e4m3fn]
)
@pytest.mark.parametrize("shape", [(), (0,), (1,), (7, 3), (2, 0, 4), (4096, 9)])
@pytest.mark.parametrize("bad", [None, math.nan, math.inf, -math.inf])
def test_all_finite_agrees_with_isfinite(dtype, shape, bad):
    t = torch.randn(shape, dtype=torch.float64).mul(10.0).to(dtype)  # (float8 e4m3: at most 448)
    if bad is not None and t.numel():
        t.view(-1)[t.numel() // 2] = bad
    assert all_finite(t) == bool(torch.isfinite(t.float()).all())  # (float8 has no isfinite)
    stored = float(t.reshape(-1)[t.numel() // 2]) if t.numel() else 0.0  # (float8 e4m3 saturates ±inf to ±448)
    assert all_finite(t) == (bad is None or t.numel() == 0 or math.isfinite(stored))
    assert all_finite(t) or dtype != torch.float8_e4m3fn or math.isnan(bad)


def test_type_problems_accept_exact_types_only_and_name_a_subclass():
    """Review s33 families 2: the layer walks used isinstance; an torch.nn.Identity subclass computing −3·t passed."""

    class Neg3(torch.nn.Identity):
        def forward(self, t: torch.Tensor) -> torch.Tensor:
            return -3.0 * t

    assert type_problems(torch.nn.Identity(), (torch.nn.Identity, torch.nn.ReLU), "net.3") == []
    assert type_problems(Neg3(), (torch.nn.Identity, torch.nn.ReLU), "net.3") == [
        "net.3: Neg3 (a subclass of Identity: only the exact type is accepted) is not allowed here "
        "(allowed: Identity or ReLU)"
    ]


@pytest.mark.parametrize("mode", ["circular", "reflect", "replicate"])
def test_conv_problems_refuse_padding_other_than_zeros(mode):
    """Review s33 families 1: the bound passes pad with zeros whatever padding_mode says."""
    assert conv_problems(torch.nn.Conv2d(1, 2, 3, padding=1), "net.0") == []
    assert conv_problems(torch.nn.Conv2d(1, 2, 3, padding=0, padding_mode=mode), "net.0") == []  # nothing padded
    assert conv_problems(torch.nn.Conv2d(1, 2, 3, padding=1, padding_mode=mode), "net.0") == [
        f"net.0: Conv2d has padding_mode='{mode}'; only zero padding (padding_mode='zeros') is bounded"
    ]
    assert "padding='same'" in conv_problems(torch.nn.Conv2d(1, 2, 3, padding="same"), "net.0")[0]


@pytest.mark.parametrize(
    "slot,change,text",
    [
        ("stem", {"padding_mode": "circular"}, "has padding_mode='circular'; only zero padding"),
        ("block_convs.0", {"padding_mode": "reflect"}, "has padding_mode='reflect'; only zero padding"),
        ("block_convs.0", {"dilation": (2, 2)}, "has dilation=(2, 2); a convex conv net's"),
        ("stem", {"stride": (2, 2)}, "has stride=(2, 2); a convex conv net's convolutions have stride=(1, 1)"),
        ("stem", {"padding_mode": "zeros"}, None),
    ],
)
def test_a_convex_conv_net_refuses_convolutions_it_was_not_built_with(slot, change, text):
    """The exact and bounded passes read only the kernel and the padding of a ConvexConvNet's convolutions (zero
    "same" padding, stride 1, no dilation, one group); anything else is named by path."""
    net = ConvexConvNet((1, 8, 8), channels=2, stem_kernel=3, blocks=1)
    conv = net.stem if slot == "stem" else net.block_convs[0]
    for key, value in change.items():
        setattr(conv, key, value)
    found = convex_net_problems(net, "g")
    assert (
        (found == [])
        if text is None
        else (len(found) == 1 and found[0].startswith(f"g.{slot}: {type(conv).__name__} {text}"))
    )
