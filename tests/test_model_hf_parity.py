"""Parity with ``transformers.LlamaForCausalLM`` on the same tiny HF checkpoint (needs torch + transformers)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np
import pytest
from checkpoints import build_tiny_checkpoint

from odrive.models import dense_greedy_generate, load_model, make_dense_forward

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

VARIANTS = {
    "gqa": {},
    "tied-mha-theta500k": {"tie_word_embeddings": True, "kv_heads": 4, "rope_theta": 500000.0},
    "mqa-llama3-scaling": {
        "kv_heads": 1,
        "rope_theta": 50000.0,
        "rope_scaling": {
            "rope_type": "llama3",
            "factor": 8.0,
            "low_freq_factor": 1.0,
            "high_freq_factor": 4.0,
            "original_max_position_embeddings": 64,
        },
    },
    "linear-scaling-explicit-head-dim": {
        "head_dim": 24,
        "rope_scaling": {"rope_type": "linear", "factor": 2.0},
    },
}
PROMPTS = np.array(
    [[1, 40, 77, 9, 200, 31, 5, 5, 150, 64, 12, 300], [1, 3, 250, 18, 18, 90, 44, 101, 7, 260, 33, 2]],
    np.int64,
)
NEW_TOKENS = 10


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def checkpoint(request, tmp_path_factory):
    path = build_tiny_checkpoint(
        tmp_path_factory.mktemp(request.param), with_tokenizer=False, **VARIANTS[request.param]
    )
    hf = transformers.LlamaForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    return load_model(path), hf.eval()


def test_logits_match_transformers(checkpoint):
    model, hf = checkpoint
    with torch.no_grad():
        expected = hf(torch.from_numpy(PROMPTS)).logits.numpy()
    ours = np.asarray(make_dense_forward(model.config)(model.params, jnp.asarray(PROMPTS, jnp.int32)))
    np.testing.assert_allclose(ours, expected, atol=1e-4, rtol=0)


def test_greedy_generation_matches_transformers(checkpoint):
    model, hf = checkpoint
    eos = model.config.eos_token_ids
    for prompt in PROMPTS:
        ids = torch.from_numpy(prompt[None])
        with torch.no_grad():
            out = hf.generate(
                ids,
                attention_mask=torch.ones_like(ids),
                do_sample=False,
                max_new_tokens=NEW_TOKENS,
                eos_token_id=list(eos),
                pad_token_id=0,
            )
        expected = out[0, len(prompt) :].tolist()
        assert dense_greedy_generate(model.params, model.config, prompt.tolist(), NEW_TOKENS, eos) == expected
