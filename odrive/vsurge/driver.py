"""vSurge: the user-facing real engine (EasyDeL oDriver's API), on the shared odrive Engine."""

from __future__ import annotations

import asyncio
import dataclasses
import itertools
import logging
import queue
import threading
import time
from collections.abc import AsyncIterator, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

from odrive.core.assembly import EngineSpec
from odrive.core.batch_builder import BatchBuilder
from odrive.core.buckets import step_buckets
from odrive.core.engine import Engine, StepOutcome
from odrive.core.request import FinishReason, Request
from odrive.core.sampling_params import SamplingParams
from odrive.models.checkpoint import Model, load_model
from odrive.processor import Processor, load_processor
from odrive.runtime.jax_executor import JaxExecutor
from odrive.runtime.memory import MemoryPlan, plan_kv_pages
from odrive.schedulers import SchedulerConfig
from odrive.schedulers.plan import StepPlan
from odrive.vsurge.handle import RequestHandle
from odrive.vsurge.results import GenerationResult, StreamDelta

log = logging.getLogger("odrive")
Prompt = str | Sequence[int]


class EngineFailure(RuntimeError):
    """The engine gave up: step after step failed every request it ran (a broken device, not a bad request)."""


class vSurge:  # noqa: N801 - the name users know from EasyDeL
    """A paged-attention inference engine around one model. Build it with ``create_odriver``.

    ``generate``/``stream`` drive the engine in the calling thread unless ``start()`` launched the
    background engine thread; ``agenerate``/``astream`` start it on demand.
    """

    def __init__(self, engine: Engine, executor: JaxExecutor, model: Model, processor: Processor | None,
                 memory_plan: MemoryPlan, name: str) -> None:
        self.engine = engine
        self.executor = executor
        self.model = model
        self.processor = processor
        self.memory_plan = memory_plan
        self.vsurge_name = name
        self._lock = threading.RLock()
        self._work = threading.Condition(self._lock)
        self._handles: dict[str, RequestHandle] = {}
        self._ids = itertools.count()
        self._thread: threading.Thread | None = None
        self._running = False
        self._error: BaseException | None = None
        self._failed_steps = 0  # consecutive steps in which every scheduled request failed
        # After this many such steps in a row the engine gives up (the device is taken to be broken): the engine
        # thread ends, ``failed`` turns True and a server stops being healthy, so a supervisor restarts it.
        self.max_consecutive_failed_steps = 8
        engine.stop_checker = self._hit_stop_string

    # --- construction -----------------------------------------------------------------------------
    @classmethod
    def create_odriver(
        cls,
        model: Model | str | Path,
        processor: Processor | str | Path | None = None,
        *,
        max_prefill_length: int = 512,
        prefill_lengths: Sequence[int] | None = None,
        page_size: int = 128,
        hbm_utilization: float = 0.6,
        max_concurrent_prefill: int = 1,
        max_concurrent_decodes: int | None = None,
        seed: int = 894,
        vsurge_name: str | None = None,
        scheduler: str = "fcfs",
        allocator: str = "free-list",
        max_length: int | None = None,
        max_num_batched_tokens: int | None = None,
        check_invariants: bool = False,
        record_steps: bool = True,
        num_pages: int | None = None,
        chunk_size: int | None = None,
        scheduler_kwargs: Mapping[str, Any] | None = None,
        allocator_kwargs: Mapping[str, Any] | None = None,
        tensor_parallel_size: int = 1,
        preemption_mode: str = "recompute",
        swap_space_gib: float = 4.0,
        swap_space_pages: int | None = None,
        kv_cache_bytes: int | None = None,
        compute_dtype: str | None = None,
    ) -> vSurge:
        """Every argument acts: see docs in the README. ``max_length`` caps prompt + generated tokens
        (default ``2 × max_prefill_length``); ``max_concurrent_decodes`` defaults to 8 × max_concurrent_prefill.
        ``num_pages`` overrides the page count the ``hbm_utilization`` plan gives (like vLLM's
        ``num_gpu_blocks_override``), e.g. to reproduce a memory-pressure experiment on any device; ``kv_cache_bytes``
        sizes it from a byte budget instead of device memory (for devices that report none). ``compute_dtype``
        (e.g. ``"float32"`` over a model loaded in bfloat16) is the dtype of the activations: weights and K/V stay
        in the model's dtype, half the bytes to read, while the arithmetic runs in float32.
        ``chunk_size`` caps chunked-prefill chunks; ``scheduler_kwargs`` are the policy's options (e.g.
        ``{"predictor": "bucket-mean"}`` for ``sjf``). ``preemption_mode="swap"`` moves preempted requests'
        K/V to host memory, at most ``swap_space_pages`` pages (default: ``swap_space_gib`` worth).
        """
        mesh = None
        if tensor_parallel_size > 1:
            from odrive.parallel import make_tp_mesh

            mesh = make_tp_mesh(tensor_parallel_size)
        if not isinstance(model, Model):
            model = load_model(model, mesh=mesh)  # with a mesh: straight from host memory to each device's shard
        if processor is not None and not isinstance(processor, Processor):
            processor = load_processor(processor)
        max_length = max_length or 2 * max_prefill_length
        max_concurrent_decodes = max_concurrent_decodes or 8 * max_concurrent_prefill
        sched_cfg = SchedulerConfig(
            max_prefill_length=max_prefill_length,
            prefill_lengths=tuple(prefill_lengths or ()),
            max_concurrent_prefill=max_concurrent_prefill,
            max_concurrent_decodes=max_concurrent_decodes,
            max_num_batched_tokens=max_num_batched_tokens,
            max_model_len=max_length,
            chunk_size=chunk_size,
            scheduler_kwargs=tuple(dict(scheduler_kwargs or {}).items()),
            sliding_window=model.config.sliding_window,  # pages behind the window are released as it passes
        )
        cfg = model.config
        if mesh is not None:
            from odrive.parallel import check_tp, per_device_kv_pages

            check_tp(cfg, tensor_parallel_size)
            plan = per_device_kv_pages(
                cfg, tp=tensor_parallel_size, page_size=page_size, hbm_utilization=hbm_utilization,
                max_running=max_concurrent_decodes, max_model_len=max_length, dtype=model.dtype,
                devices=list(mesh.devices.flat), num_pages_override=num_pages, kv_cache_bytes=kv_cache_bytes,
            )  # fmt: skip
        else:
            plan = plan_kv_pages(
                weight_bytes=cfg.num_parameters() * model.dtype.itemsize,
                kv_bytes_per_token=cfg.kv_bytes_per_token(model.dtype),
                page_size=page_size,
                hbm_utilization=hbm_utilization,
                max_running=max_concurrent_decodes,
                max_model_len=max_length,
                num_pages_override=num_pages,
                kv_cache_bytes=kv_cache_bytes,
            )
        if preemption_mode == "swap" and swap_space_pages is None:  # the host holds whole pages (all shards)
            swap_space_pages = int(swap_space_gib * 2**30 // (plan.page_bytes * tensor_parallel_size))
        sched_cfg = dataclasses.replace(sched_cfg, preemption_mode=preemption_mode,
                                        swap_space_pages=swap_space_pages or 0)  # fmt: skip
        pages_per_seq = -(-max_length // page_size)
        token_buckets, seq_buckets = step_buckets(sched_cfg.prefill_lengths, sched_cfg.token_budget,
                                                  max_concurrent_decodes)  # fmt: skip
        builder = BatchBuilder(page_size, token_buckets, seq_buckets, pages_per_seq=pages_per_seq)
        executor = JaxExecutor(model, plan.num_pages, page_size, builder, seed=seed, mesh=mesh,
                               compute_dtype=compute_dtype)  # fmt: skip
        spec = EngineSpec(
            scheduler_config=sched_cfg, num_pages=plan.num_pages, page_size=page_size, scheduler=scheduler,
            allocator=allocator, allocator_kwargs=tuple(dict(allocator_kwargs or {}).items()),
            eos_token_ids=frozenset(cfg.eos_token_ids) | frozenset(processor.eos_token_ids if processor else ()),
            check_invariants=check_invariants, record_steps=record_steps, fast_forward=True,
        )  # fmt: skip
        engine = spec.build(executor)
        name = vsurge_name or f"odrive-{cfg.num_hidden_layers}L-{cfg.hidden_size}"
        return cls(engine, executor, model, processor, plan, name)

    # --- requests -----------------------------------------------------------------------------------
    def _tokenize(self, prompt: Prompt) -> tuple[str | None, list[int]]:
        if isinstance(prompt, str):
            if not prompt:
                raise ValueError("empty prompt: the prompt text is empty")
            if self.processor is None:
                raise ValueError("a text prompt needs a processor; pass token ids or create_odriver(processor=...)")
            return prompt, self.processor.encode(prompt)
        ids = [int(t) for t in prompt]
        vocab = self.model.config.vocab_size
        bad = [t for t in ids if not 0 <= t < vocab]
        if bad:
            raise ValueError(f"token ids {bad[:5]} are outside the vocabulary [0, {vocab})")
        return None, ids

    def _make_request(self, prompt: Prompt, params: SamplingParams, priority: int = 0) -> tuple[Request, RequestHandle]:
        if self._error is not None:
            raise RuntimeError(f"the engine has failed ({self._error}); no request is accepted") from self._error
        if not isinstance(params, SamplingParams):
            raise TypeError(f"sampling_params must be odrive.SamplingParams, got {type(params).__name__}")
        text, ids = self._tokenize(prompt)
        if not ids:
            raise ValueError("empty prompt: it encodes to zero tokens")
        if params.n != 1:
            raise ValueError("n > 1 yields several results: use generate(), which fans the prompt out n times")
        rid = f"{self.vsurge_name}-{next(self._ids)}"
        request = Request.from_tokens(rid, ids, params, priority=priority)
        reason = self.engine.validate(request)
        if reason is not None:
            raise ValueError(reason)
        return request, RequestHandle(request, text, self.processor)

    def submit(
        self, prompt: Prompt, sampling_params: SamplingParams | None = None, priority: int = 0
    ) -> RequestHandle:
        """Queue one request (validated first: bad input raises here and touches nothing else)."""
        request, handle = self._make_request(prompt, sampling_params or SamplingParams(), priority)
        with self._work:
            self._handles[request.request_id] = handle
            self.engine.add_request(request, now=time.perf_counter())
            self._work.notify()
        return handle

    def abort(self, request_id: str) -> bool:
        """Cancel a request; its pages return to the pool and its stream ends with reason 'aborted'."""
        with self._lock:
            if not self.engine.abort(request_id, time.perf_counter()):
                return False
            handle = self._handles.pop(request_id)
        handle.finish()
        return True

    # --- the engine loop -------------------------------------------------------------------------
    def step(self) -> StepOutcome | None:
        """Run one engine step and deliver its tokens to the request handles.

        A request whose execution raises fails alone (its handle ends with reason ``error``; see
        ``odrive.core.step_isolation``); an error the engine cannot pin on one request fails that step's requests.
        Either way the engine goes on. Only ``max_consecutive_failed_steps`` failed steps in a row raise
        ``EngineFailure``.
        """
        with self._lock:
            now = time.perf_counter()
            try:
                outcome = self.engine.step(now)
            except Exception as exc:  # noqa: BLE001 - not pinned on one request: fail the step's requests
                outcome = self._recover(exc, now)
            if outcome is None:
                return None
            failed = [(h, r.status_message) for r in outcome.failed if (h := self._handles.pop(r.request_id, None))]
            for rid, token in outcome.new_token_ids.items():
                handle = self._handles.get(rid)
                if handle is not None and not self._push(handle, token):
                    failed.append((self._handles.pop(rid), handle.request.status_message))
            finished = [h for r in outcome.finished if (h := self._handles.pop(r.request_id, None))]
        for handle in finished:
            try:
                handle.finish()
            except Exception as exc:  # noqa: BLE001 - e.g. the tokenizer cannot decode the output
                handle.fail(RuntimeError(f"decoding the output failed: {type(exc).__name__}: {exc}"))
        for handle, message in failed:
            handle.fail(RuntimeError(message))
        self._count_failed_step(outcome)
        return outcome

    def _push(self, handle: RequestHandle, token: int) -> bool:
        """``handle.push(token)``; if it raises, the request fails (ended as ERROR, pages freed): False."""
        try:
            handle.push(token)
            return True
        except Exception as exc:  # noqa: BLE001 - one request's decoding must not stop the others
            message = f"decoding the output failed: {type(exc).__name__}: {exc}"
            self.engine.abort(handle.request_id, time.perf_counter(), message, FinishReason.ERROR)
            handle.request.status_message = message
            return False

    def _recover(self, exc: Exception, now: float) -> StepOutcome:
        """After a step raised outside the executor: end its requests (every request in flight when the scheduler
        itself raised) with the error, then check the allocator is still consistent (if not, this raises and the
        engine stops)."""
        log.exception("engine step failed; failing its requests")
        plan = self.engine.current_plan
        ids = list(plan.num_scheduled_tokens) if plan is not None else list(self.engine.requests)
        message = f"engine step failed: {type(exc).__name__}: {exc}"
        outcome = StepOutcome(now, 0.0, 0, plan or StepPlan())
        for rid in ids:
            request = self.engine.requests.get(rid)
            if request is not None and self.engine.abort(rid, now, message, FinishReason.ERROR):
                outcome.failed.append(request)
        for rid, handle in self._handles.items():  # requests that ended in the step before it raised
            request = handle.request
            if rid not in self.engine.requests and request not in outcome.failed:
                finished = request.finish_reason in (FinishReason.LENGTH, FinishReason.STOP)
                (outcome.finished if finished else outcome.failed).append(request)
        self.engine.allocator.check_invariants()
        return outcome

    def _count_failed_step(self, outcome: StepOutcome) -> None:
        scheduled = len(outcome.plan.num_scheduled_tokens)
        if outcome.failed and len(outcome.failed) >= scheduled and not outcome.new_token_ids:
            self._failed_steps += 1
            if self._failed_steps >= self.max_consecutive_failed_steps:
                raise EngineFailure(
                    f"{self._failed_steps} engine steps in a row failed every request they ran; last: "
                    f"{outcome.failed[-1].status_message}"
                )
        elif outcome.num_steps:
            self._failed_steps = 0

    def _drive_until(self, handles: Sequence[RequestHandle]) -> None:
        if self._running:
            for h in handles:
                h.wait()
            self._raise_if_failed()
            return
        while not all(h.done for h in handles):
            if self.step() is None and not all(h.done for h in handles):
                raise RuntimeError("engine made no progress although requests are pending")

    def _loop(self) -> None:
        try:
            while self._running:
                with self._work:
                    while self._running and not self.engine.has_unfinished:
                        self._work.wait(timeout=0.1)
                if self._running:
                    self.step()
        except BaseException as exc:  # noqa: BLE001 - surfaced to every waiter
            log.exception("engine thread failed")
            self._error = exc
            self._running = False
            with self._lock:
                handles, self._handles = list(self._handles.values()), {}
            for h in handles:
                h.fail(exc)

    def _raise_if_failed(self) -> None:
        if self._error is not None:
            raise RuntimeError("the engine thread failed") from self._error

    @property
    def failed(self) -> bool:
        """True once the engine thread has died (``error`` says why); requests are then refused."""
        return self._error is not None

    @property
    def error(self) -> BaseException | None:
        return self._error

    def start(self) -> vSurge:
        """Run the engine in a background thread (``generate`` then only waits)."""
        with self._lock:
            if self._thread is None:
                self._running = True
                self._thread = threading.Thread(target=self._loop, name=f"{self.vsurge_name}-engine", daemon=True)
                self._thread.start()
        return self

    def stop(self) -> None:
        """Stop the background thread; unfinished requests stay queued for the next start/generate."""
        thread = self._thread
        self._running = False
        with self._work:
            self._work.notify_all()
        if thread is not None:
            thread.join()
        self._thread = None

    def __enter__(self) -> vSurge:
        return self.start()

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # --- user API -----------------------------------------------------------------------------------
    def generate(
        self,
        prompts: Prompt | Sequence[Prompt],
        sampling_params: SamplingParams | Sequence[SamplingParams] | None = None,
    ) -> list[GenerationResult]:
        """Generate for each prompt; every prompt is validated before any is queued.

        With ``n > 1`` a prompt is fanned out into ``n`` requests (sample ``i`` seeded ``seed + i`` when a seed is
        given) and its ``n`` results come back consecutively, so the list has ``sum(n)`` entries. With an allocator
        that supports fork (``prefix-cache``) samples ``1 .. n-1`` fork from sample 0 (``Request.fork_of``): the
        prompt is computed once, each sample draws its first token from the same logits, and all share the
        prompt's pages, its partial last page too (copied on first write). The tokens are those of ``n``
        independent requests.
        """
        batch = [prompts] if isinstance(prompts, str) or _is_token_list(prompts) else list(prompts)
        params = sampling_params if isinstance(sampling_params, Sequence) else [sampling_params] * len(batch)
        if len(params) != len(batch):
            raise ValueError(f"{len(params)} sampling params for {len(batch)} prompts")
        fork = self.engine.allocator.supports_fork
        made = []
        for p, sp in zip(batch, params, strict=True):
            samples = [self._make_request(p, sample) for sample in _fan_out(sp or SamplingParams())]
            if fork:
                for request, _ in samples[1:]:
                    request.fork_of = samples[0][0].request_id
            made += samples
        with self._work:
            for request, handle in made:
                self._handles[request.request_id] = handle
                self.engine.add_request(request, now=time.perf_counter())
            self._work.notify()
        handles = [h for _, h in made]
        self._drive_until(handles)
        return [h.result() for h in handles]

    def stream(self, prompt: Prompt, sampling_params: SamplingParams | None = None) -> Iterator[StreamDelta]:
        """Yield deltas of new text/tokens as they are generated; the last has ``finished=True``."""
        handle = self.submit(prompt, sampling_params)
        sink: queue.SimpleQueue[StreamDelta] = queue.SimpleQueue()
        handle.subscribe(sink.put)
        while True:
            if not self._running:
                while sink.empty() and not handle.done:
                    self.step()
            delta = sink.get()
            yield delta
            if delta.finished:
                return

    async def agenerate(
        self, prompts: Prompt | Sequence[Prompt], sampling_params: SamplingParams | None = None
    ) -> list[GenerationResult]:
        """Async ``generate`` (starts the background engine thread if needed)."""
        batch = [prompts] if isinstance(prompts, str) or _is_token_list(prompts) else list(prompts)
        self.start()
        handles = [self.submit(p, sampling_params) for p in batch]
        return [await h.aresult() for h in handles]

    async def astream(
        self, prompt: Prompt, sampling_params: SamplingParams | None = None
    ) -> AsyncIterator[StreamDelta]:
        """Async ``stream`` (starts the background engine thread if needed)."""
        self.start()
        loop = asyncio.get_running_loop()
        sink: asyncio.Queue[StreamDelta] = asyncio.Queue()
        handle = self.submit(prompt, sampling_params)
        handle.subscribe(lambda d: loop.call_soon_threadsafe(sink.put_nowait, d))
        try:
            while True:
                delta = await sink.get()
                yield delta
                if delta.finished:
                    return
        finally:
            if not handle.done:  # the consumer went away: free the request's pages
                self.abort(handle.request_id)

    def count_tokens(self, text: str) -> int:
        if self.processor is None:
            raise ValueError("count_tokens needs a processor")
        return len(self.processor.encode(text))

    # --- stop strings ---------------------------------------------------------------------------------
    def _hit_stop_string(self, request: Request) -> bool:
        handle = self._handles.get(request.request_id)
        return handle is not None and handle.hit_stop_string()

    @property
    def is_idle(self) -> bool:
        """True when no request is unfinished and no background thread runs: the caller may drive the engine
        itself, step by step (as the profiler's replay does)."""
        with self._lock:
            return self._thread is None and not self.engine.has_unfinished

    def drain(self) -> None:
        """Return once every queued request is done: stepped in this thread, or, while the background thread runs,
        waited for (raising if it failed)."""
        with self._lock:
            handles = list(self._handles.values())
        self._drive_until(handles)

    @property
    def is_running(self) -> bool:
        """True while the background engine thread (``start()``) is alive and has not failed."""
        thread = self._thread
        return self._running and self._error is None and thread is not None and thread.is_alive()

    @property
    def num_free_pages(self) -> int:
        return self.engine.allocator.num_free_pages

    @property
    def num_usable_pages(self) -> int:
        return self.engine.allocator.num_usable_pages


def _fan_out(params: SamplingParams) -> list[SamplingParams]:
    """``n`` single-sample copies of ``params``; seeded ones get consecutive seeds so samples differ."""
    if params.n == 1:
        return [params]
    return [
        dataclasses.replace(params, n=1, seed=None if params.seed is None else params.seed + i)
        for i in range(params.n)
    ]


def _is_token_list(x: object) -> bool:
    return isinstance(x, Sequence) and not isinstance(x, str) and len(x) > 0 and isinstance(x[0], int)


create_odriver = vSurge.create_odriver
