"""The user's own data: .npz, CSV and image folders → validated, split, relabelled tasks."""

from __future__ import annotations

import io
import pathlib
import pickle
import re
import struct
import tracemalloc
import warnings
import zipfile
import zlib

import numpy as np
import pytest
import torch
from hypothesis import given
from hypothesis import strategies as st

from asymcert.checkpoint import model_config
from asymcert.data import images as images_module
from asymcert.data import task_from_csv, task_from_image_folder, task_from_npz
from asymcert.data import user as user_module
from asymcert.data.images import read_images
from asymcert.data.user import NpyMember, NpzStream, read_csv_table, read_npz, read_npz_named
from asymcert.errors import ConfigError, DataError, UnknownNameError
from asymcert.pipeline import plan_training


def _tabular(n_per_class=(20, 15, 10), dim=4, seed=0):
    rng = np.random.default_rng(seed)
    y = np.concatenate([np.full(n, c) for c, n in enumerate(n_per_class)])
    x = rng.normal(size=(len(y), dim)) * np.array([1.0, 10.0, 100.0, 0.1])[:dim] + y[:, None]
    return x, y


def _splits(task):
    data = task.load(None)
    return data, (data.train, data.val, data.test)


def test_npz_tabular_all_other_labels(tmp_path):
    x, y = _tabular()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    task = task_from_npz(tmp_path / "d.npz", sensitive_class=2)
    data, splits = _splits(task)
    assert task.name == "d" and task.binary
    assert data.class_names == ("not 2", "2") and data.input_shape == (4,)
    assert sum(len(s) for s in splits) == 45
    assert sum(int(s.y.sum()) for s in splits) == 10  # class 2 → 1
    for split in splits:
        assert split.x.dtype == torch.float32 and set(split.y.tolist()) == {0, 1}
    # per class: test 20% and val 20% of the rest (class 2: 2 test, 2 val, 6 train)
    assert [int(s.y.sum()) for s in splits] == [6, 2, 2]
    # raw units kept: the x rows are exactly rows of the file
    rows = {tuple(np.float32(r)) for r in x}
    assert all(tuple(r) in rows for r in data.test.x.numpy())
    assert task.model["feature_map"] == [{"kind": "standardize"}]
    assert set(data.meta) == {"feature_mean", "feature_scale"}
    torch.testing.assert_close(data.meta["feature_scale"], data.train.x.std(0, unbiased=False))
    assert set(task.report_radii) == {1, 2, float("inf")}


def test_npz_other_class_and_string_label(tmp_path):
    x, y = _tabular()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    data, splits = _splits(task_from_npz(tmp_path / "d.npz", sensitive_class="1", other_class=0, name="mine"))
    assert data.class_names == ("0", "1")
    assert sum(len(s) for s in splits) == 35 and sum(int(s.y.sum()) for s in splits) == 15


def test_splits_are_seeded(tmp_path):
    x, y = _tabular()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    a, _ = _splits(task_from_npz(tmp_path / "d.npz", 2))
    b, _ = _splits(task_from_npz(tmp_path / "d.npz", 2))
    c, _ = _splits(task_from_npz(tmp_path / "d.npz", 2, seed=1))
    assert torch.equal(a.train.x, b.train.x) and torch.equal(a.test.y, b.test.y)
    assert not torch.equal(a.train.x, c.train.x)


@pytest.mark.parametrize(
    "shape, expected", [((30, 8, 8), (1, 8, 8)), ((30, 8, 8, 3), (3, 8, 8)), ((30, 3, 8, 8), (3, 8, 8))]
)
def test_npz_images_get_channel_first(tmp_path, shape, expected):
    rng = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", x=rng.integers(0, 256, shape).astype(np.uint8), y=np.arange(30) % 2)
    task = task_from_npz(tmp_path / "img.npz", 1)
    assert task.load(None).input_shape == expected
    assert task.model["feature_map"] == [{"kind": "shift"}] and task.model["convex"]["kind"] == "icnn"
    assert task.report_radii[float("inf")][0] > 1.0  # radii scaled to the 0..255 pixel range


def test_npz_string_labels(tmp_path):
    x, y = _tabular((8, 8))
    names = np.array(["cat", "dog"])[y]
    np.savez(tmp_path / "s.npz", x=x, y=names)
    data, _ = _splits(task_from_npz(tmp_path / "s.npz", "dog"))
    assert data.class_names == ("not dog", "dog")


def test_unknown_sensitive_class_lists_labels(tmp_path):
    x, y = _tabular()
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"sensitive class 7 not among the labels found: 0, 1, 2"):
        task_from_npz(tmp_path / "d.npz", 7)
    with pytest.raises(DataError, match=r"other class .9. has no example"):
        task_from_npz(tmp_path / "d.npz", 1, other_class=9)


def test_nan_and_inf_rows_are_named(tmp_path):
    x, y = _tabular()
    x[5, 1], x[17, 0] = np.nan, np.inf
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match="example 5, example 17"):
        task_from_npz(tmp_path / "d.npz", 1)


def test_too_few_examples_of_a_class(tmp_path):
    x, y = _tabular((10, 2))
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match="only 2 example"):
        task_from_npz(tmp_path / "d.npz", 1)


@pytest.mark.parametrize(
    "content, message",
    [
        ({"inputs": np.zeros((4, 2)), "y": np.zeros(4)}, r"no array named x .*'inputs'"),
        ({"x": np.zeros((4, 2)), "y": np.zeros(3)}, r"labels must have shape \(4,\)"),
        ({"x": np.zeros(4), "y": np.zeros(4)}, r"shape \(N, \.\.\.\)"),
        ({"x": np.array([[{"a": 1}]] * 4, dtype=object), "y": np.zeros(4)}, "'x' cannot be read without unpickling"),
        (
            {"x": np.zeros((4, 2)), "y": np.array([None] * 4, dtype=object)},
            r"'y' cannot be read without unpickling.*dtype=str\)",
        ),
        ({}, r"no array named x or y \(arrays found: \[\]\)"),
        ({"x": np.zeros((0, 3)), "y": np.zeros(0)}, "no examples"),
        ({"x": np.zeros((4, 0)), "y": np.zeros(4)}, r"shape \(4, 0\) have no features"),
        (
            {"x": np.zeros((4, 2)), "y": np.array([0.0, 1.0, np.nan, 1.0])},
            r"labels contain NaN or Inf \(examples \[2\]\)",
        ),
        ({"x": np.zeros((4, 2), dtype=complex), "y": np.zeros(4)}, "inputs must be numbers"),
    ],
)
def test_bad_npz_contents(tmp_path, content, message):
    np.savez(tmp_path / "bad.npz", **content)
    with pytest.raises(DataError, match=message):
        task_from_npz(tmp_path / "bad.npz", 0)


def test_not_an_npz(tmp_path):
    (tmp_path / "x.npz").write_bytes(b"plain text")
    with pytest.raises(DataError, match=r"x\.npz: not an \.npz archive \(a zip of \.npy arrays\)"):
        task_from_npz(tmp_path / "x.npz", 0)
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04 damaged")
    with pytest.raises(DataError, match=r"not a readable .npz"):
        task_from_npz(tmp_path / "z.npz", 0)
    np.save(tmp_path / "one.npy", np.zeros((4, 2)))  # np.load gives an array, not an archive
    with pytest.raises(DataError, match=r"a single array \(.npy\), not an .npz archive"):
        task_from_npz(tmp_path / "one.npy", 0)
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"x": np.zeros(3)}))  # a pickle is never unpickled
    with pytest.raises(DataError, match=r"not an \.npz archive"):
        task_from_npz(tmp_path / "p.npz", 0)


@pytest.mark.parametrize("member", ["x", "y"])
def test_a_zip_member_that_is_not_npy_is_named_so_for_training_and_traffic(tmp_path, member):
    """A member holding a pickle (or damaged bytes) was read by np.load as raw bytes: "found ()" for x."""
    path = tmp_path / "p.npz"
    np.savez(path, x=np.zeros((4, 2)), y=np.zeros(4))
    with zipfile.ZipFile(path) as archive:
        members = {name: archive.read(name) for name in archive.namelist()}
    members[f"{member}.npy"] = pickle.dumps({"a": 1})
    with zipfile.ZipFile(path, "w") as archive:
        for name, body in members.items():
            archive.writestr(name, body)
    message = rf"p\.npz: member '{member}' is not a NumPy array file \(damaged, or not \.npy\)"
    with pytest.raises(DataError, match=message):
        task_from_npz(path, 0)
    with pytest.raises(DataError, match=message):
        NpzStream(path, labels_required=True)


def test_values_beyond_float32_are_named(tmp_path):
    """1e39 fits float64 but becomes inf in the float32 models train in: refused, naming where it is."""
    x, y = _tabular()
    x[7, 2] = -5e38
    np.savez(tmp_path / "d.npz", x=x, y=y)
    with pytest.raises(DataError, match=r"example 7, feature 2: -5e\+38 is beyond the float32 range"):
        task_from_npz(tmp_path / "d.npz", 1)
    x, y = _tabular()
    x[3, 0] = np.finfo(np.float32).max  # the largest float32 is fine
    np.savez(tmp_path / "ok.npz", x=x, y=y)
    assert torch.isfinite(task_from_npz(tmp_path / "ok.npz", 1).load(None).train.x).all()
    images = np.random.default_rng(0).random((30, 4, 4))
    images[3, 1, 2] = 1e39
    np.savez(tmp_path / "img.npz", x=images, y=np.arange(30) % 2)
    with pytest.raises(DataError, match=r"example 3, index \(1, 2\): 1e\+39"):
        task_from_npz(tmp_path / "img.npz", 1)


def test_one_class_data_is_refused(tmp_path):
    x, _ = _tabular()
    np.savez(tmp_path / "d.npz", x=x, y=np.ones(len(x)))
    with pytest.raises(DataError, match=r"other class .* has no example; labels found: 1.0"):
        task_from_npz(tmp_path / "d.npz", 1)


# ------------------------------------------------------------------ CSV


def _write_csv(path, x, labels, header=("a", "b", "label", "c")):
    lines = [",".join(header)]
    for row, label in zip(x, labels):
        lines.append(f"{row[0]},{row[1]},{label},{row[2]}")
    path.write_text("\n".join(lines) + "\n")


def test_csv_label_column_by_name(tmp_path):
    x, y = _tabular((12, 12), dim=3)
    _write_csv(tmp_path / "t.csv", x, np.array(["benign", "malignant"])[y])
    task = task_from_csv(tmp_path / "t.csv", "label", "malignant")
    data, splits = _splits(task)
    assert data.class_names == ("not malignant", "malignant") and data.input_shape == (3,)
    assert data.meta["feature_names"] == ["a", "b", "c"]
    assert sum(int(s.y.sum()) for s in splits) == 12
    rows = {tuple(np.float32(r)) for r in x}
    assert all(tuple(r) in rows for r in data.train.x.numpy())


def test_csv_numeric_labels_match_ints(tmp_path):
    x, y = _tabular((10, 10), dim=3)
    _write_csv(tmp_path / "t.csv", x, [f"{v:.1f}" for v in y])  # "1.0" in the file, 1 asked for
    _, splits = _splits(task_from_csv(tmp_path / "t.csv", "label", 1))
    assert sum(int(s.y.sum()) for s in splits) == 10


@pytest.mark.parametrize("cell", ["1_0", "1_000.5", "\u0661\u0662", "\uff11\uff12", "0x10", "1e", "--1", "1.2.3"])
def test_csv_numbers_are_ascii_decimals(tmp_path, cell):
    """Python's float() reads "1_0" as 10 and Arabic-Indic or full-width digits as numbers: such a cell is text."""
    (tmp_path / "t.csv").write_text(f"a,b,label\n1,2,x\n3,{cell},y\n", encoding="utf-8")
    with pytest.raises(DataError, match=r"row 2 \(line 3\), column 'b': .* is not a number"):
        read_csv_table(tmp_path / "t.csv", "label")


def test_csv_booleans_read_as_one_and_zero(tmp_path):
    """Session 34 README review F3: pandas writes a bool column as True/False, which was refused as text."""
    (tmp_path / "t.csv").write_text("a,vpn,label\n1,True,x\n2,false,y\n3, TRUE ,x\n", encoding="utf-8")
    x, _, features, _ = read_csv_table(tmp_path / "t.csv", "label")
    assert features == ["a", "vpn"] and x[:, 1].tolist() == [1.0, 0.0, 1.0]


@given(st.floats(allow_nan=False, allow_infinity=False, width=32))
def test_csv_reads_every_float_as_written(value):
    """Every float32 as Python, NumPy and C print it (repr, %.9g, %e, signed) is read back exactly."""
    for text in (repr(value), f"{value:.9g}", f"{value:e}", f"{value:+.3f}", f" {value!r} "):
        assert user_module.csv_number(text, pathlib.Path("f.csv"), "row 1", "a") == float(text)


def test_csv_missing_value_names_the_row(tmp_path):
    (tmp_path / "t.csv").write_text("a,b,label\n1,2,x\n3,,y\n")
    with pytest.raises(DataError, match=r"row 2 \(line 3\) is missing a value in column 'b'"):
        task_from_csv(tmp_path / "t.csv", "label", "x")


@pytest.mark.parametrize(
    "text, message",
    [
        ("a,b,label\n1,2,x\n3,abc,y\n", r"row 2 \(line 3\), column 'b': 'abc' is not a number"),
        ("a,b,label\n1,2,x\n3,4\n", r"row 2 \(line 3\) has 2 fields"),
        ("a,b,label\n1,2,x\n1,inf,y\n", r"NaN or infinite values in row 2 \(line 3\)"),
        ("a,b,label\n1,2,\n", r"row 1 \(line 2\) has no label"),
        ("a,b,label\n", "no data rows"),
        ("", "empty file"),
        ("a,b,target\n1,2,x\n", r"no column 'label'; columns are: a, b, target"),
        ("label\nx\ny\nx\n", r"no feature columns besides the label column 'label' \(it is the only column\)"),
        ("a,b,label\n1,2,x\n1,1e39,y\n", r"row 2 \(line 3\), column 'b': 1e\+39 is beyond the float32 range"),
        ("a, ,label\n1,2,x\n", r"column\(s\) 2 of the header have no name"),
        ("a,b,a,label\n1,2,3,x\n", r"column\(s\) 'a' appear more than once in the header"),
        ("a,b,label,label\n1,2,x,y\n", r"column\(s\) 'label' appear more than once in the header"),
    ],
)
def test_csv_errors(tmp_path, text, message):
    (tmp_path / "t.csv").write_text(text)
    with pytest.raises(DataError, match=message):
        task_from_csv(tmp_path / "t.csv", "label", "x")


# ------------------------------------------------------------------ image folders

Image = pytest.importorskip("PIL.Image")


def _image_folder(root, classes, size=(10, 10), mode="L"):
    rng = np.random.default_rng(0)
    for name, count in classes.items():
        (root / name).mkdir(parents=True)
        for k in range(count):
            shape = size if mode == "L" else (*size, 3)
            Image.fromarray(rng.integers(0, 256, shape, dtype=np.uint8), mode=mode).save(root / name / f"{k}.png")
    return root


def test_image_folder_task(tmp_path):
    root = _image_folder(tmp_path / "pics", {"cats": 10, "dogs": 10, "birds": 5})
    task = task_from_image_folder(root, "cats", other_class="dogs")
    data, splits = _splits(task)
    assert task.name == "pics" and data.class_names == ("dogs", "cats") and data.input_shape == (1, 10, 10)
    assert sum(len(s) for s in splits) == 20 and sum(int(s.y.sum()) for s in splits) == 10
    assert float(data.train.x.min()) >= 0.0 and float(data.train.x.max()) <= 1.0
    everyone = task_from_image_folder(root, "cats").load(None)
    assert len(everyone.train) + len(everyone.val) + len(everyone.test) == 25


def test_image_folder_rgb(tmp_path):
    root = _image_folder(tmp_path / "pics", {"a": 6, "b": 6}, mode="RGB")
    assert task_from_image_folder(root, "a").load(None).input_shape == (3, 10, 10)


def test_image_folder_mixed_sizes_need_size(tmp_path):
    root = _image_folder(tmp_path / "pics", {"a": 5})
    _image_folder(tmp_path / "pics", {"b": 5}, size=(12, 8))
    with pytest.raises(DataError, match=r"crop or resize them to one size first \(in Python, task_from_image_folder"):
        task_from_image_folder(root, "a")
    assert task_from_image_folder(root, "a", size=9).load(None).input_shape == (1, 9, 9)


def _png_header_only(path, width, height):
    """A PNG whose header claims width × height RGB pixels, holding one row of them (a few hundred bytes)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, 8, 2, 0, 0, 0)
    row = zlib.compress(b"\x00" * (1 + 3 * width), 9)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", row) + chunk(b"IEND", b""))
    return path


def test_an_image_of_too_many_pixels_is_refused_from_its_header_before_decoding(tmp_path, monkeypatch):
    """A 0.5 MB PNG of 17000 × 10000 pixels was decoded whole (1.47 GB) to certify one 8 × 8 input."""
    big = _png_header_only(tmp_path / "x" / "big.png", 5000, 4000)  # 2·10⁷ pixels > MAX_IMAGE_PIXELS
    monkeypatch.setattr(Image.Image, "load", lambda self: pytest.fail("the image was decoded"))
    with pytest.raises(DataError) as info:
        read_images([big], "L", 8)  # as certify --input FOLDER reads a chunk
    assert str(info.value) == (
        f"{big}: 5000×4000 = 20000000 pixels, more than the 16777216 asymcert decodes; "
        "shrink the image, or remove this file"
    )


def test_training_image_folders_are_held_to_the_pixel_limit(tmp_path, monkeypatch):
    root = _image_folder(tmp_path / "pics", {"a": 5, "b": 5})  # 10 × 10 pixels each
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 99)
    with pytest.raises(DataError, match=r"0\.png: 10×10 = 100 pixels, more than the 99 asymcert decodes"):
        task_from_image_folder(root, "a", size=8).load(None)
    monkeypatch.setattr(images_module, "MAX_IMAGE_PIXELS", 100)
    assert task_from_image_folder(root, "a", size=8).load(None).input_shape == (1, 8, 8)


def test_a_large_first_image_is_refused_by_size_before_room_for_every_image_is_taken(tmp_path):
    """Review s34 F2: a 4096 × 4096 RGB image sorted first among 1000 small ones made read_images ask for
    (1000, 3, 4096, 4096) bytes (47 GiB: a MemoryError traceback) before it looked at the second image's size.
    Every size now comes from the headers first: the one-line refusal, with no image decoded."""
    root = _image_folder(tmp_path / "pics", {"a": 40, "b": 40})  # 10 × 10 each
    Image.fromarray(np.zeros((1024, 1024, 3), np.uint8)).save(root / "a" / "0 big.png")  # sorts first (" " < ".")
    tracemalloc.start()
    try:
        with pytest.raises(DataError) as info:
            task_from_image_folder(root, "a")
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert str(info.value).startswith(f"{root / 'a' / '0.png'} is 10×10 but {root / 'a' / '0 big.png'} is 1024×1024")
    assert "images of different sizes" in str(info.value)
    assert peak < 16 * 2**20  # (before: 81 × 3 MiB asked for, and the 3 MiB image decoded)


def _png_file(path, width, height, depth, colour_type, row):
    """A real PNG (signature, IHDR, IDAT, IEND) of ``height`` rows of ``row`` (bytes, each row's filter byte
    added), ``depth`` bits a channel, PNG colour type ``colour_type`` (0 grey, 2 RGB, 4 grey+alpha, 6 RGBA)."""

    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)

    header = struct.pack(">IIBBBBB", width, height, depth, colour_type, 0, 0, 0)
    pixels = zlib.compress((b"\x00" + row) * height)
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", pixels) + chunk(b"IEND", b""))
    return path


def _deep_image(path):
    """An 8 × 8 image of 16 bits a channel that Pillow opens in an 8-bit mode, by its name: rgb16.png (RGB),
    la16.png (grey+alpha, opened as RGBA), rgba16.png, rgb16.ppm (P6, maximum value 65535)."""
    if path.suffix == ".ppm":
        return path.write_bytes(b"P6 8 8 65535\n" + struct.pack(">HHH", 1000, 200, 65000) * 64)
    colour_type, value = {"rgb16": (2, (1000, 200, 65000)), "la16": (4, (2000, 65535)), "rgba16": (6, (1, 2, 3, 4))}[
        path.stem
    ]
    return _png_file(path, 8, 8, 16, colour_type, struct.pack(f">{len(value)}H", *value) * 8)


@pytest.mark.parametrize("name", ["rgb16.png", "la16.png", "rgba16.png", "rgb16.ppm"])
def test_16_bit_images_that_pillow_opens_in_an_8_bit_mode_are_refused(tmp_path, name):
    """Review s34 F3: a 16-bit RGB or grey+alpha PNG was trained on by its values' high bytes (1000/65535 → 3/255),
    and a 16-bit grey+alpha one turned a grayscale folder into an RGB run (Pillow opens it as RGBA); a 16-bit PPM
    was rounded to 8 bits. The README refuses images of 16-bit pixels: now by the file's own depth, not the mode."""
    root = _image_folder(tmp_path / "pics", {"a": 4, "b": 4}, size=(8, 8))
    deep = root / "b" / name
    _deep_image(deep)
    with pytest.raises(DataError) as info:
        task_from_image_folder(root, "a")
    assert str(info.value).startswith(f"{deep}: pixels of more than 8 bits (")
    why = r"\((stored as (RGB|LA|RGBA);16B, which Pillow opens as mode RGBA?|maximum value 65535)\)"
    assert re.search(why, str(info.value))
    with pytest.raises(DataError, match="pixels of more than 8 bits"):
        read_images([deep], "L", 8)  # (as certify --input and malimg read)


def test_grey_alpha_images_are_grayscale_with_their_alpha_dropped(tmp_path):
    """An 8-bit grey+alpha image (Pillow mode LA) counts as grayscale, as the README says: a folder of them and
    grey images is a grayscale run, each pixel its grey value (alpha dropped, not composited)."""
    root = _image_folder(tmp_path / "pics", {"a": 4, "b": 4}, size=(8, 8))
    grey = np.arange(64, dtype=np.uint8).reshape(8, 8)
    Image.fromarray(np.stack([grey, np.full_like(grey, 7)], -1), mode="LA").save(root / "b" / "la.png")
    assert Image.open(root / "b" / "la.png").mode == "LA"
    assert task_from_image_folder(root, "a").load(None).input_shape == (1, 8, 8)
    assert np.array_equal(read_images([root / "b" / "la.png"], "L")[0, 0], grey)


@pytest.mark.parametrize("suffix", [".gif", ".png", ".tif"])
def test_images_of_more_than_one_frame_are_refused(tmp_path, suffix):
    """Review s34 F5: an animated GIF was read by its first frame, without a word; a multi-frame image (animated
    GIF or PNG, multi-page TIFF) is refused by name: which frame is the picture is not asymcert's to pick."""
    root = _image_folder(tmp_path / "pics", {"a": 4, "b": 4}, size=(8, 8))
    frames = [Image.fromarray(np.full((8, 8), v, np.uint8), mode="L") for v in (0, 255)]
    moving = root / "b" / f"moving{suffix}"
    frames[0].save(moving, save_all=True, append_images=frames[1:])
    assert Image.open(moving).n_frames == 2
    with pytest.raises(DataError) as info:
        task_from_image_folder(root, "a")
    assert str(info.value) == (
        f"{moving}: an image of more than one frame (animated, or pages); asymcert reads one picture a file: "
        "save the frame to use as an image of its own"
    )
    frames[0].save(moving)  # one frame: read (a GIF as RGB: Pillow opens it as a palette image)
    assert task_from_image_folder(root, "a").load(None).input_shape[1:] == (8, 8)


def test_image_folder_unknown_class_lists_folders(tmp_path):
    root = _image_folder(tmp_path / "pics", {"a": 5, "b": 5})
    with pytest.raises(DataError, match="sensitive class 'c' not among the labels found: 'a', 'b'"):
        task_from_image_folder(root, "c")
    with pytest.raises(DataError, match="no class folders"):
        task_from_image_folder(tmp_path / "pics" / "a", "a")


@pytest.mark.parametrize("shift, expected", [(0.0, ["fast", "hinges"]), (50.0, ["fast", "hinges", "log1p-hinges"])])
def test_tabular_presets_offer_log1p_only_for_nonnegative_data(tmp_path, shift, expected):
    x, y = _tabular()
    np.savez(tmp_path / "d.npz", x=np.abs(x) + shift if shift else x, y=y)
    task = task_from_npz(tmp_path / "d.npz", sensitive_class=2)
    assert sorted(task.presets) == expected


@pytest.mark.parametrize(
    "preset, kinds", [("hinges", ["standardize", "hinges"]), ("log1p-hinges", ["log1p", "standardize", "hinges"])]
)
def test_tabular_presets_build_the_hinge_model(tmp_path, preset, kinds):
    x, y = _tabular()
    np.savez(tmp_path / "d.npz", x=np.abs(x), y=y)
    plan = plan_training({"npz": str(tmp_path / "d.npz"), "sensitive_class": 2}, preset=preset)
    config = model_config(plan.model)
    assert [step["kind"] for step in config["feature_map"]] == kinds
    assert config["convex"]["widths"] == [1] and not config["convex"]["batch_norm"]
    plan.model.validate()


@pytest.mark.parametrize("preset", ["hinges", "log1p-hinges"])
def test_tabular_presets_on_images_say_they_need_flat_feature_vectors(tmp_path, preset):
    g = np.random.default_rng(0)
    np.savez(tmp_path / "img.npz", x=g.random((30, 5, 5)), y=np.arange(30) % 2)
    spec = {"npz": str(tmp_path / "img.npz"), "sensitive_class": 1}
    want = rf"does not offer preset '{preset}': it takes flat feature vectors, x of shape \(N, d\), and these "
    with pytest.raises(ConfigError, match=want + r"inputs have shape \(1, 5, 5\)"):
        plan_training(spec, preset=preset)


def test_log1p_preset_is_refused_for_negative_values_naming_the_columns(tmp_path):
    x, y = _tabular(dim=3)
    x[:, 2] = np.abs(x[:, 2])  # columns a and b go below 0, c does not
    _write_csv(tmp_path / "d.csv", x, y)
    spec = {"csv": str(tmp_path / "d.csv"), "label_column": "label", "sensitive_class": 2}
    with pytest.raises(ConfigError, match=r"does not offer preset 'log1p-hinges': a, b take\(s\) values below 0"):
        plan_training(spec, preset="log1p-hinges")
    with pytest.raises(UnknownNameError, match=r"no preset 'nope'; presets: \['fast', 'hinges'\]"):
        plan_training(spec, preset="nope")


# ----- NpzStream: an npz read a chunk of rows at a time (certify --input), never whole, never unpickled -----


class _TouchOnUnpickle:
    """An object whose unpickling creates ``marker``: proof that a reader unpickled it."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (pathlib.Path.touch, (pathlib.Path(self.marker),))


def _npy_bytes(a):
    buf = io.BytesIO()
    np.save(buf, a)
    return buf.getvalue()


def _streamed(path, chunk, **kw):
    with NpzStream(path, **kw) as npz:
        parts = list(npz.chunks(chunk))
    xs = [x for x, _ in parts]
    ys = None if parts and parts[0][1] is None else [y for _, y in parts]
    return xs, ys


@pytest.mark.parametrize("dtype", [np.float32, np.float64, ">f8", np.int64, ">i4", np.uint8, bool])
@pytest.mark.parametrize("labels", [None, "text", "int", "bytes"])
def test_npz_stream_reads_what_read_npz_reads(tmp_path, dtype, labels):
    rng = np.random.default_rng(0)
    x = (rng.normal(size=(10, 3, 2)) * 100).astype(dtype)
    y = {"text": np.array([f"c{i % 3}" for i in range(10)]), "int": np.arange(10) % 4, "bytes": np.array([b"a"] * 10)}
    np.savez(tmp_path / "d.npz", x=x, **({"y": y[labels]} if labels else {}))
    whole_x, whole_y = read_npz(tmp_path / "d.npz", labels_required=False)
    xs, ys = _streamed(tmp_path / "d.npz", 4)
    assert [len(part) for part in xs] == [4, 4, 2]
    got = np.concatenate(xs)
    assert got.dtype == whole_x.dtype.newbyteorder("=") and got.dtype.isnative and np.array_equal(got, whole_x)
    if labels is None:
        assert ys is None and whole_y is None
    else:
        assert np.concatenate(ys).tolist() == whole_y.tolist() and np.concatenate(ys).dtype == whole_y.dtype


def test_npz_stream_memory_is_bounded_by_the_chunk(tmp_path, monkeypatch):
    """3·10⁶ rows × 4 float32 (48 MB) compressed to a few hundred kB: read 2¹⁶ rows at a time, never np.load."""
    n, chunk = 3_000_000, 1 << 16
    np.savez_compressed(tmp_path / "big.npz", x=np.zeros((n, 4), dtype=np.float32), y=np.zeros(n, dtype=np.int8))
    monkeypatch.setattr(np, "load", lambda *a, **k: pytest.fail("np.load reads the whole array"))
    sizes = []
    tracemalloc.start()
    try:
        with NpzStream(tmp_path / "big.npz") as npz:
            for x, y in npz.chunks(chunk):
                sizes.append(len(x))
                assert len(y) == len(x) and not x.any()
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert sum(sizes) == n and max(sizes) == chunk
    assert peak < n * 16 / 8, f"peak {peak / 1e6:.1f} MB for a {n * 16 / 1e6:.0f} MB array"


@pytest.mark.parametrize("key", ["x", "y"])
def test_npz_stream_never_unpickles_object_arrays(tmp_path, key):
    """An x of objects is refused; a y of objects too when labels are required, and else left out, unread."""
    marker = tmp_path / "unpickled"
    arrays = {"x": np.zeros((3, 2)), "y": np.zeros(3)}
    arrays[key] = np.array([_TouchOnUnpickle(marker)] * (3 if key == "y" else 6), dtype=object)
    arrays[key] = arrays[key].reshape(arrays[key].shape if key == "y" else (3, 2))
    np.savez(tmp_path / "obj.npz", **arrays)
    with pytest.raises(DataError, match=f"obj\\.npz: array '{key}' cannot be read without unpickling"):
        NpzStream(tmp_path / "obj.npz", labels_required=True)
    if key == "x":
        with pytest.raises(DataError, match="obj\\.npz: array 'x' cannot be read without unpickling"):
            NpzStream(tmp_path / "obj.npz")
    else:
        with NpzStream(tmp_path / "obj.npz") as npz:
            assert npz.y is None and npz.y_unread == np.dtype(object)
            assert [y for _, y in npz.chunks(2)] == [None, None]
    assert not marker.exists()
    np.load(tmp_path / "obj.npz", allow_pickle=True)[key]  # the payload works: unpickling it does create the file
    assert marker.exists()


def test_npz_stream_refuses_labels_of_another_length_before_reading_any_value(tmp_path, monkeypatch):
    np.savez(tmp_path / "d.npz", x=np.zeros((5, 2)), y=np.zeros(4))
    reads = []
    monkeypatch.setattr(NpyMember, "read_rows", lambda self, rows: reads.append(rows))
    with NpzStream(tmp_path / "d.npz") as npz, pytest.raises(DataError, match=r"y has shape \(4,\); .* \(5,\)"):
        next(npz.chunks(2))
    assert reads == []


def test_npz_stream_refuses_truncated_and_damaged_members(tmp_path):
    x = np.arange(40, dtype=np.float64).reshape(10, 4)
    with zipfile.ZipFile(tmp_path / "cut.npz", "w") as z:  # the member itself is shorter than its header says
        z.writestr("x.npy", _npy_bytes(x)[:-8])
    with pytest.raises(DataError, match=r"cut\.npz: array 'x' is damaged: .*shape \(10, 4\).*truncated"):
        NpzStream(tmp_path / "cut.npz")
    np.savez(tmp_path / "flip.npz", x=x)  # stored, not compressed: a flipped data byte fails the CRC
    raw = bytearray((tmp_path / "flip.npz").read_bytes())
    at = raw.index(_npy_bytes(x)) + len(_npy_bytes(x)) - 3
    raw[at] ^= 0xFF
    (tmp_path / "flip.npz").write_bytes(bytes(raw))
    with pytest.raises(DataError, match=r"flip\.npz: array 'x' is damaged \(Bad CRC-32"):
        _streamed(tmp_path / "flip.npz", 3)
    with zipfile.ZipFile(tmp_path / "head.npz", "w") as z:
        z.writestr("x.npy", b"\x93NUMPY\x01\x00\x10\x00{'descr': '<f8'")
    with pytest.raises(DataError, match=r"head\.npz: array 'x' is damaged"):
        NpzStream(tmp_path / "head.npz")


def test_npz_stream_reads_fortran_order_whole_up_to_a_bound_and_refuses_more(tmp_path, monkeypatch):
    """np.savez(f, x=df.to_numpy()) writes Fortran order (column after column): read whole, in C order, up to
    FORTRAN_LIMIT bytes (a review found such files refused outright), refused beyond it naming the fix."""
    values = np.arange(24 * 5, dtype=">f4").reshape(24, 5)  # big-endian too
    np.savez(tmp_path / "f.npz", x=np.asfortranarray(values), y=np.arange(24))
    xs, ys = _streamed(tmp_path / "f.npz", 7)
    assert [len(x) for x in xs] == [7, 7, 7, 3] and np.array_equal(np.concatenate(xs), values)
    assert np.concatenate(xs).dtype == np.float32 and np.array_equal(np.concatenate(ys), np.arange(24))
    monkeypatch.setattr(user_module, "FORTRAN_LIMIT", values.nbytes - 1)
    with pytest.raises(DataError, match=r"f\.npz: array 'x' is saved in Fortran .* np\.ascontiguousarray\(x\)"):
        NpzStream(tmp_path / "f.npz")
    np.savez(tmp_path / "c.npz", x=np.asfortranarray(np.ones((6, 1), dtype=np.float32)))  # same bytes as C order
    xs, _ = _streamed(tmp_path / "c.npz", 4)
    assert np.concatenate(xs).shape == (6, 1)


def _npy_bytes(array: np.ndarray) -> bytes:
    buf = io.BytesIO()
    np.save(buf, array)
    return buf.getvalue()


def test_npz_stream_refuses_a_subarray_dtype_in_one_line(tmp_path):
    """A y of dtype ('<i4', (4,)) gave a reshape traceback."""
    header = io.BytesIO()
    np.lib.format.write_array_header_1_0(header, {"descr": "(2,)<i4", "fortran_order": False, "shape": (10,)})
    with zipfile.ZipFile(tmp_path / "s.npz", "w") as z:  # (np.savez itself writes such a y as shape (10, 2))
        z.writestr("x.npy", _npy_bytes(np.zeros((10, 4), dtype=np.float32)))
        z.writestr("y.npy", header.getvalue() + np.arange(20, dtype="<i4").tobytes())
    with pytest.raises(DataError, match=r"s\.npz: array 'y' has dtype .*an array per entry"):
        NpzStream(tmp_path / "s.npz")


def test_npz_stream_refuses_what_read_npz_refuses(tmp_path):
    (tmp_path / "t.npz").write_bytes(b"plain text")
    (tmp_path / "z.npz").write_bytes(b"PK\x03\x04 damaged")
    np.save(tmp_path / "one.npy", np.zeros((4, 2)))
    (tmp_path / "p.npz").write_bytes(pickle.dumps({"x": np.zeros(3)}))
    np.savez(tmp_path / "nox.npz", inputs=np.zeros((4, 2)))
    cases = {
        "t.npz": r"t\.npz: not an \.npz archive \(a zip of \.npy arrays\)",
        "z.npz": r"not a readable \.npz",
        "one.npy": r"a single array \(\.npy\), not an \.npz archive",
        "p.npz": r"not an \.npz archive",
        "nox.npz": r"no array named x \(arrays found: \['inputs'\]\)",
    }
    for name, message in cases.items():
        with pytest.raises(DataError, match=message):
            NpzStream(tmp_path / name)
    np.savez(tmp_path / "xonly.npz", x=np.zeros((4, 2)))
    NpzStream(tmp_path / "xonly.npz").close()  # labels are optional unless required
    with pytest.raises(DataError, match=r"xonly\.npz: no array named y \(arrays found: \['x'\]\)"):
        NpzStream(tmp_path / "xonly.npz", labels_required=True)


@pytest.mark.parametrize(
    ("x", "names", "message"),
    [
        (np.zeros((3, 2)), np.array([1, 2]), r"feature_names must hold text, one name per column of x; found dtype"),
        (np.zeros((3, 2)), np.array(["a", "b", "c"]), r"feature_names has shape \(3,\); .* x's 2 columns, \(2,\)"),
        (np.zeros((3, 2)), np.array([["a", "b"]]), r"feature_names has shape \(1, 2\)"),
        (np.zeros((3, 2, 2)), np.array(["a", "b"]), r"names the columns of an x of shape \(N, d\); x has shape"),
        (np.zeros((3, 2)), np.array(["a", " "]), r"feature_names\[1\] is empty"),
        (np.zeros((3, 2)), np.array(["a", "a"]), r"feature_names holds 'a' more than once"),
    ],
)
def test_npz_feature_names_are_one_text_name_per_column(tmp_path, x, names, message):
    np.savez(tmp_path / "d.npz", x=x, y=np.array(["s", "h", "s"]), feature_names=names)
    with pytest.raises(DataError, match=message):
        read_npz_named(tmp_path / "d.npz")
    with pytest.raises(DataError, match=message):
        NpzStream(tmp_path / "d.npz")


def test_npz_feature_names_are_read_by_both_readers(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), feature_names=np.array([b"caf\xc3\xa9", b"b"]))
    assert read_npz_named(tmp_path / "d.npz", labels_required=False)[2] == ["café", "b"]
    with NpzStream(tmp_path / "d.npz") as npz:
        assert npz.feature_names == ["café", "b"]
    np.savez(tmp_path / "none.npz", x=np.zeros((3, 2)))
    assert read_npz_named(tmp_path / "none.npz", labels_required=False)[2] is None
    with NpzStream(tmp_path / "none.npz") as npz:
        assert npz.feature_names is None


def test_feature_names_too_many_or_too_wide_are_refused_from_the_header(tmp_path, monkeypatch):
    """Checked against x's columns before any name is read (review 27c F3: a 2 MB npz took 4.5 GB), and alike
    for training and certify --input (F6: names of over 1024 characters trained but could not be certified)."""
    monkeypatch.setattr(user_module, "MAX_FEATURE_NAMES", 4)
    np.savez(tmp_path / "many.npz", x=np.zeros((1, 5)), y=np.array(["s"]), feature_names=np.array(list("abcde")))
    np.savez(tmp_path / "wide.npz", x=np.zeros((1, 2)), y=np.array(["s"]), feature_names=np.array(["a" * 1025, "b"]))
    np.savez(tmp_path / "bomb.npz", x=np.zeros((0, 3)), feature_names=np.zeros(1000, dtype="S4096"))
    monkeypatch.setattr(user_module.NpyMember, "read_rows", lambda *a: pytest.fail("the names were read"))
    for name, message in [
        ("many.npz", r"feature_names holds 5 names of 4 bytes each \(dtype <U1\); at most 4 names"),
        ("wide.npz", r"feature_names holds 2 names of 4100 bytes each \(dtype <U1025\)"),
        ("bomb.npz", r"feature_names has shape \(1000,\); it must name each of x's 3 columns"),
    ]:
        with pytest.raises(DataError, match=message):
            NpzStream(tmp_path / name)
        if name != "bomb.npz":
            with pytest.raises(DataError, match=message):
                read_npz_named(tmp_path / name)


def test_feature_names_in_bytes_must_be_utf8(tmp_path):
    """Undecodable bytes were replaced by U+FFFD, so b"a\\xfe" matched a run's b"a\\xff" (review 27c F7)."""
    np.savez(tmp_path / "d.npz", x=np.zeros((2, 2)), y=np.array(["s", "h"]), feature_names=np.array([b"ok", b"a\xfe"]))
    for read in (read_npz_named, NpzStream):
        with pytest.raises(DataError, match=r"feature_names\[1\] is not UTF-8 text \(b'a\\xfe'\)"):
            read(tmp_path / "d.npz")


def test_npz_stream_refuses_labels_too_long_to_read_a_chunk_of(tmp_path):
    np.savez(tmp_path / "d.npz", x=np.zeros((3, 2)), y=np.array(["a" * 1025, "b", "c"]))
    with pytest.raises(DataError, match=r"d\.npz: y holds labels of 4100 bytes each \(dtype <U1025\)"):
        NpzStream(tmp_path / "d.npz")
    np.savez(tmp_path / "ok.npz", x=np.zeros((3, 2)), y=np.array(["a" * 1024, "b", "c"]))
    assert _streamed(tmp_path / "ok.npz", 2)[1][0][0] == "a" * 1024


def test_training_refuses_integers_float64_cannot_hold(tmp_path):
    x, y = _tabular()
    wide = x.round().astype(np.int64)
    wide[3, 1] = 2**53 + 1
    np.savez(tmp_path / "big.npz", x=wide, y=y)
    with pytest.raises(DataError, match=r"big\.npz: x holds integers beyond 2\*\*53"):
        task_from_npz(tmp_path / "big.npz", 1)
    wide[3, 1] = 2**53  # held exactly: trained on
    np.savez(tmp_path / "ok.npz", x=wide, y=y)
    assert task_from_npz(tmp_path / "ok.npz", 1).load(None).train.x.shape[1] == 4


def test_a_class_too_small_to_split_is_named_as_a_plain_number(tmp_path):
    """The message said "class np.int64(1)"."""
    (tmp_path / "t.csv").write_text("a,label\n1,x\n2,y\n3,y\n4,y\n5,y\n")
    with pytest.raises(
        DataError, match=r"class 1 \(in a binary task 1 is the sensitive class, 0 the other\) has only 1"
    ):
        task_from_csv(tmp_path / "t.csv", "label", "x")


def test_csv_columns_that_are_no_features_can_be_ignored(tmp_path):
    """A malware CSV with a sha256 column could not be trained on (text is not a number)."""
    (tmp_path / "t.csv").write_text(
        "sha256,a,label,b\n" + "".join(f"{i:064x},{i},{'x' if i % 2 else 'y'},{i * 2}\n" for i in range(12))
    )
    with pytest.raises(DataError, match=r"column 'sha256': '0{63}a' is not a number .*skip it with --ignore-column"):
        task_from_csv(tmp_path / "t.csv", "label", "x")
    # a missing value is not a column that is no feature: no hint to drop the column
    (tmp_path / "gap.csv").write_text("a,label\n1,x\n,y\n")
    with pytest.raises(
        DataError, match=r"row 2 \(line 3\) is missing a value in column 'a'; fill it in or drop the row$"
    ):
        task_from_csv(tmp_path / "gap.csv", "label", "x")
    data, splits = _splits(task_from_csv(tmp_path / "t.csv", "label", "x", ignore_columns=["sha256"]))
    assert data.meta["feature_names"] == ["a", "b"]
    x = torch.cat([s.x for s in splits])
    assert sorted(x[:, 0].tolist()) == list(map(float, range(12))) and bool((x[:, 1] == 2 * x[:, 0]).all())
    for bad in (["nope"], ["label"]):
        with pytest.raises(DataError, match=r"cannot ignore column\(s\) .*: not a feature column"):
            task_from_csv(tmp_path / "t.csv", "label", "x", ignore_columns=bad)


def test_ignore_columns_given_as_one_string_is_one_name(tmp_path):
    (tmp_path / "t.csv").write_text(
        "sha256,a,label\n" + "".join(f"h{i},{i},{'x' if i % 2 else 'y'}\n" for i in range(12))
    )
    x, _, features, _ = read_csv_table(tmp_path / "t.csv", "label", "sha256")
    assert features == ["a"] and x.shape == (12, 1)
    with pytest.raises(DataError, match=r"no feature columns besides the label column 'label' \(every other"):
        read_csv_table(tmp_path / "t.csv", "label", ["sha256", "a"])


def test_training_reads_utf8_bytes_labels(tmp_path):
    """A y of UTF-8 bytes with a non-ASCII label was a UnicodeDecodeError traceback in training."""
    y = np.array(["caf\u00e9".encode(), b"tea"] * 10)
    np.savez(tmp_path / "b.npz", x=np.arange(40, dtype=np.float32).reshape(20, 2), y=y)
    data, splits = _splits(task_from_npz(tmp_path / "b.npz", "caf\u00e9"))
    assert data.class_names == ("not caf\u00e9", "caf\u00e9") and sum(int(s.y.sum()) for s in splits) == 10


def test_a_parquet_file_given_for_training_gets_a_hint(tmp_path):
    """Walkthrough 28b: `run --csv x.parquet` said only "not a readable CSV file (UTF-8 …)"; `--data` "not an .npz"."""
    pa = pytest.importorskip("pyarrow")
    pq = pytest.importorskip("pyarrow.parquet")
    path = tmp_path / "accounts.parquet"
    pq.write_table(pa.table({"a": [1.0, 2.0], "label": ["bot", "human"]}), path)
    for read in (lambda: read_csv_table(path, "label"), lambda: read_npz(path)):
        with pytest.raises(
            DataError,
            match=r"this is a Parquet file: `certify --input` reads it by the suffix \.parquet, and training .*to_csv",
        ):
            read()
    text = tmp_path / "t.csv"
    text.write_bytes(b"a,label\n\xff\xfe,x\n")
    with pytest.raises(DataError) as info:
        read_csv_table(text, "label")
    assert "Parquet" not in str(info.value)


def _npz_with_member(path, header, body: bytes = b"") -> None:
    """An .npz whose x.npy is ``header`` (the .npy magic, version and header, as bytes) then ``body``."""
    with zipfile.ZipFile(path, "w") as archive:
        archive.writestr("x.npy", header + body)


def _header(version, fields) -> bytes:
    buf = io.BytesIO()
    writer = {(1, 0): np.lib.format.write_array_header_1_0, (2, 0): np.lib.format.write_array_header_2_0}
    writer[version](buf, fields)
    return buf.getvalue()


def test_npz_stream_reads_a_version_2_header_as_np_load_does(tmp_path):
    """.npy format 2.0 (a header over 64 KiB, which numpy writes for many-field dtypes, or on request) was never
    read by a test (coverage of session 31): the same values, chunk by chunk, as np.load gives."""
    x = np.arange(24, dtype="<f4").reshape(6, 4)
    buf = io.BytesIO()
    np.lib.format.write_array(buf, x, version=(2, 0))
    assert buf.getvalue()[6:8] == b"\x02\x00"
    _npz_with_member(tmp_path / "v2.npz", buf.getvalue())
    xs, ys = _streamed(tmp_path / "v2.npz", 4)
    assert ys is None and [len(p) for p in xs] == [4, 2]
    assert np.array_equal(np.concatenate(xs), np.load(tmp_path / "v2.npz")["x"])


@pytest.mark.parametrize(
    ("header", "message"),
    [
        (b"\x93NUMPY\x03\x00" + b"\x10\x00\x00\x00" + b"{}".ljust(16), r"\.npy format 3\.0 is not read"),
        (_header((1, 0), {"descr": "<f4", "fortran_order": False, "shape": (-2, 3)}), r"negative shape \(-2, 3\)"),
    ],
    ids=["format-3.0", "negative-shape"],
)
def test_npz_stream_refuses_a_header_it_cannot_trust_in_one_error(tmp_path, header, message):
    _npz_with_member(tmp_path / "bad.npz", header)
    with pytest.raises(DataError, match=message) as caught:
        NpzStream(tmp_path / "bad.npz")
    assert "\n" not in str(caught.value) and "bad.npz" in str(caught.value) and "'x'" in str(caught.value)


def test_the_largest_uint64_is_refused_without_a_numpy_warning():
    """2**64 − 1 rounds to 2**64 in float64, and casting that back to uint64 warned "invalid value encountered
    in cast" on stderr before the one-line refusal (CLI fuzz, session 32)."""

    with warnings.catch_warnings():
        warnings.simplefilter("error")
        with pytest.raises(DataError, match="integers beyond 2\\*\\*53"):
            user_module.exact_float64(np.array([1, 2**64 - 1], dtype=np.uint64), "x.npz")
