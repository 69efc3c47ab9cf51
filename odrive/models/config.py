"""Llama-family model configuration parsed from / written to HF ``config.json``."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from odrive.core.kv_pages import DecoderShape
from odrive.models.dtypes import DTypeLike, resolve_dtype

# model_type -> HF architecture. Qwen2 adds q/k/v projection biases, Qwen3 a per-head RMSNorm on q and k,
# Mistral a sliding attention window; otherwise all four are the Llama decoder.
ARCHITECTURES = {
    "llama": "LlamaForCausalLM",
    "mistral": "MistralForCausalLM",
    "qwen2": "Qwen2ForCausalLM",
    "qwen3": "Qwen3ForCausalLM",
}
SUPPORTED_ARCHITECTURES = tuple(ARCHITECTURES.values())
SUPPORTED_MODEL_TYPES = tuple(ARCHITECTURES)
_REQUIRED = ("vocab_size", "hidden_size", "intermediate_size", "num_hidden_layers", "num_attention_heads")


class ModelConfigError(ValueError):
    """Raised when a model config is invalid or describes an unsupported model."""


@dataclass(frozen=True)
class RopeScaling:
    """RoPE frequency scaling ("linear" or "llama3"); hashable so configs can be jit-static."""

    rope_type: str
    factor: float
    low_freq_factor: float | None = None
    high_freq_factor: float | None = None
    original_max_position_embeddings: int | None = None

    @classmethod
    def from_hf_dict(cls, d: dict[str, Any] | None) -> RopeScaling | None:
        """Parse HF ``rope_scaling`` / ``rope_parameters``; returns None for unscaled ("default") RoPE."""
        if not d:
            return None
        rope_type = d.get("rope_type", d.get("type", "default"))
        if rope_type == "default":
            return None
        if rope_type not in ("linear", "llama3"):
            raise ModelConfigError(
                f"unsupported rope_scaling type {rope_type!r}; supported: None/'default', 'linear', 'llama3'"
            )
        keys = ["factor"]
        if rope_type == "llama3":
            keys += ["low_freq_factor", "high_freq_factor", "original_max_position_embeddings"]
        missing = [k for k in keys if d.get(k) is None]
        if missing:
            raise ModelConfigError(f"rope_scaling type {rope_type!r} is missing required field(s) {missing}")
        scaling = cls(rope_type, *(d[k] for k in keys))
        if scaling.factor <= 0:
            raise ModelConfigError(f"rope_scaling factor must be > 0, got {scaling.factor}")
        if rope_type == "llama3" and scaling.high_freq_factor <= scaling.low_freq_factor:
            raise ModelConfigError("rope_scaling llama3 requires high_freq_factor > low_freq_factor")
        return scaling

    def to_hf_dict(self) -> dict[str, Any]:
        d: dict[str, Any] = {"rope_type": self.rope_type, "factor": self.factor}
        if self.rope_type == "llama3":
            d["low_freq_factor"] = self.low_freq_factor
            d["high_freq_factor"] = self.high_freq_factor
            d["original_max_position_embeddings"] = self.original_max_position_embeddings
        return d


@dataclass(frozen=True)
class LlamaConfig:
    """Decoder hyper-parameters. Frozen and hashable, so it can be a static ``jax.jit`` argument."""

    vocab_size: int
    hidden_size: int
    intermediate_size: int
    num_hidden_layers: int
    num_attention_heads: int
    num_key_value_heads: int | None = None  # None -> num_attention_heads (MHA)
    head_dim: int | None = None  # None -> hidden_size // num_attention_heads
    rms_norm_eps: float = 1e-6
    rope_theta: float = 10000.0
    rope_scaling: RopeScaling | None = None
    tie_word_embeddings: bool = False
    max_position_embeddings: int = 2048
    bos_token_id: int | None = 1
    eos_token_id: int | tuple[int, ...] | None = 2
    torch_dtype: str = "float32"
    model_type: str = "llama"
    qkv_bias: bool = False  # q/k/v projection biases (Qwen2)
    qk_norm: bool = False  # RMSNorm over each head of q and k before RoPE (Qwen3)
    sliding_window: int | None = None  # a query sees only the last ``sliding_window`` positions (Mistral)

    def __post_init__(self) -> None:
        if isinstance(self.rope_scaling, dict):
            object.__setattr__(self, "rope_scaling", RopeScaling.from_hf_dict(self.rope_scaling))
        if isinstance(self.eos_token_id, list):
            object.__setattr__(self, "eos_token_id", tuple(self.eos_token_id))
        for name in _REQUIRED + ("max_position_embeddings",):
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
                raise ModelConfigError(f"{name} must be a positive integer, got {value!r}")
        if self.num_key_value_heads is None:
            object.__setattr__(self, "num_key_value_heads", self.num_attention_heads)
        if self.head_dim is None:
            if self.hidden_size % self.num_attention_heads:
                raise ModelConfigError(
                    f"hidden_size ({self.hidden_size}) is not divisible by num_attention_heads "
                    f"({self.num_attention_heads}) and head_dim is not given"
                )
            object.__setattr__(self, "head_dim", self.hidden_size // self.num_attention_heads)
        if self.num_key_value_heads <= 0 or self.head_dim <= 0:
            raise ModelConfigError("num_key_value_heads and head_dim must be positive")
        if self.num_attention_heads % self.num_key_value_heads:
            raise ModelConfigError(
                f"num_attention_heads ({self.num_attention_heads}) must be divisible by "
                f"num_key_value_heads ({self.num_key_value_heads}) for grouped-query attention"
            )
        if self.head_dim % 2:
            raise ModelConfigError(f"head_dim must be even for RoPE, got {self.head_dim}")
        if self.model_type not in ARCHITECTURES:
            raise ModelConfigError(f"model_type {self.model_type!r} is not supported: {SUPPORTED_MODEL_TYPES}")
        if self.sliding_window is not None and (
            not isinstance(self.sliding_window, int) or isinstance(self.sliding_window, bool) or self.sliding_window < 1
        ):
            raise ModelConfigError(f"sliding_window must be a positive integer or None, got {self.sliding_window!r}")
        if self.rms_norm_eps <= 0 or self.rope_theta <= 0:
            raise ModelConfigError("rms_norm_eps and rope_theta must be > 0")
        try:
            object.__setattr__(self, "torch_dtype", resolve_dtype(self.torch_dtype).name)
        except (TypeError, ValueError) as e:
            raise ModelConfigError(f"torch_dtype: {e}") from e

    # ------------------------------------------------------------------ derived sizes
    @property
    def num_queries_per_kv(self) -> int:
        return self.num_attention_heads // self.num_key_value_heads

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """EOS ids as a tuple (empty when unset)."""
        if self.eos_token_id is None:
            return ()
        return self.eos_token_id if isinstance(self.eos_token_id, tuple) else (self.eos_token_id,)

    @property
    def decoder_shape(self) -> DecoderShape:
        """The sizes that decide the model's memory, in the core's terms (:mod:`odrive.core.kv_pages`, whose
        weight and K/V byte formulas the simulator's model specs use too)."""
        return DecoderShape(
            num_layers=self.num_hidden_layers, hidden_size=self.hidden_size, num_q_heads=self.num_attention_heads,
            num_kv_heads=self.num_key_value_heads, head_dim=self.head_dim,  # type: ignore[arg-type]
            intermediate_size=self.intermediate_size, vocab_size=self.vocab_size,
            tie_word_embeddings=self.tie_word_embeddings, qkv_bias=self.qkv_bias, qk_norm=self.qk_norm,
        )  # fmt: skip

    def kv_bytes_per_token(self, dtype: DTypeLike | None = None) -> int:
        """Bytes of K+V cache per token across all layers (defaults to ``torch_dtype``)."""
        return self.decoder_shape.kv_bytes_per_token(
            resolve_dtype(self.torch_dtype if dtype is None else dtype).itemsize
        )

    def num_parameters(self) -> int:
        """Total number of weights (embeddings counted once when tied)."""
        return self.decoder_shape.num_parameters

    # ------------------------------------------------------------------ HF conversion
    @classmethod
    def from_hf_dict(cls, d: dict[str, Any]) -> LlamaConfig:
        """Build from a HF ``config.json`` dict, rejecting architectures this decoder cannot run exactly."""
        model_type = _check_architecture(d)
        missing = [k for k in _REQUIRED if k not in d]
        if missing:
            raise ModelConfigError(f"config is missing required field(s) {missing}")
        rope_params = d.get("rope_parameters") or {}
        rope_theta = d.get("rope_theta", rope_params.get("rope_theta", 10000.0))
        scaling = d.get("rope_scaling") or rope_params or None
        partial = (scaling or {}).get("partial_rotary_factor", d.get("partial_rotary_factor", 1.0))
        if partial not in (None, 1.0):
            raise ModelConfigError(f"partial_rotary_factor={partial} is not supported")
        eos = d.get("eos_token_id", 2)
        return cls(
            vocab_size=d["vocab_size"],
            hidden_size=d["hidden_size"],
            intermediate_size=d["intermediate_size"],
            num_hidden_layers=d["num_hidden_layers"],
            num_attention_heads=d["num_attention_heads"],
            num_key_value_heads=d.get("num_key_value_heads"),
            head_dim=d.get("head_dim"),
            rms_norm_eps=float(d.get("rms_norm_eps", 1e-6)),
            rope_theta=float(rope_theta),
            rope_scaling=RopeScaling.from_hf_dict(scaling),
            tie_word_embeddings=bool(d.get("tie_word_embeddings", False)),
            max_position_embeddings=d.get("max_position_embeddings", 2048),
            bos_token_id=d.get("bos_token_id", 1),
            eos_token_id=tuple(eos) if isinstance(eos, list) else eos,
            torch_dtype=str(d.get("torch_dtype") or d.get("dtype") or "float32"),
            model_type=model_type,
            qkv_bias=model_type == "qwen2",
            qk_norm=model_type == "qwen3",
            sliding_window=_sliding_window(d, model_type),
        )

    @classmethod
    def from_json_file(cls, path: str | Path) -> LlamaConfig:
        """Read a HF ``config.json`` file."""
        path = Path(path)
        if not path.is_file():
            raise FileNotFoundError(f"config file not found: {path}")
        try:
            d = json.loads(path.read_text())
        except json.JSONDecodeError as e:
            raise ModelConfigError(f"{path} is not valid JSON: {e}") from e
        return cls.from_hf_dict(d)

    def to_hf_dict(self) -> dict[str, Any]:
        """HF ``config.json`` dict loadable by ``transformers`` (v4 and v5 formats) for this ``model_type``."""
        eos = list(self.eos_token_id) if isinstance(self.eos_token_id, tuple) else self.eos_token_id
        d: dict[str, Any] = {
            "architectures": [ARCHITECTURES[self.model_type]],
            "model_type": self.model_type,
            "vocab_size": self.vocab_size,
            "hidden_size": self.hidden_size,
            "intermediate_size": self.intermediate_size,
            "num_hidden_layers": self.num_hidden_layers,
            "num_attention_heads": self.num_attention_heads,
            "num_key_value_heads": self.num_key_value_heads,
            "head_dim": self.head_dim,
            "hidden_act": "silu",
            "rms_norm_eps": self.rms_norm_eps,
            "rope_theta": self.rope_theta,
            "rope_scaling": self.rope_scaling.to_hf_dict() if self.rope_scaling else None,
            "tie_word_embeddings": self.tie_word_embeddings,
            "max_position_embeddings": self.max_position_embeddings,
            "bos_token_id": self.bos_token_id,
            "eos_token_id": eos,
            "torch_dtype": self.torch_dtype,
        }
        if self.model_type in ("llama", "mistral", "qwen3"):
            d["attention_bias"] = False
        if self.model_type == "llama":
            d["mlp_bias"] = False
        if self.model_type == "mistral":
            d["sliding_window"] = self.sliding_window
        if self.model_type in ("qwen2", "qwen3"):
            d["use_sliding_window"] = False
        return d


def _check_architecture(d: dict[str, Any]) -> str:
    """The config's ``model_type`` if this decoder runs it exactly; else a ModelConfigError saying why."""
    archs = d.get("architectures") or []
    model_type = d.get("model_type")
    if model_type is None:  # old configs name only the class
        by_arch = {arch: mt for mt, arch in ARCHITECTURES.items()}
        model_type = next((by_arch[a] for a in archs if a in by_arch), "llama")
    if model_type not in SUPPORTED_MODEL_TYPES or any(a not in SUPPORTED_ARCHITECTURES for a in archs):
        raise ModelConfigError(
            f"unsupported architecture: model_type={model_type!r}, architectures={archs}; "
            f"supported model_type {SUPPORTED_MODEL_TYPES}, architectures {SUPPORTED_ARCHITECTURES}"
        )
    if "layer_types" in d and any(t != "full_attention" for t in d["layer_types"] or ()):
        if model_type != "mistral" or any(t != "sliding_attention" for t in d["layer_types"]):
            raise ModelConfigError("per-layer attention types (hybrid sliding/full layers) are not supported")
    if d.get("hidden_act", "silu") != "silu":
        raise ModelConfigError(f"hidden_act={d['hidden_act']!r} is not supported (only 'silu')")
    if d.get("mlp_bias"):
        raise ModelConfigError("mlp_bias=true is not supported (MLP projections must be bias-free)")
    if d.get("attention_bias") and model_type != "qwen2":
        raise ModelConfigError(
            f"attention_bias=true is not supported for model_type {model_type!r} (only Qwen2's q/k/v biases are)"
        )
    return model_type


def _sliding_window(d: dict[str, Any], model_type: str) -> int | None:
    """Mistral's attention window, or None where every query sees its whole context.

    A window at least as long as the longest context changes nothing and is dropped. Qwen2/Qwen3 configs carry a
    ``sliding_window`` that applies only with ``use_sliding_window`` (per layer, past ``max_window_layers``):
    that variant is refused.
    """
    window = d.get("sliding_window")
    if model_type in ("qwen2", "qwen3"):
        if d.get("use_sliding_window"):
            raise ModelConfigError(f"{model_type} with use_sliding_window=true (per-layer windows) is not supported")
        return None
    if window is None or model_type != "mistral":
        if window is not None and model_type == "llama":
            raise ModelConfigError(f"sliding_window={window} is not supported for model_type 'llama'")
        return None
    if window >= d.get("max_position_embeddings", 2048):
        return None
    return int(window)
