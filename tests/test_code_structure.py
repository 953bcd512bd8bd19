"""Habits the code keeps: functions short enough to read at once, and no function-level imports of asymcert
modules (they hide import cycles; ``tests/test_architecture.py`` checks the module-level graph)."""

from __future__ import annotations

import ast
import json
import subprocess
import sys
from pathlib import Path

SRC = Path(__file__).resolve().parents[1] / "src" / "asymcert"
MAX_LINES = 60
"""Lines of code per function, from its ``def`` to its last line, the docstring not counted."""

KERNELS = {
    "certify/bounded_convex.py::_kernel_pass": "drives the compiled float64 kernel with its rounding bounds, one pass"
}
"""Numeric kernels allowed to be longer, each with the reason."""

LAZY_IMPORTS = {
    "__init__.py::__getattr__": "asymcert.exact_radius loads SciPy's solvers only when used",
    "nn/__init__.py::__getattr__": "the ℓ∞-distance layers load their compiled kernel only when used",
}
"""Function-level imports kept on purpose, each with the reason."""


def _functions(tree: ast.AST) -> list[tuple[str, ast.FunctionDef | ast.AsyncFunctionDef]]:
    """Every function and method with its qualified name (``Class.method``, ``outer.inner``)."""
    out = []

    def walk(node: ast.AST, prefix: str) -> None:
        for child in ast.iter_child_nodes(node):
            if isinstance(child, ast.FunctionDef | ast.AsyncFunctionDef):
                out.append((prefix + child.name, child))
                walk(child, f"{prefix}{child.name}.")
            elif isinstance(child, ast.ClassDef):
                walk(child, f"{prefix}{child.name}.")
            else:
                walk(child, prefix)

    walk(tree, "")
    return out


def code_lines(fn: ast.FunctionDef | ast.AsyncFunctionDef) -> int:
    """Lines from the ``def`` to the end of the function, minus the lines of its docstring."""
    total = (fn.end_lineno or fn.lineno) - fn.lineno + 1
    first = fn.body[0]
    if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant) and isinstance(first.value.value, str):
        total -= (first.end_lineno or first.lineno) - first.lineno + 1
    return total


def _sources() -> list[tuple[str, ast.Module]]:
    return [(str(p.relative_to(SRC)), ast.parse(p.read_text(encoding="utf-8"))) for p in sorted(SRC.rglob("*.py"))]


def long_functions(sources: list[tuple[str, ast.Module]]) -> list[str]:
    return [
        f"{path}::{name} ({code_lines(fn)} lines)"
        for path, tree in sources
        for name, fn in _functions(tree)
        if code_lines(fn) > MAX_LINES and f"{path}::{name}" not in KERNELS
    ]


def function_level_imports(sources: list[tuple[str, ast.Module]]) -> list[str]:
    found = []
    for path, tree in sources:
        for name, fn in _functions(tree):
            if f"{path}::{name}" in LAZY_IMPORTS:
                continue
            for node in ast.walk(fn):
                modules = []
                if isinstance(node, ast.Import):
                    modules = [a.name for a in node.names]
                elif isinstance(node, ast.ImportFrom):
                    modules = ["asymcert" if node.level else node.module or ""]
                found += [f"{path}::{name} imports {m}" for m in modules if m.split(".")[0] == "asymcert"]
    return sorted(set(found))


def test_functions_are_at_most_60_lines():
    offenders = long_functions(_sources())
    assert not offenders, "functions over 60 lines (docstring not counted):\n" + "\n".join(offenders)


def test_no_function_level_imports_of_asymcert():
    offenders = function_level_imports(_sources())
    assert not offenders, "function-level imports (move them to module level):\n" + "\n".join(offenders)


def test_the_checks_catch_what_they_look_for():
    source = "def f():\n    '''doc\n    more'''\n" + "    x = 1\n" * 60 + "\ndef g():\n    from asymcert import nn\n"
    tree = ast.parse(source)
    assert long_functions([("m.py", tree)]) == ["m.py::f (61 lines)"]
    assert function_level_imports([("m.py", tree)]) == ["m.py::g imports asymcert"]
    assert function_level_imports([("m.py", ast.parse("def h():\n    import matplotlib\n"))]) == []


def test_allowlists_name_real_functions():
    names = {f"{path}::{name}" for path, tree in _sources() for name, _ in _functions(tree)}
    assert set(KERNELS) <= names and set(LAZY_IMPORTS) <= names


def test_tests_mirror_the_package():
    """Each subpackage of ``asymcert`` has its tests in the folder of the same name, and there is no other folder."""
    tests = Path(__file__).resolve().parent
    packages = {p.parent.name for p in SRC.glob("*/__init__.py")}
    folders = {p.name for p in tests.iterdir() if p.is_dir() and not p.name.startswith((".", "_"))}
    assert folders == packages
    for name in folders:
        assert (tests / name / "__init__.py").is_file(), name
        assert list((tests / name).glob("test_*.py")), name


_IMPORT_EVERY_SCRIPT = """
import importlib, json, pathlib, sys
folder = pathlib.Path(sys.argv[1])
sys.path.insert(0, str(folder))
bad = []
for f in sorted(folder.glob("*.py")):
    try:
        importlib.import_module(f.stem)
    except Exception as exc:
        bad.append(f"{f.name}: {exc!r}")
print(json.dumps(bad))
"""


def test_every_benchmark_script_imports():
    """The benchmarks run as scripts, so nothing else imports them: bench_smoothing_ratio.py imported two names
    from asymcert.compare after they had moved to asymcert.families, and failed at its first line (found in
    session 31). Each script is imported (its ``__main__`` block not run) in a fresh interpreter."""
    benchmarks = SRC.parents[1] / "benchmarks"
    done = subprocess.run(
        [sys.executable, "-c", _IMPORT_EVERY_SCRIPT, str(benchmarks)], capture_output=True, text=True, timeout=300
    )
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout.strip().splitlines()[-1]) == []
    assert len(list(benchmarks.glob("*.py"))) > 20
