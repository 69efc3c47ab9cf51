"""The discrete-event simulator: the shared odrive Engine on a simpy clock with a modeled executor."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import pandas as pd
import simpy
from mypy_extensions import mypyc_attr
from tqdm.auto import tqdm

from odrive.allocators import make_allocator
from odrive.core.engine import Engine
from odrive.core.latency_histogram import LatencyHistogram
from odrive.core.metrics import MetricsRecorder, summarize
from odrive.core.request import Request
from odrive.core.sampling_params import SamplingParams
from odrive.errors import InvariantViolation
from odrive.schedulers import make_scheduler
from sim.config import SimConfig
from sim.executor import executor_for
from sim.hardware import get_accelerator
from sim.host_swap import swap_rates
from sim.latency.registry import get_latency_model
from sim.model_spec import get_model_spec, num_kv_pages
from sim.workloads.request import Workload, checked_prompt_ids


@dataclass
class SimResult:
    """Per-request and per-step tables of one run, with its config, aggregate summary and inter-token latencies."""

    config: SimConfig
    num_pages: int
    requests: pd.DataFrame
    steps: pd.DataFrame
    summary: pd.Series
    free_pages_at_end: int = -1  # the pool after the run: every usable page when nothing leaked
    itl: LatencyHistogram | None = None  # every gap between two output tokens of a request


def build_engine(
    config: SimConfig, metrics: MetricsRecorder | None = None, clock: Callable[[], float] | None = None
) -> Engine:
    """The same Engine the real backend uses, with page count from the model and the executor the latency model
    asks for (:func:`sim.executor.executor_for`: ``SimExecutor`` by default, the exact
    ``CalibratedSimExecutor`` for ``calibrated``). ``clock``: the simulator's current time (the calibrated
    executor charges a switch penalty after idleness; without a clock only on compiled-shape changes). The
    engine's longest sequence is ``vSurge``'s default, ``2 × max_prefill_length`` (``SimConfig`` sets no
    ``max_model_len``); swap preemption is charged at the model spec's KV bytes per token (÷ ``tp``) over the
    accelerator's host bandwidth."""
    accelerator = get_accelerator(config.accelerator)
    model = get_model_spec(config.model)
    num_pages = config.num_pages
    if num_pages is None:
        num_pages = num_kv_pages(accelerator, model, config.page_size, config.hbm_utilization, config.tp)
    allocator = make_allocator(config.allocator, num_pages=num_pages, page_size=config.page_size,
                               **dict(config.allocator_kwargs))
    sched_cfg = config.scheduler_config()
    scheduler = make_scheduler(config.scheduler, sched_cfg, allocator)
    latency_kwargs = dict(config.latency_kwargs)
    if config.tp != 1:
        latency_kwargs["tp"] = config.tp
    latency = get_latency_model(config.latency_model, accelerator=accelerator, model=model, **latency_kwargs)
    kv_bytes_per_token, host_bandwidth = swap_rates(model, accelerator, config.tp)
    executor = executor_for(
        latency, sched_cfg, page_size=config.page_size, max_length=sched_cfg.max_model_len, clock=clock,
        kv_bytes_per_token=kv_bytes_per_token, host_bandwidth=host_bandwidth,
    )  # fmt: skip
    return Engine(
        scheduler,
        executor,
        metrics=metrics or MetricsRecorder(record_steps=config.record_steps),
        check_invariants=config.check_invariants,
    )


def latency_parameters(engine: Engine) -> dict[str, float]:
    """The physics of ``engine``'s latency model (efficiency factors, all-reduce α–β), as summaries report them."""
    model = getattr(engine.executor, "latency_model", None)
    return {k: float(v) for k, v in model.parameters().items()} if model is not None else {}


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; users subclass it
class Simulator:
    """Replays a workload against one engine replica; deterministic for a given config and workload."""

    def __init__(self, config: SimConfig, workload: Workload, *, progress: bool = False) -> None:
        self.config = config
        self.workload = workload
        self.env = simpy.Environment()
        self.engine = build_engine(config, clock=lambda: self.env.now)
        self.progress = progress
        self._times = workload.arrival_times.tolist()
        self._prompts = workload.prompt_lens.tolist()
        self._outputs = workload.output_lens.tolist()
        self._prompt_ids = getattr(workload, "prompt_token_ids", None)  # token ids for prefix caching, if any
        prios = workload.priorities
        self._priorities = prios.tolist() if prios is not None else [0] * len(self._times)
        self._next = 0
        self._error: BaseException | None = None

    @property
    def next_arrival(self) -> float:
        return self._times[self._next] if self._next < len(self._times) else math.inf

    def _admit_arrivals(self, now: float) -> None:
        engine, times = self.engine, self._times
        while self._next < len(times) and times[self._next] <= now:
            i = self._next
            self._next += 1
            request = Request(
                request_id=f"r{i}",
                num_prompt_tokens=self._prompts[i],
                sampling_params=SamplingParams(max_tokens=self._outputs[i], ignore_eos=True),
                arrival_time=times[i],
                prompt_token_ids=checked_prompt_ids(self._prompt_ids, i, self._prompts[i]),
                priority=self._priorities[i],
            )
            engine.add_request(request)

    def _loop(self, bar: tqdm | None):  # simpy process
        # simpy re-raises a failed process's exception as ``type(err)(*err.args)``, which breaks (or
        # strips) exceptions such as InvariantViolation; keep the original and raise it from run().
        try:
            yield from self._steps(bar)
        except Exception as err:
            self._error = err

    def _steps(self, bar: tqdm | None):
        env, engine = self.env, self.engine
        done_before = 0
        while True:
            self._admit_arrivals(env.now)
            if not engine.has_unfinished:
                if self.next_arrival == math.inf:
                    return
                yield env.timeout(self.next_arrival - env.now)
                continue
            outcome = engine.step(env.now, horizon=self.next_arrival - env.now)
            if outcome is None:
                if self.next_arrival == math.inf:
                    raise InvariantViolation("progress", "requests remain but none can be scheduled")
                yield env.timeout(self.next_arrival - env.now)
                continue
            yield env.timeout(outcome.duration)
            if bar is not None and engine.metrics.num_done - done_before >= 256:
                bar.update(engine.metrics.num_done - done_before)
                done_before = engine.metrics.num_done

    def run(self) -> SimResult:
        bar = tqdm(total=len(self.workload), unit="req", desc="simulating", disable=not self.progress)
        with bar:
            self.env.process(self._loop(bar))
            self.env.run()
            if self._error is not None:
                raise self._error
            bar.update(self.engine.metrics.num_done - bar.n)
        metrics = self.engine.metrics
        requests = metrics.requests_frame().sort_values("arrival_time", kind="stable").reset_index(drop=True)
        steps = metrics.steps_frame()
        summary = summarize(requests, steps if len(steps) else None)
        summary["num_pages"] = float(self.engine.allocator.num_usable_pages)
        swaps = self.engine.swap_stats
        summary["swap_pages_out"] = float(swaps.pages_out)
        summary["swap_pages_in"] = float(swaps.pages_in)
        summary["swap_seconds"] = float(swaps.seconds)
        for key, value in latency_parameters(self.engine).items():
            summary[key] = value
        return SimResult(self.config, self.engine.allocator.num_pages, requests, steps, summary,
                         self.engine.allocator.num_free_pages, metrics.itl)  # fmt: skip


def simulate(config: SimConfig, workload: Workload, *, progress: bool = False) -> SimResult:
    """Run ``workload`` on one simulated replica described by ``config``."""
    return Simulator(config, workload, progress=progress).run()
