"""What every reach-aware bound of a feature-convex certificate reads, as one typed value (:class:`ReachProblem`).

The one-box search (:func:`~asymcert.certify.threat_model.reach_radii`), the path bound
(:func:`~asymcert.certify.reach_path.path_radii`) and the audit's checks at a given radius all start from
the same six things: φ, the bounds on g's gradient, the inputs, the threat model, the guarded margins and the
precision's slack. They travel together so that a subset of the inputs is taken in one place (:meth:`take`).
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from asymcert.nn.feature_maps import round_down
from asymcert.threat import ResolvedThreatModel


@dataclass(frozen=True)
class ReachProblem:
    """The reach-aware bounds' inputs for N inputs of one certificate.

    Attributes:
        phi: the feature map φ (coordinate-wise, or pair-min / group-min; no learned parameters are read
            here beyond what φ's bound methods read).
        grads: (lo, hi), each (N, K·n) float64: bounds on ∇g(φ(x)) (the exact gradient's range).
        x: (N, *shape) raw inputs, n = prod(shape) coordinates each.
        tm: the threat model, resolved for n features.
        margin: (N,) float64 guarded lower bounds on the flag's score s(x) (≤ 0 where not flagged).
        slack: the precision's relative allowance, as :func:`~asymcert.certify.functional.safe_radius` takes it.
    """

    phi: torch.nn.Module
    grads: tuple[torch.Tensor, torch.Tensor]
    x: torch.Tensor
    tm: ResolvedThreatModel
    margin: torch.Tensor
    slack: float

    @property
    def x_flat(self) -> torch.Tensor:
        """(N, n) the inputs, flattened (no copy)."""
        return self.x.reshape(self.x.shape[0], -1)

    @property
    def budget(self) -> torch.Tensor:
        """(N,) float64 how far the tangent plane may fall: the margin less its slack, rounded down."""
        return round_down(self.margin.double() * (1.0 - self.slack))

    def take(self, rows: torch.Tensor) -> ReachProblem:
        """The same problem for the inputs ``rows`` (R,) (indices) only."""
        grads = (self.grads[0][rows], self.grads[1][rows])
        return ReachProblem(self.phi, grads, self.x[rows], self.tm, self.margin[rows], self.slack)
