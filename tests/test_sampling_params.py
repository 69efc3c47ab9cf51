"""SamplingParams validation and normalisation."""

from __future__ import annotations

import dataclasses
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odrive.core.sampling_params import SamplingParams


def test_defaults() -> None:
    p = SamplingParams()
    assert (p.max_tokens, p.temperature, p.top_k, p.top_p, p.seed, p.n) == (16, 1.0, 0, 1.0, None, 1)
    assert p.stop_token_ids == () and p.stop == () and not p.ignore_eos
    assert not p.greedy


def test_temperature_zero_is_greedy() -> None:
    assert SamplingParams(temperature=0.0).greedy
    assert SamplingParams(temperature=0).greedy
    # Zero stays zero: no silent fallback to 1.0.
    assert SamplingParams(temperature=0.0).temperature == 0.0
    assert not SamplingParams(temperature=1e-6).greedy
    assert not SamplingParams(temperature=2.0).greedy


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"max_tokens": 0}, "max_tokens must be a positive integer"),
        ({"max_tokens": -5}, "max_tokens must be a positive integer"),
        ({"max_tokens": 2.0}, "max_tokens must be a positive integer"),
        ({"temperature": -0.1}, "temperature must be >= 0"),
        ({"temperature": float("nan")}, "temperature must be >= 0"),
        ({"top_k": -1}, r"top_k must be an integer in \[0, 2147483647\]"),
        ({"top_k": 1.5}, r"top_k must be an integer in \[0, 2147483647\]"),
        ({"top_k": 2**31}, r"top_k must be an integer in \[0, 2147483647\]"),  # the sampler's int32
        ({"top_p": 0.0}, r"top_p must be in \(0, 1\]"),
        ({"top_p": 1.01}, r"top_p must be in \(0, 1\]"),
        ({"top_p": -0.5}, r"top_p must be in \(0, 1\]"),
        ({"top_p": float("nan")}, r"top_p must be in \(0, 1\]"),
        ({"seed": -1}, "seed must be a non-negative integer or None"),
        ({"seed": 1.0}, "seed must be a non-negative integer or None"),
        ({"stop_token_ids": (1, -2)}, r"stop_token_ids must be integers in \[0, 2147483647\]"),
        ({"stop_token_ids": [3, "x"]}, r"stop_token_ids must be integers in \[0, 2147483647\]"),
        ({"stop_token_ids": [10**20]}, r"stop_token_ids must be integers in \[0, 2147483647\]"),
        ({"stop": ("ok", "")}, "stop strings must be non-empty strings"),
        ({"stop": [""]}, "stop strings must be non-empty strings"),
        ({"stop": (1,)}, "stop strings must be non-empty strings"),
        ({"n": 0}, "n must be a positive integer"),
        ({"n": 2.0}, "n must be a positive integer"),
    ],
)
def test_bad_values_raise_a_clear_error(kwargs: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message) as info:
        SamplingParams(**kwargs)
    # The message shows the offending value.
    (value,) = kwargs.values()
    assert repr(value) in str(info.value) or repr(tuple(value)) in str(info.value)


def test_lists_become_tuples_and_a_stop_string_a_tuple() -> None:
    p = SamplingParams(stop_token_ids=[2, 7], stop=["\n\n", "END"])
    assert p.stop_token_ids == (2, 7) and isinstance(p.stop_token_ids, tuple)
    assert p.stop == ("\n\n", "END") and isinstance(p.stop, tuple)
    assert SamplingParams(stop="###").stop == ("###",)
    hash(p)  # hashable once normalised


def test_frozen() -> None:
    p = SamplingParams()
    with pytest.raises(dataclasses.FrozenInstanceError):
        p.max_tokens = 3  # type: ignore[misc]


def test_boundaries_accepted() -> None:
    p = SamplingParams(max_tokens=1, temperature=0.0, top_k=0, top_p=1.0, seed=0, stop_token_ids=(0,), n=1)
    assert p.max_tokens == 1 and p.seed == 0
    assert SamplingParams(top_p=1e-9).top_p == 1e-9


@settings(max_examples=100, deadline=None)
@given(
    max_tokens=st.integers(-3, 10),
    temperature=st.floats(-1.0, 3.0, allow_nan=False),
    top_k=st.integers(-2, 5),
    top_p=st.floats(-0.5, 1.5, allow_nan=False),
)
def test_accepts_exactly_the_valid_region(max_tokens: int, temperature: float, top_k: int, top_p: float) -> None:
    valid = max_tokens >= 1 and temperature >= 0 and top_k >= 0 and 0 < top_p <= 1
    try:
        p = SamplingParams(max_tokens=max_tokens, temperature=temperature, top_k=top_k, top_p=top_p)
    except ValueError:
        assert not valid
    else:
        assert valid
        assert p.greedy == (temperature == 0.0)
