"""What one engine step computes, reduced to the counts a latency model needs."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from sim.model_spec import causal_attention_pairs

_COUNT_FIELDS = (
    "num_prefill_tokens",
    "num_decode_tokens",
    "num_seqs",
    "prefill_attention_pairs",
    "kv_tokens_read",
    "num_sampled",
)


@dataclass(frozen=True, slots=True)
class BatchShape:
    """One engine step.

    - ``num_prefill_tokens``: new tokens of prefill chunks (sequences with more than one new token).
    - ``num_decode_tokens``: decode sequences, one new token each.
    - ``num_seqs``: scheduled sequences (prefill chunks + decodes).
    - ``prefill_attention_pairs``: causal query x key pairs summed over prefill chunks, keys including
      the chunk's previously cached context (see :func:`sim.model_spec.causal_attention_pairs`).
    - ``kv_tokens_read``: sum of all scheduled sequences' context lengths, new tokens included.
    - ``num_sampled``: sequences that produce a token this step (decodes + prompt-finishing chunks).
    - ``decode_kv_tokens``: summed context length of the decode sequences (= their attention pairs).
      Optional: when None it is taken as ``kv_tokens_read - num_prefill_tokens``, exact when the
      prefill chunks have no cached context; :meth:`from_chunks` always fills it in.
    """

    num_prefill_tokens: int
    num_decode_tokens: int
    num_seqs: int
    prefill_attention_pairs: int
    kv_tokens_read: int
    num_sampled: int
    decode_kv_tokens: int | None = None

    def __post_init__(self) -> None:
        for name in _COUNT_FIELDS:
            if getattr(self, name) < 0:
                raise ValueError(f"BatchShape.{name} must be >= 0, got {getattr(self, name)}")
        if self.num_decode_tokens > self.num_seqs or self.num_sampled > self.num_seqs:
            raise ValueError(
                f"BatchShape: num_decode_tokens={self.num_decode_tokens} and "
                f"num_sampled={self.num_sampled} must not exceed num_seqs={self.num_seqs}"
            )
        if self.kv_tokens_read < self.num_tokens:
            raise ValueError(
                f"BatchShape: kv_tokens_read={self.kv_tokens_read} must include the {self.num_tokens} new tokens"
            )
        if self.decode_kv_tokens is not None and not (
            self.num_decode_tokens <= self.decode_kv_tokens <= self.kv_tokens_read
        ):
            raise ValueError(
                f"BatchShape: decode_kv_tokens={self.decode_kv_tokens} must lie in "
                f"[num_decode_tokens={self.num_decode_tokens}, "
                f"kv_tokens_read={self.kv_tokens_read}]"
            )

    @property
    def num_tokens(self) -> int:
        """New tokens processed this step (prefill + decode)."""
        return self.num_prefill_tokens + self.num_decode_tokens

    @property
    def decode_attention_pairs(self) -> int:
        """Query x key pairs of the decodes: each decode attends over its whole context."""
        if self.decode_kv_tokens is not None:
            return self.decode_kv_tokens
        return self.kv_tokens_read - self.num_prefill_tokens if self.num_decode_tokens else 0

    @property
    def attention_pairs(self) -> int:
        return self.prefill_attention_pairs + self.decode_attention_pairs

    @classmethod
    def decode_only(cls, num_seqs: int, kv_tokens_read: int) -> BatchShape:
        """A step of ``num_seqs`` decodes whose contexts sum to ``kv_tokens_read`` tokens."""
        return cls(0, num_seqs, num_seqs, 0, kv_tokens_read, num_seqs, kv_tokens_read)

    @classmethod
    def from_chunks(cls, q_lens: Sequence[int], kv_lens: Sequence[int], sampled: int | None = None) -> BatchShape:
        """Per-sequence new-token counts ``q_lens`` and context lengths ``kv_lens`` (new tokens included).

        ``q_len == 1`` counts as a decode. ``sampled`` defaults to every sequence sampling a token.
        """
        if len(q_lens) != len(kv_lens):
            raise ValueError(f"q_lens and kv_lens differ in length: {len(q_lens)} != {len(kv_lens)}")
        prefill_tokens = decode_tokens = pairs = decode_kv = 0
        for q_len, kv_len in zip(q_lens, kv_lens, strict=True):
            if q_len < 1:
                raise ValueError(f"every scheduled sequence needs q_len >= 1, got {q_len}")
            if q_len == 1:
                if kv_len < 1:
                    raise ValueError(f"decode needs kv_len >= 1, got {kv_len}")
                decode_tokens += 1
                decode_kv += kv_len
            else:
                prefill_tokens += q_len
                pairs += causal_attention_pairs(q_len, kv_len)
        num_seqs = len(q_lens)
        return cls(
            num_prefill_tokens=prefill_tokens,
            num_decode_tokens=decode_tokens,
            num_seqs=num_seqs,
            prefill_attention_pairs=pairs,
            kv_tokens_read=int(sum(kv_lens)),
            num_sampled=num_seqs if sampled is None else sampled,
            decode_kv_tokens=decode_kv,
        )
