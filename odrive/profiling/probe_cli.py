"""``odrive probe``: how fast is this machine now, relative to a profile of it? A few speed probes on the real
engine (:mod:`odrive.profiling.probe`), printed with the ``odrive sim`` flags that apply them.

A shared machine drifts: other users' load, clock and cache behaviour move its speed by several percent over
hours, and not alike for prefill and decode steps. Re-profiling takes minutes; a probe takes seconds.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from odrive.calibration.profile import Profile
from odrive.cli_errors import user_input
from odrive.profiling.pinning import PIN_MODES, pin_as_profiled


def add_arguments(p: argparse.ArgumentParser) -> None:
    src = p.add_mutually_exclusive_group(required=True)
    src.add_argument("--model", type=Path, help="checkpoint folder, GGUF file or packaged name (the profiled model)")
    src.add_argument("--tiny-bench", action="store_true", help="the tiny benchmark model the profile was measured on")
    p.add_argument("--profile", type=Path, required=True, help="the profile the speeds are relative to")
    p.add_argument("--probes", type=int, default=5, help="probe runs (the median speed is kept; ~1 s each)")
    p.add_argument("--page-size", type=int, default=None, help="default: the profile's first page size")
    p.add_argument("--max-prefill-length", type=int, default=256)
    p.add_argument("--max-concurrent-decodes", type=int, default=16)
    p.add_argument("--max-length", type=int, default=512)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument(
        "--pin-cores",
        choices=PIN_MODES,
        default="profile",
        help="XLA compute and the engine loop on separate cores (default: as the profile was measured)",
    )


def run(args: argparse.Namespace) -> int:
    if args.probes < 1:
        raise SystemExit(f"--probes must be >= 1, got {args.probes}")
    profile = Profile.load(args.profile)
    pinned = pin_as_profiled(profile.meta, args.pin_cores)
    if pinned:
        print(f"pinned: {pinned}")
    result = probe_machine(profile, args)
    print(json.dumps(result, indent=2))
    print(
        "simulate at these speeds: odrive sim --latency-model calibrated --profile "
        f"{args.profile} --latency-arg speed={result['decode_speed']:.4f} "
        f"--latency-arg prefill_speed={result['prefill_speed']:.4f} ..."
    )
    return 0


def probe_machine(profile: Profile, args: argparse.Namespace) -> dict:
    """Build the profiled model's engine, compile its shapes, run ``args.probes`` probes; the median speeds."""
    import numpy as np

    from odrive.calibration.features import EngineGeometry
    from odrive.profiling.probe import measure_speed
    from odrive.profiling.profiler import tiny_bench_model
    from odrive.profiling.replay import warm_up
    from odrive.vsurge.driver import vSurge
    from sim.latency.calibrated import CalibratedLatencyModel, check_model_matches
    from sim.model_spec import ModelSpec

    dtype = profile.meta["model"]["dtype"]
    if args.tiny_bench:
        model = tiny_bench_model(dtype)
    else:
        from odrive.models.checkpoint import load_model

        model = load_model(args.model, dtype=dtype)
    with user_input("--profile"):  # another model than the profiled one: the user's mistake, one line
        check_model_matches(profile, ModelSpec.from_hf_config(model.config.to_hf_dict(), name=str(args.model or "")))
    page_size = args.page_size or int(profile.meta["page_sizes"][0])
    surge = vSurge.create_odriver(
        model=model, max_prefill_length=args.max_prefill_length, page_size=page_size, max_concurrent_prefill=1,
        max_concurrent_decodes=args.max_concurrent_decodes, max_length=args.max_length, seed=args.seed,
        vsurge_name="probe",
    )  # fmt: skip
    calibrated = CalibratedLatencyModel(profile, page_size=page_size)
    geometry = EngineGeometry.of_builder(surge.executor.builder)
    warm_s = warm_up(surge, geometry)
    probes = [measure_speed(surge, calibrated, geometry, seed=args.seed + i) for i in range(args.probes)]
    kinds = ("speed", "decode_speed", "prefill_speed")
    return {
        "profile": str(profile.path),
        **{k: float(np.median([getattr(p, k) for p in probes])) for k in kinds},
        "probes": [{k: round(getattr(p, k), 4) for k in (*kinds, "num_steps", "seconds")} for p in probes],
        "warm_up_s": round(warm_s, 1),
    }


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``odrive probe``."""
    parser = sub.add_parser("probe", help="measure this machine's speed relative to a profile", description=__doc__)
    add_arguments(parser)
    parser.set_defaults(run=run)
