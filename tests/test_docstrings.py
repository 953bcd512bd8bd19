"""The runnable examples in the docstrings run and give what they show."""

import doctest
import importlib
import pkgutil

import pytest

import asymcert


def _modules_with_examples() -> list[str]:
    names = ["asymcert"] + [m.name for m in pkgutil.walk_packages(asymcert.__path__, "asymcert.")]
    out = []
    for name in names:
        spec = importlib.util.find_spec(name)
        if spec is not None and spec.origin and spec.origin.endswith(".py"):
            with open(spec.origin, encoding="utf-8") as f:
                if ">>>" in f.read():
                    out.append(name)
    return out


MODULES = _modules_with_examples()


def test_examples_are_found():
    assert "asymcert.train.regularizers" in MODULES and "asymcert.certify.api" in MODULES


@pytest.mark.parametrize("name", MODULES)
def test_docstring_examples_run(name):
    result = doctest.testmod(importlib.import_module(name), optionflags=doctest.ELLIPSIS | doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
