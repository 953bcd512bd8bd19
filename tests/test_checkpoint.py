import json

import pytest
import torch
from safetensors.torch import load_file, save_file

import asymcert
from asymcert.checkpoint import CONFIG_KEY
from tests.conftest import small_feature_convex


def test_roundtrip_file_and_folder(tmp_path):
    model = small_feature_convex("conv", feature_map=[{"kind": "shift"}, {"kind": "concat-abs"}])
    path = asymcert.save(model, tmp_path / "m.safetensors")
    (tmp_path / "run").mkdir()
    asymcert.save(model, tmp_path / "run")
    x = torch.rand(5, 1, 6, 6)
    for loaded in (asymcert.load(path), asymcert.load(tmp_path / "run")):
        assert not loaded.training
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
    with pytest.raises(asymcert.ConvexityError, match="convex.hidden.1.weight"):
        asymcert.load(path)
    assert asymcert.load(path, validate=False) is not None


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
    with pytest.raises(asymcert.UnknownNameError, match="feature-convex"):
        asymcert.load(path)
