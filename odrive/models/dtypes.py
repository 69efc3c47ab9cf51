"""Dtype name <-> numpy dtype helpers shared by config, checkpoint and model code."""

from __future__ import annotations

from typing import Any

import jax.numpy as jnp
import numpy as np

DTypeLike = str | np.dtype | type | Any

_NAMES = {
    "float32": "float32",
    "fp32": "float32",
    "float": "float32",
    "bfloat16": "bfloat16",
    "bf16": "bfloat16",
    "float16": "float16",
    "fp16": "float16",
    "half": "float16",
}


def resolve_dtype(dtype: DTypeLike) -> np.dtype:
    """Return the numpy dtype for a name ("bfloat16", "torch.float16", ...) or dtype-like object."""
    if isinstance(dtype, str):
        key = dtype.removeprefix("torch.").lower()
        if key not in _NAMES:
            raise ValueError(f"unsupported dtype {dtype!r}; expected one of float32, bfloat16, float16")
        dtype = _NAMES[key]
    resolved = jnp.dtype(dtype)
    if dtype_name(resolved) not in ("float32", "bfloat16", "float16"):
        raise ValueError(f"unsupported dtype {resolved}; expected one of float32, bfloat16, float16")
    return resolved


def dtype_name(dtype: DTypeLike) -> str:
    """Canonical HF-style name of a dtype, e.g. "bfloat16"."""
    return jnp.dtype(dtype).name
