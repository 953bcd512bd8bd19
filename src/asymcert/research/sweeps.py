"""What the sweeps share: a resumable job runner over a standard-library process pool, the Pareto
front, small JSON helpers and the heatmap / Pareto plots.

A sweep is a list of independent jobs (one model each). Every job writes its own result file into
its own folder when it is done; a re-run skips jobs whose result file exists (with the same
settings) and an interrupted job resumes from its training state. Jobs run in a
``concurrent.futures.ProcessPoolExecutor`` with the ``spawn`` start method; each worker gets the
sweep's data ONCE (pool initializer) and runs torch with one thread, so ``--workers N`` uses N cores.

The sweeps themselves: :mod:`asymcert.research.sweep_pairs` (every ordered class pair) and
:mod:`asymcert.research.sweep_reg` (Jacobian-regulariser strength × feature map). Each types its settings, its
per-job results and its whole result as frozen dataclasses whose ``to_dict()`` is the JSON written; what they share
about how the jobs ran is a :class:`SweepRun`.
"""

from __future__ import annotations

import json
import math
import multiprocessing
import time
from collections.abc import Callable, Iterator, Sequence
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar, cast

import numpy as np
import torch

from asymcert.checkpoint import atomic_write
from asymcert.errors import AsymcertError
from asymcert.jsontext import JsonTextError, parse_json
from asymcert.report.machine import Machine
from asymcert.report.plots import _pyplot
from asymcert.runfolder import RUN_FILE, dumps_strict, exclusive

RESULT_FILE = "sweep_result.json"
"""The per-job result file, written last: its presence marks a finished job."""

_SHARED: list[Any] = [None]
"""What the pool initializer hands every worker once (the sweep's data and settings), in its only item."""

J = TypeVar("J")
"""A job description (hashable, picklable)."""
R = TypeVar("R")
"""A job's result (picklable)."""


class SweepError(AsymcertError, ValueError):
    """A sweep asked for something impossible (bad task, classes, λ list) or holding other settings."""


# ---------------------------------------------------------------- small helpers


@contextmanager
def sweep_folder(out: Path) -> Iterator[Path]:
    """Hold the sweep folder ``out`` (made when missing) for one sweep at a time: its OS lock, as a run folder's
    (a second sweep into it is refused with RunFolderBusyError, exit 3, and writes nothing: audit 29e #4); a run
    folder is refused, since the sweep's results.json would replace the run's (#1).

    Raises:
        SweepError: ``out`` holds a run (run.json).
        RunFolderBusyError: another process holds ``out``.
    """
    if (out / RUN_FILE).is_file():
        raise SweepError(f"{out} is a run folder (it holds {RUN_FILE}); give the sweep a folder of its own")
    with exclusive(out, create=True, collective=False):
        yield out


def write_json(path: Path, obj: Any) -> None:
    """Write ``obj`` as indented JSON, atomically (a crash never leaves half a file)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    atomic_write(path, lambda tmp: tmp.write_text(dumps_strict(obj, indent=1, default=_json_default)))


def _json_default(obj: Any) -> Any:
    if isinstance(obj, (np.floating, np.integer)):
        return obj.item()
    if isinstance(obj, torch.Tensor):
        return obj.tolist()
    raise TypeError(f"not JSON serialisable: {type(obj).__name__}")


def read_result(job_dir: Path, settings: dict[str, Any]) -> dict[str, Any] | None:
    """The finished result of the job in ``job_dir``, or None when it has not finished.

    Raises:
        SweepError: the folder holds a result computed with other settings, or a result file that is not
            one strict JSON object (:func:`asymcert.jsontext.parse_json`: e.g. damaged, or nested too deeply).
    """
    path = job_dir / RESULT_FILE
    if not path.is_file():
        return None
    try:
        result = parse_json(path.read_text(encoding="utf-8"))
    except (JsonTextError, UnicodeDecodeError) as exc:
        raise SweepError(f"{path} is not a readable sweep result ({exc}); delete it to recompute the job") from None
    if not isinstance(result, dict):
        kind = type(result).__name__
        raise SweepError(f"{path} holds a JSON {kind}, not a sweep result; delete it to recompute the job")
    if result.get("settings") != json.loads(dumps_strict(settings, default=_json_default)):
        raise SweepError(
            f"{job_dir} holds a result computed with other settings; use a new --out folder "
            f"or delete {path} to recompute it"
        )
    return result


def split_finished(
    jobs: Sequence[J], job_dir: Callable[[J], Path], settings: dict[str, Any], parse: Callable[[dict[str, Any]], R]
) -> tuple[dict[J, R], list[J]]:
    """The jobs whose folder holds a finished result with these ``settings`` (job → ``parse(its JSON object)``),
    and the rest.

    Args:
        settings: the sweep's settings as JSON (each result file holds them under ``"settings"``).
        parse: the typed result of a result file's JSON object.
    """
    results: dict[J, R] = {}
    todo: list[J] = []
    for job in jobs:
        done = read_result(job_dir(job), settings)
        if done is None:
            todo.append(job)
            continue
        try:
            results[job] = parse(done)
        except (KeyError, TypeError, ValueError, AttributeError, IndexError) as exc:  # (an older asymcert's, review 31)
            path = job_dir(job) / RESULT_FILE
            raise SweepError(
                f"{path} is not a sweep result this asymcert reads ({type(exc).__name__}: {exc}; written by an "
                "older version?); delete it to recompute the job"
            ) from None
    return results, todo


def parse_float_list(text: str, what: str) -> list[float]:
    """``"0,1e-3,0.01"`` → ``[0.0, 0.001, 0.01]``: finite, nonnegative, no duplicates.

    Raises:
        SweepError: empty, not numbers, negative, infinite or repeated values (one-line message).
    """
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    if not items:
        raise SweepError(f"{what}: give at least one value, e.g. 0,1e-3,1e-2")
    out: list[float] = []
    for t in items:
        try:
            v = float(t)
        except ValueError:
            raise SweepError(
                f"{what}: {t!r} is not a number (expected a comma-separated list like 0,1e-3,1e-2)"
            ) from None
        if not math.isfinite(v) or v < 0:
            raise SweepError(f"{what}: {t!r} must be a finite number ≥ 0")
        if v in out:
            raise SweepError(f"{what}: {t!r} is repeated")
        out.append(v)
    return out


def parse_int_list(text: str, what: str) -> list[int]:
    """``"0,1,6"`` → ``[0, 1, 6]`` (distinct integers).

    Raises:
        SweepError: not integers, or repeated.
    """
    items = [t.strip() for t in str(text).split(",") if t.strip()]
    try:
        out = [int(t) for t in items]
    except ValueError:
        raise SweepError(f"{what}: {text!r} is not a comma-separated list of integers") from None
    if len(set(out)) != len(out):
        raise SweepError(f"{what}: {text!r} repeats a value")
    return out


# ---------------------------------------------------------------- the job runner


def _init_worker(shared: Any) -> None:
    """Pool initializer: one torch thread, and the sweep's shared data kept for every job of this worker."""
    torch.set_num_threads(1)
    _SHARED[0] = shared


def shared() -> Any:
    """What :func:`run_jobs` gave this process (the sweep's data and settings: each sweep's own dataclass)."""
    return _SHARED[0]


def run_jobs(
    jobs: Sequence[J],
    job_fn: Callable[[J], R],
    shared_data: Any,
    workers: int = 2,
    on_done: Callable[[J, R | None, str | None], None] | None = None,
) -> tuple[dict[J, R], dict[J, str]]:
    """Run ``job_fn(job)`` for every job, in-process (``workers <= 1``) or on a spawn process pool.

    Args:
        jobs: hashable, picklable job descriptions.
        job_fn: a module-level function (picklable by name) returning the job's (picklable) result; it
            reads the shared data with :func:`shared`.
        shared_data: handed to every worker once (pool initializer), not once per job; picklable.
        workers: processes; each runs torch with one thread.
        on_done: called in this process as each job ends: ``on_done(job, result or None, error or None)``.
    Returns:
        (results by job, error messages by job). A failing job does not stop the others.
    """
    results: dict[J, R] = {}
    errors: dict[J, str] = {}

    def finish(job: J, result: R | None, error: str | None) -> None:
        if error is None:
            results[job] = cast(R, result)
        else:
            errors[job] = error
        if on_done is not None:
            on_done(job, result, error)

    if not jobs:
        return results, errors
    if workers <= 1:
        saved = _SHARED[0]
        _SHARED[0] = shared_data
        try:
            for job in jobs:
                try:
                    result = job_fn(job)
                except Exception as exc:
                    finish(job, None, f"{type(exc).__name__}: {exc}")
                else:
                    finish(job, result, None)
        finally:
            _SHARED[0] = saved
        return results, errors
    context = multiprocessing.get_context("spawn")
    pool = ProcessPoolExecutor(
        max_workers=min(workers, len(jobs)), mp_context=context, initializer=_init_worker, initargs=(shared_data,)
    )
    try:
        pending = {pool.submit(job_fn, job): job for job in jobs}
        while pending:
            done, _ = wait(pending, return_when=FIRST_COMPLETED)
            for future in done:
                job = pending.pop(future)
                try:
                    result = future.result()
                except Exception as exc:
                    finish(job, None, f"{type(exc).__name__}: {exc}")
                else:
                    finish(job, result, None)
    except BaseException:  # Ctrl-C, SIGTERM (the CLI's KeyboardInterrupt): stop now, not after every queued job
        _stop_pool(pool)
        raise
    pool.shutdown(wait=True)
    return results, errors


def _stop_pool(pool: ProcessPoolExecutor) -> None:
    """Cancel ``pool``'s queued jobs and end its workers (the jobs running in them stop unfinished; their run
    folders resume, as after any interruption)."""
    workers = list((getattr(pool, "_processes", None) or {}).values())  # (Python 3.14: pool.terminate_workers())
    pool.shutdown(wait=False, cancel_futures=True)
    for process in workers:
        process.terminate()
    for process in workers:
        process.join(timeout=10)


def progress_log(
    log: Callable[[str], None], total: int, done_before: int, name: Callable[[J], str], describe: Callable[[R], str]
) -> Callable[[J, R | None, str | None], None]:
    """An ``on_done`` for :func:`run_jobs` that logs ``[i/total] name: description`` or the failure."""
    count = [done_before]

    def on_done(job: J, result: R | None, error: str | None) -> None:
        count[0] += 1
        head = f"[{count[0]}/{total}] {name(job)}"
        log(f"{head}: FAILED: {error}" if error else f"{head}: {describe(cast(R, result))}")

    return on_done


class Clock:
    """Wall-clock seconds since creation."""

    def __init__(self) -> None:
        self.start = time.perf_counter()

    def seconds(self) -> float:
        """Seconds elapsed."""
        return time.perf_counter() - self.start


# ---------------------------------------------------------------- Pareto front


def pareto_front(points: Sequence[Sequence[float]]) -> list[bool]:
    """Which points are Pareto-optimal when every coordinate is to be maximised.

    A point is dominated when another point is ≥ in every coordinate and > in at least one; the
    front is every point no other point dominates (equal points are all on it).

    Args:
        points: (N, D) coordinates.
    Returns:
        N booleans, True for the points on the front.
    """
    pts = np.asarray(points, dtype=np.float64).reshape(len(points), -1) if len(points) else np.zeros((0, 1))
    if not np.isfinite(pts).all():
        raise ValueError("pareto_front needs finite coordinates")
    ge = (pts[None, :, :] >= pts[:, None, :]).all(axis=2)  # ge[i, j]: j ≥ i everywhere
    gt = (pts[None, :, :] > pts[:, None, :]).any(axis=2)  # gt[i, j]: j > i somewhere
    dominated = np.any(ge & gt, axis=1)
    return [not bool(d) for d in dominated]


# ---------------------------------------------------------------- plots


def workers_text(workers: int) -> str:
    """How the jobs ran, for the reports."""
    if workers <= 1:
        return "1 process (in the calling process, torch's own thread count)"
    return f"{workers} worker processes (spawn pool, one torch thread each)"


@dataclass(frozen=True)
class SweepRun:
    """How one invocation of a sweep ran: its timing, its jobs and the machine (the keys every sweep's
    ``results.json`` has, in this order, after its own).

    Attributes:
        wall_seconds: wall-clock seconds of this invocation (loading the data not counted).
        trained_now: jobs that ran (and finished) in this invocation.
        reused: jobs whose finished result an earlier invocation left in the folder.
        workers: worker processes (1: in the calling process).
        machine_start, machine_end: the machine and its load average at the start and at the end.
    """

    wall_seconds: float
    trained_now: int
    reused: int
    workers: int
    machine_start: Machine
    machine_end: Machine

    def to_dict(self) -> dict[str, Any]:
        """``{"wall_seconds", "trained_now", "reused", "workers", "machine_start", "machine_end"}``."""
        return {
            "wall_seconds": self.wall_seconds,
            "trained_now": self.trained_now,
            "reused": self.reused,
            "workers": self.workers,
            "machine_start": self.machine_start.to_dict(),
            "machine_end": self.machine_end.to_dict(),
        }

    @classmethod
    def finished(cls, clock: Clock, trained_now: int, reused: int, workers: int, machine_start: Machine) -> SweepRun:
        """The run of an invocation that started at ``clock`` and ends now (the machine described now)."""
        return cls(clock.seconds(), trained_now, reused, max(1, workers), machine_start, Machine.current())


def run_lines(run: SweepRun, unit: str) -> list[str]:
    """The report's "run" and "machine" bullet lines of a sweep invocation whose jobs are ``unit``s."""
    load0, load1 = (m.to_dict()["load_average"] for m in (run.machine_start, run.machine_end))  # (as a list)
    return [
        f"- run: {workers_text(run.workers)}; wall time of this invocation "
        f"{run.wall_seconds / 60:.1f} min, {run.trained_now} {unit}(s) trained now, "
        f"{run.reused} reused from an earlier invocation",
        f"- machine: {run.machine_start.cores} CPUs, load average (1, 5, 15 min) {load0} at the start "
        f"and {load1} at the end",
    ]


def pretty_norm(label: str) -> str:
    """``"l2"`` → ``"ℓ2"``, ``"linf"`` → ``"ℓ∞"``."""
    return "ℓ∞" if label == "linf" else "ℓ" + label[1:]


def plot_heatmap(
    matrix: Sequence[Sequence[float | None]],
    labels: Sequence[str],
    path: Path,
    title: str,
    value_format: str = "{:.2f}",
    cmap: str = "viridis",
    center_zero: bool = False,
    colorbar_label: str = "",
) -> Path:
    """A k×k heatmap PNG (rows: sensitive class, columns: other class), values written in the cells.

    Args:
        matrix: k×k values; None (e.g. the diagonal) is drawn blank.
        labels: the k class names.
        center_zero: a diverging colour scale symmetric around 0 (for signed differences).
    """
    plt = _pyplot()
    m = np.array([[np.nan if v is None else float(v) for v in row] for row in matrix], dtype=np.float64)
    k = len(labels)
    size = 2.2 + 0.62 * k
    fig, ax = plt.subplots(figsize=(size + 1.2, size), dpi=110)
    finite = m[np.isfinite(m)]
    kwargs: dict[str, Any] = {}
    if center_zero and finite.size:
        top = float(np.abs(finite).max()) or 1.0
        kwargs = {"vmin": -top, "vmax": top}
    image = ax.imshow(np.ma.masked_invalid(m), cmap=cmap, **kwargs)
    cbar = fig.colorbar(image, ax=ax, fraction=0.046, pad=0.04)
    if colorbar_label:
        cbar.set_label(colorbar_label)
    ax.set_xticks(range(k), labels, rotation=45, ha="right", fontsize=8)
    ax.set_yticks(range(k), labels, fontsize=8)
    ax.set_xlabel("other class b")
    ax.set_ylabel("sensitive class a")
    if finite.size:
        lo, hi = (kwargs["vmin"], kwargs["vmax"]) if kwargs else (float(finite.min()), float(finite.max()))
        for i in range(k):
            for j in range(k):
                if np.isfinite(m[i, j]):
                    frac = 0.5 if hi == lo else (m[i, j] - lo) / (hi - lo)
                    dark = abs(frac - 0.5) > 0.35 if center_zero else frac < 0.5  # dark cell → white text
                    ax.text(
                        j,
                        i,
                        value_format.format(m[i, j]),
                        ha="center",
                        va="center",
                        fontsize=6.5,
                        color="white" if dark else "black",
                    )
    ax.set_title(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path


def plot_pareto(panels: Sequence[tuple[str, Sequence[tuple[str, float, float]]]], path: Path, title: str) -> Path:
    """One PNG with a panel per entry: clean accuracy (x) vs certified accuracy (y), front highlighted.

    Args:
        panels: (panel title, [(point label, clean accuracy, certified accuracy) ...]) per panel;
            accuracies in [0, 1].
    """
    plt = _pyplot()
    n = max(1, len(panels))
    fig, axes = plt.subplots(1, n, figsize=(4.6 * n, 4.2), dpi=110, squeeze=False)
    for ax, (panel_title, pts) in zip(axes[0], panels):
        xy = [(c, r) for _, c, r in pts]
        front = pareto_front(xy) if xy else []
        for (label, c, r), on in zip(pts, front):
            ax.scatter(
                100 * c,
                100 * r,
                s=46 if on else 26,
                color="tab:red" if on else "tab:gray",
                zorder=3,
                edgecolor="black" if on else "none",
            )
            ax.annotate(label, (100 * c, 100 * r), textcoords="offset points", xytext=(4, 3), fontsize=6.5)
        line = sorted((100 * c, 100 * r) for (_, c, r), on in zip(pts, front) if on)
        if line:
            ax.plot(
                [p[0] for p in line],
                [p[1] for p in line],
                color="tab:red",
                linewidth=1.2,
                zorder=2,
                label="Pareto front",
            )
            ax.legend(fontsize=7, loc="best")
        ax.set_xlabel("clean accuracy (%)")
        ax.set_ylabel("certified accuracy (%)")
        ax.set_title(panel_title, fontsize=9)
        ax.grid(alpha=0.3)
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path)
    plt.close(fig)
    return path
