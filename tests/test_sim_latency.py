"""Batch shapes and the roofline latency model."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sim.hardware import get_accelerator
from sim.latency import (
    LATENCY_MODELS,
    BatchShape,
    LatencyModel,
    RooflineLatencyModel,
    get_latency_model,
    register_latency_model,
)
from sim.model_spec import get_model_spec


def roofline(acc: str = "h100-80gb", model: str = "llama-2-7b", tp: int = 1) -> RooflineLatencyModel:
    return RooflineLatencyModel(get_accelerator(acc), get_model_spec(model), tp=tp)


class StepByStep(LatencyModel):
    """Wraps a model but keeps the base class's loop for decode_run_times."""

    def __init__(self, inner: LatencyModel) -> None:
        self.inner = inner

    def step_time(self, shape: BatchShape) -> float:
        return self.inner.step_time(shape)


# --- BatchShape ---------------------------------------------------------------------------------


def test_from_chunks_mixed_batch() -> None:
    # A 100-token chunk after 50 cached tokens, a fresh 10-token prompt, and two decodes.
    shape = BatchShape.from_chunks([100, 10, 1, 1], [150, 10, 300, 41], sampled=3)
    assert shape.num_prefill_tokens == 110
    assert shape.num_decode_tokens == 2
    assert shape.num_seqs == 4
    assert shape.prefill_attention_pairs == (100 * 50 + 100 * 101 // 2) + 55
    assert shape.kv_tokens_read == 150 + 10 + 300 + 41
    assert shape.decode_kv_tokens == shape.decode_attention_pairs == 341
    assert shape.num_sampled == 3
    assert shape.num_tokens == 112


def test_from_chunks_defaults_and_errors() -> None:
    assert BatchShape.from_chunks([1, 1], [5, 7]) == BatchShape.decode_only(2, 12)
    assert BatchShape.from_chunks([], []).num_tokens == 0
    with pytest.raises(ValueError, match="length"):
        BatchShape.from_chunks([1], [1, 2])
    with pytest.raises(ValueError, match="q_len"):
        BatchShape.from_chunks([0], [5])
    with pytest.raises(ValueError, match="q_len <= kv_len"):
        BatchShape.from_chunks([10], [5])
    with pytest.raises(ValueError, match="num_sampled"):
        BatchShape.from_chunks([1], [5], sampled=2)


def test_batch_shape_validation_and_fallback() -> None:
    with pytest.raises(ValueError, match="num_seqs"):
        BatchShape(0, 3, 2, 0, 10, 2)
    with pytest.raises(ValueError, match="kv_tokens_read"):
        BatchShape(10, 0, 1, 55, 5, 1)
    with pytest.raises(ValueError, match=">= 0"):
        BatchShape(-1, 0, 0, 0, 0, 0)
    # Without decode_kv_tokens, prefill chunks are assumed to have no cached context.
    shape = BatchShape(10, 2, 3, 55, 10 + 40 + 60, 3)
    assert shape.decode_attention_pairs == 100
    assert BatchShape(10, 0, 1, 55, 10, 1).decode_attention_pairs == 0


# --- Roofline -----------------------------------------------------------------------------------


def test_decode_7b_on_h100_is_memory_bound() -> None:
    model = roofline()
    spec, h100 = get_model_spec("llama-2-7b"), get_accelerator("h100-80gb")
    shape = BatchShape.from_chunks([1], [128])
    parts = model.breakdown(shape)
    assert parts["memory_s"] > 10 * parts["compute_s"]
    weights_only = spec.weight_bytes / h100.hbm_bandwidth
    assert weights_only == pytest.approx(4.02e-3, rel=0.01)
    # The embedding table is gathered (one row for the one new token), not streamed; HBM at its achieved rate.
    table, row = spec.vocab_size * spec.hidden_size * 2, spec.hidden_size * 2
    streamed = spec.weight_bytes - table + row + 129 * spec.kv_bytes_per_token
    expected = streamed / (h100.hbm_bandwidth * h100.hbm_efficiency) + h100.step_overhead_s
    assert model.step_time(shape) == pytest.approx(expected, rel=1e-12)
    assert model.step_time(shape) == pytest.approx(weights_only / h100.hbm_efficiency, rel=0.05)


def test_large_prefill_is_compute_bound() -> None:
    model = roofline()
    spec, h100 = get_model_spec("llama-2-7b"), get_accelerator("h100-80gb")
    shape = BatchShape.from_chunks([8192], [8192], sampled=1)
    parts = model.breakdown(shape)
    assert parts["compute_s"] > 5 * parts["memory_s"]
    flops = spec.linear_flops_per_token * 8192 + spec.attention_flops(8192, 8192) + spec.lm_head_flops_per_token
    expected = flops / (h100.peak_flops("bf16") * h100.flops_efficiency) + h100.step_overhead_s
    assert model.step_time(shape) == pytest.approx(expected, rel=1e-12)


def test_mixed_step_reads_weights_once() -> None:
    model = roofline("cpu-2core", "tiny-bench")
    prefill = BatchShape.from_chunks([2], [2])
    decode = BatchShape.from_chunks([1], [2])
    both = BatchShape.from_chunks([2, 1], [2, 2])
    assert model.step_time(both) < model.step_time(prefill) + model.step_time(decode)


def test_empty_step_is_free() -> None:
    assert roofline().step_time(BatchShape.from_chunks([], [])) == 0.0


@settings(max_examples=200, deadline=None)
@given(
    acc=st.sampled_from(["h100-80gb", "a100-80gb", "tpu-v5e", "cpu-2core"]),
    model=st.sampled_from(["llama-2-7b", "llama-3-8b", "tiny-bench"]),
    q_lens=st.lists(st.integers(1, 4096), min_size=1, max_size=16),
    contexts=st.lists(st.integers(0, 100_000), min_size=16, max_size=16),
    extra_tokens=st.integers(1, 2048),
    extra_context=st.integers(1, 100_000),
)
def test_monotone_in_tokens_and_context(
    acc: str, model: str, q_lens: list[int], contexts: list[int], extra_tokens: int, extra_context: int
) -> None:
    lm = roofline(acc, model)
    kv_lens = [q + c for q, c in zip(q_lens, contexts, strict=False)]
    base = lm.step_time(BatchShape.from_chunks(q_lens, kv_lens))
    more_tokens = lm.step_time(BatchShape.from_chunks(q_lens + [extra_tokens], kv_lens + [extra_tokens]))
    longer_context = lm.step_time(BatchShape.from_chunks(q_lens, [kv_lens[0] + extra_context, *kv_lens[1:]]))
    assert more_tokens >= base
    assert longer_context >= base
    assert base > 0


@settings(max_examples=200, deadline=None)
@given(
    acc=st.sampled_from(["h100-80gb", "a100-80gb", "tpu-v5e", "cpu-2core"]),
    model=st.sampled_from(["llama-2-7b", "llama-3-8b", "llama-3-70b", "tiny-bench"]),
    tp=st.sampled_from([1, 2, 8]),
    num_seqs=st.integers(1, 512),
    extra_context=st.integers(0, 2_000_000),
    num_steps=st.integers(0, 300),
)
def test_decode_run_times_equal_step_by_step(
    acc: str, model: str, tp: int, num_seqs: int, extra_context: int, num_steps: int
) -> None:
    lm = roofline(acc, model, tp)
    kv = num_seqs + extra_context
    fast = lm.decode_run_times(num_seqs, kv, num_steps)
    slow = StepByStep(lm).decode_run_times(num_seqs, kv, num_steps)
    assert fast.shape == slow.shape == (num_steps,)
    assert fast.dtype == np.float64
    np.testing.assert_array_equal(fast, slow)
    for k in (0, num_steps // 2, num_steps - 1) if num_steps else ():
        assert fast[k] == lm.step_time(BatchShape.decode_only(num_seqs, kv + k * num_seqs))
    assert np.all(np.diff(fast) >= 0)


@settings(max_examples=60, deadline=None)
@given(
    model=st.sampled_from(["llama-2-7b", "tiny-bench"]),
    segments=st.lists(st.tuples(st.integers(1, 64), st.integers(1, 40)), min_size=1, max_size=6),
    context=st.integers(0, 100_000),
)
def test_decode_step_times_of_a_shrinking_batch(model: str, segments: list[tuple[int, int]], context: int) -> None:
    # Step times of a batch whose size changes between stretches: the roofline's vectorized override, the
    # base class's one-decode_run_times-per-stretch default and step_time step by step all agree.
    lm = roofline("h100-80gb", model, 1)
    num_seqs = np.concatenate([np.full(k, n) for n, k in segments])
    kv = num_seqs + context + np.arange(len(num_seqs)) * num_seqs
    fast = lm.decode_step_times(num_seqs, kv)
    default = LatencyModel.decode_step_times(lm, num_seqs, kv)
    slow = [lm.step_time(BatchShape.decode_only(int(n), int(k))) for n, k in zip(num_seqs, kv, strict=True)]
    np.testing.assert_allclose(fast, slow, rtol=1e-12)
    np.testing.assert_allclose(default, slow, rtol=1e-12)


@settings(max_examples=60, deadline=None)
@given(
    acc=st.sampled_from(["h100-80gb", "cpu-2core"]),
    model=st.sampled_from(["llama-2-7b", "llama-3-70b", "tiny-bench"]),
    tp=st.sampled_from([1, 2, 8]),
    num_seqs=st.lists(st.integers(1, 512), min_size=1, max_size=20),
    context=st.integers(0, 2_000_000),
)
def test_scalar_decode_step_time_equals_the_vectorized_one(
    acc: str, model: str, tp: int, num_seqs: list[int], context: int
) -> None:
    # The simulator times short decode runs one step at a time with decode_step_timer(); it must agree bit for
    # bit with decode_step_times (the array path) and with the base class's step_time default.
    lm = roofline(acc, model, tp)
    kv = [n + context + i for i, n in enumerate(num_seqs)]
    vectorized = lm.decode_step_times(np.array(num_seqs), np.array(kv))
    timer = lm.decode_step_timer()
    assert [timer(n, k) for n, k in zip(num_seqs, kv, strict=True)] == vectorized.tolist()
    assert [lm.decode_step_time(n, k) for n, k in zip(num_seqs, kv, strict=True)] == vectorized.tolist()
    default = [LatencyModel.decode_step_time(lm, n, k) for n, k in zip(num_seqs, kv, strict=True)]
    np.testing.assert_allclose(default, vectorized, rtol=1e-12)


def test_decode_run_times_validation() -> None:
    lm = roofline()
    assert lm.decode_run_times(4, 4, 0).shape == (0,)
    for args in ((0, 10, 5), (4, 3, 5), (4, 10, -1)):
        with pytest.raises(ValueError):
            lm.decode_run_times(*args)
        with pytest.raises(ValueError):
            StepByStep(lm).decode_run_times(*args)


def test_tensor_parallel_speeds_up_decode() -> None:
    shape = BatchShape.from_chunks([1] * 32, [2048] * 32)
    single, split = roofline(tp=1).step_time(shape), roofline(tp=2).step_time(shape)
    assert split < single
    assert roofline(tp=2).breakdown(shape)["comm_s"] > 0
    assert roofline(tp=1).breakdown(shape)["comm_s"] == 0
    with pytest.raises(ValueError, match="tp"):
        roofline(tp=0)


def test_registry() -> None:
    assert "roofline" in LATENCY_MODELS
    by_name = get_latency_model("roofline", accelerator="h100-80gb", model="llama-2-7b", tp=2)
    assert isinstance(by_name, RooflineLatencyModel) and by_name.tp == 2
    by_object = get_latency_model(
        "roofline", accelerator=get_accelerator("a100-80gb"), model=get_model_spec("tiny-bench")
    )
    assert by_object.model.name == "tiny-bench"
    with pytest.raises(KeyError, match="roofline"):
        get_latency_model("calibrated-nope", accelerator="h100-80gb", model="llama-2-7b")

    class Constant(LatencyModel):
        def __init__(self, accelerator: object, model: object, seconds: float = 1e-3) -> None:
            self.seconds = seconds

        def step_time(self, shape: BatchShape) -> float:
            return self.seconds

    register_latency_model("test-constant", Constant)
    constant = get_latency_model("test-constant", accelerator="cpu-2core", model="tiny-bench", seconds=0.5)
    assert constant.decode_run_times(2, 10, 3).tolist() == [0.5, 0.5, 0.5]
