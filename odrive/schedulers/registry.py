"""Registry of schedulers by name."""

from odrive.registry import Registry

SCHEDULERS: Registry = Registry("scheduler")
