"""The ``asymcert`` command line: thin commands over the Python API.

Every refusal is one line on stderr (``Error: <ErrorClass>: <what is wrong>``) and a documented
exit code (see :data:`EXIT_CODES` and ``asymcert --help``); a traceback means a bug.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import json
import math
import os
import re
import signal
import sys
import threading
import warnings
from collections.abc import Callable
from dataclasses import dataclass, fields
from pathlib import Path
from typing import Any

import click

from asymcert import distributed
from asymcert.audit import audit_run
from asymcert.certify.api import OUTSIDE, certifier_spec, make_options
from asymcert.certify.result import normalize_norm
from asymcert.certify.summary import RunResults
from asymcert.checkpoint import load
from asymcert.compare import compare_cli_main
from asymcert.data import get_task, task_names
from asymcert.data.user import TABULAR_PRESETS
from asymcert.errors import AsymcertError, InputError, RunFolderBusyError, WriteError
from asymcert.export import export_run
from asymcert.export.vnnlib import DEFAULT_TIMEOUT
from asymcert.families import get_family
from asymcert.jsontext import JsonTextError, parse_json
from asymcert.pipeline import (
    DEFAULT_NORMS,
    CertificateMode,
    CertifySettings,
    certify_run,
    read_certificate_mode,
    run_data,
    run_task,
    train_run,
)
from asymcert.report.plots import PLOT_HINT, plotting_available
from asymcert.report.writer import mode_line, radius_header, write_report
from asymcert.research.capacity import capacity_report
from asymcert.research.sweep_pairs import pairs_cli_main
from asymcert.research.sweep_reg import reg_cli_main
from asymcert.runfolder import RunRecord, exclusive, read_run_record, run_threat_model
from asymcert.threat import ThreatModel, load_threat_model
from asymcert.traffic import TrafficResult, certify_file, record_path
from asymcert.train.loop import resolve_device

EXIT_OK, EXIT_CHECK_FAILED, EXIT_REFUSED, EXIT_BUSY, EXIT_IO, EXIT_INTERRUPTED = 0, 1, 2, 3, 4, 130
EXIT_PIPE = 141  # 128 + SIGPIPE, as a shell reports a command whose reader went away
EXIT_TERMINATED = 143  # 128 + SIGTERM
EXIT_CODES = {
    EXIT_OK: "success",
    EXIT_CHECK_FAILED: "a check failed: `asymcert audit` found violations",
    EXIT_REFUSED: "refused: a bad option or value, bad input data, a missing, corrupt or foreign run folder or "
    "model, settings a model cannot use (nothing was written)",
    EXIT_BUSY: "the run folder is busy: another asymcert process is writing it (try again later)",
    EXIT_IO: "the file system refused: disk full, no permission, a folder where a file belongs",
    EXIT_INTERRUPTED: "interrupted (Ctrl-C)",
    EXIT_PIPE: "the output's reader went away (e.g. `| head`); files already written are complete",
    EXIT_TERMINATED: "terminated (SIGTERM, e.g. `kill` or a job scheduler): files already written are complete",
}
_JSONISH = re.compile(r"""^\s*[-\[{"0-9]|[\[\]{}",]""")


def _parse_value(text: str) -> Any:
    """A class label: JSON when it parses (``3`` → 3), else the text itself."""
    try:
        return parse_json(text)
    except JsonTextError:
        return text


def _parse_setting(key: str, text: str, what: str) -> Any:
    """A ``--set``/``--model-set`` value: JSON, or a plain word taken as text (``optimizer=adam``).

    Text that looks like JSON but is not (``lr={bad``, ``widths=[1,``) is refused rather than
    passed on as a string.
    """
    try:
        return parse_json(text)
    except JsonTextError as exc:
        if _JSONISH.search(text):
            raise click.BadParameter(
                f"{key}={text!r:.80}: the value is not valid JSON ({exc}); write text "
                f"as a plain word (optimizer=adam) or in JSON quotes",
                param_hint=what,
            ) from None
        return text


def _settings(pairs: tuple[str, ...], what: str) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for pair in pairs:
        key, sep, value = pair.partition("=")
        if not sep or not key.strip():
            raise click.BadParameter(f"{pair!r} is not KEY=VALUE", param_hint=what)
        out[key.strip()] = _parse_setting(key.strip(), value, what)
    return out


def _norms(text: str) -> tuple[float, ...]:
    """``--norms`` (certify, export): "1,2,inf" → (1.0, 2.0, ∞), in the order given.

    Raises:
        click.BadParameter (one line, exit 2): no norm, an empty entry ("1,,2"), an entry that is not a norm
            p ≥ 1, or one norm named twice ("inf,linf": the outputs would repeat it).
    """
    entries = [p.strip() for p in text.split(",")]
    if not any(entries):
        raise click.BadParameter("name at least one norm, e.g. 1,2,inf", param_hint="--norms")
    if not all(entries):
        raise click.BadParameter(
            f"{text!r} has an empty entry; separate the norms by single commas, e.g. 1,2,inf", param_hint="--norms"
        )
    try:
        norms = tuple(normalize_norm(p) for p in entries)
    except ValueError as exc:
        raise click.BadParameter(str(exc), param_hint="--norms") from None
    first: dict[float, str] = {}
    for entry, p in zip(entries, norms):
        if p in first:
            same = "ℓ∞" if math.isinf(p) else f"ℓ{p:g}"
            twice = f"{entry!r} is given twice" if first[p] == entry else f"{first[p]!r} and {entry!r} name one norm"
            raise click.BadParameter(f"{twice} ({same}); give each norm once", param_hint="--norms")
        first[p] = entry
    return norms


def _device(ctx: click.Context, param: click.Parameter, value: str | None) -> str | None:
    """Check a ``--device`` before any work: a valid name of a device present here."""

    if value is not None:
        try:
            resolve_device(value)
        except AsymcertError as exc:
            raise click.BadParameter(str(exc)) from None
    return value


def _one_line(text: str) -> str:
    return " ".join(str(text).split())


class _Refusal(click.ClickException):
    """A one-line error with its exit code."""

    def __init__(self, message: str, exit_code: int) -> None:
        super().__init__(_one_line(message))
        # click's stubs declare exit_code a ClassVar, but click reads it per instance (as here)
        self.exit_code = exit_code  # type: ignore[misc]


def _os_message(exc: OSError) -> str:
    where = " -> ".join(str(f) for f in (exc.filename, exc.filename2) if f)
    return f"{type(exc).__name__}: {where + ': ' if where else ''}{exc.strerror or exc}"


def _quiet_stdout() -> None:
    """Point stdout at the null device, so that the interpreter's last flush to a closed pipe stays silent."""
    with contextlib.suppress(OSError, ValueError):  # no file descriptor behind stdout (a test runner's buffer)
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())


_TRAINING_COMMANDS = frozenset({"run", "train", "compare", "sweep"})
"""Commands that train: stopped, they resume after the last finished epoch when rerun (``capacity`` keeps no
training state: rerun, it trains again from the start, audit 29e #6)."""
_ONE_PROCESS_COMMANDS = frozenset({"compare", "sweep", "capacity", "audit", "export"})
"""Commands refused under torchrun: both processes would do all the work and write the same files (audit 29e #8,
#9; export: each process wrote the same file and one was refused as busy by its sibling, review s34 dist F1)."""


_PARTIAL = "asymcert.partial"
"""``ctx.meta`` key: what a command stopped now leaves half-done and how to finish it (set while it is so)."""


def _go_on(ctx: click.Context) -> str:
    """What a stopped command leaves and how to go on: training resumes; other commands wrote nothing half-way
    (every output appears whole, by a rename), so they just run again, unless :data:`_PARTIAL` says otherwise."""
    if _PARTIAL in ctx.meta:
        return str(ctx.meta[_PARTIAL])
    if ctx.invoked_subcommand in _TRAINING_COMMANDS:
        return "rerun the same command to go on (training resumes after its last finished epoch)"
    return (
        "nothing was half-written (each output is the earlier one, or the new one whole where its write had "
        "finished); rerun the same command to start again"
    )


class _Terminated(KeyboardInterrupt):
    """SIGTERM, raised where the program is, like Ctrl-C's KeyboardInterrupt: the same clean-up runs (temporary
    files removed, locks released), and no ``except Exception`` swallows it."""


def _raise_terminated(signum: int, frame: Any) -> None:
    raise _Terminated


@contextlib.contextmanager
def _sigterm_as_exception() -> Any:
    """While the block runs (in the main thread), SIGTERM raises :class:`_Terminated`; the old handler after."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    old = signal.signal(signal.SIGTERM, _raise_terminated)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, old)


class _Group(click.Group):
    """Turns every refusal into one line on stderr and its exit code (:data:`EXIT_CODES`).

    Caught: asymcert's own errors, click's usage errors, operating-system errors (disk full, no
    permission), Ctrl-C and SIGTERM. Anything else is a bug and keeps its traceback.
    """

    def make_context(
        self, info_name: str | None, args: list[str], parent: click.Context | None = None, **extra: Any
    ) -> click.Context:
        """click's, with a Ctrl-C while the arguments are parsed (before :meth:`invoke` catches it) one line and
        exit 130 like any other; click's own answer was "Aborted!" and exit 1, a failed check's code (review 30)."""
        try:
            return super().make_context(info_name, args, parent, **extra)
        except KeyboardInterrupt:
            raise _Refusal("interrupted; nothing was read or written", EXIT_INTERRUPTED) from None

    def invoke(self, ctx: click.Context) -> Any:
        try:
            with _sigterm_as_exception():
                return super().invoke(ctx)
        except click.exceptions.NoArgsIsHelpError:
            raise
        except click.UsageError as exc:
            hint = f" (see `{exc.ctx.command_path} --help`)" if exc.ctx is not None else ""
            raise _Refusal(exc.format_message() + hint, EXIT_REFUSED) from None
        except RunFolderBusyError as exc:
            raise _Refusal(f"{type(exc).__name__}: {exc}", EXIT_BUSY) from None
        except WriteError as exc:
            raise _Refusal(f"{type(exc).__name__}: {exc}", EXIT_IO) from None
        except AsymcertError as exc:
            raise _Refusal(f"{type(exc).__name__}: {exc}", EXIT_REFUSED) from None
        except BrokenPipeError:  # not the file system: stdout's reader closed it; say nothing more there
            _quiet_stdout()
            raise click.exceptions.Exit(EXIT_PIPE) from None
        except OSError as exc:
            raise _Refusal(_os_message(exc), EXIT_IO) from None
        except RuntimeError as exc:  # (a peer that stopped mid-collective, e.g. in DDP's backward: review 29f)
            peer = distributed.peer_stopped(exc)
            if peer is None:
                raise
            raise _Refusal(f"{type(peer).__name__}: {peer}", EXIT_REFUSED) from None
        except _Terminated:
            # (torchrun stops every process when one fails: that one's own error says why, audit 29e #7)
            peers = (
                "; under torchrun, the launcher stops every process when one fails or the job is stopped: another "
                "process's line says why"
                if distributed.is_distributed()
                else ""
            )
            then = "; once that is mended, " if distributed.is_distributed() else "; "
            raise _Refusal(f"terminated (SIGTERM{peers}){then}{_go_on(ctx)}", EXIT_TERMINATED) from None
        except KeyboardInterrupt:
            raise _Refusal(f"interrupted; {_go_on(ctx)}", EXIT_INTERRUPTED) from None


@click.group(cls=_Group)
@click.version_option(package_name="asymcert")
@click.pass_context
def main(ctx: click.Context) -> None:
    """Certified robustness for the one class an attacker wants to escape.

    Under `torchrun --nproc_per_node N -m asymcert ...` the processes join one process group
    (gloo on CPU, NCCL on CUDA): training runs with DistributedDataParallel and certification
    shards the test inputs.

    \b
    Exit codes:
      0    success
      1    a check failed: `asymcert audit` found violations
      2    refused: a bad option or value, bad input data, a missing, corrupt or
           foreign run folder or model, settings a model cannot use
      3    the run folder is busy: another asymcert process is writing it
      4    the file system refused: disk full, no permission
      130  interrupted (Ctrl-C)
      141  the output's reader went away (e.g. `| head`)
      143  terminated (SIGTERM)
    Every refusal is one line on stderr, and a refused command changes nothing on disk.
    """

    distributed.init_from_env()
    warnings.showwarning = _one_line_warning
    if distributed.is_distributed() and ctx.invoked_subcommand in _ONE_PROCESS_COMMANDS:
        raise click.UsageError(
            f"`asymcert {ctx.invoked_subcommand}` runs in one process (its work is not split between processes): "
            "run it without torchrun"
        )


def _one_line_warning(message: Warning | str, category: type[Warning], *_: Any, **__: Any) -> None:
    """Python warnings on the command line: one ``warning: ...`` line on stderr, no file path or source line."""
    click.echo(f"warning: {message}", err=True)


_POSITIVE = click.IntRange(min=1)
_Command = Callable[..., None]
"""A click command's function, before and after the shared options are attached to it."""


class _PositiveSeconds(click.ParamType):
    """A finite number of seconds > 0 (click's FloatRange lets NaN through: every comparison with it is False)."""

    name = "seconds"

    def convert(self, value: Any, param: click.Parameter | None, ctx: click.Context | None) -> float:
        try:
            seconds = float(value)
        except (TypeError, ValueError):
            self.fail(f"{value!r} is not a number of seconds", param, ctx)
        if not (math.isfinite(seconds) and seconds > 0):
            self.fail(f"{value!r} is not a finite number of seconds > 0", param, ctx)
        return seconds


@dataclass(frozen=True)
class TaskArgs:
    """The options ``run`` and ``train`` share (:func:`_task_options`), as click parsed them: the data (a TASK or
    the user's own files), the run folder, the model and training overrides, the threat model and the bars."""

    task: str | None
    data: str | None
    csv: str | None
    images: str | None
    label_column: str | None
    ignore_columns: tuple[str, ...]
    sensitive_class: str | None
    other_class: str | None
    out: str
    preset: str | None
    data_dir: str | None
    model_kind: str | None
    epochs: int | None
    device: str | None
    sets: tuple[str, ...]
    model_sets: tuple[str, ...]
    threat_model: str | None
    no_threat_model: bool
    quiet: bool


_TASK_FIELDS = tuple(f.name for f in fields(TaskArgs))


def _task_spec(args: TaskArgs) -> dict[str, Any]:
    """The pipeline's task spec of the data ``args`` name; click.UsageError for a wrong combination of sources."""
    task, data, csv, images = args.task, args.data, args.csv, args.images
    data_dir, ignore_columns, label_column = args.data_dir, args.ignore_columns, args.label_column
    sensitive_class, other_class = args.sensitive_class, args.other_class
    sources = [s for s in (task, data, csv, images) if s]
    if len(sources) != 1:
        raise click.UsageError("name exactly one of: a TASK, --data FILE.npz, --csv FILE, --images DIR")
    if data_dir is not None and not task:
        raise click.UsageError("--data-dir is where a built-in TASK's data lives; your own data is named by its file")
    if ignore_columns and not csv:
        raise click.UsageError("--ignore-column names columns of a --csv file")
    if task:
        return {"name": task}
    if sensitive_class is None:
        raise click.UsageError("--sensitive-class is required with your own data")
    spec: dict[str, Any] = {
        "sensitive_class": _parse_value(sensitive_class),
        "other_class": None if other_class is None else _parse_value(other_class),
    }
    if data:
        spec["npz"] = str(Path(data).resolve())
    elif csv:
        if not label_column:
            raise click.UsageError("--label-column is required with --csv")
        spec.update(csv=str(Path(csv).resolve()), label_column=label_column)
        if ignore_columns:
            spec["ignore_columns"] = sorted(set(ignore_columns))  # (their order is no setting)
    elif images:
        spec["images"] = str(Path(images).resolve())
    return spec


def _bars(quiet: bool) -> bool:
    """Whether to draw progress bars: not with ``--quiet``, and only when stderr is a terminal (tqdm redraws
    a bar with carriage returns, which would fill a redirected log with every update)."""
    return not quiet and sys.stderr.isatty()


def _task_options(fn: _Command) -> _Command:
    opts = [
        click.argument("task", required=False),
        click.option(
            "--data", type=click.Path(exists=True, dir_okay=False), help="Your own .npz with x (N, ...) and y (N,)."
        ),
        click.option("--csv", type=click.Path(exists=True, dir_okay=False), help="Your own CSV of numeric features."),
        click.option(
            "--images",
            type=click.Path(exists=True, file_okay=False),
            help="Your own folder of per-class image folders.",
        ),
        click.option("--label-column", help="CSV column holding the labels."),
        click.option(
            "--ignore-column",
            "ignore_columns",
            multiple=True,
            help="A CSV column that is no feature (an ID, a file hash), skipped unread; repeatable.",
        ),
        click.option("--sensitive-class", help="The label of the sensitive class (your own data)."),
        click.option("--other-class", help="The label of the other class (default: every other label)."),
        click.option("--out", type=click.Path(file_okay=False), required=True, help="Run folder to write."),
        click.option("--preset", help="A named preset of the task, e.g. 'fast'."),
        click.option("--data-dir", type=click.Path(file_okay=False), help="Folder holding the task's data files."),
        click.option("--model", "model_kind", help="Model family, e.g. 'linf-dist' (default: the task's)."),
        click.option("--epochs", type=_POSITIVE, help="Override the number of epochs (≥ 1)."),
        click.option("--device", default=None, callback=_device, help="auto, cpu, cuda[:i] or mps."),
        click.option("--set", "sets", multiple=True, help="Training setting KEY=VALUE (JSON value), repeatable."),
        click.option(
            "--model-set", "model_sets", multiple=True, help="Model config KEY=VALUE (JSON value), repeatable."
        ),
        click.option(
            "--threat-model",
            "threat_model",
            type=click.Path(exists=True, dir_okay=False),
            help="JSON threat model (which features an attacker may move, how, in whose units); "
            "default: the task's own, if it has one.",
        ),
        click.option(
            "--no-threat-model", is_flag=True, help="Plain ℓp balls in raw input units, even for a task with one."
        ),
        click.option(
            "--quiet",
            is_flag=True,
            help="No progress bars (one line per epoch and the summary are still printed). Bars are drawn only "
            "on a terminal: redrawn with carriage returns, they would fill a log file.",
        ),
    ]
    for opt in reversed(opts):
        fn = opt(fn)
    return fn


def _task_command(fn: Callable[..., None]) -> _Command:
    """``fn(args: TaskArgs, **its own options)`` as a click command function that takes the shared task options
    (:func:`_task_options`) too; ``fn``'s own options are attached to it before this decorator."""

    @functools.wraps(fn)
    def command(**kwargs: Any) -> None:
        shared = {name: kwargs.pop(name) for name in _TASK_FIELDS}
        fn(TaskArgs(**shared), **kwargs)

    return _task_options(command)


def _threat_options(fn: _Command) -> _Command:
    """--threat-model FILE and --no-threat-model for commands that read a run folder."""
    fn = click.option("--no-threat-model", is_flag=True, help="Plain ℓp balls in raw input units.")(fn)
    return click.option(
        "--threat-model",
        "threat_model",
        type=click.Path(exists=True, dir_okay=False),
        help="JSON threat model to certify under (default: the run's own, if it has one).",
    )(fn)


def _threat(path: str | None, plain: bool) -> ThreatModel | None:
    """The threat model file's content (None without one); both a file and --no-threat-model is a usage error."""
    if path is not None and plain:
        raise click.UsageError("--threat-model and --no-threat-model exclude each other")
    return None if path is None else load_threat_model(path)


def _overrides(args: TaskArgs) -> tuple[dict[str, Any], dict[str, Any]]:
    """(training overrides, model overrides) from ``--set``, ``--epochs``, ``--device``, ``--model-set`` and
    ``--model``; click.BadParameter for a bad setting."""
    train = _settings(args.sets, "--set")
    if args.epochs is not None:
        train["epochs"] = args.epochs
    if args.device is not None:
        train["device"] = args.device
    model = _settings(args.model_sets, "--model-set")
    model_kind = args.model_kind
    if "input_shape" in model:
        raise click.BadParameter("input_shape is taken from the data; it cannot be set", param_hint="--model-set")
    if model_kind:  # the family's defaults are the base (pipeline); only what the user set is checked for effect
        get_family(model_kind)  # an unknown family fails here, naming the known ones
        model = {**model, "kind": model_kind}
    return train, model


@main.command()
@_task_command
@click.option("--limit", type=_POSITIVE, help="Certify only the first N test inputs.")
def run(args: TaskArgs, limit: int | None) -> None:
    """Train, certify and report: TASK (see `asymcert tasks`) or your own data."""

    spec = _task_spec(args)
    train, model = _overrides(args)
    tm = _threat(args.threat_model, args.no_threat_model)
    if distributed.is_main() and not plotting_available():  # said before an hour of training, not after
        click.echo(f"the report will have no plots: {PLOT_HINT}", err=True)
    results = run_task(
        spec,
        args.out,
        preset=args.preset,
        data_dir=args.data_dir,
        limit=limit,
        progress=_bars(args.quiet),
        train_overrides=train,
        model_overrides=model,
        log=click.echo,
        report=lambda folder: write_report(folder, log=lambda msg: None),
        threat_model=tm,
        plain=args.no_threat_model,
    )
    _echo_summary(results, args.out)


@main.command()
@_task_command
def train(args: TaskArgs) -> None:
    """Train a model into a run folder (resumes an interrupted run in the same folder)."""

    spec = _task_spec(args)
    train_o, model_o = _overrides(args)
    tm = _threat(args.threat_model, args.no_threat_model)
    result = train_run(
        spec,
        args.out,
        args.preset,
        train_o,
        model_o,
        args.data_dir,
        progress=_bars(args.quiet),
        log=click.echo,
        threat_model=tm,
        plain=args.no_threat_model,
    )
    training = result.training or {}  # (a finished run has its training summary)
    if distributed.is_main():  # (once, not once per torchrun process: review s34 dist F6)
        click.echo(
            f"trained in {training['seconds']:.1f}s; best validation epoch {training['best']['epoch']}; "
            f"model in {args.out}"
        )


@dataclass(frozen=True)
class TrafficSettings:
    """How ``certify --input`` certifies a file: norms, device, batch size, threat model (as parsed, whether
    ``--no-threat-model`` was given), certifier options and the threat model's file name."""

    norms: tuple[float, ...]
    device: str
    batch_size: int
    threat_model: Any
    plain: bool
    options: Any
    threat_model_file: str | None


def _certify_traffic(run_dir: str, input_file: str, out_file: str, settings: TrafficSettings, quiet: bool) -> None:
    """``certify RUN --input FILE --out RESULTS``, in this process (under torchrun: the main one, which says so)."""
    if distributed.world_size() > 1:
        click.echo(
            f"note: certify --input runs in one process; the other {distributed.world_size() - 1} torchrun "
            "process(es) have nothing to do",
            err=True,
        )
    done = certify_file(
        run_dir,
        input_file,
        out_file,
        settings.norms,
        settings.device,
        settings.batch_size,
        _bars(quiet),
        settings.threat_model,
        settings.plain,
        settings.options,
        threat_model_file=settings.threat_model_file,
    )
    _echo_traffic(done, run_dir)


@main.command(name="certify")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--norms", help="Comma-separated ℓp norms (default: the threat model's, else 1,2,inf).")
@click.option("--limit", type=_POSITIVE, help="Only the first N test inputs.")
@click.option("--batch-size", type=_POSITIVE, default=1000, show_default=True, help="Inputs certified at once.")
@click.option("--device", default="cpu", show_default=True, callback=_device, help="cpu, cuda[:i] or mps.")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option(
    "--input",
    "input_file",
    type=click.Path(),
    help="Certify new traffic instead of the test split: a .csv or .parquet (the run's columns, by name), "
    "an .npz, or a folder of images.",
)
@click.option(
    "--out",
    "out_file",
    type=click.Path(dir_okay=False),
    help="With --input: the results file to write (.csv, or .parquet with pyarrow).",
)
@_threat_options
@click.option(
    "--reach",
    is_flag=True,
    help="Feature-convex models under a threat model: use φ's slopes only where a move of each size can "
    "reach (larger radii, most in ℓ2/ℓ∞; tens of times the certification time).",
)
@click.option("--quiet", is_flag=True, help="No progress bars (drawn only on a terminal in any case).")
def certify_cmd(
    run_dir: str,
    norms: str | None,
    limit: int | None,
    batch_size: int,
    device: str,
    data_dir: str | None,
    input_file: str | None,
    out_file: str | None,
    threat_model: str | None,
    no_threat_model: bool,
    reach: bool,
    quiet: bool,
) -> None:
    """Certify a run's test inputs (certificates.safetensors, then results.json and report.md), or new traffic
    (--input FILE --out RESULTS.csv)."""

    tm = _threat(threat_model, no_threat_model)
    norms_t = _certify_norms(run_dir, norms, tm, no_threat_model)
    options = _reach_options(run_dir, reach, tm, no_threat_model)
    if input_file is not None or out_file is not None:
        if input_file is None or out_file is None or limit is not None:
            raise click.UsageError("--input and --out go together (and without --limit)")
        if distributed.is_main():  # one process streams the file and writes the results (walkthrough 28d)
            traffic = TrafficSettings(norms_t, device, batch_size, tm, no_threat_model, options, threat_model)
            _certify_traffic(run_dir, input_file, out_file, traffic, quiet)
        return
    settings = CertifySettings(
        norms_t,
        limit,
        batch_size,
        options=options,
        threat_model=tm,
        plain=no_threat_model,
        threat_model_file=threat_model,
    )
    read_run_record(run_dir)  # (no run folder: refused before its lock file is made)
    ctx = click.get_current_context()

    def replacing() -> None:  # (stopped from here on, the report is missing: the line says so, audit 29a F5)
        ctx.meta[_PARTIAL] = (
            f"the report of the earlier certificates is removed and the new one not written: rerun the same command, "
            f"or `asymcert report {run_dir}` for the certificates now in the folder"
        )

    with exclusive(run_dir):  # one writer from the certificates to their report: no gap between (audit 29a F1)
        try:
            cert = certify_run(
                run_dir, device=device, data_dir=data_dir, progress=_bars(quiet), settings=settings, replacing=replacing
            )
        except WriteError as exc:  # (e.g. a full disk once the earlier report is removed: say so, review 29d #2)
            raise WriteError(f"{exc}; {ctx.meta[_PARTIAL]}" if _PARTIAL in ctx.meta else str(exc)) from None
        if not distributed.is_main():  # (every process certified its share; one says so)
            return
        click.echo(
            f"certified {len(cert)} inputs in {cert.seconds:.3f}s "
            f"({1000 * cert.seconds / max(1, len(cert)):.3f} ms per input); radii in {cert.units}"
        )
        _write_certified_report(run_dir)


def _write_certified_report(run_dir: str) -> None:
    """results.json and report.md describe certificates.safetensors: rewrite them with it (never stale). A failed
    or interrupted write says that the certificates are new and the report is not, and how to write it."""
    ctx = click.get_current_context()
    ctx.meta[_PARTIAL] = (
        f"the new certificates are written, and the report is not: `asymcert report {run_dir}` writes it"
    )
    try:
        results = write_report(run_dir, log=lambda msg: None)
    except WriteError as exc:
        raise WriteError(f"{exc}; {ctx.meta[_PARTIAL]} once the folder takes writes") from None
    del ctx.meta[_PARTIAL]
    _echo_summary(results, run_dir, units=False)  # (certify's first line ends "radii in …")


def _reach_options(run_dir: str, reach: bool, tm: ThreatModel | None, plain: bool) -> dict[str, Any]:
    """The certifier options of ``--reach`` ({} without it); refused (one line) when there is no threat model
    to reach under (``tm``, else the run's own; none with ``plain``) or the run's certifier has no reach-aware radii."""
    if not reach:
        return {}
    if run_threat_model(read_run_record(run_dir), tm, plain) is None:
        raise click.UsageError(
            "--reach enlarges radii under a threat model, and "
            + ("--no-threat-model was given" if plain else "this run has none; give one with --threat-model FILE")
        )
    spec = certifier_spec(load(run_dir))
    try:
        make_options(spec, None, {"reach": True})
    except InputError:
        raise click.UsageError(
            f"--reach applies to feature-convex certificates; this run's certifier is {spec.name!r}"
        ) from None
    return {"reach": True}


def _echo_traffic(done: TrafficResult, run_dir: str) -> None:
    """What ``certify --input`` did, and its warnings on stderr (a run still being written, inputs outside the
    threat model's domain)."""
    click.echo(
        f"certified {done.n_inputs} inputs ({done.n_flagged} flagged) in {done.seconds:.3f}s; "
        f"radii in {done.units}; results in {done.out} (what each column means: {record_path(done.out)})"
    )
    if done.run_busy:
        click.echo(
            f"warning: {run_dir} is being written by another asymcert process (still training?): these are "
            "certificates of its model as saved when this command started",
            err=True,
        )
    if done.n_outside and done.first_outside is not None:
        where = f": {done.outside_detail}" if done.outside_detail else ""
        click.echo(
            f"warning: {done.n_outside} of {done.n_inputs} input(s) lie {OUTSIDE} [lower, "
            f"upper] (the first: index {done.first_outside} in the results, input {done.first_outside + 1} of the "
            f"file, counting from 1 as its error messages do{where}); corrupt values? Their radii count the moves it "
            "allows from there.",
            err=True,
        )


def _certify_norms(run_dir: str, norms: str | None, tm: ThreatModel | None, plain: bool) -> tuple[float, ...]:
    """--norms, else the threat model's norms (the given one, else the run's own), else 1, 2, ∞."""
    if norms is not None:
        return _norms(norms)
    resolved = run_threat_model(read_run_record(run_dir), tm, plain)
    return (resolved.norms if resolved is not None else ()) or DEFAULT_NORMS


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
def report(run_dir: str) -> None:
    """Write results.json, report.md and plots from a certified run folder."""

    _echo_summary(write_report(run_dir), run_dir)


@main.command()
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--limit", type=_POSITIVE, default=1000, show_default=True, help="Audit the first N test inputs.")
@click.option("--restarts", type=_POSITIVE, default=3, show_default=True, help="PGD restarts per norm.")
@click.option("--steps", type=_POSITIVE, default=100, show_default=True, help="PGD steps per restart.")
@click.option("--no-exact", is_flag=True, help="Skip the exact radii (linear / conic programs).")
@click.option(
    "--attack-bounds/--no-attack-bounds",
    default=None,
    help="Search each certified input's smallest flipping move (default: for norms without exact radii).",
)
@click.option("--reach", is_flag=True, help="Audit the reach-aware radii (see `asymcert certify --reach`).")
@click.option(
    "--exact-milp",
    is_flag=True,
    help="Exact ℓ∞, ℓ1 and ℓ2 radii through log1p, pair-min and hinges by mixed-integer programs (SpamBase "
    "default: ℓ∞ 0.2 s per flagged input, ℓ1 about 15 s, ℓ2 most of --exact-time-limit: use --limit).",
)
@click.option(
    "--exact-time-limit",
    type=_PositiveSeconds(),
    default=60.0,
    show_default=True,
    help="Seconds per input and norm for an exact radius; a bracket still open then is reported as such.",
)
@click.option("--data-dir", type=click.Path(file_okay=False))
@_threat_options
def audit(
    run_dir: str,
    limit: int,
    restarts: int,
    steps: int,
    no_exact: bool,
    attack_bounds: bool | None,
    reach: bool,
    exact_milp: bool,
    exact_time_limit: float,
    data_dir: str | None,
    threat_model: str | None,
    no_threat_model: bool,
) -> None:
    """Attack every certificate inside its radius, compare with exact radii; exit 1 on any violation (0: none).

    Where exact radii are missing, the smallest flipping move found by attacks bounds the exact radius
    from above (--attack-bounds for every norm). Under a threat model (the run's own, or
    --threat-model) the attacks move only what it allows and radii are in its units."""

    if exact_milp and no_exact:
        raise click.UsageError("--exact-milp computes exact radii and --no-exact skips them: the two flags conflict")
    given = _threat(threat_model, no_threat_model)
    record = read_run_record(run_dir)
    tm = run_threat_model(record, given, no_threat_model)
    reach_options = _reach_options(run_dir, reach, given, no_threat_model)
    data = run_data(run_dir, data_dir)
    with exclusive(run_dir):  # audit.md and audit.json are written into the folder: one writer
        report = audit_run(
            run_dir,
            data.test.x[:limit],
            data.test.y[:limit],
            restarts=restarts,
            steps=steps,
            exact=not no_exact,
            threat_model=tm,
            attack_bounds=attack_bounds,
            options=reach_options or None,
            exact_milp=exact_milp,
            exact_time_limit=exact_time_limit,
            threat_model_file=threat_model if given is not None else None,
        )
    click.echo(
        f"audit of {min(limit, len(data.test))} test inputs: {report.violations} violation(s); "
        f"details in {Path(run_dir) / 'audit.md'}"
    )
    for line in _other_mode_note(read_certificate_mode(run_dir), report.certificate_mode, record):
        click.echo(line)
    if report.violations:
        sys.exit(EXIT_CHECK_FAILED)


def _other_mode_note(folder: CertificateMode | None, audited: CertificateMode | None, record: RunRecord) -> list[str]:
    """A note when the audit certified otherwise than the folder's certificates were made (another threat model,
    none, or closed form against reach-aware): audit.md's radii are then not report.md's (audit units31: each file
    named its own units, nothing said they differ); none when they agree or either is not recorded. Threat models
    are compared by content (the run's own: ``record``'s), not by the file named (review 31b: the run's own given
    as a file, or one file spelled two ways, made a note; a file edited in between did not)."""
    if folder is None or audited is None or _mode_key(folder, record) == _mode_key(audited, record):
        return []
    audit_text, folder_text = (mode_line(m).removeprefix("Certificates: ") for m in (audited, folder))
    return [
        "note: this audit certified otherwise than the folder's certificates (report.md) were made; audit: "
        f"{audit_text} Folder: {folder_text} Give audit the options certify was given (--threat-model FILE, "
        "--no-threat-model, --reach) to audit those."
    ]


def _mode_key(mode: CertificateMode, record: RunRecord) -> tuple[bool, str | None]:
    """What decides a mode's radii: reach-aware or not, and the threat model's content (canonical JSON; None for
    none or one that constrains nothing on the run's features, which certifies as none; the file's name where its
    content was not recorded)."""
    own = record.threat_model
    content = own if mode.threat_model == "run" else mode.given if mode.threat_model == "given" else None
    if content is None:
        unknown = mode.threat_model == "given"
        return mode.reach, f"file:{mode.threat_model_file}" if unknown else None
    tm = ThreatModel.from_dict(content)
    resolved = run_threat_model(record, tm)
    return mode.reach, None if resolved is None or resolved.is_empty() else json.dumps(tm.to_dict(), sort_keys=True)


@main.command()
@click.argument("task")
@click.option("--out", type=click.Path(file_okay=False), required=True)
@click.option("--methods", default="convex,linf-dist,smoothing,orthogonal,ibp", show_default=True)
@click.option("--preset", help="A preset of the task applied to every method, e.g. 'fast'.")
@click.option("--n-smoothing", type=_POSITIVE, default=10000, show_default=True, help="Smoothing samples per input.")
@click.option("--limit", type=_POSITIVE, help="Certify only the first N test inputs.")
@click.option("--paper-scale", is_flag=True, help="The papers' network sizes, epochs and sample counts.")
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--quiet", is_flag=True, help="No progress bars (drawn only on a terminal in any case).")
def compare(
    task: str,
    out: str,
    methods: str,
    preset: str | None,
    n_smoothing: int,
    limit: int | None,
    paper_scale: bool,
    data_dir: str | None,
    quiet: bool,
) -> None:
    """Train (or reuse) each method on TASK, certify the same inputs, write one comparison report."""

    compare_cli_main(
        task,
        out,
        methods,
        preset=preset,
        n_smoothing=n_smoothing,
        limit=limit,
        paper_scale=paper_scale,
        data_dir=data_dir,
        progress=_bars(quiet),
        echo=click.echo,
    )


@main.group()
def sweep() -> None:
    """Sweeps over many models: every class pair of a task, or regulariser strength × feature map."""


@sweep.command(name="pairs")
@click.argument("task")
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Sweep folder (re-runs skip finished pairs)."
)
@click.option("--classes", help="Comma-separated class ids to pair, e.g. 0,3,6 (default: all 10).")
@click.option("--epochs", type=_POSITIVE, help="Training epochs per pair (default 5).")
@click.option(
    "--workers", type=int, default=2, show_default=True, help="Worker processes (≥ 1), one torch thread each."
)
@click.option("--limit", type=_POSITIVE, help="Certify only the first N test inputs of each pair.")
@click.option("--data-dir", type=click.Path(file_okay=False))
def sweep_pairs_cmd(
    task: str, out: str, classes: str | None, epochs: int | None, workers: int, limit: int | None, data_dir: str | None
) -> None:
    """Train and certify a model for every ordered class pair of TASK; heatmaps and asymmetry report."""

    pairs_cli_main(task, out, classes, epochs, workers, limit, data_dir, echo=click.echo)


@sweep.command(name="reg")
@click.argument("task")
@click.option(
    "--out", type=click.Path(file_okay=False), required=True, help="Sweep folder (re-runs skip finished runs)."
)
@click.option("--lambdas", default="0,1e-3,1e-2,1e-1", show_default=True, help="Jacobian-regulariser strengths λ.")
@click.option("--feature-maps", default="shift,concat-abs", show_default=True, help="Feature maps φ to compare.")
@click.option("--epochs", type=_POSITIVE, help="Training epochs per grid point (default 6).")
@click.option(
    "--workers", type=int, default=2, show_default=True, help="Worker processes (≥ 1), one torch thread each."
)
@click.option("--limit", type=_POSITIVE, help="Certify only the first N test inputs (default 1000).")
@click.option("--data-dir", type=click.Path(file_okay=False))
def sweep_reg_cmd(
    task: str,
    out: str,
    lambdas: str,
    feature_maps: str,
    epochs: int | None,
    workers: int,
    limit: int | None,
    data_dir: str | None,
) -> None:
    """Grid over Jacobian-regulariser λ × feature map on TASK; Pareto plot of clean vs certified accuracy."""

    reg_cli_main(task, out, lambdas, feature_maps, epochs, workers, limit, data_dir, echo=click.echo)


@main.command()
@click.argument("task")
@click.option("--out", type=click.Path(file_okay=False), required=True, help="Folder for capacity.json/.md/.png.")
@click.option(
    "--recipes",
    default=None,
    help="Comma-separated recipe names, 'all' or 'none' (bound only); default icnn-paper,icnn-wide.",
)
@click.option("--limit", type=_POSITIVE, help="Separability for a random subset of N sensitive inputs (seeded).")
@click.option("--epochs", type=_POSITIVE, help="Override every recipe's epochs.")
@click.option("--seed", type=click.IntRange(min=0), default=0, show_default=True, help="Subset and training seed.")
@click.option("--reverse", is_flag=True, help="Test the other class against the sensitive class's hull.")
@click.option(
    "--fw-iterations",
    type=click.IntRange(min=0),
    default=100,
    show_default=True,
    help="Frank–Wolfe steps before LPs (0: every input not settled by the two cheap hyperplanes gets an LP).",
)
@click.option("--data-dir", type=click.Path(file_okay=False))
@click.option("--device", default="cpu", show_default=True, callback=_device)
@click.option("--quiet", is_flag=True, help="No progress bars (drawn only on a terminal in any case).")
def capacity(
    task: str,
    out: str,
    recipes: str | None,
    limit: int | None,
    epochs: int | None,
    seed: int,
    reverse: bool,
    fw_iterations: int,
    data_dir: str | None,
    device: str,
    quiet: bool,
) -> None:
    """Separability bound on TASK's training accuracy and how close trained convex recipes get."""

    rep = capacity_report(
        task,
        out,
        recipes=recipes,
        limit=limit,
        seed=seed,
        epochs=epochs,
        reverse=reverse,
        frank_wolfe_iterations=fw_iterations,
        data_dir=data_dir,
        device=device,
        progress=False,
        log=None if quiet else click.echo,
        command=" ".join(
            ["asymcert capacity", task, "--out", str(out)]
            + [
                f"--{k.replace('_', '-')} {v}"
                for k, v in (("recipes", recipes), ("limit", limit), ("epochs", epochs), ("data_dir", data_dir))
                if v is not None
            ]
            + (["--reverse"] if reverse else [])
            + ([f"--seed {seed}"] if seed else [])
            + ([f"--fw-iterations {fw_iterations}"] if fw_iterations != 100 else [])
        ),
    )
    sep = rep.separability
    click.echo(
        f"separability bound {100 * sep.bound:.2f}% ({sep.outside}/{sep.checked} outside)"
        + "".join(f"; {r.recipe} {100 * r.train_accuracy:.2f}%" for r in rep.recipes)
        + f"; report: {Path(out) / 'capacity.md'}"
    )


@main.command()
def tasks() -> None:
    """List the built-in tasks and their presets (`--preset NAME`)."""

    for name in task_names():
        task = get_task(name)
        presets = f" (presets: {', '.join(sorted(task.presets))})" if task.presets else ""
        click.echo(f"{name:24s} {task.description}{presets}")
    tables = ", ".join(TABULAR_PRESETS)
    click.echo(f"{'your own data':24s} --csv, --data or --images (presets: fast; tables also {tables})")


@main.command(name="export")
@click.argument("run_dir", type=click.Path(exists=True, file_okay=False))
@click.option("--format", "fmt", type=click.Choice(["onnx", "vnnlib"]), default="onnx", show_default=True)
@click.option("--out", type=click.Path(), required=True, help="The .onnx file (onnx) or a folder (vnnlib).")
@click.option("--no-certificates", is_flag=True, help="ONNX: the score graph only (outputs score, flagged).")
@click.option("--norms", help="ONNX: radii to compute in the graph, e.g. 1,2,inf (default: 1, 2, inf).")
@click.option("--limit", type=_POSITIVE, help="VNN-LIB: write at most N properties.")
@click.option("--timeout", type=_POSITIVE, help="VNN-LIB: seconds per instance (default: 300).")
@click.option("--data-dir", type=click.Path(file_okay=False))
@_threat_options
def export_cmd(
    run_dir: str,
    fmt: str,
    out: str,
    no_certificates: bool,
    norms: str | None,
    limit: int | None,
    timeout: int | None,
    data_dir: str | None,
    threat_model: str | None,
    no_threat_model: bool,
) -> None:
    """Export RUN's model as one ONNX graph that certifies (score, flagged, radius_l1/l2/linf), or its
    certified test inputs as VNN-LIB properties (ℓ∞ boxes) for any verifier to re-check.

    Needs the export extra: pip install 'asymcert[export]'. Randomized smoothing is refused."""

    _export_options_apply(
        fmt, norms=norms, no_certificates=no_certificates, limit=limit, timeout=timeout, data_dir=data_dir
    )
    chosen = _norms(norms) if norms is not None else DEFAULT_NORMS
    tm = _threat(threat_model, no_threat_model)
    wait = DEFAULT_TIMEOUT if timeout is None else timeout
    click.echo(export_run(run_dir, fmt, out, not no_certificates, chosen, limit, data_dir, wait, tm, no_threat_model))


def _export_options_apply(fmt: str, **given: Any) -> None:
    """Refuse (one line) an option given for the other export format: ``--norms``/``--no-certificates`` are
    the ONNX graph's (VNN-LIB properties are ℓ∞ boxes), ``--limit``/``--timeout``/``--data-dir`` the VNN-LIB
    folder's (the graph reads no data: the folder was ignored without a word)."""
    other = {"vnnlib": ("norms", "no_certificates"), "onnx": ("limit", "timeout", "data_dir")}[fmt]
    wrong = [f"--{name.replace('_', '-')}" for name in other if given[name] not in (None, False)]
    if wrong:
        raise click.UsageError(
            f"{' and '.join(wrong)} {'does' if len(wrong) == 1 else 'do'} not apply to --format {fmt}"
        )


def _echo_summary(results: RunResults | None, out: str, units: bool = True) -> None:
    """The report's numbers on stdout, first (``units``) the line "radii in …" of the results' units, as ``certify``
    says it on its first line (audit units30 F3: ``run`` and ``report`` printed radii without a unit)."""
    if results is None:  # not the writing process under torchrun
        return
    summary = results.summary
    if units:
        click.echo(f"radii in {summary.units}")
    click.echo(
        f"clean accuracy {100 * summary.clean_accuracy:.2f}%, "
        f"{1000 * summary.certify_seconds_per_input:.3f} ms per certificate"
    )
    for name, norm in summary.norms.items():
        table = norm.table()
        cells = [f"{radius_header(r) if r == 'inf' else f'r={r}'}: {100 * a:.1f}%" for r, a in table.items()]
        click.echo(f"  {name}: " + (", ".join(cells) or "no test input is certified at any radius > 0"))
    click.echo(f"report: {Path(out) / 'report.md'}")


def entry() -> None:
    """The ``asymcert`` command and ``python -m asymcert``: :func:`main`, after which, under ``torchrun``, a rank
    other than 0 (it writes no files) flushes its output and leaves with ``os._exit``, keeping its exit code:
    in the interpreter's teardown gloo's threads, still connected to rank 0, could abort it ("terminate called
    without an active exception", exit −6), and torchrun would then kill rank 0, which may still be writing.
    Rank 0 leaves so too when its command was refused (it wrote nothing; it aborted so in 5 of 27 busy refusals
    under load, and torchrun named the abort as the failure's cause: review s34 dist F2).

    Once the command has finished (its results committed, its exit code decided), a Ctrl-C in the interpreter's
    teardown is ignored: it landed in an exit handler of torch's and printed a traceback, after exit code 0
    (session 33 traffic review). The exit handler that ignores it is registered last, so it runs first; a caller
    that runs :func:`entry` in its own process keeps its handler until its own exit."""
    try:
        main()
    except SystemExit as done:
        if threading.current_thread() is threading.main_thread():
            atexit.register(signal.signal, signal.SIGINT, signal.SIG_IGN)
        code = done.code if isinstance(done.code, int) else (0 if done.code is None else 1)
        if distributed.rank() == 0 and (code == 0 or not distributed.is_distributed()):
            raise
        sys.stdout.flush()
        sys.stderr.flush()
        os._exit(code)


if __name__ == "__main__":  # pragma: no cover
    entry()
