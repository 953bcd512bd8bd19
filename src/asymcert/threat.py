"""Threat models: which features an attacker may change, in which direction, how far, in whose units.

A :class:`ThreatModel` is what a user writes (a JSON file, or Python), with features named by CSV
header or by index::

    {"scale": {"capitalTotal": 100, "*": 1.0},
     "immutable": ["capitalLong"],
     "increase_only": ["george", "hp"], "decrease_only": [],
     "lower": {"*": 0.0}, "upper": {"george": 100.0},
     "norms": [1, 2, "inf"]}

An attacker's move δ (raw input units) is allowed when δ_i = 0 on immutable features, δ_i ≥ 0 on
increase-only and δ_i ≤ 0 on decrease-only ones, and lower ≤ x + δ ≤ upper. Its size is
‖(δ_i / scale_i)_i‖_p: radii under a threat model are in the threat model's units (one unit of
feature i is ``scale_i`` raw units). Every key is optional; ``"*"`` sets the value of every feature
not named. :meth:`ThreatModel.resolve` turns names into per-feature tensors
(:class:`ResolvedThreatModel`) for an input of d features.
"""

from __future__ import annotations

import math
import struct
import unicodedata
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch

from asymcert.errors import ConfigError
from asymcert.files import read_regular_text
from asymcert.jsontext import JsonTextError, parse_json
from asymcert.text import first_few

__all__ = ["ResolvedThreatModel", "ThreatModel", "load_threat_model"]

_KEYS = ("scale", "immutable", "increase_only", "decrease_only", "lower", "upper", "norms")
DATA_SCALE = "std"
"""A scale given as this word is the feature's standard deviation on the run's training inputs (resolved,
and stored as numbers, when the run is trained): radii then count standard deviations."""
Key = str | int
"""A feature named by its CSV header (str) or its flat index (int, or a str of digits that is no header)."""


def _norm_value(p: Any) -> float | None:
    """1, 2, "inf", … → float p ≥ 1, or None when it is not a norm."""
    try:
        value = math.inf if isinstance(p, str) and p.strip().lower() in ("inf", "linf", "∞") else float(p)
    except (TypeError, ValueError):
        return None
    return value if not isinstance(p, bool) and value >= 1 else None


SCALE_RANGE = (float(torch.finfo(torch.float32).tiny), float(torch.finfo(torch.float32).max))
"""The scales a threat model may give: float32's normal numbers, whose reciprocals float32 holds too (a
subnormal scale such as 1e-320 made radii overflow to ∞)."""


def _number_problems(key: str, values: Mapping[Key, Any], positive: bool) -> list[str]:
    """Entries of a {feature: number} mapping that are not finite numbers (or, with ``positive``, not inside
    :data:`SCALE_RANGE`)."""
    problems = []
    low, high = SCALE_RANGE
    for name, v in values.items():
        ok = isinstance(v, (int, float)) and not isinstance(v, bool) and math.isfinite(v)
        if not ok or (positive and not low <= v <= high):
            want = f"a number from {low:.3g} to {high:.3g}" if positive else "a finite number"
            problems.append(f"{key}[{name!r}] = {v!r} must be {want}")
    return problems


@dataclass(frozen=True)
class ThreatModel:
    """What an attacker may do to a feature vector (see the module docstring). Every field optional.

    Attributes:
        scale: feature → raw units per threat-model unit (> 0), or ``"std"`` (the feature's standard
            deviation on the training inputs, fixed when a run is trained); ``"*"`` for every other
            feature (default 1).
        immutable: features the attacker cannot change.
        increase_only / decrease_only: features the attacker can only raise / only lower.
        lower / upper: the valid domain, x + δ ∈ [lower, upper] (default unbounded); ``"*"`` allowed.
        norms: the norms the commands (certify, audit, report) certify by default (None: their own);
            ``asymcert.certify`` takes its own ``norms`` argument (pass ``tm.norms`` there to use them).
    """

    scale: Mapping[Key, float | str] = field(default_factory=dict)
    immutable: Sequence[Key] = ()
    increase_only: Sequence[Key] = ()
    decrease_only: Sequence[Key] = ()
    lower: Mapping[Key, float] = field(default_factory=dict)
    upper: Mapping[Key, float] = field(default_factory=dict)
    norms: Sequence[float | str] | None = None

    def __post_init__(self) -> None:
        problems = self.problems()
        if problems:
            raise _refusal(problems)

    def named(self) -> set[str]:
        """Every feature key the threat model gives as text (names, and indices written as text), "*" not."""
        keys = [*self.scale, *self.immutable, *self.increase_only, *self.decrease_only, *self.lower, *self.upper]
        return {k for k in keys if isinstance(k, str) and k != "*"}

    def problems(self) -> list[str]:
        """Every problem that does not need the feature names (types, scales, norms), one line each."""
        numeric = {k: v for k, v in self.scale.items() if v != DATA_SCALE}
        problems = [f'{bad} (or "{DATA_SCALE}")' for bad in _number_problems("scale", numeric, positive=True)]
        problems += _number_problems("lower", self.lower, positive=False)
        problems += _number_problems("upper", self.upper, positive=False)
        for key in ("immutable", "increase_only", "decrease_only"):
            value = getattr(self, key)
            if isinstance(value, (str, bytes)) or not isinstance(value, Sequence):
                problems.append(f"{key} must be a list of feature names or indices, got {value!r}")
            elif any(isinstance(v, bool) or not isinstance(v, (str, int)) for v in value):
                problems.append(f"{key} holds something that is not a feature name or index: {list(value)!r}")
        if self.norms is not None:
            if isinstance(self.norms, (str, bytes)) or not isinstance(self.norms, Sequence) or not self.norms:
                problems.append(f"norms must be a non-empty list like [1, 2, 'inf'], got {self.norms!r}")
            else:
                bad = [p for p in self.norms if _norm_value(p) is None]
                problems += [f"norms: {p!r} is not an ℓp norm (p ≥ 1 or 'inf')" for p in bad]
        return problems

    @classmethod
    def from_dict(cls, data: Any, source: str = "threat model") -> ThreatModel:
        """A threat model from parsed JSON; unknown keys and bad values are refused in one line.

        Raises:
            ConfigError: not a JSON object, an unknown key, or any :meth:`problems`.
        """
        if not isinstance(data, dict):
            raise ConfigError(f"{source}: must be a JSON object with keys among {', '.join(_KEYS)}")
        unknown = sorted(set(data) - set(_KEYS))
        if unknown:
            more = f" and {len(unknown) - 10} more" if len(unknown) > 10 else ""
            raise ConfigError(f"{source}: unknown key(s) {unknown[:10]}{more}; known: {', '.join(_KEYS)}")
        for key in ("scale", "lower", "upper"):
            if key in data and not isinstance(data[key], dict):
                raise ConfigError(f'{source}: {key} must be an object like {{"feature": 1.0, "*": 1.0}}')
        try:
            values: dict[str, Any] = {k: (tuple(v) if isinstance(v, list) else v) for k, v in data.items()}
            return cls(**values)
        except ConfigError as exc:
            raise ConfigError(f"{source}: {exc}".replace(": threat model:", ":")) from None

    def to_dict(self) -> dict[str, Any]:
        """The JSON form (:meth:`from_dict` reads it back)."""
        out: dict[str, Any] = {
            "scale": {str(k): v if v == DATA_SCALE else float(v) for k, v in self.scale.items()},
            "immutable": list(self.immutable),
            "increase_only": list(self.increase_only),
            "decrease_only": list(self.decrease_only),
            "lower": {str(k): float(v) for k, v in self.lower.items()},
            "upper": {str(k): float(v) for k, v in self.upper.items()},
        }
        if self.norms is not None:
            out["norms"] = ["inf" if math.isinf(v) else v for v in self.default_norms()]
        return out

    def default_norms(self) -> tuple[float, ...]:
        """The norms the threat model names, as floats (empty when it names none)."""
        return tuple(v for p in self.norms or () if (v := _norm_value(p)) is not None)

    def uses_data_scales(self) -> bool:
        """True when some scale is ``"std"`` (:meth:`with_data_scales` turns it into numbers)."""
        return any(v == DATA_SCALE for v in self.scale.values())

    def with_data_scales(self, std: torch.Tensor, feature_names: Sequence[str] | None) -> ThreatModel:
        """This threat model with every ``"std"`` scale replaced by the feature's standard deviation.

        Args:
            std: (d,) per-feature standard deviations of the training inputs (raw units).
            feature_names: the features' names (the keys written), or None (flat indices).
        Raises:
            ConfigError: unknown features (as :meth:`resolve`), or a "std" feature whose deviation is not
                a finite number > 0 (a constant feature has no standard unit).
        """
        names = list(feature_names) if feature_names is not None else [str(i) for i in range(len(std))]
        resolver = _Resolver(feature_names, len(std))
        wanted = torch.zeros(len(std), dtype=torch.bool)
        wanted[:] = self.scale.get("*") == DATA_SCALE
        for key, value in self.scale.items():
            if key != "*" and (i := resolver.find(key, "scale")) is not None:
                wanted[i] = value == DATA_SCALE
        bad = [names[i] for i in torch.nonzero(wanted & ~(std.double() > 0)).flatten().tolist()]
        problems = resolver.problems + [f'scale "std" of feature {n!r}: its training std is 0' for n in bad[:5]]
        if problems:
            raise _refusal(problems)
        fixed = {k: v for k, v in self.scale.items() if v != DATA_SCALE}
        fixed.update({names[i]: float(std[i]) for i in torch.nonzero(wanted).flatten().tolist()})
        return ThreatModel(
            fixed, self.immutable, self.increase_only, self.decrease_only, self.lower, self.upper, self.norms
        )

    def resolve(self, feature_names: Sequence[str] | None, n_features: int) -> ResolvedThreatModel:
        """Per-feature tensors for inputs of ``n_features`` (flattened) features.

        Args:
            feature_names: the inputs' column names (a CSV header), or None (features by index only).
            n_features: d, the number of features of one flattened input.
        Raises:
            ConfigError: listing every unknown name or index, every feature that is both immutable and
                one-sided or both increase- and decrease-only, and every lower bound above its upper.
        """
        if self.uses_data_scales():
            raise ConfigError(
                'threat model: scale "std" is fixed from the training inputs when a run is trained '
                "(asymcert run/train --threat-model), and the run keeps the fitted numbers in its run.json "
                '("threat_model"), which certify, audit and export use without --threat-model; here give '
                "the scales as numbers (e.g. copied from there)"
            )
        resolver = _Resolver(feature_names, n_features)
        scale = resolver.values("scale", self.scale, 1.0)  # type: ignore[arg-type]  # numbers: checked above
        lower = resolver.values("lower", self.lower, -math.inf)
        upper = resolver.values("upper", self.upper, math.inf)
        sets, starred = self._move_sets(resolver, n_features)
        problems = resolver.problems + starred + _contradictions(sets, resolver)
        bad = torch.nonzero(lower > upper).flatten().tolist()
        problems += [f"lower > upper for feature {resolver.label(i)}" for i in bad[:5]]
        if problems:
            raise _refusal(problems)
        up = torch.ones(n_features, dtype=torch.bool)
        down = torch.ones(n_features, dtype=torch.bool)
        for i in sets["immutable"]:
            up[i] = down[i] = False
        for i in sets["increase_only"]:
            down[i] = False
        for i in sets["decrease_only"]:
            up[i] = False
        names = None if feature_names is None else tuple(feature_names)  # (one per feature: checked above)
        return ResolvedThreatModel(scale, up, down, lower, upper, self.default_norms(), self, names)

    def _move_sets(self, resolver: _Resolver, n: int) -> tuple[dict[str, set[int]], list[str]]:
        """The features of immutable / increase_only / decrease_only (flat indices), ``"*"`` in one of them
        standing for every feature the other two do not name; and the problem of a ``"*"`` in more than one."""
        kinds = ("immutable", "increase_only", "decrease_only")
        sets = {key: resolver.indices(key, [k for k in getattr(self, key) if k != "*"]) for key in kinds}
        starred = [key for key in kinds if "*" in getattr(self, key)]
        if starred and "*" in resolver.index:  # (before "*" in a list meant that column: review 27g)
            return sets, [
                f'"*" in {starred[0]} stands for every feature not named, and a feature is named "*": rename it'
            ]
        if len(starred) > 1:
            return sets, [
                f'"*" in both {starred[0]} and {starred[1]}: it stands for every feature not named, in one list'
            ]
        if starred:
            named = set().union(*sets.values())
            sets[starred[0]] |= set(range(n)) - named
        return sets, []


MAX_PROBLEMS = 20
"""The most problems of one threat model an error message lists (then how many more there are)."""


def _refusal(problems: list[str]) -> ConfigError:
    """One ConfigError line listing ``problems``, the first :data:`MAX_PROBLEMS` of them (300,000 unknown names
    made one line of 27 MB)."""
    more = f"; and {len(problems) - MAX_PROBLEMS} more problems" if len(problems) > MAX_PROBLEMS else ""
    return ConfigError("threat model: " + "; ".join(problems[:MAX_PROBLEMS]) + more)


def _contradictions(sets: dict[str, set[int]], resolver: _Resolver) -> list[str]:
    """Features named in two of immutable / increase_only / decrease_only."""
    pairs = (("immutable", "increase_only"), ("immutable", "decrease_only"), ("increase_only", "decrease_only"))
    return [f"feature {resolver.label(i)} is both {a} and {b}" for a, b in pairs for i in sorted(sets[a] & sets[b])]


class _Resolver:
    """Names and indices → flat feature indices, collecting every unknown one."""

    def __init__(self, names: Sequence[str] | None, n: int) -> None:
        self.names = list(names) if names is not None else None
        self.index = {name: i for i, name in enumerate(self.names or [])}
        self.n = n
        self.found: list[str] = []
        self.unnamed: list[str] = []  # names given where the inputs have none: one problem for all of them
        if self.names is not None and len(self.names) != n:
            self.found.append(f"{len(self.names)} feature names for {n} features; give one name per feature")
        twice = sorted(name for name, count in Counter(self.names or []).items() if count > 1)
        if twice:
            self.found.append(f"feature name(s) {', '.join(map(repr, twice[:5]))} appear more than once")

    @property
    def problems(self) -> list[str]:
        """Every problem found so far, names given without feature names as one."""
        if not self.unnamed:
            return list(self.found)
        names = list(dict.fromkeys(self.unnamed))
        shown = first_few(names, 4, repr)
        return [
            *self.found,
            f"features named ({shown}), but these inputs have no column names (an .npz file, images, a tensor): name "
            f"features by flat index, 0 to {self.n - 1} (in Python, tm.resolve(names, d) gives the names)",
        ]

    def label(self, i: int) -> str:
        return repr(self.names[i]) if self.names is not None and i < len(self.names) else f"#{i}"

    def find(self, key: Key, where: str) -> int | None:
        if isinstance(key, str) and key in self.index:
            return self.index[key]
        numeric = isinstance(key, int) or (isinstance(key, str) and key.isdigit())
        if numeric and 0 <= int(key) < self.n:
            return int(key)
        if self.names is None and not numeric:  # a name, and no names to look it up in
            self.unnamed.append(str(key))
            return None
        known = f"; features: {first_few(self.names, 8)}" if self.names else ""
        self.found.append(f"{where}: unknown feature {key!r} (there are {self.n}{known}){self._lookalike(key)}")
        return None

    def _lookalike(self, key: Key) -> str:
        """A column the key equals once both are in Unicode's NFC form, shown by code points: the two print the
        same ('fréq' as e + a combining accent, or as é) and nothing else would show the difference (audit 30 F4)."""
        if not isinstance(key, str):
            return ""
        nfc = unicodedata.normalize("NFC", key)
        same = [n for n in self.names or [] if unicodedata.normalize("NFC", n) == nfc]
        if not same:
            return ""
        return f"; it differs from the column {same[0]!a} only in its Unicode form: {key!a}"

    def values(self, key: str, mapping: Mapping[Key, float], default: float) -> torch.Tensor:
        out = torch.full((self.n,), float(mapping.get("*", default)), dtype=torch.float64)
        for name, v in mapping.items():
            if name != "*" and (i := self.find(name, key)) is not None:
                out[i] = float(v)
        return out

    def indices(self, key: str, names: Sequence[Key]) -> set[int]:
        found = (self.find(name, key) for name in names)
        return {i for i in found if i is not None}


@dataclass(frozen=True)
class ResolvedThreatModel:
    """A threat model for d = ``scale.numel()`` flattened features (all tensors (d,), CPU).

    Attributes:
        scale: float64 raw units per threat-model unit (> 0).
        can_increase / can_decrease: bool, the directions the attacker may move each feature.
        lower / upper: float64 domain bounds (±inf where unbounded).
        norms: the threat model's default norms (may be empty).
        source: the :class:`ThreatModel` it was resolved from.
        feature_names: the d names it was resolved with (a CSV header), or None; messages name features by them.
    """

    scale: torch.Tensor
    can_increase: torch.Tensor
    can_decrease: torch.Tensor
    lower: torch.Tensor
    upper: torch.Tensor
    norms: tuple[float, ...] = ()
    source: ThreatModel | None = None
    feature_names: tuple[str, ...] | None = None

    @property
    def n_features(self) -> int:
        return int(self.scale.numel())

    def is_empty(self) -> bool:
        """True when it constrains nothing: unit scales, every direction allowed, no domain bound. Such a
        threat model is today's plain ℓp ball in raw input units, and certifies exactly as without one."""
        return bool(
            (self.scale == 1).all()
            and self.can_increase.all()
            and self.can_decrease.all()
            and torch.isinf(self.lower).all()
            and torch.isinf(self.upper).all()
        )

    def directions(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """(up, down): (N, d) bool, where feature i of input x (N, *shape) may move up / down at all.

        A feature may increase when the threat model allows it and x_i < upper_i (room left in the
        domain), decrease likewise with lower_i.
        """
        flat = x.detach().reshape(x.shape[0], -1).to("cpu", torch.float64)
        if flat.shape[1] != self.n_features:
            raise ConfigError(f"threat model is for {self.n_features} features, the inputs have {flat.shape[1]}")
        up = self.can_increase[None, :] & (flat < self.upper[None, :])
        down = self.can_decrease[None, :] & (flat > self.lower[None, :])
        return up.to(x.device), down.to(x.device)

    def inside(self, x: torch.Tensor) -> torch.Tensor:
        """(N, d) bool on x's device: feature i of input x (N, *shape) lies in the domain [lower_i, upper_i]
        (compared in float64: exact for float32 and float64 inputs). A move from inside may not leave it."""
        flat = x.detach().reshape(x.shape[0], math.prod(x.shape[1:]))  # (an empty batch too)
        lower, upper = (t.to(flat.device, torch.float64)[None, :] for t in (self.lower, self.upper))
        return (flat >= lower) & (flat <= upper)

    def outside(self, x: torch.Tensor, chunk: int = 4096) -> tuple[int, int | None]:
        """(count, first): how many inputs of x (N, *shape) have a feature outside the domain [lower, upper] (often
        corrupt values: a count below 0), and the row of the first (None when none is). Checked ``chunk`` rows
        at a time, so the working memory is bounded whatever N."""
        count, first = 0, None
        for start in range(0, x.shape[0], chunk):
            rows = (~self.inside(x[start : start + chunk])).any(dim=1)
            if first is None and bool(rows.any()):
                first = start + int(torch.nonzero(rows)[0])
            count += int(rows.sum())
        return count, first

    def outside_detail(self, x: torch.Tensor, names: Sequence[str] | None = None) -> str | None:
        """Where one input x (*shape) leaves the domain, in one phrase: its first feature outside [lower, upper], by
        name (``names``, one per flat feature, else :attr:`feature_names`; else ``feature <flat index>``), its value
        and the bound it breaks,
        e.g. ``amount = 200000 > upper 100000``, and how many more of its features are outside; None when x lies
        inside. Values as written in the shortest decimal of x's float type; bounds in raw units."""
        flat = x.detach().reshape(1, -1)
        bad = torch.nonzero(~self.inside(flat)[0]).flatten().tolist()
        if not bad:
            return None
        i = bad[0]
        value, lower, upper = float(flat[0, i]), float(self.lower[i]), float(self.upper[i])
        names = names if names is not None else self.feature_names
        name = names[i] if names is not None and i < len(names) else f"feature {i}"
        side = f"< lower {_decimal(lower)}" if value < lower else f"> upper {_decimal(upper)}"
        more = f" (and {len(bad) - 1} more of its features)" if len(bad) > 1 else ""
        shown = _decimal(value, flat.dtype)
        if lower <= float(shown) <= upper:  # float32 0.1 is 0.10000000149 > 0.1: show what breaks the bound
            shown = repr(value)
        return f"{name} = {shown} {side}{more}"

    def max_movable_scale(self, x: torch.Tensor) -> torch.Tensor:
        """(N,) float64: the largest scale_i over the features input i may move (0 when none may move).

        A move of threat-model size r has raw ℓp size at most r · this, so a raw-unit ℓp certificate
        r_raw gives the threat-model radius r_raw / this (the generic fallback).
        """
        up, down = self.directions(x)
        movable = (up | down).to(self.scale.device)
        scale = self.scale.to(movable.device)[None, :].expand_as(movable)
        return torch.where(movable, scale, torch.zeros_like(scale)).amax(dim=1).to(x.device)

    def project(self, x: torch.Tensor, x_adv: torch.Tensor) -> torch.Tensor:
        """``x_adv`` (N, *shape) moved to the nearest point whose move from ``x`` the threat model allows
        (per coordinate: masks, directions, domain); the size of the move is not touched."""
        shape = x.shape
        xf, af = x.reshape(shape[0], math.prod(shape[1:])), x_adv.reshape(shape[0], math.prod(shape[1:]))
        dev, dt = x.device, x.dtype
        delta = af - xf
        delta = torch.where(self.can_increase.to(dev)[None], delta, delta.clamp(max=0.0))
        delta = torch.where(self.can_decrease.to(dev)[None], delta, delta.clamp(min=0.0))
        lo = (self.lower.to(dev, dt)[None] - xf).clamp(max=0.0)
        hi = (self.upper.to(dev, dt)[None] - xf).clamp(min=0.0)
        return (xf + torch.minimum(torch.maximum(delta, lo), hi)).reshape(shape)

    def units(self) -> str:
        """How radii under this threat model are measured, in one phrase: plain raw input units for one that
        constrains nothing (:meth:`is_empty`: it certifies exactly as no threat model, audit units31 F4; an image
        folder's runs spell theirs out, pixel values / 255), raw input units of constrained moves for unit scales,
        else the threat model's own units."""
        if self.is_empty():
            return "raw input units"
        if bool((self.scale == 1).all()):
            return "raw input units (threat model: constrained moves)"
        return "threat-model units (δ_i / scale_i)"


def _decimal(value: float, dtype: torch.dtype = torch.float64) -> str:
    """A number as a user wrote it: the shortest decimal that reads back as ``value`` in ``dtype`` (float32: its own
    shortest, 0.1 rather than 0.10000000149011612), without a trailing ``.0`` (200000, 1e+20, -0.5)."""
    if dtype == torch.float32 and math.isfinite(value):
        for digits in range(1, 10):
            text = f"{value:.{digits}g}"
            if struct.unpack("f", struct.pack("f", float(text)))[0] == value:
                value = float(text)
                break
    text = repr(value)
    return text[:-2] if text.endswith(".0") else text


def load_threat_model(path: str | Path) -> ThreatModel:
    """Read a threat model from a JSON file.

    Raises:
        ConfigError: the file is missing, not JSON, or not a valid threat model (one line).
    """
    path = Path(path)
    try:
        data = parse_json(read_regular_text(path))
    except FileNotFoundError:
        raise ConfigError(f"threat model file {path} does not exist") from None
    except (OSError, UnicodeDecodeError, JsonTextError) as exc:
        raise ConfigError(f"threat model file {path} is not readable JSON: {exc}") from None
    return ThreatModel.from_dict(data, source=f"threat model {path}")
