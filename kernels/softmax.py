"""Masked and online (flash-style) softmax pieces shared by the attention implementations.

Scores arrive already masked with ``-inf``; rows that see no key at all produce zeros, not NaNs.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp


def resolve_scale(sm_scale: float | None, head_dim: int) -> float:
    """The softmax scale: ``sm_scale`` if given, else ``head_dim ** -0.5``."""
    return float(head_dim) ** -0.5 if sm_scale is None else float(sm_scale)


def _finite_or_zero(x: jax.Array) -> jax.Array:
    return jnp.where(jnp.isfinite(x), x, 0.0)


def masked_softmax(scores: jax.Array) -> jax.Array:
    """Softmax over the last axis of ``-inf``-masked float32 scores; fully masked rows give zeros."""
    peak = _finite_or_zero(scores.max(axis=-1, keepdims=True))
    weights = jnp.exp(scores - peak)
    total = weights.sum(axis=-1, keepdims=True)
    return weights / jnp.where(total > 0, total, 1.0)


class SoftmaxState(NamedTuple):
    """Running max ``m``, denominator ``l`` (``[*rows]``) and unnormalised output ``acc`` (``[*rows, D]``)."""

    m: jax.Array
    l: jax.Array  # noqa: E741
    acc: jax.Array


def init_softmax_state(rows: tuple[int, ...], head_dim: int) -> SoftmaxState:
    """An empty state for ``rows`` query rows."""
    return SoftmaxState(
        m=jnp.full(rows, -jnp.inf, jnp.float32),
        l=jnp.zeros(rows, jnp.float32),
        acc=jnp.zeros((*rows, head_dim), jnp.float32),
    )


def absorb_scores(state: SoftmaxState, scores: jax.Array) -> tuple[jax.Array, SoftmaxState]:
    """Fold a block of masked scores ``[*rows, K]`` into ``state``.

    Returns the block's probabilities (relative to the new running max) and the rescaled state; the
    caller finishes the step with ``acc += probs @ values_block``.
    """
    m_new = jnp.maximum(state.m, scores.max(axis=-1))
    m_safe = _finite_or_zero(m_new)
    probs = jnp.exp(scores - m_safe[..., None])
    alpha = jnp.exp(state.m - m_safe)
    rescaled = SoftmaxState(m=m_new, l=alpha * state.l + probs.sum(axis=-1), acc=alpha[..., None] * state.acc)
    return probs, rescaled


def finish_softmax(state: SoftmaxState) -> jax.Array:
    """The normalised output ``[*rows, D]``; rows that saw no key are zeros."""
    return state.acc / jnp.where(state.l > 0, state.l, 1.0)[..., None]
