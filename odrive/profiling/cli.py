"""``odrive profile``: measure the real engine's step over a grid and write a profile (table + metadata)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path


def _ints(text: str) -> tuple[int, ...]:
    return tuple(int(x) for x in text.split(",") if x)


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="checkpoint directory, GGUF file or packaged model name")
    src.add_argument(
        "--tiny-bench",
        action="store_true",
        help="the tiny benchmark model (4 layers, hidden 256, 2x128 heads, vocab 1024), random weights",
    )
    p.add_argument(
        "--dtype", default="float32", help="compute dtype (default float32: XLA:CPU runs bf16 matmuls ~4x slower)"
    )
    p.add_argument("--out", type=Path, required=True, help="profile table path (.csv or .parquet; .json beside it)")
    p.add_argument("--quick", action="store_true", help="a few points on one page size (seconds; smoke test)")
    p.add_argument("--page-sizes", type=_ints, default=None, help="comma-separated (default 16,8,32)")
    p.add_argument("--repeats", type=int, default=None, help="timed repeats per point (median kept)")
    p.add_argument("--max-length", type=int, default=None, help="prompt + output cap of the profiled engine")
    p.add_argument(
        "--spec-name",
        default=None,
        help="sim model spec this profile describes (default: tiny-bench with --tiny-bench, a packaged model's name)",
    )
    p.add_argument("--description", default="")
    p.add_argument(
        "--no-replay",
        action="store_true",
        help="skip the replay calibration (workloads replayed through the serving loop)",
    )
    p.add_argument(
        "--pin-cores",
        action="store_true",
        help="XLA compute on core 0, the engine loop on the others (as experiments.validate_sim runs)",
    )


def run(args: argparse.Namespace) -> int:
    if args.pin_cores:
        from odrive.profiling.pinning import pin_compute_and_host

        print(f"pinned: {pin_compute_and_host()}")
    from odrive.calibration.grid import ProfileGrid, quick_grid
    from odrive.profiling.profiler import run_profile, tiny_bench_model

    if args.tiny_bench:
        model = tiny_bench_model(args.dtype)
        spec = args.spec_name or "tiny-bench"
    else:
        from odrive.model_source import PACKAGED_MODELS
        from odrive.models.checkpoint import load_model

        model = load_model(args.model, dtype=args.dtype)
        spec = args.spec_name or (str(args.model) if str(args.model) in PACKAGED_MODELS else "")
    overrides = {
        k: v
        for k, v in (("page_sizes", args.page_sizes), ("repeats", args.repeats), ("max_length", args.max_length))
        if v is not None
    }
    grid = quick_grid(**overrides) if args.quick else ProfileGrid(**overrides)
    from odrive.calibration.replay_fit import ReplayCalibration

    calibration = None if args.no_replay else ReplayCalibration()
    if args.quick and calibration is not None:
        calibration = ReplayCalibration(num_closed=8, num_open=8, loads=(0.5,))
    profile = run_profile(model, grid, model_name=spec, description=args.description,
                          replay_calibration=calibration)  # fmt: skip
    table, meta = profile.save(args.out)
    held = profile.meta["fit"]["heldout"]
    print(
        json.dumps(
            {
                "table": str(table),
                "metadata": str(meta),
                "heldout": held.get("leave_one_point_out"),
                "wall_s": profile.meta["profiling_wall_s"],
            },
            indent=2,
        )
    )
    return 0


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``odrive profile``."""
    parser = sub.add_parser("profile", help="profile the real engine's step time", description=__doc__)
    add_arguments(parser)
    parser.set_defaults(run=run)
