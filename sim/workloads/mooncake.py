"""Mooncake traces (kvcache-ai/Mooncake, FAST'25): JSON lines of ``timestamp`` (ms), ``input_length``,
``output_length`` and ``hash_ids``.

``hash_ids`` holds one id per ``block_size``-token block of the prompt (512 in the released traces; the last
block may be partial), and equal ids mean equal prefixes up to the end of that block. Each id becomes a
deterministic block of token ids (:mod:`sim.workloads.token_streams`: a stream seeded by the id),
so two prompts share exactly the tokens their ids say they share, and a prefix-caching allocator hits exactly
where the trace shares blocks. A partial last block is the first tokens of its id's block. Without
``hash_ids`` (in every record) requests carry no token ids.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np

from sim.workloads.token_streams import BlockPrompts, block_streams
from sim.workloads.trace_rows import MAX_TOKEN_COUNT, TraceFormatError, TraceRows, open_text

DEFAULT_BLOCK_SIZE = 512
KEYS = ("timestamp", "input_length", "output_length")
BLOCK_SALT = 0x4D6F6F6E63616B65  # token streams of hash ids: this salt keeps them apart from other workloads'


def _number(value: Any) -> bool:
    return isinstance(value, int | float) and not isinstance(value, bool)


def read_mooncake(path: Path, block_size: int = DEFAULT_BLOCK_SIZE) -> TraceRows:
    """Read and validate a Mooncake JSONL trace (blank lines are skipped); the first bad line raises
    :class:`TraceFormatError` naming the file, line and problem."""
    if block_size < 1:
        raise ValueError(f"block_size must be >= 1, got {block_size}")
    times: list[float] = []
    prompts: list[int] = []
    outputs: list[int] = []
    block_ids: list[int] = []
    ids_line: int | None = None  # first line with hash_ids
    no_ids_line: int | None = None  # first line without
    prev_line, prev_stamp, number = 0, 0.0, 0

    def fail(problem: str) -> TraceFormatError:
        return TraceFormatError(path, number, problem)

    with open_text(path) as f:
        for number, text in enumerate(f, start=1):
            if not text.strip():
                continue
            try:
                record = json.loads(text)
            except json.JSONDecodeError as err:
                raise fail(f"not a JSON object: {err.msg} at column {err.colno}") from None
            if not isinstance(record, dict):
                raise fail(f"expected a JSON object, got {type(record).__name__}")
            missing = [k for k in KEYS if k not in record]
            if missing:
                raise fail(f"missing key(s) {', '.join(missing)}; found: {', '.join(record) or 'none'}")
            stamp = record["timestamp"]
            if not _number(stamp) or not math.isfinite(stamp):
                raise fail(f"timestamp must be a number (milliseconds), got {stamp!r}")
            if stamp < 0:
                raise fail(f"negative timestamp {stamp}")
            if times and stamp < prev_stamp:
                raise fail(f"timestamps must be non-decreasing: {stamp} comes after {prev_stamp} on line {prev_line}")
            lengths = []
            for key in ("input_length", "output_length"):
                value = record[key]
                if not _number(value) or not math.isfinite(value) or value != int(value):
                    raise fail(f"{key} must be a whole number, got {value!r}")
                if value < 1:
                    raise fail(f"{key}={value} must be >= 1")
                if value > MAX_TOKEN_COUNT:
                    raise fail(f"{key}={value} is over {MAX_TOKEN_COUNT:,} tokens")
                lengths.append(int(value))
            prompt, output = lengths
            ids = record.get("hash_ids")
            if ids is None:
                no_ids_line = no_ids_line or number
            else:
                ids_line = ids_line or number
                if not isinstance(ids, list) or not all(type(h) is int for h in ids):
                    raise fail("hash_ids must be a list of integers")
                need = -(-prompt // block_size)
                if len(ids) != need:
                    raise fail(f"hash_ids has {len(ids)} block ids, but input_length={prompt} makes {need} blocks of "
                               f"block_size={block_size} tokens")  # fmt: skip
                block_ids.extend(ids)
            if ids_line is not None and no_ids_line is not None:
                raise fail(f"hash_ids missing here but given on line {ids_line}" if ids is None
                           else f"hash_ids given here but missing on line {no_ids_line}")  # fmt: skip
            times.append(stamp / 1000.0)
            prompts.append(prompt)
            outputs.append(output)
            prev_line, prev_stamp = number, stamp
    if not times:
        raise TraceFormatError(path, None, "trace has no requests")
    prompt_lens = np.array(prompts, dtype=np.int64)
    token_ids = None
    if ids_line is not None:
        offsets = np.concatenate(([0], np.cumsum(-(-prompt_lens // block_size))))
        try:
            ids = np.array(block_ids, dtype=np.int64)
        except OverflowError:
            raise TraceFormatError(path, None, "hash_ids must be 64-bit integers") from None
        token_ids = BlockPrompts(block_streams(ids, BLOCK_SALT), offsets, prompt_lens, block_size)
    return TraceRows(
        format="mooncake",
        prompts=prompt_lens,
        outputs=np.array(outputs, dtype=np.int64),
        times=np.array(times, dtype=np.float64),
        prompt_token_ids=token_ids,
    )
