"""VNN-LIB export: the written properties, re-checked independently in onnxruntime (corners and PGD points)."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import signal
import stat
import subprocess
import sys
from fractions import Fraction
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import asymcert
from asymcert.certify.attacks import pgd_attack
from asymcert.cli import main
from asymcert.errors import RunFolderBusyError
from asymcert.export import ExportError, to_vnnlib
from asymcert.export import vnnlib as vnnlib_module
from asymcert.models import build_model
from asymcert.threat import ThreatModel
from tests.conftest import affine_icnn, near_boundary, small_feature_convex

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SHAPE = (1, 6, 6)
ROOT = Path(__file__).resolve().parents[2]
BOUND = re.compile(r"\(assert \((<=|>=) X_(\d+) ([-+0-9.eE]+)\)\)")


def parse_vnnlib(text: str, n_inputs: int) -> tuple[torch.Tensor, torch.Tensor, str]:
    """(low, high) (n_inputs,) float64 of the input box and the output constraint, from a property's text."""
    low = torch.full((n_inputs,), float("nan"), dtype=torch.float64)
    high = low.clone()
    for op, i, value in BOUND.findall(text):
        (high if op == "<=" else low)[int(i)] = float(value)
    outputs = re.findall(r"\(assert \((<=|>=) Y_0 ([-+0-9.eE]+)\)\)", text)
    assert len(outputs) == 1
    return low, high, f"Y_0 {outputs[0][0]} {outputs[0][1]}"


def _model():
    model = small_feature_convex("icnn", input_shape=SHAPE, feature_map=[{"kind": "shift"}, {"kind": "concat-abs"}])
    model.input_range = (0.0, 1.0)
    return model


def test_properties_hold_at_worst_case_corners_and_pgd_points(tmp_path):
    model = _model()
    torch.manual_seed(4)
    x = torch.rand(80, *SHAPE)
    props = to_vnnlib(model, x, tmp_path, limit=25)
    assert 10 <= len(props) <= 25
    sess = ort.InferenceSession(str(tmp_path / "model.onnx"), providers=["CPUExecutionProvider"])
    assert [o.name for o in sess.get_outputs()] == ["score"]
    d = x[0].numel()
    for prop in props:
        low, high, unsafe = parse_vnnlib((tmp_path / prop.file).read_text(), d)
        assert unsafe == "Y_0 <= 0.0"
        assert not bool(torch.isnan(low).any() or torch.isnan(high).any())
        xi = x[prop.index].double().flatten()
        assert bool((low <= xi).all() and (xi <= high).all() and (low >= 0).all() and (high <= 1).all())
        assert float((high - low).max()) <= 2 * prop.radii["radius_linf"]
        # the worst-case corner: every coordinate moved against the gradient of the score, clipped to the box
        xg = x[prop.index : prop.index + 1].clone().requires_grad_(True)
        (grad,) = torch.autograd.grad(model(xg).sum(), xg)
        corner = torch.where(grad.double().flatten() > 0, low, high).float().view(1, *SHAPE)
        (score,) = sess.run(None, {"x": corner.numpy()})
        assert float(score[0, 0]) > 0, f"{prop.file}: Y_0 <= 0 at the worst-case corner"
    idx = torch.tensor([p.index for p in props])
    eps = torch.tensor([p.radii["radius_linf"] for p in props]) * (1 - 1e-6)
    adv = pgd_attack(model, x[idx], eps, "inf", steps=60, restarts=3, input_range=(0.0, 1.0))
    (scores,) = sess.run(None, {"x": adv.numpy()})
    assert bool((scores[:, 0] > 0).all()), "a PGD point inside a box has Y_0 <= 0"


def test_instances_csv_and_radii_json(tmp_path):
    model = _model()
    x = torch.rand(40, *SHAPE)
    props = to_vnnlib(model, x, tmp_path, timeout=120)
    rows = list(csv.reader((tmp_path / "instances.csv").open()))
    assert rows == [["model.onnx", p.file, "120"] for p in props]
    assert all((tmp_path / r[1]).is_file() for r in rows)
    summary = json.loads((tmp_path / "radii.json").read_text())
    assert "not expressible in VNN-LIB" in summary["note"]
    assert summary["units_per_radius"] == {"radius_*": "raw input units"}  # no threat model: raw radii only
    assert [p["index"] for p in summary["properties"]] == [p.index for p in props]
    assert set(summary["properties"][0]["radii"]) == {"radius_l1", "radius_l2", "radius_linf"}
    with torch.no_grad():  # exactly the flagged inputs with a positive radius get a property
        flagged = torch.nonzero(model(x) > 0).flatten().tolist()
    assert set(p.index for p in props) <= set(flagged)
    assert len(props) >= len(flagged) - 2


def test_l2_properties_are_refused(tmp_path):
    with pytest.raises(ExportError, match="not expressible in VNN-LIB"):
        to_vnnlib(_model(), torch.rand(4, *SHAPE), tmp_path, norm=2)


def test_cli_writes_a_vnncomp_folder_for_a_run(fashion_dir, tmp_path):
    run = tmp_path / "run"
    tiny = ["--model-set", 'convex={"kind": "icnn", "widths": [8]}', "--preset", "fast", "--epochs", "1", "--quiet"]
    train = ["train", "fashion-mnist-shirts", "--data-dir", str(fashion_dir), "--out", str(run), *tiny]
    assert CliRunner().invoke(main, train).exit_code == 0
    out = tmp_path / "bench"
    args = ["export", str(run), "--format", "vnnlib", "--out", str(out), "--limit", "3", "--data-dir", str(fashion_dir)]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == 0, res.output
    rows = list(csv.reader((out / "instances.csv").open()))
    assert 1 <= len(rows) <= 3 and all(r[0] == "model.onnx" and r[2] == "300" for r in rows)
    assert "properties (raw ℓ∞ boxes" in res.output and (out / "radii.json").is_file()


D = 6
TM = ThreatModel(
    immutable=[0], increase_only=[1, 2], decrease_only=[3], scale={2: 4.0, 4: 0.5}, lower={"*": 0.0}, upper={4: 0.9}
)


def _tm_model():
    return small_feature_convex("icnn", input_shape=(D,), feature_map=[{"kind": "shift"}], seed=2)


def test_threat_model_boxes_move_only_what_it_allows_and_hold(tmp_path):
    """Under a threat model each property is the box of its allowed moves within the ℓ∞ radius in its units:
    immutable features fixed, one-sided ones moving their way, in the domain; no corner or PGD point inside flips."""
    model, tm = _tm_model(), TM.resolve(None, D)
    x = torch.rand(120, D, generator=torch.Generator().manual_seed(1))
    x[:, 4] *= 0.9  # inside the domain
    x = torch.cat([x, near_boundary(model, x)])  # and inputs bisected to scores of 1e-7 … 1e-2 (still inside)
    props = to_vnnlib(model, x, tmp_path / "b", threat_model=tm)
    assert len(props) >= 15
    summary = json.loads((tmp_path / "b" / "radii.json").read_text())
    assert summary["units"] == tm.units() and summary["threat_model"]["immutable"] == [0]
    # audit units30 F4: each family of a property's radii has its units (radius_* raw, tm_radius_* the model's)
    assert summary["units_per_radius"] == {"radius_*": "raw input units", "tm_radius_*": tm.units()}
    assert set(props[0].radii) == {f"{f}_{n}" for f in ("radius", "tm_radius") for n in ("l1", "l2", "linf")}
    sess = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    gen = torch.Generator().manual_seed(2)
    for prop in props:
        low, high, _ = parse_vnnlib((tmp_path / "b" / prop.file).read_text(), D)
        xi, r = x[prop.index].double(), prop.radii["tm_radius_linf"]
        assert low[0] == xi[0] == high[0] and low[1] == xi[1] and low[2] == xi[2] and high[3] == xi[3]
        assert bool((low >= 0).all()) and float(high[4]) <= 0.9
        assert bool(((high - xi) <= r * tm.scale).all() and ((xi - low) <= r * tm.scale).all())
        assert float(high[2] - xi[2]) > r  # scale 4: the box is wider than r in raw units there
        corners = torch.where(torch.rand(256, D, generator=gen) < 0.5, low, high)
        points = torch.cat([corners, low + torch.rand(256, D, generator=gen, dtype=torch.float64) * (high - low)])
        (scores,) = sess.run(None, {"x": points.float().numpy()})
        assert bool((scores[:, 0] > 0).all()), f"{prop.file}: a point of the box is not flagged"
    plain = to_vnnlib(model, x, tmp_path / "p")  # without it: raw boxes that move the immutable feature
    low, high, _ = parse_vnnlib((tmp_path / "p" / plain[0].file).read_text(), D)
    assert float(high[0] - low[0]) > 0


def test_unbounded_boxes_are_left_out_and_listed(tmp_path):
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [D],
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "icnn", "widths": [8]},
            "monotone": {"increasing": [1]},
        }
    ).eval()
    with torch.no_grad():
        model.balance += 1.0 - float(model(torch.zeros(1, D)))
    tm = ThreatModel(immutable=[0, 2, 3, 4, 5], increase_only=[1]).resolve(None, D)
    x = torch.zeros(5, D)
    # toward an unbounded feature the radius is no longer ∞ (float32 could overflow far out): a finite box
    props = to_vnnlib(model, x, tmp_path / "b", threat_model=tm)
    assert len(props) == 5 and all(1e3 < p.radii["tm_radius_linf"] < math.inf for p in props)
    assert json.loads((tmp_path / "b" / "radii.json").read_text())["unbounded_boxes_left_out"] == []
    bounded = ThreatModel(immutable=[0, 2, 3, 4, 5], increase_only=[1], upper={1: 10.0}).resolve(None, D)
    props = to_vnnlib(model, x, tmp_path / "c", threat_model=bounded)
    assert len(props) == 5 and props[0].radii["tm_radius_linf"] == float("inf")
    low, high, _ = parse_vnnlib((tmp_path / "c" / props[0].file).read_text(), D)
    assert float(high[1]) == 10.0 and float(low[1]) == 0.0


def test_tiny_scales_give_finite_boxes_that_hold(tmp_path):
    """s = 10 + x₀ − x₁ under scales at float32's smallest normal and the domain [−100, 100]: the threat-model radius
    (≈ 4.3e38) overflowed float32 to +∞ in the graph, the box was the whole domain, expected unsat, and its corner
    (−100, 100) scores −190: sat (review s33, finding 3). Now the radius is float32's largest value at most and the
    box (half-width r·scale ≈ 4, rounded inward) holds at its worst corner."""
    tiny = float(torch.finfo(torch.float32).tiny)
    model = affine_icnn([1.0, -1.0], 10.0)
    tm = ThreatModel(scale={"*": tiny}, lower={"*": -100.0}, upper={"*": 100.0}).resolve(None, 2)
    props = to_vnnlib(model, torch.zeros(1, 2), tmp_path / "b", threat_model=tm)
    assert len(props) == 1
    r = props[0].radii["tm_radius_linf"]
    assert math.isfinite(r) and r <= float(torch.finfo(torch.float32).max)
    low, high, _ = parse_vnnlib((tmp_path / "b" / props[0].file).read_text(), 2)
    assert bool((high <= r * tiny).all() and (-low <= r * tiny).all()) and float(high[1]) > 3.9
    sess = ort.InferenceSession(str(tmp_path / "b" / "model.onnx"), providers=["CPUExecutionProvider"])
    (score,) = sess.run(None, {"x": torch.stack([low[0], high[1]]).float().view(1, 2).numpy()})
    assert float(score[0, 0]) > 0


def test_a_new_export_replaces_the_earlier_benchmark_whole(tmp_path):
    model, x = _model(), torch.rand(80, *SHAPE, generator=torch.Generator().manual_seed(4))
    assert len(to_vnnlib(model, x, tmp_path / "b", limit=12)) == 12
    props = to_vnnlib(model, x, tmp_path / "b", limit=3)
    assert sorted(p.name for p in (tmp_path / "b" / "vnnlib").iterdir()) == sorted(p.file[7:] for p in props)
    assert sorted(p.name for p in tmp_path.iterdir()) == ["b"]  # no staging folder left


def _own_names_as_something_else(out, case):
    """A folder ``out`` whose names are an export's own but hold the user's data (they were deleted)."""
    out.mkdir()
    if case == "model.onnx folder":
        (out / "model.onnx").mkdir()
        (out / "model.onnx" / "thesis.tex").write_text("mine")
    elif case == "property folder":
        (out / "vnnlib" / "archive.vnnlib").mkdir(parents=True)
        (out / "vnnlib" / "archive.vnnlib" / "notes.txt").write_text("mine")
    elif case == "vnnlib file":
        (out / "vnnlib").write_text("mine")
    else:  # a link named like the export's file, to the user's file beside it
        (out.parent / "mine.csv").write_text("mine")
        (out / "instances.csv").symlink_to(out.parent / "mine.csv")


REFUSED = ["file", "other files", "smoothing", "shape", "shape, threat model", "link", "float64", "float16"]
OWN_NAMES = ["model.onnx folder", "property folder", "vnnlib file", "instances.csv link"]


@pytest.mark.parametrize("case", REFUSED + OWN_NAMES)
def test_a_refused_export_changes_nothing_on_disk(tmp_path, case):
    model, x = _model(), torch.rand(8, *SHAPE)
    out, tm = tmp_path / "b", None
    if case.startswith("shape"):  # e.g. a run.json edited to name another task: a RuntimeError before
        x, tm = torch.rand(8, 57), (ThreatModel(immutable=[0]) if "threat" in case else None)
    elif case == "file":
        out.write_text("mine")
    elif case == "other files":
        out.mkdir()
        (out / "notes.txt").write_text("mine")
    elif case == "link":  # the rename would move the user's link
        (tmp_path / "real").mkdir()
        out.symlink_to(tmp_path / "real")
    elif case in OWN_NAMES:
        _own_names_as_something_else(out, case)
    elif case.startswith("float"):  # a raw RuntimeError from inside the graph before (review s33, finding 5)
        model = model.to(getattr(torch, case))
    else:
        model = build_model({"kind": "relu-smoothing", "input_shape": list(SHAPE), "widths": [8]})
    before = sorted((p.relative_to(tmp_path), p.read_bytes() if p.is_file() else b"") for p in tmp_path.rglob("*"))
    with pytest.raises(
        ExportError,
        match=r"a file|other files|randomized smoothing|model takes \(N, 1, 6, 6\)|link|float(64|16) model: .*float32",
    ):
        to_vnnlib(model, x, out, threat_model=tm)
    assert (
        sorted((p.relative_to(tmp_path), p.read_bytes() if p.is_file() else b"") for p in tmp_path.rglob("*")) == before
    )


def test_only_stages_a_killed_export_left_are_removed(tmp_path):
    """A killed export's stage (and the earlier benchmark it was replacing) beside the target are removed; a folder
    of the user's named like one (``.b.vnnlib-mydata``, a stage name without the marker, or with other files)
    is kept (``.b.vnnlib-*`` were all deleted as stale stages)."""
    model, x = _model(), torch.rand(20, *SHAPE, generator=torch.Generator().manual_seed(3))
    to_vnnlib(model, x, tmp_path / "b", limit=2)
    killed = [tmp_path / ".b.asymcert-ab12cd_9.vnnlib", tmp_path / ".b.asymcert-ab12cd_9.vnnlib-old"]
    for stage in killed:
        shutil.copytree(tmp_path / "b", stage)
        (stage / ".asymcert-stage").write_text("")
    mine = [
        ".b.vnnlib-mydata",
        ".b.asymcert-abcdefgh.vnnlib",
        ".b.asymcert-zzzzzzzz.vnnlib",
        ".c.asymcert-ab12cd_9.vnnlib",
    ]
    for name in mine:
        (tmp_path / name).mkdir()
        (tmp_path / name / "important.txt").write_text("mine")
    for name in mine[2:]:
        (tmp_path / name / ".asymcert-stage").write_text("")  # marked, but with the user's files, or another's
    to_vnnlib(model, x, tmp_path / "b", limit=2)
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted(["b", *mine])
    assert all((tmp_path / name / "important.txt").read_text() == "mine" for name in mine)
    assert not (tmp_path / "b" / ".asymcert-stage").exists()


KILLED_EXPORT = """
import os, sys, torch
from asymcert.export import vnnlib
from tests.export.test_vnnlib import _model
vnnlib.export_module = lambda *a, **k: os.kill(os.getpid(), 9)
vnnlib.to_vnnlib(_model(), torch.rand(6, 1, 6, 6), sys.argv[1])
"""


def test_the_stage_a_really_killed_export_leaves_is_removed_by_the_next(tmp_path):
    subprocess.run([sys.executable, "-c", KILLED_EXPORT, str(tmp_path / "b")], timeout=300, cwd=ROOT)
    (left,) = [p.name for p in tmp_path.iterdir() if p.name != ".b.asymcert.lock"]  # (and the killed writer's lock)
    assert left.startswith(".b.asymcert-") and left.endswith(".vnnlib")
    to_vnnlib(_model(), torch.rand(6, *SHAPE), tmp_path / "b")
    assert [p.name for p in tmp_path.iterdir()] == ["b"]


VARIABLE = re.compile(r"^; X_(\d+) centre (\S+)(?: feature (\".*\"))?$", re.MULTILINE)


def test_each_property_names_its_features_and_centre(tmp_path):
    """The .vnnlib comments, radii.json and model.onnx's metadata say which feature X_i is and the point each box
    is built around (names of any characters stay on one comment line); without names, the centres still."""
    model, x = _tm_model(), torch.rand(40, D, generator=torch.Generator().manual_seed(8), dtype=torch.float64)
    names = ["word count", 'say "hi"', "(assert (<= Y_0 1))", "line\nbreak\u2028", "café_ü€", "3"]
    props = to_vnnlib(model, x, tmp_path / "a", threat_model=TM, feature_names=names)
    assert len(props) >= 5
    summary = json.loads((tmp_path / "a" / "radii.json").read_text(encoding="utf-8"))
    assert summary["feature_names"] == names
    for prop, row in zip(props, summary["properties"], strict=True):
        text = (tmp_path / "a" / prop.file).read_text(encoding="utf-8")
        found = VARIABLE.findall(text)
        assert [int(i) for i, _, _ in found] == list(range(D)) and [json.loads(n) for _, _, n in found] == names
        centre = torch.tensor([float(c) for _, c, _ in found], dtype=torch.float64)
        assert torch.equal(centre, x[prop.index].float().double()) and row["centre"] == centre.tolist()
        low, high, _ = parse_vnnlib(text, D)
        assert bool((low <= centre).all() and (centre <= high).all())
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "a" / "model.onnx")).metadata_props}
    assert json.loads(meta["asymcert.feature_names"]) == names
    assert list(json.loads(meta["asymcert.outputs"])) == ["score"]
    plain = to_vnnlib(model, x, tmp_path / "b")
    found = VARIABLE.findall((tmp_path / "b" / plain[0].file).read_text())
    assert [name for _, _, name in found] == [""] * D and float(found[0][1]) == float(x[plain[0].index, 0].float())
    meta = {p.key: p.value for p in onnx.load(str(tmp_path / "b" / "model.onnx")).metadata_props}
    assert json.loads(meta["asymcert.feature_names"]) is None and json.loads(meta["asymcert.threat_model"]) is None
    with pytest.raises(ExportError, match="feature_names must be 6 strings"):
        to_vnnlib(model, x, tmp_path / "c", feature_names=names[:5])
    assert not (tmp_path / "c").exists()


def test_the_documented_recheck_holds(tmp_path):
    """docs/deploy.md "Re-checking an export yourself": its N = 1 snippet runs on a benchmark folder, and every
    box satisfies the check it states (centre inside; half-width ≤ r·scale_i; immutable features fixed)."""
    doc = (ROOT / "docs" / "deploy.md").read_text(encoding="utf-8")
    section = doc[doc.index("## Re-checking an export yourself") :]
    snippet = section[section.index("```python\n") + 10 : section.index("```\n", section.index("```python"))]
    model, x = _tm_model(), torch.rand(40, D, generator=torch.Generator().manual_seed(9))
    props = to_vnnlib(model, x, tmp_path / "bench", threat_model=TM)
    assert len(props) >= 5
    subprocess.run([sys.executable, "-c", snippet], cwd=tmp_path, check=True, timeout=120)
    sess = ort.InferenceSession(str(tmp_path / "bench" / "model_n1.onnx"), providers=["CPUExecutionProvider"])
    assert sess.get_inputs()[0].shape == [1, D] and sess.get_outputs()[0].shape == [1, 1]
    summary = json.loads((tmp_path / "bench" / "radii.json").read_text(encoding="utf-8"))
    scale = [summary["threat_model"]["scale"].get(str(i), 1.0) for i in range(D)]
    for prop in summary["properties"]:
        low, high, unsafe = parse_vnnlib((tmp_path / "bench" / prop["file"]).read_text(), D)
        c, r = torch.tensor(prop["centre"], dtype=torch.float64), prop["radii"]["tm_radius_linf"]
        assert unsafe == "Y_0 <= 0.0" and bool((low <= c).all() and (c <= high).all())
        assert all(max(float(high[i] - c[i]), float(c[i] - low[i])) <= r * scale[i] for i in range(D))
        assert float(low[0]) == float(high[0]) == float(c[0])  # immutable


def test_float64_inputs_get_the_boxes_of_their_float32_rounding(tmp_path):
    """The graph reads float32: each box is centred on the rounded input its radius was certified at (centred on
    the float64 value, a box reached past the certified one and a corner flipped)."""
    model = _tm_model()
    x64 = torch.rand(60, D, generator=torch.Generator().manual_seed(5), dtype=torch.float64) + 1e-3
    assert bool((x64 != x64.float().double()).all())
    a = to_vnnlib(model, x64, tmp_path / "a")
    b = to_vnnlib(model, x64.float(), tmp_path / "b")
    assert a == b and len(a) >= 10
    for prop in a:
        assert (tmp_path / "a" / prop.file).read_text() == (tmp_path / "b" / prop.file).read_text()
    with pytest.raises(ExportError, match=r"a floating torch\.Tensor"):
        to_vnnlib(model, x64.numpy(), tmp_path / "c")
    assert not (tmp_path / "c").exists()


def test_an_unresolved_threat_model_is_resolved_by_index_as_certify_takes_it(tmp_path):
    model, x = _tm_model(), torch.rand(40, D, generator=torch.Generator().manual_seed(6))
    x[:, 4] *= 0.9
    a = to_vnnlib(model, x, tmp_path / "a", threat_model=TM)
    b = to_vnnlib(model, x, tmp_path / "b", threat_model=TM.resolve(None, D))
    assert a == b and len(a) >= 5


@pytest.mark.parametrize(("umask", "mode"), [(0o022, 0o755), (0o077, 0o700)])
def test_the_benchmark_folder_gets_the_permissions_of_a_folder_the_user_creates(tmp_path, umask, mode):
    """It was staged with mkdtemp and kept its 0700 whatever the umask."""
    old = os.umask(umask)
    try:
        to_vnnlib(_model(), torch.rand(6, *SHAPE), tmp_path / "b")
    finally:
        os.umask(old)
    assert stat.S_IMODE((tmp_path / "b").stat().st_mode) == mode


def test_a_benchmark_replaced_is_never_missing_when_stopped_between_the_renames(tmp_path, monkeypatch):
    """An export replaces the folder with two renames (the earlier benchmark aside, the new one in): Ctrl-C between
    them left no benchmark at `out`, only a hidden `-old` folder the next export deletes (review 29d #1). The
    renames now happen with SIGINT held back, so the interrupt lands after both."""
    out = tmp_path / "b"
    to_vnnlib(_model(), torch.rand(6, *SHAPE), out)
    real = Path.rename
    done = []

    def rename_then_interrupt(self, target):
        result = real(self, target)
        done.append(Path(target).name)
        if len(done) == 1:
            os.kill(os.getpid(), signal.SIGINT)
        return result

    monkeypatch.setattr(Path, "rename", rename_then_interrupt)
    with pytest.raises(KeyboardInterrupt):
        to_vnnlib(_model(), torch.rand(9, *SHAPE), out)
    assert len(done) == 2 and done[1] == "b" and (out / "instances.csv").is_file()


def test_a_failed_export_into_new_folders_leaves_none(tmp_path, monkeypatch):
    """The VNN-LIB export made `--out`'s parent folders before its clean-up was in place: a failed or stopped
    export left them (review 29d #4)."""
    from asymcert.export import vnnlib

    monkeypatch.setattr(vnnlib, "_mark", lambda folder: (_ for _ in ()).throw(KeyboardInterrupt()))
    with pytest.raises(KeyboardInterrupt):
        to_vnnlib(_model(), torch.rand(6, *SHAPE), tmp_path / "nd4" / "sub" / "bench")
    assert list(tmp_path.iterdir()) == []


def test_the_certifying_graph_sees_at_most_a_chunk_of_inputs_and_gives_the_same_radii(monkeypatch):
    """write_benchmark evaluated the graph on the whole test split at once, so its memory grew with the split
    (coverage audit 30): now GRAPH_CHUNK inputs at a time, with the same outputs."""
    model = small_feature_convex("icnn")
    x = torch.rand(23, *SHAPE, generator=torch.Generator().manual_seed(4))
    whole = vnnlib_module.graph_certificates(model, x)
    seen = []
    real = vnnlib_module.certifying_graph

    def counting(*args, **kwargs):
        graph = real(*args, **kwargs)
        graph.register_forward_pre_hook(lambda module, inputs: seen.append(inputs[0].shape[0]))
        return graph

    monkeypatch.setattr(vnnlib_module, "GRAPH_CHUNK", 5)
    monkeypatch.setattr(vnnlib_module, "certifying_graph", counting)
    chunked = vnnlib_module.graph_certificates(model, x)
    assert seen == [5, 5, 5, 5, 3] and list(chunked) == list(whole)
    assert torch.equal(chunked["flagged"], whole["flagged"])
    for name in whole:  # (float32 products of another batch size round alike, not bitwise: each is sound on its own)
        torch.testing.assert_close(chunked[name].double(), whole[name].double(), rtol=1e-5, atol=1e-7)
    empty = vnnlib_module.graph_certificates(model, x[:0])
    assert all(v.shape == (0,) for v in empty.values())


def test_a_second_export_to_a_benchmark_being_computed_is_refused(tmp_path, monkeypatch):
    """The VNN-LIB export took its writer lock only for the final write, after computing every certificate: two
    concurrent exports to one folder both succeeded, the last one winning (session 30's known issue). The lock is
    now held from the first computation on, so a second writer meanwhile is refused and writes nothing."""
    model, x = _model(), torch.rand(30, *SHAPE, generator=torch.Generator().manual_seed(4))
    assert to_vnnlib(model, x, tmp_path / "b", limit=4)
    before = sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*"))
    real, refused = vnnlib_module.graph_certificates, []

    def computing(*args, **kwargs):
        with pytest.raises(RunFolderBusyError, match="being written by another asymcert process"):
            to_vnnlib(model, x, tmp_path / "b", limit=2)  # a second writer, while the first computes
        refused.append(sorted(str(p.relative_to(tmp_path)) for p in tmp_path.rglob("*") if ".lock" not in p.name))
        return real(*args, **kwargs)

    monkeypatch.setattr(vnnlib_module, "graph_certificates", computing)
    assert len(to_vnnlib(model, x, tmp_path / "b", limit=3)) == 3
    assert refused == [before]  # refused with the earlier benchmark untouched
    assert len(list((tmp_path / "b" / "vnnlib").iterdir())) == 3


def _lossy_sum_model(k: int = 4096) -> tuple[torch.nn.Module, torch.Tensor]:
    """(model, x): φ = identity on k features, one hidden unit of weight 0, pass-through row [1, −1, …, −1], at
    x = [1, t, …, t] with t just below half an ulp of 1 (a sum that adds the −t one by one to 1 drops each); the
    balance puts the exact score just below 0, where float32 sums score it about +1e-5 (session 33's review, e2d)."""
    t = float(torch.tensor(2.0**-25 * (1 - 1e-3), dtype=torch.float32))
    model = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [k],
            "feature_map": [{"kind": "identity"}],
            "convex": {"kind": "icnn", "widths": [1], "batch_norm": False},
        }
    ).eval()
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
        model.convex.passthrough[-1].weight[0, 0] = 1.0
        model.convex.passthrough[-1].weight[0, 1:] = -1.0
    x = torch.full((1, k), t)
    x[0, 0] = 1.0
    exact = Fraction(1) - (k - 1) * Fraction(t)
    balance = torch.tensor(-float(exact), dtype=torch.float32)
    if Fraction(float(balance)) + exact > 0:
        balance = torch.nextafter(balance, torch.tensor(-2.0))
    with torch.no_grad():
        model.set_balance(float(balance))
    model.validate()
    assert Fraction(float(model.balance)) + exact < 0  # the exact score: not flagged
    return model, x


def test_no_property_where_the_library_certifies_nothing(tmp_path):
    """The graph, run in PyTorch, scores the lossy sum +1e-5 and certified ℓ∞ 2.8e-9 around x, so a property was
    written whose box onnxruntime scores −1.85e-5 at a corner (sat); the library, whose reference is float64,
    gives radius 0 there, and the radii written are now capped at the library's."""
    model, x = _lossy_sum_model()
    graph = vnnlib_module.graph_certificates(model, x)
    assert float(graph["radius_linf"][0]) > 0  # the graph alone would certify it
    assert to_vnnlib(model, x, tmp_path / "bench") == []
    summary = json.loads((tmp_path / "bench" / "radii.json").read_text())
    assert summary["properties"] == []


def test_radii_written_are_never_above_the_librarys(tmp_path):
    """On a typical model and near-boundary inputs every property's radii (raw and under a threat model) are at most
    the library's certificate of the same float32 input."""
    model = small_feature_convex(seed=3)
    x = torch.cat([torch.rand(40, *model.input_shape), near_boundary(model, torch.rand(80, *model.input_shape))])
    tm = ThreatModel(scale={"*": 0.5}, lower={"*": 0.0})
    props = to_vnnlib(model, x, tmp_path / "bench", threat_model=tm)
    assert len(props) >= 10
    raw = asymcert.certify(model, x.float(), norms=(1, 2, math.inf))
    under = asymcert.certify(model, x.float(), norms=(1, 2, math.inf), threat_model=tm)
    for prop in props:
        for p, name in ((1.0, "l1"), (2.0, "l2"), (math.inf, "linf")):
            assert prop.radii[f"radius_{name}"] <= float(raw.radii[p][prop.index])
            assert prop.radii[f"tm_radius_{name}"] <= float(under.radii[p][prop.index])
