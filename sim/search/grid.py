"""Search grids: cluster configurations as a YAML file of ``ClusterSpec`` and ``SimConfig`` fields.

    workload: "trace:data/traces/azure_conv_2023.csv?max_requests=2000"   # lengths and arrival pattern
    base: {model: llama-3-8b}               # fixed for every configuration
    grid:                                   # a mapping of lists (their product) or a list of such mappings
      accelerator: [h100-80gb, a100-80gb]
      tensor_parallel_size: [1, 2]
      replicas: [4]
      prefill_replicas: [0, 1, 2]           # 0: colocated; else P prefill + (replicas - P) decode replicas
      scheduler: [fcfs, sarathi]
      chunk_size: [null, 512]

Keys: any ``SimConfig`` field (every replica), the cluster's ``replicas``, ``prefill_replicas``,
``decode_replicas``, ``router``, ``prefill_router``, ``decode_router``, ``kv_link_gbps``, ``kv_link_latency_us``,
``kv_link_topology``, and ``prefill.FIELD`` / ``decode.FIELD`` for a ``SimConfig`` field of one pool only.
"""

from __future__ import annotations

import difflib
import itertools
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sim.cluster.kv_link import KVLinkConfig
from sim.cluster.spec import ClusterSpec
from sim.config import SimConfig
from sim.sweep.grid import GridError, axis_values, config_fields, hashable

CLUSTER_KEYS = ("replicas", "prefill_replicas", "decode_replicas", "router", "prefill_router", "decode_router")
LINK_KEYS = {"kv_link_gbps": "gbps", "kv_link_latency_us": "latency_s", "kv_link_topology": "topology"}
POOLS = ("prefill", "decode")


def _spec(chosen: Mapping[str, Any]) -> ClusterSpec:
    fields = set(config_fields())
    replica: dict[str, Any] = {}
    cluster: dict[str, Any] = {}
    link: dict[str, Any] = {}
    pools: dict[str, dict[str, Any]] = {pool: {} for pool in POOLS}
    for key, value in chosen.items():
        pool, dot, name = key.partition(".")
        if key in fields:
            replica[key] = hashable(value)
        elif key in CLUSTER_KEYS:
            cluster[key] = value
        elif key in LINK_KEYS:
            link[LINK_KEYS[key]] = float(value) / 1e6 if key == "kv_link_latency_us" else value
        elif dot and pool in POOLS and name in fields:
            pools[pool][name] = hashable(value)
        else:
            known = sorted([*fields, *CLUSTER_KEYS, *LINK_KEYS, *(f"{p}.{f}" for p in POOLS for f in fields)])
            hint = difflib.get_close_matches(key, known, n=1)
            raise GridError(f"unknown search grid key {key!r}" + (f"; did you mean {hint[0]!r}?" if hint else ""))
    try:
        return ClusterSpec(
            SimConfig(**replica), **cluster, prefill=tuple(sorted(pools["prefill"].items())),
            decode=tuple(sorted(pools["decode"].items())), link=KVLinkConfig(**link),
        )  # fmt: skip
    except (TypeError, ValueError) as err:
        raise GridError(f"search grid entry {dict(chosen)!r}: {err}") from None


def expand_search_grid(grid: Mapping[str, Any] | Sequence[Mapping[str, Any]],
                       base: Mapping[str, Any] | None = None) -> list[ClusterSpec]:  # fmt: skip
    """Every configuration of ``grid`` in order (the first key varies slowest), duplicates dropped."""
    entries = [grid] if isinstance(grid, Mapping) else list(grid)
    if not entries:
        raise GridError("the search grid is empty")
    specs: dict[ClusterSpec, None] = {}
    for entry in entries:
        if not isinstance(entry, Mapping):
            raise GridError(f"a search grid entry must be a mapping of keys to values, got {entry!r}")
        merged = {**(base or {}), **entry}
        keys = list(merged)
        for combo in itertools.product(*(axis_values(k, merged[k]) for k in keys)):
            specs[_spec(dict(zip(keys, combo, strict=True)))] = None
    return list(specs)


def load_search_grid(path: str | Path) -> tuple[list[ClusterSpec], str | None]:
    """The configurations of a YAML search grid, and its ``workload`` (None if it names none)."""
    import yaml

    path = Path(path)
    try:
        data = yaml.safe_load(path.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise GridError(f"{path}: {err}") from None
    if not isinstance(data, Mapping) or "grid" not in data:
        raise GridError(f"{path}: expected a mapping with a 'grid' key (and optionally 'base', 'workload')")
    extra = set(data) - {"grid", "base", "workload"}
    if extra:
        raise GridError(f"{path}: unknown top-level key(s) {', '.join(sorted(extra))}; use grid, base, workload")
    return expand_search_grid(data["grid"], data.get("base") or {}), data.get("workload")
