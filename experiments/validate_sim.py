"""Does the simulator tell the truth? The same workloads on the real engine and in the simulator.

Real: the tiny benchmark model (float32 compute; XLA:CPU runs bf16 ~4x slower) on this machine, driven by
``odrive.profiling.replay`` at wall-clock arrival times. Simulated: the same scheduler, allocator, page count
and limits, with the ``calibrated`` latency model of a shipped profile. Workloads: a slice of the Azure
conversation trace (lengths scaled to the tiny model, time scaled to a load) and Poisson arrivals at
several loads, as fractions of the simulated saturation throughput (all requests at t=0), up to overload.

Errors per request (TTFT, TPOT, E2E) and aggregate (throughput, peak pages used), for three simulators:

- ``raw``: the profile as shipped;
- ``adjusted``: step times scaled by the speeds a probe measured just before and just after the run
  (geometric mean; ``odrive.profiling.probe``: a fixed ~1 s mini workload replayed on the real engine, its
  measured step periods over the model's prediction for those batches), one for decode-only steps and one for
  steps with a prefill chunk. A shared machine's speed drifts with other users' load, and not alike for both
  kinds; the probe never sees the validated workload. ``adjusted_one_speed``: one probe speed for every step;
- ``run_speed``: scaled by the same two statistics taken on the validated run itself: the machine's mean
  speeds during the run — what is left is the model's structure (relative step costs, queueing);
- ``batchshape``: the same model through the ``BatchShape`` interface only (the stock ``SimExecutor``, which
  knows a step's sums: what a latency model without per-sequence information would get), at the probe speed.
  The other variants time steps as ``odrive sim --latency-model calibrated`` does (``CalibratedSimExecutor``).

Measurement protocol: ``main()`` pins XLA's compute to core 0 and the Python engine loop (scheduling, batch
building, the replay driver) to the other cores before JAX starts (``odrive.profiling.pinning``), as the default
profile ``cpu-tiny-bench-f32-pinned`` was measured (``odrive profile --tiny-bench --pin-cores``): unpinned, the
two compete for this machine's 2 cores and repeated real runs differ by up to ~10 %. ``--pin no`` with
``--profile data/profiles/cpu-tiny-bench-f32.csv`` validates the unpinned engine.

With ``--full`` every workload runs three times on the real engine. The runs are compared like the simulator is
(``real_repeat``: a later run against the first; the noise floor of this machine), and the simulator is also
judged against the per-request median of the runs (``raw_vs_median``, ``adjusted_vs_median``; each real run
against the median of the others: ``real_vs_median``): a deterministic simulator should predict what the engine
typically does for each request, not one run's noise. Those runs are spread over the session, so the adjusted
simulator there runs at the session's median probe speeds (``adjusted_one_speed_vs_median``: its median speed
over all steps). The runs go in rounds (``run_order``): each round runs
every workload once, in its own random order, so a workload's repeats spread over the whole session and the
machine's drift (a few % over tens of minutes, the probes show) lands on every workload alike. (A fully
random order once put 4 of one workload's 5 runs in a ~5 % faster second half of a session.)

And a closed workload (all at t=0, a pool small enough to preempt): the per-step plans of both runs (who is
scheduled for how many tokens, who is preempted, pages used) must match exactly.

    python -m experiments.validate_sim            # small: well under a minute
    python -m experiments.validate_sim --full     # more requests, loads and repeats
"""

from __future__ import annotations

import argparse
import json
import os
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from odrive.cli_errors import CLIParser, cli_main  # noqa: E402
from odrive.profiling.compare import error_rows, median_run, per_request  # noqa: E402
from odrive.profiling.features import EngineGeometry  # noqa: E402
from odrive.profiling.pinning import PIN_MODES, current_pinning, pin_as_profiled  # noqa: E402
from odrive.profiling.plans import compare_plans  # noqa: E402
from odrive.profiling.profile import PROFILE_DIR, Profile  # noqa: E402
from odrive.profiling.simrun import simulate_calibrated  # noqa: E402
from sim.config import SimConfig  # noqa: E402
from sim.latency.calibrated import CalibratedLatencyModel  # noqa: E402
from sim.workloads import Uniform, Workload, load_trace, poisson_workload  # noqa: E402

DEFAULT_PROFILE = PROFILE_DIR / "cpu-tiny-bench-f32-pinned.csv"  # measured as main() runs: compute pinned
UNPINNED_PROFILE = PROFILE_DIR / "cpu-tiny-bench-f32.csv"  # for runs in a process whose JAX already started
TRACE = Path(__file__).resolve().parents[1] / "data" / "traces" / "azure_conv_2023.csv"


@dataclass(frozen=True)
class ValidationConfig:
    """Engine limits (shared by both runs), workloads and loads."""

    profile: str = str(DEFAULT_PROFILE)
    page_size: int = 16
    num_pages: int = 160
    max_prefill_length: int = 256
    max_length: int = 512
    max_concurrent_decodes: int = 16
    scheduler: str = "fcfs"
    allocator: str = "free-list"
    loads: tuple[float, ...] = (0.3, 0.6, 0.85, 1.3)  # Poisson, x simulated saturation throughput
    trace_loads: tuple[float, ...] = (0.5,)
    num_requests: int = 30
    trace_start: int = 2000
    prompt: tuple[int, int] = (16, 192)  # Poisson prompt lengths, uniform
    output: tuple[int, int] = (8, 48)
    trace_prompt_div: float = 8.0  # trace lengths scaled to the tiny model, then clipped
    trace_output_div: float = 4.0
    trace_output_max: int = 64
    closed_requests: int = 32
    closed_prompt: tuple[int, int] = (64, 224)
    closed_output: tuple[int, int] = (24, 64)
    repeats: int = 1
    probe: bool = True
    seed: int = 0

    def sim_config(self, seed: int | None = None) -> SimConfig:
        return SimConfig(
            accelerator="h100-80gb", model="tiny-bench", latency_model="calibrated", scheduler=self.scheduler,
            allocator=self.allocator, page_size=self.page_size, num_pages=self.num_pages,
            max_prefill_length=self.max_prefill_length, max_concurrent_prefill=1,
            max_concurrent_decodes=self.max_concurrent_decodes, seed=self.seed if seed is None else seed,
            latency_kwargs=(("profile", self.profile), ("page_size", self.page_size)),
        )  # fmt: skip


SMALL = ValidationConfig()
FULL = replace(
    SMALL,
    loads=(0.2, 0.4, 0.6, 0.8, 0.9, 1.1, 1.5),
    trace_loads=(0.3, 0.6, 0.9),
    num_requests=120,
    closed_requests=64,
    repeats=3,
)


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


def at_rate(workload: Workload, rate: float) -> Workload:
    """The same requests with arrival times stretched to a mean rate of ``rate`` requests/s."""
    n = len(workload)
    span = workload.duration
    factor = (n - 1) / (rate * span) if span > 0 else 1.0
    t = (workload.arrival_times - workload.arrival_times[0]) * factor
    return Workload(t, workload.prompt_lens, workload.output_lens, name=workload.name)


def closed(workload: Workload) -> Workload:
    return Workload(np.zeros(len(workload)), workload.prompt_lens, workload.output_lens, name=workload.name)


def saturation_rate(cfg: ValidationConfig, workload: Workload, model: CalibratedLatencyModel) -> float:
    """Simulated requests/s of ``workload`` with every request queued at t=0."""
    run = simulate_calibrated(cfg.sim_config(), closed(workload), model, max_length=cfg.max_length)
    return float(run.result.summary["request_throughput"])


def scenarios(cfg: ValidationConfig, model: CalibratedLatencyModel) -> list[dict]:
    rng_seed = cfg.seed
    base = poisson_workload(1.0, cfg.num_requests, Uniform(*cfg.prompt), Uniform(*cfg.output), seed=rng_seed)
    trace = scale_trace(load_trace(TRACE, max_requests=cfg.num_requests, start=cfg.trace_start), cfg)
    out = []
    for name, wl, loads in (("poisson", base, cfg.loads), ("azure_conv", trace, cfg.trace_loads)):
        if not loads:
            continue
        cap = saturation_rate(cfg, wl, model)
        for load in loads:
            out.append(
                {"workload": name, "load": load, "rate": load * cap, "capacity": cap, "trace": at_rate(wl, load * cap)}
            )
    return out


# --- the real engine ------------------------------------------------------------------------------------
def make_engine(cfg: ValidationConfig, profile: Profile):
    from odrive.profiling.profiler import tiny_bench_model
    from odrive.vsurge.driver import vSurge

    model = tiny_bench_model(profile.meta["model"]["dtype"])
    return vSurge.create_odriver(
        model=model, max_prefill_length=cfg.max_prefill_length, page_size=cfg.page_size, max_concurrent_prefill=1,
        max_concurrent_decodes=cfg.max_concurrent_decodes, max_length=cfg.max_length, num_pages=cfg.num_pages,
        scheduler=cfg.scheduler, allocator=cfg.allocator, seed=cfg.seed, vsurge_name="validate",
    )  # fmt: skip


# --- the experiment -------------------------------------------------------------------------------------
def run_order(num_workloads: int, repeats: int, seed: int) -> list[int]:
    """The real runs' order as ``repeat × num_workloads + workload`` indices: ``repeats`` rounds, each a fresh random
    permutation of every workload (a randomized block design: drift over the session hits each workload once per
    round instead of, by chance, several of one workload's runs)."""
    rng = np.random.default_rng(seed)
    return [rep * num_workloads + int(w) for rep in range(repeats) for w in rng.permutation(num_workloads)]


def run_validation(cfg: ValidationConfig = SMALL, out: Path | None = None, log=print) -> Validation:
    from odrive.profiling.probe import SpeedProbe, geometric_mean, measure_speed, predict_steps, speed_of
    from odrive.profiling.replay import replay, warm_up

    t_start = time.perf_counter()
    profile = Profile.load(cfg.profile)
    model = CalibratedLatencyModel(profile, page_size=cfg.page_size)
    sim_cfg = cfg.sim_config()
    geometry = EngineGeometry.for_engine(sim_cfg.scheduler_config(), cfg.page_size, cfg.max_length)
    surge = make_engine(cfg, profile)
    if EngineGeometry.of_builder(surge.executor.builder) != geometry:
        raise AssertionError("the simulator's geometry differs from the engine's BatchBuilder")
    log(f"engine compiled and warmed in {warm_up(surge, geometry):.1f} s")
    todo = scenarios(cfg, model)
    order = run_order(len(todo), cfg.repeats, cfg.seed)
    error_frames, request_frames, step_frames, probes = [], [], [], []
    reals: dict[int, list] = {}  # scenario -> its real runs
    raw_sims: dict[int, object] = {}  # scenario -> the raw-profile simulation (deterministic: one per scenario)

    def probe(i: int) -> SpeedProbe:
        return measure_speed(surge, model, geometry, seed=cfg.seed + i) if cfg.probe else SpeedProbe(1.0, 0, 0.0)

    after = probe(0)
    for i, k in enumerate(order):
        sc, rep = todo[k % len(todo)], int(k // len(todo))
        wl = sc["trace"]
        before, load_before = after, os.getloadavg()[0]
        real = replay(surge, wl, seed=cfg.seed + rep)
        after = probe(i + 1)  # also the next run's "before"
        speed, decode_speed, prefill_speed = (
            geometric_mean(getattr(before, f), getattr(after, f)) for f in ("speed", "decode_speed", "prefill_speed")
        )
        steps = predict_steps(real.steps, model, geometry)
        run_decode, run_prefill = speed_of(steps, "decode"), speed_of(steps, "prefill")
        tag = {
            "workload": sc["workload"],
            "load": sc["load"],
            "rate": sc["rate"],
            "repeat": rep,
            "decode_speed": decode_speed,
            "prefill_speed": prefill_speed,
            "run_decode_speed": run_decode,
            "run_prefill_speed": run_prefill,
            "loadavg": load_before,
        }
        for variant, m, exact in (
            ("raw", model, True),
            ("adjusted", model.with_speed(decode_speed, prefill_speed), True),
            ("adjusted_one_speed", model.with_speed(speed), True),
            ("run_speed", model.with_speed(run_decode, run_prefill), True),
            ("batchshape", model.with_speed(decode_speed, prefill_speed), False),
        ):
            run = simulate_calibrated(sim_cfg, wl, m, max_length=cfg.max_length, exact=exact)
            if variant == "raw":
                raw_sims[int(k % len(todo))] = run
            rows = error_rows(real.requests, run.requests, real.steps, run.result.steps)
            error_frames.append(pd.DataFrame(rows).assign(**tag, variant=variant))
            if variant not in ("batchshape", "adjusted_one_speed"):
                request_frames.append(per_request(real.requests, run.requests).assign(**tag, variant=variant))
        runs = reals.setdefault(int(k % len(todo)), [])
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
            f"{sc['workload']:>10} load {sc['load']:.2f} ({sc['rate']:.1f} req/s, {len(wl)} req): real "
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
            frames = against_median(runs, sc["trace"], raw_sims[j], adjusted, sim_cfg, cfg)
            tag = {"workload": sc["workload"], "load": sc["load"], "rate": sc["rate"], "repeat": -1,
                   "decode_speed": session["decode_speed"], "prefill_speed": session["prefill_speed"]}  # fmt: skip
            error_frames += [f.assign(**tag) for f in frames]
            e = pd.concat(frames).query("metric == 'e2e' and statistic == 'median_abs'")
            e2e = e.groupby("variant")["error_pct"].median()
            log(
                f"{sc['workload']:>10} load {sc['load']:.2f}, per-request median of {len(runs)} real runs: "
                f"median |E2E err| raw {e2e['raw_vs_median']:.1f}%, adjusted {e2e['adjusted_vs_median']:.1f}% "
                f"(one speed {e2e['adjusted_one_speed_vs_median']:.1f}%), one real run {e2e['real_vs_median']:.1f}%"
            )
    plans_real, plans_sim, plans_diff, closed_rows = closed_check(cfg, surge, model)
    errors = pd.concat(error_frames + [closed_rows], ignore_index=True)
    steps = pd.concat(step_frames, ignore_index=True)
    requests = pd.concat(request_frames, ignore_index=True)
    result = Validation(cfg, errors, requests, steps, plans_real, plans_sim, plans_diff)
    result.summary = summarize_validation(result, profile, probes, time.perf_counter() - t_start)
    if out is not None:
        write(result, Path(out))
    return result


def against_median(
    runs: list,
    workload: Workload,
    raw_sim,
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


def closed_check(cfg: ValidationConfig, surge, model: CalibratedLatencyModel):
    """All requests at t=0 in a pool that forces preemption: plans of the real and the simulated run (stepped
    one at a time) side by side; also the fast-forwarded simulation's per-request outcome."""
    from odrive.profiling.replay import replay

    wl = closed(
        poisson_workload(
            1.0, cfg.closed_requests, Uniform(*cfg.closed_prompt), Uniform(*cfg.closed_output), seed=cfg.seed + 1
        )
    )
    real = replay(surge, wl, seed=cfg.seed)
    sim_cfg = cfg.sim_config()
    stepped = simulate_calibrated(sim_cfg, wl, model, max_length=cfg.max_length, fast_forward=False, record_plans=True)
    fast = simulate_calibrated(sim_cfg, wl, model, max_length=cfg.max_length)
    diff = compare_plans(real.plans, stepped.plans)
    same_outcome = bool(
        (
            fast.requests[["index", "num_output_tokens", "num_preemptions"]].to_numpy()
            == real.requests[["index", "num_output_tokens", "num_preemptions"]].to_numpy()
        ).all()
    )
    rows = pd.DataFrame([
        {"metric": "plans_identical", "statistic": "value", "real": float(len(real.plans)),
         "sim": float(len(stepped.plans)), "error_pct": 0.0 if diff.empty else np.nan},
        {"metric": "preemptions", "statistic": "value", "real": float(real.requests["num_preemptions"].sum()),
         "sim": float(stepped.requests["num_preemptions"].sum()), "error_pct": np.nan},
        {"metric": "peak_pages_used", "statistic": "value", "real": float(real.plans["pages_used_max"].max()),
         "sim": float(stepped.plans["pages_used_max"].max()), "error_pct": np.nan},
        {"metric": "fast_forward_outcome_identical", "statistic": "value", "real": 1.0,
         "sim": float(same_outcome), "error_pct": np.nan},
    ]).assign(workload="closed", load=np.inf, rate=np.inf, repeat=0, variant="plans")  # fmt: skip
    return real.plans, stepped.plans, diff, rows


def probe_adjusted(steps: pd.DataFrame) -> pd.Series:
    """The real runs' steps as the adjusted simulator times them: predicted at the probe's speed of their kind
    (a validation saved before prefill and decode steps had their own speeds has one ``speed``)."""
    if "decode_speed" not in steps:
        return steps["predicted_s"] * steps["speed"]
    return steps["predicted_s"] * np.where(steps["num_prefill_seqs"] > 0, steps["prefill_speed"], steps["decode_speed"])


def summarize_validation(v: Validation, profile: Profile, probes: list[dict], wall_s: float) -> dict:
    e = v.errors
    headline = (
        e[
            e["statistic"].isin(["median_abs", "value"])
            & e["metric"].isin(["e2e", "ttft", "tpot", "request_throughput", "peak_pages_used"])
        ]
        .query("workload != 'closed'")
        .groupby(["variant", "workload", "load", "metric"])["error_pct"]
        .median()
        .unstack("metric")
        .round(2)
    )
    s = v.steps.dropna(subset=["period_s"])
    step_err = 100 * (probe_adjusted(s) / s["period_s"] - 1)
    step_err_raw = 100 * (s["predicted_s"] / s["period_s"] - 1)
    closed_rows = e[e["workload"] == "closed"].set_index("metric")
    return {
        "profile": str(profile.path),
        "profile_heldout": profile.meta.get("fit", {}).get("heldout", {}),
        "config": asdict(v.config),
        "wall_s": round(wall_s, 1),
        "pinning": current_pinning(),
        "profile_pinning": profile.meta.get("host", {}).get("pinning"),
        "plans_identical": bool(v.plans_diff.empty),
        "closed_steps": int(len(v.plans_real)),
        "closed_preemptions": float(closed_rows.loc["preemptions", "real"]),
        "fast_forward_outcome_identical": bool(closed_rows.loc["fast_forward_outcome_identical", "sim"] == 1.0),
        "step_period_error_pct": {
            "median_abs": float(step_err.abs().median()),
            "median": float(step_err.median()),
            "raw_median_abs": float(step_err_raw.abs().median()),
            "raw_median": float(step_err_raw.median()),
            "num_steps": int(len(s)),
        },
        "probes": probes,
        "headline_error_pct": {
            f"{var}/{wl}/{load}": row.dropna().to_dict() for (var, wl, load), row in headline.iterrows()
        },
    }


# --- output ---------------------------------------------------------------------------------------------
def write(v: Validation, out: Path) -> None:
    out.mkdir(parents=True, exist_ok=True)
    v.errors.to_csv(out / "errors.csv", index=False)
    v.requests.to_csv(out / "requests.csv", index=False)
    v.steps.to_csv(out / "steps.csv", index=False)
    v.plans_real.to_csv(out / "plans_real.csv", index=False)
    v.plans_sim.to_csv(out / "plans_sim.csv", index=False)
    v.plans_diff.to_csv(out / "plans_diff.csv", index=False)
    (out / "summary.json").write_text(json.dumps(v.summary, indent=2, default=float) + "\n")
    plot(v, out / "validate_sim.png")


def load(out: Path) -> Validation:
    """A validation ``write`` saved to ``out`` (to redraw its figure without rerunning it)."""
    out = Path(out)
    summary = json.loads((out / "summary.json").read_text())
    config = summary.get("config", {})
    cfg = replace(SMALL, **{k: tuple(v) if isinstance(v, list) else v for k, v in config.items()})
    frames = {name: _read_csv(out / f"{name}.csv")
              for name in ("errors", "requests", "steps", "plans_real", "plans_sim", "plans_diff")}  # fmt: skip
    return Validation(cfg, **frames, summary=summary)


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
    e = v.errors.query("workload == 'poisson'")
    ax = axes[0, 0]
    if (e["variant"] == "raw_vs_median").any():  # several real runs: judged against each request's median
        variants = (("raw_vs_median", "-"), ("adjusted_vs_median", "--"), ("real_vs_median", ":"))
        title = ("Poisson: sim vs the per-request median of the real runs\n(solid: profile as shipped, dashed: "
                 "probe speeds, dotted: one real run vs the others)")  # fmt: skip
    else:
        variants = (("raw", "-"), ("adjusted", "--"), ("run_speed", ":"))
        title = "Poisson: sim vs real (solid: profile as shipped, dashed: probe speeds, dotted: run speeds)"
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
        title=title,
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
    pr, ps = v.plans_real, v.plans_sim
    ax.plot(pr["step"], pr["pages_used"], lw=2, label="real")
    ax.plot(ps["step"], ps["pages_used"], "--", lw=1.2, label="sim (stepped)")
    pre = pr[pr["preempted"].astype("string").fillna("") != ""]
    ax.scatter(pre["step"], pre["pages_used"], color="red", s=12, zorder=3, label="preemption")
    ax.set(
        xlabel="step",
        ylabel="KV pages used",
        title=f"closed workload: plans identical = {v.plans_diff.empty} ({len(pr)} steps)",
    )
    ax.legend(fontsize=8)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


@cli_main("python -m experiments.validate_sim")
def main(argv: list[str] | None = None) -> int:
    p = CLIParser(
        prog="python -m experiments.validate_sim",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--full", action="store_true", help="more requests, loads and repeats (minutes)")
    p.add_argument("--profile", default=str(DEFAULT_PROFILE))
    p.add_argument("--out", type=Path, default=Path("results/validate_sim"))
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--no-probe", action="store_true", help="skip the speed probe (adjusted = raw)")
    p.add_argument("--repeats", type=int, default=None, help="real runs per workload (default: 1, --full: 3)")
    p.add_argument("--replot", action="store_true", help="redraw OUT's figure from its saved tables; run nothing")
    p.add_argument(
        "--pin",
        choices=PIN_MODES,
        default="profile",
        help="XLA compute and the engine loop on separate cores (default: as the profile was measured)",
    )
    args = p.parse_args(argv)
    if args.replot:
        print(f"wrote {plot(load(args.out), args.out / 'validate_sim.png')}")
        return 0
    pinned = pin_as_profiled(Profile.load(args.profile).meta, args.pin)
    if pinned:
        print(f"pinned: {pinned}")
    cfg = replace(FULL if args.full else SMALL, profile=args.profile, seed=args.seed, probe=not args.no_probe)
    if args.repeats is not None:
        if args.repeats < 1:
            p.error(f"--repeats must be >= 1, got {args.repeats}")
        cfg = replace(cfg, repeats=args.repeats)
    v = run_validation(cfg, args.out)
    print(
        json.dumps(
            {
                k: v.summary[k]
                for k in (
                    "plans_identical",
                    "closed_steps",
                    "closed_preemptions",
                    "fast_forward_outcome_identical",
                    "step_period_error_pct",
                    "headline_error_pct",
                    "wall_s",
                )
            },
            indent=1,
            default=float,
        )
    )
    print(f"wrote {args.out}/errors.csv, requests.csv, steps.csv, plans_*.csv, summary.json, validate_sim.png")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
