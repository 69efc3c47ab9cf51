"""Workloads whose prompts share prefixes, with token ids, for prefix-caching studies.

- :func:`shared_prefix_workload`: ``num_groups`` system prompts of ``prefix_len`` tokens; each request
  picks a group and appends a unique suffix.
- :func:`multi_turn_workload`: conversations whose turn t prompt is turn t-1's prompt + its output +
  new user text (behind an optional system prompt every conversation shares).

Token ids come from :mod:`sim.workloads.token_streams` (a deterministic function of segment key and
position; prompts stored as segments and built on access). In the simulator
outputs carry no ids, so a later turn hits only the full pages of the earlier turn's prompt.

Spec strings (``odrive sim --workload ...``)::

    shared-prefix:rate=R,n=N,groups=G,prefix=LEN,suffix=LEN,output=LEN
    multi-turn:rate=R,n=CONVERSATIONS,turns=T,think=SECONDS,user=LEN,output=LEN[,system=INT]
"""

from __future__ import annotations

import numpy as np

from sim.workloads.lengths import LengthDistribution, as_length_distribution
from sim.workloads.parse import parse_length, register_workload_kind, split_top_level
from sim.workloads.request import Workload
from sim.workloads.token_streams import VOCAB_SIZE, Segment, SegmentPrompts, stream_id, stream_tokens

__all__ = [
    "VOCAB_SIZE", "Segment", "SegmentPrompts", "multi_turn_workload", "shared_prefix_workload", "stream_id",
    "stream_tokens",
]  # fmt: skip


def _rngs(seed: int, n: int) -> list[np.random.Generator]:
    return [np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(n)]


def _check(rate: float, count: int, what: str) -> None:
    if not rate > 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    if count < 1:
        raise ValueError(f"{what} must be >= 1, got {count}")


def shared_prefix_workload(
    rate: float,
    num_requests: int,
    num_groups: int,
    prefix_len: int | LengthDistribution,
    suffix_len: int | LengthDistribution,
    output_len: int | LengthDistribution,
    seed: int = 0,
    vocab_size: int = VOCAB_SIZE,
) -> Workload:
    """Poisson arrivals; request i's prompt = group g's system prompt (``prefix_len`` tokens, drawn once
    per group) + a suffix of its own; g is uniform over ``num_groups``."""
    _check(rate, num_requests, "num_requests")
    _check(rate, num_groups, "num_groups")
    arrival, group, prefix, suffix, output = _rngs(seed, 5)
    times = np.cumsum(arrival.exponential(1.0 / rate, size=num_requests))
    groups = group.integers(0, num_groups, size=num_requests)
    prefixes = as_length_distribution(prefix_len).sample(prefix, num_groups)
    suffixes = as_length_distribution(suffix_len).sample(suffix, num_requests)
    segments = [
        ((stream_id("group", seed, int(g)), int(prefixes[g])), (stream_id("suffix", seed, i), int(s)))
        for i, (g, s) in enumerate(zip(groups.tolist(), suffixes.tolist(), strict=True))
    ]
    prompts = SegmentPrompts(segments, vocab_size)
    return Workload(
        arrival_times=times,
        prompt_lens=prompts.lengths(),
        output_lens=as_length_distribution(output_len).sample(output, num_requests),
        name=f"shared-prefix(groups={num_groups})",
        prompt_token_ids=prompts,
    )


def multi_turn_workload(
    rate: float,
    num_conversations: int,
    num_turns: int,
    think_time: float,
    user_len: int | LengthDistribution,
    output_len: int | LengthDistribution,
    system_len: int = 0,
    seed: int = 0,
    vocab_size: int = VOCAB_SIZE,
) -> Workload:
    """Conversations start as a Poisson process; each next turn arrives an exponential ``think_time``
    (mean, seconds) after the previous one. Turn t's prompt = system prompt + (user text, output) of
    turns 0 .. t-1 + turn t's user text; its output length is that turn's output."""
    _check(rate, num_conversations, "num_conversations")
    if num_turns < 1 or not think_time >= 0 or system_len < 0:
        raise ValueError(f"need num_turns >= 1, think_time >= 0, system_len >= 0; got {num_turns}, {think_time}, "
                         f"{system_len}")  # fmt: skip
    start, think, user, output = _rngs(seed, 4)
    starts = np.cumsum(start.exponential(1.0 / rate, size=num_conversations))
    gaps = think.exponential(think_time, size=(num_conversations, num_turns)) if think_time else None
    users = as_length_distribution(user_len).sample(user, num_conversations * num_turns).reshape(-1, num_turns)
    outputs = as_length_distribution(output_len).sample(output, num_conversations * num_turns).reshape(-1, num_turns)
    system: tuple[Segment, ...] = ((stream_id("system", seed), system_len),) if system_len else ()
    rows: list[tuple[float, int, int]] = []  # (arrival, conversation, turn)
    for c in range(num_conversations):
        t = float(starts[c])
        for turn in range(num_turns):
            if turn and gaps is not None:
                t += float(gaps[c, turn])
            rows.append((t, c, turn))
    rows.sort()
    segments = []
    for _, c, turn in rows:
        segs = list(system)
        for k in range(turn):
            segs.append((stream_id("user", seed, c, k), int(users[c, k])))
            segs.append((stream_id("output", seed, c, k), int(outputs[c, k])))
        segs.append((stream_id("user", seed, c, turn), int(users[c, turn])))
        segments.append(tuple(segs))
    prompts = SegmentPrompts(segments, vocab_size)
    return Workload(
        arrival_times=np.array([r[0] for r in rows]),
        prompt_lens=prompts.lengths(),
        output_lens=np.array([outputs[c, turn] for _, c, turn in rows], dtype=np.int64),
        name=f"multi-turn(turns={num_turns})",
        prompt_token_ids=prompts,
    )


# --- spec strings ---------------------------------------------------------------------------------------


def _options(body: str, required: set[str], optional: set[str] = frozenset()) -> dict[str, str]:
    options: dict[str, str] = {}
    for item in split_top_level(body):
        key, eq, value = (part.strip() for part in item.partition("="))
        if not eq or not key or not value:
            raise ValueError(f"expected KEY=VALUE, got {item!r}")
        if key not in required | optional:
            raise ValueError(f"unknown key {key!r}; allowed: {', '.join(sorted(required | optional))}")
        if key in options:
            raise ValueError(f"key {key!r} given twice")
        options[key] = value
    missing = required - options.keys()
    if missing:
        raise ValueError(f"missing key(s) {', '.join(sorted(missing))}")
    return options


def _parse_shared_prefix(body: str, seed: int) -> Workload:
    o = _options(body, {"rate", "n", "groups", "prefix", "suffix", "output"})
    return shared_prefix_workload(
        float(o["rate"]), int(o["n"]), int(o["groups"]), parse_length(o["prefix"]), parse_length(o["suffix"]),
        parse_length(o["output"], "output"), seed=seed,
    )  # fmt: skip


def _parse_multi_turn(body: str, seed: int) -> Workload:
    o = _options(body, {"rate", "n", "turns", "think", "user", "output"}, {"system"})
    return multi_turn_workload(
        float(o["rate"]), int(o["n"]), int(o["turns"]), float(o["think"]), parse_length(o["user"]),
        parse_length(o["output"], "output"), system_len=int(o.get("system", "0")), seed=seed,
    )  # fmt: skip


register_workload_kind("shared-prefix", _parse_shared_prefix)
register_workload_kind("multi-turn", _parse_multi_turn)
