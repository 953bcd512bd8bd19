"""Metrics over certificates: clean accuracy and certified-accuracy curves."""

from __future__ import annotations

import torch

from asymcert.certify.result import Certificate, Guarantee


def clean_accuracy(cert: Certificate, labels: torch.Tensor) -> float:
    """Share of all inputs whose decision equals the label."""
    return float((cert.predicted.cpu() == labels.cpu()).double().mean())


def certified_accuracy(cert: Certificate, labels: torch.Tensor, p: float, radii: torch.Tensor) -> torch.Tensor:
    """Certified accuracy at each radius in ``radii`` (R,) → (R,) float64.

    Binary sensitive-class models (the asymmetric setting): the share of *sensitive-class* inputs
    flagged sensitive with a certified radius ≥ r. Multiclass models: the share of all inputs
    classified correctly with radius ≥ r. A ``Guarantee.FLAG`` certificate certifies the flag, so the
    correct class must also be flagged (one-vs-rest: s_k > 0), its radius being how far it provably
    stays flagged. Abstentions count as failures.
    """
    labels = labels.cpu()
    correct = cert.predicted.cpu() == labels
    if cert.abstained is not None:
        correct &= ~cert.abstained.cpu()
    if cert.guarantee is Guarantee.FLAG:  # the (true = predicted) class must also be flagged
        correct &= cert.predicted_flagged().cpu()
    rad = cert.radius(p).cpu()
    pool = labels == 1 if cert.binary else torch.ones_like(labels, dtype=torch.bool)
    n = max(1, int(pool.sum()))
    ok = (correct & pool)[None, :] & (rad[None, :] >= radii.double().cpu()[:, None])
    return ok.sum(dim=1).double() / n


def curve_grid(cert: Certificate, labels: torch.Tensor, p: float, points: int = 200) -> torch.Tensor:
    """Radii (points,) from 0 to just past the largest certified radius of a correct sensitive input (at most
    10³⁰⁰: beyond, a plot's axis range would overflow to ∞)."""
    rad = cert.radius(p).cpu()
    finite = rad[torch.isfinite(rad)]
    top = float(finite.max()) if finite.numel() else 1.0
    return torch.linspace(0.0, min(max(top, 1e-12), 1e300) * 1.05, points, dtype=torch.float64)
