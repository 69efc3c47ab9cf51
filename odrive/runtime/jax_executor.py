"""The real executor: runs the paged JAX model on the scheduled batch and samples next tokens."""

from __future__ import annotations

import dataclasses
import time

import jax
import numpy as np
from jax.sharding import Mesh

from odrive.core.batch_builder import BatchBuilder
from odrive.core.executor import ExecuteResult, Executor, SeqChunk, SwapOps
from odrive.models.checkpoint import Model
from odrive.models.kv_cache import allocate_kv_caches
from odrive.models.paged_forward import StepBatch, make_paged_forward
from odrive.runtime.kv_swap import HostKVStore, copy_kv_rows
from odrive.runtime.sampler import make_greedy_head, make_sampling_head, stream_seed


class JaxExecutor(Executor):
    """Owns the device KV pool ``(k_pool, v_pool)`` and the jitted paged forward of ``model``; swap
    preemption keeps swapped-out requests' K/V in host memory (``host_kv``)."""

    def __init__(self, model: Model, num_pages: int, page_size: int, builder: BatchBuilder, seed: int = 0,
                 kv_dtype: object | None = None, mesh: Mesh | None = None, compute_dtype: str | None = None) -> None:
        self.builder = builder
        self.seed = seed
        self.mesh = mesh
        if mesh is None:
            self.model = model
            self.kv_caches = allocate_kv_caches(model.config, num_pages, page_size, kv_dtype or model.dtype)
            self._forward = make_paged_forward(model.config, compute_dtype)
        else:  # tensor parallel: weights and the kv_heads axis of the pools sharded over the mesh
            from odrive.parallel import allocate_sharded_kv_caches, make_sharded_paged_forward, shard_params

            self.model = dataclasses.replace(model, params=shard_params(model.params, model.config, mesh))
            self.kv_caches = allocate_sharded_kv_caches(model.config, num_pages, page_size, mesh,
                                                        kv_dtype or model.dtype)
            self._forward = make_sharded_paged_forward(model.config, mesh, compute_dtype=compute_dtype)
        self.host_kv = HostKVStore(model.config.num_hidden_layers, num_pages)
        self._head_params = {k: v for k, v in self.model.params.items() if k != "layers"}
        self._greedy = make_greedy_head(model.config)
        self._sample = make_sampling_head(model.config)

    def swap(self, ops: SwapOps) -> float:
        t0 = time.perf_counter()
        for rid, pages in ops.swap_out.items():  # every read before any write: pages may be reused below
            self.host_kv.swap_out(self.kv_caches, rid, pages)
        for rid, pages in ops.swap_in.items():
            self.kv_caches = self.host_kv.swap_in(self.kv_caches, rid, pages)
        if ops.swap_in:
            self.kv_caches[0].block_until_ready()
            self.kv_caches[1].block_until_ready()
        return time.perf_counter() - t0

    def discard_swapped(self, request_id: str) -> None:
        self.host_kv.discard(request_id)

    def execute(self, batch: list[SeqChunk]) -> ExecuteResult:
        """Run the step's layers, then sample inside the same jitted head (only token ids come back)."""
        t0 = time.perf_counter()
        x = self.builder.build(batch)
        token_ids, logits_indices, *arrays = jax.device_put(
            (x.token_ids, x.logits_indices, x.positions, x.slot_mapping, x.kv_lens, x.page_indices, x.cu_q_lens,
             x.num_seqs)
        )  # fmt: skip
        hidden, self.kv_caches = self._forward.hidden(self.model.params, token_ids, self.kv_caches, StepBatch(*arrays))
        sampled: dict[str, int] = {}
        if not x.sample_rows:  # a chunk that samples nothing: still wait, so its time is charged to this step
            hidden.block_until_ready()
            return ExecuteResult(duration=time.perf_counter() - t0, sampled_token_ids=sampled)
        rows, requests = list(x.sample_rows), [batch[row].request for row in x.sample_rows]
        forks = [(row, fork) for row in x.sample_rows for fork in batch[row].forks]
        if forks:  # each fork samples from its parent's logits row: extra rows after the batch's gather it again
            logits_indices = jax.device_put(self._fork_rows(x.logits_indices, len(batch), [row for row, _ in forks]))
            rows += range(len(batch), len(batch) + len(forks))
            requests += [fork for _, fork in forks]
        if all(r.sampling_params.temperature == 0.0 for r in requests):
            tokens = np.asarray(self._greedy(self._head_params, hidden, logits_indices))
        else:
            s_pad = len(logits_indices)
            temperature = np.zeros(s_pad, np.float32)
            top_k = np.zeros(s_pad, np.int32)
            top_p = np.ones(s_pad, np.float32)
            seeds = np.zeros(s_pad, np.uint32)
            steps = np.zeros(s_pad, np.uint32)
            vocab = self.model.config.vocab_size
            for row, req in zip(rows, requests, strict=True):
                sp = req.sampling_params
                temperature[row], top_k[row], top_p[row] = sp.temperature, min(sp.top_k, vocab), sp.top_p
                seeds[row] = stream_seed(self.seed, sp.seed, req.request_id)
                steps[row] = req.num_output_tokens
            tokens = np.asarray(
                self._sample(self._head_params, hidden, logits_indices, *jax.device_put((temperature, top_k, top_p,
                                                                                         seeds, steps)))
            )  # fmt: skip
        for row, req in zip(rows, requests, strict=True):
            sampled[req.request_id] = int(tokens[row])
        return ExecuteResult(duration=time.perf_counter() - t0, sampled_token_ids=sampled)

    def _fork_rows(self, logits_indices: np.ndarray, num_seqs: int, parent_rows: list[int]) -> np.ndarray:
        """``logits_indices`` with one more row after the batch's ``num_seqs`` per fork, repeating its parent's index
        (padded to a sequence bucket: a bounded set of head shapes)."""
        need = num_seqs + len(parent_rows)
        size = next((b for b in self.builder.seq_buckets if b >= max(need, len(logits_indices))), need)
        indices = np.zeros(max(size, len(logits_indices)), np.int32)
        indices[:num_seqs] = logits_indices[:num_seqs]
        indices[num_seqs:need] = logits_indices[parent_rows]
        return indices

    def copy_pages(self, copies: list[tuple[int, int]], page_size: int) -> float:
        """Copy-on-write: page ``src``'s K/V into page ``dst`` in every layer, on device (every read before any
        write)."""
        t0 = time.perf_counter()
        last = {dst: src for src, dst in copies}  # a page written twice (freed and taken again) keeps its last copy
        src_rows, _ = self.host_kv.rows(list(last.values()))  # every layer's rows, padded with the null page
        dst_rows, _ = self.host_kv.rows(list(last))
        self.kv_caches = copy_kv_rows(self.kv_caches, src_rows, dst_rows)
        self.kv_caches[0].block_until_ready()
        self.kv_caches[1].block_until_ready()
        return time.perf_counter() - t0
