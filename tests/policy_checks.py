"""Shared checks for the scheduler tests: random workloads in the simulator with every plan checked.

Not a test module: ``tests/test_scheduler_*.py`` import it (one file per policy).
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from typing import Any

import numpy as np
import pandas as pd
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from odrive.core.engine import Engine
from odrive.core.executor import ExecuteResult, SeqChunk
from odrive.schedulers import Scheduler
from sim.config import SimConfig
from sim.executor import SimExecutor
from sim.simulator import Simulator
from sim.workloads import Workload

PROPERTY = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FEW = settings(max_examples=20, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def pages_for(num_tokens: int, page_size: int) -> int:
    return -(-num_tokens // page_size)


class RecordingSimExecutor(SimExecutor):
    """The simulator's executor, also recording each single step's chunks as (request_id, start, tokens,
    is_prefill) in ``batches`` and, in ``idle_decodes``, how many running decodes the step left out;
    ``fast_forward=False`` switches decode-run fast-forwarding off."""

    def __init__(self, base: SimExecutor, scheduler: Scheduler, fast_forward: bool = True) -> None:
        super().__init__(base.latency_model, base.scheduler_config, kv_bytes_per_token=base.kv_bytes_per_token,
                         host_bandwidth=base.host_bandwidth)  # fmt: skip
        self.supports_decode_runs = fast_forward
        self.scheduler = scheduler
        self.batches: list[list[tuple[str, int, int, bool]]] = []
        self.idle_decodes: list[int] = []
        self.compute_seconds = 0.0  # single steps' modeled compute time (without swap copies)

    def execute(self, batch: list[SeqChunk]) -> ExecuteResult:
        self.batches.append([(c.request_id, c.start, c.num_tokens, c.request.is_prefill) for c in batch])
        ids = {c.request_id for c in batch}
        self.idle_decodes.append(
            sum(not r.is_prefill and rid not in ids for rid, r in self.scheduler.running.items())
        )
        result = super().execute(batch)
        self.compute_seconds += result.duration
        return result


@dataclass
class Run:
    config: SimConfig
    workload: Workload
    requests: pd.DataFrame  # indexed by workload position (request ``r{i}`` is row ``i``)
    steps: pd.DataFrame
    summary: pd.Series
    engine: Engine
    batches: list[list[tuple[str, int, int, bool]]] = field(default_factory=list)
    idle_decodes: list[int] = field(default_factory=list)


def simulate(config: SimConfig, workload: Workload, *, fast_forward: bool = True, setup: Any = None) -> Run:
    """Run ``workload``; ``setup(simulator)`` may replace parts of the engine before it starts."""
    sim = Simulator(config, workload)
    if setup is not None:
        setup(sim)
    base = sim.engine.executor
    assert isinstance(base, SimExecutor)
    recorder = RecordingSimExecutor(base, sim.engine.scheduler, fast_forward)
    sim.engine.executor = recorder
    result = sim.run()
    df = by_position(result.requests)
    return Run(config, workload, df, result.steps, result.summary, sim.engine, recorder.batches, recorder.idle_decodes)


def by_position(requests: pd.DataFrame) -> pd.DataFrame:
    """The request frame indexed by workload position (request ``r{i}`` is row ``i``)."""
    df = requests.copy()
    df["index"] = df["request_id"].str[1:].astype(int)
    return df.set_index("index").sort_index()


@st.composite
def scenarios(
    draw: st.DrawFn,
    scheduler: str,
    *,
    ample_pages: bool = False,
    priorities: bool = False,
    preemption_mode: str | None = None,
    chunked: bool = True,
    scheduler_kwargs: st.SearchStrategy | None = None,
    max_requests: int = 30,
) -> tuple[SimConfig, Workload]:
    """A random config for ``scheduler`` and a random workload (5 to ``max_requests`` requests, bursts and gaps)."""
    page_size = draw(st.sampled_from([1, 4, 16]))
    n = draw(st.integers(5, max_requests))
    gap = st.one_of(st.just(0.0), st.floats(0.0, 0.05, allow_nan=False), st.sampled_from([0.01, 0.02]))
    gaps = draw(st.lists(gap, min_size=n, max_size=n))
    prompts = draw(st.lists(st.integers(1, 96), min_size=n, max_size=n))
    outputs = draw(st.lists(st.integers(1, 64), min_size=n, max_size=n))
    prios = draw(st.lists(st.integers(0, 3), min_size=n, max_size=n)) if priorities else None
    if ample_pages:
        max_prefill_length = max(prompts)
        num_pages = 1 + sum(pages_for(p + o, page_size) for p, o in zip(prompts, outputs, strict=True))
    else:
        max_prefill_length = draw(st.integers(8, 96))
        num_pages = 1 + pages_for(draw(st.integers(16, 240)), page_size)
    mode = preemption_mode or draw(st.sampled_from(["recompute", "swap"]))
    config = SimConfig(
        scheduler=scheduler,
        page_size=page_size,
        num_pages=num_pages,
        allocator=draw(st.sampled_from(["free-list", "free-list-lifo"])),
        max_prefill_length=max_prefill_length,
        max_concurrent_prefill=draw(st.integers(1, 4)),
        max_concurrent_decodes=draw(st.integers(1, 16)),
        max_num_batched_tokens=draw(st.one_of(st.none(), st.integers(1, 200))),
        chunk_size=draw(st.one_of(st.none(), st.integers(1, 64))) if chunked else None,
        preemption_mode=mode,
        swap_space_pages=draw(st.integers(1, num_pages)) if mode == "swap" else None,
        scheduler_kwargs=tuple(draw(scheduler_kwargs).items()) if scheduler_kwargs is not None else (),
        check_invariants=True,
    )
    workload = Workload(np.cumsum(gaps), np.array(prompts), np.array(outputs),
                        None if prios is None else np.array(prios))  # fmt: skip
    return config, workload


def expected_rejections(config: SimConfig, workload: Workload) -> np.ndarray:
    usable = config.num_pages - 1  # type: ignore[operator]
    too_long = workload.prompt_lens > config.max_prefill_length
    too_big = np.array([pages_for(int(p + o), config.page_size) > usable
                        for p, o in zip(workload.prompt_lens, workload.output_lens, strict=True)])  # fmt: skip
    return too_long | too_big


def assert_terminates(run: Run) -> None:
    """Every request finished with all its tokens or was rejected with a reason; limits held; the pools
    (device pages and host swap tier) are empty at the end."""
    df, wl = run.requests, run.workload
    assert list(df.index) == list(range(len(wl))), "requests lost or duplicated"
    rejected = (df["finish_reason"] == "rejected").to_numpy()
    np.testing.assert_array_equal(rejected, expected_rejections(run.config, wl))
    assert (df.loc[rejected, "status"] == "aborted").all() and (df.loc[rejected, "message"].str.len() > 0).all()
    done = df[~rejected]
    assert (done["status"] == "finished").all() and (done["finish_reason"] == "length").all()
    np.testing.assert_array_equal(done["num_output_tokens"].to_numpy(), wl.output_lens[~rejected])
    assert (done["first_scheduled_time"] >= done["arrival_time"]).all()
    assert (done["first_token_time"] > done["first_scheduled_time"]).all()
    assert (done["finish_time"] >= done["first_token_time"]).all()
    assert int(run.steps["num_preempted"].sum()) == int(df["num_preemptions"].sum())
    assert_within_limits(run)
    eng = run.engine
    assert not eng.has_unfinished and eng.scheduler.num_unfinished == 0
    assert eng.allocator.num_free_pages == eng.allocator.num_usable_pages and eng.allocator.owners() == {}
    assert len(eng.scheduler.swap_space) == 0
    stats = eng.swap_stats
    assert stats.pages_in <= stats.pages_out
    if run.config.preemption_mode == "recompute":
        assert stats.pages_out == 0


def assert_step_rows_within_limits(cfg: SimConfig, steps: pd.DataFrame) -> None:
    """The step table respects the config's concurrency, token-budget and page limits; steps never overlap."""
    sched_cfg = cfg.scheduler_config()
    usable = cfg.num_pages - 1  # type: ignore[operator]
    assert (steps["num_prefill_seqs"] <= cfg.max_concurrent_prefill).all()
    assert (steps["num_running"] <= cfg.max_concurrent_decodes).all()
    assert (steps["num_prefill_tokens"] + steps["num_decode_seqs"] <= sched_cfg.token_budget).all()
    assert (steps["pages_used_max"] <= usable).all()
    assert (steps["duration"] > 0).all()
    times = steps["time"].to_numpy()
    assert (times[1:] >= times[:-1] + steps["duration"].to_numpy()[:-1] - 1e-12).all(), "steps overlap"


def assert_within_limits(run: Run) -> None:
    cfg = run.config
    sched_cfg = cfg.scheduler_config()
    assert_step_rows_within_limits(cfg, run.steps)
    for batch in run.batches:
        assert sum(n for _, _, n, _ in batch) <= sched_cfg.token_budget
        assert sum(p for *_, p in batch) <= cfg.max_concurrent_prefill
        assert all(n <= cfg.max_prefill_length for _, _, n, p in batch if p)


def assert_admitted_in_arrival_order(run: Run) -> None:
    """FCFS-family starvation bound: no request is first scheduled in a later step than one that arrived
    after it (ties: same step). Holds with preemption, since only first scheduling counts."""
    done = run.requests[run.requests["finish_reason"] != "rejected"]
    assert (np.diff(done["first_scheduled_time"].to_numpy()) >= 0).all(), "a later request was admitted first"


def assert_first_tokens_in_arrival_order(run: Run) -> None:
    done = run.requests[run.requests["finish_reason"] != "rejected"]
    assert (np.diff(done["first_token_time"].to_numpy()) >= 0).all(), "a later request got its first token first"


def assert_deterministic(config: SimConfig, workload: Workload) -> None:
    a, b = simulate(config, workload), simulate(config, workload)
    pd.testing.assert_frame_equal(a.requests, b.requests)
    pd.testing.assert_frame_equal(a.steps, b.steps)


def assert_fast_forward_exact(config: SimConfig, workload: Workload) -> Run:
    """Fast-forwarded decode runs give exactly what stepping one at a time gives. Returns the fast run."""
    ff, step = simulate(config, workload), simulate(config, workload, fast_forward=False)
    a, b = ff.requests, step.requests
    assert_same_requests(a, b)
    assert (step.steps["num_steps"] == 1).all()
    assert ff.steps["num_steps"].sum() == len(step.steps), "fast-forward skipped or added steps"
    assert ff.steps["num_preempted"].sum() == step.steps["num_preempted"].sum()
    assert ff.engine.swap_stats == step.engine.swap_stats
    # Without step rows a run also goes on past finishes (``steady_after_finish``): same request outcomes.
    lean = simulate(replace(config, record_steps=False), workload)
    assert_same_requests(lean.requests, b)
    assert lean.engine.swap_stats == step.engine.swap_stats
    return ff


def assert_same_requests(a: pd.DataFrame, b: pd.DataFrame) -> None:
    """Two runs' request tables agree: outcomes exactly, times to rounding."""
    for col in ("status", "finish_reason", "num_output_tokens", "num_preemptions"):
        assert a[col].tolist() == b[col].tolist(), col
    for col in ("first_scheduled_time", "first_token_time", "finish_time"):
        np.testing.assert_allclose(a[col].to_numpy(float), b[col].to_numpy(float), rtol=1e-9, equal_nan=True,
                                   err_msg=col)  # fmt: skip


def long_decode_workload() -> Workload:
    """Two long decoders and a late arrival: long steady decode runs to fast-forward."""
    return Workload(np.array([0.0, 0.0, 0.3]), np.array([100, 120, 50]), np.array([400, 300, 20]))
