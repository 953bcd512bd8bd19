"""Inputs given in another float type than the model's: certified at their rounding, radii lowered to hold
around the given values.

A float32 model reads x = fl32(v) for a float64 input v. Rounding to float32 is monotone, so any move δ
the threat model allows from v reaches a point whose float32 rounding is a move from x of the same shape:
a feature left alone stays x_i, a one-sided move keeps its sign, and its size is at most ‖δ‖ + ‖e‖, where
e = v − x counts only on the features a move may change (sized e_i / scale_i under a threat model). A
certificate of radius r at x therefore gives r − ‖e‖ at v (triangle inequality); that is what
:func:`lowered_by_rounding` returns, with ‖e‖ rounded up and the difference rounded down.
"""

from __future__ import annotations

import math
from dataclasses import replace

import torch

from asymcert.certify.functional import lp_norm
from asymcert.certify.result import Certificate, class_radii_key
from asymcert.errors import InputError
from asymcert.nn.feature_maps import round_down, round_up
from asymcert.threat import ResolvedThreatModel

NORM_SLACK = 1e-9
"""Relative allowance for the float64 rounding of ‖e‖ (n < 10⁶ terms: below γ_n(2⁻⁵³) ≈ 1e-10)."""


def to_model_dtype(x: torch.Tensor, dtype: torch.dtype) -> tuple[torch.Tensor, torch.Tensor | None]:
    """``x`` (N, ...) in the model's float ``dtype``, and |x − that| as float64 (N, ...) where the cast
    moved a value (None when it moved none: the same dtype, a wider one, or values that are numbers of it).
    ``x`` must be finite (:func:`~asymcert.certify.inputs.check_inputs`).

    The difference of a float64 and its float32 rounding is exact in float64 (Sterbenz), so the returned
    rounding is the exact size of what the cast did.
    """
    if x.dtype == dtype:
        return x, None
    cast = x.to(dtype)
    if torch.finfo(dtype).bits >= torch.finfo(x.dtype).bits:
        return cast, None
    if not bool(torch.isfinite(cast).all()):
        raise InputError(
            f"inputs hold values beyond the range of the model's {dtype} (|x| > {torch.finfo(dtype).max:g})"
        )
    rounding = (x.double() - cast.double()).abs_()
    return cast, (rounding if bool((rounding > 0).any()) else None)


def lowered_by_rounding(
    cert: Certificate, rounding: torch.Tensor | None, tm: ResolvedThreatModel | None
) -> Certificate:
    """``cert``, certified at the rounded inputs x, with radii that hold around the given values x ± e.

    Args:
        cert: certificates of N inputs x, radii in raw units or ``tm``'s.
        rounding: (N, ...) float64 |e| (:func:`to_model_dtype`); None: ``cert`` unchanged.
        tm: the threat model ``cert`` was certified under (None: plain ℓp balls, every feature movable).
    Returns:
        The same certificate with each radius r lowered to round_down(r − round_up(‖e‖)), at least 0;
        infinite radii stay infinite.
    """
    if rounding is None:
        return cert
    e = rounding.reshape(rounding.shape[0], math.prod(rounding.shape[1:])).double()
    if tm is not None:
        movable = (tm.can_increase | tm.can_decrease).to(e.device)
        e = torch.where(movable[None, :], e / tm.scale.to(e.device)[None, :], torch.zeros_like(e))
    radii, extra = {}, dict(cert.extra)
    for p, r in cert.radii.items():
        allowance = round_up(lp_norm(e, p) * (1.0 + NORM_SLACK)).to(r.device)
        allowance = allowance.nan_to_num(nan=math.inf)  # ‖e‖ beyond float64 (a tiny scale): no radius left
        radii[p] = _lowered(r, allowance)
        key = class_radii_key(p)
        if key in extra:  # one-vs-rest's (N, K) radii of every class: the same rule (review 27g)
            extra[key] = _lowered(extra[key], allowance[:, None])
    return replace(cert, radii=radii, extra=extra)


def _lowered(r: torch.Tensor, allowance: torch.Tensor) -> torch.Tensor:
    """round_down(r − allowance), at least 0, in r's dtype; infinite radii and a zero allowance leave r as it is."""
    r64 = r.double()
    lowered = round_down(r64 - allowance).clamp_min(0.0)
    return torch.where(torch.isinf(r64) | (allowance == 0), r64, lowered).to(r.dtype)
