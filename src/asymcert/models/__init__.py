"""Whole classifiers built from :mod:`asymcert.nn` layers, rebuilt from JSON configs."""

from asymcert.models.feature_convex import FeatureConvexClassifier
from asymcert.models.registry import build_model, model_kinds

__all__ = ["FeatureConvexClassifier", "build_model", "model_kinds"]
