"""``certify``: one entry point that dispatches to the certifier registered for a model or a method."""

from __future__ import annotations

import math
import numbers
import time
import warnings
from collections.abc import Callable, Iterable
from dataclasses import dataclass, fields, is_dataclass, replace
from typing import TYPE_CHECKING, Any

import torch
from torch import nn

from asymcert.certify.input_rounding import lowered_by_rounding, read_threat_model, reads_round, to_model_dtype
from asymcert.certify.inputs import CHECK_CHUNK, check_inputs
from asymcert.certify.options import refuse
from asymcert.certify.result import Certificate, Guarantee, class_radii_key, normalize_norm
from asymcert.certify.scope import call_scope
from asymcert.certify.threat_model import fallback_radii, resolve_for
from asymcert.errors import InputError, ModelError, UnknownNameError, UnsoundOptionError
from asymcert.nn.convex import global_hook_problems, parameter_dtype
from asymcert.threat import ResolvedThreatModel, ThreatModel

if TYPE_CHECKING:
    from _typeshed import DataclassInstance

Certifier = Callable[..., Certificate]
"""A certifier: ``run(model, x, norms, **options) -> Certificate`` for one batch (already validated): the
model of its family, (N, *input_shape) inputs in raw units, a tuple of norms p ≥ 1, and keyword options
(the fields of its options dataclass)."""


@dataclass(frozen=True)
class CertifierSpec:
    """A certifier as a family declares it (:class:`asymcert.families.Family`).

    Attributes:
        name: the name ``certify(..., method=name)`` and ``model.certifier`` use.
        run: the certifier of one validated batch.
        options: a frozen dataclass whose fields are the certifier's keyword options with their
            defaults; ``certify(**options)`` is checked against it (an unknown option is refused).
        guarantees: the kinds of :class:`~asymcert.certify.result.Guarantee` its certificates give
            (more than one when it depends on the model, e.g. binary vs multi-class).
        precision: the precision policy in one line (where scores come from, what is subtracted).
        threat_run: the certifier under a threat model, ``threat_run(model, x, norms, resolved_tm,
            **options)``, with radii in the threat model's units; None: ``certify`` converts ``run``'s
            raw ℓp radii by the generic fallback (:func:`~asymcert.certify.threat_model.fallback_radii`).
        max_batch: ``max_batch(model)``, the most inputs of this model to certify at once (a working-memory
            budget, e.g. for models whose per-input activations are wide); None: no limit of its own.
    """

    name: str
    run: Certifier
    options: type[DataclassInstance]
    guarantees: frozenset[Guarantee]
    precision: str
    threat_run: Callable[..., Certificate] | None = None
    max_batch: Callable[[nn.Module], int] | None = None


UNVALIDATED = (
    "validate=False: the model's checks (convexity, signs, finite weights, hooks) are skipped; for a model that "
    "fails them the radii are not certificates"
)
"""The warning of ``certify(..., validate=False)``: an option for a model the caller has validated and not changed."""

_CERTIFIERS: dict[str, CertifierSpec] = {}


def register_certifier(spec: CertifierSpec) -> None:
    """Make ``certify(..., method=spec.name)`` use ``spec`` (called by the family registry)."""
    if not is_dataclass(spec.options):
        raise TypeError(f"certifier {spec.name!r}: options must be a dataclass type, got {spec.options!r}")
    _CERTIFIERS[spec.name] = spec


def unregister_certifier(name: str) -> None:
    """Forget the certifier ``name`` (nothing happens when none is registered)."""
    _CERTIFIERS.pop(name, None)


def certifier_names() -> list[str]:
    """Names of every registered certifier."""
    return sorted(_CERTIFIERS)


DEFAULT_CHUNK = 4096
"""Inputs certified at once when ``certify`` is given no ``batch_size``."""


def certifier_spec(model: nn.Module | None, method: str | None = None) -> CertifierSpec:
    """The certifier ``method`` names, else the one ``model.certifier`` names.

    Raises:
        UnknownNameError: no such certifier, or a model that declares none (the message lists the known ones).
    """
    name = method or getattr(model, "certifier", None)
    if name is None:
        raise UnknownNameError(
            f"{type(model).__name__} declares no certifier; pass method=, one of {', '.join(sorted(_CERTIFIERS))}"
        )
    if name not in _CERTIFIERS:
        raise UnknownNameError(f"unknown certifier {name!r}; known: {', '.join(sorted(_CERTIFIERS))}")
    return _CERTIFIERS[name]


def certifier_options(model: nn.Module | None, method: str | None = None) -> frozenset[str]:
    """Names of the options the certifier for ``model`` (or ``method``) takes (its options dataclass's fields).

    Raises:
        UnknownNameError: as :func:`certify`.
    """
    return frozenset(f.name for f in fields(certifier_spec(model, method).options))


def make_options(
    spec: CertifierSpec, options: DataclassInstance | None, overrides: dict[str, Any]
) -> DataclassInstance:
    """The certifier's typed options: ``options`` (an instance of ``spec.options``, or None for the
    defaults) with the keyword ``overrides`` applied.

    Raises:
        InputError: ``options`` of another type, or an option the certifier does not take.
        UnsoundOptionError: a yes/no option that is not a bool (``guard="no"`` would have kept the guard on), or
            the values the options' own ``problems()`` lists (every one, in one line).
    """
    if options is not None and not isinstance(options, spec.options):
        raise InputError(
            f"certifier {spec.name!r} takes options of type {spec.options.__name__}, got {type(options).__name__}"
        )
    known = [f.name for f in fields(spec.options)]
    unknown = sorted(set(overrides) - set(known))
    if unknown:
        raise InputError(
            f"certifier {spec.name!r} has no option {', '.join(map(repr, unknown))}; "
            f"its options: {', '.join(known) or 'none'}"
        )
    base = options if options is not None else spec.options()
    made = replace(base, **overrides) if overrides else base
    flags = [
        f.name for f in fields(made) if isinstance(f.default, bool) and not isinstance(getattr(made, f.name), bool)
    ]
    if flags:
        raise UnsoundOptionError(
            f"certifier {spec.name!r}: option(s) {', '.join(flags)} must be True or False, got "
            + ", ".join(repr(getattr(made, name)) for name in flags)
        )
    check = getattr(made, "problems", None)
    refuse(f"certifier {spec.name!r}", check() if callable(check) else [])
    return made


def option_values(options: DataclassInstance) -> dict[str, Any]:
    """The fields of an options dataclass as keyword arguments (values as they are, not copied)."""
    return {f.name: getattr(options, f.name) for f in fields(options)}


def _chunk_size(batch_size: int | None) -> int:
    """The number of inputs certified at once: ``batch_size``, or :data:`DEFAULT_CHUNK`."""
    if batch_size is None:
        return DEFAULT_CHUNK
    if isinstance(batch_size, bool) or not isinstance(batch_size, numbers.Integral) or batch_size < 1:
        raise InputError(
            f"batch_size must be a positive number of inputs (or None for {DEFAULT_CHUNK}), got {batch_size!r}"
        )
    return int(batch_size)


def _model_device(model: nn.Module, x: torch.Tensor) -> torch.device:
    """The device of the model's weights (``x``'s for a model without any); refuses weights without values."""
    params = list(model.parameters())
    if any(p.is_meta for p in params):
        raise InputError(
            "the model's weights are on the meta device, they hold no values; build or load it on cpu or cuda"
        )
    return params[0].device if params else x.device


OUTSIDE = "outside the threat model's domain"
"""The phrase of :func:`outside_warning`'s message (callers that warn once for many calls filter the rest by it)."""


def outside_warning(
    tm: ResolvedThreatModel | None, x: torch.Tensor, name: Callable[[int], str] | None = None
) -> str | None:
    """The warning for inputs x (N, *shape) outside ``tm``'s domain [lower, upper]
    (:meth:`~asymcert.threat.ResolvedThreatModel.outside`), often corrupt values (a count below 0), or None when every
    input is inside: how many, and the first, named by ``name(i)`` (default: "input i of these N, counted from 0"),
    with its feature, value and the bound it breaks."""
    count, first = (0, None) if tm is None else tm.outside(x, CHECK_CHUNK)
    if not count or tm is None or first is None:
        return None
    where = name(first) if name is not None else f"input {first} of these {len(x)}, counted from 0"
    return (
        f"{count} of {len(x)} input(s) lie {OUTSIDE} [lower, upper] (the first: {where}: "
        f"{tm.outside_detail(x[first])}); corrupt values? Their radii count the moves it allows from there."
    )


def _warn_outside(tm: ResolvedThreatModel | None, x: torch.Tensor) -> None:
    """Warn (UserWarning) with :func:`outside_warning` when inputs lie outside ``tm``'s domain."""
    message = outside_warning(tm, x)
    if message is not None:
        warnings.warn(message, UserWarning, stacklevel=3)


def _model_dtype(model: nn.Module, x: torch.Tensor) -> torch.dtype:
    """The dtype the model computes in (its first floating parameter's; ``x``'s when it has none)."""
    return parameter_dtype(model) or x.dtype


def _empty(cert: Certificate) -> Certificate:
    """``cert`` with every per-input tensor cut to 0 rows (the shapes and types of an empty batch)."""
    return Certificate(
        cert.predicted[:0],
        {p: r[:0] for p, r in cert.radii.items()},
        cert.method,
        cert.guarantee,
        cert.alpha,
        None if cert.abstained is None else cert.abstained[:0],
        0.0,
        cert.binary,
        {k: v[:0] for k, v in cert.extra.items()},
        cert.units,
    )


def _placeholder(x: torch.Tensor, value_range: tuple[float, float] | None) -> torch.Tensor:
    """One valid input of ``x``'s shape (zeros, or the low end of ``value_range``) to learn an empty result's layout."""
    low = 0.0 if value_range is None or value_range[0] <= 0 <= value_range[1] else float(value_range[0])
    return torch.full((1, *x.shape[1:]), low, dtype=x.dtype, device=x.device)


def _run(
    spec: CertifierSpec,
    model: nn.Module,
    x: torch.Tensor,
    norms: tuple[float, ...],
    tm: ResolvedThreatModel | None,
    kwargs: dict[str, Any],
) -> Certificate:
    """One chunk: the plain certifier, its threat-model form, or the plain one with the generic fallback. A
    certifier asked for by name (``method=``) that finds the model lacks what it reads is refused in one line
    (InputError) instead of an AttributeError from inside it."""
    try:
        if tm is None:
            return spec.run(model, x, norms, **kwargs)
        if spec.threat_run is not None:
            return spec.threat_run(model, x, norms, tm, **kwargs)
        cert = spec.run(model, x, norms, **kwargs)
    except AttributeError as exc:
        if spec.name == getattr(model, "certifier", None):
            raise
        raise InputError(f"certifier {spec.name!r} cannot certify a {type(model).__name__} ({exc})") from None
    return replace(cert, radii=fallback_radii(cert.radii, tm, x), units=tm.units())


def certify(
    model: nn.Module,
    x: torch.Tensor,
    norms: Iterable[float | str] = (1, 2, math.inf),
    method: str | None = None,
    batch_size: int | None = None,
    check_range: bool = True,
    options: DataclassInstance | None = None,
    threat_model: ThreatModel | ResolvedThreatModel | None = None,
    **overrides: Any,
) -> Certificate:
    """Certify a batch of inputs, :data:`DEFAULT_CHUNK` (or ``batch_size``) inputs at a time.

    Memory: the certifier sees one chunk at a time, so the working memory is that of certifying
    ``batch_size`` inputs (O(chunk × the model's activations per input)) plus the (N,) results,
    whatever N; inputs are moved to the model's device one chunk at a time.

    Args:
        model: a model of asymcert (or any module with an attribute ``certifier`` naming a
            registered certifier and an ``input_shape``).
        x: (N, *input_shape) inputs in raw units, on the model's device or CPU. N = 0 gives an
            empty Certificate (0 rows, the norms, method and extra fields of a non-empty one). Any float
            dtype: inputs in a type wider than the model's (float64 data for a float32 model) are
            certified at their rounding, and the radii lowered to hold around the values given, for moves to
            numbers of that type, which the model reads rounded too (:mod:`asymcert.certify.input_rounding`).
        norms: ℓp norms to certify (p ≥ 1; ``math.inf`` or ``"inf"`` for ℓ∞).
        method: certifier name; default ``model.certifier``.
        batch_size: inputs per chunk (≥ 1); None: :data:`DEFAULT_CHUNK` (4096). A certifier with a
            working-memory budget (:attr:`CertifierSpec.max_batch`) takes fewer at once where it says so.
        check_range: reject inputs outside ``model.input_range`` when the model declares one.
        options: the certifier's typed options (e.g. :class:`~asymcert.certify.feature_convex.FeatureConvexOptions`);
            None: its defaults.
        threat_model: certify only the moves it allows, radii in its units (:mod:`asymcert.threat`);
            a :class:`~asymcert.threat.ThreatModel` must name features by index here (resolve one with
            names first: ``tm.resolve(names, d)``). None, or an empty threat model (no constraint,
            unit scales): plain ℓp balls in raw input units, the same radii exactly.
        **overrides: single options by name on top (``precision="float64"``, ``guard=False``, ...).
    Returns:
        A :class:`Certificate` with one entry per input, tensors on the model's device; its ``units``
        say what the radii are measured in.
    Raises:
        InputError: inputs of the wrong type, shape or range, NaN/Inf, on the meta device; a model
            whose weights are on the meta device; ``batch_size`` < 1.
        UnknownNameError: an unknown certifier.
        InputError: also an option the certifier does not take, or options of another certifier.
        ModelError: process-wide module hooks are set (they may change what the model computes).
        InputError: called inside ``torch.inference_mode()`` (the certificate needs gradients).
    Warns:
        UserWarning: ``validate=False`` (:data:`UNVALIDATED`); inputs outside the threat model's domain.

    Example:
        >>> import torch, asymcert
        >>> from asymcert.models import build_model
        >>> model = build_model({"kind": "feature-convex", "input_shape": [4],
        ...     "feature_map": [{"kind": "shift"}], "convex": {"kind": "icnn", "widths": [8]}})
        >>> cert = asymcert.certify(model, torch.rand(3, 4), norms=(2, "inf"))
        >>> sorted(cert.radii) == [2.0, float("inf")]
        True
    """
    spec = certifier_spec(model, method)
    kwargs = option_values(make_options(spec, options, overrides))
    step = _chunk_size(batch_size)
    step = step if spec.max_batch is None else max(1, min(step, spec.max_batch(model)))
    norms_t = tuple(dict.fromkeys(normalize_norm(p) for p in norms))
    if not norms_t:
        raise InputError("no norms to certify; pass at least one, e.g. norms=(2,)")
    value_range = getattr(model, "input_range", None) if check_range else None
    check_inputs(x, getattr(model, "input_shape", None), value_range)
    for problem in global_hook_problems():  # they run inside every model's call, whatever its own checks
        raise ModelError(problem)
    if torch.is_inference_mode_enabled():
        raise InputError("certify computes gradients: call it outside torch.inference_mode() (torch.no_grad() is fine)")
    if kwargs.get("validate") is False:
        warnings.warn(UNVALIDATED, UserWarning, stacklevel=2)
    device = _model_device(model, x)
    tm = None if threat_model is None else resolve_for(threat_model, x)
    tm = None if tm is not None and tm.is_empty() else tm  # an empty threat model is today's ℓp ball, exactly
    _warn_outside(tm, x)
    dtype = _model_dtype(model, x)
    rounds = reads_round(x.dtype, dtype)  # the attacker's numbers are x's type: read rounded, charged below
    tm_read = read_threat_model(tm, dtype) if rounds else tm
    parts = []
    with call_scope():  # (a feature-convex model's magnitude bounds: computed once for every chunk)
        for start in range(0, x.shape[0], step):
            given = x[start : start + step]
            chunk, rounding = to_model_dtype(given, dtype)
            chunk = chunk.to(device)
            t0 = time.perf_counter()
            cert = _run(spec, model, chunk, norms_t, tm_read, kwargs)
            cert = lowered_by_rounding(cert, given, rounding, tm, dtype) if rounds else cert
            if device.type == "cuda":
                torch.cuda.synchronize(device)
            cert.seconds = time.perf_counter() - t0
            parts.append(cert)
    if not parts:  # an empty batch: the layout of one placeholder input's result, with no rows
        return _empty(_run(spec, model, _placeholder(x, value_range).to(device, dtype), norms_t, tm, kwargs))
    cert = parts[0] if len(parts) == 1 else Certificate.cat(parts)
    per_class = {p: cert.extra[class_radii_key(p)] for p in cert.radii if class_radii_key(p) in cert.extra}
    extra = {**cert.extra, **{class_radii_key(p): r for p, r in nested_radii(per_class).items()}}
    return replace(cert, radii=nested_radii(cert.radii), extra=extra)


def nested_radii(radii: dict[float, torch.Tensor]) -> dict[float, torch.Tensor]:
    """Each ℓp radius (N,) raised to the largest radius of the norms q > p certified with it: ‖v‖_q ≤ ‖v‖_p for
    p ≤ q, so a move too small for the ℓq certificate in ℓq is too small in ℓp as well (threat-model units
    alike, on δ / scale). The closed forms come ordered; reach-aware radii need not (walkthrough 27f: ℓ2 above
    ℓ1 on 49 of 231 rows). NaN radii are passed over (``torch.fmax``)."""
    out: dict[float, torch.Tensor] = {}
    larger: torch.Tensor | None = None
    for p in sorted(radii, reverse=True):
        larger = radii[p] if larger is None else torch.fmax(radii[p], larger.to(radii[p]))
        out[p] = larger
    return {p: out[p] for p in radii}
