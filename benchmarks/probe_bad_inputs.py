"""Issue 14's probe, re-run: every bad input of the issue through the real CLI, one row each.

For each row: the exit code, whether stderr is one line without a traceback, and whether the run
folder's files are byte-identical afterwards. Needs a trained run folder to damage (copied first,
never changed): by default it trains one with the ``fast`` preset and one epoch.

    python benchmarks/probe_bad_inputs.py [--run DIR]     # writes benchmarks/results/probe_bad_inputs.json
"""

from __future__ import annotations

import argparse
import hashlib
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Callable
from pathlib import Path

import numpy as np
from common import write_results

ASYMCERT = [sys.executable, "-m", "asymcert"]


def _snapshot(folder: Path) -> dict[str, str]:
    return {
        str(p.relative_to(folder)): hashlib.sha256(p.read_bytes()).hexdigest()
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != ".asymcert.lock"
    }


def _cli(args: list[str]) -> subprocess.CompletedProcess:
    return subprocess.run(ASYMCERT + args, capture_output=True, text=True, timeout=600)


def _write(path: Path, content: bytes | str) -> None:
    path.write_bytes(content if isinstance(content, bytes) else content.encode())


def _rows(scratch: Path) -> list[tuple[str, Callable[[Path], list[str]]]]:
    """(name, prepare(run_copy) → CLI arguments) for every row of the issue's probe."""
    csv_only_label = scratch / "label_only.csv"
    _write(csv_only_label, "label\n0\n1\n0\n1\n")
    empty_npz = scratch / "empty.npz"
    np.savez(empty_npz)
    overflow_npz = scratch / "overflow.npz"
    np.savez(overflow_npz, x=np.array([[1e39, 0.0], [0.0, 1.0]] * 10), y=np.array([0, 1] * 10))
    train = ["train", "fashion-mnist-shirts", "--preset", "fast", "--quiet", "--out"]
    return [
        ("--set 'lr={bad'", lambda d: train + [str(d), "--set", "lr={bad"]),
        ("--set lr=fast", lambda d: train + [str(d), "--set", "lr=fast"]),
        ("--device tpu9", lambda d: train + [str(d), "--device", "tpu9"]),
        ("--epochs -3", lambda d: train + [str(d), "--epochs", "-3"]),
        ("--epochs 0", lambda d: train + [str(d), "--epochs", "0"]),
        ("--model-set bogus=1", lambda d: train + [str(d), "--model-set", "bogus=1"]),
        (
            "another task into the folder",
            lambda d: ["train", "fashion-mnist", "--preset", "fast", "--quiet", "--out", str(d)],
        ),
        ("certify --limit 0", lambda d: ["certify", str(d), "--limit", "0"]),
        ("certify --limit -5", lambda d: ["certify", str(d), "--limit", "-5"]),
        ("certify --batch-size 0", lambda d: ["certify", str(d), "--batch-size", "0"]),
        (
            "report on a corrupt certificates file",
            lambda d: (
                _write(d / "certificates.safetensors", b"\x10\x00\x00\x00\x00\x00\x00\x00{garbage}"),
                ["report", str(d)],
            )[1],
        ),
        ("run.json is [1,2]", lambda d: (_write(d / "run.json", "[1,2]"), ["certify", str(d)])[1]),
        ("run.json is {}", lambda d: (_write(d / "run.json", "{}"), ["report", str(d)])[1]),
        (
            "malicious train_state.pt",
            lambda d: (_pickled_call(d / "train_state.pt"), train + [str(d), "--epochs", "1"])[1],
        ),
        (
            "CSV with only a label column",
            lambda d: [
                "train",
                "--csv",
                str(csv_only_label),
                "--label-column",
                "label",
                "--sensitive-class",
                "1",
                "--out",
                str(d / "csv"),
            ],
        ),
        ("empty npz", lambda d: ["train", "--data", str(empty_npz), "--sensitive-class", "1", "--out", str(d / "npz")]),
        (
            "npz overflowing float32",
            lambda d: ["train", "--data", str(overflow_npz), "--sensitive-class", "1", "--out", str(d / "npz2")],
        ),
        ("audit on a folder that is not a run", lambda d: ["audit", str(scratch)]),
    ]


def _pickled_call(path: Path) -> None:
    """A torch checkpoint whose pickle calls os.system: weights_only loading must refuse it."""
    import pickle

    class Evil:
        def __reduce__(self):
            return (print, ("pwned",))

    path.write_bytes(pickle.dumps(Evil()))


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--run", help="a trained run folder to copy (default: train one, fast preset, 1 epoch)")
    args = parser.parse_args()
    scratch = Path(tempfile.mkdtemp(prefix="probe-"))
    base = Path(args.run) if args.run else scratch / "base"
    if not args.run:
        done = _cli(["run", "fashion-mnist-shirts", "--preset", "fast", "--epochs", "1", "--quiet", "--out", str(base)])
        assert done.returncode == 0, done.stderr
    rows = []
    for name, prepare in _rows(scratch):
        folder = Path(shutil.copytree(base, scratch / f"case{len(rows)}"))
        cli_args = prepare(folder)
        before = _snapshot(folder)
        done = _cli(cli_args)
        err = done.stderr.strip().splitlines()
        rows.append(
            {
                "case": name,
                "exit": done.returncode,
                "stderr_lines": len(err),
                "traceback": "Traceback" in done.stderr,
                "unchanged": _snapshot(folder) == before,
                "message": err[-1] if err else "",
            }
        )
        print(
            f"{name:40s} exit {done.returncode}  lines {len(err)}  unchanged {rows[-1]['unchanged']}  "
            f"{rows[-1]['message'][:110]}"
        )
    write_results("probe_bad_inputs", {"rows": rows})
    shutil.rmtree(scratch, ignore_errors=True)


if __name__ == "__main__":
    main()
