"""Accelerator presets, model specs and the KV-page budget."""

from __future__ import annotations

import dataclasses
import math

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.hardware import ACCELERATORS, get_accelerator, register_accelerator
from sim.model_spec import (
    MODEL_SPECS,
    ModelSpec,
    causal_attention_pairs,
    get_model_spec,
    num_kv_pages,
    register_model_spec,
)

GiB = 2**30


def test_h100_preset_matches_datasheet() -> None:
    h100 = get_accelerator("h100-80gb")
    assert h100.hbm_bytes == 80 * GiB
    assert h100.hbm_bandwidth == pytest.approx(3.35e12)
    assert h100.peak_flops("bf16") == pytest.approx(989.4e12)
    assert h100.peak_flops("fp16") == h100.peak_flops("bfloat16")
    assert h100.peak_flops("fp32") == pytest.approx(67e12)
    assert 0 <= h100.step_overhead_s < 1e-3


@pytest.mark.parametrize("name", ["h100-80gb", "a100-80gb", "tpu-v5e", "cpu-2core"])
def test_presets_are_sane(name: str) -> None:
    acc = ACCELERATORS[name]
    assert acc.name == name
    assert acc.peak_flops("bf16") >= acc.peak_flops("fp32") > 0
    assert acc.hbm_bandwidth > 0 and acc.host_bandwidth > 0 and acc.interconnect_bandwidth > 0
    assert acc.hbm_bytes >= 16 * GiB
    # Ridge point (FLOPs per byte where compute and memory time meet) is plausible.
    assert 10 < acc.peak_flops("bf16") / acc.hbm_bandwidth < 1000


def test_preset_ordering() -> None:
    h100, a100, cpu = (get_accelerator(n) for n in ("h100-80gb", "a100-80gb", "cpu-2core"))
    assert h100.peak_flops() > a100.peak_flops() > cpu.peak_flops()
    assert h100.hbm_bandwidth > a100.hbm_bandwidth > cpu.hbm_bandwidth


def test_unknown_accelerator_lists_names() -> None:
    with pytest.raises(KeyError, match="h100-80gb.*tpu-v5e|tpu-v5e.*h100-80gb"):
        get_accelerator("h200")


def test_unknown_dtype() -> None:
    with pytest.raises(ValueError, match="int4"):
        get_accelerator("h100-80gb").peak_flops("int4")


def test_register_accelerator() -> None:
    base = get_accelerator("a100-80gb")
    custom = dataclasses.replace(base, name="test-a100-40gb", hbm_bytes=40 * GiB)
    assert register_accelerator(custom) is custom
    assert get_accelerator("test-a100-40gb") is custom
    register_accelerator(custom)  # re-registering the same spec is harmless
    other = dataclasses.replace(custom, hbm_bandwidth=1.5e12)
    with pytest.raises(ValueError, match="already registered"):
        register_accelerator(other)
    register_accelerator(other, overwrite=True)
    assert ACCELERATORS["test-a100-40gb"].hbm_bandwidth == 1.5e12


def test_accelerator_validation() -> None:
    with pytest.raises(ValueError, match="hbm_bandwidth"):
        dataclasses.replace(get_accelerator("h100-80gb"), hbm_bandwidth=0)
    with pytest.raises(ValueError, match="step_overhead_s"):
        dataclasses.replace(get_accelerator("h100-80gb"), step_overhead_s=-1.0)


@pytest.mark.parametrize(
    ("name", "params"),
    [
        ("llama-2-7b", 6_738_415_616),
        ("llama-2-13b", 13_015_864_320),
        ("llama-3-8b", 8_030_261_248),
        ("llama-3-70b", 70_553_706_496),
    ],
)
def test_parameter_counts_match_published(name: str, params: int) -> None:
    spec = get_model_spec(name)
    assert spec.num_parameters == params
    assert spec.weight_bytes == 2 * params


def test_kv_bytes() -> None:
    assert get_model_spec("llama-2-7b").kv_bytes_per_token == 2 * 32 * 32 * 128 * 2  # 512 KiB
    assert get_model_spec("llama-3-8b").kv_bytes_per_token == 2 * 32 * 8 * 128 * 2  # 128 KiB
    assert get_model_spec("llama-3-8b").kv_bytes_per_page(16) == 16 * 131072
    with pytest.raises(ValueError):
        get_model_spec("llama-3-8b").kv_bytes_per_page(0)


def test_tiny_bench() -> None:
    tiny = get_model_spec("tiny-bench")
    assert (tiny.num_layers, tiny.hidden_size, tiny.intermediate_size, tiny.vocab_size) == (4, 256, 512, 1024)
    assert (tiny.num_q_heads, tiny.num_kv_heads, tiny.head_dim, tiny.dtype_bytes) == (2, 2, 128, 2)
    assert tiny.kv_bytes_per_token == 2 * 4 * 2 * 128 * 2


def test_linear_flops_exclude_embeddings_and_head() -> None:
    spec = get_model_spec("llama-2-7b")
    embeddings = 2 * spec.vocab_size * spec.hidden_size
    norms = (2 * spec.num_layers + 1) * spec.hidden_size
    assert spec.linear_flops_per_token == 2 * (spec.num_parameters - embeddings - norms)
    assert spec.lm_head_flops_per_token == 2 * 4096 * 32000
    tied = dataclasses.replace(spec, name="tied", tie_word_embeddings=True)
    assert tied.num_parameters == spec.num_parameters - spec.vocab_size * spec.hidden_size
    assert tied.linear_flops_per_token == spec.linear_flops_per_token


def test_attention_flops() -> None:
    spec = get_model_spec("llama-3-8b")
    per_pair = 4 * 32 * 32 * 128
    assert spec.attention_flops(1, 1000) == per_pair * 1000  # decode sees the whole context
    assert spec.attention_flops(4, 4) == per_pair * (1 + 2 + 3 + 4)  # causal triangle
    assert spec.attention_flops(2, 10) == per_pair * (9 + 10)
    assert spec.attention_flops(0, 10) == 0
    with pytest.raises(ValueError):
        spec.attention_flops(5, 4)


@given(st.lists(st.integers(1, 300), min_size=1, max_size=8))
def test_chunked_prefill_pairs_add_up(chunks: list[int]) -> None:
    total, pairs = 0, 0
    for chunk in chunks:
        total += chunk
        pairs += causal_attention_pairs(chunk, total)
    assert pairs == total * (total + 1) // 2


def test_model_spec_validation() -> None:
    with pytest.raises(ValueError, match="multiple"):
        ModelSpec("bad", 2, 64, num_q_heads=3, num_kv_heads=2, head_dim=32, intermediate_size=64, vocab_size=8)
    with pytest.raises(ValueError, match="num_layers"):
        ModelSpec("bad", 0, 64, num_q_heads=2, num_kv_heads=2, head_dim=32, intermediate_size=64, vocab_size=8)


def test_from_hf_config() -> None:
    config = {
        "_name_or_path": "meta-llama/Meta-Llama-3-8B",
        "hidden_size": 4096,
        "intermediate_size": 14336,
        "num_attention_heads": 32,
        "num_hidden_layers": 32,
        "num_key_value_heads": 8,
        "vocab_size": 128256,
        "torch_dtype": "bfloat16",
        "tie_word_embeddings": False,
    }
    spec = ModelSpec.from_hf_config(config)
    assert spec.name == "meta-llama/Meta-Llama-3-8B"
    assert spec == dataclasses.replace(get_model_spec("llama-3-8b"), name=spec.name)
    mha = ModelSpec.from_hf_config({**config, "num_key_value_heads": None, "torch_dtype": "float32"}, name="x")
    assert (mha.name, mha.num_kv_heads, mha.head_dim, mha.dtype_bytes) == ("x", 32, 128, 4)
    explicit = ModelSpec.from_hf_config({**config, "head_dim": 64}, dtype_bytes=1)
    assert (explicit.head_dim, explicit.dtype_bytes) == (64, 1)
    with pytest.raises(ValueError, match="vocab_size"):
        ModelSpec.from_hf_config({k: v for k, v in config.items() if k != "vocab_size"})
    with pytest.raises(ValueError, match="int3"):
        ModelSpec.from_hf_config({**config, "torch_dtype": "int3"})


def test_model_registry() -> None:
    assert {"llama-2-7b", "llama-2-13b", "llama-3-8b", "llama-3-70b", "tiny-bench"} <= set(MODEL_SPECS)
    with pytest.raises(KeyError, match="tiny-bench"):
        get_model_spec("gpt-5")
    spec = dataclasses.replace(get_model_spec("tiny-bench"), name="test-tiny-2", num_layers=2)
    register_model_spec(spec)
    assert get_model_spec("test-tiny-2") is spec
    with pytest.raises(ValueError, match="already registered"):
        register_model_spec(dataclasses.replace(spec, num_layers=3))


def test_num_kv_pages_formula() -> None:
    h100, llama = get_accelerator("h100-80gb"), get_model_spec("llama-2-7b")
    expected = math.floor((80 * GiB * 0.9 - 13_476_831_232) / (16 * 524_288))
    assert num_kv_pages(h100, llama, 16, 0.9) == expected == 7609
    assert num_kv_pages(h100, llama, 16, 1.0) == (80 * GiB - 13_476_831_232) // (16 * 524_288)
    # A measured byte count works in place of an accelerator.
    assert num_kv_pages(70 * GiB, llama, 32, 0.5) == math.floor((35 * GiB - 13_476_831_232) / (32 * 524_288))


@given(
    hbm_gib=st.integers(1, 200),
    utilization=st.floats(0.05, 1.0),
    page_size=st.sampled_from([1, 8, 16, 32, 128]),
    model=st.sampled_from(["tiny-bench", "llama-2-7b", "llama-3-8b"]),
)
def test_num_kv_pages_matches_formula(hbm_gib: int, utilization: float, page_size: int, model: str) -> None:
    spec = get_model_spec(model)
    hbm = hbm_gib * GiB
    expected = math.floor((hbm * utilization - spec.weight_bytes) / spec.kv_bytes_per_page(page_size))
    if expected < 1:
        with pytest.raises(ValueError):
            num_kv_pages(hbm, spec, page_size, utilization)
    else:
        pages = num_kv_pages(hbm, spec, page_size, utilization)
        assert pages == expected
        assert spec.weight_bytes + pages * spec.kv_bytes_per_page(page_size) <= hbm * utilization


def test_num_kv_pages_errors() -> None:
    h100 = get_accelerator("h100-80gb")
    with pytest.raises(ValueError, match=r"weights need 141107412992 bytes"):
        num_kv_pages(h100, get_model_spec("llama-3-70b"), 16, 0.9)
    for bad in (0.0, -0.1, 1.01, float("nan")):
        with pytest.raises(ValueError, match="hbm_utilization"):
            num_kv_pages(h100, get_model_spec("llama-2-7b"), 16, bad)
    with pytest.raises(ValueError, match="page_size"):
        num_kv_pages(h100, get_model_spec("llama-2-7b"), 0, 0.9)
