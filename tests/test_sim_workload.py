"""Trace loading, synthetic workloads and workload spec strings."""

from __future__ import annotations

import time
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from hypothesis import given
from hypothesis import strategies as st

from sim.workloads import (
    Empirical,
    Fixed,
    LogNormal,
    RequestSpec,
    TraceFormatError,
    Uniform,
    Workload,
    WorkloadSpecError,
    gamma_workload,
    load_trace,
    parse_length,
    parse_workload,
    poisson_workload,
)

TRACES = Path(__file__).resolve().parents[1] / "data" / "traces"
CONV = TRACES / "azure_conv_2023.csv"
CODE = TRACES / "azure_code_2023.csv"
HEADER = "arrived_at,num_prefill_tokens,num_decode_tokens\n"


# --- Traces -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "rows", "prompt_mean", "output_mean"), [(CONV, 19_366, 1155, 211), (CODE, 8_819, 2048, 28)]
)
def test_real_traces(path: Path, rows: int, prompt_mean: float, output_mean: float) -> None:
    start = time.perf_counter()
    workload = load_trace(path)
    assert time.perf_counter() - start < 1.0
    assert len(workload) == rows
    assert workload.name == path.stem
    assert workload.arrival_times[0] == 0.0
    assert np.all(np.diff(workload.arrival_times) >= 0)
    assert 3000 < workload.duration < 4000
    assert workload.prompt_lens.mean() == pytest.approx(prompt_mean, rel=0.01)
    assert workload.output_lens.mean() == pytest.approx(output_mean, rel=0.02)
    assert workload.prompt_lens.dtype == np.int64 and workload.output_lens.min() >= 1


def test_first_rows_of_conv_trace() -> None:
    first = list(load_trace(CONV, max_requests=2))
    assert first == [RequestSpec(0.0, 374, 44), RequestSpec(4.314579, 396, 109)]
    assert type(first[0].num_prompt_tokens) is int and type(first[0].arrival_time) is float


def test_time_scale_start_and_max_requests() -> None:
    full = load_trace(CONV)
    fast = load_trace(CONV, time_scale=0.5)
    np.testing.assert_allclose(fast.arrival_times, full.arrival_times * 0.5)
    np.testing.assert_array_equal(fast.prompt_lens, full.prompt_lens)
    part = load_trace(CONV, start=100, max_requests=50, time_scale=2.0)
    assert len(part) == 50
    np.testing.assert_array_equal(part.prompt_lens, full.prompt_lens[100:150])
    np.testing.assert_allclose(part.arrival_times, (full.arrival_times[100:150] - full.arrival_times[100]) * 2)
    assert len(load_trace(CODE, max_requests=10**9)) == 8_819
    for kwargs in ({"time_scale": 0}, {"time_scale": -1}, {"max_requests": 0}, {"start": -1}, {"start": 8_819}):
        with pytest.raises(ValueError):
            load_trace(CODE, **kwargs)


def write(tmp_path: Path, text: str) -> Path:
    path = tmp_path / "bad.csv"
    path.write_text(text)
    return path


@pytest.mark.parametrize(
    ("body", "line", "message"),
    [
        ("0,10,5\n1,abc,5\n", 3, "non-numeric value 'abc' in column 'num_prefill_tokens'"),
        ("0,10,5\n1,10,\n", 3, "missing value in column 'num_decode_tokens'"),
        ("0,10,5\n1,10,5\n2,10,0\n", 4, "output length num_decode_tokens=0 must be >= 1"),
        ("0,0,5\n", 2, "prompt length num_prefill_tokens=0 must be >= 1"),
        ("0,10,5\n1,-3,5\n", 3, "prompt length num_prefill_tokens=-3 must be >= 1"),
        ("0,10,5\n1,10,-2\n", 3, "output length num_decode_tokens=-2 must be >= 1"),
        ("-1,10,5\n", 2, "negative arrival time arrived_at=-1"),
        ("0,10,5\n5,10,5\n4.5,10,5\n", 4, "non-decreasing: arrived_at=4.5 comes after 5 on line 3"),
        ("0,10,5\n1,10.5,5\n", 3, "num_prefill_tokens=10.5 is not a whole number"),
        ("0,10,5\ninf,10,5\n", 3, "non-numeric value 'inf'"),
        ("0,10,5\n\n1,10,5\n", 3, "missing value"),
        ("0,10,5\n2,10,0\n1,-5,3\n", 3, "output length"),  # the first bad line wins
    ],
)
def test_malformed_trace(tmp_path: Path, body: str, line: int, message: str) -> None:
    path = write(tmp_path, HEADER + body)
    with pytest.raises(TraceFormatError) as info:
        load_trace(path)
    assert str(info.value).startswith(f"{path}:{line}: ")
    assert message in str(info.value)
    assert info.value.line == line


def test_trace_missing_columns_and_empty(tmp_path: Path) -> None:
    with pytest.raises(TraceFormatError, match=r"bad\.csv:1: missing column\(s\) num_decode_tokens"):
        load_trace(write(tmp_path, "arrived_at,num_prefill_tokens\n0,5\n"))
    with pytest.raises(TraceFormatError, match="no requests"):
        load_trace(write(tmp_path, HEADER))
    with pytest.raises(TraceFormatError, match="empty"):
        load_trace(write(tmp_path, ""))
    with pytest.raises(FileNotFoundError, match="nope.csv"):
        load_trace(tmp_path / "nope.csv")


def test_trace_tolerates_extra_columns_and_reordering(tmp_path: Path) -> None:
    path = write(tmp_path, "num_decode_tokens,id,arrived_at,num_prefill_tokens\n3,a,1.5,7\n4,b,2.5,8.0\n")
    workload = load_trace(path)
    assert list(workload) == [RequestSpec(0.0, 7, 3), RequestSpec(1.0, 8, 4)]


# --- Workload container -------------------------------------------------------------------------


def test_workload_container() -> None:
    requests = [RequestSpec(0.0, 5, 2, 1), RequestSpec(1.0, 6, 3), RequestSpec(1.0, 7, 4, 2)]
    workload = Workload.from_requests(requests, name="w")
    assert len(workload) == 3 and list(workload) == requests and workload[2] == requests[2]
    assert list(workload.slice(2)) == requests[:2]
    assert list(workload.slice(5, start=1)) == requests[1:]
    frame = workload.to_frame()
    assert list(frame.columns) == ["arrival_time", "num_prompt_tokens", "num_output_tokens", "priority"]
    assert frame["priority"].tolist() == [1, 0, 2]
    with pytest.raises(ValueError):
        workload.arrival_times[0] = 3.0  # read-only


def test_workload_does_not_freeze_callers_arrays() -> None:
    times = np.array([0.0, 1.0])
    Workload(times, np.array([1, 2]), np.array([1, 1]))
    times[0] = 0.5  # still writeable


@pytest.mark.parametrize(
    "columns",
    [
        ([0.0, 1.0], [1], [1, 1]),
        ([1.0, 0.0], [1, 1], [1, 1]),
        ([-1.0], [1], [1]),
        ([0.0], [0], [1]),
        ([0.0], [1], [0]),
        ([float("nan")], [1], [1]),
    ],
)
def test_workload_validation(columns: tuple[list, list, list]) -> None:
    with pytest.raises(ValueError):
        Workload(*(np.array(c) for c in columns))


# --- Length distributions -----------------------------------------------------------------------


def test_length_distributions() -> None:
    rng = np.random.default_rng(0)
    assert Fixed(7).sample(rng, 3).tolist() == [7, 7, 7]
    uniform = Uniform(16, 20).sample(rng, 5000)
    assert set(uniform.tolist()) == {16, 17, 18, 19, 20}
    lognormal = LogNormal(1000, 1.0).sample(rng, 50_000)
    assert lognormal.mean() == pytest.approx(1000, rel=0.05)
    clipped = LogNormal(1000, 1.0, 50, 2000).sample(rng, 10_000)
    assert clipped.min() >= 50 and clipped.max() <= 2000
    values = np.array([3, 30, 300])
    empirical = Empirical(values).sample(rng, 1000)
    assert set(empirical.tolist()) == {3, 30, 300}
    for sample in (uniform, lognormal, empirical):
        assert sample.dtype == np.int64 and sample.min() >= 1
    for make in (
        lambda: Fixed(0),
        lambda: Uniform(5, 4),
        lambda: Uniform(0, 4),
        lambda: LogNormal(0, 1),
        lambda: LogNormal(10, -1),
        lambda: LogNormal(10, 1, 5, 4),
        lambda: Empirical(np.array([])),
    ):
        with pytest.raises(ValueError):
            make()


# --- Synthetic workloads ------------------------------------------------------------------------


def test_poisson_deterministic_per_seed() -> None:
    a = poisson_workload(2.0, 100, Uniform(10, 100), LogNormal(50, 0.5), seed=7)
    b = poisson_workload(2.0, 100, Uniform(10, 100), LogNormal(50, 0.5), seed=7)
    c = poisson_workload(2.0, 100, Uniform(10, 100), LogNormal(50, 0.5), seed=8)
    pd.testing.assert_frame_equal(a.to_frame(), b.to_frame())
    assert not np.array_equal(a.arrival_times, c.arrival_times)
    # Arrivals do not depend on the length distributions (separate random streams).
    d = poisson_workload(2.0, 100, 5, 5, seed=7)
    np.testing.assert_array_equal(a.arrival_times, d.arrival_times)


def test_poisson_rate() -> None:
    workload = poisson_workload(4.0, 20_000, 512, 128, seed=1)
    gaps = np.diff(workload.arrival_times, prepend=0.0)
    assert gaps.mean() == pytest.approx(0.25, rel=0.03)
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, rel=0.05)
    assert set(workload.prompt_lens.tolist()) == {512} and set(workload.output_lens.tolist()) == {128}


@pytest.mark.parametrize("cv", [0.5, 1.0, 3.0])
def test_gamma_rate_and_cv(cv: float) -> None:
    workload = gamma_workload(2.0, cv, 20_000, 100, 10, seed=3)
    gaps = np.diff(workload.arrival_times, prepend=0.0)
    assert gaps.mean() == pytest.approx(0.5, rel=0.08)
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.1)


def test_gamma_deterministic_per_seed() -> None:
    a = gamma_workload(1.0, 2.0, 50, 10, 10, seed=11)
    b = gamma_workload(1.0, 2.0, 50, 10, 10, seed=11)
    np.testing.assert_array_equal(a.arrival_times, b.arrival_times)


@given(rate=st.floats(0.01, 1000), n=st.integers(1, 300), seed=st.integers(0, 2**32 - 1))
def test_synthetic_workloads_are_valid(rate: float, n: int, seed: int) -> None:
    for workload in (poisson_workload(rate, n, 10, 10, seed), gamma_workload(rate, 2.0, n, 10, 10, seed)):
        assert len(workload) == n
        assert np.all(np.diff(workload.arrival_times) >= 0) and workload.arrival_times[0] >= 0


def test_synthetic_errors() -> None:
    for call in (
        lambda: poisson_workload(0, 10, 1, 1),
        lambda: poisson_workload(-1, 10, 1, 1),
        lambda: poisson_workload(1, 0, 1, 1),
        lambda: gamma_workload(1, 0, 10, 1, 1),
        lambda: gamma_workload(0, 1, 10, 1, 1),
        lambda: poisson_workload(1, 10, 0, 1),
    ):
        with pytest.raises(ValueError):
            call()
    with pytest.raises(TypeError):
        poisson_workload(1, 10, "512", 1)  # type: ignore[arg-type]


# --- Spec strings -------------------------------------------------------------------------------


def test_parse_trace_specs() -> None:
    assert len(parse_workload(f"trace:{CONV}")) == 19_366
    part = parse_workload(f"trace:{CONV}?time_scale=0.5&max_requests=1000")
    assert len(part) == 1000
    np.testing.assert_allclose(part.arrival_times, load_trace(CONV, time_scale=0.5).arrival_times[:1000])
    assert parse_workload(f"trace:{CODE}?start=10&max_requests=5")[0] == load_trace(CODE, start=10)[0]


def test_parse_synthetic_specs() -> None:
    poisson = parse_workload("poisson:rate=2,n=1000,prompt=512,output=128", seed=5)
    pd.testing.assert_frame_equal(poisson.to_frame(), poisson_workload(2, 1000, 512, 128, seed=5).to_frame())
    gamma = parse_workload("gamma:rate=2,cv=3,n=1000,prompt=lognormal(1000,1),output=uniform(16,256)", seed=5)
    expected = gamma_workload(2, 3, 1000, LogNormal(1000, 1), Uniform(16, 256), seed=5)
    pd.testing.assert_frame_equal(gamma.to_frame(), expected.to_frame())
    spaced = parse_workload(" gamma : rate = 2 , cv=3, n=1000, prompt=lognormal(1000, 1), output=uniform(16,256)", 5)
    pd.testing.assert_frame_equal(spaced.to_frame(), expected.to_frame())
    empirical = parse_workload(f"poisson:rate=1,n=500,prompt=empirical({CODE}),output=empirical({CODE},output)")
    trace = load_trace(CODE)
    assert set(empirical.prompt_lens.tolist()) <= set(trace.prompt_lens.tolist())
    assert set(empirical.output_lens.tolist()) <= set(trace.output_lens.tolist())


def test_parse_length() -> None:
    assert parse_length("64") == Fixed(64) == parse_length("fixed(64)")
    assert parse_length("uniform(1, 8)") == Uniform(1, 8)
    assert parse_length("lognormal(100,0.5,10,400)") == LogNormal(100, 0.5, 10, 400)
    assert parse_length("LogNormal(100,0.5)") == LogNormal(100, 0.5)


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ("poisson", "KIND:BODY"),
        ("poisson:", "KIND:BODY"),
        ("zipf:rate=1", "unknown workload kind 'zipf'"),
        ("poisson:rate=2", "missing key"),
        ("poisson:rate=2,n=10,prompt=5,output=5,cv=3", "unknown key 'cv'"),
        ("poisson:rate=2,rate=3,n=10,prompt=5,output=5", "given twice"),
        ("poisson:rate=fast,n=10,prompt=5,output=5", "rate must be a number"),
        ("poisson:rate=2,n=1.5,prompt=5,output=5", "n must be an integer"),
        ("poisson:rate=2,n,prompt=5,output=5", "KEY=VALUE"),
        ("poisson:rate=0,n=10,prompt=5,output=5", "rate must be > 0"),
        ("gamma:rate=1,cv=0,n=10,prompt=5,output=5", "cv must be > 0"),
        ("gamma:rate=1,cv=2,n=10,prompt=zipf(3),output=5", "cannot parse length"),
        ("gamma:rate=1,cv=2,n=10,prompt=uniform(3),output=5", "cannot parse length"),
        ("gamma:rate=1,cv=2,n=10,prompt=uniform(9,3),output=5", "lo <= hi"),
        ("gamma:rate=1,cv=2,n=10,prompt=uniform(3,9,output=5", "unbalanced"),
        ("gamma:rate=1,cv=2,n=10,prompt=uniform(3,9)),output=5", "unbalanced"),
        ("gamma:rate=1,cv=2,n=10,prompt=empirical(x.csv,foo),output=5", "'prompt' or 'output'"),
        ("trace:data/traces/azure_conv_2023.csv?speed=2", "unknown key 'speed'"),
        ("trace:data/traces/azure_conv_2023.csv?time_scale=fast", "time_scale must be a number"),
        ("trace:data/traces/azure_conv_2023.csv?time_scale=0", "time_scale must be > 0"),
    ],
)
def test_malformed_specs(spec: str, message: str) -> None:
    with pytest.raises(WorkloadSpecError) as info:
        parse_workload(spec)
    assert message in str(info.value)


def test_trace_errors_pass_through_parse(tmp_path: Path) -> None:
    path = tmp_path / "t.csv"
    path.write_text(HEADER + "0,1,0\n")
    with pytest.raises(TraceFormatError, match=r"t\.csv:2: output length"):
        parse_workload(f"trace:{path}")


def test_take_keeps_the_chosen_requests_with_their_prompt_ids() -> None:
    ids = [np.full(n, i) for i, n in enumerate((3, 4, 5, 6))]
    wl = Workload(np.array([0.0, 1.0, 2.0, 3.0]), np.array([3, 4, 5, 6]), np.array([1, 2, 3, 4]),
                  priorities=np.array([0, 1, 0, 1]), name="w", prompt_token_ids=ids)  # fmt: skip
    part = wl.take([1, 3])
    assert part.arrival_times.tolist() == [1.0, 3.0] and part.prompt_lens.tolist() == [4, 6]
    assert part.output_lens.tolist() == [2, 4] and part.priorities.tolist() == [1, 1] and part.name == "w"
    assert [a.tolist() for a in part.prompt_token_ids] == [[1] * 4, [3] * 6]
    assert len(wl.take([])) == 0
