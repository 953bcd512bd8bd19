"""The one result type every certifier returns."""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import torch

from asymcert.errors import InputError


@dataclass
class Certificate:
    """Certificates for a batch of N inputs.

    Attributes:
        predicted: (N,) int64 decision per input. Binary sensitive-class models: 1 = flagged
            sensitive, 0 = other. Multiclass models: the predicted class id.
        radii: ℓp norm (``1.0``, ``2.0``, ``math.inf``, any p ≥ 1) → (N,) float64 certified radius
            in raw input units. Within an open ball of that radius around the input the decision
            cannot change (one-vs-rest models, marked by ``extra["predicted_flagged"]``: the
            predicted class stays flagged, the argmax may change). 0 where no certificate is given
            (binary: every input not flagged).
        method: name of the certifier that produced it.
        deterministic: True for closed-form guarantees; False for ones holding with
            probability ``1 - alpha`` (randomized smoothing).
        alpha: failure probability of a probabilistic certificate (None when deterministic).
        abstained: (N,) bool, inputs on which the certifier abstained (probabilistic methods).
        seconds: wall-clock seconds spent certifying the batch.
        binary: True when ``predicted`` is a sensitive-class flag.
    """

    predicted: torch.Tensor
    radii: dict[float, torch.Tensor]
    method: str
    deterministic: bool = True
    alpha: float | None = None
    abstained: torch.Tensor | None = None
    seconds: float = 0.0
    binary: bool = True
    extra: dict[str, torch.Tensor] = field(default_factory=dict)

    @property
    def sensitive(self) -> torch.Tensor:
        """(N,) bool: flagged as the sensitive class (binary models only)."""
        if not self.binary:
            raise AttributeError("`.sensitive` exists only for binary sensitive-class models; use `.predicted`")
        return self.predicted.bool()

    def __len__(self) -> int:
        return int(self.predicted.shape[0])

    def radius(self, p: float) -> torch.Tensor:
        """The (N,) radii for the ℓp norm ``p`` (accepts ``"inf"`` and ints)."""
        key = normalize_norm(p)
        if key not in self.radii:
            raise KeyError(f"no ℓ{p} radii in this certificate; it has {sorted(self.radii)}")
        return self.radii[key]

    def to(self, device: str | torch.device) -> "Certificate":
        """A copy with every tensor moved to ``device``."""
        mv = lambda t: None if t is None else t.to(device)  # noqa: E731
        return Certificate(mv(self.predicted), {k: mv(v) for k, v in self.radii.items()}, self.method,
                           self.deterministic, self.alpha, mv(self.abstained), self.seconds, self.binary,
                           {k: mv(v) for k, v in self.extra.items()})

    @staticmethod
    def cat(parts: list["Certificate"]) -> "Certificate":
        """Concatenate certificates of consecutive batches (same method and norms; at least one part)."""
        if not parts:
            raise InputError("Certificate.cat needs at least one certificate (the empty result has no norms)")
        first = parts[0]
        abst = None if first.abstained is None else torch.cat([p.abstained for p in parts])
        return Certificate(
            torch.cat([p.predicted for p in parts]),
            {k: torch.cat([p.radii[k] for p in parts]) for k in first.radii},
            first.method, first.deterministic, first.alpha, abst,
            sum(p.seconds for p in parts), first.binary,
            {k: torch.cat([p.extra[k] for p in parts]) for k in first.extra},
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
