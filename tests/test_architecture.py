"""The import graph of asymcert: no cycles, and data flows one way through the layers.

nn, data → models → checkpoint/runfolder → certify, train → families → pipeline → report
→ audit, compare, research → cli. A module may import its own layer or a lower one; the package's
``__init__`` (the public facade) may import anything.
"""

from __future__ import annotations

import ast
from pathlib import Path

from asymcert.families import family_names

SRC = Path(__file__).resolve().parents[1] / "src" / "asymcert"

LAYERS: list[set[str]] = [
    {"errors", "_native", "distributed", "jsontext", "text", "files"},
    {"nn", "data", "threat"},
    {"models"},
    {"checkpoint", "runfolder"},
    {"certify", "train"},
    {"families"},
    {"pipeline", "traffic", "export"},
    {"report"},
    {"audit", "compare", "research"},
    {"cli"},
    {"__main__"},
]
LAYER = {name: i for i, names in enumerate(LAYERS) for name in names}


def _module_name(path: Path) -> str:
    parts = ["asymcert", *path.relative_to(SRC).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(node: ast.If) -> bool:
    test = node.test
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _module_level_imports(tree: ast.Module, module: str, is_package: bool) -> set[str]:
    """asymcert modules imported at module level (outside ``if TYPE_CHECKING:``), resolved to module names."""
    found: set[str] = set()
    nodes = list(tree.body)
    while nodes:
        node = nodes.pop()
        if isinstance(node, ast.If) and not _is_type_checking(node):
            nodes += node.body + node.orelse
        elif isinstance(node, ast.Try):
            nodes += node.body + node.orelse + node.finalbody + [s for h in node.handlers for s in h.body]
        elif isinstance(node, ast.Import):
            found |= {a.name for a in node.names if a.name.startswith("asymcert")}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = module.split(".") if is_package else module.split(".")[:-1]
                base = ".".join(anchor[: len(anchor) - node.level + 1] + ([base] if base else []))
            if base.startswith("asymcert"):
                found |= {f"{base}.{a.name}" if _is_module(f"{base}.{a.name}") else base for a in node.names}
    return found


def _is_module(name: str) -> bool:
    rel = Path(*name.split(".")[1:])
    return (SRC / rel).with_suffix(".py").is_file() or (SRC / rel / "__init__.py").is_file()


def _graph() -> dict[str, set[str]]:
    graph = {}
    for path in sorted(SRC.rglob("*.py")):
        name = _module_name(path)
        tree = ast.parse(path.read_text(encoding="utf-8"))
        graph[name] = {m for m in _module_level_imports(tree, name, path.name == "__init__.py") if m != name}
    return graph


def _top(module: str) -> str:
    parts = module.split(".")
    return parts[1] if len(parts) > 1 else ""


def test_every_top_level_module_has_a_layer():
    tops = {_top(m) for m in _graph()} - {""}
    assert tops <= set(LAYER), f"modules without a layer: {sorted(tops - set(LAYER))}"


def _against_layers(graph: dict[str, set[str]]) -> list[str]:
    """Every import of a higher layer (or of the package facade), as a readable line."""
    wrong = []
    for module, imports in graph.items():
        if module == "asymcert":
            continue
        for target in imports:
            if target != "asymcert" and LAYER[_top(target)] > LAYER[_top(module)]:
                wrong.append(f"{module} (layer {LAYER[_top(module)]}) imports {target} (layer {LAYER[_top(target)]})")
            elif target == "asymcert":
                wrong.append(f"{module} imports the package facade asymcert")
    return sorted(wrong)


def test_imports_flow_down_the_layers():
    wrong = _against_layers(_graph())
    assert not wrong, "imports against the layers:\n" + "\n".join(wrong)


def test_the_layer_check_finds_an_upward_import():
    graph = {"asymcert.models.x": {"asymcert.nn.y", "asymcert.pipeline"}, "asymcert.nn.y": {"asymcert"}}
    assert _against_layers(graph) == [
        "asymcert.models.x (layer 2) imports asymcert.pipeline (layer 6)",
        "asymcert.nn.y imports the package facade asymcert",
    ]


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on: set[str] = set()
    out: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in graph.get(v, ()):
            if w not in graph:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in graph:
        if v not in index:
            visit(v)
    return out


def test_no_import_cycles():
    graph = {m: {t for t in imports if t != "asymcert"} for m, imports in _graph().items() if m != "asymcert"}
    assert not _cycles(graph), f"import cycles: {_cycles(graph)}"


def test_the_cycle_finder_finds_a_cycle():
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []


def _family_name_comparisons(source: str, name: str, kinds: set[str]) -> list[str]:
    """``x == "linf-dist"``-style comparisons (==, !=, in) of a value with a family's name in one source file."""
    found = []
    for node in ast.walk(ast.parse(source)):
        if not isinstance(node, ast.Compare):
            continue
        operands = [node.left, *node.comparators]
        consts = [c.value for o in operands for c in ast.walk(o) if isinstance(c, ast.Constant)]
        hits = sorted({c for c in consts if isinstance(c, str) and c in kinds})
        if hits:
            found.append(f"{name}:{node.lineno} compares with {', '.join(hits)}")
    return found


def test_nothing_outside_the_family_modules_branches_on_a_family_name():
    kinds = set(family_names())
    found = [
        hit
        for path in sorted(SRC.rglob("*.py"))
        if "families" not in path.parts
        for hit in _family_name_comparisons(path.read_text(encoding="utf-8"), str(path.relative_to(SRC)), kinds)
    ]
    assert not found, "branching on family names (read the Family instead):\n" + "\n".join(found)


def test_the_family_name_check_finds_a_branch():
    source = 'def f(kind):\n    return 1 if kind == "linf-dist" else 0\n\ndef g(k):\n    return k in ("x", "y")\n'
    assert _family_name_comparisons(source, "m.py", {"linf-dist"}) == ["m.py:2 compares with linf-dist"]
