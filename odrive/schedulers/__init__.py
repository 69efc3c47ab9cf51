"""Schedulers, registered by name in ``SCHEDULERS``."""

from odrive.allocators.base import PageAllocator
from odrive.schedulers.base import Scheduler
from odrive.schedulers.config import SchedulerConfig, default_prefill_buckets
from odrive.schedulers.fcfs import FCFSScheduler
from odrive.schedulers.plan import StepPlan
from odrive.schedulers.registry import SCHEDULERS


def make_scheduler(name: str, config: SchedulerConfig, allocator: PageAllocator) -> Scheduler:
    """Build a registered scheduler by name."""
    return SCHEDULERS.get(name)(config, allocator)


__all__ = [
    "SCHEDULERS",
    "FCFSScheduler",
    "Scheduler",
    "SchedulerConfig",
    "StepPlan",
    "default_prefill_buckets",
    "make_scheduler",
]
