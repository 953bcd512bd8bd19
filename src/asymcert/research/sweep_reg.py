"""Regularisation sweep: Jacobian-regulariser strength λ × feature map φ on one binary task, trading
clean accuracy against certified accuracy, with a Pareto plot per norm.

``sweep_reg("fashion-mnist-shirts", out)`` writes::

    out/runs/<φ>_lam<λ>/        a run folder per grid point (run.json, model.safetensors,
                                certificates.safetensors, results.json, report.md, plots; the
                                usual ``asymcert certify / report / audit`` work on it) and
                                sweep_result.json (written last; a re-run skips the point)
    out/results.json            settings, every grid point's results, the Pareto fronts
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
from pathlib import Path
from typing import Any

from asymcert.certify.result import RAW_UNITS, norm_label, normalize_norm
from asymcert.data.tasks import TaskData, get_task
from asymcert.pipeline import CertifySettings, plan_training, run_pipeline
from asymcert.report.machine import describe_machine
from asymcert.report.writer import write_report
from asymcert.research.sweeps import (
    RESULT_FILE,
    Clock,
    SweepError,
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


def point_name(feature_map: str, lam: float) -> str:
    """Folder / label of a grid point, e.g. ``"shift_lam0.01"``."""
    return f"{feature_map}_lam{lam:g}"


def _reg_job(job: tuple[str, float]) -> dict[str, Any]:
    """Train, certify and report one grid point through the pipeline (runs in a worker; data from :func:`shared`)."""
    fm, lam = job
    s = shared()
    settings = s["settings"]
    run_dir = Path(s["out"]) / "runs" / point_name(fm, lam)
    clock = Clock()
    plan = plan_training(
        {"name": settings["task"]},
        None,
        {"jacobian_reg": lam, "epochs": settings["epochs"], "device": "cpu"},
        {"feature_map": FEATURE_MAPS[fm]},
        s["data_dir"],
        s["data"],
    )
    done = run_pipeline(
        plan,
        run_dir,
        CertifySettings(limit=settings["limit"]),
        progress=False,
        log=lambda msg: None,
        report=write_report,
    )
    run, report = done.record, done.report.to_dict() if done.report is not None else {}
    training = run.training or {}
    result = {
        "settings": settings,
        "feature_map": fm,
        "lambda": lam,
        "name": point_name(fm, lam),
        "run_dir": str(run_dir),
        "model": run.model,
        "training_seconds": training["seconds"],
        "best_epoch": training["best"]["epoch"],
        "job_seconds": clock.seconds(),
        **{k: v for k, v in report.items() if k not in ("plots", "task")},
    }
    write_json(run_dir / RESULT_FILE, result)
    return result


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


def _fronts(entries: list[dict[str, Any]], chosen: dict[str, float]) -> dict[str, dict[str, Any]]:
    """Per norm label, the radius and the names of the grid points on the clean/certified Pareto front: at the chosen
    radius where every point was certified at it, else at the second-smallest radius they all have (a run under a
    threat model reports its own radii: SpamBase's `0.51` was looked up and not found, audit 29e #2); a norm no
    radius is common to is left out."""
    fronts = {}
    for n, r in chosen.items():
        key = _common_radius([set(e["certified_accuracy"].get(n, {})) for e in entries], f"{r:g}")
        if key is None:
            continue
        pts = [(e["clean_accuracy"], e["certified_accuracy"][n][key]) for e in entries]
        fronts[n] = {"radius": float(key), "front": [e["name"] for e, on in zip(entries, pareto_front(pts)) if on]}
    return fronts


def _common_radius(keys: list[set[str]], wanted: str) -> str | None:
    """``wanted`` if every set of radius keys has it, else the second-smallest (the only) key common to all."""
    common = set.intersection(*keys) if keys else set()
    if wanted in common:
        return wanted
    ordered = sorted(common, key=float)
    return ordered[1] if len(ordered) > 1 else (ordered[0] if ordered else None)


def radii_units(entries: list[dict[str, Any]]) -> str:
    """The units of the grid points' radii (their results' ``units``; several joined by " / ", which a sweep of one
    task does not give); raw input units for no points (audit units30 F3: the sweep's outputs named none)."""
    units = sorted({str(e.get("units", RAW_UNITS)) for e in entries})
    return " / ".join(units) if units else RAW_UNITS


def _plot_fronts(entries: list[dict[str, Any]], fronts: dict[str, dict[str, Any]], out: Path, description: str) -> str:
    """Draw the Pareto panels (one per norm, titled with the radius and its units) into ``out``; returns the PNG's
    file name."""
    units = radii_units(entries)
    panels = [
        (
            f"{pretty_norm(n)}, r = {f['radius']:g} ({units})",
            [
                (
                    f"{e['feature_map']} λ={e['lambda']:g}",
                    e["clean_accuracy"],
                    e["certified_accuracy"][n][f"{f['radius']:g}"],
                )
                for e in entries
            ],
        )
        for n, f in fronts.items()
    ]
    return plot_pareto(panels, out / PARETO_PNG, f"{description}: clean vs certified accuracy").name


def _point_line(result: dict[str, Any]) -> str:
    """One progress line for a finished grid point: clean accuracy and seconds."""
    return f"clean {100 * result['clean_accuracy']:.1f}% ({result['job_seconds']:.0f} s)"


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
) -> dict[str, Any]:
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
        The content of ``results.json``.
    """
    log = log or (lambda msg: None)
    check_task(task_name)
    task = get_task(task_name)
    lambdas, feature_maps = _check_grid(lambdas, feature_maps, epochs)
    radii = {_label(p): list(r) for p, r in task.report_radii.items()}
    chosen = {n: (pareto_radii or {}).get(n, r[1] if len(r) > 1 else r[0]) for n, r in radii.items() if r}
    settings = {"task": task_name, "epochs": int(epochs or REG_EPOCHS), "limit": limit}
    settings.update(base_model=task.model, base_train=task.train)
    data = data or task.load(Path(data_dir) if data_dir else None)
    out = Path(out_dir)
    with sweep_folder(out):  # (one sweep per folder, never a run folder: audit 29e #1, #4)
        clock = Clock()
        machine_start = describe_machine()
        jobs = list(itertools.product(feature_maps, lambdas))
        results, todo = split_finished(jobs, lambda job: out / "runs" / point_name(*job), settings)
        log(
            f"{len(jobs)} grid points: {len(results)} finished before, {len(todo)} to train "
            f"({settings['epochs']} epochs each, {max(1, workers)} worker(s))"
        )
        on_done = progress_log(log, len(jobs), len(results), lambda job: point_name(*job), _point_line)
        shared_data = {
            "data": data,
            "settings": settings,
            "out": str(out),
            "data_dir": str(data_dir) if data_dir else None,
        }
        new, errors = run_jobs(todo, _reg_job, shared_data, workers=workers, on_done=on_done)
        results.update(new)
        entries = [{k: v for k, v in results[j].items() if k != "settings"} for j in jobs if j in results]
        fronts = _fronts(entries, chosen)
        summary: dict[str, Any] = {"task": task_name, "task_description": task.description, "settings": settings}
        summary["lambdas"] = lambdas
        summary.update(feature_maps=feature_maps, report_radii=radii, entries=entries, pareto=fronts)
        summary["units"] = radii_units(entries)
        summary.update(wall_seconds=clock.seconds(), trained_now=len(new), reused=len(jobs) - len(todo))
        summary.update(workers=max(1, workers), machine_start=machine_start, machine_end=describe_machine())
        summary["failed"] = {point_name(*j): e for j, e in errors.items()}
        summary["plots"] = {"pareto": _plot_fronts(entries, fronts, out, task.description)}
        write_json(out / RESULTS_JSON, summary)
        (out / REPORT_MD).write_text(render_markdown(summary))
        if errors:
            raise SweepError(
                f"{len(errors)} of {len(jobs)} grid points failed (report written without them): "
                + "; ".join(f"{point_name(*j)}: {e}" for j, e in list(errors.items())[:3])
            )
    return summary


def _label(p: float) -> str:
    """The norm label (``"l2"``, ``"linf"``) of ``p``."""
    return norm_label(normalize_norm(p))


def render_markdown(summary: dict[str, Any]) -> str:
    """The regularisation sweep report as Markdown."""
    s = summary["settings"]
    base = s["base_train"]
    units = summary.get("units", RAW_UNITS)
    lines = [
        f"# Regularisation sweep: {summary['task_description']}",
        "",
        f"- grid: Jacobian regulariser λ ∈ {{{', '.join(f'{v:g}' for v in summary['lambdas'])}}} × feature map φ ∈ "
        f"{{{', '.join(summary['feature_maps'])}}} (shift: x − μ; concat-abs: concat(x − μ, |x − μ|))",
        f"- model: the task's own, `{s['base_model']['convex']}`; training: the task's recipe "
        f"({base.get('optimizer', 'sgd').upper()} lr {base.get('lr')}, batch {base.get('batch_size')}) for "
        f"{s['epochs']} epochs (paper: {base.get('epochs')}), best-validation checkpoint, b fitted on validation",
        "- evaluation: "
        + ("every test input" if s["limit"] is None else f"the first {s['limit']} test inputs")
        + "; certified accuracy at r = share of sensitive-class test inputs flagged sensitive with radius ≥ r "
        f"(radii in {units})",
    ]
    lines += run_lines(summary, "grid point") + [""]
    if summary["failed"]:
        lines += ["**Failed grid points**: " + "; ".join(f"{k}: {v}" for k, v in summary["failed"].items()), ""]
    lines += ["| φ | λ | clean | sensitive flagged | training min | Pareto-optimal at |", "|---|---|---|---|---|---|"]
    for e in summary["entries"]:
        on = [f"{pretty_norm(n)} r={f['radius']:g}" for n, f in summary["pareto"].items() if e["name"] in f["front"]]
        lines.append(
            f"| {e['feature_map']} | {e['lambda']:g} | {100 * e['clean_accuracy']:.1f}% | "
            f"{100 * e.get('sensitive_flagged_correctly', 0.0):.1f}% | {e['training_seconds'] / 60:.1f} | "
            f"{', '.join(on) or '—'} |"
        )
    lines.append("")
    for n, radii in summary["report_radii"].items():
        lines += [
            f"### Certified accuracy, {pretty_norm(n)} (radii in {units})",
            "",
            "| φ | λ | " + " | ".join(f"r = {r:g}" for r in radii) + " | median radius |",
            "|---|---|" + "---|" * (len(radii) + 1),
        ]
        for e in summary["entries"]:
            table = e["certified_accuracy"][n]
            front = e["name"] in summary["pareto"].get(n, {}).get("front", [])
            cells = []
            for r in radii:
                cell = f"{100 * table[f'{r:g}']:.1f}%"
                cells.append(f"**{cell}**" if front and r == summary["pareto"][n]["radius"] else cell)
            lines.append(
                f"| {e['feature_map']} | {e['lambda']:g} | " + " | ".join(cells) + f" | {e['median_radius'][n]:.3g} |"
            )
        lines.append("")
    lines += [
        "Bold: Pareto-optimal (clean accuracy, certified accuracy at the plotted radius) for that norm.",
        "",
        f"![Pareto]({summary['plots']['pareto']})",
        "",
    ]
    return "\n".join(lines) + "\n"


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
) -> dict[str, Any]:
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
    summary = sweep_reg(
        task, out, lams, fms, epochs, workers, REG_LIMIT if limit is None else limit, data_dir, log=echo
    )
    for n, f in summary["pareto"].items():
        echo(f"Pareto front ({pretty_norm(n)}, r = {f['radius']:g} in {summary['units']}): {', '.join(f['front'])}")
    echo(
        f"{len(summary['entries'])} grid points in {summary['wall_seconds'] / 60:.1f} min; "
        f"report: {Path(out) / REPORT_MD}"
    )
    return summary
