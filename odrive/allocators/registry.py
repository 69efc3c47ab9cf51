"""Registry of page allocators by name."""

from odrive.registry import Registry

ALLOCATORS: Registry = Registry("allocator")
