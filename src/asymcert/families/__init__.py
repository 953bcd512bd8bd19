"""Model families: one module each, registered here (one line per family).

A family (:class:`Family`) bundles its model builder and default config, the settings it derives
from a task, its training recipe and defaults, its certifiers with typed options and precision
policy, and the kind of guarantee they give. To add one, write a module with a ``FAMILY`` value
and register it (here, or from your own code with :func:`register_family`).
"""

from asymcert.families import bound_propagation, feature_convex, linf_dist, one_vs_rest, orthogonal, smoothing
from asymcert.families.contract import CompareScale, Family, MethodSpec, TaskFacts
from asymcert.families.registry import families, family_names, get_family, register_family, unregister_family

for _module in (feature_convex, linf_dist, one_vs_rest, smoothing, bound_propagation, orthogonal):
    register_family(_module.FAMILY, replace=True)

__all__ = [
    "CompareScale",
    "Family",
    "MethodSpec",
    "TaskFacts",
    "families",
    "family_names",
    "get_family",
    "register_family",
    "unregister_family",
]
