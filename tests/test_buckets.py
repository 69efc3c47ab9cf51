"""The one bucket lookup (odrive.core.buckets) behind BatchBuilder, SchedulerConfig.bucket_for and EngineGeometry."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from odrive.calibration.features import EngineGeometry
from odrive.core.batch_builder import BatchBuilder
from odrive.core.buckets import BucketOverflow, bucket_for, power_of_two_buckets, step_buckets
from odrive.schedulers.config import SchedulerConfig, default_prefill_buckets


def test_smallest_bucket_that_holds_the_length() -> None:
    buckets = (16, 32, 64, 100)
    assert [bucket_for(n, buckets) for n in (1, 16, 17, 64, 65, 100)] == [16, 16, 32, 64, 100, 100]


def test_past_the_last_bucket_is_too_long_everywhere() -> None:
    # The real engine rejects what no bucket holds; the scheduler's padding and the calibrated model's geometry
    # say the same (EngineGeometry used to answer n itself).
    with pytest.raises(BucketOverflow, match="101 exceeds the largest bucket 100"):
        bucket_for(101, (16, 100))
    assert issubclass(BucketOverflow, ValueError)
    config = SchedulerConfig(max_prefill_length=64, max_concurrent_decodes=4)
    with pytest.raises(BucketOverflow):
        config.bucket_for(65)
    geometry = EngineGeometry.for_engine(config, page_size=16)
    assert geometry.padded_tokens(64) == 64 and geometry.padded_seqs(4) == 4
    with pytest.raises(BucketOverflow):
        geometry.padded_tokens(65)
    with pytest.raises(BucketOverflow):
        geometry.padded_seqs(5)
    builder = BatchBuilder(16, geometry.token_buckets, geometry.seq_buckets, geometry.pages_per_seq)
    assert (builder.token_buckets, builder.seq_buckets) == (geometry.token_buckets, geometry.seq_buckets)


@given(st.integers(1, 5000), st.integers(1, 64))
def test_ladders(limit: int, smallest: int) -> None:
    ladder = power_of_two_buckets(limit, smallest)
    assert ladder[-1] == limit and list(ladder) == sorted(set(ladder))
    assert all(b < limit for b in ladder[:-1])
    assert default_prefill_buckets(limit) == power_of_two_buckets(limit, 16)
    for n in (1, limit // 2 or 1, limit):
        b = bucket_for(n, ladder)
        assert b >= n and all(x < n for x in ladder if x < b)


@given(st.integers(1, 4096), st.integers(1, 256), st.lists(st.integers(1, 4096), min_size=1, max_size=4))
def test_a_step_of_few_sequences_runs_few_rows(budget: int, max_seqs: int, prefill_lengths: list[int]) -> None:
    # The engine's step shapes: a decode of b sequences computes the next power of two of b rows (not 8 for b = 1),
    # every prefill length is a shape of its own, and the largest shapes are the budgets.
    tokens, seqs = step_buckets(prefill_lengths, budget, max_seqs)
    assert set(prefill_lengths) <= set(tokens) and tokens[-1] == max(budget, *prefill_lengths)
    assert seqs[0] == 1 and seqs[-1] == max_seqs
    for b in range(1, min(budget, max_seqs) + 1):
        assert bucket_for(b, tokens) < 2 * b and bucket_for(b, seqs) < 2 * b
