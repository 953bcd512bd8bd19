"""Certifying new traffic: a file in, one result row per input out, the same numbers as asymcert.certify."""

from __future__ import annotations

import copy
import csv
import dataclasses
import decimal
import errno
import hashlib
import io
import json
import math
import os
import shutil
import signal
import struct
import subprocess
import sys
import tempfile
import time
import tracemalloc
import warnings
import zipfile
import zlib
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest
import torch
from click.testing import CliRunner
from hypothesis import given, settings
from hypothesis import strategies as st

import asymcert
from asymcert import checkpoint, traffic
from asymcert.certify import Certificate
from asymcert.checkpoint import MODEL_FILE, read_config, save
from asymcert.cli import EXIT_BUSY, EXIT_OK, EXIT_REFUSED, main
from asymcert.data import user as user_module
from asymcert.data.images import list_image_folder, read_images
from asymcert.data.user import read_csv_table, read_npz
from asymcert.errors import (
    CheckpointError,
    DataError,
    InputError,
    RunFolderBusyError,
    RunFolderConflictError,
    WriteError,
)
from asymcert.pipeline import read_run, train_run
from asymcert.threat import ThreatModel, load_threat_model
from asymcert.traffic import (
    Batch,
    ResultsRecord,
    certify_file,
    csv_batches,
    npz_batches,
    read_results_record,
    record_path,
)
from tests.conftest import examples, torchrun_asymcert

FEATURES = ["f0", "f1", "f2", "f3"]
NORMS = ("l1", "l2", "linf")


def _rows(n: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    g = np.random.default_rng(seed)
    x = g.normal(size=(n, 4)) * np.array([1.0, 10.0, 0.1, 1.0])
    return x, np.where(x[:, 0] + 0.1 * x[:, 1] > 0, "spam", "ham")


def _write_csv(path, x, y=None, order=FEATURES, extra=True):
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(["note", *order, *(["kind"] if y is not None else [])] if extra else [*order])
        for i, row in enumerate(x):
            values = [repr(float(row[FEATURES.index(c)])) for c in order]
            w.writerow(([f"n{i}"] if extra else []) + values + ([y[i]] if y is not None else []))


def _training_csv(path, n: int, seed: int) -> dict:
    """A training CSV of ``n`` rows (FEATURES and a kind label) at ``path``; returns its run spec."""
    x, y = _rows(n, seed)
    with path.open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow([*FEATURES, "kind"])
        w.writerows([[*map(float, r), label] for r, label in zip(x, y, strict=True)])
    return {"csv": str(path), "label_column": "kind", "sensitive_class": "spam"}


@pytest.fixture(scope="module")
def csv_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("traffic")
    spec = _training_csv(root / "train.csv", 240, 0)
    train_run(spec, root / "run", train_overrides={"epochs": 3}, progress=False, log=lambda m: None)
    return root / "run"


def _read(path):
    with path.open(newline="") as f:
        return list(csv.DictReader(f))


def test_rows_match_asymcert_certify_on_the_same_inputs(csv_run, tmp_path):
    assert read_run(csv_run).feature_names == FEATURES
    x, y = _rows(50, 1)
    x = x.astype(np.float32).astype(np.float64)  # float32 numbers, as text: the same numbers as float64 to the API
    _write_csv(tmp_path / "new.csv", x, y, order=["f3", "f1", "f0", "f2"])  # other order, an extra column
    done = certify_file(csv_run, tmp_path / "new.csv", tmp_path / "out.csv", chunk=7, progress=False)
    rows = _read(tmp_path / "out.csv")
    assert list(rows[0]) == ["index", "score", "flagged", "radius_l1", "radius_l2", "radius_linf", "label"]
    # the same chunks as the file was read in (float64 results may differ in the last bit with the batch size)
    cert = asymcert.certify(asymcert.load(csv_run), torch.tensor(x, dtype=torch.float64), batch_size=7)
    assert done.n_inputs == 50 == len(rows) and done.n_flagged == int(cert.sensitive.sum())
    for i, row in enumerate(rows):
        assert int(row["index"]) == i and row["label"] == y[i]
        assert int(row["flagged"]) == int(cert.sensitive[i])
        for p, col in ((1.0, "radius_l1"), (2.0, "radius_l2"), (math.inf, "radius_linf")):
            assert float(row[col]) == float(cert.radii[p][i])  # exact: written with repr
        assert float(row["score"]) == pytest.approx(float(cert.extra["score"][i]), rel=1e-6)


def test_chunk_size_changes_radii_by_rounding_only(csv_run, tmp_path):
    x, _ = _rows(30, 2)
    _write_csv(tmp_path / "new.csv", x, extra=False)
    certify_file(csv_run, tmp_path / "new.csv", tmp_path / "a.csv", chunk=4, progress=False)
    certify_file(csv_run, tmp_path / "new.csv", tmp_path / "b.csv", progress=False)
    a, b = _read(tmp_path / "a.csv"), _read(tmp_path / "b.csv")
    assert [r["flagged"] for r in a] == [r["flagged"] for r in b]
    for ra, rb in zip(a, b, strict=True):
        for col in ("radius_l1", "radius_l2", "radius_linf"):
            assert float(ra[col]) == pytest.approx(float(rb[col]), rel=1e-12, abs=1e-300)
    assert "label" not in _read(tmp_path / "a.csv")[0]  # no label column in the input: none in the output


def test_npz_input_without_labels(csv_run, tmp_path):
    x, _ = _rows(9, 3)
    np.savez(tmp_path / "new.npz", x=x.astype(np.float32))
    with pytest.warns(UserWarning, match=r"no feature_names array, so x's columns are read by position as the run's"):
        done = certify_file(csv_run, tmp_path / "new.npz", tmp_path / "out.csv", norms=(2.0,), progress=False)
    rows = _read(tmp_path / "out.csv")
    assert done.n_inputs == 9 and list(rows[0]) == ["index", "score", "flagged", "radius_l2"]
    np.savez(tmp_path / "wide.npz", x=np.zeros((3, 5), dtype=np.float32))  # refused in one line, no warning first
    np.savez(tmp_path / "y.npz", x=np.zeros((3, 4), dtype=np.float32), y=np.array(["a", "b"]))
    np.savez(tmp_path / "nan.npz", x=np.full((3, 4), np.nan, dtype=np.float32))
    for name, message in [
        ("wide.npz", r"x has shape \(3, 5\); the run takes inputs of shape \(N, 4\)"),
        ("y.npz", r"y has shape \(2,\); it must hold one label per input of x, \(3,\)"),
        ("nan.npz", r"x\[0\] \(index 0, row 1\) holds NaN"),
    ]:
        with warnings.catch_warnings():
            warnings.simplefilter("error")
            with pytest.raises(DataError, match=message):
                certify_file(csv_run, tmp_path / name, tmp_path / "w.csv", progress=False)


def test_npz_columns_named_by_feature_names_are_taken_by_name(csv_run, tmp_path):
    """An npz whose columns are in another order (and one more) gives the rows of the same inputs as a CSV, when
    it names them (walkthrough 26c F9: read by position, unchecked); a name of the run's it lacks is refused."""
    x, y = _rows(20, 4)
    x = x.astype(np.float32).astype(np.float64)
    _write_csv(tmp_path / "new.csv", x, y)
    order = [3, 1, 0, 2]
    shuffled = np.concatenate([x[:, order], np.full((20, 1), 7.0)], axis=1)
    names = np.array([FEATURES[i] for i in order] + ["extra"])
    np.savez(tmp_path / "new.npz", x=shuffled, y=y, feature_names=names)
    certify_file(csv_run, tmp_path / "new.csv", tmp_path / "a.csv", progress=False)
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # matched by name: no warning
        certify_file(csv_run, tmp_path / "new.npz", tmp_path / "b.csv", progress=False)
    assert _read(tmp_path / "a.csv") == _read(tmp_path / "b.csv")
    np.savez(tmp_path / "lacks.npz", x=shuffled[:, :3], feature_names=names[:3])
    with pytest.raises(DataError, match=r"lacks\.npz: feature_names lacks the run's feature column\(s\) 'f2'"):
        certify_file(csv_run, tmp_path / "lacks.npz", tmp_path / "c.csv", progress=False)
    assert not (tmp_path / "c.csv").exists()


def test_a_run_trained_on_a_named_npz_has_named_features(tmp_path):
    """feature_names in a training npz name the run's features: threat models and CSV traffic go by name."""
    x, y = _rows(60, 16)
    np.savez(tmp_path / "train.npz", x=x, y=y, feature_names=np.array(FEATURES))
    tm = ThreatModel.from_dict({"immutable": ["f0"], "scale": {"f1": 10.0}})
    spec = {"npz": str(tmp_path / "train.npz"), "sensitive_class": "spam"}
    train_run(spec, tmp_path / "run", train_overrides={"epochs": 1}, progress=False, log=lambda m: None)
    assert read_run(tmp_path / "run").feature_names == FEATURES
    new = x[:10].astype(np.float32).astype(np.float64)
    _write_csv(tmp_path / "new.csv", new, order=["f2", "f0", "f3", "f1"], extra=False)
    run = tmp_path / "run"
    certify_file(run, tmp_path / "new.csv", tmp_path / "tm.csv", threat_model=tm, progress=False)
    certify_file(run, tmp_path / "new.csv", tmp_path / "plain.csv", plain=True, progress=False)
    model, x64 = asymcert.load(run), torch.from_numpy(new)  # the CSV's numbers, float64 (edits in text: read rounded)
    for out, threat in (("tm.csv", tm.resolve(FEATURES, 4)), ("plain.csv", None)):
        cert = asymcert.certify(model, x64, threat_model=threat)
        assert [float(r["radius_l2"]) for r in _read(tmp_path / out)] == cert.radius(2.0).tolist()
    assert _read(tmp_path / "tm.csv") != _read(tmp_path / "plain.csv")  # f0 immutable, f1 in tens: other radii


@pytest.mark.parametrize(
    ("content", "error", "message"),
    [
        ("f0,f1,f2\n1,2,3\n", DataError, "f3 are missing"),
        ("f0,f1,f2,f3\n1,2,3,x\n", DataError, r"row 1 \(line 2\), column 'f3': 'x' is not a number"),
        ("f0,f1,f2,f3\n1,2,3,1_0\n", DataError, r"column 'f3': '1_0' is not a number"),  # float() reads 10
        ("f0,f1,f2,f3\n1,2,3,\uff14\n", DataError, r"column 'f3': '\uff14' is not a number"),  # full-width 4
        ("f0,f1,f2,f3\n1,2,3,inf\n", DataError, "not a finite float32 number"),
        ("f0,f1,f2,f3\n1,2,3\n", DataError, "has 3 fields, the header has 4"),
        ("f0,f1,f2,f3\n", InputError, "no inputs to certify"),
    ],
)
def test_bad_input_is_one_error_and_leaves_the_old_output(csv_run, tmp_path, content, error, message):
    (tmp_path / "bad.csv").write_text(content)
    (tmp_path / "out.csv").write_text("old results\n")
    with pytest.raises(error, match=message):
        certify_file(csv_run, tmp_path / "bad.csv", tmp_path / "out.csv", chunk=1, progress=False)
    assert (tmp_path / "out.csv").read_text() == "old results\n"
    assert [p.name for p in tmp_path.iterdir() if p.name.startswith(".out.csv")] == []  # no temp file left


def test_unknown_format_is_refused(csv_run, tmp_path):
    (tmp_path / "x.xlsx").write_text("")
    with pytest.raises(InputError, match=r"use \.csv, \.parquet, \.npz or an image folder"):
        certify_file(csv_run, tmp_path / "x.xlsx", tmp_path / "out.csv", progress=False)


def test_cli_certify_input(csv_run, tmp_path):
    x, y = _rows(12, 4)
    _write_csv(tmp_path / "new.csv", x, y)
    res = CliRunner().invoke(
        main,
        ["certify", str(csv_run), "--input", str(tmp_path / "new.csv"), "--out", str(tmp_path / "r.csv"), "--quiet"],
    )
    assert res.exit_code == EXIT_OK, res.output
    assert "certified 12 inputs" in res.output and len(_read(tmp_path / "r.csv")) == 12
    res = CliRunner().invoke(main, ["certify", str(csv_run), "--input", str(tmp_path / "new.csv")])
    assert res.exit_code == EXIT_REFUSED and "--input and --out go together" in res.output
    res = CliRunner().invoke(
        main, ["certify", str(csv_run), "--input", str(tmp_path / "nope.csv"), "--out", str(tmp_path / "r2.csv")]
    )
    assert res.exit_code == EXIT_REFUSED and "no such input file" in res.output
    assert not (tmp_path / "r2.csv").exists()


def _pngs(root, classes, size=(8, 8)):
    image = pytest.importorskip("PIL.Image")
    rng = np.random.default_rng(1)
    for name, count in classes.items():
        (root / name).mkdir(parents=True, exist_ok=True)
        for k in range(count):
            pixels = rng.integers(0, 256, size, dtype=np.uint8)
            image.fromarray(pixels, mode="L").save(root / name / f"{k:02d}.png")
    return root


def test_image_folder_traffic_matches_the_run_on_the_same_pixels(csv_run, tmp_path):
    root = _pngs(tmp_path / "pics", {"bad": 12, "good": 12})
    spec = {"images": str(root), "sensitive_class": "bad"}
    train_run(spec, tmp_path / "run", train_overrides={"epochs": 2}, progress=False, log=lambda m: None)
    new = _pngs(tmp_path / "new", {"q": 5, "r": 2})
    done = certify_file(tmp_path / "run", new, tmp_path / "out.csv", chunk=3, progress=False)
    rows = _read(tmp_path / "out.csv")
    assert done.n_inputs == 7 and list(rows[0]) == [
        "index",
        "file",
        "score",
        "flagged",
        "radius_l1",
        "radius_l2",
        "radius_linf",
        "label",
    ]
    assert [r["file"] for r in rows] == sorted(f"{c}/{k:02d}.png" for c, n in (("q", 5), ("r", 2)) for k in range(n))
    assert [r["label"] for r in rows] == ["q"] * 5 + ["r"] * 2
    pixels = read_images(sorted(new.rglob("*.png")), "L", 8).astype(np.float32) / 255.0
    cert = asymcert.certify(asymcert.load(tmp_path / "run"), torch.from_numpy(pixels), batch_size=3)
    assert [float(r["radius_l2"]) for r in rows] == cert.radii[2.0].tolist()
    flat = _pngs(tmp_path / "flat", {".": 2})  # files directly in the folder: no label column
    certify_file(tmp_path / "run", flat, tmp_path / "flat.csv", progress=False)
    assert "label" not in _read(tmp_path / "flat.csv")[0]
    (tmp_path / "empty").mkdir()
    with pytest.raises(InputError, match="no image files"):
        certify_file(tmp_path / "run", tmp_path / "empty", tmp_path / "e.csv", progress=False)
    with pytest.raises(InputError, match="needs a run on square images"):
        certify_file(csv_run, new, tmp_path / "e.csv", progress=False)


def test_image_traffic_of_another_size_or_depth_is_refused_not_reshaped(csv_run, tmp_path):
    """Walkthrough 28d: a 40×40 image among 32×32 ones was certified by its centre crop, and a 16-bit PNG with its
    pixels clipped at 255, both without a word: other pictures than the files'. Now each is refused by name."""
    image = pytest.importorskip("PIL.Image")
    root = _pngs(tmp_path / "pics", {"bad": 12, "good": 12})
    spec = {"images": str(root), "sensitive_class": "bad"}
    train_run(spec, tmp_path / "run", train_overrides={"epochs": 1}, progress=False, log=lambda m: None)
    odd = _pngs(tmp_path / "odd", {"q": 2})
    _pngs(tmp_path / "odd", {"r": 1}, size=(10, 6))
    with pytest.raises(DataError, match=r"r/00\.png: 6×10 pixels, but the run takes 8×8 images; crop or resize"):
        certify_file(tmp_path / "run", odd, tmp_path / "o.csv", progress=False)
    deep = _pngs(tmp_path / "deep", {"q": 1})
    image.fromarray(np.full((8, 8), 40000, dtype=np.uint16)).save(deep / "q" / "16bit.png")
    with pytest.raises(DataError, match=r"16bit\.png: pixels of more than 8 bits \(Pillow mode I"):
        certify_file(tmp_path / "run", deep, tmp_path / "d.csv", progress=False)
    assert not (tmp_path / "o.csv").exists() and not (tmp_path / "d.csv").exists()


@pytest.fixture(scope="module")
def image_run(tmp_path_factory):
    """A run trained (one epoch) on 24 grayscale 8 × 8 PNGs in the class folders bad/ and good/."""
    root = tmp_path_factory.mktemp("images")
    spec = {"images": str(_pngs(root / "pics", {"bad": 12, "good": 12})), "sensitive_class": "bad"}
    train_run(spec, root / "run", train_overrides={"epochs": 1}, progress=False, log=lambda m: None)
    return root / "run"


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_file_and_class_folder_names_that_are_not_utf8_are_written_with_replacement_characters(
    image_run, tmp_path, suffix
):
    """Review s34 F1: an image named by bytes that are not UTF-8 (a legal Linux name) crashed both writers with a
    UnicodeEncodeError traceback (the same for a class folder's name, the label). Each such byte is now written
    as U+FFFD, as undecodable bytes of npz and Parquet labels are."""
    if suffix == ".parquet":
        pytest.importorskip("pyarrow.parquet")
    root = _pngs(tmp_path / "new", {"q": 1})
    try:
        shutil.copy(root / "q" / "00.png", root / "q" / os.fsdecode(b"\xff\xfe.png"))
        _pngs(root, {os.fsdecode(b"cl\xe9"): 1})  # (é in Latin-1)
    except (OSError, UnicodeError):  # pragma: no cover - a file system that takes only Unicode names
        pytest.skip("this file system refuses names that are not UTF-8")
    out = tmp_path / f"r{suffix}"
    assert certify_file(image_run, root, out, progress=False).n_inputs == 3
    if suffix == ".csv":
        with out.open(encoding="utf-8", newline="") as f:
            rows = [(r["file"], r["label"]) for r in csv.DictReader(f)]
    else:
        table = pytest.importorskip("pyarrow.parquet").read_table(out)
        rows = list(zip(table.column("file").to_pylist(), table.column("label").to_pylist()))
    assert rows == [("cl\ufffd/00.png", "cl\ufffd"), ("q/00.png", "q"), ("q/\ufffd\ufffd.png", "q")]
    assert traffic.name_text("caf\u00e9 \u732b.png") == "caf\u00e9 \u732b.png"  # (UTF-8 names as they are)


def test_image_traffic_lists_the_folder_as_images_training_does(image_run, tmp_path):
    """Review s34 F4: certify --input read images at any depth (rglob), labelling new/q/deep/00.png 'deep', and
    the images directly in a folder of class folders, where --images reads only the images directly in each class
    folder. Both now list a folder alike (labels: the class folder); a folder without class folders of images is
    still certified as it is, its images unlabelled."""
    root = _pngs(tmp_path / "new", {"q": 2, "r": 1})
    _pngs(root / "q", {"deep": 1})  # new/q/deep/00.png
    _pngs(root, {".": 1})  # new/00.png
    certify_file(image_run, root, tmp_path / "r.csv", progress=False)
    rows = [(r["file"], r["label"]) for r in _read(tmp_path / "r.csv")]
    trained = [(f.relative_to(root).as_posix(), c) for c, files in list_image_folder(root).items() for f in files]
    assert rows == trained == [("q/00.png", "q"), ("q/01.png", "q"), ("r/00.png", "r")]
    flat = _pngs(tmp_path / "flat", {".": 2})
    _pngs(flat / "empty", {"deeper": 1})  # (a subfolder holding no image directly is no class folder)
    certify_file(image_run, flat, tmp_path / "flat.csv", progress=False)
    assert [(r["file"], "label" in r) for r in _read(tmp_path / "flat.csv")] == [("00.png", False), ("01.png", False)]


def test_a_colour_image_for_a_grayscale_run_is_refused_by_name(image_run, tmp_path):
    """Review s34 F5: a colour image given to a grayscale run was certified by its luma, another picture than the
    file's, with no word (one of another size is refused by name). Now refused likewise. A grayscale image for
    an RGB run gets its grey in all three channels, as --images training reads a mixed folder's grey images."""
    image = pytest.importorskip("PIL.Image")
    root = _pngs(tmp_path / "new", {"q": 2})
    red = np.zeros((8, 8, 3), np.uint8)
    red[..., 0] = 255
    image.fromarray(red, mode="RGB").save(root / "q" / "red.png")
    with pytest.raises(DataError) as info:
        certify_file(image_run, root, tmp_path / "r.csv", progress=False)
    assert str(info.value) == (
        f"{root / 'q' / 'red.png'}: a colour image (Pillow mode RGB), but the run takes grayscale images; convert it "
        "to grayscale first (asymcert certifies the pixels as they are)"
    )
    assert not (tmp_path / "r.csv").exists()
    (root / "q" / "red.png").unlink()
    grey = next(traffic.image_batches(root, (1, 8, 8), 10)).x
    as_rgb = next(traffic.image_batches(root, (3, 8, 8), 10)).x  # (as an RGB run reads them)
    assert as_rgb.shape == (2, 3, 8, 8) and all(torch.equal(as_rgb[:, [c]], grey) for c in range(3))


def test_image_traffic_refuses_16_bit_and_multi_frame_images_by_name(image_run, tmp_path):
    """Review s34 F3 and F5, in certify --input: a 16-bit RGB PNG (opened by Pillow as 8-bit RGB) was certified
    by its values' high bytes, and an animated GIF by its first frame; each is now refused by name."""
    image = pytest.importorskip("PIL.Image")
    root = _pngs(tmp_path / "new", {"q": 1})
    frames = [image.fromarray(np.full((8, 8), v, np.uint8), mode="L") for v in (0, 255)]
    frames[0].save(root / "q" / "moving.gif", save_all=True, append_images=frames[1:])
    with pytest.raises(DataError, match=r"moving\.gif: an image of more than one frame \(animated, or pages\)"):
        certify_file(image_run, root, tmp_path / "r.csv", progress=False)
    (root / "q" / "moving.gif").unlink()
    row = struct.pack(">HHH", 1000, 200, 65000) * 8
    header = struct.pack(">IIBBBBB", 8, 8, 16, 2, 0, 0, 0)  # 8 × 8, 16 bits a channel, RGB
    chunks = [(b"IHDR", header), (b"IDAT", zlib.compress((b"\x00" + row) * 8)), (b"IEND", b"")]
    png = b"".join(struct.pack(">I", len(d)) + k + d + struct.pack(">I", zlib.crc32(k + d)) for k, d in chunks)
    (root / "q" / "rgb16.png").write_bytes(b"\x89PNG\r\n\x1a\n" + png)
    with pytest.raises(DataError, match=r"rgb16\.png: pixels of more than 8 bits \(stored as RGB;16B, which Pillow"):
        certify_file(image_run, root, tmp_path / "r.csv", progress=False)
    assert not (tmp_path / "r.csv").exists()


def test_parquet_output_holds_the_same_numbers_as_the_csv(csv_run, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    x, y = _rows(23, 6)
    _write_csv(tmp_path / "new.csv", x, y)
    certify_file(csv_run, tmp_path / "new.csv", tmp_path / "r.csv", chunk=5, progress=False)
    done = certify_file(csv_run, tmp_path / "new.csv", tmp_path / "r.parquet", chunk=5, progress=False)
    table = pq.read_table(tmp_path / "r.parquet")
    rows = _read(tmp_path / "r.csv")
    assert done.n_inputs == 23 and table.num_rows == 23 and table.column_names == list(rows[0])
    assert pq.ParquetFile(tmp_path / "r.parquet").num_row_groups == 5  # written chunk by chunk
    for col in ("score", "radius_l1", "radius_l2", "radius_linf"):
        assert table.column(col).to_pylist() == [float(r[col]) for r in rows]
    assert table.column("flagged").to_pylist() == [int(r["flagged"]) for r in rows]
    assert table.column("label").to_pylist() == [r["label"] for r in rows]
    meta = pq.read_schema(tmp_path / "r.parquet").metadata
    assert meta[b"asymcert.units"].decode() == done.units and meta[b"asymcert.run"].decode() == str(csv_run)
    assert meta[b"asymcert.radii"] == b"closed form" and json.loads(meta[b"asymcert.threat_model"]) is None
    # audit units30 F7: two threat models share one unit phrase, so the file names the one its radii hold under
    for scale in (1.0, 10.0):
        tm = ThreatModel(immutable=[FEATURES[0]], scale={FEATURES[1]: scale})
        certify_file(csv_run, tmp_path / "new.csv", tmp_path / "t.parquet", threat_model=tm, progress=False)
        meta = pq.read_schema(tmp_path / "t.parquet").metadata
        assert (
            json.loads(meta[b"asymcert.threat_model"])
            == tm.to_dict()
            == read_results_record(tmp_path / "t.parquet").threat_model
        )
    with pytest.raises(InputError, match=r"written as \.csv or \.parquet"):
        certify_file(csv_run, tmp_path / "new.csv", tmp_path / "r.json", progress=False)


@pytest.mark.parametrize(
    ("cell", "message"),
    [
        ("x", r"row 38 \(line 39\), column 'f2': 'x' is not a number"),
        ("nan", r"row 38 \(line 39\) is missing a value in column 'f2'"),
        ("", r"row 38 \(line 39\) is missing a value in column 'f2'"),
        ("1e39", r"row 38 \(line 39\), column 'f2': '1e39' is not a finite float32 number"),
        ("-inf", r"row 38 \(line 39\), column 'f2': '-inf' is not a finite float32 number"),
    ],
)
def test_a_bad_cell_inside_a_large_chunk_is_named_exactly(csv_run, tmp_path, cell, message):
    """Chunks are parsed by NumPy in one call; a bad cell anywhere in one still gets its own row, line and
    column (a blank line before it counts as a row and a line: the row number is the record after the header)."""
    lines = ["f0,f1,f2,f3"] + [f"{i},0.5,{i / 7},-1" for i in range(1, 37)] + ["", f"37,0.5,{cell},-1", "38,1,2,3"]
    (tmp_path / "bad.csv").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataError, match=message):
        certify_file(csv_run, tmp_path / "bad.csv", tmp_path / "out.csv", chunk=4096, progress=False)
    assert not (tmp_path / "out.csv").exists()


@settings(derandomize=True, max_examples=examples(100), deadline=None)
@given(
    values=st.lists(
        st.lists(st.floats(-3e38, 3e38, allow_nan=False, allow_infinity=False), min_size=4, max_size=4),
        min_size=1,
        max_size=20,
    ),
    spaces=st.booleans(),
)
def test_chunk_parsing_equals_cell_by_cell_parsing(values, spaces):
    """The one-call NumPy parse gives the float64 values float(cell) gives, cell by cell, for any text
    Python writes for a float (repr, %g, with spaces around)."""
    pad = " " if spaces else ""
    text = "f0,f1,f2,f3\n" + "".join(
        ",".join(f"{pad}{v!r}{pad}" if j % 2 else f"{v:g}" for j, v in enumerate(row)) + "\n" for row in values
    )
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "x.csv"
        path.write_text(text)
        (batch,) = list(csv_batches(path, ["f0", "f1", "f2", "f3"], None, 4096))
    expected = [[float(c.strip()) for c in line.split(",")] for line in text.splitlines()[1:]]
    assert torch.equal(batch.x, torch.tensor(expected, dtype=torch.float64))


def test_the_input_file_is_never_the_output(csv_run, tmp_path):
    """--out naming the input (any spelling, or a hard link to it) is refused, and the input is left as it was."""
    x, y = _rows(6, 5)
    _write_csv(tmp_path / "new.csv", x, y)
    before = (tmp_path / "new.csv").read_bytes()
    (tmp_path / "link.csv").hardlink_to(tmp_path / "new.csv")
    for out in (tmp_path / "new.csv", tmp_path / "sub" / ".." / "new.csv", tmp_path / "link.csv"):
        with pytest.raises(InputError, match="that is the input file"):
            certify_file(csv_run, tmp_path / "new.csv", out, progress=False)
    assert (tmp_path / "new.csv").read_bytes() == before and not (tmp_path / "sub").exists()


@pytest.mark.parametrize(
    ("y", "message"),
    [(np.zeros(3), r"y has shape \(3,\)"), (np.zeros(11), r"y has shape \(11,\)"), (np.zeros((9, 2)), r"\(9, 2\)")],
)
@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_npz_labels_must_be_one_per_input(csv_run, tmp_path, y, message, suffix):
    if suffix == ".parquet":
        pytest.importorskip("pyarrow")
    x, _ = _rows(9, 3)
    np.savez(tmp_path / "new.npz", x=x.astype(np.float32), y=y)
    with pytest.raises(DataError, match=message):
        certify_file(csv_run, tmp_path / "new.npz", tmp_path / f"out{suffix}", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.npz"]


def test_npz_inputs_of_another_shape_are_refused_naming_the_file(csv_run, tmp_path):
    np.savez(tmp_path / "new.npz", x=np.zeros((5, 3), dtype=np.float32))
    with pytest.raises(DataError, match=r"new\.npz: x has shape \(5, 3\); the run takes inputs of shape \(N, 4\)"):
        certify_file(csv_run, tmp_path / "new.npz", tmp_path / "out.csv", progress=False)


@pytest.mark.parametrize(("header", "twice"), [("f0,f1,f2,f3,f1", "'f1'"), ("f0,f1,f2,f3,kind,kind", "'kind'")])
def test_a_column_the_run_reads_may_not_appear_twice(csv_run, tmp_path, header, twice):
    width = header.count(",") + 1
    (tmp_path / "dup.csv").write_text(header + "\n" + ",".join(["1"] * width) + "\n")
    with pytest.raises(DataError, match=f"column\\(s\\) {twice} appear more than once"):
        certify_file(csv_run, tmp_path / "dup.csv", tmp_path / "out.csv", progress=False)
    (tmp_path / "ok.csv").write_text("f0,f1,f2,f3,note,note\n1,2,3,4,a,b\n")  # unread columns may repeat
    assert certify_file(csv_run, tmp_path / "ok.csv", tmp_path / "out.csv", progress=False).n_inputs == 1


def test_an_empty_file_says_so(csv_run, tmp_path):
    (tmp_path / "empty.csv").write_text("")
    with pytest.raises(DataError, match="the file is empty"):
        certify_file(csv_run, tmp_path / "empty.csv", tmp_path / "out.csv", progress=False)


HOLD_OUTPUT = """
import sys, time
from asymcert.runfolder import exclusive_output
with exclusive_output(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


def test_two_writers_of_one_results_file_cannot_both_run(csv_run, tmp_path):
    """While another process writes r.csv (here: holds its lock), certify_file and the CLI are refused at once,
    writing nothing; when that process dies, the file can be written, and an interrupted write's temporary file
    beside it is removed."""
    x, _ = _rows(5, 6)
    _write_csv(tmp_path / "new.csv", x)
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_OUTPUT, str(tmp_path / "r.csv")], stdout=subprocess.PIPE, text=True
    )
    try:
        assert holder.stdout.readline().strip() == "locked"
        with pytest.raises(RunFolderBusyError, match="being written by another asymcert process"):
            certify_file(csv_run, tmp_path / "new.csv", tmp_path / "r.csv", progress=False)
        args = ["certify", str(csv_run), "--input", str(tmp_path / "new.csv"), "--out", str(tmp_path / "." / "r.csv")]
        res = CliRunner().invoke(main, [*args, "--quiet"])  # another spelling of the same file
        assert res.exit_code == EXIT_BUSY and "Traceback" not in res.output
        assert not (tmp_path / "r.csv").exists()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    (tmp_path / ".r.csv.asymcert-ab12cd_9.tmp").write_text("half")  # a write killed before its rename
    (tmp_path / ".r.csv.json.asymcert-ab12cd_9.tmp").write_text("half")  # (its results record's)
    mine = [".other.csv.asymcert-ab12cd_9.tmp", ".r.csv.notes_v2", ".r.csv.20240101"]  # not r.csv's; the user's
    for name in mine:
        (tmp_path / name).write_text("keep")
    past = time.time() - 60  # (older than a write that has not locked its temporary file yet)
    for p in tmp_path.iterdir():
        os.utime(p, (past, past))
    assert certify_file(csv_run, tmp_path / "new.csv", tmp_path / "r.csv", progress=False).n_inputs == 5
    assert not any(p.name.startswith(".r.csv.") and p.name.endswith(".tmp") for p in tmp_path.iterdir())
    assert all((tmp_path / name).read_text() == "keep" for name in mine)


def test_inputs_outside_the_threat_models_domain_are_counted_and_warned_about(csv_run, tmp_path):
    tm_path = tmp_path / "tm.json"
    tm_path.write_text('{"lower": {"f1": -5.0}, "upper": {"f2": 0.5}}')
    x, _ = _rows(20, 7)
    x[:, 1], x[:, 2] = 0.0, 0.0
    x[3, 1], x[11, 2], x[12, 2] = -6.0, 0.6, 0.7
    _write_csv(tmp_path / "new.csv", x)
    done = certify_file(
        csv_run, tmp_path / "new.csv", tmp_path / "r.csv", progress=False, threat_model=load_threat_model(tm_path)
    )
    assert (done.n_outside, done.first_outside, done.outside_detail) == (3, 3, "f1 = -6 < lower -5")
    plain = certify_file(csv_run, tmp_path / "new.csv", tmp_path / "r.csv", progress=False, plain=True)
    assert (plain.n_outside, plain.first_outside, plain.outside_detail) == (0, None, None)
    args = ["certify", str(csv_run), "--input", str(tmp_path / "new.csv"), "--out", str(tmp_path / "r.csv")]
    res = CliRunner().invoke(main, [*args, "--threat-model", str(tm_path), "--quiet"])
    assert res.exit_code == EXIT_OK and "warning: 3 of 20 input(s) lie outside the threat model's domain" in res.output
    # the row, and its feature, value and bound (walkthrough 27f #12: the feature was not named), on one line
    assert "the first: index 3 in the results, input 4 of the file" in res.output
    assert "counting from 1 as its error messages do: f1 = -6 < lower -5)" in res.output
    assert len([line for line in res.stderr.splitlines() if line.strip()]) == 1


def test_the_outside_warning_names_the_feature_value_and_bound_of_the_first_row(csv_run, tmp_path):
    """Each side, values as the file wrote them (float32 npz: its own shortest decimal), other features counted."""
    tm = ThreatModel(lower={"*": 0.0}, upper={"f2": 100000.0})
    x = np.abs(_rows(4, 6)[0]).astype(np.float32)
    x[2, 2], x[2, 3], x[3, 0] = 200000.0, -0.1, -1.0
    np.savez(tmp_path / "new.npz", x=x, feature_names=FEATURES)
    done = certify_file(csv_run, tmp_path / "new.npz", tmp_path / "r.csv", progress=False, threat_model=tm)
    assert (done.n_outside, done.first_outside) == (2, 2)
    assert done.outside_detail == "f2 = 200000 > upper 100000 (and 1 more of its features)"
    x[2, 2] = 5.0
    np.savez(tmp_path / "low.npz", x=x[:, [3, 2, 1, 0]], feature_names=FEATURES[::-1])  # by name, any order
    low = certify_file(csv_run, tmp_path / "low.npz", tmp_path / "r.csv", progress=False, threat_model=tm)
    assert (low.n_outside, low.first_outside, low.outside_detail) == (2, 2, "f3 = -0.1 < lower 0")


def test_certifying_traffic_with_a_run_still_being_written_warns(csv_run, tmp_path):
    x, _ = _rows(4, 8)
    _write_csv(tmp_path / "new.csv", x)
    holder = subprocess.Popen([sys.executable, "-c", HOLD_RUN, str(csv_run)], stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "locked"
        args = ["certify", str(csv_run), "--input", str(tmp_path / "new.csv"), "--out", str(tmp_path / "r.csv")]
        res = CliRunner().invoke(main, [*args, "--quiet"])
        assert res.exit_code == EXIT_OK
        assert "is being written by another asymcert process (still training?)" in res.output
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait()
    assert not certify_file(csv_run, tmp_path / "new.csv", tmp_path / "r.csv", progress=False).run_busy


HOLD_RUN = """
import sys, time
from asymcert.runfolder import exclusive
with exclusive(sys.argv[1]):
    print("locked", flush=True)
    time.sleep(120)
"""


@pytest.fixture(scope="module")
def affine_run(csv_run, tmp_path_factory):
    """csv_run with g's hidden weights zeroed: s(x) = w · standardize(x) + b is affine, so under a threat model
    (per-feature slopes) the closed-form radius is the exact distance to the boundary."""
    root = tmp_path_factory.mktemp("affine") / "run"
    shutil.copytree(csv_run, root)
    model = asymcert.load(root)
    with torch.no_grad():
        for layer in model.convex.hidden:
            layer.weight.zero_()
    save(model, root / MODEL_FILE, read_config(root / MODEL_FILE)[1])
    return root


def _exact_distances(model, x64: np.ndarray) -> dict[float, np.ndarray]:
    """The exact ℓ1/ℓ2/ℓ∞ distances (float64) from rows x64 to the affine model's boundary s = 0."""
    m64 = copy.deepcopy(model).double().eval()
    x = torch.tensor(x64, dtype=torch.float64, requires_grad=True)
    s = m64.score_from_features(m64.features(x))
    (grad,) = torch.autograd.grad(s.sum(), x)
    s, grad = s.detach().numpy(), grad.numpy()
    return {p: s / np.linalg.norm(grad, ord=q, axis=1) for p, q in ((1.0, np.inf), (2.0, 2), (math.inf, 1))}, grad


@pytest.mark.parametrize("suffix", [".csv", ".npz"])
def test_radii_hold_around_the_files_own_values_not_their_float32_rounding(affine_run, tmp_path, suffix):
    model = asymcert.load(affine_run)
    x, _ = _rows(60, 9)
    x32 = x.astype(np.float32)
    _, grad = _exact_distances(model, x32.astype(np.float64))
    # each value a quarter ulp below its float32 number against the gradient: read as the same float32
    # input, but closer to the boundary than the certified point
    x_file = x32.astype(np.float64) - 0.25 * np.spacing(np.abs(x32)).astype(np.float64) * np.sign(grad)
    assert (x_file.astype(np.float32) == x32).all() and (x_file != x32).all()
    if suffix == ".csv":
        _write_csv(tmp_path / "new.csv", x_file)
    else:
        np.savez(tmp_path / "new.npz", x=x_file)
    tm = ThreatModel.from_dict({"lower": {"*": -1e9}})  # constrains nothing here, but per-feature slopes
    options = {"guard": False}  # the exact real-valued function: radii equal the distances up to 1e-14
    certify_file(
        affine_run, tmp_path / f"new{suffix}", tmp_path / "r.csv", threat_model=tm, options=options, progress=False
    )
    rows = _read(tmp_path / "r.csv")
    exact, _ = _exact_distances(model, x_file)
    flagged = np.array([int(r["flagged"]) for r in rows]) == 1
    assert 10 <= flagged.sum() < 60 and (exact[2.0][flagged] > 0).all()
    for p, col in ((1.0, "radius_l1"), (2.0, "radius_l2"), (math.inf, "radius_linf")):
        got = np.array([float(r[col]) for r in rows])[flagged]
        want = exact[p][flagged]
        assert (got <= want * (1 - 1e-13)).all(), (p, np.max(got / want))  # the old radii: above by about 1e-8
        # lowered by the rounding e and the read rounding h of the point reached only (half the float32 spacing
        # at |x| + r: at most twice half an ulp of x32 here, review s32 F3)
        moved = np.linalg.norm(np.abs(x_file - x32) + np.spacing(np.abs(x32)), ord=p, axis=1)[flagged]
        assert (got >= want - moved * (1 + 1e-9)).all(), (p, np.min(got / want))
    # float32 values in the file: nothing to lower, the radii of the float32 inputs themselves
    np.savez(tmp_path / "f32.npz", x=x32)
    certify_file(
        affine_run, tmp_path / "f32.npz", tmp_path / "r32.csv", threat_model=tm, options=options, progress=False
    )
    cert = asymcert.certify(model, torch.from_numpy(x32), threat_model=tm.resolve(FEATURES, 4), guard=False)
    assert [float(r["radius_l2"]) for r in _read(tmp_path / "r32.csv")] == cert.radius(2.0).tolist()


@pytest.mark.parametrize(
    "x, message",
    [
        (np.array([[1, 2, 3, 2**60 + 1]], dtype=np.int64), "integers beyond 2\\*\\*53"),
        (np.array([["1", "2", "3", "4"]]), "x must hold numbers, found dtype <U1"),
        (np.array([[1.0, 2.0, 3.0, 1e39]]), "beyond the range of the model's torch.float32"),
    ],
)
def test_npz_values_that_cannot_be_read_exactly_are_refused(csv_run, tmp_path, x, message):
    np.savez(tmp_path / "new.npz", x=x)
    with pytest.raises((DataError, InputError), match=message):
        certify_file(csv_run, tmp_path / "new.npz", tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists()


def test_npz_integers_are_certified_as_the_same_floats(csv_run, tmp_path):
    x = np.array([[1, -2, 3, 40], [0, 5, -6, 7]], dtype=np.int64)
    np.savez(tmp_path / "new.npz", x=x)
    certify_file(csv_run, tmp_path / "new.npz", tmp_path / "out.csv", progress=False)
    # read exactly as float64 (edits of that type are read rounded by the float32 model: lowered by that)
    cert = asymcert.certify(asymcert.load(csv_run), torch.tensor(x, dtype=torch.float64))
    assert [float(r["radius_l2"]) for r in _read(tmp_path / "out.csv")] == cert.radius(2.0).tolist()


def test_a_record_beside_the_results_says_what_each_column_means_and_is_tied_to_them(csv_run, tmp_path):
    """certify --input writes r.csv.json: the columns' meanings in file order, units, closed form or reach, the
    threat model by source and file, counts, and the results' SHA-256; read back only while it matches."""
    x, y = _rows(15, 9)
    _write_csv(tmp_path / "new.csv", x, y)
    tm_path = tmp_path / "tm.json"
    tm_path.write_text('{"scale": {"f1": 10.0}, "immutable": ["f3"]}')
    out = tmp_path / "r.csv"
    args = ["certify", str(csv_run), "--input", str(tmp_path / "new.csv"), "--out", str(out), "--quiet"]
    res = CliRunner().invoke(main, [*args, "--threat-model", str(tm_path), "--norms", "1,inf"])
    assert res.exit_code == EXIT_OK, res.output
    assert str(record_path(out)) in res.output and record_path(out) == tmp_path / "r.csv.json"
    record = read_results_record(out)
    assert record is not None and record.results == "r.csv" and record.input == str(tmp_path / "new.csv")
    assert (
        list(record.columns)
        == list(_read(out)[0])
        == ["index", "score", "flagged", "radius_l1", "radius_linf", "label"]
    )
    assert record.units == "threat-model units (δ_i / scale_i)" and "threat-model units" in record.columns["radius_l1"]
    assert "ℓ∞ size" in record.columns["radius_linf"]
    flagged = sum(int(r["flagged"]) for r in _read(out))
    assert (record.n_inputs, record.n_flagged, record.n_outside, record.first_outside) == (15, flagged, 0, None)
    mode = record.mode
    assert (mode.reach, mode.threat_model, mode.threat_model_file) == (False, "given", str(tm_path))
    assert mode.given is not None and mode.given["immutable"] == ["f3"]
    assert mode.certificates_sha256 == record.results_sha256 == hashlib.sha256(out.read_bytes()).hexdigest()
    assert ResultsRecord.from_dict(json.loads(record_path(out).read_text())) == record
    # the threat model itself and the columns read, so that the record is read without the run folder
    assert record.threat_model is not None and record.threat_model["immutable"] == ["f3"]
    assert record.threat_model["scale"] == {"f1": 10.0} and record.features == FEATURES
    old_layout = {k: v for k, v in record.to_dict().items() if k not in ("threat_model", "features")}
    assert ResultsRecord.from_dict(old_layout | {"version": 1}) == replace(record, threat_model=None, features=None)
    assert ResultsRecord.from_dict(record.to_dict() | {"features": [1, 2]}) is None
    certify_file(csv_run, tmp_path / "new.csv", out, progress=False, norms=(2.0,))  # a plain run: no threat model
    again = read_results_record(out)
    assert again is not None and again.mode.threat_model == "none" and again.units == "raw input units"
    assert again.threat_model is None
    tm = load_threat_model(tm_path)
    certify_file(csv_run, tmp_path / "new.csv", out, progress=False, threat_model=tm, plain=True, threat_model_file="x")
    assert read_results_record(out).mode.threat_model_file is None  # no threat model used: no file named
    assert list(again.columns) == ["index", "score", "flagged", "radius_l2", "label"]
    out.write_text(out.read_text().replace("label", "lab"))  # results edited: the record no longer describes them
    assert read_results_record(out) is None


def test_results_csv_lines_end_in_lf_and_text_with_line_breaks_reads_back(csv_run, tmp_path):
    """A results CSV ends its lines in LF, never CRLF (walkthrough 27f: ``cut`` saw a \\r in the last field); labels
    holding a comma, a quote, a LF or a bare CR are quoted and read back as they were, by csv and by pandas, and the
    record still ties the file (its SHA-256)."""
    x = _rows(6, 4)[0].astype(np.float32)
    labels = ["ham", "a,b", 'say "hi"', "two\nlines", "bare\rcr", "crlf\r\nend"]
    np.savez(tmp_path / "new.npz", x=x, y=np.array(labels), feature_names=FEATURES)
    out = tmp_path / "r.csv"
    certify_file(csv_run, tmp_path / "new.npz", out, chunk=4, progress=False)
    data = out.read_bytes()
    assert data.endswith(b"\n") and b"\r\n" not in data.replace(b"crlf\r\nend", b"")
    assert data.split(b"\n", 1)[0] == b"index,score,flagged,radius_l1,radius_l2,radius_linf,label"
    assert [r["label"] for r in _read(out)] == labels and [r["index"] for r in _read(out)] == list("012345")
    pandas = pytest.importorskip("pandas")
    table = pandas.read_csv(out, keep_default_na=False)
    assert table["label"].tolist() == labels and table["index"].tolist() == list(range(6))
    plain = tmp_path / "plain.csv"
    np.savez(tmp_path / "plain.npz", x=x, y=np.array(labels[:3]).repeat(2), feature_names=FEATURES)
    certify_file(csv_run, tmp_path / "plain.npz", plain, progress=False)
    assert plain.read_bytes().count(b"\n") == 7 and b"\r" not in plain.read_bytes()
    assert read_results_record(out) is not None and read_results_record(plain) is not None


def test_the_docs_say_read_results_record_returns_a_dataclass_with_its_fields_or_none():
    """Walkthrough 27f #13: ``rec["n_flagged"]`` raised a TypeError, as nothing said the record is a dataclass. Its
    docstring and the README's sentence name the type, every field, and None; a field added later must be too."""
    readme = (Path(__file__).resolve().parents[1] / "README.md").read_text(encoding="utf-8")
    sentence = readme[readme.index('`read_results_record("RESULTS.csv")`') :].split(");", 1)[0]
    doc = read_results_record.__doc__ or ""
    assert "ResultsRecord" in doc and "dataclass" in doc and "None" in doc
    assert "`ResultsRecord` dataclass" in sentence and "`None`" in sentence
    for field in dataclasses.fields(ResultsRecord):
        assert f"``{field.name}``" in doc and f"`{field.name}`" in sentence, field.name


def test_a_refused_rewrite_leaves_the_results_and_their_record_as_they_were(csv_run, tmp_path):
    x, _ = _rows(6, 10)
    _write_csv(tmp_path / "new.csv", x)
    out = tmp_path / "r.csv"
    certify_file(csv_run, tmp_path / "new.csv", out, progress=False)
    before = {p.name: p.read_bytes() for p in tmp_path.iterdir()}
    (tmp_path / "bad.csv").write_text("f0,f1,f2,f3\n1,2,3,4\n1,2,3,x\n")
    with pytest.raises(DataError, match="'x' is not a number"):
        certify_file(csv_run, tmp_path / "bad.csv", out, chunk=1, progress=False)
    (tmp_path / "bad.csv").unlink()
    assert {p.name: p.read_bytes() for p in tmp_path.iterdir()} == before
    assert read_results_record(out) is not None


@pytest.mark.parametrize("damage", ["{", "[]", '{"version": 1}', "not json", ""])
def test_a_damaged_record_reads_as_none(csv_run, tmp_path, damage):
    x, _ = _rows(3, 11)
    _write_csv(tmp_path / "new.csv", x)
    certify_file(csv_run, tmp_path / "new.csv", tmp_path / "r.csv", progress=False)
    raw = json.loads(record_path(tmp_path / "r.csv").read_text())
    for key, bad in (("n_inputs", -1), ("n_flagged", True), ("columns", {"index": 1}), ("mode", {"reach": "no"})):
        assert ResultsRecord.from_dict({**raw, key: bad}) is None
    record_path(tmp_path / "r.csv").write_text(damage)
    assert read_results_record(tmp_path / "r.csv") is None
    assert read_results_record(tmp_path / "missing.csv") is None


def test_a_folder_in_the_way_of_the_results_or_their_record_is_refused_before_any_work(csv_run, tmp_path):
    x, _ = _rows(3, 12)
    _write_csv(tmp_path / "new.csv", x)
    (tmp_path / "r.csv.json").mkdir()
    with pytest.raises(InputError, match=r"r\.csv\.json is a folder"):
        certify_file(csv_run, tmp_path / "new.csv", tmp_path / "r.csv", progress=False)
    assert not (tmp_path / "r.csv").exists()
    (tmp_path / "q.csv").mkdir()
    with pytest.raises(InputError, match=r"q\.csv is a folder"):
        certify_file(csv_run, tmp_path / "new.csv", tmp_path / "q.csv", progress=False)


def test_image_folder_and_parquet_results_get_their_record_too(csv_run, tmp_path):
    pytest.importorskip("pyarrow.parquet")
    root = _pngs(tmp_path / "pics", {"bad": 6, "good": 6})
    train_run(
        {"images": str(root), "sensitive_class": "bad"},
        tmp_path / "run",
        train_overrides={"epochs": 1},
        progress=False,
        log=lambda m: None,
    )
    certify_file(tmp_path / "run", root, tmp_path / "r.parquet", progress=False)
    record = read_results_record(tmp_path / "r.parquet")
    scaled = "raw input units (pixel values / 255, in [0, 1])"  # audit units30 F6: not the file's 0..255
    assert record is not None and record.units == scaled and record.n_inputs == 12
    assert scaled in record.columns["radius_linf"]
    meta = pytest.importorskip("pyarrow.parquet").read_schema(tmp_path / "r.parquet").metadata
    assert meta[b"asymcert.units"].decode() == scaled
    assert list(record.columns)[:2] == ["index", "file"] and list(record.columns)[-1] == "label"


# ----- npz inputs are streamed: a chunk of rows at a time, never np.load-ed whole, never unpickled -----


def _whole_array_batches(path, chunk, input_shape=None, features=None):
    """npz_batches as it was before streaming: the whole file through read_npz, then sliced."""
    x, y = read_npz(path, labels_required=False)
    labels = None if y is None else [str(v) for v in y.tolist()]
    for start in range(0, len(x), chunk):
        part = x[start : start + chunk]
        values = np.ascontiguousarray(part) if part.dtype.kind == "f" else part.astype(np.float64)
        yield Batch(torch.from_numpy(values), labels[start : start + chunk] if labels is not None else None)


def test_npz_batches_hold_one_chunk_at_a_time(tmp_path, monkeypatch):
    """3·10⁶ rows × 4 float32 (48 MB) of zeros, a few hundred kB compressed: the batches come 2¹⁶ rows at a time
    with a traced peak far below the array, and np.load (which reads an array whole) is never called."""
    n, chunk = 3_000_000, 1 << 16
    np.savez_compressed(tmp_path / "big.npz", x=np.zeros((n, 4), dtype=np.float32))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load reads the whole array"))
    sizes = []
    tracemalloc.start()
    try:
        for batch in npz_batches(tmp_path / "big.npz", chunk, [4]):
            sizes.append(len(batch.x))
            assert batch.labels is None and batch.x.dtype == torch.float32
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(sizes) == n and max(sizes) == chunk
    assert peak < n * 16 / 8, f"peak {peak / 1e6:.1f} MB for a {n * 16 / 1e6:.0f} MB array"


@pytest.mark.parametrize("dtype", [np.float32, np.float64, np.int64, bool])
@pytest.mark.parametrize("labelled", [False, True])
def test_streamed_npz_results_are_those_of_the_whole_array(csv_run, tmp_path, monkeypatch, dtype, labelled):
    x, y = _rows(11, 13)
    x = (x * 3).astype(dtype)
    np.savez(tmp_path / "new.npz", x=x, **({"y": y} if labelled else {}))
    certify_file(csv_run, tmp_path / "new.npz", tmp_path / "streamed.csv", chunk=4, progress=False)
    with monkeypatch.context() as m:
        m.setattr(traffic, "npz_batches", _whole_array_batches)
        certify_file(csv_run, tmp_path / "new.npz", tmp_path / "whole.csv", chunk=4, progress=False)
    streamed = _read(tmp_path / "streamed.csv")
    assert len(streamed) == 11 and ("label" in streamed[0]) == labelled
    assert (tmp_path / "streamed.csv").read_bytes() == (tmp_path / "whole.csv").read_bytes()
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load reads the whole array"))
    certify_file(csv_run, tmp_path / "new.npz", tmp_path / "again.csv", chunk=4, progress=False)
    assert (tmp_path / "again.csv").read_bytes() == (tmp_path / "streamed.csv").read_bytes()


class _TouchOnUnpickle:
    """An object whose unpickling creates ``marker``: proof that a reader unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (Path.touch, (Path(self.marker),))


def test_npz_object_inputs_are_refused_unread(csv_run, tmp_path):
    marker = tmp_path / "unpickled"
    objects = np.array([_TouchOnUnpickle(marker)] * 3, dtype=object)
    np.savez(tmp_path / "new.npz", x=np.stack([objects] * 4, axis=1), y=np.array(["a", "b", "c"]))
    with pytest.raises(DataError, match="new\\.npz: array 'x' cannot be read without unpickling") as info:
        certify_file(csv_run, tmp_path / "new.npz", tmp_path / "out.csv", progress=False)
    assert type(info.value) is DataError  # the CLI prints its class: a public one (review 28c F3)
    assert not marker.exists() and not (tmp_path / "out.csv").exists()
    np.load(tmp_path / "new.npz", allow_pickle=True)["x"]  # the payload works: unpickling creates the file
    assert marker.exists()


def test_npz_object_labels_are_left_out_unread_with_one_warning(csv_run, tmp_path):
    """Labels are optional when certifying: a y of Python objects (e.g. saved from pandas) is never unpickled, the
    inputs are certified without it, and one warning line says why (walkthrough 27f: the whole file was refused)."""
    marker = tmp_path / "unpickled"
    x = _rows(3, 5)[0].astype(np.float32)
    y = np.array([_TouchOnUnpickle(marker)] * 3, dtype=object)
    np.savez(tmp_path / "new.npz", x=x, y=y, feature_names=FEATURES)
    message = r"new\.npz: array 'y' \(dtype object\) holds Python objects, which are never unpickled, so these inputs"
    with pytest.warns(UserWarning, match=message):
        done = certify_file(csv_run, tmp_path / "new.npz", tmp_path / "out.csv", progress=False)
    assert done.n_inputs == 3 and not marker.exists()
    assert list(_read(tmp_path / "out.csv")[0]) == ["index", "score", "flagged", *(f"radius_{p}" for p in NORMS)]
    assert "label" not in read_results_record(tmp_path / "out.csv").columns
    args = ["certify", str(csv_run), "--input", str(tmp_path / "new.npz"), "--out", str(tmp_path / "cli.csv")]
    res = CliRunner().invoke(main, [*args, "--quiet"])
    warned = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == EXIT_OK and len(warned) == 1 and warned[0].startswith("warning: ")
    assert "certified without labels" in warned[0] and "Traceback" not in res.output and not marker.exists()
    np.savez(tmp_path / "wide.npz", x=np.zeros((3, 5), dtype=np.float32), y=np.array([None] * 3, dtype=object))
    with warnings.catch_warnings():  # a file refused for another reason: its refusal alone, no warning first
        warnings.simplefilter("error")
        with pytest.raises(DataError, match=r"x has shape \(3, 5\)"):
            certify_file(csv_run, tmp_path / "wide.npz", tmp_path / "w.csv", progress=False)
    np.load(tmp_path / "new.npz", allow_pickle=True)["y"]  # the payload works: unpickling creates the file
    assert marker.exists()


def test_npz_labels_of_another_length_are_refused_before_any_row_is_certified(csv_run, tmp_path, monkeypatch):
    np.savez(tmp_path / "new.npz", x=np.zeros((9, 4), dtype=np.float32), y=np.array(["a"] * 8))
    calls = []
    monkeypatch.setattr(traffic, "certify", lambda *a, **k: calls.append(a) or pytest.fail("certified a row"))
    with pytest.raises(DataError, match=r"new\.npz: y has shape \(8,\); it must hold one label per input of x, \(9,\)"):
        certify_file(csv_run, tmp_path / "new.npz", tmp_path / "out.csv", chunk=2, progress=False)
    assert calls == [] and not (tmp_path / "out.csv").exists()


def test_npz_truncated_arrays_are_refused_and_fortran_order_is_read(csv_run, tmp_path):
    buf = io.BytesIO()
    np.save(buf, np.zeros((9, 4), dtype=np.float32))
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as z:
        z.writestr("x.npy", buf.getvalue()[:-4])
    with pytest.raises(DataError, match=r"cut\.npz: array 'x' is damaged: .*truncated"):
        certify_file(csv_run, tmp_path / "cut.npz", tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists()
    x = np.random.default_rng(3).normal(size=(9, 4)).astype(np.float32)
    np.savez(tmp_path / "f.npz", x=np.asfortranarray(x))  # as np.savez(f, x=df.to_numpy()) writes it
    np.savez(tmp_path / "c.npz", x=x)
    certify_file(csv_run, tmp_path / "f.npz", tmp_path / "f.csv", chunk=2, progress=False)
    certify_file(csv_run, tmp_path / "c.npz", tmp_path / "c.csv", chunk=2, progress=False)
    assert (tmp_path / "f.csv").read_text() == (tmp_path / "c.csv").read_text()


@pytest.mark.parametrize(
    ("content", "message"),
    [
        ("f0,f1,f2,f3\n1,2,3,4\nf\xe9,1,2,3\n".encode("latin-1"), r"not UTF-8 text \(byte b'\\xe9' near line \d\)"),
        (b"\xff\xfe\x00garbage" * 10, "not UTF-8 text"),
        (f"f0,f1,f2,f3,note\n1,2,3,4,{'x' * 200_000}\n".encode(), r"line 2: not readable as CSV \(field larger"),
    ],
    ids=["latin-1", "binary", "long field"],
)
def test_undecodable_or_unreadable_csv_is_one_line_and_writes_nothing(csv_run, tmp_path, content, message):
    """A Latin-1 CSV or a 200,000-character field were a 40-line traceback (exit 1) in certify --input."""
    (tmp_path / "bad.csv").write_bytes(content)
    with pytest.raises(DataError, match=message) as info:
        certify_file(csv_run, tmp_path / "bad.csv", tmp_path / "out.csv", progress=False)
    assert "\n" not in str(info.value)
    res = CliRunner().invoke(
        main, ["certify", str(csv_run), "--input", str(tmp_path / "bad.csv"), "--out", str(tmp_path / "o.csv")]
    )
    assert res.exit_code == EXIT_REFUSED and res.output.count("\n") == 1 and "Traceback" not in res.output
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.csv"]


def test_npz_bytes_labels_are_written_as_text(csv_run, tmp_path):
    """A y of bytes came out as "b'spam'" in the label column (training reads it as "spam")."""
    x, _ = _rows(3, 13)
    np.savez(tmp_path / "b.npz", x=x.astype(np.float32), y=np.array([b"spam", b"ham", "caf\u00e9".encode()]))
    certify_file(csv_run, tmp_path / "b.npz", tmp_path / "out.csv", progress=False)
    assert [row["label"] for row in _read(tmp_path / "out.csv")] == ["spam", "ham", "caf\u00e9"]


# ----- Parquet inputs: the run's columns by name, streamed page by page -----


def _write_parquet(path, columns: dict, row_group_size: int | None = None) -> None:
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    pq.write_table(pa.table(columns), path, row_group_size=row_group_size)


def test_parquet_input_gives_the_rows_of_the_same_csv(csv_run, tmp_path):
    """Columns in another order, of other types (float32, int64, bool), an extra text column, the label column;
    chunks (7 rows) that cross row groups (5 rows): the same results as the CSV of the same numbers."""
    x, y = _rows(31, 11)
    x[:, 1] = np.round(x[:, 1])  # an integer column
    x[:, 2] = x[:, 2] > 0  # a 0/1 column, stored as booleans
    x[:, 3] = x[:, 3].astype(np.float32)
    _write_csv(tmp_path / "new.csv", x, y)
    columns = {
        "note": [f"n{i}" for i in range(31)],
        "f3": x[:, 3].astype(np.float32),
        "kind": list(y),
        "f1": x[:, 1].astype(np.int64),
        "f0": x[:, 0],
        "f2": x[:, 2].astype(bool),
    }
    _write_parquet(tmp_path / "new.parquet", columns, row_group_size=5)
    certify_file(csv_run, tmp_path / "new.csv", tmp_path / "a.csv", chunk=7, progress=False)
    done = certify_file(csv_run, tmp_path / "new.parquet", tmp_path / "b.csv", chunk=7, progress=False)
    a, b = _read(tmp_path / "a.csv"), _read(tmp_path / "b.csv")
    assert done.n_inputs == 31 and a == b and [r["label"] for r in b] == list(y)
    record = read_results_record(tmp_path / "b.csv")
    assert record is not None and record.input == str(tmp_path / "new.parquet")


def test_parquet_input_through_the_cli(csv_run, tmp_path):
    x, _ = _rows(9, 12)
    _write_parquet(tmp_path / "new.parquet", {c: x[:, i] for i, c in enumerate(FEATURES)})
    out = tmp_path / "r.parquet"
    res = CliRunner().invoke(
        main, ["certify", str(csv_run), "--input", str(tmp_path / "new.parquet"), "--out", str(out), "--quiet"]
    )
    assert res.exit_code == EXIT_OK, res.output
    assert "certified 9 inputs" in res.output and len(_read_parquet(out)) == 9


def test_parquet_labels_must_be_one_text_or_number_per_row(csv_run, tmp_path, monkeypatch):
    """A 1.8 kB file whose one label was a list of 2·10⁷ dictionary strings took 1.3 GB and wrote 100 MB; one label
    of 250 MiB within the per-row average of 2²⁰ rows took 3.5 GB (review 27a F1, F2): nested labels are refused
    by type, and a row group's labels by their decoded size, before any page is read. Binary labels read as text."""
    pa = pytest.importorskip("pyarrow")
    columns = {c: [0.5, 1.0, 2.0] for c in FEATURES}
    _write_parquet(tmp_path / "list.parquet", columns | {"kind": pa.array([["a"] * 50, ["b"], ["c"]])})
    with pytest.raises(
        DataError, match=r"label column 'kind' holds list<element: string>; a label is one value per row"
    ):
        certify_file(csv_run, tmp_path / "list.parquet", tmp_path / "out.csv", progress=False)
    monkeypatch.setattr(traffic, "PARQUET_LABEL_GROUP_BYTES", 2**16)
    monkeypatch.setattr(traffic, "_parquet_batch", lambda *a: pytest.fail("a page was decoded"))
    _write_parquet(tmp_path / "big.parquet", columns | {"kind": pa.array(["x" * 2**17, "b", "c"]).dictionary_encode()})
    with pytest.raises(DataError, match=r"label column 'kind' holds 0\.1 MiB decoded in row group 0, more than the 0"):
        certify_file(csv_run, tmp_path / "big.parquet", tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists()
    monkeypatch.undo()
    _write_parquet(tmp_path / "bin.parquet", columns | {"kind": pa.array([b"spam", b"h\xffm", b" ham "])})
    certify_file(csv_run, tmp_path / "bin.parquet", tmp_path / "out.csv", progress=False)
    assert [r["label"] for r in _read(tmp_path / "out.csv")] == ["spam", "h\ufffdm", "ham"]
    # decimals (a SQL NUMBER export) and string views are labels too (review 27c F4: refused for a while)
    for kind in (
        pa.array([decimal.Decimal(1), decimal.Decimal(0), None], pa.decimal128(1, 0)),
        pa.array(["a", "b", "c"], pa.string_view()),
    ):
        _write_parquet(tmp_path / "ok.parquet", columns | {"kind": kind})
        certify_file(csv_run, tmp_path / "ok.parquet", tmp_path / "out.csv", progress=False)
        assert len(_read(tmp_path / "out.csv")) == 3


def test_a_parquet_label_too_long_is_refused_even_when_the_footer_understates_it(csv_run, tmp_path, monkeypatch):
    """The footer's sizes are the file's own word: with them understated, a 200 MiB label was decoded and written
    out (2.2 GB, review 27c F2). Each chunk's labels are measured in Arrow before they become text."""
    pa = pytest.importorskip("pyarrow")
    columns = {c: [0.5, 1.0, 2.0] for c in FEATURES}
    monkeypatch.setattr(traffic, "_check_parquet_sizes", lambda *a: None)  # (a footer that says nothing is large)
    wide = ["spam", "x" * 5000, "ham"]
    kinds = [pa.array(wide), pa.array(wide).dictionary_encode(), pa.array(wide, pa.string_view())]
    kinds += [pa.array([w.encode() for w in wide], pa.binary_view()), pa.array([b"x" * 5000] * 3, pa.binary(5000))]
    for kind in kinds:  # (views and fixed-size binary have no length kernel: review 27e F4)
        _write_parquet(tmp_path / "wide.parquet", columns | {"kind": kind})
        with pytest.raises(DataError, match=r"column 'kind' holds a label of 5000 bytes in the rows from index 0 on"):
            certify_file(csv_run, tmp_path / "wide.parquet", tmp_path / "out.csv", chunk=2, progress=False)
        assert not (tmp_path / "out.csv").exists()


def _read_parquet(path) -> list[dict]:
    return pytest.importorskip("pyarrow.parquet").read_table(path).to_pylist()


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ({"f2": [0.5, None, 1.0]}, r"index 1 \(row 2\), column 'f2': a missing value \(null\)"),
        ({"f2": [0.5, 1.0, math.nan]}, r"index 2 \(row 3\), column 'f2': nan is not a finite float32 number"),
        ({"f0": [0.5, -math.inf, 1.0]}, r"index 1 \(row 2\), column 'f0': -inf is not a finite float32 number"),
        ({"f1": [0.5, 1.0, 1e39]}, r"index 2 \(row 3\), column 'f1': 1e\+39 is not a finite float32 number"),
        ({"f1": [1, 2, 2**60 + 1]}, r"column 'f1': x holds integers beyond 2\*\*53"),
        ({"f3": ["1", "2", "3"]}, r"feature column\(s\) 'f3' \(string\) are not integers, floats or booleans"),
        ({"f3": None}, "the run's feature column\\(s\\) f3 are missing"),
    ],
)
def test_bad_parquet_values_are_one_line_naming_the_cell_and_write_nothing(csv_run, tmp_path, damage, message):
    columns = {c: [0.5, 1.0, 2.0] for c in FEATURES} | damage
    _write_parquet(tmp_path / "bad.parquet", {k: v for k, v in columns.items() if v is not None})
    (tmp_path / "out.csv").write_text("old results\n")
    with pytest.raises(DataError, match=message):
        certify_file(csv_run, tmp_path / "bad.parquet", tmp_path / "out.csv", chunk=2, progress=False)
    assert (tmp_path / "out.csv").read_text() == "old results\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["bad.parquet", "out.csv"]


def test_a_file_that_is_not_parquet_or_is_truncated_is_one_line(csv_run, tmp_path):
    (tmp_path / "text.parquet").write_text("f0,f1,f2,f3\n1,2,3,4\n")
    with pytest.raises(DataError, match=r"text\.parquet: not a readable Parquet file \("):
        certify_file(csv_run, tmp_path / "text.parquet", tmp_path / "out.csv", progress=False)
    x, _ = _rows(400, 13)
    _write_parquet(tmp_path / "whole.parquet", {c: x[:, i] for i, c in enumerate(FEATURES)}, row_group_size=100)
    data = (tmp_path / "whole.parquet").read_bytes()
    (tmp_path / "cut.parquet").write_bytes(data[: len(data) // 2] + data[-(len(data) // 8) :])  # footer kept
    with pytest.raises(
        DataError, match=r"cut\.parquet: (not a readable Parquet file|rows from index \d+ on are not readable)"
    ):
        certify_file(csv_run, tmp_path / "cut.parquet", tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists()


def test_a_column_the_run_reads_may_not_appear_twice_in_a_parquet_file(csv_run, tmp_path):
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    arrays = [pa.array([1.0, 2.0]) for _ in range(5)]
    pq.write_table(pa.Table.from_arrays(arrays, names=[*FEATURES, "f1"]), tmp_path / "twice.parquet")
    with pytest.raises(DataError, match=r"column\(s\) 'f1' appear more than once"):
        certify_file(csv_run, tmp_path / "twice.parquet", tmp_path / "out.csv", progress=False)


def test_parquet_rows_are_read_page_by_page_not_a_row_group_at_a_time(tmp_path):
    """One row group of 10⁶ rows × 4 float64 (32 MB): reading it in chunks of 1000 rows holds a few MB of
    Arrow memory at a time (pyarrow's default reader takes the whole row group: about 40 MB)."""
    pa = pytest.importorskip("pyarrow")
    n = 1_000_000
    g = np.random.default_rng(0)  # (random: incompressible, so the file holds the 32 MB)
    _write_parquet(tmp_path / "big.parquet", {c: g.random(n) for c in FEATURES}, row_group_size=n)
    base, peak, rows = pa.total_allocated_bytes(), 0, 0
    for batch in traffic.parquet_batches(tmp_path / "big.parquet", FEATURES, None, 1000):
        peak = max(peak, pa.total_allocated_bytes() - base)
        rows += len(batch.x)
        assert batch.labels is None and batch.x.shape == (min(1000, n - rows + len(batch.x)), 4)
    assert rows == n and peak < 16e6, peak / 1e6


def test_without_pyarrow_parquet_input_and_output_say_how_to_get_it(csv_run, tmp_path, monkeypatch):
    x, _ = _rows(3, 14)
    _write_csv(tmp_path / "new.csv", x)
    (tmp_path / "new.parquet").write_bytes(b"PAR1")
    monkeypatch.setitem(sys.modules, "pyarrow", None)  # import pyarrow now raises ImportError
    monkeypatch.setitem(sys.modules, "pyarrow.parquet", None)
    with pytest.raises(InputError, match=r"Parquet input needs pyarrow: pip install 'asymcert\[parquet\]'"):
        certify_file(csv_run, tmp_path / "new.parquet", tmp_path / "out.csv", progress=False)
    with pytest.raises(InputError, match=r"Parquet output needs pyarrow: pip install 'asymcert\[parquet\]'"):
        certify_file(csv_run, tmp_path / "new.csv", tmp_path / "out.parquet", progress=False)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.csv", "new.parquet"]


def test_a_parquet_file_needs_a_run_trained_on_named_columns(tmp_path):
    x, y = _rows(40, 15)
    np.savez(tmp_path / "train.npz", x=x.astype(np.float32), y=(y == "spam").astype(np.int64))
    train_run(
        {"npz": str(tmp_path / "train.npz"), "sensitive_class": 1},
        tmp_path / "run",
        train_overrides={"epochs": 1},
        progress=False,
        log=lambda m: None,
    )
    _write_parquet(tmp_path / "new.parquet", {c: x[:, i] for i, c in enumerate(FEATURES)})
    with pytest.raises(InputError, match="a Parquet file needs a run trained on named feature columns"):
        certify_file(tmp_path / "run", tmp_path / "new.parquet", tmp_path / "out.csv", progress=False)


def test_a_parquet_label_bomb_is_refused_from_the_footer_before_any_page_is_read(csv_run, tmp_path, monkeypatch):
    """A 3 MiB label that compresses to almost nothing: refused by the sizes the footer gives, before pyarrow
    decodes the page (a 400 MiB label in a 15 kB file took 2.45 GB and ended in a MemoryError)."""
    pa = pytest.importorskip("pyarrow")
    columns = {c: [0.5, 1.0, 2.0, 3.0] for c in FEATURES}
    _write_parquet(tmp_path / "bomb.parquet", columns | {"kind": pa.array(["a" * 3 * 2**20, "b", "c", "d"])})
    assert (tmp_path / "bomb.parquet").stat().st_size < 2**18  # (snappy, pyarrow's default: 150 kB)
    monkeypatch.setattr(traffic, "_parquet_batch", lambda *a: pytest.fail("a page was decoded"))
    with pytest.raises(DataError, match=r"column 'kind' holds 3\.0 MiB decoded in row group 0 of 4 rows"):
        certify_file(csv_run, tmp_path / "bomb.parquet", tmp_path / "out.csv", progress=False)
    assert not (tmp_path / "out.csv").exists()
    _write_parquet(tmp_path / "ok.parquet", columns | {"kind": ["spam", "ham", "ham", "spam"]})
    monkeypatch.undo()
    assert certify_file(csv_run, tmp_path / "ok.parquet", tmp_path / "out.csv", progress=False).n_inputs == 4


def test_npz_rows_with_nan_or_inf_are_named_by_file_and_index(csv_run, tmp_path):
    """certify --input said only 'inputs contain NaN or Inf (first bad rows: [0])', no file, counting from 0 where
    the domain warning counts from 1 (walkthrough 26c F4): the file, the results index and the row, in one line."""
    x, _ = _rows(10, 16)
    x[7, 2] = np.nan
    np.savez(tmp_path / "new.npz", x=x)
    with pytest.raises(DataError, match=r"new\.npz: x\[7\] \(index 7, row 8\) holds NaN or ±inf"):
        certify_file(csv_run, tmp_path / "new.npz", tmp_path / "out.csv", chunk=4, progress=False)
    x[7, 2], x[1, 0] = 1.0, -np.inf
    np.savez(tmp_path / "new.npz", x=x)
    with pytest.raises(DataError, match=r"x\[1\] \(index 1, row 2\)"):
        certify_file(csv_run, tmp_path / "new.npz", tmp_path / "out.csv", chunk=4, progress=False)
    assert not (tmp_path / "out.csv").exists()


def test_run_json_feature_names_that_differ_from_the_models_are_refused(csv_run, tmp_path):
    """run.json's feature_names were trusted: swapping two of them made certify --input read the wrong columns
    with exit 0 (hostile-file audit 26a F12). The model file keeps the names it was trained on; a run folder whose
    run.json says otherwise is refused, naming the first difference."""
    run = tmp_path / "run"
    shutil.copytree(csv_run, run)
    x, _ = _rows(6, 17)
    _write_csv(tmp_path / "new.csv", x)
    certify_file(run, tmp_path / "new.csv", tmp_path / "ok.csv", progress=False)
    record = json.loads((run / "run.json").read_text())
    record["feature_names"] = ["f1", "f0", "f2", "f3"]
    (run / "run.json").write_text(json.dumps(record))
    with pytest.raises(CheckpointError, match=r"feature_names differ .* position 0 is 'f1' there, 'f0' in the model"):
        certify_file(run, tmp_path / "new.csv", tmp_path / "r.csv", progress=False)
    res = CliRunner().invoke(main, ["certify", str(run), "--quiet"])
    assert res.exit_code == EXIT_REFUSED and "feature_names differ" in res.output
    assert not (tmp_path / "r.csv").exists()


def test_a_run_resumed_on_a_csv_whose_header_was_renamed_is_refused_before_anything_is_written(tmp_path):
    """A resumed session wrote the renamed columns into run.json before its model file held them; interrupted
    again, the folder was refused by the feature-name check for good (review 26c F1). Renamed columns are now
    another run's: refused at the start, the folder left as it was."""
    spec = _training_csv(tmp_path / "t.csv", 120, 18)
    train_run(spec, tmp_path / "run", train_overrides={"epochs": 1}, progress=False, log=lambda m: None)
    before = {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()}
    text = (tmp_path / "t.csv").read_text()
    (tmp_path / "t.csv").write_text(text.replace("f1", "g1", 1))
    with pytest.raises(RunFolderConflictError, match="holds a run with other feature columns"):
        train_run(spec, tmp_path / "run", train_overrides={"epochs": 1}, progress=False, log=lambda m: None)
    assert {p.name: p.read_bytes() for p in (tmp_path / "run").iterdir() if p.is_file()} == before
    assert read_run(tmp_path / "run").feature_names == FEATURES  # and the folder still reads


def test_certify_input_under_torchrun_writes_once_from_one_process(csv_run, tmp_path):
    """Walkthrough 28d: under torchrun both processes certified the file and fought over its lock (exit 1, a
    traceback from torchrun). One process certifies it now, and says so."""
    x, y = _rows(20, 2)
    _write_csv(tmp_path / "new.csv", x, y)
    args = [
        "certify",
        str(csv_run),
        "--input",
        str(tmp_path / "new.csv"),
        "--out",
        str(tmp_path / "out.csv"),
        "--quiet",
    ]
    res = torchrun_asymcert(args, timeout=300)
    assert res.returncode == 0, res.stderr[-2000:]
    assert "certify --input runs in one process" in res.stderr and "Traceback" not in res.stderr
    assert len(_read(tmp_path / "out.csv")) == 20


def test_results_and_their_record_change_together_when_stopped_between_them(csv_run, tmp_path, monkeypatch):
    """A signal after the results were renamed into place and before their record was written left new results
    beside the old record, and the line said nothing had changed (audit 29a F3): the record is now written before
    either rename, and the two renames happen with SIGINT held back, so Ctrl-C there lands after both."""
    x, _ = _rows(7, 8)
    _write_csv(tmp_path / "old.csv", x[:3])
    _write_csv(tmp_path / "new.csv", x)
    out = tmp_path / "r.csv"
    certify_file(csv_run, tmp_path / "old.csv", out, progress=False)
    real = checkpoint.os.replace
    renamed = []

    def replace_then_interrupt(src, dst):
        real(src, dst)
        renamed.append(Path(dst).name)
        if len(renamed) == 1:
            os.kill(os.getpid(), signal.SIGINT)  # (between the results' rename and the record's)

    monkeypatch.setattr(checkpoint.os, "replace", replace_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        certify_file(csv_run, tmp_path / "new.csv", out, progress=False)
    assert renamed == ["r.csv", "r.csv.json"]
    record = read_results_record(out)
    assert record is not None and record.n_inputs == 7 and len(_read(out)) == 7


def test_a_record_that_cannot_be_written_leaves_the_earlier_results_and_record(csv_run, tmp_path, monkeypatch):
    """A full disk while writing the record replaced the results first and left the old record beside them, while
    the line said 'any previous version is left intact' (audit 29a F4): now neither file changes."""
    x, _ = _rows(7, 9)
    _write_csv(tmp_path / "old.csv", x[:3])
    _write_csv(tmp_path / "new.csv", x)
    out = tmp_path / "r.csv"
    certify_file(csv_run, tmp_path / "old.csv", out, progress=False)
    before = out.read_bytes(), record_path(out).read_bytes()
    real = Path.write_text

    def full_for_records(self, text, *args, **kwargs):
        if self.name.startswith(".r.csv.json."):
            raise OSError(errno.ENOSPC, "No space left on device")
        return real(self, text, *args, **kwargs)

    monkeypatch.setattr(Path, "write_text", full_for_records)
    with pytest.raises(WriteError, match="No space left on device; any previous version is left intact"):
        certify_file(csv_run, tmp_path / "new.csv", out, progress=False)
    assert (out.read_bytes(), record_path(out).read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new.csv", "old.csv", "r.csv", "r.csv.json"]


def test_a_refusal_in_a_later_chunk_leaves_no_new_folders(csv_run, tmp_path):
    """--out into folders that did not exist, and a bad value in a later chunk: refused, and the folders made for
    the results are gone again (audit 29a F7: a refused command changes nothing on disk)."""
    x, _ = _rows(9, 10)
    x[7, 1] = math.inf
    _write_csv(tmp_path / "late_bad.csv", x)
    out = tmp_path / "nd" / "sub" / "r.csv"
    with pytest.raises(DataError, match="row 8 "):
        certify_file(csv_run, tmp_path / "late_bad.csv", out, chunk=2, progress=False)
    assert not (tmp_path / "nd").exists()
    (tmp_path / "nd").mkdir()  # a folder that was there before stays
    with pytest.raises(DataError):
        certify_file(csv_run, tmp_path / "late_bad.csv", out, chunk=2, progress=False)
    assert (tmp_path / "nd").is_dir() and not (tmp_path / "nd" / "sub").exists()


@pytest.mark.parametrize("where", ["header", "row"])
def test_a_csv_row_too_long_to_be_feature_vectors_is_refused_with_bounded_memory(tmp_path, monkeypatch, where):
    """One line of 2·10⁶ fields (4 MB of "1,"): refused as soon as MAX_CSV_ROW_CHARS characters are read (here
    lowered to 10⁵), not after the csv reader built the whole row (6.5 bytes a character: a 200 MiB line took
    1.3 GB before its fields were counted, the CLI fuzz of session 32); training's reader too."""
    assert user_module.MAX_CSV_ROW_CHARS == 2**24  # the documented default
    path = tmp_path / "wide.csv"
    huge = ",".join(["1"] * 2_000_000) + "\n"
    path.write_text(huge if where == "header" else ",".join([*FEATURES, "kind"]) + "\n" + huge)
    monkeypatch.setattr(user_module, "MAX_CSV_ROW_CHARS", 100_000)
    line = 1 if where == "header" else 2
    tracemalloc.start()
    try:
        with pytest.raises(DataError, match=f"wide.csv: line {line}: a row of more than 100,000 characters"):
            next(csv_batches(path, FEATURES, None, 10))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 2_000_000, f"peak {peak / 1e6:.1f} MB reading a 4 MB line with a 100,000-character limit"
    with pytest.raises(DataError, match=f"wide.csv: line {line}: a row of more than 100,000 characters"):
        read_csv_table(path, "kind")


@pytest.mark.skipif(np.dtype(np.longdouble).itemsize <= 8, reason="longdouble is float64 on this platform")
def test_npz_floats_longer_than_64_bits_are_one_data_error(tmp_path):
    """x of float128 (np.longdouble) reached torch.from_numpy, a TypeError traceback and exit 1 (CLI fuzz,
    session 32); rounding it to float64 would move the point the radii are measured from, so it is refused."""
    np.savez(tmp_path / "long.npz", x=np.ones((5, 4), dtype=np.longdouble))
    with pytest.raises(DataError, match=r"long.npz: x holds float128 numbers; save them as float64 or float32"):
        next(npz_batches(tmp_path / "long.npz", 10, [4]))


@pytest.fixture(scope="module")
def ovr_run(tmp_path_factory):
    root = tmp_path_factory.mktemp("traffic_ovr")
    spec = _training_csv(root / "train.csv", 240, 3)
    model = {"kind": "one-vs-rest-convex", "convex": {"kind": "icnn", "widths": [8, 4]}}
    train_run(spec, root / "run", train_overrides={"epochs": 3}, model_overrides=model, progress=False, log=print)
    return root / "run"


def test_one_vs_rest_rows_give_the_predicted_class_its_score_flag_and_radius(ovr_run, tmp_path):
    """Session 34 review: one-vs-rest results wrote the predicted class index as `flagged`, a NaN score, and
    their record called them the sensitive class's flag and radius."""
    x, y = _rows(200, 4)
    _write_csv(tmp_path / "new.csv", x, y)
    done = certify_file(ovr_run, tmp_path / "new.csv", tmp_path / "out.csv", chunk=64, progress=False)
    rows = _read(tmp_path / "out.csv")
    assert list(rows[0]) == ["index", "predicted", "score", "flagged", "radius_l1", "radius_l2", "radius_linf", "label"]
    cert = asymcert.certify(asymcert.load(ovr_run), torch.tensor(x), batch_size=64)
    own = cert.extra["scores"].gather(1, cert.predicted[:, None])[:, 0]
    assert [int(r["predicted"]) for r in rows] == cert.predicted.tolist()
    assert [int(r["flagged"]) for r in rows] == (own > 0).long().tolist() == cert.predicted_flagged().long().tolist()
    assert [float(r["score"]) for r in rows] == pytest.approx(own.double().tolist(), rel=1e-6)
    assert {int(r["predicted"]) for r in rows} == {0, 1} and 0 < done.n_flagged == int((own > 0).sum()) < 200
    for p, col in ((1.0, "radius_l1"), (2.0, "radius_l2"), (math.inf, "radius_linf")):
        assert [float(r[col]) for r in rows] == cert.radii[p].tolist()
        assert all(float(r[col]) == 0 for r in rows if r["flagged"] == "0")
    record = read_results_record(tmp_path / "out.csv")
    assert record is not None and "argmax" in record.columns["predicted"]
    assert "predicted class flags" in record.columns["flagged"] and "not certified" in record.columns["radius_l2"]


def test_multiclass_decision_rows_say_every_input_is_decided_and_show_the_margin():
    """A multiclass argmax certificate (the ℓ∞-dist net's) has a predicted column, its margin as score, flagged 1."""
    cert = Certificate(
        predicted=torch.tensor([2, 0, 1]),
        radii={math.inf: torch.tensor([0.5, 0.0, 0.25], dtype=torch.float64)},
        method="linf-dist",
        guarantee="decision",
        binary=False,
        extra={"margin": torch.tensor([1.0, 0.0, 0.5])},
    )
    columns = traffic._result_columns(cert, 10, (math.inf,), Batch(torch.zeros(3, 2), None))
    assert columns == {
        "index": [10, 11, 12],
        "predicted": [2, 0, 1],
        "score": [1.0, 0.0, 0.5],
        "flagged": [1, 1, 1],
        "radius_linf": [0.5, 0.0, 0.25],
    }
    meanings = traffic.column_meanings("raw input units", (math.inf,), False, False, traffic.result_kind(cert))
    assert list(meanings) == list(columns) and "changes the predicted class" in meanings["radius_linf"]


def test_smoothed_rows_say_their_chance_and_abstentions(csv_run, tmp_path):
    """A relu-smoothing run's results said NaN scores and a radius that holds outright; its radii hold with
    probability ≥ 1 − alpha over the sampling, and the certifier abstains on some inputs."""
    spec = _training_csv(tmp_path / "train.csv", 120, 5)
    model = {"kind": "relu-smoothing", "widths": [16]}
    train_run(spec, tmp_path / "run", train_overrides={"epochs": 2}, model_overrides=model, progress=False, log=print)
    x, y = _rows(40, 6)
    _write_csv(tmp_path / "new.csv", x, y)
    certify_file(tmp_path / "run", tmp_path / "new.csv", tmp_path / "out.csv", chunk=16, progress=False)
    rows = _read(tmp_path / "out.csv")
    assert list(rows[0]) == ["index", "score", "flagged", "abstained", *[f"radius_{n}" for n in NORMS], "label"]
    p_lower = [float(r["score"]) for r in rows]
    assert all(0 <= p <= 1 for p in p_lower) and any(p > 0.5 for p in p_lower)
    for r, p in zip(rows, p_lower, strict=True):
        certified = float(r["radius_l2"]) > 0
        assert certified <= (p > 0.5 and r["abstained"] == "0" and r["flagged"] == "1")
    record = read_results_record(tmp_path / "out.csv")
    assert record is not None and "lower confidence bound" in record.columns["score"]
    assert record.columns["radius_l2"].startswith("with probability ≥ 1 − 0.001 over the certifier's sampling")
    assert "abstains" in record.columns["abstained"]


def test_csv_booleans_are_read_as_one_and_zero_in_traffic_too(tmp_path):
    """pandas writes bool columns as True/False: read as 1/0, as training reads them (README review s34 F3)."""
    (tmp_path / "b.csv").write_text("f0,f1,f2,f3\n1,True,0.5,false\n2,FALSE,1,true\n")
    (batch,) = list(csv_batches(tmp_path / "b.csv", FEATURES, None, 16))
    assert batch.x.tolist() == [[1.0, 1.0, 0.5, 0.0], [2.0, 0.0, 1.0, 1.0]]
