import json
import math

import pytest
import torch
from click.testing import CliRunner
from safetensors.torch import load_file, save_file

import asymcert
from asymcert.checkpoint import BUILD_STEPS_PER_TENSOR, BUILD_STEPS_SLACK, CONFIG_KEY
from asymcert.cli import main
from asymcert.models import build_model
from tests.conftest import small_feature_convex


def test_roundtrip_file_and_folder(tmp_path):
    model = small_feature_convex("conv", feature_map=[{"kind": "shift"}, {"kind": "concat-abs"}])
    path = asymcert.save(model, tmp_path / "m.safetensors")
    (tmp_path / "run").mkdir()
    asymcert.save(model, tmp_path / "run")
    x = torch.rand(5, 1, 6, 6)
    saved = model.state_dict()
    for loaded in (asymcert.load(path), asymcert.load(tmp_path / "run")):
        assert not loaded.training
        state = loaded.state_dict()
        assert set(state) == set(saved)
        for name, tensor in saved.items():  # bit for bit: same dtype, shape and values (NaN-free weights)
            assert state[name].dtype == tensor.dtype and torch.equal(state[name], tensor), name
        assert torch.equal(loaded(x), model(x))
        assert loaded.config() == model.config()


def test_missing_checkpoint(tmp_path):
    with pytest.raises(asymcert.CheckpointError, match="no checkpoint"):
        asymcert.load(tmp_path / "nothing.safetensors")


def test_corrupted_checkpoint(tmp_path):
    path = asymcert.save(small_feature_convex("icnn"), tmp_path / "m.safetensors")
    raw = bytearray(path.read_bytes())
    path.write_bytes(bytes(raw[: len(raw) // 2]))
    with pytest.raises(asymcert.CheckpointError):
        asymcert.load(path)
    path.write_bytes(b"not a checkpoint at all")
    with pytest.raises(asymcert.CheckpointError):
        asymcert.load(path)


def test_negative_convex_weights_in_checkpoint_refused(tmp_path):
    model = small_feature_convex("icnn")
    path = asymcert.save(model, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    tensors["convex.hidden.1.weight"][0, 0] = -0.25
    from safetensors import safe_open

    with safe_open(str(path), framework="pt") as fh:
        meta = fh.metadata()
    save_file(tensors, str(path), metadata=meta)
    with pytest.raises(asymcert.ConvexityError, match=r"convex.hidden.1.weight"):
        asymcert.load(path)
    # validate=False loads exactly the stored (tampered) tensors and computes with them
    unchecked = asymcert.load(path, validate=False)
    state = unchecked.state_dict()
    assert set(state) == set(tensors)
    for name, stored in tensors.items():
        assert state[name].dtype == stored.dtype and torch.equal(state[name], stored), name
    with torch.no_grad():
        model.get_submodule("convex.hidden.1").weight[0, 0] = -0.25
    x = torch.rand(5, 1, 6, 6)
    assert torch.equal(unchecked(x), model.eval()(x))


def test_weights_not_matching_config(tmp_path):
    model = small_feature_convex("icnn")
    path = asymcert.save(model, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    cfg = model.config()
    cfg["convex"]["widths"] = [5, 5]
    save_file(tensors, str(path), metadata={CONFIG_KEY: json.dumps(cfg)})
    with pytest.raises(asymcert.CheckpointError, match="do not match"):
        asymcert.load(path)


def test_unknown_model_kind(tmp_path):
    path = tmp_path / "m.safetensors"
    save_file({"a": torch.zeros(1)}, str(path), metadata={CONFIG_KEY: json.dumps({"kind": "mystery"})})
    with pytest.raises(asymcert.UnknownNameError, match="feature-convex") as err:
        asymcert.load(path)
    assert str(err.value).startswith(f"{path}: unknown model kind 'mystery'")  # the file named (s34 ckpt F8)


def _rewrite(path, tensors=None, config=None, meta="{}"):
    """Rewrite a checkpoint with other tensors and/or another stored config (JSON text or object)."""
    tensors = load_file(str(path)) if tensors is None else tensors
    text = config if isinstance(config, str) else json.dumps(config)
    save_file(tensors, str(path), metadata={CONFIG_KEY: text, "asymcert_meta": meta})


def test_tensors_of_another_kind_of_dtype_are_refused_before_loading(tmp_path):
    model = small_feature_convex("icnn")
    path = asymcert.save(model, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    tensors["convex.hidden.0.weight"] = tensors["convex.hidden.0.weight"].to(torch.int64)
    _rewrite(path, tensors, model.config())
    with pytest.raises(
        asymcert.CheckpointError, match=r"convex\.hidden\.0\.weight of dtype I64 \(config says torch.float32\)"
    ):
        asymcert.load(path)
    tensors = load_file(str(asymcert.save(model, path)))  # float64 weights of the same values still load
    _rewrite(path, {k: v.double() if v.is_floating_point() else v for k, v in tensors.items()}, model.config())
    x = torch.rand(3, 1, 6, 6)
    assert torch.equal(asymcert.load(path)(x), model.eval()(x))


@pytest.mark.parametrize(
    "config, meta, match",
    [
        ("[1, 2]", "{}", "stored model config is a JSON list"),
        ("null", "{}", "stored model config is a JSON NoneType"),
        ("[" * 100_000 + "]" * 100_000, "{}", r"m\.safetensors: corrupted model config: nested too deeply"),
        (None, "[" * 100_000 + "]" * 100_000, r"m\.safetensors: corrupted model config: nested too deeply"),
        ('{"kind": "feature-convex", "kind": "mystery"}', "{}", "key 'kind' appears twice"),
        ('{"kind": 1' + "0" * 5000 + "}", "{}", "corrupted model config: .*digits"),
        (None, "[]", "stored metadata is a JSON list"),
        ({"kind": "feature-convex", "input_shape": [1, 6, 6]}, "{}", "config is invalid: .*missing key 'convex'"),
        (
            {
                "kind": "feature-convex",
                "input_shape": [1, 6, 6],
                "feature_map": [{"kind": "shift"}],
                "convex": {"kind": "icnn", "widths": [-3]},
            },
            "{}",
            "config is invalid: .*widths",
        ),
    ],
)
def test_a_stored_config_that_is_not_a_model_config_is_one_checkpoint_error(tmp_path, config, meta, match):
    model = small_feature_convex("icnn")
    path = asymcert.save(model, tmp_path / "m.safetensors")
    _rewrite(path, config=model.config() if config is None else config, meta=meta)
    with pytest.raises(asymcert.CheckpointError, match=match):
        asymcert.load(path)


def test_save_refuses_what_load_would_refuse_unless_asked(tmp_path):
    """NaN weights are not saved by default (the error names them and the way out); with validate=False they
    are, and load reads them back only with validate=False. An ℓ∞-dist net at finite p (mid-training) is saved:
    load rebuilds it at p = ∞, the model that is certified."""
    net = build_model({"kind": "linf-dist", "input_shape": [4], "widths": [6], "num_classes": 3})
    net.set_p(8.0)
    again = asymcert.load(asymcert.save(net, tmp_path / "m.safetensors"))
    assert [layer.p for layer in again.distance_layers()] == [math.inf, math.inf]
    with torch.no_grad():
        net.out.weight[0, 0] = float("nan")
    with pytest.raises(asymcert.ModelError, match=r"NaN.*not saved: .*save\(\.\.\., validate=False\)"):
        asymcert.save(net, tmp_path / "n.safetensors")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["m.safetensors"]
    asymcert.save(net, tmp_path / "n.safetensors", validate=False)
    with pytest.raises(asymcert.ModelError, match="NaN"):
        asymcert.load(tmp_path / "n.safetensors")
    assert asymcert.load(tmp_path / "n.safetensors", validate=False).out.weight.isnan().sum() == 1


def test_save_refuses_weights_that_do_not_fit_the_models_config_in_one_line(tmp_path):
    """A parameter registered after building was a multi-line RuntimeError from load_state_dict."""
    model = small_feature_convex("icnn")
    model.register_parameter("extra_scale", torch.nn.Parameter(torch.ones(1)))
    with pytest.raises(asymcert.ModelError, match=r"do not fit its config\(\) \(.*extra_scale.*\); not saved") as info:
        asymcert.save(model, tmp_path / "m.safetensors")
    assert "\n" not in str(info.value) and list(tmp_path.iterdir()) == []


def test_a_count_the_files_tensors_cannot_match_is_refused_before_it_is_built(tmp_path):
    """{"kind": "mean", "count": N} built N members before the shape check (20,000: 104 s and 1.33 GB)."""
    model = small_feature_convex("icnn")
    path = asymcert.save(model, tmp_path / "m.safetensors")
    tensors = load_file(str(path))
    config = model.config()
    config["convex"] = {"kind": "mean", "member": config["convex"], "count": 3000}
    _rewrite(path, tensors, config)
    limit = BUILD_STEPS_PER_TENSOR * len(tensors) + BUILD_STEPS_SLACK
    with pytest.raises(asymcert.CheckpointError, match=f"it builds more than {limit} modules and parameters"):
        asymcert.load(path)
    config["convex"]["count"] = 2  # within the bound: built, then refused by the shape check as before
    _rewrite(path, tensors, config)
    with pytest.raises(asymcert.CheckpointError, match="weights do not match the stored config"):
        asymcert.load(path)


def test_a_safetensors_file_saved_without_asymcert_is_one_checkpoint_error_and_one_cli_line(tmp_path):
    """A user's own safetensors file (a state dict saved with safetensors' save_file: no asymcert config) is
    refused by name, in Python and by `asymcert export` (one line, exit 2, nothing written), and never built
    (no test reached this refusal before: coverage of session 31)."""
    model = small_feature_convex("icnn")
    folder = tmp_path / "theirs"
    folder.mkdir()
    save_file(model.state_dict(), str(folder / "model.safetensors"))
    with pytest.raises(asymcert.CheckpointError, match=r"holds no asymcert model config \(was it saved with asym"):
        asymcert.load(folder)
    before = sorted(p.name for p in folder.iterdir())
    out = tmp_path / "m.onnx"
    res = CliRunner().invoke(main, ["export", str(folder), "--format", "onnx", "--out", str(out)])
    lines = [line for line in res.stderr.splitlines() if line.strip()]
    assert res.exit_code == 2 and len(lines) == 1 and "holds no asymcert model config" in lines[0], res.output
    assert "Traceback" not in res.output
    assert sorted(p.name for p in folder.iterdir()) == before and not out.exists()
