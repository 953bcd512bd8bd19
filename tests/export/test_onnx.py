"""ONNX export with in-graph certificates: parity with PyTorch, radii never above the library's, PGD in onnxruntime."""

from __future__ import annotations

import json
import math
import os
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner

import asymcert
from asymcert.certify import threat_model as threat_model_module
from asymcert.certify.attacks import pgd_attack
from asymcert.certify.feature_convex import score_and_feature_gradient, score_magnitudes
from asymcert.certify.threat_attack import threat_attack
from asymcert.checkpoint import save
from asymcert.cli import main
from asymcert.export import ExportDependencyError, ExportError, to_onnx
from asymcert.export.graphs import ThreatTerms
from asymcert.models import build_model
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.nn import ICNN
from asymcert.nn.convex import ConvexMean
from asymcert.nn.feature_maps import Compose, Identity, Log1p, coordinate_slopes
from tests.conftest import (
    affine_icnn,
    bisect_segments,
    near_boundary,
    one_unit_icnn,
    segment_ends,
    small_feature_convex,
)

onnx = pytest.importorskip("onnx")
ort = pytest.importorskip("onnxruntime")

NORMS = (1.0, 2.0, math.inf)
SHAPE = (1, 6, 6)


def _orthogonal():
    torch.manual_seed(0)
    m = build_model({"kind": "orthogonal", "input_shape": list(SHAPE), "arch": "mlp", "widths": [16, 16]}).eval()
    with torch.no_grad():  # centre the scores so that about half the inputs are flagged
        m.net[-1].bias -= m(torch.rand(256, *SHAPE)).median()
    return m


def _linf():
    torch.manual_seed(0)
    m = build_model(
        {"kind": "linf-dist", "input_shape": list(SHAPE), "widths": [16, 16], "num_classes": 2, "binary": True}
    )
    m.eval()
    with torch.no_grad():
        m.out.bias[1] += float(m(torch.rand(256, *SHAPE)).median())  # g₁ = −(d₁ + b₁): centre the scores
    return m


def _mean():
    """A mean of three batch-normed ICNNs whose members disagree (spread-out weights, own seeds)."""
    members = [small_feature_convex("icnn", input_shape=SHAPE, seed=k) for k in range(3)]
    model = members[0]
    model.convex = ConvexMean([m.convex for m in members])
    with torch.no_grad():
        model.set_balance(0.0)
        model.set_balance(-float(model(torch.rand(256, *SHAPE)).median()))
    return model.eval()


MODELS = {
    "icnn-shift": lambda: small_feature_convex("icnn", input_shape=SHAPE),
    "icnn-standardize-concat-abs": lambda: small_feature_convex(
        "icnn", input_shape=SHAPE, feature_map=[{"kind": "standardize"}, {"kind": "concat-abs"}]
    ),
    "convex-conv": lambda: small_feature_convex("conv", input_shape=SHAPE),
    "mean-of-icnns": _mean,
    "linf-dist": _linf,
    "orthogonal": _orthogonal,
}


def _session(model, tmp_path, **kwargs):
    path = to_onnx(model, tmp_path / "model.onnx", **kwargs)
    return ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])


def _run(sess, x: torch.Tensor) -> dict[str, torch.Tensor]:
    names = [o.name for o in sess.get_outputs()]
    return {n: torch.from_numpy(v) for n, v in zip(names, sess.run(None, {"x": x.float().numpy()}))}


def _near_boundary(model, x: torch.Tensor) -> torch.Tensor:
    """Points on segments between flagged and unflagged inputs, bisected on the float32 model until |s| is
    ~1e-6 or less: both ends (the flagged side first)."""
    a, b = segment_ends(model, x, limit=20)
    lo, hi = bisect_segments(lambda pts: model(pts.float()), a, b, torch.zeros(len(a), dtype=torch.float64))
    view = (len(a),) + (1,) * (x.dim() - 1)
    return torch.cat([(a + t.view(view) * (b - a)).float() for t in (lo, hi)])


def _away(model, x: torch.Tensor, score: torch.Tensor) -> torch.Tensor:
    """Inputs far from the boundary: s ≥ 5% of the rounding magnitude M (feature-convex), else ≥ 0.25·max s."""
    if hasattr(model, "convex"):
        s, grad = score_and_feature_gradient(model.double(), x.double())
        f = model.features(x.double())
        model.float()
        magnitude = (grad * f).abs().flatten(1).sum(1) + s.abs()
        return s >= 0.05 * magnitude
    return score >= 0.25 * float(score.max())


def _allowance(model, x: torch.Tensor) -> torch.Tensor:
    """(N,) how far below the library's an ONNX radius may lie, relative: 1e-4, and for feature-convex models the
    graph's second guard on its own score, 3·8·eps32·A/s (A the absolute evaluation, which sees terms that cancel:
    the random conv net's A is hundreds of times its score)."""
    if not hasattr(model, "convex"):
        return torch.full((len(x),), 1e-4, dtype=torch.float64)
    with torch.no_grad():
        f = model.features(x.double().to(next(model.parameters()).dtype))
        s = model(x).double()
    return 1e-4 + 3 * 8 * torch.finfo(torch.float32).eps * score_magnitudes(model, f)[0] / s.abs()


@pytest.mark.parametrize("name", list(MODELS))
def test_onnxruntime_scores_decisions_and_radii_match_the_library(name, tmp_path):
    model = MODELS[name]()
    torch.manual_seed(1)
    x = torch.rand(300, *SHAPE)
    sess = _session(model, tmp_path)
    got = _run(sess, x)
    assert {k: tuple(v.shape) for k, v in _run(sess, x[:0]).items()} == {k: (0,) for k in got}  # an empty batch
    cert = asymcert.certify(model, x, norms=NORMS)
    with torch.no_grad():
        own = model(x)
    assert set(got) == {"score", "flagged", "radius_l1", "radius_l2", "radius_linf"}
    assert torch.allclose(got["score"], own, rtol=1e-5, atol=1e-5 * float(own.abs().max()))
    assert torch.equal(got["flagged"], cert.predicted_flagged().cpu())
    assert 0.2 < float(got["flagged"].float().mean()) < 0.8
    away = _away(model, x, own) & (cert.radii[2.0] > 0)
    assert int(away.sum()) >= 10
    for p, key in zip(NORMS, ("radius_l1", "radius_l2", "radius_linf")):
        mine, lib = got[key].double(), cert.radii[p].double()
        near = lib
        assert bool((mine <= lib).all()), f"{key}: an ONNX radius above the library's"
        rel = (near[away] - mine[away]).abs() / near[away]
        worst = float((rel / _allowance(model, x)[away]).max())
        assert worst < 1, f"{key}: {float(rel.max()):.2e} relative below the library ({worst:.2f} of the allowance)"


@pytest.mark.parametrize("name", list(MODELS))
def test_near_boundary_radii_are_zero_or_below_the_library(name, tmp_path):
    model = MODELS[name]()
    torch.manual_seed(2)
    raw = torch.rand(200, *SHAPE)
    # bisected to |s| ≲ 1e-6 (the guard's zone) and, for the comparison with the library, spread over 1e-7 … 1e-2
    x = torch.cat([_near_boundary(model, raw), near_boundary(model, raw)])
    got = _run(_session(model, tmp_path), x)
    with torch.no_grad():
        own = model(x)
    assert float(own.abs().min()) < 1e-5  # the construction reached the boundary
    cert = asymcert.certify(model, x, norms=NORMS)
    for p, key in zip(NORMS, ("radius_l1", "radius_l2", "radius_linf")):
        mine, lib = got[key].double(), cert.radii[p].double()
        assert bool(((mine == 0) | (mine <= lib)).all())
        assert bool((mine[lib == 0] == 0).all())
        assert int((mine > 0).sum()) > 5  # the comparison is not only between zeros
    tiny = own.abs() < 1e-6
    assert bool((got["radius_l2"][tiny] == 0).all())  # the guard leaves no radius within rounding of 0


@pytest.mark.parametrize(
    "name", ["icnn-standardize-concat-abs", "convex-conv", "mean-of-icnns", "linf-dist", "orthogonal"]
)
def test_pgd_at_the_onnx_radius_flips_no_onnxruntime_decision(name, tmp_path):
    model = MODELS[name]()
    torch.manual_seed(3)
    x = torch.rand(200, *SHAPE)
    sess = _session(model, tmp_path)
    got = _run(sess, x)
    keep = got["radius_l2"] > 0
    xs = x[keep][:60]
    gen = torch.Generator().manual_seed(0)
    for p, key in zip(NORMS, ("radius_l1", "radius_l2", "radius_linf")):
        eps = 0.999 * got[key][keep][:60].double()
        adv = pgd_attack(model, xs, eps.float(), p, steps=60, restarts=2, generator=gen)
        after = _run(sess, adv)
        assert bool(after["flagged"].all()), f"{key}: onnxruntime's decision flipped inside the radius"
        with torch.no_grad():  # the attack pushed: the scores went down
            assert float(model(adv).mean()) < float(model(xs).mean())


def test_score_graph_without_certificates(tmp_path):
    model = MODELS["convex-conv"]()
    x = torch.rand(50, *SHAPE)
    got = _run(_session(model, tmp_path, certificates=False), x)
    assert set(got) == {"score", "flagged"}
    with torch.no_grad():
        assert torch.equal(got["flagged"], model(x) > 0)


def test_smoothing_is_refused_with_one_clear_error(tmp_path):
    model = build_model({"kind": "relu-smoothing", "input_shape": list(SHAPE), "widths": [8]})
    with pytest.raises(ExportError, match=r"smoothing cannot be exported.*not a deterministic"):
        to_onnx(model, tmp_path / "m.onnx")
    assert not (tmp_path / "m.onnx").exists()


@pytest.mark.parametrize("dtype", [torch.float64, torch.float16])
def test_a_model_not_in_float32_is_refused_with_one_clear_error(dtype, tmp_path):
    """model.double() / .half() raised a raw RuntimeError ("addmv input tensors must have the same dtype") from
    inside the graph (review s33, finding 5): now an ExportError naming the dtype and the way out, nothing written."""
    model = MODELS["icnn-shift"]().to(dtype)
    name = str(dtype).removeprefix("torch.")
    with pytest.raises(ExportError, match=rf"cannot export a {name} model: .*float32.*model\.float\(\)") as info:
        to_onnx(model, tmp_path / "out" / "m.onnx")
    assert "\n" not in str(info.value) and not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_unsupported_norm_and_model_are_refused(tmp_path):
    with pytest.raises(ExportError, match="ℓ1, ℓ2 and ℓ∞"):
        to_onnx(MODELS["icnn-shift"](), tmp_path / "m.onnx", norms=(3,))
    multi = build_model({"kind": "linf-dist", "input_shape": list(SHAPE), "widths": [8], "num_classes": 3})
    with pytest.raises(ExportError, match="only binary, plain"):
        to_onnx(multi, tmp_path / "m.onnx")


def test_missing_onnx_gives_a_clear_error(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnx", None)  # `import onnx` now raises ImportError
    with pytest.raises(ExportDependencyError, match=r"pip install 'asymcert\[export\]'"):
        to_onnx(MODELS["icnn-shift"](), tmp_path / "m.onnx")


def test_cli_exports_a_run_folder(tmp_path):
    run = tmp_path / "run"
    run.mkdir()
    save(MODELS["icnn-shift"](), run)
    res = CliRunner().invoke(main, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.onnx")])
    assert res.exit_code == 0, res.output
    assert "radius_linf" in res.output
    sess = ort.InferenceSession(str(tmp_path / "m.onnx"))
    assert [o.name for o in sess.get_outputs()] == ["score", "flagged", "radius_l1", "radius_l2", "radius_linf"]
    res = CliRunner().invoke(main, ["export", str(run), "--format", "onnx", "--out", str(tmp_path / "m.txt")])
    assert res.exit_code == 2 and "give --out that suffix" in res.output and not (tmp_path / "m.txt").exists()


DEPLOY_EXAMPLE = """
import sys
import numpy as np
import onnxruntime as ort

sess = ort.InferenceSession(sys.argv[1], providers=["CPUExecutionProvider"])
x = np.random.default_rng(0).random((4, 1, 6, 6), dtype=np.float32)  # (N, *input_shape), raw units
out = dict(zip([o.name for o in sess.get_outputs()], sess.run(None, {"x": x})))
for i in range(len(x)):
    print(f"score {out['score'][i]:+.4f} flagged {bool(out['flagged'][i])} "
          f"l1 {out['radius_l1'][i]:.4g} l2 {out['radius_l2'][i]:.4g} linf {out['radius_linf'][i]:.4g}")
assert "torch" not in sys.modules
"""


def test_the_deploy_example_runs_without_torch(tmp_path):
    path = to_onnx(MODELS["icnn-shift"](), tmp_path / "model.onnx")
    res = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(DEPLOY_EXAMPLE), str(path)], capture_output=True, text=True, timeout=120
    )
    assert res.returncode == 0, res.stderr
    assert res.stdout.count("score") == 4


# ---------------------------------------------------------------------------------------------
# Threat-model radii in the graph
# ---------------------------------------------------------------------------------------------

D_TM = 8
TM_FILE = {
    "scale": {"0": 2.0, "3": 0.25, "*": 0.5},
    "immutable": [1],
    "increase_only": [2, 5],
    "decrease_only": [3],
    "lower": {"*": 0.0},
    "upper": {"4": 3.0},
}


def _tabular(feature_map):
    torch.manual_seed(0)
    m = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [D_TM],
            "feature_map": feature_map,
            "convex": {"kind": "icnn", "widths": [16, 16]},
        }
    ).eval()
    x = torch.rand(400, D_TM, generator=torch.Generator().manual_seed(0)) * 4
    m.feature_map.fit(x)
    with torch.no_grad():  # about half flagged; no score within float32 rounding of 0
        m.balance -= m(x).median() + 1e-3
    return m, x


@pytest.mark.parametrize(
    "feature_map",
    [
        [{"kind": "standardize"}],
        [{"kind": "log1p"}, {"kind": "standardize"}],
        [{"kind": "shift"}, {"kind": "concat-abs"}],
        [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": 3}],
        [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "pair-min"}, {"kind": "hinges", "knots": 2}],
        [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "group-min", "order": 3}, {"kind": "hinges", "knots": 2}],
    ],
    ids=["standardize", "log1p-standardize", "concat-abs", "hinges", "pair-min", "group-min"],
)
def test_threat_model_radii_in_the_graph_are_the_librarys_rounded_down(feature_map, tmp_path, monkeypatch):
    """The graph computes the closed form with φ's global weight bounds: the library's radii rounded down.
    (pair-min's and group-min's point harms, which the library adds on top, are not in the graph: checked without them,
    and the library's radii with them are never below the graph's.)"""
    model, x = _tabular(feature_map)
    tm = asymcert.ThreatModel.from_dict(TM_FILE).resolve(None, D_TM)
    sess = _session(model, tmp_path, threat_model=tm)
    out = _run(sess, x)
    assert [o.name for o in sess.get_outputs()][-3:] == ["tm_radius_l1", "tm_radius_l2", "tm_radius_linf"]
    # an empty batch (a stream's empty chunk) gives empty outputs (the pair maps' reshapes failed in onnxruntime)
    assert {name: tuple(v.shape) for name, v in _run(sess, x[:0]).items()} == {name: (0,) for name in out}
    empty = asymcert.certify(model, x[:0], norms=NORMS, threat_model=tm)
    assert all(tuple(empty.radii[p].shape) == (0,) for p in NORMS)
    with_points = asymcert.certify(model, x, norms=NORMS, threat_model=tm, precision="float64")
    monkeypatch.setattr(threat_model_module, "pair_point_harms", lambda *args: None)
    lib = asymcert.certify(model, x, norms=NORMS, threat_model=tm, precision="float64")
    for p in NORMS:
        assert bool((lib.radii[p] <= with_points.radii[p]).all())
    reach = asymcert.certify(model, x, norms=NORMS, threat_model=tm, precision="float64", reach=True)
    assert torch.equal(out["flagged"], lib.sensitive)
    for p in NORMS:
        name = "tm_radius_linf" if math.isinf(p) else f"tm_radius_l{p:g}"
        got, want = out[name].double(), lib.radii[p]
        assert bool((got <= want).all()), f"{name}: a graph radius above the library's"
        assert bool((want <= reach.radii[p]).all())
        far = _away(model, x, out["score"])
        assert int(far.sum()) > 50 and torch.allclose(got[far], want[far], rtol=1e-4)
        flagged = out["flagged"] & (got > 0)
        inside = threat_attack(
            model, x[flagged], got[flagged] * 0.999, p, tm, steps=40, generator=torch.Generator().manual_seed(0)
        )
        assert bool(_run(sess, inside)["flagged"].all()), f"{name}: onnxruntime flips inside the radius"


@pytest.mark.parametrize(
    "feature_map",
    [
        [{"kind": "log1p"}, {"kind": "standardize"}],
        [{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": 3}],
    ],
    ids=["log1p-standardize", "hinges"],
)
def test_threat_model_radii_in_the_graph_near_the_boundary(feature_map, tmp_path):
    """Inputs bisected onto the decision boundary: every graph threat radius is 0 or at most the library's
    (closed form and reach), and the threat-model attack in onnxruntime flips none inside it."""
    model, raw = _tabular(feature_map)
    x = near_boundary(model, raw)
    tm = asymcert.ThreatModel.from_dict(TM_FILE).resolve(None, D_TM)
    sess = _session(model, tmp_path, threat_model=tm)
    out = _run(sess, x)
    lib = asymcert.certify(model, x, norms=NORMS, threat_model=tm, precision="float64")
    for p in NORMS:
        name = "tm_radius_linf" if math.isinf(p) else f"tm_radius_l{p:g}"
        got = out[name].double()
        assert bool(((got == 0) | (got <= lib.radii[p])).all())
        flagged = out["flagged"] & (got > 0)
        assert int(flagged.sum()) > 5  # not only zeros
        inside = threat_attack(
            model, x[flagged], got[flagged] * 0.999, p, tm, steps=40, generator=torch.Generator().manual_seed(1)
        )
        assert bool(_run(sess, inside)["flagged"].all()), f"{name}: onnxruntime flips inside the radius"


class _WeightsOnlyLog1p(Log1p):
    """log1p that declares its weight bounds with its forward but no slope intervals."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x)

    def lipschitz(self, p: float) -> float:
        return super().lipschitz(p)

    def weight_bounds(self, w_lo: torch.Tensor, w_hi: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        return super().weight_bounds(w_lo, w_hi)


def test_a_map_with_weight_bounds_only_gets_the_librarys_threat_radii_not_the_fallback(tmp_path):
    model, x = _tabular([{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": 3}])
    model.feature_map.maps[0] = _WeightsOnlyLog1p()
    assert coordinate_slopes(model.feature_map, D_TM) is None  # the slope route is closed
    tm = asymcert.ThreatModel.from_dict(TM_FILE).resolve(None, D_TM)
    out = _run(_session(model, tmp_path, threat_model=tm), x)
    lib = asymcert.certify(model, x, norms=NORMS, threat_model=tm, precision="float64")
    far = _away(model, x, out["score"])
    for p in NORMS:
        name = "linf" if math.isinf(p) else f"l{p:g}"
        got, want = out[f"tm_radius_{name}"].double(), lib.radii[p]
        assert bool((got <= want).all()) and torch.allclose(got[far], want[far], rtol=1e-4)
        fallback = out[f"radius_{name}"].double() / 2.0  # the largest movable scale of TM_FILE is 2
        assert bool((got[far] > 1.5 * fallback[far]).any())


def test_threat_model_radii_of_other_families_use_the_fallback(tmp_path):
    model = _linf()
    tm = asymcert.ThreatModel(immutable=[0, 1, 2], scale={"*": 2.0}).resolve(None, math.prod(SHAPE))
    x = torch.rand(200, *SHAPE, generator=torch.Generator().manual_seed(3))
    out = _run(_session(model, tmp_path, threat_model=tm), x)
    lib = asymcert.certify(model, x, norms=NORMS, threat_model=tm)
    for p in NORMS:
        name = "linf" if math.isinf(p) else f"l{p:g}"
        assert bool((out[f"tm_radius_{name}"].double() <= lib.radii[p]).all())
        assert torch.allclose(out[f"tm_radius_{name}"], out[f"radius_{name}"] / 2, rtol=1e-6)
    empty = _session(model, tmp_path, threat_model=asymcert.ThreatModel().resolve(None, math.prod(SHAPE)))
    assert [o.name for o in empty.get_outputs()] == ["score", "flagged", "radius_l1", "radius_l2", "radius_linf"]


def test_missing_folders_are_created_and_removed_again_when_the_export_fails(tmp_path, monkeypatch):
    """The docstring said the folder must exist; missing folders are created (review s33, finding 7), and an
    export that fails removes the ones it made."""
    model = small_feature_convex("icnn", input_shape=(1, 4, 4))
    assert to_onnx(model, tmp_path / "new" / "sub" / "m.onnx").is_file()
    assert "missing folders on its way are created" in " ".join((to_onnx.__doc__ or "").split())

    def broken(*args, **kwargs):
        raise RuntimeError("the tracer died")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="the tracer died"):
        to_onnx(model, tmp_path / "other" / "sub" / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["new"]


def test_an_export_that_fails_leaves_the_earlier_file_as_it_was(tmp_path, monkeypatch):
    """The graph is written beside its target and renamed onto it only once checked: a failing export (here the
    tracer writes half a file and dies) leaves the earlier file and no temporary file."""
    model = small_feature_convex("icnn", input_shape=(1, 4, 4))
    out = tmp_path / "m.onnx"
    to_onnx(model, out)
    before = out.read_bytes()

    def broken(graph, args, path, **kwargs):
        Path(path).write_bytes(b"half a graph")
        raise RuntimeError("the tracer died")

    monkeypatch.setattr(torch.onnx, "export", broken)
    with pytest.raises(RuntimeError, match="the tracer died"):
        to_onnx(model, out)
    assert out.read_bytes() == before and sorted(p.name for p in tmp_path.iterdir()) == ["m.onnx"]


def test_the_graph_records_what_it_computes(tmp_path):
    """doc_string and metadata_props (asymcert.*, JSON values) name the features, the outputs' meanings, the units,
    the threat model and that φ is inside the graph (the file said none of it)."""
    model = MODELS["icnn-shift"]()
    names = [f"pixel ({i // 6}, {i % 6})" for i in range(36)]
    tm = asymcert.ThreatModel(immutable=[0], scale={1: 2.0})
    tm_units = tm.resolve(None, 36).units()
    proto = onnx.load(str(to_onnx(model, tmp_path / "m.onnx", feature_names=names, threat_model=tm)))
    meta = {p.key: p.value for p in proto.metadata_props}
    assert json.loads(meta["asymcert.feature_names"]) == names and json.loads(meta["asymcert.input_shape"]) == [1, 6, 6]
    outputs = json.loads(meta["asymcert.outputs"])
    assert list(outputs) == [o.name for o in proto.graph.output] and "threat model" in outputs["tm_radius_l2"]
    assert json.loads(meta["asymcert.threat_model"]) == tm.to_dict()
    preprocessing = json.loads(meta["asymcert.preprocessing"])
    assert preprocessing["inside_graph"] and preprocessing["feature_map"] == model.config()["feature_map"]
    assert "threat-model units" in meta["asymcert.units"] or "threat model" in meta["asymcert.units"]
    assert "inside the graph" in proto.doc_string and "asymcert.feature_names" in proto.doc_string
    # audit units30 F4: radius_* are raw, tm_radius_* in the threat model's units, each family named on its own
    assert meta["asymcert.units.radius"] == "raw input units" and meta["asymcert.units.tm_radius"] == tm_units
    assert f"Radii units: radius_* in raw input units; tm_radius_* in {tm_units};" in proto.doc_string
    assert f"Radii units: {tm_units}" not in proto.doc_string
    meta = {p.key: p.value for p in onnx.load(str(to_onnx(model, tmp_path / "p.onnx"))).metadata_props}
    assert json.loads(meta["asymcert.feature_names"]) is None and meta["asymcert.units"] == "raw input units"
    assert meta["asymcert.units.radius"] == "raw input units" and "asymcert.units.tm_radius" not in meta
    bare = onnx.load(str(to_onnx(model, tmp_path / "s.onnx", certificates=False)))
    assert not any(p.key.startswith("asymcert.units.") for p in bare.metadata_props)
    assert "Radii units" not in bare.doc_string and "No threat model." in bare.doc_string
    with pytest.raises(ExportError, match="feature_names must be 36 strings"):
        to_onnx(model, tmp_path / "q.onnx", feature_names=names[:3])
    assert not (tmp_path / "q.onnx").exists()


def test_an_export_removes_its_own_stale_temp_files_only(tmp_path):
    """A killed export's ``.m.onnx.asymcert-<8>.tmp`` goes; the user's ``.m.onnx.readme_1`` beside the target,
    which looks like a ``mkstemp`` name, stays (it was deleted as a stale temporary file)."""
    (tmp_path / ".m.onnx.asymcert-ab12cd_9.tmp").write_bytes(b"half a graph")
    mine = [".m.onnx.readme_1", ".m.onnx.20240101", ".m.onnx.abcdefgh"]
    for name in mine:
        (tmp_path / name).write_text("the user's")
    past = time.time() - 60  # (a temporary file this old, which no process locks, is a killed write's)
    for p in tmp_path.iterdir():
        os.utime(p, (past, past))
    to_onnx(small_feature_convex("icnn", input_shape=(1, 4, 4)), tmp_path / "m.onnx")
    assert sorted(p.name for p in tmp_path.iterdir()) == sorted([*mine, "m.onnx"])
    assert all((tmp_path / name).read_text() == "the user's" for name in mine)


def test_process_wide_hooks_are_refused_before_tracing(tmp_path):
    model = small_feature_convex("icnn", input_shape=(1, 4, 4))
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        with pytest.raises(ExportError, match="process-wide module forward hook"):
            to_onnx(model, tmp_path / "m.onnx")
    finally:
        handle.remove()
    assert not (tmp_path / "m.onnx").exists()


def test_a_move_cost_below_float32_is_not_rounded_to_zero_in_the_graph(tmp_path):
    """s(x) = 1e-10 − 1.2e-38·x₀ with scale 1e-8: the move cost 1.2e-46 became 0 in float32, the graph's radius ∞,
    and onnxruntime's own score was negative at an allowed x₀ = 8.4e27 (review 26b G3). Now it is rounded up to a
    subnormal: a finite radius, and no allowed point inside it is unflagged."""
    model = one_unit_icnn(2)
    with torch.no_grad():
        model.convex.passthrough[0].weight.zero_()
        model.convex.passthrough[0].bias.zero_()
        model.convex.hidden[0].weight.zero_()
        model.convex.passthrough[1].weight.copy_(torch.tensor([[-1.2e-38, 0.0]]))
        model.convex.passthrough[1].bias.fill_(1e-10)
    spec = {"increase_only": ["0"], "immutable": ["1"], "scale": {"0": 1e-8}, "lower": {"*": 0.0}, "upper": {"*": 1e30}}
    tm = asymcert.ThreatModel.from_dict(spec).resolve(None, 2)
    sess = _session(model.eval(), tmp_path, threat_model=tm)
    r = float(_run(sess, torch.zeros(1, 2))["tm_radius_linf"][0])
    assert 0 < r < math.inf
    moves = torch.tensor([[0.999 * r * 1e-8 * f, 0.0] for f in (1e-3, 0.5, 1.0)])
    assert bool(_run(sess, moves)["flagged"].all())


def test_the_graphs_guard_covers_a_score_that_underflows(tmp_path):
    """s = 1e-38·x at x = 2e-7: every term is subnormal in float32, and the deployed model scores 0 at
    x' = 7.000038e-8, inside the radius the graph gave with a purely relative guard (review s32, F2a); the graph
    now takes underflow's absolute error off its margin, as the library does."""
    g = ICNN((1,), widths=(1,), batch_norm=False)
    with torch.no_grad():
        for q in g.parameters():
            q.zero_()
        g.passthrough[1].weight.fill_(1e-38)
    model = FeatureConvexClassifier(Compose([Identity()]), g, (1,)).eval()
    x, xp = torch.tensor([[2e-7]]), torch.tensor([[7.000038e-8]])
    with torch.no_grad():
        assert float(model(xp)[0]) <= 0.0 < float(model(x)[0])  # the deployed model unflags at x'
    got = _run(_session(model, tmp_path), x)
    assert bool(got["flagged"][0]) and float(got["radius_linf"][0]) <= float(x.double() - xp.double())
    assert float(got["radius_linf"][0]) <= float(asymcert.certify(model, x, norms=NORMS).radii[math.inf][0])


TINY32 = float(torch.finfo(torch.float32).tiny)
MAX32 = float(torch.finfo(torch.float32).max)


@pytest.mark.parametrize(
    ("weight", "bias", "scale"), [(1.0, 10.0, TINY32), (1e-39, 1.0, 1e-30)], ids=["scale", "weights"]
)
def test_radii_past_float32s_range_are_capped_not_infinite(weight, bias, scale, tmp_path):
    """s = b + w·(x₀ − x₁): with scales at float32's smallest normal (allowed) the threat-model ℓ∞ radius is
    10/(2·1.18e-38) ≈ 4.3e38, past float32's largest value; with weights of 1e-39 the raw quotient is 5e38 (the
    overflow cap keeps the raw radius finite) and the threat-model one at scale 1e-30 5e68. The graph's float32
    quotients overflowed to +∞ and a move of finite threat-model size flipped onnxruntime's decision (review s33,
    finding 3). Now every radius is finite and at most the library's."""
    model = affine_icnn([weight, -weight], bias)
    tm = asymcert.ThreatModel(scale={"*": scale}).resolve(None, 2)
    x = torch.zeros(1, 2)
    sess = _session(model, tmp_path, threat_model=tm)
    out = _run(sess, x)
    raw = asymcert.certify(model, x, norms=NORMS)
    lib = asymcert.certify(model, x, norms=NORMS, threat_model=tm)
    for p in NORMS:
        name = "linf" if math.isinf(p) else f"l{p:g}"
        for key, want in ((f"radius_{name}", raw.radii[p]), (f"tm_radius_{name}", lib.radii[p])):
            got = float(out[key][0])
            assert math.isfinite(float(want[0])) and 0 < got <= min(float(want[0]), MAX32), (key, got)
    if weight == 1.0:  # a move of threat-model ℓ∞ size 5.5/scale ≈ 4.7e38 unflags: it is outside the radius
        assert not bool(_run(sess, torch.tensor([[-5.5, 5.5]]))["flagged"][0])
        assert float(out["tm_radius_linf"][0]) < 5.5 / scale


def test_the_generic_threat_radius_caps_an_overflowing_quotient():
    """The fallback r / max scale (families without a closed form): a float32 quotient past float32's range is
    float32's largest value, not +∞; +∞ stays where no coordinate may move at all (nothing lowers the score)."""
    tiny = ThreatTerms(torch.nn.Identity(), asymcert.ThreatModel(scale={"*": TINY32}).resolve(None, 2))
    got = tiny.fallback(torch.zeros(3, 2), torch.tensor([5.0, 1e-30, 0.0]))
    assert math.isfinite(float(got[0])) and 0 < float(got[0]) <= 5.0 / TINY32
    assert float(got[1]) == pytest.approx(1e-30 / TINY32, rel=1e-6) and float(got[2]) == 0.0
    frozen = ThreatTerms(torch.nn.Identity(), asymcert.ThreatModel(immutable=[0, 1]).resolve(None, 2))
    assert frozen.fallback(torch.zeros(2, 2), torch.tensor([5.0, 0.0])).tolist() == [math.inf, 0.0]


def test_an_infinite_radius_by_construction_stays_infinite_under_tiny_scales(tmp_path):
    """s = 10 + x₀ − x₁ with x₀ increase-only and x₁ immutable in a bounded domain: no allowed move lowers the
    score, every float64 move cost is exactly 0, and the radius stays +∞ (capping overflows must not touch it);
    without the domain's bound it is capped finite as the library caps it."""
    spec = {"increase_only": [0], "immutable": [1], "scale": {"*": TINY32}, "lower": {"*": -100.0}}
    x = torch.zeros(1, 2)
    model = affine_icnn([1.0, -1.0], 10.0)
    for bounds, infinite in (({"upper": {"*": 100.0}}, True), ({}, False)):
        tm = asymcert.ThreatModel.from_dict({**spec, **bounds}).resolve(None, 2)
        out = _run(_session(model, tmp_path, threat_model=tm), x)
        lib = asymcert.certify(model, x, norms=NORMS, threat_model=tm)
        for p in NORMS:
            got = float(out["tm_radius_linf" if math.isinf(p) else f"tm_radius_l{p:g}"][0])
            assert math.isinf(got) == infinite and 0 < got <= float(lib.radii[p][0])
