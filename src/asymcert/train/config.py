"""Training settings: a typed dataclass whose every field is checked when it is built.

:class:`TrainConfig` refuses a setting of the wrong type or range at construction (directly, with
:meth:`TrainConfig.from_dict`, or with ``dataclasses.replace``) and names *every* problem at once,
in one :class:`~asymcert.errors.SettingsError` (one line), so ``--set lr=fast`` or ``--epochs 0``
never reach the disk or the training loop.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable
from dataclasses import asdict, dataclass, fields
from typing import Any

import torch

from asymcert.data.augment import augmentation_from_name
from asymcert.errors import CheckpointError, ConfigError, SettingsError, UnknownNameError

OPTIMIZERS = ("sgd", "adam")
SCHEDULES = ("exponential", "cosine")
ENSEMBLE_TRAINING = ("members", "mean")
DEVICE_TYPES = ("cpu", "cuda", "mps")
DEVICE_HELP = "auto, cpu, cuda, cuda:<index> or mps"
_SEED_LIMIT = 2**63


def parse_device(name: Any) -> torch.device | None:
    """The device a setting names: None for ``"auto"``, else a ``torch.device`` of type cpu, cuda or mps.

    Whether the device exists on this machine is checked by :func:`asymcert.train.loop.resolve_device`.

    Raises:
        ConfigError: not a string, or not a device name (the message lists the valid ones).
    """
    if not isinstance(name, str):
        raise ConfigError(f"device must be a name ({DEVICE_HELP}), got {_shown(name)}")
    if name == "auto":
        return None
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError, ValueError):
        raise ConfigError(f"unknown device {name!r}; valid devices: {DEVICE_HELP}") from None
    if device.type not in DEVICE_TYPES:
        raise ConfigError(f"cannot train or certify on device {name!r}; valid devices: {DEVICE_HELP}")
    return device


def _shown(value: Any) -> str:
    """A value as a message shows it: its repr (cut at 60 characters) and, for text, that it is text."""
    text = repr(value)
    text = text if len(text) <= 60 else text[:57] + "..."
    return f"{text} (text)" if isinstance(value, str) else text


def _is_int(v: Any) -> bool:
    return isinstance(v, numbers.Integral) and not isinstance(v, bool)


def _is_real(v: Any) -> bool:
    return isinstance(v, numbers.Real) and not isinstance(v, bool)


def _int_at_least(low: int, high: int | None = None) -> tuple[Callable[[Any], bool], str]:
    rule = f"an integer ≥ {low}" + (f" and < {high}" if high else "")
    return (lambda v: _is_int(v) and v >= low and (high is None or v < high)), rule


def _real(rule: str, ok: Callable[[float], bool]) -> tuple[Callable[[Any], bool], str]:
    return (lambda v: _is_real(v) and math.isfinite(v) and ok(float(v))), rule


def _norm_ok(p: Any) -> bool:
    """A margin norm: a number p ≥ 1 (``inf`` allowed), or text ``float`` reads as one (``"inf"``)."""
    try:
        value = float(p) if isinstance(p, str) else p
    except ValueError:
        return False
    return _is_real(value) and not math.isnan(value) and value >= 1


def _radius_ok(r: Any) -> bool:
    return _is_real(r) and math.isfinite(r) and r >= 0


def _list_or_one(ok: Callable[[Any], bool]) -> Callable[[Any], bool]:
    return lambda v: (isinstance(v, (list, tuple)) and len(v) > 0 and all(ok(x) for x in v)) or ok(v)


def _augment_ok(v: Any) -> bool:
    if isinstance(v, bool):
        return True
    if not isinstance(v, str):
        return False
    try:
        augmentation_from_name(v)
    except UnknownNameError:
        return False
    return True


def _device_ok(v: Any) -> bool:
    try:
        parse_device(v)
    except ConfigError:
        return False
    return True


_RULES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "epochs": _int_at_least(1),
    "batch_size": _int_at_least(1),
    "lr": _real("a finite number > 0", lambda v: v > 0),
    "optimizer": (lambda v: v in OPTIMIZERS, f"one of {', '.join(OPTIMIZERS)}"),
    "momentum": _real("a number in [0, 1)", lambda v: 0 <= v < 1),
    "lr_decay": _real("a number in (0, 1] (the factor per epoch)", lambda v: 0 < v <= 1),
    "schedule": (lambda v: v in SCHEDULES, f"one of {', '.join(SCHEDULES)}"),
    "weight_decay": _real("a finite number ≥ 0", lambda v: v >= 0),
    "jacobian_reg": _real("a finite number ≥ 0", lambda v: v >= 0),
    "margin_radius": (_list_or_one(_radius_ok), "a finite number ≥ 0 or a non-empty list of them"),
    "margin_norm": (_list_or_one(_norm_ok), 'a norm p ≥ 1 (1, 2, "inf", ...) or a non-empty list of them'),
    "margin_warmup": _real("a number in [0, 1] (a fraction of training)", lambda v: 0 <= v <= 1),
    "margin_weight": _real("a number in (0, 1] (the bound's share of the sensitive loss)", lambda v: 0 < v <= 1),
    "sensitive_weight": _real("a finite number > 0", lambda v: v > 0),
    "train_at_balance": (lambda v: isinstance(v, bool), "true or false"),
    "false_positive_rate": (
        lambda v: v is None or (_is_real(v) and 0 <= v < 1),
        "null (equal class accuracies) or a number in [0, 1) (the share of the other class that may be flagged)",
    ),
    "false_positive_confidence": (
        lambda v: v is None or (_is_real(v) and 0 < v < 1),
        "null or a number in (0, 1) (the probability that the false-positive budget holds on new inputs)",
    ),
    "ensemble_training": (lambda v: v in ENSEMBLE_TRAINING, f"one of {', '.join(ENSEMBLE_TRAINING)}"),
    "refit": (lambda v: isinstance(v, bool), "true or false"),
    "teacher": (lambda v: v is None or (isinstance(v, str) and v != ""), "null or the path of a run folder"),
    "distill_weight": _real("a number in [0, 1]", lambda v: 0 <= v <= 1),
    "distill_temperature": _real("a finite number > 0", lambda v: v > 0),
    "seed": _int_at_least(0, _SEED_LIMIT),
    "device": (_device_ok, f"a device name ({DEVICE_HELP})"),
    "augment": (_augment_ok, "true, false, or an augmentation name ('flip', 'crop<padding>', 'crop<padding>_flip')"),
    "eval_batch_size": _int_at_least(1),
    "amp": (lambda v: isinstance(v, bool), "true or false"),
    "workers": (lambda v: v is None or (_is_int(v) and v >= 0), "null (automatic) or an integer ≥ 0"),
    "extra": (
        lambda v: v is None or (isinstance(v, dict) and all(isinstance(k, str) for k in v)),
        "null or an object of family-specific settings",
    ),
}


def _margin_problems(radius: Any, norm: Any) -> list[str]:
    """The margin radii and norms pair up: lists of equal length, or one norm for every radius."""
    radii = list(radius) if isinstance(radius, (list, tuple)) else [radius]
    norms = list(norm) if isinstance(norm, (list, tuple)) else None
    if radii in ([0], [0.0]) or norms is None or len(norms) == len(radii):
        return []
    return [
        f"margin_radius {radius!r} and margin_norm {norm!r} must pair up: one norm per radius "
        f"(lists of equal length, or one norm for every radius)"
    ]


def settings_problems(values: dict[str, Any]) -> list[str]:
    """Every problem with ``values`` (setting name → value; names must be fields of TrainConfig), in field order."""
    problems = [
        f"{name} must be {rule}, got {_shown(values[name])}"
        for name, (ok, rule) in _RULES.items()
        if name in values and not ok(values[name])
    ]
    if not any(p.startswith("margin_") for p in problems):
        problems += _margin_problems(values.get("margin_radius", 0.0), values.get("margin_norm", 2.0))
    if not any(p.startswith(("teacher", "distill_weight")) for p in problems):
        problems += _distill_problems(values.get("teacher"), values.get("distill_weight", 0.0))
    if values.get("false_positive_confidence") is not None and not any(
        p.startswith("false_positive") for p in problems
    ):
        problems += _confidence_problems(values)
    return problems


def _distill_problems(teacher: Any, weight: Any) -> list[str]:
    """A teacher needs a distill_weight > 0, and a distill_weight > 0 needs a teacher."""
    if teacher is not None and weight == 0:
        return [f"teacher {teacher!r} needs distill_weight > 0 (in (0, 1]); got 0"]
    if teacher is None and weight != 0:
        return [f"distill_weight {weight!r} needs a teacher (the path of a run folder)"]
    return []


def _confidence_problems(values: dict[str, Any]) -> list[str]:
    """A false-positive confidence needs its budget, and a validation split the model never depended on."""
    if values.get("false_positive_rate") is None:
        return ["false_positive_confidence needs false_positive_rate (the budget it is a confidence for)"]
    seen = [name for name in ("refit", "train_at_balance") if values.get(name) is True]
    return [
        f"false_positive_confidence needs a validation split the model did not depend on; {name}=true uses it "
        "in training"
        for name in seen
    ]


def operating_point(train: dict[str, Any]) -> tuple[float | None, float | None]:
    """(false_positive_rate, false_positive_confidence) of a run's training settings (run.json's ``train``),
    checked as training settings are (what a report says about the threshold b).

    Raises:
        CheckpointError: a value the training settings would refuse (a tampered or foreign run.json).
    """
    point = {name: train.get(name) for name in ("false_positive_rate", "false_positive_confidence")}
    problems = settings_problems(point)
    if problems:
        raise CheckpointError(f"run.json's training settings: {'; '.join(problems)}")
    return point["false_positive_rate"], point["false_positive_confidence"]


def _raise_if_any(problems: list[str]) -> None:
    if problems:
        what = "a problem" if len(problems) == 1 else f"{len(problems)} problems"
        raise SettingsError(f"training settings: {what}: " + "; ".join(problems))


def unapplied_keys(overrides: Any, effective: Any, prefix: str = "") -> list[str]:
    """Keys of ``overrides`` (nested dicts, and lists of dicts of the same length) missing from ``effective``.

    ``effective`` is what a builder kept (e.g. ``model.config()``): a key it lacks had no effect.
    Returns the dotted paths of those keys (``"convex.bogus"``, ``"feature_map[0].scale"``).
    """
    if isinstance(overrides, dict) and isinstance(effective, dict):
        out = []
        for key, value in overrides.items():
            path = f"{prefix}.{key}" if prefix else str(key)
            out += [path] if key not in effective else unapplied_keys(value, effective[key], path)
        return out
    if isinstance(overrides, list) and isinstance(effective, list) and len(overrides) == len(effective):
        return [p for i, (o, e) in enumerate(zip(overrides, effective)) for p in unapplied_keys(o, e, f"{prefix}[{i}]")]
    return []


def check_model_overrides(overrides: dict[str, Any] | None, built: dict[str, Any]) -> None:
    """Refuse model settings the built model ignored (``--model-set bogus=1``, ``channels`` of an MLP, ...).

    Args:
        overrides: the model settings asked for (``--model-set`` / ``model_overrides``).
        built: the config of the model built from them (``model.config()``).
    Raises:
        SettingsError: some keys had no effect; names each, with the keys this model has.
    """
    unused = unapplied_keys(overrides or {}, built)
    if unused:
        kind = built.get("kind", "?")
        raise SettingsError(
            f"model setting(s) {', '.join(map(repr, unused))} have no effect on a {kind!r} model; "
            f"its settings are: {', '.join(sorted(built))}"
        )


@dataclass
class TrainConfig:
    """Everything that decides a training run (defaults: the feature-convex paper's recipe).

    Every field is checked when the config is built (see :func:`settings_problems`); a
    :class:`~asymcert.errors.SettingsError` lists every problem found.

    Attributes:
        epochs: passes over the training split (integer ≥ 1).
        batch_size: global batch size (integer ≥ 1; split over processes under torch.distributed).
        lr: learning rate (> 0). optimizer: "sgd" or "adam". momentum: SGD momentum in [0, 1).
        lr_decay: multiplicative learning-rate decay per epoch in (0, 1] (exponential schedule);
            "cosine" schedules are chosen with ``schedule="cosine"`` (per iteration).
        weight_decay: L2 weight decay (≥ 0).
        jacobian_reg: λ ≥ 0 of the Jacobian regulariser λ·‖∂g/∂φ‖_F (feature-convex models).
        margin_radius: certified-margin loss of feature-convex models (0 = off): for *sensitive*
            training inputs the cross-entropy is taken on s(x) − r·Lip_p(φ)·‖∇_φ g‖_{p*}, the
            certified lower bound of the score over the ℓp ball of radius r (in the training threat model's
            units, ‖δ / scale‖_p over the moves it allows, when the run has one; else raw input units);
            other inputs keep the plain loss, since nothing is certified for them.
        margin_norm: the p ≥ 1 of that ball (1, 2, "inf", ...). Lists of radii and norms of equal
            length use the union of the balls (the lowest of the bounds).
        margin_warmup: fraction of training in [0, 1] over which r grows linearly from 0 (0 = from the start).
        margin_weight: α in (0, 1]: a sensitive input's cross-entropy is (1 − α)·BCE(s(x)) + α·BCE(bound),
            so the plain score keeps a share 1 − α of the loss (1 = the bound only, as before).
        sensitive_weight: weight > 0 of the sensitive class's cross-entropy terms (``pos_weight``; 1 =
            the plain loss).
        train_at_balance: keep the class-balance shift b that each epoch's validation pass fits in the
            logit of the next epoch (False: train on g(φ(x)) with b = 0). See the feature-convex recipe.
        false_positive_rate: the operating point: None fits the balance shift b on validation so that the
            two class accuracies are equal; a number α in [0, 1) fits b so that at most a share α of the
            validation inputs of the other class is flagged, as many sensitive ones as possible (epochs are
            then selected by that detection rate). Feature-convex recipe only.
        false_positive_confidence: None, or c in (0, 1) with ``false_positive_rate`` α: b then flags at most
            a share α of the *distribution* the validation inputs of the other class are drawn from, with
            probability ≥ c over their draw (Neyman–Pearson umbrella; see
            :func:`~asymcert.train.balance.allowed_false_positives`), each epoch's b at confidence
            1 − (1 − c)/epochs since one epoch is kept by its validation figures (a union bound): fewer
            validation false positives than ⌊α·n⌋. Needs refit and train_at_balance off (the model must not
            depend on the validation inputs); refused before training when the validation split is too small.
        ensemble_training: how a mean of convex networks (``convex: {"kind": "mean", ...}``) is trained:
            "members" (each member's own loss on g_k(φ(x)) + b, averaged: independent trainings side by
            side) or "mean" (one loss on the averaged score). Ignored by other models.
        refit: train on train ∪ val for exactly ``epochs`` epochs and keep the *final* epoch (no
            best-validation selection: validation is then in-sample). The feature map's statistics and
            the class-balance shift b are fitted on train ∪ val too; the history's metrics are
            ``trainval_*`` (in-sample) and the kept record says ``"selection": "final epoch (refit on
            train+val)"``. The test split is never used. Typical workflow: train once without refit,
            read the selected epoch in run.json's ``training.best.epoch`` (or history.json), then rerun
            with ``refit=true`` and ``epochs`` set to that epoch (same passes over the data; |train ∪ val| /
            |train| times the optimizer steps) or to epoch·|train|/|train ∪ val| (same steps; on SpamBase
            the better of the two, benchmarks/results/spambase_refit.md). The threat model's data scales
            still come from the train split.
        teacher: path of a run folder (any family) whose model's scores the student distils (None = off);
            loaded once with the safe loader, frozen, in eval mode. Feature-convex recipe only.
        distill_weight: w in [0, 1]: the loss is (1 − w)·(recipe loss) + w·T²·BCE(s/T, σ(t/T)) with s, t
            the student's and teacher's scores on the same (augmented) batch (> 0 needs a teacher).
        distill_temperature: T > 0 of that term.
        seed: seeds weights, shuffling and augmentation (integer in [0, 2⁶³)).
        device: "auto" (CUDA when present), "cpu", "cuda[:i]" or "mps".
        augment: apply the task's training augmentation (True), none (False), or the named one
            (``"crop<padding>"``, ``"crop<padding>_flip"`` or ``"flip"``, e.g. ``"crop2_flip"``).
        eval_batch_size: batch size (integer ≥ 1) for validation passes.
        amp: bfloat16 autocast for training on CUDA (ignored on CPU; certification never uses it).
        workers: data-loading worker processes (≥ 0; shuffling and augmentation); None → 0 on CPU,
            2 on CUDA. The batches are the same for every worker count.
        extra: family-specific settings (an object; checked by the family's recipe).
    """

    epochs: int = 60
    batch_size: int = 64
    lr: float = 1e-3
    optimizer: str = "sgd"
    momentum: float = 0.9
    lr_decay: float = 0.99
    schedule: str = "exponential"
    weight_decay: float = 0.0
    jacobian_reg: float = 0.0
    margin_radius: float | list[float] = 0.0
    margin_norm: float | list[float] = 2.0
    margin_warmup: float = 0.0
    margin_weight: float = 1.0
    sensitive_weight: float = 1.0
    train_at_balance: bool = False
    false_positive_rate: float | None = None
    false_positive_confidence: float | None = None
    ensemble_training: str = "members"
    refit: bool = False
    teacher: str | None = None
    distill_weight: float = 0.0
    distill_temperature: float = 1.0
    seed: int = 0
    device: str = "auto"
    augment: bool | str = True
    eval_batch_size: int = 1000
    amp: bool = False
    workers: int | None = None
    extra: dict[str, Any] | None = None

    def __post_init__(self) -> None:
        _raise_if_any(settings_problems(self.to_dict()))

    @classmethod
    def from_dict(cls, d: dict[str, Any]) -> TrainConfig:
        """Build from a dict (missing keys take their defaults).

        Raises:
            SettingsError: ``d`` is not a dict, or has unknown keys or values of the wrong type or
                range; one line listing every problem.
        """
        if not isinstance(d, dict):
            raise SettingsError(f"training settings must be an object of KEY: VALUE, got {type(d).__name__}")
        known = [f.name for f in fields(cls)]
        unknown = sorted(str(k) for k in d if k not in known)
        problems = (
            [f"unknown training setting(s) {', '.join(map(repr, unknown))} (known: {', '.join(known)})"]
            if unknown
            else []
        )
        _raise_if_any(problems + settings_problems({k: v for k, v in d.items() if k in known}))
        return cls(**d)

    def to_dict(self) -> dict[str, Any]:
        """The settings as a JSON-ready dict (field name → value)."""
        return asdict(self)
