"""The worked example in docs/extending.md runs as written (its code blocks, in order, as one script)."""

from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
DOC = ROOT / "docs" / "extending.md"


def python_blocks(markdown: str) -> list[str]:
    return re.findall(r"^```python\n(.*?)^```$", markdown, flags=re.DOTALL | re.MULTILINE)


def test_extending_guide_example_runs() -> None:
    blocks = python_blocks(DOC.read_text())
    assert len(blocks) >= 4, "the guide lost its example code"
    script = "\n\n".join(blocks)
    compile(script, str(DOC), "exec")  # a syntax error names the guide
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    # A fresh interpreter: the example registers names in the global registries.
    proc = subprocess.run([sys.executable, "-c", script], cwd=ROOT, env=env, capture_output=True, text=True,
                          timeout=300)  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    for name in ("docs-serial", "docs-shortest-prompt", "sarathi"):
        assert re.search(rf"^{name}\s+mean TTFT", proc.stdout, flags=re.MULTILINE), proc.stdout
    assert "caught: invariant 'pages-allocated' violated" in proc.stdout
