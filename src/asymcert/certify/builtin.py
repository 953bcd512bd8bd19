"""Imports the model families beyond feature-convex so that they register themselves.

Each family adds ONE import line here (keep them sorted).
"""
from asymcert.certify import bound_propagation, orthogonal, smoothing  # noqa: F401  (baselines)
import asymcert.certify.linf_dist  # noqa: F401
import asymcert.certify.one_vs_rest  # noqa: F401
