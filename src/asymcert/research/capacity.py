"""Convex capacity (issue #8): how high can the TRAINING accuracy of an input-convex classifier
without a feature map (φ = x − μ, a shift, which changes no convexity question) go, and how far
is it from the separability bound of :mod:`asymcert.research.separability`?

A recipe is a named set of settings (:data:`RECIPES`): the convex network g, the training settings
(keys of :class:`~asymcert.train.TrainConfig`) and the initialisation of the nonnegative weights.
Every recipe trains with the library's loop (:func:`asymcert.train.fit`) on the full training
split with no augmentation and no Jacobian regulariser; the only difference from ordinary
training is the evaluation: after every epoch the model is evaluated on the training split itself,
with the shift b fitted to maximise *training* accuracy (:func:`max_accuracy_shift`). That is a
capacity measure (can the model class fit the data?), not a generalisation estimate; the
best-scoring epoch is kept.

Initialisations of the constrained (nonnegative) weights:
* ``"paper"``: the authors' U(0, 0.005) (the layers' own defaults);
* ``"scaled"``: data-dependent (:func:`scaled_init_`): on a batch of training features, every
  layer's nonnegative weights (drawn U(0, 1)) and its free pass-through weights are rescaled by
  positive per-unit factors so that each contributes half of a unit pre-activation variance, and
  the biases are set so every pre-activation has mean 0 (about half the ReLUs active). Positive
  rescaling keeps the weights nonnegative, so the network stays convex.
"""

from __future__ import annotations

import math
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, cast

import torch
from torch import nn

from asymcert.certify.bounded_convex import block_convs, block_norms, conv_bias
from asymcert.checkpoint import atomic_write
from asymcert.data import get_task
from asymcert.data.tasks import Dataset, TaskData
from asymcert.errors import InputError, UnknownNameError
from asymcert.models import build_model
from asymcert.nn.convex import ICNN, ConvexConvNet
from asymcert.report.machine import Machine
from asymcert.report.plots import _pyplot
from asymcert.research.separability import SeparabilityResult, SeparabilitySummary, hull_classifier, separability_bound
from asymcert.research.sweeps import sweep_folder
from asymcert.runfolder import dumps_strict
from asymcert.train.config import TrainConfig
from asymcert.train.loop import fit
from asymcert.train.recipes import FeatureConvexRecipe, predict_scores

if TYPE_CHECKING:  # type only: importing asymcert.models here at run time would pull in the registry
    from asymcert.models.feature_convex import FeatureConvexClassifier

CAPACITY_FILE, REPORT_FILE, PLOT_FILE = "capacity.json", "capacity.md", "capacity.png"

_ADAM = {"optimizer": "adam", "lr": 1e-3, "schedule": "cosine", "batch_size": 128, "weight_decay": 0.0}


@dataclass(frozen=True)
class Recipe:
    """A capacity recipe: what to train, how, and how to initialise it (:data:`RECIPES`).

    Attributes:
        description: one line for the reports.
        convex: the convex network g's config (JSON, as the ``"convex"`` of a feature-convex model config).
        train: training settings (keys of :class:`~asymcert.train.TrainConfig`; JSON); :func:`run_recipe` turns
            augmentation and the Jacobian regulariser off and sets the seed and device.
        init: the initialisation of the nonnegative weights, ``"paper"`` or ``"scaled"``.
        feature_map: φ's config (JSON list of maps); None: the shift x − μ.
    """

    description: str
    convex: dict[str, Any]
    train: dict[str, Any]
    init: str = "paper"
    feature_map: list[dict[str, Any]] | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"description", "convex", "train", "init"}``, and ``"feature_map"`` when one is set."""
        out: dict[str, Any] = {"description": self.description, "convex": self.convex, "train": self.train}
        out["init"] = self.init
        if self.feature_map is not None:
            out["feature_map"] = self.feature_map
        return out

    @classmethod
    def from_dict(cls, spec: dict[str, Any]) -> Recipe:
        """The recipe of a JSON spec ``{"convex", ["description"], ["train"], ["init"], ["feature_map"]}`` (a missing
        key takes its default: no description, the defaults of ``TrainConfig``, the paper init, the shift)."""
        return cls(
            description=str(spec.get("description", "")),
            convex=spec["convex"],
            train=dict(spec.get("train", {})),
            init=spec.get("init", "paper"),
            feature_map=spec.get("feature_map"),
        )


RECIPES: dict[str, Recipe] = {
    "paper-conv": Recipe(
        "authors' convex conv net (4 ch, 5×5 stem, 2 blocks), SGD 1e-3, paper init",
        {"kind": "convex-conv", "channels": 4, "stem_kernel": 5, "blocks": 2},
        {"optimizer": "sgd", "lr": 1e-3, "momentum": 0.9, "lr_decay": 0.99, "batch_size": 64, "epochs": 60},
        "paper",
    ),
    "icnn-paper": Recipe(
        "authors' ICNN MLP (200, 50), Adam 1e-3 cosine, paper init",
        {"kind": "icnn", "widths": [200, 50]},
        {**_ADAM, "epochs": 100},
        "paper",
    ),
    "icnn-wide": Recipe(
        "ICNN MLP (2048), Adam 1e-3 cosine, scaled init",
        {"kind": "icnn", "widths": [2048]},
        {**_ADAM, "epochs": 100},
        "scaled",
    ),
    "icnn-wide-paper-init": Recipe(
        "ICNN MLP (2048), Adam 1e-3 cosine, paper init (ablation of the scaled init)",
        {"kind": "icnn", "widths": [2048]},
        {**_ADAM, "epochs": 100},
        "paper",
    ),
    "icnn-deep": Recipe(
        "ICNN MLP (1024, 1024, 1024), Adam 1e-3 cosine, scaled init",
        {"kind": "icnn", "widths": [1024, 1024, 1024]},
        {**_ADAM, "epochs": 100},
        "scaled",
    ),
    "conv-wide": Recipe(
        "convex conv net (16 ch, 5×5 stem, 2 blocks), Adam 1e-3 cosine, scaled init",
        {"kind": "convex-conv", "channels": 16, "stem_kernel": 5, "blocks": 2},
        {**_ADAM, "epochs": 40},
        "scaled",
    ),
}
"""The named recipes."""

DEFAULT_RECIPES = ("icnn-paper", "icnn-wide")


# ---------------------------------------------------------------------------------------------
# Pieces
# ---------------------------------------------------------------------------------------------


def max_accuracy_shift(scores: torch.Tensor, labels: torch.Tensor) -> tuple[float, float]:
    """The shift b that maximises the accuracy of ``scores + b > 0`` (ties: the lowest threshold).

    Args:
        scores: (N,) scores without the shift.
        labels: (N,) 1 = sensitive, 0 = other.
    Returns:
        (b, accuracy in [0, 1]); b puts the threshold midway between two neighbouring scores.
    """
    s = scores.detach().double().cpu()
    y = labels.detach().cpu().bool()
    order = torch.argsort(s)
    s_sorted, y_sorted = s[order], y[order]
    # threshold just above the k lowest scores (k = 0..N): those are predicted "other"
    neg_below = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum((~y_sorted).long(), 0)])
    pos_below = torch.cat([torch.zeros(1, dtype=torch.long), torch.cumsum(y_sorted.long(), 0)])
    correct = neg_below + (int(y.sum()) - pos_below)
    # a threshold between equal scores is not realisable: only cut where the score changes
    valid = torch.ones(len(s) + 1, dtype=torch.bool)
    valid[1:-1] = s_sorted[1:] > s_sorted[:-1]
    k = int(torch.argmax(torch.where(valid, correct, torch.full_like(correct, -1))))
    lo = s_sorted[k - 1] if k > 0 else s_sorted[0] - 1.0
    hi = s_sorted[k] if k < len(s_sorted) else s_sorted[-1] + 1.0
    return float(-0.5 * (lo + hi)), float(correct[k]) / max(1, len(s))


@torch.no_grad()
def _standardize_(linear: nn.Linear | nn.Conv2d, out: torch.Tensor, target_std: float) -> None:
    """Rescale rows of a free layer so its per-unit output std over the batch is ``target_std``."""
    dims = [0] + list(range(2, out.dim()))
    std = out.std(dim=dims).clamp_min(1e-12)
    factor = target_std / std
    linear.weight.mul_(factor.view(-1, *([1] * (linear.weight.dim() - 1))))
    if linear.bias is not None:
        linear.bias.mul_(factor)


def _per_unit(t: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    dims = [0] + list(range(2, t.dim()))
    return t.mean(dim=dims), t.std(dim=dims).clamp_min(1e-12)


@torch.no_grad()
def scaled_init_(g: nn.Module, features: torch.Tensor, generator: torch.Generator | None = None) -> None:
    """Data-dependent initialisation of an ICNN or ConvexConvNet, in place (see the module docstring).

    Args:
        g: an :class:`~asymcert.nn.convex.ICNN` or :class:`~asymcert.nn.convex.ConvexConvNet`.
        features: (B, *in_shape) training features φ(x) (a few hundred are enough).
        generator: seeds the U(0, 1) draws of the nonnegative weights.
    Raises:
        UnknownNameError: another kind of network.
    """
    was = g.training
    g.train()  # batch norms normalise with the batch's statistics, as in the first training steps
    half = math.sqrt(0.5)

    def nonneg_(weight: torch.Tensor) -> None:
        weight.copy_(torch.rand(weight.shape, generator=generator, dtype=weight.dtype))

    if isinstance(g, ICNN):
        x = features.flatten(1)
        passthrough = cast("list[nn.Linear]", list(g.passthrough))  # ModuleLists of nn.Linear (ICNN.__init__)
        hidden = cast("list[nn.Linear]", list(g.hidden))
        first = passthrough[0]
        _standardize_(first, first(x), 1.0)
        first.bias.sub_(first(x).mean(0))
        z = torch.relu(first(x))
        for k, (lin, norm) in enumerate(zip(hidden, g.norms)):
            nonneg_(lin.weight)
            inner = norm(z)
            _, std_a = _per_unit(lin(inner))
            lin.weight.mul_((half / std_a)[:, None])
            p = passthrough[k + 1]
            _standardize_(p, p(x), half)
            out = lin(inner) + p(x)
            p.bias.sub_(out.mean(0))
            out = lin(inner) + p(x)
            z = torch.relu(out)
    elif isinstance(g, ConvexConvNet):
        stem = g.stem
        _standardize_(stem, stem(features), 1.0)
        conv_bias(stem).sub_(_per_unit(stem(features))[0])
        z = torch.relu(stem(features))
        for norm, conv in zip(block_norms(g), block_convs(g)):
            nonneg_(conv.weight)
            conv_bias(conv).zero_()
            inner = norm(z)
            _, std_c = _per_unit(conv(inner))
            _, std_z = _per_unit(z)
            conv.weight.mul_((std_z / std_c).view(-1, 1, 1, 1))
            pre = z + conv(inner)
            conv_bias(conv).sub_(_per_unit(pre)[0])
            z = torch.relu(z + conv(inner))
        flat = g.out_norm(z).flatten(1)
        nonneg_(g.readout.weight)
        g.readout.bias.zero_()
        out = g.readout(flat)
        g.readout.weight.div_(out.std().clamp_min(1e-12))
        g.readout.bias.sub_(g.readout(flat).mean())
    else:
        raise UnknownNameError(f"scaled_init_ knows ICNN and ConvexConvNet, not {type(g).__name__}")
    # reset batch-norm running statistics touched above, so training starts from a clean state
    for m in g.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.reset_running_stats()
    g.train(was)


class CapacityRecipe(FeatureConvexRecipe):
    """The feature-convex recipe with a capacity evaluation: training accuracy, b fitted for it.

    Args:
        config: training settings (its ``jacobian_reg`` is used as given; recipes here set 0).
        init: ``"paper"`` or ``"scaled"``.
        init_size: training inputs used by the scaled initialisation.
    """

    def __init__(self, config: TrainConfig, init: str = "paper", init_size: int = 1024) -> None:
        super().__init__(config)
        if init not in ("paper", "scaled"):
            raise UnknownNameError(f"unknown initialisation {init!r}; known: paper, scaled")
        self.init, self.init_size, self.seed = init, int(init_size), int(config.seed)

    def prepare(self, model: nn.Module, train: Dataset) -> None:
        super().prepare(model, train)
        fc = cast("FeatureConvexClassifier", model)  # run_recipe builds feature-convex models
        if self.init == "scaled":
            gen = torch.Generator().manual_seed(self.seed)
            idx = torch.randperm(len(train), generator=gen)[: self.init_size]
            device = next(fc.parameters()).device
            with torch.no_grad():
                features = fc.features(train.x[idx].to(device))
            scaled_init_(fc.convex, features, gen)
        fc.project()

    def evaluate(self, model: nn.Module, val: Dataset, batch_size: int) -> dict[str, float]:
        """Accuracy on ``val`` (here: the training split) with b fitted to maximise it."""
        fc = cast("FeatureConvexClassifier", model)  # run_recipe builds feature-convex models
        device = next(fc.parameters()).device
        fc.set_balance(0.0)
        scores = predict_scores(fc, val.x, batch_size, device)
        b, acc = max_accuracy_shift(scores, val.y)
        fc.set_balance(b)
        return {"metric": acc, "accuracy": acc, "balance": b}


@dataclass(frozen=True)
class CapacityResult:
    """One recipe's capacity run (an item of ``capacity.json``'s ``"runs"``).

    Attributes:
        name, description: the recipe.
        train_accuracy: best training accuracy over the epochs, in [0, 1] (b fitted for it).
        best_epoch: the epoch (1-based) that reached it.
        accuracy_per_epoch: training accuracy after every epoch, in [0, 1].
        loss_per_epoch: mean training loss (BCE) of every epoch.
        seconds: training wall-clock seconds (evaluation passes included).
        parameters: trainable parameters of g.
        settings: the recipe as run: its ``train`` every ``TrainConfig`` setting (epochs after overrides).
    """

    name: str
    description: str
    train_accuracy: float
    best_epoch: int
    accuracy_per_epoch: list[float]
    loss_per_epoch: list[float]
    seconds: float
    parameters: int
    settings: Recipe

    def to_dict(self) -> dict[str, Any]:
        """Every attribute in their order, ``settings`` as :meth:`Recipe.to_dict`."""
        out: dict[str, Any] = {"name": self.name, "description": self.description}
        out.update(train_accuracy=self.train_accuracy, best_epoch=self.best_epoch)
        out.update(accuracy_per_epoch=list(self.accuracy_per_epoch), loss_per_epoch=list(self.loss_per_epoch))
        out.update(seconds=self.seconds, parameters=self.parameters, settings=self.settings.to_dict())
        return out


@dataclass(frozen=True)
class CapacityRow:
    """One recipe's line of the capacity table (an item of ``capacity.json``'s ``"recipes"``).

    Attributes:
        recipe, description: the recipe's name and description.
        train_accuracy: its best training accuracy, in [0, 1]; best_epoch: the epoch (1-based) that reached it.
        epochs: epochs trained.
        seconds: training wall-clock seconds.
        parameters: trainable parameters of g.
    """

    recipe: str
    train_accuracy: float
    best_epoch: int
    epochs: int
    seconds: float
    parameters: int
    description: str

    def to_dict(self) -> dict[str, Any]:
        """``{"recipe", "train_accuracy", "best_epoch", "epochs", "seconds", "parameters", "description"}``."""
        return asdict(self)


@dataclass(frozen=True)
class Constructed:
    """The classifier built from the separating hyperplanes (:func:`~asymcert.research.separability.hull_classifier`).

    Attributes:
        hidden_units: its hidden units (one per outside input).
        train_accuracy: share of the training split it classifies correctly, in [0, 1] (the bound when exact).
        seconds: wall-clock seconds building and evaluating it.
    """

    hidden_units: int
    train_accuracy: float
    seconds: float


@dataclass(frozen=True)
class CapacityReport:
    """A capacity study (:func:`capacity_report`): :meth:`to_dict` is ``capacity.json``.

    Attributes:
        task: the binary task's name.
        n_train, n_sensitive, n_other: its training split's inputs, of each class.
        command: the command line recorded (None: none given).
        machine_at_start: the machine when it started.
        separability: the separability bound's numbers.
        constructed: the classifier achieving the bound (None: the bound is not exact, or nothing is outside).
        runs: the recipes trained so far, in the order given.
        machine_at_end: the machine after the last recipe (None: no recipe has been run yet).
        feature_map: what φ is (every recipe here: the shift).
    """

    task: str
    n_train: int
    n_sensitive: int
    n_other: int
    command: str | None
    machine_at_start: Machine
    separability: SeparabilitySummary
    constructed: Constructed | None = None
    runs: tuple[CapacityResult, ...] = ()
    machine_at_end: Machine | None = None
    feature_map: str = "shift (x − μ)"

    @property
    def recipes(self) -> list[CapacityRow]:
        """One table row per recipe run (:func:`results_table`)."""
        return results_table(list(self.runs))

    def to_dict(self) -> dict[str, Any]:
        """``capacity.json``: ``{"task", "n_train", "n_sensitive", "n_other", "feature_map", "command",
        "constructed", "machine_at_start", "separability", "recipes", "runs"}``, then ``"machine_at_end"`` once a
        recipe ran."""
        out: dict[str, Any] = {"task": self.task, "n_train": self.n_train, "n_sensitive": self.n_sensitive}
        out.update(n_other=self.n_other, feature_map=self.feature_map, command=self.command)
        out["constructed"] = None if self.constructed is None else asdict(self.constructed)
        out.update(machine_at_start=self.machine_at_start.to_dict(), separability=self.separability.to_dict())
        out.update(recipes=[row.to_dict() for row in self.recipes], runs=[r.to_dict() for r in self.runs])
        if self.machine_at_end is not None:
            out["machine_at_end"] = self.machine_at_end.to_dict()
        return out


def resolve_recipes(names: str | list[str] | tuple[str, ...] | None) -> list[str]:
    """Recipe names from a comma-separated string or a list; "none", "" or [] gives []; None the defaults.

    Raises:
        UnknownNameError: an unknown name, or separators and no name (``","``, ``" , "``: a typo, not "none";
            audit 29e #10); the message lists the known ones.
    """
    if names is None:
        return list(DEFAULT_RECIPES)
    listed = names.split(",") if isinstance(names, str) else list(names)
    items = [n.strip() for n in listed if n.strip()]
    if not items and len(listed) > 1:
        raise UnknownNameError(
            f"no recipe name in {names!r}; give 'none' for the bound only; known: {', '.join(RECIPES)}"
        )
    if items in ([], ["none"]):
        return []
    if "all" in items:
        return list(RECIPES)
    unknown = [n for n in items if n not in RECIPES]
    if unknown:
        raise UnknownNameError(f"unknown capacity recipe(s) {', '.join(unknown)}; known: {', '.join(RECIPES)}")
    return items


def run_recipe(
    name: str,
    train: Dataset,
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    settings: Recipe | None = None,
) -> CapacityResult:
    """Train one recipe on ``train`` and measure its training accuracy after every epoch.

    Args:
        name: a key of :data:`RECIPES` (or any label when ``settings`` is given).
        train: the full training split, x (N, *shape) raw units, y (N,) in {0, 1}.
        epochs: override the recipe's number of epochs.
        seed: seeds weights, shuffling and the initialisation.
        device: "cpu", "cuda" or "auto".
        progress, log: progress bars; per-epoch messages (None: silent).
        settings: use this recipe instead of ``RECIPES[name]`` (:meth:`Recipe.from_dict` reads a JSON spec).
    Returns:
        A :class:`CapacityResult`.
    """

    recipe = settings if settings is not None else RECIPES[name]
    train_settings = {**recipe.train, "augment": False, "jacobian_reg": 0.0, "seed": seed, "device": device}
    if epochs is not None:
        train_settings["epochs"] = int(epochs)
    config = TrainConfig.from_dict(train_settings)
    torch.manual_seed(seed)
    model = cast(
        "FeatureConvexClassifier",
        build_model(
            {
                "kind": "feature-convex",
                "input_shape": list(train.x.shape[1:]),
                "feature_map": [{"kind": "shift"}] if recipe.feature_map is None else recipe.feature_map,
                "convex": recipe.convex,
            }
        ),
    )
    data = TaskData(train, train, train, class_names=("other", "sensitive"))  # evaluated on train
    result = fit(
        model,
        data,
        config,
        out_dir=None,
        augment=None,
        recipe=CapacityRecipe(config, recipe.init),
        progress=progress,
        log=log or (lambda msg: None),
    )
    history = result.history
    return CapacityResult(
        name=name,
        description=recipe.description,
        train_accuracy=float(result.best["metric"]),
        best_epoch=int(result.best["epoch"]),
        accuracy_per_epoch=[float(h["val_accuracy"]) for h in history],
        loss_per_epoch=[float(h["loss"]) for h in history],
        seconds=float(result.seconds),
        parameters=sum(p.numel() for p in model.convex.parameters() if p.requires_grad),
        settings=replace(recipe, train=config.to_dict()),
    )


def _prefixed(say: Callable[[str], None], name: str) -> Callable[[str], None]:
    """``say`` with every message indented and tagged ``[name]`` (per-epoch messages of one recipe)."""
    return lambda msg: say(f"  [{name}] {msg}")


def run_capacity(
    train: Dataset,
    recipes: list[str] | str | None = None,
    *,
    epochs: int | None = None,
    seed: int = 0,
    device: str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    on_result: Callable[[list[CapacityResult]], None] | None = None,
) -> list[CapacityResult]:
    """Run several recipes on the same training split.

    Args:
        train: x (N, *shape), y (N,) in {0, 1}.
        recipes: names (list or comma-separated); None: :data:`DEFAULT_RECIPES`.
        epochs, seed, device, progress, log: see :func:`run_recipe`.
        on_result: called with the results so far after every recipe (e.g. to write partial reports).
    Returns:
        One :class:`CapacityResult` per recipe, in the order given (see :func:`results_table`).
    """
    out: list[CapacityResult] = []
    for name in resolve_recipes(recipes):
        say = log or (lambda msg: None)
        say(f"recipe {name}: {RECIPES[name].description}")
        res = run_recipe(
            name,
            train,
            epochs=epochs,
            seed=seed,
            device=device,
            progress=progress,
            log=_prefixed(say, name) if log else None,
        )
        say(
            f"recipe {name}: training accuracy {100 * res.train_accuracy:.2f}% (epoch {res.best_epoch}), "
            f"{res.seconds:.1f}s"
        )
        out.append(res)
        if on_result is not None:
            on_result(out)
    return out


def results_table(results: list[CapacityResult]) -> list[CapacityRow]:
    """One table row per result, in their order."""
    return [
        CapacityRow(
            recipe=r.name,
            train_accuracy=r.train_accuracy,
            best_epoch=r.best_epoch,
            epochs=len(r.accuracy_per_epoch),
            seconds=r.seconds,
            parameters=r.parameters,
            description=r.description,
        )
        for r in results
    ]


# ---------------------------------------------------------------------------------------------
# Report
# ---------------------------------------------------------------------------------------------


def plot_capacity(results: list[CapacityResult], bound: float | None, path: Path, title: str = "") -> Path:
    """PNG: training accuracy (%) per epoch per recipe, the separability bound as a horizontal line."""

    plt = _pyplot()
    fig, ax = plt.subplots(figsize=(5.0, 3.6), dpi=120)
    for r in results:
        ax.plot(
            range(1, len(r.accuracy_per_epoch) + 1),
            [100 * a for a in r.accuracy_per_epoch],
            label=r.name,
            linewidth=1.8,
        )
    if bound is not None:
        ax.axhline(100 * bound, color="black", linestyle="--", linewidth=1.2, label="separability bound")
    ax.set_xlabel("epoch")
    ax.set_ylabel("training accuracy (%)")
    ax.set_xlim(left=1)
    ax.grid(alpha=0.3)
    ax.set_title(title or "Training accuracy of input-convex classifiers")
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def _pct(v: float | None) -> str:
    return "–" if v is None else f"{100 * v:.2f}%"


def capacity_markdown(report: CapacityReport) -> str:
    """The Markdown report of a capacity study (``capacity.md``)."""
    sep = report.separability
    lines = [
        f"# Convex capacity: {report.task}",
        "",
        f"Training split: {report.n_train} inputs ({report.n_sensitive} sensitive, "
        f"{report.n_other} other); φ(x) = x − μ (no feature map); no augmentation, no Jacobian "
        "regulariser. Training accuracy is measured on the full training split with b fitted to "
        "maximise it (a capacity measure, not a generalisation estimate).",
        "",
    ]
    settled = ", ".join(f"{k} {v}" for k, v in sep.settled.items())
    scope = "all" if sep.complete else f"a random subset (seed {sep.seed}) of {sep.checked}"
    lines += [
        "## Separability bound",
        "",
        f"Sensitive training inputs decided: {scope} of {sep.n_sensitive}"
        f"{' (classes reversed)' if sep.reverse else ''}; outside the other class's convex "
        f"hull: {sep.outside}, inside: {sep.inside}.",
        f"Settled by: {settled}. Time: {sep.seconds['total']:.1f}s.",
        f"**Bound on training accuracy: {_pct(sep.bound)}**"
        + ("" if sep.complete else f" (valid upper bound; extrapolated {_pct(sep.bound_estimate)})"),
        "",
    ]
    if report.constructed is not None:
        c = report.constructed
        lines += [
            f"The max-of-hyperplanes ICNN built from the certificates (one hidden layer of "
            f"{c.hidden_units} units, float64, not trained) classifies {_pct(c.train_accuracy)} "
            "of the training split correctly: the bound is achieved.",
            "",
        ]
    rows = report.recipes
    if rows:
        lines += [
            "## Trained recipes",
            "",
            "| recipe | training accuracy | gap to bound | best epoch / epochs | parameters | time (s) | settings |",
            "|---|---|---|---|---|---|---|",
        ]
        for r in rows:
            lines.append(
                f"| {r.recipe} | {_pct(r.train_accuracy)} | {100 * (sep.bound - r.train_accuracy):.2f} pts "
                f"| {r.best_epoch} / {r.epochs} | {r.parameters} | {r.seconds:.1f} | {r.description} |"
            )
        lines += ["", f"Plot: `{PLOT_FILE}`.", ""]
    lines += [f"Command: `{report.command}`" if report.command else "", ""]
    return "\n".join(lines)


def _constructed(sep: SeparabilityResult, train: Dataset, reverse: bool) -> Constructed:
    """The classifier built from the separating hyperplanes (:func:`hull_classifier`): hidden units, its
    training accuracy and the seconds it took."""
    pos, neg = train.x[train.y == 1], train.x[train.y == 0]
    tested, hull = (neg, pos) if reverse else (pos, neg)
    t0 = time.perf_counter()
    clf = hull_classifier(sep, tested, hull, tuple(train.x.shape[1:]))
    with torch.no_grad():
        flagged = torch.cat([clf(tested[i : i + 1000].double()) > 0 for i in range(0, len(tested), 1000)])
        other_ok = torch.cat([clf(hull[i : i + 1000].double()) <= 0 for i in range(0, len(hull), 1000)])
    return Constructed(
        hidden_units=sep.n_outside,
        train_accuracy=(int(flagged.sum()) + int(other_ok.sum())) / len(train),
        seconds=time.perf_counter() - t0,
    )


def capacity_report(
    task: str,
    out_dir: str | Path,
    *,
    recipes: str | list[str] | None = None,
    limit: int | None = None,
    seed: int = 0,
    epochs: int | None = None,
    reverse: bool = False,
    frank_wolfe_iterations: int = 100,
    data_dir: str | Path | None = None,
    device: str = "cpu",
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    command: str | None = None,
) -> CapacityReport:
    """Separability bound + trained recipes on a binary task; writes capacity.json, capacity.md, capacity.png.

    Args:
        task: a binary task name (see ``asymcert tasks``).
        out_dir: folder to write (created).
        recipes: recipe names (None: :data:`DEFAULT_RECIPES`; "none": bound only).
        limit: decide separability for a random subset of this many sensitive inputs (seed ``seed``).
        seed: subset seed and training seed.
        epochs: override every recipe's epochs.
        reverse: test the other class against the sensitive class's hull instead.
        frank_wolfe_iterations: see :func:`~asymcert.research.separability.hull_separability`.
        data_dir, device, progress, log: as for ``asymcert run``.
        command: the command line to record in the report.
    Returns:
        The study; its :meth:`CapacityReport.to_dict` is ``capacity.json`` (written after the bound and after every
        recipe, so that an interrupted study keeps what it finished).
    Raises:
        InputError: the task is not binary; UnknownNameError: unknown task or recipe.
        SweepError: ``out_dir`` holds a run (run.json). RunFolderBusyError: another capacity or sweep holds it.
    """

    names = resolve_recipes(recipes)  # fail on a typo before any work
    t = get_task(task)
    if not t.binary:
        raise InputError(f"capacity needs a binary task (sensitive vs other); {task!r} has several classes")
    say = log or (lambda msg: None)
    data = t.load(Path(data_dir) if data_dir else None)  # (before the folder: a refusal leaves none behind)
    with sweep_folder(Path(out_dir)) as out:  # one capacity run per folder at a time; never a run folder
        train = data.train
        machine_at_start = Machine.current()
        sep = separability_bound(
            train.x,
            train.y,
            reverse=reverse,
            limit=limit,
            seed=seed,
            frank_wolfe_iterations=frank_wolfe_iterations,
            keep_normals=limit is None,
            log=say,
        )
        say(f"separability bound: {100 * sep.bound:.2f}% ({sep.n_outside}/{sep.n_checked} outside)")
        n_pos = int(train.y.sum())
        report = CapacityReport(
            task=task,
            n_train=len(train),
            n_sensitive=n_pos,
            n_other=len(train) - n_pos,
            command=command,
            machine_at_start=machine_at_start,
            separability=sep.summary(),
            constructed=_constructed(sep, train, reverse) if sep.complete and sep.n_outside > 0 else None,
        )
        _write(out, report, sep.bound)

        def partial(results: list[CapacityResult]) -> None:  # partial results survive an interruption
            nonlocal report
            report = replace(report, runs=tuple(results), machine_at_end=Machine.current())
            _write(out, report, sep.bound)

        results = run_capacity(
            train, names, epochs=epochs, seed=seed, device=device, progress=progress, log=log, on_result=partial
        )
        partial(results)
        return report


def _write(out: Path, report: CapacityReport, bound: float) -> None:
    """Write capacity.json, capacity.md and (once a recipe ran) capacity.png of ``report`` into ``out``."""
    text = dumps_strict(report.to_dict(), indent=1, default=str)
    atomic_write(out / CAPACITY_FILE, lambda tmp: tmp.write_text(text))
    md = capacity_markdown(report)
    atomic_write(out / REPORT_FILE, lambda tmp: tmp.write_text(md))
    if report.runs:
        plot_capacity(list(report.runs), bound, out / PLOT_FILE, title=f"Training accuracy, {report.task}")
