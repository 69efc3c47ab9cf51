"""transformers' greedy generation on a checkpoint folder: the reference the paged engine's tests compare with.

Not a test module; the caller skips when torch or transformers is missing (``pytest.importorskip``).
"""

from __future__ import annotations

from pathlib import Path


def transformers_greedy(
    path: str | Path, prompt_ids: list[list[int]], new_tokens: int, eos: list[int]
) -> list[list[int]]:
    """Each prompt's greedy continuation (up to ``new_tokens``, stopping at ``eos``) by transformers' eager
    float32 model of the checkpoint in ``path``, one prompt at a time (no padding)."""
    import torch
    import transformers

    hf = transformers.AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32, attn_implementation="eager")
    out = []
    for ids in prompt_ids:
        tensor = torch.tensor([ids])
        with torch.no_grad():
            generated = hf.eval().generate(
                tensor, attention_mask=torch.ones_like(tensor), max_new_tokens=new_tokens, do_sample=False,
                eos_token_id=eos, pad_token_id=0,
            )  # fmt: skip
        out.append(generated[0, len(ids) :].tolist())
    return out
