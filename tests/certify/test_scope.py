"""asymcert.certify.scope: values kept across calls come back only while everything they read is bit for bit the
same, so a write through ``.data``, a re-tied weight or a changed layer setting is always seen."""

from __future__ import annotations

import copy

import torch

import asymcert
from asymcert.certify.feature_convex import magnitude_sources, model_magnitudes
from asymcert.certify.scope import forget_kept, kept_while_unchanged
from asymcert.models import FeatureConvexClassifier
from asymcert.nn.feature_maps import Compose, Shift
from tests.conftest import small_feature_convex


def test_a_kept_value_is_recomputed_when_any_source_changes():
    owner = torch.nn.Linear(3, 2)
    calls = []

    def value():
        calls.append(1)
        return float(owner.weight.detach().sum())

    def sources():
        return [("w", owner.weight), ("b", owner.bias)]

    forget_kept()
    first = kept_while_unchanged("sum", owner, sources(), value)
    assert kept_while_unchanged("sum", owner, sources(), value) == first and len(calls) == 1
    owner.weight.data.mul_(2.0)  # no version bump, same data pointer
    assert kept_while_unchanged("sum", owner, sources(), value) == 2 * first and len(calls) == 2
    assert kept_while_unchanged("sum", owner, [("b", owner.bias), ("w", owner.weight)], value) and len(calls) == 3
    owner.bias.data = owner.bias.data.double()
    kept_while_unchanged("sum", owner, sources(), value)
    assert len(calls) == 4


def test_magnitudes_follow_weight_writes_and_layer_settings_between_calls():
    model = small_feature_convex("icnn", seed=0)
    x = torch.rand(30, 1, 6, 6)
    shape = tuple(model.features(x).shape[1:])
    forget_kept()
    before = model_magnitudes(model, shape)
    assert model_magnitudes(model, shape) is before  # kept across calls
    with torch.no_grad():
        for p in model.convex.parameters():
            p.data.mul_(3.0)
    after = model_magnitudes(model, shape)
    fresh = model_magnitudes(copy.deepcopy(model), shape)
    assert after.rounding0 == fresh.rounding0 != before.rounding0
    norms = [m for m in model.convex.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    if norms:
        names = [name for name, _ in magnitude_sources(model)]
        norms[0].eps = 0.5  # a setting, no tensor
        assert [name for name, _ in magnitude_sources(model)] == names
        assert model_magnitudes(model, shape).rounding0 != after.rounding0
    cert = asymcert.certify(model, x)
    assert cert.radii[2.0].shape == (30,)


class _Gained(torch.nn.Module):
    """A user's own convex network whose score (and absolute pass) read a plain float attribute."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.affine = torch.nn.Linear(d, 4)
        self.gain = 1.0

    def forward(self, x):
        return self.gain * self.affine(x.flatten(1)).amax(dim=1)

    def convexity_contract(self):
        return [] if self.gain >= 0 else ["gain < 0"]

    def absolute_pass(self, af):
        t = af.flatten(1) @ self.affine.weight.detach().double().abs().T + self.affine.bias.detach().double().abs()
        return self.gain * t.sum(1), self.gain * t.sum(1)


def test_magnitudes_of_a_users_own_network_are_never_kept_across_calls():
    """Its absolute pass may read more than tensors (review 28a F2: a gain of 10⁶ left the guard a million-fold
    too small)."""
    torch.manual_seed(0)
    g = _Gained(6)
    model = FeatureConvexClassifier(Compose([Shift((6,))]), g, (6,)).eval()
    asymcert.certify(model, torch.randn(64, 6))
    g.gain = 1e6
    fresh = model_magnitudes(copy.deepcopy(model), (6,))
    assert model_magnitudes(model, (6,)).rounding0 == fresh.rounding0 > 1e5
