"""Compare certification methods on one task: train (or load) each, certify the same test inputs,
and write one report with every method's certified-accuracy curves.

``compare(task_spec, out_dir)`` returns a :class:`Comparison` (its :meth:`Comparison.to_dict` is compare.json) and
writes::

    out_dir/<method>/          a run folder per method (run.json, model, certificates, report)
    out_dir/compare.json       per method: settings, clean accuracy, certified accuracy at the
                               task's report radii, median radius, timings (or why it was skipped)
    out_dir/compare.md         the same as tables, with the scale notes
    out_dir/compare_<norm>.png certified accuracy against radius, one curve per method
    out_dir/compare_runtime.png certification seconds per input (log axis)

Methods (names for ``methods=``):

============== ==================== ==================================================================
name           model kind           certificate
============== ==================== ==================================================================
convex         the task's default   feature-convex (closed form, deterministic)
linf-dist      linf-dist            ℓ∞-distance net margin/2
smoothing      relu-smoothing       Gaussian randomized smoothing (probabilistic, α = 0.001)
smoothing-laplace / smoothing-uniform / smoothing-splitting: the other noises (splitting: exact ℓ1)
orthogonal     orthogonal           ℓ2 Lipschitz margin (deterministic)
ibp            relu-ibp             IBP-trained small CNN, certified by CROWN-IBP (max with IBP)
crown-ibp      relu-ibp             CROWN-IBP-trained small CNN, certified by CROWN-IBP
============== ==================== ==================================================================

Default sizes are for a 2-core CPU (the whole default comparison on fashion-mnist-shirts, first
1000 test inputs, within an hour): 20 training epochs everywhere, an MLP (256, 256) instead of
the paper's ResNet-18 as smoothing base model, n = 10,000 smoothing
samples instead of 100,000, ℓ∞-distance nets of 4 × 512 instead of 5 × 5120, and an orthogonal
MLP of 3 × 256. ``paper_scale=True`` restores the paper's epochs, n = 100,000 and the ℓ∞-dist
widths, with a small CNN (16, 32 channels, fc 100) as smoothing base model (no ResNet here).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any, ClassVar, Literal, TypeAlias

import torch

from asymcert.certify.result import RAW_UNITS, Certificate, Guarantee, norm_label, raw_units
from asymcert.certify.summary import CertifiedSummary, RunResults
from asymcert.checkpoint import atomic_write
from asymcert.data.tasks import Task, TaskData
from asymcert.errors import MethodsFailedError, UnknownNameError
from asymcert.families import CompareScale, MethodSpec, TaskFacts, families, get_family
from asymcert.families.contract import CPU_EPOCHS
from asymcert.pipeline import (
    DEFAULT_NORMS,
    CertifySettings,
    Reporter,
    _merge,
    plan_training,
    preset_overrides,
    resolve_task,
    run_finished,
    run_pipeline,
    task_facts,
)
from asymcert.report.machine import Machine
from asymcert.report.metrics import certified_accuracy, clean_accuracy, curve_grid
from asymcert.report.plots import plot_certified_curves, plot_runtimes
from asymcert.report.writer import summarize, write_report
from asymcert.runfolder import dumps_strict, exclusive

__all__ = [
    "COMPARE_JSON",
    "COMPARE_MD",
    "CPU_EPOCHS",
    "DEFAULT_METHODS",
    "ComparedMethod",
    "Comparison",
    "FailedMethod",
    "MethodEntry",
    "compare",
    "compare_cli_main",
    "method_specs",
    "render_markdown",
]

DEFAULT_METHODS = ("convex", "linf-dist", "smoothing", "orthogonal", "ibp")
COMPARE_JSON, COMPARE_MD = "compare.json", "compare.md"
WARMUP_INPUTS = 16  # certified once, untimed, before the timed pass
PAPER_LIMIT = 1000


def method_specs(paper_scale: bool = False, n_smoothing: int = 10000, images: bool = True) -> dict[str, MethodSpec]:
    """Every known method, from every registered family (:attr:`~asymcert.families.Family.compare_methods`), for a
    task of image inputs (``images``) or of flat feature vectors (MLPs where the papers use CNNs)."""
    scale = CompareScale(paper_scale=paper_scale, n_smoothing=int(n_smoothing), images=images)
    specs: dict[str, MethodSpec] = {}
    for family in families():
        specs.update(family.compare_methods(scale))
    return specs


# ------------------------------------------------------------------------------------ the typed comparison
# Each to_dict() is its JSON object in compare.json, keys in the order compare.json has always had them.


@dataclass(frozen=True)
class ComparedMethod:
    """A method trained (or loaded) and certified: its compare.json entry, ``status`` ``"ok"``.

    Attributes:
        label: the method's name in tables and plots (:attr:`~asymcert.families.MethodSpec.label`).
        run_dir: its run folder (``out_dir/<method>``).
        trained_now: False when a finished run in the folder was loaded instead of trained.
        train_wall_seconds: wall-clock seconds of the training step (of reading the finished run when loaded).
        model: the model config as run.json holds it (genuinely JSON: ``model.config()``).
        train: the training settings as run.json holds them (genuinely JSON: ``TrainConfig.to_dict()``).
        training_seconds: wall-clock seconds training took, as run.json records them (None: not recorded).
        certify_options: the certifier's options, besides its name (genuinely JSON: the method's and the user's).
        summary: its certificates' numbers at the comparison's report radii: clean and certified accuracy (shares
            in [0, 1]), median radii (in ``summary.units``: raw input units, or a threat model's), seconds.
    """

    status: ClassVar[Literal["ok"]] = "ok"
    label: str
    run_dir: str
    trained_now: bool
    train_wall_seconds: float
    model: dict[str, Any]
    train: dict[str, Any]
    training_seconds: float | None
    certify_options: dict[str, Any]
    summary: CertifiedSummary

    def to_dict(self) -> dict[str, Any]:
        """``{"status": "ok", "label", "run_dir", "trained_now", "train_wall_seconds", "model", "train",
        "training_seconds", "certify_options"}`` (``certify_options`` with the certifier's ``"method"`` first), then
        :meth:`~asymcert.certify.summary.CertifiedSummary.to_dict`'s keys."""
        return {
            "status": self.status,
            "label": self.label,
            "run_dir": self.run_dir,
            "trained_now": self.trained_now,
            "train_wall_seconds": self.train_wall_seconds,
            "model": self.model,
            "train": self.train,
            "training_seconds": self.training_seconds,
            "certify_options": {"method": self.summary.method, **self.certify_options},
            **self.summary.to_dict(),
        }


@dataclass(frozen=True)
class FailedMethod:
    """A method that failed (trained, loaded or certified): its compare.json entry, ``status`` ``"failed"``.

    Attributes:
        reason: the error, ``"<ExceptionType>: <message>"``.
    """

    status: ClassVar[Literal["failed"]] = "failed"
    reason: str

    def to_dict(self) -> dict[str, Any]:
        """``{"status": "failed", "reason"}``."""
        return {"status": self.status, "reason": self.reason}


MethodEntry: TypeAlias = ComparedMethod | FailedMethod
"""One method's entry in a :class:`Comparison`: compared, or failed."""


@dataclass(frozen=True)
class Comparison:
    """What :func:`compare` did: :meth:`to_dict` is compare.json, :func:`render_markdown` compare.md.

    Attributes:
        task: the task spec (genuinely JSON: the user's, ``{"name": ...}`` for a task name).
        task_description: the task's description.
        preset: the task preset applied to every method (None: none).
        paper_scale: the papers' epochs, sample counts and widths (False: the CPU-sized defaults).
        n_inputs: test inputs certified by every method (the first ``limit``).
        n_sensitive: of those, the sensitive class's (label 1) for a binary task; None for a multi-class one.
        n_smoothing: estimation samples n of randomized smoothing (100,000 at paper scale).
        norms: the labels of the ℓp norms certified (``"l1"``, ``"l2"``, ``"linf"``), in order.
        report_radii: norm label → radii at which the tables give certified accuracy, in ``units``: the task's
            threat-model report radii when it has a threat model (every method is trained and certified under it),
            else its raw-unit ones.
        units: the units of every radius of the comparison (the certificates'), e.g. ``raw input units`` or
            ``threat-model units (δ_i / scale_i)``.
        images: the task's inputs are images (the methods' default nets are CNNs), not flat feature vectors (MLPs);
            for compare.md's scale notes, not written to compare.json.
        methods: method name → its entry, in the order the methods were given.
        machine: the machine the comparison ran on, and its load when compare.json was written.
        plots: ``"l1"``/``"l2"``/``"linf"`` (certified-accuracy curves) and ``"runtime"`` → file name of its plot
            in the comparison folder; {} when no method was compared.
    """

    task: dict[str, Any]
    task_description: str
    preset: str | None
    paper_scale: bool
    n_inputs: int
    n_sensitive: int | None
    n_smoothing: int
    norms: tuple[str, ...]
    report_radii: dict[str, list[float]]
    methods: dict[str, MethodEntry]
    machine: Machine
    plots: dict[str, str] = field(default_factory=dict)
    units: str = RAW_UNITS
    images: bool = True

    @property
    def compared(self) -> dict[str, ComparedMethod]:
        """The methods compared (trained or loaded, and certified), by name."""
        return {name: e for name, e in self.methods.items() if isinstance(e, ComparedMethod)}

    @property
    def failed(self) -> dict[str, FailedMethod]:
        """The methods that failed, by name."""
        return {name: e for name, e in self.methods.items() if isinstance(e, FailedMethod)}

    def to_dict(self) -> dict[str, Any]:
        """compare.json: ``{"task", "task_description", "preset", "paper_scale", "n_inputs", "n_sensitive",
        "n_smoothing", "norms", "units", "report_radii", "methods", "machine", "plots"}``."""
        return {
            "task": self.task,
            "task_description": self.task_description,
            "preset": self.preset,
            "paper_scale": self.paper_scale,
            "n_inputs": self.n_inputs,
            "n_sensitive": self.n_sensitive,
            "n_smoothing": self.n_smoothing,
            "norms": list(self.norms),
            "units": self.units,
            "report_radii": {norm: list(radii) for norm, radii in self.report_radii.items()},
            "methods": {name: entry.to_dict() for name, entry in self.methods.items()},
            "machine": self.machine.to_dict(),
            "plots": dict(self.plots),
        }


def _pretty(p: float) -> str:
    return "ℓ∞" if math.isinf(p) else f"ℓ{p:g}"


@dataclass(frozen=True)
class _Context:
    """What every method of one comparison shares."""

    task_spec: dict[str, Any]
    task: Task
    preset_overrides: dict[str, Any]
    data: TaskData
    data_dir: str | Path | None
    facts: TaskFacts
    certify: CertifySettings
    report_radii: dict[str, list[float]]
    units: str
    progress: bool
    log: Callable[[str], None]

    @property
    def images(self) -> bool:
        """The task's inputs are images (N, C, H, W), not flat feature vectors: the methods' nets are CNNs."""
        return len(self.data.train.x.shape[1:]) == 3


def _context(
    task_spec: dict[str, Any],
    preset: str | None,
    data: TaskData | None,
    data_dir: str | Path | None,
    settings: CertifySettings,
    progress: bool,
    log: Callable[[str], None] | None,
) -> _Context:
    """Resolve the task, its preset and data, and check the certification settings (before any write)."""
    task = resolve_task(task_spec)
    pre = preset_overrides(task, preset)
    settings.check()
    data = data or task.load(Path(data_dir) if data_dir else None)
    return _Context(
        task_spec,
        task,
        pre,
        data,
        data_dir,
        task_facts(task, data),
        settings,
        {norm_label(p): list(r) for p, r in task.own_report_radii.items()},
        _task_units(task, task_spec, data),
        progress,
        log or (lambda msg: None),
    )


def _task_units(task: Task, task_spec: dict[str, Any], data: TaskData) -> str:
    """The units of every radius of a comparison on ``task``: its threat model's when it has one (every method is
    trained and certified under it, as ``asymcert run`` would), else the raw input units."""
    if task.threat_model is None:
        return raw_units(task_spec)
    n_features = math.prod(data.test.x.shape[1:])
    return task.threat_model.resolve(data.meta.get("feature_names"), n_features).units()


def compare(
    task_spec: dict[str, Any] | str,
    out_dir: str | Path,
    methods: Sequence[str] = DEFAULT_METHODS,
    preset: str | None = None,
    n_smoothing: int = 10000,
    limit: int | None = None,
    paper_scale: bool = False,
    data_dir: str | Path | None = None,
    overrides: dict[str, dict[str, Any]] | None = None,
    norms: Iterable[float] = DEFAULT_NORMS,
    certify_batch: int = 1000,
    progress: bool = False,
    log: Callable[[str], None] | None = None,
    data: TaskData | None = None,
    fail_fast: bool = False,
) -> Comparison:
    """Train (or load) every method into ``out_dir/<method>/``, certify the same test inputs, report.

    Every method goes through :func:`asymcert.pipeline.run_pipeline`, so ``out_dir/<method>/`` is a
    run folder that ``asymcert report``, ``audit`` and ``certify`` open.

    Args:
        task_spec: a run spec (``{"name": "fashion-mnist-shirts"}`` or user data) or a task name.
        out_dir: folder of the comparison; a sub-run folder holding a finished run is loaded, an
            interrupted one resumes.
        methods: names from :func:`method_specs`; an unknown one is refused before anything is read or written.
        preset: a task preset (e.g. ``"fast"``) whose training settings are applied on top of
            every method's own (its model settings only to the task's default model).
        n_smoothing: estimation samples n of randomized smoothing (n0 = 100, α = 0.001).
        limit: certify the first ``limit`` test inputs (default: the paper's first 1000).
        paper_scale: the paper's epochs, n = 100,000 and ℓ∞-dist widths (hours on a CPU).
        overrides: per method ``{"model": {...}, "train": {...}, "certify": {...}}`` merged on top.
        norms: ℓp norms certified for every method.
        certify_batch: inputs per certifier call.
        progress, log: training progress bars; a callback receiving progress messages.
        data: the task's data when already loaded.
        fail_fast: re-raise a method's error instead of recording it as ``"failed"`` in the report.
    Returns:
        The comparison (:meth:`Comparison.to_dict` is the content of ``compare.json``).

    Raises:
        UnknownNameError: a method :func:`method_specs` does not know (the message lists the known ones).
    """
    _check_methods(methods, method_specs(paper_scale, n_smoothing))  # (before any data is read)
    task_spec = {"name": task_spec} if isinstance(task_spec, str) else task_spec
    norms_t = tuple(dict.fromkeys(float(p) for p in norms))
    settings = CertifySettings(
        norms=norms_t,
        limit=PAPER_LIMIT if limit is None else int(limit),
        batch_size=certify_batch,
        warmup=WARMUP_INPUTS,
    )
    ctx = _context(task_spec, preset, data, data_dir, settings, progress, log)
    out = Path(out_dir)
    specs = method_specs(paper_scale, n_smoothing, images=ctx.images)
    with exclusive(out, create=True, collective=False):  # one comparison per folder at a time (audit 29e #3)
        entries, certs = _run_methods(methods, specs, overrides or {}, out, ctx, fail_fast)
        return _write_comparison(entries, certs, out, ctx, task_spec, preset, paper_scale, n_smoothing, norms_t)


def _run_methods(
    methods: Iterable[str],
    specs: dict[str, MethodSpec],
    overrides: dict[str, dict[str, Any]],
    out: Path,
    ctx: _Context,
    fail_fast: bool,
) -> tuple[dict[str, MethodEntry], dict[str, Certificate]]:
    """Train (or load) and certify every method into ``out/<method>/``: their entries and certificates (a method
    that fails is a :class:`FailedMethod`, unless ``fail_fast``)."""
    entries: dict[str, MethodEntry] = {}
    certs: dict[str, Certificate] = {}
    for name in dict.fromkeys(methods):
        try:
            entries[name], cert = _compare_method(name, specs, overrides.get(name, {}), out / name, ctx)
        except Exception as exc:  # one failing method does not sink an hour-long comparison
            if fail_fast:
                raise
            entries[name], cert = FailedMethod(f"{type(exc).__name__}: {exc}"), None
            ctx.log(f"{name}: FAILED: {type(exc).__name__}: {exc}")
        if cert is not None:
            certs[name] = cert
    return entries, certs


def _write_comparison(
    entries: dict[str, MethodEntry],
    certs: dict[str, Certificate],
    out: Path,
    ctx: _Context,
    task_spec: dict[str, Any],
    preset: str | None,
    paper_scale: bool,
    n_smoothing: int,
    norms_t: tuple[float, ...],
) -> Comparison:
    """Write compare.json, compare.md and the plots of finished methods into ``out``; returns the comparison."""
    task, data = ctx.task, ctx.data
    y = data.test.y[: ctx.certify.limit]
    labels = {name: e.label for name, e in entries.items() if isinstance(e, ComparedMethod)}
    units = _cert_units(certs, ctx.units)
    result = Comparison(
        task=task_spec,
        task_description=task.description,
        preset=preset,
        paper_scale=paper_scale,
        n_inputs=len(y),
        n_sensitive=int((y == 1).sum()) if task.binary else None,
        n_smoothing=100_000 if paper_scale else int(n_smoothing),
        norms=tuple(norm_label(p) for p in norms_t),
        report_radii=ctx.report_radii,
        methods=entries,
        machine=Machine.current(),
        plots=_plots(out, certs, labels, y, norms_t, task.description, units),
        units=units,
        images=ctx.images,
    )
    text = dumps_strict(result.to_dict(), indent=1, default=str)
    atomic_write(out / COMPARE_JSON, lambda tmp: tmp.write_text(text))
    atomic_write(out / COMPARE_MD, lambda tmp: tmp.write_text(render_markdown(result)))
    return result


def _check_methods(methods: Iterable[str], specs: dict[str, MethodSpec]) -> None:
    """Refuse a method name ``specs`` does not have, or no method at all (UnknownNameError listing the known ones)."""
    if not list(methods):
        raise UnknownNameError(f"give at least one method; known: {', '.join(sorted(specs))}")
    unknown = [name for name in dict.fromkeys(methods) if name not in specs]
    if unknown:
        raise UnknownNameError(f"unknown method(s) {', '.join(unknown)}; known: {', '.join(sorted(specs))}")


def _compare_method(
    name: str, specs: dict[str, MethodSpec], extra: dict[str, Any], run_dir: Path, ctx: _Context
) -> tuple[ComparedMethod, Certificate]:
    """One method (a name in ``specs``): its entry and its certificate."""
    spec = specs[name]
    family = get_family(spec.family)
    model_spec = spec.model
    if model_spec is None and ctx.task.model.get("kind") != spec.family:  # e.g. "convex" on a 10-class task
        model_spec = family.default_model_config()
    model_over = _merge(
        dict(model_spec or {}),
        ctx.preset_overrides.get("model") if model_spec is None else None,
        family.model_settings(ctx.facts),
        extra.get("model"),
    )
    train_over = _merge(dict(spec.train), ctx.preset_overrides.get("train"), extra.get("train"))
    opts = _merge(dict(spec.certify), extra.get("certify"))
    method = opts.pop("method", None)
    ctx.log(
        f"{name}: loading the finished run in {run_dir}"
        if run_finished(run_dir)
        else f"{name}: training into {run_dir}"
    )
    plan = plan_training(ctx.task_spec, None, train_over, model_over, ctx.data_dir, ctx.data)
    settings = replace(ctx.certify, method=method, options=opts)
    done = run_pipeline(
        plan, run_dir, settings, progress=ctx.progress, log=ctx.log, reuse_finished=True, report=_run_reporter(ctx.log)
    )
    cert, run = done.certificate, done.record
    ctx.log(f"{name}: {cert.seconds:.1f} s to certify, {1000 * cert.seconds / max(1, len(cert)):.2f} ms per input")
    entry = ComparedMethod(
        label=spec.label,
        run_dir=str(run_dir),
        trained_now=done.trained_now,
        train_wall_seconds=done.train_wall_seconds,
        model=run.model,
        train=run.train,
        training_seconds=(run.training or {}).get("seconds"),
        certify_options=dict(opts),
        summary=summarize(cert, done.labels, ctx.report_radii),
    )
    return entry, cert


def _run_reporter(log: Callable[[str], None]) -> Reporter:
    """The per-run report writer of a comparison: a failure is logged and gives None (compare.json does not depend
    on it)."""

    def report(run_dir: Path) -> RunResults | None:
        try:
            return write_report(run_dir)
        except Exception as exc:
            log(f"{run_dir}: per-run report failed: {exc}")
            return None

    return report


def _cert_units(certs: dict[str, Certificate], expected: str) -> str:
    """The units the certificates' radii are in: ``expected`` (the task's) when every certificate carries them, as
    every method runs under the task's threat model; otherwise (never expected) a phrase sending the reader to each
    method's own ``units`` in compare.json rather than one that would be wrong for some of them."""
    if all(c.units == expected for c in certs.values()):
        return expected
    return "each method's own units (compare.json: methods.<name>.units)"


def _plots(
    out: Path,
    certs: dict[str, Certificate],
    labels: dict[str, str],
    y: torch.Tensor,
    norms: tuple[float, ...],
    description: str,
    units: str = RAW_UNITS,
) -> dict[str, str]:
    """Plot the certified-accuracy curves per norm and the runtimes of the certified methods (``certs``, named by
    their ``labels``) into ``out``: plot key (norm label or ``"runtime"``) → file name; {} without certificates."""
    plots: dict[str, str] = {}
    if not certs:
        return plots
    for p in norms:
        have = {name: c for name, c in certs.items() if p in c.radii}
        if not have:
            continue
        top = max(float(curve_grid(c, y, p)[-1]) for c in have.values())
        grid = torch.linspace(0.0, top, 200, dtype=torch.float64)
        curves = []
        for name, c in have.items():
            label = f"{labels[name]} (clean {100 * clean_accuracy(c, y):.1f}%)"
            curves.append((label, grid, certified_accuracy(c, y, p, grid)))
        path = out / f"compare_{norm_label(p)}.png"
        plot_certified_curves(curves, _pretty(p), path, title=f"{description}: {_pretty(p)}", units=units)
        plots[norm_label(p)] = path.name
    times = [(labels[name], c.seconds / max(1, len(c))) for name, c in certs.items()]
    path = out / "compare_runtime.png"
    plot_runtimes(times, path)
    plots["runtime"] = path.name
    return plots


def render_markdown(result: Comparison) -> str:
    """The comparison report (compare.md) as Markdown."""
    ok = result.compared
    lines = _md_header(result) + _md_summary_table(ok)
    for norm in result.norms:
        lines += _md_certified_table(ok, norm, result.report_radii.get(norm, []))
    failed = result.failed
    if failed:
        lines += ["### Not compared", ""] + [f"- `{k}` ({v.status}): {v.reason}" for k, v in failed.items()]
        lines += [""]
    lines += [
        "Notes: smoothing radii hold with probability 1 − α each; ℓ1/ℓ∞ radii of ℓ2 methods (and vice versa) "
        "come from norm inequalities on R^d, so they are valid but loose. Bound-propagation radii are the "
        "largest ε verified by bisection (a lower bound on the method's exact certified radius).",
        "",
    ]
    lines += [f"![{key}]({png})" for key, png in result.plots.items()]
    return "\n".join(lines) + "\n"


def _epochs_line(result: Comparison) -> list[str]:
    """The scale note on training epochs, as the compared methods were trained (a preset or override changes
    them: `--preset fast` trained 2 while the note said 20, audit units31); none when no method was compared."""
    epochs = {name: e.train.get("epochs") for name, e in result.compared.items()}
    values = sorted({v for v in epochs.values() if isinstance(v, int)})
    if len(values) == 1:
        return [f"  - {values[0]} training epoch{'s' * (values[0] != 1)} per method (paper: 60–150)"]
    if values:
        return ["  - training epochs: " + ", ".join(f"{n} {v}" for n, v in epochs.items()) + " (paper: 60–150)"]
    return []


def _ibp_text(result: Comparison) -> str:
    """The bound-propagation nets the task gets (trained or not): an MLP on flat feature vectors, else the small CNN
    (review 31b: a comparison without IBP on flat features said CNN)."""
    model = method_specs(images=result.images)["ibp"].model or {}
    if model.get("arch") == "mlp":
        return f"MLP {'-'.join(str(w) for w in model.get('widths', []))} (flat feature vectors)"
    return "small CNN (16, 32, fc 100)"


def _md_header(result: Comparison) -> list[str]:
    """Title, inputs, scale notes, timing method and machine of the comparison report."""
    n_sens = result.n_sensitive
    lines = [
        f"# Comparison: {result.task_description}",
        "",
        f"- test inputs: the first {result.n_inputs}"
        + (f" ({n_sens} of the sensitive class)" if n_sens is not None else ""),
        "- certified accuracy at r: share of sensitive-class test inputs flagged sensitive with a certified "
        f"radius ≥ r (radii in {result.units}); abstentions count as failures",
        f"- scale: {'paper settings' if result.paper_scale else 'CPU-sized defaults (smaller than the paper)'}"
        + (f", preset `{result.preset}`" if result.preset else ""),
    ]
    if not result.paper_scale:
        lines += [
            *_epochs_line(result),
            f"  - randomized smoothing: MLP 256-256 base model (paper: ResNet-18), n = {result.n_smoothing:,} "
            "estimation samples (paper: 100,000), n0 = 100, α = 0.001, σ = 0.75",
            f"  - ℓ∞-distance net: 4 × 512 (paper: 5 × 5120); orthogonal net: MLP 3 × 256; IBP: {_ibp_text(result)}",
        ]
    lines.append(
        f"- certify ms / input: one timed pass over all the inputs, after an untimed warm-up call on "
        f"{WARMUP_INPUTS} of them (kernel loading, first-call allocations)"
    )
    machine = result.machine
    load = None if machine.load_average is None else list(machine.load_average)  # (written as a list: [1.5, 2.0, 2.0])
    lines.append(
        f"- machine: {machine.cpu}, {machine.cores} cores, {machine.torch_threads} torch "
        f"threads, load average {load} when the report was written"
    )
    return [*lines, ""]


def _md_summary_table(ok: dict[str, ComparedMethod]) -> list[str]:
    """One row per compared method: certificate and guarantee, accuracies, certification and training time."""
    lines = [
        "| method | certificate | clean accuracy | sensitive flagged | certify ms / input | training min |",
        "|---|---|---|---|---|---|",
    ]
    for name, e in ok.items():
        s = e.summary
        guarantee = f"probability 1 − {s.alpha}" if s.guarantee is Guarantee.PROBABILISTIC else "deterministic"
        train_min = (e.training_seconds or 0.0) / 60
        flagged = s.detection.sensitive_flagged_correctly if s.detection is not None else 0.0
        lines.append(
            f"| {e.label} (`{name}`) | {s.method} ({guarantee}) | {100 * s.clean_accuracy:.1f}% | "
            f"{100 * flagged:.1f}% | {1000 * s.certify_seconds_per_input:.2f} | {train_min:.1f} |"
        )
    return [*lines, ""]


def _md_certified_table(ok: dict[str, ComparedMethod], norm: str, radii: list[float]) -> list[str]:
    """Certified accuracy of every method at the task's report radii in ``norm`` (a label), and the median radius."""
    if not radii:
        return []
    pretty = "ℓ∞" if norm == "linf" else "ℓ" + norm[1:]
    lines = [
        f"### Certified accuracy, {pretty}",
        "",
        "| method | " + " | ".join(f"r = {r:g}" for r in radii) + " | median radius |",
        "|---|" + "---|" * (len(radii) + 1),
    ]
    for e in ok.values():
        summary = e.summary.norms.get(norm)
        table = summary.table() if summary is not None else {}
        cells = [f"{100 * table.get(f'{r:g}', 0.0):.1f}%" for r in radii]
        median = summary.median_radius if summary is not None else 0.0
        lines.append(f"| {e.label} | " + " | ".join(cells) + f" | {median:.4g} |")
    return [*lines, ""]


def compare_cli_main(
    task: str,
    out: str | Path,
    methods: str | Sequence[str] = DEFAULT_METHODS,
    preset: str | None = None,
    n_smoothing: int = 10000,
    limit: int | None = None,
    paper_scale: bool = False,
    data_dir: str | Path | None = None,
    progress: bool = True,
    echo: Callable[[str], None] = print,
) -> Comparison:
    """What ``asymcert compare`` does: run :func:`compare` and print a short summary.

    Args:
        task: a registered task name.
        methods: names, or one comma-separated string (``"convex,smoothing,ibp"``).
        echo: where progress and the summary go (``click.echo`` in the CLI).
    Returns:
        The comparison, as :func:`compare` returns it.
    Raises:
        MethodsFailedError: a method failed (after the report, which lists it, is written).
    """
    if isinstance(methods, str):
        methods = [m.strip() for m in methods.split(",") if m.strip()]
    result = compare(
        {"name": task},
        out,
        methods=tuple(methods),
        preset=preset,
        n_smoothing=n_smoothing,
        limit=limit,
        paper_scale=paper_scale,
        data_dir=data_dir,
        progress=progress,
        log=echo,
    )
    for name, e in result.methods.items():
        if isinstance(e, ComparedMethod):
            s = e.summary
            echo(f"{name}: clean {100 * s.clean_accuracy:.1f}%, {1000 * s.certify_seconds_per_input:.2f} ms/input")
        else:
            echo(f"{name}: {e.status} — {e.reason}")
    echo(f"report: {Path(out) / COMPARE_MD}")
    failed = [f"{name}: {e.reason}" for name, e in result.failed.items()]
    if failed:  # (the report is written; the exit code says it is incomplete: audit 29e #5)
        raise MethodsFailedError(
            f"{len(failed)} of {len(result.methods)} methods failed (compare.md lists them): " + "; ".join(failed[:3])
        )
    return result
