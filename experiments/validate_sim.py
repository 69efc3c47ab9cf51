"""Does the simulator tell the truth? The same workloads on the real engine and in the simulator, for any policy.

Real: a model (``--model``: SmolLM2-135M-Instruct by default, float32 compute; ``tiny-bench``: the tiny random
benchmark model) on this machine, driven by ``odrive.profiling.replay`` at wall-clock arrival times, each run on a
fresh engine (an empty prefix cache, no policy state). Simulated: the same scheduler, allocator, preemption mode,
page count and limits, with the ``calibrated`` latency model of the model's shipped profile. Workload families
(``--workload``), each at several loads as fractions of its simulated saturation throughput (all requests at t=0),
up to overload, for every ``--seed``:

- ``poisson``: Poisson arrivals, uniform prompt and output lengths;
- ``azure_conv``: a slice of the Azure conversation trace (lengths scaled to the engine's limits);
- ``multi_turn``: conversations behind one shared system prompt, each turn's prompt the history so far
  (``sim.workloads.multi_turn_workload``): what ``prefix-cache`` and ``cache-aware`` act on;
- ``priority``: Poisson arrivals in two priority classes (30 % at priority 0, the rest at 1): for ``priority``;
- ``long_prompt``: prompts of half to all of ``max_prefill_length``, short outputs: what ``sarathi`` chunks;
- ``tight_pool``: Poisson arrivals with long outputs in a pool of ``tight_num_pages`` pages, so running requests
  outgrow it and are preempted (``recompute`` vs ``swap``).

Errors per request (TTFT, TPOT, E2E) and aggregate (throughput, peak pages used), for these simulators:

- ``raw``: the profile as shipped;
- ``adjusted``: step times scaled by the speeds a probe measured just before and just after the run
  (geometric mean; ``odrive.profiling.probe``: a fixed small workload replayed on a FCFS engine, its measured step
  periods over the model's prediction for those batches), one for decode-only steps and one for steps with a
  prefill chunk. A shared machine's speed drifts with other users' load, and not alike for both kinds; the probe
  never sees the validated workload. ``adjusted_one_speed``: one probe speed for every step;
- ``run_speed``: scaled by the same two statistics taken on the validated run itself: the machine's mean
  speeds during the run — what is left is the model's structure (relative step costs, queueing);
- ``batchshape``: the same model through the ``BatchShape`` interface only (the stock ``SimExecutor``, which
  knows a step's sums: what a latency model without per-sequence information would get), at the probe speed.
  The other variants time steps as ``odrive sim --latency-model calibrated`` does (``CalibratedSimExecutor``).

Measurement protocol: ``main()`` pins XLA's compute to core 0 and the Python engine loop (scheduling, batch
building, the replay driver) to the other cores before JAX starts (``odrive.profiling.pinning``), as the shipped
pinned profiles were measured (``odrive profile --pin-cores``): unpinned, the two compete for this machine's 2
cores and repeated real runs differ by up to ~10 %. ``--pin no`` with an unpinned ``--profile`` validates the
unpinned engine.

With ``--repeats N`` (``--full``: 3) every workload runs N times on the real engine. The runs are compared like the
simulator is (``real_repeat``: a later run against the first; the noise floor of this machine), and the simulator
is also judged against the per-request median of the runs (``raw_vs_median``, ``adjusted_vs_median``; each real
run against the median of the others: ``real_vs_median``): a deterministic simulator should predict what the engine
typically does for each request, not one run's noise. Those runs are spread over the session, so the adjusted
simulator there runs at the session's median probe speeds (``adjusted_one_speed_vs_median``: its median speed over
all steps). The runs go in rounds (``run_order``): each round runs every workload once, in its own random order, so
a workload's repeats spread over the whole session and the machine's drift lands on every workload alike.

And for every family a closed workload (all at t=0, a pool of ``closed_num_pages`` pages: small enough to
preempt): the per-step plans of both runs (who is scheduled for how many tokens, who is preempted or swapped, pages
used) and every request's preemptions and prefix-cache hits must match exactly (``odrive.profiling.closed``).

    python -m experiments.validate_sim --model tiny-bench        # small: about a minute
    python -m experiments.validate_sim --scheduler sarathi --scheduler-arg chunk_size=64 --workload long_prompt
    python -m experiments.validate_sim --full                    # more requests, loads and repeats
"""

from __future__ import annotations

import argparse
import json
import os
import time
from collections.abc import Callable
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.common import experiment_main  # noqa: E402
from odrive.calibration.features import EngineGeometry  # noqa: E402
from odrive.calibration.profile import PROFILE_DIR, Profile, find_profile  # noqa: E402
from odrive.cli_errors import CLIParser, positive_int  # noqa: E402
from odrive.profiling.closed import ClosedComparison, closed, compare_closed  # noqa: E402
from odrive.profiling.compare import error_rows, median_run, per_request  # noqa: E402
from odrive.profiling.pinning import PIN_MODES, current_pinning, pin_as_profiled  # noqa: E402
from odrive.profiling.simrun import SimRun, simulate_calibrated  # noqa: E402
from sim.cli import _option  # noqa: E402 - odrive sim's NAME=VALUE reader
from sim.config import SimConfig  # noqa: E402
from sim.latency.calibrated import CalibratedLatencyModel  # noqa: E402
from sim.model_spec import get_model_spec  # noqa: E402
from sim.workloads import Uniform, Workload, load_trace, multi_turn_workload, poisson_workload  # noqa: E402

DEFAULT_MODEL = "smollm2-135m-instruct"
PINNED_PROFILES = {  # measured as main() runs: compute pinned
    "tiny-bench": PROFILE_DIR / "cpu-tiny-bench-f32-pinned.csv",
    DEFAULT_MODEL: PROFILE_DIR / "cpu-smollm2-135m-instruct-f32-pinned.csv",
}
DEFAULT_PROFILE = PINNED_PROFILES["tiny-bench"]
UNPINNED_PROFILE = PROFILE_DIR / "cpu-tiny-bench-f32.csv"  # for runs in a process whose JAX already started
TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "azure_conv_2023.csv"
PRIORITY_SHARE = 0.3  # the ``priority`` family's share of requests at priority 0 (the rest: 1)


@dataclass(frozen=True)
class ValidationConfig:
    """The model, the policy, engine limits (shared by both runs), workloads and loads.

    The defaults suit SmolLM2-135M on a 2-core CPU (steps of 0.1-1 s); :data:`TINY` the tiny benchmark model."""

    model: str = DEFAULT_MODEL
    profile: str = ""  # "": the model's shipped pinned profile
    page_size: int = 16
    num_pages: int = 160
    tight_num_pages: int = 40  # the ``tight_pool`` family's pool
    closed_num_pages: int = 32  # the closed workloads' pool (forces preemption)
    swap_space_pages: int = 1024  # the host tier of swap preemption
    max_prefill_length: int = 256
    max_length: int = 512
    max_concurrent_decodes: int = 8
    scheduler: str = "fcfs"
    allocator: str = "free-list"
    preemption_mode: str = "recompute"
    chunk_size: int | None = None
    scheduler_kwargs: tuple[tuple[str, Any], ...] = ()
    allocator_kwargs: tuple[tuple[str, Any], ...] = ()
    workloads: tuple[str, ...] = ("poisson",)
    loads: tuple[float, ...] = (0.3, 0.6, 0.85, 1.3)  # x simulated saturation throughput
    trace_loads: tuple[float, ...] = (0.5,)  # the azure_conv family's
    seeds: tuple[int, ...] = (0,)
    num_requests: int = 12
    prompt: tuple[int, int] = (16, 128)  # Poisson prompt lengths, uniform
    output: tuple[int, int] = (8, 32)
    long_output: tuple[int, int] = (32, 96)  # tight_pool
    short_output: tuple[int, int] = (4, 16)  # long_prompt
    system_prompt: int = 64  # multi_turn: the shared system prompt, user turns and turns per conversation
    user: tuple[int, int] = (8, 32)
    turns: int = 3
    think_s: float = 4.0  # multi_turn: mean think time between turns at a rate of one conversation per second
    trace_start: int = 2000
    trace_prompt_div: float = 8.0  # trace lengths scaled to the engine, then clipped
    trace_output_div: float = 4.0
    trace_output_max: int = 64
    closed_requests: int = 12
    repeats: int = 1
    probe: bool = True
    probe_requests: int = 6  # the speed probe's fixed workload: Poisson at probe_rate
    probe_rate: float = 2.0
    probe_output: tuple[int, int] = (4, 12)
    seed: int = 0  # the run order's and the speed probes'

    @property
    def profile_path(self) -> Path:
        if self.profile:
            return Path(self.profile)
        return PINNED_PROFILES.get(self.model) or find_profile(self.model)

    @property
    def vocab_size(self) -> int:
        return get_model_spec(self.model).vocab_size

    def sim_config(self, num_pages: int | None = None, seed: int | None = None) -> SimConfig:
        """The simulator's configuration: the engine's policies and limits with a pool of ``num_pages``."""
        return SimConfig(
            accelerator="cpu-2core", model=self.model, latency_model="calibrated", scheduler=self.scheduler,
            allocator=self.allocator, page_size=self.page_size, num_pages=num_pages or self.num_pages,
            max_prefill_length=self.max_prefill_length, max_concurrent_prefill=1,
            max_concurrent_decodes=self.max_concurrent_decodes, chunk_size=self.chunk_size,
            scheduler_kwargs=self.scheduler_kwargs, allocator_kwargs=self.allocator_kwargs,
            preemption_mode=self.preemption_mode, swap_space_pages=self.swap_space_pages,
            seed=self.seed if seed is None else seed,
            latency_kwargs=(("profile", str(self.profile_path)), ("page_size", self.page_size)),
        )  # fmt: skip

    def engine_kwargs(self, num_pages: int | None = None) -> dict[str, Any]:
        """``vSurge.create_odriver`` arguments for the same engine."""
        return dict(
            max_prefill_length=self.max_prefill_length, page_size=self.page_size, max_concurrent_prefill=1,
            max_concurrent_decodes=self.max_concurrent_decodes, max_length=self.max_length,
            num_pages=num_pages or self.num_pages, scheduler=self.scheduler, allocator=self.allocator,
            chunk_size=self.chunk_size, scheduler_kwargs=dict(self.scheduler_kwargs),
            allocator_kwargs=dict(self.allocator_kwargs), preemption_mode=self.preemption_mode,
            swap_space_pages=self.swap_space_pages, seed=self.seed, vsurge_name="validate",
        )  # fmt: skip

    @property
    def policy(self) -> str:
        """``scheduler/allocator/preemption_mode`` plus options, e.g. ``sarathi(chunk_size=64)/free-list/recompute``."""
        options = {**dict(self.scheduler_kwargs), **({"chunk_size": self.chunk_size} if self.chunk_size else {})}
        sched = self.scheduler + (f"({', '.join(f'{k}={v}' for k, v in options.items())})" if options else "")
        alloc = self.allocator + (
            f"({', '.join(f'{k}={v}' for k, v in self.allocator_kwargs)})" if self.allocator_kwargs else ""
        )
        return f"{sched}/{alloc}/{self.preemption_mode}"


SMALL = ValidationConfig()
FULL = replace(SMALL, loads=(0.3, 0.6, 0.85, 1.3), seeds=(0, 1, 2), num_requests=16, repeats=3)
TINY = replace(
    SMALL,
    model="tiny-bench",
    tight_num_pages=48,
    closed_num_pages=64,
    max_concurrent_decodes=16,
    workloads=("poisson", "azure_conv"),
    num_requests=30,
    prompt=(16, 192),
    output=(8, 48),
    long_output=(48, 128),
    user=(16, 48),
    system_prompt=96,
    closed_requests=32,
    probe_requests=16,
    probe_rate=25.0,
    probe_output=(8, 24),
)
TINY_FULL = replace(
    TINY, loads=(0.2, 0.4, 0.6, 0.8, 0.9, 1.1, 1.5), trace_loads=(0.3, 0.6, 0.9), num_requests=120, closed_requests=64,
    repeats=3,
)  # fmt: skip


def defaults(model: str, full: bool = False) -> ValidationConfig:
    """The configuration for ``model`` (tiny-bench: :data:`TINY`; else sized for SmolLM2-135M)."""
    if model == "tiny-bench":
        return TINY_FULL if full else TINY
    return replace(FULL if full else SMALL, model=model)


@dataclass
class Validation:
    """Everything one validation produced (the tables are also written to the output folder)."""

    config: ValidationConfig
    errors: pd.DataFrame
    requests: pd.DataFrame
    steps: pd.DataFrame
    plans_real: pd.DataFrame
    plans_sim: pd.DataFrame
    plans_diff: pd.DataFrame
    summary: dict = field(default_factory=dict)


# --- workloads ------------------------------------------------------------------------------------------
def scale_trace(trace: Workload, cfg: ValidationConfig) -> Workload:
    prompts = np.clip(np.round(trace.prompt_lens / cfg.trace_prompt_div), 8, cfg.max_prefill_length)
    outputs = np.clip(np.round(trace.output_lens / cfg.trace_output_div), 4, cfg.trace_output_max)
    return Workload(trace.arrival_times, prompts.astype(np.int64), outputs.astype(np.int64), name="azure_conv")


def _poisson(cfg: ValidationConfig, n: int, seed: int, prompt: tuple[int, int], output: tuple[int, int]) -> Workload:
    return poisson_workload(1.0, n, Uniform(*prompt), Uniform(*output), seed=seed)


def _azure(cfg: ValidationConfig, n: int, seed: int) -> Workload:
    return scale_trace(load_trace(TRACE, max_requests=n, start=cfg.trace_start + seed * n), cfg)


def _multi_turn(cfg: ValidationConfig, n: int, seed: int) -> Workload:
    """Conversations behind one system prompt; a turn whose history outgrows ``max_prefill_length`` (or whose answer
    would pass ``max_length``) ends its conversation: the engine would reject it."""
    wl = multi_turn_workload(
        1.0, -(-2 * n // cfg.turns), cfg.turns, cfg.think_s, Uniform(*cfg.user), Uniform(*cfg.output),
        system_len=cfg.system_prompt, seed=seed, vocab_size=cfg.vocab_size,
    )  # fmt: skip
    fits = (wl.prompt_lens <= cfg.max_prefill_length) & (wl.prompt_lens + wl.output_lens <= cfg.max_length)
    return wl.take(np.flatnonzero(fits)[:n])


def _priority(cfg: ValidationConfig, n: int, seed: int) -> Workload:
    wl = _poisson(cfg, n, seed, cfg.prompt, cfg.output)
    classes = (np.random.default_rng([seed, 17]).random(n) >= PRIORITY_SHARE).astype(np.int64)
    return replace(wl, priorities=classes, name="priority")


FAMILIES: dict[str, Callable[[ValidationConfig, int, int], Workload]] = {
    "poisson": lambda cfg, n, seed: _poisson(cfg, n, seed, cfg.prompt, cfg.output),
    "azure_conv": _azure,
    "multi_turn": _multi_turn,
    "priority": _priority,
    "long_prompt": lambda cfg, n, seed: _poisson(
        cfg, n, seed, (cfg.max_prefill_length // 2, cfg.max_prefill_length), cfg.short_output
    ),
    "tight_pool": lambda cfg, n, seed: _poisson(cfg, n, seed, cfg.prompt, cfg.long_output),
}


def family_pages(cfg: ValidationConfig, family: str) -> int:
    """The pool a family's open workloads run in."""
    return cfg.tight_num_pages if family == "tight_pool" else cfg.num_pages


def family_workload(cfg: ValidationConfig, family: str, n: int, seed: int) -> Workload:
    if family not in FAMILIES:
        raise ValueError(f"unknown workload family {family!r}; known: {', '.join(FAMILIES)}")
    return FAMILIES[family](cfg, n, seed)


def at_rate(workload: Workload, rate: float) -> Workload:
    """The same requests with arrival times stretched to a mean rate of ``rate`` requests/s."""
    n = len(workload)
    span = workload.duration
    factor = (n - 1) / (rate * span) if span > 0 else 1.0
    return replace(workload, arrival_times=(workload.arrival_times - workload.arrival_times[0]) * factor)


def saturation_rate(cfg: ValidationConfig, workload: Workload, model: CalibratedLatencyModel, num_pages: int) -> float:
    """Simulated requests/s of ``workload`` with every request queued at t=0."""
    run = simulate_calibrated(cfg.sim_config(num_pages), closed(workload), model, max_length=cfg.max_length)
    return float(run.result.summary["request_throughput"])


@dataclass(frozen=True)
class Scenario:
    """One validated workload: a family at a seed and a load (of its simulated saturation throughput)."""

    workload: str
    seed: int
    load: float
    rate: float
    capacity: float
    num_pages: int
    trace: Workload = field(repr=False)

    @property
    def tag(self) -> dict[str, Any]:
        return {"workload": self.workload, "seed": self.seed, "load": self.load, "rate": self.rate,
                "num_pages": self.num_pages}  # fmt: skip


def scenarios(cfg: ValidationConfig, model: CalibratedLatencyModel) -> list[Scenario]:
    out = []
    for family in cfg.workloads:
        loads = cfg.trace_loads if family == "azure_conv" else cfg.loads
        pages = family_pages(cfg, family)
        for seed in cfg.seeds:
            wl = family_workload(cfg, family, cfg.num_requests, seed)
            cap = saturation_rate(cfg, wl, model, pages)
            out += [Scenario(family, seed, load, load * cap, cap, pages, at_rate(wl, load * cap)) for load in loads]
    return out


# --- the real engine ------------------------------------------------------------------------------------
def load_engine_model(cfg: ValidationConfig, profile: Profile):  # noqa: ANN201 - odrive.models.checkpoint.Model
    """The real model: tiny-bench's random weights in the profile's dtype, else ``odrive.load_model``."""
    if cfg.model == "tiny-bench":
        from odrive.profiling.profiler import tiny_bench_model

        return tiny_bench_model(profile.meta["model"]["dtype"])
    import odrive

    return odrive.load_model(cfg.model, dtype=profile.meta["model"]["dtype"])


class Engines:
    """Fresh real engines (an empty prefix cache, no policy state) on one loaded model, each pool compiled and
    warmed once (compiled programs are shared by every engine of the model and pool size)."""

    def __init__(self, cfg: ValidationConfig, model, geometry: EngineGeometry, log=print) -> None:  # noqa: ANN001
        self.cfg, self.model, self.geometry, self.log = cfg, model, geometry, log
        self.warmed: dict[int, set[str]] = {}  # pool pages -> what is compiled for it

    def fresh(self, num_pages: int, cfg: ValidationConfig | None = None, warm: bool = True):  # noqa: ANN201 - vSurge
        """A new engine with a pool of ``num_pages``; ``warm``: compile every shape its policy can run first (FCFS
        never mixes prefill chunks and decodes; the other schedulers do)."""
        from odrive.profiling.replay import warm_up
        from odrive.vsurge.driver import vSurge

        cfg = cfg or self.cfg
        surge = vSurge.create_odriver(model=self.model, **cfg.engine_kwargs(num_pages))
        if EngineGeometry.of_builder(surge.executor.builder) != self.geometry:
            raise AssertionError("the simulator's geometry differs from the engine's BatchBuilder")
        need = {"mixed" if cfg.scheduler != "fcfs" else "plain"}
        need |= {"swap"} if cfg.preemption_mode == "swap" else set()
        done = self.warmed.setdefault(num_pages, set())
        if warm and not need <= (done | ({"plain"} if "mixed" in done else set())):
            seconds = warm_up(surge, self.geometry, mixed="mixed" in need)
            done |= need
            self.log(f"pool of {num_pages} pages compiled and warmed ({', '.join(sorted(need))}) in {seconds:.1f} s")
        return surge

    def probe_engine(self):  # noqa: ANN201 - vSurge
        """FCFS and the free list on the main pool: the speed probe's engine, the same for every policy."""
        return self.fresh(self.cfg.num_pages, replace(self.cfg, scheduler="fcfs", allocator="free-list",
                                                      scheduler_kwargs=(), allocator_kwargs=(), chunk_size=None,
                                                      preemption_mode="recompute"))  # fmt: skip


# --- the experiment -------------------------------------------------------------------------------------
def run_order(num_workloads: int, repeats: int, seed: int) -> list[int]:
    """The real runs' order as ``repeat × num_workloads + workload`` indices: ``repeats`` rounds, each a fresh random
    permutation of every workload (a randomized block design: drift over the session hits each workload once per
    round instead of, by chance, several of one workload's runs)."""
    rng = np.random.default_rng(seed)
    return [rep * num_workloads + int(w) for rep in range(repeats) for w in rng.permutation(num_workloads)]


def run_validation(cfg: ValidationConfig = TINY, out: Path | None = None, log=print) -> Validation:
    from odrive.profiling.probe import SpeedProbe, geometric_mean, measure_speed, predict_steps, speed_of
    from odrive.profiling.replay import replay

    t_start = time.perf_counter()
    profile = Profile.load(cfg.profile_path)
    model = CalibratedLatencyModel(profile, page_size=cfg.page_size)
    geometry = EngineGeometry.for_engine(cfg.sim_config().scheduler_config(), cfg.page_size, cfg.max_length)
    engines = Engines(cfg, load_engine_model(cfg, profile), geometry, log)
    todo = scenarios(cfg, model)
    order = run_order(len(todo), cfg.repeats, cfg.seed)
    error_frames, request_frames, step_frames, probes = [], [], [], []
    reals: dict[int, list] = {}  # scenario -> its real runs
    raw_sims: dict[int, SimRun] = {}  # scenario -> the raw-profile simulation (deterministic: one per scenario)
    prober = engines.probe_engine() if cfg.probe else None
    probe_wl = poisson_workload(cfg.probe_rate, cfg.probe_requests, Uniform(16, min(128, cfg.max_prefill_length)),
                                Uniform(*cfg.probe_output), seed=10_000 + cfg.seed)  # fmt: skip

    def probe(i: int) -> SpeedProbe:
        if prober is None:
            return SpeedProbe(1.0, 0, 0.0)
        return measure_speed(prober, model, geometry, seed=cfg.seed + i, workload=probe_wl)

    after = probe(0)
    for i, k in enumerate(order):
        j, rep = int(k % len(todo)), int(k // len(todo))
        sc = todo[j]
        wl = sc.trace
        sim_cfg = cfg.sim_config(sc.num_pages)
        surge = engines.fresh(sc.num_pages)
        before, load_before = after, os.getloadavg()[0]
        real = replay(surge, wl, seed=1000 * sc.seed + rep)
        after = probe(i + 1)  # also the next run's "before"
        speed, decode_speed, prefill_speed = (
            geometric_mean(getattr(before, f), getattr(after, f)) for f in ("speed", "decode_speed", "prefill_speed")
        )
        steps = predict_steps(real.steps, model, geometry)
        run_decode, run_prefill = speed_of(steps, "decode"), speed_of(steps, "prefill")
        tag = {
            **sc.tag, "repeat": rep, "decode_speed": decode_speed, "prefill_speed": prefill_speed,
            "run_decode_speed": run_decode, "run_prefill_speed": run_prefill, "loadavg": load_before,
        }  # fmt: skip
        for variant, m, exact in (
            ("raw", model, True),
            ("adjusted", model.with_speed(decode_speed, prefill_speed), True),
            ("adjusted_one_speed", model.with_speed(speed), True),
            ("run_speed", model.with_speed(run_decode, run_prefill), True),
            ("batchshape", model.with_speed(decode_speed, prefill_speed), False),
        ):
            run = simulate_calibrated(sim_cfg, wl, m, max_length=cfg.max_length, exact=exact)
            if variant == "raw":
                raw_sims[j] = run
            rows = error_rows(real.requests, run.requests, real.steps, run.result.steps)
            error_frames.append(pd.DataFrame(rows).assign(**tag, variant=variant))
            if variant not in ("batchshape", "adjusted_one_speed"):
                request_frames.append(per_request(real.requests, run.requests).assign(**tag, variant=variant))
        runs = reals.setdefault(j, [])
        runs.append(real)
        first = runs[0]
        if first is not real:  # the same workload again on the real engine: reality's own reproducibility
            rows = error_rows(first.requests, real.requests, first.steps, real.steps)
            error_frames.append(pd.DataFrame(rows).assign(**tag, variant="real_repeat"))
        step_frames.append(steps.assign(**tag))
        probes.append({**tag, "probe_before": asdict(before), "probe_after": asdict(after)})
        e = pd.concat(error_frames[-6:])
        e2e = e[(e["metric"] == "e2e") & (e["statistic"] == "median_abs")].groupby("variant")["error_pct"].last()
        log(
            f"{sc.workload:>11} seed {sc.seed} load {sc.load:.2f} ({sc.rate:.2f} req/s, {len(wl)} req): real "
            f"{real.wall_s:.1f} s, loadavg {load_before:.1f}, speed decode/prefill: probe {decode_speed:.3f}/"
            f"{prefill_speed:.3f}, run {run_decode:.3f}/{run_prefill:.3f}; median |E2E err| raw {e2e['raw']:.1f}%, "
            f"adjusted {e2e['adjusted']:.1f}% (one speed {e2e['adjusted_one_speed']:.1f}%), "
            f"run-speed {e2e['run_speed']:.1f}%"
            + (f", real vs real {e2e['real_repeat']:.1f}%" if "real_repeat" in e2e and first is not real else "")
        )
    # The median runs are spread over the session (rounds), so the speeds they ran at are the session's: the medians
    # of all its probes (~2 per run), which one misjudged probe cannot move as it moves a workload's 3.
    session = {
        f: float(np.median([p[key][f] for p in probes for key in ("probe_before", "probe_after")]))
        for f in ("speed", "decode_speed", "prefill_speed")
    }
    adjusted = {
        "adjusted_vs_median": model.with_speed(session["decode_speed"], session["prefill_speed"]),
        "adjusted_one_speed_vs_median": model.with_speed(session["speed"]),
    }
    for j, runs in reals.items():
        if len(runs) > 1:
            sc = todo[j]
            frames = against_median(runs, sc.trace, raw_sims[j], adjusted, cfg.sim_config(sc.num_pages), cfg)
            tag = {**sc.tag, "repeat": -1, "decode_speed": session["decode_speed"],
                   "prefill_speed": session["prefill_speed"]}  # fmt: skip
            error_frames += [f.assign(**tag) for f in frames]
            e = pd.concat(frames).query("metric == 'e2e' and statistic == 'median_abs'")
            e2e = e.groupby("variant")["error_pct"].median()
            log(
                f"{sc.workload:>11} seed {sc.seed} load {sc.load:.2f}, per-request median of {len(runs)} real runs: "
                f"median |E2E err| raw {e2e['raw_vs_median']:.1f}%, adjusted {e2e['adjusted_vs_median']:.1f}% "
                f"(one speed {e2e['adjusted_one_speed_vs_median']:.1f}%), one real run {e2e['real_vs_median']:.1f}%"
            )
    checks = {family: closed_check(cfg, engines, model, family) for family in cfg.workloads}
    for family, c in checks.items():
        log(f"closed {family} workload: {c.describe().splitlines()[0]}")
    plans = {k: pd.concat([getattr(c, k).assign(workload=f) for f, c in checks.items()], ignore_index=True)
             for k in ("plans_real", "plans_sim", "plans_diff")}  # fmt: skip
    closed_frames = [closed_rows(c).assign(workload=f"closed:{f}") for f, c in checks.items()]
    errors = pd.concat(error_frames + closed_frames, ignore_index=True)
    result = Validation(cfg, errors, pd.concat(request_frames, ignore_index=True),
                        pd.concat(step_frames, ignore_index=True), **plans)  # fmt: skip
    result.summary = summarize_validation(result, profile, probes, session, checks, time.perf_counter() - t_start)
    if out is not None:
        write(result, Path(out))
    return result


def against_median(
    runs: list,
    workload: Workload,
    raw_sim: SimRun,
    adjusted: dict[str, CalibratedLatencyModel],
    sim_cfg: SimConfig,
    cfg: ValidationConfig,
) -> list[pd.DataFrame]:
    """Error rows of the simulator against the per-request median of several real runs of one workload
    (``raw_vs_median``: the profile as shipped; then each of ``adjusted``, variant name -> model), and of each
    real run against the median of the others (``real_vs_median``: what one run's noise alone costs)."""
    first = runs[0]
    reference = median_run([r.requests for r in runs])
    sims = {"raw_vs_median": raw_sim}
    sims |= {name: simulate_calibrated(sim_cfg, workload, m, max_length=cfg.max_length) for name, m in adjusted.items()}
    frames = [
        pd.DataFrame(error_rows(reference, sim.requests, first.steps, sim.result.steps)).assign(variant=name)
        for name, sim in sims.items()
    ]
    for i, run in enumerate(runs):
        others = median_run([r.requests for j, r in enumerate(runs) if j != i])
        rows = error_rows(others, run.requests, first.steps, run.steps)
        frames.append(pd.DataFrame(rows).assign(variant="real_vs_median", repeat_of=i))
    return frames


@dataclass
class ClosedCheck:
    """A family's closed workload on both engines (:class:`odrive.profiling.closed.ClosedComparison`) and whether
    the fast-forwarded simulation served every request as the real engine did."""

    comparison: ClosedComparison
    fast_forward_outcome_identical: bool

    @property
    def plans_real(self) -> pd.DataFrame:
        return self.comparison.real.plans

    @property
    def plans_sim(self) -> pd.DataFrame:
        return self.comparison.sim.plans

    @property
    def plans_diff(self) -> pd.DataFrame:
        return self.comparison.plans_diff

    def describe(self) -> str:
        return self.comparison.describe()


def closed_check(cfg: ValidationConfig, engines: Engines, model: CalibratedLatencyModel, family: str) -> ClosedCheck:
    """A family's workload, every request at t=0, in a pool of ``closed_num_pages`` (small enough to preempt) on a
    fresh real engine and in the simulator stepped one step at a time; also the fast-forwarded simulation's
    per-request outcome."""
    from odrive.profiling.plans import OUTCOME_COLUMNS

    wl = family_workload(cfg, family, cfg.closed_requests, cfg.seed + 1)
    sim_cfg = cfg.sim_config(cfg.closed_num_pages)
    comparison = compare_closed(engines.fresh(cfg.closed_num_pages), sim_cfg, wl, model, max_length=cfg.max_length,
                                seed=cfg.seed)  # fmt: skip
    fast = simulate_calibrated(sim_cfg, closed(wl), model, max_length=cfg.max_length)
    cols = ["index", *OUTCOME_COLUMNS]
    real = comparison.real.requests
    same = bool((fast.requests[cols].to_numpy() == real[cols].to_numpy()).all())
    return ClosedCheck(comparison, same)


def closed_rows(check: ClosedCheck) -> pd.DataFrame:
    c = check.comparison
    real, sim = c.real.requests, c.sim.requests
    rows = [
        ("plans_identical", len(c.real.plans), len(c.sim.plans), 0.0 if c.identical else np.nan),
        ("preemptions", real["num_preemptions"].sum(), sim["num_preemptions"].sum(), np.nan),
        ("cached_tokens", real["num_cached_tokens"].sum(), sim["num_cached_tokens"].sum(), np.nan),
        ("swap_pages_out", *c.swaps["pages_out"], np.nan),
        ("peak_pages_used", c.real.plans["pages_used_max"].max(), c.sim.plans["pages_used_max"].max(), np.nan),
        ("fast_forward_outcome_identical", 1.0, float(check.fast_forward_outcome_identical), np.nan),
    ]
    return pd.DataFrame(
        [{"metric": m, "statistic": "value", "real": float(a), "sim": float(b), "error_pct": e} for m, a, b, e in rows]
    ).assign(load=np.inf, rate=np.inf, repeat=0, variant="plans")


def probe_adjusted(steps: pd.DataFrame) -> pd.Series:
    """The real runs' steps as the adjusted simulator times them: predicted at the probe's speed of their kind
    (a validation saved before prefill and decode steps had their own speeds has one ``speed``)."""
    if "decode_speed" not in steps:
        return steps["predicted_s"] * steps["speed"]
    return steps["predicted_s"] * np.where(steps["num_prefill_seqs"] > 0, steps["prefill_speed"], steps["decode_speed"])


def summarize_validation(
    v: Validation, profile: Profile, probes: list[dict], session: dict, checks: dict[str, ClosedCheck], wall_s: float
) -> dict:
    e = v.errors
    headline = (
        e[
            e["statistic"].isin(["median_abs", "value"])
            & e["metric"].isin(["e2e", "ttft", "tpot", "request_throughput", "peak_pages_used"])
        ]
        .query("variant != 'plans'")
        .groupby(["variant", "workload", "seed", "load", "metric"])["error_pct"]
        .median()
        .unstack("metric")
        .round(2)
    )
    s = v.steps.dropna(subset=["period_s"])
    step_err = 100 * (probe_adjusted(s) / s["period_s"] - 1)
    step_err_raw = 100 * (s["predicted_s"] / s["period_s"] - 1)
    return {
        "profile": str(profile.path),
        "profile_heldout": profile.meta.get("fit", {}).get("heldout", {}),
        "config": asdict(v.config),
        "policy": v.config.policy,
        "wall_s": round(wall_s, 1),
        "pinning": current_pinning(),
        "profile_pinning": profile.meta.get("host", {}).get("pinning"),
        "plans_identical": all(c.comparison.identical for c in checks.values()),
        "closed": {
            family: {
                "identical": c.comparison.identical,
                "steps": len(c.plans_real),
                "preemptions": int(c.comparison.real.requests["num_preemptions"].sum()),
                "swap_pages_out": c.comparison.swaps["pages_out"][0],
                "cached_tokens": int(c.comparison.real.requests["num_cached_tokens"].sum()),
                "fast_forward_outcome_identical": c.fast_forward_outcome_identical,
                "differences": "" if c.comparison.identical else c.describe(),
            }
            for family, c in checks.items()
        },
        "session_speed": session,
        "step_period_error_pct": {
            "median_abs": float(step_err.abs().median()),
            "median": float(step_err.median()),
            "raw_median_abs": float(step_err_raw.abs().median()),
            "raw_median": float(step_err_raw.median()),
            "num_steps": int(len(s)),
        },
        "probes": probes,
        "headline_error_pct": {
            f"{var}/{wl}/{seed}/{load}": row.dropna().to_dict() for (var, wl, seed, load), row in headline.iterrows()
        },
    }


# --- output ---------------------------------------------------------------------------------------------
TABLES = ("errors", "requests", "steps", "plans_real", "plans_sim", "plans_diff")


def write(v: Validation, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    for name in TABLES:
        getattr(v, name).to_csv(out / f"{name}.csv", index=False)
    (out / "summary.json").write_text(json.dumps(v.summary, indent=2, default=float) + "\n")
    plot(v, out / "validate_sim.png")


def config_from_dict(config: dict) -> ValidationConfig:
    """The inverse of ``asdict(config)`` after a JSON round trip (lists back to tuples)."""

    def tup(x: Any) -> Any:
        return tuple(tup(i) for i in x) if isinstance(x, list) else x

    known = {f for f in ValidationConfig.__dataclass_fields__}
    return replace(SMALL, **{k: tup(v) for k, v in config.items() if k in known})


def load(out: Path) -> Validation:
    """A validation ``write`` saved to ``out`` (to redraw its figure without rerunning it)."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    frames = {name: _read_csv(out / f"{name}.csv") for name in TABLES}
    return Validation(config_from_dict(summary.get("config", {})), **frames, summary=summary)


def _read_csv(path: Path) -> pd.DataFrame:
    try:
        return pd.read_csv(path)
    except pd.errors.EmptyDataError:  # an empty frame (no plan differences) is written as a bare newline
        return pd.DataFrame()


def plot(v: Validation, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, axes = plt.subplots(2, 2, figsize=(13, 9), constrained_layout=True)
    family = v.config.workloads[0]
    e = v.errors[v.errors["workload"] == family]
    ax = axes[0, 0]
    if (e["variant"] == "raw_vs_median").any():  # several real runs: judged against each request's median
        variants = (("raw_vs_median", "-"), ("adjusted_vs_median", "--"), ("real_vs_median", ":"))
        title = (f"{family}: sim vs the per-request median of the real runs\n(solid: profile as shipped, dashed: "
                 "probe speeds, dotted: one real run vs the others)")  # fmt: skip
    else:
        variants = (("raw", "-"), ("adjusted", "--"), ("run_speed", ":"))
        title = f"{family}: sim vs real (solid: profile as shipped, dashed: probe speeds, dotted: run speeds)"
    for metric, stat, color in (
        ("e2e", "median_abs", "C0"),
        ("ttft", "median_abs", "C1"),
        ("tpot", "median_abs", "C2"),
        ("request_throughput", "value", "C3"),
    ):
        for variant, style in variants:
            d = e[(e["metric"] == metric) & (e["statistic"] == stat) & (e["variant"] == variant)]
            d = d.groupby("load")["error_pct"].median()
            ax.plot(d.index, d.abs().clip(lower=0.1).values, style, color=color, marker="o",
                    label=metric if variant == variants[0][0] else None)  # fmt: skip
    ax.axhline(5, color="k", lw=0.8, ls="--")
    ax.axvline(1.0, color="grey", lw=0.8)
    ax.set(
        xlabel="offered load (x simulated saturation)",
        ylabel="|error| % (per-request median; throughput: aggregate)",
        title=f"{v.config.policy}, {v.config.model}\n{title}",
        yscale="log",
    )
    ax.legend(fontsize=8)
    ax = axes[0, 1]
    r = v.requests.query("variant == 'adjusted'")
    for (wl, load), d in r.groupby(["workload", "load"]):
        ax.scatter(d["e2e_real"], d["e2e_sim"], s=8, label=f"{wl} {load:g}")
    lim = [r[["e2e_real", "e2e_sim"]].min().min(), r[["e2e_real", "e2e_sim"]].max().max()]
    ax.plot(lim, lim, "k-", lw=0.8)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="real E2E (s)",
        ylabel="simulated E2E (s)",
        title="per-request E2E (adjusted)",
    )
    ax.legend(fontsize=7, ncol=2)
    ax = axes[1, 0]
    s = v.steps.dropna(subset=["period_s"])
    ax.scatter(1e3 * s["period_s"], 1e3 * probe_adjusted(s), s=4, alpha=0.4)
    lim = [1e3 * s["period_s"].min(), 1e3 * s["period_s"].max()]
    ax.plot(lim, lim, "k-", lw=0.8)
    med = v.summary.get("step_period_error_pct", {}).get("median_abs", np.nan)
    ax.set(
        xscale="log",
        yscale="log",
        xlabel="measured step period (ms)",
        ylabel="predicted (ms, adjusted)",
        title=f"the real runs' own steps: median |error| {med:.1f}%",
    )
    ax = axes[1, 1]
    pr, ps = (p[p["workload"] == family] if "workload" in p else p for p in (v.plans_real, v.plans_sim))
    ax.plot(pr["step"], pr["pages_used"], lw=2, label="real")
    ax.plot(ps["step"], ps["pages_used"], "--", lw=1.2, label="sim (stepped)")
    pre = pr[pr["preempted"].astype("string").fillna("") != ""]
    ax.scatter(pre["step"], pre["pages_used"], color="red", s=12, zorder=3, label="preemption")
    identical = v.summary.get("plans_identical", v.plans_diff.empty)
    ax.set(
        xlabel="step",
        ylabel="KV pages used",
        title=f"closed {family} workload: plans identical = {identical} ({len(pr)} steps)",
    )
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def add_policy_arguments(p: argparse.ArgumentParser) -> None:
    """``--scheduler``, ``--allocator``, ``--preemption-mode`` and their options (as ``odrive sim`` takes them)."""
    p.add_argument("--scheduler", default="fcfs")
    p.add_argument("--allocator", default="free-list")
    p.add_argument("--preemption-mode", choices=("recompute", "swap"), default="recompute")
    p.add_argument("--scheduler-arg", action="append", default=[], type=_option, metavar="NAME=VALUE",
                   help="a scheduler option (chunk_size=N sets the chunked-prefill chunk); repeatable")  # fmt: skip
    p.add_argument("--allocator-arg", action="append", default=[], type=_option, metavar="NAME=VALUE",
                   help="repeatable")  # fmt: skip


def policy_config(cfg: ValidationConfig, args: argparse.Namespace) -> ValidationConfig:
    """``cfg`` with the policy flags of :func:`add_policy_arguments` (names checked against the registries)."""
    from odrive.allocators import ALLOCATORS
    from odrive.schedulers import SCHEDULERS

    for kind, name, registry in (("scheduler", args.scheduler, SCHEDULERS), ("allocator", args.allocator, ALLOCATORS)):
        if name not in registry.names():
            raise ValueError(f"unknown {kind} {name!r}; registered: {', '.join(registry.names())}")
    sched = dict(args.scheduler_arg)
    chunk = sched.pop("chunk_size", None)
    return replace(
        cfg, scheduler=args.scheduler, allocator=args.allocator, preemption_mode=args.preemption_mode,
        chunk_size=int(chunk) if chunk is not None else None, scheduler_kwargs=tuple(sched.items()),
        allocator_kwargs=tuple(args.allocator_arg),
    )  # fmt: skip


def _floats(text: str) -> tuple[float, ...]:
    return tuple(float(x) for x in text.split(",") if x)


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(
        prog="python -m experiments.validate_sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--model", default=DEFAULT_MODEL, help="a packaged model, checkpoint folder, GGUF or tiny-bench")
    p.add_argument("--full", action="store_true", help="more requests, seeds and repeats")
    p.add_argument("--profile", default="", help="default: the model's shipped pinned profile")
    add_policy_arguments(p)
    p.add_argument("--workload", action="append", choices=tuple(FAMILIES), default=None,
                   help="a workload family (repeatable; default: poisson, and azure_conv on tiny-bench)")  # fmt: skip
    p.add_argument("--loads", type=_floats, default=None, help="comma-separated fractions of saturation")
    p.add_argument("--seeds", type=_ints, default=None, help="comma-separated workload seeds")
    p.add_argument("--requests", type=positive_int, default=None, help="requests per run")
    p.add_argument("--num-pages", type=positive_int, default=None,
                   help="KV pool pages (the tight_pool family has its own)")  # fmt: skip
    p.add_argument("--out", type=Path, default=Path("results/validate_sim"))
    p.add_argument("--seed", type=int, default=0, help="the run order's and the probes' seed")
    p.add_argument("--no-probe", action="store_true", help="skip the speed probe (adjusted = raw)")
    p.add_argument("--repeats", type=positive_int, default=None, help="real runs per workload (default: 1, --full: 3)")
    p.add_argument("--replot", action="store_true", help="redraw OUT's figure from its saved tables; run nothing")
    p.add_argument(
        "--pin",
        choices=PIN_MODES,
        default="profile",
        help="XLA compute and the engine loop on separate cores (default: as the profile was measured)",
    )
    return p


def run(args: argparse.Namespace) -> int:
    """Validate (or ``--replot``); the exit status is 1 when a closed workload's plans differ."""
    if args.replot:
        print(f"wrote {plot(load(args.out), args.out / 'validate_sim.png')}")
        return 0
    cfg = policy_config(replace(defaults(args.model, args.full), profile=args.profile, seed=args.seed,
                                probe=not args.no_probe), args)  # fmt: skip
    for name, value in (
        ("workloads", args.workload),
        ("loads", args.loads),
        ("seeds", args.seeds),
        ("num_requests", args.requests),
        ("num_pages", args.num_pages),
        ("repeats", args.repeats),
    ):
        if value is not None:
            cfg = replace(cfg, **{name: tuple(value) if isinstance(value, list) else value})  # fmt: skip
    pinned = pin_as_profiled(Profile.load(cfg.profile_path).meta, args.pin)
    if pinned:
        print(f"pinned: {pinned}")
    v = run_validation(cfg, args.out)
    keys = ("policy", "plans_identical", "closed", "step_period_error_pct", "headline_error_pct", "wall_s")
    print(json.dumps({k: v.summary[k] for k in keys}, indent=1, default=float))
    print(f"wrote {args.out}/errors.csv, requests.csv, steps.csv, plans_*.csv, summary.json, validate_sim.png")
    return 0 if v.summary["plans_identical"] else 1


main = experiment_main("python -m experiments.validate_sim", build_parser, run)


if __name__ == "__main__":
    raise SystemExit(main())
