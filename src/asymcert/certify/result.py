"""The one result type every certifier returns."""

from __future__ import annotations

import enum
import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, cast

import torch

from asymcert.data.tasks import get_task, task_names
from asymcert.errors import InputError

RAW_UNITS = "raw input units"
"""The units of a certificate computed without a threat model."""

IMAGE_UNITS = f"{RAW_UNITS} (pixel values / 255, in [0, 1])"
""":data:`RAW_UNITS` of a run on an image folder, whose 8-bit pixels are divided by 255 before the model sees them
(a radius 0.066 is about 17 grey levels of the file, audit units30 F6)."""


def raw_units(task: Mapping[str, Any]) -> str:
    """The raw input units of a run's task spec (run.json's ``task``): :data:`IMAGE_UNITS` for an image folder
    (``{"images": path, ...}``) or a built-in task of images (``{"name": ...}`` with :attr:`Task.pixels`), else
    :data:`RAW_UNITS` (a CSV's or an npz's own numbers, a built-in table's)."""
    if isinstance(task.get("images"), str):
        return IMAGE_UNITS
    name = task.get("name")
    pixels = isinstance(name, str) and name in task_names() and get_task(name).pixels
    return IMAGE_UNITS if pixels else RAW_UNITS


class Guarantee(str, enum.Enum):
    """What a certified radius r > 0 promises for one input (the one place a certificate's meaning is read).

    DECISION: no perturbation of norm < r changes the decision ``predicted`` (the argmax).
    FLAG: the flagged class stays flagged: binary sensitive-class models, the sensitive flag
        (``predicted == 1``; unflagged inputs get radius 0); one-vs-rest models, the predicted class's
        own flag s_k > 0 (``extra["predicted_flagged"]``), NOT the argmax (other classes may become
        flagged inside the radius).
    PROBABILISTIC: the decision of the smoothed classifier stays, with probability ≥ 1 − ``alpha``
        over the certifier's sampling (randomized smoothing).
    """

    DECISION = "decision"
    FLAG = "flag"
    PROBABILISTIC = "probabilistic"


@dataclass
class Certificate:
    """Certificates for a batch of N inputs.

    Attributes:
        predicted: (N,) int64 decision per input. Binary sensitive-class models: 1 = flagged
            sensitive, 0 = other. Multiclass models: the predicted class id.
        radii: ℓp norm (``1.0``, ``2.0``, ``math.inf``, any p ≥ 1) → (N,) float64 certified radius
            in the units given by ``units`` (raw input units without a threat model; the threat model's
            units, ‖δ / scale‖_p over the moves it allows, under one). Within an open ball of that radius
            around the input what ``guarantee`` names holds (the decision, or the flag, stays). 0 where no
            certificate is given (FLAG: every input not flagged).
        method: name of the certifier that produced it.
        guarantee: what a radius promises (:class:`Guarantee`; a str value such as ``"flag"`` is
            converted). Every certifier sets it; reports, metrics and the audit read only this.
        alpha: failure probability of a probabilistic certificate, in (0, 1); required for
            ``Guarantee.PROBABILISTIC`` and None for every other guarantee.
        abstained: (N,) bool, inputs on which the certifier abstained (probabilistic methods).
        seconds: wall-clock seconds spent certifying the batch.
        binary: True when ``predicted`` is a sensitive-class flag.
        extra: further per-input tensors (e.g. ``"score"``).
        units: what the radii are measured in: ``"raw input units"``, or a threat model's units
            (:meth:`asymcert.threat.ResolvedThreatModel.units`) when certified under one.
    """

    predicted: torch.Tensor
    radii: dict[float, torch.Tensor]
    method: str
    guarantee: Guarantee
    alpha: float | None = None
    abstained: torch.Tensor | None = None
    seconds: float = 0.0
    binary: bool = True
    extra: dict[str, torch.Tensor] = field(default_factory=dict)
    units: str = RAW_UNITS

    def __post_init__(self) -> None:
        """Refuse a guarantee that is not one, ``alpha`` given or missing against it, a flag without its flags.

        Raises:
            InputError: an unknown guarantee; alpha ∉ (0, 1) for a probabilistic certificate, or an
                alpha for another one; a multiclass FLAG certificate without ``extra["flags"]`` (N, K)
                and ``extra["predicted_flagged"]`` (N,).
        """
        try:
            self.guarantee = Guarantee(self.guarantee)
        except (ValueError, TypeError):
            raise InputError(
                f"unknown certificate guarantee {self.guarantee!r}; use one of {[g.value for g in Guarantee]}"
            ) from None
        if self.guarantee is Guarantee.PROBABILISTIC:
            ok = isinstance(self.alpha, (int, float)) and not isinstance(self.alpha, bool) and 0 < self.alpha < 1
            if not ok:
                raise InputError(f"a probabilistic certificate needs alpha in (0, 1), got {self.alpha!r}")
        elif self.alpha is not None:
            raise InputError(
                f"alpha={self.alpha!r} given for a {self.guarantee.value} certificate; "
                "alpha belongs to probabilistic certificates only"
            )
        missing = sorted({"flags", "predicted_flagged"} - set(self.extra))
        if self.guarantee is Guarantee.FLAG and not self.binary and missing:
            raise InputError(
                f"a multiclass flag certificate needs extra {missing}: the (N, K) class flags and "
                "whether the predicted class is flagged (N,)"
            )

    @property
    def deterministic(self) -> bool:
        """True for closed-form guarantees; False for ones holding with probability ``1 - alpha``."""
        return self.guarantee is not Guarantee.PROBABILISTIC

    def predicted_flagged(self) -> torch.Tensor:
        """(N,) bool: the input's own certified class is flagged (FLAG certificates; else all True).

        Binary models: flagged sensitive (``predicted == 1``); one-vs-rest: ``extra["predicted_flagged"]``.
        """
        if self.guarantee is not Guarantee.FLAG:
            return torch.ones_like(self.predicted, dtype=torch.bool)
        return self.predicted.bool() if self.binary else self.extra["predicted_flagged"].bool()

    @property
    def sensitive(self) -> torch.Tensor:
        """(N,) bool: flagged as the sensitive class (binary models only)."""
        if not self.binary:
            raise AttributeError("`.sensitive` exists only for binary sensitive-class models; use `.predicted`")
        return self.predicted.bool()

    def __len__(self) -> int:
        return int(self.predicted.shape[0])

    def radius(self, p: float) -> torch.Tensor:
        """The (N,) float64 radii for the ℓp norm ``p`` (accepts ``"inf"`` and ints), in the units given by
        ``units`` (raw input units without a threat model; the threat model's units under one)."""
        key = normalize_norm(p)
        if key not in self.radii:
            raise KeyError(f"no ℓ{p} radii in this certificate; it has {sorted(self.radii)}")
        return self.radii[key]

    def to(self, device: str | torch.device) -> Certificate:
        """A copy with every tensor moved to ``device``."""

        def mv(t: torch.Tensor) -> torch.Tensor:
            return t.to(device)

        abstained = None if self.abstained is None else mv(self.abstained)
        return Certificate(
            mv(self.predicted),
            {k: mv(v) for k, v in self.radii.items()},
            self.method,
            self.guarantee,
            self.alpha,
            abstained,
            self.seconds,
            self.binary,
            {k: mv(v) for k, v in self.extra.items()},
            self.units,
        )

    @staticmethod
    def cat(parts: list[Certificate]) -> Certificate:
        """Concatenate certificates of consecutive batches (same method and norms; at least one part)."""
        if not parts:
            raise InputError("Certificate.cat needs at least one certificate (the empty result has no norms)")
        first = parts[0]
        mixed = {(p.method, p.guarantee, p.alpha, p.binary, p.units) for p in parts}
        if len(mixed) > 1:
            raise InputError(
                f"Certificate.cat joins certificates of one method and guarantee, got {sorted(map(str, mixed))}"
            )
        # one method and guarantee: every part has ``abstained`` or none has
        abst = None if first.abstained is None else torch.cat(cast("list[torch.Tensor]", [p.abstained for p in parts]))
        return Certificate(
            torch.cat([p.predicted for p in parts]),
            {k: torch.cat([p.radii[k] for p in parts]) for k in first.radii},
            first.method,
            first.guarantee,
            first.alpha,
            abst,
            sum(p.seconds for p in parts),
            first.binary,
            {k: torch.cat([p.extra[k] for p in parts]) for k in first.extra},
            first.units,
        )


def normalize_norm(p: float | int | str) -> float:
    """ℓp norm key as a float: 1 → 1.0, "inf"/"linf"/math.inf → math.inf. Requires p ≥ 1.

    Raises:
        InputError (a ValueError): not a number or a norm name, NaN, or p < 1.
    """
    given = p
    try:
        if isinstance(p, str):
            s = p.strip().lower().removeprefix("l")
            p = math.inf if s in ("inf", "infinity", "∞") else float(s)
        p = float(p)
    except (TypeError, ValueError):
        raise InputError(f"{given!r} is not an ℓp norm; use a number p ≥ 1 or 'inf'") from None
    if math.isnan(p) or p < 1:
        raise InputError(f"ℓp norms need p ≥ 1, got {p}")
    return p


def norm_label(p: float) -> str:
    """'l1', 'l2', 'linf', 'l3.5' … for file names and JSON keys."""
    return "linf" if math.isinf(p) else f"l{p:g}"


def class_radii_key(p: float) -> str:
    """The ``Certificate.extra`` key of the (N, K) per-class ℓp radii, e.g. ``class_radii_linf`` for p = ∞."""
    return f"class_radii_{norm_label(p)}"
