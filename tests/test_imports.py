"""The import graph of relpos/: layered, no cycle, and no function-level import but optional dependencies.

An AST walk (nothing is imported) of every ``relpos/**/*.py``: module-level and function-level imports
both count as edges, so a cycle hidden behind a function-level import is still found.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "relpos"

#: Optional dependencies: the only imports allowed inside a function (the module works without them).
OPTIONAL = frozenset({"scipy", "PIL", "tqdm", "safetensors", "sklearn", "kaleido", "torch.distributed"})


def _modules() -> dict[str, Path]:
    mods = {}
    for f in sorted(PACKAGE.rglob("*.py")):
        rel = f.relative_to(PACKAGE.parent).with_suffix("")
        parts = rel.parts[:-1] if rel.name == "__init__" else rel.parts
        mods[".".join(parts)] = f
    return mods


MODULES = _modules()


def _imports(name: str, path: Path) -> list[tuple[str, int, bool]]:
    """``(imported module or module.attr, line, inside a function)`` for every import in ``path``."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    base = name if path.name == "__init__.py" else name.rpartition(".")[0]
    out: list[tuple[str, int, bool]] = []

    def visit(node: ast.AST, in_function: bool) -> None:
        for child in ast.iter_child_nodes(node):
            nested = in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda))
            if isinstance(child, ast.Import):
                out.extend((a.name, child.lineno, in_function) for a in child.names)
            elif isinstance(child, ast.ImportFrom):
                mod = child.module or ""
                if child.level:  # relative import: resolve against the package
                    parts = base.split(".")[: len(base.split(".")) - child.level + 1]
                    mod = ".".join(parts + ([mod] if mod else []))
                out.append((mod, child.lineno, in_function))
                out.extend((f"{mod}.{a.name}", child.lineno, in_function) for a in child.names)
            visit(child, nested)

    visit(tree, False)
    return out


def _owner(target: str) -> str | None:
    """The relpos module ``target`` (a module or ``module.attr``) names, or None outside relpos."""
    while target and target not in MODULES:
        target = target.rpartition(".")[0]
    return target or None


def import_graph() -> dict[str, set[str]]:
    """Module -> the relpos modules it imports (the package ``relpos`` itself, which re-exports, left out)."""
    graph = {}
    for name, path in MODULES.items():
        deps = {_owner(t) for t, _, _ in _imports(name, path)}
        graph[name] = {d for d in deps if d and d not in (name, "relpos")}
    return graph


def strongly_connected(graph: dict[str, set[str]]) -> list[list[str]]:
    """Tarjan's strongly connected components with more than one module (the cycles), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    comps: list[list[str]] = []
    counter = [0]

    def visit(v: str) -> None:
        index[v] = low[v] = counter[0]
        counter[0] += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                comps.append(sorted(comp))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return sorted(comps)


def test_the_walk_sees_every_module_and_the_seed_edges():
    graph = import_graph()
    assert {"relpos.families", "relpos.relative_position", "relpos.models.transformer"} <= set(graph)
    assert "relpos.families" in graph["relpos.relative_position"]
    assert "relpos.relative_position" in graph["relpos.models.transformer"]


def test_the_cycle_finder_finds_a_cycle():
    assert strongly_connected({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]
    assert strongly_connected({"a": {"b"}, "b": set()}) == []


def test_no_import_cycle_in_relpos():
    cycles = strongly_connected(import_graph())
    assert not cycles, "import cycles (strongly connected components) in relpos/:\n" + "\n".join(
        " <-> ".join(c) for c in cycles
    )


def test_function_level_imports_are_only_optional_dependencies():
    found = []
    for name, path in MODULES.items():
        for target, line, in_function in _imports(name, path):
            if in_function and not any(target == opt or target.startswith(opt + ".") for opt in OPTIONAL):
                found.append(f"{path.relative_to(PACKAGE.parent)}:{line}: {target}")
    found = sorted(set(found))
    assert not found, "function-level imports of non-optional modules (move them to the top):\n" + "\n".join(found)


@pytest.mark.parametrize(
    "low, high",
    [
        ("relpos.families", "relpos.relative_position"),
        ("relpos._fileio", "relpos.experiments.rundir"),
        ("relpos.resize", "relpos.relative_position"),
    ],
)
def test_layers_point_down(low, high):
    """A pure helper never imports the modules built on it (directly or through another)."""
    graph = import_graph()
    seen, todo = set(), [low]
    while todo:
        v = todo.pop()
        for w in graph[v] - seen:
            seen.add(w)
            todo.append(w)
    assert high not in seen, f"{low} reaches {high}"


def test_pure_helpers_import_nothing_above_them():
    graph = import_graph()
    assert graph["relpos.families"] <= {"relpos._validation"}
    assert graph["relpos._fileio"] == set()
    assert "relpos.relative_position" not in graph["relpos.guards"]
    assert not any(d.startswith("relpos.experiments") for d in graph["relpos.data.build"])
