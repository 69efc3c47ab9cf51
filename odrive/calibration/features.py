"""What a real engine step costs depends on: the padded shapes ``BatchBuilder`` builds and the loop trip
counts of the blocked paged-attention kernel (``kernels/blocked.py``).

JAX-free, so the simulator can compute the same features for a batch it only models.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import asdict, dataclass, fields

import numpy as np

from odrive.core.batch_builder import BatchBuilder
from odrive.core.buckets import bucket_for, step_buckets
from odrive.schedulers.config import SchedulerConfig

# ragged_paged_attention_blocked's defaults (the CPU attention implementation): prefill tiles of Q_BLOCK query rows
# read KV_BLOCK_TOKENS at a time, the decode pass DECODE_KV_BLOCK_TOKENS (tests/test_latency_calibrated.py checks
# they equal the kernel's).
KV_BLOCK_TOKENS = 64
DECODE_KV_BLOCK_TOKENS = 32
Q_BLOCK = 64


@dataclass(frozen=True)
class EngineGeometry:
    """The real engine's compile buckets and attention tiling, as ``vSurge.create_odriver`` sets them up."""

    page_size: int
    token_buckets: tuple[int, ...]
    seq_buckets: tuple[int, ...]
    pages_per_seq: int
    kv_block_tokens: int = KV_BLOCK_TOKENS
    q_block: int = Q_BLOCK
    decode_kv_block_tokens: int = DECODE_KV_BLOCK_TOKENS

    def __post_init__(self) -> None:
        object.__setattr__(self, "token_buckets", tuple(sorted({int(b) for b in self.token_buckets})))
        object.__setattr__(self, "seq_buckets", tuple(sorted({int(b) for b in self.seq_buckets})))
        if self.page_size < 1 or self.pages_per_seq < 1 or not self.token_buckets or not self.seq_buckets:
            raise ValueError(f"invalid engine geometry: {self}")

    @classmethod
    def for_engine(cls, config: SchedulerConfig, page_size: int, max_length: int | None = None) -> EngineGeometry:
        """The buckets ``vSurge.create_odriver`` derives from a scheduler config (``max_length`` defaults to
        ``config.max_model_len``, else 2 x ``max_prefill_length``, as there)."""
        max_length = max_length or config.max_model_len or 2 * config.max_prefill_length
        token_buckets, seq_buckets = step_buckets(config.prefill_lengths, config.token_budget,
                                                  config.max_concurrent_decodes)  # fmt: skip
        return cls(page_size, token_buckets, seq_buckets, pages_per_seq=-(-max_length // page_size))

    @classmethod
    def of_builder(cls, builder: BatchBuilder) -> EngineGeometry:
        return cls(builder.page_size, builder.token_buckets, builder.seq_buckets, builder.pages_per_seq)

    def _whole_pages(self, tokens: int) -> int:
        return max(1, min(self.pages_per_seq, tokens // self.page_size)) * self.page_size

    @property
    def block_tokens(self) -> int:
        """KV tokens one iteration of the prefill pass reads per query tile."""
        return self._whole_pages(self.kv_block_tokens)

    @property
    def decode_block_tokens(self) -> int:
        """KV tokens one iteration of the decode pass reads per sequence."""
        return self._whole_pages(self.decode_kv_block_tokens)

    def padded_tokens(self, n: int) -> int:
        """``BatchBuilder``'s token bucket for ``n`` tokens; past the largest, a ``BucketOverflow`` (the engine
        cannot run such a step either)."""
        return bucket_for(n, self.token_buckets, "step of tokens")

    def padded_seqs(self, n: int) -> int:
        """``BatchBuilder``'s sequence bucket for ``n`` sequences (``BucketOverflow`` past the largest)."""
        return bucket_for(n, self.seq_buckets, "step of sequences")

    def to_dict(self) -> dict:
        d = asdict(self)
        d["token_buckets"], d["seq_buckets"] = list(self.token_buckets), list(self.seq_buckets)
        return d

    @classmethod
    def from_dict(cls, d: dict) -> EngineGeometry:
        """The inverse of :meth:`to_dict`. A geometry saved before the decode pass had its own block size used the
        prefill block for both (as the kernel then did)."""
        names = {f.name for f in fields(cls)}
        d = {"decode_kv_block_tokens": d.get("kv_block_tokens", KV_BLOCK_TOKENS), **d}
        return cls(**{k: (tuple(v) if isinstance(v, list) else v) for k, v in d.items() if k in names})

    @property
    def tiling(self) -> tuple[int, int, int]:
        """(prefill KV block, query tile, decode KV block) in tokens, as the kernel is called."""
        return self.kv_block_tokens, self.q_block, self.decode_kv_block_tokens


@dataclass(frozen=True)
class StepFeatures:
    """Counts one step's cost is modeled on (all per step, summed over layers implicitly).

    - ``padded_tokens`` / ``padded_seqs``: BatchBuilder's buckets (matmuls run on every padded row; the LM
      head and sampler on every padded sequence).
    - ``decode_blocks``: trip count of the decode pass (longest decode context / its block,
      ``EngineGeometry.decode_block_tokens``); every one of the ``padded_seqs`` rows gathers a block per trip, so
      ``decode_kv_slots = padded_seqs x blocks x decode block``.
    - ``prefill_blocks``: trip counts of the prefill pass summed over query tiles; each trip reads one KV
      block for ``q_block`` query rows: ``prefill_kv_slots = prefill_blocks x q_block x block``.
    """

    num_seqs: int
    num_tokens: int
    num_decode_seqs: int
    num_prefill_seqs: int
    padded_tokens: int
    padded_seqs: int
    decode_blocks: int
    decode_kv_slots: int
    prefill_tiles: int
    prefill_blocks: int
    prefill_kv_slots: int
    kv_tokens: int

    def to_dict(self) -> dict[str, int]:
        return asdict(self)


FEATURE_COLUMNS: tuple[str, ...] = tuple(f.name for f in fields(StepFeatures))


def step_features(q_lens: Sequence[int], kv_lens: Sequence[int], geometry: EngineGeometry) -> StepFeatures:
    """Features of a step computing ``q_lens[i]`` new tokens of sequence ``i`` whose context (new tokens
    included) is ``kv_lens[i]``. A single-token chunk goes through the kernel's decode pass."""
    if len(q_lens) != len(kv_lens) or not q_lens:
        raise ValueError(f"need equal, non-empty q_lens and kv_lens, got {len(q_lens)} and {len(kv_lens)}")
    block, decode_block = geometry.block_tokens, geometry.decode_block_tokens
    num_tokens = int(sum(q_lens))
    padded_tokens = geometry.padded_tokens(num_tokens)
    q_block = max(1, min(geometry.q_block, padded_tokens))
    max_decode_ctx = num_decode = num_prefill = tiles = blocks = 0
    for q, kv in zip(q_lens, kv_lens, strict=True):
        if q < 1 or kv < q:
            raise ValueError(f"need 1 <= q_len <= kv_len, got q_len={q}, kv_len={kv}")
        if q == 1:
            num_decode += 1
            max_decode_ctx = max(max_decode_ctx, kv)
            continue
        num_prefill += 1
        n_tiles = -(-q // q_block)
        tiles += n_tiles
        first = kv - q  # cached context before the chunk
        for t in range(n_tiles):
            last_position = first + min((t + 1) * q_block, q) - 1
            blocks += last_position // block + 1
    padded_seqs = geometry.padded_seqs(len(q_lens))
    decode_blocks = -(-max_decode_ctx // decode_block)
    return StepFeatures(
        num_seqs=len(q_lens),
        num_tokens=num_tokens,
        num_decode_seqs=num_decode,
        num_prefill_seqs=num_prefill,
        padded_tokens=padded_tokens,
        padded_seqs=padded_seqs,
        decode_blocks=decode_blocks,
        decode_kv_slots=padded_seqs * decode_blocks * decode_block,
        prefill_tiles=tiles,
        prefill_blocks=blocks,
        prefill_kv_slots=blocks * q_block * block,
        kv_tokens=int(sum(kv_lens)),
    )


def decode_run_features(kv_lens: Sequence[int], num_steps: int, geometry: EngineGeometry) -> np.ndarray:
    """Feature rows (``FEATURE_COLUMNS`` order) of ``num_steps`` consecutive decode steps of sequences whose
    contexts start at ``kv_lens`` and grow by one token per step. Shape ``[num_steps, len(FEATURE_COLUMNS)]``."""
    base = step_features([1] * len(kv_lens), kv_lens, geometry)
    rows = np.tile(np.array([getattr(base, c) for c in FEATURE_COLUMNS], dtype=np.float64), (num_steps, 1))
    k = np.arange(num_steps, dtype=np.int64)
    blocks = -(-(max(kv_lens) + k) // geometry.decode_block_tokens)
    col = FEATURE_COLUMNS.index
    rows[:, col("decode_blocks")] = blocks
    rows[:, col("decode_kv_slots")] = base.padded_seqs * blocks * geometry.decode_block_tokens
    rows[:, col("kv_tokens")] = base.kv_tokens + len(kv_lens) * k
    return rows


def padded_swap_rows(num_layers: int, num_pages: int) -> int:
    """Pool rows one request's swap copy moves: its pages in every layer, padded to a power of two (as
    ``odrive.runtime.kv_swap.HostKVStore`` pads them, so copies compile a bounded number of times)."""
    return 1 << max(num_layers * num_pages - 1, 0).bit_length()


def parse_lens(text: str) -> list[int]:
    """``"32;32;7"`` -> ``[32, 32, 7]`` (the profile table's per-sequence length columns)."""
    return [int(x) for x in str(text).split(";") if x != ""]


def format_lens(lens: Sequence[int]) -> str:
    return ";".join(str(int(x)) for x in lens)
