"""The package's import graph is layered: no module imports, directly or through others, one that imports it back.

Read from the source with `ast` (nothing is imported), counting every import of a headstart module: at the top of
a file, under `if TYPE_CHECKING:`, and inside functions. A function-local import of a headstart module hides an
edge from whoever reads the file's head, and is the usual way a cycle is dodged; the few that stay are listed in
LOCAL_IMPORTS, each with its reason (an optional heavy dependency that loads only when used).
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = Path(__file__).resolve().parent.parent / "headstart"

LOCAL_IMPORTS = {  # (importing module, imported module): why the import waits for the call
    ("headstart.cli_common", "headstart.api"): "`--help` and argument errors answer without loading torch (~10 s)",
    ("headstart.estimator", "headstart.run_outputs"): "the report's plots load matplotlib only when a run writes one",
    ("headstart.methods.fewshot", "headstart.run_outputs"):
        "the report's plots load matplotlib only when a run writes one",
    ("headstart.methods.compare", "headstart.report"):
        "the report's plots load matplotlib only when a comparison is drawn",
}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def _targets(node: ast.ImportFrom | ast.Import, module: str, is_package: bool, known: set[str]) -> list[str]:
    """The headstart modules an import statement loads (a name imported from a package counts as the package,
    unless it is a submodule)."""
    if isinstance(node, ast.Import):
        return [a.name for a in node.names if a.name in known]
    if node.level:
        base = (module if is_package else module.rsplit(".", 1)[0]).split(".")
        base = base[: len(base) - (node.level - 1)]
        source = ".".join(base + ([node.module] if node.module else []))
    else:
        source = node.module or ""
    found = []
    for alias in node.names:
        if f"{source}.{alias.name}" in known:
            found.append(f"{source}.{alias.name}")
        elif source in known:
            found.append(source)
    return found


def _imports(node: ast.AST, in_function: bool = False):
    """Every import statement under `node`, with whether it sits inside a function."""
    for child in ast.iter_child_nodes(node):
        if isinstance(child, (ast.Import, ast.ImportFrom)):
            yield child, in_function
        yield from _imports(child, in_function or isinstance(child, (ast.FunctionDef, ast.AsyncFunctionDef,
                                                                     ast.Lambda)))


def import_graph() -> tuple[dict[str, set[str]], set[tuple[str, str, int]]]:
    """(module -> the headstart modules it imports, {(module, imported, line) for imports inside functions})."""
    modules = _modules()
    known = set(modules)
    graph: dict[str, set[str]] = {m: set() for m in modules}
    local: set[tuple[str, str, int]] = set()
    for module, path in modules.items():
        for node, in_function in _imports(ast.parse(path.read_text(encoding="utf-8"))):
            for target in _targets(node, module, path.name == "__init__.py", known):
                graph[module].add(target)
                if in_function:
                    local.add((module, target, node.lineno))
    return graph, local


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One cycle as [a, b, ..., a], or None when the graph is acyclic (depth-first search, colours)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: finished
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph[node]):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (cycle := visit(nxt)):
                return cycle
        path.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)):
            return cycle
    return None


def test_the_import_graph_has_no_cycle():
    graph, _ = import_graph()
    assert len(graph) > 40  # the whole package was read
    cycle = find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle)


def test_no_function_local_import_of_headstart_modules_beyond_the_listed_ones():
    _, local = import_graph()
    unlisted = sorted(f"{m} line {line} imports {t}" for m, t, line in local if (m, t) not in LOCAL_IMPORTS)
    assert not unlisted, ("import these at the top of the module (a cycle it would close is a layering fault to "
                          "fix, not to hide), or list them in LOCAL_IMPORTS with the reason: " + "; ".join(unlisted))


def test_the_checks_see_cycles_and_local_imports():
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    assert find_cycle({"a": {"b"}, "b": set()}) is None
    _, local = import_graph()
    assert {(m, t) for m, t, _ in local} == set(LOCAL_IMPORTS)  # every listed import still exists


def test_public_names_load_lazily_and_all_resolve():
    """`import headstart` loads no submodule with heavy dependencies; every name in `__all__` is in the lazy table
    and resolves to the object its module defines."""
    import importlib
    import subprocess
    import sys

    probe = "import sys, headstart; print('torch' in sys.modules)"
    assert subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True).stdout.strip() == "False"
    import headstart as hs

    importlib.import_module("headstart.methods.compare")  # binds `compare` on headstart.methods, not on headstart
    importlib.import_module("headstart.rank")  # a submodule named like a public function: the function wins
    assert set(hs.__all__) == set(hs._PUBLIC) | {"__version__"}
    for name, module in hs._PUBLIC.items():
        assert getattr(hs, name) is getattr(importlib.import_module(f"headstart.{module}"), name)
    assert "ImageClassifier" in dir(hs)
