"""odrive: simulator-first paged-attention LLM inference in JAX."""

from odrive.allocators import ALLOCATORS, PageAllocator, make_allocator
from odrive.engine import Engine, StepOutcome
from odrive.errors import ConfigError, InvariantViolation
from odrive.executor import ExecuteResult, Executor, SeqChunk
from odrive.metrics import MetricsRecorder, summarize
from odrive.request import FinishReason, Request, RequestStatus
from odrive.sampling_params import SamplingParams
from odrive.schedulers import SCHEDULERS, Scheduler, SchedulerConfig, StepPlan, make_scheduler

__all__ = [
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
