"""A GGUF model file read with ggml's own Python reader (the ``gguf`` package): header, tokenizer fields, tensors.

Numpy only (no JAX): the simulator reads a GGUF's shapes through ``hf_config()``, the real backend its weights
through ``tensor()`` and ``odrive.models.gguf_checkpoint``, the processor its vocabulary through ``field()``.
"""

from __future__ import annotations

import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np

from odrive.errors import ModelSourceError

# GGUF ``general.architecture`` -> HF model_type.
GGUF_ARCHITECTURES = {"llama": "llama", "qwen2": "qwen2", "qwen3": "qwen3"}


class GGUFError(ModelSourceError):
    """A GGUF file this project cannot load (truncated, unsupported architecture or tensor type, missing key)."""


@dataclass(frozen=True)
class GGUFTensor:
    """One stored tensor: its name, numpy shape (HF ``[out, in]`` orientation) and ggml type name."""

    name: str
    shape: tuple[int, ...]
    type_name: str


class GGUFFile:
    """An open GGUF file. Use :meth:`open`; fields and tensors are memory-mapped, read on demand."""

    def __init__(self, path: Path, reader: Any) -> None:
        self.path = path
        self._reader = reader
        self._tensors = {t.name: t for t in reader.tensors}

    @classmethod
    def open(cls, path: str | Path) -> GGUFFile:
        try:
            import gguf
        except ModuleNotFoundError as err:
            raise GGUFError(f"reading {path} needs the gguf package: pip install gguf (or 'odrive[models]')") from err
        path = Path(path)
        try:
            reader = gguf.GGUFReader(str(path))
        except (ValueError, IndexError, KeyError, OSError, EOFError, struct.error) as err:
            raise GGUFError(f"{path} is not a readable GGUF file (truncated or corrupt): {err}") from err
        return cls(path, reader)

    # ------------------------------------------------------------------ header
    @property
    def architecture(self) -> str:
        return str(self.field("general.architecture"))

    def field(self, key: str, default: Any = ...) -> Any:
        """The value of metadata ``key`` (strings decoded, arrays as lists); ``default`` if absent, else GGUFError."""
        field = self._reader.fields.get(key)
        if field is None:
            if default is ...:
                raise GGUFError(f"{self.path} lacks the GGUF key {key!r}")
            return default
        return field.contents()

    def hf_config(self) -> dict[str, Any]:
        """The model's hyper-parameters as a HF ``config.json`` dict (weights dequantize to float32).

        llama.cpp writes Mistral as architecture "llama" with an ``attention.sliding_window`` key.
        """
        arch = self.architecture
        if arch not in GGUF_ARCHITECTURES:
            raise GGUFError(
                f"{self.path}: GGUF architecture {arch!r} is not supported; supported: {sorted(GGUF_ARCHITECTURES)}"
            )
        heads = int(self.field(f"{arch}.attention.head_count"))
        hidden = int(self.field(f"{arch}.embedding_length"))
        tokens = self.field("tokenizer.ggml.tokens", None)
        vocab = self.field(f"{arch}.vocab_size", None) or (len(tokens) if tokens else None)
        if vocab is None:
            vocab = self.tensor_info("token_embd.weight").shape[0]
        config: dict[str, Any] = {
            "model_type": GGUF_ARCHITECTURES[arch],
            "_name_or_path": str(self.field("general.name", self.path.stem)),
            "vocab_size": int(vocab),
            "hidden_size": hidden,
            "intermediate_size": int(self.field(f"{arch}.feed_forward_length")),
            "num_hidden_layers": int(self.field(f"{arch}.block_count")),
            "num_attention_heads": heads,
            "num_key_value_heads": int(self.field(f"{arch}.attention.head_count_kv", heads)),
            "head_dim": int(self.field(f"{arch}.attention.key_length", hidden // heads)),
            "rms_norm_eps": float(self.field(f"{arch}.attention.layer_norm_rms_epsilon", 1e-6)),
            "rope_theta": float(self.field(f"{arch}.rope.freq_base", 10000.0)),
            "max_position_embeddings": int(self.field(f"{arch}.context_length", 2048)),
            "tie_word_embeddings": "output.weight" not in self._tensors,
            "bos_token_id": self.field("tokenizer.ggml.bos_token_id", None),
            "eos_token_id": self.field("tokenizer.ggml.eos_token_id", None),
            "torch_dtype": "float32",
        }
        scaling = self.field(f"{arch}.rope.scaling.type", "none")
        if scaling not in ("none", "linear"):
            raise GGUFError(f"{self.path}: rope scaling {scaling!r} is not supported (only none and linear)")
        if scaling == "linear":
            config["rope_scaling"] = {"rope_type": "linear", "factor": float(self.field(f"{arch}.rope.scaling.factor"))}
        window = self.field(f"{arch}.attention.sliding_window", None)
        if window:
            config.update(model_type="mistral", sliding_window=int(window))
        return config

    # ------------------------------------------------------------------ tensors
    def tensor_names(self) -> list[str]:
        return list(self._tensors)

    def has_tensor(self, name: str) -> bool:
        return name in self._tensors

    def tensor_info(self, name: str) -> GGUFTensor:
        t = self._get(name)
        return GGUFTensor(name=name, shape=tuple(int(n) for n in reversed(t.shape)), type_name=t.tensor_type.name)

    def tensor(self, name: str) -> np.ndarray:
        """Tensor ``name`` dequantized to float32, in numpy (HF ``[out, in]``) orientation."""
        from gguf import quants

        t = self._get(name)
        try:
            array = quants.dequantize(t.data, t.tensor_type)
        except (NotImplementedError, quants.QuantError) as err:
            raise GGUFError(
                f"{self.path}: tensor {name!r} has type {t.tensor_type.name}, which the gguf package cannot "
                f"dequantize: {err}"
            ) from err
        expected = tuple(int(n) for n in reversed(t.shape))
        if array.shape != expected:
            array = array.reshape(expected)
        return np.asarray(array, dtype=np.float32)

    def _get(self, name: str) -> Any:
        t = self._tensors.get(name)
        if t is None:
            raise GGUFError(f"{self.path} has no tensor {name!r}")
        return t
