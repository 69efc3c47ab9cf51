"""The real-engine front end, modeled on EasyDeL's vSurge oDriver: ``vSurge.create_odriver(...)``."""

from odrive.vsurge.driver import EngineFailure, create_odriver, vSurge
from odrive.vsurge.handle import RequestHandle
from odrive.vsurge.results import GenerationResult, RequestMetrics, StreamDelta

__all__ = [
    "EngineFailure",
    "GenerationResult",
    "RequestHandle",
    "RequestMetrics",
    "StreamDelta",
    "create_odriver",
    "vSurge",
]
