"""Replay a workload on the real engine at its arrival times on the wall clock.

The driver steps ``vSurge`` itself in the calling thread: before each step it submits every request whose
arrival time has passed (stamping the request with its scheduled arrival time, as the simulator does), and
when the engine is idle it sleeps until the next arrival. Arrivals during a step are admitted at the next
step boundary — exactly the simulator's rule — so the two runs differ only in step durations.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from odrive.allocators import make_allocator
from odrive.calibration.features import (
    EngineGeometry,
    StepFeatures,
    format_lens,
    padded_swap_rows,
    parse_lens,
    step_features,
)
from odrive.calibration.grid import GridPoint, build_batch
from odrive.core.engine import Engine, StepOutcome
from odrive.core.executor import ExecuteResult, SeqChunk, SwapOps
from odrive.core.sampling_params import SamplingParams
from odrive.profiling.plans import plan_table, record_outcomes, stop_recording
from odrive.vsurge.driver import vSurge
from sim.workloads.request import Workload

TIME_COLUMNS = ("arrival_time", "first_scheduled_time", "first_token_time", "finish_time")


class ShapeRecorder:
    """Listens to an engine's executor (``Engine.execute_listeners`` and ``swap_listeners``, from :meth:`attach`
    to :meth:`detach`) and keeps each step's ``(q_lens, kv_lens)`` (two list appends) and the seconds of each step's
    swap copies (``swap_s``, by step index; swap preemption)."""

    def __init__(self) -> None:
        self.shapes: list[tuple[list[int], list[int]]] = []
        self.swaps: list[tuple[int, SwapOps, float]] = []  # (index of the step the copies ran before, ops, seconds)

    def executed(self, batch: list[SeqChunk], result: ExecuteResult) -> None:
        self.shapes.append(([c.num_tokens for c in batch], [c.start + c.num_tokens for c in batch]))

    def swapped(self, ops: SwapOps, seconds: float) -> None:
        self.swaps.append((len(self.shapes), ops, seconds))

    def attach(self, engine: Engine) -> ShapeRecorder:
        engine.execute_listeners.append(self.executed)
        engine.swap_listeners.append(self.swapped)
        return self

    def detach(self, engine: Engine) -> None:
        engine.execute_listeners.remove(self.executed)
        engine.swap_listeners.remove(self.swapped)


@dataclass
class ReplayResult:
    """Engine metrics of the replay with times in seconds from the replay's origin.

    ``requests``: the engine's per-request frame plus ``index`` (workload row).
    ``steps``: the engine's per-step frame plus ``exec_s`` (executor time), ``period_s`` (start of this step
    to start of the next when they ran back to back, else NaN), ``after_idle`` and the batch's ``q_lens``/
    ``kv_lens`` (``;``-joined). ``plans``: :func:`odrive.profiling.plans.plan_table` of the run.
    """

    requests: pd.DataFrame
    steps: pd.DataFrame
    plans: pd.DataFrame
    wall_s: float
    admit_lag_s: np.ndarray = field(default_factory=lambda: np.zeros(0))


def make_prompts(workload: Workload, vocab_size: int, seed: int = 0) -> list[list[int]]:
    """The workload's own prompt token ids when it has them (e.g. shared prefixes, which a prefix cache must see as
    the simulator does; each must lie in the model's vocabulary), else random ids of its lengths (ids >= 3: clear of
    the usual special tokens)."""
    ids = workload.prompt_token_ids
    if ids is not None:
        prompts = [np.asarray(ids[i]).tolist() for i in range(len(workload))]
        bad = next((i for i, p in enumerate(prompts) if p and not 0 <= min(p) <= max(p) < vocab_size), None)
        if bad is not None:
            raise ValueError(f"workload request {bad}: prompt token ids outside the vocabulary [0, {vocab_size})")
        return prompts
    rng = np.random.default_rng(seed)
    return [rng.integers(3, vocab_size, int(n)).tolist() for n in workload.prompt_lens]


def replay(
    surge: vSurge, workload: Workload, *, seed: int = 0, lead_s: float = 0.005, spin_s: float = 0.0015
) -> ReplayResult:
    """Run ``workload`` (greedy, ``ignore_eos``: each request makes exactly its output length; its priorities and
    prompt token ids when it has them: :func:`make_prompts`) on ``surge``.

    The engine must be idle and its background thread stopped. ``lead_s`` puts the origin slightly in the
    future so the first arrival is not late; ``spin_s`` is how long before an arrival sleeping turns into
    polling (``time.sleep`` overshoots by ~0.1 ms).
    """
    engine = surge.engine
    if not surge.is_idle:
        raise RuntimeError("replay needs an idle engine without its background thread")
    prompts = make_prompts(workload, surge.model.config.vocab_size, seed)
    params = [SamplingParams(max_tokens=int(n), temperature=0.0, ignore_eos=True) for n in workload.output_lens]
    arrivals = workload.arrival_times.tolist()
    priorities = [0] * len(arrivals) if workload.priorities is None else workload.priorities.tolist()
    n_req, n_steps0, n_done0 = len(arrivals), len(engine.metrics.steps_frame()), engine.metrics.num_done
    recorder = ShapeRecorder().attach(engine)
    outcomes: list[StepOutcome] = record_outcomes(engine)
    index_of: dict[str, int] = {}
    lag = np.zeros(n_req)
    after_idle: list[bool] = []
    idle = True
    i = 0
    origin = time.perf_counter() + lead_s
    try:
        while i < n_req or engine.has_unfinished:
            now = time.perf_counter()
            while i < n_req and origin + arrivals[i] <= now:
                handle = surge.submit(prompts[i], params[i], priority=priorities[i])
                handle.request.arrival_time = origin + arrivals[i]
                index_of[handle.request_id] = i
                lag[i] = now - (origin + arrivals[i])
                i += 1
            executed = len(recorder.shapes)
            if engine.has_unfinished and surge.step() is not None:
                if len(recorder.shapes) == executed:  # a step of swap copies alone: no batch ran
                    recorder.shapes.append(([], []))
                after_idle.append(idle)
                idle = False
                continue
            if i >= n_req:
                raise RuntimeError("requests remain but the engine scheduled nothing and none will arrive")
            _sleep_until(origin + arrivals[i], spin_s)
            idle = True
    finally:
        recorder.detach(engine)
        stop_recording(engine, outcomes)
    wall = time.perf_counter() - origin
    steps = engine.metrics.steps_frame().iloc[n_steps0:].reset_index(drop=True)
    requests = engine.metrics.requests_frame().iloc[n_done0:].copy()
    requests.insert(0, "index", requests["request_id"].map(index_of))
    requests = requests.sort_values("index").reset_index(drop=True)
    failed = requests[requests["status"] != "finished"]
    if len(failed):
        first = failed.iloc[0]
        raise RuntimeError(
            f"{len(failed)} of {n_req} replayed requests did not finish; request {first['index']}: "
            f"{first['finish_reason']}: {first['message']}"
        )
    for col in TIME_COLUMNS:
        requests[col] = requests[col] - origin
    plans = plan_table(outcomes, steps, index_of)
    steps = _with_step_timing(steps, outcomes, recorder, after_idle, origin)
    return ReplayResult(requests, steps, plans, wall, lag)


def warm_up(surge: vSurge, geometry: EngineGeometry, mixed: bool = False) -> float:
    """Compile every shape FCFS can produce: one prefill per token bucket, one decode batch per seq bucket; with
    ``mixed`` every (token bucket, seq bucket) pair a policy that mixes prefill chunks and decodes can produce; with
    swap preemption, the K/V copies of every padded size. Returns the seconds it took."""
    t0 = time.perf_counter()
    ex = surge.executor
    rng = np.random.default_rng(0)
    num_pages = surge.engine.allocator.num_pages
    config = surge.engine.scheduler.config
    shapes = [((q,), (q,)) for q in geometry.token_buckets if q <= config.max_prefill_length]
    shapes += [((1,) * b, (16,) * b) for b in geometry.seq_buckets]
    if mixed:  # one chunk of the tokens the decodes leave, then s - 1 decodes
        pairs = [(t, b) for t in geometry.token_buckets for b in geometry.seq_buckets if 1 < b < t]
        shapes += [((t - b + 1, *(1,) * (b - 1)), (t - b + 1, *(16,) * (b - 1))) for t, b in pairs
                   if t - b + 1 <= config.max_prefill_length]  # fmt: skip
    for q, kv in shapes:
        alloc = make_allocator("free-list", num_pages=num_pages, page_size=geometry.page_size)
        batch = build_batch(GridPoint("warmup", geometry.page_size, q, kv), alloc, ex.model.config.vocab_size, rng)
        for _ in range(2):
            ex.execute(batch)
    if config.preemption_mode == "swap":
        sizes = {}  # padded pool rows -> pages: one copy of each size compiles it
        for n in range(1, min(geometry.pages_per_seq, num_pages - 1) + 1):
            sizes.setdefault(padded_swap_rows(ex.model.config.num_hidden_layers, n), n)
        for n in sizes.values():
            pages = list(range(1, n + 1))
            ex.swap(SwapOps({"warm-up": pages}, {}, geometry.page_size))
            ex.swap(SwapOps({}, {"warm-up": pages}, geometry.page_size))
    return time.perf_counter() - t0


def step_shapes(
    steps: pd.DataFrame, geometry: EngineGeometry
) -> tuple[list[StepFeatures | None], list[bool], list[bool]]:
    """Features of a replay's steps (``ReplayResult.steps``; None for a step of swap copies alone), whether each was
    ``switched`` (its compiled shape differs from the previous step's, or the engine had idled) and whether it
    started after idleness — as the simulator charges them."""
    features: list[StepFeatures | None] = []
    switched, last = [], None
    for q, kv, idle in zip(steps["q_lens"], steps["kv_lens"], steps["after_idle"], strict=True):
        q_lens = parse_lens(q)
        if not q_lens:
            features.append(None)
            switched.append(bool(idle))
            continue
        f = step_features(q_lens, parse_lens(kv), geometry)
        shape = (f.padded_tokens, f.padded_seqs)
        features.append(f)
        switched.append(shape != last or bool(idle))
        last = shape
    return features, switched, [bool(i) for i in steps["after_idle"]]


def _with_step_timing(
    steps: pd.DataFrame, outcomes: list[StepOutcome], recorder: ShapeRecorder, after_idle: list[bool], origin: float
) -> pd.DataFrame:
    steps, shapes = steps.copy(), recorder.shapes
    swaps: dict[int, tuple[SwapOps, float]] = {k: (ops, sec) for k, ops, sec in recorder.swaps}
    for kind in ("out", "in"):  # pages each request moved (";"-joined, as the executor copies them request by request)
        steps[f"swap_{kind}"] = [
            format_lens(len(p) for p in getattr(swaps[k][0], f"swap_{kind}").values()) if k in swaps else ""
            for k in range(len(steps))
        ]
    steps["swap_s"] = [swaps[k][1] if k in swaps else 0.0 for k in range(len(steps))]
    starts = np.array([o.start for o in outcomes])
    steps["time"] = starts - origin
    steps["exec_s"] = [o.duration for o in outcomes]
    nxt_idle = np.array([*after_idle[1:], True])
    period = np.append(np.diff(starts), np.nan)
    steps["period_s"] = np.where(nxt_idle, np.nan, period)
    steps["after_idle"] = after_idle
    steps["q_lens"] = [";".join(map(str, q)) for q, _ in shapes]
    steps["kv_lens"] = [";".join(map(str, kv)) for _, kv in shapes]
    return steps


def _sleep_until(deadline: float, spin_s: float) -> None:
    remaining = deadline - time.perf_counter()
    if remaining > spin_s:
        time.sleep(remaining - spin_s)
    while time.perf_counter() < deadline:
        pass
