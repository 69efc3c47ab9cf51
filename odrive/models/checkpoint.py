"""Load models (HF ``config.json`` + ``*.safetensors`` folders, GGUF files, packaged names); save HF folders."""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.sharding import Mesh
from safetensors import safe_open
from safetensors.numpy import save_file

from odrive.model_source import ModelSource, checkpoint_folder
from odrive.models.config import LlamaConfig
from odrive.models.dtypes import DTypeLike, dtype_name, resolve_dtype
from odrive.models.llama import Params, param_shapes

INDEX_FILE = "model.safetensors.index.json"
SINGLE_FILE = "model.safetensors"

# our param name -> (HF tensor name, stored transposed). Layer names are relative to "model.layers.{i}.".
_TOP_LEVEL = {
    "embed": ("model.embed_tokens.weight", False),
    "final_norm": ("model.norm.weight", False),
    "lm_head": ("lm_head.weight", True),
}
_PER_LAYER = {
    "attn_norm": ("input_layernorm.weight", False),
    "wq": ("self_attn.q_proj.weight", True),
    "wk": ("self_attn.k_proj.weight", True),
    "wv": ("self_attn.v_proj.weight", True),
    "wo": ("self_attn.o_proj.weight", True),
    "mlp_norm": ("post_attention_layernorm.weight", False),
    "w_gate": ("mlp.gate_proj.weight", True),
    "w_up": ("mlp.up_proj.weight", True),
    "w_down": ("mlp.down_proj.weight", True),
    "bq": ("self_attn.q_proj.bias", False),
    "bk": ("self_attn.k_proj.bias", False),
    "bv": ("self_attn.v_proj.bias", False),
    "q_norm": ("self_attn.q_norm.weight", False),
    "k_norm": ("self_attn.k_norm.weight", False),
}


class CheckpointError(ValueError):
    """A checkpoint is incomplete or inconsistent with its config."""


@dataclasses.dataclass
class Model:
    """A loaded model: config, params pytree (see ``odrive.models.llama``), param dtype, source dir."""

    config: LlamaConfig
    params: Params
    dtype: np.dtype
    path: Path | None = None


def load_model(
    model: str | Path | ModelSource,
    dtype: DTypeLike | None = None,
    *,
    mesh: Mesh | None = None,
) -> Model:
    """Load a model: a HF-format checkpoint directory, a GGUF file, or a packaged model's name
    (``smollm2-135m-instruct``; see ``odrive.model_source``).

    ``dtype`` defaults to the config's ``torch_dtype`` (float32 for GGUF files: their quantized weights are
    dequantized once into a cached checkpoint folder, see ``odrive.gguf_convert``).
    With ``mesh`` (``odrive.parallel.make_tp_mesh``) every tensor goes from host memory straight to its shards
    on the mesh (``odrive.parallel.param_shardings``): no device ever holds the whole model, so a model larger
    than one device loads for tensor-parallel serving. Without it, params land on the default device.
    """
    path = checkpoint_folder(model)
    if not (path / "config.json").is_file():
        raise FileNotFoundError(f"config.json not found in checkpoint directory {path}")
    config = LlamaConfig.from_json_file(path / "config.json")
    dt = resolve_dtype(dtype if dtype is not None else config.torch_dtype)
    shapes = param_shapes(config)
    place = _placer(config, mesh)
    with _TensorReader(path) as reader:
        params: Params = {"layers": []}
        for name, shape in shapes.items():
            if name != "layers":
                hf_name, transpose = _TOP_LEVEL[name]
                params[name] = place(reader.load(hf_name, shape, transpose, dt), name)
        for i, layer_shapes in enumerate(shapes["layers"]):
            layer = {}
            for name, shape in layer_shapes.items():
                suffix, transpose = _PER_LAYER[name]
                layer[name] = place(reader.load(f"model.layers.{i}.{suffix}", shape, transpose, dt), "layers", i, name)
            params["layers"].append(layer)
    return Model(config=config, params=params, dtype=dt, path=path)


def _placer(config: LlamaConfig, mesh: Mesh | None) -> Callable[..., jax.Array]:
    """``place(host_array, *param_path)``: onto the default device, or onto its shards of ``mesh``."""
    if mesh is None:
        return lambda array, *_: jnp.asarray(array)
    from odrive.parallel import check_tp, param_shardings, tp_size  # odrive.parallel imports this package

    check_tp(config, tp_size(mesh))
    shardings = param_shardings(config, mesh)

    def place(array: np.ndarray, *keys: str | int) -> jax.Array:
        sharding = shardings
        for key in keys:
            sharding = sharding[key]
        return jax.device_put(array, sharding)

    return place


def save_model(
    model: Model | tuple[LlamaConfig, Params], path: str | Path, *, max_shard_bytes: int | None = None
) -> Path:
    """Write ``config.json`` and ``model.safetensors`` (or size-capped shards plus an index) to ``path``.

    Tensors keep the params' dtype, which is also recorded as ``torch_dtype``. Refuses to write into a
    directory that already holds safetensors files (stale shards would be picked up on load).
    """
    config, params = (model.config, model.params) if isinstance(model, Model) else model
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    if any(path.glob("*.safetensors")) or (path / INDEX_FILE).exists():
        raise FileExistsError(f"{path} already contains a safetensors checkpoint")
    tensors = _to_hf_tensors(config, params)
    config = dataclasses.replace(config, torch_dtype=dtype_name(params["embed"].dtype))
    (path / "config.json").write_text(json.dumps(config.to_hf_dict(), indent=2) + "\n")
    shards = _split_shards(tensors, max_shard_bytes)
    if len(shards) == 1:
        save_file(shards[0], str(path / SINGLE_FILE), metadata={"format": "pt"})
        return path
    weight_map = {}
    for i, shard in enumerate(shards):
        file = f"model-{i + 1:05d}-of-{len(shards):05d}.safetensors"
        save_file(shard, str(path / file), metadata={"format": "pt"})
        weight_map.update(dict.fromkeys(shard, file))
    total = sum(t.nbytes for t in tensors.values())
    index = {"metadata": {"total_size": total}, "weight_map": weight_map}
    (path / INDEX_FILE).write_text(json.dumps(index, indent=2) + "\n")
    return path


def _to_hf_tensors(config: LlamaConfig, params: Params) -> dict[str, np.ndarray]:
    """Params pytree -> ordered ``{HF name: [out, in] numpy array}``."""
    out: dict[str, np.ndarray] = {}

    def put(name: str, value: Any, transpose: bool) -> None:
        arr = np.asarray(value)
        out[name] = np.ascontiguousarray(arr.T if transpose else arr)

    put("model.embed_tokens.weight", params["embed"], False)
    for i, layer in enumerate(params["layers"]):
        for name, value in layer.items():
            suffix, transpose = _PER_LAYER[name]
            put(f"model.layers.{i}.{suffix}", value, transpose)
    put("model.norm.weight", params["final_norm"], False)
    if not config.tie_word_embeddings:
        put("lm_head.weight", params["lm_head"], True)
    return out


def _split_shards(tensors: dict[str, np.ndarray], max_bytes: int | None) -> list[dict[str, np.ndarray]]:
    """Greedily pack tensors (in order) into shards of at most ``max_bytes`` (one shard if None)."""
    if max_bytes is None:
        return [tensors]
    shards: list[dict[str, np.ndarray]] = [{}]
    size = 0
    for name, arr in tensors.items():
        if shards[-1] and size + arr.nbytes > max_bytes:
            shards.append({})
            size = 0
        shards[-1][name] = arr
        size += arr.nbytes
    return shards


class _TensorReader:
    """Resolves HF tensor names to safetensors files (single, multiple or indexed) and reads them."""

    def __init__(self, path: Path) -> None:
        self.path = path
        index = path / INDEX_FILE
        if index.is_file():
            weight_map = json.loads(index.read_text()).get("weight_map")
            if not isinstance(weight_map, dict):
                raise CheckpointError(f"{index} has no 'weight_map'")
            self.files = {name: path / file for name, file in weight_map.items()}
        else:
            found = sorted(path.glob("*.safetensors"))
            if not found:
                raise FileNotFoundError(f"no *.safetensors files in checkpoint directory {path}")
            self.files = {}
            for file in found:
                with safe_open(str(file), framework="numpy") as f:
                    self.files.update(dict.fromkeys(f.keys(), file))
        self._stack = ExitStack()
        self._handles: dict[Path, Any] = {}

    def __enter__(self) -> _TensorReader:
        return self

    def __exit__(self, *exc: object) -> None:
        self._stack.close()

    def load(self, name: str, shape: tuple[int, ...], transpose: bool, dtype: np.dtype) -> np.ndarray:
        """Read ``name``, check its stored shape, and return it in our orientation cast to ``dtype``."""
        file = self.files.get(name)
        if file is None:
            raise CheckpointError(f"tensor {name!r} not found in checkpoint {self.path}")
        if file not in self._handles:
            if not file.is_file():
                raise FileNotFoundError(f"safetensors shard {file} (holding {name!r}) not found")
            self._handles[file] = self._stack.enter_context(safe_open(str(file), framework="numpy"))
        handle = self._handles[file]
        expected = tuple(reversed(shape)) if transpose else tuple(shape)
        actual = tuple(handle.get_slice(name).get_shape())
        if actual != expected:
            raise CheckpointError(
                f"tensor {name!r} in {file.name} has shape {actual}, expected {expected} from config.json"
            )
        arr = handle.get_tensor(name)
        return (arr.T if transpose else arr).astype(dtype)
