"""``odrive generate --model NAME_OR_PATH "prompt" ...``: stream a model's answer to the terminal.

The chat template is applied unless ``--raw`` (a plain completion of the prompt text). The model's load and compile
times are printed to stderr once (the first prompt's shapes are compiled before it is timed), then after each
answer its time to first token and decode speed.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path


def add_parser(sub: argparse._SubParsersAction) -> None:
    """Register ``odrive generate``."""
    p = sub.add_parser("generate", help="generate text with a model, streamed to the terminal", description=__doc__)
    p.add_argument("prompt", nargs="+", help="one or more prompts, answered one after the other")
    p.add_argument(
        "--model",
        default="smollm2-135m-instruct",
        help="checkpoint directory, GGUF file or packaged model name (default: smollm2-135m-instruct)",
    )
    p.add_argument("--raw", action="store_true", help="complete the prompt text as is (no chat template)")
    p.add_argument("--system", default=None, help="a system message before the prompt (chat mode)")
    p.add_argument("--dtype", default=None, help="compute dtype (default: the checkpoint's; float32 for GGUF)")
    sampling = p.add_argument_group("sampling (as the server's request fields)")
    sampling.add_argument("--max-tokens", type=int, default=256)
    sampling.add_argument("--temperature", type=float, default=0.0, help="0 = greedy (default)")
    sampling.add_argument("--top-k", type=int, default=0, help="0 disables top-k")
    sampling.add_argument("--top-p", type=float, default=1.0)
    sampling.add_argument("--seed", type=int, default=None)
    sampling.add_argument("--stop", action="append", default=[], metavar="TEXT", help="stop string (repeatable)")
    sampling.add_argument("--ignore-eos", action="store_true", help="keep generating past end-of-sequence tokens")
    engine = p.add_argument_group("engine")
    engine.add_argument("--max-prefill-length", type=int, default=1024)
    engine.add_argument("--page-size", type=int, default=16)
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    import odrive
    from odrive.cli_errors import user_input

    started = time.perf_counter()
    with user_input("--model"):
        model = odrive.load_model(args.model, dtype=args.dtype)
        processor = odrive.load_processor(args.model)
    with user_input("sampling flags"):
        params = odrive.SamplingParams(
            max_tokens=args.max_tokens, temperature=args.temperature, top_k=args.top_k, top_p=args.top_p,
            seed=args.seed, stop=tuple(args.stop), ignore_eos=args.ignore_eos,
        )  # fmt: skip
    prompts = [prompt_text(processor, text, raw=args.raw, system=args.system) for text in args.prompt]
    longest = max(len(processor.encode(p)) for p in prompts)
    with user_input("engine flags"):
        surge = odrive.vSurge.create_odriver(
            model=model, processor=processor, max_prefill_length=max(args.max_prefill_length, longest),
            page_size=args.page_size, max_concurrent_prefill=1, max_concurrent_decodes=1,
            max_length=max(args.max_prefill_length, longest) + args.max_tokens, seed=args.seed or 0,
            vsurge_name=Path(str(args.model)).name,
        )  # fmt: skip
    loaded = time.perf_counter()
    surge.generate(prompts[:1], odrive.SamplingParams(max_tokens=2, temperature=0.0))  # compile prefill and decode
    compiled = time.perf_counter()
    print(f"[{args.model}: loaded in {loaded - started:.1f} s, compiled in {compiled - loaded:.1f} s]", file=sys.stderr)
    for prompt in prompts:
        stream_one(surge, prompt, params)
    return 0


def prompt_text(processor, text: str, *, raw: bool, system: str | None) -> str:  # noqa: ANN001 - odrive.Processor
    """The text the model sees: ``text`` itself with ``raw``, else the chat template around it."""
    if raw:
        return text
    messages = ([{"role": "system", "content": system}] if system else []) + [{"role": "user", "content": text}]
    return processor.apply_chat_template(messages, add_generation_prompt=True)


def stream_one(surge, prompt: str, params) -> None:  # noqa: ANN001 - vSurge, SamplingParams
    """Print the answer as it is generated, then TTFT and tokens/s on stderr."""
    start = time.perf_counter()
    first: float | None = None
    tokens = 0
    for delta in surge.stream(prompt, params):
        if first is None:
            first = time.perf_counter()
        tokens += len(delta.token_ids)
        print(delta.text, end="", flush=True)
    end = time.perf_counter()
    print()
    ttft = (first or end) - start
    rate = (tokens - 1) / (end - first) if first is not None and tokens > 1 and end > first else float("nan")
    print(f"[TTFT {ttft * 1000:.0f} ms, {tokens} tokens, {rate:.1f} tokens/s]", file=sys.stderr)
