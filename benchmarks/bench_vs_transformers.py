"""odrive's engine vs Hugging Face ``transformers.generate`` on a real model, side by side in one run.

Both run SmolLM2-135M-Instruct (by default; ``--model`` takes any path or packaged name) from the same weights, in
float32 (``--dtype bfloat16``: odrive stores weights in bf16 and computes in f32; reported separately), on the same
B prompts of ``--prompt-len`` tokens cut from natural text, ``--new-tokens`` greedy tokens each with EOS ignored,
compile and warm-up excluded. For every batch size it prints tokens/s of both (min/median over ``--repeats``), their
ratio, whether the greedy tokens agree, odrive's median decode-step time against the roofline bound of that step
(the larger of bytes read / read bandwidth and FLOPs / matmul rate, both measured in this run, see
``machine_limits``), then the time to first token of one ``--ttft-len``-token prompt for both, and odrive's startup
(load + compile of the shapes used).

    python benchmarks/bench_vs_transformers.py                      # batches 1, 8, 32; ~5 min on a 2-core CPU
    python benchmarks/bench_vs_transformers.py --batch 8 --repeats 3 --dtype bfloat16
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from pathlib import Path

import numpy as np
import pandas as pd

sys.path.insert(0, str(Path(__file__).resolve().parent))
os.environ.setdefault("TRANSFORMERS_VERBOSITY", "error")  # no progress bars from transformers' GGUF loader
os.environ.setdefault("HF_HUB_DISABLE_PROGRESS_BARS", "1")

import machine_limits  # noqa: E402

import odrive  # noqa: E402
from odrive.model_source import resolve_model  # noqa: E402

TEXT = """\
Paged attention stores the keys and values of every sequence in fixed-size pages, so memory is allocated as a
sequence grows instead of being reserved for its longest possible length. A scheduler decides at each step which
requests run: new prompts are processed in a prefill, running sequences produce one token each in a decode. The
weather in the mountains changed quickly that afternoon; clouds rolled over the ridge and the hikers turned back
toward the valley, where the river ran high after a week of rain. In the library, students searched the shelves
for books on history, chemistry and music, while the librarian catalogued a donation of old maps and letters.
Researchers measure throughput in tokens per second and latency as the time to the first token and between tokens.
"""


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", default="smollm2-135m-instruct")
    p.add_argument("--batch", default="1,8,32", help="comma-separated batch sizes")
    p.add_argument("--new-tokens", type=int, default=64)
    p.add_argument("--prompt-len", type=int, default=64)
    p.add_argument("--ttft-len", type=int, default=512, help="prompt length of the time-to-first-token comparison")
    p.add_argument("--repeats", type=int, default=2)
    p.add_argument("--dtype", default="float32", choices=["float32", "bfloat16"])
    p.add_argument("--page-size", type=int, default=16)
    p.add_argument("--skip-hf", action="store_true", help="odrive only (no transformers comparison)")
    p.add_argument("--out", type=Path, default=None, help="also write the table (and TTFT, startup) to this CSV")
    args = p.parse_args()
    batches = [int(b) for b in args.batch.split(",")]
    limits = machine_limits.measure()
    print(f"machine: {limits.describe()}; {os.cpu_count()} CPUs")

    processor = odrive.load_processor(args.model)
    prompts, ttft_prompt = make_prompts(processor, max(batches), args.prompt_len, args.ttft_len)
    ours = OdriveRunner(args, max(batches))
    hf = None if args.skip_hf else HFRunner(args.model)
    rows = []
    for b in batches:
        row = {"batch": b}
        ours_tokens, ours_times = ours.generate(prompts[:b], args.new_tokens, args.repeats)
        row.update(_rates("odrive", b * args.new_tokens, ours_times))
        step_s = ours.median_decode_step_s()
        bound_s = limits.bound_s(*decode_step_cost(ours.model.config, ours.model.dtype.itemsize, b,
                                                   args.prompt_len + args.new_tokens / 2))  # fmt: skip
        row.update(decode_step_ms=step_s * 1e3, bound_ms=bound_s * 1e3, roofline_fraction=bound_s / step_s)
        if hf is not None:
            hf_tokens, hf_times = hf.generate(prompts[:b], args.new_tokens, args.repeats)
            row.update(_rates("hf", b * args.new_tokens, hf_times))
            row["speedup"] = row["odrive_tok_s_best"] / row["hf_tok_s_best"]
            row["greedy_agree"] = f"{sum(a == h for a, h in zip(ours_tokens, hf_tokens, strict=True))}/{b}"
        rows.append(row)
        print(pd.DataFrame([row]).round(2).to_string(index=False), flush=True)
    print("\n" + pd.DataFrame(rows).round(2).to_string(index=False))

    ttft = {"odrive": ours.ttft(ttft_prompt, args.repeats + 1)}
    if hf is not None:
        ttft["hf"] = hf.ttft(ttft_prompt, args.repeats + 1)
    print(f"\nTTFT of one {len(ttft_prompt)}-token prompt (min / median over {args.repeats + 1}): "
          + ", ".join(f"{k} {min(v) * 1e3:.0f} / {statistics.median(v) * 1e3:.0f} ms" for k, v in ttft.items()))
    if hf is not None:
        print(f"TTFT ratio hf/odrive (best): {min(ttft['hf']) / min(ttft['odrive']):.2f}x")
    print(f"odrive startup: load {ours.load_s:.1f} s + compile of the shapes used {ours.compile_s:.1f} s "
          f"= {ours.load_s + ours.compile_s:.1f} s ({args.dtype})")
    if args.out is not None:
        table = pd.DataFrame(rows).assign(
            dtype=args.dtype, new_tokens=args.new_tokens, prompt_len=args.prompt_len, repeats=args.repeats,
            read_gb_s=limits.read_bytes_per_s / 1e9, matmul_gflop_s=limits.matmul_flops_per_s / 1e9,
            ttft_len=len(ttft_prompt), odrive_ttft_ms_best=min(ttft["odrive"]) * 1e3,
            hf_ttft_ms_best=min(ttft["hf"]) * 1e3 if "hf" in ttft else np.nan,
            startup_s=ours.load_s + ours.compile_s,
        )  # fmt: skip
        args.out.parent.mkdir(parents=True, exist_ok=True)
        table.to_csv(args.out, index=False)
        print(f"wrote {args.out}\n\n{markdown_table(table) if hf is not None else ''}")


def markdown_table(table: pd.DataFrame) -> str:
    """The README's table of a ``--out`` CSV (``tests/test_bench_tables.py`` checks the README holds it)."""
    lines = [
        "| batch | odrive tok/s (best / median) | transformers tok/s (best / median) | odrive / transformers "
        "| decode step (ms) | roofline bound (ms) | fraction of roofline | greedy tokens agree |",
        "| ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |",
    ]
    for r in table.itertuples():
        lines.append(
            f"| {r.batch} | {r.odrive_tok_s_best:.1f} / {r.odrive_tok_s_median:.1f} | {r.hf_tok_s_best:.1f} / "
            f"{r.hf_tok_s_median:.1f} | {r.speedup:.2f}x | {r.decode_step_ms:.1f} | {r.bound_ms:.1f} | "
            f"{r.roofline_fraction:.0%} | {r.greedy_agree} |"
        )
    return "\n".join(lines)


def make_prompts(processor, count: int, length: int, ttft_len: int) -> tuple[list[list[int]], list[int]]:  # noqa: ANN001
    """``count`` prompts of exactly ``length`` tokens (windows of natural text) and one of ``ttft_len`` tokens."""
    ids = processor.encode(TEXT, add_special_tokens=False)
    while len(ids) < length + 5 * count or len(ids) < ttft_len:
        ids = ids + ids
    return [ids[5 * i : 5 * i + length] for i in range(count)], ids[:ttft_len]


def decode_step_cost(config, itemsize: int, batch: int, mean_context: float) -> tuple[float, float]:  # noqa: ANN001
    """(bytes read, FLOPs) of one decode step of ``batch`` sequences: every weight once (the embedding table as the
    LM head when tied; embedding rows are gathered, not streamed), each sequence's K/V, and the matmul and
    attention FLOPs."""
    params = config.num_parameters()
    gathered = 0 if config.tie_word_embeddings else config.vocab_size * config.hidden_size  # untied input table
    streamed = params - gathered
    kv_bytes = batch * mean_context * config.kv_bytes_per_token(np.dtype(np.float32))
    matmul_flops = 2 * batch * streamed
    attention_flops = 4 * batch * mean_context * config.num_hidden_layers * config.num_attention_heads * config.head_dim
    return streamed * itemsize + kv_bytes, matmul_flops + attention_flops


def _rates(name: str, tokens: int, times: list[float]) -> dict[str, float]:
    return {f"{name}_tok_s_best": tokens / min(times), f"{name}_tok_s_median": tokens / statistics.median(times)}


class OdriveRunner:
    """The engine under test, built once for the largest batch (its compile counted as startup)."""

    def __init__(self, args: argparse.Namespace, max_batch: int) -> None:
        t0 = time.perf_counter()
        self.model = odrive.load_model(args.model, dtype=args.dtype)
        processor = odrive.load_processor(args.model)
        self.load_s = time.perf_counter() - t0
        longest = max(args.prompt_len, args.ttft_len)
        self.surge = odrive.vSurge.create_odriver(
            self.model, processor, max_prefill_length=longest, prefill_lengths=[args.prompt_len, longest],
            page_size=args.page_size, max_concurrent_prefill=max_batch, max_concurrent_decodes=max_batch,
            max_length=longest + args.new_tokens, max_num_batched_tokens=max_batch * args.prompt_len,
            num_pages=max_batch * -(-(longest + args.new_tokens) // args.page_size) + 1,
            compute_dtype="float32",  # bfloat16: weights and K/V stored in bf16, arithmetic in f32
        )  # fmt: skip
        self.compile_s = 0.0
        self._compiled: set[int] = set()

    def _greedy(self, n: int) -> odrive.SamplingParams:
        return odrive.SamplingParams(max_tokens=n, temperature=0.0, ignore_eos=True)

    def generate(self, prompts: list[list[int]], new: int, repeats: int) -> tuple[list[list[int]], list[float]]:
        if len(prompts) not in self._compiled:  # the shapes of this batch size: prefill, then decode
            t0 = time.perf_counter()
            self.surge.generate(prompts, self._greedy(3))
            self.compile_s += time.perf_counter() - t0
            self._compiled.add(len(prompts))
        times = []
        for _ in range(repeats):
            self.surge.engine.metrics._steps.clear()
            t0 = time.perf_counter()
            results = self.surge.generate(prompts, self._greedy(new))
            times.append(time.perf_counter() - t0)
        return [r.token_ids for r in results], times

    def median_decode_step_s(self) -> float:
        """Median duration of the last run's decode-only steps (per step, fast-forwarded rows divided)."""
        steps = self.surge.engine.metrics.steps_frame()
        decode = steps[steps["num_prefill_seqs"] == 0]
        return float((decode["duration"] / decode["num_steps"]).median())

    def ttft(self, prompt: list[int], repeats: int) -> list[float]:
        t0 = time.perf_counter()
        self.surge.generate([prompt], self._greedy(1))  # compile
        self.compile_s += time.perf_counter() - t0
        times = []
        for _ in range(repeats):
            t0 = time.perf_counter()
            self.surge.generate([prompt], self._greedy(1))
            times.append(time.perf_counter() - t0)
        return times


class HFRunner:
    """``transformers`` loading the same weights (GGUF through its own loader, or the HF folder), f32, eager."""

    def __init__(self, model: str) -> None:
        import torch
        from transformers import AutoModelForCausalLM

        torch.set_num_threads(os.cpu_count() or 1)
        self.torch = torch
        source = resolve_model(model)
        kwargs = {"gguf_file": source.path.name} if source.is_gguf else {}
        folder = source.path.parent if source.is_gguf else source.path
        self.model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch.float32, **kwargs).eval()

    def generate(self, prompts: list[list[int]], new: int, repeats: int) -> tuple[list[list[int]], list[float]]:
        ids = self.torch.tensor(prompts)
        kwargs = dict(max_new_tokens=new, min_new_tokens=new, do_sample=False, pad_token_id=0)
        with self.torch.no_grad():
            self.model.generate(ids, **{**kwargs, "max_new_tokens": 3, "min_new_tokens": 3})  # warm-up
            times = []
            for _ in range(repeats):
                t0 = time.perf_counter()
                out = self.model.generate(ids, **kwargs)
                times.append(time.perf_counter() - t0)
        return out[:, ids.shape[1] :].tolist(), times

    def ttft(self, prompt: list[int], repeats: int) -> list[float]:
        ids = self.torch.tensor([prompt])
        times = []
        with self.torch.no_grad():
            self.model(ids)  # warm-up
            for _ in range(repeats):
                t0 = time.perf_counter()
                int(self.model(ids).logits[0, -1].argmax())
                times.append(time.perf_counter() - t0)
        return times


if __name__ == "__main__":
    main()
