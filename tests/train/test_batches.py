"""Training batches: the same shuffle and augmentation whatever the worker count or order of access."""

import dataclasses

import pytest
import torch

from asymcert.data import get_task
from asymcert.models import build_model
from asymcert.train import TrainConfig, fit
from asymcert.train.batches import EpochBatches, epoch_batches, resolve_workers


def test_batches_cover_the_split_once_and_replay_exactly(fashion_dir):
    task = get_task("fashion-mnist-shirts")
    data = task.load(fashion_dir)
    x, y = data.train.x, data.train.y
    a = EpochBatches(x, y, 32, seed=0, epoch=3, augment=task.augment)
    b = EpochBatches(x, y, 32, seed=0, epoch=3, augment=task.augment)
    assert len(a) == -(-len(y) // 32)
    assert torch.equal(
        torch.cat([a.perm[i * 32 : (i + 1) * 32] for i in range(len(a))]).sort().values, torch.arange(len(y))
    )
    # any access order gives the same batch (each batch has its own generator)
    for step in reversed(range(len(a))):
        xa, ya = a[step]
        xb, yb = b[step]
        assert torch.equal(xa, xb) and torch.equal(ya, yb)
    other_epoch = EpochBatches(x, y, 32, seed=0, epoch=4, augment=task.augment)
    assert not torch.equal(other_epoch[0][0], a[0][0])
    with pytest.raises(IndexError):
        a[len(a)]


def test_worker_processes_give_the_same_batches(fashion_dir):
    task = get_task("fashion-mnist-shirts")
    data = task.load(fashion_dir)
    batches = EpochBatches(data.train.x, data.train.y, 50, seed=1, epoch=0, augment=task.augment)
    here = list(epoch_batches(batches, 0, pin_memory=False))
    there = list(epoch_batches(batches, 2, pin_memory=False))
    assert len(here) == len(there) == len(batches)
    for (xa, ya), (xb, yb) in zip(here, there):
        assert torch.equal(xa, xb) and torch.equal(ya, yb)


def test_training_with_workers_matches_training_without(fashion_dir, tmp_path):
    task = get_task("fashion-mnist-shirts")
    data = task.load(fashion_dir)
    cfg = {
        **task.model,
        "input_shape": list(data.input_shape),
        "input_range": [0, 1],
        "convex": {"kind": "icnn", "widths": [8]},
    }
    config = TrainConfig.from_dict({**task.train, "epochs": 1, "batch_size": 32, "workers": 0})
    weights = []
    for workers in (0, 2):
        torch.manual_seed(0)
        model = build_model(cfg)
        fit(
            model,
            data,
            dataclasses.replace(config, workers=workers),
            tmp_path / f"w{workers}",
            augment=task.augment,
            progress=False,
        )
        weights.append(model.state_dict())
    for k, v in weights[0].items():
        assert torch.equal(v, weights[1][k]), k


def test_worker_count_defaults_and_checks():
    assert resolve_workers(None, torch.device("cpu")) == 0
    assert resolve_workers(3, torch.device("cpu")) == 3
    with pytest.raises(ValueError, match="workers"):
        resolve_workers(-1, torch.device("cpu"))
