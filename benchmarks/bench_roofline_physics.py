"""Step times of the roofline latency model before and after its physics, side by side.

``python benchmarks/bench_roofline_physics.py [--accelerator h100-80gb]`` prints, for Llama-3-8B and Llama-3-70B
at tensor parallelism 1/2/4/8, the modeled time of three steps: a decode of 1 and of 64 sequences (1,024 tokens of
context each) and a 2,048-token prefill. "before" is the older accounting (datasheet peaks, latency-free ring
all-reduces at the datasheet interconnect bandwidth, the embedding table read every step, every weight split
evenly over the devices); "after" is the current model (published achieved efficiencies, α–β all-reduces per link
preset, embeddings gathered, weights split as the real engine shards them). The last four columns apply one change
at a time to "before" (ratio to "before"), so each term's share shows.
"""

from __future__ import annotations

import argparse
from dataclasses import dataclass

import pandas as pd

from odrive.errors import ConfigError
from sim.hardware import ACCELERATORS, get_accelerator
from sim.latency import BatchShape, RooflineLatencyModel
from sim.model_spec import get_model_spec, num_kv_pages

MODELS = ("llama-3-8b", "llama-3-70b")
TPS = (1, 2, 4, 8)
STEPS = {
    "decode x1": BatchShape.from_chunks([1], [1024]),
    "decode x64": BatchShape.from_chunks([1] * 64, [1024] * 64),
    "prefill 2048": BatchShape.from_chunks([2048], [2048]),
}


@dataclass(frozen=True)
class Physics:
    """One setting of the roofline's physics switches (None: the accelerator preset's value)."""

    efficiency: bool
    allreduce_latency: bool
    gathered: bool
    engine_layout: bool

    def model(self, accelerator: str, model: str, tp: int) -> RooflineLatencyModel:
        acc = get_accelerator(accelerator)
        kw: dict[str, object] = {
            "embeddings": "gathered" if self.gathered else "streamed",
            "tp_layout": "engine" if self.engine_layout else "even",
        }
        if not self.efficiency:
            kw.update(flops_efficiency=1.0, hbm_efficiency=1.0)
        if not self.allreduce_latency:  # the older model: latency-free ring at the datasheet bandwidth
            kw.update(allreduce_latency_s=0.0, allreduce_bus_bandwidth=acc.interconnect_bandwidth)
        return RooflineLatencyModel(acc, get_model_spec(model), tp=tp, **kw)  # type: ignore[arg-type]


BEFORE = Physics(False, False, False, False)
AFTER = Physics(True, True, True, True)
ONE_AT_A_TIME = {
    "efficiency": Physics(True, False, False, False),
    "allreduce α": Physics(False, True, False, False),
    "gathered emb.": Physics(False, False, True, False),
    "engine TP split": Physics(False, False, False, True),
}


def table(accelerator: str) -> pd.DataFrame:
    rows = []
    for model in MODELS:
        for tp in TPS:
            try:
                num_kv_pages(get_accelerator(accelerator), get_model_spec(model), 16, 0.9, tp=tp)
                fits = "yes"
            except ConfigError:
                fits = "no"
            for step, shape in STEPS.items():
                before = BEFORE.model(accelerator, model, tp).step_time(shape)
                after = AFTER.model(accelerator, model, tp).step_time(shape)
                row = {"model": model, "tp": tp, "fits": fits, "step": step, "before_ms": 1e3 * before,
                       "after_ms": 1e3 * after, "after/before": after / before}  # fmt: skip
                for name, physics in ONE_AT_A_TIME.items():
                    row[name] = physics.model(accelerator, model, tp).step_time(shape) / before
                rows.append(row)
    return pd.DataFrame(rows)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--accelerator", default="h100-80gb", choices=sorted(ACCELERATORS))
    args = p.parse_args(argv)
    frame = table(args.accelerator)
    acc = get_accelerator(args.accelerator)
    link = acc.link()
    print(f"{args.accelerator}: flops_efficiency {acc.flops_efficiency}, hbm_efficiency {acc.hbm_efficiency}, "
          f"all-reduce {link.name}: {link.latency_s * 1e6:g} us + size / {link.bus_bandwidth / 1e9:g} GB/s "
          f"(before: 0 us + size / {acc.interconnect_bandwidth / 1e9:g} GB/s)")  # fmt: skip
    print("fits: whether the weights leave room for KV pages on each device (80 GiB x 0.9)\n")
    with pd.option_context("display.width", 200, "display.max_columns", 20):
        print(frame.to_string(index=False, float_format=lambda v: f"{v:.3f}"))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
