"""The training loop: seeded shuffling and augmentation, recipe hooks, best-validation checkpoint,
resumable state written atomically after every epoch."""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from torch import nn
from tqdm.auto import tqdm

from asymcert import distributed
from asymcert.checkpoint import MODEL_FILE, atomic_write, save
from asymcert.data.augment import augmentation_from_name
from asymcert.data.tasks import Augment, TaskData
from asymcert.train.batches import EpochBatches, epoch_batches, resolve_workers
from asymcert.train.config import TrainConfig
from asymcert.train.recipes import Recipe, recipe_for

STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"


def resolve_device(name: str) -> torch.device:
    """"auto" → CUDA when available else CPU; otherwise ``torch.device(name)``."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError("device 'cuda' requested but CUDA is not available here; use --device cpu or auto")
    return device


class _LossModule(nn.Module):
    """Wraps model + recipe so the training loss is one forward call (what DDP needs to sync gradients)."""

    def __init__(self, model: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe

    def forward(self, x: torch.Tensor, y: torch.Tensor, progress: float):
        return self.recipe.loss(self.model, x, y, progress)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam as the config says."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        extra = config.extra or {}
        return torch.optim.Adam(params, lr=config.lr, betas=tuple(extra.get("betas", (0.9, 0.999))),
                                eps=float(extra.get("adam_eps", 1e-8)), weight_decay=config.weight_decay)
    raise ValueError(f"unknown optimizer {config.optimizer!r}; use 'sgd' or 'adam'")


def make_scheduler(optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int):
    """Exponential decay per epoch, or cosine per iteration; returns (scheduler, steps per epoch it is stepped)."""
    if config.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay), False
    if config.schedule == "cosine":
        total = max(1, config.epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), True
    raise ValueError(f"unknown schedule {config.schedule!r}; use 'exponential' or 'cosine'")


def fit(model: nn.Module, data: TaskData, config: TrainConfig, out_dir: str | Path | None = None,
        augment: Augment | None = None, recipe: Recipe | None = None, progress: bool = True,
        log: Callable[[str], None] | None = None, meta: dict[str, Any] | None = None) -> dict[str, Any]:
    """Train ``model`` on ``data.train``, select on ``data.val``, checkpoint into ``out_dir``.

    When ``out_dir`` holds a ``train_state.pt`` from an interrupted run with the same settings,
    training resumes after its last finished epoch (and gives the weights an uninterrupted run
    would have given). The best-validation model is kept in ``out_dir/model.safetensors``.

    ``augment`` is the task's augmentation, used when ``config.augment`` is true; a name in
    ``config.augment`` (``"crop2_flip"``, see :func:`~asymcert.data.augment.augmentation_from_name`)
    replaces it.

    Returns:
        ``{"history": [per-epoch dicts], "best": {...}, "seconds": training seconds}``; the model is
        left holding the best-validation weights.
    """
    device = distributed.local_device(resolve_device(config.device))
    model.to(device)
    rank, world = distributed.rank(), distributed.world_size()
    if config.batch_size % world:
        raise ValueError(f"batch size {config.batch_size} does not split over {world} processes")
    recipe = recipe or recipe_for(model, config)
    if isinstance(config.augment, str):  # a named augmentation instead of the task's
        augment = augmentation_from_name(config.augment)
    out = Path(out_dir) if out_dir is not None else None
    writer = distributed.is_main()
    log = log or (lambda msg: tqdm.write(msg))
    if not writer:
        log, progress = (lambda msg: None), False
    optimizer = make_optimizer(model, config)
    n = len(data.train)
    steps = math.ceil(n / config.batch_size)
    scheduler, per_step = make_scheduler(optimizer, config, steps)
    history: list[dict[str, Any]] = []
    best: dict[str, Any] = {"metric": -math.inf, "epoch": -1}
    best_state = None
    start_epoch = 0
    state_file = out / STATE_FILE if out else None
    # the worker count does not change the batches, so a run may resume with another one
    settings = {k: v for k, v in config.to_dict().items() if k != "workers"}
    if not config.margin_radius:  # runs without the margin loss keep the fingerprint they had before it
        for key in ("margin_radius", "margin_norm", "margin_warmup"):
            settings.pop(key)
    for key, plain in (("sensitive_weight", 1.0), ("train_at_balance", False)):
        if settings[key] == plain:  # likewise runs that do not use these later settings
            settings.pop(key)
    fingerprint = json.dumps({"train": settings, "model": model.config()}, sort_keys=True, default=str)
    if state_file is not None and state_file.is_file():
        state = torch.load(state_file, map_location=device, weights_only=True)
        if state.get("fingerprint") != fingerprint:
            raise ValueError(f"{out} holds an interrupted run with other settings; use a new --out folder "
                             f"or delete {state_file} to start over")
        model.load_state_dict(state["model"])
        optimizer.load_state_dict(state["optimizer"])
        scheduler.load_state_dict(state["scheduler"])
        start_epoch, history, best = state["epoch"] + 1, json.loads(state["history"]), json.loads(state["best"])
        best_state = state["best_model"]
        log(f"resuming after epoch {start_epoch} of {config.epochs} from {state_file}")
    else:
        recipe.prepare(model, data.train)
    engine: nn.Module = _LossModule(model, recipe)
    if distributed.is_distributed():
        engine = torch.nn.parallel.DistributedDataParallel(
            engine, device_ids=[device.index] if device.type == "cuda" else None)
    autocast = torch.autocast(device_type="cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda")
    seconds = sum(h.get("seconds", 0.0) for h in history)
    workers = resolve_workers(config.workers, device)
    for epoch in range(start_epoch, config.epochs):
        t0 = time.perf_counter()
        prog0 = epoch / max(1, config.epochs)
        recipe.on_epoch_start(model, epoch, prog0)
        model.train()
        # every process draws the whole global batch (same shuffle and augmentation) and keeps its shard
        batches = EpochBatches(data.train.x, data.train.y, config.batch_size, config.seed, epoch,
                               augment if config.augment else None)
        totals: dict[str, float] = {}
        bar = tqdm(epoch_batches(batches, workers, device.type == "cuda"), total=steps,
                   desc=f"epoch {epoch + 1}/{config.epochs}", disable=not progress, leave=False)
        for step, (x, y) in enumerate(bar):
            if world > 1:  # this process's shard of the global batch
                x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                loss, stats = engine(x, y, prog0 + step / (steps * max(1, config.epochs)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            recipe.after_step(model)
            if per_step:
                scheduler.step()
            stats["loss"] = loss.item()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            if step % 20 == 0:
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
        if not per_step:
            scheduler.step()
        val = recipe.evaluate(model, data.val, config.eval_batch_size)  # identical on every process
        seconds += time.perf_counter() - t0
        record = {"epoch": epoch + 1, **{k: v / steps for k, v in totals.items()},
                  **{f"val_{k}": v for k, v in val.items()}, "seconds": time.perf_counter() - t0,
                  "lr": optimizer.param_groups[0]["lr"]}
        history.append(record)
        # a recipe may rule an epoch out of the selection (e.g. one trained before its loss was complete)
        if val.get("eligible", 1.0) and val["metric"] > best["metric"]:
            best = {"metric": val["metric"], "epoch": epoch + 1, **{f"val_{k}": v for k, v in val.items()}}
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
            if out is not None and writer:
                save(model, out, meta={"task_meta": meta or {}, "best_epoch": epoch + 1})
        if out is not None and writer:
            state = {"model": model.state_dict(), "optimizer": optimizer.state_dict(),
                     "scheduler": scheduler.state_dict(), "epoch": epoch, "history": json.dumps(history),
                     "best": json.dumps(best), "best_model": best_state, "fingerprint": fingerprint}
            atomic_write(state_file, lambda tmp: torch.save(state, tmp))
            atomic_write(out / HISTORY_FILE, lambda tmp: tmp.write_text(json.dumps(history, indent=1)))
        distributed.barrier()
        log(f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f}, val metric {val['metric']:.4f}"
            + (" (best)" if best["epoch"] == epoch + 1 else "") + f", {record['seconds']:.1f}s")
    if best_state is not None:
        model.load_state_dict(best_state)
    if out is not None and writer and not (out / MODEL_FILE).is_file():
        save(model, out, meta={"task_meta": meta or {}})
    model.eval()
    return {"history": history, "best": best, "seconds": seconds}
