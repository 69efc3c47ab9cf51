"""KV page allocators, registered by name in ``ALLOCATORS``."""

from odrive.allocators.base import NULL_PAGE, AllocatorStats, PageAllocator
from odrive.allocators.free_list import FreeListAllocator, LifoFreeListAllocator
from odrive.allocators.registry import ALLOCATORS


def make_allocator(name: str, num_pages: int, page_size: int) -> PageAllocator:
    """Build a registered allocator by name."""
    return ALLOCATORS.get(name)(num_pages=num_pages, page_size=page_size)


__all__ = [
    "ALLOCATORS",
    "NULL_PAGE",
    "AllocatorStats",
    "FreeListAllocator",
    "LifoFreeListAllocator",
    "PageAllocator",
    "make_allocator",
]
