"""Throughput and peak memory of `asymcert certify RUN --input FILE.csv --out RESULTS.csv` (or Parquet in or out).

Writes a CSV of N rows × 57 features (SpamBase's width), trains nothing: a feature-convex model
(standardize, ICNN 64-32) is built and saved as a run folder, then the file is certified in one
process. Prints rows/s and the peak resident memory (ru_maxrss) after certification.

    python benchmarks/bench_traffic.py --rows 200000 [--threat-model TM.json] [--out-suffix .parquet]
        [--in-suffix .parquet] [--task-model spambase [--preset pairs]]

With ``--threat-model`` the run carries that threat model (features named f0 … f56), so the radii are
the threat-model certificates; ``--out-suffix .parquet`` writes Parquet instead of CSV;
``--in-suffix .parquet`` reads the same rows from a Parquet file of one row group (written by a child
process: its memory is not this one's);
``--task-model TASK`` builds that built-in task's default model architecture (its feature map and
convex network, e.g. SpamBase's log1p, standardize, hinges and one-unit ICNN) instead, its feature
map fitted on the same kind of random rows; ``--preset NAME`` applies that task's preset's model
settings on top (e.g. SpamBase's ``pairs``: log1p, standardize, pair-min, hinges).
"""

from __future__ import annotations

import argparse
import multiprocessing
import resource
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from asymcert.checkpoint import save
from asymcert.data import get_task
from asymcert.models import build_model
from asymcert.pipeline import RUN_FILE
from asymcert.runfolder import RunRecord, write_json
from asymcert.threat import load_threat_model
from asymcert.traffic import certify_file


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rows", type=int, default=200_000)
    parser.add_argument("--features", type=int, default=57)
    parser.add_argument("--threat-model", help="JSON threat model for the run (features f0, f1, …)")
    parser.add_argument("--out-suffix", default=".csv", choices=(".csv", ".parquet"))
    parser.add_argument("--in-suffix", default=".csv", choices=(".csv", ".parquet"))
    parser.add_argument("--task-model", help="use this built-in task's default model architecture")
    parser.add_argument("--preset", help="with --task-model: apply this preset's model settings")
    parser.add_argument("--reach", action="store_true", help="reach-aware radii (certify --reach)")
    args = parser.parse_args()
    architecture = {"feature_map": [{"kind": "standardize"}], "convex": {"kind": "icnn", "widths": [64, 32]}}
    if args.task_model:
        task = get_task(args.task_model)
        if args.preset and args.preset not in task.presets:
            parser.error(f"--preset {args.preset!r}: {args.task_model} has {', '.join(sorted(task.presets))}")
        default = {**task.model, **(task.presets[args.preset].get("model", {}) if args.preset else {})}
        architecture = {"feature_map": default["feature_map"], "convex": default["convex"]}
    elif args.preset:
        parser.error("--preset needs --task-model")
    threat = None if args.threat_model is None else load_threat_model(args.threat_model).to_dict()
    names = [f"f{i}" for i in range(args.features)]
    with tempfile.TemporaryDirectory() as tmp:
        root = Path(tmp)
        torch.manual_seed(0)  # the same model every run: how many rows it flags sets the cost of --reach
        model = build_model({"kind": "feature-convex", "input_shape": [args.features], **architecture})
        model.feature_map.fit(torch.randn(1000, args.features))
        save(model, root / "run")
        write_json(
            root / "run" / RUN_FILE,
            RunRecord(
                task={"csv": "x.csv"},
                model=model.config(),
                train={},
                feature_names=names,
                threat_model=threat,
                training={"epochs": 0, "seconds": 0.0, "best": {}},  # a finished run (of an untrained model)
            ).to_dict(),
        )
        source = root / f"in{args.in_suffix}"
        _write_csv(root / "in.csv", names, args.rows)
        if args.in_suffix == ".parquet":
            child = multiprocessing.get_context("spawn").Process(target=_to_parquet, args=(root / "in.csv", source))
            child.start()
            child.join()
        t0 = time.perf_counter()
        options = {"reach": True} if args.reach else None
        out = root / f"out{args.out_suffix}"
        done = certify_file(root / "run", source, out, progress=False, options=options)
        wall = time.perf_counter() - t0
        peak_mb = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
        print(
            f"{done.n_inputs} rows × {args.features} features: {wall:.1f} s wall ({done.n_inputs / wall:,.0f} rows/s), "
            f"certification alone {done.seconds:.1f} s, peak RSS {peak_mb:.0f} MB; radii in {done.units}; "
            f"model {architecture}"
        )


def _write_csv(path: Path, names: list[str], rows: int) -> None:
    """``rows`` rows of standard normal numbers (seed 0), 6 significant digits, under the header ``names``."""
    g = np.random.default_rng(0)
    with path.open("w") as f:
        f.write(",".join(names) + "\n")
        for start in range(0, rows, 10_000):
            block = g.normal(size=(min(10_000, rows - start), len(names)))
            np.savetxt(f, block, delimiter=",", fmt="%.6g")


def _to_parquet(csv_path: Path, path: Path) -> None:
    """The CSV's numbers as float64 columns of one Parquet row group (pyarrow reads the CSV)."""
    import pyarrow.csv as pcsv
    import pyarrow.parquet as pq

    table = pcsv.read_csv(csv_path)
    pq.write_table(table, path, row_group_size=max(table.num_rows, 1))


if __name__ == "__main__":
    main()
