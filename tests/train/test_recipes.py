"""The feature-convex training recipe: plain loss, Jacobian regulariser and the certified-margin loss."""

import math

import pytest
import torch
import torch.nn.functional as F

from asymcert.train import TrainConfig
from asymcert.train.recipes import FeatureConvexRecipe
from asymcert.train.regularizers import jacobian_penalty
from tests.conftest import small_feature_convex


def _batch(seed: int = 1, n: int = 12):
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(n, 1, 6, 6, generator=g)
    y = torch.arange(n) % 2
    return x, y


def _reference_margin_logits(model, x, y, r, p):
    """s(x) − r·Lip_p(φ)·‖∇_x s‖_{p*} for sensitive rows, per input with autograd (float64, eval mode)."""
    m = model.double()
    out = []
    for xi, yi in zip(x.double(), y):
        xi = xi.unsqueeze(0).requires_grad_(True)
        s = m(xi)[0]
        (g,) = torch.autograd.grad(s, xi)
        q = math.inf if p == 1 else (1.0 if math.isinf(p) else p / (p - 1))
        slope = torch.linalg.vector_norm(g.flatten(), ord=q) * m.feature_map.lipschitz(p)
        out.append(s - r * slope if yi == 1 else s)
    return torch.stack(out).detach()


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_margin_loss_is_bce_on_the_certified_lower_bound(p):
    model = small_feature_convex("icnn")  # eval mode: no batch coupling, so per-input gradients are exact
    model.set_balance(0.0)
    x, y = _batch()
    r = 0.3
    recipe = FeatureConvexRecipe(TrainConfig(margin_radius=r, margin_norm=p))
    loss, stats = recipe.loss(model.double(), x.double(), y, progress=0.5)
    expected = F.binary_cross_entropy_with_logits(_reference_margin_logits(model, x, y, r, p), y.double())
    assert torch.allclose(loss.detach(), expected, rtol=1e-9)
    assert stats["margin_scale"] == 1.0


def test_margin_loss_trains_through_the_gradient_norm():
    """The loss is differentiable in the weights through ‖∇g‖ (double backward)."""
    model = small_feature_convex("conv").train()
    x, y = _batch()
    loss, _ = FeatureConvexRecipe(TrainConfig(margin_radius=0.5)).loss(model, x, y, progress=1.0)
    loss.backward()
    grads = [p.grad for p in model.parameters() if p.grad is not None]
    assert grads and all(torch.isfinite(g).all() for g in grads)
    assert any(g.abs().sum() > 0 for g in grads)


def test_margin_loss_off_keeps_the_paper_loss():
    model = small_feature_convex("icnn")
    x, y = _batch()
    loss, stats = FeatureConvexRecipe(TrainConfig(jacobian_reg=0.01)).loss(model, x, y, progress=0.0)
    features = model.features(x).detach().requires_grad_(True)
    score = model.score_from_features(features)
    expected = F.binary_cross_entropy_with_logits(score, y.float()) + 0.01 * jacobian_penalty(score, features)
    assert torch.allclose(loss, expected)
    assert "margin_scale" not in stats


@pytest.mark.parametrize("alpha", [0.25, 0.7])
def test_margin_weight_mixes_the_bound_and_the_plain_score(alpha):
    """Sensitive rows: α·BCE(bound) + (1 − α)·BCE(s); other rows keep BCE(s) alone."""
    model = small_feature_convex("icnn").double()
    model.set_balance(0.0)
    x, y = _batch(n=16)
    config = TrainConfig(margin_radius=0.3, margin_norm=2.0, margin_weight=alpha)
    loss, _ = FeatureConvexRecipe(config).loss(model, x.double(), y, progress=1.0)
    with torch.no_grad():
        s = model(x.double())
    bound = _reference_margin_logits(model, x, y, 0.3, 2.0)
    terms_bound = F.binary_cross_entropy_with_logits(bound, y.double(), reduction="none")
    terms_plain = F.binary_cross_entropy_with_logits(s, y.double(), reduction="none")
    expected = torch.where(y.bool(), alpha * terms_bound + (1 - alpha) * terms_plain, terms_plain).mean()
    assert torch.allclose(loss.detach(), expected, rtol=1e-9)
    full, _ = FeatureConvexRecipe(TrainConfig(margin_radius=0.3, margin_norm=2.0)).loss(model, x.double(), y, 1.0)
    assert bool(loss < full)  # the bound is below the score on sensitive rows, so mixing lowers the loss


@pytest.mark.parametrize("bad", [0.0, -0.5, 1.5, math.nan])
def test_bad_margin_weight_is_named(bad):
    with pytest.raises(ValueError, match="margin_weight"):
        FeatureConvexRecipe(TrainConfig(margin_radius=0.3, margin_weight=bad))


def test_margin_radius_warms_up_linearly():
    recipe = FeatureConvexRecipe(TrainConfig(margin_radius=2.0, margin_warmup=0.25))
    assert recipe.margin_scale(0.0) == 0.0
    assert recipe.margin_scale(0.125) == pytest.approx(0.5)
    assert recipe.margin_scale(0.25) == recipe.margin_scale(0.9) == 1.0
    assert FeatureConvexRecipe(TrainConfig(margin_radius=2.0)).margin_scale(0.0) == 1.0


def test_margin_over_a_union_of_balls_takes_the_lowest_bound():
    model = small_feature_convex("icnn").double()
    x, y = _batch()
    x = x.double()
    radii, norms = [0.3, 0.1, 0.01], [1.0, 2.0, math.inf]
    loss, _ = FeatureConvexRecipe(TrainConfig(margin_radius=radii, margin_norm=norms)).loss(model, x, y, progress=1.0)
    logits = torch.stack([_reference_margin_logits(model, x, y, r, p) for r, p in zip(radii, norms)]).amin(0)
    assert torch.allclose(loss.detach(), F.binary_cross_entropy_with_logits(logits, y.double()), rtol=1e-9)


@pytest.mark.parametrize(
    "bad",
    [
        {"margin_radius": -1.0},
        {"margin_radius": 1.0, "margin_norm": 0.5},
        {"margin_radius": 1.0, "margin_warmup": 1.5},
        {"margin_radius": [1.0, 2.0], "margin_norm": [1.0]},
    ],
)
def test_bad_margin_settings_are_named(bad):
    with pytest.raises(ValueError, match="margin"):
        FeatureConvexRecipe(TrainConfig(**bad))


def test_training_mode_losses_use_each_inputs_own_gradient():
    """With batch norm in training mode the regulariser and the margin see ∂s_i/∂φ_i (this batch's
    statistics held constant), not the batch-coupled sum of gradients."""
    from asymcert.models import build_model
    from tests.train.test_regularizers import _reference_gradients

    torch.manual_seed(0)
    model = (
        build_model(
            {
                "kind": "feature-convex",
                "input_shape": [1, 6, 6],
                "feature_map": [{"kind": "shift"}],
                "convex": {"kind": "icnn", "widths": [16]},
            }
        )
        .double()
        .train()
    )
    x, y = _batch()
    x = x.double()
    recipe = FeatureConvexRecipe(TrainConfig(jacobian_reg=0.1, margin_radius=0.2, margin_norm=2.0))
    loss, _ = recipe.loss(model, x, y, progress=1.0)
    features = model.features(x).detach()
    own = _reference_gradients(model.convex, features)
    score = model.score_from_features(features)
    logit = torch.where(y.bool(), score - 0.2 * own.flatten(1).norm(dim=1), score)
    expected = F.binary_cross_entropy_with_logits(logit, y.double()) + 0.1 * own.pow(2).sum().sqrt()
    assert torch.allclose(loss, expected, rtol=1e-9)


def test_epochs_before_the_margin_warm_up_ends_are_not_selected(fashion_dir):
    from asymcert.train import fit
    from tests.conftest import small_fashion_task

    task, data, model = small_fashion_task(fashion_dir)
    config = TrainConfig.from_dict(
        {**task.train, "epochs": 4, "batch_size": 32, "margin_radius": 0.5, "margin_norm": 2.0, "margin_warmup": 0.5}
    )
    result = fit(model, data, config, None, augment=task.augment, progress=False)
    eligible = [h["val_eligible"] for h in result.history]
    assert eligible == [0.0, 0.0, 1.0, 1.0]
    assert result.best["epoch"] in (3, 4)


def test_margin_off_ignores_its_norms():
    recipe = FeatureConvexRecipe(TrainConfig(margin_radius=0.0, margin_norm=[1.0, 2.0]))
    assert recipe.margin_radius == 0 and recipe.margins == []


def _recipe_after_a_validation_fit(config: TrainConfig):
    """(recipe, model, x, y, before, b): a prepared recipe and small model, its training loss on (x, y)
    before any validation pass, and the nonzero shift b that one validation pass then fitted."""
    from asymcert.data.tasks import Dataset

    model = small_feature_convex("icnn").double()
    x, y = _batch(n=40)
    recipe = FeatureConvexRecipe(config)
    recipe.prepare(model, Dataset(x.double(), y))
    before, _ = recipe.loss(model, x.double(), y, progress=0.0)
    val_x, _ = _batch(seed=2, n=40)
    val_y = (val_x.mean(dim=(1, 2, 3)) > 0.5).long()  # labels the untrained model gets wrong at b = 0
    b = recipe.evaluate(model, Dataset(val_x.double(), val_y), batch_size=16)["balance"]
    assert float(model.balance) == pytest.approx(b) and b != 0.0
    return recipe, model, x, y, before, b


def test_training_objective_does_not_see_the_validation_balance():
    """evaluate() fits b on validation and leaves it on the model (the checkpoint keeps it); the next
    epoch trains on g(φ(x)) with b = 0 again, so the loss does not depend on the last fit."""
    recipe, model, x, y, before, _ = _recipe_after_a_validation_fit(TrainConfig())
    recipe.on_epoch_start(model, epoch=1, progress=0.1)
    assert float(model.balance) == 0.0
    after, _ = recipe.loss(model, x.double(), y, progress=0.1)
    assert torch.equal(before, after)


def test_train_at_balance_keeps_the_fitted_shift_in_the_training_logit():
    recipe, model, x, y, _, b = _recipe_after_a_validation_fit(TrainConfig(train_at_balance=True))
    recipe.on_epoch_start(model, epoch=1, progress=0.1)
    assert float(model.balance) == pytest.approx(b)
    loss, _ = recipe.loss(model, x.double(), y, progress=0.1)
    with torch.no_grad():
        expected = F.binary_cross_entropy_with_logits(model(x.double()), y.double())
    assert torch.allclose(loss.detach(), expected, rtol=1e-12)


def test_sensitive_weight_scales_the_sensitive_terms():
    model = small_feature_convex("icnn").double()
    x, y = _batch(n=20)
    loss, _ = FeatureConvexRecipe(TrainConfig(sensitive_weight=3.0)).loss(model, x.double(), y, progress=0.0)
    with torch.no_grad():
        s = model(x.double())
    terms = F.binary_cross_entropy_with_logits(s, y.double(), reduction="none")
    expected = torch.where(y.bool(), 3.0 * terms, terms).mean()
    assert torch.allclose(loss.detach(), expected, rtol=1e-12)
    with pytest.raises(ValueError, match="sensitive_weight"):
        FeatureConvexRecipe(TrainConfig(sensitive_weight=0.0))
