"""``refit`` (issue #16): train on train ∪ val for exactly ``epochs`` epochs and keep the final epoch."""

from __future__ import annotations

import contextlib
import csv
import json
import math
import os
import socket

import numpy as np
import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from click.testing import CliRunner

import asymcert
from asymcert.certify.certfile import load_certificates
from asymcert.cli import EXIT_OK, EXIT_REFUSED, main
from asymcert.data.tasks import Dataset, TaskData
from asymcert.errors import SettingsError
from asymcert.models import build_model
from asymcert.pipeline import read_run
from asymcert.train import TrainConfig, fit
from asymcert.train.loop import REFIT_SELECTION, STATE_FILE
from asymcert.train.recipes import recipe_for

SMALL_MODEL = {
    "kind": "feature-convex",
    "input_shape": [4],
    "input_range": None,
    "feature_map": [{"kind": "standardize"}],
    "convex": {"kind": "icnn", "widths": [8], "batch_norm": False},
}
N_TRAIN, N_VAL, N_TEST = 120, 40, 40


def _data(test: object | None = None) -> TaskData:
    """Separable-ish 4-feature data: 120 train, 40 val, 40 test inputs (label 1 = sensitive)."""
    g = torch.Generator().manual_seed(0)
    x = torch.randn(N_TRAIN + N_VAL + N_TEST, 4, generator=g) * torch.tensor([1.0, 2.0, 3.0, 4.0]) + 1.0
    y = (x[:, 0] - 0.3 * x[:, 1] > 0.5).long()
    a, b = N_TRAIN, N_TRAIN + N_VAL
    split = [Dataset(x[:a], y[:a]), Dataset(x[a:b], y[a:b]), Dataset(x[b:], y[b:])]
    return TaskData(split[0], split[1], test if test is not None else split[2], ("other", "sensitive"))  # type: ignore[arg-type]


def _model() -> torch.nn.Module:
    torch.manual_seed(0)
    return build_model(SMALL_MODEL)


def _config(**kw) -> TrainConfig:
    return TrainConfig.from_dict(
        {"epochs": 3, "batch_size": 16, "lr": 0.01, "optimizer": "adam", "augment": False, "device": "cpu", **kw}
    )


class _Spy:
    """The model's own recipe, recording what the loop hands it; ``metrics`` (if given) replaces the
    selection metric of successive validation passes."""

    def __init__(self, recipe, metrics: list[float] | None = None) -> None:
        self.recipe, self.metrics = recipe, metrics
        self.rows: list[torch.Tensor] = []  # the inputs of every training step
        self.prepared: list[int] = []
        self.evaluated: list[int] = []

    def prepare(self, model, train):
        self.prepared.append(len(train))
        self.recipe.prepare(model, train)

    def on_epoch_start(self, model, epoch, progress):
        self.recipe.on_epoch_start(model, epoch, progress)

    def loss(self, model, x, y, progress):
        self.rows.append(x.detach().clone())
        return self.recipe.loss(model, x, y, progress)

    def after_step(self, model):
        self.recipe.after_step(model)

    def evaluate(self, model, val, batch_size):
        self.evaluated.append(len(val))
        out = self.recipe.evaluate(model, val, batch_size)
        if self.metrics is not None:
            out["metric"] = self.metrics[len(self.evaluated) - 1]
        return out


def _fit(config: TrainConfig, data: TaskData | None = None, out=None, metrics=None, log=None):
    model = _model()
    spy = _Spy(recipe_for(model, config), metrics)
    result = fit(model, data or _data(), config, out, recipe=spy, progress=False, log=log or (lambda m: None))
    return model, spy, result


@pytest.mark.parametrize("value", ["yes", 1, None, [True]])
def test_refit_must_be_true_or_false(value):
    with pytest.raises(SettingsError, match=r"refit must be true or false"):
        TrainConfig.from_dict({"refit": value})
    assert TrainConfig().refit is False and TrainConfig.from_dict({"refit": True}).refit is True


@pytest.mark.parametrize("refit, seen", [(False, N_TRAIN), (True, N_TRAIN + N_VAL)])
def test_each_epoch_passes_over_train_or_train_and_val(refit, seen):
    config = _config(refit=refit)
    model, spy, _ = _fit(config)
    data = _data()
    assert len(spy.rows) == 3 * math.ceil(seen / 16)  # steps of all epochs
    epoch_rows = torch.cat(spy.rows[: math.ceil(seen / 16)])
    union = torch.cat([data.train.x, data.val.x])[:seen]  # train only, or train then val
    assert torch.equal(epoch_rows[epoch_rows[:, 0].argsort()], union[union[:, 0].argsort()])  # each input once
    assert spy.prepared == [seen] and spy.evaluated == [N_VAL if not refit else seen] * 3
    # the feature map's statistics come from the inputs training fits on
    assert torch.allclose(model.feature_map.maps[0].mean, union.mean(dim=0), atol=1e-5)


def test_refit_keeps_the_final_epoch_where_selection_keeps_another(tmp_path):
    falling = [0.9, 0.8, 0.7]  # the selection metric gets worse every epoch: selection keeps epoch 1
    chosen, _, res = _fit(_config(), out=tmp_path / "select", metrics=falling)
    last = torch.load(tmp_path / "select" / STATE_FILE, weights_only=True)["model"]
    assert res.best["epoch"] == 1 and "selection" not in res.best
    assert any(not torch.equal(v, last[k]) for k, v in chosen.state_dict().items())

    final, _, res = _fit(_config(refit=True), out=tmp_path / "refit", metrics=falling)
    last = torch.load(tmp_path / "refit" / STATE_FILE, weights_only=True)["model"]
    saved = asymcert.load(tmp_path / "refit").state_dict()
    assert res.best["epoch"] == 3 and res.best["selection"] == REFIT_SELECTION
    assert res.best["fit_inputs"] == N_TRAIN + N_VAL and res.best["metric"] == 0.7
    assert all(torch.equal(v, last[k]) and torch.equal(v, saved[k]) for k, v in final.state_dict().items())
    # the history names its metrics as in-sample on train ∪ val, never as validation metrics
    history = json.loads((tmp_path / "refit" / "history.json").read_text())
    assert [h["epoch"] for h in history] == [1, 2, 3]
    assert all("trainval_accuracy" in h and not any(k.startswith("val_") for k in h) for h in history)


class _Untouchable:
    """A test split that fails whatever reads it."""

    @property
    def x(self):
        raise AssertionError("the test split was read")

    @property
    def y(self):
        raise AssertionError("the test split was read")

    def __len__(self):
        raise AssertionError("the test split was read")


def test_refit_never_reads_the_test_split(tmp_path):
    with pytest.raises(AssertionError, match="test split was read"):
        len(_Untouchable())
    _, spy, res = _fit(_config(refit=True), data=_data(test=_Untouchable()), out=tmp_path)
    assert res.best["epoch"] == 3 and spy.prepared == [N_TRAIN + N_VAL]


def test_interrupted_refit_resumes_to_the_same_weights(tmp_path):
    full, _, _ = _fit(_config(refit=True), out=tmp_path / "full")

    def stop_after_two(msg: str) -> None:
        if msg.startswith("epoch 2/"):
            raise KeyboardInterrupt

    with contextlib.suppress(KeyboardInterrupt):
        _fit(_config(refit=True), out=tmp_path / "resumed", log=stop_after_two)
    assert len(json.loads((tmp_path / "resumed" / "history.json").read_text())) == 2
    resumed, _, res = _fit(_config(refit=True), out=tmp_path / "resumed")
    assert res.best["epoch"] == 3 and res.best["selection"] == REFIT_SELECTION
    for k, v in full.state_dict().items():
        assert torch.allclose(v, resumed.state_dict()[k], atol=1e-6), k


# --- run folders, through the command line --------------------------------------------------------


@pytest.fixture(scope="module")
def csv_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("refit") / "train.csv"
    g = np.random.default_rng(0)
    x = np.abs(g.normal(size=(300, 3))) * np.array([1.0, 3.0, 20.0])
    y = np.where(x[:, 0] - 0.2 * x[:, 1] + 0.02 * x[:, 2] > 0.3, "spam", "ham")
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["a", "b", "c", "kind"])
        w.writerows([*map(float, row), label] for row, label in zip(x, y, strict=True))
    return path


def _run(csv_file, out, *extra):
    args = ["run", "--csv", str(csv_file), "--label-column", "kind", "--sensitive-class", "spam"]
    return CliRunner().invoke(main, [*args, "--epochs", "2", "--out", str(out), "--quiet", *extra])


def test_cli_refuses_a_refit_that_is_not_true_or_false(csv_file, tmp_path):
    res = _run(csv_file, tmp_path / "r", "--set", "refit=maybe")
    assert res.exit_code == EXIT_REFUSED and "refit must be true or false" in res.output, res.output
    assert len(res.output.strip().splitlines()) == 1 and not (tmp_path / "r").exists()


def test_refit_run_folder_records_loads_and_certifies(csv_file, tmp_path):
    out = tmp_path / "r"
    res = _run(csv_file, out, "--set", "refit=true")
    assert res.exit_code == EXIT_OK, res.output
    record = read_run(out)
    splits, best = record.splits, (record.training or {})["best"]
    assert record.train["refit"] is True and best["selection"] == REFIT_SELECTION
    assert best["epoch"] == 2 and best["fit_inputs"] == splits["train"] + splits["val"]
    assert REFIT_SELECTION in (out / "report.md").read_text()
    model = asymcert.load(out)
    res = CliRunner().invoke(main, ["certify", str(out), "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    cert, labels = load_certificates(out / "certificates.safetensors")
    assert len(labels) == splits["test"] and bool(cert.radii[2.0].isfinite().all())
    assert model.config() == record.model


def test_run_folder_older_than_refit_loads_certifies_and_resumes(csv_file, tmp_path):
    out = tmp_path / "old"
    assert _run(csv_file, out).exit_code == EXIT_OK
    run_json = out / "run.json"
    record = json.loads(run_json.read_text())
    del record["train"]["refit"]  # as a run folder written before the setting existed
    run_json.write_text(json.dumps(record))
    assert "refit" not in read_run(out).train
    res = CliRunner().invoke(main, ["certify", str(out), "--quiet"])
    assert res.exit_code == EXIT_OK, res.output
    assert _run(csv_file, out).exit_code == EXIT_OK  # same settings: the folder is this run's
    res = _run(csv_file, out, "--set", "refit=true")  # another setting: refused, as any other change
    assert res.exit_code != EXIT_OK and "training settings" in res.output, res.output


# --- torch.distributed: the union is sharded like the train split ---------------------------------


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _ddp_config() -> TrainConfig:
    # SGD with a small step: float-sized differences between one and two processes stay float-sized
    return _config(refit=True, optimizer="sgd", lr=0.003, epochs=2)


def _ddp_worker(rank, world, port, result_file):
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world)
    torch.set_num_threads(1)
    try:
        model, spy, _ = _fit(_ddp_config())
        seen = sum(len(r) for r in spy.rows)
        torch.save({"state": model.state_dict(), "seen": torch.tensor(seen)}, f"{result_file}.{rank}")
    finally:
        dist.destroy_process_group()
    os._exit(0)  # skip gloo's teardown, which can abort the interpreter (see test_distributed.py)


def test_two_processes_shard_the_union_and_match_one_process(tmp_path):
    single, _, _ = _fit(_ddp_config())
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path / "ddp")), nprocs=2, join=True)
    parts = [torch.load(tmp_path / f"ddp.{r}", weights_only=True) for r in range(2)]
    assert [int(p["seen"]) for p in parts] == [N_TRAIN + N_VAL] * 2  # half of each epoch's union, 2 epochs
    for k, v in single.state_dict().items():
        tol = 0.05 if k == "balance" else 1e-4  # b sits between two neighbouring scores
        assert torch.allclose(v.double(), parts[0]["state"][k].double(), atol=tol), k
