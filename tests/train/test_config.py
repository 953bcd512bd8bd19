"""Typed training settings: every field checked at construction, every problem named in one line."""

from __future__ import annotations

import json
import math
from dataclasses import fields, replace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from asymcert.data import get_task, task_names
from asymcert.errors import AsymcertError, ConfigError, SettingsError, UnknownNameError
from asymcert.families import TaskFacts, families
from asymcert.pipeline import _merge
from asymcert.train import TrainConfig
from asymcert.train.config import check_model_overrides, parse_device, unapplied_keys
from asymcert.train.loop import resolve_device
from tests.conftest import examples

BAD = {
    "epochs": [0, -3, 2.0, "5", True, None],
    "batch_size": [0, -1, 1.5, "64"],
    "lr": [0, -1e-3, math.nan, math.inf, "fast", "{bad", None],
    "optimizer": ["rmsprop", "", 1],
    "momentum": [-0.1, 1.0, "x"],
    "lr_decay": [0, 1.5, math.nan],
    "schedule": ["linear", None],
    "weight_decay": [-1, math.inf],
    "jacobian_reg": [-0.1, "a"],
    "margin_radius": [-1.0, [], [1.0, -2.0], math.inf, "1"],
    "margin_norm": [0.5, "linf", [], [2, 0], math.nan],
    "margin_warmup": [-0.1, 1.5],
    "margin_weight": [0.0, -0.5, 1.5],
    "sensitive_weight": [0, -1],
    "train_at_balance": [1, "yes"],
    "false_positive_rate": [-0.01, 1.0, 1.5, math.nan, "1%", True],
    "false_positive_confidence": [0, 1.0, -0.5, math.nan, "high"],
    "ensemble_training": ["average", 1],
    "refit": [1, "yes", None],
    "teacher": [3, "", ["a"]],
    "distill_weight": [-0.1, 1.5, "x", math.nan],
    "distill_temperature": [0, -1, math.inf],
    "seed": [-1, 2**63, 1.0],
    "device": ["tpu9", "meta", "cuda:x", 3, ""],
    "augment": ["nope", 1, None],
    "eval_batch_size": [0],
    "amp": ["true", 0],
    "workers": [-1, 1.5],
    "extra": [[1], "x", {1: 2}],
}


@pytest.mark.parametrize("name, value", [(k, v) for k, vs in BAD.items() for v in vs])
def test_every_bad_value_is_named(name, value):
    with pytest.raises(SettingsError, match=f"^training settings: a problem: {name} must be") as info:
        TrainConfig.from_dict({name: value})
    assert "\n" not in str(info.value)
    with pytest.raises(SettingsError, match=name):  # direct construction is checked the same way
        TrainConfig(**{name: value})


def test_every_field_has_a_rule_and_bad_examples():
    assert {f.name for f in fields(TrainConfig)} == set(BAD)


def test_a_false_positive_confidence_needs_its_budget():
    with pytest.raises(SettingsError, match="false_positive_confidence needs false_positive_rate"):
        TrainConfig(false_positive_confidence=0.95)
    assert TrainConfig(false_positive_rate=0.01, false_positive_confidence=0.95).false_positive_confidence == 0.95
    for seen in ("refit", "train_at_balance"):
        with pytest.raises(SettingsError, match=f"did not depend on; {seen}=true uses it"):
            TrainConfig(false_positive_rate=0.01, false_positive_confidence=0.95, **{seen: True})


def test_all_problems_are_listed_at_once():
    with pytest.raises(SettingsError) as info:
        TrainConfig.from_dict({"epochs": -3, "lr": "fast", "device": "tpu9", "nonsense": 1, "augment": "nope"})
    text = str(info.value)
    assert text.startswith("training settings: 5 problems: unknown training setting(s) 'nonsense' (known: epochs,")
    for part in (
        "epochs must be an integer ≥ 1, got -3",
        "lr must be a finite number > 0, got 'fast' (text)",
        "device must be a device name",
        "augment must be true, false, or an augmentation name",
    ):
        assert part in text
    assert "\n" not in text


def test_settings_error_is_every_kind_of_error_callers_catch():
    """SettingsError is a ConfigError and a ValueError, and an UnknownNameError (a KeyError) as unknown keys were."""
    with pytest.raises(SettingsError) as info:
        TrainConfig.from_dict({"nonsense": 1})
    for cls in (AsymcertError, ConfigError, ValueError, UnknownNameError, KeyError):
        assert isinstance(info.value, cls)
    assert str(info.value).startswith("training settings")  # not quoted like a KeyError
    with pytest.raises(SettingsError, match="must be an object"):
        TrainConfig.from_dict([("epochs", 1)])


@pytest.mark.parametrize(
    "radius, norm, ok",
    [
        (0.0, [1.0, 2.0], True),  # the margin loss is off: its norms do not matter
        (1.0, 2.0, True),
        ([1.0, 0.5], [1, "inf"], True),
        ([1.0, 0.5], 2.0, True),
        (1.0, "inf", True),
        (1.0, math.inf, True),
        ([1.0, 0.5], [1.0], False),
        (1.0, [1.0, 2.0], False),
        ([0.0, 0.0], [1.0], False),
    ],
)
def test_margin_radii_and_norms_pair_up(radius, norm, ok):
    if ok:
        TrainConfig(margin_radius=radius, margin_norm=norm)
    else:
        with pytest.raises(SettingsError, match="must pair up"):
            TrainConfig(margin_radius=radius, margin_norm=norm)


def test_every_shipped_default_and_preset_is_valid():
    for name in task_names():
        task = get_task(name)
        TrainConfig.from_dict(task.train)
        for preset in task.presets.values():
            TrainConfig.from_dict(_merge(task.train, preset.get("train")))
        facts = TaskFacts(
            binary=task.binary, num_classes=2 if task.binary else 10, report_radii=task.report_radii, train=task.train
        )
        for family in families():
            TrainConfig.from_dict(family.train_defaults(facts))


def test_replace_is_checked_too():
    with pytest.raises(SettingsError, match="batch_size"):
        replace(TrainConfig(), batch_size=0)


SETTING_VALUES = st.one_of(
    st.none(),
    st.booleans(),
    st.integers(-3, 100),
    st.floats(allow_nan=True),
    st.text(max_size=6),
    st.lists(st.floats(-1, 5), max_size=3),
    st.sampled_from(["sgd", "adam", "cosine", "exponential", "cpu", "auto", "crop2_flip", "inf"]),
)


@settings(max_examples=examples(200), deadline=None)
@given(st.dictionaries(st.sampled_from([f.name for f in fields(TrainConfig)]), SETTING_VALUES, max_size=5))
def test_from_dict_accepts_or_refuses_in_one_line(d):
    """Any dict gives a config that round-trips through JSON, or one SettingsError line naming each bad key."""
    try:
        config = TrainConfig.from_dict(d)
    except SettingsError as exc:
        text = str(exc)
        assert "\n" not in text and text.startswith("training settings: ")
        assert any(f"{k} " in text for k in d)
        return
    assert TrainConfig.from_dict(json.loads(json.dumps(config.to_dict()))) == config


def test_device_names():
    assert parse_device("auto") is None and parse_device("cpu") == torch.device("cpu")
    assert parse_device("cuda:1") == torch.device("cuda:1")  # a valid name, present or not
    for bad in ("tpu9", "meta", "cuda:x", "", 5):
        with pytest.raises(ConfigError, match="auto, cpu, cuda, cuda:<index> or mps"):
            parse_device(bad)
    assert resolve_device("cpu") == torch.device("cpu")
    if not torch.cuda.is_available():
        with pytest.raises(ConfigError, match=r"device 'cuda:1' is not available here; devices here: auto, cpu"):
            resolve_device("cuda:1")


def test_unapplied_model_keys_are_found_at_any_depth():
    built = {
        "kind": "feature-convex",
        "input_shape": [4],
        "feature_map": [{"kind": "shift"}],
        "convex": {"kind": "icnn", "widths": [8], "batch_norm": True},
    }
    assert unapplied_keys({"convex": {"widths": [4]}, "kind": "feature-convex"}, built) == []
    assert unapplied_keys({"bogus": 1, "convex": {"widths": [4], "channels": 2}}, built) == ["bogus", "convex.channels"]
    assert unapplied_keys({"feature_map": [{"kind": "shift", "scale": 2}]}, built) == ["feature_map[0].scale"]
    check_model_overrides({"convex": {"batch_norm": False}}, built)
    with pytest.raises(
        SettingsError,
        match=r"'bogus' have no effect on a 'feature-convex' model; its settings "
        r"are: convex, feature_map, input_shape, kind",
    ):
        check_model_overrides({"bogus": 1}, built)


def test_train_run_refuses_an_ignored_model_setting(fashion_dir, tmp_path):
    """The Python API refuses ``model_overrides`` the model drops, before writing anything."""
    from asymcert.pipeline import train_run

    with pytest.raises(SettingsError, match="'bogus'"):
        train_run(
            {"name": "fashion-mnist-shirts"},
            tmp_path / "out",
            "fast",
            {"epochs": 1},
            {"bogus": 1},
            data_dir=fashion_dir,
            progress=False,
        )
    assert not (tmp_path / "out").exists()
