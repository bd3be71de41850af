"""The package's import graph is layered: no module imports, directly or through others, one that imports it back;
and the core (the modules of headstart/ outside methods/, deploy/ and detection/, below the CLI and `api`) never
imports deployment, and imports a method only where CORE_IMPORTS_OF_METHODS says why.

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

# The modules that sit on top of everything (the package's face, the CLI, what the CLI calls): they may import any
# layer. Every other module of headstart/ outside methods/, deploy/ and detection/ is the core.
TOP = {"headstart", "headstart.cli", "headstart.cli_common", "headstart.cli_explore", "headstart.api"}
ABOVE_THE_CORE = ("headstart.methods", "headstart.deploy", "headstart.detection")
# The methods listed here sit below the estimator in the import order (none imports it, or restore, back: the cycle
# check holds them to that); each edge stays for the reason given.
CORE_IMPORTS_OF_METHODS = {  # (core module, methods module): why the core imports it
    ("headstart.estimator", "headstart.methods.adapt"):
        "fit(unlabeled=...) adapts to the target domain inside the estimator's fit",
    ("headstart.estimator", "headstart.methods.classical"):
        "head='svm' etc.: the estimator fits a scikit-learn head on its cached features and saves it",
    ("headstart.estimator", "headstart.methods.continual"):
        "the estimator's `extend` and the rehearsal memory it keeps at fit",
    ("headstart.estimator", "headstart.methods.fewshot"):
        "fit hands few labels (strategy fewshot / setfit, or auto's advice) to fewshot, which fits the estimator",
    ("headstart.estimator_internals", "headstart.methods.classical"):
        "a scikit-learn head's probabilities by class code (predict_proba_full), when the estimator predicts",
    ("headstart.restore", "headstart.methods.classical"): "a bundle's scikit-learn head is rebuilt from its tensors",
    ("headstart.restore", "headstart.methods.exemplars"): "a bundle's rehearsal memory is rebuilt with the model",
    ("headstart.restore", "headstart.methods.fewshot"): "a fewshot bundle's head is a PrototypeHead",
    ("headstart.restore", "headstart.methods.multitask"): "a multi-task bundle rebuilds a MultiTaskModel",
}


def _under(module: str, package: str) -> bool:
    return module == package or module.startswith(package + ".")


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


def core_imports_above(graph: dict[str, set[str]]) -> set[tuple[str, str]]:
    """(core module, deploy or methods module it imports) for every such edge."""
    core = [m for m in graph if m not in TOP and not any(_under(m, p) for p in ABOVE_THE_CORE)]
    return {(m, t) for m in core for t in graph[m]
            if _under(t, "headstart.deploy") or _under(t, "headstart.methods")}


def test_the_core_never_imports_deployment_and_methods_only_where_listed():
    graph, _ = import_graph()
    found = core_imports_above(graph)
    assert "headstart.estimator" in graph and "headstart.restore" in graph  # the core was read
    deploy = sorted(f"{m} imports {t}" for m, t in found if _under(t, "headstart.deploy"))
    assert not deploy, ("the core must not import deployment: hand it what it needs (the estimator predicts through "
                        "the runtime deploy/loading.py attaches): " + "; ".join(deploy))
    unlisted = sorted(f"{m} imports {t}" for m, t in found - set(CORE_IMPORTS_OF_METHODS))
    assert not unlisted, ("a core module imports a method: move what it needs down into the core, or list it in "
                          "CORE_IMPORTS_OF_METHODS with the reason: " + "; ".join(unlisted))
    assert set(CORE_IMPORTS_OF_METHODS) <= found  # every listed import still exists
    assert not any(_under(t, "headstart.deploy") for _, t in CORE_IMPORTS_OF_METHODS)


def test_the_core_check_sees_an_upward_import():
    graph = {"headstart.restore": {"headstart.deploy.export"}, "headstart.api": {"headstart.deploy.export"},
             "headstart.deploy.export": set(), "headstart.probe": {"headstart.methods.fewshot"},
             "headstart.methods.fewshot": {"headstart.probe"}}
    assert core_imports_above(graph) == {("headstart.restore", "headstart.deploy.export"),
                                         ("headstart.probe", "headstart.methods.fewshot")}


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
