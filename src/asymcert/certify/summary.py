"""The typed numbers of a set of certificates and of a run's report: what ``results.json`` holds.

:class:`CertifiedSummary` is what :func:`asymcert.report.writer.summarize` computes from certificates and their
labels (also the per-method numbers of ``compare.json`` and of a class-pair sweep); :class:`RunResults` adds what
the run report knows besides (:func:`asymcert.report.writer.write_report`), and its :meth:`RunResults.to_dict`
is ``results.json``. They live here, below :mod:`asymcert.pipeline` and :mod:`asymcert.report`, so that the
pipeline can type what its reporter returns without importing the report.

Units: radii are in the certificates' units (:attr:`CertifiedSummary.units`: raw input units, or a threat model's
δ_i / scale_i); accuracies and rates are shares in [0, 1]; times are seconds of wall clock.

>>> s = CertifiedSummary("feature-convex", Guarantee.FLAG, None, 4, "raw input units", 0.75, 0.002,
...                      {"l2": NormSummary((0.5, float("inf")), (0.5, 0.25), 1.5)}, Detection(2, 1.0, 0.5))
>>> s.to_dict()["certified_accuracy"], s.certify_seconds_per_input
({'l2': {'0.5': 0.5, 'inf': 0.25}}, 0.0005)
>>> RunResults(s, certificate_mode=None).to_dict()["median_radius"]
{'l2': 1.5}
>>> CertifiedSummary.from_dict(s.to_dict()) == s, RunResults.from_dict(RunResults(s).to_dict()) == RunResults(s)
(True, True)
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import asdict, dataclass, field, fields
from typing import Any

from asymcert.certify.result import Guarantee
from asymcert.jsontext import typed
from asymcert.runfolder import CertificateMode, json_number

__all__ = ["CertifiedSummary", "Detection", "FlagShares", "NormSummary", "RunResults"]


@dataclass(frozen=True)
class NormSummary:
    """One ℓp norm's figures: certified accuracy at the report radii, and the median certified radius.

    Attributes:
        radii: (R,) the report radii r, in the certificates' units, in the order given (``math.inf``: every radius).
        accuracy: (R,) certified accuracy at each radius, a share in [0, 1]
            (:func:`~asymcert.report.metrics.certified_accuracy`).
        median_radius: the median certified radius of the pool (correctly flagged sensitive-class inputs of a binary
            model, correctly classified inputs otherwise), in the certificates' units (``math.inf`` possible;
            0.0 for an empty pool).
    """

    radii: tuple[float, ...]
    accuracy: tuple[float, ...]
    median_radius: float

    def table(self) -> dict[str, float]:
        """Radius label → certified accuracy, as ``results.json``'s ``certified_accuracy`` holds it: the label is
        ``f"{r:g}"`` (``"0.5"``, ``"inf"``); a radius given twice is one entry (its last accuracy)."""
        return {f"{r:g}": a for r, a in zip(self.radii, self.accuracy)}

    @classmethod
    def from_table(cls, table: Mapping[str, Any], median_radius: float) -> NormSummary:
        """The figures :meth:`table` gave ``table`` (radii read back from their labels: ``float("0.5")``,
        ``float("inf")``) and ``median_radius``; an accuracy a strict JSON file holds as null is NaN.

        Raises:
            ValueError, TypeError: ``table`` is not such an object (a label not a number, an accuracy not one).
        """
        table = _object(table, "a certified-accuracy table")
        return cls(tuple(float(r) for r in table), tuple(_number(a, math.nan) for a in table.values()), median_radius)


@dataclass(frozen=True)
class Detection:
    """The flag rates of a binary (sensitive-class) model on its test inputs.

    Attributes:
        n_sensitive: test inputs of the sensitive class (label 1).
        sensitive_flagged_correctly: share of them flagged sensitive (the detection rate), in [0, 1].
        false_positive_rate: share of the other class's test inputs flagged sensitive, in [0, 1].
    """

    n_sensitive: int
    sensitive_flagged_correctly: float
    false_positive_rate: float


@dataclass(frozen=True)
class FlagShares:
    """How many classes a one-vs-rest model flags (s_k > 0) per test input: shares of the test inputs, in [0, 1].

    Attributes:
        none, one, several: inputs flagged by no class, exactly one, more than one.
        true_class: inputs whose true class is among those flagging them.
    """

    none: float
    one: float
    several: float
    true_class: float


@dataclass(frozen=True)
class CertifiedSummary:
    """Clean and certified accuracy of N certificates against their labels, and the time certifying took.

    Attributes:
        method: the certifier's name (``Certificate.method``).
        guarantee: what a radius promises (``Certificate.guarantee``).
        alpha: failure probability of a probabilistic guarantee, in (0, 1); None for a deterministic one.
        n_inputs: N, the certified inputs.
        units: what the radii are measured in (``Certificate.units``): raw input units, or a threat model's units.
        clean_accuracy: share of the N inputs whose decision equals the label, in [0, 1].
        certify_seconds_total: wall-clock seconds certifying the N inputs took.
        norms: norm label (``"l1"``, ``"l2"``, ``"linf"``) → that norm's figures, for every norm certified.
        detection: the flag rates of a binary model (None for a multi-class one).
        flags: how many classes flag each input, for a one-vs-rest (multi-class ``Guarantee.FLAG``) model; else None.
    """

    method: str
    guarantee: Guarantee
    alpha: float | None
    n_inputs: int
    units: str
    clean_accuracy: float
    certify_seconds_total: float
    norms: dict[str, NormSummary] = field(default_factory=dict)
    detection: Detection | None = None
    flags: FlagShares | None = None

    @property
    def deterministic(self) -> bool:
        """True unless the guarantee holds only with probability 1 − ``alpha``."""
        return self.guarantee is not Guarantee.PROBABILISTIC

    @property
    def certify_seconds_per_input(self) -> float:
        """Wall-clock seconds of certification per input (the total over max(1, N))."""
        return self.certify_seconds_total / max(1, self.n_inputs)

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of these numbers (a ``compare.json`` method's, the first keys of ``results.json``):
        ``guarantee`` is the guarantee's value, ``deterministic`` kept for older readers; ``n_sensitive``,
        ``sensitive_flagged_correctly`` and ``false_positive_rate`` for a binary model, ``flags`` for a one-vs-rest
        one; ``median_radius`` (floats, ∞ as is) once a norm was certified."""
        out: dict[str, Any] = {
            "method": self.method,
            "guarantee": self.guarantee.value,
            "deterministic": self.deterministic,
            "alpha": self.alpha,
            "n_inputs": self.n_inputs,
            "units": self.units,
            "clean_accuracy": self.clean_accuracy,
            "certify_seconds_total": self.certify_seconds_total,
            "certify_seconds_per_input": self.certify_seconds_per_input,
            "certified_accuracy": {name: norm.table() for name, norm in self.norms.items()},
        }
        if self.detection is not None:
            out.update(asdict(self.detection))
        if self.flags is not None:
            out["flags"] = asdict(self.flags)
        if self.norms:
            out["median_radius"] = {name: norm.median_radius for name, norm in self.norms.items()}
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any], null_radius: float = math.inf) -> CertifiedSummary:
        """The summary :meth:`to_dict` gave ``raw`` (other keys ignored), e.g. read back from a JSON file.

        Args:
            raw: the JSON object; a median radius may be a number, ``"inf"``/``"-inf"``
                (:func:`~asymcert.runfolder.json_number`) or null.
            null_radius: the median radius a null stands for: ∞ for a strict JSON file
                (:func:`~asymcert.runfolder.dumps_strict` writes ∞ as null), NaN for one written with
                :func:`~asymcert.runfolder.json_number`.
        Raises:
            KeyError, ValueError, TypeError: ``raw`` is not such an object: a key missing (one of the detection keys
                without the others too), or a value of another type than its field's (no half-built summary).
        """
        raw = _object(raw, "a summary")
        medians = _object(raw.get("median_radius", {}), "median_radius")
        norms = {
            name: NormSummary.from_table(table, _number(medians[name], null_radius))
            for name, table in _object(raw["certified_accuracy"], "certified_accuracy").items()
        }
        detection = None
        if any(key in raw for key in _DETECTION_KEYS):  # (one missing is refused, not read as no detection figures)
            detection = typed(Detection(*(raw[key] for key in _DETECTION_KEYS)))
        flags = typed(FlagShares(**_object(raw["flags"], "flags"))) if "flags" in raw else None
        return typed(
            cls(
                method=raw["method"],
                guarantee=Guarantee(raw["guarantee"]),
                alpha=raw["alpha"],
                n_inputs=raw["n_inputs"],
                units=raw["units"],
                clean_accuracy=raw["clean_accuracy"],
                certify_seconds_total=raw["certify_seconds_total"],
                norms=norms,
                detection=detection,
                flags=flags,
            )
        )


_DETECTION_KEYS = tuple(f.name for f in fields(Detection))


def _object(value: Any, what: str) -> Mapping[str, Any]:
    """``value``, a JSON object; TypeError naming ``what`` it should be when it is not one."""
    if not isinstance(value, Mapping):
        raise TypeError(f"{what} must be a JSON object, found {type(value).__name__} {value!r:.80}")
    return value


def _number(value: Any, null: float) -> float:
    """A JSON number back as a float: ``"inf"``/``"-inf"`` (:func:`~asymcert.runfolder.json_number`) as ±∞, null as
    ``null``; TypeError for anything else (a bool, another string, a list, an object), ValueError for an integer
    beyond floats."""
    if value is None:
        return null
    if not (isinstance(value, (int, float)) and not isinstance(value, bool)) and value not in ("inf", "-inf"):
        raise TypeError(f'a radius or an accuracy must be a number, "inf" or null, found {type(value).__name__}')
    try:
        return float(value)
    except OverflowError:
        raise ValueError("a radius or an accuracy beyond floats (an integer of over 308 digits)") from None


@dataclass(frozen=True)
class RunResults:
    """A run folder's report numbers (``results.json``): its certificates' summary and what the report adds.

    Attributes:
        summary: the certificates' numbers (:func:`~asymcert.report.writer.summarize` at the report radii).
        report_radii_source: norm label → where its report radii come from: ``"run.json"`` (run.json's
            ``report_radii``) or ``"quantiles"`` (:func:`~asymcert.report.writer.auto_radii`); {}: not said.
        report_radii_settable: False when the certificates are in other units than the run's own, or it is not
            recorded under which threat model they were made, so run.json's ``report_radii`` do not apply.
        certificate_mode: how the certificates were computed (None: not recorded).
        task: run.json's task spec.
        training_seconds: wall-clock seconds of training (None: training has not finished).
        best_epoch: the epoch of the model kept, counted from 1 (None: not known).
        validation_flat: history.json shows the same validation metric at every one of at least 5 epochs.
        plots: norm label → file name of its certified-accuracy plot in the run folder.
        plots_missing: why there are no plots (matplotlib missing); None when they were made.
    """

    summary: CertifiedSummary
    report_radii_source: dict[str, str] = field(default_factory=dict)
    report_radii_settable: bool = True
    certificate_mode: CertificateMode | None = None
    task: dict[str, Any] = field(default_factory=dict)
    training_seconds: float | None = None
    best_epoch: int | None = None
    validation_flat: bool = False
    plots: dict[str, str] = field(default_factory=dict)
    plots_missing: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """The JSON object of ``results.json``: :meth:`CertifiedSummary.to_dict`'s keys, ``median_radius`` a number
        or ``"inf"`` per norm (:func:`~asymcert.runfolder.json_number`), then the report's; ``plots_missing`` only
        when there are no plots for want of matplotlib."""
        summary = self.summary.to_dict()
        out = {  # (median_radius keeps its place among the summary's keys when it has one, else comes here)
            **summary,
            "report_radii_source": dict(self.report_radii_source),
            "report_radii_settable": self.report_radii_settable,
            "median_radius": {name: json_number(r) for name, r in summary.get("median_radius", {}).items()},
            "certificate_mode": None if self.certificate_mode is None else self.certificate_mode.to_dict(),
            "task": self.task,
            "training_seconds": self.training_seconds,
            "best_epoch": self.best_epoch,
            "validation_flat": self.validation_flat,
            "plots": dict(self.plots),
        }
        if self.plots_missing is not None:
            out["plots_missing"] = self.plots_missing
        return out

    @classmethod
    def from_dict(cls, raw: Mapping[str, Any]) -> RunResults:
        """The results :meth:`to_dict` gave ``raw`` (other keys ignored), e.g. a ``results.json`` read back; a null
        median radius is NaN (:func:`~asymcert.runfolder.json_number`). Keys that earlier versions did not write
        read as what those versions meant (review 31: resuming a sweep from their results raised KeyError): a
        missing ``task`` or ``plots`` is empty, ``report_radii_source`` unknown ({}), ``report_radii_settable``
        true, ``validation_flat`` false, ``certificate_mode``, ``training_seconds`` and ``best_epoch`` not recorded.

        A ``certificate_mode`` that is not one (:meth:`~asymcert.runfolder.CertificateMode.from_dict`) is not recorded.

        Raises:
            KeyError, ValueError, TypeError: ``raw`` is not such an object: a summary key missing, or a value of
                another type than its field's (no half-built results).
        """
        return typed(
            cls(
                summary=CertifiedSummary.from_dict(raw, null_radius=math.nan),
                report_radii_source=dict(_object(raw.get("report_radii_source", {}), "report_radii_source")),
                report_radii_settable=raw.get("report_radii_settable", True),
                certificate_mode=CertificateMode.from_dict(raw.get("certificate_mode")),
                task=dict(_object(raw.get("task", {}), "task")),
                training_seconds=raw.get("training_seconds"),
                best_epoch=raw.get("best_epoch"),
                validation_flat=raw.get("validation_flat", False),
                plots=dict(_object(raw.get("plots", {}), "plots")),
                plots_missing=raw.get("plots_missing"),
            )
        )
