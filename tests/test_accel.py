"""The compiled hot path (odrive.accel): it builds, it really loads compiled, it simulates exactly what the
sources simulate (built-in and user-written policies alike), the core tests pass against it, and a source edit
makes a build stale."""

from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys
import sysconfig
from pathlib import Path

import pandas as pd
import pytest

from odrive import accel

ROOT = Path(__file__).resolve().parents[1]
# Runs in a child process with the compiled build first on the path (see accel.environment).
SCENARIOS = '''
import pickle, sys
from dataclasses import replace
import numpy as np
import odrive.accel as accel, odrive.core.engine, odrive.schedulers.fcfs, sim.simulator, sim.latency.roofline
from odrive.schedulers import FCFSScheduler, SCHEDULERS
from sim.config import SimConfig
from sim.simulator import Simulator
from sim.workloads import load_trace, poisson_workload
from sim.workloads.lengths import Uniform

class OldestFirstVictim(FCFSScheduler):  # a user's policy: an interpreted subclass of a compiled scheduler
    def choose_victim(self, needy):
        return next(iter(self.running.values()))

if "oldest-victim" not in SCHEDULERS:
    SCHEDULERS.add("oldest-victim", OldestFirstVictim)
trace = load_trace("data/traces/azure_conv_2023.csv", max_requests=600)
tight = poisson_workload(40.0, 300, Uniform(16, 400), Uniform(8, 300), seed=3)
base = SimConfig(record_steps=False)
small = SimConfig(num_pages=120, page_size=16, max_prefill_length=512, check_invariants=True)
runs = {
    "fcfs-trace": (base, trace),
    "fcfs-trace-steps": (replace(base, record_steps=True), trace),
    "sarathi": (replace(base, scheduler="sarathi"), trace),
    "odriver-lifo": (replace(base, scheduler="odriver", allocator="free-list-lifo"), trace),
    "fcfs-tight": (small, tight),
    "swap-tight": (replace(small, preemption_mode="swap"), tight),
    "user-policy": (replace(small, scheduler="oldest-victim"), tight),
}
out = {}
for name, (config, workload) in runs.items():
    r = Simulator(config, workload).run()
    out[name] = (r.requests, r.steps, r.summary, r.free_pages_at_end)
modules = [odrive.core.engine, odrive.schedulers.fcfs, sim.simulator, sim.latency.roofline]
out["compiled"] = [accel.is_compiled(m) for m in modules]
pickle.dump(out, open(sys.argv[1], "wb"))
'''
CORE_TESTS = [
    "tests/test_engine.py",
    "tests/test_invariants.py",
    "tests/test_allocator_free_list.py",
    "tests/test_scheduler_fcfs.py",
    "tests/test_scheduler_sarathi.py",
    "tests/test_scheduler_odriver.py",
    "tests/test_preemption_swap.py",
    "tests/test_sim_simulator.py",
    "tests/test_sim_latency.py",
    "tests/test_cluster_simulator.py",
]


def _have_compiler() -> bool:
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    return shutil.which(cc) is not None


needs_compiler = pytest.mark.skipif(not _have_compiler(), reason="no C compiler: mypyc cannot build here")


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return accel.build(tmp_path_factory.mktemp("accel"), log=lambda _: None)


def run_compiled(build_dir: Path, *args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, *args], cwd=ROOT, env=accel.environment(build_dir), capture_output=True,
                          text=True, timeout=timeout)  # fmt: skip


@needs_compiler
def test_every_listed_module_loads_compiled_and_the_rest_from_source(build_dir: Path) -> None:
    names = [m.removesuffix(".py").replace("/", ".") for m in accel.COMPILED_MODULES]
    code = (
        "import importlib, json, odrive.accel as a\n"
        f"names = {names!r} + ['odrive.accel', 'sim.cluster.replica']\n"
        "print(json.dumps({n: a.is_compiled(importlib.import_module(n)) for n in names}))"
    )
    proc = run_compiled(build_dir, "-c", code)
    assert proc.returncode == 0, proc.stderr
    loaded = json.loads(proc.stdout)
    assert all(loaded[n] for n in names), loaded
    assert not loaded["odrive.accel"] and not loaded["sim.cluster.replica"]
    assert accel.is_fresh(build_dir)


@needs_compiler
def test_compiled_simulation_equals_the_source_simulation_exactly(build_dir: Path, tmp_path: Path) -> None:
    script, result = tmp_path / "scenarios.py", tmp_path / "compiled.pkl"
    script.write_text(SCENARIOS)
    proc = run_compiled(build_dir, str(script), str(result))
    assert proc.returncode == 0, proc.stderr[-3000:]
    compiled = pickle.loads(result.read_bytes())
    assert compiled.pop("compiled") == [True] * 4
    # The same scenarios in this (interpreted) process.
    namespace: dict[str, object] = {"__name__": "scenarios"}
    ours = tmp_path / "source.pkl"
    sys_argv, sys.argv = sys.argv, ["scenarios", str(ours)]
    try:
        exec(compile(SCENARIOS, "scenarios", "exec"), namespace)
    finally:
        sys.argv = sys_argv
        from odrive.schedulers import SCHEDULERS

        SCHEDULERS.remove("oldest-victim")  # the scenarios' user policy: registered for them only
    source = pickle.loads(ours.read_bytes())
    assert source.pop("compiled") == [False] * 4
    assert compiled.keys() == source.keys()
    for name in source:
        (req_c, steps_c, summary_c, free_c), (req_s, steps_s, summary_s, free_s) = compiled[name], source[name]
        pd.testing.assert_frame_equal(req_c, req_s, check_exact=True, obj=f"{name} requests")
        pd.testing.assert_frame_equal(steps_c, steps_s, check_exact=True, obj=f"{name} steps")
        pd.testing.assert_series_equal(summary_c, summary_s, check_exact=True, obj=f"{name} summary")
        assert free_c == free_s
    assert source["swap-tight"][2]["swap_pages_out"] > 0 and source["fcfs-tight"][0]["num_preemptions"].sum() > 0


@needs_compiler
def test_core_tests_pass_against_the_compiled_build(build_dir: Path) -> None:
    proc = run_compiled(build_dir, "-m", "pytest", "-q", "-p", "no:cacheprovider", *CORE_TESTS)
    assert proc.returncode == 0, proc.stdout[-4000:]
    assert " passed" in proc.stdout and "failed" not in proc.stdout


def test_a_source_edit_makes_a_build_stale(tmp_path: Path) -> None:
    for package in accel.PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "mod.py").write_text("X = 1\n")
    before = accel.fingerprint(tmp_path)
    assert accel.fingerprint(tmp_path) == before
    (tmp_path / "sim" / "mod.py").write_text("X = 2\n")
    assert accel.fingerprint(tmp_path) != before
    assert not accel.is_fresh(tmp_path / "no-build-here")
    with pytest.raises(ValueError, match="overwrite the sources"):
        accel.build(accel.source_root(), force=True)


def test_run_puts_the_build_ahead_of_the_working_directory(tmp_path: Path) -> None:
    env = accel.environment(tmp_path, base={"PYTHONPATH": "/elsewhere"})
    first, *_, last = env["PYTHONPATH"].split(os.pathsep)
    assert first == str(tmp_path) and last == "/elsewhere"
    assert env["PYTHONSAFEPATH"] == "1"  # else `python -m` / `-c` from a checkout would import the sources first


def test_default_build_folder(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    monkeypatch.delenv("ODRIVE_ACCEL_DIR", raising=False)
    assert accel.default_dir() == ROOT / "build" / "odrive-accel"  # a checkout: ignored by git
    monkeypatch.setenv("ODRIVE_ACCEL_DIR", str(tmp_path))
    assert accel.default_dir() == tmp_path
    monkeypatch.delenv("ODRIVE_ACCEL_DIR")
    monkeypatch.setattr(accel, "source_root", lambda: tmp_path)  # an installed package: no pyproject.toml there
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "cache"))
    assert accel.default_dir() == tmp_path / "cache" / "odrive" / "accel"
