"""Output-length predictors for shortest-job-first scheduling, registered by name in ``PREDICTORS``."""

from __future__ import annotations

from abc import ABC, abstractmethod

from odrive.core.registry import Registry
from odrive.core.request import Request

PREDICTORS: Registry = Registry("output-length predictor")


class OutputLengthPredictor(ABC):
    """Predicts how many output tokens a request will produce in total; may learn from finished ones."""

    @abstractmethod
    def predict(self, request: Request) -> float: ...

    def observe(self, request: Request) -> None:
        """Learn from a finished request (``request.num_output_tokens`` is its true length)."""
        return None


@PREDICTORS.register("oracle")
class OraclePredictor(OutputLengthPredictor):
    """``sampling_params.max_tokens``: the true length in the simulator (which replays traces with
    ``ignore_eos``); an upper bound on the real engine."""

    def predict(self, request: Request) -> float:
        return float(request.sampling_params.max_tokens)


@PREDICTORS.register("bucket-mean")
class BucketMeanPredictor(OutputLengthPredictor):
    """The running mean output length of finished requests whose prompt length falls in the same power-of-two
    bucket; the mean over all buckets while a bucket is empty, ``prior`` before anything finished. Capped at
    ``max_tokens``."""

    def __init__(self, prior: float = 128.0) -> None:
        self.prior = float(prior)
        self._sum: dict[int, float] = {}
        self._count: dict[int, int] = {}
        self._total = 0.0
        self._n = 0

    @staticmethod
    def bucket(request: Request) -> int:
        return request.num_prompt_tokens.bit_length()

    def predict(self, request: Request) -> float:
        b = self.bucket(request)
        if b in self._count:
            mean = self._sum[b] / self._count[b]
        else:
            mean = self._total / self._n if self._n else self.prior
        return min(mean, float(request.sampling_params.max_tokens))

    def observe(self, request: Request) -> None:
        b = self.bucket(request)
        self._sum[b] = self._sum.get(b, 0.0) + request.num_output_tokens
        self._count[b] = self._count.get(b, 0) + 1
        self._total += request.num_output_tokens
        self._n += 1


def make_predictor(predictor: str | OutputLengthPredictor, **kwargs: object) -> OutputLengthPredictor:
    """A registered predictor by name (built with ``kwargs``), or ``predictor`` itself."""
    if isinstance(predictor, OutputLengthPredictor):
        return predictor
    return PREDICTORS.get(predictor)(**kwargs)
