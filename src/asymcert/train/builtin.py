"""Imports the model families beyond feature-convex so that they register themselves.

Each family adds ONE import line here (keep them sorted).
"""
import asymcert.train.baseline_recipes  # noqa: F401
import asymcert.train.linf_recipe  # noqa: F401
import asymcert.train.one_vs_rest  # noqa: F401
