"""Request state: lengths, prefill/decode phase, remaining tokens, status."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from odrive.core.request import FinishReason, Request, RequestStatus
from odrive.core.sampling_params import SamplingParams


def make(prompt: int = 5, max_tokens: int = 4) -> Request:
    return Request("r", prompt, SamplingParams(max_tokens=max_tokens))


def test_fresh_request() -> None:
    r = make(prompt=5, max_tokens=4)
    assert r.status is RequestStatus.WAITING and not r.is_done
    assert r.num_tokens == 5 and r.num_tokens_to_compute == 5
    assert r.is_prefill
    assert r.remaining_output_tokens == 4
    assert r.finish_reason is None and r.first_token_time is None and r.num_preemptions == 0


def test_lifecycle_of_lengths_and_phase() -> None:
    r = make(prompt=5, max_tokens=3)
    # Prefill in two chunks: still prefill in between, nothing generated yet.
    r.num_computed_tokens = 3
    assert r.is_prefill and r.num_tokens_to_compute == 2
    r.num_computed_tokens = 5
    assert r.is_prefill, "prompt cached but no token sampled yet"
    # The prompt-finishing chunk samples the first token: now a decode with one token to compute.
    r.num_output_tokens = 1
    assert r.num_tokens == 6 and r.num_tokens_to_compute == 1
    assert not r.is_prefill
    assert r.remaining_output_tokens == 2
    r.num_computed_tokens, r.num_output_tokens = 6, 2
    assert not r.is_prefill and r.remaining_output_tokens == 1
    # Recompute preemption drops the cache: prompt + outputs must be prefilled again.
    r.num_computed_tokens = 0
    assert r.is_prefill and r.num_tokens_to_compute == 7
    r.num_computed_tokens = 6
    assert not r.is_prefill, "one token left to compute is a decode step"


@settings(max_examples=100, deadline=None)
@given(prompt=st.integers(1, 500), max_tokens=st.integers(1, 200), data=st.data())
def test_length_identities(prompt: int, max_tokens: int, data: st.DataObject) -> None:
    r = make(prompt, max_tokens)
    outputs = data.draw(st.integers(0, max_tokens))
    computed = data.draw(st.integers(0, prompt + outputs))
    r.num_output_tokens, r.num_computed_tokens = outputs, computed
    assert r.num_tokens == prompt + outputs
    assert r.num_tokens_to_compute == prompt + outputs - computed
    assert r.remaining_output_tokens == max_tokens - outputs
    assert r.is_prefill == (outputs == 0 or prompt + outputs - computed > 1)


def test_from_tokens_copies_ids() -> None:
    ids = [5, 6, 7]
    r = Request.from_tokens("t", ids, SamplingParams(max_tokens=2), arrival_time=1.5, priority=3)
    ids.append(99)
    assert r.num_prompt_tokens == 3 and list(r.prompt_token_ids or []) == [5, 6, 7]
    assert r.arrival_time == 1.5 and r.priority == 3
    r.output_token_ids += [8, 9]
    r.num_output_tokens = 2
    assert r.all_token_ids == [5, 6, 7, 8, 9]
    assert r.num_tokens == len(r.all_token_ids)


def test_simulated_request_has_no_token_ids() -> None:
    r = make()
    with pytest.raises(ValueError, match="carries no token ids"):
        _ = r.all_token_ids


@pytest.mark.parametrize(
    ("status", "done"),
    [
        (RequestStatus.WAITING, False),
        (RequestStatus.RUNNING, False),
        (RequestStatus.PREEMPTED, False),
        (RequestStatus.FINISHED, True),
        (RequestStatus.ABORTED, True),
    ],
)
def test_status_is_done(status: RequestStatus, done: bool) -> None:
    assert status.is_done is done
    r = make()
    r.status = status
    assert r.is_done is done


def test_enum_values_are_the_frame_strings() -> None:
    assert [s.value for s in RequestStatus] == ["waiting", "running", "preempted", "finished", "aborted"]
    assert [f.value for f in FinishReason] == ["length", "stop", "aborted", "rejected", "error"]


def test_requests_compare_by_identity() -> None:
    a, b = make(), make()
    assert a != b and a == a
    assert len({id(a), id(b)}) == 2
    assert a in [a] and b not in [a]
