"""Schedulers, registered by name in ``SCHEDULERS``."""

from typing import Any

from odrive.allocators.base import PageAllocator
from odrive.schedulers.base import STEADY_FOREVER, Scheduler
from odrive.schedulers.cache_aware import CacheAwareScheduler
from odrive.schedulers.config import PREEMPTION_MODES, SchedulerConfig, default_prefill_buckets
from odrive.schedulers.decode_priority import DecodePriorityScheduler
from odrive.schedulers.fcfs import FCFSScheduler
from odrive.schedulers.odriver import ODriverScheduler
from odrive.schedulers.plan import StepPlan
from odrive.schedulers.predictors import PREDICTORS, OutputLengthPredictor
from odrive.schedulers.priority import PriorityScheduler
from odrive.schedulers.registry import SCHEDULERS
from odrive.schedulers.sjf import SJFScheduler
from odrive.schedulers.swap_space import SwapSpace
from odrive.schedulers.token_budget import TokenBudgetScheduler


def make_scheduler(name: str, config: SchedulerConfig, allocator: PageAllocator, **kwargs: Any) -> Scheduler:
    """Build a registered scheduler by name; ``config.scheduler_kwargs`` updated with ``kwargs`` are passed to
    its constructor (policy options such as ``predictor`` or ``aging``)."""
    options = {**dict(config.scheduler_kwargs), **kwargs}
    scheduler: Scheduler = SCHEDULERS.create(name, config, allocator, options=options)
    return scheduler


__all__ = [
    "PREDICTORS",
    "PREEMPTION_MODES",
    "SCHEDULERS",
    "STEADY_FOREVER",
    "CacheAwareScheduler",
    "DecodePriorityScheduler",
    "FCFSScheduler",
    "ODriverScheduler",
    "OutputLengthPredictor",
    "PriorityScheduler",
    "SJFScheduler",
    "Scheduler",
    "SchedulerConfig",
    "StepPlan",
    "SwapSpace",
    "TokenBudgetScheduler",
    "default_prefill_buckets",
    "make_scheduler",
]
