"""odrive: simulator-first paged-attention LLM inference in JAX."""

from odrive.allocators import ALLOCATORS, PageAllocator, make_allocator
from odrive.core.engine import Engine, StepOutcome
from odrive.core.executor import ExecuteResult, Executor, SeqChunk
from odrive.core.metrics import MetricsRecorder, summarize
from odrive.core.request import FinishReason, Request, RequestStatus
from odrive.core.sampling_params import SamplingParams
from odrive.errors import ConfigError, InvariantViolation
from odrive.schedulers import SCHEDULERS, Scheduler, SchedulerConfig, StepPlan, make_scheduler

__all__ = [
    "vSurge",
    "load_model",
    "load_processor",
    "ALLOCATORS",
    "SCHEDULERS",
    "ConfigError",
    "Engine",
    "ExecuteResult",
    "Executor",
    "FinishReason",
    "InvariantViolation",
    "MetricsRecorder",
    "PageAllocator",
    "Request",
    "RequestStatus",
    "SamplingParams",
    "Scheduler",
    "SchedulerConfig",
    "SeqChunk",
    "StepOutcome",
    "StepPlan",
    "make_allocator",
    "make_scheduler",
    "summarize",
]


def __getattr__(name: str) -> object:
    """Lazy access to the JAX-backed parts, so ``import odrive`` stays light for the simulator."""
    if name == "vSurge":
        from odrive.vsurge import vSurge

        return vSurge
    if name == "load_model":
        from odrive.models.checkpoint import load_model

        return load_model
    if name == "load_processor":
        from odrive.processor import load_processor

        return load_processor
    raise AttributeError(f"module 'odrive' has no attribute {name!r}")
