"""The layers of the project, read from its import graph (``tests/import_graph.py``: every import of every file,
at module level or inside a function; ``LAYERS`` and ``ALLOWED`` there).

Bottom to top, each layer imports only the layers listed for it in ``ALLOWED``:

- ``core``: the engine shared by both backends (requests, sampling params, the engine loop, the executor interface,
  schedulers, allocators, metrics, invariants, registries, errors, the KV page formula, the padded batch layout):
  numpy (and pandas for tables), no JAX.
- ``calibration``: what the simulator needs from a profile of the real engine (features, fits, profile tables,
  the grid): on the core, no JAX.
- ``support``: JAX-free helpers both backends use (model files, command-line errors, result files, ``accel``).
- ``sim``: the simulator, on the core, calibration and support only.
- ``kernels``: the JAX attention kernels, on nothing of the project.
- ``real``: the real backend (models, runtime, parallelism, vSurge, server, the ``odrive`` facade): never ``sim``.
- ``tools``: measurement (``odrive.profiling``), benchmarks and the ``odrive`` command: above both backends.
- ``experiments``: on top of everything.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from import_graph import (
    ALLOWED,
    CORE_THIRD_PARTY,
    DOC,
    NO_JAX,
    ROOT,
    ImportGraph,
    build_graph,
    cycles,
    document_block,
    layer_of,
    mermaid,
)


@pytest.fixture(scope="module")
def graph() -> ImportGraph:
    return build_graph()


def where(graph: ImportGraph, source: str, line: int) -> str:
    return f"{graph.files[source].relative_to(ROOT)}:{line}"


def test_every_file_is_in_a_layer(graph: ImportGraph) -> None:
    for module in graph.files:
        layer_of(module)


def test_no_import_cycles(graph: ImportGraph) -> None:
    found = cycles(graph.edges())
    detail = [" -> ".join(c) + "  via " + ", ".join(
        f"{i.source} -> {i.target} ({where(graph, i.source, i.line)}{', local' if i.local else ''})"
        for i in graph.imports if i.source in c and i.target in c) for c in found]  # fmt: skip
    assert not found, "import cycles:\n" + "\n".join(detail)


def test_layers_import_only_the_layers_below(graph: ImportGraph) -> None:
    bad = sorted({
        f"{where(graph, i.source, i.line)}: {layer_of(i.source)} {i.source} imports {layer_of(i.target)} {i.target}"
        for i in graph.imports if layer_of(i.target) not in ALLOWED[layer_of(i.source)]
    })  # fmt: skip
    assert not bad, "imports against the layering:\n" + "\n".join(bad)


def test_neither_the_core_nor_the_real_backend_imports_sim(graph: ImportGraph) -> None:
    bad = sorted({f"{where(graph, i.source, i.line)}: {i.source} imports {i.target}" for i in graph.imports
                  if layer_of(i.source) in ("core", "calibration", "real") and layer_of(i.target) == "sim"})
    assert not bad, "\n".join(bad)


def test_the_core_and_the_simulator_import_no_jax(graph: ImportGraph) -> None:
    jax = {"jax", "jaxlib"}
    bad = sorted(f"{m} ({layer_of(m)}) imports {sorted(names & jax)}"
                 for m, names in graph.external.items() if layer_of(m) in NO_JAX and names & jax)
    assert not bad, "\n".join(bad)


def test_the_core_uses_numpy_and_pandas_only(graph: ImportGraph) -> None:
    stdlib = set(sys.stdlib_module_names) | {"__future__"}
    bad = sorted(f"{m} imports {sorted(names - stdlib - CORE_THIRD_PARTY)}" for m, names in graph.external.items()
                 if layer_of(m) == "core" and names - stdlib - CORE_THIRD_PARTY)  # fmt: skip
    assert not bad, "\n".join(bad)


def test_importing_the_core_calibration_and_sim_loads_no_jax(graph: ImportGraph) -> None:
    """The same, at run time: every module of those layers imported in a fresh interpreter leaves JAX unloaded."""
    modules = sorted(m for m in graph.files if layer_of(m) in NO_JAX and not m.endswith("__main__"))
    code = "import importlib, sys\nfor m in sys.argv[1:]: importlib.import_module(m)\nprint('jax' in sys.modules)"
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")])}
    out = subprocess.run([sys.executable, "-c", code, *modules], capture_output=True, text=True, env=env, cwd=ROOT)
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "False"


def test_the_graph_sees_relative_and_function_local_imports(tmp_path: Path) -> None:
    pkg = tmp_path / "odrive"
    (pkg / "sub").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "a.py").write_text("def f():\n    from odrive.sub import b\n")
    (pkg / "sub" / "__init__.py").write_text("from . import b\n")
    (pkg / "sub" / "b.py").write_text("from ..a import f\nfrom typing import TYPE_CHECKING\n"
                                      "if TYPE_CHECKING:\n    import odrive.sub\n")  # fmt: skip
    g = build_graph(tmp_path, ("odrive",))
    assert {(i.source, i.target, i.local) for i in g.imports} == {
        ("odrive.a", "odrive.sub.b", True), ("odrive.sub", "odrive.sub.b", False), ("odrive.sub.b", "odrive.a", False)
    }  # fmt: skip
    assert cycles(g.edges()) == [["odrive.a", "odrive.sub.b"]]


def test_the_architecture_diagram_is_generated_from_the_graph(graph: ImportGraph) -> None:
    assert document_block(DOC.read_text()) == mermaid(graph), "run `python tests/import_graph.py` to regenerate it"
