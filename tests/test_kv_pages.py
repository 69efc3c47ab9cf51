"""The one per-device KV page formula (odrive.core.kv_pages), shared by the simulator and the real engine."""

from __future__ import annotations

import math
import subprocess
import sys

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odrive.core.kv_pages import DecoderShape, kv_pages_fit, per_device_kv_pages
from odrive.errors import ConfigError
from odrive.models.config import LlamaConfig
from odrive.runtime.memory import plan_kv_pages
from sim.model_spec import MODEL_SPECS, get_model_spec, num_kv_pages


def llama_config(shape: DecoderShape) -> LlamaConfig:
    model_type = "qwen2" if shape.qkv_bias else "qwen3" if shape.qk_norm else "llama"
    return LlamaConfig(
        vocab_size=shape.vocab_size, hidden_size=shape.hidden_size, intermediate_size=shape.intermediate_size,
        num_hidden_layers=shape.num_layers, num_attention_heads=shape.num_q_heads,
        num_key_value_heads=shape.num_kv_heads, head_dim=shape.head_dim, tie_word_embeddings=shape.tie_word_embeddings,
        model_type=model_type, qkv_bias=shape.qkv_bias, qk_norm=shape.qk_norm,
    )  # fmt: skip


def test_the_core_imports_neither_jax_nor_the_simulator() -> None:
    code = "import sys, odrive.core.kv_pages; print([m for m in sys.modules if m.split('.')[0] in ('jax', 'sim')])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_pages_fit_formula_and_errors() -> None:
    assert kv_pages_fit(device_bytes=1000, hbm_utilization=0.5, weight_bytes=100, page_bytes=30) == 13
    with pytest.raises(ConfigError, match=r"no KV pages fit for x: .*weights need 500 bytes"):
        kv_pages_fit(device_bytes=1000, hbm_utilization=0.5, weight_bytes=500, page_bytes=30, what="for x")
    with pytest.raises(ConfigError, match="at least 2 needed"):
        kv_pages_fit(device_bytes=1000, hbm_utilization=0.5, weight_bytes=450, page_bytes=30, min_pages=2)
    for bad in (0.0, 1.5, float("nan")):
        with pytest.raises(ConfigError, match="hbm_utilization"):
            kv_pages_fit(device_bytes=1000, hbm_utilization=bad, weight_bytes=0, page_bytes=30)
    with pytest.raises(ConfigError, match="page_size"):
        per_device_kv_pages(get_model_spec("tiny-bench").decoder, device_bytes=10**9, hbm_utilization=0.5,
                            page_size=0, dtype_bytes=2)  # fmt: skip
    with pytest.raises(ConfigError, match="tensor parallel size"):
        get_model_spec("tiny-bench").decoder.weight_split(0)


@pytest.mark.parametrize(
    "name", ["llama-2-7b", "llama-3-8b", "llama-3-70b", "tiny-bench", "qwen2.5-7b", "qwen3-8b", "smollm2-135m"]
)
@pytest.mark.parametrize("tp", [1, 2, 4, 8])
def test_the_layout_is_the_real_engines(name: str, tp: int) -> None:
    # The real engine derives its per-device bytes from the PartitionSpecs it shards with; the core's formula
    # (which the simulator uses) must give the same number for every model and tp the engine accepts.
    from odrive.parallel import check_tp, per_device_weight_bytes

    spec = get_model_spec(name)
    config = llama_config(spec.decoder)
    try:
        check_tp(config, tp)
    except ValueError:
        pytest.skip(f"the real engine refuses tp={tp} for {name}")
    assert per_device_weight_bytes(config, tp, "bfloat16") == spec.decoder.weight_bytes_per_device(tp, 2)
    tied = llama_config(DecoderShape(2, 64, 4, 2, 16, 128, 96, tie_word_embeddings=True))
    if tp <= 2:
        assert per_device_weight_bytes(tied, tp, "float32") == DecoderShape(2, 64, 4, 2, 16, 128, 96, True) \
            .weight_bytes_per_device(tp, 4)  # fmt: skip


def test_simulator_and_real_engine_plan_the_same_pool() -> None:
    # One device of 80 GiB at 0.9: the real engine's plan (fed the model's per-device numbers) and the simulator's
    # page count are the same call.
    spec = get_model_spec("llama-3-8b")
    for tp in (1, 2, 4):
        plan = plan_kv_pages(
            weight_bytes=spec.decoder.weight_bytes_per_device(tp, 2), page_size=16, hbm_utilization=0.9,
            kv_bytes_per_token=spec.decoder.kv_bytes_per_token(2, tp), max_running=10**6, max_model_len=10**6,
            device_bytes=80 * 2**30, source="given",
        )  # fmt: skip
        assert plan.pages_fit == num_kv_pages(80 * 2**30, spec, 16, 0.9, tp=tp)


@settings(max_examples=100, deadline=None)
@given(
    name=st.sampled_from(sorted(MODEL_SPECS)),
    tp=st.sampled_from([1, 2, 3, 4, 8]),
    page_size=st.sampled_from([1, 16, 64]),
    gib=st.integers(8, 200),
)
def test_pages_never_overflow_the_device(name: str, tp: int, page_size: int, gib: int) -> None:
    spec = get_model_spec(name)
    decoder = spec.decoder
    weights = decoder.weight_bytes_per_device(tp, spec.dtype_bytes)
    page = page_size * decoder.kv_bytes_per_token(spec.dtype_bytes, tp)
    try:
        pages = num_kv_pages(gib * 2**30, spec, page_size, 0.9, tp=tp)
    except ConfigError:
        assert gib * 2**30 * 0.9 - weights < page
        return
    assert weights + pages * page <= gib * 2**30 * 0.9 < weights + (pages + 1) * page
    # Replicated embeddings: the weights on a device never shrink below the table, and never grow with tp.
    assert weights >= decoder.vocab_size * decoder.hidden_size * spec.dtype_bytes
    assert weights <= decoder.weight_bytes_per_device(1, spec.dtype_bytes)
    assert math.ceil(decoder.num_kv_heads / tp) * decoder.head_dim * 2 * decoder.num_layers * spec.dtype_bytes == (
        decoder.kv_bytes_per_token(spec.dtype_bytes, tp)
    )


@pytest.mark.parametrize("name", ["llama-2-7b", "tiny-bench", "qwen2.5-7b", "qwen3-8b", "smollm2-135m"])
def test_the_real_config_feeds_the_core_shape(name: str) -> None:
    # One home for the byte counts: LlamaConfig's parameter and K/V sizes are the core DecoderShape's.
    shape = get_model_spec(name).decoder
    config = llama_config(shape)
    assert config.decoder_shape == shape
    assert config.num_parameters() == shape.num_parameters
    assert config.kv_bytes_per_token("bfloat16") == shape.kv_bytes_per_token(2)
