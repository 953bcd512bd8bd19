"""The training loop: seeded shuffling and augmentation, recipe hooks, best-validation checkpoint,
resumable state written atomically after every epoch.

Training is two steps: :func:`prepare_fit` checks every setting and reads the resume state of the
run folder (it writes nothing, so a refused run changes nothing on disk); :meth:`TrainingSession.run`
trains and writes. :func:`fit` does both. With ``refit`` (see :class:`~asymcert.train.config.TrainConfig`)
training runs on train ∪ val and keeps the final epoch.
"""

from __future__ import annotations

import json
import logging
import math
import pickle
import time
import warnings
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from tqdm.auto import tqdm

from asymcert import distributed
from asymcert.checkpoint import atomic_write, model_config, save
from asymcert.data.augment import augmentation_from_name
from asymcert.data.tasks import Augment, Dataset, TaskData
from asymcert.errors import AsymcertError, CheckpointError, ConfigError, RunFolderConflictError
from asymcert.runfolder import dumps_strict, write_json
from asymcert.train.balance import FalsePositiveBudget, allowed_false_positives, per_candidate_confidence
from asymcert.train.batches import EpochBatches, epoch_batches, resolve_workers
from asymcert.train.config import DEVICE_HELP, TrainConfig, parse_device
from asymcert.train.recipes import Recipe, recipe_for

STATE_FILE = "train_state.pt"
HISTORY_FILE = "history.json"
DEVICE_TYPES = ("cpu", "cuda", "mps")
STATE_KEYS = ("model", "optimizer", "scheduler", "epoch", "history", "best", "best_model", "fingerprint")
REFIT_SELECTION = "final epoch (refit on train+val)"
SAME_LAYOUT_STRIDES = r"(?s)Grad strides do not match bucket view strides.*grad\.sizes\(\) = \[(1, )*\d+(, 1)*\]"
"""DDP's warning (3 lines per process) for a gradient whose strides differ from its bucket's, when the tensor has at
most one dimension larger than 1: a 1 × n ICNN weight (SpamBase's default) gets strides (1, 1) from the transpose in
its linear layer, against the bucket's (n, 1). With one such dimension both address the same memory in the same
order, so nothing is slower, and the warning is silenced for these shapes only (audit 29e #11)."""


def resolve_device(name: str) -> torch.device:
    """ "auto" → CUDA when available else CPU; otherwise ``torch.device(name)`` (cpu, cuda[:i], mps).

    Raises:
        ConfigError: an unknown device name (the message lists the valid ones and those present),
            or CUDA / MPS asked for where there is none.
    """
    device = parse_device(name)
    if device is None:
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    here = (
        ["auto", "cpu"]
        + [f"cuda:{i}" for i in range(torch.cuda.device_count())]
        + (["mps"] if torch.backends.mps.is_available() else [])
    )
    cuda_missing = device.type == "cuda" and (
        not torch.cuda.is_available() or (device.index or 0) >= torch.cuda.device_count()
    )
    if cuda_missing or (device.type == "mps" and not torch.backends.mps.is_available()):
        raise ConfigError(
            f"device {name!r} is not available here; devices here: {', '.join(here)} (valid names: {DEVICE_HELP})"
        )
    return device


class _LossModule(nn.Module):
    """Wraps model + recipe so the training loss is one forward call (what DDP needs to sync gradients)."""

    def __init__(self, model: nn.Module, recipe: Recipe) -> None:
        super().__init__()
        self.model = model
        self.recipe = recipe

    def forward(self, x: torch.Tensor, y: torch.Tensor, progress: float) -> tuple[torch.Tensor, dict]:
        return self.recipe.loss(self.model, x, y, progress)


def make_optimizer(model: nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    """SGD (with momentum) or Adam as the config says."""
    params = [p for p in model.parameters() if p.requires_grad]
    if config.optimizer == "sgd":
        return torch.optim.SGD(params, lr=config.lr, momentum=config.momentum, weight_decay=config.weight_decay)
    if config.optimizer == "adam":
        extra = config.extra or {}
        return torch.optim.Adam(
            params,
            lr=config.lr,
            betas=tuple(extra.get("betas", (0.9, 0.999))),
            eps=float(extra.get("adam_eps", 1e-8)),
            weight_decay=config.weight_decay,
        )
    raise ConfigError(f"unknown optimizer {config.optimizer!r}; use 'sgd' or 'adam'")


def make_scheduler(
    optimizer: torch.optim.Optimizer, config: TrainConfig, steps_per_epoch: int
) -> tuple[torch.optim.lr_scheduler.LRScheduler, bool]:
    """Exponential decay per epoch, or cosine per iteration; returns (scheduler, steps per epoch it is stepped)."""
    if config.schedule == "exponential":
        return torch.optim.lr_scheduler.ExponentialLR(optimizer, gamma=config.lr_decay), False
    if config.schedule == "cosine":
        total = max(1, config.epochs * steps_per_epoch)
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=total), True
    raise ConfigError(f"unknown schedule {config.schedule!r}; use 'exponential' or 'cosine'")


def check_config(model: nn.Module, config: TrainConfig, recipe: Recipe | None = None) -> tuple[torch.device, Recipe]:
    """Check every training setting that can be checked without touching the disk.

    Builds (and drops) the optimizer and scheduler on ``model``'s parameters, so settings of the
    wrong type or range fail here rather than after the run folder was written.

    Returns:
        (the training device of this process, the recipe).
    Raises:
        ConfigError: an unknown device, optimizer or schedule, or settings torch refuses.
    """
    device = distributed.local_device(resolve_device(config.device))
    world = distributed.world_size()
    for name in ("epochs", "batch_size", "eval_batch_size"):
        value = getattr(config, name)
        if isinstance(value, bool) or not isinstance(value, int) or value < 1:
            raise ConfigError(f"training setting {name} must be a positive integer, got {value!r}")
    try:
        if config.batch_size % world:
            raise ConfigError(f"batch size {config.batch_size} does not split over {world} processes")
        recipe = recipe or recipe_for(model, config)
        scheduler, _ = make_scheduler(make_optimizer(model, config), config, 1)
        del scheduler
        resolve_workers(config.workers, device)
        if isinstance(config.augment, str):
            augmentation_from_name(config.augment)
            _check_images(model, config.augment)
    except AsymcertError:
        raise
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"training settings: {exc}") from None
    return device, recipe


def _check_images(model: nn.Module, augment: str) -> None:
    """A named augmentation crops and flips images (C, H, W): refused for a model of other inputs."""
    shape = tuple(getattr(model, "input_shape", ()))
    if len(shape) != 3:
        raise ConfigError(
            f"training setting augment={augment!r} crops and flips images (channels, height, width), but the "
            f"model's inputs have shape {shape}: leave augment out for feature vectors"
        )


def train_fingerprint(train: dict[str, Any], model_config: dict[str, Any]) -> str:
    """What must match for a run to resume: the training settings (not the worker count) and the model config.

    Settings added later than a run folder are left out while they hold their plain value, so older
    run folders keep resuming.
    """
    settings = {k: v for k, v in train.items() if k != "workers"}
    if not settings.get("margin_radius"):  # runs without the margin loss keep the fingerprint they had before it
        for key in ("margin_radius", "margin_norm", "margin_warmup", "margin_weight"):
            settings.pop(key, None)
    later: tuple[tuple[str, Any], ...] = (("sensitive_weight", 1.0), ("train_at_balance", False), ("refit", False))
    later += (("teacher", None), ("distill_weight", 0.0), ("distill_temperature", 1.0), ("margin_weight", 1.0))
    later += (("false_positive_rate", None), ("false_positive_confidence", None))
    for key, plain in later:
        if key in settings and settings[key] == plain:  # likewise runs that do not use these later settings
            settings.pop(key)
    return json.dumps({"train": settings, "model": model_config}, sort_keys=True, default=str)


def read_train_state(state_file: Path, device: torch.device, fingerprint: str) -> dict[str, Any]:
    """The resume state in ``state_file`` (tensors only: nothing is unpickled), checked against ``fingerprint``.

    Raises:
        CheckpointError: unreadable, tampered (anything but tensors and plain values: said so, without
            torch's advice to load it unsafely) or incomplete.
        RunFolderConflictError: the state is of a run with other settings or another model.
    """
    try:
        with warnings.catch_warnings():  # torch warns about hostile pickles before refusing them
            warnings.simplefilter("ignore")
            state = torch.load(state_file, map_location=device, weights_only=True)
    except pickle.UnpicklingError:  # torch's message advises weights_only=False: never pass that on
        raise CheckpointError(
            f"{state_file} is not a training state asymcert wrote (damaged, or holding objects other than tensors "
            "and plain values, which asymcert never stores; nothing in it was run); delete it, or use a new --out "
            "folder, to start a new run"
        ) from None
    except Exception as exc:  # a damaged or hostile file fails in many ways; none may escape as a crash
        first = (str(exc).strip().splitlines() or [""])[0][:200]
        raise CheckpointError(
            f"{state_file} is not a readable training state ({type(exc).__name__}: {first}); "
            f"delete it to start the run over"
        ) from None
    if not isinstance(state, dict) or any(k not in state for k in STATE_KEYS):
        raise CheckpointError(
            f"{state_file} is not a training state written by asymcert (keys missing); delete it to start the run over"
        )
    if state["fingerprint"] != fingerprint:
        raise RunFolderConflictError(
            f"{state_file.parent} holds an interrupted run with other settings; use a new "
            f"--out folder or delete {state_file} to start over"
        )
    return state


def fit_split(data: TaskData, config: TrainConfig) -> Dataset:
    """The inputs training fits on: ``data.train``, or with ``config.refit`` train ∪ val (train's inputs
    first, then val's). Every process builds the same tensors, so under torch.distributed each global
    batch of the union is drawn and sharded exactly as the train split's would be. Never the test split."""
    if not config.refit:
        return data.train
    return Dataset.join(data.train, data.val)


def check_operating_point(data: TaskData, config: TrainConfig) -> None:
    """Refuse a false-positive confidence the validation split is too small for (each epoch's b must hold
    with :func:`~asymcert.train.balance.per_candidate_confidence`), before anything is written.

    Raises:
        ConfigError: the message says how many inputs of the other class it would take.
    """
    if config.false_positive_rate is None or config.false_positive_confidence is None:
        return
    confidence = per_candidate_confidence(config.false_positive_confidence, config.epochs)
    try:
        allowed_false_positives(int((data.val.y == 0).sum()), config.false_positive_rate, confidence)
    except ValueError as exc:
        raise ConfigError(
            f"training settings: {exc} (b is fitted after each of the {config.epochs} epochs and one is kept, so "
            f"each must hold with 1 − (1 − {config.false_positive_confidence:g})/{config.epochs})"
        ) from None


def false_positive_budget(data: TaskData, config: TrainConfig) -> FalsePositiveBudget | None:
    """How many false positives each epoch's balance shift b may make on the split it is fitted on (the
    validation split; train ∪ val with ``refit``); None without ``false_positive_rate``, or for a confidence
    the split is too small for (:func:`check_operating_point` refuses that)."""
    if config.false_positive_rate is None:
        return None
    other = int((data.val.y == 0).sum()) + (int((data.train.y == 0).sum()) if config.refit else 0)
    confidence = per_candidate_confidence(config.false_positive_confidence, config.epochs)
    try:
        allowed = allowed_false_positives(other, config.false_positive_rate, confidence)
    except ValueError:
        return None
    return FalsePositiveBudget(allowed, other, float(config.false_positive_rate))


def warn_small_budget(data: TaskData, config: TrainConfig) -> FalsePositiveBudget | None:
    """Warn (the ``asymcert`` logger, stderr by default; rank 0 only) when the false-positive budget is small
    (:attr:`FalsePositiveBudget.small`). Returns the budget (None without ``false_positive_rate``)."""
    budget = false_positive_budget(data, config)
    if budget is not None and budget.small and distributed.is_main():
        logging.getLogger("asymcert").warning(f"warning: {budget.note()}")
    return budget


def _save_state(state: dict[str, Any], path: Path) -> None:
    """torch.save through a Python file object, so a full disk raises OSError (not a RuntimeError)."""
    with open(path, "wb") as fh:
        torch.save(state, fh)


@dataclass(frozen=True)
class FitResult:
    """What a training run did.

    Attributes:
        history: one record per epoch: the training loss terms, ``val_*`` validation metrics, seconds
            (with ``refit``: ``trainval_*``, in-sample metrics on train ∪ val, instead of ``val_*``).
        best: the selected epoch: ``{"metric", "epoch", "val_*": ...}``, or the final epoch with
            ``"eligible": False`` when no epoch could be selected (a margin warm-up as long as the run);
            with ``refit`` the final epoch: ``{"metric", "epoch", "selection": REFIT_SELECTION,
            "fit_inputs", "trainval_*": ...}``.
        seconds: training seconds (over every session of a resumed run).
    """

    history: list[dict[str, Any]]
    best: dict[str, Any]
    seconds: float


class TrainingSession:
    """A training run whose settings and resume state are checked: nothing is written until :meth:`run`.

    Built by :func:`prepare_fit`; holds the model, optimizer, scheduler and (when resuming) the
    history and best-validation state of the interrupted run.
    """

    def __init__(
        self,
        model: nn.Module,
        data: TaskData,
        config: TrainConfig,
        out: Path | None,
        augment: Augment | None,
        recipe: Recipe,
        device: torch.device,
        progress: bool,
        log: Callable[[str], None],
        meta: dict[str, Any] | None,
    ) -> None:
        self.model, self.data, self.config, self.out = model, data, config, out
        self.recipe, self.device, self.meta = recipe, device, meta
        # a named augmentation replaces the task's
        self.augment = augmentation_from_name(config.augment) if isinstance(config.augment, str) else augment
        self.writer = distributed.is_main()
        self.progress = progress and self.writer
        self.log = log if self.writer else (lambda msg: None)
        self.fit_data = fit_split(data, config)
        # under refit the recipe's validation pass (and its balance shift b) runs in-sample on train ∪ val
        self.eval_data, self.prefix = (self.fit_data, "trainval_") if config.refit else (data.val, "val_")
        self.selection = {"selection": REFIT_SELECTION, "fit_inputs": len(self.fit_data)} if config.refit else {}
        self.steps = math.ceil(len(self.fit_data) / config.batch_size)
        self.optimizer = make_optimizer(model, config)
        self.scheduler, self.per_step = make_scheduler(self.optimizer, config, self.steps)
        self.fingerprint = train_fingerprint(config.to_dict(), model_config(model))
        self.history: list[dict[str, Any]] = []
        self.best: dict[str, Any] = {"metric": -math.inf, "epoch": -1}
        self.best_state: dict[str, torch.Tensor] | None = None
        self.start_epoch = 0
        self.resumed = False

    @property
    def state_file(self) -> Path | None:
        """``out/train_state.pt`` (None when training writes no folder)."""
        return self.out / STATE_FILE if self.out is not None else None

    def resume(self) -> bool:
        """Load the interrupted run's state from the run folder, if there is one (reads only)."""
        if self.state_file is None or not self.state_file.is_file():
            return False
        state = read_train_state(self.state_file, self.device, self.fingerprint)
        try:
            self.model.load_state_dict(state["model"])
            self.optimizer.load_state_dict(state["optimizer"])
            self.scheduler.load_state_dict(state["scheduler"])
            self.start_epoch = int(state["epoch"]) + 1
            self.history, self.best = json.loads(state["history"]), json.loads(state["best"])
            if self.best.get("metric") is None:  # strict JSON wrote the initial -inf as null
                self.best["metric"] = -math.inf
            self.best_state = state["best_model"]
        except (KeyError, TypeError, ValueError, RuntimeError, AttributeError) as exc:
            raise CheckpointError(
                f"{self.state_file} does not fit this model and optimizer ({type(exc).__name__}: "
                f"{(str(exc).splitlines() or [''])[0][:200]}); delete it to start over"
            ) from None
        self.resumed = True
        return True

    def run(self) -> FitResult:
        """Train the remaining epochs, writing the checkpoint, state and history after each (rank 0).

        Returns:
            A :class:`FitResult`; the model is left holding the best-validation weights (with
            ``refit``: the final epoch's).
        """
        config, model = self.config, self.model
        warn_small_budget(self.data, config)
        if self.resumed:
            self.log(f"resuming after epoch {self.start_epoch} of {config.epochs} from {self.state_file}")
        else:
            self.recipe.prepare(model, self.fit_data)
        engine: nn.Module = _LossModule(model, self.recipe)
        if distributed.is_distributed():
            engine = torch.nn.parallel.DistributedDataParallel(
                engine, device_ids=[self.device.index] if self.device.type == "cuda" else None
            )
        seconds = sum(h.get("seconds", 0.0) for h in self.history)
        with warnings.catch_warnings():
            warnings.filterwarnings("ignore", message=SAME_LAYOUT_STRIDES, category=UserWarning)
            for epoch in range(self.start_epoch, config.epochs):
                t0 = time.perf_counter()
                totals = self._train_epoch(engine, epoch)
                val = self.recipe.evaluate(model, self.eval_data, config.eval_batch_size)  # the same on every process
                seconds += time.perf_counter() - t0
                self._end_epoch(epoch, totals, val, time.perf_counter() - t0)
        if self.best_state is not None:
            model.load_state_dict(self.best_state)
            if self.resumed:  # the model file is an earlier session's: rewrite it, should it be gone or damaged
                self._save_selected(model)
        elif self.history:  # no epoch was eligible (a margin warm-up longer than the run): the final weights
            self._keep_final(model)
        model.eval()
        return FitResult(self.history, self.best, seconds)

    def _keep_final(self, model: nn.Module) -> None:
        """Record the final epoch as the result when none was eligible, say so, and save its weights."""
        last = self.history[-1]
        self.best = {"metric": last.get("val_metric"), "epoch": len(self.history), "eligible": False}
        self.log(
            f"no epoch was eligible for the best-validation checkpoint (the margin warm-up covers the whole "
            f"run); keeping the final epoch's weights (epoch {len(self.history)})"
        )
        if self.out is not None and self.writer:
            save(model, self.out, meta={"task_meta": self.meta or {}}, validate=False)  # (checked when loaded)

    def _save_selected(self, model: nn.Module) -> None:
        """Write the selected weights (``model``, holding them) to the run folder's model file (rank 0)."""
        if self.out is not None and self.writer:
            meta = {"task_meta": self.meta or {}, "best_epoch": self.best.get("epoch"), **self.selection}
            save(model, self.out, meta=meta, validate=False)  # checked when loaded

    def _select(self, epoch: int, val: dict[str, float]) -> None:
        """Keep this epoch's weights (and save them, rank 0) if it is the best eligible one so far, or
        under ``refit`` always (the final epoch is the one kept)."""
        # a recipe may rule an epoch out of the selection (e.g. one trained before its loss was complete)
        if self.config.refit or (val.get("eligible", 1.0) and val["metric"] > self.best["metric"]):
            metrics = {f"{self.prefix}{k}": v for k, v in val.items()}
            self.best = {"metric": val["metric"], "epoch": epoch + 1, **self.selection, **metrics}
            self.best_state = {k: v.detach().clone() for k, v in self.model.state_dict().items()}
            self._save_selected(self.model)

    def _train_epoch(self, engine: nn.Module, epoch: int) -> dict[str, float]:
        """One pass over the training split (train ∪ val with ``refit``); returns the summed per-step statistics."""
        config, model, device = self.config, self.model, self.device
        rank, world = distributed.rank(), distributed.world_size()
        prog0 = epoch / max(1, config.epochs)
        self.recipe.on_epoch_start(model, epoch, prog0)
        model.train()
        # every process draws the whole global batch (same shuffle and augmentation) and keeps its shard
        batches = EpochBatches(
            self.fit_data.x,
            self.fit_data.y,
            config.batch_size,
            config.seed,
            epoch,
            self.augment if config.augment else None,
        )
        autocast = torch.autocast(
            device_type="cuda", dtype=torch.bfloat16, enabled=config.amp and device.type == "cuda"
        )
        totals: dict[str, float] = {}
        bar = tqdm(
            epoch_batches(batches, resolve_workers(config.workers, device), device.type == "cuda"),
            total=self.steps,
            desc=f"epoch {epoch + 1}/{config.epochs}",
            disable=not self.progress,
            leave=False,
        )
        for step, (x, y) in enumerate(bar):
            if world > 1:  # this process's shard of the global batch
                x, y = x.tensor_split(world)[rank], y.tensor_split(world)[rank]
            x, y = x.to(device, non_blocking=True), y.to(device, non_blocking=True)
            with autocast:
                loss, stats = engine(x, y, prog0 + step / (self.steps * max(1, config.epochs)))
            self.optimizer.zero_grad(set_to_none=True)
            loss.backward()
            self.optimizer.step()
            self.recipe.after_step(model)
            if self.per_step:
                self.scheduler.step()
            stats["loss"] = loss.item()
            for k, v in stats.items():
                totals[k] = totals.get(k, 0.0) + v
            if step % 20 == 0:
                bar.set_postfix(loss=f"{stats['loss']:.4f}")
        if not self.per_step:
            self.scheduler.step()
        return totals

    def _end_epoch(self, epoch: int, totals: dict[str, float], val: dict[str, float], seconds: float) -> None:
        """Record the epoch, keep the best eligible weights, write checkpoint, state and history (rank 0)."""
        config, model, out = self.config, self.model, self.out
        record = {
            "epoch": epoch + 1,
            **{k: v / self.steps for k, v in totals.items()},
            **{f"{self.prefix}{k}": v for k, v in val.items()},
            "seconds": seconds,
            "lr": self.optimizer.param_groups[0]["lr"],
        }
        self.history.append(record)
        self._select(epoch, val)
        if out is not None and self.writer:
            state = {
                "model": model.state_dict(),
                "optimizer": self.optimizer.state_dict(),
                "scheduler": self.scheduler.state_dict(),
                "epoch": epoch,
                "history": dumps_strict(self.history),
                "best": dumps_strict(self.best),
                "best_model": self.best_state,
                "fingerprint": self.fingerprint,
            }
            atomic_write(out / STATE_FILE, lambda tmp: _save_state(state, tmp))
            write_json(out / HISTORY_FILE, self.history)
        distributed.barrier()
        self.log(
            f"epoch {epoch + 1}/{config.epochs}: loss {record['loss']:.4f}, "
            + ("in-sample train+val" if config.refit else "val")
            + f" metric {val['metric']:.4f}"
            + (" (best)" if self.best["epoch"] == epoch + 1 and not config.refit else "")
            + f", {seconds:.1f}s"
        )


def prepare_fit(
    model: nn.Module,
    data: TaskData,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    augment: Augment | None = None,
    recipe: Recipe | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    meta: dict[str, Any] | None = None,
) -> TrainingSession:
    """Check the settings and read the resume state of ``out_dir``; writes nothing.

    Raises:
        ConfigError: settings that cannot work (see :func:`check_config`).
        CheckpointError: an unreadable or tampered ``train_state.pt``.
        RunFolderConflictError: ``out_dir`` holds an interrupted run with other settings.
    """
    device, recipe = check_config(model, config, recipe)
    check_operating_point(data, config)
    model.to(device)
    session = TrainingSession(
        model,
        data,
        config,
        Path(out_dir) if out_dir is not None else None,
        augment,
        recipe,
        device,
        progress,
        log or (lambda msg: tqdm.write(msg)),
        meta,
    )
    session.resume()
    return session


def fit(
    model: nn.Module,
    data: TaskData,
    config: TrainConfig,
    out_dir: str | Path | None = None,
    augment: Augment | None = None,
    recipe: Recipe | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    meta: dict[str, Any] | None = None,
) -> FitResult:
    """Train ``model`` on ``data.train``, select on ``data.val``, checkpoint into ``out_dir``
    (with ``config.refit``: train on train ∪ val and keep the final epoch; see :func:`fit_split`).

    When ``out_dir`` holds a ``train_state.pt`` from an interrupted run with the same settings,
    training resumes after its last finished epoch (and gives the weights an uninterrupted run
    would have given). The best-validation model is kept in ``out_dir/model.safetensors``.

    ``augment`` is the task's augmentation, used when ``config.augment`` is true; a name in
    ``config.augment`` (``"crop2_flip"``, see :func:`~asymcert.data.augment.augmentation_from_name`)
    replaces it.

    Returns:
        A :class:`FitResult`; the model is left holding the best-validation weights.
    """
    return prepare_fit(model, data, config, out_dir, augment, recipe, progress, log, meta).run()
