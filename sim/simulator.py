"""The discrete-event simulator: the shared odrive Engine on a simpy clock with a modeled executor."""

from __future__ import annotations

import math
from collections.abc import Callable, Generator
from dataclasses import dataclass
from typing import Any

import pandas as pd
import simpy
from mypy_extensions import mypyc_attr
from tqdm.auto import tqdm

from odrive.core.engine import Engine, StepOutcome
from odrive.core.executor import Executor
from odrive.core.latency_histogram import LatencyHistogram
from odrive.core.metrics import MetricsRecorder, summarize
from odrive.core.request import Request
from odrive.core.sampling_params import SamplingParams
from odrive.errors import InvariantViolation
from odrive.schedulers.config import SchedulerConfig
from sim.config import SimConfig
from sim.executor import executor_for
from sim.hardware import get_accelerator
from sim.host_swap import swap_rates
from sim.latency.executor_setup import ExecutorSetup
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


# Builds a simulated engine's executor from its scheduler config and the simulator's clock (see build_engine).
ExecutorFactory = Callable[[SchedulerConfig, Callable[[], float] | None], Executor]


def build_engine(
    config: SimConfig, metrics: MetricsRecorder | None = None, clock: Callable[[], float] | None = None, *,
    executor: ExecutorFactory | None = None, fast_forward: bool = True,
) -> Engine:  # fmt: skip
    """The same Engine the real backend uses, assembled by the same :class:`~odrive.core.assembly.EngineSpec`
    (:meth:`SimConfig.engine_spec`), with page count from the model and the executor the latency model
    asks for (:func:`sim.executor.executor_for`: ``SimExecutor`` by default, the exact
    ``CalibratedSimExecutor`` for ``calibrated``) unless ``executor`` builds another (from the scheduler config and
    the clock). ``clock``: the simulator's current time (the calibrated
    executor charges a switch penalty after idleness; without a clock only on compiled-shape changes). The
    engine's longest sequence is ``vSurge``'s default, ``2 × max_prefill_length`` (``SimConfig`` sets no
    ``max_model_len``); swap preemption is charged at the model spec's KV bytes per token (÷ ``tp``) over the
    accelerator's host bandwidth. ``fast_forward=False`` steps decode runs one at a time (the real engine's
    granularity)."""
    num_pages = config.num_pages
    if num_pages is None:
        accelerator, model = get_accelerator(config.accelerator), get_model_spec(config.model)
        num_pages = num_kv_pages(accelerator, model, config.page_size, config.hbm_utilization, config.tp)
    spec = config.engine_spec(num_pages, fast_forward=fast_forward)
    make = executor or (lambda sched_cfg, clock: default_executor(config, sched_cfg, clock))
    return spec.build(make(spec.scheduler_config, clock), metrics=metrics)


def default_executor(config: SimConfig, sched_cfg: SchedulerConfig, clock: Callable[[], float] | None) -> Executor:
    """The executor ``config``'s latency model asks for (:func:`sim.executor.executor_for`), swap preemption
    charged at the model spec's KV bytes per token over the accelerator's host bandwidth."""
    accelerator = get_accelerator(config.accelerator)
    model = get_model_spec(config.model)
    latency_kwargs = dict(config.latency_kwargs)
    if config.tp != 1:
        latency_kwargs["tp"] = config.tp
    latency = get_latency_model(config.latency_model, accelerator=accelerator, model=model, **latency_kwargs)
    kv_bytes_per_token, host_bandwidth = swap_rates(model, accelerator, config.tp)
    setup = ExecutorSetup(config.page_size, sched_cfg.max_model_len, clock, kv_bytes_per_token, host_bandwidth)
    return executor_for(latency, sched_cfg, setup)


def latency_parameters(engine: Engine) -> dict[str, float]:
    """The physics of ``engine``'s latency model (efficiency factors, all-reduce α–β), as summaries report them."""
    model = getattr(engine.executor, "latency_model", None)
    return {k: float(v) for k, v in model.parameters().items()} if model is not None else {}


class WorkloadRequests:
    """The one workload-to-request conversion, shared by the :class:`Simulator` and every cluster replica: request
    ``i`` of a workload as the engine takes it (id ``r{i}``, ``ignore_eos`` so it runs its output length, its prompt
    token ids when the workload has them, its priority). The columns are read once as Python lists (cheaper to
    index than numpy arrays); ``SamplingParams`` are frozen, so requests of one output length share one."""

    def __init__(self, workload: Workload) -> None:
        self.times: list[float] = workload.arrival_times.tolist()
        self.prompts: list[int] = workload.prompt_lens.tolist()
        self.outputs: list[int] = workload.output_lens.tolist()
        prios = workload.priorities
        self.priorities: list[int] = prios.tolist() if prios is not None else [0] * len(self.times)
        self.token_ids = getattr(workload, "prompt_token_ids", None)  # token ids for prefix caching, if any
        self._params: dict[int, SamplingParams] = {}

    def __len__(self) -> int:
        return len(self.times)

    def request(self, i: int) -> Request:
        out = self.outputs[i]
        params = self._params.get(out)
        if params is None:
            params = self._params[out] = SamplingParams(max_tokens=out, ignore_eos=True)
        prompt = self.prompts[i]
        return Request(
            request_id=f"r{i}",
            num_prompt_tokens=prompt,
            sampling_params=params,
            arrival_time=self.times[i],
            prompt_token_ids=checked_prompt_ids(self.token_ids, i, prompt),
            priority=self.priorities[i],
        )


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; the cluster's Replica subclasses it
class ReplicaLoop:
    """One engine replica on a simpy clock: the step loop of the :class:`Simulator` and of every cluster replica
    (``sim.cluster.replica.Replica``).

    At every step boundary it admits the arrivals due (:meth:`_admit`), steps the engine with the time to the next
    arrival as the fast-forward horizon (:meth:`_horizon`), and when nothing can run waits for the next arrival
    (:meth:`_wait`); ``None`` from ``_wait`` ends the process (an error if requests remain). This class serves the
    arrivals ``own`` (request indices in arrival order; default: the whole workload) itself; a cluster replica fed
    by a router overrides the three hooks. :meth:`_before` and :meth:`_stepped` are called before each boundary's
    admission and after each step that ran.
    """

    def __init__(self, env: simpy.Environment, engine: Engine, requests: WorkloadRequests,
                 own: list[int] | None = None, label: str = "") -> None:  # fmt: skip
        self.env = env
        self.engine = engine
        self.requests = requests
        self.label = label  # prefixes the no-progress error
        self._own: list[int] = list(range(len(requests))) if own is None else own
        times = requests.times
        self._own_times: list[float] = times if own is None else [times[i] for i in own]
        self._pos = 0
        self._next_own = self._own_time(0)

    @property
    def next_arrival(self) -> float:
        """When the next of this replica's own arrivals comes (inf when none is left)."""
        return self._next_own

    def _own_time(self, pos: int) -> float:
        times = self._own_times
        return times[pos] if pos < len(times) else math.inf

    # --- the hooks -----------------------------------------------------------------------------------
    def _before(self, now: float) -> None:
        """Called at every step boundary, before admission."""

    def _add(self, i: int) -> None:
        """Hand request ``i`` to the engine (a subclass may check or reshape it first)."""
        self.engine.add_request(self.requests.request(i))

    def _admit(self, now: float) -> None:
        """Admit the own arrivals due by ``now``."""
        if self._next_own > now:
            return
        own, times, pos, n = self._own, self._own_times, self._pos, len(self._own)
        while pos < n and times[pos] <= now:
            self._add(own[pos])
            pos += 1
        self._pos = pos
        self._next_own = self._own_time(pos)

    def _horizon(self, now: float) -> float:
        """How far a decode run may fast-forward from ``now``: to the next arrival."""
        return self._next_own - now

    def _wait(self) -> simpy.Event | None:
        """What to wait on for the next arrival; None if none can come."""
        t = self._next_own
        return None if t == math.inf else self.env.timeout(t - self.env.now)

    def _stepped(self, outcome: StepOutcome) -> None:
        """Called after each step that ran (before its duration elapses)."""

    # --- the process -----------------------------------------------------------------------------------
    def run(self) -> Generator[simpy.Event, Any, None]:
        """The simpy process: admit, step, wait, until no request is left and none can come."""
        env, engine = self.env, self.engine
        while True:
            now = env.now
            self._before(now)
            self._admit(now)
            if not engine.has_unfinished:
                wait = self._wait()
                if wait is None:
                    return
                yield wait
                continue
            outcome = engine.step(now, horizon=self._horizon(now))
            if outcome is None:
                wait = self._wait()
                if wait is None:
                    raise InvariantViolation("progress", f"{self.label}requests remain but none can be scheduled")
                yield wait
                continue
            self._stepped(outcome)
            yield env.timeout(outcome.duration)


class _Progress(ReplicaLoop):
    """The Simulator's loop, with a progress bar."""

    def __init__(self, env: simpy.Environment, engine: Engine, requests: WorkloadRequests, bar: tqdm | None) -> None:
        super().__init__(env, engine, requests)
        self.bar = bar
        self.done_before = 0

    def _stepped(self, outcome: StepOutcome) -> None:
        bar, metrics = self.bar, self.engine.metrics
        if bar is not None and metrics.num_done - self.done_before >= 256:
            bar.update(metrics.num_done - self.done_before)
            self.done_before = metrics.num_done


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; users subclass it
class Simulator:
    """Replays a workload against one engine replica; deterministic for a given config and workload."""

    def __init__(
        self, config: SimConfig, workload: Workload, *, progress: bool = False, executor: ExecutorFactory | None = None,
        fast_forward: bool = True,
    ) -> None:  # fmt: skip
        """``executor`` and ``fast_forward``: as :func:`build_engine` takes them (e.g. the profiler's exact
        calibrated executor, stepping decode runs one at a time)."""
        self.config = config
        self.workload = workload
        self.env = simpy.Environment()
        self.engine = build_engine(config, clock=lambda: self.env.now, executor=executor, fast_forward=fast_forward)
        self.progress = progress
        self.requests = WorkloadRequests(workload)
        self._error: BaseException | None = None

    def _loop(self, bar: tqdm | None):  # simpy process
        # simpy re-raises a failed process's exception as ``type(err)(*err.args)``, which breaks (or
        # strips) exceptions such as InvariantViolation; keep the original and raise it from run().
        try:
            yield from _Progress(self.env, self.engine, self.requests, bar).run()
        except Exception as err:
            self._error = err

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
