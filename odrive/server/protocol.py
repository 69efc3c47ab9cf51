"""Request bodies of the OpenAI-compatible API (pydantic v2 models) and their mapping to SamplingParams.

Validation is strict, at the edge: no bool where a number is due and no string where a bool is (``max_tokens: true``
and ``stream: "yes"`` are 400s), every number is bounded to what the engine stores it in (int32 for token ids,
``top_k`` and ``max_tokens``; a 64-bit seed), floats must be finite, roles are OpenAI's, and strings must be valid
Unicode (the JSON parser refuses lone surrogates). The body itself is parsed by pydantic's JSON parser, which bounds
nesting and refuses integer literals too long to convert (see ``odrive.server.errors.parse_body``).

Fields odrive does not implement are rejected with a 400 when set to a non-default value (never silently
ignored); unknown fields are ignored, as OpenAI-compatible servers commonly do.
"""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from odrive.core.sampling_params import INT32_MAX, SamplingParams

MAX_N = 128  # choices per prompt the schema accepts; a server's own limit (--max-n, default 8) is lower
MAX_PROMPTS = 32  # prompts per /v1/completions call
MAX_STOP = 16  # stop strings per request
MAX_STOP_TOKEN_IDS = 64
MAX_MESSAGES = 1024
SEED_MASK = 0x7FFFFFFF
INT64_MIN, UINT64_MAX = -(2**63), 2**64 - 1

TokenId = Annotated[int, Field(ge=0, le=INT32_MAX)]
Prompt = str | list[int]
STRICT = ConfigDict(strict=True, allow_inf_nan=False, extra="ignore")


class StreamOptions(BaseModel):
    """``include_usage``: a final chunk with the call's usage. ``continuous_usage_stats`` (a vLLM extension):
    one chunk per generated token, even when its text is held back, each with that choice's usage so far."""

    model_config = STRICT

    include_usage: bool = False
    continuous_usage_stats: bool = False


class SamplingFields(BaseModel):
    """The sampling fields both endpoints share (``top_k``, ``ignore_eos`` and ``stop_token_ids`` are extensions)."""

    model_config = STRICT

    model: str = Field(max_length=256)
    max_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    temperature: float = Field(1.0, ge=0.0, le=2.0)
    top_p: float = Field(1.0, gt=0.0, le=1.0)
    top_k: int = Field(0, ge=-1, le=INT32_MAX)  # 0 or -1: disabled
    seed: int | None = Field(None, ge=INT64_MIN, le=UINT64_MAX)
    stop: str | list[str] | None = None
    stop_token_ids: list[TokenId] | None = Field(None, max_length=MAX_STOP_TOKEN_IDS)
    n: int = Field(1, ge=1, le=MAX_N)
    stream: bool = False
    stream_options: StreamOptions | None = None
    ignore_eos: bool = False
    logprobs: bool | Annotated[int, Field(ge=0, le=20)] | None = None
    presence_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    frequency_penalty: float = Field(0.0, ge=-2.0, le=2.0)
    logit_bias: dict[str, Annotated[float, Field(ge=-100.0, le=100.0)]] | None = Field(None, max_length=300)
    user: str | None = Field(None, max_length=256)

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
        """One SamplingParams per choice; with a seed, choice i samples with ``seed + i`` (masked to 31 bits)."""
        return [
            SamplingParams(
                max_tokens=max_tokens,
                temperature=self.temperature,
                top_p=self.top_p,
                top_k=max(self.top_k, 0),
                seed=None if self.seed is None else (self.seed + i) & SEED_MASK,
                stop=tuple(self.stop or ()),
                stop_token_ids=tuple(self.stop_token_ids or ()),
                ignore_eos=self.ignore_eos,
            )
            for i in range(self.n)
        ]


class CompletionRequest(SamplingFields):
    """``POST /v1/completions``: ``prompt`` is a string, a token-id list, or a list of either."""

    prompt: str | list[TokenId] | list[str] | list[list[TokenId]]
    max_tokens: int | None = Field(16, ge=1, le=INT32_MAX)
    echo: bool = False
    best_of: int | None = Field(None, ge=1, le=MAX_N)
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
    model_config = STRICT

    type: Literal["text"]
    text: str


class ChatMessage(BaseModel):
    """One message; fields beyond ``role``/``content`` (``name``, ``tool_calls``...) reach the chat template."""

    model_config = ConfigDict(strict=True, allow_inf_nan=False, extra="allow")

    role: Literal["system", "developer", "user", "assistant", "tool", "function"]
    content: str | list[TextPart] | None = None

    def as_template_input(self) -> dict[str, Any]:
        content = self.content
        if isinstance(content, list):
            content = "".join(p.text for p in content)
        return {**(self.model_extra or {}), "role": self.role, "content": content or ""}


class ChatCompletionRequest(SamplingFields):
    """``POST /v1/chat/completions``; without ``max_tokens`` a reply may fill the context (max_length)."""

    messages: list[ChatMessage] = Field(min_length=1, max_length=MAX_MESSAGES)
    max_completion_tokens: int | None = Field(None, ge=1, le=INT32_MAX)
    add_generation_prompt: bool = True

    @property
    def requested_max_tokens(self) -> int | None:
        return self.max_tokens if self.max_tokens is not None else self.max_completion_tokens
