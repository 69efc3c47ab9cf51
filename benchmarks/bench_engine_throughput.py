"""Real-engine throughput on the ANCHORS.md tiny config, against the memory-bandwidth bound.

Tiny random Llama (4 layers, hidden 256, intermediate 512, 2 heads of dim 128, vocab 1024, bf16),
page_size 16, 8 prompts x 32 tokens, 32 new tokens each, greedy. Prints startup/compile time, steady
tokens/s, the ratio to EasyDeL eSurge's 49-84 tokens/s (ANCHORS.md), and the achieved fraction of the
bound set by reading the weights and KV once per decode step at the memory bandwidth measured in this run.
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1] / "tests"))

from checkpoints import build_tiny_checkpoint  # noqa: E402

import odrive  # noqa: E402

ESURGE_TOKENS_PER_S = (49.0, 84.0)


def copy_bandwidth(nbytes: int = 256 * 2**20, repeat: int = 5) -> float:
    """Bytes/s of read+write for a large numpy copy (the ANCHORS.md '~4 GB/s' measurement)."""
    src = np.ones(nbytes // 8, np.float64)
    dst = np.empty_like(src)
    best = min(_time(lambda: np.copyto(dst, src)) for _ in range(repeat))
    return 2 * nbytes / best


def _time(fn) -> float:
    t0 = time.perf_counter()
    fn()
    return time.perf_counter() - t0


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--prompts", type=int, default=8)
    p.add_argument("--prompt-len", type=int, default=32)
    p.add_argument("--new-tokens", type=int, default=32)
    p.add_argument("--repeat", type=int, default=3)
    p.add_argument("--dtypes", default="bfloat16,float32",
                   help="compute dtypes to load the bf16 checkpoint in (XLA:CPU runs bf16 matmuls slowly)")
    args = p.parse_args()
    bw = copy_bandwidth()
    with tempfile.TemporaryDirectory() as d:
        build_tiny_checkpoint(d, vocab_size=1024, hidden_size=256, intermediate_size=512, layers=4, heads=2,
                              kv_heads=2, head_dim=128, dtype="bfloat16", with_tokenizer=False)
        for dtype in args.dtypes.split(","):
            print(f"--- checkpoint bf16, loaded as {dtype}")
            run_one(d, dtype, args, bw)


def run_one(d: str, dtype: str, args: argparse.Namespace, bw: float) -> None:
    if True:
        t0 = time.perf_counter()
        model = odrive.load_model(d, dtype=dtype)
        surge = odrive.vSurge.create_odriver(
            model=model, max_prefill_length=args.prompt_len, prefill_lengths=[args.prompt_len], page_size=16,
            hbm_utilization=0.01, max_concurrent_prefill=args.prompts, max_concurrent_decodes=args.prompts,
            seed=877, vsurge_name="bench", max_length=args.prompt_len + args.new_tokens,
        )  # fmt: skip
        rng = np.random.default_rng(0)
        prompts = [rng.integers(3, 1024, args.prompt_len).tolist() for _ in range(args.prompts)]
        params = odrive.SamplingParams(max_tokens=args.new_tokens, temperature=0.0, ignore_eos=True)
        surge.generate(prompts, params)  # compiles every bucket this workload touches
        startup = time.perf_counter() - t0
        runs = []
        for _ in range(args.repeat):
            n0 = len(surge.engine.metrics.steps_frame())
            runs.append(_time(lambda: surge.generate(prompts, params)))
        steps = surge.engine.metrics.steps_frame().iloc[n0:]
    wall = min(runs)
    tokens = args.prompts * args.new_tokens
    decode = steps[steps["num_prefill_seqs"] == 0]
    step_time = float(decode["duration"].median())
    cfg = model.config
    weight_bytes = cfg.num_parameters() * model.dtype.itemsize
    mean_ctx = args.prompt_len + args.new_tokens / 2
    kv_bytes = args.prompts * mean_ctx * cfg.kv_bytes_per_token(model.dtype)
    bound_step = (weight_bytes + kv_bytes) / bw
    bound_tps = args.prompts / bound_step
    tps = tokens / wall
    print(f"startup (load + engine + compile): {startup:.1f} s")
    print(f"throughput: {tokens} tokens in {wall:.3f} s -> {tps:,.0f} tokens/s "
          f"({tps / ESURGE_TOKENS_PER_S[1]:.1f}x-{tps / ESURGE_TOKENS_PER_S[0]:.1f}x EasyDeL eSurge's 49-84 tokens/s)")
    print(f"decode step: median {1e3 * step_time:.2f} ms for {args.prompts} sequences "
          f"-> {args.prompts / step_time:,.0f} tokens/s while decoding")
    print(f"memory-bandwidth bound: {(weight_bytes + kv_bytes) / 2**20:.1f} MiB per step at {bw / 1e9:.1f} GB/s "
          f"(measured copy) = {1e3 * bound_step:.2f} ms -> {bound_tps:,.0f} tokens/s; "
          f"achieved {step_time and bound_step / step_time:.0%} of the bound per decode step, "
          f"{tps / bound_tps:.0%} end to end")


if __name__ == "__main__":
    main()
