"""Processor: tokenizer round trips, special tokens, chat templates and missing-file errors."""

from __future__ import annotations

import json
import shutil

import pytest
from checkpoints import CHAT_TEMPLATE

from odrive.processor import Processor, load_processor

TEXTS = [
    "The scheduler decides whether the prompt fits in the free pages.",
    "  leading spaces, numbers 12345 and punctuation?!",
    "Unicode survives byte-level BPE: café, naïve, 東京, ✓",
    "",
]


@pytest.fixture(scope="module")
def checkpoint_dir(tiny_checkpoint):
    """The session-wide tiny checkpoint (tests/conftest.py), built with ``build_tiny_checkpoint``."""
    return tiny_checkpoint


@pytest.fixture(scope="module")
def processor(checkpoint_dir) -> Processor:
    return load_processor(checkpoint_dir)


def _tokenizer_only(src, dst, **files):
    """Copy just tokenizer.json to ``dst`` and add the given JSON/text files."""
    dst.mkdir()
    shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
    for name, content in files.items():
        name = name.replace("__", ".")
        (dst / name).write_text(content if isinstance(content, str) else json.dumps(content))
    return load_processor(dst)


@pytest.mark.parametrize("text", TEXTS)
def test_encode_decode_round_trip(processor, text):
    ids = processor.encode(text)
    assert ids[0] == processor.bos_token_id == 1
    assert all(0 <= i < processor.vocab_size for i in ids)
    assert processor.decode(ids) == text
    assert processor.encode(text, add_special_tokens=False) == ids[1:]


def test_special_tokens(processor):
    assert processor.eos_token_ids == (2,)
    assert processor.pad_token_id is None
    assert 260 <= processor.vocab_size <= 320
    assert processor.decode([1, *processor.encode("hi", False), 2], skip_special_tokens=False) == "<s>hi</s>"


def test_chat_template_rendering(processor):
    assert processor.chat_template == CHAT_TEMPLATE
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hello"}]
    expected = "<s><|system|>\nBe brief.</s>\n<|user|>\nHello</s>\n<|assistant|>\n"
    assert processor.apply_chat_template(messages) == expected
    assert processor.apply_chat_template(messages, add_generation_prompt=False) == expected.removesuffix(
        "<|assistant|>\n"
    )


def test_fallback_chat_format_without_template(checkpoint_dir, tmp_path):
    proc = _tokenizer_only(checkpoint_dir, tmp_path / "bare")
    assert proc.chat_template is None and proc.eos_token_ids == () and proc.bos_token_id is None
    text = proc.apply_chat_template([{"role": "user", "content": "Hi"}])
    assert text == "user: Hi\nassistant:"


def test_hf_config_variants(checkpoint_dir, tmp_path):
    """AddedToken dicts, special_tokens_map.json, template lists, chat_template.jinja, generation_config."""
    proc = _tokenizer_only(
        checkpoint_dir,
        tmp_path / "variants",
        special_tokens_map__json={"bos_token": {"content": "<s>", "lstrip": False}, "eos_token": "</s>"},
        tokenizer_config__json={
            "pad_token": {"content": "<unk>"},
            "chat_template": [{"name": "tool_use", "template": "T"}, {"name": "default", "template": "D"}],
        },
        generation_config__json={"eos_token_id": [2, 0]},
    )
    assert proc.bos_token_id == 1 and proc.pad_token_id == 0 and proc.eos_token_ids == (2, 0)
    assert proc.apply_chat_template([]) == "D"
    (tmp_path / "variants" / "chat_template.jinja").write_text(
        "{% for m in messages %}{{ m['content'] | tojson }}{% endfor %}"
    )
    assert load_processor(tmp_path / "variants").apply_chat_template([{"role": "user", "content": 'a"b'}]) == (
        '"a\\"b"'
    )


def test_template_can_raise(checkpoint_dir, tmp_path):
    proc = _tokenizer_only(
        checkpoint_dir,
        tmp_path / "raise",
        tokenizer_config__json={"chat_template": "{{ raise_exception('roles must alternate') }}"},
    )
    with pytest.raises(Exception, match="roles must alternate"):
        proc.apply_chat_template([{"role": "user", "content": "x"}])


def test_add_bos_token_without_post_processor(checkpoint_dir, tmp_path):
    proc = _tokenizer_only(
        checkpoint_dir,
        tmp_path / "addbos",
        tokenizer_config__json={"bos_token": "<s>", "add_bos_token": True},
    )
    proc.tokenizer.post_processor = None  # a tokenizer.json that does not add BOS itself
    ids = proc.encode("hello")
    assert ids[0] == 1 and ids.count(1) == 1
    assert proc.encode("hello", add_special_tokens=False)[0] != 1


def test_missing_tokenizer_json(tmp_path):
    with pytest.raises(FileNotFoundError, match="tokenizer.json not found"):
        load_processor(tmp_path)
