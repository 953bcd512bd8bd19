"""The audit: clean on sound certificates, loud on inflated ones, and the run-folder workflow."""

from __future__ import annotations

import dataclasses
import json
import math

import pytest
import torch
from click.testing import CliRunner

import asymcert
from asymcert import audit as audit_module
from asymcert.audit import AttackBound, ExactCheck, ExactUnavailable, Quartiles, _bound_table, audit, audit_run
from asymcert.certify import api as certify_api
from asymcert.cli import EXIT_CHECK_FAILED, EXIT_OK, main
from asymcert.errors import InputError
from tests.conftest import small_feature_convex


@pytest.fixture(scope="module")
def icnn_and_inputs():
    model = small_feature_convex("icnn", seed=1)
    torch.manual_seed(2)
    return model, torch.rand(40, 1, 6, 6)


def test_sound_certificates_pass_every_check(icnn_and_inputs):
    model, x = icnn_and_inputs
    y = (model(x) > 0).long().detach()
    report = audit(model, x, y, steps=40, restarts=2)
    assert report.violations == 0
    entry = report.methods["feature-convex"]
    assert entry.deterministic and entry.accuracy == 1.0
    flagged = entry.flagged
    assert flagged is not None and 5 <= flagged <= 35
    for label in ("l1", "l2", "linf"):
        item = entry.norms[label]
        assert item.violations == 0
        assert item.attack is not None and item.attack.attacked == flagged and item.attack.flips == 0
        assert item.attack.max_norm_over_radius is not None and item.attack.max_norm_over_radius <= 1.0
        ex = item.exact
        assert isinstance(ex, ExactCheck) and ex.violations == 0 and ex.solve.failed == 0
        t = ex.tightness
        assert t is not None and 0 < t.min <= t.q25 <= t.median <= t.q75 <= t.max <= 1.0
        assert item.precision.violations == 0
        assert item.precision.max_ratio_own_over_float64 is not None
        assert item.precision.max_ratio_own_over_float64 <= 1.0


def _register_inflated(monkeypatch, factor: float) -> None:
    """Register a certifier "test-inflated": the feature-convex one with every radius times ``factor``."""
    sound = certify_api._CERTIFIERS["feature-convex"]

    def inflated(model, x, norms, **options):
        cert = sound.run(model, x, norms, **options)
        cert.radii = {p: r * factor for p, r in cert.radii.items()}
        cert.method = "test-inflated"
        return cert

    monkeypatch.setitem(
        certify_api._CERTIFIERS, "test-inflated", dataclasses.replace(sound, name="test-inflated", run=inflated)
    )


def test_inflated_certificates_are_caught(icnn_and_inputs, monkeypatch):
    model, x = icnn_and_inputs

    _register_inflated(monkeypatch, 3.0)
    report = audit(model, x, norms=(2, math.inf), methods=["test-inflated"], steps=40, restarts=1)
    entry = report.methods["test-inflated"]
    assert report.violations == entry.violations > 0
    for label in ("l2", "linf"):
        item = entry.norms[label]
        assert item.attack is not None and item.attack.flips > 0.8 * item.attack.attacked
        assert isinstance(item.exact, ExactCheck) and item.exact.violations == item.attack.attacked
        assert item.exact.max_certified_over_exact is not None and item.exact.max_certified_over_exact > 2.0


def test_large_models_get_exact_radii_by_cutting_planes(icnn_and_inputs, monkeypatch):
    # a model above the program's size limit is bracketed by cutting planes; its exact column is the
    # checked upper bound, equal to the program's exact radius within the bracket's tolerance
    model, x = icnn_and_inputs
    small = audit(model, x, norms=(1, 2, math.inf), steps=5, restarts=1)
    monkeypatch.setattr(audit_module, "EXACT_PROGRAM_MAX_NONZEROS", 0)
    large = audit(model, x, norms=(1, 2, math.inf), steps=5, restarts=1)
    assert large.violations == 0
    for label in ("l1", "l2", "linf"):
        ex_small = small.methods["feature-convex"].norms[label].exact
        ex = large.methods["feature-convex"].norms[label].exact
        assert isinstance(ex, ExactCheck) and isinstance(ex_small, ExactCheck)
        assert "cutting planes" in str(ex.solve.method) and ex.solve.not_met == 0
        assert ex_small.solve.method is None  # one program per input
        assert ex.exact is not None and ex_small.exact is not None
        for key in ("min", "median", "max"):
            assert getattr(ex.exact, key) == pytest.approx(getattr(ex_small.exact, key), rel=2e-3)
    # inflated certificates are caught by the cut path's upper bounds too
    _register_inflated(monkeypatch, 1.2)
    report = audit(model, x, norms=(2,), methods=["test-inflated"], steps=5, restarts=1)
    inflated = report.methods["test-inflated"].norms["l2"].exact
    assert isinstance(inflated, ExactCheck) and inflated.violations > 0


def test_models_without_exact_radii_are_reported_not_failed():
    model = small_feature_convex("conv", feature_map=[{"kind": "shift"}, {"kind": "concat-abs"}], seed=4)
    x = torch.rand(12, 1, 6, 6)
    report = audit(model, x, norms=(1, math.inf), steps=10, restarts=1)
    item = report.methods["feature-convex"].norms["linf"]
    assert report.violations == 0
    assert isinstance(item.exact, ExactUnavailable) and "affine" in item.exact.reason
    assert item.exact.to_dict() == {"available": False, "reason": item.exact.reason}
    md = audit_module._markdown(report)  # the reason is said once, below the table, for both norms
    assert md.count(item.exact.reason) == 1 and md.count("| n/a (below) |") == 2
    assert f"Exact radii not computed for l1, linf: {item.exact.reason}." in md


def test_multiclass_model_is_attacked_on_every_certified_input():
    from asymcert.models import build_model

    torch.manual_seed(0)
    model = build_model({"kind": "linf-dist", "input_shape": [1, 6, 6], "widths": [16, 16], "num_classes": 3}).eval()
    x = torch.rand(10, 1, 6, 6)
    report = audit(model, x, norms=(math.inf,), steps=20, restarts=1)
    entry = report.methods["linf-dist"]
    assert not entry.binary and report.violations == 0
    item = entry.norms["linf"]
    assert item.attack is not None and item.attack.attacked >= 5 and isinstance(item.exact, ExactUnavailable)


def test_audit_run_writes_reports(tmp_path, icnn_and_inputs):
    model, x = icnn_and_inputs
    run = tmp_path / "run"
    run.mkdir()
    asymcert.save(model, run)
    report = audit_run(run, x[:20], torch.ones(20, dtype=torch.long), norms=(1, math.inf), steps=20, restarts=1)
    assert report.violations == 0 and report.n_inputs == 20
    assert report.files == [str(run / "audit.json"), str(run / "audit.md")]
    data = json.loads((run / "audit.json").read_text())
    assert data == report.to_dict()
    assert data["violations"] == 0 and set(data["methods"]["feature-convex"]["norms"]) == {"l1", "linf"}
    assert data["methods"]["feature-convex"]["guarantee"] == "flag"
    md = (run / "audit.md").read_text()
    assert "no violations" in md and "| linf |" in md and "(flag guarantee)" in md


def test_the_typed_report_gives_audit_json_keys_in_their_documented_order(icnn_and_inputs):
    """audit.json is AuditReport.to_dict(): the keys (and their order) it had when the report was a dict."""
    model, x = icnn_and_inputs
    y = (model(x) > 0).long().detach()
    data = audit(model, x, y, norms=(math.inf,), steps=5, restarts=1, attack_bounds=True).to_dict()
    assert json.loads(json.dumps(data)) == data
    assert list(data) == [
        *("n_inputs", "model", "norms", "settings", "units", "methods", "config", "violations", "seconds")
    ]
    assert list(data["settings"]) == ["restarts", "steps", "seed", "attack_shrink", "exact_rtol", "certifier_options"]
    entry = data["methods"]["feature-convex"]
    assert list(entry) == [
        *("guarantee", "deterministic", "binary", "certify_seconds", "flagged", "accuracy", "norms", "violations")
    ]
    item = entry["norms"]["linf"]
    assert list(item) == ["certified", "violations", "attack", "exact", "precision", "attack_bound"]
    assert list(item["certified"]) == ["n", "min", "q25", "median", "q75", "max", "mean"]
    assert list(item["attack"]) == [
        *("attacked", "unbounded", "restarts", "steps", "flips", "flips_float64", "flipped_rows", "seconds"),
        "max_norm_over_radius",
    ]
    assert list(item["exact"]) == [
        *("available", "seconds", "status", "failed", "violations", "violating_rows", "tightness", "exact")
    ]
    assert list(item["precision"]) == ["max_ratio_own_over_float64", "violations", "violating_rows", "dtype"]
    assert list(item["attack_bound"]) == [
        *("searched", "found", "cap", "upper", "certified_over_upper", "violations", "violating_rows", "seconds")
    ]
    solve = dict(
        radii=torch.zeros(2), seconds=1.0, status={"exact": 2}, failed=0, method="m", max_relative_gap=math.inf
    )
    brackets = audit_module.ExactSolve(**solve, open_brackets=1).to_dict()
    cuts = audit_module.ExactSolve(**solve, not_met=1).to_dict()
    assert list(brackets) == ["available", "method", "seconds", "status", "open_brackets", "max_relative_gap", "failed"]
    assert list(cuts) == ["available", "method", "seconds", "status", "failed", "not_met", "max_relative_gap"]
    assert brackets["max_relative_gap"] == cuts["max_relative_gap"] == "inf"  # as json_number writes ∞
    skipped = audit_module.PrecisionCheck(None, skipped="probabilistic certificate").to_dict()
    assert skipped == {"skipped": "probabilistic certificate", "max_ratio_own_over_float64": None, "violations": 0}


def test_cli_audit_exit_codes_on_a_real_run(fashion_dir, tmp_path, monkeypatch):
    """`asymcert audit DIR` (the real CLI, the run's own test inputs): 0 on sound certificates, 1 on inflated ones."""
    out = tmp_path / "run"
    res = CliRunner().invoke(
        main,
        [
            "train",
            "fashion-mnist-shirts",
            "--data-dir",
            str(fashion_dir),
            "--out",
            str(out),
            "--model-set",
            'convex={"kind": "icnn", "widths": [8]}',
            "--preset",
            "fast",
            "--epochs",
            "1",
            "--quiet",
        ],
    )
    assert res.exit_code == 0, res.output
    args = [
        "audit",
        str(out),
        "--limit",
        "20",
        "--restarts",
        "1",
        "--steps",
        "20",
        "--no-exact",
        "--data-dir",
        str(fashion_dir),
    ]
    res = CliRunner().invoke(main, args)
    assert res.exit_code == EXIT_OK, res.output
    assert "0 violation(s)" in res.output and json.loads((out / "audit.json").read_text())["n_inputs"] == 20
    norms = json.loads((out / "audit.json").read_text())["methods"]["feature-convex"]["norms"]
    assert all(item["attack_bound"]["searched"] > 0 for item in norms.values())  # --no-exact: bounds instead
    res = CliRunner().invoke(main, [*args, "--no-attack-bounds"])
    norms = json.loads((out / "audit.json").read_text())["methods"]["feature-convex"]["norms"]
    assert res.exit_code == EXIT_OK and not any("attack_bound" in item for item in norms.values())
    sound = certify_api._CERTIFIERS["feature-convex"]

    def inflated(model, x, norms, **options):
        cert = sound.run(model, x, norms, **options)
        cert.radii = {p: r * 1e3 for p, r in cert.radii.items()}
        return cert

    monkeypatch.setitem(certify_api._CERTIFIERS, "feature-convex", dataclasses.replace(sound, run=inflated))
    res = CliRunner().invoke(main, args)
    assert res.exit_code == EXIT_CHECK_FAILED, res.output
    assert json.loads((out / "audit.json").read_text())["violations"] > 0


def _hinge_model():
    """A tabular model whose feature map (log1p, standardize, hinges) has no exact radius; half flagged."""
    model = small_feature_convex(
        "icnn",
        input_shape=(8,),
        feature_map=[{"kind": "log1p"}, {"kind": "standardize"}, {"kind": "hinges", "knots": 3}],
        seed=3,
    )
    x = torch.rand(60, 8, generator=torch.Generator().manual_seed(5)) * 4
    with torch.no_grad():
        model.set_balance(0.0)
        model.set_balance(-float(model(x).median()) - 1e-3)
    return model, x


@pytest.mark.parametrize("p", [1.0, 2.0, math.inf])
def test_attack_bounds_are_counterexamples_above_the_exact_radius(icnn_and_inputs, p):
    model, x = icnn_and_inputs
    cert = asymcert.certify(model, x, norms=(p,))
    upper = audit_module.attack_upper_bounds(model, x, cert, p, steps=40)
    exact = asymcert.exact_radius(model, x, p)
    flagged = cert.sensitive.cpu() & (cert.radius(p).cpu() > 0)
    assert bool(torch.isnan(upper[~flagged]).all()) and bool(torch.isfinite(upper[flagged]).all())
    assert bool((upper[flagged] >= exact[flagged] * (1 - 1e-6)).all())  # a real flip is never inside the exact radius
    ratio = upper[flagged] / exact[flagged]
    assert float(ratio.median()) < 1.1  # and the search lands near it


def test_attack_bounds_fill_in_where_exact_radii_are_missing():
    model, x = _hinge_model()
    tm = asymcert.ThreatModel(scale={"*": 0.5}, increase_only=[0, 1], immutable=[2]).resolve(None, 8)
    report = audit(model, x, norms=(1, math.inf), steps=30, restarts=1, threat_model=tm)
    assert report.violations == 0
    for label in ("l1", "linf"):
        item = report.methods["feature-convex"].norms[label]
        assert isinstance(item.exact, ExactUnavailable)
        bound = item.attack_bound
        assert bound is not None and item.attack is not None
        assert bound.searched == item.attack.attacked >= 20
        assert bound.found >= 0.8 * bound.searched and bound.violations == 0
        t = bound.certified_over_upper
        assert t is not None and t.min > 0 and t.max <= 1.0
        assert bound.upper is not None and item.certified is not None
        assert bound.upper.median >= item.certified.median
    assert "Attack bound" in audit_module._markdown(report)
    # models with exact radii get no bound unless asked, and every norm gets one when asked
    model2, x2 = small_feature_convex("icnn", seed=1), torch.rand(12, 1, 6, 6)
    plain = audit(model2, x2, norms=(math.inf,), steps=5, restarts=1)
    assert plain.methods["feature-convex"].norms["linf"].attack_bound is None
    assert "attack_bound" not in plain.to_dict()["methods"]["feature-convex"]["norms"]["linf"]
    asked = audit(model2, x2, norms=(math.inf,), steps=5, restarts=1, attack_bounds=True)
    asked_bound = asked.methods["feature-convex"].norms["linf"].attack_bound
    assert asked_bound is not None and asked_bound.searched > 0
    none = audit(model, x, norms=(math.inf,), steps=5, restarts=1, attack_bounds=False)
    assert none.methods["feature-convex"].norms["linf"].attack_bound is None


def test_attack_bounds_catch_inflated_certificates_without_exact_radii(monkeypatch):
    model, x = _hinge_model()
    _register_inflated(monkeypatch, 50.0)
    report = audit(model, x, norms=(2,), methods=["test-inflated"], steps=30, restarts=1)
    bound = report.methods["test-inflated"].norms["l2"].attack_bound
    assert bound is not None and bound.certified_over_upper is not None
    assert bound.violations > 0 and bound.certified_over_upper.max > 1.0
    assert report.violations >= bound.violations


def test_reach_radii_pass_the_audit_and_are_recorded_as_audited():
    model, x = _hinge_model()
    tm = asymcert.ThreatModel(scale={"*": 0.5}, increase_only=[0, 1], immutable=[2]).resolve(None, 8)
    common = {"norms": (2, math.inf), "steps": 30, "restarts": 1, "threat_model": tm}
    closed = audit(model, x, **common)
    reach = audit(model, x, options={"reach": True}, **common)
    assert reach.violations == 0 and reach.settings.certifier_options == {"reach": True}
    for label in ("l2", "linf"):
        before = closed.methods["feature-convex"].norms[label]
        after = reach.methods["feature-convex"].norms[label]
        assert after.certified is not None and before.certified is not None
        assert after.certified.median > before.certified.median
        assert after.attack is not None and after.attack.flips == 0
        assert after.attack_bound is not None and after.attack_bound.violations == 0
    with pytest.raises(InputError, match="bogus"):
        audit(model, x, options={"bogus": 1}, **common)


def test_inputs_outside_the_domain_are_warned_about_once():
    """Review s34 ovr F5: the audit warned twice (float32 and float64 copies: "-0.57" and "-0.5699999928474426")."""
    model, x = _hinge_model()
    x[7, 2] = -0.57  # below the domain's lower bound 0 (log1p needs x > -1: still a valid input)
    tm = asymcert.ThreatModel(lower={"*": 0.0}).resolve(None, 8)
    with pytest.warns(UserWarning) as caught:
        audit(model, x, norms=(2,), steps=5, restarts=1, threat_model=tm, exact=False)
    outside = [str(w.message) for w in caught if certify_api.OUTSIDE in str(w.message)]
    assert len(outside) == 1 and "input 7 of these 60" in outside[0] and "-0.57 < lower 0" in outside[0]


def test_closed_form_radii_far_below_the_attack_bounds_point_to_reach():
    """Walkthrough 28b: radii 5% of the closest flip PGD found, and audit.md did not say what tightens them."""

    def bound(median):
        upper = Quartiles(10, 4.0, 6.0, 8.0, 10.0, 12.0, 8.0)
        ratio = Quartiles(10, median / 4, median / 2, median, median * 2, median * 4, median)
        return AttackBound(10, 10, 100, upper, ratio, violations=0, violating_rows=[], seconds=1.0)

    loose = {"l1": bound(0.058), "l2": bound(0.5)}
    notes = [line for line in _bound_table(loose) if line.startswith("Note:")]
    assert len(notes) == 1 and "under a fifth" in notes[0] and "l1 0.058" in notes[0] and "l2" not in notes[0]
    assert "--reach" in notes[0]
    assert "reach" in certify_api.certifier_options(None, "feature-convex")
    assert "reach" not in certify_api.certifier_options(None, "one-vs-rest-convex")  # so its audit.md gets no advice
    # review s34 ovr F5: a certifier without reach-aware radii (one-vs-rest) is not sent to `--reach`
    bare = [line for line in _bound_table(loose, offers_reach=False) if line.startswith("Note:")]
    assert len(bare) == 1 and "under a fifth" in bare[0] and "reach" not in bare[0].lower()
    assert "Note:" not in "\n".join(_bound_table(loose, reach=True))
    assert "Note:" not in "\n".join(_bound_table({"l2": bound(0.5)}))


@pytest.mark.parametrize("threat", [False, True], ids=["l_p", "threat-model"])
def test_attacks_see_at_most_a_chunk_of_inputs_and_still_catch_inflated_radii(icnn_and_inputs, monkeypatch, threat):
    """The audit attacked every certified input in one batch, so its memory grew with --limit (10⁵ inputs of the
    Fashion default: 10⁵ × 4096 float32, 1.6 GB per hidden layer); now ATTACK_CHUNK inputs at a time, the attack
    bounds' searches too. Every input is still attacked, and certificates inflated ×3 are still caught."""
    model, x = _hinge_model()
    tm = asymcert.ThreatModel(scale={"*": 0.5}, increase_only=[0, 1], immutable=[2]) if threat else None
    tm = tm.resolve(None, 8) if tm is not None else None
    whole = audit(model, x, norms=(1, math.inf), steps=20, restarts=1, threat_model=tm, attack_bounds=True)
    seen: list[int] = []
    for name in ("pgd_attack", "threat_attack"):
        real = getattr(audit_module, name)
        monkeypatch.setattr(
            audit_module, name, lambda model, x, *a, _real=real, **k: seen.append(len(x)) or _real(model, x, *a, **k)
        )
    monkeypatch.setattr(audit_module, "ATTACK_CHUNK", 7)
    chunked = audit(model, x, norms=(1, math.inf), steps=20, restarts=1, threat_model=tm, attack_bounds=True)
    assert seen and max(seen) <= 7 and sum(n == 7 for n in seen) >= 2
    assert chunked.violations == 0 == whole.violations
    for label in ("l1", "linf"):
        a, b = (r.methods["feature-convex"].norms[label] for r in (chunked, whole))
        assert a.attack is not None and b.attack is not None and a.attack.attacked == b.attack.attacked >= 20
        assert a.attack_bound is not None and a.attack_bound.searched == a.attack.attacked
    _register_inflated(monkeypatch, 3.0)
    icnn, xi = icnn_and_inputs
    caught = audit(icnn, xi, norms=(math.inf,), methods=["test-inflated"], steps=40, restarts=1, exact=False)
    attack = caught.methods["test-inflated"].norms["linf"].attack
    assert attack is not None and attack.attacked > 7 and attack.flips > 0.8 * attack.attacked
