"""make_certifiable: a plain PyTorch loop keeps the model valid, uses the family's loss, fits b, and refuses
an invalid model; the README's example runs as written."""

from __future__ import annotations

import math
import re
import warnings
from pathlib import Path

import pytest
import torch
from torch.utils.data import DataLoader, TensorDataset

import asymcert
from asymcert.certify.attacks import decision_flips, pgd_attack
from asymcert.errors import ConfigError, ConvexityError, InputError, ModelError, SettingsError
from asymcert.models import build_model
from asymcert.nn.convex import NonnegLinear
from asymcert.train import FeatureConvexRecipe, TrainConfig, fit_balance, make_certifiable
from asymcert.train.balance import allowed_false_positives, fit_false_positive_shift
from tests.conftest import near_boundary

README = Path(__file__).resolve().parents[2] / "README.md"


def _model(d: int = 6) -> asymcert.models.FeatureConvexClassifier:
    torch.manual_seed(0)
    return build_model(
        {
            "kind": "feature-convex",
            "input_shape": [d],
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "icnn", "widths": [16, 8]},
        }
    )


def _data(n: int = 300, d: int = 6) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, d, generator=g)
    return x, (x[:, 0] - 0.5 * x[:, 1] > 0).long()


def _constrained(model) -> list[torch.Tensor]:
    return [m.weight for m in model.modules() if isinstance(m, NonnegLinear)]


def _lowest(model) -> float:
    return min(float(w.detach().min()) for w in _constrained(model))


def _hostile_steps(model, optimizer, steps: int = 3) -> None:
    """Steps whose gradient pushes every constrained weight far below 0."""
    for _ in range(steps):
        optimizer.zero_grad()
        sum(w.sum() for w in _constrained(model)).backward()
        optimizer.step()


def test_the_optimizer_hook_keeps_weights_nonnegative_and_detach_removes_it():
    plain = _model()
    _hostile_steps(plain, torch.optim.SGD(plain.parameters(), lr=10.0))
    assert _lowest(plain) < 0  # without it the loop breaks convexity
    model = _model()
    optimizer = torch.optim.SGD(model.parameters(), lr=10.0)
    training = make_certifiable(model, optimizer)
    _hostile_steps(model, optimizer)
    assert _lowest(model) >= 0
    model.validate()
    training.detach()
    _hostile_steps(model, optimizer)
    assert _lowest(model) < 0


@pytest.mark.parametrize(
    "settings",
    [
        {},
        {"margin_radius": 0.5, "margin_norm": 2.0},
        {"margin_radius": [0.5, 0.05], "margin_norm": [2.0, math.inf], "jacobian_reg": 0.1},
        {"margin_radius": (0.5, 0.05), "margin_norm": "inf", "sensitive_weight": 2.0},
    ],
)
def test_the_loss_is_the_family_recipe_loss(settings):
    x, y = _data(64)
    model = _model()
    training = make_certifiable(model, torch.optim.Adam(model.parameters()), **settings)
    training.fit_feature_map(x)
    as_config = {k: list(v) if isinstance(v, tuple) else v for k, v in settings.items()}
    recipe = FeatureConvexRecipe(TrainConfig.from_dict({**as_config, "margin_warmup": 0.0}))
    expected = recipe.loss(model, x, y, progress=1.0)[0]
    torch.testing.assert_close(training.loss(x, y), expected)
    if settings.get("margin_radius"):  # the margin term is really there
        plain = FeatureConvexRecipe(TrainConfig.from_dict({"margin_warmup": 0.0})).loss(model, x, y, 1.0)[0]
        assert training.loss(x, y).item() > plain.item()


def _trained(margin: float = 0.3, false_positive_rate: float | None = None, confidence: float | None = None):
    x, y = _data()
    model = _model()
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    training = make_certifiable(
        model,
        optimizer,
        margin_radius=margin,
        margin_norm=2.0,
        false_positive_rate=false_positive_rate,
        false_positive_confidence=confidence,
    )
    training.fit_feature_map(DataLoader(TensorDataset(x[:200], y[:200]), batch_size=50))
    for _ in range(15):
        for xb, yb in DataLoader(TensorDataset(x[:200], y[:200]), batch_size=50, shuffle=True):
            optimizer.zero_grad()
            training.loss(xb, yb).backward()
            optimizer.step()
    b = training.finish(DataLoader(TensorDataset(x[200:], y[200:]), batch_size=40))
    return model, training, b, x, y


def test_finish_fits_the_balance_on_validation_and_the_model_certifies():
    model, training, b, x, y = _trained()
    model.set_balance(0.0)
    with torch.no_grad():
        scores = model.eval()(x[200:])
    assert b == fit_balance(scores, y[200:])
    model.set_balance(b)
    assert (
        float(model.balance) == torch.tensor(b, dtype=torch.float32).item()
        and float((model(x[200:]) > 0).long().eq(y[200:]).float().mean()) > 0.85
    )
    assert training.finish(x[200:], y[200:]) == b  # a tensor with labels works the same


@pytest.mark.parametrize(("rate", "confidence"), [(0.02, None), (0.05, 0.8)])
def test_finish_at_an_operating_point_keeps_the_false_positive_budget_on_validation(rate, confidence):
    model, _, b, x, y = _trained(false_positive_rate=rate, confidence=confidence)
    model.set_balance(0.0)
    with torch.no_grad():
        scores = model.eval()(x[200:])
    assert b == fit_false_positive_shift(scores, y[200:], rate, confidence) and b < fit_balance(scores, y[200:])
    model.set_balance(b)
    with torch.no_grad():
        flagged = model(x[200:]) > 0
    n_other = int((y[200:] == 0).sum())
    assert int(flagged[y[200:] == 0].sum()) <= allowed_false_positives(n_other, rate, confidence) <= rate * n_other
    assert float(flagged[y[200:] == 1].float().mean()) > 0.5


@pytest.mark.parametrize("false_positive_rate", [None, 0.02], ids=["balanced", "operating-point"])
def test_certificates_of_a_model_trained_in_a_plain_loop_hold_under_attack(false_positive_rate):
    model, _, _, x, _ = _trained(false_positive_rate=false_positive_rate)
    x = torch.cat([x, near_boundary(model, x)])  # typical inputs and inputs just on the flagged side
    cert = asymcert.certify(model, x, norms=(2.0, math.inf))
    flagged = cert.sensitive
    assert int(flagged.sum()) > 20
    for p in (2.0, math.inf):
        radius = cert.radii[p][flagged].float() * 0.999
        adv = pgd_attack(model, x[flagged], radius, p, steps=60, restarts=2, generator=torch.Generator().manual_seed(0))
        assert not bool(decision_flips(model, x[flagged], adv).any()), p
        outside = pgd_attack(
            model,
            x[flagged],
            cert.radii[p][flagged].float() * 3 + 0.05,
            p,
            steps=60,
            generator=torch.Generator().manual_seed(0),
        )
        assert bool(decision_flips(model, x[flagged], outside).any())  # the attack is strong enough to find flips


def test_finish_refuses_a_model_made_invalid_outside_the_optimizer():
    model, training, _, x, y = _trained(margin=0.0)
    training.detach()
    with torch.no_grad():
        _constrained(model)[-1][0, 0] = -0.5
    with pytest.raises(ConvexityError, match=r"weight: 1 of \d+ entries below 0"):
        training.finish(x[200:], y[200:])


def _refused(error: type[Exception], match: str, call) -> None:
    """``call()`` raises ``error`` with a one-line message matching ``match``."""
    with pytest.raises(error, match=match) as info:
        call()
    assert "\n" not in str(info.value), str(info.value)


def test_bad_arguments_are_refused_with_one_line_errors():
    model = _model()
    sgd = torch.optim.SGD(model.parameters(), lr=0.1)
    linear = torch.nn.Linear(3, 1)
    _refused(ModelError, "feature-convex", lambda: make_certifiable(linear, torch.optim.SGD(linear.parameters(), 0.1)))
    _refused(ConfigError, "torch.optim.Optimizer", lambda: make_certifiable(model, model.parameters()))
    stranger = torch.optim.SGD([torch.nn.Parameter(torch.zeros(2))], lr=0.1)
    _refused(ConfigError, "none of the model's parameters", lambda: make_certifiable(model, stranger))
    _refused(SettingsError, "margin_radius", lambda: make_certifiable(model, sgd, margin_radius=-1.0))
    _refused(SettingsError, "margin_norm", lambda: make_certifiable(model, sgd, margin_radius=1.0, margin_norm=0.5))
    _refused(SettingsError, "pair up", lambda: make_certifiable(model, sgd, margin_radius=[1, 2], margin_norm=[2]))
    _refused(SettingsError, "jacobian_reg", lambda: make_certifiable(model, sgd, jacobian_reg=-0.1))
    _refused(SettingsError, "false_positive_rate", lambda: make_certifiable(model, sgd, false_positive_rate=1.0))
    with torch.no_grad():
        _constrained(model)[0][0, 0] = -1.0
    _refused(ConvexityError, "below 0", lambda: make_certifiable(model, sgd))  # refused before any projection
    model = _model()
    training = make_certifiable(model, torch.optim.SGD(model.parameters(), lr=0.1))
    x, y = _data(20)
    _refused(ConfigError, "both classes", lambda: training.finish(x, torch.ones(20, dtype=torch.long)))
    _refused(ConfigError, "both classes", lambda: training.finish(x))
    _refused(ConfigError, "no batches", lambda: training.finish(DataLoader(TensorDataset(x[:0], y[:0]), batch_size=4)))
    _refused(ConfigError, r"\(x, y\) batches", lambda: training.finish(DataLoader(x, batch_size=4)))
    loader = DataLoader(TensorDataset(x, y), batch_size=4)
    _refused(ConfigError, "labels only with a tensor", lambda: training.finish(loader, y))


def test_the_readme_example_runs_as_written():
    text = README.read_text(encoding="utf-8")
    section = text[text.index("## Your own training loop") :]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block is not None
    code = block.group(1)
    assert len(code.strip().splitlines()) <= 20
    namespace: dict = {}
    exec(compile(code, "README.md", "exec"), namespace)
    cert, y = namespace["cert"], namespace["y"]
    assert float((cert.predicted == y[500:]).float().mean()) > 0.85 and float(cert.radii[2.0].max()) > 0


def test_a_threat_model_changes_the_margin_term_to_its_moves():
    x, y = _data(64)
    tm = asymcert.ThreatModel(immutable=[0, 1], scale={"*": 2.0})
    model = _model()
    plain = make_certifiable(model, torch.optim.Adam(model.parameters()), margin_radius=0.3, margin_norm=2.0)
    under = make_certifiable(
        model, torch.optim.Adam(model.parameters()), margin_radius=0.3, margin_norm=2.0, threat_model=tm
    )
    plain.fit_feature_map(x)
    recipe = FeatureConvexRecipe(TrainConfig.from_dict({"margin_radius": 0.3, "margin_warmup": 0.0}))
    recipe.use_threat_model(tm.resolve(None, 6))
    torch.testing.assert_close(under.loss(x, y), recipe.loss(model, x, y, progress=1.0)[0])
    assert under.loss(x, y).item() != pytest.approx(plain.loss(x, y).item(), rel=1e-6)
    with pytest.raises(asymcert.ConfigError, match=r"features named \('hp'\), but these inputs have no column names"):
        make_certifiable(
            model, torch.optim.Adam(model.parameters()), threat_model=asymcert.ThreatModel(immutable=["hp"])
        )


@pytest.mark.parametrize("labels", [[0, 2, 0, 2], [-1, 1, -1, 1], [0.5, 1.0, 0.0, 1.0], [[0], [1], [0], [1]]])
def test_the_loss_refuses_labels_that_are_not_0_and_1(labels):
    """Labels {0, 2} gave a finite, even negative loss and training went on; refused at the first batch."""
    model = _model()
    training = make_certifiable(model, torch.optim.Adam(model.parameters()))
    x, _ = _data(4)
    training.fit_feature_map(x)
    with pytest.raises(InputError, match="1 = sensitive and 0 = other"):
        training.loss(x, torch.tensor(labels))


def test_a_loss_before_fit_feature_map_warns_once():
    model = _model()
    training = make_certifiable(model, torch.optim.Adam(model.parameters()))
    x, y = _data(8)
    with pytest.warns(UserWarning, match="loss before fit_feature_map"):
        training.loss(x, y)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        training.loss(x, y)  # once only
