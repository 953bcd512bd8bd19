"""Issue 14 items 1–2: a model asymcert cannot vouch for is refused, with an error naming the module."""

from __future__ import annotations

import functools
import json
import math
from fractions import Fraction
from types import SimpleNamespace

import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn

import asymcert
from asymcert.certify.attacks import pgd_attack
from asymcert.checkpoint import CONFIG_KEY, save
from asymcert.data import get_task, task_names
from asymcert.errors import CheckpointError, ConfigError, ConvexityError, InputError, ModelError, UnknownNameError
from asymcert.families import families, get_family
from asymcert.models import build_model
from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.nn.convex import ICNN, NonnegLinear
from asymcert.nn.feature_maps import Compose, FeatureMap, Shift, Standardize
from asymcert.pipeline import _merge, task_facts
from tests.conftest import one_line, small_feature_convex

TABULAR = {
    "kind": "feature-convex",
    "input_shape": [6],
    "feature_map": [{"kind": "standardize"}],
    "convex": {"kind": "icnn", "widths": [16, 8]},
}


def _tabular_model(seed: int = 0) -> FeatureConvexClassifier:
    torch.manual_seed(seed)
    model = build_model(TABULAR)
    model.feature_map.fit(torch.randn(200, 6) * torch.tensor([1.0, 5.0, 0.1, 2.0, 1.0, 3.0]))
    return model.eval()


def _flips_inside_radius(model: nn.Module, x: torch.Tensor) -> int:
    """PGD in ℓ2 within 0.99 × each certified radius; how many flagged inputs lose the flag."""
    with pytest.warns(UserWarning, match="validate=False: the model's checks"):
        cert = asymcert.certify(model, x, norms=(2,), validate=False)
    keep = (cert.predicted == 1) & (cert.radii[2.0] > 0) & torch.isfinite(cert.radii[2.0])
    x_adv = pgd_attack(
        model,
        x[keep],
        0.99 * cert.radii[2.0][keep],
        2,
        steps=50,
        restarts=2,
        generator=torch.Generator().manual_seed(0),
    )
    with torch.no_grad():
        return int((model(x_adv) <= 0).sum())


def test_plain_layers_with_negative_weights_are_refused_and_would_be_unsound():
    torch.manual_seed(3)
    g = nn.Sequential(nn.Linear(6, 32), nn.ReLU(), nn.Linear(32, 1), nn.Flatten(0))
    with torch.no_grad():
        g[2].weight.copy_(-g[2].weight.abs() * 20)  # concave: the tangent plane is no lower bound
        g[2].bias.fill_(5.0)
    model = FeatureConvexClassifier(Compose([Shift((6,))]), g, (6,)).eval()
    x = torch.randn(64, 6)
    with torch.no_grad():
        model.set_balance(-float(model(x).median()))  # about half the inputs flagged
    # the refused model is unsound indeed: certificates computed anyway are broken by a random search
    assert _flips_inside_radius(model, x) > 0
    with pytest.raises(ConvexityError, match=r"convex: Sequential is not a known input-convex network"):
        model.validate()
    with pytest.raises(ConvexityError):
        asymcert.certify(model, torch.randn(4, 6))


def test_a_swapped_layer_inside_an_icnn_is_named_by_its_path():
    model = _tabular_model()
    model.convex.hidden[1] = nn.Linear(8, 1, bias=False)  # an unconstrained layer after a ReLU
    with pytest.raises(
        ConvexityError, match=r"convex\.hidden\.1: Linear is not allowed here \(allowed: NonnegLinear\)"
    ):
        model.validate()


def test_a_subclass_that_overrides_forward_is_not_on_the_allowlist():
    class Sneaky(NonnegLinear):
        def forward(self, x):
            return -super().forward(x)

    model = _tabular_model()
    model.convex.hidden[0] = Sneaky(16, 8, bias=False)
    with pytest.raises(ConvexityError, match=r"convex\.hidden\.0: Sneaky"):
        model.validate()


def test_every_problem_is_listed_in_one_line():
    model = _tabular_model()
    model.convex.hidden[1] = nn.Linear(8, 1, bias=False)
    with torch.no_grad():
        model.convex.hidden[0].weight[0, 0] = -1.0
        model.feature_map.maps[0].scale[2] = -1e-3
    with pytest.raises(ConvexityError) as info:
        model.validate()
    message = str(info.value)
    assert "\n" not in message
    for part in ("convex.hidden.1", "convex.hidden.0.weight", "feature_map.maps.0: scale"):
        assert part in message


class _UserConvex(nn.Module):
    """A user's own convex g: a max of affine functions, with its contract declared."""

    def __init__(self, d: int) -> None:
        super().__init__()
        self.affine = nn.Linear(d, 4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.affine(x.flatten(1)).amax(dim=1)

    def convexity_contract(self) -> list[str]:
        return [] if bool(torch.isfinite(self.affine.weight).all()) else ["affine.weight is not finite"]


def test_a_user_network_that_declares_its_contract_is_accepted_and_checked():
    model = FeatureConvexClassifier(Compose([Shift((6,))]), _UserConvex(6), (6,)).eval()
    model.validate()
    cert = asymcert.certify(model, torch.randn(32, 6), norms=(2,), precision="float64")
    assert cert.radii[2.0].shape == (32,)
    assert _flips_inside_radius(model, torch.randn(64, 6)) == 0
    with torch.no_grad():
        model.convex.affine.weight[0, 0] = math.inf
    with pytest.raises(ConvexityError, match=r"convex: affine.weight is not finite"):
        model.validate()


def test_feature_maps_must_declare_their_lipschitz_constants():
    class Undeclared(FeatureMap):
        def forward(self, x):
            return 3 * x

    class Declared(FeatureMap):
        def forward(self, x):
            return 3 * x

        def lipschitz(self, p):
            return 3.0

    g = ICNN((6,), (8,))
    with pytest.raises(ConvexityError, match=r"feature_map\.maps\.0: Undeclared does not declare"):
        FeatureConvexClassifier(Compose([Undeclared()]), g, (6,)).validate()
    with pytest.raises(ConvexityError, match=r"feature_map: Tanh is not a FeatureMap"):
        FeatureConvexClassifier(nn.Tanh(), g, (6,)).validate()  # type: ignore[arg-type]
    FeatureConvexClassifier(Compose([Declared()]), g, (6,)).validate()


@settings(derandomize=True, max_examples=20, deadline=None)
@given(index=st.integers(0, 5), value=st.sampled_from([-1e-3, -1.0, 0.0, -0.0, math.nan, math.inf, -math.inf]))
def test_standardize_refuses_scales_its_formula_cannot_use(index, value):
    model = _tabular_model()
    with torch.no_grad():
        model.feature_map.maps[0].scale[index] = value
    with pytest.raises(ConvexityError, match=r"feature_map\.maps\.0: (scale|scale: contains NaN)"):
        model.validate()


def test_a_negative_scale_written_into_the_file_is_refused_at_load_and_at_certify(tmp_path):
    model = _tabular_model()
    save(model, tmp_path)
    file = tmp_path / "model.safetensors"
    tensors = load_file(str(file))
    with safe_open(str(file), framework="pt") as fh:
        meta = fh.metadata()
    tensors["feature_map.maps.0.scale"][0] = -1e-3
    save_file(tensors, str(file), metadata=meta)
    with pytest.raises(ConvexityError, match=r"feature_map\.maps\.0: scale"):
        asymcert.load(tmp_path)
    tampered = asymcert.load(tmp_path, validate=False)
    with pytest.raises(ConvexityError, match="scale"):
        asymcert.certify(tampered, torch.randn(4, 6))


def test_standardize_lipschitz_uses_magnitudes():
    phi = Standardize((3,))
    with torch.no_grad():
        phi.scale.copy_(torch.tensor([-1e-3, 1.0, 2.0]))
    exact = 1.0 / abs(float(phi.scale[0]))  # the signed max of 1/σ would be 1.0
    assert exact <= phi.lipschitz(2) <= exact * (1 + 1e-15)


def test_every_default_model_config_builds_validates_and_loads_on_the_meta_device(tmp_path):
    shapes = {"feature-convex": [1, 8, 8], "one-vs-rest-convex": [1, 8, 8], "linf-dist": [1, 8, 8]}
    for family in families():
        kind = family.kind
        cfg = {**family.default_model_config(), "input_shape": shapes.get(kind, [1, 8, 8])}
        if kind in ("linf-dist", "one-vs-rest-convex"):
            cfg.setdefault("num_classes", 3)
        model = build_model(cfg)
        if hasattr(model, "validate"):
            model.validate()
        save(model, tmp_path / kind)
        assert type(asymcert.load(tmp_path / kind)) is type(model)


@pytest.mark.parametrize(
    "config, match",
    [
        ([1, 2], "must be a JSON object"),
        ({"kind": "feature-convex"}, "input_shape"),
        ({**TABULAR, "input_shape": [-3]}, "input_shape"),
        ({**TABULAR, "convex": {"kind": "icnn", "widths": [-3]}}, "widths"),
        ({**TABULAR, "convex": {"kind": "icnn", "widths": [2.5]}}, "widths"),
        ({**TABULAR, "convex": {"kind": "icnn", "widths": []}}, "widths"),
        ({**TABULAR, "convex": {"kind": "convex-conv", "channels": 0}}, "channels|image features"),
        ({**TABULAR, "convex": [1]}, r"convex = \[1\] must be a JSON object"),
        ({"kind": "feature-convex", "input_shape": [6], "feature_map": [{"kind": "shift"}]}, "missing key"),
    ],
)
def test_bad_configs_are_refused_with_one_clear_error(config, match):
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        build_model(config)


def test_a_config_asking_for_huge_widths_is_refused_before_anything_is_allocated(tmp_path, monkeypatch):
    model = _tabular_model()
    save(model, tmp_path)
    file = tmp_path / "model.safetensors"
    config = model.config()
    config["convex"]["widths"] = [10**9, 10**9]
    save_file(load_file(str(file)), str(file), metadata={CONFIG_KEY: json.dumps(config), "asymcert_meta": "{}"})
    built_on = []
    original = ICNN.__init__

    @functools.wraps(original)
    def spy(self, *args, **kwargs):
        built_on.append(torch.empty(0).device.type)  # the default device the constructor allocates on
        original(self, *args, **kwargs)

    monkeypatch.setattr(ICNN, "__init__", spy)
    with pytest.raises(CheckpointError, match=r"weights do not match the stored config: .*config says \(1000000000"):
        asymcert.load(tmp_path)
    assert built_on == ["meta"]  # only the shape-only skeleton was built


@pytest.mark.parametrize(
    "x, match",
    [
        (torch.randint(0, 255, (4, 6), dtype=torch.uint8), "dtype torch.uint8"),
        (torch.randn(6), r"shape \(N, 6\), got \(6,\)"),
        (torch.randn(4, 7), r"got \(4, 7\)"),
        (torch.randn(4, 6, 1), r"got \(4, 6, 1\)"),
    ],
)
def test_the_models_own_forward_refuses_inputs_it_cannot_handle(x, match):
    with pytest.raises(InputError, match=match):
        _tabular_model()(x)
    ovr = build_model({**TABULAR, "kind": "one-vs-rest-convex", "num_classes": 3})
    with pytest.raises(InputError, match=match):
        ovr(x)


# ------------------------------------------------------------------ every built-in config is accepted


def _task_input_shape(task) -> list[int]:
    """A small input shape of the task's kind: its raw features for the tabular tasks (30 for breast-cancer,
    57 for SpamBase), else C × 8 × 8 images (C = 3 for CIFAR). The allowlist looks at the architecture,
    which does not depend on the image size."""
    if task.name in ("breast-cancer", "spambase"):
        return [30 if task.name == "breast-cancer" else 57]
    return [3 if task.name.startswith("cifar") else 1, 8, 8]


def test_every_task_preset_and_family_model_is_accepted():
    """What `asymcert train TASK [--preset P] [--model KIND]` builds by default passes validate()."""
    built = set()
    for name in task_names():
        task = get_task(name)
        data = SimpleNamespace(num_classes=2 if task.binary else 10)
        configs = [_merge(task.model, task.presets.get(p, {}).get("model")) for p in [None, *task.presets]]
        configs += [f.default_model_config() for f in families() if f.kind != task.model["kind"]]
        for cfg in configs:
            settings = get_family(cfg["kind"]).model_settings(task_facts(task, data))
            cfg = {**cfg, **settings, "input_shape": _task_input_shape(task)}
            key = json.dumps(cfg, sort_keys=True)
            if key in built:
                continue
            built.add(key)
            torch.manual_seed(0)
            build_model(cfg).validate()
    assert len(built) >= len(task_names())


# ------------------------------------------------------------------ ways around the allowlist


def test_hooks_and_replaced_forwards_are_refused_by_path():
    model = _tabular_model()
    handle = model.convex.hidden[0].register_forward_hook(lambda m, i, out: -out)
    with pytest.raises(ConvexityError, match=r"convex\.hidden\.0: has forward hook"):
        model.validate()
    handle.remove()
    model.validate()
    handle = model.convex.register_full_backward_hook(lambda m, gi, go: tuple(0 * g for g in gi))
    with pytest.raises(ConvexityError, match=r"convex: has backward hook"):
        model.validate()
    handle.remove()
    model.feature_map.maps[0].forward = lambda x: 1000 * x
    with pytest.raises(ConvexityError, match=r"feature_map\.maps\.0: its forward or __call__ was replaced"):
        model.validate()


@pytest.mark.parametrize(
    ("path", "method", "replacement"),
    [
        ("", "score_from_features", lambda f: 3 - 0.5 * (f**2).sum(1)),  # concave: an attack flips inside the radius
        ("", "features", lambda x: 0 * x),
        ("", "feature_lipschitz", lambda p: 1e-6),
        ("feature_map.maps.0", "lipschitz", lambda p: 1e-6),
    ],
)
@pytest.mark.parametrize("kind", ["feature-convex", "one-vs-rest-convex"])
def test_a_method_replaced_on_the_instance_is_refused_by_path(kind, path, method, replacement):
    """Review s34 ovr F3: `m.score_from_features = f` (any certified method but forward) was certified as the class's
    own: with a concave f an attack removed 5 of 26 flags inside 0.99 of the radius."""
    config = {"input_shape": [4], "feature_map": [{"kind": "standardize"}], "convex": {"kind": "icnn", "widths": [8]}}
    model = build_model({"kind": kind, "num_classes": 3, **config}).eval()
    member = model if kind == "feature-convex" else model.member_models[1]
    target = member.get_submodule(path)
    model.validate()
    setattr(target, method, replacement)
    where = path or "FeatureConvexClassifier"
    with pytest.raises(ConvexityError, match=rf"{where}: its {method} was replaced on the instance, so") as err:
        asymcert.certify(model, torch.rand(5, 4))
    assert kind == "feature-convex" or "member 1 (class 1)" in one_line(err)
    delattr(target, method)
    target.helper = lambda t: t  # a callable attribute that shadows no method of its class is no replacement
    model.validate()


def test_a_subclass_cannot_inherit_a_contract_or_a_lipschitz_constant_for_another_forward():
    class Negated(_UserConvex):
        def forward(self, x):
            return -super().forward(x)  # concave: the parent's contract does not speak for it

    class Amplified(Standardize):
        def forward(self, x):
            return 1000 * super().forward(x)  # Standardize's constant would be 1000× too small

    with pytest.raises(ConvexityError, match=r"convex: Negated overrides forward without declaring convexity_contract"):
        FeatureConvexClassifier(Compose([Shift((6,))]), Negated(6), (6,)).validate()
    with pytest.raises(
        ConvexityError, match=r"feature_map\.maps\.0: Amplified overrides forward without declaring lipschitz"
    ):
        FeatureConvexClassifier(Compose([Amplified((6,))]), ICNN((6,), (8,)), (6,)).validate()


def test_a_contract_must_return_a_list_of_problems():
    class Sloppy(_UserConvex):
        def forward(self, x):
            return super().forward(x)

        def convexity_contract(self):
            return True

    with pytest.raises(ConvexityError, match=r"convex: convexity_contract\(\) must return a list"):
        FeatureConvexClassifier(Compose([Shift((6,))]), Sloppy(6), (6,)).validate()


@settings(derandomize=True, max_examples=12, deadline=None)
@given(value=st.sampled_from([math.nan, -1.0, 0.0, math.inf, "2"]), p=st.sampled_from([1.0, 2.0, math.inf]))
def test_a_declared_lipschitz_constant_must_be_a_finite_positive_number(value, p):
    class Declared(FeatureMap):
        def forward(self, x):
            return x

        def lipschitz(self, q):
            return value if q == p else 1.0

    with pytest.raises(
        ConvexityError, match=rf"feature_map\.maps\.0: lipschitz\({p:g}\) = .* is not a finite number > 0"
    ):
        FeatureConvexClassifier(Compose([Declared()]), ICNN((6,), (8,)), (6,)).validate()
    with pytest.raises(ModelError, match="lipschitz"):
        Declared().validate()


def test_a_classifier_subclass_that_changes_the_score_is_refused():
    class Scaled(FeatureConvexClassifier):
        def score_from_features(self, f):
            return -super().score_from_features(f)

    model = Scaled(Compose([Shift((6,))]), ICNN((6,), (8,)), (6,))
    with pytest.raises(ConvexityError, match=r"Scaled overrides score_from_features\(\)"):
        model.validate()


def test_one_vs_rest_members_are_held_to_the_same_rules():
    ovr = build_model({**TABULAR, "kind": "one-vs-rest-convex", "num_classes": 3})
    ovr.validate()
    with torch.no_grad():
        ovr.members[1].feature_map.maps[0].scale[4] = -2.0
    ovr.members[2].convex.hidden[0] = nn.Linear(16, 8, bias=False)
    with pytest.raises(ConvexityError) as info:
        ovr.validate()
    assert r"member 1 (class 1): feature_map.maps.0: scale" in str(info.value)
    assert r"member 2 (class 2): convex.hidden.0: Linear is not allowed here" in str(info.value)
    ovr = build_model({**TABULAR, "kind": "one-vs-rest-convex", "num_classes": 2})
    ovr.members[0] = nn.Linear(6, 1)
    with pytest.raises(ConvexityError, match=r"member 0 \(class 0\): Linear is not a FeatureConvexClassifier"):
        ovr.validate()


def test_batch_norm_without_a_valid_eval_map_is_refused():
    model = build_model({**TABULAR, "convex": {"kind": "icnn", "widths": [8, 4]}})
    with torch.no_grad():
        model.convex.norms[0].running_var[0] = -1.0
    with pytest.raises(ConvexityError, match=r"convex\.norms\.0: running_var has negative entries"):
        model.validate()


# ------------------------------------------------------------------ feature-map parameters


@settings(derandomize=True, max_examples=40, deadline=None)
@given(
    scales=st.lists(st.floats(1e-30, 1e30, allow_subnormal=False), min_size=1, max_size=6),
    sign=st.sampled_from([1.0, -1.0]),
)
def test_standardize_lipschitz_is_the_largest_inverse_magnitude_rounded_up(scales, sign):
    phi = Standardize((len(scales),))
    with torch.no_grad():
        phi.scale.copy_(torch.tensor(scales) * sign)  # float32, as in a checkpoint
    exact = max(1 / Fraction(float(s)) for s in phi.scale.double().abs())
    for p in (1.0, 2.0, math.inf):
        lip = phi.lipschitz(p)
        assert Fraction(lip) >= exact  # never underestimated, whatever the sign
        assert lip <= float(exact) * (1 + 1e-15)  # and rounded up by at most an ulp or two
    assert (sign < 0) == bool(phi.problems())


def test_standardize_settings_and_unknown_feature_map_settings_are_refused():
    for bad in (0.0, -1e-6, math.inf, math.nan, "1e-6", True):
        with pytest.raises(ConfigError, match="min_scale"):
            build_model({**TABULAR, "feature_map": [{"kind": "standardize", "min_scale": bad}]})
    with pytest.raises(UnknownNameError, match=r"unknown setting\(s\) \['scale'\] for feature map 'shift'"):
        build_model({**TABULAR, "feature_map": [{"kind": "shift", "scale": 2}]})
    with pytest.raises(ConfigError, match="must be a list of steps"):
        build_model({**TABULAR, "feature_map": "shift"})
    phi = Standardize((3,))
    phi.min_scale = -1.0
    with pytest.raises(ModelError, match=r"min_scale -1.0 must be a finite number > 0"):
        phi.validate()


# ------------------------------------------------------------------ other families: build, validate, forward

LINF = {"kind": "linf-dist", "input_shape": [6], "widths": [8], "num_classes": 3}
RELU = {"kind": "relu-ibp", "input_shape": [6], "arch": "mlp", "widths": [8]}


@pytest.mark.parametrize(
    "config, match",
    [
        ({**LINF, "widths": [2.5]}, "widths"),
        ({**LINF, "widths": [0]}, "widths"),
        ({**LINF, "num_classes": 1}, "num_classes"),
        ({**LINF, "mlp_head": 0}, "mlp_head"),
        ({**LINF, "binary": "yes"}, "binary"),
        ({**LINF, "input_range": [1, 0]}, "input_range"),
        ({**RELU, "widths": [-1]}, "widths"),
        ({**RELU, "arch": "rnn"}, "arch"),
        ({**RELU, "certifier": "magic"}, "certifier"),
        ({**RELU, "kind": "relu-smoothing", "smoothing": {"sigma": -1.0}}, "sigma"),
        ({**RELU, "kind": "relu-smoothing", "smoothing": {"sigmaa": 1.0}}, "sigmaa"),
        ({**RELU, "kind": "relu-smoothing", "smoothing": {"n": 0}}, "smoothing n"),
        ({**RELU, "kind": "relu-smoothing", "smoothing": {"alpha": 1.5}}, "alpha"),
        ({"kind": "orthogonal", "input_shape": [1, 8, 8], "arch": "cnn", "kernel": 0}, "kernel"),
        ({"kind": "orthogonal", "input_shape": [6], "widths": [3]}, "even"),
        ({**TABULAR, "kind": "one-vs-rest-convex", "num_classes": 1}, "num_classes"),
        ({**TABULAR, "input_range": [0, math.inf]}, "input_range"),
        ({**TABULAR, "input_shape": [6.0]}, "input_shape"),
        ({"kind": ["feature-convex"], "input_shape": [6]}, "unknown model kind"),
    ],
)
def test_every_family_refuses_bad_configs_with_one_clear_error(config, match):
    with pytest.raises((ConfigError, UnknownNameError), match=match):
        build_model(config)


def test_mean_shift_and_the_input_scale_of_linf_dist_nets_are_checked():
    model = build_model(LINF)
    model.validate()
    with torch.no_grad():
        model.shifts[0].running_mean[0] = math.nan
    with pytest.raises(ModelError, match="NaN"):
        model.validate()
    model = build_model(LINF)
    with torch.no_grad():
        model.input_std.fill_(-0.5)
    with pytest.raises(ModelError, match=r"input scale σ \(input_std\) must be positive"):
        model.validate()
    assert model.shifts[0].problems() == []
    model.shifts[0].momentum = 2.0
    assert model.shifts[0].problems() == ["momentum 2.0 is not in [0, 1]"]


def test_linf_dist_lipschitz_is_rounded_up():
    model = build_model(LINF)
    for sigma in (0.3, 0.7, 3.0, 1 / 3):
        with torch.no_grad():
            model.input_std.fill_(sigma)
        assert Fraction(model.lipschitz()) >= 1 / Fraction(float(model.input_std))


@pytest.mark.parametrize(
    "config",
    [LINF, RELU, {"kind": "orthogonal", "input_shape": [6], "widths": [4]}, {**RELU, "kind": "relu-smoothing"}],
)
def test_every_family_forward_refuses_integer_dtypes_and_wrong_shapes(config):
    model = build_model(config).eval()
    assert model(torch.rand(4, 6)).shape[0] == 4
    with pytest.raises(InputError, match=r"dtype torch.uint8"):
        model(torch.randint(0, 255, (4, 6), dtype=torch.uint8))
    with pytest.raises(InputError, match=r"got \(4, 5\)"):
        model(torch.rand(4, 5))
    with pytest.raises(InputError, match=r"got \(6,\)"):
        model(torch.rand(6))


def test_a_models_forward_refuses_inputs_wider_than_it_computes_in():
    """model(x_float64) on a float32 model: the promised InputError, not torch's dtype RuntimeError."""
    model = _tabular_model()
    with pytest.raises(InputError, match=r"computes in torch\.float32 and got torch\.float64 inputs"):
        model(torch.zeros(2, 6, dtype=torch.float64))
    assert model(torch.zeros(2, 6, dtype=torch.float16)).dtype == torch.float32  # narrower: exact, accepted
    assert model.double()(torch.zeros(2, 6)).dtype == torch.float64


def test_a_foreign_module_in_the_feature_map_is_refused_by_name():
    model = _tabular_model()
    model.feature_map.maps.append(nn.Tanh())
    with pytest.raises(ConvexityError, match=r"feature_map\.maps\.1: Tanh is not a FeatureMap"):
        asymcert.certify(model, torch.zeros(2, 6))


def test_a_model_with_layers_of_several_dtypes_is_refused():
    model = _tabular_model()
    model.convex.hidden[0].double()
    with pytest.raises(ConvexityError, match=r"parameters of several dtypes \(torch\.float32, torch\.float64\)"):
        asymcert.certify(model, torch.zeros(2, 6))
    model.double()
    assert len(asymcert.certify(model, torch.zeros(2, 6))) == 2


def test_a_convex_conv_net_with_a_circular_padded_stem_is_refused_by_path():
    """Session 33 families review 1 (checked for every family with convolutions): the exact and bounded passes
    pad a ConvexConvNet's convolutions with zeros, so any other padding_mode is refused by name."""
    model = small_feature_convex("conv")
    model.convex.stem.padding_mode = "circular"
    with pytest.raises(ConvexityError, match=r"convex\.stem: Conv2d has padding_mode='circular'"):
        asymcert.certify(model, torch.rand(3, 1, 6, 6))
