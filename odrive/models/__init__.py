"""Model layer: Llama config, pure-JAX decoder (dense + paged forward), HF checkpoint I/O."""

from odrive.models.checkpoint import CheckpointError, Model, load_model, save_model
from odrive.models.config import LlamaConfig, ModelConfigError, RopeScaling
from odrive.models.kv_cache import KVCaches, allocate_kv_caches, layer_kv_pages, pages_per_layer
from odrive.models.llama import (
    Params,
    dense_greedy_generate,
    forward_dense,
    init_params,
    layer_param_shapes,
    make_dense_forward,
    param_shapes,
    stack_layers,
)
from odrive.models.paged_forward import PagedForward, StepBatch, make_paged_forward, paged_layer

__all__ = [
    "CheckpointError",
    "ModelConfigError",
    "KVCaches",
    "LlamaConfig",
    "Model",
    "Params",
    "RopeScaling",
    "allocate_kv_caches",
    "dense_greedy_generate",
    "forward_dense",
    "init_params",
    "layer_param_shapes",
    "layer_kv_pages",
    "load_model",
    "make_dense_forward",
    "make_paged_forward",
    "paged_layer",
    "StepBatch",
    "PagedForward",
    "pages_per_layer",
    "param_shapes",
    "stack_layers",
    "save_model",
]
