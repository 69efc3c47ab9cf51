"""The tokenizer stored in a GGUF file, rebuilt as a ``tokenizers`` byte-level BPE, with its chat template.

llama.cpp names the pre-tokenizer (``tokenizer.ggml.pre``): how text is split before BPE merges, which must be the
split the merges were learned on. SmolLM2 ("smollm"), like StarCoder, splits every digit apart and then applies
GPT-2's split; Llama 3 and Qwen2 use their own split patterns.
"""

from __future__ import annotations

from typing import Any

from tokenizers import AddedToken, Regex, Tokenizer, decoders, models, pre_tokenizers

from odrive.gguf_file import GGUFError, GGUFFile

_CONTROL, _USER_DEFINED = 3, 4  # llama.cpp token types

_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)


def _gpt2_split() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)


def _digits_then_gpt2() -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), _gpt2_split()])


def _regex_split(pattern: str) -> pre_tokenizers.PreTokenizer:
    return pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )


# tokenizer.ggml.pre -> the pre-tokenizer it stands for (llama.cpp's llama-vocab.cpp groups them the same way)
PRE_TOKENIZERS = {
    "default": _gpt2_split,
    "gpt-2": _gpt2_split,
    "smollm": _digits_then_gpt2,
    "starcoder": _digits_then_gpt2,
    "refact": _digits_then_gpt2,
    "llama3": lambda: _regex_split(_LLAMA3_SPLIT),
    "llama-v3": lambda: _regex_split(_LLAMA3_SPLIT),
    "llama-bpe": lambda: _regex_split(_LLAMA3_SPLIT),
    "qwen2": lambda: _regex_split(_QWEN2_SPLIT),
}


def gguf_tokenizer_files(gguf: GGUFFile) -> tuple[Tokenizer, dict[str, Any], dict[str, Any]]:
    """The tokenizer a GGUF file carries, and the ``tokenizer_config.json`` (special tokens, chat template, BOS
    rule) and ``generation_config.json`` (EOS ids) contents that go with it in a HF checkpoint folder."""
    kind = gguf.field("tokenizer.ggml.model", None)
    if kind != "gpt2":
        raise GGUFError(f"{gguf.path}: tokenizer model {kind!r} is not supported (only byte-level BPE, 'gpt2')")
    pre = str(gguf.field("tokenizer.ggml.pre", "default"))
    if pre not in PRE_TOKENIZERS:
        raise GGUFError(f"{gguf.path}: pre-tokenizer {pre!r} is not supported; supported: {sorted(PRE_TOKENIZERS)}")
    tokens: list[str] = list(gguf.field("tokenizer.ggml.tokens"))
    merges = [tuple(m.split(" ", 1)) for m in gguf.field("tokenizer.ggml.merges")]
    types = list(gguf.field("tokenizer.ggml.token_type", [1] * len(tokens)))
    tokenizer = Tokenizer(models.BPE(vocab={t: i for i, t in enumerate(tokens)}, merges=merges))
    tokenizer.pre_tokenizer = PRE_TOKENIZERS[pre]()
    tokenizer.decoder = decoders.ByteLevel()
    pairs = list(zip(tokens, types, strict=True))
    tokenizer.add_special_tokens([AddedToken(t, special=True, normalized=False) for t, k in pairs if k == _CONTROL])
    tokenizer.add_tokens([AddedToken(t, special=False, normalized=False) for t, k in pairs if k == _USER_DEFINED])

    def token(key: str) -> str | None:
        index = gguf.field(f"tokenizer.ggml.{key}_token_id", None)
        return tokens[int(index)] if index is not None and 0 <= int(index) < len(tokens) else None

    tokenizer_config = {
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": bool(gguf.field("tokenizer.ggml.add_bos_token", False)),
        "chat_template": gguf.field("tokenizer.chat_template", None),
    }
    eos_ids = [gguf.field(f"tokenizer.ggml.{key}_token_id", None) for key in ("eos", "eot")]
    generation_config = {"eos_token_id": [int(i) for i in dict.fromkeys(eos_ids) if i is not None]}
    return tokenizer, tokenizer_config, generation_config
