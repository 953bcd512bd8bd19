"""``asymcert.certify``: bounded memory for any N, empty batches, and clear refusals of unusable arguments."""

from __future__ import annotations

import dataclasses
import math
import re

import pytest
import torch

import asymcert
from asymcert.certify import api
from asymcert.certify import feature_convex as fc
from asymcert.certify.api import nested_radii
from asymcert.certify.result import Certificate, normalize_norm
from asymcert.errors import AsymcertError, InputError, ModelError, UnsoundOptionError
from asymcert.models import build_model
from tests.conftest import small_feature_convex


def _model(input_shape=(6,), kind="feature-convex", seed=0):
    torch.manual_seed(seed)
    config = {
        "kind": kind,
        "input_shape": list(input_shape),
        "feature_map": [{"kind": "shift"}],
        "convex": {"kind": "icnn", "widths": [8]},
    }
    if kind == "one-vs-rest-convex":
        config["num_classes"] = 3
    return build_model(config).eval()


@pytest.fixture
def recorded_chunks(monkeypatch):
    """The batch sizes the feature-convex certifier is called with."""
    sizes: list[int] = []
    real = api._CERTIFIERS["feature-convex"]

    def recording(model, x, norms, **options):
        sizes.append(x.shape[0])
        return real.run(model, x, norms, **options)

    monkeypatch.setitem(api._CERTIFIERS, "feature-convex", dataclasses.replace(real, run=recording))
    return sizes


def test_certify_chunks_by_default(recorded_chunks, monkeypatch):
    """Without batch_size the certifier never sees more than DEFAULT_CHUNK inputs at once, whatever N."""
    assert api.DEFAULT_CHUNK == 4096
    monkeypatch.setattr(api, "DEFAULT_CHUNK", 7)  # the same code path, at a size a test can afford
    model, x = _model(), torch.randn(23, 6)
    cert = asymcert.certify(model, x)
    assert recorded_chunks == [7, 7, 7, 2] and len(cert) == 23
    whole = asymcert.certify(model, x, batch_size=100)
    assert recorded_chunks[-1] == 23
    torch.testing.assert_close(cert.predicted, whole.predicted, rtol=0, atol=0)
    for p in whole.radii:
        torch.testing.assert_close(cert.radii[p], whole.radii[p], rtol=1e-12, atol=0)
    assert cert.seconds > 0


def test_wide_feature_maps_are_certified_in_smaller_chunks(recorded_chunks, monkeypatch):
    """The feature-convex certifier takes at most FEATURE_VALUES_PER_BATCH feature values at once (pair-min on
    57 features, hinges after it: 4959 per input, 211 inputs), also with a threat model and an explicit
    batch_size; the radii are those of one big batch."""
    pairs = build_model(
        {
            "kind": "feature-convex",
            "input_shape": [57],
            "convex": {"kind": "icnn", "widths": [1]},
            "feature_map": [{"kind": "pair-min"}, {"kind": "hinges", "knots": 2}],
        }
    ).eval()
    assert fc.max_batch(pairs) == 2**20 // 4959 == 211
    assert fc.max_batch(_model()) == 2**20 // 6 and fc.max_batch(torch.nn.Linear(2, 1)) == fc.NO_BATCH_LIMIT
    monkeypatch.setattr(fc, "FEATURE_VALUES_PER_BATCH", 8 * 6)  # 8 inputs of the 6-feature test model
    model, x = _model(), torch.randn(20, 6)
    cert = asymcert.certify(model, x, batch_size=100)
    assert recorded_chunks == [8, 8, 4]
    real = api._CERTIFIERS["feature-convex"]

    def recording(model, x, norms, tm, **options):
        recorded_chunks.append(x.shape[0])
        return fc_threat(model, x, norms, tm, **options)

    fc_threat = real.threat_run
    monkeypatch.setitem(api._CERTIFIERS, "feature-convex", dataclasses.replace(real, threat_run=recording))
    asymcert.certify(model, x, threat_model=asymcert.ThreatModel(increase_only=[0, 1]))
    assert recorded_chunks[3:] == [8, 8, 4]
    monkeypatch.setattr(fc, "FEATURE_VALUES_PER_BATCH", 10**6)
    whole = asymcert.certify(model, x)
    assert recorded_chunks[-1] == 20
    for p in whole.radii:
        torch.testing.assert_close(cert.radii[p], whole.radii[p], rtol=1e-12, atol=0)


@pytest.mark.parametrize("batch_size", [0, -1, 2.5, True, "10"])
def test_bad_batch_sizes_are_refused(batch_size):
    with pytest.raises(InputError, match="batch_size must be a positive number of inputs"):
        asymcert.certify(_model(), torch.randn(3, 6), batch_size=batch_size)


@pytest.mark.parametrize("kind", ["feature-convex", "one-vs-rest-convex"])
def test_an_empty_batch_gives_an_empty_certificate(kind):
    model = _model(kind=kind)
    full = asymcert.certify(model, torch.randn(2, 6), norms=(2, "inf"))
    empty = asymcert.certify(model, torch.randn(0, 6), norms=(2, "inf"))
    assert len(empty) == 0 and empty.method == full.method and empty.binary == full.binary
    assert sorted(empty.radii) == sorted(full.radii) == [2.0, math.inf]
    assert empty.predicted.dtype == full.predicted.dtype == torch.int64
    for p, r in empty.radii.items():
        assert r.shape == (0,) and r.dtype == full.radii[p].dtype
    assert {k: (v.shape[1:], v.dtype) for k, v in empty.extra.items()} == {
        k: (v.shape[1:], v.dtype) for k, v in full.extra.items()
    }
    assert empty.seconds == 0.0


def test_meta_tensors_are_refused():
    with pytest.raises(InputError, match="inputs are on the meta device, they hold no values"):
        asymcert.certify(_model(), torch.empty(3, 6, device="meta"))
    with pytest.raises(InputError, match="the model's weights are on the meta device"):
        asymcert.certify(_model().to("meta"), torch.randn(3, 6))


@pytest.mark.parametrize(
    "norms, message",
    [
        ((), "no norms to certify"),
        (("abc",), "'abc' is not an ℓp norm"),
        ((0.5,), "need p ≥ 1"),
        ((math.nan,), "need p ≥ 1"),
        ((None,), "None is not an ℓp norm"),
    ],
)
def test_bad_norms_are_asymcert_errors(norms, message):
    with pytest.raises(InputError, match=message):
        asymcert.certify(_model(), torch.randn(3, 6), norms=norms)


def test_normalize_norm_refusals_are_value_errors_for_old_callers():
    with pytest.raises(ValueError):
        normalize_norm("two")
    assert normalize_norm("Linf") == math.inf and normalize_norm(2) == 2.0


def test_certificate_cat_of_one_part_and_of_none():
    cert = asymcert.certify(_model(), torch.randn(4, 6))
    one = Certificate.cat([cert])
    assert torch.equal(one.predicted, cert.predicted) and torch.equal(one.radii[2.0], cert.radii[2.0])
    with pytest.raises(InputError, match="at least one certificate"):
        Certificate.cat([])


@pytest.mark.parametrize(
    "x, message",
    [
        (torch.tensor(1.0), "got a scalar"),
        (torch.zeros(3, 6, dtype=torch.uint8), "must be floating point"),
        (torch.randn(3, 5), r"shape \(3, 5\), expected \(N, 6\)"),
        (torch.tensor([[0.0] * 6, [math.nan] * 6, [0.0] * 6]), r"NaN or Inf \(first bad rows: \[1\]\)"),
        ([[0.0] * 6], "must be a torch.Tensor"),
    ],
)
def test_bad_inputs_are_named(x, message):
    with pytest.raises(InputError, match=message):
        asymcert.certify(_model(), x)


def test_non_finite_rows_are_found_in_every_chunk(monkeypatch):
    """The finiteness check runs in chunks (bounded memory) and still names rows of later chunks."""
    from asymcert.certify import inputs

    monkeypatch.setattr(inputs, "CHECK_CHUNK", 4)
    x = torch.randn(13, 6)
    x[9, 2] = math.inf
    x[12, 0] = math.nan
    with pytest.raises(InputError, match=r"first bad rows: \[9, 12\]"):
        asymcert.certify(_model(), x)


def test_every_refusal_is_an_asymcert_error():
    for call in (
        lambda: asymcert.certify(_model(), torch.randn(3, 6), batch_size=0),
        lambda: asymcert.certify(_model(), torch.empty(1, 6, device="meta")),
        lambda: asymcert.certify(_model(), torch.randn(3, 6), norms=("x",)),
    ):
        with pytest.raises(AsymcertError):
            call()


def test_reach_is_a_typed_option_that_changes_nothing_without_a_threat_model():
    model = small_feature_convex("icnn", input_shape=(6,), feature_map=[{"kind": "log1p"}, {"kind": "standardize"}])
    x = torch.rand(30, 6) * 3
    plain = asymcert.certify(model, x, norms=(1, 2, "inf"))
    reach = asymcert.certify(model, x, norms=(1, 2, "inf"), reach=True)
    for p in plain.radii:
        assert torch.equal(plain.radii[p], reach.radii[p])
    with pytest.raises(UnsoundOptionError, match="reach"):
        asymcert.certify(model, x, norms=(1,), reach="yes", threat_model=asymcert.ThreatModel(scale={"*": 2.0}))


def _vector_model():
    return build_model(
        {
            "kind": "feature-convex",
            "input_shape": [4],
            "feature_map": [{"kind": "shift"}],
            "convex": {"kind": "icnn", "widths": [8]},
        }
    ).eval()


def test_process_wide_module_hooks_are_refused():
    """A hook set with torch.nn.modules.module.register_module_forward_hook runs inside every model's call; one
    that negated g made a concave score certify at radius ∞. Refused, and certified again once removed."""
    model, x = _vector_model(), torch.rand(3, 4)
    handle = torch.nn.modules.module.register_module_forward_hook(lambda m, i, o: o)
    try:
        with pytest.raises(asymcert.ModelError, match="process-wide module forward hook"):
            asymcert.certify(model, x)
    finally:
        handle.remove()
    assert len(asymcert.certify(model, x)) == 3


def test_a_certifier_asked_for_by_name_that_does_not_fit_the_model_is_one_error():
    with pytest.raises(InputError, match="certifier 'linf-dist' cannot certify a FeatureConvexClassifier"):
        asymcert.certify(_vector_model(), torch.rand(3, 4), method="linf-dist")


def test_inference_mode_is_refused_with_its_reason():
    model = _vector_model()
    with torch.inference_mode(), pytest.raises(InputError, match=r"outside torch\.inference_mode"):
        asymcert.certify(model, torch.rand(3, 4))
    with torch.no_grad():
        assert len(asymcert.certify(model, torch.rand(3, 4))) == 3


@pytest.mark.parametrize("option", [{"guard": "no"}, {"guard": 0}, {"reach": 1}, {"validate": None}])
def test_yes_no_options_must_be_bools(option):
    """guard="no" is truthy: it kept the guard on where the caller asked it off."""
    with pytest.raises(UnsoundOptionError, match="must be True or False"):
        asymcert.certify(_vector_model(), torch.rand(2, 4), **option)


def test_inputs_outside_the_threat_models_domain_are_warned_about():
    tm = asymcert.ThreatModel(lower={"*": 0.0}, upper={1: 1.0})
    x = torch.rand(5, 4)
    x[3, 1] = 1.5
    with pytest.warns(UserWarning, match=r"1 of 5 input\(s\) lie outside the threat model's domain .*input 3 of these"):
        asymcert.certify(_vector_model(), x, threat_model=tm)
    x[3, 2] = -2.0  # the first feature outside, its value and the bound it breaks (walkthrough 27f #12)
    first = r"\(the first: input 3 of these 5, counted from 0: feature 1 = 1\.5 > upper 1 \(and 1 more of its"
    with pytest.warns(UserWarning, match=first):
        asymcert.certify(_vector_model(), x, threat_model=tm)
    named = tm.resolve(["amount", "rate", "count", "age"], 4)  # by name when resolved with names (audit 30 F3)
    with pytest.warns(UserWarning, match=r"counted from 0: rate = 1\.5 > upper 1 \(and 1 more"):
        asymcert.certify(_vector_model(), x, threat_model=named)
    assert named.feature_names == ("amount", "rate", "count", "age") and tm.resolve(None, 4).feature_names is None
    edge = asymcert.ThreatModel(upper={1: 0.1}).resolve(None, 4)  # float32 0.1 is 0.10000000149 > 0.1 (28c F2)
    assert edge.outside_detail(torch.tensor([0.0, 0.1, 0.0, 0.0])) == "feature 1 = 0.10000000149011612 > upper 0.1"


def test_each_radius_is_at_least_those_of_larger_norms():
    """‖v‖_q ≤ ‖v‖_p for p ≤ q: an ℓq certificate of radius r covers the ℓp ball of radius r. Reach-aware radii
    came out with ℓ2 above ℓ1 on 49 of 231 rows (walkthrough 27f); every certificate is now nested."""
    r1, r2, rinf = (
        torch.tensor([3.0, 1.0, 0.0, 2.0]),
        torch.tensor([2.0, 1.5, 0.0, math.nan]),
        torch.tensor([1.0, 2.0, 0.0, 1.0]),
    )
    out = nested_radii({1.0: r1, 2.0: r2, math.inf: rinf})
    assert out[1.0].tolist() == [3.0, 2.0, 0.0, 2.0] and out[2.0].tolist() == [2.0, 2.0, 0.0, 1.0]
    assert out[math.inf].tolist() == rinf.tolist() and list(out) == [1.0, 2.0, math.inf]


def test_finite_inputs_whose_sum_overflows_are_accepted_and_bad_rows_still_named():
    """The finiteness check sums the batch first (one pass); a sum that overflows on finite values falls back to
    the rowwise check, which accepts them and names only the rows with a NaN or an infinity."""
    from asymcert.certify.inputs import check_inputs

    big = torch.full((5, 6), 3.0e38)
    assert check_inputs(big, (6,)) is big
    big[3, 1] = -math.inf
    with pytest.raises(InputError, match=r"first bad rows: \[3\]"):
        check_inputs(big, (6,))
    both = torch.zeros(4, 6)
    both[2, 0], both[2, 1] = math.inf, -math.inf  # (their sum is NaN)
    with pytest.raises(InputError, match=r"first bad rows: \[2\]"):
        check_inputs(both, (6,))


@pytest.mark.parametrize(
    ("kind", "method"),
    [
        ("relu-ibp", "ibp"),
        ("relu-ibp", "crown-ibp"),
        ("relu-ibp", "crown"),
        ("orthogonal", "orthogonal"),
        ("relu-smoothing", "smoothing-gaussian"),
        ("relu-smoothing", "smoothing-splitting"),
        ("feature-convex", "feature-convex"),
        ("linf-dist", "linf-dist"),
    ],
)
def test_a_model_built_in_memory_with_a_nan_weight_is_refused_naming_it(kind, method):
    """IBP certified such a model (every radius 0, every decision 0) and the orthogonal certifier failed inside linear
    algebra (torch._LinAlgError): every family's certifier refuses it, naming the weight (coverage audit 30)."""
    config = {"kind": kind, "input_shape": [4]}
    if kind == "feature-convex":
        config.update(feature_map=[{"kind": "shift"}], convex={"kind": "icnn", "widths": [4]})
    model = build_model(config)
    name, weight = next((n, p) for n, p in model.named_parameters() if p.dim() >= 2)
    with torch.no_grad():
        weight.view(-1)[0] = float("nan")
    with pytest.raises(ModelError, match=re.escape(name)):
        asymcert.certify(
            model, torch.rand(3, 4), norms=(1, 2, math.inf) if kind != "linf-dist" else (math.inf,), method=method
        )
