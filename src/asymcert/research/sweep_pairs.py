"""Class-pair sweep: a feature-convex classifier for every ordered pair (sensitive a, other b) of a
10-class task, certified on the pair's test inputs, with heatmaps of clean accuracy, of the median
certified radius per norm and of the asymmetry radius(a, b) − radius(b, a).

``sweep_pairs("fashion-mnist", out)`` writes::

    out/pairs/<a>-<b>/          per pair, a run folder (``asymcert report|audit|certify`` open it):
                                run.json (task ``{"name": TASK, "pair": [a, b]}``), model.safetensors,
                                history.json, certificates.safetensors and sweep_result.json (written
                                last; a re-run skips every pair that has it)
    out/results.json            settings, per-pair results, the k×k matrices, the asymmetry ranking
    out/sweep.md                the report (settings, timing, tables, plots)
    out/heatmap_*.png           clean accuracy, median radius per norm, asymmetry per norm

Data: the 10-class task is loaded ONCE (its own train / validation / test splits); each pair keeps
its two classes of every split with :func:`asymcert.data.tasks.binary_subset` (sensitive = 1), so
the balance shift b is fitted on the pair's validation inputs and never on test inputs.

Default (sized for a 2-core CPU shared with other jobs: 90 pairs within an hour with 2 workers): the authors' MNIST
architecture, an ICNN MLP 200-50 with input pass-throughs on φ(x) = x − μ, and the authors'
recipe (SGD lr 1e-3, momentum 0.9, decay 0.99 per epoch, batch 64, Jacobian regulariser
λ = 0.01, best-validation checkpoint) for 5 epochs instead of 60.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Callable, Sequence
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch

from asymcert.certify.result import norm_label
from asymcert.data.pairs import PAIR_MODEL, PAIR_TRAIN, pair_data
from asymcert.data.pairs import pair_report_radii as task_pair_radii
from asymcert.data.tasks import Dataset, TaskData, get_task
from asymcert.pipeline import CertifySettings, plan_training, run_pipeline
from asymcert.report.machine import describe_machine
from asymcert.report.writer import summarize
from asymcert.research.sweeps import (
    RESULT_FILE,
    Clock,
    SweepError,
    parse_int_list,
    plot_heatmap,
    pretty_norm,
    progress_log,
    run_jobs,
    run_lines,
    shared,
    split_finished,
    sweep_folder,
    write_json,
)
from asymcert.train.loop import STATE_FILE

NORMS = (1.0, 2.0, math.inf)
RESULTS_JSON, REPORT_MD = "results.json", "sweep.md"


def pair_report_radii(task_name: str) -> dict[str, list[float]]:
    """Radii at which each pair's certified accuracy is tabulated, by norm label (see
    :func:`asymcert.data.pairs.pair_report_radii`)."""
    return {norm_label(p): list(r) for p, r in task_pair_radii(task_name).items()}


def _keep_classes(data: TaskData, classes: Sequence[int]) -> TaskData:
    """Only the inputs of ``classes`` (labels unchanged): less to hand to every worker."""

    def keep(d: Dataset) -> Dataset:
        mask = torch.zeros_like(d.y, dtype=torch.bool)
        for c in classes:
            mask |= d.y == c
        return d.subset(mask)

    return TaskData(keep(data.train), keep(data.val), keep(data.test), data.class_names, dict(data.meta))


def pair_dir(out: Path, sensitive: int, other: int) -> Path:
    """The folder of one ordered pair."""
    return out / "pairs" / f"{sensitive}-{other}"


def _pair_job(job: tuple[int, int]) -> dict[str, Any]:
    """Train, certify and summarise one ordered pair through the pipeline (runs in a worker; data from
    :func:`shared`). The pair's folder is a run folder (``{"name": TASK, "pair": [a, b]}``)."""
    a, b = job
    s = shared()
    settings = s["settings"]
    job_dir = pair_dir(Path(s["out"]), a, b)
    clock = Clock()
    plan = plan_training(
        {"name": settings["task"], "pair": [a, b]},
        None,
        settings["train"],
        settings["model"],
        data=pair_data(s["data"], a, b),
    )
    plan.record.extra["sweep"] = {"kind": "pairs", "sensitive": a, "other": b}
    done = run_pipeline(
        plan, job_dir, CertifySettings(norms=NORMS, limit=settings["limit"]), progress=False, log=lambda msg: None
    )
    data, training = plan.data, done.record.training or {}
    result = {
        "settings": settings,
        "sensitive": a,
        "other": b,
        "sensitive_name": data.class_names[1],
        "other_name": data.class_names[0],
        "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        "training_seconds": training["seconds"],
        "best_epoch": training["best"]["epoch"],
        "val_balanced_accuracy": training["best"]["metric"],
        "balance": float(cast(torch.Tensor, plan.model.balance)),
        "job_seconds": clock.seconds(),
        **summarize(done.certificate, done.labels, settings["report_radii"]).to_dict(),
    }
    write_json(job_dir / RESULT_FILE, result)
    (job_dir / STATE_FILE).unlink(missing_ok=True)  # finished: the resumable state is no longer needed
    return result


def check_task(task_name: str) -> None:
    """Raise :class:`SweepError` unless ``task_name`` is a registered 10-class task."""
    task = get_task(task_name)  # UnknownNameError lists the known tasks
    if task.binary:
        raise SweepError(
            f"sweep pairs needs a 10-class task (e.g. fashion-mnist, mnist, cifar10); {task_name!r} is a binary task"
        )


def _check_classes(data: TaskData, classes: Sequence[int] | None, task_name: str) -> list[int]:
    """The class ids to pair (default: all), each present in every split.

    Raises:
        SweepError: fewer than two classes, an unknown class, or a class without inputs in a split.
    """
    chosen = list(range(data.num_classes)) if classes is None else [int(c) for c in classes]
    if len(chosen) < 2:
        raise SweepError("sweep pairs needs at least two classes")
    for c in chosen:
        if not 0 <= c < data.num_classes:
            raise SweepError(f"class {c} does not exist; {task_name} has classes 0–{data.num_classes - 1}")
        for split in ("train", "val", "test"):
            if not bool((getattr(data, split).y == c).any()):
                raise SweepError(f"class {c} ({data.class_names[c]}) has no {split} inputs in this data")
    return chosen


def _pair_line(result: dict[str, Any]) -> str:
    """One progress line for a finished pair: clean accuracy, median radius per norm, seconds."""
    radii = ", ".join(f"{pretty_norm(n)} {result['median_radius'][n]:.3g}" for n in result["settings"]["norms"])
    return f"clean {100 * result['clean_accuracy']:.1f}%, median radius {radii} ({result['job_seconds']:.0f} s)"


def _settings(
    task_name: str,
    epochs: int | None,
    limit: int | None,
    train_overrides: dict[str, Any] | None,
    model: dict[str, Any] | None,
) -> dict[str, Any]:
    """The sweep's settings (stored with every pair's result; a re-run reuses pairs with equal settings).

    Raises:
        SweepError: ``epochs`` below 1.
    """
    if epochs is not None and epochs < 1:
        raise SweepError(f"--epochs must be ≥ 1, got {epochs}")
    train = {**PAIR_TRAIN, **(train_overrides or {}), **({"epochs": int(epochs)} if epochs is not None else {})}
    return {
        "task": task_name,
        "model": dict(model or PAIR_MODEL),
        "train": train,
        "limit": limit,
        "norms": [norm_label(p) for p in NORMS],
        "report_radii": pair_report_radii(task_name),
    }


def sweep_pairs(
    task_name: str,
    out_dir: str | Path,
    classes: Sequence[int] | None = None,
    epochs: int | None = None,
    workers: int = 2,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    train_overrides: dict[str, Any] | None = None,
    model: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    data: TaskData | None = None,
) -> dict[str, Any]:
    """Train and certify a feature-convex classifier for every ordered pair of ``classes``; write the report.

    Args:
        task_name: a registered 10-class task (``fashion-mnist``, ``mnist``, ``cifar10``).
        out_dir: the sweep folder; pairs finished there before (same settings) are skipped.
        classes: class ids to pair (default: all 10 → 90 ordered pairs).
        epochs: training epochs per pair (default 5).
        workers: worker processes (spawn pool, one torch thread each); ≤ 1 runs in this process.
        limit: certify only the first ``limit`` test inputs of each pair (default: all).
        data_dir: folder holding the task's data files.
        train_overrides: training settings merged over the default (keys of ``TrainConfig``).
        model: a feature-convex model config replacing the default ICNN 200-50 (without input shape).
        log: receives one line per finished pair.
        data: the task's data when already loaded.
    Returns:
        The content of ``results.json``.
    Raises:
        SweepError: the task is not a 10-class task, or a class is unknown / has no inputs in a split.
    """
    log = log or (lambda msg: None)
    check_task(task_name)
    task = get_task(task_name)
    data = data or task.load(Path(data_dir) if data_dir else None)
    if data.num_classes != 10:
        raise SweepError(f"sweep pairs needs a 10-class task; {task_name!r} has {data.num_classes} classes")
    classes = _check_classes(data, classes, task_name)
    settings = _settings(task_name, epochs, limit, train_overrides, model)
    train = settings["train"]
    out = Path(out_dir)
    with sweep_folder(out):  # (one sweep per folder, never a run folder: audit 29e #1, #4)
        clock = Clock()
        machine_start = describe_machine()
        jobs = list(itertools.permutations(classes, 2))
        results, todo = split_finished(jobs, lambda job: pair_dir(out, *job), settings)
        log(
            f"{len(jobs)} ordered pairs: {len(results)} finished before, {len(todo)} to train "
            f"({train['epochs']} epochs each, {max(1, workers)} worker(s))"
        )
        on_done = progress_log(log, len(jobs), len(results), lambda job: f"{job[0]} vs {job[1]}", _pair_line)
        shared_data = {"data": _keep_classes(data, classes), "settings": settings, "out": str(out)}
        new, errors = run_jobs(todo, _pair_job, shared_data, workers=workers, on_done=on_done)
        results.update(new)
        summary = aggregate(results, classes, data.class_names, settings)
        summary.update(wall_seconds=clock.seconds(), trained_now=len(new), reused=len(jobs) - len(todo))
        summary.update(workers=max(1, workers), machine_start=machine_start, machine_end=describe_machine())
        summary.update(failed={f"{a}-{b}": e for (a, b), e in errors.items()}, task_description=task.description)
        summary["plots"] = write_plots(out, summary)
        write_json(out / RESULTS_JSON, summary)
        (out / REPORT_MD).write_text(render_markdown(summary))
        if errors:
            raise SweepError(
                f"{len(errors)} of {len(jobs)} pairs failed (report written without them): "
                + "; ".join(f"{a}-{b}: {e}" for (a, b), e in list(errors.items())[:3])
            )
    return summary


def _difference(a: float | None, b: float | None) -> float | None:
    """a − b, or None when either is missing."""
    return None if a is None or b is None else a - b


def _median_radius(result: dict[str, Any], norm: str) -> float:
    """A pair result's median certified radius in ``norm`` (a norm label)."""
    return float(result["median_radius"][norm])


def _asymmetry_ranking(
    m: list[list[float | None]], clean: list[list[float | None]], classes: Sequence[int], class_names: Sequence[str]
) -> list[dict[str, Any]]:
    """Unordered pairs with both directions, larger median radius first, by |radius(a, b) − radius(b, a)|."""
    rows: list[dict[str, Any]] = []
    for i, j in itertools.combinations(range(len(classes)), 2):
        r_ij, r_ji = m[i][j], m[j][i]
        if r_ij is None or r_ji is None:
            continue
        (hi_i, lo_i), (r_ab, r_ba) = ((i, j), (r_ij, r_ji)) if r_ij >= r_ji else ((j, i), (r_ji, r_ij))
        a, b = classes[hi_i], classes[lo_i]
        rows.append(
            {
                "a": a,
                "b": b,
                "a_name": class_names[a],
                "b_name": class_names[b],
                "radius_ab": r_ab,
                "radius_ba": r_ba,
                "difference": r_ab - r_ba,
                "ratio": (r_ab / r_ba) if r_ba > 0 else None,
                "clean_ab": clean[hi_i][lo_i],
                "clean_ba": clean[lo_i][hi_i],
            }
        )
    rows.sort(key=lambda row: -row["difference"])
    return rows


def aggregate(
    results: dict[tuple[int, int], dict[str, Any]],
    classes: Sequence[int],
    class_names: Sequence[str],
    settings: dict[str, Any],
    top: int = 10,
) -> dict[str, Any]:
    """The k×k matrices (row: sensitive a, column: other b; None on the diagonal and for missing pairs)
    and the unordered pairs ranked by |median radius(a, b) − median radius(b, a)| per norm.

    Args:
        results: per ordered pair (a, b), its ``sweep_result.json`` content.
        classes: the class ids, in matrix order.
        class_names: names of every class id of the task.
        settings: the sweep settings (norms, report radii...).
        top: how many of the most asymmetric pairs to keep per norm.
    """
    norms = settings["norms"]

    def matrix(get: Callable[[dict[str, Any]], float]) -> list[list[float | None]]:
        return [
            [None if a == b or (a, b) not in results else float(get(results[(a, b)])) for b in classes] for a in classes
        ]

    clean = matrix(lambda r: r["clean_accuracy"])
    flagged = matrix(lambda r: r["sensitive_flagged_correctly"])
    median = {n: matrix(partial(_median_radius, norm=n)) for n in norms}
    asym = {
        n: [[_difference(m[i][j], m[j][i]) for j in range(len(classes))] for i in range(len(classes))]
        for n, m in median.items()
    }
    ranking = {n: _asymmetry_ranking(median[n], clean, classes, class_names)[:top] for n in norms}
    return {
        "task": settings["task"],
        "settings": settings,
        "classes": list(classes),
        "class_names": [class_names[c] for c in classes],
        "pairs": {f"{a}-{b}": {k: v for k, v in r.items() if k != "settings"} for (a, b), r in sorted(results.items())},
        "matrices": {
            "clean_accuracy": clean,
            "sensitive_flagged_correctly": flagged,
            "median_radius": median,
            "asymmetry": asym,
        },
        "most_asymmetric": ranking,
    }


def write_plots(out: Path, summary: dict[str, Any]) -> dict[str, str]:
    """The heatmap PNGs of a pair sweep; returns {what: file name}."""
    names = summary["class_names"]
    mats = summary["matrices"]
    plots = {
        "clean_accuracy": plot_heatmap(
            [[None if v is None else 100 * v for v in row] for row in mats["clean_accuracy"]],
            names,
            out / "heatmap_clean_accuracy.png",
            "Clean accuracy (%) of the pair's test inputs",
            "{:.1f}",
            colorbar_label="%",
        ).name
    }
    for n, m in mats["median_radius"].items():
        plots[f"median_radius_{n}"] = plot_heatmap(
            m,
            names,
            out / f"heatmap_median_radius_{n}.png",
            f"Median certified {pretty_norm(n)} radius, correctly flagged sensitive inputs",
            "{:.3g}",
            colorbar_label=f"{pretty_norm(n)} radius (raw pixel units)",
        ).name
    for n, m in mats["asymmetry"].items():
        plots[f"asymmetry_{n}"] = plot_heatmap(
            m,
            names,
            out / f"heatmap_asymmetry_{n}.png",
            f"Asymmetry: median {pretty_norm(n)} radius(a, b) − radius(b, a)",
            "{:+.2g}",
            cmap="RdBu_r",
            center_zero=True,
            colorbar_label=f"{pretty_norm(n)} radius difference",
        ).name
    return plots


def _table(matrix: list[list[float | None]], names: Sequence[str], fmt: Callable[[float], str]) -> list[str]:
    lines = ["| sensitive a \\ other b | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in zip(names, matrix):
        lines.append(f"| **{name}** | " + " | ".join("—" if v is None else fmt(v) for v in row) + " |")
    return lines


def render_markdown(summary: dict[str, Any]) -> str:
    """The pair sweep report (``results.json``'s content) as Markdown."""
    s, names, mats = summary["settings"], summary["class_names"], summary["matrices"]
    lines = _md_settings(summary)
    if summary["failed"]:
        lines += [
            "**Failed pairs** (not in the tables): " + "; ".join(f"{k}: {v}" for k, v in summary["failed"].items()),
            "",
        ]
    lines += (
        ["## Clean accuracy (%)", ""]
        + _table(
            [[None if v is None else 100 * v for v in row] for row in mats["clean_accuracy"]],
            names,
            lambda v: f"{v:.1f}",
        )
        + ["", f"![clean accuracy]({summary['plots']['clean_accuracy']})", ""]
    )
    for n in s["norms"]:
        lines += [f"## Median certified {pretty_norm(n)} radius", ""] + _table(
            mats["median_radius"][n], names, lambda v: f"{v:.3g}"
        )
        lines += ["", f"![median {n}]({summary['plots'][f'median_radius_{n}']})", ""]
    lines += [
        "## Most asymmetric pairs",
        "",
        "radius(a, b): median certified radius of the model that flags a against b (on flagged a inputs); "
        "radius(b, a) the same with the roles swapped. Ranked by the difference.",
        "",
    ]
    for n in s["norms"]:
        lines += _md_asymmetry(summary, n)
    return "\n".join(lines) + "\n"


def _md_settings(summary: dict[str, Any]) -> list[str]:
    """Title and settings (model, training, data, evaluation, timing) of the pair sweep report."""
    s = summary["settings"]
    t = s["train"]
    convex = s["model"]["convex"]
    arch = (
        f"ICNN MLP {'-'.join(str(w) for w in convex['widths'])} (input pass-through at every layer)"
        if convex.get("kind") == "icnn"
        else f"`{convex}`"
    )
    evaluation = (
        "every test input of the pair" if s["limit"] is None else f"the first {s['limit']} test inputs of the pair"
    )
    return [
        f"# Class-pair sweep: {summary['task_description']}",
        "",
        f"Every ordered pair (sensitive a, other b) of {len(summary['class_names'])} classes: "
        f"{len(summary['pairs'])} feature-convex classifiers, each certified on its own test inputs.",
        "",
        "## Settings",
        "",
        f"- model: φ = {' then '.join(f['kind'] for f in s['model']['feature_map'])}, g = {arch}",
        f"- training: {t['epochs']} epoch{'s' if t['epochs'] != 1 else ''}, {t['optimizer'].upper()} lr {t['lr']:g}"
        + (f", momentum {t['momentum']:g}" if t["optimizer"] == "sgd" else "")
        + f", decay {t['lr_decay']:g}/epoch, batch {t['batch_size']}, "
        f"Jacobian regulariser λ = {t['jacobian_reg']:g}, "
        "best-validation checkpoint, the task's training augmentation, seed " + f"{t['seed']}",
        "- data: the task's own train / validation / test splits, two classes kept per pair; the balance shift b "
        "is fitted on the pair's validation inputs (never on test inputs)",
        f"- evaluation: {evaluation}; median radius = median certified radius among the sensitive-class test "
        "inputs flagged sensitive (raw pixel units)",
        *run_lines(summary, "pair"),
        "",
    ]


def _md_asymmetry(summary: dict[str, Any], norm: str) -> list[str]:
    """The most asymmetric pairs in ``norm`` (a label) as a table, and the asymmetry heatmap."""
    lines = [
        f"### {pretty_norm(norm)}",
        "",
        "| a | b | radius(a, b) | radius(b, a) | difference | ratio | clean (a, b) | clean (b, a) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in summary["most_asymmetric"][norm]:
        ratio = "∞" if r["ratio"] is None else f"{r['ratio']:.2f}×"
        lines.append(
            f"| {r['a_name']} ({r['a']}) | {r['b_name']} ({r['b']}) | {r['radius_ab']:.3g} | "
            f"{r['radius_ba']:.3g} | {r['difference']:.3g} | {ratio} | {100 * r['clean_ab']:.1f}% | "
            f"{100 * r['clean_ba']:.1f}% |"
        )
    return [*lines, "", f"![asymmetry {norm}]({summary['plots'][f'asymmetry_{norm}']})", ""]


def pairs_cli_main(
    task: str,
    out: str | Path,
    classes: str | None = None,
    epochs: int | None = None,
    workers: int = 2,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    echo: Callable[[str], None] = print,
) -> dict[str, Any]:
    """What ``asymcert sweep pairs`` does: parse the options, run :func:`sweep_pairs`, print a summary.

    Args:
        classes: comma-separated class ids (``"0,3,6"``) or None for all.
        echo: where progress lines go (``click.echo`` in the CLI).
    """
    if workers < 1:
        raise SweepError(f"--workers must be ≥ 1, got {workers}")
    check_task(task)  # before loading any data
    chosen = None if classes is None else parse_int_list(classes, "--classes")
    summary = sweep_pairs(task, out, chosen, epochs, workers, limit, data_dir, log=echo)
    for n in summary["settings"]["norms"]:
        best = summary["most_asymmetric"][n][:1]
        if best:
            r = best[0]
            echo(
                f"most asymmetric ({pretty_norm(n)}): {r['a_name']} vs {r['b_name']}: "
                f"{r['radius_ab']:.3g} vs {r['radius_ba']:.3g}"
            )
    echo(f"{len(summary['pairs'])} pairs in {summary['wall_seconds'] / 60:.1f} min; report: {Path(out) / REPORT_MD}")
    return summary
