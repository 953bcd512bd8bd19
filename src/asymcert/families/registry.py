"""The one place model families are registered: :func:`register_family`."""

from __future__ import annotations

from asymcert.certify.api import register_certifier, unregister_certifier
from asymcert.errors import ConfigError, UnknownNameError
from asymcert.families.contract import Family
from asymcert.models.registry import register_builder, unregister_builder
from asymcert.train.recipes import register_recipe, unregister_recipe

_FAMILIES: dict[str, Family] = {}


def register_family(family: Family, replace: bool = False) -> Family:
    """Register ``family``: its builder, recipe and certifiers become available everywhere.

    Raises:
        ConfigError: a family of that kind, or a certifier of that name from another family, is
            already registered (pass ``replace=True`` to replace a family of the same kind).
    """
    old = _FAMILIES.get(family.kind)
    if old is not None and not replace:
        raise ConfigError(f"a model family {family.kind!r} is already registered")
    taken = {
        spec.name: other.kind for other in _FAMILIES.values() if other.kind != family.kind for spec in other.certifiers
    }
    clash = [spec.name for spec in family.certifiers if spec.name in taken]
    if clash:
        raise ConfigError(
            f"family {family.kind!r}: certifier name(s) {', '.join(clash)} belong to family {taken[clash[0]]!r}"
        )
    if old is not None:
        unregister_family(old.kind)
    _FAMILIES[family.kind] = family
    register_builder(family.kind, family.build)
    register_recipe(family.kind, family.recipe)
    for spec in family.certifiers:
        register_certifier(spec)
    return family


def unregister_family(kind: str) -> None:
    """Remove the family ``kind`` with its builder, recipe and certifiers (nothing happens when unknown)."""
    family = _FAMILIES.pop(kind, None)
    if family is None:
        return
    unregister_builder(kind)
    unregister_recipe(kind)
    for spec in family.certifiers:
        unregister_certifier(spec.name)


def get_family(kind: str) -> Family:
    """The registered family ``kind``.

    Raises:
        UnknownNameError: no such family; the message lists the known ones.
    """
    if kind not in _FAMILIES:
        raise UnknownNameError(f"unknown model family {kind!r}; known: {', '.join(sorted(_FAMILIES))}")
    return _FAMILIES[kind]


def family_names() -> list[str]:
    """Names of every registered family, sorted."""
    return sorted(_FAMILIES)


def families() -> list[Family]:
    """Every registered family, in registration order."""
    return list(_FAMILIES.values())
