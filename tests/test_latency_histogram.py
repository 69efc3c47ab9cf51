"""LatencyHistogram: exact count, mean, std, min and max; percentiles within the bucket width of numpy's; weighted
adds, merging and bounded memory."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odrive.core.latency_histogram import GAMMA, NUM_BUCKETS, LatencyHistogram

QS = (0, 1, 25, 50, 90, 99, 99.9, 100)


def filled(values: np.ndarray) -> LatencyHistogram:
    h = LatencyHistogram()
    third = len(values) // 3
    for v in values[:third]:
        h.add(float(v))
    h.add_many(values[third : 2 * third])
    h.add_many(values[2 * third :], np.ones(len(values) - 2 * third, dtype=np.int64))
    return h


@pytest.mark.parametrize("dist", ["lognormal", "exponential", "steps"])
def test_statistics_match_numpy(dist: str) -> None:
    rng = np.random.default_rng(0)
    values = {
        "lognormal": rng.lognormal(-4, 1, 30_000),
        "exponential": rng.exponential(0.02, 30_000),
        "steps": np.repeat([0.011, 0.0213, 0.5], [900, 80, 3]),  # few distinct values: exact
    }[dist]
    h = filled(values)
    assert h.count == len(values)
    assert h.mean == pytest.approx(values.mean(), rel=1e-12)
    assert h.std == pytest.approx(values.std(), rel=1e-9)
    assert (h.min, h.max) == (values.min(), values.max())
    for q in QS:
        tol = 0 if dist == "steps" else GAMMA - 1
        assert h.percentile(q) == pytest.approx(np.percentile(values, q), rel=tol + 1e-12), q


@settings(max_examples=40, deadline=None)
@given(st.lists(st.tuples(st.floats(1e-6, 50.0), st.integers(1, 20)), min_size=1, max_size=60))
def test_weighted_values_equal_repeated_values(pairs: list[tuple[float, int]]) -> None:
    h = LatencyHistogram()
    for value, count in pairs:
        h.add(value, count)
    values = np.repeat([v for v, _ in pairs], [c for _, c in pairs])
    assert h.count == len(values) and h.mean == pytest.approx(values.mean(), rel=1e-9)
    for q in (0, 50, 99, 100):
        assert h.percentile(q) == pytest.approx(np.percentile(values, q), rel=GAMMA - 1)


def test_merge_equals_adding_everything_and_memory_is_bounded() -> None:
    rng = np.random.default_rng(1)
    a, b = rng.exponential(0.03, 5000), rng.exponential(0.3, 7000)
    ha, hb, both = filled(a), filled(b), filled(np.concatenate([a, b]))
    ha.merge(hb)
    assert ha.count == both.count and ha.mean == pytest.approx(both.mean, rel=1e-12)
    for q in QS:
        assert ha.percentile(q) == pytest.approx(both.percentile(q), rel=1e-12)
    big = LatencyHistogram()
    for _ in range(40):
        big.add_many(rng.exponential(0.02, 50_000))
    assert big.count == 2_000_000
    assert big._counts is not None and big._counts.shape == (NUM_BUCKETS,)  # fixed size whatever the count
    assert big._num_pending < LatencyHistogram.FLUSH


def test_empty_and_edge_values() -> None:
    h = LatencyHistogram()
    assert h.count == 0 and np.isnan(h.mean) and np.isnan(h.percentile(50))
    h.add(0.0)
    h.add(1e9)  # beyond the last bucket: still exact at the ends
    assert h.percentile(0) == 0.0 and h.percentile(100) == 1e9 and h.mean == 5e8
    with pytest.raises(ValueError):
        h.percentile(101)
    with pytest.raises(ValueError, match="3 values but 2 counts"):
        h.add_many(np.ones(3), np.ones(2, dtype=np.int64))
