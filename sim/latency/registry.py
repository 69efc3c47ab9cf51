"""Latency models by name, so a CLI flag picks one: ``get_latency_model("roofline", ...)``."""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from odrive.core.registry import Registry
from odrive.errors import ConfigError
from sim.hardware import Accelerator, get_accelerator
from sim.latency.base import LatencyModel
from sim.model_spec import ModelSpec, get_model_spec

LatencyModelFactory = Callable[..., LatencyModel]
"""Called as ``factory(accelerator=Accelerator, model=ModelSpec, **kw)``."""

LATENCY_MODELS: Registry[LatencyModelFactory] = Registry("latency model")


def register_latency_model(
    name: str, factory: LatencyModelFactory | None = None
) -> Callable[[LatencyModelFactory], LatencyModelFactory] | LatencyModelFactory:
    """Register ``factory`` under ``name``; without ``factory``, use as a class/function decorator."""
    if factory is None:
        return LATENCY_MODELS.register(name)
    LATENCY_MODELS.add(name, factory)
    return factory


def get_latency_model(name: str, *, accelerator: Accelerator | str, model: ModelSpec | str, **kw: Any) -> LatencyModel:
    """Build latency model ``name``; ``accelerator``/``model`` may be preset names; ``kw`` are the model's
    options (e.g. the calibrated model's ``profile``, ``speed``, ``prefill_speed``)."""
    acc = get_accelerator(accelerator) if isinstance(accelerator, str) else accelerator
    spec = get_model_spec(model) if isinstance(model, str) else model
    factory = LATENCY_MODELS.get(name)
    try:
        return factory(accelerator=acc, model=spec, **kw)
    except TypeError as err:
        if not kw:
            raise
        raise ConfigError(f"latency model {name!r} rejected options {sorted(kw)}: {err}") from err
