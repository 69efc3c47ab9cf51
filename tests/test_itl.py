"""Inter-token latencies recorded by the engine: every gap between two output tokens of a request, the same
whether decode runs are fast-forwarded or stepped one at a time, with preemption and prefix caching."""

from __future__ import annotations

import numpy as np
import pytest

from sim.config import SimConfig
from sim.simulator import SimResult, Simulator
from sim.workloads import poisson_workload
from sim.workloads.lengths import LogNormal, Uniform

WORKLOAD = poisson_workload(30.0, 300, LogNormal(500, 1.0, 16, 3000), Uniform(1, 200), seed=4)
TIGHT = {"num_pages": 300, "max_concurrent_decodes": 32}  # preemptions happen


def run(fast_forward: bool, record_steps: bool, **config: object) -> SimResult:
    sim = Simulator(SimConfig(record_steps=record_steps, **config), WORKLOAD)
    sim.engine.fast_forward = fast_forward
    return sim.run()


def check_identities(result: SimResult) -> None:
    """Per finished request: output tokens - 1 gaps, summing to its time from first token to finish."""
    done = result.requests[result.requests["status"] == "finished"]
    itl = result.itl
    assert itl is not None
    assert itl.count == int((done["num_output_tokens"] - 1).sum())
    assert itl.total == pytest.approx(float((done["finish_time"] - done["first_token_time"]).sum()), rel=1e-9)
    assert itl.min > 0


@pytest.mark.parametrize("config", [{}, TIGHT, {"allocator": "prefix-cache"}], ids=["roomy", "preempting", "cache"])
def test_fast_forwarded_runs_record_the_gaps_stepping_would(config: dict) -> None:
    stepped = run(False, True, **config)
    check_identities(stepped)
    for record_steps in (True, False):  # with step rows runs stop at finishes; without, they go past them
        fast = run(True, record_steps, **config)
        check_identities(fast)
        assert fast.itl.count == stepped.itl.count
        assert fast.itl.mean == pytest.approx(stepped.itl.mean, rel=1e-9)
        assert fast.itl.std == pytest.approx(stepped.itl.std, rel=1e-6)
        for q in (0, 10, 50, 90, 99, 100):
            assert fast.itl.percentile(q) == pytest.approx(stepped.itl.percentile(q), rel=1e-6), q
    if config is TIGHT:
        assert stepped.requests["num_preemptions"].sum() > 0
        # a preempted request waits: its longest gap is longer than any decode step
        assert stepped.itl.max > 5 * stepped.itl.percentile(50)


def test_gaps_are_the_step_times_of_a_lone_request() -> None:
    one = poisson_workload(1.0, 1, 100, 40, seed=0)
    result = Simulator(SimConfig(), one).run()
    steps = result.steps
    decode = steps[steps["num_prefill_seqs"] == 0]
    assert result.itl.count == 39
    assert result.itl.total == pytest.approx(float(decode["duration"].sum()), rel=1e-12)
    per_step = np.repeat(decode["duration"] / decode["num_steps"], decode["num_steps"])  # a run's steps are equal-ish
    assert result.itl.mean == pytest.approx(float(per_step.mean()), rel=1e-9)


def test_a_cluster_pools_every_replicas_gaps() -> None:
    from sim.cluster import simulate_cluster

    config = SimConfig(record_steps=False, **TIGHT)
    single = Simulator(config, WORKLOAD).run()
    one = simulate_cluster(config, WORKLOAD, "round-robin", num_replicas=1)
    assert one.itl.count == single.itl.count and one.itl.mean == pytest.approx(single.itl.mean, rel=1e-12)
    assert one.itl.percentile(99) == pytest.approx(single.itl.percentile(99), rel=1e-12)
    four = simulate_cluster(config, WORKLOAD, "least-outstanding", num_replicas=4)
    done = four.requests()
    done = done[done["status"] == "finished"]
    assert four.itl.count == int((done["num_output_tokens"] - 1).sum())
    assert four.itl.total == pytest.approx(float((done["finish_time"] - done["first_token_time"]).sum()), rel=1e-9)
