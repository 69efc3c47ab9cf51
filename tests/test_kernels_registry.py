"""The implementation registry and the platform default behind ragged_paged_attention."""

from __future__ import annotations

import jax
import numpy as np
import pytest
from paged_batches import make_paged_batch

from kernels import (
    ATTENTION_IMPLS,
    default_attention_impl_name,
    get_attention_impl,
    ragged_paged_attention,
    ragged_paged_attention_reference,
)


def test_names() -> None:
    assert ATTENTION_IMPLS == ("reference", "blocked", "pallas")
    assert get_attention_impl("reference") is ragged_paged_attention_reference


def test_unknown_name_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="reference, blocked, pallas"):
        get_attention_impl("flash")


@pytest.mark.skipif(jax.default_backend() == "gpu", reason="pallas compiles on GPU")
def test_pallas_is_refused_where_it_cannot_compile() -> None:
    with pytest.raises(NotImplementedError, match="interpret=True"):
        get_attention_impl("pallas")


def test_default_per_backend() -> None:
    assert default_attention_impl_name("cpu") == "blocked"
    assert default_attention_impl_name("gpu") == "pallas"
    assert default_attention_impl_name() in ATTENTION_IMPLS


def test_dispatch_matches_reference() -> None:
    batch = make_paged_batch(
        np.random.default_rng(0),
        prior_lens=[5, 0, 9],
        q_lens=[1, 6, 1],
        page_size=4,
        num_q_heads=4,
        kv_heads=2,
        head_dim=16,
        num_tokens=12,
        max_seqs=4,
        pages_per_seq=4,
    )
    np.testing.assert_allclose(
        np.asarray(ragged_paged_attention(*batch.args())),
        np.asarray(ragged_paged_attention_reference(*batch.args())),
        atol=1e-5,
        rtol=1e-5,
    )
