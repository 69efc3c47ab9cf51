"""Cache-aware admission: the waiting request with the longest cached prefix first, with aging."""

from __future__ import annotations

from typing import Any

from odrive.core.request import Request
from odrive.errors import ConfigError
from odrive.schedulers.registry import SCHEDULERS
from odrive.schedulers.token_budget import TokenBudgetScheduler


@SCHEDULERS.register("cache-aware")
class CacheAwareScheduler(TokenBudgetScheduler):
    """Token-budget steps with chunked prefill; waiting requests are admitted (head-of-line) by the largest

        score = reusable tokens − aging × arrival_time

    where reusable tokens are ``allocator.cached_prefix_length(request)`` (or, for a swapped-out request,
    its computed tokens on the host) and ``aging`` is in tokens per second; ties go by arrival. Admitting
    requests that hit the prefix cache first saves their prefill before the cached pages get evicted.

    Starvation bound: a request arriving at ``t`` is admitted no later than any request arriving after
    ``t + c / aging``, where ``c`` bounds the other's reusable tokens (at most ``max_model_len`` or the
    pool's slots). With an allocator that caches nothing this is FCFS. Preemption as in ``sarathi``.
    """

    def __init__(self, *args: Any, aging: float = 1000.0, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        if aging < 0:
            raise ConfigError(f"aging must be >= 0 tokens per second, got {aging}")
        self.aging = float(aging)

    def reusable_tokens(self, request: Request) -> int:
        if request.request_id in self.swap_space:
            return request.num_computed_tokens
        return self.allocator.cached_prefix_length(request)

    def next_candidate(self) -> Request:
        return max(self.waiting, key=lambda r: (self.reusable_tokens(r) - self.aging * r.arrival_time,
                                                -r.arrival_time))  # fmt: skip
