"""The dependencies between our modules point one way, with no import cycle anywhere.

The graph is read from the source with ``ast``, so an import inside a function counts as
much as one at the top of a module (it runs, only later); imports under
``if TYPE_CHECKING:`` do not run and do not count. Two rules:

1. no cycle between any of our modules (fhirserver, smart_auth, portal_app, notifier);
2. ``fhirserver`` never imports ``smart_auth``: it reaches accounts and tokens only through
   the interfaces in ``fhirserver.core.ports``, which the composition roots wire in. The
   composition roots (``fhirserver.app``, ``fhirserver.cli``, ``fhirserver.seed``) are exempt.
"""

from __future__ import annotations

import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
PACKAGES = ("fhirserver", "smart_auth", "portal_app", "notifier")
COMPOSITION_ROOTS = frozenset({"fhirserver.app", "fhirserver.cli", "fhirserver.seed"})


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _imports(tree: ast.AST, module: str, is_package: bool) -> set[str]:
    """Every module name ``module`` imports, at any depth, except under ``if TYPE_CHECKING``."""
    found: set[str] = set()

    def visit(node: ast.AST) -> None:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                visit(child)
            return
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = module.split(".")
                base = base if is_package else base[:-1]
                base = base[: len(base) - (node.level - 1)]
                prefix = ".".join(base + ([node.module] if node.module else []))
            else:
                prefix = node.module or ""
            found.add(prefix)
            # ``from pkg import mod`` imports the module pkg.mod when there is one.
            found.update(f"{prefix}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            visit(child)

    visit(tree)
    return found


def import_graph() -> dict[str, set[str]]:
    modules: dict[str, Path] = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            modules[_module_name(path)] = path
    graph: dict[str, set[str]] = {}
    for name, path in modules.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = _imports(tree, name, path.name == "__init__.py")
        graph[name] = {t for t in targets if t in modules and t != name}
    return graph


def cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    out: list[list[str]] = []
    counter = 0

    def strong(v: str) -> None:
        nonlocal counter
        index[v] = low[v] = counter
        counter += 1
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph.get(v, ())):
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                out.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            strong(v)
    return out


def test_the_graph_sees_imports_inside_functions():
    tree = ast.parse("def f():\n    from smart_auth import tokens\nif TYPE_CHECKING:\n    import notifier.tasks\n")
    assert _imports(tree, "fhirserver.web.bearer", False) == {"smart_auth", "smart_auth.tokens"}


def test_the_cycle_finder_finds_a_cycle_through_a_function_import():
    assert cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_no_import_cycle_between_our_modules():
    found = cycles(import_graph())
    assert not found, "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_fhirserver_reaches_smart_auth_only_from_its_composition_roots():
    graph = import_graph()
    wrong = sorted(
        f"{mod} imports {dep}"
        for mod, deps in graph.items()
        if mod.split(".")[0] == "fhirserver" and mod not in COMPOSITION_ROOTS
        for dep in deps
        if dep.split(".")[0] == "smart_auth"
    )
    assert not wrong, "\n".join(wrong)
