"""HF-format checkpoint save/load: round trips, sharding, tied embeddings, dtypes, clear errors."""

from __future__ import annotations

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from checkpoints import build_tiny_checkpoint
from safetensors.numpy import load_file, save_file

from odrive.models import (
    CheckpointError,
    LlamaConfig,
    Model,
    init_params,
    load_model,
    make_dense_forward,
    param_shapes,
    save_model,
)

CONFIG = LlamaConfig(
    vocab_size=96,
    hidden_size=32,
    intermediate_size=48,
    num_hidden_layers=2,
    num_attention_heads=4,
    num_key_value_heads=2,
)


@pytest.fixture(scope="module")
def params():
    return init_params(CONFIG, jax.random.key(1))


def _assert_params_equal(a, b):
    assert jax.tree.structure(a) == jax.tree.structure(b)
    for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
        assert x.dtype == y.dtype and x.shape == y.shape
        np.testing.assert_array_equal(np.asarray(x, np.float32), np.asarray(y, np.float32))


def test_round_trip_equals_in_memory_params(tmp_path, params):
    save_model((CONFIG, params), tmp_path)
    model = load_model(tmp_path)
    assert isinstance(model, Model) and model.config == CONFIG and model.path == tmp_path
    assert model.dtype == jnp.float32
    _assert_params_equal(model.params, params)
    # Saving a Model object gives a byte-identical tensor file.
    save_model(model, tmp_path / "again")
    assert (tmp_path / "again" / "model.safetensors").read_bytes() == (tmp_path / "model.safetensors").read_bytes()


def test_hf_layout_names_and_orientation(tmp_path, params):
    save_model((CONFIG, params), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    assert tensors["model.layers.1.self_attn.k_proj.weight"].shape == (2 * 8, 32)  # [out, in]
    np.testing.assert_array_equal(
        tensors["model.layers.1.self_attn.k_proj.weight"], np.asarray(params["layers"][1]["wk"]).T
    )
    np.testing.assert_array_equal(tensors["lm_head.weight"], np.asarray(params["lm_head"]).T)
    assert len(tensors) == 3 + 9 * CONFIG.num_hidden_layers


def test_sharded_round_trip(tmp_path, params):
    save_model((CONFIG, params), tmp_path, max_shard_bytes=20_000)
    index = json.loads((tmp_path / "model.safetensors.index.json").read_text())
    shards = sorted(set(index["weight_map"].values()))
    assert len(shards) > 2 and not (tmp_path / "model.safetensors").exists()
    _assert_params_equal(load_model(tmp_path).params, params)


def test_multiple_files_without_index(tmp_path, params):
    save_model((CONFIG, params), tmp_path, max_shard_bytes=20_000)
    (tmp_path / "model.safetensors.index.json").unlink()
    _assert_params_equal(load_model(tmp_path).params, params)


def test_tied_embeddings(tmp_path):
    config = dataclasses.replace(CONFIG, tie_word_embeddings=True)
    params = init_params(config, jax.random.key(2))
    assert "lm_head" not in params
    save_model((config, params), tmp_path)
    assert "lm_head.weight" not in load_file(str(tmp_path / "model.safetensors"))
    model = load_model(tmp_path)
    _assert_params_equal(model.params, params)
    logits = make_dense_forward(config)(model.params, jnp.array([[1, 2, 3]], jnp.int32))
    assert logits.shape == (1, 3, 96)


def test_bfloat16_checkpoint(tmp_path, params):
    bf16 = jax.tree.map(lambda x: x.astype(jnp.bfloat16), params)
    save_model((CONFIG, bf16), tmp_path)
    assert json.loads((tmp_path / "config.json").read_text())["torch_dtype"] == "bfloat16"
    model = load_model(tmp_path)
    assert model.dtype == jnp.bfloat16 and model.config.torch_dtype == "bfloat16"
    _assert_params_equal(model.params, bf16)
    as_f32 = load_model(tmp_path, dtype="float32")
    _assert_params_equal(as_f32.params, jax.tree.map(lambda x: x.astype(jnp.float32), bf16))


def test_float16_tensors_and_dtype_override(tmp_path, params):
    f16 = jax.tree.map(lambda x: x.astype(jnp.float16), params)
    save_model((CONFIG, f16), tmp_path)
    model = load_model(tmp_path, dtype=jnp.bfloat16)
    assert model.params["embed"].dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(model.params["embed"], np.float32), np.asarray(params["embed"]), atol=1e-2)


def test_extra_tensors_are_ignored(tmp_path, params):
    save_model((CONFIG, params), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    tensors["model.layers.0.self_attn.rotary_emb.inv_freq"] = np.ones(4, np.float32)
    save_file(tensors, str(tmp_path / "model.safetensors"))
    _assert_params_equal(load_model(tmp_path).params, params)


def test_missing_tensor_is_named(tmp_path, params):
    save_model((CONFIG, params), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["model.layers.1.mlp.up_proj.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match=r"'model\.layers\.1\.mlp\.up_proj\.weight' not found"):
        load_model(tmp_path)


def test_missing_lm_head_when_untied_is_named(tmp_path, params):
    save_model((CONFIG, params), tmp_path)
    tensors = load_file(str(tmp_path / "model.safetensors"))
    del tensors["lm_head.weight"]
    save_file(tensors, str(tmp_path / "model.safetensors"))
    with pytest.raises(CheckpointError, match="'lm_head.weight'"):
        load_model(tmp_path)


def test_shape_mismatch_names_tensor_and_shapes(tmp_path, params):
    save_model((CONFIG, params), tmp_path)
    cfg = json.loads((tmp_path / "config.json").read_text())
    cfg["intermediate_size"] = 64
    (tmp_path / "config.json").write_text(json.dumps(cfg))
    with pytest.raises(
        CheckpointError, match=r"'model\.layers\.0\.mlp\.gate_proj\.weight'.*\(48, 32\), expected \(64, 32\)"
    ):
        load_model(tmp_path)


def test_directory_and_file_errors(tmp_path, params):
    with pytest.raises(FileNotFoundError, match="missing' not found: no such file or directory"):
        load_model(tmp_path / "missing")
    with pytest.raises(FileNotFoundError, match="config.json not found"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps(CONFIG.to_hf_dict()))
    with pytest.raises(FileNotFoundError, match=r"no \*\.safetensors files"):
        load_model(tmp_path)
    save_model((CONFIG, params), tmp_path / "ckpt")
    with pytest.raises(FileExistsError):
        save_model((CONFIG, params), tmp_path / "ckpt")


def test_build_tiny_checkpoint_helper(tmp_path):
    path = build_tiny_checkpoint(
        tmp_path / "tiny",
        vocab_size=272,
        hidden_size=32,
        intermediate_size=48,
        tie_word_embeddings=True,
        dtype="bfloat16",
        max_shard_bytes=10_000,
    )
    model = load_model(path)
    assert model.config.tie_word_embeddings and model.dtype == jnp.bfloat16
    assert jax.tree.map(lambda x: x.shape, model.params) == param_shapes(model.config)
    assert (path / "tokenizer.json").is_file() and (path / "tokenizer_config.json").is_file()
