"""Cluster workloads: trace replays at scale, prefix keys, and the ``replay:`` spec."""

from __future__ import annotations

import numpy as np
import pytest

from sim.cluster import prefix_keys_from_tokens, replay, zipf_groups
from sim.workloads import Workload, parse_workload

TRACE = "data/traces/azure_code_2023.csv"


def small() -> Workload:
    return Workload(np.array([2.0, 3.0, 5.0]), np.array([10, 20, 30]), np.array([1, 2, 3]), name="t")


def test_replay_lays_copies_end_to_end_and_scales_time():
    w = replay(small(), 8, time_scale=0.5)
    # span 3 s + mean gap 1.5 s = period 4.5 s; first copy starts at 0.
    expected = np.array([0, 1, 3, 4.5, 5.5, 7.5, 9, 10]) * 0.5
    np.testing.assert_allclose(w.arrival_times, expected)
    assert w.prompt_lens.tolist() == [10, 20, 30] * 2 + [10, 20]
    assert w.output_lens.tolist() == [1, 2, 3] * 2 + [1, 2]
    assert len(replay(small(), 2)) == 2
    with pytest.raises(ValueError, match="time_scale"):
        replay(small(), 4, time_scale=0)


def test_replay_spec_reaches_a_million_requests_quickly():
    w = parse_workload(f"replay:{TRACE}?n=1000000&time_scale=0.015625")
    assert len(w) == 1_000_000
    assert (np.diff(w.arrival_times) >= 0).all()
    trace = parse_workload(f"trace:{TRACE}")
    assert w.duration == pytest.approx(len(w) / len(trace) * trace.duration * 0.015625, rel=0.01)
    with pytest.raises(ValueError, match="replay options"):
        parse_workload(f"replay:{TRACE}?m=3")


def test_zipf_groups_are_seeded_and_skewed():
    a, b = zipf_groups(10_000, 50, seed=1), zipf_groups(10_000, 50, seed=1)
    np.testing.assert_array_equal(a, b)
    counts = np.bincount(a, minlength=50)
    assert counts[0] > counts[10] > 0 and a.max() < 50


def test_prefix_keys_depend_only_on_the_first_tokens():
    keys = prefix_keys_from_tokens([[1, 2, 3, 4], [1, 2, 3, 9], [1, 2, 4, 4], [1, 2]], num_tokens=3)
    assert keys[0] == keys[1] != keys[2]
    assert keys[3] != keys[0]
    assert (keys >= 0).all()
