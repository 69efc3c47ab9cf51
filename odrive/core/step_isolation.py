"""Run a step's batch so that one bad request fails alone: on an exception the batch is split in halves and each half
re-run, down to the sequences that fail by themselves.

Re-running part of a batch is safe for the real executor: a chunk writes the same K/V to the same slots, and a
sampled token depends only on the request's seed and output index, never on its batch neighbours. Each sequence
runs at most ``1 + log2(batch size)`` times, and only in a step that failed.
"""

from __future__ import annotations

from odrive.core.executor import ExecuteResult, Executor, SeqChunk


def execute_isolating(
    executor: Executor, batch: list[SeqChunk]
) -> tuple[ExecuteResult, list[tuple[SeqChunk, Exception]]]:
    """``executor.execute(batch)``, except that the sequences whose execution raises on their own come back as
    ``(chunk, error)`` pairs instead of failing the whole step. The result's duration sums the runs that succeeded;
    its sampled tokens are those of the sequences that ran."""
    try:
        return executor.execute(batch), []
    except Exception as exc:  # noqa: BLE001 - narrowed down below; the caller fails the guilty requests
        if len(batch) == 1:
            return ExecuteResult(0.0, None), [(batch[0], exc)]
    half = len(batch) // 2
    first, failed_first = execute_isolating(executor, batch[:half])
    second, failed_second = execute_isolating(executor, batch[half:])
    sampled: dict[str, int] | None = None
    if first.sampled_token_ids is not None or second.sampled_token_ids is not None:
        sampled = {**(first.sampled_token_ids or {}), **(second.sampled_token_ids or {})}
    return ExecuteResult(first.duration + second.duration, sampled), failed_first + failed_second
