"""Pinning XLA's compute and the engine loop to separate cores (for profiles and validations that repeat)."""

from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest

from odrive.profiling.pinning import current_pinning, pin_compute_and_host

two_cores = pytest.mark.skipif(len(os.sched_getaffinity(0)) < 2, reason="needs 2 allowed CPU cores")

CHILD = """
import json, os
from odrive.profiling.pinning import current_pinning, pin_compute_and_host, _threads
pinned = pin_compute_and_host()
import jax.numpy as jnp
x = jnp.ones((256, 256)); (x @ x).block_until_ready()
print(json.dumps({"pinned": pinned, "current": current_pinning(), "main": sorted(os.sched_getaffinity(0)),
                  "xla": sorted(_threads().get("tf_XLAEigen", set()))}))
"""


@two_cores
def test_compute_pool_and_host_thread_end_up_on_separate_cores() -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    out = subprocess.run([sys.executable, "-c", CHILD], env=env, capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    allowed = sorted(os.sched_getaffinity(0))
    assert got["pinned"] == {"compute_cores": allowed[:1], "host_cores": allowed[1:]}
    assert got["current"] == got["pinned"]
    assert got["main"] == allowed[1:]
    assert got["xla"] == allowed[:1]  # XLA's compute threads stay on their core after real work


def test_pinning_after_jax_started_is_refused() -> None:
    import jax.numpy as jnp

    (jnp.ones(2) + 1).block_until_ready()  # this process's CPU backend exists now
    before = os.sched_getaffinity(0)
    with pytest.raises(RuntimeError, match="already started|at least 2"):
        pin_compute_and_host()
    assert os.sched_getaffinity(0) == before  # nothing was changed
    assert current_pinning() is None  # unpinned: compute and this thread share cores


@two_cores
def test_overlapping_cores_are_a_named_error() -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    code = "from odrive.profiling.pinning import pin_compute_and_host; pin_compute_and_host({0}, {0})"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode != 0 and "must be disjoint" in out.stderr


def test_pinning_as_profiled_follows_the_profiles_record() -> None:
    from odrive.profiling.pinning import pin_as_profiled

    unpinned_profile = {"host": {"pinning": None}}
    assert pin_as_profiled(unpinned_profile, "profile") is None  # measured unpinned: validated unpinned
    assert pin_as_profiled({"host": {"pinning": {"compute_cores": [0], "host_cores": [1]}}}, "no") is None
    with pytest.raises(ValueError, match="pinning mode must be one of"):
        pin_as_profiled(unpinned_profile, "always")


@two_cores
def test_pinning_as_profiled_uses_the_recorded_cores() -> None:
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    first, second = sorted(os.sched_getaffinity(0))[:2]
    meta = {"host": {"pinning": {"compute_cores": [second], "host_cores": [first]}}}  # not the default order
    code = f"import json; from odrive.profiling.pinning import pin_as_profiled as p; print(json.dumps(p({meta})))"
    out = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert out.returncode == 0, out.stderr
    assert json.loads(out.stdout.strip().splitlines()[-1]) == meta["host"]["pinning"]
