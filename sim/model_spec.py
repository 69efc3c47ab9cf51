"""Model architecture specs (Llama-style decoder: GQA attention + gated MLP), registered by name or read from a model.

Parameter counts: RMSNorm weights, a gated (SwiGLU) MLP with three ``hidden x intermediate`` matrices, bias-free
projections except Qwen2's q/k/v biases (``qkv_bias``), and Qwen3's per-head q/k norms (``qk_norm``) — the Llama,
Mistral, Qwen2 and Qwen3 families and the project's tiny model. :func:`get_model_spec` takes a preset's name, a HF
checkpoint folder (``config.json``), a GGUF file or a packaged model's name (``odrive.model_source``; no JAX).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odrive.core.kv_pages import DecoderShape, per_device_kv_pages
from odrive.core.registry import Registry
from odrive.errors import ModelNotFoundError, ModelSourceError, UnknownNameError
from odrive.model_source import PACKAGED_MODELS, read_hf_config
from sim.hardware import Accelerator

_HF_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "float32": 4, "bf16": 2, "fp16": 2, "fp32": 4}


def causal_attention_pairs(q_len: int, kv_len: int) -> int:
    """Query x key pairs of a causal chunk: ``q_len`` new tokens at the end of ``kv_len`` tokens.

    Query ``i`` (0-based) sees ``kv_len - q_len + i + 1`` keys; a decode (q_len 1) sees ``kv_len``.
    """
    if not 0 <= q_len <= kv_len:
        raise ValueError(f"need 0 <= q_len <= kv_len, got q_len={q_len}, kv_len={kv_len}")
    return q_len * (kv_len - q_len) + q_len * (q_len + 1) // 2


@dataclass(frozen=True)
class ModelSpec:
    """Shape of a decoder-only transformer; ``dtype_bytes`` applies to weights and KV cache."""

    name: str
    num_layers: int
    hidden_size: int
    num_q_heads: int
    num_kv_heads: int
    head_dim: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int = 2
    tie_word_embeddings: bool = False
    qkv_bias: bool = False  # Qwen2
    qk_norm: bool = False  # Qwen3
    sliding_window: int | None = None  # Mistral: a query attends to its last ``sliding_window`` positions

    def __post_init__(self) -> None:
        for field_name in (
            "num_layers",
            "hidden_size",
            "num_q_heads",
            "num_kv_heads",
            "head_dim",
            "intermediate_size",
            "vocab_size",
            "dtype_bytes",
        ):
            value = getattr(self, field_name)
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"model {self.name!r}: {field_name} must be a positive int, got {value!r}")
        if self.sliding_window is not None and (not isinstance(self.sliding_window, int) or self.sliding_window < 1):
            raise ValueError(f"model {self.name!r}: sliding_window must be a positive int or None")
        if self.num_q_heads % self.num_kv_heads:
            raise ValueError(
                f"model {self.name!r}: num_q_heads={self.num_q_heads} is not a multiple "
                f"of num_kv_heads={self.num_kv_heads}"
            )

    @property
    def decoder(self) -> DecoderShape:
        """The sizes the engine core sizes memory from (:mod:`odrive.core.kv_pages`, shared with the real engine)."""
        return DecoderShape(
            self.num_layers, self.hidden_size, self.num_q_heads, self.num_kv_heads, self.head_dim,
            self.intermediate_size, self.vocab_size, self.tie_word_embeddings, self.qkv_bias, self.qk_norm,
        )  # fmt: skip

    @property
    def layer_matmul_params(self) -> int:
        """Weights of one layer's matmuls: q, k, v, o projections and the gated MLP."""
        return self.decoder.layer_matmul_params

    @property
    def num_parameters(self) -> int:
        """All weights: embeddings, layers (matmuls, norms, biases), final norm, LM head."""
        return self.decoder.num_parameters

    @property
    def weight_bytes(self) -> int:
        return self.num_parameters * self.dtype_bytes

    @property
    def kv_bytes_per_token(self) -> int:
        """K and V for one token across all layers."""
        return self.decoder.kv_bytes_per_token(self.dtype_bytes)

    def kv_bytes_per_page(self, page_size: int) -> int:
        if page_size < 1:
            raise ValueError(f"page_size must be >= 1, got {page_size}")
        return page_size * self.kv_bytes_per_token

    @property
    def linear_flops_per_token(self) -> int:
        """2 x the layers' matmul weights: FLOPs per token, without embedding lookup or LM head."""
        return 2 * self.num_layers * self.layer_matmul_params

    @property
    def lm_head_flops_per_token(self) -> int:
        """FLOPs to turn one hidden state into logits (paid only for sampled tokens)."""
        return 2 * self.hidden_size * self.vocab_size

    @property
    def attention_flops_per_pair(self) -> int:
        """QK^T plus PV for one query x key pair, all heads and layers."""
        return 4 * self.num_layers * self.num_q_heads * self.head_dim

    def attention_flops(self, q_len: int, kv_len: int) -> int:
        """Attention FLOPs of a causal chunk of ``q_len`` new tokens ending a ``kv_len``-token context."""
        return self.attention_flops_per_pair * causal_attention_pairs(q_len, kv_len)

    @classmethod
    def from_hf_config(
        cls, config: Mapping[str, Any], name: str | None = None, dtype_bytes: int | None = None
    ) -> ModelSpec:
        """Build from a Hugging Face ``config.json`` dict (Llama-style keys; ``model_type`` qwen2 has q/k/v biases,
        qwen3 q/k norms, mistral a sliding window)."""
        model_type = config.get("model_type") or "llama"
        window = config.get("sliding_window") if model_type == "mistral" else None
        if window is not None and window >= config.get("max_position_embeddings", window + 1):
            window = None  # a window as long as any context changes nothing (as the real engine reads it)
        try:
            hidden = int(config["hidden_size"])
            q_heads = int(config["num_attention_heads"])
            spec_name = name or config.get("_name_or_path") or config.get("model_type") or "hf-model"
            if dtype_bytes is None:
                dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
                if dtype not in _HF_DTYPE_BYTES:
                    raise ValueError(f"unsupported torch_dtype {dtype!r}; pass dtype_bytes explicitly")
                dtype_bytes = _HF_DTYPE_BYTES[dtype]
            return cls(
                name=str(spec_name),
                num_layers=int(config["num_hidden_layers"]),
                hidden_size=hidden,
                num_q_heads=q_heads,
                num_kv_heads=int(config.get("num_key_value_heads") or q_heads),
                head_dim=int(config.get("head_dim") or hidden // q_heads),
                intermediate_size=int(config["intermediate_size"]),
                vocab_size=int(config["vocab_size"]),
                dtype_bytes=dtype_bytes,
                tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
                qkv_bias=model_type == "qwen2",
                qk_norm=model_type == "qwen3",
                sliding_window=None if window is None else int(window),
            )
        except KeyError as err:
            raise ValueError(f"HF config lacks required key {err.args[0]!r}") from None


def num_kv_pages(
    accelerator: Accelerator | int, model: ModelSpec, page_size: int, hbm_utilization: float, tp: int = 1
) -> int:
    """KV-cache pages that fit on one device: ``floor((hbm_bytes * hbm_utilization - weight_bytes) / page_bytes)``.

    ``accelerator`` may be an :class:`Accelerator` or a plain byte count (e.g. measured device memory). The formula
    is the real engine's (:func:`odrive.core.kv_pages.per_device_kv_pages`); with ``tp > 1`` it is per device, with
    the weights split as the real engine shards them (matmuls split, embeddings and norms replicated) and each
    page's bytes for ``ceil(num_kv_heads / tp)`` heads.
    """
    hbm_bytes = accelerator.hbm_bytes if isinstance(accelerator, Accelerator) else int(accelerator)
    per = f" per device (tp={tp})" if tp > 1 else ""
    return per_device_kv_pages(
        model.decoder, device_bytes=hbm_bytes, hbm_utilization=hbm_utilization, page_size=page_size,
        dtype_bytes=model.dtype_bytes, tp=tp, what=f"for {model.name!r}{per}",
    )  # fmt: skip


MODEL_SPECS: Registry[ModelSpec] = Registry("model spec")
"""The registered model specs by name; add entries with :func:`register_model_spec`."""


def register_model_spec(spec: ModelSpec, *, overwrite: bool = False) -> ModelSpec:
    """Register ``spec`` under its name; refuses to replace a different one unless ``overwrite``."""
    MODEL_SPECS.add(spec.name, spec, overwrite=overwrite)
    return spec


def get_model_spec(name: str) -> ModelSpec:
    """A registered preset, else the spec of the model ``name`` points at: a HF checkpoint folder, a GGUF file
    (its header) or a packaged model's name. A name that is none of these is an UnknownNameError listing the
    presets and packaged models; a file that cannot be read says why."""
    if name in MODEL_SPECS:
        return MODEL_SPECS.get(name)
    return model_spec_from(name)


def model_spec_from(model: str | Path, name: str | None = None) -> ModelSpec:
    """The spec of a HF checkpoint folder, GGUF file or packaged model (``odrive.model_source.read_hf_config``),
    named ``name`` (default: ``model`` as given). A GGUF's weights dequantize to float32 in the real engine, so its
    spec has 4-byte weights and KV."""
    try:
        config = read_hf_config(model)
    except ModelNotFoundError:
        presets, packaged = ", ".join(MODEL_SPECS.names()), ", ".join(sorted(PACKAGED_MODELS))
        raise UnknownNameError(
            f"unknown model {str(model)!r}: neither a model spec ({presets}) nor a packaged model ({packaged}), "
            "a checkpoint folder with config.json or a GGUF file"
        ) from None
    try:
        return ModelSpec.from_hf_config(config, name=name or str(model))
    except ValueError as err:
        raise ModelSourceError(f"{model}: {err}") from None


# Shapes from the models' public Hugging Face config.json files (meta-llama/*), bf16 weights.
register_model_spec(
    ModelSpec(
        "llama-2-7b",
        num_layers=32,
        hidden_size=4096,
        num_q_heads=32,
        num_kv_heads=32,
        head_dim=128,
        intermediate_size=11008,
        vocab_size=32000,
    )
)
register_model_spec(
    ModelSpec(
        "llama-2-13b",
        num_layers=40,
        hidden_size=5120,
        num_q_heads=40,
        num_kv_heads=40,
        head_dim=128,
        intermediate_size=13824,
        vocab_size=32000,
    )
)
register_model_spec(
    ModelSpec(
        "llama-3-8b",
        num_layers=32,
        hidden_size=4096,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=128256,
    )
)
register_model_spec(
    ModelSpec(
        "llama-3-70b",
        num_layers=80,
        hidden_size=8192,
        num_q_heads=64,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=28672,
        vocab_size=128256,
    )
)
# The project's tiny benchmark model (untied embeddings).
register_model_spec(
    ModelSpec(
        "tiny-bench",
        num_layers=4,
        hidden_size=256,
        num_q_heads=2,
        num_kv_heads=2,
        head_dim=128,
        intermediate_size=512,
        vocab_size=1024,
    )
)
# The families the real engine also runs, from the models' published config.json files (bf16 weights):
# HuggingFaceTB/SmolLM2-135M (tied embeddings), Qwen/Qwen2.5-7B (q/k/v biases), Qwen/Qwen3-8B (q/k norms,
# head_dim 128 with hidden 4096 / 32 heads), mistralai/Mistral-7B-v0.1 (sliding_window 4096).
register_model_spec(
    ModelSpec(
        "smollm2-135m",
        num_layers=30,
        hidden_size=576,
        num_q_heads=9,
        num_kv_heads=3,
        head_dim=64,
        intermediate_size=1536,
        vocab_size=49152,
        tie_word_embeddings=True,
    )
)
register_model_spec(
    ModelSpec(
        "qwen2.5-7b",
        num_layers=28,
        hidden_size=3584,
        num_q_heads=28,
        num_kv_heads=4,
        head_dim=128,
        intermediate_size=18944,
        vocab_size=152064,
        qkv_bias=True,
    )
)
register_model_spec(
    ModelSpec(
        "qwen3-8b",
        num_layers=36,
        hidden_size=4096,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=12288,
        vocab_size=151936,
        qk_norm=True,
    )
)
register_model_spec(
    ModelSpec(
        "mistral-7b",
        num_layers=32,
        hidden_size=4096,
        num_q_heads=32,
        num_kv_heads=8,
        head_dim=128,
        intermediate_size=14336,
        vocab_size=32000,
        sliding_window=4096,
    )
)
