"""Shortest-job-first by predicted output length, with aging against starvation."""

from __future__ import annotations

from typing import Any

from odrive.core.request import Request
from odrive.errors import ConfigError
from odrive.schedulers.predictors import OutputLengthPredictor, make_predictor
from odrive.schedulers.registry import SCHEDULERS
from odrive.schedulers.token_budget import TokenBudgetScheduler


@SCHEDULERS.register("sjf")
class SJFScheduler(TokenBudgetScheduler):
    """Token-budget steps with chunked prefill; waiting requests are admitted (head-of-line) by the smallest

        score = predicted remaining output tokens + aging × arrival_time

    where the prediction comes from ``predictor`` (a name in ``PREDICTORS``: ``"oracle"``, ``"bucket-mean"``;
    or an ``OutputLengthPredictor``; ``predictor_kwargs`` build it) and ``aging`` is in tokens per second.
    Adding ``aging × arrival_time`` equals subtracting ``aging × time waited`` from every score at once, so
    the order only changes when a request arrives or finishes (the simulator's fast-forward stays exact).

    Starvation bound: a request that arrived at ``t`` with predicted remaining length ``p`` is admitted no
    later than any request arriving after ``t + p / aging`` (such a request always scores higher; for the
    oracle ``p <= max_tokens``). ``aging=0`` is pure SJF and can starve long requests. Preemption as in
    ``sarathi`` (the newest running request).
    """

    def __init__(self, *args: Any, predictor: str | OutputLengthPredictor = "oracle", aging: float = 100.0,
                 predictor_kwargs: dict[str, Any] | None = None, **kwargs: Any) -> None:  # fmt: skip
        super().__init__(*args, **kwargs)
        if aging < 0:
            raise ConfigError(f"aging must be >= 0 tokens per second, got {aging}")
        self.predictor = make_predictor(predictor, **(predictor_kwargs or {}))
        self.aging = float(aging)

    def predicted_remaining(self, request: Request) -> float:
        return max(self.predictor.predict(request) - request.num_output_tokens, 1.0)

    def score(self, request: Request) -> float:
        return self.predicted_remaining(request) + self.aging * request.arrival_time

    def next_candidate(self) -> Request:
        return min(self.waiting, key=self.score)  # ties: queue order

    def on_finished(self, request: Request) -> None:
        self.predictor.observe(request)
