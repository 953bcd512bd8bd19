"""VNN-LIB export: the written properties, re-checked independently in onnxruntime (corners and PGD points)."""

from __future__ import annotations

import csv
import json
import re

import pytest
import torch
from click.testing import CliRunner

from asymcert.certify.attacks import pgd_attack
from asymcert.cli import main
from asymcert.export import ExportError, to_vnnlib
from tests.conftest import small_feature_convex

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

SHAPE = (1, 6, 6)
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
    assert "ℓ∞ properties" in res.output and (out / "radii.json").is_file()
