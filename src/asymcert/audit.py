"""Soundness audit of a model's certificates: attacks, exact radii and a float64 recomputation.

For each certifier it checks three things, and counts every failure as a *violation*:

1. **Attacks.** Every certified input (binary models: the flagged ones) is attacked with PGD in
   each norm inside (1 − 1e-6)·radius, with several restarts. Any decision flip is a violation
   (a sound certificate admits none). Probabilistic certificates (randomized smoothing) certify
   a smoothed classifier that the attack cannot query; they are reported, not attacked.
2. **Exact radii.** Where the exact distance to the decision boundary is computable
   (:func:`asymcert.certify.exact.exact_radius`: feature-convex models with an affine feature
   map), every certified radius must be ≤ the exact one (relative tolerance 1e-6, the accuracy
   the exact solver guarantees); the tightness certified/exact is reported (median, quartiles).
   With ``exact_milp=True``, φ = [log1p] → shift/standardize → [pair-min] → [hinges] (SpamBase's maps)
   gets exact ℓ∞, ℓ1 and ℓ2 radii too (:mod:`asymcert.certify.exact_linf`: mixed-integer programs, bisection
   on the radius; :mod:`asymcert.certify.exact_lp`: outer approximation of each coordinate's cost and of the
   norm); the compared radius is the size of a verified flip, within 1e-4 of the exact one where the
   bracket closed.
3. **Float precision.** The certificate is recomputed on a float64 copy of the model; the
   radius of the model as run (in its own precision, when the certifier offers that) must not
   exceed the float64 one. Reach-aware radii (``options={"reach": True}``) come from a search whose
   path depends on the precision, so a larger own radius counts only when the float64 bound,
   evaluated at that radius, does not certify it.

Where no exact radius exists (ℓp through log1p or hinges without ``exact_milp``, ℓ∞-dist and
orthogonal nets, …), the **attack bound** says how much a certificate leaves on the table:
per certified input, the smallest move that PGD finds to flip the decision, searched by doubling the
radius from the certified one and then bisecting (:func:`attack_upper_bounds`). Every such move is a
real counterexample, so its size is an upper bound on the exact radius and certified / bound a lower
bound on the tightness; a move found *inside* the certified radius is a violation.

:func:`audit_run` does this for a run folder and writes ``audit.json`` and ``audit.md`` into it
(``asymcert audit DIR`` runs it on the run's test inputs). What a certificate promises is read from
its :class:`~asymcert.certify.result.Guarantee` only.
"""

from __future__ import annotations

import copy
import json
import math
import time
import warnings
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any, cast

import numpy as np
import torch
from torch import nn

from asymcert.certify import certify
from asymcert.certify.api import OUTSIDE, certifier_names, certifier_options
from asymcert.certify.attacks import decision_flips, decisions, pgd_attack
from asymcert.certify.cutting_planes import bracket_radius
from asymcert.certify.exact import ExactRadiusSolver, UnsupportedModelError, _chain_of
from asymcert.certify.exact_linf import ExactBracket, exact_linf_radii
from asymcert.certify.exact_lp import cross_check, exact_l1_radii, exact_l2_radii
from asymcert.certify.result import RAW_UNITS, Certificate, Guarantee, norm_label, normalize_norm, raw_units
from asymcert.certify.threat_attack import move_sizes, threat_attack
from asymcert.certify.threat_model import reach_verified
from asymcert.checkpoint import atomic_write, load
from asymcert.errors import InputError
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.pipeline import CertificateMode, certificate_mode
from asymcert.report.writer import mode_line
from asymcert.runfolder import AUDIT_FILES, RUN_FILE, json_number, read_run_record, warn_if_unfinished
from asymcert.text import first_few
from asymcert.threat import ResolvedThreatModel

__all__ = [
    "AttackBound",
    "AttackOutcome",
    "AuditReport",
    "AuditSettings",
    "ExactCheck",
    "ExactSolve",
    "ExactUnavailable",
    "MethodAudit",
    "NormAudit",
    "PrecisionCheck",
    "Quartiles",
    "attack_upper_bounds",
    "audit",
    "audit_run",
    "write_report",
]

ATTACK_SHRINK = 1e-6  # attacks run inside (1 − ATTACK_SHRINK)·radius
EXACT_RTOL = 1e-6  # certified ≤ exact·(1 + EXACT_RTOL)
EXACT_L2_MAX_VARIABLES = 3000  # ℓ2 exact radii by the interior-point QP only for models this small
EXACT_PROGRAM_MAX_NONZEROS = 1_000_000  # larger constraint matrices (e.g. ICNN 4096 × 784): cutting planes
EXACT_CUTS_TOL = 1e-3  # cutting planes stop when upper ≤ (1 + tol)·lower
EXACT_CUTS_ROUNDS = 400  # the default ICNN 4096 needed at most 233 in ℓ1 on 1000 inputs (benchmarks)
BOUND_GROW_STEPS = 10  # the attack bound's search doubles the radius up to 2**10 × the certified one
BOUND_BISECT_STEPS = 8  # then halves the bracket (in log scale) at least 8 times: hi / lo ≤ 2**(1/256)
ATTACK_CHUNK = 4096
"""Inputs attacked (and their flips re-checked in float64) at once: an attack's working memory (the model's
activations and gradients, the PGD state) is that of this many inputs whatever ``--limit`` is (the inputs, their
attack points and certificates are held whole), as certify's chunks bound its own (session 31: 10⁵ inputs of the
Fashion default were attacked in one batch: 10⁵ × 4096 float32 activations, 1.6 GB, per hidden layer)."""


# ------------------------------------------------------------------------------------ the typed report
# Each part's to_dict() is its JSON object in audit.json, keys in the order audit.json has always had them.


@dataclass(frozen=True)
class Quartiles:
    """Summary of a set of finite values: radii (in the report's units) or ratios of radii (unitless).

    Attributes:
        n: how many values.
        min, q25, median, q75, max: their quantiles 0, 0.25, 0.5, 0.75 and 1.
        mean: their mean.
    """

    n: int
    min: float
    q25: float
    median: float
    q75: float
    max: float
    mean: float

    def to_dict(self) -> dict[str, Any]:
        """``{"n", "min", "q25", "median", "q75", "max", "mean"}``."""
        return _jsonable(asdict(self))


def _quartiles_json(q: Quartiles | None) -> dict[str, Any] | None:
    return None if q is None else q.to_dict()


@dataclass(frozen=True)
class AttackOutcome:
    """The PGD attacks of one norm inside (1 − ATTACK_SHRINK)·radius (:func:`_attack_norm`).

    Attributes:
        attacked: inputs attacked: the certified ones (binary models: flagged) with a positive finite radius.
        unbounded: certified inputs with an infinite radius (not attacked).
        restarts, steps: PGD random restarts, and steps per restart.
        flips: attacked inputs whose promised decision flipped: each one a violation.
        flips_float64: of those, the flips that hold on the model's float64 copy too.
        flipped_rows: indices (into the audited inputs) of the first 20 flips.
        seconds: wall-clock seconds of the attacks; None when nothing was attacked (and then, like
            ``max_norm_over_radius``, not in the JSON).
        max_norm_over_radius: the largest move size / certified radius (≤ 1 − ATTACK_SHRINK; in the radii's units).
    """

    attacked: int
    unbounded: int
    restarts: int
    steps: int
    flips: int = 0
    flips_float64: int = 0
    flipped_rows: list[int] = field(default_factory=list)
    seconds: float | None = None
    max_norm_over_radius: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"attacked", "unbounded", "restarts", "steps", "flips", "flips_float64", "flipped_rows"}``, then
        ``"seconds"`` and ``"max_norm_over_radius"`` when something was attacked."""
        out: dict[str, Any] = {"attacked": self.attacked, "unbounded": self.unbounded, "restarts": self.restarts}
        out.update(steps=self.steps, flips=self.flips, flips_float64=self.flips_float64)
        out["flipped_rows"] = list(self.flipped_rows)
        if self.seconds is not None:
            out.update(seconds=self.seconds, max_norm_over_radius=self.max_norm_over_radius)
        return _jsonable(out)


ATTACK_SKIPPED = "probabilistic certificate of a smoothed classifier"
"""Why a norm's certificates were not attacked (:attr:`NormAudit.attack` None)."""


@dataclass(frozen=True)
class AttackBound:
    """The attack bound of one norm: certified radii against :func:`attack_upper_bounds` (:func:`_attack_bound_entry`).

    Attributes:
        searched: certified inputs searched (positive finite radius; binary models: flagged).
        found: of those, the ones where a flipping move was found (within ``cap`` × the certified radius).
        cap: the largest radius tried, as a multiple of the certified one (2**BOUND_GROW_STEPS).
        upper: the bounds found (the smallest flipping move sizes, in the radii's units); None when none.
        certified_over_upper: certified radius / bound where found (unitless, ≤ 1 when sound); None when none.
        violations: bounds below (1 − ATTACK_SHRINK) × the certified radius.
        violating_rows: indices of the first 20 of them.
        seconds: wall-clock seconds of the search.
    """

    searched: int
    found: int
    cap: int
    upper: Quartiles | None
    certified_over_upper: Quartiles | None
    violations: int
    violating_rows: list[int]
    seconds: float

    def to_dict(self) -> dict[str, Any]:
        """``{"searched", "found", "cap", "upper", "certified_over_upper", "violations", "violating_rows",
        "seconds"}``."""
        out: dict[str, Any] = {"searched": self.searched, "found": self.found, "cap": self.cap}
        out.update(upper=_quartiles_json(self.upper), certified_over_upper=_quartiles_json(self.certified_over_upper))
        out.update(violations=self.violations, violating_rows=list(self.violating_rows), seconds=self.seconds)
        return _jsonable(out)


@dataclass(frozen=True)
class ExactUnavailable:
    """No exact radii in one norm, and why (e.g. ``"exact=False"``, ``"not requested"``, the model's map)."""

    reason: str

    def to_dict(self) -> dict[str, Any]:
        """``{"available": false, "reason"}``."""
        return {"available": False, "reason": self.reason}


@dataclass(frozen=True)
class ExactSolve:
    """The exact radii of one norm and how they were computed: one LP/QP per input (:func:`_exact_one`),
    cutting planes (:func:`_exact_by_cuts`) or mixed-integer brackets (:func:`_exact_milp`).

    Attributes:
        radii: (N,) float the exact radii (cuts and brackets: checked upper ends) in the radii's units, NaN where
            the solver failed; not in the JSON.
        seconds: wall-clock seconds of the solver.
        status: how many inputs ended with each solver status.
        failed: inputs whose solve failed (NaN radius).
        method: how, for cutting planes and mixed-integer brackets (None: one program per input).
        open_brackets: mixed-integer brackets only: inputs whose bracket stayed open.
        not_met: cutting planes only: inputs whose bracket did not meet its tolerance.
        max_relative_gap: the largest (upper − lower) / lower of those (∞ for an open [0, ∞)); None for one program.
    """

    radii: torch.Tensor = field(repr=False, compare=False)
    seconds: float
    status: dict[str, int]
    failed: int
    method: str | None = None
    open_brackets: int | None = None
    not_met: int | None = None
    max_relative_gap: float | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"available": true, ["method"], "seconds", "status", "failed"}``; mixed-integer brackets put
        ``"open_brackets", "max_relative_gap"`` before ``"failed"``, cutting planes ``"not_met",
        "max_relative_gap"`` after it."""
        out: dict[str, Any] = {"available": True}
        if self.method is not None:
            out["method"] = self.method
        out.update(seconds=self.seconds, status=dict(self.status))
        if self.open_brackets is not None:
            out.update(open_brackets=self.open_brackets, max_relative_gap=self.max_relative_gap)
        out["failed"] = self.failed
        if self.not_met is not None:
            out.update(not_met=self.not_met, max_relative_gap=self.max_relative_gap)
        return _jsonable(out)


@dataclass(frozen=True)
class ExactCheck:
    """Certified radii of one norm against the exact ones (:func:`_exact_check`).

    Attributes:
        solve: the exact radii and how they were computed.
        violations: inputs certified beyond the exact radius × (1 + EXACT_RTOL).
        violating_rows: indices of the first 20 of them.
        max_certified_over_exact: the largest certified / exact ratio among them (None when there is none).
        tightness: certified / exact (unitless) where both are positive and finite; None when none.
        exact: the positive finite exact radii (in the radii's units); None when none.
    """

    solve: ExactSolve
    violations: int
    violating_rows: list[int]
    max_certified_over_exact: float | None
    tightness: Quartiles | None
    exact: Quartiles | None

    def to_dict(self) -> dict[str, Any]:
        """The solve's keys (:meth:`ExactSolve.to_dict`), then ``"violations", "violating_rows",
        ["max_certified_over_exact"], "tightness", "exact"``."""
        out = self.solve.to_dict()
        out.update(violations=self.violations, violating_rows=list(self.violating_rows))
        if self.max_certified_over_exact is not None:
            out["max_certified_over_exact"] = self.max_certified_over_exact
        out.update(tightness=_quartiles_json(self.tightness), exact=_quartiles_json(self.exact))
        return _jsonable(out)


@dataclass(frozen=True)
class PrecisionCheck:
    """Radii in the model's own precision against float64 ones, one norm (:func:`_precision_check`).

    Attributes:
        max_ratio_own_over_float64: the largest own / float64 radius where both are positive (unitless); None
            when none, or skipped.
        violations: own radii above the float64 ones (and not certified at that radius by float64).
        violating_rows: indices of the first 20 of them.
        dtype: the model's parameter dtype, e.g. ``"float32"``.
        skipped: why the check was skipped (probabilistic certificates), else None.
    """

    max_ratio_own_over_float64: float | None
    violations: int = 0
    violating_rows: list[int] = field(default_factory=list)
    dtype: str | None = None
    skipped: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """``{"max_ratio_own_over_float64", "violations", "violating_rows", "dtype"}``; skipped:
        ``{"skipped", "max_ratio_own_over_float64", "violations"}``."""
        ratio = self.max_ratio_own_over_float64
        if self.skipped is not None:
            return _jsonable(
                {"skipped": self.skipped, "max_ratio_own_over_float64": ratio, "violations": self.violations}
            )
        out = {"max_ratio_own_over_float64": ratio, "violations": self.violations}
        return _jsonable({**out, "violating_rows": list(self.violating_rows), "dtype": self.dtype})


@dataclass(frozen=True)
class NormAudit:
    """One certifier's checks in one norm.

    Attributes:
        certified: the positive certified radii (in the report's units); None when none.
        attack: (1) the attacks; None when skipped (a probabilistic certificate: :data:`ATTACK_SKIPPED`).
        exact: (2) the comparison with exact radii, or why there are none.
        precision: (3) own precision against float64.
        attack_bound: the smallest flipping moves found, when searched (else None: not in the JSON).
    """

    certified: Quartiles | None
    attack: AttackOutcome | None
    exact: ExactCheck | ExactUnavailable
    precision: PrecisionCheck
    attack_bound: AttackBound | None = None

    @property
    def violations(self) -> int:
        """Every failed check: flips, certified > exact, own > float64, bound < certified."""
        found = self.precision.violations
        found += self.attack.flips if self.attack is not None else 0
        found += self.exact.violations if isinstance(self.exact, ExactCheck) else 0
        return found + (self.attack_bound.violations if self.attack_bound is not None else 0)

    def to_dict(self) -> dict[str, Any]:
        """``{"certified", "violations", "attack", "exact", "precision", ["attack_bound"]}``."""
        attack = {"skipped": ATTACK_SKIPPED} if self.attack is None else self.attack.to_dict()
        out = {"certified": _quartiles_json(self.certified), "violations": self.violations, "attack": attack}
        out.update(exact=self.exact.to_dict(), precision=self.precision.to_dict())
        if self.attack_bound is not None:
            out["attack_bound"] = self.attack_bound.to_dict()
        return _jsonable(out)


@dataclass(frozen=True)
class MethodAudit:
    """One certifier's audit (:func:`_audit_method`).

    Attributes:
        guarantee: what its certificates promise.
        deterministic: False for probabilistic certificates (not attacked, no precision check).
        binary: whether the model is a binary sensitive-class one.
        certify_seconds: wall-clock seconds of its certification of the inputs.
        flagged: binary models: inputs flagged sensitive (else None: not in the JSON).
        labelled: whether labels were given (then the JSON has ``"accuracy"``).
        accuracy: share of inputs whose decision is their label, in [0, 1]; None without labels or inputs.
        norms: per norm label (``"l1"``, ``"l2"``, ``"linf"``, …) its checks.
    """

    guarantee: Guarantee
    deterministic: bool
    binary: bool
    certify_seconds: float
    flagged: int | None
    labelled: bool
    accuracy: float | None
    norms: dict[str, NormAudit]

    @property
    def violations(self) -> int:
        """The violations of every norm."""
        return sum(item.violations for item in self.norms.values())

    def to_dict(self) -> dict[str, Any]:
        """``{"guarantee", "deterministic", "binary", "certify_seconds", ["flagged"], ["accuracy"], "norms",
        "violations"}``."""
        out: dict[str, Any] = {"guarantee": self.guarantee.value, "deterministic": self.deterministic}
        out.update(binary=self.binary, certify_seconds=self.certify_seconds)
        if self.flagged is not None:
            out["flagged"] = self.flagged
        if self.labelled:
            out["accuracy"] = self.accuracy
        out["norms"] = {label: item.to_dict() for label, item in self.norms.items()}
        return _jsonable({**out, "violations": self.violations})


@dataclass(frozen=True)
class AuditSettings:
    """How the audit attacked and compared.

    Attributes:
        restarts, steps: PGD random restarts, and steps per restart.
        seed: seed of the attacks' random starts.
        certifier_options: certifier options by name given to every certificate (genuinely JSON: the options).
        attack_shrink: attacks run inside (1 − attack_shrink)·radius.
        exact_rtol: a certified radius above exact·(1 + exact_rtol) is a violation.
    """

    restarts: int
    steps: int
    seed: int
    certifier_options: dict[str, Any]
    attack_shrink: float = ATTACK_SHRINK
    exact_rtol: float = EXACT_RTOL

    def to_dict(self) -> dict[str, Any]:
        """``{"restarts", "steps", "seed", "attack_shrink", "exact_rtol", "certifier_options"}``."""
        out = {"restarts": self.restarts, "steps": self.steps, "seed": self.seed, "attack_shrink": self.attack_shrink}
        return _jsonable({**out, "exact_rtol": self.exact_rtol, "certifier_options": dict(self.certifier_options)})


@dataclass(frozen=True)
class AuditReport:
    """The audit of a model's certificates (:func:`audit`, :func:`audit_run`): audit.json is :meth:`to_dict`.

    Attributes:
        n_inputs: inputs audited (N).
        model: the model's class name.
        norms: the norm labels audited, e.g. ``["l1", "l2", "linf"]``.
        settings: how it attacked and compared.
        units: the units of every radius (raw input units, or the threat model's).
        methods: per certifier name its audit.
        config: the model's config (genuinely JSON: ``model.config()``); None when it has none.
        seconds: wall-clock seconds of the whole audit.
        run_dir: :func:`audit_run`: the run folder audited (else None, and like the next two not in the JSON).
        certificate_mode: :func:`audit_run`: closed form or reach-aware, under which threat model.
        training_finished: :func:`audit_run`: False when the run's training had not finished.
        files: :func:`audit_run`: the paths of audit.json and audit.md written (not in the JSON).
    """

    n_inputs: int
    model: str
    norms: list[str]
    settings: AuditSettings
    units: str
    methods: dict[str, MethodAudit]
    config: dict[str, Any] | None
    seconds: float
    run_dir: str | None = None
    certificate_mode: CertificateMode | None = None
    training_finished: bool | None = None
    files: list[str] = field(default_factory=list)

    @property
    def violations(self) -> int:
        """The violations of every certifier (0: the certificates held every check)."""
        return sum(entry.violations for entry in self.methods.values())

    def to_dict(self) -> dict[str, Any]:
        """audit.json: ``{"n_inputs", "model", "norms", "settings", "units", "methods", ["config"], "violations",
        "seconds", ["run_dir", "certificate_mode", "training_finished"]}``."""
        out: dict[str, Any] = {"n_inputs": self.n_inputs, "model": self.model, "norms": list(self.norms)}
        out.update(settings=self.settings.to_dict(), units=self.units)
        out["methods"] = {name: entry.to_dict() for name, entry in self.methods.items()}
        if self.config is not None:
            out["config"] = self.config
        out.update(violations=self.violations, seconds=self.seconds)
        if self.run_dir is not None:
            out["run_dir"] = self.run_dir
        if self.certificate_mode is not None:
            out["certificate_mode"] = self.certificate_mode.to_dict()
        if self.training_finished is not None:
            out["training_finished"] = self.training_finished
        return _jsonable(out)


def _quartiles(values: torch.Tensor) -> Quartiles | None:
    """Quartiles of the finite values of ``values`` (any shape), or None when there are none."""
    v = values.double().cpu().numpy()
    v = v[np.isfinite(v)]
    if v.size == 0:
        return None
    q = np.quantile(v, [0.0, 0.25, 0.5, 0.75, 1.0])
    return Quartiles(int(v.size), float(q[0]), float(q[1]), float(q[2]), float(q[3]), float(q[4]), float(v.mean()))


def _certify(
    model: nn.Module,
    x: torch.Tensor,
    norms: tuple[float, ...],
    method: str | None,
    own_precision: bool = False,
    threat_model: ResolvedThreatModel | None = None,
    options: Mapping[str, Any] | None = None,
) -> Certificate:
    """``asymcert.certify`` with certifier ``options``; with ``own_precision`` ask for the model's own dtype
    when the certifier has that option."""
    extra = dict(options or {})
    if own_precision and "precision" in certifier_options(model, method):
        extra["precision"] = "model"
    return certify(model, x, norms, method=method, threat_model=threat_model, **extra)


def _exact_support(model: nn.Module) -> str | None:
    """None when exact radii exist for ``model``, else the reason why not."""

    try:
        _chain_of(copy.deepcopy(model).double().eval())
    except UnsupportedModelError as exc:
        return str(exc)
    return None


class _ClassScore(nn.Module):
    """Score of one class of a multi-score model, s_k(x) (N,): its "flagged as k" decision is s_k > 0."""

    def __init__(self, model: nn.Module, k: int) -> None:
        super().__init__()
        self.model, self.k = model, int(k)
        self.input_range = getattr(model, "input_range", None)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.model(x)[:, self.k]


def _attack_groups(
    model: nn.Module, cert: Certificate, rows: torch.Tensor
) -> list[tuple[nn.Module, torch.Tensor, torch.Tensor]]:
    """(model to attack, rows, decision the certificate promises) groups.

    Multiclass ``Guarantee.FLAG`` certificates (one-vs-rest) promise that the predicted class stays
    *flagged*, so each predicted class is attacked through its own score; every other certificate
    promises that the model's decision stays ``cert.predicted`` (binary: the flag is the decision).
    """
    if cert.guarantee is not Guarantee.FLAG or cert.binary:
        return [(model, rows, cert.predicted[rows].cpu())]
    pred = cert.predicted.cpu()[rows]
    return [
        (_ClassScore(model, int(k)), rows[pred == k], torch.ones(int((pred == k).sum()), dtype=torch.long))
        for k in pred.unique()
    ]


def _attack_norm(
    model: nn.Module,
    x: torch.Tensor,
    cert: Certificate,
    p: float,
    restarts: int,
    steps: int,
    generator: torch.Generator,
    model64: nn.Module | None,
    tm: ResolvedThreatModel | None = None,
) -> AttackOutcome:
    """PGD inside (1 − ATTACK_SHRINK)·radius on every input with a positive finite radius (under ``tm``: only
    the moves it allows, sized in its units); flips of the model and of its float64 copy."""
    radius = cert.radius(p)
    target = cert.sensitive if cert.binary else torch.ones_like(cert.predicted, dtype=torch.bool)
    finite = torch.isfinite(radius)
    rows = torch.nonzero(target.cpu() & (radius.cpu() > 0) & finite.cpu()).flatten()
    unbounded = int((target.cpu() & ~finite.cpu()).sum())
    if rows.numel() == 0:
        return AttackOutcome(int(rows.numel()), unbounded, restarts, steps)
    t0 = time.perf_counter()
    max_ratio, n_flips, n_flips64 = 0.0, 0, 0
    flipped_rows: list[int] = []
    for attacked, grows, promised in _attack_groups(model, cert, rows):
        xs = x[grows]
        eps = radius[grows].double().cpu() * (1.0 - ATTACK_SHRINK)
        spec = _Attack(p, steps, restarts, generator, tm)
        x_adv, flips, norms = _attack_outcome(attacked, xs, eps, promised, spec)
        n_flips += int(flips.sum())
        flipped_rows = (flipped_rows + grows[flips].tolist())[:20]
        if model64 is not None and bool(flips.any()):
            attacked64 = _ClassScore(model64, attacked.k) if isinstance(attacked, _ClassScore) else model64
            on = torch.nonzero(flips).flatten().to(xs.device)
            for c in range(0, len(on), ATTACK_CHUNK):  # (chunked as the attacks: many flips of an unsound run)
                rows64 = on[c : c + ATTACK_CHUNK]
                n_flips64 += int(decision_flips(attacked64, xs[rows64].double(), x_adv[rows64].double()).sum())
        max_ratio = max(max_ratio, float((norms / radius[grows].double().cpu()).max()))
    seconds = time.perf_counter() - t0
    return AttackOutcome(
        int(rows.numel()), unbounded, restarts, steps, n_flips, n_flips64, flipped_rows, seconds, max_ratio
    )


@dataclass(frozen=True)
class _Attack:
    """One attack's settings: the norm p, PGD steps and restarts, the random starts' generator, the threat model."""

    p: float
    steps: int
    restarts: int
    generator: torch.Generator
    tm: ResolvedThreatModel | None


def _attack(
    model: nn.Module, x: torch.Tensor, eps: torch.Tensor, promised: torch.Tensor, spec: _Attack
) -> torch.Tensor:
    """x_adv (N, *shape): PGD in the ℓp ball (inside the model's input range), or the threat model's attack."""
    steps, restarts, generator = spec.steps, spec.restarts, spec.generator
    if spec.tm is not None:  # the attacked inputs are flagged, so the model's own decision is the promised one
        return threat_attack(model, x, eps, spec.p, spec.tm, steps=steps, restarts=restarts, generator=generator)
    return pgd_attack(
        model,
        x,
        eps,
        spec.p,
        steps=steps,
        restarts=restarts,
        targeted_decision=promised.to(x.device),
        input_range=getattr(model, "input_range", None),
        generator=generator,
    )


def _attack_outcome(
    attacked: nn.Module, xs: torch.Tensor, eps: torch.Tensor, promised: torch.Tensor, spec: _Attack
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """PGD within eps (N,) of each input: (x_adv (N, *shape), flips (N,) bool, move sizes (N,) float64), the
    last two on the CPU, :data:`ATTACK_CHUNK` inputs at a time (their random starts drawn in order from the
    spec's generator). A flip is a changed decision or one that differs from ``promised`` (the two agree for a
    sound run); sizes are measured as the certificates are (raw ℓp, or the threat model's units)."""
    if len(xs) <= ATTACK_CHUNK:
        return _attack_chunk(attacked, xs, eps, promised, spec)
    chunks = [slice(i, i + ATTACK_CHUNK) for i in range(0, len(xs), ATTACK_CHUNK)]
    parts = [_attack_chunk(attacked, xs[c], eps[c], promised[c], spec) for c in chunks]
    return torch.cat([p[0] for p in parts]), torch.cat([p[1] for p in parts]), torch.cat([p[2] for p in parts])


def _attack_chunk(
    attacked: nn.Module, xs: torch.Tensor, eps: torch.Tensor, promised: torch.Tensor, spec: _Attack
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """:func:`_attack_outcome` of one chunk of inputs."""
    x_adv = _attack(attacked, xs, eps.to(xs.device), promised, spec)
    flips = decision_flips(attacked, xs, x_adv).cpu() | (decisions(attacked, x_adv).cpu() != promised)
    if spec.tm is None:
        sizes = (x_adv.double() - xs.double()).reshape(len(xs), -1).norm(p=spec.p, dim=1).cpu()
    else:
        sizes = move_sizes(xs, x_adv, spec.tm, spec.p)
    return x_adv, flips, sizes


def _smallest_flip(
    attacked: nn.Module, xs: torch.Tensor, start: torch.Tensor, promised: torch.Tensor, spec: _Attack
) -> torch.Tensor:
    """(N,) float64: the smallest flipping move found from radii ``start`` (N,) > 0 up (:func:`attack_upper_bounds`)."""
    best = torch.full_like(start, math.inf)
    lo, hi = start.clone(), torch.full_like(start, math.inf)  # no flip found at lo; one found at hi
    cap = start * 2.0**BOUND_GROW_STEPS
    for _ in range(BOUND_GROW_STEPS + BOUND_BISECT_STEPS):  # double until a flip, then bisect
        growing = torch.isinf(hi)
        rows = torch.nonzero(~growing | (lo < cap)).flatten()
        if rows.numel() == 0:
            break
        eps = torch.where(growing[rows], 2.0 * lo[rows], torch.sqrt(lo[rows] * hi[rows]))
        _, flips, size = _attack_outcome(attacked, xs[rows], eps, promised[rows], spec)
        found = flips & torch.isfinite(size)
        best[rows] = torch.where(found, torch.minimum(best[rows], size), best[rows])
        hi[rows[found]], lo[rows[~found]] = eps[found], eps[~found]
    return best


def attack_upper_bounds(
    model: nn.Module,
    x: torch.Tensor,
    cert: Certificate,
    p: float,
    steps: int = 100,
    generator: torch.Generator | None = None,
    threat_model: ResolvedThreatModel | None = None,
) -> torch.Tensor:
    """Upper bounds (N,) float64 on the exact radius of every certified input, from real counterexamples.

    Per input with a positive finite radius c (binary models: the flagged ones), PGD (one restart of
    ``steps``) tries radii 2c, 4c, … up to 2**BOUND_GROW_STEPS·c until the decision the certificate
    promises flips, then bisects the last bracket in log scale with the tries left (at least
    BOUND_BISECT_STEPS of BOUND_GROW_STEPS + BOUND_BISECT_STEPS); the bound is
    the size of the smallest flipping move found (measured like the radii: raw ℓp, or in the threat
    model's units, the move allowed by it). A bound below c is a violation of the certificate.

    Returns:
        (N,) float64: the bound, ``inf`` where no flip was found up to the cap, NaN for inputs not
        searched (radius 0 or ∞, or not flagged).
    """
    generator = generator if generator is not None else torch.Generator().manual_seed(0)
    radius = cert.radius(p).double().cpu()
    target = cert.sensitive if cert.binary else torch.ones_like(cert.predicted, dtype=torch.bool)
    rows = torch.nonzero(target.cpu() & (radius > 0) & torch.isfinite(radius)).flatten()
    out = torch.full_like(radius, math.nan)
    for attacked, grows, promised in _attack_groups(model, cert, rows):
        spec = _Attack(p, steps, 1, generator, threat_model)
        out[grows] = _smallest_flip(attacked, x[grows], radius[grows], promised, spec)
    return out


def _attack_bound_entry(r: torch.Tensor, upper: torch.Tensor, seconds: float) -> AttackBound:
    """The audit's attack-bound record: certified radii r (N,) against :func:`attack_upper_bounds` (N,)."""
    searched = ~torch.isnan(upper)
    found = searched & torch.isfinite(upper)
    below = found & (upper < r * (1.0 - ATTACK_SHRINK))
    return AttackBound(
        searched=int(searched.sum()),
        found=int(found.sum()),
        cap=2**BOUND_GROW_STEPS,
        upper=_quartiles(upper[found]),
        certified_over_upper=_quartiles(r[found] / upper[found]),
        violations=int(below.sum()),
        violating_rows=torch.nonzero(below).flatten().tolist()[:20],
        seconds=seconds,
    )


def audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    norms: Iterable[float | str] = (1, 2, math.inf),
    restarts: int = 3,
    steps: int = 100,
    exact: bool = True,
    methods: Iterable[str] | None = None,
    exact_norms: Iterable[float | str] | None = None,
    seed: int = 0,
    exact_time_limit: float | None = 60.0,
    threads: int | None = 1,
    threat_model: ResolvedThreatModel | None = None,
    attack_bounds: bool | None = None,
    options: Mapping[str, Any] | None = None,
    exact_milp: bool = False,
) -> AuditReport:
    """Audit a model's certificates on inputs ``x`` (see the module docstring).

    Args:
        model: any asymcert model (it must declare ``certifier``, or pass ``methods``).
        x: (N, *input_shape) inputs in raw units.
        y: (N,) labels (optional; only used to report accuracy).
        norms: ℓp norms to audit.
        restarts, steps: PGD restarts and steps per norm.
        exact: compare with exact radii where they exist.
        methods: certifier names to audit (default: the model's own ``certifier``).
        exact_norms: norms for which exact radii are computed (default: ℓ1 and ℓ∞, plus ℓ2 when
            the model is small enough for the per-input quadratic program to be quick).
        seed: seed of the attacks' random starts.
        exact_time_limit: seconds allowed per input and norm for the exact radius.
        threads: torch threads during the audit, restored after (default 1: the work is many
            small batches, for which extra threads cost more than they save, 8× on a busy
            2-core machine); None keeps the current setting.
        threat_model: audit the certificates under this threat model: attacks move only what it
            allows, exact radii respect it, radii are in its units.
        attack_bounds: search every certified input's smallest flipping move
            (:func:`attack_upper_bounds`, one restart of ``steps``): True for every norm, False for
            none, None (default) for the norms without exact radii.
        options: certifier options by name for every certificate audited (e.g. ``{"reach": True}``);
            the float64 recomputation gets them too.
        exact_milp: where φ is not affine but [log1p] → shift/standardize → [pair-min] → [hinges]
            (SpamBase's maps), bracket the exact ℓ∞, ℓ1 and ℓ2 radii by mixed-integer programs
            (:mod:`asymcert.certify.exact_linf`: 0.3 s per flagged email of SpamBase's default;
            :mod:`asymcert.certify.exact_lp`: seconds each; up to ``exact_time_limit`` per input and norm);
            the verified upper ends are the exact radii compared.
    Returns:
        The :class:`AuditReport`: ``.violations``, and per certifier (``.methods[name]``) and norm label
        (``.norms["linf"]``) the attack, exact and precision checks; radii in raw input units, or the threat
        model's. ``.to_dict()`` is its JSON (``audit.json``).
    """
    saved_threads = torch.get_num_threads()
    if threads is not None:
        torch.set_num_threads(max(1, int(threads)))
    try:
        checks = _Checks(
            restarts,
            steps,
            exact,
            exact_norms,
            exact_time_limit,
            threat_model,
            attack_bounds,
            dict(options or {}),
            exact_milp,
        )
        return _audit(model, x, y, norms, methods, seed, checks)
    finally:
        torch.set_num_threads(saved_threads)


@dataclass(frozen=True)
class _Checks:
    """What :func:`audit` checks, as it takes them (see its arguments)."""

    restarts: int
    steps: int
    exact: bool
    exact_norms: Iterable[float | str] | None
    exact_time_limit: float | None
    threat_model: ResolvedThreatModel | None
    attack_bounds: bool | None
    options: Mapping[str, Any] = field(default_factory=dict)
    exact_milp: bool = False


def _audit(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor | None,
    norms: Iterable[float | str],
    methods: Iterable[str] | None,
    seed: int,
    checks: _Checks,
) -> AuditReport:
    """The audit of :func:`audit` (arguments checked there): attacks, exact radii and precision per method."""
    restarts, steps, tm = checks.restarts, checks.steps, checks.threat_model
    t_start = time.perf_counter()
    norms_t = tuple(dict.fromkeys(normalize_norm(p) for p in norms))
    declared = getattr(model, "certifier", None)
    if methods is None and declared is None:
        raise InputError(f"{type(model).__name__} declares no certifier; pass methods=[...]")
    methods_t: tuple[str, ...] = tuple(methods) if methods is not None else (str(declared),)
    was_training = model.training
    model.eval()
    settings = AuditSettings(restarts, steps, seed, dict(checks.options))
    config = getattr(model, "config", None)
    config_json = config() if config is not None else None
    # exact radii are a property of the model: compute them once, for every method
    exact = _exact_radii(model, x, norms_t, checks)
    run = _MethodRun(
        model,
        copy.deepcopy(model).double().eval(),
        x,
        norms_t,
        restarts,
        steps,
        torch.Generator().manual_seed(int(seed)),
        exact,
        tm,
        checks.attack_bounds,
        checks.options,
    )
    audited: dict[str, MethodAudit] = {}
    try:
        for method in methods_t:
            audited[method] = _audit_method(run, method, y)
    finally:
        model.train(was_training)
    units = RAW_UNITS if tm is None else tm.units()
    labels = [norm_label(p) for p in norms_t]
    seconds = time.perf_counter() - t_start
    return AuditReport(int(x.shape[0]), type(model).__name__, labels, settings, units, audited, config_json, seconds)


def _exact_radii(
    model: nn.Module, x: torch.Tensor, norms: tuple[float, ...], checks: _Checks
) -> dict[float, ExactSolve | ExactUnavailable]:
    """Per norm the exact radii (N,) where a solver applies and was asked for, or why there are none."""
    if not checks.exact:
        return {p: ExactUnavailable("exact=False") for p in norms}
    tm, time_limit = checks.threat_model, checks.exact_time_limit
    reason = _exact_support(model)
    if reason is not None:
        info: dict[float, ExactSolve | ExactUnavailable] = {p: ExactUnavailable(reason) for p in norms}
        milp = [p for p in norms if checks.exact_milp and p in MILP_BRACKETS]
        found = {p: _milp_bracket(model, x, p, time_limit, tm) for p in milp}
        cross_check({p: f for p, f in found.items() if isinstance(f, ExactBracket)})
        for p, f in found.items():
            info[p] = f if isinstance(f, ExactUnavailable) else _exact_milp(f, MILP_BRACKETS[p][1])
        return info
    wanted = None if checks.exact_norms is None else {normalize_norm(p) for p in checks.exact_norms}
    return {p: _exact_one(model, x, p, wanted, time_limit, tm) for p in norms}


MILP_BRACKETS = {
    math.inf: (exact_linf_radii, "bisection on r"),
    1.0: (exact_l1_radii, "outer approximation of the costs"),
    2.0: (exact_l2_radii, "outer approximation of the costs and the norm"),
}
"""The norms whose exact radii ``exact_milp`` brackets through non-affine φ, and how."""


def _milp_bracket(
    model: nn.Module, x: torch.Tensor, p: float, time_limit: float | None, tm: ResolvedThreatModel | None
) -> ExactBracket | ExactUnavailable:
    """Exact ℓp brackets (ℓ∞, ℓ1 or ℓ2) of x by mixed-integer programs (:data:`MILP_BRACKETS`), or why not."""
    try:
        return MILP_BRACKETS[p][0](model, x, tm, time_limit=60.0 if time_limit is None else time_limit)
    except UnsupportedModelError as exc:
        return ExactUnavailable(str(exc))


def _exact_milp(found: ExactBracket, how: str) -> ExactSolve:
    """The verified upper ends (N,) of ``found`` with statuses, inputs whose bracket stayed open and the largest
    relative gap; ``how`` names the method."""
    statuses = dict(Counter(found.status))
    finite = torch.isfinite(found.hi) & (found.lo > 0)
    gap = ((found.hi - found.lo) / found.lo)[finite]
    is_open = torch.tensor([s not in ("exact", "no flip", "not flagged") for s in found.status], dtype=torch.bool)
    # (an open bracket [0, ∞), e.g. "not bracketed: … scales span …", has an infinite gap, not none: review 30)
    unbounded = bool((is_open & ~finite.cpu()).any())
    return ExactSolve(
        found.hi,
        found.seconds,
        statuses,
        failed=0,
        method=f"mixed-integer programs, {how}",
        open_brackets=int(is_open.sum()),
        max_relative_gap=math.inf if unbounded else (float(gap.max()) if gap.numel() else 0.0),
    )


def _exact_one(
    model: nn.Module,
    x: torch.Tensor,
    p: float,
    wanted: set[float] | None,
    time_limit: float | None,
    tm: ResolvedThreatModel | None = None,
) -> ExactSolve | ExactUnavailable:
    """Exact ℓp radii (N,) of ``x`` with solver statuses, failures and seconds, or why there are none."""
    if p not in (1.0, 2.0, math.inf) or (wanted is not None and p not in wanted):
        return ExactUnavailable("not requested" if p in (1.0, 2.0, math.inf) else f"no exact solver for ℓ{p:g}")
    solver = ExactRadiusSolver(model, p) if tm is None else ExactRadiusSolver(model, p, threat_model=tm)
    large_l2 = wanted is None and p == 2.0 and solver.n_var > EXACT_L2_MAX_VARIABLES
    if large_l2 or solver.G.nnz > EXACT_PROGRAM_MAX_NONZEROS:
        return _exact_by_cuts(model, x, p, time_limit, tm)
    t0 = time.perf_counter()
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)
            res = solver.solve(x, time_limit=time_limit)
    except ImportError as exc:  # the LP/QP solver package is not installed
        return ExactUnavailable(str(exc))
    statuses = dict(Counter(res.status))
    seconds = time.perf_counter() - t0
    return ExactSolve(res.radii.cpu(), seconds, statuses, failed=int(torch.isnan(res.radii).sum()))


def _exact_by_cuts(
    model: nn.Module, x: torch.Tensor, p: float, time_limit: float | None, tm: ResolvedThreatModel | None
) -> ExactSolve:
    """Exact ℓp radii bracketed by cutting planes (:func:`~asymcert.certify.cutting_planes.bracket_radius`)
    for models whose one-program LP/QP is too large.

    Returns the (N,) upper bounds as radii, each the size of a perturbation checked to reach s ≤ 0 on the
    float64 model, so a certified radius above one is a real violation; where the bracket met
    (upper ≤ (1 + tol)·lower) it is the exact radius to that tolerance. The description counts the
    inputs whose bracket did not meet and the largest relative gap.
    """
    limit = None if time_limit is None else time_limit * max(1, int(x.shape[0]))
    t0 = time.perf_counter()
    fc = cast(FeatureConvexClassifier, model)  # _exact_support admitted it: a feature-convex chain
    res = bracket_radius(fc, x, p, EXACT_CUTS_TOL, EXACT_CUTS_ROUNDS, limit, threat_model=tm)
    statuses = dict(Counter(res.status))
    open_ = (res.upper > 0) & torch.isfinite(res.upper) & (res.upper > (1 + EXACT_CUTS_TOL) * res.lower)
    gap = (res.upper[open_] / res.lower[open_].clamp_min(1e-300) - 1) if open_.any() else torch.zeros(0)
    return ExactSolve(
        res.upper.cpu(),
        time.perf_counter() - t0,
        statuses,
        failed=0,
        method=f"cutting planes (tol {EXACT_CUTS_TOL:g}, ≤ {EXACT_CUTS_ROUNDS} rounds): exact = checked upper bound",
        not_met=int(open_.sum()),
        max_relative_gap=float(gap.max()) if gap.numel() else 0.0,
    )


@dataclass
class _MethodRun:
    """What every audited method shares: the model and its float64 copy, the inputs (N, *shape), norms,
    attack settings with one generator (drawn from in method and norm order), and the exact radii."""

    model: nn.Module
    model64: nn.Module
    x: torch.Tensor
    norms: tuple[float, ...]
    restarts: int
    steps: int
    generator: torch.Generator
    exact: dict[float, ExactSolve | ExactUnavailable]  # per norm: the exact radii (N,), or why none
    threat_model: ResolvedThreatModel | None = None
    attack_bounds: bool | None = None  # None: for the norms without exact radii
    options: Mapping[str, Any] = field(default_factory=dict)  # certifier options for every certificate

    def wants_bound(self, p: float) -> bool:
        """Whether the attack bound is searched in norm p."""
        return self.attack_bounds if self.attack_bounds is not None else not isinstance(self.exact[p], ExactSolve)


def _audit_method(run: _MethodRun, method: str, y: torch.Tensor | None) -> MethodAudit:
    """One certifier's entry: its guarantee, accuracy, and per norm the attack, exact and precision checks."""
    tm = run.threat_model
    cert = _certify(run.model, run.x, run.norms, method, threat_model=tm, options=run.options)
    probabilistic = cert.guarantee is Guarantee.PROBABILISTIC
    own = sixty_four = None
    if not probabilistic:  # (a probabilistic certificate is random: nothing to compare exactly)
        with warnings.catch_warnings():  # the same inputs: warned about once, above (review s34 ovr F5)
            warnings.filterwarnings("ignore", message=f".*{OUTSIDE}")
            own = _certify(run.model, run.x, run.norms, method, True, threat_model=tm, options=run.options)
            sixty_four = _certify(run.model64, run.x.double(), run.norms, method, threat_model=tm, options=run.options)
    flagged = int(cert.sensitive.sum()) if cert.binary else None
    accuracy = None
    if y is not None and len(y):
        accuracy = float((cert.predicted.cpu() == y.cpu().long()).double().mean())
    norms = {norm_label(p): _audit_norm(run, cert, own, sixty_four, p) for p in run.norms}
    binary = bool(cert.binary)
    return MethodAudit(cert.guarantee, not probabilistic, binary, cert.seconds, flagged, y is not None, accuracy, norms)


def _audit_norm(
    run: _MethodRun, cert: Certificate, own: Certificate | None, sixty_four: Certificate | None, p: float
) -> NormAudit:
    """One norm's checks of a certificate ``cert`` (``own``/``sixty_four``: its own-precision and float64
    recomputations, None for a probabilistic one): attacks, exact radii, precision, and the attack bound."""
    tm = run.threat_model
    r = cert.radius(p).double().cpu()
    attack = None
    if own is not None and sixty_four is not None:  # (1) attacks
        attack = _attack_norm(run.model, run.x, cert, p, run.restarts, run.steps, run.generator, run.model64, tm)
    exact = _exact_check(r, run.exact[p])  # (2) exact radii
    verified = _reach_verified(run, own, p)
    precision = _precision_check(own, sixty_four, p, run.model, verified)  # (3) own vs float64
    bound = None
    if own is not None and run.wants_bound(p):  # how far the certificate is from a counterexample
        t0 = time.perf_counter()
        upper = attack_upper_bounds(run.model, run.x, cert, p, run.steps, run.generator, tm)
        bound = _attack_bound_entry(r, upper, time.perf_counter() - t0)
    return NormAudit(_quartiles(r[r > 0]), attack, exact, precision, bound)


def _exact_check(r: torch.Tensor, info: ExactSolve | ExactUnavailable) -> ExactCheck | ExactUnavailable:
    """Certified radii (N,) against exact ones: violations (certified > exact·(1 + rtol)), tightness quartiles."""
    if isinstance(info, ExactUnavailable):
        return info
    ex = info.radii
    ok = torch.isfinite(ex) | torch.isinf(ex)  # NaN: the solver failed on that input
    bad = ok & (r > ex * (1.0 + EXACT_RTOL)) & (r > 0)
    worst = float((r[bad] / ex[bad]).max()) if bad.any() else None
    both = (r > 0) & (ex > 0) & torch.isfinite(ex)
    return ExactCheck(
        info,
        violations=int(bad.sum()),
        violating_rows=torch.nonzero(bad).flatten().tolist()[:20],
        max_certified_over_exact=worst,
        tightness=_quartiles(r[both] / ex[both]),
        exact=_quartiles(ex[(ex > 0) & torch.isfinite(ex)]),
    )


def _reach_verified(run: _MethodRun, own: Certificate | None, p: float) -> torch.Tensor | None:
    """For reach-aware radii (a search whose path depends on the precision): (N,) bool, whether the float64
    bound certifies each own-precision radius at that radius (:func:`reach_verified`); else None."""
    model, tm = run.model, run.threat_model
    if own is None or tm is None or not run.options.get("reach") or not isinstance(model, FeatureConvexClassifier):
        return None
    found = reach_verified(model, run.x, tm, {p: own.radius(p).double()})
    return None if found is None else found[p].cpu()


def _precision_check(
    own: Certificate | None,
    sixty_four: Certificate | None,
    p: float,
    model: nn.Module,
    verified: torch.Tensor | None = None,
) -> PrecisionCheck:
    """Radii in the model's own precision against float64 ones: a larger own radius is a violation, unless
    ``verified`` (N,) says a float64 evaluation certifies it at that radius (searched radii)."""
    if own is None or sixty_four is None:
        return PrecisionCheck(None, 0, skipped="probabilistic certificate")
    r_own, r64 = own.radius(p).double().cpu(), sixty_four.radius(p).double().cpu()
    worse = (r_own > r64) & (r_own > 0)
    if verified is not None:
        worse &= ~verified
    pos = (r_own > 0) & (r64 > 0)
    dtype = next((q.dtype for q in model.parameters()), torch.float32)
    return PrecisionCheck(
        max_ratio_own_over_float64=float((r_own[pos] / r64[pos]).max()) if pos.any() else None,
        violations=int(worse.sum()),
        violating_rows=torch.nonzero(worse).flatten().tolist()[:20],
        dtype=str(dtype).removeprefix("torch."),
    )


def _jsonable(obj: Any) -> Any:
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, float):
        return json_number(obj)
    if isinstance(obj, (np.floating, np.integer)):
        return _jsonable(obj.item())
    return obj


def _fmt(v: Any, digits: int = 4) -> str:
    if v is None:
        return "–"
    if isinstance(v, float):
        return f"{v:.{digits}g}"
    return str(v)


def _markdown(report: AuditReport) -> str:
    """audit.md: the verdict, the settings, and per certifier a table of its checks by norm."""
    verdict = "no violations" if report.violations == 0 else f"**{report.violations} violation(s)**"
    settings = report.settings
    lines = [
        f"# Certificate audit: {verdict}",
        "",
        f"{report.n_inputs} inputs, model `{report.model}`, attacks: PGD, "
        f"{settings.restarts} restarts × {settings.steps} steps inside "
        f"(1 − {settings.attack_shrink:g})·radius. Radii in {report.units}.",
        "",
        _mode_text(report),
        "",
        *(
            ["Note: the run's training has not finished: this audits the best epoch saved so far.", ""]
            if report.training_finished is False
            else []
        ),
    ]
    for method, entry in report.methods.items():
        kind = f"{entry.guarantee.value} guarantee"
        lines += [f"## `{method}` ({kind}): {entry.violations} violation(s)", ""]
        if entry.flagged is not None:
            lines.append(f"Flagged sensitive: {entry.flagged} of {report.n_inputs}.")
        if entry.accuracy is not None:
            lines.append(f"Accuracy: {entry.accuracy:.4f}.")
        lines += [
            "",
            "| norm | certified median | attacked | flips | exact | certified > exact | "
            "tightness q25 / median / q75 | own/float64 max | precision violations |",
            "|---|---|---|---|---|---|---|---|---|",
        ]
        reasons = _exact_reasons(entry.norms)
        lines += [_norm_row(label, item) for label, item in entry.norms.items()]
        lines += [""] + [f"Exact radii not computed for {n}: {reason}." for reason, n in reasons.items()]
        bounds = {label: item.attack_bound for label, item in entry.norms.items() if item.attack_bound is not None}
        offers = method in certifier_names() and "reach" in certifier_options(None, method)
        lines += [""] * bool(reasons) + _bound_table(bounds, _reach(report), offers)
    lines.append(f"Audit time: {report.seconds:.1f} s.")
    return "\n".join(lines) + "\n"


def _mode_text(report: AuditReport) -> str:
    """How the audited certificates were computed: :func:`~asymcert.report.writer.mode_line` of the run's
    certificate mode (:func:`audit_run`), else (an audit of a model, not a run) closed form or reach-aware."""
    if report.certificate_mode is not None:
        return mode_line(report.certificate_mode)
    return "Certificates: " + ("reach-aware radii (`reach`)." if _reach(report) else "closed-form radii.")


def _reach(report: AuditReport) -> bool:
    """Whether the audited certificates are reach-aware (the run's certificate mode, else the certifier options)."""
    if report.certificate_mode is not None:
        return report.certificate_mode.reach
    return bool(report.settings.certifier_options.get("reach"))


def _quartile_text(t: Quartiles | None) -> str:
    """``q25 / median / q75`` of quartiles, or – when there are none."""
    return f"{_fmt(t.q25)} / {_fmt(t.median)} / {_fmt(t.q75)}" if t is not None else "–"


def _exact_reasons(norms: dict[str, NormAudit]) -> dict[str, str]:
    """Why exact radii are missing, reason → the norms it holds for ("n/a" rows point here: said once)."""
    out: dict[str, list[str]] = {}
    for label, item in norms.items():
        if isinstance(item.exact, ExactUnavailable):
            out.setdefault(item.exact.reason, []).append(label)
    return {reason: ", ".join(labels) for reason, labels in out.items()}


def _norm_row(label: str, item: NormAudit) -> str:
    """One norm's row of the audit table: attacks, exact radii (a missing one points to its reason, said once below
    the table), precision."""
    att, ex, pr = item.attack, item.exact, item.precision
    cert_med = item.certified.median if item.certified is not None else None
    if att is None:
        attacked, flips = "skipped", "–"
    else:
        attacked, flips = str(att.attacked), str(att.flips)
    if isinstance(ex, ExactCheck):
        solve = ex.solve
        ex_s = f"{solve.seconds:.1f} s" + (f", {solve.failed} failed" if solve.failed else "")
        if solve.not_met is not None:  # cutting planes: the exact column is a checked upper bound
            ex_s += f", cuts ({solve.not_met} open, max gap {solve.max_relative_gap:.2g})"
        elif solve.open_brackets:  # mixed-integer brackets left open: compared with their verified flips
            ex_s += (
                f", {solve.open_brackets} brackets open (max gap {solve.max_relative_gap:.2g}; "
                "tightness against a verified flip)"
            )
        tight = _quartile_text(ex.tightness)
        ex_v = str(ex.violations)
    else:
        ex_s, tight, ex_v = "n/a (below)", "–", "–"
    return (
        f"| {label} | {_fmt(cert_med)} | {attacked} | {flips} | {ex_s} | {ex_v} | {tight} | "
        f"{_fmt(pr.max_ratio_own_over_float64, 10)} | {pr.violations} |"
    )


def _bound_table(bounds: dict[str, AttackBound], reach: bool = False, offers_reach: bool = True) -> list[str]:
    """The attack-bound table of the norms with a bound, by norm label (lines, ending with a blank one), or
    nothing when there are none; a note when closed-form (not ``reach``-aware) radii are far below the bounds
    (:func:`_loose_note`; pointing to reach-aware radii when the certifier ``offers_reach``)."""
    rows = list(bounds.items())
    if not rows:
        return []
    lines = [
        "Attack bound: the smallest flipping move PGD found (a real counterexample, so an upper bound on",
        "the exact radius; certified / bound is a lower bound on the tightness). Bound below the certified",
        "radius = violation.",
        "",
        "| norm | searched | flip found (≤ cap × certified) | bound median | certified / bound q25 / median / q75 | "
        "bound < certified |",
        "|---|---|---|---|---|---|",
    ]
    for label, b in rows:
        tight, median = _quartile_text(b.certified_over_upper), b.upper.median if b.upper is not None else None
        lines.append(
            f"| {label} | {b.searched} | {b.found} (cap {b.cap}) | {_fmt(median)} | {tight} | {b.violations} |"
        )
    return lines + [""] + _loose_note(rows, reach, offers_reach)


LOOSE_TIGHTNESS = 0.2  # below this median certified / attack bound, audit.md points to reach-aware radii


def _loose_note(rows: list[tuple[str, AttackBound]], reach: bool, offers_reach: bool = True) -> list[str]:
    """A "Note:" line (and a blank one) when closed-form radii are under LOOSE_TIGHTNESS of the smallest flip PGD
    found in some norm (walkthrough 28b: 0.045–0.058 on counts in the thousands), else nothing; it points to
    reach-aware radii only when the certifier ``offers_reach`` (review s34 ovr F5: one-vs-rest refuses them)."""
    loose = [
        (label, b.certified_over_upper.median)
        for label, b in rows
        if b.certified_over_upper is not None and b.certified_over_upper.median < LOOSE_TIGHTNESS
    ]
    if reach or not loose:
        return []
    shown = first_few(loose, 3, lambda item: f"{item[0]} {_fmt(item[1], 2)}")
    advice = (
        " Reach-aware radii (`asymcert certify RUN --reach`, `asymcert audit RUN --reach`) take φ's slopes only over "
        "what a move can reach, and are often much larger where φ bends strongly, as log1p does on large raw values "
        "(README, `certify --reach`)."
    )
    return [
        f"Note: the closed-form radii are under a fifth of the smallest flip PGD found (median certified / bound: "
        f"{shown}).{advice if offers_reach else ''}",
        "",
    ]


def write_report(report: AuditReport, folder: str | Path) -> tuple[Path, Path]:
    """Write ``audit.json`` (:meth:`AuditReport.to_dict`) and ``audit.md`` into ``folder``; returns their paths."""
    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    js, md = (folder / name for name in AUDIT_FILES)
    text, markdown = json.dumps(report.to_dict(), indent=2) + "\n", _markdown(report)
    atomic_write(js, lambda tmp: tmp.write_text(text))  # a crash leaves the old file or the new, never half of one
    atomic_write(md, lambda tmp: tmp.write_text(markdown))
    return js, md


def audit_run(
    run_dir: str | Path,
    x: torch.Tensor,
    y: torch.Tensor | None = None,
    threat_model_file: str | None = None,
    **options: Any,
) -> AuditReport:
    """Audit the model of a run folder on inputs ``x`` and write ``audit.json``/``audit.md`` there.

    ``asymcert audit DIR`` calls this with the run's test inputs (:func:`asymcert.pipeline.run_data`).

    Args:
        run_dir: a run folder (``model.safetensors`` loaded with :func:`asymcert.load`).
        x, y: inputs (N, *input_shape) in raw units and (N,) labels (optional).
        threat_model_file: the file ``threat_model`` was read from (``--threat-model FILE``), named in audit.md.
        **options: passed to :func:`audit` (norms, restarts, steps, exact, threat_model, options, ...).
    Returns:
        The :class:`AuditReport` (``.violations``; ``.certificate_mode``: closed form or reach-aware, under the
        run's own threat model, another one or none, :class:`~asymcert.pipeline.CertificateMode`), with
        ``.run_dir``, ``.training_finished`` and ``.files``: the two paths written.
    """
    run_dir = Path(run_dir)
    record = read_run_record(run_dir) if (run_dir / RUN_FILE).is_file() else None  # a model folder: none
    if record is not None:
        warn_if_unfinished(record, run_dir)
    own = record.threat_model if record is not None else None
    unfinished = record is not None and record.training is None
    model = load(run_dir)
    report = audit(model, x, y, **options)
    tm: ResolvedThreatModel | None = options.get("threat_model")
    reach = bool((options.get("options") or {}).get("reach", False))
    mode = certificate_mode(own, tm, reach, threat_model_file)
    units = report.units
    if tm is None and record is not None:  # an image folder's pixels / 255 (audit units30 F6)
        units = raw_units(record.task)
    report = replace(report, units=units, run_dir=str(run_dir), certificate_mode=mode, training_finished=not unfinished)
    js, md = write_report(report, run_dir)
    return replace(report, files=[str(js), str(md)])
