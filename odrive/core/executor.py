"""The Executor interface: the only part that differs between the simulator and the real engine."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

import numpy as np
from mypy_extensions import mypyc_attr

from odrive.core.request import Request


@mypyc_attr(allow_interpreted_subclasses=True)
class SeqChunk:
    """One scheduled request in a step: compute ``num_tokens`` tokens starting at position ``start``.

    ``sample`` is True when the chunk completes the sequence, so a next token is drawn for it. ``forks``: requests
    forked from this one (parallel samples, ``Request.fork_of``) whose first token is drawn from the same logits
    row, each with its own sampling params and seed (only on the chunk that completes the prompt).
    ``request`` is read-only for executors (token ids, sampling params); so is the chunk. A plain class with
    slots, not a dataclass: the simulator builds millions, and it compiles to a native object (odrive.accel).
    """

    __slots__ = ("request", "start", "num_tokens", "page_table", "sample", "forks")

    def __init__(self, request: Request, start: int, num_tokens: int, page_table: list[int], sample: bool,
                 forks: tuple[Request, ...] = ()) -> None:  # fmt: skip
        self.request = request
        self.start = start
        self.num_tokens = num_tokens
        self.page_table = page_table
        self.sample = sample
        self.forks = forks

    @property
    def request_id(self) -> str:
        return self.request.request_id

    @property
    def kv_len(self) -> int:
        """Context length after this step (cached + new tokens)."""
        return self.start + self.num_tokens

    def _fields(self) -> tuple[Request, int, int, list[int], bool, tuple[Request, ...]]:
        return (self.request, self.start, self.num_tokens, self.page_table, self.sample, self.forks)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, SeqChunk) and self._fields() == other._fields()

    def __hash__(self) -> int:
        return hash((id(self.request), self.start, self.num_tokens, self.sample))

    def __repr__(self) -> str:
        forks = f", forks={len(self.forks)}" if self.forks else ""
        return (f"SeqChunk(request={self.request.request_id!r}, start={self.start}, num_tokens={self.num_tokens}, "
                f"pages={len(self.page_table)}, sample={self.sample}{forks})")  # fmt: skip


@dataclass(frozen=True)
class ExecuteResult:
    """Wall time (real) or modeled time (simulator) of the step, and the sampled tokens if real (request id →
    token, the chunks' ``forks`` included)."""

    duration: float
    sampled_token_ids: dict[str, int] | None = None


@dataclass(frozen=True)
class SwapOps:
    """One step's K/V page copies for swap preemption (see ``StepPlan.swap_out``/``swap_in``).

    ``swap_out``: request_id → device pages to copy to the host (keyed by request); ``swap_in``:
    request_id → device pages to fill from that request's host copy. Per-layer page ids, as in page tables.
    """

    swap_out: dict[str, list[int]]
    swap_in: dict[str, list[int]]
    page_size: int

    @property
    def num_pages_out(self) -> int:
        return sum(len(p) for p in self.swap_out.values())

    @property
    def num_pages_in(self) -> int:
        return sum(len(p) for p in self.swap_in.values())

    @property
    def num_pages(self) -> int:
        return self.num_pages_out + self.num_pages_in


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; users subclass it
class Executor(ABC):
    """Runs one step's batch. The simulator's executor models time; the real one runs the model."""

    supports_decode_runs: ClassVar[bool] = False

    @abstractmethod
    def execute(self, batch: list[SeqChunk]) -> ExecuteResult: ...

    def swap(self, ops: SwapOps) -> float:
        """Copy every ``ops.swap_out`` request's pages to the host, then every ``ops.swap_in`` request's host
        copy into its new pages; return the seconds taken (modeled or measured). Needed for swap preemption."""
        raise NotImplementedError(f"{type(self).__name__} cannot swap K/V pages; use preemption_mode='recompute'")

    def copy_pages(self, copies: list[tuple[int, int]], page_size: int) -> float:
        """Copy the K/V of page ``src`` to page ``dst`` in every layer, for each ``(src, dst)`` of ``copies``
        (copy-on-write of pages forked requests share, ``PageAllocator.take_pending_copies``), before the step
        writes any K/V; return the seconds taken (modeled or measured). Needed for forked parallel samples."""
        raise NotImplementedError(f"{type(self).__name__} cannot copy K/V pages (copy-on-write of forked samples)")

    def discard_swapped(self, request_id: str) -> None:
        """Drop any host copy of ``request_id``'s K/V (it was aborted while swapped out). Default: none kept."""
        return None

    def decode_run_durations(self, batch: list[SeqChunk], num_steps: int) -> np.ndarray:
        """Durations of ``num_steps`` consecutive decode steps of ``batch`` (simulator fast-forward)."""
        raise NotImplementedError(f"{type(self).__name__} does not model multi-step decode runs")

    def decode_chain_until(
        self, batch: list[SeqChunk], steps: list[int], horizon: float
    ) -> tuple[list[float], int] | None:
        """A short decode chain timed step by step: (step end times, steps starting before ``horizon`` — at least
        1) when the chain reaches ``horizon`` or its end within a few steps, else None (the caller then uses
        :meth:`decode_chain_durations`). Must agree with it exactly. Default: None."""
        return None

    def decode_chain_durations(self, batch: list[SeqChunk], steps: list[int], horizon: float) -> np.ndarray:
        """Durations of consecutive decode steps in which chunk ``i`` takes part in the first ``steps[i]`` (the
        batch shrinks as requests finish). May stop early, after the first step ending at or past ``horizon``
        seconds (later steps will not run). Default: one :meth:`decode_run_durations` call per stretch of
        constant membership, in time order."""
        parts: list[np.ndarray] = []
        elapsed, done = 0.0, 0
        for end in sorted(set(steps)):
            active = [SeqChunk(c.request, c.start + done, 1, c.page_table, True)
                      for c, k in zip(batch, steps, strict=True) if k > done]  # fmt: skip
            part = self.decode_run_durations(active, end - done)
            parts.append(part)
            elapsed += float(part.sum())
            done = end
            if elapsed >= horizon:
                break
        return np.concatenate(parts)
