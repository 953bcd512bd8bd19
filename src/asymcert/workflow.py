"""One-command runs: train → certify → report, each step reading and writing a run folder.

Run folder layout (a stable contract):
    run.json                   task spec, model config, training settings, training summary
    model.safetensors          best-validation model (weights + config), ``asymcert.load(DIR)``
    train_state.pt, history.json   resumable training state (tensors only) and per-epoch log
    certificates.safetensors   per test input: label, decision, score, radius per norm
    results.json, report.md, certified_<norm>.png   the report
"""

from __future__ import annotations

import json
import math
import time
from pathlib import Path
from typing import Any, Callable

import torch
from safetensors.torch import load_file, save_file

from asymcert import distributed
from asymcert.certify import certify
from asymcert.certify.result import Certificate, norm_label, normalize_norm
from asymcert.checkpoint import atomic_write, load
from asymcert.data.tasks import Task, TaskData, get_task
from asymcert.errors import CheckpointError
from asymcert.models import build_model
from asymcert.train import TrainConfig, fit

RUN_FILE = "run.json"
CERT_FILE = "certificates.safetensors"
DEFAULT_NORMS = (1.0, 2.0, math.inf)


def resolve_task(spec: dict[str, Any]) -> Task:
    """The task a run spec names: ``{"name": ...}`` (registry) or user data ``{"npz"|"csv"|"images": path, ...}``."""
    if "name" in spec:
        return get_task(spec["name"])
    from asymcert.data import user  # user-data loaders
    if "npz" in spec:
        return user.task_from_npz(spec["npz"], spec["sensitive_class"], spec.get("other_class"))
    if "csv" in spec:
        return user.task_from_csv(spec["csv"], spec["label_column"], spec["sensitive_class"], spec.get("other_class"))
    if "images" in spec:
        return user.task_from_image_folder(spec["images"], spec["sensitive_class"], spec.get("other_class"))
    raise ValueError(f"run spec names no task: {spec}")


def preset_overrides(task: Task, preset: str | None) -> dict[str, Any]:
    """The ``{"model": ..., "train": ...}`` overrides of a named preset of ``task`` ({} for None)."""
    if preset is not None and preset not in task.presets:
        raise ValueError(f"task {task.name!r} has no preset {preset!r}; presets: {sorted(task.presets) or 'none'}")
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


def read_run(run_dir: str | Path) -> dict[str, Any]:
    """The ``run.json`` of a run folder."""
    path = Path(run_dir) / RUN_FILE
    if not path.is_file():
        raise CheckpointError(f"{run_dir} is not a run folder (no {RUN_FILE}); train one with `asymcert train`")
    return json.loads(path.read_text())


def run_data(run_dir: str | Path, data_dir: str | Path | None = None) -> TaskData:
    """Reload the data of a run folder's task (same splits)."""
    run = read_run(run_dir)
    task = resolve_task(run["task"])
    return task.load(Path(data_dir) if data_dir else (Path(run["data_dir"]) if run.get("data_dir") else None))


def train_run(task_spec: dict[str, Any], out_dir: str | Path, preset: str | None = None,
              train_overrides: dict[str, Any] | None = None, model_overrides: dict[str, Any] | None = None,
              data_dir: str | Path | None = None, progress: bool = True,
              log: Callable[[str], None] | None = None, data: TaskData | None = None) -> dict[str, Any]:
    """Train the task's model into ``out_dir`` (resuming an interrupted run there). Returns run.json's content."""
    task = resolve_task(task_spec)
    pre = preset_overrides(task, preset)
    out = Path(out_dir)
    out.mkdir(parents=True, exist_ok=True)
    data = data or task.load(Path(data_dir) if data_dir else None)
    kind = (model_overrides or {}).get("kind", task.model.get("kind"))
    if kind == task.model.get("kind"):
        model_cfg = _merge(task.model, pre.get("model"), model_overrides)
        train_base = _merge(task.train, pre.get("train"))
    else:  # another family than the task's default: that family's own model and training defaults
        model_cfg = dict(model_overrides or {})
        train_base = _merge(family_train_defaults(kind, task), {k: v for k, v in pre.get("train", {}).items()
                                                               if k == "epochs"})
    model_cfg.update(family_model_settings(kind, task, data))
    model_cfg["input_shape"] = list(data.input_shape)
    model_cfg.setdefault("input_range", task_input_range(data))
    train_cfg = TrainConfig.from_dict(_merge(train_base, train_overrides))
    torch.manual_seed(train_cfg.seed)
    model = build_model(model_cfg)
    run = {"task": task_spec, "task_description": task.description, "preset": preset,
           "data_dir": str(data_dir) if data_dir else None, "model": model.config(), "train": train_cfg.to_dict(),
           "class_names": list(data.class_names), "binary": task.binary,
           "report_radii": {norm_label(p): list(r) for p, r in task.report_radii.items()},
           "splits": {"train": len(data.train), "val": len(data.val), "test": len(data.test)}}
    if distributed.is_main():
        atomic_write(out / RUN_FILE, lambda tmp: tmp.write_text(json.dumps(run, indent=1)))
    result = fit(model, data, train_cfg, out, augment=task.augment, progress=progress, log=log)
    run["training"] = {"seconds": result["seconds"], "best": result["best"], "epochs": len(result["history"]),
                       "processes": distributed.world_size()}
    if distributed.is_main():
        atomic_write(out / RUN_FILE, lambda tmp: tmp.write_text(json.dumps(run, indent=1)))
    distributed.barrier()
    return run


def family_model_settings(kind: str, task: Task, data: TaskData) -> dict[str, Any]:
    """Model keys a family needs from the task (e.g. the number of classes of an ℓ∞-dist net)."""
    if kind == "linf-dist":
        from asymcert.models.linf_dist_net import task_model_settings
        return task_model_settings(task.binary, data.num_classes)
    if kind == "one-vs-rest-convex":
        from asymcert.models.one_vs_rest import task_model_settings as ovr_settings
        return ovr_settings(data.num_classes)
    return {}


def family_train_defaults(kind: str, task: Task) -> dict[str, Any]:
    """Training defaults of a model family used on a task whose default model is of another family."""
    if kind == "linf-dist":
        from asymcert.train.linf_recipe import LINF_TRAIN_DEFAULTS
        out = _merge(LINF_TRAIN_DEFAULTS)
        linf_radii = task.report_radii.get(math.inf)
        if task.binary and linf_radii:  # certify at the task's largest ℓ∞ report radius
            out["extra"] = {**out.get("extra", {}), "eps_eval": max(linf_radii), "eps_train": 2.5 * max(linf_radii)}
        return out
    if kind == "one-vs-rest-convex":
        from asymcert.train.one_vs_rest import ONE_VS_REST_TRAIN_DEFAULTS
        return dict(ONE_VS_REST_TRAIN_DEFAULTS)
    return dict(task.train)


def task_input_range(data: TaskData) -> list[float] | None:
    """(0, 1) for pixel data already in that range, else None (tabular data: any real value)."""
    x = data.train.x
    if x.dim() >= 3 and float(x.min()) >= 0.0 and float(x.max()) <= 1.0:
        return [0.0, 1.0]
    return None


def save_certificates(path: Path, cert: Certificate, labels: torch.Tensor) -> None:
    """Per-input certificates as safetensors (tensors only; method and timing in the metadata)."""
    tensors = {"label": labels.cpu().contiguous(), "predicted": cert.predicted.cpu().contiguous()}
    for p, r in cert.radii.items():
        tensors[f"radius_{norm_label(p)}"] = r.cpu().contiguous()
    for k, v in cert.extra.items():
        tensors[k] = v.detach().cpu().contiguous()
    if cert.abstained is not None:
        tensors["abstained"] = cert.abstained.cpu().contiguous()
    meta = {"method": cert.method, "deterministic": json.dumps(cert.deterministic),
            "alpha": json.dumps(cert.alpha), "seconds": repr(cert.seconds), "binary": json.dumps(cert.binary),
            "norms": json.dumps([norm_label(p) for p in cert.radii])}
    atomic_write(path, lambda tmp: save_file(tensors, str(tmp), metadata=meta))


def load_certificates(path: Path) -> tuple[Certificate, torch.Tensor]:
    """Inverse of :func:`save_certificates`: (certificate, labels)."""
    from safetensors import safe_open
    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    t = load_file(str(path))
    radii = {normalize_norm(n): t[f"radius_{n}"] for n in json.loads(meta["norms"])}
    extra = {k: v for k, v in t.items() if k not in ("label", "predicted", "abstained") and not k.startswith("radius_")}
    cert = Certificate(t["predicted"], radii, meta["method"], json.loads(meta["deterministic"]),
                       json.loads(meta["alpha"]), t.get("abstained"), float(meta["seconds"]),
                       json.loads(meta["binary"]), extra)
    return cert, t["label"]


def certify_run(run_dir: str | Path, norms=DEFAULT_NORMS, limit: int | None = None, batch_size: int = 1000,
                device: str = "cpu", data_dir: str | Path | None = None, data: TaskData | None = None,
                progress: bool = True) -> Certificate:
    """Certify the run's test split (the first ``limit`` inputs) and write ``certificates.safetensors``."""
    from tqdm.auto import tqdm

    from asymcert.train.loop import resolve_device

    run_dir = Path(run_dir)
    read_run(run_dir)  # a clear error when this is no run folder
    model = load(run_dir, device=resolve_device(device))
    data = data or run_data(run_dir, data_dir)
    x, y = data.test.x, data.test.y
    if limit is not None:
        x, y = x[:limit], y[:limit]
    # Under torchrun every process certifies one contiguous shard; nothing is padded or repeated.
    shard = x.tensor_split(distributed.world_size())[distributed.rank()]
    parts = []
    for start in tqdm(range(0, len(shard), batch_size), desc="certify",
                      disable=not (progress and distributed.is_main()), leave=False):
        parts.append(certify(model, shard[start:start + batch_size], norms=norms))
    cert = Certificate.cat(parts)
    if distributed.is_distributed():
        cert = Certificate(distributed.gather_rows(cert.predicted),
                           {p: distributed.gather_rows(r) for p, r in cert.radii.items()}, cert.method,
                           cert.deterministic, cert.alpha,
                           None if cert.abstained is None else distributed.gather_rows(cert.abstained),
                           cert.seconds, cert.binary, {k: distributed.gather_rows(v) for k, v in cert.extra.items()})
        # wall clock of rank 0's shard (the shards run at the same time)
        cert.seconds = distributed.broadcast_float(cert.seconds)
    if distributed.is_main():
        save_certificates(run_dir / CERT_FILE, cert, y)
    distributed.barrier()
    return cert


def run_task(task_spec: dict[str, Any], out_dir: str | Path, preset: str | None = None,
             data_dir: str | Path | None = None, limit: int | None = None, progress: bool = True,
             train_overrides: dict[str, Any] | None = None, model_overrides: dict[str, Any] | None = None,
             log: Callable[[str], None] | None = None) -> dict[str, Any]:
    """Train, certify and report in one go. Returns the report's results dict."""
    from asymcert.report.writer import write_report

    task = resolve_task(task_spec)
    data = task.load(Path(data_dir) if data_dir else None)
    train_run(task_spec, out_dir, preset, train_overrides, model_overrides, data_dir, progress, log, data=data)
    certify_run(out_dir, limit=limit, data=data, progress=progress)
    results = write_report(out_dir) if distributed.is_main() else {}
    distributed.barrier()
    return results
