"""Write tiny GGUF files the way llama.cpp's ``convert_hf_to_gguf.py`` does, from a tiny random checkpoint.

Not a test module: the GGUF tests build their files with it at run time (nothing is downloaded). Tensor names
come from the ``gguf`` package's own HF -> GGUF name map; Llama Q/K rows are permuted as llama.cpp's converter
permutes them (``LlamaModel.permute``: per head, the two rotary halves interleaved row by row); 1-D tensors stay
F32 and matrices are F32 or quantized by the ``gguf`` package (Q8_0), as ``llama-quantize`` leaves norms alone.
"""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import gguf
import numpy as np
from checkpoints import CHAT_TEMPLATE, build_tiny_checkpoint
from safetensors.numpy import load_file

ARCHES = {"llama": gguf.MODEL_ARCH.LLAMA, "qwen2": gguf.MODEL_ARCH.QWEN2, "qwen3": gguf.MODEL_ARCH.QWEN3}
PRE_TOKENIZER = {"llama": "gpt-2", "qwen2": "qwen2", "qwen3": "qwen2"}  # how the tiny tokenizer splits (see below)
_NORMAL, _CONTROL = 1, 3  # llama.cpp token types
RAW_ONLY = ("Q8_1",)  # types the gguf package can neither quantize nor dequantize


def llama_cpp_permute(weights: np.ndarray, n_head: int) -> np.ndarray:
    """llama.cpp's ``LlamaModel.permute`` (Q with the query heads, K with the KV heads)."""
    rows = weights.shape[0]
    return weights.reshape(n_head, 2, rows // n_head // 2, *weights.shape[1:]).swapaxes(1, 2).reshape(weights.shape)


def write_tiny_gguf(
    path: str | Path,
    *,
    arch: str = "llama",
    tensor_type: str = "F32",
    seed: int = 0,
    tie_word_embeddings: bool = False,
    **checkpoint_kwargs: object,
) -> Path:
    """A GGUF file at ``path`` holding a tiny random ``arch`` model ("llama", "qwen2" with q/k/v biases, "qwen3"
    with q/k norms) and its byte-level BPE tokenizer, bos/eos ids and chat template. ``tensor_type``: "F32" or
    "Q8_0" for the matrices (or a ``RAW_ONLY`` type, whose bytes are random). ``checkpoint_kwargs`` go to
    ``build_tiny_checkpoint``, which builds the HF checkpoint converted here in a temporary folder.
    """
    with tempfile.TemporaryDirectory() as tmp:
        hf_dir = build_tiny_checkpoint(
            tmp, model_type=arch, seed=seed, tie_word_embeddings=tie_word_embeddings, **checkpoint_kwargs
        )
        config = json.loads((hf_dir / "config.json").read_text())
        tokenizer = json.loads((hf_dir / "tokenizer.json").read_text())
        tensors = load_file(str(next(hf_dir.glob("*.safetensors"))))
    writer = gguf.GGUFWriter(str(path), gguf.MODEL_ARCH_NAMES[ARCHES[arch]])
    _write_hparams(writer, config)
    _write_tokenizer(writer, tokenizer, arch)
    names = gguf.get_tensor_name_map(ARCHES[arch], config["num_hidden_layers"])
    for hf_name, array in tensors.items():
        name = names.get_name(hf_name, try_suffixes=(".weight", ".bias"))
        assert name is not None, hf_name
        if arch == "llama" and hf_name.endswith("q_proj.weight"):
            array = llama_cpp_permute(array, config["num_attention_heads"])
        if arch == "llama" and hf_name.endswith("k_proj.weight"):
            array = llama_cpp_permute(array, config["num_key_value_heads"])
        add_tensor(writer, name, array.astype(np.float32), tensor_type)
    _finish(writer)
    return Path(path)


def add_tensor(writer: gguf.GGUFWriter, name: str, array: np.ndarray, tensor_type: str) -> None:
    """``array`` as F32, or quantized to ``tensor_type`` when it is a matrix (norms and biases stay F32). A type the
    ``gguf`` package cannot quantize (``RAW_ONLY``, e.g. Q8_1) gets random bytes of the right size, written raw."""
    qtype = gguf.GGMLQuantizationType[tensor_type]
    if qtype == gguf.GGMLQuantizationType.F32 or array.ndim < 2:
        writer.add_tensor(name, array)
    elif tensor_type in RAW_ONLY:
        block, nbytes = gguf.GGML_QUANT_SIZES[qtype]
        rows, cols = array.shape
        raw = np.random.default_rng(0).integers(0, 256, (rows, cols // block * nbytes), dtype=np.uint8)
        writer.add_tensor(name, raw, raw_dtype=qtype)
    else:
        writer.add_tensor(name, gguf.quants.quantize(array, qtype), raw_dtype=qtype)


def write_header_only_gguf(path: str | Path, architecture: str) -> Path:
    """A GGUF file whose header names ``architecture`` (e.g. "falcon") and holds one small F32 tensor."""
    writer = gguf.GGUFWriter(str(path), architecture)
    writer.add_block_count(1)
    writer.add_tensor("token_embd.weight", np.zeros((8, 4), np.float32))
    _finish(writer)
    return Path(path)


def _finish(writer: gguf.GGUFWriter) -> None:
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_hparams(writer: gguf.GGUFWriter, config: dict) -> None:
    heads = config["num_attention_heads"]
    head_dim = config.get("head_dim") or config["hidden_size"] // heads
    writer.add_name("tiny")
    writer.add_vocab_size(config["vocab_size"])
    writer.add_context_length(config["max_position_embeddings"])
    writer.add_embedding_length(config["hidden_size"])
    writer.add_feed_forward_length(config["intermediate_size"])
    writer.add_block_count(config["num_hidden_layers"])
    writer.add_head_count(heads)
    writer.add_head_count_kv(config["num_key_value_heads"])
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_rope_dimension_count(head_dim)
    writer.add_rope_freq_base(config["rope_theta"])
    writer.add_layer_norm_rms_eps(config["rms_norm_eps"])


def _write_tokenizer(writer: gguf.GGUFWriter, tokenizer: dict, arch: str) -> None:
    """The tiny checkpoint's byte-level BPE as llama.cpp stores one: tokens by id, merges, types, special ids.

    The tiny tokenizer was trained on GPT-2's split (``pre`` "gpt-2"); the Qwen files name Qwen2's split, as real
    Qwen files do (it isolates digits: other ids for numbers, the same in every loader that honours ``pre``)."""
    vocab: dict[str, int] = tokenizer["model"]["vocab"]
    tokens = sorted(vocab, key=vocab.__getitem__)
    special = {t["content"] for t in tokenizer["added_tokens"] if t["special"]}
    merges = [m if isinstance(m, str) else " ".join(m) for m in tokenizer["model"]["merges"]]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre(PRE_TOKENIZER[arch])
    writer.add_token_list(tokens)
    writer.add_token_merges(merges)
    writer.add_token_types([_CONTROL if t in special else _NORMAL for t in tokens])
    writer.add_bos_token_id(vocab["<s>"])
    writer.add_eos_token_id(vocab["</s>"])
    writer.add_add_bos_token(True)
    writer.add_chat_template(CHAT_TEMPLATE)
