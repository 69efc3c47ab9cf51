"""Mooncake's hash ids drive the prefix cache: with a pool too large to evict anything, the simulator serves from
the cache exactly the prompt tokens the trace's ids say are shared (computed here from the ids alone), in
``odrive sim`` and in the cluster, where replicas now carry the prompts' token ids."""

from __future__ import annotations

import json
import lzma
from pathlib import Path

import numpy as np
import pytest

from sim.cli import main as sim_main
from sim.cluster import simulate_cluster
from sim.config import SimConfig
from sim.simulator import simulate
from sim.workloads import load_trace

MOONCAKE = Path(__file__).resolve().parents[1] / "data" / "traces" / "mooncake_conversation.jsonl.xz"
N = 250
PAGE = 64
BLOCK = 512


def implied_cached_tokens(records: list[dict], page_size: int) -> np.ndarray:
    """Per request, the prompt tokens an unbounded prefix cache serves, from the hash ids alone: the longest run
    of leading blocks some earlier request computed (a partial block counts its tokens), cut to whole pages and
    leaving at least one prompt token to compute."""
    seen: dict[int, int] = {}  # hash id -> most tokens of its block any earlier prompt held
    out = []
    for record in records:
        length, ids = record["input_length"], record["hash_ids"]
        sizes = [min(BLOCK, length - k * BLOCK) for k in range(len(ids))]
        shared = 0
        for h, size in zip(ids, sizes, strict=True):
            shared += min(size, seen.get(h, 0))
            if seen.get(h, 0) < size:
                break
        out.append(min(shared, length - 1) // page_size * page_size)
        for h, size in zip(ids, sizes, strict=True):
            seen[h] = max(seen.get(h, 0), size)
    return np.array(out, dtype=np.int64)


@pytest.fixture(scope="module")
def records() -> list[dict]:
    with lzma.open(MOONCAKE, "rt") as f:
        return [json.loads(line) for _, line in zip(range(N), f, strict=False)]


def config(num_pages: int, **kw: object) -> SimConfig:
    return SimConfig(model="llama-3-8b", allocator="prefix-cache", page_size=PAGE, num_pages=num_pages,
                     max_prefill_length=131072, record_steps=False, **kw)  # fmt: skip


def in_request_order(frame):
    return frame.assign(i=frame["request_id"].str[1:].astype(int)).sort_values("i").reset_index(drop=True)


def test_unbounded_cache_hits_exactly_what_the_hash_ids_share(records: list[dict]) -> None:
    # One request every 30 s: each prefill is done (its blocks cached) before the next arrives.
    workload = load_trace(MOONCAKE, max_requests=N, interval=30)
    pool = int(workload.prompt_lens.sum() + workload.output_lens.sum()) // PAGE + 2 * N  # nothing is ever evicted
    result = simulate(config(pool), workload)
    got = in_request_order(result.requests)
    want = implied_cached_tokens(records, PAGE)
    assert (got["status"] == "finished").all()
    np.testing.assert_array_equal(got["num_cached_tokens"].to_numpy(), want)
    share = want.sum() / workload.prompt_lens.sum()
    assert 0.05 < share < 0.5 and result.summary["prefix_cache_hit_rate"] == pytest.approx(share, abs=1e-12)
    # at page granularity the share is the block-level one minus page rounding
    assert share == pytest.approx(implied_cached_tokens(records, 1).sum() / workload.prompt_lens.sum(), abs=0.01)


def test_the_cli_reads_mooncake_and_hits(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    spec = f"trace:{MOONCAKE}?max_requests=120&interval=30"
    assert sim_main(["--workload", spec, "--allocator", "prefix-cache", "--model", "llama-3-8b", "--page-size",
                     str(PAGE), "--num-pages", "40000", "--max-prefill-length", "131072", "--out", str(tmp_path),
                     "--no-progress"]) == 0  # fmt: skip
    summary = dict(line.split(",") for line in (tmp_path / "summary.csv").read_text().splitlines()[1:])
    want = implied_cached_tokens([json.loads(x) for _, x in zip(range(120), lzma.open(MOONCAKE, "rt"), strict=False)],
                                 PAGE)  # fmt: skip
    assert float(summary["prefix_cache_hit_rate"]) == pytest.approx(want.sum() / load_trace(MOONCAKE, max_requests=120)
                                                                    .prompt_lens.sum(), rel=1e-9)  # fmt: skip


def test_cluster_replicas_carry_token_ids_and_prefix_affinity_on_one_replica_equals_the_simulator() -> None:
    workload = load_trace(MOONCAKE, max_requests=150, time_scale=0.5)  # the trace's own arrivals, 2x faster
    cfg = config(30_000)  # a pool that evicts
    single = in_request_order(simulate(cfg, workload).requests)
    cluster = simulate_cluster(cfg, workload, "prefix-affinity", num_replicas=1)
    got = in_request_order(cluster.requests())
    assert single["num_cached_tokens"].sum() > 0
    for column in ("status", "num_cached_tokens", "num_output_tokens", "num_preemptions"):
        np.testing.assert_array_equal(got[column].to_numpy(), single[column].to_numpy(), err_msg=column)
    for column in ("first_token_time", "finish_time"):
        np.testing.assert_allclose(got[column].to_numpy(float), single[column].to_numpy(float), rtol=0, atol=1e-9)
    # several replicas hit too (token ids reach every replica), prefix-affinity keying on two blocks more than RR
    spread = {router: simulate_cluster(cfg, workload, router, num_replicas=4, affinity_tokens=1024)
              for router in ("round-robin", "prefix-affinity")}  # fmt: skip
    hits = {r: float(res.summary["prefix_cache_hit_rate"]) for r, res in spread.items()}
    assert 0 < hits["round-robin"] < hits["prefix-affinity"], hits
    assert not spread["prefix-affinity"].notes


def test_prefix_affinity_notes_a_key_every_request_shares() -> None:
    workload = load_trace(MOONCAKE, max_requests=40, interval=1)
    result = simulate_cluster(config(20_000), workload, "prefix-affinity", num_replicas=4)  # 64 tokens: block 0
    assert any("one prefix key holds 100% of the requests" in note for note in result.notes), result.notes


def test_fast_forwarded_decode_runs_evict_and_hit_as_stepping_does() -> None:
    from sim.simulator import Simulator

    workload = load_trace(MOONCAKE, max_requests=80, time_scale=0.5)
    runs = []
    for fast in (True, False):
        sim = Simulator(config(4_000), workload)  # a small pool: cached pages get evicted
        sim.engine.fast_forward = fast
        runs.append((sim.run(), sim.engine.allocator.prefix_stats()))
    (fast, fast_stats), (stepped, stepped_stats) = runs
    assert stepped_stats.evictions > 0 and fast_stats == stepped_stats
    a, b = in_request_order(fast.requests), in_request_order(stepped.requests)
    for column in ("status", "num_cached_tokens", "num_preemptions", "num_output_tokens"):
        np.testing.assert_array_equal(a[column].to_numpy(), b[column].to_numpy(), err_msg=column)
    np.testing.assert_allclose(a["finish_time"].to_numpy(float), b["finish_time"].to_numpy(float), rtol=1e-12)
