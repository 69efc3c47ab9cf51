"""The file-level import graph of the project's own packages, read with ``ast`` (nothing is imported).

Every ``import`` counts, at module level or inside a function (``if TYPE_CHECKING:`` blocks excepted: they never
run). Relative imports are resolved; ``from pkg import name`` is an import of ``pkg.name`` when that is a module,
else of ``pkg``. An edge goes to the file named, not to the parent packages' ``__init__`` files Python also runs.
"""

from __future__ import annotations

import ast
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("odrive", "sim", "kernels", "experiments")


@dataclass(frozen=True)
class Import:
    """One import statement's target: the importing module, the imported module or package, and the line."""

    source: str
    target: str
    line: int
    local: bool  # inside a function


@dataclass
class ImportGraph:
    """Modules (dotted names) to their files, and every import between them; ``external`` holds third-party
    top-level names per module (``jax``, ``numpy``, ...)."""

    files: dict[str, Path]
    imports: list[Import] = field(default_factory=list)
    external: dict[str, set[str]] = field(default_factory=dict)

    def edges(self) -> dict[str, set[str]]:
        out: dict[str, set[str]] = {m: set() for m in self.files}
        for imp in self.imports:
            out[imp.source].add(imp.target)
        return out


def module_name(path: Path, root: Path = ROOT) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def _statements(tree: ast.AST, depth: int = 0) -> Iterator[tuple[ast.stmt, int]]:
    """Every import statement with its function depth, skipping ``if TYPE_CHECKING:`` bodies."""
    for node in ast.iter_child_nodes(tree):
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for child in node.orelse:
                yield from _statements(ast.Module(body=[child], type_ignores=[]), depth)
            continue
        if isinstance(node, ast.Import | ast.ImportFrom):
            yield node, depth
        inner = depth + isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.Lambda)
        yield from _statements(node, inner)


def build_graph(root: Path = ROOT, packages: Iterable[str] = PACKAGES) -> ImportGraph:
    files = {module_name(p, root): p for pkg in packages for p in sorted((root / pkg).rglob("*.py"))}
    graph = ImportGraph(files)

    def resolve(name: str) -> str | None:
        while name and name not in files:
            name = name.rpartition(".")[0]
        return name or None

    for mod, path in files.items():
        package = mod.split(".") if path.name == "__init__.py" else mod.split(".")[:-1]
        external: set[str] = set()
        for node, depth in _statements(ast.parse(path.read_text(), str(path))):
            if isinstance(node, ast.Import):
                names = [a.name for a in node.names]
            else:
                base = node.module or ""
                if node.level:
                    parent = package[: len(package) - node.level + 1]
                    base = ".".join([*parent, *([node.module] if node.module else [])])
                names = [f"{base}.{a.name}" if f"{base}.{a.name}" in files else base for a in node.names]
            for name in names:
                target = resolve(name)
                if target is None:
                    external.add(name.partition(".")[0])
                elif target != mod:
                    graph.imports.append(Import(mod, target, node.lineno, depth > 0))
        graph.external[mod] = external
    return graph


def cycles(edges: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components of more than one module (Tarjan), each sorted, then sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(edges.get(v, ())):
            if w not in index:
                visit(w)
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
                found.append(sorted(component))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    return sorted(found)
