"""Cluster-scale workloads: a trace replayed end to end (time-scaled), and prefix keys for affinity routing.

Registers the workload kind ``replay:PATH?n=N&time_scale=X`` (e.g. one million requests from the Azure
conversation trace compressed 64x: ``replay:data/traces/azure_conv_2023.csv?n=1000000&time_scale=0.015625``).
"""

from __future__ import annotations

import hashlib
from collections.abc import Sequence

import numpy as np

from sim.workloads.parse import WorkloadSpecError, register_workload_kind
from sim.workloads.request import Workload
from sim.workloads.trace import load_trace


def replay(workload: Workload, num_requests: int, time_scale: float = 1.0) -> Workload:
    """``num_requests`` requests: copies of ``workload`` laid end to end (copy ``k`` starts one period —
    the trace's span plus its mean gap — after copy ``k - 1``), arrival times multiplied by ``time_scale``."""
    n = len(workload)
    if n == 0 or num_requests < 1:
        raise ValueError(f"replay needs a non-empty workload and num_requests >= 1, got {n} and {num_requests}")
    if not time_scale > 0:
        raise ValueError(f"time_scale must be > 0, got {time_scale}")
    times = workload.arrival_times - workload.arrival_times[0]
    period = workload.duration + (workload.duration / (n - 1) if n > 1 else 1.0)
    copies = -(-num_requests // n)
    offsets = np.repeat(np.arange(copies, dtype=np.float64) * period, n)[:num_requests]
    index = np.tile(np.arange(n), copies)[:num_requests]
    return Workload(
        arrival_times=(times[index] + offsets) * time_scale,
        prompt_lens=workload.prompt_lens[index],
        output_lens=workload.output_lens[index],
        priorities=None if workload.priorities is None else workload.priorities[index],
        name=f"{workload.name}x{num_requests / n:.3g}@{time_scale:g}",
    )


def zipf_groups(num_requests: int, num_groups: int, alpha: float = 1.1, seed: int = 0) -> np.ndarray:
    """Synthetic prefix/group ids (e.g. shared system prompts): group ``k`` drawn with weight ``1/(k+1)^alpha``."""
    if num_groups < 1 or num_requests < 0:
        raise ValueError(f"need num_groups >= 1 and num_requests >= 0, got {num_groups}, {num_requests}")
    weights = 1.0 / np.arange(1, num_groups + 1, dtype=np.float64) ** alpha
    rng = np.random.default_rng(np.random.SeedSequence([seed, 0x5EED]))
    return rng.choice(num_groups, size=num_requests, p=weights / weights.sum()).astype(np.int64)


def prefix_keys_from_tokens(prompt_token_ids: Sequence[Sequence[int]], num_tokens: int = 64) -> np.ndarray:
    """A stable 63-bit key per prompt: a hash of its first ``num_tokens`` token ids (same prefix, same key).
    Prompts built on access (``prefix(i, n)``, e.g. :class:`sim.workloads.token_streams.SegmentPrompts`) build only
    those tokens."""
    if num_tokens < 1:
        raise ValueError(f"num_tokens must be >= 1, got {num_tokens}")
    keys = np.empty(len(prompt_token_ids), dtype=np.int64)
    prefix = getattr(prompt_token_ids, "prefix", None)
    for i in range(len(prompt_token_ids)):
        ids = prefix(i, num_tokens) if prefix is not None else prompt_token_ids[i][:num_tokens]
        digest = hashlib.blake2b(np.asarray(ids, dtype=np.int64).tobytes(), digest_size=8).digest()
        keys[i] = int.from_bytes(digest, "little") >> 1
    return keys


def _parse_replay(body: str, seed: int) -> Workload:
    path, _, query = body.partition("?")
    options: dict[str, str] = {}
    for item in filter(None, query.split("&")):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or key not in ("n", "time_scale") or key in options:
            raise WorkloadSpecError(f"replay options are n=INT and time_scale=X (each once), got {item!r}")
        options[key] = value
    trace = load_trace(path.strip())
    try:
        n = int(options.get("n", len(trace)))
        scale = float(options.get("time_scale", 1.0))
    except ValueError as err:
        raise WorkloadSpecError(f"replay: {err}") from None
    return replay(trace, n, scale)


register_workload_kind("replay", _parse_replay)
