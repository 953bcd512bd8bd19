"""The family contract: a family is one registered value; a new family plugs in from one module."""

from __future__ import annotations

import inspect
import math
from dataclasses import dataclass, fields

import numpy as np
import pytest
import torch
import torch.nn.functional as F
from torch import nn

import asymcert
from asymcert.certify.api import CertifierSpec, certifier_spec
from asymcert.certify.result import Certificate, Guarantee
from asymcert.errors import ConfigError, InputError, UnknownNameError
from asymcert.families import Family, TaskFacts, families, family_names, get_family, register_family, unregister_family
from asymcert.families.contract import CompareScale
from asymcert.models import build_model, model_kinds
from asymcert.pipeline import certify_run, read_run, train_run
from asymcert.report.writer import write_report
from asymcert.train import TrainConfig
from asymcert.train.recipes import recipe_for

# ---------------------------------------------------------------- a toy family, all in this test module


class ToyLinear(nn.Module):
    """s(x) = w·x + c, flagged when s > 0; radius s / ‖w‖_q (q the dual of p)."""

    certifier = "toy-linear"

    def __init__(self, input_shape: list[int]) -> None:
        super().__init__()
        self.input_shape = tuple(input_shape)
        self.linear = nn.Linear(math.prod(input_shape), 1)

    @classmethod
    def from_config(cls, config: dict) -> ToyLinear:
        return cls(config["input_shape"])

    def config(self) -> dict:
        return {"kind": "toy-linear", "input_shape": list(self.input_shape)}

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(x.flatten(1))[:, 0]


@dataclass(frozen=True)
class ToyOptions:
    shrink: float = 0.5


def certify_toy(model: ToyLinear, x: torch.Tensor, norms: tuple[float, ...], shrink: float = 0.5) -> Certificate:
    """Half (``shrink``) of the exact radius of a linear score, computed in float64."""
    w = model.linear.weight.double()[0]
    s = x.double().flatten(1) @ w + model.linear.bias.double()
    flagged = s > 0
    radii = {}
    for p in norms:
        q = 1.0 if math.isinf(p) else (math.inf if p == 1 else p / (p - 1))
        radii[p] = torch.where(flagged, shrink * s / torch.linalg.vector_norm(w, q), torch.zeros_like(s))
    return Certificate(
        predicted=flagged.long(), radii=radii, method="toy-linear", guarantee=Guarantee.FLAG, binary=True
    )


class ToyRecipe:
    def __init__(self, config) -> None:
        self.config = config

    def prepare(self, model, train) -> None: ...

    def on_epoch_start(self, model, epoch, progress) -> None: ...

    def loss(self, model, x, y, progress):
        loss = F.binary_cross_entropy_with_logits(model(x), y.float())
        return loss, {"bce": loss.item()}

    def after_step(self, model) -> None: ...

    def evaluate(self, model, val, batch_size):
        with torch.no_grad():
            acc = float(((model(val.x) > 0).long() == val.y).float().mean())
        return {"metric": acc, "accuracy": acc}


TOY = Family(
    kind="toy-linear",
    description="a linear score (test only)",
    build=ToyLinear.from_config,
    default_config={},
    recipe=ToyRecipe,
    certifiers=(CertifierSpec("toy-linear", certify_toy, ToyOptions, frozenset({Guarantee.FLAG}), "float64"),),
    train_defaults=lambda facts: {"epochs": 2, "batch_size": 16, "optimizer": "adam", "lr": 0.05},
)


@pytest.fixture
def toy():
    register_family(TOY)
    yield TOY
    unregister_family(TOY.kind)


def _npz(tmp_path):
    """A separable two-class npz task (raw units, 4 features)."""
    g = np.random.default_rng(0)
    x = g.normal(size=(120, 4)).astype(np.float32)
    y = (x[:, 0] + 0.5 * x[:, 1] > 0).astype(np.int64)
    path = tmp_path / "toy.npz"
    np.savez(path, x=x, y=y)
    return {"npz": str(path), "sensitive_class": 1}


def test_a_new_family_plugs_in_from_one_module(toy, tmp_path):
    """Registering the toy family makes build, train, certify, report and load work, with no other change."""
    assert "toy-linear" in family_names() and "toy-linear" in model_kinds()
    out = tmp_path / "run"
    record = train_run(_npz(tmp_path), out, model_overrides={"kind": "toy-linear"}, progress=False, log=lambda m: None)
    assert record.model["kind"] == "toy-linear" and record.train["epochs"] == 2  # the family's defaults
    cert = certify_run(out, progress=False)
    assert cert.method == "toy-linear" and cert.guarantee is Guarantee.FLAG
    results = write_report(out)
    assert results is not None and results.summary.clean_accuracy > 0.7
    model = asymcert.load(out)
    assert isinstance(model, ToyLinear) and read_run(out).model["kind"] == "toy-linear"
    x = torch.randn(6, 4)
    half = asymcert.certify(model, x, norms=(2,))
    full = asymcert.certify(model, x, norms=(2,), options=ToyOptions(shrink=1.0))
    torch.testing.assert_close(full.radii[2.0], 2 * half.radii[2.0])
    with pytest.raises(InputError, match="no option 'precision'"):
        asymcert.certify(model, x, precision="float64")


def test_unregistering_removes_every_part(toy):
    unregister_family(toy.kind)
    assert "toy-linear" not in model_kinds()
    with pytest.raises(UnknownNameError):
        certifier_spec(None, "toy-linear")
    with pytest.raises(UnknownNameError):
        get_family("toy-linear")
    register_family(toy)  # for the fixture's teardown


def test_registering_twice_or_a_taken_certifier_name_is_refused(toy):
    with pytest.raises(ConfigError, match="already registered"):
        register_family(TOY)
    thief = Family(
        kind="thief",
        description="",
        build=ToyLinear.from_config,
        default_config={},
        recipe=ToyRecipe,
        certifiers=(CertifierSpec("feature-convex", certify_toy, ToyOptions, frozenset(), ""),),
    )
    with pytest.raises(ConfigError, match="belong to family 'feature-convex'"):
        register_family(thief)
    assert "thief" not in family_names() and certifier_spec(None, "feature-convex").run is not certify_toy


# ---------------------------------------------------------------- every shipped family keeps its contract

FACTS = TaskFacts(binary=True, num_classes=2, report_radii={math.inf: [0.1]}, train={"epochs": 3})


def _small_model(family: Family) -> nn.Module:
    config = {**family.default_model_config(), **family.model_settings(FACTS), "input_shape": [1, 6, 6]}
    for key in ("widths",):
        if key in config:
            config[key] = [8] * min(2, len(config[key]))
    if "smoothing" in config:
        config["smoothing"] = {**config["smoothing"], "n0": 8, "n": 32}
    model = build_model(config).eval()
    if hasattr(model, "feature_map"):
        model.feature_map.fit(torch.rand(10, 1, 6, 6))
    return model


@pytest.mark.parametrize(
    "kind", ["feature-convex", "linf-dist", "one-vs-rest-convex", "relu-smoothing", "relu-ibp", "orthogonal"]
)
def test_shipped_family_contract(kind):
    """Options dataclass = the certifier's keyword arguments (same defaults); the declared guarantee is the
    produced one; the recipe and model come from the family; the default model certifies by default."""
    family = get_family(kind)
    model = _small_model(family)
    assert family.owns(model) and type(recipe_for(model, _train_config())).__name__ == family.recipe.__name__
    assert certifier_spec(model).name in {spec.name for spec in family.certifiers}
    for spec in family.certifiers:
        params = {
            n: p.default
            for n, p in list(inspect.signature(spec.run).parameters.items())[3:]
            if p.kind is inspect.Parameter.POSITIONAL_OR_KEYWORD
        }
        declared = {f.name: f.default for f in fields(spec.options)}
        assert {k: declared[k] for k in params} == params, spec.name  # every argument, same default
        cert = asymcert.certify(
            model,
            torch.rand(3, 1, 6, 6),
            norms=(2,),
            method=spec.name,
            **({"n0": 8, "n": 32} if "n0" in declared else {}),
        )
        assert cert.guarantee in spec.guarantees and cert.method == spec.name, spec.name


@pytest.mark.parametrize("kind", ["linf-dist", "one-vs-rest-convex", "relu-smoothing", "relu-ibp", "orthogonal"])
def test_an_operating_point_is_refused_by_every_family_that_does_not_fit_b(kind):
    """``false_positive_rate`` sets the feature-convex balance shift b; a family without one names it."""
    model = _small_model(get_family(kind))
    with pytest.raises(ConfigError, match=f"false_positive_rate=0.1 .* not by '{kind}' models"):
        recipe_for(model, TrainConfig(false_positive_rate=0.1))
    assert recipe_for(model, _train_config()) is not None


def _train_config() -> TrainConfig:
    return TrainConfig.from_dict({"epochs": 1})


def test_every_family_is_registered_once_and_certifier_names_are_unique():
    names = [spec.name for f in families() for spec in f.certifiers]
    assert len(names) == len(set(names))
    assert sorted(f.kind for f in families()) == family_names() == model_kinds()


@pytest.mark.parametrize("images, net", [(True, "CNN"), (False, "MLP")])
def test_compare_labels_name_the_net_the_task_gets(images, net):
    """On flat feature vectors the IBP baselines are MLPs, and compare.md's tables named them "CNN" (README
    walkthrough, session 32); the label now follows the architecture in the method's model config."""
    scale = CompareScale(images=images)
    methods = get_family("relu-ibp").compare_methods(scale)
    for name in ("ibp", "crown-ibp"):
        assert methods[name].label == f"{name.upper()}-trained {net}"
        assert methods[name].model["arch"] == ("cnn" if images else "mlp")
