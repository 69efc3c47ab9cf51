"""Every policy against the real engine: the simulator's errors per policy, workload, load and seed, in one table.

Each policy runs ``experiments.validate_sim`` on the workload family that exercises it (``POLICIES``) — its closed
workload's step plans compared exactly, then open loads below and above saturation for several workload seeds,
real runs in rounds — and each (policy, workload, load, seed) becomes one row of a tidy table:

- ``median_abs_e2e_error_pct_raw``: the simulator with the profile as shipped;
- ``median_abs_{e2e,ttft,tpot}_error_pct_adjusted``: step times scaled by the speed probes around each run;
- ``throughput_error_pct``: the adjusted simulator's request throughput against the real run's;
- ``noise_floor_e2e_pct``: the engine against itself (another run of the same workload), where repeats were run;
- ``plans_identical``: the policy's closed workload decided step for step as on the real engine.

With repeats (``--repeats``, default 3) the errors are against each request's median over the real runs (what a
deterministic simulator can predict) and the noise floor is one real run against the median of the others.

    python -m experiments.validate_policies --quick              # every policy once, one open load; <= 10 min
    python -m experiments.validate_policies                      # 3 loads below saturation + 1 overload, 3 seeds
    python -m experiments.validate_policies --replot             # figure + README table from the committed CSV

The table goes to ``docs/validation/policies.csv``, the figure to ``docs/figures/validation_policies.png`` and
the README's table (between its ``validate_policies`` markers) is rewritten from the CSV by ``--replot``.
"""

from __future__ import annotations

import argparse
import os
import time
from dataclasses import replace
from pathlib import Path
from typing import Any

os.environ.setdefault("JAX_PLATFORMS", "cpu")

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

from experiments.common import experiment_main  # noqa: E402
from experiments.validate_sim import Validation, ValidationConfig, defaults, run_validation  # noqa: E402
from odrive.calibration.profile import Profile  # noqa: E402
from odrive.cli_errors import CLIParser, positive_int  # noqa: E402
from odrive.profiling.pinning import PIN_MODES, pin_as_profiled  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "docs" / "validation" / "policies.csv"
FIGURE = ROOT / "docs" / "figures" / "validation_policies.png"
README = ROOT / "README.md"
MARKERS = ("<!-- validate_policies:start -->", "<!-- validate_policies:end -->")

# name -> (ValidationConfig fields, the workload family that exercises it)
POLICIES: dict[str, tuple[dict[str, Any], str]] = {
    "fcfs": ({}, "poisson"),
    "sarathi": ({"scheduler": "sarathi", "chunk_size": 64}, "long_prompt"),
    "decode-priority": ({"scheduler": "decode-priority"}, "poisson"),
    "priority": ({"scheduler": "priority"}, "priority"),
    "sjf-oracle": ({"scheduler": "sjf", "scheduler_kwargs": (("predictor", "oracle"),)}, "poisson"),
    "cache-aware+prefix-cache": ({"scheduler": "cache-aware", "allocator": "prefix-cache"}, "multi_turn"),
    "fcfs+swap": ({"preemption_mode": "swap"}, "tight_pool"),
}
LOADS = (0.3, 0.6, 0.85, 1.3)  # three below saturation, one overload
SEEDS = (0, 1, 2)
COLUMNS = [
    "policy", "scheduler", "allocator", "preemption_mode", "workload", "load", "seed", "model",
    "median_abs_e2e_error_pct_raw", "median_abs_e2e_error_pct_adjusted", "median_abs_ttft_error_pct_adjusted",
    "median_abs_tpot_error_pct_adjusted", "throughput_error_pct", "noise_floor_e2e_pct", "plans_identical",
    "num_requests", "repeats",
]  # fmt: skip


def policy_rows(name: str, v: Validation) -> pd.DataFrame:
    """One row per (workload, load, seed) of one policy's validation."""
    cfg = v.config
    e = v.errors.query("variant != 'plans'")
    several = (e["variant"] == "raw_vs_median").any()
    raw, adjusted = ("raw_vs_median", "adjusted_vs_median") if several else ("raw", "adjusted")
    noise = "real_vs_median" if several else "real_repeat"

    def pick(variant: str, metric: str, statistic: str = "median_abs") -> pd.Series:
        d = e[(e["variant"] == variant) & (e["metric"] == metric) & (e["statistic"] == statistic)]
        return d.groupby(["workload", "load", "seed"])["error_pct"].median()

    frame = pd.DataFrame({
        "median_abs_e2e_error_pct_raw": pick(raw, "e2e"),
        "median_abs_e2e_error_pct_adjusted": pick(adjusted, "e2e"),
        "median_abs_ttft_error_pct_adjusted": pick(adjusted, "ttft"),
        "median_abs_tpot_error_pct_adjusted": pick(adjusted, "tpot"),
        "throughput_error_pct": pick(adjusted, "request_throughput", "value"),
        "noise_floor_e2e_pct": pick(noise, "e2e"),
    }).reset_index()  # fmt: skip
    frame["load"] = frame["load"].astype(float)
    return frame.assign(
        policy=name, scheduler=cfg.scheduler, allocator=cfg.allocator, preemption_mode=cfg.preemption_mode,
        model=cfg.model, plans_identical=bool(v.summary["plans_identical"]), num_requests=cfg.num_requests,
        repeats=cfg.repeats,
    )[COLUMNS]  # fmt: skip


def policy_config(base: ValidationConfig, name: str) -> ValidationConfig:
    fields, family = POLICIES[name]
    return replace(base, **fields, workloads=(family,))


def run(base: ValidationConfig, names: list[str], out: Path, log=print) -> pd.DataFrame:  # noqa: ANN001
    frames = []
    for i, name in enumerate(names):
        cfg = policy_config(base, name)
        t0 = time.perf_counter()
        log(f"[{i + 1}/{len(names)}] {name}: {cfg.policy} on {cfg.workloads[0]}, loads {cfg.loads}, seeds {cfg.seeds}")
        v = run_validation(cfg, out / name, log=lambda line: log(f"    {line}"))
        rows = policy_rows(name, v)
        frames.append(rows)
        log(f"    done in {time.perf_counter() - t0:.0f} s; plans identical: {v.summary['plans_identical']}")
    return pd.concat(frames, ignore_index=True)


def summary_table(table: pd.DataFrame) -> pd.DataFrame:
    """Per policy: the median over seeds and loads below saturation, and the overload rows apart."""
    t = table.assign(regime=np.where(table["load"] < 1.0, "below", "overload"))
    metrics = ["median_abs_e2e_error_pct_raw", "median_abs_e2e_error_pct_adjusted",
               "median_abs_ttft_error_pct_adjusted", "median_abs_tpot_error_pct_adjusted", "throughput_error_pct",
               "noise_floor_e2e_pct"]  # fmt: skip
    g = t.groupby(["policy", "workload", "regime"], sort=False)
    s = g[metrics].median().round(1)
    s["throughput_error_pct"] = g["throughput_error_pct"].apply(lambda x: x.abs().median()).round(1)
    s["plans_identical"] = g["plans_identical"].all()
    s["runs"] = g.size()
    return s.reset_index()


def markdown(table: pd.DataFrame) -> str:
    s = summary_table(table)
    model = ", ".join(sorted(table["model"].unique()))
    head = (
        "| policy | workload | load | E2E raw | E2E adjusted | TTFT adj. | TPOT adj. | throughput | noise floor "
        "| plans identical | runs |\n| --- | --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | --- | ---: |"
    )

    def pct(x: float) -> str:
        return "–" if pd.isna(x) else f"{x:.1f} %"

    lines = [
        f"| {r.policy} | {r.workload} | {'< saturation' if r.regime == 'below' else 'overload'} | "
        f"{pct(r.median_abs_e2e_error_pct_raw)} | {pct(r.median_abs_e2e_error_pct_adjusted)} | "
        f"{pct(r.median_abs_ttft_error_pct_adjusted)} | {pct(r.median_abs_tpot_error_pct_adjusted)} | "
        f"{pct(r.throughput_error_pct)} | {pct(r.noise_floor_e2e_pct)} | {'yes' if r.plans_identical else 'NO'} | "
        f"{r.runs} |"
        for r in s.itertuples()
    ]
    seeds, loads = sorted(int(x) for x in table["seed"].unique()), sorted(table["load"].unique())
    repeats = sorted(int(x) for x in table["repeats"].unique())
    against = ("each request's median over the real runs; noise floor: one real run against the others"
               if min(repeats) > 1 else "one real run (no noise floor)")  # fmt: skip
    note = (f"\n\nModel {model}; median |error| over seeds {', '.join(map(str, seeds))} and loads "
            f"{', '.join(f'{x:g}' for x in loads)} (x simulated saturation); {'/'.join(map(str, repeats))} real runs "
            f"per workload, errors against {against}; from `{TABLE.relative_to(ROOT)}` by "
            "`python -m experiments.validate_policies --replot`.")  # fmt: skip
    return "\n".join([head, *lines]) + note


def write_readme(table: pd.DataFrame, readme: Path = README) -> bool:
    """Rewrite the README's table between :data:`MARKERS` from ``table``; False when the README has no markers."""
    text = readme.read_text()
    start, end = MARKERS
    if start not in text or end not in text:
        return False
    before, rest = text.split(start, 1)
    _, after = rest.split(end, 1)
    readme.write_text(f"{before}{start}\n{markdown(table)}\n{end}{after}")
    return True


def plot(table: pd.DataFrame, path: Path) -> Path:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    policies = list(dict.fromkeys(table["policy"]))
    fig, axes = plt.subplots(1, 3, figsize=(15, 4.5), constrained_layout=True, sharey=True)
    panels = (
        ("median_abs_e2e_error_pct_raw", "E2E, profile as shipped"),
        ("median_abs_e2e_error_pct_adjusted", "E2E, probe speeds"),
        ("noise_floor_e2e_pct", "real vs real (noise floor)"),
    )
    for ax, (col, title) in zip(axes, panels, strict=True):
        for i, name in enumerate(policies):
            d = table[table["policy"] == name].groupby("load")[col].median()
            ax.plot(d.index, d.clip(lower=0.1).values, marker="o", color=f"C{i}", label=name)
        ax.axhline(5, color="k", lw=0.8, ls="--")
        ax.axvline(1.0, color="grey", lw=0.8)
        ax.set(xlabel="offered load (x simulated saturation)", title=title, yscale="log")
    axes[0].set_ylabel("median |error| % (median over seeds)")
    axes[-1].legend(fontsize=8)
    fig.suptitle(f"Simulator vs real engine, every policy ({', '.join(sorted(table['model'].unique()))})")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path


def _names(text: str) -> list[str]:
    names = [n for n in text.split(",") if n]
    unknown = [n for n in names if n not in POLICIES]
    if unknown:
        raise argparse.ArgumentTypeError(f"unknown policy {', '.join(unknown)}; known: {', '.join(POLICIES)}")
    return names


def build_parser() -> argparse.ArgumentParser:
    p = CLIParser(prog="python -m experiments.validate_policies", description=__doc__,
                  formatter_class=argparse.RawDescriptionHelpFormatter)  # fmt: skip
    p.add_argument("--model", default="smollm2-135m-instruct", help="a packaged model, a checkpoint, or tiny-bench")
    p.add_argument("--profile", default="", help="default: the model's shipped pinned profile")
    p.add_argument("--policies", type=_names, default=list(POLICIES), help=f"comma-separated; of {', '.join(POLICIES)}")
    p.add_argument("--quick", action="store_true", help="every policy once: its closed workload and one open load")
    p.add_argument("--repeats", type=positive_int, default=3,
                   help="real runs per workload (errors against their median)")  # fmt: skip
    p.add_argument("--requests", type=positive_int, default=None, help="requests per run")
    p.add_argument("--out", type=Path, default=Path("results/validate_policies"))
    p.add_argument("--table", type=Path, default=TABLE, help="where the tidy table goes")
    p.add_argument("--replot", action="store_true", help="figure and README table from --table; run nothing")
    p.add_argument("--pin", choices=PIN_MODES, default="profile")
    return p


def run_cli(args: argparse.Namespace) -> int:
    """Run the matrix (or ``--replot``); the exit status is 1 when a closed workload's plans differ."""
    if args.replot:
        table = pd.read_csv(args.table)
        print(markdown(table))
        print(f"wrote {plot(table, FIGURE)}" + ("; README table rewritten" if write_readme(table) else ""))
        return 0
    base = defaults(args.model)
    base = replace(base, profile=args.profile, loads=LOADS, seeds=SEEDS, repeats=args.repeats)
    if args.quick:
        base = replace(base, loads=(0.6,), seeds=(0,), repeats=1)
    if args.requests is not None:
        base = replace(base, num_requests=args.requests)
    pinned = pin_as_profiled(Profile.load(base.profile_path).meta, args.pin)
    if pinned:
        print(f"pinned: {pinned}")
    table = run(base, args.policies, args.out)
    args.out.mkdir(parents=True, exist_ok=True)
    table.to_csv(args.out / "policies.csv", index=False)
    print(summary_table(table).to_string(index=False))
    if not args.quick:
        args.table.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.table, index=False)
        print(f"wrote {args.table}, {plot(table, FIGURE)}")
    return 0 if table["plans_identical"].all() else 1


main = experiment_main("python -m experiments.validate_policies", build_parser, run_cli)


if __name__ == "__main__":
    raise SystemExit(main())
