import contextlib
import json

import pytest
import torch

from asymcert.checkpoint import load, save
from asymcert.data import get_task
from asymcert.errors import ConfigError, RunFolderConflictError
from asymcert.models import build_model
from asymcert.train import TrainConfig, fit, fit_balance
from asymcert.train.balance import balanced_accuracy
from asymcert.train.loop import STATE_FILE, check_config, prepare_fit


def _setup(fashion_dir, epochs):
    task = get_task("fashion-mnist-shirts")
    data = task.load(fashion_dir)
    cfg = {
        **task.model,
        "input_shape": list(data.input_shape),
        "input_range": [0, 1],
        "convex": {"kind": "convex-conv", "channels": 2, "stem_kernel": 3, "blocks": 1},
    }
    torch.manual_seed(0)
    paper = task.presets["paper"]["train"]  # the authors' SGD recipe: what these loop tests were tuned on
    model = build_model(cfg)
    return task, data, model, TrainConfig.from_dict({**task.train, **paper, "epochs": epochs, "batch_size": 32})


def test_training_learns_projects_and_fits_balance_on_validation(fashion_dir, tmp_path):
    task, data, model, config = _setup(fashion_dir, 3)
    result = fit(model, data, config, tmp_path, augment=task.augment, progress=False)
    assert result.best["metric"] > 0.8
    model.validate()  # convex after training
    # b equalises validation class accuracies
    with torch.no_grad():
        s = model(data.val.x)
    tpr = float((s[data.val.y == 1] > 0).float().mean())
    tnr = float((s[data.val.y == 0] <= 0).float().mean())
    assert abs(tpr - tnr) < 0.15
    assert (tmp_path / "model.safetensors").is_file() and (tmp_path / STATE_FILE).is_file()


def test_resume_after_interruption_gives_identical_weights(fashion_dir, tmp_path):
    task, data, model, config = _setup(fashion_dir, 3)
    fit(model, data, config, tmp_path / "full", augment=task.augment, progress=False)
    full = {k: v.clone() for k, v in model.state_dict().items()}
    # "interrupted" run: 2 epochs, then continue to 3 in the same folder with a fresh model
    _, _, model2, _ = _setup(fashion_dir, 3)
    with contextlib.suppress(KeyboardInterrupt):
        fit_partial(model2, data, config, tmp_path / "resumed", task, stop_after=2)
    _, _, model3, _ = _setup(fashion_dir, 3)
    messages = []
    fit(model3, data, config, tmp_path / "resumed", augment=task.augment, progress=False, log=messages.append)
    assert messages[0].startswith("resuming after epoch 2")
    assert len(messages) == 2  # the resume notice and epoch 3 only
    for k, v in full.items():
        assert torch.allclose(v.float(), model3.state_dict()[k].float(), atol=1e-6), k


def fit_partial(model, data, config, out, task, stop_after):
    """Run `fit` and interrupt it (KeyboardInterrupt) once `stop_after` epochs are checkpointed."""
    seen = []

    def log(msg):
        seen.append(msg)
        if len(seen) >= stop_after:
            raise KeyboardInterrupt

    fit(model, data, config, out, augment=task.augment, progress=False, log=log)


def test_fit_balance_equalises_rates():
    scores = torch.cat([torch.randn(500) + 1.0, torch.randn(300) - 0.5])
    labels = torch.cat([torch.ones(500), torch.zeros(300)]).long()
    b = fit_balance(scores, labels)
    tpr = float((scores[:500] + b > 0).float().mean())
    tnr = float((scores[500:] + b <= 0).float().mean())
    assert abs(tpr - tnr) < 0.01
    assert balanced_accuracy(scores + b, labels) > 0.7


def _files(folder):
    return {p.name: (p.read_bytes(), p.stat().st_mtime_ns) for p in folder.iterdir() if p.is_file()}


def test_resume_with_other_settings_is_refused_before_any_write(fashion_dir, tmp_path):
    task, data, model, config = _setup(fashion_dir, 1)
    fit(model, data, config, tmp_path, augment=task.augment, progress=False, log=lambda m: None)
    before = _files(tmp_path)
    _, _, model2, config2 = _setup(fashion_dir, 2)
    with pytest.raises(RunFolderConflictError, match="other settings"):
        fit(model2, data, config2, tmp_path, augment=task.augment, progress=False, log=lambda m: None)
    assert _files(tmp_path) == before


def test_prepare_fit_checks_and_reads_but_writes_nothing(fashion_dir, tmp_path):
    task, data, model, config = _setup(fashion_dir, 1)
    session = prepare_fit(model, data, config, tmp_path / "new", augment=task.augment, progress=False)
    assert not (tmp_path / "new").exists() and session.start_epoch == 0
    bad = TrainConfig.from_dict(config.to_dict())
    bad.device = "tpu9"  # from_dict refuses it too; prepare_fit checks again whatever the config went through
    with pytest.raises(ConfigError, match="tpu9"):
        prepare_fit(model, data, bad, tmp_path / "new")
    with pytest.raises(ConfigError, match="schedule"):
        check_config(model, TrainConfig.from_dict({**config.to_dict(), "schedule": "linear"}))


def test_no_eligible_epoch_replaces_an_older_model_file(fashion_dir, tmp_path):
    """With no selectable epoch the final weights are saved, never a model file left from another run."""
    task, data, model, config = _setup(fashion_dir, 1)
    stale = {k: v.clone() for k, v in model.state_dict().items()}
    save(model, tmp_path)  # a model.safetensors of some earlier run in this folder
    ineligible = TrainConfig.from_dict(
        {**config.to_dict(), "margin_radius": 0.1, "margin_norm": 2.0, "margin_warmup": 0.9}
    )
    messages: list[str] = []
    result = fit(model, data, ineligible, tmp_path, augment=task.augment, progress=False, log=messages.append)
    final = result.history[-1]
    assert result.best == {"metric": final["val_metric"], "epoch": 1, "eligible": False}  # said, not -1
    assert any("no epoch was eligible" in m and "final epoch" in m for m in messages)
    saved = load(tmp_path, validate=False).state_dict()
    assert any(not torch.equal(saved[k], stale[k]) for k in stale)
    assert all(torch.equal(saved[k], model.state_dict()[k]) for k in stale)
    history = json.loads((tmp_path / "history.json").read_text(), parse_constant=lambda c: 1 / 0)
    assert len(history) == 1
