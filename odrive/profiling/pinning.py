"""Pin the real engine's compute and its host loop to separate CPU cores, for measurements that repeat.

On a small CPU machine XLA's compute threads and the Python engine loop (scheduling, batch building, the
replay driver) otherwise compete for the same cores, and which one waits changes from step to step: two runs
of the same workload then differ by more than a simulator's error. Pinned, XLA:CPU runs on its own core(s)
(its thread pool is sized from the affinity it is created with) and the Python threads on the rest. Profile
and validate under the same pinning (``odrive profile --pin-cores``, ``python -m experiments.validate_sim``):
the profile records it, and the validation refuses a mismatch.
"""

from __future__ import annotations

import os
from pathlib import Path

XLA_POOL_THREAD = "tf_XLAEigen"  # name of XLA:CPU's compute threads


def _threads() -> dict[str, set[int]]:
    """Thread name → union of its threads' allowed CPUs, for this process."""
    out: dict[str, set[int]] = {}
    for task in Path("/proc/self/task").iterdir():
        try:
            name = (task / "comm").read_text().strip()
            status = (task / "status").read_text()
        except OSError:  # the thread ended meanwhile
            continue
        allowed = next(line for line in status.splitlines() if line.startswith("Cpus_allowed_list"))
        out.setdefault(name, set()).update(_parse_cpus(allowed.split(":", 1)[1].strip()))
    return out


def _parse_cpus(text: str) -> set[int]:
    cpus: set[int] = set()
    for part in text.split(","):
        a, _, b = part.partition("-")
        cpus.update(range(int(a), int(b or a) + 1))
    return cpus


def pin_compute_and_host(compute: set[int] | None = None, host: set[int] | None = None) -> dict[str, list[int]]:
    """Start JAX's CPU backend with its compute pool on ``compute`` (default: core 0) and move this thread (and
    threads it starts later) to ``host`` (default: the other allowed cores). Call before anything touches JAX's
    CPU backend; raises RuntimeError afterwards (the pool exists and would keep its threads) or with fewer
    than two allowed cores. Returns the pinning, for the profile's metadata."""
    allowed = sorted(os.sched_getaffinity(0))
    if len(allowed) < 2:
        raise RuntimeError(f"pinning needs at least 2 allowed CPU cores, this process has {allowed}")
    if XLA_POOL_THREAD in _threads():
        raise RuntimeError("JAX's CPU backend already started: pin before the first JAX computation")
    compute = compute or {allowed[0]}
    host = host or set(allowed) - compute
    if not host or compute & host:
        raise ValueError(f"compute cores {sorted(compute)} and host cores {sorted(host)} must be disjoint, non-empty")
    os.environ.setdefault("JAX_PLATFORMS", "cpu")
    os.sched_setaffinity(0, compute)
    try:
        import jax
        import jax.numpy as jnp

        (jnp.ones(4) + 1).block_until_ready()  # creates the CPU client and its compute pool, on ``compute``
        del jax
    finally:
        os.sched_setaffinity(0, host)
    pools = _threads().get(XLA_POOL_THREAD, set())
    if pools and not pools <= compute:
        raise RuntimeError(f"XLA's compute threads run on cores {sorted(pools)}, not {sorted(compute)}")
    return {"compute_cores": sorted(compute), "host_cores": sorted(host)}


PIN_MODES = ("profile", "yes", "no")


def pin_as_profiled(profile_meta: dict, mode: str = "profile") -> dict[str, list[int]] | None:
    """Pin as the profile with metadata ``profile_meta`` was measured (``mode`` "profile": its recorded cores,
    none if it was measured unpinned), on the default cores ("yes") or not at all ("no"). Returns the pinning."""
    if mode not in PIN_MODES:
        raise ValueError(f"pinning mode must be one of {PIN_MODES}, got {mode!r}")
    pinned_as = profile_meta.get("host", {}).get("pinning")
    if mode == "no" or (mode == "profile" and not pinned_as):
        return None
    cores = [set(pinned_as["compute_cores"]), set(pinned_as["host_cores"])] if pinned_as else []
    return pin_compute_and_host(*cores)


def current_pinning() -> dict[str, list[int]] | None:
    """The pinning in effect (XLA's compute threads' cores and this thread's), or None when they share cores."""
    pools = _threads().get(XLA_POOL_THREAD)
    host = os.sched_getaffinity(0)
    if not pools or pools & host:
        return None
    return {"compute_cores": sorted(pools), "host_cores": sorted(host)}
