"""Requests to replay: one :class:`RequestSpec` each, or a columnar :class:`Workload` of many."""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Sequence
from dataclasses import dataclass, field
from typing import NamedTuple

import numpy as np
import pandas as pd


def checked_prompt_ids(prompt_token_ids: Sequence[np.ndarray] | None, index: int, prompt_len: int) -> np.ndarray | None:
    """Request ``index``'s prompt token ids from a workload's ``prompt_token_ids`` (None without), checked to
    hold exactly ``prompt_len`` ids."""
    if prompt_token_ids is None:
        return None
    ids = prompt_token_ids[index]
    if len(ids) != prompt_len:
        raise ValueError(f"workload request {index}: {len(ids)} prompt token ids, prompt length {prompt_len}")
    return ids


class RequestSpec(NamedTuple):
    """What the simulator needs to know about one request before it runs."""

    arrival_time: float
    num_prompt_tokens: int
    num_output_tokens: int
    priority: int = 0


@dataclass(frozen=True, eq=False)
class Workload:
    """Requests in arrival order as parallel numpy arrays (fast to build, slice and analyse).

    Any iterable of :class:`RequestSpec` in arrival order is also a workload; this class is the
    columnar form. Arrays are validated on construction: 1-D, equal length, arrival times finite,
    non-negative and non-decreasing, token counts >= 1.

    ``prompt_token_ids`` (optional) gives each request's prompt as token ids (indexable by request;
    e.g. :class:`sim.workloads.shared_prefix.SegmentPrompts`, which builds them on access) so
    prefix-caching allocators can hash them; without it simulated requests carry no ids. ``notes``: what a
    reader did that a user should know (e.g. trace rows it dropped, and why).
    """

    arrival_times: np.ndarray
    prompt_lens: np.ndarray
    output_lens: np.ndarray
    priorities: np.ndarray | None = None
    name: str = ""
    prompt_token_ids: Sequence[np.ndarray] | None = field(default=None, repr=False)
    notes: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        columns = {
            "arrival_times": np.ascontiguousarray(self.arrival_times, dtype=np.float64),
            "prompt_lens": np.ascontiguousarray(self.prompt_lens, dtype=np.int64),
            "output_lens": np.ascontiguousarray(self.output_lens, dtype=np.int64),
        }
        if self.priorities is not None:
            columns["priorities"] = np.ascontiguousarray(self.priorities, dtype=np.int64)
        n = len(columns["arrival_times"])
        for key, array in columns.items():
            if array.ndim != 1 or len(array) != n:
                raise ValueError(f"Workload.{key} must be 1-D of length {n}, got shape {array.shape}")
            array = array.view()  # read-only view; the caller's array stays writeable
            array.flags.writeable = False
            object.__setattr__(self, key, array)
        times = columns["arrival_times"]
        if not np.isfinite(times).all() or (times < 0).any():
            raise ValueError("Workload arrival times must be finite and >= 0")
        if (np.diff(times) < 0).any():
            raise ValueError("Workload arrival times must be non-decreasing")
        if (columns["prompt_lens"] < 1).any() or (columns["output_lens"] < 1).any():
            raise ValueError("Workload prompt and output lengths must be >= 1")
        if self.prompt_token_ids is not None and len(self.prompt_token_ids) != n:
            raise ValueError(f"Workload.prompt_token_ids must hold {n} prompts, got {len(self.prompt_token_ids)}")

    @classmethod
    def from_requests(cls, requests: Iterable[RequestSpec], name: str = "") -> Workload:
        rows = list(requests)
        return cls(
            arrival_times=np.array([r.arrival_time for r in rows], dtype=np.float64),
            prompt_lens=np.array([r.num_prompt_tokens for r in rows], dtype=np.int64),
            output_lens=np.array([r.num_output_tokens for r in rows], dtype=np.int64),
            priorities=np.array([r.priority for r in rows], dtype=np.int64),
            name=name,
        )

    def __len__(self) -> int:
        return len(self.arrival_times)

    def __iter__(self) -> Iterator[RequestSpec]:
        times = self.arrival_times.tolist()
        prompts = self.prompt_lens.tolist()
        outputs = self.output_lens.tolist()
        priorities = self.priorities.tolist() if self.priorities is not None else [0] * len(times)
        return map(RequestSpec._make, zip(times, prompts, outputs, priorities, strict=True))

    def __getitem__(self, index: int) -> RequestSpec:
        priority = int(self.priorities[index]) if self.priorities is not None else 0
        return RequestSpec(
            float(self.arrival_times[index]), int(self.prompt_lens[index]), int(self.output_lens[index]), priority
        )

    def slice(self, n: int, start: int = 0) -> Workload:
        """Requests ``start .. start + n - 1`` (times unchanged)."""
        if n < 0 or start < 0:
            raise ValueError(f"slice needs n >= 0 and start >= 0, got n={n}, start={start}")
        stop = start + n
        return Workload(
            self.arrival_times[start:stop],
            self.prompt_lens[start:stop],
            self.output_lens[start:stop],
            None if self.priorities is None else self.priorities[start:stop],
            self.name,
            None if self.prompt_token_ids is None else self.prompt_token_ids[start:stop],
            self.notes,
        )

    def take(self, rows: Sequence[int] | np.ndarray) -> Workload:
        """The requests at ``rows`` (increasing indices, so arrivals stay in order; times unchanged)."""
        rows = np.asarray(rows, dtype=np.int64)
        ids = self.prompt_token_ids
        return Workload(
            self.arrival_times[rows],
            self.prompt_lens[rows],
            self.output_lens[rows],
            None if self.priorities is None else self.priorities[rows],
            self.name,
            None if ids is None else [ids[int(i)] for i in rows],
            self.notes,
        )

    @property
    def duration(self) -> float:
        """Time from the first to the last arrival (0 for fewer than two requests)."""
        return float(self.arrival_times[-1] - self.arrival_times[0]) if len(self) > 1 else 0.0

    def to_frame(self) -> pd.DataFrame:
        """Columns: arrival_time, num_prompt_tokens, num_output_tokens, priority."""
        priorities = self.priorities if self.priorities is not None else np.zeros(len(self), dtype=np.int64)
        return pd.DataFrame(
            {
                "arrival_time": self.arrival_times,
                "num_prompt_tokens": self.prompt_lens,
                "num_output_tokens": self.output_lens,
                "priority": priorities,
            }
        )
