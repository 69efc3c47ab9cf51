"""Latency models: how long an engine step of a given :class:`BatchShape` takes."""

from sim.latency.base import LatencyModel
from sim.latency.batch_shape import BatchShape
from sim.latency.calibrated import CalibratedLatencyModel, CalibratedSimExecutor  # registers "calibrated"
from sim.latency.registry import LATENCY_MODELS, get_latency_model, register_latency_model
from sim.latency.roofline import RooflineLatencyModel

__all__ = [
    "LATENCY_MODELS",
    "BatchShape",
    "CalibratedLatencyModel",
    "CalibratedSimExecutor",
    "LatencyModel",
    "RooflineLatencyModel",
    "get_latency_model",
    "register_latency_model",
]
