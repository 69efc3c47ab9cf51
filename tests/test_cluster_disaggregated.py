"""Disaggregated serving: a prefill pool and a decode pool joined by K/V links."""

from __future__ import annotations

import math

import numpy as np
import pandas as pd
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from odrive.errors import ConfigError
from sim.cluster import simulate_cluster
from sim.cluster.cli import main as cluster_main
from sim.cluster.disaggregated import DisaggregatedSimulator, simulate_disaggregated
from sim.cluster.kv_link import KVLinkConfig
from sim.config import SimConfig
from sim.model_spec import get_model_spec
from sim.workloads import parse_workload

CFG = SimConfig(model="llama-3-8b", record_steps=False)
INSTANT = KVLinkConfig(gbps=math.inf, latency_s=0.0)
TIMES = ["arrival_time", "first_scheduled_time", "first_token_time", "finish_time", "prefill_done_time",
         "kv_send_time", "kv_start_time"]  # fmt: skip
EXACT = ["request_id", "replica", "prefill_replica", "status", "num_output_tokens", "num_preemptions"]


def workload(spec: str = "poisson:rate=20,n=300,prompt=uniform(64,2048),output=uniform(16,400)", seed: int = 0):
    return parse_workload(spec, seed=seed)


def by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("request_id", key=lambda s: s.str[1:].astype(int)).reset_index(drop=True)


@settings(max_examples=8, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    seed=st.integers(0, 10_000),
    rate=st.sampled_from([2.0, 8.0, 20.0, 40.0]),
    prompt=st.sampled_from([(128, 512), (256, 1024)]),
    output=st.sampled_from([(256, 512), (512, 1024)]),
    model=st.sampled_from(["llama-3-8b", "llama-2-7b"]),
)
def test_decode_tpot_is_never_worse_than_colocated_with_an_instant_link(
    seed: int, rate: float, prompt: tuple[int, int], output: tuple[int, int], model: str
) -> None:
    # Decode-heavy traffic on FCFS (prefill priority): colocated, every prefill stalls the decodes; one prefill +
    # one decode replica (an instant link) decode without those stalls, on the same decode hardware.
    w = workload(f"poisson:rate={rate},n=150,prompt=uniform{prompt},output=uniform{output}", seed)
    cfg = SimConfig(model=model, record_steps=False)
    disaggregated = simulate_disaggregated(cfg, None, w, prefill_replicas=1, decode_replicas=1, link=INSTANT)
    colocated = simulate_cluster(cfg, w, "round-robin", num_replicas=1)
    for key in ("tpot_p50", "tpot_p90", "tpot_p99", "tpot_mean"):
        assert disaggregated.summary[key] <= colocated.summary[key] * (1 + 1e-12), key


def test_ttft_includes_the_transfer_exactly() -> None:
    w = workload()
    link = KVLinkConfig(gbps=25.0, latency_s=2e-3)
    req = simulate_disaggregated(CFG, None, w, prefill_replicas=2, decode_replicas=2, link=link).requests()
    req = req[req["status"] == "finished"]
    assert len(req) > 250
    transfer = req["kv_bytes"] * 8 / 25e9 + 2e-3
    np.testing.assert_allclose(req["first_token_time"], req["kv_start_time"] + transfer, rtol=0, atol=1e-12)
    assert (req["kv_start_time"] >= req["kv_send_time"]).all()
    assert (req["kv_send_time"] >= req["prefill_done_time"]).all()
    assert (req["kv_start_time"] > req["kv_send_time"]).any()  # transfers queued on the links
    handoff = req["first_token_time"] - req["prefill_done_time"]
    np.testing.assert_allclose(req["ttft"], req["prefill_done_time"] - req["arrival_time"] + handoff, atol=1e-12)
    # An instant link with room to spare: the first token arrives the moment the prefill ends.
    instant = simulate_disaggregated(CFG, None, w, prefill_replicas=2, decode_replicas=2, link=INSTANT).requests()
    instant = instant[instant["status"] == "finished"]
    assert (instant["first_token_time"] == instant["prefill_done_time"]).all()


def test_kv_bytes_per_request_follow_the_model_spec() -> None:
    w = workload()
    spec = get_model_spec("llama-3-8b")
    per_token = 2 * spec.num_layers * spec.num_kv_heads * spec.head_dim * spec.dtype_bytes  # K and V, every layer
    for tp in (1, 2):  # the whole K/V moves, whatever the shards
        cfg = SimConfig(model="llama-3-8b", record_steps=False, tensor_parallel_size=tp)
        req = simulate_disaggregated(cfg, None, w, prefill_replicas=1, decode_replicas=1).requests()
        sent = req[req["status"] == "finished"]
        assert (sent["kv_bytes"] == sent["num_prompt_tokens"] * per_token).all()


def test_no_request_is_lost_when_the_decode_pool_is_full() -> None:
    # A small decode pool under heavy load: prefilled requests wait (their K/V held by the prefill replicas),
    # every request finishes, the links never queue more than the decode pool admits, every page comes back.
    w = workload("poisson:rate=200,n=400,prompt=uniform(32,600),output=uniform(32,600)", seed=3)
    prefill = SimConfig(model="llama-3-8b", record_steps=False, check_invariants=True, num_pages=400)
    decode = SimConfig(model="llama-3-8b", record_steps=False, check_invariants=True, num_pages=300,
                       max_concurrent_decodes=24)  # fmt: skip
    sim = DisaggregatedSimulator(prefill, decode, w, prefill_replicas=2, decode_replicas=2, link=KVLinkConfig(gbps=50))
    result = sim.run()
    s, req = result.summary, result.requests()
    assert s["finished"] + s["rejected"] == len(w) == len(req)
    assert s["rejected"] == (req["finish_reason"] == "rejected").sum()
    assert set(req.loc[req["finish_reason"] == "rejected", "message"].str[:12]) <= {"decode pool:"}
    assert s["max_waiting_for_decode"] > 10 and s["kv_wait_max"] > 0  # the decode pool was full: they waited
    assert 1 <= s["link_max_queue"] <= 2 * 24  # never more transfers in flight than the decode pool admits
    for replica in [*sim.replicas, *sim.decode_replicas]:
        alloc = replica.engine.allocator
        alloc.check_invariants()
        assert alloc.num_free_pages == alloc.num_usable_pages


@pytest.mark.parametrize("decode_router", ["round-robin", "least-outstanding", "least-kv-load"])
def test_results_do_not_depend_on_fast_forward(decode_router: str) -> None:
    # Decode replicas fast-forward up to bounds on the next K/V arrival; stepping one step at a time must agree.
    w = workload("poisson:rate=40,n=300,prompt=uniform(16,1500),output=uniform(8,300)", seed=5)
    decode = SimConfig(model="llama-3-8b", record_steps=False, num_pages=800, max_concurrent_decodes=48)
    runs = []
    for fast in (True, False):
        sim = DisaggregatedSimulator(CFG, decode, w, prefill_replicas=2, decode_replicas=3,
                                     decode_router=decode_router, link=KVLinkConfig(gbps=100))  # fmt: skip
        for replica in sim.decode_replicas:
            replica.engine.fast_forward = fast
        runs.append(sim.run())
    a, b = by_id(runs[0].requests()), by_id(runs[1].requests())
    pd.testing.assert_frame_equal(a[EXACT].astype(str), b[EXACT].astype(str))
    np.testing.assert_allclose(a[TIMES].to_numpy(float), b[TIMES].to_numpy(float), rtol=0, atol=1e-9)
    assert runs[0].summary["engine_step_calls"] < runs[1].summary["engine_step_calls"] / 3
    assert runs[0].summary["max_waiting_for_decode"] > 0


def test_pools_have_their_own_hardware_and_policies() -> None:
    w = workload(seed=2)
    prefill = SimConfig(model="llama-3-8b", accelerator="h100-80gb", scheduler="sarathi", record_steps=False)
    decode = SimConfig(model="llama-3-8b", accelerator="a100-80gb", tensor_parallel_size=2, record_steps=False)
    result = simulate_disaggregated(prefill, decode, w, prefill_replicas=1, decode_replicas=2,
                                    prefill_router="least-outstanding")  # fmt: skip
    per = result.replicas
    assert per["pool"].tolist() == ["prefill", "decode", "decode"]
    assert per["accelerator"].tolist() == ["h100-80gb", "a100-80gb", "a100-80gb"]
    assert result.summary["accelerators"] == 5
    assert result.summary["prefill_flops_efficiency"] == 0.75 and result.summary["decode_flops_efficiency"] == 0.73
    assert per.loc[0, "prefilled"] == result.summary["finished"]
    assert result.summary["prefill_ttft_p50"] < result.summary["ttft_p50"]
    with pytest.raises(ConfigError, match="same model|K/V differ"):
        simulate_disaggregated(prefill, SimConfig(model="llama-2-7b"), w, prefill_replicas=1, decode_replicas=1)
    with pytest.raises(ConfigError, match="colocated"):
        simulate_disaggregated(prefill, None, w, prefill_replicas=0, decode_replicas=1)


def test_cluster_cli_runs_a_disaggregated_cluster(tmp_path, capsys) -> None:
    out = tmp_path / "run"
    code = cluster_main([
        "--workload", "poisson:rate=10,n=120,prompt=uniform(16,800),output=uniform(8,200)", "--model", "llama-3-8b",
        "--replicas", "3", "--prefill-replicas", "1", "--decode-tp", "2", "--decode-arg", "max_concurrent_decodes=64",
        "--kv-link-gbps", "inf", "--kv-link-latency-us", "0", "--out", str(out), "--no-progress",
    ])  # fmt: skip
    assert code == 0
    printed = capsys.readouterr().out
    assert "kv_handoff_p99" in printed and "link_utilization_mean" in printed and "prefill_ttft_p99" in printed
    summary = pd.read_csv(out / "summary.csv", index_col=0)["value"]
    assert summary["decode_replicas"] == 2 and summary["accelerators"] == 5 and summary["finished"] == 120
    assert summary["link_utilization_max"] == 0.0  # an instant link is never busy
    assert (out / "cluster.png").is_file()
    assert cluster_main(["--prefill-replicas", "3", "--replicas", "3", "--out", str(out), "--no-progress"]) == 2
    assert "decode pool needs >= 1 replica" in capsys.readouterr().err
