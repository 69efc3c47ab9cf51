"""One in-flight request as seen by its caller: incremental text, subscribers, and the final result."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable

from odrive.core.request import Request
from odrive.processor import Processor
from odrive.vsurge.results import GenerationResult, RequestMetrics, StreamDelta


class RequestHandle:
    """Collects a request's tokens (from the engine thread) and fans deltas out to subscribers."""

    def __init__(self, request: Request, prompt: str | None, processor: Processor | None) -> None:
        self.request = request
        self.prompt = prompt
        self.processor = processor
        self._lock = threading.Lock()
        self._done = threading.Event()
        self._history: list[StreamDelta] = []
        self._subscribers: list[Callable[[StreamDelta], None]] = []
        self._text = ""
        self._result: GenerationResult | None = None
        self._error: BaseException | None = None

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def done(self) -> bool:
        return self._done.is_set()

    def _decode(self, ids: list[int]) -> str:
        return self.processor.decode(ids) if self.processor is not None else ""

    def _stop_cut(self, text: str) -> int | None:
        cuts = [i for s in self.request.sampling_params.stop if (i := text.find(s)) >= 0]
        return min(cuts) if cuts else None

    def hit_stop_string(self) -> bool:
        """Called by the engine after each new token: has the output reached a stop string?"""
        if not self.request.sampling_params.stop or self.processor is None:
            return False
        return self._stop_cut(self._decode(self.request.output_token_ids)) is not None

    def _emit(self, delta: StreamDelta) -> None:
        with self._lock:
            self._history.append(delta)
            subscribers = list(self._subscribers)
        for callback in subscribers:
            callback(delta)

    def push(self, token: int) -> None:
        text = self._decode(self.request.output_token_ids)
        cut = self._stop_cut(text)
        text = text if cut is None else text[:cut]
        if text.endswith("\ufffd"):  # an incomplete UTF-8 sequence: wait for its remaining bytes
            text = self._text
        delta, self._text = text[len(self._text) :], text
        self._emit(StreamDelta(self.request_id, delta, [token]))

    def finish(self) -> None:
        r = self.request
        text = self._decode(r.output_token_ids)
        cut = self._stop_cut(text) if self.processor is not None else None
        text = text if cut is None else text[:cut]
        metrics = RequestMetrics(r.arrival_time, r.first_token_time, r.finish_time, r.num_prompt_tokens,
                                 r.num_output_tokens, r.num_preemptions)
        reason = r.finish_reason.value if r.finish_reason else "unknown"
        self._result = GenerationResult(r.request_id, self.prompt, text, list(r.output_token_ids), reason, metrics)
        tail, self._text = text[len(self._text) :], text
        self._emit(StreamDelta(self.request_id, tail, [], True, reason, self._result))
        self._done.set()

    def fail(self, error: BaseException) -> None:
        self._error = error
        self._emit(StreamDelta(self.request_id, "", [], True, "error", error=str(error)))
        self._done.set()

    def subscribe(self, callback: Callable[[StreamDelta], None]) -> None:
        """Receive every delta, including those produced before subscribing."""
        with self._lock:
            past = list(self._history)
            self._subscribers.append(callback)
        for delta in past:
            callback(delta)

    def wait(self, timeout: float | None = None) -> bool:
        return self._done.wait(timeout)

    def result(self) -> GenerationResult:
        self._done.wait()
        if self._error is not None:
            raise RuntimeError(f"request {self.request_id} failed") from self._error
        assert self._result is not None
        return self._result

    async def aresult(self) -> GenerationResult:
        if not self.done:
            await asyncio.get_running_loop().run_in_executor(None, self._done.wait)
        return self.result()
