"""Free-list page allocators (FIFO, like EasyDeL's oDriver, and LIFO)."""

from __future__ import annotations

from collections import deque

from odrive.allocators.base import AllocatorStats, PageAllocator
from odrive.allocators.registry import ALLOCATORS


@ALLOCATORS.register("free-list")
class FreeListAllocator(PageAllocator):
    """Hands out pages from a free list; freed pages go to the back (FIFO) or the top (LIFO)."""

    lifo = False

    def __init__(self, num_pages: int, page_size: int) -> None:
        super().__init__(num_pages, page_size)
        self._free: deque[int] = deque(range(1, num_pages))
        self._used_slots = 0

    def allocate(self, request_id: str, num_tokens: int) -> bool:
        if num_tokens < 0:
            raise ValueError(f"request {request_id}: num_tokens must be >= 0, got {num_tokens}")
        table = self._tables.get(request_id)
        created = table is None
        if table is None:
            table = self._tables[request_id] = []
        need = -(-num_tokens // self.page_size) - len(table)
        if need > 0:
            free = self._free
            if need > len(free):
                if created:  # all-or-nothing: forget only the entry this call made
                    del self._tables[request_id]
                return False
            take = free.pop if self.lifo else free.popleft
            table.extend(take() for _ in range(need))
        self._used_slots += num_tokens - self._tokens.get(request_id, 0)
        self._tokens[request_id] = num_tokens
        return True

    def free(self, request_id: str) -> None:
        table = self._tables.pop(request_id, None)
        self._used_slots -= self._tokens.pop(request_id, 0)
        if table:
            self._free.extend(reversed(table) if self.lifo else table)

    @property
    def num_free_pages(self) -> int:
        return len(self._free)

    def free_page_ids(self) -> list[int]:
        return list(self._free)

    def stats(self) -> AllocatorStats:
        used = self.num_usable_pages - len(self._free)
        return AllocatorStats(
            num_pages=self.num_usable_pages,
            used_pages=used,
            free_pages=len(self._free),
            allocated_slots=used * self.page_size,
            used_slots=self._used_slots,
        )


@ALLOCATORS.register("free-list-lifo")
class LifoFreeListAllocator(FreeListAllocator):
    """Most recently freed pages are reused first (warmer in caches)."""

    lifo = True
