"""KV page allocators, registered by name in ``ALLOCATORS``."""

from typing import Any

from odrive.allocators.base import NULL_PAGE, AllocatorStats, PageAllocator
from odrive.allocators.buddy import BuddyAllocator
from odrive.allocators.contiguous import ContiguousAllocator
from odrive.allocators.free_list import FreeListAllocator, LifoFreeListAllocator
from odrive.allocators.prefix_cache import PrefixCacheAllocator, PrefixCacheStats
from odrive.allocators.registry import ALLOCATORS


def make_allocator(name: str, num_pages: int, page_size: int, **kwargs: Any) -> PageAllocator:
    """Build a registered allocator by name; ``kwargs`` are the allocator's own options
    (e.g. ``make_allocator("contiguous", num_pages=..., page_size=..., reservation="oracle")``)."""
    allocator: PageAllocator = ALLOCATORS.create(name, num_pages=num_pages, page_size=page_size, options=kwargs)
    return allocator


__all__ = [
    "ALLOCATORS",
    "NULL_PAGE",
    "AllocatorStats",
    "BuddyAllocator",
    "ContiguousAllocator",
    "FreeListAllocator",
    "LifoFreeListAllocator",
    "PageAllocator",
    "PrefixCacheAllocator",
    "PrefixCacheStats",
    "make_allocator",
]
