"""Class-pair sweep: a feature-convex classifier for every ordered pair (sensitive a, other b) of a
10-class task, certified on the pair's test inputs, with heatmaps of clean accuracy, of the median
certified radius per norm and of the asymmetry radius(a, b) − radius(b, a).

``sweep_pairs("fashion-mnist", out)`` writes::

    out/pairs/<a>-<b>/          per pair, a run folder (``asymcert report|audit|certify`` open it):
                                run.json (task ``{"name": TASK, "pair": [a, b]}``), model.safetensors,
                                history.json, certificates.safetensors and sweep_result.json (written
                                last; a re-run skips every pair that has it)
    out/results.json            settings, per-pair results, the k×k matrices, the asymmetry ranking
                                (the returned :class:`PairSweep`'s ``to_dict()``)
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
from dataclasses import asdict, dataclass
from functools import partial
from pathlib import Path
from typing import Any, cast

import torch

from asymcert.certify.result import norm_label
from asymcert.certify.summary import CertifiedSummary
from asymcert.data.pairs import PAIR_MODEL, PAIR_TRAIN, pair_data
from asymcert.data.pairs import pair_report_radii as task_pair_radii
from asymcert.data.tasks import Dataset, TaskData, get_task
from asymcert.jsontext import typed
from asymcert.pipeline import CertifySettings, plan_training, run_pipeline
from asymcert.report.machine import Machine
from asymcert.report.writer import summarize
from asymcert.research.sweeps import (
    RESULT_FILE,
    Clock,
    SweepError,
    SweepRun,
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
PAIR_UNITS = "raw pixel units"
"""The pairs' radii: the built-in multi-class tasks are images, their pixels in [0, 1]."""


Matrix = list[list[float | None]]
"""A k×k matrix over the sweep's classes (row: sensitive a, column: other b); None on the diagonal and for pairs
without a result."""


@dataclass(frozen=True)
class PairSettings:
    """A class-pair sweep's settings, stored with every pair's result (a re-run reuses the pairs stored with equal
    settings).

    Attributes:
        task: the 10-class task's name.
        model: the feature-convex model config of every pair, without input shape (JSON, as
            :func:`~asymcert.models.build_model` takes it).
        train: every pair's training settings: keys of :class:`~asymcert.train.TrainConfig`, the default recipe with
            the overrides and ``epochs`` merged over it (JSON, as given).
        limit: certify only the first ``limit`` test inputs of each pair (None: all).
        norms: the norm labels certified (``"l1"``, ``"l2"``, ``"linf"``).
        report_radii: norm label → radii (raw input units) at which each pair's certified accuracy is tabulated.
    """

    task: str
    model: dict[str, Any]
    train: dict[str, Any]
    limit: int | None
    norms: tuple[str, ...]
    report_radii: dict[str, list[float]]

    def to_dict(self) -> dict[str, Any]:
        """``{"task", "model", "train", "limit", "norms", "report_radii"}`` (every pair's ``"settings"``)."""
        return {
            "task": self.task,
            "model": self.model,
            "train": self.train,
            "limit": self.limit,
            "norms": list(self.norms),
            "report_radii": {n: list(r) for n, r in self.report_radii.items()},
        }


@dataclass(frozen=True)
class PairSplits:
    """Inputs of the pair's two classes in each split of the task (counts)."""

    train: int
    val: int
    test: int


@dataclass(frozen=True)
class PairResult:
    """One ordered pair's model: how it trained and its certificates' numbers (``sweep_result.json`` without its
    ``"settings"``).

    Attributes:
        sensitive, other: the class ids a (flagged, label 1) and b (label 0).
        sensitive_name, other_name: their names.
        splits: the pair's inputs per split.
        training_seconds: wall-clock seconds of training.
        best_epoch: the epoch kept (best validation metric), counted from 1.
        val_balanced_accuracy: the validation metric of that epoch (balanced accuracy, in [0, 1]).
        balance: the fitted balance shift b (score units).
        job_seconds: wall-clock seconds of the whole job (training, certification, report).
        summary: the certificates' numbers on the pair's test inputs at the settings' report radii.
    """

    sensitive: int
    other: int
    sensitive_name: str
    other_name: str
    splits: PairSplits
    training_seconds: float
    best_epoch: int
    val_balanced_accuracy: float
    balance: float
    job_seconds: float
    summary: CertifiedSummary

    @property
    def clean_accuracy(self) -> float:
        """Share of the pair's test inputs classified correctly, in [0, 1]."""
        return self.summary.clean_accuracy

    @property
    def sensitive_flagged_correctly(self) -> float:
        """Share of the pair's sensitive test inputs flagged sensitive, in [0, 1] (NaN: not a binary summary)."""
        return math.nan if self.summary.detection is None else self.summary.detection.sensitive_flagged_correctly

    def median_radius(self, norm: str) -> float:
        """The median certified radius in ``norm`` (a label) of the correctly flagged sensitive inputs (raw input
        units)."""
        return self.summary.norms[norm].median_radius

    def to_dict(self) -> dict[str, Any]:
        """The pair's JSON object in ``results.json``: its own keys, then :meth:`CertifiedSummary.to_dict`'s."""
        return {
            "sensitive": self.sensitive,
            "other": self.other,
            "sensitive_name": self.sensitive_name,
            "other_name": self.other_name,
            "splits": asdict(self.splits),
            "training_seconds": self.training_seconds,
            "best_epoch": self.best_epoch,
            "val_balanced_accuracy": self.val_balanced_accuracy,
            "balance": self.balance,
            "job_seconds": self.job_seconds,
            **self.summary.to_dict(),
        }

    @classmethod
    def from_dict(cls, raw: dict[str, Any]) -> PairResult:
        """The result :meth:`to_dict` gave ``raw`` (a finished pair's ``sweep_result.json``; ``"settings"`` ignored;
        a median radius stored as null is ∞, as strict JSON writes it).

        Raises:
            KeyError, ValueError, TypeError: ``raw`` is not such an object: a key missing, or a value of another type
                than its field's (no half-built result).
        """
        return typed(
            cls(
                sensitive=raw["sensitive"],
                other=raw["other"],
                sensitive_name=raw["sensitive_name"],
                other_name=raw["other_name"],
                splits=typed(PairSplits(**raw["splits"])),
                training_seconds=raw["training_seconds"],
                best_epoch=raw["best_epoch"],
                val_balanced_accuracy=raw["val_balanced_accuracy"],
                balance=raw["balance"],
                job_seconds=raw["job_seconds"],
                summary=CertifiedSummary.from_dict(raw),
            )
        )


@dataclass(frozen=True)
class PairMatrices:
    """The k×k matrices of a pair sweep (:data:`Matrix`: row sensitive a, column other b).

    Attributes:
        clean_accuracy: clean accuracy of each pair's model on its test inputs, in [0, 1].
        sensitive_flagged_correctly: share of its sensitive test inputs flagged, in [0, 1].
        median_radius: norm label → median certified radius (raw input units).
        asymmetry: norm label → median radius(a, b) − radius(b, a) (raw input units; antisymmetric).
    """

    clean_accuracy: Matrix
    sensitive_flagged_correctly: Matrix
    median_radius: dict[str, Matrix]
    asymmetry: dict[str, Matrix]

    def to_dict(self) -> dict[str, Any]:
        """``{"clean_accuracy", "sensitive_flagged_correctly", "median_radius", "asymmetry"}``."""
        return {
            "clean_accuracy": self.clean_accuracy,
            "sensitive_flagged_correctly": self.sensitive_flagged_correctly,
            "median_radius": self.median_radius,
            "asymmetry": self.asymmetry,
        }


@dataclass(frozen=True)
class AsymmetricPair:
    """An unordered pair {a, b} with both directions trained, a being the direction of the larger median radius.

    Attributes:
        a, b: the class ids; a_name, b_name: their names.
        radius_ab, radius_ba: median certified radius of the model flagging a against b, and of the one flagging b
            against a (raw input units; radius_ab ≥ radius_ba).
        difference: radius_ab − radius_ba (≥ 0).
        ratio: radius_ab / radius_ba (None when radius_ba is 0).
        clean_ab, clean_ba: the two models' clean accuracies, in [0, 1].
    """

    a: int
    b: int
    a_name: str
    b_name: str
    radius_ab: float
    radius_ba: float
    difference: float
    ratio: float | None
    clean_ab: float
    clean_ba: float

    def to_dict(self) -> dict[str, Any]:
        """``{"a", "b", "a_name", "b_name", "radius_ab", "radius_ba", "difference", "ratio", "clean_ab",
        "clean_ba"}``."""
        return asdict(self)


@dataclass(frozen=True)
class PairSweep:
    """A class-pair sweep (:func:`sweep_pairs`): :meth:`to_dict` is its ``results.json``.

    Attributes:
        task: the task's name.
        settings: the sweep's settings.
        classes: the class ids paired, in matrix order; class_names: their names.
        pairs: (a, b) → that ordered pair's result, sorted by (a, b), for every pair that finished.
        matrices: the k×k matrices over ``classes``.
        most_asymmetric: norm label → the most asymmetric unordered pairs, largest difference first.
        run: how this invocation ran.
        failed: ``"a-b"`` → the error of each pair that failed (not in the tables).
        task_description: the task's description (the report's title).
        plots: what a heatmap shows (``"clean_accuracy"``, ``"median_radius_l2"``, ``"asymmetry_l2"``, …) → its
            PNG's file name in the sweep folder.
    """

    task: str
    settings: PairSettings
    classes: list[int]
    class_names: list[str]
    pairs: dict[tuple[int, int], PairResult]
    matrices: PairMatrices
    most_asymmetric: dict[str, list[AsymmetricPair]]
    run: SweepRun
    failed: dict[str, str]
    task_description: str
    plots: dict[str, str]

    def to_dict(self) -> dict[str, Any]:
        """``results.json``: ``{"task", "settings", "classes", "class_names", "pairs" ("a-b" → the pair's object),
        "matrices", "most_asymmetric"}``, then :class:`SweepRun`'s keys, ``"failed"``, ``"task_description"``,
        ``"plots"``."""
        out: dict[str, Any] = {"task": self.task, "settings": self.settings.to_dict(), "classes": list(self.classes)}
        out["class_names"] = list(self.class_names)
        out["pairs"] = {f"{a}-{b}": r.to_dict() for (a, b), r in self.pairs.items()}
        out["matrices"] = self.matrices.to_dict()
        out["most_asymmetric"] = {n: [row.to_dict() for row in rows] for n, rows in self.most_asymmetric.items()}
        out.update(self.run.to_dict())
        out.update(failed=dict(self.failed), task_description=self.task_description, plots=dict(self.plots))
        return out


@dataclass(frozen=True)
class _PairContext:
    """What every pair job reads (:func:`~asymcert.research.sweeps.shared`): the task's data (the paired classes
    only), the settings and the sweep folder."""

    data: TaskData
    settings: PairSettings
    out: str


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


def _pair_job(job: tuple[int, int]) -> PairResult:
    """Train, certify and summarise one ordered pair through the pipeline (runs in a worker; data from
    :func:`shared`). The pair's folder is a run folder (``{"name": TASK, "pair": [a, b]}``)."""
    a, b = job
    context: _PairContext = shared()
    settings = context.settings
    job_dir = pair_dir(Path(context.out), a, b)
    clock = Clock()
    plan = plan_training(
        {"name": settings.task, "pair": [a, b]},
        None,
        settings.train,
        settings.model,
        data=pair_data(context.data, a, b),
    )
    plan.record.extra["sweep"] = {"kind": "pairs", "sensitive": a, "other": b}
    done = run_pipeline(
        plan, job_dir, CertifySettings(norms=NORMS, limit=settings.limit), progress=False, log=lambda msg: None
    )
    data, training = plan.data, done.record.training or {}
    result = PairResult(
        sensitive=a,
        other=b,
        sensitive_name=data.class_names[1],
        other_name=data.class_names[0],
        splits=PairSplits(train=len(data.train), val=len(data.val), test=len(data.test)),
        training_seconds=training["seconds"],
        best_epoch=training["best"]["epoch"],
        val_balanced_accuracy=training["best"]["metric"],
        balance=float(cast(torch.Tensor, plan.model.balance)),
        job_seconds=clock.seconds(),
        summary=summarize(done.certificate, done.labels, settings.report_radii),
    )
    write_json(job_dir / RESULT_FILE, {"settings": settings.to_dict(), **result.to_dict()})
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


def _pair_name(job: tuple[int, int]) -> str:
    """How the progress lines name a pair job: ``"a vs b"``."""
    return f"{job[0]} vs {job[1]}"


def _pair_line(result: PairResult, norms: Sequence[str]) -> str:
    """One progress line for a finished pair: clean accuracy, median radius per norm, seconds."""
    radii = ", ".join(f"{pretty_norm(n)} {result.median_radius(n):.3g}" for n in norms)
    return f"clean {100 * result.clean_accuracy:.1f}%, median radius {radii} ({PAIR_UNITS}; {result.job_seconds:.0f} s)"


def _settings(
    task_name: str,
    epochs: int | None,
    limit: int | None,
    train_overrides: dict[str, Any] | None,
    model: dict[str, Any] | None,
) -> PairSettings:
    """The sweep's settings (stored with every pair's result; a re-run reuses pairs with equal settings).

    Raises:
        SweepError: ``epochs`` below 1.
    """
    if epochs is not None and epochs < 1:
        raise SweepError(f"--epochs must be ≥ 1, got {epochs}")
    train = {**PAIR_TRAIN, **(train_overrides or {}), **({"epochs": int(epochs)} if epochs is not None else {})}
    return PairSettings(
        task=task_name,
        model=dict(model or PAIR_MODEL),
        train=train,
        limit=limit,
        norms=tuple(norm_label(p) for p in NORMS),
        report_radii=pair_report_radii(task_name),
    )


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
) -> PairSweep:
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
        The sweep; its :meth:`PairSweep.to_dict` is the content of ``results.json``.
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
    out = Path(out_dir)
    with sweep_folder(out):  # (one sweep per folder, never a run folder: audit 29e #1, #4)
        clock = Clock()
        machine_start = Machine.current()
        jobs = list(itertools.permutations(classes, 2))
        results, todo = split_finished(jobs, lambda job: pair_dir(out, *job), settings.to_dict(), PairResult.from_dict)
        log(
            f"{len(jobs)} ordered pairs: {len(results)} finished before, {len(todo)} to train "
            f"({settings.train['epochs']} epochs each, {max(1, workers)} worker(s))"
        )
        on_done = progress_log(log, len(jobs), len(results), _pair_name, partial(_pair_line, norms=settings.norms))
        context = _PairContext(_keep_classes(data, classes), settings, str(out))
        new, errors = run_jobs(todo, _pair_job, context, workers=workers, on_done=on_done)
        results.update(new)
        matrices, ranking = aggregate(results, classes, data.class_names, settings.norms)
        run = SweepRun.finished(clock, len(new), len(jobs) - len(todo), workers, machine_start)
        names = [data.class_names[c] for c in classes]
        sweep = PairSweep(
            task=task_name,
            settings=settings,
            classes=list(classes),
            class_names=names,
            pairs=dict(sorted(results.items())),
            matrices=matrices,
            most_asymmetric=ranking,
            run=run,
            failed={f"{a}-{b}": e for (a, b), e in errors.items()},
            task_description=task.description,
            plots=write_plots(out, names, matrices),
        )
        write_json(out / RESULTS_JSON, sweep.to_dict())
        (out / REPORT_MD).write_text(render_markdown(sweep))
        if errors:
            raise SweepError(
                f"{len(errors)} of {len(jobs)} pairs failed (report written without them): "
                + "; ".join(f"{a}-{b}: {e}" for (a, b), e in list(errors.items())[:3])
            )
    return sweep


def _difference(a: float | None, b: float | None) -> float | None:
    """a − b, or None when either is missing."""
    return None if a is None or b is None else a - b


def _median_radius(result: PairResult, norm: str) -> float:
    """A pair result's median certified radius in ``norm`` (a norm label)."""
    return float(result.median_radius(norm))


def _asymmetry_ranking(
    m: Matrix, clean: Matrix, classes: Sequence[int], class_names: Sequence[str]
) -> list[AsymmetricPair]:
    """Unordered pairs with both directions, larger median radius first, by |radius(a, b) − radius(b, a)|."""
    rows: list[AsymmetricPair] = []
    for i, j in itertools.combinations(range(len(classes)), 2):
        r_ij, r_ji = m[i][j], m[j][i]
        if r_ij is None or r_ji is None:
            continue
        (hi_i, lo_i), (r_ab, r_ba) = ((i, j), (r_ij, r_ji)) if r_ij >= r_ji else ((j, i), (r_ji, r_ij))
        a, b = classes[hi_i], classes[lo_i]
        rows.append(
            AsymmetricPair(
                a=a,
                b=b,
                a_name=class_names[a],
                b_name=class_names[b],
                radius_ab=r_ab,
                radius_ba=r_ba,
                difference=r_ab - r_ba,
                ratio=(r_ab / r_ba) if r_ba > 0 else None,
                clean_ab=cast(float, clean[hi_i][lo_i]),  # (a pair with a radius has a clean accuracy)
                clean_ba=cast(float, clean[lo_i][hi_i]),
            )
        )
    rows.sort(key=lambda row: -row.difference)
    return rows


def aggregate(
    results: dict[tuple[int, int], PairResult],
    classes: Sequence[int],
    class_names: Sequence[str],
    norms: Sequence[str],
    top: int = 10,
) -> tuple[PairMatrices, dict[str, list[AsymmetricPair]]]:
    """The k×k matrices (row: sensitive a, column: other b; None on the diagonal and for missing pairs)
    and the unordered pairs ranked by |median radius(a, b) − median radius(b, a)| per norm.

    Args:
        results: per ordered pair (a, b), its result.
        classes: the class ids, in matrix order.
        class_names: names of every class id of the task.
        norms: the norm labels certified.
        top: how many of the most asymmetric pairs to keep per norm.
    Returns:
        (the matrices, norm label → the ``top`` most asymmetric pairs).
    """

    def matrix(get: Callable[[PairResult], float]) -> Matrix:
        return [
            [None if a == b or (a, b) not in results else float(get(results[(a, b)])) for b in classes] for a in classes
        ]

    clean = matrix(lambda r: r.clean_accuracy)
    flagged = matrix(lambda r: r.sensitive_flagged_correctly)
    median = {n: matrix(partial(_median_radius, norm=n)) for n in norms}
    asym = {
        n: [[_difference(m[i][j], m[j][i]) for j in range(len(classes))] for i in range(len(classes))]
        for n, m in median.items()
    }
    ranking = {n: _asymmetry_ranking(median[n], clean, classes, class_names)[:top] for n in norms}
    return PairMatrices(clean, flagged, median, asym), ranking


def write_plots(out: Path, class_names: Sequence[str], matrices: PairMatrices) -> dict[str, str]:
    """The heatmap PNGs of a pair sweep (``class_names``: those of the matrices' classes); returns {what: file
    name}."""
    names = list(class_names)
    plots = {
        "clean_accuracy": plot_heatmap(
            [[None if v is None else 100 * v for v in row] for row in matrices.clean_accuracy],
            names,
            out / "heatmap_clean_accuracy.png",
            "Clean accuracy (%) of the pair's test inputs",
            "{:.1f}",
            colorbar_label="%",
        ).name
    }
    for n, m in matrices.median_radius.items():
        plots[f"median_radius_{n}"] = plot_heatmap(
            m,
            names,
            out / f"heatmap_median_radius_{n}.png",
            f"Median certified {pretty_norm(n)} radius, correctly flagged sensitive inputs",
            "{:.3g}",
            colorbar_label=f"{pretty_norm(n)} radius ({PAIR_UNITS})",
        ).name
    for n, m in matrices.asymmetry.items():
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


def _table(matrix: Matrix, names: Sequence[str], fmt: Callable[[float], str]) -> list[str]:
    lines = ["| sensitive a \\ other b | " + " | ".join(names) + " |", "|---|" + "---|" * len(names)]
    for name, row in zip(names, matrix):
        lines.append(f"| **{name}** | " + " | ".join("—" if v is None else fmt(v) for v in row) + " |")
    return lines


def render_markdown(sweep: PairSweep) -> str:
    """The pair sweep report as Markdown."""
    names, mats = sweep.class_names, sweep.matrices
    lines = _md_settings(sweep)
    if sweep.failed:
        lines += [
            "**Failed pairs** (not in the tables): " + "; ".join(f"{k}: {v}" for k, v in sweep.failed.items()),
            "",
        ]
    lines += (
        ["## Clean accuracy (%)", ""]
        + _table(
            [[None if v is None else 100 * v for v in row] for row in mats.clean_accuracy], names, lambda v: f"{v:.1f}"
        )
        + ["", f"![clean accuracy]({sweep.plots['clean_accuracy']})", ""]
    )
    for n in sweep.settings.norms:
        lines += [f"## Median certified {pretty_norm(n)} radius", ""] + _table(
            mats.median_radius[n], names, lambda v: f"{v:.3g}"
        )
        lines += ["", f"![median {n}]({sweep.plots[f'median_radius_{n}']})", ""]
    lines += [
        "## Most asymmetric pairs",
        "",
        "radius(a, b): median certified radius of the model that flags a against b (on flagged a inputs); "
        "radius(b, a) the same with the roles swapped. Ranked by the difference.",
        "",
    ]
    for n in sweep.settings.norms:
        lines += _md_asymmetry(sweep, n)
    return "\n".join(lines) + "\n"


def _md_settings(sweep: PairSweep) -> list[str]:
    """Title and settings (model, training, data, evaluation, timing) of the pair sweep report."""
    s = sweep.settings
    t = s.train
    convex = s.model["convex"]
    arch = (
        f"ICNN MLP {'-'.join(str(w) for w in convex['widths'])} (input pass-through at every layer)"
        if convex.get("kind") == "icnn"
        else f"`{convex}`"
    )
    evaluation = "every test input of the pair" if s.limit is None else f"the first {s.limit} test inputs of the pair"
    return [
        f"# Class-pair sweep: {sweep.task_description}",
        "",
        f"Every ordered pair (sensitive a, other b) of {len(sweep.class_names)} classes: "
        f"{len(sweep.pairs)} feature-convex classifiers, each certified on its own test inputs.",
        "",
        "## Settings",
        "",
        f"- model: φ = {' then '.join(f['kind'] for f in s.model['feature_map'])}, g = {arch}",
        f"- training: {t['epochs']} epoch{'s' if t['epochs'] != 1 else ''}, {t['optimizer'].upper()} lr {t['lr']:g}"
        + (f", momentum {t['momentum']:g}" if t["optimizer"] == "sgd" else "")
        + f", decay {t['lr_decay']:g}/epoch, batch {t['batch_size']}, "
        f"Jacobian regulariser λ = {t['jacobian_reg']:g}, "
        "best-validation checkpoint, the task's training augmentation, seed " + f"{t['seed']}",
        "- data: the task's own train / validation / test splits, two classes kept per pair; the balance shift b "
        "is fitted on the pair's validation inputs (never on test inputs)",
        f"- evaluation: {evaluation}; median radius = median certified radius among the sensitive-class test "
        f"inputs flagged sensitive ({PAIR_UNITS})",
        *run_lines(sweep.run, "pair"),
        "",
    ]


def _md_asymmetry(sweep: PairSweep, norm: str) -> list[str]:
    """The most asymmetric pairs in ``norm`` (a label) as a table, and the asymmetry heatmap."""
    lines = [
        f"### {pretty_norm(norm)}",
        "",
        "| a | b | radius(a, b) | radius(b, a) | difference | ratio | clean (a, b) | clean (b, a) |",
        "|---|---|---|---|---|---|---|---|",
    ]
    for r in sweep.most_asymmetric[norm]:
        ratio = "∞" if r.ratio is None else f"{r.ratio:.2f}×"
        lines.append(
            f"| {r.a_name} ({r.a}) | {r.b_name} ({r.b}) | {r.radius_ab:.3g} | "
            f"{r.radius_ba:.3g} | {r.difference:.3g} | {ratio} | {100 * r.clean_ab:.1f}% | "
            f"{100 * r.clean_ba:.1f}% |"
        )
    return [*lines, "", f"![asymmetry {norm}]({sweep.plots[f'asymmetry_{norm}']})", ""]


def pairs_cli_main(
    task: str,
    out: str | Path,
    classes: str | None = None,
    epochs: int | None = None,
    workers: int = 2,
    limit: int | None = None,
    data_dir: str | Path | None = None,
    echo: Callable[[str], None] = print,
) -> PairSweep:
    """What ``asymcert sweep pairs`` does: parse the options, run :func:`sweep_pairs`, print a summary.

    Args:
        classes: comma-separated class ids (``"0,3,6"``) or None for all.
        echo: where progress lines go (``click.echo`` in the CLI).
    """
    if workers < 1:
        raise SweepError(f"--workers must be ≥ 1, got {workers}")
    check_task(task)  # before loading any data
    chosen = None if classes is None else parse_int_list(classes, "--classes")
    sweep = sweep_pairs(task, out, chosen, epochs, workers, limit, data_dir, log=echo)
    for n in sweep.settings.norms:
        best = sweep.most_asymmetric[n][:1]
        if best:
            r = best[0]
            echo(
                f"most asymmetric ({pretty_norm(n)}): {r.a_name} vs {r.b_name}: {r.radius_ab:.3g} vs {r.radius_ba:.3g}"
            )
    echo(f"{len(sweep.pairs)} pairs in {sweep.run.wall_seconds / 60:.1f} min; report: {Path(out) / REPORT_MD}")
    return sweep
