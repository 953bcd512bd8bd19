"""Imports the model families beyond feature-convex so that they register themselves.

Each family adds ONE import line here (keep them sorted).
"""
import asymcert.models.baselines  # noqa: F401
import asymcert.models.linf_dist_net  # noqa: F401
import asymcert.models.one_vs_rest  # noqa: F401
