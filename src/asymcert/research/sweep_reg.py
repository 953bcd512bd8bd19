"""Regularisation sweep: Jacobian-regulariser strength λ × feature map φ on one binary task, trading
clean accuracy against certified accuracy, with a Pareto plot per norm.

``sweep_reg("fashion-mnist-shirts", out)`` writes::

    out/runs/<φ>_lam<λ>/        a run folder per grid point (run.json, model.safetensors,
                                certificates.safetensors, results.json, report.md, plots; the
                                usual ``asymcert certify / report / audit`` work on it) and
                                sweep_result.json (written last; a re-run skips the point)
    out/results.json            settings, every grid point's results, the Pareto fronts (the returned
                                :class:`RegSweep`'s ``to_dict()``)
    out/sweep.md                the table and the plot
    out/pareto.png              clean accuracy vs certified accuracy at one radius per norm

The task's data is loaded ONCE and handed to every worker; each grid point trains the task's own
model (for ``fashion-mnist-shirts`` the authors' convex conv net) with the task's recipe, changing
only λ and φ, for a CPU-sized number of epochs (default 6 instead of the paper's 60).
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any, cast

from asymcert.certify.result import RAW_UNITS, norm_label, normalize_norm
from asymcert.certify.summary import RunResults
from asymcert.data.tasks import TaskData, get_task
from asymcert.jsontext import typed
from asymcert.pipeline import CertifySettings, plan_training, run_pipeline
from asymcert.report.machine import Machine
from asymcert.report.writer import write_report
from asymcert.research.sweeps import (
    RESULT_FILE,
    Clock,
    SweepError,
    SweepRun,
    pareto_front,
    parse_float_list,
    plot_pareto,
    pretty_norm,
    progress_log,
    run_jobs,
    run_lines,
    shared,
    split_finished,
    sweep_folder,
    write_json,
)

FEATURE_MAPS: dict[str, list[dict[str, Any]]] = {
    "shift": [{"kind": "shift"}],
    "concat-abs": [{"kind": "shift"}, {"kind": "concat-abs"}],
    "identity": [{"kind": "identity"}],
}
"""Named feature maps φ: x − μ; concat(x − μ, |x − μ|) (Lipschitz 2, √2, 1 in ℓ1, ℓ2, ℓ∞); x."""
DEFAULT_LAMBDAS = (0.0, 1e-3, 1e-2, 1e-1)
DEFAULT_FEATURE_MAPS = ("shift", "concat-abs")
REG_EPOCHS = 6
REG_LIMIT = 1000
RESULTS_JSON, REPORT_MD, PARETO_PNG = "results.json", "sweep.md", "pareto.png"


@dataclass(frozen=True)
class RegSettings:
    """A regularisation sweep's settings, stored with every grid point's result (a re-run reuses the points stored
    with equal settings).

    Attributes:
        task: the binary feature-convex task's name.
        epochs: training epochs per grid point.
        limit: certify the first ``limit`` test inputs (None: all).
        base_model: the task's own model config (JSON; each point swaps its feature map φ).
        base_train: the task's own training recipe (JSON, keys of :class:`~asymcert.train.TrainConfig`; each point
            sets the Jacobian regulariser's λ and the epochs).
    """

    task: str
    epochs: int
    limit: int | None
    base_model: dict[str, Any]
    base_train: dict[str, Any]

    def to_dict(self) -> dict[str, Any]:
        """``{"task", "epochs", "limit", "base_model", "base_train"}`` (every grid point's ``"settings"``)."""
        return {
            "task": self.task,
            "epochs": self.epochs,
            "limit": self.limit,
            "base_model": self.base_model,
            "base_train": self.base_train,
        }


@dataclass(frozen=True)
class RegPoint:
    """One grid point (feature map φ, λ): its run folder and that run's report numbers.

    Attributes:
        feature_map: the name of φ (a key of :data:`FEATURE_MAPS`).
        lam: the Jacobian regulariser's weight λ (``"lambda"`` in the JSON).
        name: the point's name and folder (:func:`point_name`).
        run_dir: the point's run folder.
        model: the model config the run trained (run.json's ``model``; JSON).
        job_seconds: wall-clock seconds of the whole job (training, certification, report).
        results: the run's report numbers (its ``results.json`` but its ``task`` and ``plots``, which stay in the
            run folder: both empty here).
    """

    feature_map: str
    lam: float
    name: str
    run_dir: str
    model: dict[str, Any]
    job_seconds: float
    results: RunResults

    @property
    def clean_accuracy(self) -> float:
        """Share of the certified test inputs classified correctly, in [0, 1]."""
        return self.results.summary.clean_accuracy

    @property
    def sensitive_flagged_correctly(self) -> float:
        """Share of the sensitive test inputs flagged sensitive, in [0, 1] (0.0 for a summary without it)."""
        detection = self.results.summary.detection
        return 0.0 if detection is None else detection.sensitive_flagged_correctly

    @property
    def training_seconds(self) -> float:
        """Wall-clock seconds of training (the point's run trained before its report: never None)."""
        return cast(float, self.results.training_seconds)

    def certified_accuracy(self, norm: str) -> dict[str, float]:
        """Radius label (``"0.5"``) → certified accuracy in ``norm`` (a label; {}: not certified in it)."""
        found = self.results.summary.norms.get(norm)
        return {} if found is None else found.table()

    def median_radius(self, norm: str) -> float:
        """The median certified radius in ``norm`` (a label), in the run's units."""
        return self.results.summary.norms[norm].median_radius

    def to_dict(self) -> dict[str, Any]:
        """The point's JSON object in ``results.json``: ``{"feature_map", "lambda", "name", "run_dir", "model",
        "training_seconds", "best_epoch", "job_seconds"}``, then :meth:`RunResults.to_dict`'s keys but ``task`` and
        ``plots`` (``training_seconds`` and ``best_epoch`` keep their places above)."""
        report = {k: v for k, v in self.results.to_dict().items() if k not in ("plots", "task")}
        out: dict[str, Any] = {"feature_map": self.feature_map, "lambda": self.lam, "name": self.name}
        out.update(run_dir=self.run_dir, model=self.model, training_seconds=report["training_seconds"])
        out.update(best_epoch=report["best_epoch"], job_seconds=self.job_seconds)
        out.update(report)
        return out

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> RegPoint:
        """The point :meth:`to_dict` gave ``raw`` (a finished point's ``sweep_result.json``; ``"settings"``
        ignored).

        Raises:
            KeyError, ValueError, TypeError: ``raw`` is not such an object: a key missing, or a value of another type
                than its field's (no half-built point).
        """
        return typed(
            cls(
                feature_map=raw["feature_map"],
                lam=raw["lambda"],
                name=raw["name"],
                run_dir=raw["run_dir"],
                model=raw["model"],
                job_seconds=raw["job_seconds"],
                results=RunResults.from_dict(raw),
            )
        )


@dataclass(frozen=True)
class ParetoFront:
    """The clean/certified Pareto front of the grid in one norm.

    Attributes:
        radius: the radius r at which certified accuracy was compared (the run's units).
        front: the names of the points on the front, in grid order.
    """

    radius: float
    front: list[str]

    def to_dict(self) -> dict[str, Any]:
        """``{"radius", "front"}``."""
        return {"radius": self.radius, "front": list(self.front)}


@dataclass(frozen=True)
class RegSweep:
    """A regularisation sweep (:func:`sweep_reg`): :meth:`to_dict` is its ``results.json``.

    Attributes:
        task, task_description: the task's name and description.
        settings: the sweep's settings.
        lambdas: the λ values of the grid; feature_maps: the names of its feature maps φ.
        report_radii: norm label → the task's report radii (the tables' columns), in the runs' units: the task's
            threat model's when it has one (:attr:`~asymcert.data.tasks.Task.own_report_radii`), else raw input units.
        entries: the grid points that finished, feature map by feature map, λ by λ.
        pareto: norm label → the Pareto front in that norm (a norm no radius is common to is left out).
        units: the units of the points' radii (:func:`radii_units`).
        run: how this invocation ran.
        failed: point name → the error of each point that failed (not in the tables).
        plots: ``{"pareto": the Pareto plot's file name in the sweep folder}``.
    """

    task: str
    task_description: str
    settings: RegSettings
    lambdas: list[float]
    feature_maps: list[str]
    report_radii: dict[str, list[float]]
    entries: list[RegPoint]
    pareto: dict[str, ParetoFront]
    units: str
    run: SweepRun
    failed: dict[str, str]
    plots: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """``results.json``: ``{"task", "task_description", "settings", "lambdas", "feature_maps", "report_radii",
        "entries", "pareto", "units"}``, then :class:`SweepRun`'s keys, ``"failed"`` and ``"plots"``."""
        out: dict[str, Any] = {"task": self.task, "task_description": self.task_description}
        out.update(settings=self.settings.to_dict(), lambdas=list(self.lambdas), feature_maps=list(self.feature_maps))
        out["report_radii"] = {n: list(r) for n, r in self.report_radii.items()}
        out["entries"] = [e.to_dict() for e in self.entries]
        out.update(pareto={n: f.to_dict() for n, f in self.pareto.items()}, units=self.units)
        out.update(self.run.to_dict())
        out.update(failed=dict(self.failed), plots=dict(self.plots))
        return out


@dataclass(frozen=True)
class _RegContext:
    """What every grid point's job reads (:func:`~asymcert.research.sweeps.shared`): the task's data, the settings,
    the sweep folder and the data folder."""

    data: TaskData
    settings: RegSettings
    out: str
    data_dir: str | None


def point_name(feature_map: str, lam: float) -> str:
    """Folder / label of a grid point, e.g. ``"shift_lam0.01"``."""
    return f"{feature_map}_lam{lam:g}"


def _reg_job(job: tuple[str, float]) -> RegPoint:
    """Train, certify and report one grid point through the pipeline (runs in a worker; data from :func:`shared`).

    Raises:
        SweepError: the run's report was not written (the point fails; the sweep goes on).
    """
    fm, lam = job
    context: _RegContext = shared()
    settings = context.settings
    run_dir = Path(context.out) / "runs" / point_name(fm, lam)
    clock = Clock()
    plan = plan_training(
        {"name": settings.task},
        None,
        {"jacobian_reg": lam, "epochs": settings.epochs, "device": "cpu"},
        {"feature_map": FEATURE_MAPS[fm]},
        context.data_dir,
        context.data,
    )
    done = run_pipeline(
        plan, run_dir, CertifySettings(limit=settings.limit), progress=False, log=lambda msg: None, report=write_report
    )
    if done.report is None:
        raise SweepError(f"{run_dir}: the run's report was not written")
    point = RegPoint(
        feature_map=fm,
        lam=lam,
        name=point_name(fm, lam),
        run_dir=str(run_dir),
        model=done.record.model,
        job_seconds=clock.seconds(),
        results=replace(done.report, task={}, plots={}),
    )
    write_json(run_dir / RESULT_FILE, {"settings": settings.to_dict(), **point.to_dict()})
    return point


def check_task(task_name: str) -> None:
    """Raise :class:`SweepError` unless ``task_name`` is a binary task whose default model has a feature map φ
    (the sweep swaps φ and the Jacobian regulariser's weight)."""
    task = get_task(task_name)
    if not task.binary or "feature_map" not in task.model:
        raise SweepError(
            f"sweep reg needs a binary feature-convex task (e.g. fashion-mnist-shirts, mnist-38); "
            f"{task_name!r} is not one"
        )


def parse_feature_maps(text: str | Sequence[str]) -> list[str]:
    """``"shift,concat-abs"`` → ``["shift", "concat-abs"]``.

    Raises:
        SweepError: an unknown name (the message lists the known ones), none given, or a repeat.
    """
    names = [t.strip() for t in text.split(",")] if isinstance(text, str) else [str(t).strip() for t in text]
    names = [n for n in names if n]
    if not names:
        raise SweepError("--feature-maps: give at least one of " + ", ".join(FEATURE_MAPS))
    for n in names:
        if n not in FEATURE_MAPS:
            raise SweepError(f"--feature-maps: unknown feature map {n!r}; known: {', '.join(FEATURE_MAPS)}")
    if len(set(names)) != len(names):
        raise SweepError("--feature-maps: a feature map is repeated")
    return names


def _check_grid(
    lambdas: Sequence[float], feature_maps: Sequence[str], epochs: int | None
) -> tuple[list[float], list[str]]:
    """The grid's λ values (distinct, finite, ≥ 0) and feature-map names, checked; ``epochs`` None or ≥ 1.

    Raises:
        SweepError: a value out of range or an unknown feature map.
    """
    values = [float(v) for v in lambdas]
    if not values or any(not math.isfinite(v) or v < 0 for v in values) or len(set(values)) != len(values):
        raise SweepError(f"λ values must be distinct finite numbers ≥ 0, got {values}")
    if epochs is not None and epochs < 1:
        raise SweepError(f"--epochs must be ≥ 1, got {epochs}")
    return values, parse_feature_maps(list(feature_maps))


def _fronts(entries: list[RegPoint], chosen: dict[str, float]) -> dict[str, ParetoFront]:
    """Per norm label, the radius and the names of the grid points on the clean/certified Pareto front: at the chosen
    radius where every point was certified at it, else at the second-smallest radius they all have (a run under a
    threat model reports its own radii: SpamBase's `0.51` was looked up and not found, audit 29e #2); a norm no
    radius is common to is left out."""
    fronts = {}
    for n, r in chosen.items():
        key = _common_radius([set(e.certified_accuracy(n)) for e in entries], f"{r:g}")
        if key is None:
            continue
        pts = [(e.clean_accuracy, e.certified_accuracy(n)[key]) for e in entries]
        fronts[n] = ParetoFront(float(key), [e.name for e, on in zip(entries, pareto_front(pts)) if on])
    return fronts


def _common_radius(keys: list[set[str]], wanted: str) -> str | None:
    """``wanted`` if every set of radius keys has it, else the second-smallest (the only) key common to all."""
    common = set.intersection(*keys) if keys else set()
    if wanted in common:
        return wanted
    ordered = sorted(common, key=float)
    return ordered[1] if len(ordered) > 1 else (ordered[0] if ordered else None)


def radii_units(entries: list[RegPoint]) -> str:
    """The units of the grid points' radii (their results' ``units``; several joined by " / ", which a sweep of one
    task does not give); raw input units for no points (audit units30 F3: the sweep's outputs named none)."""
    units = sorted({e.results.summary.units for e in entries})
    return " / ".join(units) if units else RAW_UNITS


def _plot_fronts(entries: list[RegPoint], fronts: dict[str, ParetoFront], out: Path, description: str) -> str:
    """Draw the Pareto panels (one per norm, titled with the radius and its units) into ``out``; returns the PNG's
    file name."""
    units = radii_units(entries)
    panels = [
        (
            f"{pretty_norm(n)}, r = {f.radius:g} ({units})",
            [
                (f"{e.feature_map} λ={e.lam:g}", e.clean_accuracy, e.certified_accuracy(n)[f"{f.radius:g}"])
                for e in entries
            ],
        )
        for n, f in fronts.items()
    ]
    return plot_pareto(panels, out / PARETO_PNG, f"{description}: clean vs certified accuracy").name


def _job_name(job: tuple[str, float]) -> str:
    """The name of a grid point's job (:func:`point_name`)."""
    return point_name(*job)


def _point_line(result: RegPoint) -> str:
    """One progress line for a finished grid point: clean accuracy and seconds."""
    return f"clean {100 * result.clean_accuracy:.1f}% ({result.job_seconds:.0f} s)"


def sweep_reg(
    task_name: str,
    out_dir: str | Path,
    lambdas: Sequence[float] = DEFAULT_LAMBDAS,
    feature_maps: Sequence[str] = DEFAULT_FEATURE_MAPS,
    epochs: int | None = None,
    workers: int = 2,
    limit: int | None = REG_LIMIT,
    data_dir: str | Path | None = None,
    pareto_radii: dict[str, float] | None = None,
    log: Callable[[str], None] | None = None,
    data: TaskData | None = None,
) -> RegSweep:
    """Train and certify the task's model for every (feature map, λ); write the table and Pareto plot.

    Args:
        task_name: a registered binary feature-convex task (e.g. ``fashion-mnist-shirts``).
        out_dir: the sweep folder; grid points finished there before (same settings) are skipped.
        lambdas: Jacobian-regulariser strengths (≥ 0).
        feature_maps: names from :data:`FEATURE_MAPS`.
        epochs: training epochs per grid point (default 6).
        workers: worker processes (spawn pool, one torch thread each); ≤ 1 runs in this process.
        limit: certify the first ``limit`` test inputs (default 1000, the paper's; None for all).
        data_dir: folder holding the task's data files.
        pareto_radii: radius per norm label (``{"l2": 0.5}``) at which certified accuracy is plotted
            against clean accuracy; default: the task's second-smallest report radius per norm.
        log: receives one line per finished grid point.
        data: the task's data when already loaded.
    Returns:
        The sweep; its :meth:`RegSweep.to_dict` is the content of ``results.json``.
    """
    log = log or (lambda msg: None)
    check_task(task_name)
    task = get_task(task_name)
    lambdas, feature_maps = _check_grid(lambdas, feature_maps, epochs)
    radii, chosen = _report_radii(task.own_report_radii, pareto_radii)  # (the runs' units: a threat model's, if any)
    settings = RegSettings(task_name, int(epochs or REG_EPOCHS), limit, task.model, task.train)
    data = data or task.load(Path(data_dir) if data_dir else None)
    out = Path(out_dir)
    with sweep_folder(out):  # (one sweep per folder, never a run folder: audit 29e #1, #4)
        clock = Clock()
        machine_start = Machine.current()
        jobs = list(itertools.product(feature_maps, lambdas))
        results, todo = split_finished(
            jobs, lambda job: out / "runs" / _job_name(job), settings.to_dict(), RegPoint.from_dict
        )
        log(
            f"{len(jobs)} grid points: {len(results)} finished before, {len(todo)} to train "
            f"({settings.epochs} epochs each, {max(1, workers)} worker(s))"
        )
        on_done = progress_log(log, len(jobs), len(results), _job_name, _point_line)
        context = _RegContext(data, settings, str(out), str(data_dir) if data_dir else None)
        new, errors = run_jobs(todo, _reg_job, context, workers=workers, on_done=on_done)
        results.update(new)
        entries = [results[j] for j in jobs if j in results]
        fronts = _fronts(entries, chosen)
        sweep = RegSweep(
            task=task_name,
            task_description=task.description,
            settings=settings,
            lambdas=lambdas,
            feature_maps=feature_maps,
            report_radii=radii,
            entries=entries,
            pareto=fronts,
            units=radii_units(entries),
            run=SweepRun.finished(clock, len(new), len(jobs) - len(todo), workers, machine_start),
            failed={point_name(*j): e for j, e in errors.items()},
            plots={"pareto": _plot_fronts(entries, fronts, out, task.description)},
        )
        write_json(out / RESULTS_JSON, sweep.to_dict())
        (out / REPORT_MD).write_text(render_markdown(sweep))
        if errors:
            raise SweepError(
                f"{len(errors)} of {len(jobs)} grid points failed (report written without them): "
                + "; ".join(f"{point_name(*j)}: {e}" for j, e in list(errors.items())[:3])
            )
    return sweep


def _report_radii(
    task_radii: dict[float, tuple[float, ...]], pareto_radii: dict[str, float] | None
) -> tuple[dict[str, list[float]], dict[str, float]]:
    """The task's report radii by norm label, and the radius per norm label at which the fronts are drawn:
    ``pareto_radii``'s, else the second-smallest report radius (the only one when there is one)."""
    radii = {_label(p): list(r) for p, r in task_radii.items()}
    return radii, {n: (pareto_radii or {}).get(n, r[1] if len(r) > 1 else r[0]) for n, r in radii.items() if r}


def _label(p: float) -> str:
    """The norm label (``"l2"``, ``"linf"``) of ``p``."""
    return norm_label(normalize_norm(p))


def render_markdown(sweep: RegSweep) -> str:
    """The regularisation sweep report as Markdown."""
    s = sweep.settings
    base = s.base_train
    units = sweep.units
    lines = [
        f"# Regularisation sweep: {sweep.task_description}",
        "",
        f"- grid: Jacobian regulariser λ ∈ {{{', '.join(f'{v:g}' for v in sweep.lambdas)}}} × feature map φ ∈ "
        f"{{{', '.join(sweep.feature_maps)}}} (shift: x − μ; concat-abs: concat(x − μ, |x − μ|))",
        f"- model: the task's own, `{s.base_model['convex']}`; training: the task's recipe "
        f"({base.get('optimizer', 'sgd').upper()} lr {base.get('lr')}, batch {base.get('batch_size')}) for "
        f"{s.epochs} epochs (paper: {base.get('epochs')}), best-validation checkpoint, b fitted on validation",
        "- evaluation: "
        + ("every test input" if s.limit is None else f"the first {s.limit} test inputs")
        + "; certified accuracy at r = share of sensitive-class test inputs flagged sensitive with radius ≥ r "
        f"(radii in {units})",
    ]
    lines += run_lines(sweep.run, "grid point") + [""]
    if sweep.failed:
        lines += ["**Failed grid points**: " + "; ".join(f"{k}: {v}" for k, v in sweep.failed.items()), ""]
    lines += ["| φ | λ | clean | sensitive flagged | training min | Pareto-optimal at |", "|---|---|---|---|---|---|"]
    for e in sweep.entries:
        on = [f"{pretty_norm(n)} r={f.radius:g}" for n, f in sweep.pareto.items() if e.name in f.front]
        lines.append(
            f"| {e.feature_map} | {e.lam:g} | {100 * e.clean_accuracy:.1f}% | "
            f"{100 * e.sensitive_flagged_correctly:.1f}% | {e.training_seconds / 60:.1f} | "
            f"{', '.join(on) or '—'} |"
        )
    lines.append("")
    for n, radii in sweep.report_radii.items():
        lines += _md_norm_table(sweep, n, radii)
    lines += [
        "Bold: Pareto-optimal (clean accuracy, certified accuracy at the plotted radius) for that norm.",
        "",
        f"![Pareto]({sweep.plots['pareto']})",
        "",
    ]
    return "\n".join(lines) + "\n"


def _md_norm_table(sweep: RegSweep, n: str, radii: list[float]) -> list[str]:
    """The certified-accuracy table of norm ``n`` (a label) at ``radii``: a row per grid point, its cell at the
    plotted radius in bold where it is on the front."""
    lines = [
        f"### Certified accuracy, {pretty_norm(n)} (radii in {sweep.units})",
        "",
        "| φ | λ | " + " | ".join(f"r = {r:g}" for r in radii) + " | median radius |",
        "|---|---|" + "---|" * (len(radii) + 1),
    ]
    front = sweep.pareto.get(n)
    for e in sweep.entries:
        table = e.certified_accuracy(n)
        on = front is not None and e.name in front.front
        cells = []
        for r in radii:
            cell = f"{100 * table[f'{r:g}']:.1f}%"
            cells.append(f"**{cell}**" if on and r == cast(ParetoFront, front).radius else cell)
        lines.append(f"| {e.feature_map} | {e.lam:g} | " + " | ".join(cells) + f" | {e.median_radius(n):.3g} |")
    lines.append("")
    return lines


def reg_cli_main(
    task: str,
    out: str | Path,
    lambdas: str = "0,1e-3,1e-2,1e-1",
    feature_maps: str = "shift,concat-abs",
    epochs: int | None = None,
    workers: int = 2,
    limit: int | None = REG_LIMIT,
    data_dir: str | Path | None = None,
    echo: Callable[[str], None] = print,
) -> RegSweep:
    """What ``asymcert sweep reg`` does: parse the options, run :func:`sweep_reg`, print the fronts.

    Args:
        lambdas: comma-separated λ values (``"0,1e-3,1e-2"``).
        feature_maps: comma-separated names from :data:`FEATURE_MAPS`.
        echo: where progress lines go (``click.echo`` in the CLI).
    """
    if workers < 1:
        raise SweepError(f"--workers must be ≥ 1, got {workers}")
    check_task(task)
    lams = parse_float_list(lambdas, "--lambdas")
    fms = parse_feature_maps(feature_maps)
    sweep = sweep_reg(task, out, lams, fms, epochs, workers, REG_LIMIT if limit is None else limit, data_dir, log=echo)
    for n, f in sweep.pareto.items():
        echo(f"Pareto front ({pretty_norm(n)}, r = {f.radius:g} in {sweep.units}): {', '.join(f.front)}")
    echo(f"{len(sweep.entries)} grid points in {sweep.run.wall_seconds / 60:.1f} min; report: {Path(out) / REPORT_MD}")
    return sweep
