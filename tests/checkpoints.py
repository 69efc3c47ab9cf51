"""Build tiny HF-format checkpoints (Llama, Qwen2, Qwen3, Mistral; random weights + trained tokenizer) for tests."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import jax
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors, trainers

from odrive.models import LlamaConfig, init_params, save_model

SPECIAL_TOKENS = ("<unk>", "<s>", "</s>")  # ids 0, 1, 2
CHAT_TEMPLATE = (
    "{{ bos_token }}{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

CORPUS = """\
The engine keeps a pool of pages for the attention cache and hands them out as sequences grow.
When a request arrives, the scheduler decides whether its prompt fits in the free pages.
A short prompt is processed in one step, while a long prompt is split into several chunks.
Each decoding step produces one new token for every running sequence in the batch.
The model reads the previous keys and values from the pages that belong to the sequence.
Small models are useful for tests because they run quickly on a laptop processor.
It was a quiet morning in the small town, and the baker opened the shop before sunrise.
Children walked to school along the river, talking about the weather and their friends.
The old library had tall windows, wooden shelves, and a cat that slept near the door.
Numbers such as 1, 2, 3, 42 and 2024 appear in text, along with punctuation: commas, dots!
Questions are common too: where is the station? how long will the journey take?
We measure latency, throughput, and memory, then compare the results across many runs.
"""


# Prompts of 15 to 26 tokens with the default tiny tokenizer (its BOS included): longer than an 8-token window.
SHORT_PROMPTS = (
    "The engine keeps a pool of pages.",
    "The baker opened the shop",
    "Questions are common too: where is the station?",
    "Small models are useful",
    "A short prompt is processed in one step",
)


def train_tokenizer(vocab_size: int) -> Tokenizer:
    """Byte-level BPE trained on ``CORPUS``; adds ``<s>`` on encode; at most ``vocab_size`` ids."""
    if vocab_size < 260:
        raise ValueError("byte-level BPE needs vocab_size >= 260 (256 bytes + 3 special tokens + merges)")
    tokenizer = Tokenizer(models.BPE(unk_token="<unk>"))
    tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    tokenizer.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size,
        special_tokens=list(SPECIAL_TOKENS),
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    tokenizer.train_from_iterator(CORPUS.splitlines() * 4, trainer=trainer)
    bos_id = tokenizer.token_to_id("<s>")
    tokenizer.post_processor = processors.TemplateProcessing(
        single="<s> $A", pair="<s> $A <s> $B", special_tokens=[("<s>", bos_id)]
    )
    return tokenizer


def build_tiny_checkpoint(
    path: str | Path,
    *,
    vocab_size: int = 320,
    hidden_size: int = 64,
    intermediate_size: int = 128,
    layers: int = 2,
    heads: int = 4,
    kv_heads: int = 2,
    head_dim: int | None = None,
    rope_theta: float = 10000.0,
    rope_scaling: dict[str, Any] | None = None,
    rms_norm_eps: float = 1e-5,
    max_position_embeddings: int = 512,
    tie_word_embeddings: bool = False,
    dtype: str = "float32",
    seed: int = 0,
    max_shard_bytes: int | None = None,
    with_tokenizer: bool = True,
    model_type: str = "llama",
    sliding_window: int | None = None,
) -> Path:
    """Write a random-weight checkpoint (config.json, safetensors, tokenizer files) to ``path``.

    ``model_type`` "qwen2" adds q/k/v biases, "qwen3" q/k norms, "mistral" honours ``sliding_window``."""
    path = Path(path)
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden_size,
        intermediate_size=intermediate_size,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=kv_heads,
        head_dim=head_dim,
        rms_norm_eps=rms_norm_eps,
        rope_theta=rope_theta,
        rope_scaling=rope_scaling,
        tie_word_embeddings=tie_word_embeddings,
        max_position_embeddings=max_position_embeddings,
        bos_token_id=SPECIAL_TOKENS.index("<s>"),
        eos_token_id=SPECIAL_TOKENS.index("</s>"),
        torch_dtype=dtype,
        model_type=model_type,
        qkv_bias=model_type == "qwen2",
        qk_norm=model_type == "qwen3",
        sliding_window=sliding_window,
    )
    params = init_params(config, jax.random.key(seed), dtype=dtype)
    save_model((config, params), path, max_shard_bytes=max_shard_bytes)
    if with_tokenizer:
        train_tokenizer(vocab_size).save(str(path / "tokenizer.json"))
        tokenizer_config = {
            "tokenizer_class": "PreTrainedTokenizerFast",
            "bos_token": "<s>",
            "eos_token": "</s>",
            "unk_token": "<unk>",
            "pad_token": None,
            "model_max_length": max_position_embeddings,
            "chat_template": CHAT_TEMPLATE,
        }
        (path / "tokenizer_config.json").write_text(json.dumps(tokenizer_config, indent=2) + "\n")
    return path
