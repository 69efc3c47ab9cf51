"""Tokenizer + chat template for a model, built on the ``tokenizers`` library.

A GGUF file (or a packaged model name, see ``odrive.model_source``) carries its vocabulary, merges and chat
template; they are written out once as these files (``odrive.gguf_convert``). A checkpoint directory needs
``tokenizer.json`` and, when present, ``tokenizer_config.json`` /
``special_tokens_map.json`` (bos/eos/pad tokens, ``add_bos_token``, ``chat_template``),
``chat_template.jinja`` and ``generation_config.json`` (extra EOS ids).

Without a chat template, ``apply_chat_template`` uses the fallback format: one ``"{role}: {content}\\n"``
line per message, then ``"assistant:"`` when ``add_generation_prompt`` is set.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

from tokenizers import Tokenizer

from odrive.model_source import ModelSource, checkpoint_folder

Message = Mapping[str, Any]


@dataclass
class Processor:
    """Text <-> token ids and chat formatting for one model."""

    tokenizer: Tokenizer
    bos_token: str | None = None
    eos_token: str | None = None
    pad_token: str | None = None
    chat_template: str | None = None
    add_bos_token: bool = False  # prepend BOS if the tokenizer's post-processor does not add it
    extra_eos_token_ids: tuple[int, ...] = ()

    @property
    def vocab_size(self) -> int:
        """Number of token ids the tokenizer can produce (including added/special tokens)."""
        return self.tokenizer.get_vocab_size(with_added_tokens=True)

    @property
    def bos_token_id(self) -> int | None:
        return self._token_id(self.bos_token)

    @property
    def pad_token_id(self) -> int | None:
        return self._token_id(self.pad_token)

    @property
    def eos_token_ids(self) -> tuple[int, ...]:
        """EOS token id(s): the tokenizer's eos token, then ids from ``generation_config.json``."""
        ids = [self._token_id(self.eos_token), *self.extra_eos_token_ids]
        return tuple(dict.fromkeys(i for i in ids if i is not None))

    def encode(self, text: str, add_special_tokens: bool = True) -> list[int]:
        ids = self.tokenizer.encode(text, add_special_tokens=add_special_tokens).ids
        bos = self.bos_token_id
        if add_special_tokens and self.add_bos_token and bos is not None and ids[:1] != [bos]:
            ids = [bos, *ids]
        return ids

    def decode(self, ids: Sequence[int], skip_special_tokens: bool = True) -> str:
        return self.tokenizer.decode(list(ids), skip_special_tokens=skip_special_tokens)

    def apply_chat_template(
        self, messages: Sequence[Message], add_generation_prompt: bool = True, **kwargs: Any
    ) -> str:
        """Render ``messages`` (``{"role", "content"}`` dicts) with the checkpoint's Jinja template."""
        if self.chat_template is None:
            text = "".join(f"{m['role']}: {m['content']}\n" for m in messages)
            return text + ("assistant:" if add_generation_prompt else "")
        context = {
            "bos_token": self.bos_token or "",
            "eos_token": self.eos_token or "",
            "pad_token": self.pad_token or "",
            **kwargs,
        }
        return _compile_template(self.chat_template).render(
            messages=list(messages), add_generation_prompt=add_generation_prompt, **context
        )

    def _token_id(self, token: str | None) -> int | None:
        return None if token is None else self.tokenizer.token_to_id(token)


def load_processor(model: str | Path | ModelSource) -> Processor:
    """The processor of a checkpoint directory, a GGUF file or a packaged model name (``smollm2-135m-instruct``)."""
    path = checkpoint_folder(model, weights=False)
    tokenizer_file = path / "tokenizer.json"
    if not tokenizer_file.is_file():
        raise FileNotFoundError(f"tokenizer.json not found in {path} (only fast-tokenizer checkpoints are supported)")
    tokenizer = Tokenizer.from_file(str(tokenizer_file))
    special = {**_read_json(path / "special_tokens_map.json"), **_read_json(path / "tokenizer_config.json")}
    template = special.get("chat_template")
    if isinstance(template, list):  # [{"name": "default", "template": ...}, ...]
        named = {t.get("name"): t.get("template") for t in template}
        template = named.get("default") or next(iter(named.values()), None)
    if (path / "chat_template.jinja").is_file():
        template = (path / "chat_template.jinja").read_text()
    gen_eos = _read_json(path / "generation_config.json").get("eos_token_id")
    extra_eos = tuple(gen_eos) if isinstance(gen_eos, list) else (() if gen_eos is None else (gen_eos,))
    return Processor(
        tokenizer=tokenizer,
        bos_token=_token_text(special.get("bos_token")),
        eos_token=_token_text(special.get("eos_token")),
        pad_token=_token_text(special.get("pad_token")),
        chat_template=template,
        add_bos_token=bool(special.get("add_bos_token", False)),
        extra_eos_token_ids=extra_eos,
    )


def _read_json(path: Path) -> dict[str, Any]:
    return json.loads(path.read_text()) if path.is_file() else {}


def _token_text(token: Any) -> str | None:
    """Special tokens are stored as strings or as serialized AddedToken dicts."""
    if isinstance(token, dict):
        return token.get("content")
    return token


def _compile_template(source: str) -> Any:
    """Compile a chat template in a sandboxed Jinja environment with the helpers HF templates use."""
    import jinja2
    from jinja2.sandbox import ImmutableSandboxedEnvironment

    def raise_exception(message: str) -> None:
        raise jinja2.TemplateError(message)

    def tojson(value: Any, indent: int | None = None) -> str:
        return json.dumps(value, ensure_ascii=False, indent=indent)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True, extensions=["jinja2.ext.loopcontrols"])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    env.globals["strftime_now"] = lambda fmt: datetime.now().strftime(fmt)
    return env.from_string(source)
