"""Monotone features: s nondecreasing (nonincreasing) in declared inputs, kept through training, certified.

A feature-convex model with ``"monotone": {"increasing": [...], "decreasing": [...]}`` keeps g's
pass-through columns of those inputs' features ≥ 0 (≤ 0) and needs a φ nondecreasing in them; then
moving only increasing features up (decreasing ones down) can never lower the score.
"""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from safetensors.torch import load_file, save_file
from torch import nn

import asymcert
from asymcert.certify.threat_attack import threat_attack
from asymcert.errors import CheckpointError, ConfigError, ConvexityError
from asymcert.models import FeatureConvexClassifier, build_model
from asymcert.models.feature_convex import Monotone
from asymcert.nn.convex import ICNN, SignedLinear, convexity_violations
from asymcert.nn.feature_maps import Compose, FeatureMap
from asymcert.threat import ThreatModel
from tests.conftest import near_boundary

D = 8
INC, DEC = [0, 2, 5], [3]
OTHERS = [i for i in range(D) if i not in INC + DEC]
BOUNDS = {"lower": {"*": 0.0}, "upper": {"*": 100.0}}
"""A bounded domain (the inputs lie in [0, 10]): infinite radii need every allowed move to stay in a bounded box."""
LOG_STD = [{"kind": "log1p"}, {"kind": "standardize"}]


def _model(monotone=None, phi=None, seed=0, batch_norm=False) -> FeatureConvexClassifier:
    """A fitted model on D nonnegative features with hidden weights large enough to bend g, about half flagged."""
    torch.manual_seed(seed)
    config = {
        "kind": "feature-convex",
        "input_shape": [D],
        "feature_map": LOG_STD if phi is None else phi,
        "convex": {"kind": "icnn", "widths": [16, 8], "batch_norm": batch_norm},
    }
    if monotone is not None:
        config["monotone"] = monotone
    m = build_model(config)
    x = _inputs(seed)
    m.feature_map.fit(x)
    with torch.no_grad():
        for lin in m.convex.hidden:
            lin.weight.uniform_(0.0, 0.5)
        m.eval()
        m.balance -= m(x).median()
    return m


def _inputs(seed: int, n: int = 256) -> torch.Tensor:
    """(n, D) heavy-tailed nonnegative inputs (frequencies and counts)."""
    gen = torch.Generator().manual_seed(100 + seed)
    return torch.rand(n, D, generator=gen) ** 3 * 10


def _pass_through_columns(model, coords):
    """Every pass-through weight's columns reading a feature of input coordinates ``coords``: list of (out, ·)."""
    per_input = model.convex.passthrough[0].in_features // D
    cols = [k * D + i for k in range(per_input) for i in coords]
    return [lin.weight.detach()[:, cols] for lin in model.convex.passthrough]


# ---------------------------------------------------------------------------------------------
# Training keeps the constraint
# ---------------------------------------------------------------------------------------------


def _hostile_steps(model, optimizer, steps=5):
    """Steps whose gradient pushes the increasing columns down and the decreasing ones up (the score loss too)."""
    x = _inputs(1, 64)
    for _ in range(steps):
        optimizer.zero_grad()
        loss = model(x).sum()  # lowering the score of nonnegative inputs pushes the columns negative
        for lin in model.convex.passthrough:
            loss = loss + lin.weight[:, INC].sum() - lin.weight[:, DEC].sum()
        loss.backward()
        optimizer.step()


@pytest.mark.parametrize("batch_norm", [False, True])
def test_training_with_a_hostile_gradient_keeps_the_signs(batch_norm):
    # without the projection hook the same steps break the signs (the test can fail)
    loose = _model({"increasing": INC, "decreasing": DEC}, batch_norm=batch_norm).train()
    _hostile_steps(loose, torch.optim.SGD(loose.parameters(), lr=1.0))
    assert any(bool((w < 0).any()) for w in _pass_through_columns(loose, INC))
    with pytest.raises(ConvexityError, match=r"convex\.passthrough\.\d\.weight: .* in column\(s\) \["):
        loose.validate()

    model = _model({"increasing": INC, "decreasing": DEC}, batch_norm=batch_norm).train()
    optimizer = torch.optim.SGD(model.parameters(), lr=1.0)
    asymcert.train.make_certifiable(model, optimizer)  # projects after every step
    _hostile_steps(model, optimizer)
    model.eval()
    assert convexity_violations(model) == [] and model.problems() == []
    assert all(bool((w >= 0).all()) for w in _pass_through_columns(model, INC))
    assert all(bool((w <= 0).all()) for w in _pass_through_columns(model, DEC))
    # the free columns did move below 0 (the hostile score loss reaches them): only the declared ones are held
    assert any(bool((w < 0).any()) for w in _pass_through_columns(model, OTHERS))


def test_project_hook_restores_a_broken_sign():
    model = _model({"increasing": INC, "decreasing": DEC})
    with torch.no_grad():
        model.convex.passthrough[1].weight[0, 2] = -3.0
        model.convex.passthrough[0].weight[4, 3] = 2.0
    assert len(convexity_violations(model)) == 2
    model.project()
    assert convexity_violations(model) == [] and float(model.convex.passthrough[1].weight[0, 2].detach()) == 0.0


# ---------------------------------------------------------------------------------------------
# The property: moves in the harmful direction never lower the score
# ---------------------------------------------------------------------------------------------


def _worst_drop(model, seed: int) -> float:
    """The largest s(x) − s(x + δ) over random inputs and random moves raising only INC (0 to +100) and
    lowering only DEC (to any value ≥ 0, log1p treats below 0 as 0), in float64; plus a gradient move."""
    m = model.double()
    gen = torch.Generator().manual_seed(seed)
    x = _inputs(seed, 512).double()
    worst = -math.inf
    for _ in range(20):
        delta = torch.zeros_like(x)
        mask = torch.rand(x.shape[0], len(INC), generator=gen, dtype=torch.float64) < 0.5
        delta[:, INC] = torch.rand(x.shape[0], len(INC), generator=gen, dtype=torch.float64) ** 4 * 100 * mask
        delta[:, DEC] = -x[:, DEC] * torch.rand(x.shape[0], len(DEC), generator=gen, dtype=torch.float64) * 1.5
        with torch.no_grad():
            worst = max(worst, float((m(x) - m(x + delta)).max()))
    xg = x.clone().requires_grad_(True)
    (grad,) = torch.autograd.grad(m(xg).sum(), xg)  # the steepest allowed descent, a few step sizes
    for step in (0.01, 0.1, 1.0, 10.0, 100.0):
        delta = torch.zeros_like(x)
        delta[:, INC] = (-grad[:, INC]).clamp_min(0) * step
        delta[:, DEC] = -(grad[:, DEC].clamp_min(0) * step).clamp(max=x[:, DEC])
        with torch.no_grad():
            worst = max(worst, float((m(x) - m(x + delta)).max()))
    return worst


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("batch_norm", [False, True])
def test_harmful_direction_moves_never_lower_the_score(seed, batch_norm):
    model = _model({"increasing": INC, "decreasing": DEC}, seed=seed, batch_norm=batch_norm)
    if batch_norm:  # nontrivial running statistics, positive scales
        with torch.no_grad():
            for norm in model.convex.norms:
                norm.running_mean.uniform_(-1, 1)
                norm.running_var.uniform_(0.5, 2)
                norm.weight.uniform_(0.1, 2)
    assert _worst_drop(model, seed) <= 0.0
    assert model.problems() == []  # still valid in float64 (the column signs follow the dtype)
    plain = _model(None, seed=seed, batch_norm=batch_norm)  # the same moves do lower an unconstrained score
    assert _worst_drop(plain, seed) > 1e-3


class WithRelu(FeatureMap):
    """φ(x) = concat(x, relu(x)): two nondecreasing features per input (feature k·n + i), Lipschitz 2^{1/p}."""

    kind = "with-relu"

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, x.clamp_min(0.0)], dim=1)

    def lipschitz(self, p: float) -> float:
        return 1.0 if math.isinf(p) else math.nextafter(2.0 ** (1.0 / p), math.inf)

    def out_shape(self, in_shape: tuple[int, ...]) -> tuple[int, ...]:
        return (2 * in_shape[0],)

    def slope_bounds(self, lo: torch.Tensor, hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return torch.cat([lo, torch.minimum(lo, torch.zeros_like(lo))]), torch.cat([hi, hi.clamp_min(0.0)])


def test_every_feature_of_a_monotone_input_is_constrained():
    """A φ with two features per input (columns i and D + i): both columns keep the sign, the property holds."""
    torch.manual_seed(0)
    model = FeatureConvexClassifier(
        Compose([WithRelu()]), ICNN((2 * D,), widths=(16, 8), batch_norm=False), (D,), monotone=Monotone(INC, DEC)
    )
    assert model.config()["monotone"] == {"increasing": INC, "decreasing": DEC}
    expected = torch.zeros(2 * D)
    expected[INC], expected[[D + i for i in INC]], expected[DEC], expected[[D + i for i in DEC]] = 1, 1, -1, -1
    assert all(torch.equal(sign, expected) for sign in model.convex.column_signs())
    with torch.no_grad():
        for lin in model.convex.hidden:
            lin.weight.uniform_(0.0, 0.5)
        model.balance -= model(_inputs(0)).median()
    assert model.problems() == [] and _worst_drop(model, 0) <= 0.0
    with torch.no_grad():
        model.convex.passthrough[1].weight[2, D + 2] = -0.5  # the relu feature of increasing input 2
    with pytest.raises(ConvexityError, match=r"convex\.passthrough\.1\.weight: .* column\(s\) \[10\]"):
        model.validate()


# ---------------------------------------------------------------------------------------------
# The threat-model certificate: infinite for moves that only go the harmful way
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "phi",
    # log1p's slope interval is [0, 1]: with w ≥ 0 the harm is exactly 0, kept 0 by the rounding allowance
    [[{"kind": "standardize"}], LOG_STD, [*LOG_STD, {"kind": "hinges", "knots": 3}]],
    ids=["standardize", "log1p-standardize", "hinges"],
)
def test_threat_model_certificate_is_infinite_for_monotone_moves(phi):
    tm = ThreatModel(increase_only=INC, decrease_only=DEC, immutable=OTHERS, **BOUNDS).resolve(None, D)
    x = _inputs(7)
    model = _model({"increasing": INC, "decreasing": DEC}, phi=phi, seed=3)
    cert = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=tm)
    flagged = cert.predicted.bool()
    assert int(flagged.sum()) > 50
    for radius in cert.radii.values():
        assert bool(torch.isinf(radius[flagged]).all()) and bool((radius[~flagged] == 0).all())
    # without bounds a move may go where float32 overflows or its rounding outgrows the margin: finite, far
    open_tm = ThreatModel(increase_only=INC, decrease_only=DEC, immutable=OTHERS).resolve(None, D)
    for radius in asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=open_tm).radii.values():
        assert bool(torch.isfinite(radius[flagged]).all()) and float(radius[flagged].min()) > 1e3
    # the constrained attack with a huge budget cannot remove a flag
    gen = torch.Generator().manual_seed(0)
    xf = x[flagged]
    adv = threat_attack(model, xf, torch.full((len(xf),), 1e3), 2.0, tm, steps=40, restarts=2, generator=gen)
    assert int((model(adv) <= 0).sum()) == 0

    plain = _model(None, phi=phi, seed=3)
    cert = asymcert.certify(plain, x, norms=(1, 2, "inf"), threat_model=tm)
    flagged = cert.predicted.bool()
    for radius in cert.radii.values():
        assert bool(torch.isfinite(radius[flagged]).all())
    adv = threat_attack(plain, x[flagged], torch.full((int(flagged.sum()),), 1e3), 2.0, tm, steps=40, generator=gen)
    assert int((plain(adv) <= 0).sum()) > 0  # and the flags of the plain model can be removed that way


@pytest.mark.parametrize("reach", [False, True])
def test_a_monotone_features_weight_of_exactly_zero_stays_harmless(reach, tmp_path):
    """The projection clamps a monotone feature the data finds harmless (more verified contacts: less fraud) to
    weight 0; a gradient interval of ± the rounding allowance would make that 0 possibly harmful and every
    radius finite. g's sign constraints fix ∂g/∂f ≥ 0 exactly there, so the radii stay infinite (library
    and ONNX graph alike, in a bounded domain)."""
    tm = ThreatModel(increase_only=INC, decrease_only=DEC, immutable=OTHERS, **BOUNDS).resolve(None, D)
    x = _inputs(7)
    model = _model({"increasing": INC, "decreasing": DEC}, phi=[*LOG_STD, {"kind": "hinges", "knots": 3}], seed=3)
    with torch.no_grad():
        for cols in _zero_columns(model, [INC[0], DEC[0]]):
            cols.zero_()
    cert = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=tm, reach=reach)
    flagged = cert.predicted.bool()
    assert int(flagged.sum()) > 50
    for radius in cert.radii.values():
        assert bool(torch.isinf(radius[flagged]).all())
    # the constrained attack with a huge budget, from typical and near-boundary inputs, removes no flag
    gen = torch.Generator().manual_seed(0)
    for start in (x[flagged], near_boundary(model, x)):
        start = start[model(start).detach() > 0]
        adv = threat_attack(model, start, torch.full((len(start),), 1e3), 2.0, tm, steps=40, restarts=2, generator=gen)
        assert len(start) > 0 and int((model(adv) <= 0).sum()) == 0
    export = pytest.importorskip("asymcert.export")
    ort = pytest.importorskip("onnxruntime")
    export.to_onnx(model, tmp_path / "m.onnx", threat_model=tm)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x.numpy()}), strict=True))
    for name in ("tm_radius_l1", "tm_radius_l2", "tm_radius_linf"):
        assert bool(np.isinf(out[name][flagged.numpy()]).all()), name


def test_the_onnx_graph_caps_unbounded_monotone_moves_no_higher_than_the_library(tmp_path):
    """Increase-only monotone features without an upper bound: the library caps the infinite radius where the
    rounding could take the whole exact margin; the graph solved the finite-radius rule instead and gave about
    3× the library's radii (walkthrough 27f, 231 of 231 rows). Its radii are now never above the library's."""
    export = pytest.importorskip("asymcert.export")
    ort = pytest.importorskip("onnxruntime")
    open_tm = ThreatModel(increase_only=INC, decrease_only=DEC, immutable=OTHERS).resolve(None, D)
    x = _inputs(7)
    model = _model({"increasing": INC, "decreasing": DEC}, phi=LOG_STD, seed=3)
    cert = asymcert.certify(model, x, norms=(1, 2, "inf"), threat_model=open_tm)
    flagged = cert.predicted.bool().numpy()
    export.to_onnx(model, tmp_path / "m.onnx", threat_model=open_tm)
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"), providers=["CPUExecutionProvider"])
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x.numpy()}), strict=True))
    for p, name in ((1.0, "tm_radius_l1"), (2.0, "tm_radius_l2"), (math.inf, "tm_radius_linf")):
        graph, library = out[name][flagged].astype(np.float64), cert.radii[p].numpy()[flagged]
        assert np.isfinite(library).all() and flagged.sum() > 50
        assert (graph <= library).all(), (name, float(np.max(graph / library)))
        assert (graph >= 0.9 * library).all(), (name, float(np.min(graph / library)))  # the same cap, not 0
    # allowed moves inside 0.999× the graph's ℓ∞ radius (random, and each movable coordinate at its end),
    # typical and near-boundary flagged inputs alike: onnxruntime keeps every flag
    gen = torch.Generator().manual_seed(1)
    starts = torch.cat([x[torch.from_numpy(flagged)], near_boundary(model, x)])
    r = torch.from_numpy(sess.run(["tm_radius_linf"], {"x": starts.numpy()})[0]).double()
    up = torch.zeros(D, dtype=torch.bool)
    up[INC] = True
    down = torch.zeros(D, dtype=torch.bool)
    down[DEC] = True
    for t in (*torch.rand(20, D, generator=gen), *torch.eye(D)):
        step = 0.999 * r[:, None] * t * (up.double() - down.double())
        moved = (starts.double() + torch.where(torch.isfinite(step), step, torch.zeros_like(step))).float()
        keep = (r > 0).numpy()
        assert int(keep.sum()) > 50
        assert bool(sess.run(["flagged"], {"x": moved.numpy()})[0][keep].all())


def _zero_columns(model, coords):
    """Views of every pass-through weight column reading a feature of input coordinates ``coords``."""
    per_input = model.convex.passthrough[0].in_features // D
    return [lin.weight[:, k * D + i] for lin in model.convex.passthrough for k in range(per_input) for i in coords]


# ---------------------------------------------------------------------------------------------
# Config, checkpoint, reports
# ---------------------------------------------------------------------------------------------


def test_config_round_trips_through_a_checkpoint(tmp_path):
    model = _model({"increasing": [5, 0, 2, 2], "decreasing": DEC})
    assert model.monotone == Monotone(increasing=(0, 2, 5), decreasing=(3,))
    assert model.config()["monotone"] == {"increasing": [0, 2, 5], "decreasing": [3]}
    asymcert.save(model, tmp_path / "m.safetensors")
    again = asymcert.load(tmp_path / "m.safetensors")
    assert again.config() == model.config() and again.monotone == model.monotone
    assert all(isinstance(m, SignedLinear) for m in again.convex.passthrough)
    x = _inputs(3)
    assert torch.equal(again(x), model(x))
    # weights that break the declared signs: not saved unless asked, and such a checkpoint is refused on load
    with torch.no_grad():
        model.convex.passthrough[2].weight[0, 5] = -1.0
    with pytest.raises(ConvexityError, match=r"column\(s\) \[5\].* not saved: asymcert.load would refuse it"):
        asymcert.save(model, tmp_path / "broken.safetensors")
    assert not (tmp_path / "broken.safetensors").exists()
    asymcert.save(model, tmp_path / "broken.safetensors", validate=False)
    with pytest.raises(
        ConvexityError, match=r"convex\.passthrough\.2\.weight: 1 of \d+ entries below .*column\(s\) \[5\]"
    ):
        asymcert.load(tmp_path / "broken.safetensors")


def test_without_the_option_nothing_changes():
    model = _model(None)
    assert not model.monotone and "monotone" not in model.config()
    assert all(type(m) is nn.Linear for m in model.convex.passthrough)
    torch.manual_seed(0)
    same = build_model(model.config() | {"monotone": None})
    torch.manual_seed(0)
    ref = build_model(model.config())
    assert all(torch.equal(a, b) for a, b in zip(same.state_dict().values(), ref.state_dict().values()))


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "monotone, message",
    [
        ({"increasing": [1], "decreasing": [1, 2]}, r"\[1\] are declared both increasing and decreasing"),
        ({"increasing": [8]}, r"increasing index 8 is not an input coordinate \(0 to 7\)"),
        ({"decreasing": [-1]}, r"decreasing index -1 is not an input coordinate"),
        ({"increasing": [True]}, r"monotone.increasing = \[True\] must be a list of input indices"),
        ({"increasing": "0"}, r"must be a list of input indices"),
        ({"up": [0]}, r"monotone = .* must be an object like"),
        ([0, 1], r"must be an object like"),
    ],
)
def test_bad_declarations_are_refused(monotone, message):
    with pytest.raises(ConfigError, match=message):
        _model(monotone)


def test_a_feature_map_that_is_not_monotone_is_refused_by_name():
    with pytest.raises(ConfigError, match=r"feature map step 1 \(concat-abs\) is not nondecreasing .* \[0, 2, 5, 3\]"):
        _model({"increasing": INC, "decreasing": DEC}, phi=[{"kind": "shift"}, {"kind": "concat-abs"}])
    # concat-abs is fine for a model without the option
    assert _model(None, phi=[{"kind": "shift"}, {"kind": "concat-abs"}]).problems() == []
    # pair-min is nondecreasing but not coordinate-wise: the declaration cannot be checked, so it is refused
    with pytest.raises(ConfigError, match=r"feature map step 2 \(pair-min\) is not coordinate-wise"):
        _model({"increasing": INC}, phi=[*LOG_STD, {"kind": "pair-min"}])


def test_a_convex_conv_g_is_refused():
    with pytest.raises(ConfigError, match="needs an icnn convex network g"):
        build_model(
            {
                "kind": "feature-convex",
                "input_shape": [1, 6, 6],
                "feature_map": [{"kind": "identity"}],
                "convex": {"kind": "convex-conv", "channels": 2, "stem_kernel": 3, "blocks": 1},
                "monotone": {"increasing": [0]},
            }
        )


def test_hand_broken_models_are_refused_before_certifying():
    model = _model({"increasing": INC, "decreasing": DEC})
    x = _inputs(2)
    with torch.no_grad():
        model.convex.passthrough[0].weight[3, 3] = 0.25  # the feature of the decreasing input 3
    with pytest.raises(ConvexityError, match=r"convex\.passthrough\.0\.weight: 1 of 128 entries above .* \[3\]"):
        asymcert.certify(model, x, norms=(2,))

    swapped = _model({"increasing": INC})
    old = swapped.convex.passthrough[1]
    plain = nn.Linear(old.in_features, old.out_features)
    plain.load_state_dict(old.state_dict())
    swapped.convex.passthrough[1] = plain  # same weights, but nothing keeps the signs any more
    with pytest.raises(ConvexityError, match=r"convex\.passthrough\.1: does not keep the declared monotone"):
        swapped.validate()

    flipped = _model({"increasing": INC})
    with torch.no_grad():  # φ's scale made negative: φ is no longer nondecreasing (and no longer valid)
        flipped.feature_map.maps[1].scale[2] = -1.0
    with pytest.raises(ConvexityError, match=r"feature map step 1 \(standardize\) is not nondecreasing .*\[2\]"):
        flipped.validate()


def test_a_checkpoint_with_a_contradictory_config_is_refused(tmp_path):
    model = _model({"increasing": INC})
    asymcert.save(model, tmp_path / "m.safetensors")
    config, _ = asymcert.checkpoint.read_config(tmp_path / "m.safetensors")
    assert config["monotone"]["increasing"] == INC
    tensors = load_file(str(tmp_path / "m.safetensors"))
    config["monotone"]["decreasing"] = [0]
    save_file(
        tensors,
        str(tmp_path / "bad.safetensors"),
        metadata={"asymcert_config": json.dumps(config), "asymcert_meta": "{}"},
    )
    with pytest.raises(CheckpointError, match="declared both increasing and decreasing"):
        asymcert.load(tmp_path / "bad.safetensors")
