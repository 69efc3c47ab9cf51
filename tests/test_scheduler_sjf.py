"""The sjf scheduler: shortest predicted job first with aging; pluggable output-length predictors."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st
from policy_checks import (
    FEW,
    PROPERTY,
    assert_deterministic,
    assert_fast_forward_exact,
    assert_terminates,
    long_decode_workload,
    scenarios,
    simulate,
)

from odrive.allocators import make_allocator
from odrive.core.request import Request
from odrive.core.sampling_params import SamplingParams
from odrive.errors import ConfigError
from odrive.schedulers import PREDICTORS, SchedulerConfig, SJFScheduler, make_scheduler
from odrive.schedulers.predictors import BucketMeanPredictor
from sim.config import SimConfig
from sim.workloads import Workload

OPTIONS = st.fixed_dictionaries(
    {"predictor": st.sampled_from(["oracle", "bucket-mean"]), "aging": st.sampled_from([0.0, 100.0, 1000.0, 1e4])}
)


@PROPERTY
@given(scenarios("sjf", scheduler_kwargs=OPTIONS))
def test_random_workloads_terminate_within_limits(scenario: tuple[SimConfig, Workload]) -> None:
    assert_terminates(simulate(*scenario))


@PROPERTY
@given(scenarios("sjf", scheduler_kwargs=st.fixed_dictionaries({"aging": st.sampled_from([100.0, 1000.0, 1e4])})))
def test_aging_bounds_starvation(scenario: tuple[SimConfig, Workload]) -> None:
    # With the oracle, request i is admitted no later than any request arriving more than max_tokens_i / aging
    # seconds after it.
    config, workload = scenario
    run = simulate(config, workload)
    aging = dict(config.scheduler_kwargs)["aging"]
    df = run.requests[run.requests["finish_reason"] != "rejected"]
    t = df["arrival_time"].to_numpy()
    start = df["first_scheduled_time"].to_numpy()
    bound = df["num_output_tokens"].to_numpy() / aging
    late = t[None, :] > t[:, None] + bound[:, None]  # late[i, j]: j arrived after i's bound
    assert not (late & (start[None, :] < start[:, None])).any(), "a request was overtaken past its bound"


@FEW
@given(scenarios("sjf", scheduler_kwargs=OPTIONS))
def test_deterministic_and_fast_forward_exact(scenario: tuple[SimConfig, Workload]) -> None:
    assert_deterministic(*scenario)
    assert_fast_forward_exact(*scenario)


def skewed_workload(n: int = 60, seed: int = 0) -> Workload:
    """A burst: most requests want 16 tokens, every fifth wants 512."""
    rng = np.random.default_rng(seed)
    outputs = np.where(np.arange(n) % 5 == 0, 512, 16)
    return Workload(np.sort(rng.uniform(0, 0.05, n)), rng.integers(50, 200, n), outputs)


def test_oracle_sjf_cuts_mean_e2e_on_a_skewed_workload() -> None:
    wl = skewed_workload()
    base = dict(page_size=16, num_pages=2000, max_prefill_length=256, max_concurrent_decodes=8, check_invariants=True)
    e2e = {name: simulate(SimConfig(scheduler=name, **base), wl).requests["e2e"].mean()  # type: ignore[arg-type]
           for name in ("fcfs", "sarathi", "sjf")}  # fmt: skip
    assert e2e["sjf"] < 0.6 * e2e["fcfs"] and e2e["sjf"] < 0.6 * e2e["sarathi"], e2e


def test_bucket_mean_predictor_learns_per_prompt_bucket() -> None:
    p = BucketMeanPredictor(prior=50.0)

    def r(prompt: int, outputs: int = 0, max_tokens: int = 1000) -> Request:
        q = Request(f"q{prompt}-{outputs}", prompt, SamplingParams(max_tokens=max_tokens))
        q.num_output_tokens = outputs
        return q

    assert p.predict(r(10)) == 50.0  # nothing seen yet: the prior
    p.observe(r(10, outputs=100))
    p.observe(r(12, outputs=300))  # same power-of-two bucket as 10
    assert p.predict(r(9)) == 200.0
    assert p.predict(r(100)) == 200.0  # empty bucket: the overall mean
    p.observe(r(100, outputs=20))
    assert p.predict(r(120)) == 20.0
    assert p.predict(r(10, max_tokens=64)) == 64.0  # capped at max_tokens


def test_scheduler_learns_from_finished_requests() -> None:
    cfg = SchedulerConfig(max_prefill_length=64, scheduler_kwargs=(("predictor", "bucket-mean"),))
    sched = make_scheduler("sjf", cfg, make_allocator("free-list", 64, 4))
    assert isinstance(sched, SJFScheduler) and isinstance(sched.predictor, BucketMeanPredictor)
    done = Request("a", 8, SamplingParams(max_tokens=30))
    done.num_output_tokens = 30
    sched.on_finished(done)
    assert sched.predictor.predict(Request("b", 8, SamplingParams(max_tokens=100))) == 30.0


def test_predictors_are_registered_and_options_checked() -> None:
    assert {"oracle", "bucket-mean"} <= set(PREDICTORS.names())
    cfg = SchedulerConfig(max_prefill_length=64)
    alloc = make_allocator("free-list", 64, 4)
    with pytest.raises(KeyError, match="unknown output-length predictor 'psychic'"):
        make_scheduler("sjf", cfg, alloc, predictor="psychic")
    with pytest.raises(ConfigError, match="aging"):
        make_scheduler("sjf", cfg, alloc, aging=-1.0)
    with pytest.raises(ConfigError, match="rejected options"):
        make_scheduler("sjf", cfg, alloc, agin=1.0)


def test_steady_decodes_are_fast_forwarded_exactly() -> None:
    config = SimConfig(scheduler="sjf", page_size=16, num_pages=200, max_prefill_length=256)
    ff = assert_fast_forward_exact(config, long_decode_workload())
    assert (ff.steps["num_steps"] > 50).any()
