"""Measure the real engine's step over a grid of shapes (the profile a calibrated latency model is fitted on), and
the K/V copies of swap preemption.

Each grid point is a batch of ``SeqChunk`` s run through the engine's own ``JaxExecutor`` — so padding comes
from the same ``BatchBuilder`` buckets and the same jitted paged forward and sampler run. Per point:

- ``exec_s``: ``JaxExecutor.execute`` (batch building + host->device copies + forward + sampling + sync),
  what the engine records as a step's duration;
- ``forward_s``: the jitted forward alone on prebuilt device inputs, to the logits being ready;
- ``build_s``: ``BatchBuilder.build`` alone.

Compilation and warm-up are excluded; every point is repeated ``grid.repeats`` times in shuffled round-robin
order (slow phases of a shared machine hit all points alike) and the median is kept. Engine scenarios
(closed decode workloads through ``Engine.step``, via the replay driver) give ``overhead_s`` = step period -
executor time: scheduling, metrics and bookkeeping.
"""

from __future__ import annotations

import datetime as dt
import os
import platform
import time
from collections.abc import Callable

import jax
import jax.numpy as jnp
import numpy as np
import pandas as pd

from kernels import default_attention_impl_name
from odrive.allocators import make_allocator
from odrive.calibration.features import EngineGeometry, format_lens, padded_swap_rows, step_features
from odrive.calibration.fit import fit_profile
from odrive.calibration.grid import GridPoint, ProfileGrid, build_batch
from odrive.calibration.profile import Profile
from odrive.calibration.replay_fit import DEFAULT_REPLAY, ReplayCalibration
from odrive.core.batch_builder import BatchBuilder
from odrive.core.executor import SeqChunk, SwapOps
from odrive.models import init_params, make_paged_forward
from odrive.models.checkpoint import Model
from odrive.models.config import LlamaConfig
from odrive.models.dtypes import resolve_dtype
from odrive.profiling.pinning import current_pinning
from odrive.profiling.replay import replay, step_shapes, warm_up
from odrive.runtime.jax_executor import JaxExecutor
from odrive.schedulers.config import SchedulerConfig
from odrive.vsurge.driver import vSurge
from sim.workloads import Uniform, Workload, poisson_workload

Log = Callable[[str], None]

TINY_BENCH = LlamaConfig(
    vocab_size=1024,
    hidden_size=256,
    intermediate_size=512,
    num_hidden_layers=4,
    num_attention_heads=2,
    num_key_value_heads=2,
    head_dim=128,
    max_position_embeddings=4096,
)
"""The project's tiny benchmark model (``sim.model_spec`` ``tiny-bench``)."""


def tiny_bench_model(dtype: str = "float32", seed: int = 0, config: LlamaConfig = TINY_BENCH) -> Model:
    """Random weights of ``config`` in ``dtype`` (step time does not depend on weight values)."""
    dt_ = resolve_dtype(dtype)
    return Model(config=config, params=init_params(config, jax.random.key(seed), dtype=dt_), dtype=dt_)


def scheduler_config(grid: ProfileGrid) -> SchedulerConfig:
    return SchedulerConfig(
        max_prefill_length=grid.max_prefill_length,
        max_concurrent_prefill=4,
        max_concurrent_decodes=grid.max_concurrent_decodes,
        max_model_len=grid.max_length,
    )


def geometry_for(grid: ProfileGrid, page_size: int) -> EngineGeometry:
    """The buckets ``vSurge.create_odriver`` would use with the grid's limits."""
    return EngineGeometry.for_engine(scheduler_config(grid), page_size, grid.max_length)


def _pool_pages(points: list[GridPoint], page_size: int) -> int:
    return max(sum(-(-kv // page_size) for kv in p.kv_lens) for p in points) + 2


class _PointTimer:
    """Times one point three ways on a shared executor (whose KV pool the forward donates and replaces)."""

    def __init__(self, executor: JaxExecutor, forward, batch: list[SeqChunk]) -> None:
        self.executor, self.forward, self.batch = executor, forward, batch
        x = executor.builder.build(batch)
        self.args = [jnp.asarray(a) for a in (x.token_ids, x.positions)]
        self.rest = [
            jnp.asarray(a)
            for a in (x.slot_mapping, x.kv_lens, x.page_indices, x.cu_q_lens, x.num_seqs, x.logits_indices)
        ]

    def exec_s(self) -> float:
        return self.executor.execute(self.batch).duration

    def forward_s(self) -> float:
        ex = self.executor
        t0 = time.perf_counter()
        logits, ex.kv_caches = self.forward(ex.model.params, *self.args, ex.kv_caches, *self.rest)
        logits.block_until_ready()
        return time.perf_counter() - t0

    def build_s(self) -> float:
        t0 = time.perf_counter()
        self.executor.builder.build(self.batch)
        return time.perf_counter() - t0

    def burst(self, n: int, settle: int) -> tuple[list[float], float, float, float]:
        """(exec times, forward, build, first exec): ``n`` back-to-back runs after ``settle`` untimed ones, the
        forward's median over ``n`` runs, and the first run right after the previous (different) shape. A real
        engine runs long stretches of similar steps back to back, and right after a different compiled shape
        a step is markedly slower for a few runs (measured here: up to ~2x, settled after ~5), so the two are
        kept apart."""
        first = self.exec_s()
        for _ in range(settle - 1):
            self.exec_s()
        ex = [self.exec_s() for _ in range(n)]
        self.forward_s()
        fwd = float(np.median([self.forward_s() for _ in range(n)]))
        return ex, fwd, self.build_s(), first


def measure_points(model: Model, grid: ProfileGrid, log: Log = print) -> pd.DataFrame:
    """One row per grid point: shape, features, and median/quartile timings. All page sizes' points are
    compiled first, then timed together in shuffled rounds."""
    rng = np.random.default_rng(grid.seed)
    forward = make_paged_forward(model.config)
    points = grid.points()
    timers: list[_PointTimer] = []
    geos: dict[int, EngineGeometry] = {}
    t0 = time.perf_counter()
    for page_size in grid.page_sizes:
        mine = [p for p in points if p.page_size == page_size]
        geo = geos[page_size] = geometry_for(grid, page_size)
        builder = BatchBuilder(page_size, geo.token_buckets, geo.seq_buckets, geo.pages_per_seq)
        num_pages = _pool_pages(mine, page_size)
        executor = JaxExecutor(model, num_pages, page_size, builder, seed=grid.seed)
        for p in mine:
            allocator = make_allocator("free-list", num_pages=num_pages, page_size=page_size)
            timer = _PointTimer(executor, forward, build_batch(p, allocator, model.config.vocab_size, rng))
            for _ in range(grid.warmup):  # compile + warm caches
                timer.exec_s()
                timer.forward_s()
            timers.append(timer)
    log(
        f"{len(points)} points on page sizes {list(grid.page_sizes)} compiled and warmed in "
        f"{time.perf_counter() - t0:.1f} s"
    )
    execs = np.zeros((len(points), grid.repeats, grid.burst))
    other = np.zeros((len(points), grid.repeats, 3))  # forward, build, first
    t0 = time.perf_counter()
    by_page = {ps: [k for k, p in enumerate(points) if p.page_size == ps] for ps in grid.page_sizes}
    for r in range(grid.repeats):
        for ps in rng.permutation(list(grid.page_sizes)):  # one KV pool at a time, as in a real engine
            for k in rng.permutation(by_page[int(ps)]):
                ex, *rest = timers[k].burst(grid.burst, grid.settle)
                execs[k, r], other[k, r] = ex, rest
    log(f"{grid.repeats} shuffled rounds of {grid.settle}+{grid.burst}-step bursts: {time.perf_counter() - t0:.1f} s")
    drift = round_drift(np.median(execs, axis=2))
    execs, other = execs / drift[None, :, None], other / drift[None, :, None]
    rows = []
    for p, ex, o in zip(points, execs, other, strict=True):
        geo = geos[p.page_size]
        f = step_features(p.q_lens, p.kv_lens, geo)
        q25, q75 = np.percentile(ex, [25, 75])
        rows.append({
            "source": "forward", "kind": p.kind, "page_size": p.page_size, "pages_per_seq": geo.pages_per_seq,
            "q_lens": format_lens(p.q_lens), "kv_lens": format_lens(p.kv_lens), **f.to_dict(),
            "exec_s": float(np.median(np.median(ex, axis=1))), "exec_mean_s": float(ex.mean()),
            "exec_q25_s": q25, "exec_q75_s": q75, "exec_min_s": float(ex.min()),
            "exec_first_s": float(np.median(o[:, 2])), "forward_s": float(np.median(o[:, 0])),
            "build_s": float(np.median(o[:, 1])), "repeats": grid.repeats * grid.burst,
        })  # fmt: skip
    frame = pd.DataFrame(rows)
    frame.attrs["round_drift"] = [round(float(d), 4) for d in drift]
    return frame


def round_drift(samples: np.ndarray) -> np.ndarray:
    """Per-round slowdown of a shared machine: the median over points of a round's time relative to the point's
    median over rounds, normalised to median 1. Dividing each round by it removes load changes between
    rounds (a round visits every point, so the estimate is robust); noise within a round stays."""
    ratio = samples / np.median(samples, axis=1, keepdims=True)
    drift = np.median(ratio, axis=0)
    return drift / np.median(drift)


def measure_engine(model: Model, grid: ProfileGrid, log: Log = print) -> pd.DataFrame:
    """Host overhead of the real loop: closed decode workloads of each batch size through ``Engine.step``
    (the replay driver), step period minus executor time, median per (batch size, step kind)."""
    page_size = grid.page_sizes[0]
    geo = geometry_for(grid, page_size)
    samples: dict[tuple[int, str], list[pd.DataFrame]] = {}
    for rep in range(grid.engine_repeats + 1):  # the first round compiles
        for b in np.random.default_rng(grid.seed + rep).permutation(list(grid.engine_batch_sizes)):
            b = int(b)
            surge = vSurge.create_odriver(
                model=model, max_prefill_length=grid.max_prefill_length, page_size=page_size, max_concurrent_prefill=1,
                max_concurrent_decodes=grid.max_concurrent_decodes, max_length=grid.max_length,
                num_pages=b * geo.pages_per_seq + 2, seed=grid.seed, vsurge_name="profile",
            )  # fmt: skip
            wl = Workload(np.zeros(b), np.full(b, grid.engine_prompt_len), np.full(b, grid.engine_output_len))
            result = replay(surge, wl, seed=grid.seed + rep)
            if rep == 0:
                continue
            steps = result.steps.dropna(subset=["period_s"])
            for kind, part in steps.groupby(np.where(steps["num_prefill_seqs"] > 0, "prefill", "decode")):
                samples.setdefault((b, str(kind)), []).append(part)
    rows = []
    for (_, kind), parts in sorted(samples.items()):
        s = pd.concat(parts)
        over = s["period_s"] - s["exec_s"]
        rows.append({
            "source": "engine", "kind": kind, "page_size": page_size, "pages_per_seq": geo.pages_per_seq,
            "num_seqs": float(s["num_prefill_seqs"].add(s["num_decode_seqs"]).median()),
            "num_tokens": float(s["num_prefill_tokens"].add(s["num_decode_seqs"]).median()),
            "exec_s": float(s["exec_s"].median()), "period_s": float(s["period_s"].median()),
            "overhead_s": float(over.median()), "overhead_q25_s": float(over.quantile(0.25)),
            "overhead_q75_s": float(over.quantile(0.75)), "repeats": len(s),
        })  # fmt: skip
    log(f"engine overhead: {len(rows)} scenarios")
    return pd.DataFrame(rows)


def measure_swaps(model: Model, grid: ProfileGrid, log: Log = print) -> pd.DataFrame:
    """Swap preemption's copies: ``JaxExecutor.swap`` moving one request's ``n`` pages (every layer) to the host
    (``kind="out"``) and back (``"in"``) for each ``n`` in ``grid.swap_pages`` (up to a sequence's pages), on the
    first page size; the median of ``grid.repeats`` shuffled rounds after ``grid.warmup`` untimed copies (which
    compile each padded size)."""
    page_size = grid.page_sizes[0]
    geo = geometry_for(grid, page_size)
    sizes = [n for n in grid.swap_pages if n <= geo.pages_per_seq]
    builder = BatchBuilder(page_size, geo.token_buckets, geo.seq_buckets, geo.pages_per_seq)
    executor = JaxExecutor(model, max(sizes) + 2, page_size, builder, seed=grid.seed)
    rng = np.random.default_rng(grid.seed)

    def copy(n: int) -> tuple[float, float]:
        pages = list(range(1, n + 1))
        return executor.swap(SwapOps({"s": pages}, {}, page_size)), executor.swap(SwapOps({}, {"s": pages}, page_size))

    for n in sizes:
        for _ in range(grid.warmup):
            copy(n)
    times = np.zeros((len(sizes), grid.repeats, 2))
    for r in range(grid.repeats):
        for k in rng.permutation(len(sizes)):
            times[k, r] = copy(sizes[int(k)])
    layers = model.config.num_hidden_layers
    rows = [
        {"source": "swap", "kind": kind, "page_size": page_size, "pages_per_seq": geo.pages_per_seq,
         "num_swap_pages": n, "padded_rows": padded_swap_rows(layers, n), "swap_s": float(np.median(times[k, :, d])),
         "swap_q25_s": float(np.percentile(times[k, :, d], 25)), "swap_q75_s": float(np.percentile(times[k, :, d], 75)),
         "repeats": grid.repeats}
        for d, kind in enumerate(("out", "in")) for k, n in enumerate(sizes)
    ]  # fmt: skip
    log(f"swap copies: {len(sizes)} sizes x {grid.repeats} rounds")
    return pd.DataFrame(rows)


def measure_replays(model: Model, page_size: int, cal: ReplayCalibration = DEFAULT_REPLAY,
                    log: Callable[[str], None] = print) -> pd.DataFrame:  # fmt: skip
    """Replay ``cal``'s workloads on a fresh engine for ``model``; one row per step that ran back to back with
    the next: ``source="replay"``, ``run``, ``page_size``, ``FEATURE_COLUMNS``, ``switched``, ``after_idle``,
    ``period_s``."""
    surge = vSurge.create_odriver(
        model=model, max_prefill_length=cal.max_prefill_length, page_size=page_size, max_concurrent_prefill=1,
        max_concurrent_decodes=cal.max_concurrent_decodes, max_length=cal.max_length, num_pages=cal.num_pages,
        seed=0, vsurge_name="replay-calibration",
    )  # fmt: skip
    geometry = EngineGeometry.of_builder(surge.executor.builder)
    warm_up(surge, geometry)
    prompt = Uniform(cal.prompt[0], min(cal.prompt[1], cal.max_prefill_length))
    output = Uniform(*cal.output)
    burst = poisson_workload(1.0, cal.num_closed, prompt, output, seed=cal.seed)
    burst = Workload(np.zeros(len(burst)), burst.prompt_lens, burst.output_lens, name="closed")
    first = replay(surge, burst, seed=cal.seed)
    throughput = len(burst) / first.wall_s
    runs = [first.steps]
    for k, load in enumerate(cal.loads, start=1):
        wl = poisson_workload(load * throughput, cal.num_open, prompt, output, seed=cal.seed + k)
        runs.append(replay(surge, wl, seed=cal.seed + k).steps)
    frames = []
    for run, steps in enumerate(runs):
        features, switched, idle = step_shapes(steps, geometry)
        rows = [f.to_dict() for f in features]
        frame = pd.DataFrame(rows)
        frame.insert(0, "run", run)
        frame.insert(0, "page_size", page_size)
        frame.insert(0, "source", "replay")
        frame["switched"] = switched
        frame["after_idle"] = idle
        frame["period_s"] = steps["period_s"].to_numpy()
        frames.append(frame.dropna(subset=["period_s"]))
    out = pd.concat(frames, ignore_index=True)
    log(
        f"replay calibration: {len(runs)} workloads, {len(out)} back-to-back steps "
        f"(closed burst {throughput:.1f} req/s)"
    )
    return out


def describe_host() -> dict:
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            cpu = next((ln.split(":", 1)[1].strip() for ln in f if ln.startswith("model name")), cpu)
    except OSError:
        pass
    dev = jax.devices()[0]
    return {
        "platform": platform.platform(), "cpu": cpu, "cpu_count": os.cpu_count(), "python": platform.python_version(),
        "jax_version": jax.__version__, "jaxlib_version": getattr(jax.lib, "__version__", None) or jax.__version__,
        "backend": jax.default_backend(), "device_kind": dev.device_kind, "num_devices": jax.device_count(),
        "xla_flags": os.environ.get("XLA_FLAGS", ""), "load_average": list(os.getloadavg()),
        "pinning": current_pinning(),
    }  # fmt: skip


def run_profile(
    model: Model, grid: ProfileGrid, *, model_name: str = "", description: str = "", log: Log = print,
    replay_calibration: ReplayCalibration | None = DEFAULT_REPLAY,
) -> Profile:  # fmt: skip
    """Measure ``grid`` (forward points and engine scenarios) and, with ``replay_calibration``, replayed
    workloads' steps in the serving loop (:mod:`odrive.calibration.replay_fit`); fit the calibrated model, store
    its held-out error in the metadata."""
    t0 = time.perf_counter()
    started = dt.datetime.now(dt.UTC).isoformat(timespec="seconds")
    points = measure_points(model, grid, log)
    engine = measure_engine(model, grid, log)
    swaps = measure_swaps(model, grid, log) if grid.swap_pages else None
    replayed = measure_replays(model, grid.page_sizes[0], replay_calibration, log) if replay_calibration else None
    cfg = model.config
    meta = {
        "created": started, "description": description, "host": describe_host(),
        "model": {"spec_name": model_name, "config": cfg.to_hf_dict(), "dtype": str(np.dtype(model.dtype)),
                  "num_parameters": cfg.num_parameters(), "path": str(model.path) if model.path else None},
        "attention_impl": default_attention_impl_name(), "page_sizes": list(grid.page_sizes),
        "geometries": {str(ps): geometry_for(grid, ps).to_dict() for ps in grid.page_sizes},
        "grid": grid.to_dict(), "profiling_wall_s": None,
    }  # fmt: skip
    meta["round_drift"] = points.attrs.get("round_drift", [])
    profile = Profile(pd.concat([points, engine, swaps, replayed], ignore_index=True), meta)
    meta["fit"] = fit_profile(profile).summary()
    meta["profiling_wall_s"] = round(time.perf_counter() - t0, 1)
    return profile
