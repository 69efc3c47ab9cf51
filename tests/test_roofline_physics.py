"""The roofline's physics: achieved-efficiency factors, α–β all-reduces, gathered embeddings, the engine's TP layout."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.config import SimConfig
from sim.hardware import LINKS, get_accelerator
from sim.latency import BatchShape, RooflineLatencyModel
from sim.model_spec import get_model_spec
from sim.simulator import simulate
from sim.workloads import parse_workload


def roofline(acc: str = "h100-80gb", model: str = "llama-3-8b", tp: int = 1, **kw: object) -> RooflineLatencyModel:
    return RooflineLatencyModel(get_accelerator(acc), get_model_spec(model), tp=tp, **kw)


def datasheet(acc: str, model: str, tp: int) -> RooflineLatencyModel:
    """The older accounting: datasheet peaks, latency-free all-reduces, the table streamed, weights split evenly."""
    a = get_accelerator(acc)
    return roofline(
        acc, model, tp, flops_efficiency=1.0, hbm_efficiency=1.0, allreduce_latency_s=0.0,
        allreduce_bus_bandwidth=a.interconnect_bandwidth, embeddings="streamed", tp_layout="even",
    )  # fmt: skip


def test_presets_carry_published_efficiencies_and_a_link() -> None:
    h100, a100 = get_accelerator("h100-80gb"), get_accelerator("a100-80gb")
    assert (h100.flops_efficiency, h100.hbm_efficiency) == (0.75, 0.90)
    assert (a100.flops_efficiency, a100.hbm_efficiency) == (0.73, 0.87)
    assert h100.link() is LINKS.get("nvlink4") and h100.link().latency_s > 0
    assert get_accelerator("cpu-2core").flops_efficiency == 1.0  # its rates are measurements already
    assert LINKS.get("nvlink4").allreduce_seconds(1e6, 1) == 0.0


def test_efficiency_factors_scale_compute_and_memory_exactly() -> None:
    base = roofline(flops_efficiency=1.0, hbm_efficiency=1.0)
    half = roofline(flops_efficiency=0.5, hbm_efficiency=0.25)
    for shape in (BatchShape.from_chunks([4096], [4096]), BatchShape.from_chunks([1] * 8, [1000] * 8)):
        b, h = base.breakdown(shape), half.breakdown(shape)
        assert h["compute_s"] == pytest.approx(2 * b["compute_s"], rel=1e-12)
        assert h["memory_s"] == pytest.approx(4 * b["memory_s"], rel=1e-12)
    with pytest.raises(ValueError, match="flops_efficiency"):
        roofline(flops_efficiency=1.5)
    with pytest.raises(ValueError, match="embeddings"):
        roofline(embeddings="cached")


def test_allreduce_is_latency_plus_size_over_bandwidth() -> None:
    spec, h100 = get_model_spec("llama-3-70b"), get_accelerator("h100-80gb")
    link = h100.link()
    for tp in (2, 4, 8):
        for tokens in (1, 8, 512):
            shape = BatchShape.from_chunks([1] * tokens, [100] * tokens)
            per_layer = 2 * link.allreduce_seconds(tokens * spec.hidden_size * spec.dtype_bytes, tp)
            assert roofline(model="llama-3-70b", tp=tp).breakdown(shape)["comm_s"] == pytest.approx(
                spec.num_layers * per_layer, rel=1e-12
            )
    assert roofline(model="llama-3-70b", tp=1).breakdown(BatchShape.from_chunks([1], [10]))["comm_s"] == 0.0


def test_small_batch_tp_decode_pays_20_to_30_percent_for_allreduce_latency() -> None:
    # The physics the datasheet roofline left out: at TP 8 and batch 8, 160 all-reduces of a few KiB each.
    shape = BatchShape.from_chunks([1] * 8, [1024] * 8)
    with_latency = roofline(model="llama-3-70b", tp=8).step_time(shape)
    without = roofline(model="llama-3-70b", tp=8, allreduce_latency_s=0.0).step_time(shape)
    assert 0.20 <= with_latency / without - 1 <= 0.30


def test_embeddings_are_gathered_and_a_tied_head_is_read_once() -> None:
    spec = get_model_spec("llama-3-8b")
    table, row = spec.vocab_size * spec.hidden_size * 2, spec.hidden_size * 2
    shape = BatchShape.from_chunks([1] * 4, [64] * 4)
    bandwidth = get_accelerator("h100-80gb").hbm_bandwidth
    gathered = roofline(hbm_efficiency=1.0).breakdown(shape)["memory_s"] * bandwidth
    streamed = roofline(hbm_efficiency=1.0, embeddings="streamed").breakdown(shape)["memory_s"] * bandwidth
    assert streamed - gathered == pytest.approx(table - 4 * row, rel=1e-9)
    # A step that samples nothing (a mid-prompt chunk) does not read the LM head.
    chunk = BatchShape.from_chunks([256], [256], sampled=0)
    last = BatchShape.from_chunks([256], [256], sampled=1)
    lm = roofline(hbm_efficiency=1.0)
    assert (lm.breakdown(last)["memory_s"] - lm.breakdown(chunk)["memory_s"]) * bandwidth == pytest.approx(table)


def test_tp_weights_split_as_the_engine_shards_them() -> None:
    # Per device at TP 8: the layers' matmuls and the vocab-parallel LM head split 8 ways, norms replicated, the
    # table gathered; the older even split also divided the (streamed) table by 8.
    spec = get_model_spec("llama-3-70b")
    split = spec.decoder.weight_split(8)
    shape = BatchShape.from_chunks([1], [10])
    bandwidth = get_accelerator("h100-80gb").hbm_bandwidth
    engine = roofline(model="llama-3-70b", tp=8, hbm_efficiency=1.0)
    kv = 11 * spec.kv_bytes_per_token // 8
    expected = (split.matmuls + split.norms + split.lm_head + spec.hidden_size) * 2 + kv
    assert engine.breakdown(shape)["memory_s"] * bandwidth == pytest.approx(expected, rel=1e-12)
    # Compute: the device's share of the heads, of the MLP and of the vocabulary.
    flops = 2 * split.matmuls + 4 * spec.num_layers * (spec.num_q_heads // 8) * spec.head_dim * 10
    flops += 2 * spec.hidden_size * spec.vocab_size // 8
    peak = get_accelerator("h100-80gb").peak_flops()
    assert roofline(model="llama-3-70b", tp=8, flops_efficiency=1.0).breakdown(shape)["compute_s"] == pytest.approx(
        flops / peak, rel=1e-12
    )


@pytest.mark.parametrize("tp", [1, 2, 8])
def test_the_older_accounting_is_an_ablation_of_the_same_model(tp: int) -> None:
    # datasheet() must reproduce the formula the simulator used before these physics: all weights / tp streamed,
    # datasheet rates, ring all-reduce bytes over the interconnect without latency.
    spec, h100 = get_model_spec("llama-2-7b"), get_accelerator("h100-80gb")
    shape = BatchShape.from_chunks([1] * 16, [2048] * 16)
    flops = (spec.linear_flops_per_token * 16 + spec.attention_flops_per_pair * 16 * 2048) / tp
    flops += spec.lm_head_flops_per_token * 16 / tp
    nbytes = spec.weight_bytes / tp + spec.kv_bytes_per_token / tp * (16 * 2048 + 16)
    comm = 16 * 2 * spec.num_layers * spec.hidden_size * 2 * (2 * (tp - 1) / tp) / h100.interconnect_bandwidth
    expected = max(flops / h100.peak_flops(), nbytes / h100.hbm_bandwidth) + comm + h100.step_overhead_s
    assert datasheet("h100-80gb", "llama-2-7b", tp).step_time(shape) == pytest.approx(expected, rel=1e-12)


@settings(max_examples=150, deadline=None)
@given(
    model=st.sampled_from(["llama-2-7b", "llama-3-8b", "llama-3-70b", "tiny-bench"]),
    tp=st.sampled_from([1, 2, 8]),
    prompt=st.integers(1, 20_000),
    chunk=st.integers(1, 4096),
    decodes=st.integers(0, 64),
    context=st.integers(1, 4000),
)
def test_min_prefill_seconds_bounds_any_chunking_and_batching(
    model: str, tp: int, prompt: int, chunk: int, decodes: int, context: int
) -> None:
    # The bound a disaggregated cluster fast-forwards by: however a prompt is chunked and whatever decodes share its
    # steps, its prefill steps add up to at least min_prefill_seconds(prompt).
    lm = roofline("h100-80gb", model, tp)
    total, start = 0.0, 0
    while start < prompt:
        n = min(chunk, prompt - start)
        q = [n] + [1] * decodes
        kv = [start + n] + [context] * decodes
        total += lm.step_time(BatchShape.from_chunks(q, kv, sampled=decodes + (start + n == prompt)))
        start += n
    assert total >= lm.min_prefill_seconds(prompt) * (1 - 1e-12)


def test_summaries_report_the_physics_and_overrides_reach_the_model() -> None:
    workload = parse_workload("poisson:rate=5,n=20,prompt=200,output=20", seed=0)
    default = simulate(SimConfig(model="llama-3-8b", record_steps=False), workload).summary
    assert default["flops_efficiency"] == 0.75 and default["hbm_efficiency"] == 0.90
    assert default["allreduce_latency_us"] == pytest.approx(10.0)
    slower = simulate(
        SimConfig(model="llama-3-8b", record_steps=False, latency_kwargs=(("hbm_efficiency", 0.45),)), workload
    ).summary
    assert slower["hbm_efficiency"] == 0.45
    assert slower["tpot_p50"] > 1.8 * default["tpot_p50"]  # decode is memory-bound: half the bandwidth, ~2x TPOT
