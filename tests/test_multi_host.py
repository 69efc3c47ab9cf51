"""Multi-host serving through ``jax.distributed``, run for real: two processes on this machine, each with two
CPU devices, talking over localhost (gloo collectives), as docs/multi_host.md describes for several hosts.

Each process runs ``tests/multi_host_worker.py``: the same program, the same requests; the checkpoint is loaded
from a path. Checked: tensor parallelism across the two processes, one engine per process on its own devices,
swap preemption with the KV pool sharded across processes, and one page pool sized from measured memory —
greedy output equal to the dense reference.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from pathlib import Path

import pytest

WORKER = Path(__file__).with_name("multi_host_worker.py")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("localhost", 0))
        return int(s.getsockname()[1])


def run_workers(checkpoint: Path, logs_dir: Path, extra_env: dict[str, str] | None = None,
                timeout_s: float = 600) -> tuple[list[int], list[str]]:  # fmt: skip
    """Run the two worker processes to the end; (exit codes, outputs). A process that fails leaves the other
    waiting for it in a collective, so the other is stopped at once."""
    env = {
        **os.environ,
        "JAX_PLATFORMS": "cpu",
        "XLA_FLAGS": f"{os.environ.get('XLA_FLAGS', '')} --xla_force_host_platform_device_count=2".strip(),
        **(extra_env or {}),
    }
    port = _free_port()
    logs = [logs_dir / f"rank{rank}.txt" for rank in (0, 1)]
    procs = []
    for rank, log in enumerate(logs):
        with open(log, "w") as f:  # files, not pipes: nothing blocks on a full pipe while we wait
            procs.append(subprocess.Popen([sys.executable, str(WORKER), str(rank), str(port), str(checkpoint)],
                                          env=env, stdout=f, stderr=subprocess.STDOUT, text=True))  # fmt: skip
    deadline = time.monotonic() + timeout_s
    try:
        while time.monotonic() < deadline:
            codes = [p.poll() for p in procs]
            if None not in codes or any(c not in (None, 0) for c in codes):
                break
            time.sleep(0.2)
    finally:
        for p in procs:
            if p.poll() is None:
                p.kill()
                p.wait()
    return [int(p.returncode) for p in procs], [log.read_text() for log in logs]


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    from checkpoints import build_tiny_checkpoint

    # 8 query / 4 kv heads, an MLP of 128, a vocabulary of 320: everything splits over 4 devices
    return build_tiny_checkpoint(tmp_path_factory.mktemp("mh-llama"), heads=8, kv_heads=4)


@pytest.fixture(scope="module")
def results(checkpoint: Path, tmp_path_factory: pytest.TempPathFactory) -> list[dict]:
    codes, outs = run_workers(checkpoint, tmp_path_factory.mktemp("mh-logs"))
    report = "\n".join(f"process {rank} exited {codes[rank]}:\n{outs[rank][-4000:]}" for rank in (0, 1))
    assert codes == [0, 0], report
    parsed = []
    for rank, out in enumerate(outs):
        line = next((ln for ln in out.splitlines() if ln.startswith("RESULT ")), None)
        assert line is not None, f"process {rank} printed no result:\n{out[-5000:]}"
        parsed.append(json.loads(line.removeprefix("RESULT ")))
    return parsed


def test_a_failing_process_stops_the_run_at_once(checkpoint: Path, tmp_path: Path) -> None:
    """Process 1 dies before joining: process 0 would wait minutes for it in ``jax.distributed``; it is stopped."""
    t0 = time.monotonic()
    codes, outs = run_workers(checkpoint, tmp_path, {"ODRIVE_MH_FAIL_RANK": "1"}, timeout_s=120)
    assert codes[1] == 1 and "injected failure" in outs[1]
    assert codes[0] != 0 and time.monotonic() - t0 < 60


def test_two_processes_form_one_jax_runtime(results: list[dict]) -> None:
    assert [r["rank"] for r in results] == [0, 1]
    assert all(r["process_count"] == 2 for r in results)
    assert results[0]["reference"] == results[1]["reference"]


def test_tensor_parallel_across_processes_matches_the_dense_reference(results: list[dict]) -> None:
    for r in results:
        case = r["tp4_across_processes"]
        assert len(case["devices"]) == 4 and not set(case["devices"]) <= set(case["local_devices"])
        assert case["outputs"] == r["reference"]
        assert case["pages_back"]


def test_one_engine_per_process_uses_only_its_own_devices(results: list[dict]) -> None:
    for r in results:
        case = r["tp2_per_process"]
        assert case["devices"] == case["local_devices"]
        assert case["outputs"] == r["reference"]
    assert not set(results[0]["tp2_per_process"]["devices"]) & set(results[1]["tp2_per_process"]["devices"])


def test_swap_preemption_with_the_pool_sharded_across_processes(results: list[dict]) -> None:
    for r in results:
        case = r["tp4_swap"]
        assert case["swapped_out"] >= 1, "the pool was meant to be too small: nobody was swapped"
        assert case["outputs"] == r["reference"]
        assert case["pages_back"]


def test_processes_size_one_page_pool_from_measured_memory(results: list[dict]) -> None:
    assert [r["smallest"] for r in results] == [993 * 2**20, 993 * 2**20]
    cases = [r["tp4_measured_memory"] for r in results]
    assert cases[0]["device_bytes"] == cases[1]["device_bytes"] > 0
    assert cases[0]["num_pages"] == cases[1]["num_pages"]
    for r, case in zip(results, cases, strict=True):
        assert case["outputs"] == r["reference"]
