"""The pipeline: task → model → train → certify → save (→ report), each step reading and writing a run folder.

``run``, ``compare`` and both sweeps go through :func:`run_pipeline` (``capacity`` trains in memory
with :func:`asymcert.train.fit` and writes no run folder). The report is a callback
(:data:`Reporter`, e.g. :func:`asymcert.report.writer.write_report`): reports read run folders,
the pipeline never imports them; what they return is typed below both
(:class:`~asymcert.certify.summary.RunResults`).

Run folder layout (a stable contract):
    run.json                   task spec, model config, training settings, training summary
    model.safetensors          best-validation model (weights + config), ``asymcert.load(DIR)``
    train_state.pt, history.json   resumable training state (tensors only) and per-epoch log
    certificates.safetensors   per test input: label, decision, score, radius per norm
    certify.json               how they were certified (closed form or reach-aware, which threat model)
    results.json, report.md, certified_<norm>.png   the report
    .asymcert.lock             the writer lock (see :mod:`asymcert.runfolder`)

Every command checks all it can (task, settings, device, model config, the folder's existing run)
before its first write, so a refused command changes nothing on disk; a folder has one writer at a
time; every JSON file is strict JSON.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from asymcert import distributed
from asymcert.certify import certify
from asymcert.certify.api import OUTSIDE, outside_warning
from asymcert.certify.certfile import load_certificates, save_certificates
from asymcert.certify.result import Certificate, norm_label, raw_units
from asymcert.certify.summary import RunResults
from asymcert.checkpoint import MODEL_FILE, load, model_config
from asymcert.data import user
from asymcert.data.download import sha256_file
from asymcert.data.pairs import pair_task
from asymcert.data.tasks import Task, TaskData, get_task
from asymcert.errors import AsymcertError, CheckpointError, ConfigError, RunFolderConflictError, UnknownNameError
from asymcert.families import TaskFacts, get_family
from asymcert.files import read_regular_text
from asymcert.jsontext import JsonTextError, parse_json
from asymcert.models import build_model
from asymcert.runfolder import (
    CERT_FILE,
    CERTIFY_FILE,
    RUN_FILE,
    CertificateMode,
    RunRecord,
    certificate_mode,
    certificate_outputs,
    dumps_strict,
    exclusive,
    read_run_record,
    remove_model_outputs,
    remove_stale_temp_files,
    run_threat_model,
    strict_jsonable,
    warn_if_unfinished,
    write_json,
)
from asymcert.text import first_few
from asymcert.threat import ResolvedThreatModel, ThreatModel
from asymcert.train import TrainConfig
from asymcert.train.config import check_model_overrides, operating_point
from asymcert.train.loop import (
    check_config,
    check_operating_point,
    false_positive_budget,
    prepare_fit,
    resolve_device,
    train_fingerprint,
)
from asymcert.train.recipes import recipe_for

__all__ = [
    "CERTIFY_FILE",
    "CERT_FILE",
    "DEFAULT_NORMS",
    "RUN_FILE",
    "CertificateMode",
    "CertifySettings",
    "PipelineResult",
    "Reporter",
    "certify_run",
    "load_certificates",
    "read_certificate_mode",
    "read_run",
    "run_data",
    "run_pipeline",
    "run_task",
    "save_certificates",
    "train_run",
]

DEFAULT_NORMS = (1.0, 2.0, math.inf)
_USER_DATA_KEYS = ("npz", "csv", "images")


def resolve_task(spec: dict[str, Any]) -> Task:
    """The task a run spec names: ``{"name": ...}`` (registry), ``{"name": ..., "pair": [a, b]}`` (class a vs
    class b of a multi-class task, :func:`~asymcert.data.pairs.pair_task`) or user data
    ``{"npz"|"csv"|"images": path, ...}``."""
    if not isinstance(spec, dict):
        raise ConfigError(f"a task spec is an object, not {type(spec).__name__}")
    if "name" in spec and "pair" in spec:
        pair = spec["pair"]
        if not isinstance(pair, list) or len(pair) != 2:
            raise ConfigError(f"a class pair is [sensitive, other], got {pair!r}")
        return pair_task(get_task(spec["name"]), pair[0], pair[1])
    if "name" in spec:
        return get_task(spec["name"])
    if any(k in spec for k in _USER_DATA_KEYS) and "sensitive_class" not in spec:
        raise ConfigError("a task of your own data needs its sensitive class (--sensitive-class)")
    if "npz" in spec:
        return user.task_from_npz(spec["npz"], spec["sensitive_class"], spec.get("other_class"))
    if "csv" in spec:
        if "label_column" not in spec:
            raise ConfigError("a CSV task needs its label column (--label-column)")
        ignore = spec.get("ignore_columns", [])
        if not isinstance(ignore, list) or not all(isinstance(c, str) for c in ignore):
            raise ConfigError(f"ignore_columns is a list of CSV column names, got {ignore!r}")
        return user.task_from_csv(
            spec["csv"], spec["label_column"], spec["sensitive_class"], spec.get("other_class"), ignore_columns=ignore
        )
    if "images" in spec:
        return user.task_from_image_folder(spec["images"], spec["sensitive_class"], spec.get("other_class"))
    raise ConfigError(f"run spec names no task (no 'name', 'npz', 'csv' or 'images'): {spec}")


def preset_overrides(task: Task, preset: str | None) -> dict[str, Any]:
    """The ``{"model": ..., "train": ...}`` overrides of a named preset of ``task`` ({} for None)."""
    if preset is not None and preset in task.withheld_presets:
        raise ConfigError(f"task {task.name!r} does not offer preset {preset!r}: {task.withheld_presets[preset]}")
    if preset is not None and preset not in task.presets:
        raise UnknownNameError(
            f"task {task.name!r} has no preset {preset!r}; presets: {sorted(task.presets) or 'none'}"
        )
    return task.presets.get(preset, {}) if preset else {}


def _merge(base: dict[str, Any], *overrides: dict[str, Any] | None) -> dict[str, Any]:
    """Deep-merge config dicts; a dict naming another ``kind`` replaces the old one instead of merging."""
    out = dict(base)
    for o in overrides:
        for k, v in (o or {}).items():
            nested = isinstance(v, dict) and isinstance(out.get(k), dict)
            same_kind = nested and v.get("kind", out[k].get("kind")) == out[k].get("kind")
            out[k] = _merge(out[k], v) if nested and same_kind else v
    return out


def read_run(run_dir: str | Path) -> RunRecord:
    """The ``run.json`` of a run folder, checked and typed (:func:`~asymcert.runfolder.read_run_record`;
    :meth:`~asymcert.runfolder.RunRecord.to_dict` is its JSON).

    Raises:
        CheckpointError: no run folder, or a run.json that is not JSON or lacks/mistypes a key.
    """
    return read_run_record(run_dir)


def run_data(run_dir: str | Path, data_dir: str | Path | None = None) -> TaskData:
    """Reload the data of a run folder's task (same splits).

    Raises:
        ConfigError: ``data_dir`` for a run of the user's own data, which is read from its file (the folder would
            be ignored, silently before).
    """
    run = read_run_record(run_dir)
    if data_dir is not None and "name" not in run.task:
        own = next((str(run.task[k]) for k in ("csv", "npz", "images") if k in run.task), "its own file")
        raise ConfigError(f"--data-dir is where a built-in task's data lives; this run reads its own data ({own})")
    task = resolve_task(run.task)
    return task.load(Path(data_dir) if data_dir else (Path(run.data_dir) if run.data_dir else None))


@dataclass
class TrainingPlan:
    """A checked training run, not started: the task, its data, the built model and the settings.

    Built by :func:`plan_training` without touching the run folder.
    """

    task_spec: dict[str, Any]
    task: Task
    data: TaskData
    model: torch.nn.Module
    config: TrainConfig
    record: RunRecord


def _model_and_train_configs(
    task: Task,
    data: TaskData,
    preset: str | None,
    train_overrides: dict[str, Any] | None,
    model_overrides: dict[str, Any] | None,
) -> tuple[dict[str, Any], TrainConfig]:
    """The model config and training settings: task defaults, then the preset, then the overrides."""
    pre = preset_overrides(task, preset)
    for what, value in (("training settings", train_overrides), ("model settings", model_overrides)):
        if value is not None and not isinstance(value, dict):
            raise ConfigError(f"{what} must be a KEY=VALUE mapping, not {type(value).__name__}")
    kind = (model_overrides or {}).get("kind", task.model.get("kind"))
    family, facts = get_family(str(kind)), task_facts(task, data)
    if kind == task.model.get("kind"):
        model_cfg = _merge(task.model, pre.get("model"), model_overrides)
        train_base = _merge(task.train, pre.get("train"))
    else:  # another family than the task's default: that family's own model and training defaults
        model_cfg = _merge(family.default_model_config(), model_overrides)
        train_base = _merge(
            family.train_defaults(facts), {k: v for k, v in pre.get("train", {}).items() if k == "epochs"}
        )
    model_cfg.update(family.model_settings(facts))
    model_cfg["input_shape"] = list(data.input_shape)
    model_cfg.setdefault("input_range", task_input_range(data))
    return model_cfg, TrainConfig.from_dict(_merge(train_base, train_overrides))


def plan_training(
    task_spec: dict[str, Any],
    preset: str | None = None,
    train_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    data: TaskData | None = None,
    threat_model: ThreatModel | None = None,
    plain: bool = False,
) -> TrainingPlan:
    """Check everything a training run needs (task, preset, data, settings, device, model) and build the model.

    ``threat_model`` (default: the task's own, if any; none with ``plain=True``) is checked against the
    data's feature names and stored in the run record; the run's certificates and reports use it.
    Writes nothing. Raises the :class:`~asymcert.errors.AsymcertError` of the first problem found.
    """
    task = resolve_task(task_spec)
    preset_overrides(task, preset)  # an unknown preset fails before the data is loaded
    data = data or task.load(Path(data_dir) if data_dir else None)
    model_cfg, train_cfg = _model_and_train_configs(task, data, preset, train_overrides, model_overrides)
    model_cfg = _monotone_by_name(model_cfg, _feature_names(data))
    try:
        torch.manual_seed(train_cfg.seed)
        model = build_model(model_cfg)
    except AsymcertError:
        raise
    except (TypeError, ValueError, KeyError, RuntimeError) as exc:
        raise ConfigError(f"model config {model_cfg.get('kind', '?')!r} cannot be built: {exc}") from None
    check_model_overrides(model_overrides, model_config(model))  # a setting the model ignored is refused
    check_config(model, train_cfg)
    check_operating_point(data, train_cfg)
    record = RunRecord(
        task=task_spec,
        model=model_config(model),
        train=train_cfg.to_dict(),
        task_description=task.description,
        preset=preset,
        data_dir=str(data_dir) if data_dir else None,
        class_names=list(data.class_names),
        binary=task.binary,
        report_radii={norm_label(p): list(r) for p, r in task.report_radii.items()},
        splits={"train": len(data.train), "val": len(data.val), "test": len(data.test)},
        feature_names=_feature_names(data),
    )
    tm = None if plain else threat_model or task.threat_model
    _check_ignored_not_named(task_spec, tm)
    flags = binary_features(data, record.feature_names)
    if flags:  # the report says what a radius means for them
        record.extra["binary_features"] = flags
    if tm is not None and tm.uses_data_scales():  # "std" scales: fixed now, from the training inputs
        tm = tm.with_data_scales(data.train.x.reshape(len(data.train), -1).double().std(dim=0), record.feature_names)
    _attach_threat_model(record, task, tm)
    return TrainingPlan(task_spec, task, data, model, train_cfg, record)


def _check_ignored_not_named(task_spec: dict[str, Any], tm: ThreatModel | None) -> None:
    """Refuse a threat model that names a CSV column the task ignores (``ignore_columns``): the name would
    find no feature, or, a name of digits, the feature at that index (another column).

    Raises:
        ConfigError: naming the columns.
    """
    clash = sorted(set(task_spec.get("ignore_columns") or []) & (tm.named() if tm is not None else set()))
    if clash:
        raise ConfigError(
            f"the threat model names column(s) {', '.join(map(repr, clash))}, which --ignore-column drops: "
            "a dropped column is no feature to constrain"
        )


def binary_features(data: TaskData, names: list[str] | None) -> list[str]:
    """The features whose training values are all 0 or 1, both present: flags, which move in steps of 1. Named
    by column, or for flat unnamed inputs (an npz of feature vectors) by flat index, as a threat model names
    them ("3"); inputs of more dimensions (images) have none."""
    if not names and data.train.x.dim() != 2:
        return []
    x = data.train.x.reshape(len(data.train), -1)
    names = names or [str(i) for i in range(x.shape[1])]
    zero, one = x == 0, x == 1
    flags = (zero | one).all(dim=0) & zero.any(dim=0) & one.any(dim=0)
    return [names[i] for i in flags.nonzero().flatten().tolist()]


def _attach_threat_model(record: RunRecord, task: Task, tm: ThreatModel | None) -> None:
    """Resolve ``tm`` against the run's features (raising its ConfigError now, before any write) and store it
    with its report radii: the task's own for the task's threat model, else none (the report picks them)."""
    if tm is None:
        return
    n_features = math.prod(record.model.get("input_shape") or [0])
    tm.resolve(record.feature_names, n_features)
    record.threat_model = tm.to_dict()
    own = task.threat_model is not None and tm.to_dict() == task.threat_model.to_dict()
    radii = task.threat_report_radii if own else {}
    record.report_radii = {norm_label(p): list(r) for p, r in radii.items()}


def _monotone_by_name(model_cfg: dict[str, Any], names: list[str] | None) -> dict[str, Any]:
    """``model_cfg`` with the CSV column names in its ``monotone`` lists replaced by their indices.

    Raises:
        ConfigError: a name that is no column (listing the columns), or names for data without named columns.
    """
    monotone = model_cfg.get("monotone")
    if not isinstance(monotone, dict):
        return model_cfg
    index = {n: i for i, n in enumerate(names or [])}
    if not names:  # unnamed inputs (npz, images): flat indices, as text too, as a threat model names them
        index = {v: int(v) for vs in monotone.values() if isinstance(vs, list) for v in vs if _is_index_text(v)}
    unknown = [
        v
        for values in monotone.values()
        if isinstance(values, list)
        for v in values
        if isinstance(v, str) and v not in index
    ]
    if unknown:
        columns = first_few(names, 10) if names else None
        where = (
            f"the data's named columns: {columns}"
            if columns
            else 'data without named columns takes flat indices (3 or "3")'
        )
        raise ConfigError(f"monotone: unknown feature(s) {unknown}; {where}")
    fixed = {
        k: [index[v] if isinstance(v, str) else v for v in vs] if isinstance(vs, list) else vs
        for k, vs in monotone.items()
    }
    return {**model_cfg, "monotone": fixed}


def _is_index_text(value: Any) -> bool:
    """A flat index written as text ("3"), as threat models name the features of unnamed inputs."""
    return isinstance(value, str) and value.isascii() and value.isdigit()


def _feature_names(data: TaskData) -> list[str] | None:
    """The input columns of tabular data read from a CSV, by name (None for other data)."""
    names = data.meta.get("feature_names")
    return [str(n) for n in names] if isinstance(names, list) else None


def check_not_foreign(out: Path) -> None:
    """Refuse an ``out`` folder that holds files but no run (RunFolderConflictError): a folder of the user's own,
    among whose files a run would be written. Names starting with "." (a lock, temporary files) do not count."""
    if not out.is_dir() or (out / RUN_FILE).is_file():
        return
    theirs = sorted(p.name for p in out.iterdir() if not p.name.startswith("."))
    if theirs:
        raise RunFolderConflictError(
            f"{out} holds files but no run ({first_few(theirs, 3)}); train into a new or empty --out folder"
        )


def check_run_folder(out: Path, plan: TrainingPlan) -> RunRecord | None:
    """Refuse a run folder that holds a run of another task, model or settings (reads only).

    Returns:
        The folder's existing run record (None in a new folder).

    Raises:
        RunFolderConflictError: ``out/run.json`` describes another run, or ``out`` holds files but no run (a
            folder of the user's own: a run would be written among them).
        CheckpointError: ``out/run.json`` exists but is not a readable run record.
    """
    if not (out / RUN_FILE).is_file():
        check_not_foreign(out)
        return None
    try:
        old = read_run_record(out)
    except CheckpointError as exc:
        raise CheckpointError(f"{exc}; train into a new --out folder") from None
    new = RunRecord.from_dict(strict_jsonable(plan.record.to_dict()))  # as run.json will hold it
    differs = [
        name
        for name, same in (
            ("another task", strict_jsonable(old.task) == new.task),
            ("another model", train_fingerprint({}, strict_jsonable(old.model)) == train_fingerprint({}, new.model)),
            (
                f"other training settings ({_changes(strict_jsonable(old.train), new.train)})",
                train_fingerprint(strict_jsonable(old.train), {}) == train_fingerprint(new.train, {}),
            ),
            ("another threat model", strict_jsonable(old.threat_model) == new.threat_model),
            ("other feature columns", old.feature_names == new.feature_names),  # (a CSV's header renamed)
        )
        if not same
    ]
    if differs:
        raise RunFolderConflictError(
            f"{out} holds a run with {', '.join(differs)}; a run goes on only with the settings it started with: "
            f"use a new --out folder (or delete {out} to start over)"
        )
    return old


def _changes(old: dict[str, Any], new: dict[str, Any]) -> str:
    """The keys whose values differ, ``key: old → new``, at most 4 shown."""
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    shown = [f"{k}: {dumps_strict(old.get(k))} → {dumps_strict(new.get(k))}" for k in keys[:4]]
    return "; ".join(shown) + (f"; … {len(keys)} in all" if len(keys) > 4 else "")


def execute_training(
    plan: TrainingPlan, out_dir: str | Path, progress: bool = True, log: Callable[[str], None] | None = None
) -> RunRecord:
    """Run a checked plan into ``out_dir`` under the folder's writer lock (resuming an interrupted run there).

    Everything that can refuse (lock, the folder's existing run, the resume state) is checked before
    the first write. Returns the run record as run.json holds it (strict JSON: a non-finite number is None
    there); with ``false_positive_rate`` its training summary holds the
    :class:`~asymcert.train.balance.FalsePositiveBudget` (``"false_positive_budget"``) the report notes when small.
    """
    check_not_foreign(Path(out_dir))  # before the lock file is made in it
    with exclusive(out_dir, create=True) as out:
        old = check_run_folder(out, plan)
        recipe = recipe_for(plan.model, plan.config)
        use_threat_model = getattr(recipe, "use_threat_model", None)  # recipes with a margin loss take one
        if use_threat_model is not None:
            use_threat_model(run_threat_model(plan.record))
        names = {"feature_names": plan.record.feature_names} if plan.record.feature_names else {}
        session = prepare_fit(  # (the model file keeps the columns it reads: run.json's are checked against them)
            plan.model, plan.data, plan.config, out, plan.task.augment, recipe, progress=progress, log=log, meta=names
        )
        record = plan.record
        record.extra = {**(old.extra if old else {}), **record.extra}  # keys of newer versions are kept
        if distributed.is_main():
            remove_stale_temp_files(out)
            write_json(out / RUN_FILE, record.to_dict())
            if session.start_epoch < plan.config.epochs:  # the model will change: what was computed from it goes
                remove_model_outputs(out)
        result = session.run()
        record.training = {
            "seconds": result.seconds,
            "best": result.best,
            "epochs": len(result.history),
            "processes": distributed.world_size(),
        }
        budget = false_positive_budget(plan.data, plan.config)
        if budget is not None:  # the report notes a small one (FalsePositiveBudget.small)
            record.training["false_positive_budget"] = budget.to_dict()
        if distributed.is_main():
            write_json(out / RUN_FILE, record.to_dict())
        distributed.barrier()
    return RunRecord.from_dict(strict_jsonable(record.to_dict()))


def train_run(
    task_spec: dict[str, Any],
    out_dir: str | Path,
    preset: str | None = None,
    train_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    data_dir: str | Path | None = None,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    data: TaskData | None = None,
    threat_model: ThreatModel | None = None,
    plain: bool = False,
) -> RunRecord:
    """Train the task's model into ``out_dir`` (resuming an interrupted run there). Returns its run record, as
    run.json holds it.

    ``threat_model``/``plain``: as :func:`plan_training`. A refused run (bad task, preset, settings, device
    or model config or threat model; a folder holding another run or being written by another process; a
    corrupt or tampered ``train_state.pt``) changes nothing on disk.
    """
    plan = plan_training(task_spec, preset, train_overrides, model_overrides, data_dir, data, threat_model, plain)
    return execute_training(plan, out_dir, progress, log)


def task_facts(task: Task, data: TaskData) -> TaskFacts:
    """What a model family may derive its settings from (see :class:`~asymcert.families.TaskFacts`)."""
    return TaskFacts(
        binary=task.binary, num_classes=data.num_classes, report_radii=dict(task.report_radii), train=dict(task.train)
    )


def task_input_range(data: TaskData) -> list[float] | None:
    """(0, 1) for pixel data already in that range, else None (tabular data: any real value)."""
    x = data.train.x
    if x.dim() >= 3 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
        return [0.0, 1.0]
    return None


@dataclass(frozen=True)
class CertifySettings:
    """How the pipeline certifies a run's test split.

    Attributes:
        norms: ℓp norms (p ≥ 1, ``math.inf`` for ℓ∞).
        limit: certify the first ``limit`` test inputs (None: all).
        batch_size: inputs per certifier call (memory: that many inputs at once, plus the (N,) results).
        method: certifier name (None: the model's own, ``model.certifier``).
        options: certifier options by name (checked against the certifier's options dataclass).
        warmup: inputs certified once, untimed, before the timed pass (kernel loading, first-call allocations).
        threat_model: certify under this threat model instead of the run's own (:func:`run_threat_model`).
        plain: certify plain ℓp balls in raw input units even when the run has a threat model.
        threat_model_file: the file ``threat_model`` was read from (``--threat-model FILE``), named by the
            report (:data:`CERTIFY_FILE`); None: not read from a file, or not known.
    """

    norms: tuple[float, ...] = DEFAULT_NORMS
    limit: int | None = None
    batch_size: int = 1000
    method: str | None = None
    options: Mapping[str, Any] = field(default_factory=dict)
    warmup: int = 0
    threat_model: ThreatModel | None = None
    plain: bool = False
    threat_model_file: str | None = None

    def check(self) -> None:
        """Raise :class:`~asymcert.errors.ConfigError` for a ``limit``, ``batch_size`` or ``warmup`` out of range
        (``limit`` 0 or negative would certify nothing or all but the last)."""
        limit, batch = self.limit, self.batch_size
        if limit is not None and (isinstance(limit, bool) or not isinstance(limit, int) or limit < 1):
            raise ConfigError(f"limit must be a positive number of test inputs, got {limit!r}")
        if isinstance(batch, bool) or not isinstance(batch, int) or batch < 1:
            raise ConfigError(f"batch size must be a positive number of inputs, got {batch!r}")
        if isinstance(self.warmup, bool) or not isinstance(self.warmup, int) or self.warmup < 0:
            raise ConfigError(f"warmup must be a number of inputs ≥ 0, got {self.warmup!r}")


def read_certificate_mode(run_dir: str | Path) -> CertificateMode | None:
    """How the run folder's certificates were computed (:data:`CERTIFY_FILE`); None when not recorded: no such
    file, a damaged one, or one written for other certificates than those now in the folder."""
    run_dir = Path(run_dir)
    try:
        mode = CertificateMode.from_dict(parse_json(read_regular_text(run_dir / CERTIFY_FILE)))
        matches = mode is not None and mode.certificates_sha256 == sha256_file(run_dir / CERT_FILE)
    except (OSError, UnicodeDecodeError, JsonTextError):
        return None
    return mode if matches else None


def check_certify_args(limit: int | None, batch_size: int) -> None:
    """``limit`` (None or ≥ 1 inputs) and ``batch_size`` (≥ 1 inputs) of :func:`certify_run`.

    Raises:
        ConfigError: a value out of range.
    """
    CertifySettings(limit=limit, batch_size=batch_size).check()


def _certify_shard(
    model: torch.nn.Module,
    x: torch.Tensor,
    settings: CertifySettings,
    progress: bool,
    tm: ResolvedThreatModel | None = None,
) -> Certificate:
    """Certify this process's contiguous shard of ``x`` (N, ...) in chunks of ``settings.batch_size`` (under
    ``tm`` when given); gather under torchrun."""
    # Under torchrun every process certifies one contiguous shard; nothing is padded or repeated.
    shard = x.tensor_split(distributed.world_size())[distributed.rank()]
    norms, step, opts = settings.norms, settings.batch_size, {**settings.options, "threat_model": tm}
    outside = outside_warning(tm, x, lambda i: f"test input {i}, counted from 0") if distributed.is_main() else None
    if outside is not None:  # once for the split, not once per chunk and process (review 30)
        warnings.warn(outside, UserWarning, stacklevel=3)
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message=f".*{OUTSIDE}")
        if settings.warmup:  # untimed, so that one-time costs do not count as certification time
            certify(model, shard[: settings.warmup], norms=norms, method=settings.method, **opts)
        shown = progress and distributed.is_main()
        bar = tqdm(range(0, len(shard), step), desc="certify", disable=not shown, leave=False)
        parts = [certify(model, shard[i : i + step], norms=norms, method=settings.method, **opts) for i in bar]
        # a process whose shard is empty (fewer inputs than processes) still contributes its (0,) columns
        cert = Certificate.cat(parts) if parts else certify(model, shard, norms=norms, method=settings.method, **opts)
    if distributed.is_distributed():
        cert = Certificate(
            distributed.gather_rows(cert.predicted),
            {p: distributed.gather_rows(r) for p, r in cert.radii.items()},
            cert.method,
            cert.guarantee,
            cert.alpha,
            None if cert.abstained is None else distributed.gather_rows(cert.abstained),
            cert.seconds,
            cert.binary,
            {k: distributed.gather_rows(v) for k, v in cert.extra.items()},
            cert.units,
        )
        # wall clock of rank 0's shard (the shards run at the same time)
        cert.seconds = distributed.broadcast_float(cert.seconds)
    return cert


def certify_run(
    run_dir: str | Path,
    norms: Sequence[float] = DEFAULT_NORMS,
    limit: int | None = None,
    batch_size: int = 1000,
    device: str = "cpu",
    data_dir: str | Path | None = None,
    data: TaskData | None = None,
    progress: bool = True,
    settings: CertifySettings | None = None,
    replacing: Callable[[], None] | None = None,
) -> Certificate:
    """Certify the run's test split (the first ``limit`` inputs) and write ``certificates.safetensors``.

    ``settings`` (method, options, warm-up) replaces ``norms``, ``limit`` and ``batch_size`` when given.
    ``replacing()`` is called right before the folder's earlier certificates, their mode and report are removed
    (from then on, a stopped command leaves the report missing).
    Memory: at most ``batch_size`` inputs are certified at once (plus the (N,) results).

    Raises:
        ConfigError: ``limit`` or ``batch_size`` below 1, an unknown device.
        CheckpointError: no run folder, a malformed run.json, a missing or corrupted model.
        RunFolderBusyError: another process is writing the folder.
    """
    settings = settings or CertifySettings(norms=tuple(norms), limit=limit, batch_size=batch_size)
    settings.check()
    target = resolve_device(device)
    run_dir = Path(run_dir)
    record = read_run_record(run_dir)  # a clear error when this is no run folder
    operating_point(record.train)  # the report written after the certificates reads it: refused before them
    tm = run_threat_model(record, settings.threat_model, settings.plain)
    with exclusive(run_dir):
        warn_if_unfinished(record, run_dir)  # (a busy folder is refused above, without this warning)
        model = load(run_dir, device=target)
        data = data or run_data(run_dir, data_dir)
        x, y = data.test.x[: settings.limit], data.test.y[: settings.limit]
        if len(x) == 0:
            raise ConfigError(f"{run_dir}: the task's test split is empty; nothing to certify")
        cert = _certify_shard(model, x, settings, progress, tm)
        if tm is None:  # an image folder's pixels were divided by 255: its raw units say so (audit units30 F6)
            cert = replace(cert, units=raw_units(record.task))
        if distributed.is_main():
            remove_stale_temp_files(run_dir)
            if replacing is not None:
                replacing()
            for path in certificate_outputs(run_dir):  # they describe the certificates replaced here: a failed
                path.unlink(missing_ok=True)  # write below leaves them missing, not wrong
            save_certificates(run_dir / CERT_FILE, cert, y)
            _write_certificate_mode(run_dir, record, tm, settings)
        distributed.barrier()
    return cert


def _write_certificate_mode(
    run_dir: Path, record: RunRecord, tm: ResolvedThreatModel | None, settings: CertifySettings
) -> None:
    """Write :data:`CERTIFY_FILE` for the certificates just written: their mode, tied to them by their hash."""
    reach = bool(settings.options.get("reach", False))
    file = settings.threat_model_file if settings.threat_model is not None else None
    mode = certificate_mode(record.threat_model, tm, reach, file)
    mode = CertificateMode(**{**mode.to_dict(), "certificates_sha256": sha256_file(run_dir / CERT_FILE)})
    write_json(run_dir / CERTIFY_FILE, mode.to_dict())


Reporter = Callable[[Path], RunResults | None]
"""``report(run_dir) -> results``: writes a run folder's report (e.g. :func:`asymcert.report.writer.write_report`)
and returns its numbers (None: none, e.g. on a process that writes nothing, or a report that failed and said so)."""


@dataclass
class PipelineResult:
    """What :func:`run_pipeline` did in one run folder.

    Attributes:
        run_dir: the run folder.
        record: the run record, as run.json holds it.
        certificate: the certificates of the first ``limit`` test inputs, one row each.
        labels: (N,) their labels.
        trained_now: False when a finished run in the folder was reused.
        train_wall_seconds: wall clock of the training step (reading the finished run when reused).
        report: what the reporter returned (None without one, and on the processes other than rank 0).
    """

    run_dir: Path
    record: RunRecord
    certificate: Certificate
    labels: torch.Tensor
    trained_now: bool
    train_wall_seconds: float
    report: RunResults | None = None


def run_finished(run_dir: Path) -> bool:
    """True when ``run_dir`` holds a finished training run (a model and a run.json with its training summary)."""
    if not (run_dir / MODEL_FILE).is_file() or not (run_dir / RUN_FILE).is_file():
        return False
    return read_run_record(run_dir).training is not None


def run_pipeline(
    plan: TrainingPlan,
    out_dir: str | Path,
    certify_settings: CertifySettings | None = None,
    *,
    progress: bool = True,
    log: Callable[[str], None] | None = None,
    reuse_finished: bool = False,
    report: Reporter | None = None,
) -> PipelineResult:
    """Train a checked plan, certify its test split, save, and report, in ``out_dir`` under its writer lock.

    Args:
        plan: from :func:`plan_training` (nothing was written yet).
        out_dir: the run folder (an interrupted run there resumes).
        certify_settings: how to certify (default :class:`CertifySettings`).
        progress, log: progress bars; a callback for progress messages.
        reuse_finished: load a finished run found in ``out_dir`` instead of training it again.
        report: writes the report from the folder (None: no report).
    """
    settings = certify_settings or CertifySettings()
    settings.check()
    check_not_foreign(Path(out_dir))  # before the lock file is made in it
    with exclusive(out_dir, create=True) as out:
        t0 = time.perf_counter()
        trained = not (reuse_finished and run_finished(out))
        record = execute_training(plan, out, progress, log) if trained else read_run(out)
        wall = time.perf_counter() - t0
        cert = certify_run(out, data=plan.data, progress=progress, settings=settings)
        results = report(out) if report is not None and distributed.is_main() else None
        distributed.barrier()
    return PipelineResult(out, record, cert, plan.data.test.y[: settings.limit], trained, wall, results)


def run_task(
    task_spec: dict[str, Any],
    out_dir: str | Path,
    preset: str | None = None,
    data_dir: str | Path | None = None,
    limit: int | None = None,
    progress: bool = True,
    train_overrides: dict[str, Any] | None = None,
    model_overrides: dict[str, Any] | None = None,
    log: Callable[[str], None] | None = None,
    report: Reporter | None = None,
    threat_model: ThreatModel | None = None,
    plain: bool = False,
) -> RunResults | None:
    """Train, certify and report in one go, holding the folder's lock throughout. Returns the report's results
    (None without a ``report``, and on the processes other than rank 0).

    Under a threat model (``threat_model``, else the task's own unless ``plain``) the run certifies the
    threat model's norms (default 1, 2, ∞) in its units. Everything (the task and settings, the threat model,
    the certification arguments) is checked before training starts.
    """
    CertifySettings(limit=limit).check()
    plan = plan_training(task_spec, preset, train_overrides, model_overrides, data_dir, None, threat_model, plain)
    tm = run_threat_model(plan.record)
    settings = CertifySettings(limit=limit, norms=(tm.norms if tm is not None else ()) or DEFAULT_NORMS)
    return run_pipeline(plan, out_dir, settings, progress=progress, log=log, report=report).report
