"""The run report: ``results.json`` (machine-readable), ``report.md`` and one PNG per norm."""

from __future__ import annotations

import logging
import math
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from asymcert import distributed
from asymcert.certify.certfile import load_certificates
from asymcert.certify.result import RAW_UNITS, Certificate, Guarantee, norm_label, normalize_norm, raw_units
from asymcert.certify.summary import CertifiedSummary, Detection, FlagShares, NormSummary, RunResults
from asymcert.checkpoint import atomic_write
from asymcert.errors import CheckpointError
from asymcert.files import read_regular_text
from asymcert.jsontext import JsonTextError, parse_json
from asymcert.pipeline import CertificateMode, read_certificate_mode
from asymcert.report.metrics import certified_accuracy, clean_accuracy, curve_grid
from asymcert.report.plots import PLOT_HINT, plot_certified_curves, plotting_available
from asymcert.runfolder import (
    CERT_FILE,
    PLOT_GLOB,
    REPORT_FILE,
    RESULTS_FILE,
    RunRecord,
    dumps_strict,
    exclusive,
    read_run_record,
    remove_stale_temp_files,
    write_json,
)
from asymcert.text import first_few
from asymcert.train.balance import FalsePositiveBudget
from asymcert.train.config import operating_point
from asymcert.train.loop import HISTORY_FILE

ONE_VS_REST_NOTE = (
    "Certified accuracy: share of test inputs predicted correctly (argmax of the K one-vs-rest "
    "scores) whose true class is flagged (s_k > 0) and provably stays flagged within radius r "
    "(radii in {units}). This certifies the class-k flag, NOT that the argmax stays k: other "
    "classes may also become flagged inside the radius."
)
"""The report's sentence for one-vs-rest certificates; ``{units}``: the certificates' units (a threat model's under
one: audit units31 F1, it said raw input units)."""
GUARANTEE_TEXT = {
    Guarantee.DECISION: "deterministic: the decision stays",
    Guarantee.FLAG: "deterministic: the flagged class stays flagged",
    Guarantee.PROBABILISTIC: "holds with probability 1 − {alpha}",
}


def summarize(cert: Certificate, labels: torch.Tensor, report_radii: dict[str, list[float]]) -> CertifiedSummary:
    """Clean accuracy, certified accuracy at the report radii per norm, detection figures, timing.

    Args:
        cert: N certificates. labels: (N,) true labels. report_radii: norm label → radii (in ``cert.units``).
    Returns:
        The certificates' numbers (:meth:`~asymcert.certify.summary.CertifiedSummary.to_dict` is their JSON, the
        first keys of ``results.json``).
    """
    n = len(cert)
    norms = {}
    for p in cert.radii:
        name = norm_label(p)
        radii = report_radii.get(name, [])
        acc = certified_accuracy(cert, labels, p, torch.tensor(radii, dtype=torch.float64)) if radii else torch.zeros(0)
        rad = cert.radius(p)
        pool = (labels == 1) & (cert.predicted == 1) if cert.binary else (cert.predicted == labels)
        median = float(rad[pool].median()) if bool(pool.any()) else 0.0
        norms[name] = NormSummary(tuple(radii), tuple(float(a) for a in acc), median)
    return CertifiedSummary(
        method=cert.method,
        guarantee=cert.guarantee,
        alpha=cert.alpha,
        n_inputs=n,
        units=cert.units,
        clean_accuracy=clean_accuracy(cert, labels),
        certify_seconds_total=cert.seconds,
        norms=norms,
        detection=_detection(cert, labels) if cert.binary else None,
        flags=_flag_shares(cert, labels) if cert.guarantee is Guarantee.FLAG and not cert.binary else None,
    )


def _detection(cert: Certificate, labels: torch.Tensor) -> Detection:
    """The flag rates of binary certificates against their (N,) labels."""
    n_sensitive = int((labels == 1).sum())
    flagged_correctly = float(((cert.predicted == 1) & (labels == 1)).sum())
    false_alarms = float(((cert.predicted == 1) & (labels == 0)).sum())
    return Detection(
        n_sensitive=n_sensitive,
        sensitive_flagged_correctly=flagged_correctly / max(1, n_sensitive),  # the detection rate
        false_positive_rate=false_alarms / max(1, int((labels == 0).sum())),
    )


def _flag_shares(cert: Certificate, labels: torch.Tensor) -> FlagShares:
    """One-vs-rest certificates: how many classes flag each input, and is the true one (of the (N,) labels) among
    them."""
    flags = cert.extra["flags"].bool()
    count = flags.sum(dim=1)
    return FlagShares(
        none=float((count == 0).double().mean()),
        one=float((count == 1).double().mean()),
        several=float((count > 1).double().mean()),
        true_class=float(flags.gather(1, labels.long()[:, None]).double().mean()),
    )


AUTO_QUANTILES = (0.1, 0.25, 0.5, 0.75)
"""Quantiles of the certified radii that become report radii for a norm the run names none for."""


def auto_radii(cert: Certificate, labels: torch.Tensor) -> dict[str, list[float]]:
    """Report radii per norm label from the certificates themselves: the :data:`AUTO_QUANTILES` of the
    finite positive radii of correctly flagged (binary) or correctly classified inputs, to 2 significant
    digits (for a run under a threat model of the user's, whose units no task default knows)."""
    pool = _pool(cert, labels)
    out = {}
    for p, radius in cert.radii.items():
        r = radius.double().cpu()[pool.cpu()]
        r = r[torch.isfinite(r) & (r > 0)]
        values = torch.quantile(r, torch.tensor(AUTO_QUANTILES, dtype=torch.float64)).tolist() if len(r) else []
        out[norm_label(p)] = sorted({float(f"{v:.2g}") for v in values if v > 0})
    return out


def _pool(cert: Certificate, labels: torch.Tensor) -> torch.Tensor:
    """(N,) bool: the inputs whose radii the report describes, correctly flagged (binary) or classified."""
    return (labels == 1) & (cert.predicted == 1) if cert.binary else (cert.predicted == labels)


def report_radii(cert: Certificate, labels: torch.Tensor, own: dict[str, list[float]]) -> dict[str, list[float]]:
    """The radii of a run's report tables per norm label: ``own`` (the run's, in its units) where given and not
    empty (an empty list said "no test input is certified at any radius > 0", review 28c), else
    :func:`auto_radii`; plus ∞ (``math.inf``, "every radius") for a norm where some input of the pool has an
    infinite radius (certified at every radius: no allowed move changes its decision). So a table is never
    empty for lack of finite radii (every flagged input's radius ∞, e.g. every feature immutable)."""
    pool = _pool(cert, labels).cpu()
    out = {**auto_radii(cert, labels), **{name: radii for name, radii in own.items() if radii}}
    for p, radius in cert.radii.items():
        name = norm_label(p)
        if bool(torch.isinf(radius.double().cpu()[pool]).any()) and math.inf not in out.get(name, []):
            out[name] = [*out.get(name, []), math.inf]
    return out


def in_run_units(cert: Certificate, run_has_threat_model: bool, mode: CertificateMode | None) -> bool:
    """Whether ``cert``'s radii are in the run's own units, those of run.json's ``report_radii``: certified under
    the run's own threat model (``mode.threat_model == "run"``), or with no threat model for a run that has none.
    Another threat model (``--threat-model FILE``, even one with the same unit phrase but other scales) or none
    for a run that has one (``--no-threat-model``) is other units. When ``mode`` is not recorded, the unit phrase
    is all there is: raw input units for a run without a threat model (audit units30 F1)."""
    if mode is not None:
        return mode.threat_model == ("run" if run_has_threat_model else "none")
    return not run_has_threat_model and cert.units.startswith(RAW_UNITS)


def write_report(run_dir: str | Path, log: Callable[[str], None] | None = None) -> RunResults | None:
    """Read a certified run folder, write ``results.json``, ``report.md`` and ``certified_<norm>.png``.

    Without matplotlib (the ``plot`` extra) the tables, JSON and Markdown are still written, without
    PNGs; ``log`` (default: the ``asymcert`` logger) and report.md say how to get the plots. Under
    torchrun only rank 0 writes (the others return None).

    results.json (:meth:`~asymcert.certify.summary.RunResults.to_dict`): :func:`summarize`'s numbers at
    :func:`report_radii` (key ``"inf"``: certified at every radius), ``median_radius`` per norm a number or
    ``"inf"``, ``certificate_mode`` (closed form or reach-aware, which threat model:
    :class:`~asymcert.pipeline.CertificateMode`, null when not recorded), ``report_radii_source`` per norm
    (``"run.json"``: run.json's ``report_radii``; ``"quantiles"``: :func:`auto_radii`), ``report_radii_settable``
    (false: the certificates are in other units than the run's, :func:`in_run_units`, or it is not recorded under
    which threat model they were made, so run.json's ``report_radii`` do not apply) and ``validation_flat``
    (history.json shows one validation metric at every epoch, :func:`_validation_flat`).

    Returns:
        The numbers written (None on the processes that write nothing).
    Raises:
        CheckpointError: no run folder, no or corrupted certificates, a malformed run.json.
        RunFolderBusyError: another process is writing the folder.
    """
    if not distributed.is_main():
        return None
    run_dir = Path(run_dir)
    run = read_run_record(run_dir)
    cert_path = run_dir / CERT_FILE
    if not cert_path.is_file():
        raise CheckpointError(f"{run_dir} has no {CERT_FILE}; run `asymcert certify {run_dir}` first")
    plots_ok = plotting_available()
    if not plots_ok:
        (log or logging.getLogger("asymcert").warning)(f"report without plots: {PLOT_HINT}")
    operating_point(run.train)  # a malformed one is refused before anything is written
    with exclusive(run_dir, collective=False):
        cert, labels = load_certificates(cert_path)
        mode = read_certificate_mode(run_dir)
        own_units = in_run_units(cert, run.threat_model is not None, mode)
        own = {name: radii for name, radii in run.report_radii.items() if radii} if own_units else {}
        summary = summarize(cert, labels, report_radii(cert, labels, own))
        training = run.training or {}
        flat = _validation_flat(run_dir)
        results = RunResults(
            summary,
            report_radii_source={n: "run.json" if n in own else "quantiles" for n in summary.norms},
            report_radii_settable=own_units,
            certificate_mode=mode,
            task=run.task,
            training_seconds=training.get("seconds"),
            best_epoch=training.get("best", {}).get("epoch"),
            validation_flat=flat,
            plots=_plot_curves(run_dir, cert, labels, summary.clean_accuracy, run.task_description) if plots_ok else {},
            plots_missing=None if plots_ok else PLOT_HINT,
        )
        remove_stale_temp_files(run_dir)
        write_json(run_dir / RESULTS_FILE, results.to_dict())
        markdown = render_markdown(run, results)
        atomic_write(run_dir / REPORT_FILE, lambda tmp: tmp.write_text(markdown))
    return results


HISTORY_READ_LIMIT = 16 * 2**20  # bytes of history.json the report reads (a long run's log is far smaller)


def _validation_flat(run_dir: Path) -> bool:
    """Whether history.json shows the same validation metric at every one of at least 5 epochs (then the first epoch
    is kept for want of a better one, whatever the loss: walkthrough 28b). False when the file is missing, larger
    than HISTORY_READ_LIMIT or not the list of epochs training writes."""
    path = run_dir / HISTORY_FILE
    try:  # (a regular file only: a FIFO or /dev/zero in a received folder hung or filled memory, s34 ckpt F1)
        history = parse_json(read_regular_text(path, HISTORY_READ_LIMIT))
    except (OSError, UnicodeDecodeError, JsonTextError):
        return False
    values = [e.get("val_metric") for e in history if isinstance(e, dict)] if isinstance(history, list) else []
    numbers = [v for v in values if isinstance(v, (int, float)) and not isinstance(v, bool)]
    return len(numbers) == len(values) >= 5 and len(set(numbers)) == 1


def _plot_curves(
    run_dir: Path, cert: Certificate, labels: torch.Tensor, clean: float, description: str
) -> dict[str, str]:
    """One PNG per norm of certified accuracy against radius (radii in ``cert.units``; ``clean``: the clean
    accuracy in [0, 1], named in the legend); plots of norms not certified now are removed. Returns norm label →
    file name."""
    plots = {}
    for p in cert.radii:
        name = norm_label(p)
        grid = curve_grid(cert, labels, p)
        curve = certified_accuracy(cert, labels, p, grid)
        label = f"{_clipped(cert.method)} (clean {100 * clean:.1f}%)"
        plots[name] = plot_certified_curves(
            [(label, grid, curve)],
            _pretty(p),
            run_dir / f"certified_{name}.png",
            title=f"{_clipped(description)}: {_pretty(p)}",
            units=cert.units,
        ).name
    for stale in set(run_dir.glob(PLOT_GLOB)) - {run_dir / name for name in plots.values()}:
        stale.unlink(missing_ok=True)
    return plots


PLOT_TEXT_LIMIT = 120
"""Characters of a task description or method name a plot shows (matplotlib lays out a title of a million characters
for minutes in gigabytes: a long description in a received run.json, review s34 ckpt F2)."""


def _clipped(text: str) -> str:
    """``text`` cut to :data:`PLOT_TEXT_LIMIT` characters, ending in "…" when cut."""
    return text if len(text) <= PLOT_TEXT_LIMIT else text[: PLOT_TEXT_LIMIT - 1] + "…"


def _pretty(p: float) -> str:
    return "ℓ∞" if p == float("inf") else f"ℓ{p:g}"


def _detection_lines(run: RunRecord, detection: Detection | None) -> list[str]:
    """Binary runs: the share of each class flagged, and the operating point b was fitted for."""
    if detection is None:
        return []
    rate, confidence = operating_point(run.train)
    if rate is None:
        point = "equal class accuracies on validation"
    elif confidence is None:
        point = f"at most {100 * rate:g}% of the other class flagged on validation"
    else:
        point = f"at most {100 * rate:g}% of the other class flagged on new inputs, with confidence {confidence:g}"
    return [
        f"- flagged: {100 * detection.sensitive_flagged_correctly:.2f}% of the sensitive class (detection rate), "
        f"{100 * detection.false_positive_rate:.2f}% of the other class (false-positive rate); "
        f"threshold b fitted for {point}"
    ]


def mode_line(mode: CertificateMode | None) -> str:
    """One sentence on how certificates were computed: closed-form or reach-aware radii, under which threat
    model (the run's own, a file given, or none); for report.md and audit.md, next to their units."""
    if mode is None:
        return (
            "Certificates: mode not recorded (closed form or reach-aware, and the threat model, are unknown: "
            "certified by an older version, or not by `asymcert certify`)."
        )
    radii = "reach-aware radii (`--reach`)" if mode.reach else "closed-form radii (without `--reach`)"
    file = f"`{mode.threat_model_file}`" if mode.threat_model_file else None
    if mode.threat_model == "run":
        under = "the run's own threat model (run.json" + (f"; also given as {file})" if file else ")")
    elif mode.threat_model == "given" and file:
        under = f"the threat model of {file} (--threat-model), not the run's own"
    elif mode.threat_model == "given":
        under = f"a threat model given with --threat-model, not the run's own: `{dumps_strict(mode.given)}`"
    else:
        under = "no threat model (plain ℓp balls in raw input units)"
    return f"Certificates: {radii}, under {under}."


def _budget_note(run: RunRecord) -> list[str]:
    """A "Note:" line when the threshold b was fitted with few allowed false positives
    (:attr:`~asymcert.train.balance.FalsePositiveBudget.small`), else nothing."""
    raw = ((run.training or {}).get("false_positive_budget")) or {}
    try:
        budget = FalsePositiveBudget(int(raw["allowed"]), int(raw["other"]), float(raw["rate"]))
    except (KeyError, TypeError, ValueError):  # no budget (no false_positive_rate, an older run) or a damaged one
        return []
    return [f"Note: {budget.note()}.", ""] if budget.small else []


def _flags_note(run: RunRecord) -> list[str]:
    """A "Note:" line naming the run's 0/1 features (run.json's ``binary_features``), else nothing."""
    flags = run.binary_features
    if not flags:
        return []
    shown = first_few(flags, 6, lambda name: f"`{name}`")
    return [
        f"Note: {len(flags)} feature(s) take only the values 0 and 1 in training ({shown}). Flipping one is a move "
        "of 1 raw unit, 1/scale in a threat model's units: a radius below that certifies no flip of it, one above "
        "it covers any single flip (k flips: k/scale in ℓ1, √k/scale in ℓ2, 1/scale in ℓ∞).",
        "",
    ]


def _notes(run: RunRecord, results: RunResults) -> list[str]:
    """The report's "Note:" lines (each followed by a blank line): a small budget, 0/1 features, a model kept from
    the first of many epochs, unfinished training."""
    unfinished = [
        "Note: training has not finished (interrupted, or still running): these are certificates of the best "
        "epoch saved so far; rerun the same `train`/`run` command to finish it.",
        "",
    ]
    return [
        *_budget_note(run),
        *_flags_note(run),
        *_first_epoch_note(run, results),
        *(unfinished if run.training is None else []),
    ]


def _first_epoch_note(run: RunRecord, results: RunResults) -> list[str]:
    """A "Note:" line when the model kept is from the first of many epochs (nothing after it did better on the
    validation split: with a certified-margin loss, often a margin too large for the data's units), else nothing
    (walkthrough 27f: epoch 1 of 100 kept under ``margin_radius=1``, unsaid)."""
    epochs, margin = run.train.get("epochs"), run.train.get("margin_radius")
    if results.best_epoch != 1 or not isinstance(epochs, int) or epochs < 5:
        return []
    flat = (
        " The validation metric was the same at every epoch, so no later epoch could be better (a validation split "
        "too small or too easy to tell the epochs apart, or a loss that holds the model still)."
        if results.validation_flat
        else ""
    )
    why = flat + (
        f" With the certified-margin loss (margin_radius = {dumps_strict(margin)}, in {_training_units(run)}) that "
        "often means a margin too large for this data: try a smaller one, and compare the clean accuracy."
        if margin
        else ""
    )
    return [
        f"Note: the model kept is from epoch 1 of {epochs}: no later epoch did better on the validation split.{why}",
        "",
    ]


def _training_units(run: RunRecord) -> str:
    """The units training took ``margin_radius`` in: the run's own threat model's (run.json's ``threat_model``,
    whatever the certificates were later made under), else raw input units (audit units30 F2)."""
    if run.threat_model is not None:
        return "the units of the run's own threat model (δ_i / scale_i), as in training"
    return raw_units(run.task)


def _model_lines(run: RunRecord) -> list[str]:
    """The report's model line; for a run with named features and monotone ones, the monotone features by name on a
    line of their own (walkthrough 27f: ``"monotone": {"increasing": [3, 6, 10]}`` named no feature)."""
    model, names = run.model, run.feature_names
    monotone = model.get("monotone")
    moves = {"increasing": "never falls", "decreasing": "never rises"}
    if not names or not isinstance(monotone, dict) or not any(monotone.get(side) for side in moves):
        return [f"- model: `{dumps_strict(model)}`"]

    def named(indices: list[Any]) -> str:
        shown = [f"`{names[i]}`" if isinstance(i, int) and 0 <= i < len(names) else f"`{i}`" for i in indices]
        return shown[0] if len(shown) == 1 else f"{', '.join(shown[:-1])} or {shown[-1]}"

    listed = [f"{move} as {named(monotone[side])} rises" for side, move in moves.items() if monotone.get(side)]
    return [
        f"- model: `{dumps_strict({k: v for k, v in model.items() if k != 'monotone'})}`",
        f"- monotone features: the score {'; it '.join(listed)}",
    ]


def _radii_line(results: RunResults) -> list[str]:
    """One sentence on where the tables' radii come from (run.json's ``report_radii``, or quantiles of the
    certified radii) and how to choose others (walkthrough 27f: the grid looked arbitrary); nothing for results
    that do not say (``report_radii_source`` empty)."""
    sources = results.report_radii_source
    if not sources:
        return []
    picked = [_pretty(normalize_norm(n)) for n, source in sources.items() if source == "quantiles"]
    given = [_pretty(normalize_norm(n)) for n, source in sources.items() if source == "run.json"]
    pool = "correctly flagged sensitive-class" if results.summary.detection is not None else "correctly classified"
    quantiles = ", ".join(f"{100 * q:g}%" for q in AUTO_QUANTILES)
    parts = [f"{', '.join(given)}: run.json's `report_radii`"] if given else []
    if picked:
        parts.append(
            f"{', '.join(picked)}: the {quantiles} quantiles of the finite certified radii of the {pool} test "
            "inputs, to 2 significant digits"
        )
    how = (
        'to choose your own, set `report_radii` in run.json (norm → radii in these units, e.g. `"report_radii": '
        '{"l1": [1, 2, 5]}`) and run `asymcert report` on this folder'
        if results.report_radii_settable
        else "run.json's `report_radii` are in the run's own units, not these, so they are not used"
        if results.certificate_mode is not None
        else "run.json's `report_radii` are in the run's own units, and these certificates (made before asymcert "
        "recorded it) do not say which threat model they were made under, so they are not used; `asymcert certify` "
        "on this folder records it and uses them again"
    )
    return [f"Radii r of the tables: {'; '.join(parts)}; {how}.", ""]


def radius_header(key: str) -> str:
    """A table column's radius: the number, or "every radius (∞)" for ∞."""
    return "every radius (∞)" if key == "inf" else key


def render_markdown(run: RunRecord, results: RunResults) -> str:
    """The human-readable report of a run (run.json's record) from its numbers (``results.json``'s)."""
    summary, detection = results.summary, results.summary.detection
    guarantee = GUARANTEE_TEXT[summary.guarantee].format(alpha=summary.alpha)
    lines = [
        f"# {run.task_description or run.task}",
        "",
        *_model_lines(run),
        *([f"- threat model (run.json): `{dumps_strict(run.threat_model)}`"] if run.threat_model else []),
        f"- certificate: {summary.method} ({guarantee})",
        f"- test inputs: {summary.n_inputs}"
        + (f" ({detection.n_sensitive} of the sensitive class)" if detection is not None else ""),
        f"- clean accuracy: **{100 * summary.clean_accuracy:.2f}%**",
        *_detection_lines(run, detection),
        f"- certification: {1000 * summary.certify_seconds_per_input:.3f} ms per input "
        f"({summary.certify_seconds_total:.2f} s in all)",
    ]
    if results.training_seconds is not None:
        kept = ((run.training or {}).get("best") or {}).get("selection")  # refit: the final epoch, no selection
        lines.append(
            f"- training: {results.training_seconds / 60:.1f} min, "
            + (f"kept: {kept}, epoch" if kept else "best validation epoch")
            + f" {results.best_epoch}"
        )
    lines += [
        "",
        *_notes(run, results),
        "Certified accuracy: share of sensitive-class test inputs flagged sensitive with a certified "
        f"radius ≥ r (radii in {summary.units})."
        if detection is not None
        else ONE_VS_REST_NOTE.format(units=summary.units)
        if summary.guarantee is Guarantee.FLAG
        else "Certified accuracy: share of test inputs classified correctly with a certified radius ≥ r "
        f"(radii in {summary.units}).",
        "",
        mode_line(results.certificate_mode),
        "",
        *_radii_line(results),
    ]
    return "\n".join([*lines, *_tables(summary), *_plot_lines(results)]) + "\n"


def _tables(summary: CertifiedSummary) -> list[str]:
    """One Markdown table per norm of certified accuracy at the report radii (a line instead for a norm without
    any radius > 0 to report)."""
    lines = []
    for name, norm in summary.norms.items():
        pretty, table = _pretty(normalize_norm(name)), norm.table()
        if not table:  # no radius > 0 to report: every radius of the pool is 0, or the pool is empty
            lines += [f"{pretty}: no test input is certified at any radius > 0.", ""]
            continue
        lines += [
            f"| {pretty} radius | " + " | ".join(map(radius_header, table)) + " |",
            "|---|" + "---|" * len(table),
            "| certified accuracy | " + " | ".join(f"{100 * v:.1f}%" for v in table.values()) + " |",
            "",
        ]
    return lines


def _plot_lines(results: RunResults) -> list[str]:
    """The report's plot images, or the line saying why there are none."""
    lines = [f"![{name}]({png})" for name, png in results.plots.items()]
    return lines + ([f"No plots: {results.plots_missing}."] if results.plots_missing else [])
