"""Knowledge distillation into the feature-convex recipe (TrainConfig.teacher / distill_*)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

import asymcert
from asymcert.certify.attacks import decision_flips, pgd_attack
from asymcert.checkpoint import save
from asymcert.data.tasks import task_data_from_arrays
from asymcert.errors import ConfigError, SettingsError
from asymcert.models import build_model
from asymcert.train import TrainConfig, fit
from asymcert.train.distill import distill_loss
from asymcert.train.recipes import FeatureConvexRecipe, recipe_for

D = 5


def _student() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(
        {
            "kind": "feature-convex",
            "input_shape": [D],
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "icnn", "widths": [8]},
        }
    )


def _teacher_folder(tmp_path) -> str:
    torch.manual_seed(1)
    teacher = build_model({"kind": "orthogonal", "input_shape": [D], "arch": "mlp", "widths": [16]})
    with torch.no_grad():
        for p in teacher.parameters():
            p.add_(torch.randn_like(p))
    save(teacher, tmp_path / "teacher" / "model.safetensors")
    return str(tmp_path / "teacher")


def _data():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(200, D)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    return task_data_from_arrays(x, y, ("other", "sensitive"))


def _config(teacher: str | None, weight: float, **kw) -> TrainConfig:
    base = {"epochs": 1, "batch_size": 16, "optimizer": "adam", "device": "cpu", "augment": False}
    return TrainConfig(**{**base, "teacher": teacher, "distill_weight": weight, **kw})


@pytest.mark.parametrize(
    "settings, words",
    [
        ({"distill_weight": 1.5, "teacher": "x"}, "distill_weight must be a number in [0, 1]"),
        ({"distill_temperature": 0}, "distill_temperature must be a finite number > 0"),
        ({"teacher": "runs/x"}, "needs distill_weight > 0"),
        ({"distill_weight": 0.5}, "needs a teacher"),
        ({"teacher": ""}, "teacher must be null or the path"),
    ],
)
def test_bad_distillation_settings_are_refused_in_one_line(settings, words):
    with pytest.raises(SettingsError) as info:
        TrainConfig.from_dict(settings)
    assert words in str(info.value) and "\n" not in str(info.value)


def test_missing_or_foreign_or_misshapen_teacher_is_refused(tmp_path):
    with pytest.raises(ConfigError, match="no such run folder"):
        FeatureConvexRecipe(_config(str(tmp_path / "nope"), 0.5))
    (tmp_path / "foreign").mkdir()
    with pytest.raises(ConfigError, match="not an asymcert model"):
        FeatureConvexRecipe(_config(str(tmp_path / "foreign"), 0.5))
    recipe = FeatureConvexRecipe(_config(_teacher_folder(tmp_path), 0.5))
    data = task_data_from_arrays(np.zeros((50, D + 1), np.float32), np.arange(50) % 2, ("a", "b"))
    with pytest.raises(ConfigError, match=r"takes inputs of shape \(5,\)"):
        recipe.prepare(_student(), data.train)


def test_other_recipes_refuse_a_teacher(tmp_path):
    other = build_model({"kind": "orthogonal", "input_shape": [D], "arch": "mlp", "widths": [4]})
    with pytest.raises(ConfigError, match="only supported by the feature-convex recipe"):
        recipe_for(other, _config(_teacher_folder(tmp_path), 0.5))


def _one_step(config: TrainConfig, x, y) -> tuple[torch.nn.Module, float, FeatureConvexRecipe]:
    model = _student()
    recipe = FeatureConvexRecipe(config)
    recipe.prepare(model, _data().train)
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    loss, _ = recipe.loss(model, x, y, 0.0)
    loss.backward()
    opt.step()
    return model, float(loss.detach()), recipe


def test_distillation_changes_training_and_weight_one_is_the_pure_distillation_loss(tmp_path):
    data, teacher = _data(), _teacher_folder(tmp_path)
    x, y = data.train.x[:16], data.train.y[:16]
    plain, _, _ = _one_step(_config(None, 0.0), x, y)
    mixed, _, _ = _one_step(_config(teacher, 0.5), x, y)
    diff = [float((a - b).detach().abs().max()) for a, b in zip(plain.parameters(), mixed.parameters())]
    assert max(diff) > 1e-6
    model = _student()
    model.feature_map.fit(data.train.x)
    model.set_balance(0.0)
    with torch.no_grad():
        s, t = model(x), asymcert.load(teacher)(x)
    expected = 9.0 * torch.nn.functional.binary_cross_entropy_with_logits(s / 3.0, torch.sigmoid(t / 3.0))
    _, loss, _ = _one_step(_config(teacher, 1.0, distill_temperature=3.0), x, y)
    assert loss == pytest.approx(float(expected), rel=1e-5)
    assert float(distill_loss(s, t, 3.0)) == pytest.approx(float(expected), rel=1e-6)


def test_teacher_is_frozen_and_student_is_sound_and_loads_back(tmp_path):
    data, teacher = _data(), _teacher_folder(tmp_path)
    before = {k: v.clone() for k, v in asymcert.load(teacher).state_dict().items()}
    model = _student()
    config = _config(teacher, 0.5, epochs=2, margin_radius=0.5, margin_norm=2)
    recipe = FeatureConvexRecipe(config)
    fit(model, data, config, tmp_path / "run", recipe=recipe, progress=False)
    assert recipe.teacher is not None and all(p.grad is None for p in recipe.teacher.parameters())
    for key, value in recipe.teacher.state_dict().items():
        assert torch.equal(value, before[key])
    loaded = asymcert.load(tmp_path / "run")
    loaded.validate()
    x = data.test.x
    cert = asymcert.certify(loaded, x, norms=(2,))
    radius = cert.radii[2.0]
    sure = cert.sensitive & (radius > 1e-3)
    assert bool(sure.any())
    eps = 0.99 * radius[sure]
    x_adv = pgd_attack(loaded, x[sure], eps, 2, steps=50, restarts=2, generator=torch.Generator().manual_seed(0))
    assert not bool(decision_flips(loaded, x[sure], x_adv).any())
