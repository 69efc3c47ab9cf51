"""Registry of page allocators by name."""

from odrive.core.registry import Registry

ALLOCATORS: Registry = Registry("allocator")
