"""Which keys a query row may attend to: causal, optionally within a sliding window (Mistral)."""

from __future__ import annotations

import jax


def visible(key_positions: jax.Array, query_positions: jax.Array, sliding_window: int | None) -> jax.Array:
    """``key <= query`` and, with a window ``W``, ``key > query - W`` (the query sees its last ``W`` positions).

    Arguments broadcast against each other, e.g. keys ``[1, K]`` and queries ``[Q, 1]`` give ``[Q, K]``.
    """
    seen = key_positions <= query_positions
    if sliding_window is not None:
        seen = seen & (key_positions > query_positions - sliding_window)
    return seen


def first_visible(query_positions: jax.Array, sliding_window: int | None) -> jax.Array | int:
    """The lowest key position a query row can see (0 without a window): loops may start there."""
    if sliding_window is None:
        return 0
    return jax.numpy.maximum(query_positions - sliding_window + 1, 0)
