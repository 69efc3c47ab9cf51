"""Qwen2 (q/k/v bias), Qwen3 (q/k norm) and Mistral (sliding window) through the paged engine equal transformers.

Each tiny checkpoint runs through ``vSurge`` with page size 4 and more prompts than decode slots, so sequences
are admitted as others finish and their pages are reused. The Mistral window (8) is smaller than every prompt
(12-30 tokens), so prefill and decode both attend through it.
"""

from __future__ import annotations

import dataclasses

import jax.numpy as jnp
import numpy as np
import pytest
from checkpoints import SHORT_PROMPTS, build_tiny_checkpoint
from hf_reference import transformers_greedy

import odrive
from odrive.models import dense_greedy_generate, make_dense_forward

pytest.importorskip("torch")
pytest.importorskip("transformers")

WINDOW = 8
VARIANTS = {
    "qwen2": {"model_type": "qwen2"},
    "qwen3": {"model_type": "qwen3", "head_dim": 32},
    "mistral": {"model_type": "mistral", "sliding_window": WINDOW},
}
PROMPTS = list(SHORT_PROMPTS)  # 15 to 26 tokens
NEW_TOKENS = 12


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
    return request.param, build_tiny_checkpoint(tmp_path_factory.mktemp(request.param), **VARIANTS[request.param])


def test_paged_engine_equals_transformers_greedy(checkpoint):
    model_type, checkpoint = checkpoint
    model, processor = odrive.load_model(checkpoint), odrive.load_processor(checkpoint)
    prompt_ids = [processor.encode(p) for p in PROMPTS]
    assert all(12 <= len(ids) <= 30 for ids in prompt_ids), [len(ids) for ids in prompt_ids]
    assert model.config.model_type == model_type
    surge = odrive.vSurge.create_odriver(
        model=model, processor=processor, max_prefill_length=32, prefill_lengths=[16, 32], page_size=4,
        hbm_utilization=0.001, max_concurrent_prefill=2, max_concurrent_decodes=2, seed=0, vsurge_name="arch",
    )  # fmt: skip
    results = surge.generate(PROMPTS, odrive.SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0))
    expected = transformers_greedy(checkpoint, prompt_ids, NEW_TOKENS, list(processor.eos_token_ids))
    assert [r.token_ids for r in results] == expected
    assert surge.num_free_pages == surge.num_usable_pages


def test_the_window_changes_the_output(tmp_path):
    """The same weights without the window attend further back: other logits, other greedy tokens."""
    path = build_tiny_checkpoint(tmp_path, **VARIANTS["mistral"])
    model, processor = odrive.load_model(path), odrive.load_processor(path)
    assert model.config.sliding_window == WINDOW
    unwindowed = dataclasses.replace(model.config, sliding_window=None)
    ids = processor.encode(PROMPTS[0])
    tokens = jnp.asarray([ids], jnp.int32)
    windowed_logits = np.asarray(make_dense_forward(model.config)(model.params, tokens))[0]
    full_logits = np.asarray(make_dense_forward(unwindowed)(model.params, tokens))[0]
    np.testing.assert_allclose(windowed_logits[:WINDOW], full_logits[:WINDOW], atol=1e-5)  # nothing cut yet
    assert np.abs(windowed_logits[-1] - full_logits[-1]).max() > 1e-2
    eos = model.config.eos_token_ids
    assert dense_greedy_generate(model.params, model.config, ids, NEW_TOKENS, eos) != dense_greedy_generate(
        model.params, unwindowed, ids, NEW_TOKENS, eos
    )
