"""Convex ensembles g = (1/K) Σ g_k (``{"kind": "mean", ...}``): config, allowlist, training, certificates."""

from __future__ import annotations

import copy
import math

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import asymcert
from asymcert.certify.attacks import decision_flips, pgd_attack
from asymcert.certify.bounded_icnn import supports_bounded_icnn
from asymcert.certify.feature_convex import (
    FLOAT_GUARD_FACTOR,
    constant_terms,
    float_guard,
    score_and_feature_gradient,
    score_magnitudes,
)
from asymcert.certify.threat_attack import move_sizes, threat_attack
from asymcert.checkpoint import load, save
from asymcert.errors import ConfigError, UnknownNameError
from asymcert.export import ExportError, to_onnx
from asymcert.models import build_model
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.nn.convex import ICNN, ConvexMean, build_convex_net, convex_net_problems, convexity_violations
from asymcert.threat import ThreatModel
from asymcert.train.config import TrainConfig
from asymcert.train.recipes import FeatureConvexRecipe
from tests.conftest import near_boundary, small_feature_convex

MEMBER = {"kind": "icnn", "widths": [16, 8], "batch_norm": False}
SHALLOW = {"kind": "icnn", "widths": [12], "batch_norm": False}
NORMS = (1.0, 2.0, math.inf)


def _model(convex: dict, n: int = 6, feature_map: list | None = None, monotone: dict | None = None, seed: int = 0):
    """A feature-convex model on (n,) inputs with g = ``convex``, φ fitted on uniform data."""
    torch.manual_seed(seed)
    config = {
        "kind": "feature-convex",
        "input_shape": [n],
        "feature_map": feature_map or [{"kind": "standardize"}],
        "convex": convex,
    }
    if monotone:
        config["monotone"] = monotone
    model = build_model(config)
    model.feature_map.fit(torch.rand(256, n) * 4)
    return model


def _data(n_points: int = 512, n: int = 6, seed: int = 0) -> tuple[torch.Tensor, torch.Tensor]:
    """Inputs (N, n) in [0, 4]ⁿ and labels (N,): a curved positive region, so a convex g fits it."""
    gen = torch.Generator().manual_seed(seed)
    x = torch.rand(n_points, n, generator=gen) * 4
    y = ((x[:, 0] - 2) ** 2 + (x[:, 1] - 2) ** 2 + 0.3 * x[:, 2] > 2.0).long()
    return x, y


def _train(model: FeatureConvexClassifier, steps: int = 150, **settings) -> FeatureConvexClassifier:
    """A few Adam steps of the feature-convex recipe (projection after each), then b fitted on the data."""
    x, y = _data()
    recipe = FeatureConvexRecipe(TrainConfig(optimizer="adam", **settings))
    opt = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for step in range(steps):
        i = torch.arange(step * 64, step * 64 + 64) % len(x)
        loss, _ = recipe.loss(model, x[i], y[i], step / steps)
        opt.zero_grad()
        loss.backward()
        opt.step()
        recipe.after_step(model)
    model.eval()
    recipe.evaluate(model, type("V", (), {"x": x, "y": y})(), 1000)
    return model


@pytest.fixture(scope="module")
def trained() -> FeatureConvexClassifier:
    return _train(_model({"kind": "mean", "member": MEMBER, "count": 3}), margin_radius=0.3, margin_norm=2)


# ---- config and allowlist ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "convex",
    [
        {"kind": "mean", "members": [MEMBER, SHALLOW]},
        {"kind": "mean", "member": MEMBER, "count": 3},
        {"kind": "mean", "members": [MEMBER]},
    ],
)
def test_config_round_trips_and_checkpoints(tmp_path, convex):
    model = _model(convex)
    assert model.config()["convex"] == convex
    assert isinstance(model.convex, ConvexMean) and not model.problems()
    path = save(model, tmp_path / "m.safetensors")
    again = load(path)
    x = torch.rand(10, 6) * 4
    with torch.no_grad():
        torch.testing.assert_close(again(x), model(x), rtol=0, atol=0)
        scores = model.convex.member_scores(model.features(x))
    assert scores.shape == (10, len(model.convex.members))
    torch.testing.assert_close(scores.mean(1) + model.balance, model(x).detach())


def test_members_start_from_different_initialisations():
    g = build_convex_net({"kind": "mean", "member": MEMBER, "count": 3}, (6,))
    first = [m.passthrough[0].weight for m in g.members]
    assert not torch.equal(first[0], first[1]) and not torch.equal(first[1], first[2])


@pytest.mark.parametrize(
    ("convex", "error", "match"),
    [
        ({"kind": "mean", "members": []}, ConfigError, "members .* non-empty"),
        ({"kind": "mean", "member": MEMBER, "count": 0}, ConfigError, "count = 0 must be an integer ≥ 1"),
        ({"kind": "mean", "member": MEMBER, "count": True}, ConfigError, "count"),
        ({"kind": "mean"}, ConfigError, "either members"),
        ({"kind": "mean", "members": [MEMBER], "member": MEMBER, "count": 1}, ConfigError, "either members"),
        ({"kind": "mean", "members": [MEMBER, 3]}, ConfigError, "members.1 = 3 must be a JSON object"),
        ({"kind": "mean", "members": [{"kind": "mean", "members": [MEMBER]}]}, ConfigError, "nested means"),
        ({"kind": "mean", "members": [MEMBER], "weights": [1]}, UnknownNameError, "weights"),
        ({"kind": "mean", "members": [{"kind": "icnn", "widths": []}]}, ConfigError, "widths"),
        ({"kind": "avg", "members": [MEMBER]}, UnknownNameError, "known: convex-conv, icnn, mean"),
    ],
)
def test_bad_configs_are_refused_by_name(convex, error, match):
    with pytest.raises(error, match=match):
        build_convex_net(convex, (6,))


def test_empty_mean_is_refused_by_the_constructor():
    with pytest.raises(ConfigError, match="non-empty"):
        ConvexMean([])


def test_allowlist_recurses_into_members_with_their_paths():
    model = _model({"kind": "mean", "member": MEMBER, "count": 3})
    model.convex.members[1].hidden[0] = nn.Linear(16, 8, bias=False)  # a free weight after a ReLU
    problems = model.problems()
    assert any(p.startswith("convex.members.1.hidden.0: Linear is not allowed") for p in problems), problems
    assert not any("members.0" in p or "members.2" in p for p in problems)


def test_nested_means_subclasses_and_extra_modules_are_refused():
    g = ConvexMean([ConvexMean([ICNN((6,), (4,))])])
    assert convex_net_problems(g) == ["convex.members.0: nested means are not supported"]

    class Sub(ConvexMean):
        def forward(self, f):
            return -super().forward(f)

    assert "Sub is not a known input-convex network" in convex_net_problems(Sub([ICNN((6,), (4,))]))[0]
    extra = ConvexMean([ICNN((6,), (4,))])
    extra.head = nn.Linear(1, 1)
    assert convex_net_problems(extra) == [
        "convex.head: Linear is not allowed here (a mean holds its members in 'members' only)"
    ]
    emptied = ConvexMean([ICNN((6,), (4,))])
    emptied.members = nn.ModuleList()
    assert convex_net_problems(emptied) == ["convex.members: a mean needs a non-empty ModuleList of convex networks"]


def test_negative_member_weights_are_reported_and_projected():
    model = _model({"kind": "mean", "member": MEMBER, "count": 2})
    with torch.no_grad():
        model.convex.members[1].hidden[0].weight[0, 0] = -1.0
    assert [v.split(":")[0] for v in convexity_violations(model)] == ["convex.members.1.hidden.0.weight"]
    model.project()
    assert not convexity_violations(model) and not model.problems()


def test_hooks_on_a_member_are_refused():
    model = _model({"kind": "mean", "member": MEMBER, "count": 2})
    model.convex.members[0].register_forward_hook(lambda m, i, o: -o)
    assert any(p.startswith("convex.members.0: has forward hook") for p in model.problems())


# ---- training -----------------------------------------------------------------------------------------


def _member_grads(model: FeatureConvexClassifier, loss: torch.Tensor) -> list[list[torch.Tensor]]:
    model.zero_grad()
    loss.backward()
    return [[p.grad.clone() for p in m.parameters()] for m in model.convex.members]


@pytest.mark.parametrize("margin", [{"margin_radius": 0.4, "margin_norm": 1}, {"jacobian_reg": 0.1}])
def test_members_training_gives_each_member_its_own_loss(margin):
    model = _model({"kind": "mean", "members": [MEMBER, SHALLOW, MEMBER]})
    x, y = _data(64)
    recipe = FeatureConvexRecipe(TrainConfig(**margin))
    with torch.no_grad():
        model.set_balance(0.3)
    loss, stats = recipe.loss(model, x, y, 1.0)
    assert "bce" in stats
    together = _member_grads(model, loss)
    for k, member in enumerate(model.convex.members):
        model.zero_grad()
        alone = FeatureConvexClassifier(model.feature_map, member, (6,))
        with torch.no_grad():
            alone.set_balance(0.3)
        own, _ = recipe.loss(alone, x, y, 1.0)
        (own / 3).backward()
        for a, b in zip(together[k], [p.grad for p in member.parameters()]):
            torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-7)
    # the joint setting trains the averaged score instead: other gradients
    joint, _ = FeatureConvexRecipe(TrainConfig(ensemble_training="mean", **margin)).loss(model, x, y, 1.0)
    assert not all(torch.allclose(a, b) for a, b in zip(together[0], _member_grads(model, joint)[0]))


def test_members_loss_by_hand():
    """The ℓ2 margin loss of each member, written out: BCE on s_k − r·Lip₂(φ)·‖∇g_k‖₂ for positives."""
    model = _model({"kind": "mean", "member": SHALLOW, "count": 2})
    x, y = _data(32)
    recipe = FeatureConvexRecipe(TrainConfig(margin_radius=0.5, margin_norm=2))
    loss, _ = recipe.loss(model, x, y, 1.0)
    f = model.features(x).detach().requires_grad_(True)
    parts = []
    for member in model.convex.members:
        s = member(f) + model.balance
        (grad,) = torch.autograd.grad(s.sum(), f)
        bound = s - 0.5 * model.feature_lipschitz(2.0) * grad.norm(dim=1)
        parts.append(F.binary_cross_entropy_with_logits(torch.where(y.bool(), bound, s), y.float()))
    torch.testing.assert_close(loss, torch.stack(parts).mean(), rtol=1e-5, atol=1e-6)


def test_a_trained_ensemble_is_convex_and_learns(trained):
    x, y = _data(512, seed=1)
    with torch.no_grad():
        accuracy = float(((trained(x) > 0).long() == y).float().mean())
        f = trained.features(x)
        a, b = f[:256], f[256:]
        lam = torch.rand(256, 1)
        mid = trained.convex(lam * a + (1 - lam) * b).double()
        chord = lam[:, 0].double() * trained.convex(a).double() + (1 - lam[:, 0].double()) * trained.convex(b).double()
    assert accuracy > 0.8
    assert bool((mid <= chord + 1e-5 * (chord.abs() + 1)).all())
    assert not trained.problems()


def test_monotone_constraints_hold_in_every_member():
    model = _model({"kind": "mean", "member": MEMBER, "count": 3}, monotone={"increasing": [0], "decreasing": [1]})
    _train(model, steps=60)
    signs = model.convex.column_signs()
    assert len(signs) == 9 and all(s is not None and s[0] == 1 and s[1] == -1 for s in signs)
    assert not model.problems()
    x = torch.rand(200, 6) * 4
    step = torch.zeros(6)
    with torch.no_grad():
        step[0] = 0.5
        assert bool((model(x + step) >= model(x) - 1e-5).all())
        step[0], step[1] = 0.0, 0.5
        assert bool((model(x + step) <= model(x) + 1e-5).all())
    with torch.no_grad():  # a member losing its sign is named
        model.convex.members[2].passthrough[1].weight[0, 0] = -1.0
    assert any("convex.members.2.passthrough.1.weight" in p for p in model.problems())
    model.convex.members[1].passthrough[0] = nn.Linear(6, 16)  # no signs kept at all
    assert any(
        p.startswith("convex.members.1.passthrough.0: does not keep the declared monotone") for p in model.problems()
    )


def test_monotone_needs_icnn_members():
    conv = {"kind": "convex-conv", "channels": 2, "stem_kernel": 3, "blocks": 1}
    with pytest.raises(ConfigError, match="icnn members"):
        build_model(
            {
                "kind": "feature-convex",
                "input_shape": [1, 4, 4],
                "feature_map": [{"kind": "shift"}],
                "convex": {"kind": "mean", "members": [MEMBER, conv]},
                "monotone": {"increasing": [0]},
            }
        )


# ---- certificates -----------------------------------------------------------------------------------------


@pytest.mark.parametrize("near", [False, True], ids=["typical", "near-boundary"])
@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_pgd_inside_the_radius_never_flips(trained, p, near):
    x, _ = _data(300, seed=2)
    if near:
        x = near_boundary(trained, x)
    cert = asymcert.certify(trained, x, norms=(p,))
    flagged = cert.sensitive
    assert int(flagged.sum()) > 20
    flagged &= cert.radii[p] > 0  # a radius of 0 promises nothing (near the boundary: within rounding)
    assert int(flagged.sum()) > 20
    eps = (cert.radii[p][flagged] * (1 - 1e-6)).float()
    gen = torch.Generator().manual_seed(0)
    x_adv = pgd_attack(trained, x[flagged], eps, p, steps=100, restarts=2, generator=gen)
    assert not bool(decision_flips(trained, x[flagged], x_adv).any())
    # the attack has teeth, near the boundary too: well outside the radius it flips most inputs
    far = pgd_attack(trained, x[flagged], eps * 5, p, steps=100, restarts=2, generator=gen)
    assert float(decision_flips(trained, x[flagged], far).float().mean()) > 0.5


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_radius_matches_an_independent_float64_recomputation(trained, p):
    """r = s / (Lip_p(φ)·‖(1/K) Σ ∇g_k‖_{p*}) from each member's own float64 gradient, by hand."""
    x, _ = _data(200, seed=3)
    cert = asymcert.certify(trained, x, norms=(p,), precision="float64")
    m64 = copy.deepcopy(trained).double()
    f = m64.features(x.double()).detach().requires_grad_(True)
    grads = [torch.autograd.grad(member(f).sum(), f)[0] for member in m64.convex.members]
    grad = torch.stack(grads).mean(0)
    s = (torch.stack([member(f) for member in m64.convex.members]).mean(0) + m64.balance).detach()
    dual = {1.0: math.inf, 2.0: 2.0, math.inf: 1.0}[p]
    denominator = trained.feature_lipschitz(p) * torch.linalg.vector_norm(grad, ord=dual, dim=1)
    flagged = s > 0
    assert bool(cert.sensitive.eq(flagged).all()) and int(flagged.sum()) > 20
    got, expected = cert.radii[p][flagged].double(), (s / denominator)[flagged]
    assert bool((got <= expected).all())
    # what the certificate gave up, in score units: the slack and an absolute rounding guard, both tiny
    lost = (expected - got) * denominator[flagged]
    assert bool((lost <= 1e-4 * s[flagged] + 1e-5).all()), float((lost - 1e-4 * s[flagged]).max())


def test_auto_precision_falls_back_from_the_bounded_icnn_pass():
    model = _model({"kind": "mean", "member": SHALLOW, "count": 2})
    single = FeatureConvexClassifier(model.feature_map, model.convex.members[0], (6,))
    assert supports_bounded_icnn(single, torch.device("cpu"))  # each member alone qualifies
    assert not supports_bounded_icnn(model, torch.device("cpu"))  # the mean does not
    x = torch.rand(50, 6) * 4
    auto = asymcert.certify(model, x, norms=(2.0,))
    f64 = asymcert.certify(model, x, norms=(2.0,), precision="float64")
    torch.testing.assert_close(auto.radii[2.0], f64.radii[2.0])
    with pytest.raises(Exception, match="precision='bounded' needs"):
        asymcert.certify(model, x, norms=(2.0,), precision="bounded")


TM = ThreatModel(scale={"0": 2.0, "*": 0.5}, immutable=[1], increase_only=[2], lower={"*": 0.0})


@pytest.mark.parametrize("near", [False, True], ids=["typical", "near-boundary"])
def test_threat_model_attacks_do_not_flip_inside_the_radius(trained, near):
    x, _ = _data(300, seed=4)
    if near:
        x = near_boundary(trained, x)
    tm = TM.resolve(None, 6)
    cert = asymcert.certify(trained, x, norms=(1, 2, "inf"), threat_model=tm)
    flagged = cert.predicted.bool()
    assert int(flagged.sum()) > 20 and cert.units == "threat-model units (δ_i / scale_i)"
    gen = torch.Generator().manual_seed(1)
    for p, radius in cert.radii.items():
        r, xf = radius[flagged], x[flagged]
        finite = torch.isfinite(r) & (r > 0)  # a radius of 0 promises nothing
        assert int(finite.sum()) > 20, f"ℓ{p}: too few positive radii to test"
        inside = threat_attack(trained, xf[finite], r[finite] * 0.999, p, tm, steps=60, restarts=2, generator=gen)
        assert bool((move_sizes(xf[finite], inside, tm, p) <= r[finite] * 0.999).all())
        with torch.no_grad():
            assert int((trained(inside) <= 0).sum()) == 0, f"ℓ{p}: a flip inside the threat-model radius"
        outside = threat_attack(trained, xf[finite], r[finite] * 4, p, tm, steps=60, restarts=2, generator=gen)
        with torch.no_grad():  # the attack has teeth, near the boundary too
            assert int((trained(outside) <= 0).sum()) > 0.3 * int(finite.sum())


def test_the_exported_mean_certifies_in_onnxruntime_below_the_library(tmp_path, trained):
    """The trained mean through ONNX under a threat model: same decisions, every ℓp and threat-model radius
    at or below the library's (float64 path) and within 1e-4 away from the boundary, no flip inside."""
    pytest.importorskip("onnx")
    ort = pytest.importorskip("onnxruntime")
    tm = TM.resolve(None, 6)
    sess = ort.InferenceSession(str(to_onnx(trained, tmp_path / "m.onnx", threat_model=tm)))
    x = _data(400, seed=5)[0]
    out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x.numpy()})))
    plain = asymcert.certify(trained, x, norms=NORMS, precision="float64")
    threat = asymcert.certify(trained, x, norms=NORMS, threat_model=tm, precision="float64")
    assert bool((torch.from_numpy(out["flagged"]) == plain.sensitive).all())
    with torch.no_grad():
        scores = trained(x).double().abs()
        allowance = 3 * 8 * torch.finfo(torch.float32).eps * score_magnitudes(trained, trained.features(x))[0] / scores
    for p in NORMS:
        name = "linf" if math.isinf(p) else f"l{p:g}"
        for key, lib in ((f"radius_{name}", plain), (f"tm_radius_{name}", threat)):
            got, want = torch.from_numpy(out[key]).double(), lib.radii[p]
            assert bool((got <= want).all()), f"{key}: an ONNX radius above the library's"
            far = want > 0.05 * float(want.max())
            # threat-model radii: the graph's ± GRAPH_SLACK·max|∇g| per gradient component adds up over K·n terms;
            # and the graph's second guard on its own score, 8·eps32·max(M, A), A the absolute evaluation
            tol = (1e-3 if key.startswith("tm_") else 1e-4) + allowance
            assert int(far.sum()) > 20 and bool((((want - got) / want)[far] < tol[far]).all())
        flagged = torch.from_numpy(out["flagged"]) & (torch.from_numpy(out[f"tm_radius_{name}"]) > 0)
        r = torch.from_numpy(out[f"tm_radius_{name}"])[flagged].double()
        gen = torch.Generator().manual_seed(0)
        inside = threat_attack(trained, x[flagged], r * 0.999, p, tm, steps=40, generator=gen)
        flags = sess.run(["flagged"], {"x": inside.float().numpy()})[0]
        assert bool(flags.all()), f"ℓ{p}: onnxruntime flips inside the threat-model radius"


def test_export_refuses_a_nested_mean_by_name(tmp_path, trained):
    pytest.importorskip("onnx")
    nested = copy.deepcopy(trained)
    nested.convex.members[0] = ConvexMean([nested.convex.members[0]])  # built by hand: the config refuses it
    with pytest.raises(ExportError, match=r"cannot export this FeatureConvexClassifier: .*nested means"):
        to_onnx(nested, tmp_path / "m.onnx")


def test_float_guard_covers_the_float32_rounding_of_a_mean():
    """|s_float32 − s_float64| of a mean of batch-normed ICNNs (spread-out weights) stays well under the
    guard the certifier reserves for it, with the same room the single-network test demands."""
    for seed in range(2):
        nets = [small_feature_convex("icnn", seed=10 * seed + k) for k in range(3)]
        model = FeatureConvexClassifier(nets[0].feature_map, ConvexMean([n.convex for n in nets]), (1, 6, 6))
        x = torch.rand(1000, 1, 6, 6)
        with torch.no_grad():
            model.set_balance(-float(model(x).median()))
            s32 = model(x).double()
        m64 = copy.deepcopy(model).double()
        s64, grad = score_and_feature_gradient(m64, x.double())
        guard = float_guard(model, m64.features(x.double()), grad, s64)
        assert bool(((s32 - s64).abs() <= guard / (FLOAT_GUARD_FACTOR / 4)).all())


def test_the_rounding_bound_of_a_mean_counts_each_members_own_terms():
    """Two affine members g_1 = w·f, g_2 = −w·f: their mean is 0 with a zero gradient, yet each member's
    float evaluation rounds in proportion to Σ|w ⊙ f|; the bound must see it (the averaged gradient does not)."""
    members = [ICNN((6,), widths=(4,), batch_norm=False) for _ in range(2)]
    w = torch.linspace(-3.0, 5.0, 6)
    with torch.no_grad():
        for sign, m in zip((1.0, -1.0), members):
            for layer in m.passthrough:
                layer.weight.zero_()
                layer.bias.zero_()
            m.hidden[0].weight.zero_()
            m.passthrough[-1].weight.copy_(sign * w[None])
    identity = {"kind": "feature-convex", "input_shape": [6], "feature_map": [{"kind": "identity"}], "convex": {}}
    identity["convex"] = {"kind": "icnn", "widths": [4], "batch_norm": False}
    model = FeatureConvexClassifier(build_model(identity).feature_map, ConvexMean(members), (6,))
    f = torch.rand(50, 6, dtype=torch.float64) * 100
    s64, grad = score_and_feature_gradient(copy.deepcopy(model).double(), f)
    assert float(grad.abs().max()) == 0.0 and float(s64.abs().max()) == 0.0
    own = (w.double() * f).abs().sum(1)
    assert bool((constant_terms(model, f) >= own * (1 - 1e-12)).all())
    guard = float_guard(model, f, grad, s64)
    assert bool((guard >= FLOAT_GUARD_FACTOR * 2.0**-23 * own * (1 - 1e-9)).all())
