"""Request bodies of the OpenAI-compatible API (pydantic v2 models) and their mapping to SamplingParams.

Fields odrive does not implement are rejected with a 400 when set to a non-default value (never silently
ignored); unknown fields are ignored, as OpenAI-compatible servers commonly do.
"""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from odrive.sampling_params import SamplingParams

MAX_N = 8  # choices per prompt
MAX_PROMPTS = 32  # prompts per /v1/completions call
MAX_STOP = 16  # stop strings per request
SEED_MASK = 0x7FFFFFFF

Prompt = str | list[int]


class StreamOptions(BaseModel):
    """``include_usage``: a final chunk with the call's usage. ``continuous_usage_stats`` (a vLLM extension):
    one chunk per generated token, even when its text is held back, each with that choice's usage so far."""

    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(BaseModel):
    """The sampling fields both endpoints share (``top_k`` and ``ignore_eos`` are extensions)."""

    model_config = ConfigDict(extra="ignore")

    model: str
    max_tokens: int | None = Field(None, ge=1)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1)  # 0 or -1: disabled
    seed: int | None = None
    stop: str | list[str] | None = None
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    logprobs: Any = None
    presence_penalty: float = 0.0
    frequency_penalty: float = 0.0
    logit_bias: dict[str, float] | None = None

    @field_validator("stop")
    @classmethod
    def _stop_list(cls, v: str | list[str] | None) -> list[str] | None:
        stops = [v] if isinstance(v, str) else v
        if stops is not None:
            if len(stops) > MAX_STOP:
                raise ValueError(f"at most {MAX_STOP} stop strings are supported, got {len(stops)}")
            if any(not s for s in stops):
                raise ValueError("stop strings must be non-empty")
        return stops

    def unsupported(self) -> tuple[str, str] | None:
        """(param, message) for the first set field odrive cannot honour, else None."""
        if self.logprobs not in (None, False, 0):
            return "logprobs", "logprobs are not supported"
        if self.presence_penalty or self.frequency_penalty:
            param = "presence_penalty" if self.presence_penalty else "frequency_penalty"
            return param, f"{param} is not supported"
        if self.logit_bias:
            return "logit_bias", "logit_bias is not supported"
        return None

    @property
    def include_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.include_usage)

    @property
    def continuous_usage(self) -> bool:
        return bool(self.stream_options and self.stream_options.continuous_usage_stats)

    def sampling_params(self, max_tokens: int) -> list[SamplingParams]:
        """One SamplingParams per choice; with a seed, choice i samples with ``seed + i``."""
        return [
            SamplingParams(
                max_tokens=max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=max(self.top_k, 0),
                seed=None if self.seed is None else (self.seed + i) & SEED_MASK,
                stop=tuple(self.stop or ()),
                ignore_eos=self.ignore_eos,
            )
            for i in range(self.n)
        ]


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``: ``prompt`` is a string, a token-id list, or a list of either."""

    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    echo: bool = False
    best_of: int | None = None
    suffix: str | None = None

    @field_validator("prompt")
    @classmethod
    def _bounded_batch(cls, v: Any) -> Any:
        if isinstance(v, list) and v and not isinstance(v[0], int) and len(v) > MAX_PROMPTS:
            raise ValueError(f"at most {MAX_PROMPTS} prompts per request, got {len(v)}")
        return v

    def prompts(self) -> list[Prompt]:
        p = self.prompt
        if isinstance(p, str) or (p and isinstance(p[0], int)):
            return [p]  # type: ignore[list-item]
        return list(p) if p else [[]]  # type: ignore[arg-type]

    def unsupported(self) -> tuple[str, str] | None:
        if self.echo:
            return "echo", "echo is not supported"
        if self.suffix:
            return "suffix", "suffix is not supported"
        if self.best_of not in (None, self.n):
            return "best_of", "best_of other than n is not supported"
        return super().unsupported()


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    model_config = ConfigDict(extra="allow")

    role: str
    content: str | list[TextPart] | None = None

    def as_template_input(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        return {**(self.model_extra or {}), "role": self.role, "content": content or ""}


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``; without ``max_tokens`` a reply may fill the context (max_length)."""

    messages: list[ChatMessage] = Field(min_length=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    add_generation_prompt: bool = True

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens
