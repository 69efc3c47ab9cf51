"""OpenAI response shapes (completions, chat completions, their stream chunks) and SSE framing."""

from __future__ import annotations

import json
import time
import uuid
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from odrive.vsurge import GenerationResult

# The engine's reasons map onto OpenAI's; "aborted" (client gone) and "error" never reach a live client
# in a normal response, but are passed through rather than hidden.
FINISH_REASONS = {"stop": "stop", "length": "length"}

DONE = b"data: [DONE]\n\n"


def sse(payload: dict[str, Any]) -> bytes:
    """One server-sent event: ``data: {json}`` and a blank line."""
    return b"data: " + json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode() + b"\n\n"


def finish_reason(reason: str | None) -> str | None:
    return None if reason is None else FINISH_REASONS.get(reason, reason)


@dataclass
class ResponseMeta:
    """What every object of one API call shares."""

    kind: str  # "text_completion" | "chat.completion"
    model: str
    id: str = ""
    created: int = field(default_factory=lambda: int(time.time()))

    def __post_init__(self) -> None:
        if not self.id:
            prefix = "chatcmpl" if self.kind.startswith("chat") else "cmpl"
            self.id = f"{prefix}-{uuid.uuid4().hex}"

    @property
    def is_chat(self) -> bool:
        return self.kind.startswith("chat")

    def envelope(self, chunk: bool) -> dict[str, Any]:
        obj = f"{self.kind}.chunk" if chunk and self.is_chat else self.kind
        return {"id": self.id, "object": obj, "created": self.created, "model": self.model}


def usage(prompt_tokens: int, completion_tokens: int) -> dict[str, int]:
    return {
        "prompt_tokens": prompt_tokens,
        "completion_tokens": completion_tokens,
        "total_tokens": prompt_tokens + completion_tokens,
    }


def usage_of(results: Sequence[GenerationResult], n: int) -> dict[str, int]:
    """Prompt tokens count once per prompt (not per choice), completion tokens per choice."""
    prompt = sum(r.metrics.num_prompt_tokens for r in results[::n])
    return usage(prompt, sum(len(r.token_ids) for r in results))


def full_response(meta: ResponseMeta, results: Sequence[GenerationResult], n: int) -> dict[str, Any]:
    choices = []
    for i, r in enumerate(results):
        choice: dict[str, Any] = {"index": i}
        if meta.is_chat:
            choice["message"] = {"role": "assistant", "content": r.text}
        else:
            choice["text"] = r.text
        choice.update(logprobs=None, finish_reason=finish_reason(r.finish_reason))
        choices.append(choice)
    return {**meta.envelope(chunk=False), "choices": choices, "usage": usage_of(results, n)}


def chunk(
    meta: ResponseMeta, index: int, text: str | None, reason: str | None = None, role: bool = False
) -> dict[str, Any]:
    """A stream chunk for one choice: new text, the assistant role (chat's first chunk), or the finish."""
    choice: dict[str, Any] = {"index": index}
    if meta.is_chat:
        delta: dict[str, Any] = {"role": "assistant"} if role else {}
        if text is not None:
            delta["content"] = text
        choice["delta"] = delta
    else:
        choice["text"] = text or ""
    choice.update(logprobs=None, finish_reason=finish_reason(reason))
    return {**meta.envelope(chunk=True), "choices": [choice]}


def usage_chunk(meta: ResponseMeta, usage_: dict[str, int]) -> dict[str, Any]:
    return {**meta.envelope(chunk=True), "choices": [], "usage": usage_}


class StopHoldback:
    """Streams a choice's text without ever sending a prefix of a stop string that a later token could
    complete: such a tail is held back until it is ruled out, so the streamed text always equals the
    final (stop-trimmed) text of the non-streaming response."""

    def __init__(self, stops: Sequence[str]) -> None:
        self.stops = tuple(stops)
        self.seen = ""  # everything the engine has produced so far
        self.sent = ""

    def push(self, text: str) -> str:
        self.seen += text
        keep = len(self.seen) - self._held_tail()
        out = self.seen[len(self.sent) : keep] if keep > len(self.sent) else ""
        self.sent += out
        return out

    def finish(self, final_text: str) -> str:
        """What remains to send once the engine reports the final text."""
        if not final_text.startswith(self.sent):
            return ""
        out = final_text[len(self.sent) :]
        self.sent = final_text
        return out

    def _held_tail(self) -> int:
        longest = 0
        for stop in self.stops:
            for k in range(min(len(stop) - 1, len(self.seen)), longest, -1):
                if self.seen.endswith(stop[:k]):
                    longest = k
                    break
        return longest
