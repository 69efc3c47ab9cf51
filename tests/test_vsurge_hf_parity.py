"""The paged engine's greedy output equals Hugging Face ``LlamaForCausalLM.generate`` token for token."""

from __future__ import annotations

import pytest

import odrive

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

PROMPTS = ["The engine keeps a pool", "Children walked to school", "Numbers such as", "When a request arrives"]


def test_paged_engine_matches_transformers_generate(tiny_checkpoint):
    model, processor = odrive.load_model(tiny_checkpoint), odrive.load_processor(tiny_checkpoint)
    hf = transformers.LlamaForCausalLM.from_pretrained(
        tiny_checkpoint, dtype=torch.float32, attn_implementation="eager"
    ).eval()
    surge = odrive.vSurge.create_odriver(
        model=model, processor=processor, max_prefill_length=32, prefill_lengths=[8, 16, 32], page_size=4,
        hbm_utilization=0.001, max_concurrent_prefill=2, max_concurrent_decodes=2, seed=0, vsurge_name="hf",
    )  # fmt: skip
    new = 12
    results = surge.generate(PROMPTS, odrive.SamplingParams(max_tokens=new, temperature=0.0))
    for prompt, result in zip(PROMPTS, results, strict=True):
        ids = torch.tensor([processor.encode(prompt)])
        with torch.no_grad():
            out = hf.generate(ids, max_new_tokens=new, do_sample=False, eos_token_id=list(processor.eos_token_ids),
                              pad_token_id=0)
        assert result.token_ids == out[0, ids.shape[1] :].tolist(), prompt
    assert surge.num_free_pages == surge.num_usable_pages
