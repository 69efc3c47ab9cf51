"""A request's state as it moves through the engine."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from dataclasses import dataclass, field

from odrive.core.sampling_params import SamplingParams

SIMULATED_TOKEN_ID = -1
"""The id a simulated request's output tokens carry when its prompt has ids and the allocator caches prefixes: its
output pages then hash (never like a prompt's: no prompt holds -1) and are cached and hit, e.g. when a preempted
request is recomputed, as the real engine's output pages are."""


class RequestStatus(enum.Enum):
    """WAITING → RUNNING → FINISHED | ABORTED; RUNNING → PREEMPTED → RUNNING (resumed)."""

    WAITING = "waiting"
    RUNNING = "running"
    PREEMPTED = "preempted"
    FINISHED = "finished"
    ABORTED = "aborted"

    @property
    def is_done(self) -> bool:
        return self in (RequestStatus.FINISHED, RequestStatus.ABORTED)


class FinishReason(enum.Enum):
    LENGTH = "length"  # reached max_tokens
    STOP = "stop"  # produced a stop token or stop string
    ABORTED = "aborted"  # cancelled by the user / client
    REJECTED = "rejected"  # refused at admission (see Request.status_message)
    ERROR = "error"  # its step failed because of it (the error is in Request.status_message)


@dataclass(eq=False)
class Request:
    """One generation request.

    ``prompt_token_ids`` may be None in the simulator, which only needs lengths.
    ``num_computed_tokens`` counts tokens whose K/V already sit in the request's pages.
    """

    request_id: str
    num_prompt_tokens: int
    sampling_params: SamplingParams
    arrival_time: float = 0.0
    prompt_token_ids: Sequence[int] | None = None
    priority: int = 0
    status: RequestStatus = RequestStatus.WAITING
    finish_reason: FinishReason | None = None
    status_message: str = ""
    output_token_ids: list[int] = field(default_factory=list)
    num_output_tokens: int = 0
    num_computed_tokens: int = 0
    num_preemptions: int = 0
    num_cached_tokens: int = 0  # prompt tokens served from the prefix cache at (last) admission
    first_scheduled_time: float | None = None
    first_token_time: float | None = None
    last_token_time: float | None = None  # when its latest output token came (inter-token latencies)
    finish_time: float | None = None
    # (page size, chained keys of its first full blocks): a prefix-caching allocator's hashes of this request, kept
    # across failed admission attempts and preemptions so its blocks are hashed once.
    block_hashes: tuple[int, list[bytes]] | None = None
    # Parallel sampling: the id of the request (same prompt) this one forks from. With an allocator that supports
    # fork the engine holds it aside while that request prefills, then samples its first token from the same logits
    # and shares the prompt's pages (copy-on-write); otherwise it runs as an ordinary request.
    fork_of: str | None = None

    @classmethod
    def from_tokens(
        cls, request_id: str, prompt_token_ids: Sequence[int], sampling_params: SamplingParams, **kw: object
    ) -> Request:
        return cls(
            request_id=request_id,
            num_prompt_tokens=len(prompt_token_ids),
            prompt_token_ids=list(prompt_token_ids),
            sampling_params=sampling_params,
            **kw,  # type: ignore[arg-type]
        )

    @property
    def num_tokens(self) -> int:
        """Prompt plus generated tokens: the sequence length."""
        return self.num_prompt_tokens + self.num_output_tokens

    @property
    def num_tokens_to_compute(self) -> int:
        return self.num_tokens - self.num_computed_tokens

    @property
    def is_prefill(self) -> bool:
        """True until the prompt (or, after recompute preemption, prompt + outputs) is in the cache."""
        return self.num_output_tokens == 0 or (
            self.num_prompt_tokens + self.num_output_tokens - self.num_computed_tokens > 1
        )

    @property
    def remaining_output_tokens(self) -> int:
        return self.sampling_params.max_tokens - self.num_output_tokens

    @property
    def all_token_ids(self) -> list[int]:
        if self.prompt_token_ids is None:
            raise ValueError(f"request {self.request_id} carries no token ids (simulated request)")
        return [*self.prompt_token_ids, *self.output_token_ids]

    @property
    def is_done(self) -> bool:
        return self.status.is_done
