"""Training: the loop, recipes per model family, losses, regularisers and the balance shift."""

from asymcert.train.balance import allowed_false_positives, fit_balance, fit_false_positive_shift
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
    "allowed_false_positives",
    "fit",
    "fit_balance",
    "fit_false_positive_shift",
    "make_certifiable",
    "recipe_for",
]
