"""The typed guarantee of a Certificate: set by every certifier, validated, saved, loaded, and what reports read."""

from __future__ import annotations

import json
import math

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file

import asymcert
from asymcert.certify import certifier_names
from asymcert.certify.certfile import legacy_guarantee, load_certificates, save_certificates
from asymcert.certify.result import IMAGE_UNITS, RAW_UNITS, Certificate, Guarantee, raw_units
from asymcert.certify.summary import RunResults
from asymcert.errors import CheckpointError, InputError
from asymcert.models import build_model
from asymcert.report.metrics import certified_accuracy, curve_grid
from asymcert.report.writer import ONE_VS_REST_NOTE, render_markdown, summarize
from asymcert.runfolder import RunRecord
from tests.conftest import small_feature_convex

SMOOTH = {"sigma": 0.3, "n0": 20, "n": 200, "alpha": 0.01}


def _smoothing(noise: str):
    return build_model(
        {"kind": "relu-smoothing", "input_shape": [1, 4, 4], "widths": [8], "smoothing": {"noise": noise, **SMOOTH}}
    )


def _bounds():
    return build_model({"kind": "relu-ibp", "input_shape": [1, 4, 4], "widths": [8]})


# certifier → (tiny model builder, x shape, the guarantee its certificates must carry)
CASES = {
    "feature-convex": (lambda: small_feature_convex("icnn", input_shape=(1, 4, 4)), Guarantee.FLAG),
    "one-vs-rest-convex": (
        lambda: build_model(
            {
                "kind": "one-vs-rest-convex",
                "input_shape": [1, 4, 4],
                "num_classes": 3,
                "feature_map": [{"kind": "shift"}],
                "convex": {"kind": "icnn", "widths": [8]},
            }
        ),
        Guarantee.FLAG,
    ),
    "linf-dist": (
        lambda: build_model({"kind": "linf-dist", "input_shape": [1, 4, 4], "widths": [16, 16], "num_classes": 3}),
        Guarantee.DECISION,
    ),
    "orthogonal": (
        lambda: build_model({"kind": "orthogonal", "input_shape": [1, 4, 4], "arch": "mlp", "widths": [16, 16]}),
        Guarantee.FLAG,
    ),
    "ibp": (_bounds, Guarantee.FLAG),
    "crown": (_bounds, Guarantee.FLAG),
    "crown-ibp": (_bounds, Guarantee.FLAG),
    "smoothing-gaussian": (lambda: _smoothing("gaussian"), Guarantee.PROBABILISTIC),
    "smoothing-laplace": (lambda: _smoothing("laplace"), Guarantee.PROBABILISTIC),
    "smoothing-uniform": (lambda: _smoothing("uniform"), Guarantee.PROBABILISTIC),
    "smoothing-splitting": (lambda: _smoothing("splitting"), Guarantee.FLAG),  # binary base model
}
EXTRA_CASES = {  # the same certifier, another decision shape
    "linf-dist/binary": (
        "linf-dist",
        lambda: build_model(
            {"kind": "linf-dist", "input_shape": [1, 4, 4], "widths": [16, 16], "num_classes": 2, "binary": True}
        ),
        Guarantee.FLAG,
    )
}


def test_every_registered_certifier_has_a_case():
    assert set(CASES) == set(certifier_names())


def _certificate(case: str) -> tuple[Certificate, Guarantee]:
    method, build, expected = (case, *CASES[case]) if case in CASES else EXTRA_CASES[case]
    torch.manual_seed(0)
    model = build().eval()
    return asymcert.certify(model, torch.rand(12, 1, 4, 4), norms=(1, 2, math.inf), method=method), expected


@pytest.mark.parametrize("case", [*CASES, *EXTRA_CASES])
def test_every_certifier_sets_its_guarantee_and_files_keep_it(case, tmp_path):
    cert, expected = _certificate(case)
    assert cert.guarantee is expected
    assert cert.deterministic == (expected is not Guarantee.PROBABILISTIC)
    assert (cert.alpha == SMOOTH["alpha"]) if expected is Guarantee.PROBABILISTIC else cert.alpha is None
    if expected is Guarantee.FLAG:  # a flag certificate promises nothing for unflagged inputs
        for r in cert.radii.values():
            assert not bool((r.cpu()[~cert.predicted_flagged().cpu()] > 0).any())
    # an older file (no "guarantee" key) reads back as the same guarantee
    assert legacy_guarantee(cert.deterministic, cert.binary, cert.extra) is expected
    path = tmp_path / "certificates.safetensors"
    labels = torch.zeros(len(cert), dtype=torch.long)
    save_certificates(path, cert, labels)
    back, _ = load_certificates(path)
    assert back.guarantee is expected and back.alpha == cert.alpha and back.method == cert.method
    assert Certificate.cat([back, back]).guarantee is expected and back.to("cpu").guarantee is expected


def _multiclass(guarantee: Guarantee | str, **kw) -> Certificate:
    pred = torch.tensor([0, 1, 2, 2])
    flagged = torch.tensor([True, False, True, True])
    flags = torch.nn.functional.one_hot(pred, 3).bool() & flagged[:, None]
    return Certificate(
        pred,
        {2.0: torch.tensor([0.5, 0.2, 0.3, 0.9], dtype=torch.float64)},
        "custom",
        guarantee,
        binary=False,
        extra={"flags": flags, "predicted_flagged": flagged},
        **kw,
    )


@pytest.mark.parametrize(
    "guarantee,alpha",
    [
        (Guarantee.PROBABILISTIC, None),
        (Guarantee.PROBABILISTIC, 0.0),
        (Guarantee.PROBABILISTIC, 1.0),
        (Guarantee.PROBABILISTIC, math.nan),
        (Guarantee.PROBABILISTIC, True),
        (Guarantee.PROBABILISTIC, "0.1"),
        (Guarantee.DECISION, 0.001),
        (Guarantee.FLAG, 0.001),
        ("sure", None),
        (True, None),
    ],
)
def test_alpha_is_required_exactly_for_probabilistic_certificates(guarantee, alpha):
    with pytest.raises(InputError) as info:
        _multiclass(guarantee, alpha=alpha)
    assert "\n" not in str(info.value)


def test_valid_guarantees_and_str_values():
    assert _multiclass("flag").guarantee is Guarantee.FLAG
    cert = _multiclass(Guarantee.PROBABILISTIC, alpha=0.05)
    assert not cert.deterministic and cert.alpha == 0.05
    with pytest.raises(InputError, match="flags"):  # a multiclass flag certificate without its flags
        Certificate(torch.tensor([0, 1]), {2.0: torch.zeros(2)}, "custom", Guarantee.FLAG, binary=False)
    with pytest.raises(InputError, match="guarantee"):
        Certificate.cat([_multiclass(Guarantee.FLAG), _multiclass(Guarantee.DECISION)])


def test_metrics_and_report_read_the_guarantee_not_extra_keys_or_method_names():
    labels = torch.tensor([0, 1, 2, 0])
    flag, decision = _multiclass(Guarantee.FLAG), _multiclass(Guarantee.DECISION)
    r = torch.tensor([0.0, 0.4])
    # same tensors and extra keys: only the flag guarantee needs the true class flagged
    assert certified_accuracy(flag, labels, 2.0, r).tolist() == [0.5, 0.25]
    assert certified_accuracy(decision, labels, 2.0, r).tolist() == [0.75, 0.25]
    flag_res, dec_res = (summarize(c, labels, {"l2": [0.4]}) for c in (flag, decision))
    assert flag_res.to_dict()["guarantee"] == "flag" and dec_res.to_dict()["guarantee"] == "decision"
    assert flag_res.flags is not None and flag_res.flags.true_class == 0.5 and dec_res.flags is None
    assert "flags" not in dec_res.to_dict()
    run = RunRecord(task={"name": "t"}, model={}, train={})
    note = ONE_VS_REST_NOTE.format(units="raw input units")
    assert note in render_markdown(run, RunResults(flag_res))  # method "custom": the guarantee decides
    assert note not in render_markdown(run, RunResults(dec_res))
    prob = summarize(_multiclass(Guarantee.PROBABILISTIC, alpha=0.01), labels, {})
    assert "probability 1 − 0.01" in render_markdown(run, RunResults(prob)) and not prob.deterministic


def _strip_guarantee(path, **meta_change: str) -> None:
    """Rewrite ``path`` as the code before the typed guarantee wrote it (no "guarantee" metadata)."""
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata() or {})
    meta.pop("guarantee")
    save_file(load_file(str(path)), str(path), metadata={**meta, **meta_change})


@pytest.mark.parametrize(
    "guarantee,alpha", [(Guarantee.FLAG, None), (Guarantee.DECISION, None), (Guarantee.PROBABILISTIC, 0.01)]
)
def test_old_files_without_a_guarantee_still_load(tmp_path, guarantee, alpha):
    path = tmp_path / "certificates.safetensors"
    cert = _multiclass(guarantee, alpha=alpha)
    if guarantee is not Guarantee.FLAG:  # older multiclass argmax certificates carried no flags
        cert.extra = {}
    save_certificates(path, cert, torch.tensor([0, 1, 2, 0]))
    _strip_guarantee(path)
    back, labels = load_certificates(path)
    assert back.guarantee is guarantee and back.alpha == alpha and labels.tolist() == [0, 1, 2, 0]


def test_a_damaged_guarantee_is_one_checkpoint_error(tmp_path):
    path = tmp_path / "certificates.safetensors"
    save_certificates(path, _multiclass(Guarantee.DECISION), torch.zeros(4, dtype=torch.long))
    for meta in (
        {"guarantee": json.dumps("certain")},
        {"guarantee": json.dumps([1])},
        {"guarantee": json.dumps("probabilistic")},  # probabilistic without alpha
        {"norms": "[" * 100_000 + "]" * 100_000},  # was a RecursionError traceback
        {"alpha": '{"a": 1, "a": 2}'},
    ):
        with safe_open(str(path), framework="pt") as fh:
            old = dict(fh.metadata())
        save_file(load_file(str(path)), str(path), metadata={**old, **meta})
        with pytest.raises(CheckpointError) as info:
            load_certificates(path)
        assert "\n" not in str(info.value) and str(path) in str(info.value)


@pytest.mark.parametrize("radius", [[0.5, float("nan"), 0.0, 1.0], [0.5, -5.0, 0.0, 1.0], [1, 2, 3, 4]])
def test_radii_no_certifier_writes_are_one_checkpoint_error(tmp_path, radius):
    """NaN, negative or integer radii in a certificates file were reported as if certified otherwise ("no test
    input is certified", exit 0: CLI fuzz, session 32); ∞ and 0 are radii."""
    path = tmp_path / "certificates.safetensors"
    save_certificates(path, _multiclass(Guarantee.DECISION), torch.zeros(4, dtype=torch.long))
    with safe_open(str(path), framework="pt") as fh:
        meta = dict(fh.metadata())
    tensors = load_file(str(path))
    key = next(k for k in tensors if k.startswith("radius_"))
    good = {**tensors, key: torch.tensor([0.5, float("inf"), 0.0, 1.0], dtype=torch.float64)}
    save_file(good, str(path), metadata=meta)
    assert load_certificates(path)[0].radii  # ∞ and 0 load
    save_file({**tensors, key: torch.tensor(radius)}, str(path), metadata=meta)
    with pytest.raises(CheckpointError, match=f"'{key}' holds .* values that are not all radii ≥ 0") as info:
        load_certificates(path)
    assert "\n" not in str(info.value)


def test_the_curve_grid_of_huge_radii_stays_finite():
    """Radii near float64's top made the grid's end (1.05 × the largest) ∞ and the plot's axis an OverflowError
    traceback, after the certificates were written (a threat-model scale of 1e-320)."""
    cert = Certificate(
        torch.tensor([1, 1, 0]), {1.0: torch.tensor([1.7e308, 2.0, 0.0], dtype=torch.float64)}, "custom", Guarantee.FLAG
    )
    grid = curve_grid(cert, torch.tensor([1, 1, 0]), 1.0)
    assert bool(torch.isfinite(grid).all()) and float(grid[-1]) == pytest.approx(1.05e300)
    assert float(curve_grid(cert, torch.tensor([1, 1, 0]), 1.0, points=3)[0]) == 0.0


def test_the_certificate_docs_say_radii_are_in_the_units_it_names():
    """Audit units30 F5: the docstring said "in raw input units" whatever ``units`` said (threat-model units)."""
    doc = " ".join((Certificate.__doc__ or "").split())
    assert "certified radius in the units given by ``units`` (raw input units without a threat model" in doc
    assert "certified radius in raw input units" not in doc
    assert "in the units given by ``units``" in " ".join((Certificate.radius.__doc__ or "").split())


@pytest.mark.parametrize("guarantee", [Guarantee.FLAG, Guarantee.DECISION])
def test_a_multiclass_report_names_the_units_its_radii_are_in(guarantee):
    """A multi-class report under a threat model said "(raw input units)" (one-vs-rest) or no unit at all (a decision
    certificate such as ℓ∞-dist's) next to radii in the threat model's units (audit units31 F1, F2)."""
    units = "threat-model units (δ_i / scale_i)"
    cert = _multiclass(guarantee)
    cert = Certificate(cert.predicted, cert.radii, "custom", guarantee, binary=False, extra=cert.extra, units=units)
    md = render_markdown(
        RunRecord(task={"name": "t"}, model={}, train={}), RunResults(summarize(cert, cert.predicted, {}))
    )
    assert f"(radii in {units})" in md and "raw input units" not in md


def test_built_in_image_tasks_name_their_pixel_units():
    """Session 34 image review F7: a built-in image run said plain "raw input units" where an image folder's run of
    the same pixels said "(pixel values / 255, in [0, 1])"."""
    for name in ("fashion-mnist-shirts", "mnist-38", "cifar10-catsdogs", "malimg", "fashion-mnist", "cifar10"):
        assert raw_units({"name": name}) == IMAGE_UNITS == "raw input units (pixel values / 255, in [0, 1])"
    for task in ({"name": "spambase"}, {"name": "breast-cancer"}, {"name": "no-such-task"}, {"csv": "x.csv"}):
        assert raw_units(task) == RAW_UNITS
    assert raw_units({"images": "folder"}) == IMAGE_UNITS
