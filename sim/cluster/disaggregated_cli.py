"""The ``python -m sim.cluster`` flags of disaggregated serving: pool sizes, each pool's config and router, the link."""

from __future__ import annotations

import argparse
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from odrive.errors import ConfigError
from sim.cli import _option
from sim.cluster.kv_link import TOPOLOGIES, KVLinkConfig
from sim.cluster.routers import ROUTERS
from sim.config import SimConfig
from sim.hardware import ACCELERATORS

POOL_FLAGS = {"accelerator": "accelerator", "tp": "tensor_parallel_size", "scheduler": "scheduler",
              "allocator": "allocator"}  # fmt: skip


@dataclass(frozen=True)
class Pools:
    """A disaggregated cluster as the flags describe it (``simulate_disaggregated`` arguments)."""

    prefill: SimConfig
    decode: SimConfig
    prefill_replicas: int
    decode_replicas: int
    prefill_router: str
    decode_router: str
    link: KVLinkConfig

    def kwargs(self) -> dict[str, Any]:
        return {
            "prefill_replicas": self.prefill_replicas,
            "decode_replicas": self.decode_replicas,
            "prefill_router": self.prefill_router,
            "decode_router": self.decode_router,
            "link": self.link,
        }


def _gbps(text: str) -> float:
    value = float(text)
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be > 0 Gb/s ('inf' for instantaneous), got {text!r}")
    return value


def add_arguments(p: argparse.ArgumentParser) -> None:
    g = p.add_argument_group(
        "disaggregated serving", "a prefill pool and a decode pool; each pool flag overrides the replica flags above"
    )
    g.add_argument("--prefill-replicas", type=int, default=0,
                   help="replicas of the prefill pool; 0 (default): colocated prefill and decode")  # fmt: skip
    g.add_argument("--decode-replicas", type=int, default=None,
                   help="replicas of the decode pool (default: --replicas minus --prefill-replicas)")  # fmt: skip
    for pool in ("prefill", "decode"):
        g.add_argument(f"--{pool}-accelerator", default=None, choices=sorted(ACCELERATORS))
        g.add_argument(f"--{pool}-tp", type=int, default=None, help=f"tensor parallel size of each {pool} replica")
        g.add_argument(f"--{pool}-scheduler", default=None)
        g.add_argument(f"--{pool}-allocator", default=None)
        g.add_argument(f"--{pool}-arg", dest=f"{pool}_args", action="append", default=[], type=_option,
                       metavar="FIELD=VALUE", help=f"any other SimConfig field of the {pool} pool, repeatable "
                       "(e.g. max_concurrent_decodes=512)")  # fmt: skip
        g.add_argument(f"--{pool}-router", default=None, choices=ROUTERS.names(), help="default: --router")
    g.add_argument(
        "--kv-link-gbps",
        type=_gbps,
        default=KVLinkConfig.gbps,
        help="K/V link bandwidth in Gb/s per link ('inf': instantaneous; default: one 400 Gb/s port)",
    )
    g.add_argument(
        "--kv-link-latency-us",
        type=float,
        default=KVLinkConfig.latency_s * 1e6,
        help="fixed latency per K/V transfer in microseconds (default 10)",
    )
    g.add_argument(
        "--kv-link-topology",
        default=KVLinkConfig.topology,
        choices=TOPOLOGIES,
        help="per-prefill: each prefill replica sends over its own link; shared: one link for all",
    )


def pool_config(args: argparse.Namespace, base: SimConfig, pool: str) -> SimConfig:
    """``base`` with the ``--POOL-*`` flags applied."""
    overrides: dict[str, Any] = {}
    for flag, field in POOL_FLAGS.items():
        value = getattr(args, f"{pool}_{flag}")
        if value is not None:
            overrides[field] = value
    known = {f.name for f in dataclasses.fields(SimConfig)}
    for name, value in getattr(args, f"{pool}_args"):
        if name not in known:
            raise ConfigError(f"--{pool}-arg {name}: SimConfig has no field {name!r}")
        overrides[name] = tuple(value) if isinstance(value, list) else value
    return dataclasses.replace(base, **overrides)


def pools(args: argparse.Namespace, base: SimConfig) -> Pools | None:
    """The disaggregated cluster the flags describe, or None for a colocated one (``--prefill-replicas 0``)."""
    p = args.prefill_replicas
    if p < 0:
        raise ConfigError(f"--prefill-replicas must be >= 0, got {p}")
    if p == 0:
        return None
    if args.replica_configs is not None:
        raise ConfigError("--replica-configs describes a colocated cluster; with --prefill-replicas use the pool flags")
    d = args.decode_replicas if args.decode_replicas is not None else args.replicas - p
    if d < 1:
        raise ConfigError(f"the decode pool needs >= 1 replica, got {d} (--decode-replicas, or --replicas > {p})")
    latency = args.kv_link_latency_us
    if not (latency >= 0 and math.isfinite(latency)):
        raise ConfigError(f"--kv-link-latency-us must be a finite number >= 0, got {latency}")
    link = KVLinkConfig(args.kv_link_gbps, latency / 1e6, args.kv_link_topology)
    return Pools(
        pool_config(args, base, "prefill"), pool_config(args, base, "decode"), p, d,
        args.prefill_router or args.router, args.decode_router or args.router, link,
    )  # fmt: skip
