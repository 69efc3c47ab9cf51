"""LlamaConfig: HF parsing, round trips, derived sizes and clear validation errors."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from odrive.models import LlamaConfig, ModelConfigError, RopeScaling

LLAMA3_8B = {
    "architectures": ["LlamaForCausalLM"],
    "model_type": "llama",
    "vocab_size": 128256,
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "num_hidden_layers": 32,
    "num_attention_heads": 32,
    "num_key_value_heads": 8,
    "hidden_act": "silu",
    "max_position_embeddings": 131072,
    "rms_norm_eps": 1e-5,
    "rope_theta": 500000.0,
    "rope_scaling": {
        "factor": 8.0,
        "low_freq_factor": 1.0,
        "high_freq_factor": 4.0,
        "original_max_position_embeddings": 8192,
        "rope_type": "llama3",
    },
    "tie_word_embeddings": False,
    "bos_token_id": 128000,
    "eos_token_id": [128001, 128008, 128009],
    "torch_dtype": "bfloat16",
    "attention_bias": False,
    "mlp_bias": False,
    "use_cache": True,
}


def _tiny(**overrides) -> dict:
    d = {
        "vocab_size": 100,
        "hidden_size": 32,
        "intermediate_size": 64,
        "num_hidden_layers": 2,
        "num_attention_heads": 4,
        "num_key_value_heads": 2,
    }
    d.update(overrides)
    return d


def test_parse_llama3_8b():
    c = LlamaConfig.from_hf_dict(LLAMA3_8B)
    assert c.head_dim == 128 and c.num_queries_per_kv == 4
    assert c.rope_scaling == RopeScaling("llama3", 8.0, 1.0, 4.0, 8192)
    assert c.eos_token_id == (128001, 128008, 128009) and c.eos_token_ids == (128001, 128008, 128009)
    assert c.torch_dtype == "bfloat16"
    assert c.num_parameters() == 8_030_261_248
    assert c.kv_bytes_per_token() == 2 * 32 * 8 * 128 * 2  # bf16 default from torch_dtype
    assert c.kv_bytes_per_token(jnp.float32) == c.kv_bytes_per_token(np.dtype("float32")) == 2 * 32 * 8 * 128 * 4


def test_defaults_and_tied_parameter_count():
    c = LlamaConfig.from_hf_dict(_tiny(num_key_value_heads=None, tie_word_embeddings=True))
    assert c.num_key_value_heads == 4 and c.head_dim == 8 and c.rope_scaling is None
    untied = LlamaConfig.from_hf_dict(_tiny(num_key_value_heads=None))
    assert untied.num_parameters() - c.num_parameters() == 100 * 32
    assert c.eos_token_ids == (2,)


def test_hf_dict_and_json_round_trip(tmp_path):
    c = LlamaConfig.from_hf_dict(LLAMA3_8B)
    assert LlamaConfig.from_hf_dict(c.to_hf_dict()) == c
    path = tmp_path / "config.json"
    path.write_text(json.dumps(c.to_hf_dict()))
    assert LlamaConfig.from_json_file(path) == c


def test_transformers_v5_rope_parameters_and_dtype_key():
    d = _tiny(rope_parameters={"rope_type": "linear", "factor": 2.0, "rope_theta": 1234.0}, dtype="float16")
    c = LlamaConfig.from_hf_dict(d)
    assert c.rope_theta == 1234.0 and c.rope_scaling == RopeScaling("linear", 2.0)
    assert c.torch_dtype == "float16"
    default = LlamaConfig.from_hf_dict(_tiny(rope_parameters={"rope_type": "default", "rope_theta": 5.0}))
    assert default.rope_scaling is None and default.rope_theta == 5.0


def test_config_is_hashable_jit_static():
    c = LlamaConfig.from_hf_dict(LLAMA3_8B)
    assert hash(c) == hash(LlamaConfig.from_hf_dict(LLAMA3_8B))
    f = jax.jit(lambda cfg, x: x * cfg.num_hidden_layers, static_argnums=0)
    assert int(f(c, jnp.int32(2))) == 64


def test_mistral_without_sliding_window_is_accepted():
    d = _tiny(model_type="mistral", architectures=["MistralForCausalLM"], sliding_window=None)
    assert LlamaConfig.from_hf_dict(d).num_hidden_layers == 2


@pytest.mark.parametrize(
    ("overrides", "expected"),
    [
        ({"model_type": "mistral", "sliding_window": 16, "max_position_embeddings": 64}, {"sliding_window": 16}),
        ({"model_type": "mistral", "sliding_window": 4096, "max_position_embeddings": 64}, {"sliding_window": None}),
        ({"model_type": "qwen2", "architectures": ["Qwen2ForCausalLM"], "sliding_window": 32}, {"qkv_bias": True}),
        ({"model_type": "qwen3", "architectures": ["Qwen3ForCausalLM"]}, {"qk_norm": True, "qkv_bias": False}),
        ({"model_type": None, "architectures": ["Qwen3ForCausalLM"]}, {"model_type": "qwen3"}),
    ],
)
def test_qwen_and_mistral_configs(overrides, expected):
    config = LlamaConfig.from_hf_dict(_tiny(**overrides))
    assert {k: getattr(config, k) for k in expected} == expected
    again = LlamaConfig.from_hf_dict(config.to_hf_dict())  # written as transformers reads it, read back the same
    assert again == config


@pytest.mark.parametrize(
    ("overrides", "message"),
    [
        ({"num_key_value_heads": 3}, "divisible by num_key_value_heads"),
        ({"hidden_size": 30}, "not divisible by num_attention_heads"),
        ({"model_type": "qwen2", "use_sliding_window": True, "sliding_window": 8}, "use_sliding_window=true"),
        ({"model_type": "qwen3", "attention_bias": True}, "attention_bias=true"),
        ({"model_type": "gpt2"}, "unsupported architecture"),
        ({"architectures": ["GemmaForCausalLM"]}, "unsupported architecture"),
        ({"sliding_window": 16, "max_position_embeddings": 64}, "sliding_window=16 is not supported for model_type"),
        ({"model_type": "mistral", "layer_types": ["full_attention", "sliding_attention"]}, "hybrid"),
        ({"rope_scaling": {"rope_type": "yarn", "factor": 4.0}}, "unsupported rope_scaling type 'yarn'"),
        ({"rope_scaling": {"rope_type": "llama3", "factor": 8.0}}, "missing required field"),
        ({"hidden_act": "gelu"}, "hidden_act='gelu'"),
        ({"attention_bias": True}, "attention_bias=true"),
        ({"num_hidden_layers": 0}, "num_hidden_layers must be a positive integer"),
        ({"torch_dtype": "int8"}, "unsupported dtype"),
        ({"partial_rotary_factor": 0.5}, "partial_rotary_factor"),
    ],
)
def test_invalid_configs_have_clear_errors(overrides, message):
    with pytest.raises(ModelConfigError, match=message):
        LlamaConfig.from_hf_dict(_tiny(**overrides))


def test_missing_required_field_is_named():
    d = _tiny()
    del d["intermediate_size"]
    with pytest.raises(ModelConfigError, match="intermediate_size"):
        LlamaConfig.from_hf_dict(d)


def test_json_file_errors(tmp_path):
    with pytest.raises(FileNotFoundError, match="config file not found"):
        LlamaConfig.from_json_file(tmp_path / "nope.json")
    bad = tmp_path / "config.json"
    bad.write_text("{not json")
    with pytest.raises(ModelConfigError, match="not valid JSON"):
        LlamaConfig.from_json_file(bad)
