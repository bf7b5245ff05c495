"""The shape of the tree stays visible: no import cycles, short functions, few loose modules,
`model/` independent of `stream/`, packages that are one docstring and `__all__`.

Read with `ast` only (nothing is imported), so a cycle held together by a function-level or
TYPE_CHECKING import is found too.
"""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[2]
ROOTS = ("stream", "model")
MAX_FUNCTION_LINES = 80
MAX_LOOSE_MODULES = 14


def modules() -> dict[str, Path]:
    out: dict[str, Path] = {}
    for root in ROOTS:
        for path in sorted((REPO / root).rglob("*.py")):
            name = ".".join(path.relative_to(REPO).with_suffix("").parts)
            out[name.removesuffix(".__init__")] = path
    return out


def imported_names(tree: ast.AST, module: str, is_package: bool) -> Iterator[str]:
    """Every dotted name an import statement anywhere in the module can refer to."""
    package = module if is_package else module.rpartition(".")[0]
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            yield from (a.name for a in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                parts = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*parts, base] if base else parts)
            yield base
            yield from (f"{base}.{a.name}" for a in node.names)


def import_graph() -> dict[str, set[str]]:
    mods = modules()
    graph: dict[str, set[str]] = {}
    for name, path in mods.items():
        is_package = path.name == "__init__.py"
        deps: set[str] = set()
        for target in imported_names(ast.parse(path.read_text()), name, is_package):
            while target and target not in mods:
                target = target.rpartition(".")[0]
            # a package's __init__ naming its own submodules is how it exposes an API
            if target and target != name and not (is_package and target.startswith(name + ".")):
                deps.add(target)
        graph[name] = deps
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan, iterative)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    on_stack: set[str] = set()
    stack: list[str] = []
    found: list[list[str]] = []
    for root in graph:
        if root in index:
            continue
        work = [(root, iter(sorted(graph[root])))]
        index[root] = low[root] = len(index)
        stack.append(root)
        on_stack.add(root)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph.get(child, ())))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_the_cycle_finder_finds_a_cycle() -> None:
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert cycles({"a": {"b"}, "b": set()}) == []


def test_no_import_cycles_among_stream_and_model_modules() -> None:
    assert cycles(import_graph()) == []


def test_model_never_imports_stream_or_faust() -> None:
    for name, path in modules().items():
        if not name.startswith("model"):
            continue
        names = set(imported_names(ast.parse(path.read_text()), name, path.name == "__init__.py"))
        bad = {n for n in names if n.split(".")[0] in ("stream", "faust", "aiokafka", "kafka")}
        assert not bad, f"{path.relative_to(REPO)} imports {sorted(bad)}"


def test_no_function_longer_than_the_limit() -> None:
    long = []
    for path in modules().values():
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)):
                lines = (node.end_lineno or node.lineno) - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(REPO)}:{node.lineno} {node.name} ({lines})")
    assert not long, long


@pytest.mark.parametrize("root", ROOTS)
def test_few_loose_modules_at_the_top_of_each_root(root: str) -> None:
    loose = [p.name for p in (REPO / root).glob("*.py") if p.name != "__init__.py"]
    assert len(loose) <= MAX_LOOSE_MODULES, sorted(loose)


def test_each_package_init_is_a_docstring_and_all() -> None:
    for path in modules().values():
        if path.name != "__init__.py":
            continue
        tree = ast.parse(path.read_text())
        body = tree.body
        assert body and isinstance(body[0], ast.Expr) and isinstance(body[0].value, ast.Constant)
        doc = body[0].value.value
        assert isinstance(doc, str) and "\n" not in doc.strip(), f"{path}: one docstring line"
        assigned = {t.id for n in body if isinstance(n, ast.Assign)
                    for t in n.targets if isinstance(t, ast.Name)}
        assert "__all__" in assigned, f"{path.relative_to(REPO)} has no __all__"
        others = [n for n in body[1:] if not isinstance(n, (ast.Assign, ast.ImportFrom))]
        assert not others, f"{path.relative_to(REPO)}: only imports and __all__ after the line"
