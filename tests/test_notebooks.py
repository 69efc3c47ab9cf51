"""The notebooks execute top to bottom on the experiments' quick defaults (run into a temp folder)."""

from __future__ import annotations

import time
from pathlib import Path

import pytest

nbformat = pytest.importorskip("nbformat")
nbclient = pytest.importorskip("nbclient")
pytest.importorskip("ipykernel")

NOTEBOOKS = Path(__file__).resolve().parents[1] / "notebooks"


@pytest.mark.parametrize(
    ("notebook", "output"),
    [
        ("fragmentation.ipynb", "fragmentation/fragmentation.csv"),
        ("throughput.ipynb", "throughput_latency/throughput_latency.csv"),
    ],
)
def test_notebook_runs_and_plots(notebook: str, output: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ODRIVE_RESULTS", str(tmp_path))  # the kernel inherits it: experiments run into tmp_path
    nb = nbformat.read(NOTEBOOKS / notebook, as_version=4)
    start = time.perf_counter()
    nbclient.NotebookClient(
        nb, timeout=120, kernel_name="python3", resources={"metadata": {"path": str(tmp_path)}}
    ).execute()
    elapsed = time.perf_counter() - start
    assert (tmp_path / output).is_file()
    outputs = [o for cell in nb.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert not [o for o in outputs if o.get("output_type") == "error"]
    figures = [o for o in outputs if "image/png" in o.get("data", {})]
    assert len(figures) >= 3, "every plotting cell should render a figure"
    assert elapsed < 90, f"{notebook} took {elapsed:.0f} s"
