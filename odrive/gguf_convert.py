"""A GGUF file written out once as a Hugging Face checkpoint folder, so one loader serves both formats.

The folder (``$ODRIVE_CACHE_DIR`` or ``~/.cache/odrive``, ``gguf/<name>-<key>/``, keyed by the GGUF's path, size and
modification time) holds:

* ``config.json`` from the GGUF header, and the tokenizer (``tokenizer.json``, ``tokenizer_config.json`` with the
  special tokens and chat template, ``generation_config.json``) rebuilt by ``odrive.gguf_tokenizer``: the header part,
  written on first use (reading a large vocabulary's header takes seconds);
* ``model.safetensors``: every tensor dequantized to float32 by the ``gguf`` package (~10 s for SmolLM2-135M on a
  2-core CPU), in HF names and orientation. llama.cpp's converter reorders the rows of Llama Q and K projections
  (per head, the two rotary halves interleaved); :func:`unpermute_rows` restores HF order. Qwen files are unpermuted.

Each file is written to a temporary name and renamed, so concurrent or interrupted loads never see half a file.
"""

from __future__ import annotations

import hashlib
import json
import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np
from safetensors.numpy import save_file

from odrive.gguf_file import GGUFError, GGUFFile
from odrive.gguf_tokenizer import gguf_tokenizer_files

HEADER_FILES = ("config.json", "tokenizer.json", "tokenizer_config.json", "generation_config.json")
WEIGHTS_FILE = "model.safetensors"

# GGUF tensor name (per layer after "blk.{i}.") -> HF name (after "model.layers.{i}.")
_TOP_LEVEL = {
    "token_embd.weight": "model.embed_tokens.weight",
    "output_norm.weight": "model.norm.weight",
    "output.weight": "lm_head.weight",
}
_PER_LAYER = {
    "attn_norm.weight": "input_layernorm.weight",
    "attn_q.weight": "self_attn.q_proj.weight",
    "attn_k.weight": "self_attn.k_proj.weight",
    "attn_v.weight": "self_attn.v_proj.weight",
    "attn_output.weight": "self_attn.o_proj.weight",
    "attn_q.bias": "self_attn.q_proj.bias",
    "attn_k.bias": "self_attn.k_proj.bias",
    "attn_v.bias": "self_attn.v_proj.bias",
    "attn_q_norm.weight": "self_attn.q_norm.weight",
    "attn_k_norm.weight": "self_attn.k_norm.weight",
    "ffn_norm.weight": "post_attention_layernorm.weight",
    "ffn_gate.weight": "mlp.gate_proj.weight",
    "ffn_up.weight": "mlp.up_proj.weight",
    "ffn_down.weight": "mlp.down_proj.weight",
}
_PERMUTED_ARCHITECTURES = ("llama",)


def cache_root() -> Path:
    """Where converted GGUF files live: ``$ODRIVE_CACHE_DIR/gguf`` or ``~/.cache/odrive/gguf``."""
    return Path(os.environ.get("ODRIVE_CACHE_DIR") or Path.home() / ".cache" / "odrive") / "gguf"


def converted_folder(gguf_path: Path, *, weights: bool = True) -> Path:
    """The HF checkpoint folder for ``gguf_path``, converting what is missing (with ``weights``: the tensors too)."""
    folder = _folder_for(gguf_path)
    need_header = not all((folder / name).is_file() for name in HEADER_FILES)
    need_weights = weights and not (folder / WEIGHTS_FILE).is_file()
    if need_header or need_weights:
        gguf = GGUFFile.open(gguf_path)
        folder.mkdir(parents=True, exist_ok=True)
        if need_header:
            write_header_files(gguf, folder)
        if need_weights:
            _write_atomically(folder / WEIGHTS_FILE, lambda tmp: save_file(hf_tensors(gguf), str(tmp)))
    return folder


def write_header_files(gguf: GGUFFile, folder: Path) -> None:
    """``config.json`` and the tokenizer files of ``gguf`` into ``folder`` (config last: it marks completeness)."""
    config = gguf.hf_config()
    tokenizer, tokenizer_config, generation_config = gguf_tokenizer_files(gguf)
    _write_atomically(folder / "tokenizer.json", lambda tmp: tokenizer.save(str(tmp)))
    _write_json(folder / "tokenizer_config.json", tokenizer_config)
    _write_json(folder / "generation_config.json", generation_config)
    _write_json(folder / "config.json", config)


def hf_tensors(gguf: GGUFFile) -> dict[str, np.ndarray]:
    """Every tensor of ``gguf`` dequantized to float32 under its HF name, Q/K rows in HF order."""
    config = gguf.hf_config()
    heads = {"attn_q.weight": config["num_attention_heads"], "attn_k.weight": config["num_key_value_heads"]}
    permuted = gguf.architecture in _PERMUTED_ARCHITECTURES
    out: dict[str, np.ndarray] = {}
    for name in gguf.tensor_names():
        hf_name, layer_suffix = _hf_name(name)
        array = gguf.tensor(name)
        if permuted and layer_suffix in heads:
            array = unpermute_rows(array, heads[layer_suffix])
        out[hf_name] = np.ascontiguousarray(array)
    return out


def unpermute_rows(weight: np.ndarray, num_heads: int) -> np.ndarray:
    """Undo llama.cpp's Q/K row order: per head, rows ``(i, half)`` back to ``(half, i)`` (HF ``rotate_half``)."""
    rows = weight.shape[0]
    if rows % (2 * num_heads):
        raise GGUFError(f"cannot un-permute {rows} rows over {num_heads} heads (need an even head size)")
    grouped = weight.reshape(num_heads, rows // num_heads // 2, 2, *weight.shape[1:])
    return grouped.swapaxes(1, 2).reshape(weight.shape)


def _hf_name(name: str) -> tuple[str, str | None]:
    """``(HF name, per-layer GGUF suffix or None)``; a GGUFError for a tensor this decoder does not know."""
    if name in _TOP_LEVEL:
        return _TOP_LEVEL[name], None
    parts = name.split(".", 2)
    if len(parts) == 3 and parts[0] == "blk" and parts[1].isdigit() and parts[2] in _PER_LAYER:
        return f"model.layers.{parts[1]}.{_PER_LAYER[parts[2]]}", parts[2]
    raise GGUFError(f"GGUF tensor {name!r} has no place in the supported decoders (llama, qwen2, qwen3)")


def _folder_for(gguf_path: Path) -> Path:
    path = gguf_path.resolve()
    stat = path.stat()
    key = hashlib.sha256(f"{path}|{stat.st_size}|{stat.st_mtime_ns}".encode()).hexdigest()[:16]
    return cache_root() / f"{path.stem}-{key}"


def _write_json(path: Path, data: dict[str, Any]) -> None:
    _write_atomically(path, lambda tmp: tmp.write_text(json.dumps(data, indent=2) + "\n"))


def _write_atomically(path: Path, write: Callable[[Path], Any]) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.partial")
    try:
        write(tmp)
        tmp.replace(path)
    finally:
        tmp.unlink(missing_ok=True)
