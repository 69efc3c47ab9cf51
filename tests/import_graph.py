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

# the engine core, its policies (public packages of their own) and the errors every layer raises
CORE = ("odrive.core", "odrive.allocators", "odrive.schedulers", "odrive.errors")
LAYERS: dict[str, tuple[str, ...]] = {  # a module belongs to the layer of its longest matching prefix
    "core": CORE,
    "calibration": ("odrive.calibration",),
    "support": ("odrive.accel", "odrive.bench.results", "odrive.cli_errors", "odrive.gguf_convert",
                "odrive.gguf_file", "odrive.gguf_tokenizer", "odrive.model_source"),  # fmt: skip
    "sim": ("sim",),
    "kernels": ("kernels",),
    "real": ("odrive", "odrive.generate_cli", "odrive.models", "odrive.parallel", "odrive.processor",
             "odrive.runtime", "odrive.server", "odrive.vsurge"),  # fmt: skip
    "tools": ("odrive.bench", "odrive.cli", "odrive.profiling"),
    "experiments": ("experiments",),
}
ALLOWED: dict[str, set[str]] = {
    "core": {"core"},
    "calibration": {"core", "calibration"},
    "support": {"core", "support"},
    "sim": {"core", "calibration", "support", "sim"},
    "kernels": {"kernels"},
    "real": {"core", "support", "kernels", "real"},
    "tools": {"core", "calibration", "support", "sim", "kernels", "real", "tools"},
    "experiments": set(LAYERS),
}
NO_JAX = ("core", "calibration", "support", "sim")
CORE_THIRD_PARTY = {"numpy", "pandas", "mypy_extensions"}


def layer_of(module: str) -> str:
    """The layer of ``module``: that of its longest matching prefix in ``LAYERS``."""
    best = max(((p, name) for name, prefixes in LAYERS.items() for p in prefixes
                if module == p or module.startswith(p + ".")), default=None)  # fmt: skip
    if best is None:
        raise AssertionError(f"{module} is in no layer: add it to LAYERS in tests/import_graph.py")
    return best[1]


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


# --- the diagram of docs/architecture.md -------------------------------------------------------------------------
DOC = ROOT / "docs" / "architecture.md"
BEGIN, END = "<!-- architecture diagram: begin (python tests/import_graph.py writes it) -->", "<!-- end -->"
# One engine step, as data between the core's parts and the two executors: (node, module, class, label).
FLOW_NODES = (
    ("Engine", "odrive.core.engine", "Engine", "Engine.step"),
    ("Scheduler", "odrive.schedulers.base", "Scheduler", "Scheduler.schedule"),
    ("PageAllocator", "odrive.allocators.base", "PageAllocator", "PageAllocator"),
    ("Executor", "odrive.core.executor", "Executor", "Executor.execute"),
    ("MetricsRecorder", "odrive.core.metrics", "MetricsRecorder", "MetricsRecorder"),
    ("SimExecutor", "sim.executor", "SimExecutor", "SimExecutor: a latency model's step time; clock simpy env.now"),
    ("JaxExecutor", "odrive.runtime.jax_executor", "JaxExecutor", "JaxExecutor: runs the model; wall clock"),
)
FLOW_EDGES = (
    ("Engine", "Scheduler", "admitted requests"),
    ("Scheduler", "PageAllocator", "allocate / free pages"),
    ("Scheduler", "Engine", "StepPlan"),
    ("Engine", "Executor", "list of SeqChunk"),
    ("Executor", "Engine", "ExecuteResult: token ids, duration"),
    ("Engine", "MetricsRecorder", "step and request records"),
)
IMPLEMENTS = (("SimExecutor", "Executor"), ("JaxExecutor", "Executor"))


def _defines(graph: ImportGraph, module: str, name: str) -> bool:
    tree = ast.parse(graph.files[module].read_text())
    return any(isinstance(n, ast.ClassDef) and n.name == name for n in tree.body)


def _path(graph: ImportGraph, module: str) -> str:
    path = graph.files[module].relative_to(ROOT)
    return f"{path.parent}/" if path.name == "__init__.py" and module != "odrive" else str(path)


def mermaid(graph: ImportGraph) -> str:
    """The layers (files per layer; arrows: how many pairs of files import across two layers) and one engine
    step's data flow, as a mermaid block.

    Raises if a node of the flow names a class its module does not define, so the diagram follows the code."""
    for node, module, cls, _ in FLOW_NODES:
        if module not in graph.files or not _defines(graph, module, cls):
            raise AssertionError(f"diagram node {node}: {module} defines no class {cls}")
    members: dict[str, list[str]] = {name: [] for name in LAYERS}
    for module in graph.files:
        members[layer_of(module)].append(module)
    counts: dict[tuple[str, str], int] = {}
    for source, target in {(i.source, i.target) for i in graph.imports}:
        a, b = layer_of(source), layer_of(target)
        if a != b:
            counts[a, b] = counts.get((a, b), 0) + 1
    flow_layer = {node: layer_of(module) for node, module, *_ in FLOW_NODES}
    lines = ["```mermaid", "flowchart BT"]
    for name, prefixes in LAYERS.items():
        folders = ", ".join(_path(graph, p) for p in prefixes)
        lines.append(f'  subgraph {name}["{name}: {folders} ({len(members[name])} files)"]')
        for node, _, _, label in FLOW_NODES:
            if flow_layer[node] == name:
                lines.append(f'    {node}["{label}"]')
        lines.append("  end")
    for (a, b), n in sorted(counts.items()):
        lines.append(f"  {a} -->|{n}| {b}")
    for a, b, label in FLOW_EDGES:
        lines.append(f'  {a} ==>|"{label}"| {b}')
    for a, b in IMPLEMENTS:
        lines.append(f"  {a} -.->|implements| {b}")
    lines.append("```")
    return "\n".join(lines) + "\n"


def document_block(text: str) -> str:
    """The generated part of ``docs/architecture.md``'s text (between ``BEGIN`` and ``END``)."""
    return text[text.index(BEGIN) + len(BEGIN) : text.index(END)].strip("\n") + "\n"


def write_diagram(path: Path = DOC) -> None:
    """Regenerate the diagram in ``path`` from the current import graph."""
    text = path.read_text()
    head, tail = text[: text.index(BEGIN) + len(BEGIN)], text[text.index(END) :]
    path.write_text(f"{head}\n{mermaid(build_graph())}{tail}")


if __name__ == "__main__":
    write_diagram()
