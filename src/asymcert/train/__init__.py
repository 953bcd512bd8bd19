"""Training: the loop, recipes per model family, losses, regularisers and the balance shift."""

from asymcert.train.balance import fit_balance
from asymcert.train.config import TrainConfig
from asymcert.train.loop import FitResult, fit
from asymcert.train.own_loop import CertifiableTraining, make_certifiable
from asymcert.train.recipes import FeatureConvexRecipe, Recipe, recipe_for

__all__ = [
    "CertifiableTraining",
    "FeatureConvexRecipe",
    "FitResult",
    "Recipe",
    "TrainConfig",
    "fit",
    "fit_balance",
    "make_certifiable",
    "recipe_for",
]
