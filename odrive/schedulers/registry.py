"""Registry of schedulers by name."""

from odrive.core.registry import Registry

SCHEDULERS: Registry = Registry("scheduler")
