"""Free-list page allocators (FIFO, like EasyDeL's oDriver, and LIFO)."""

from __future__ import annotations

from typing import ClassVar

from mypy_extensions import mypyc_attr

from odrive.allocators.base import NULL_PAGE, AllocatorStats, PageAllocator
from odrive.allocators.registry import ALLOCATORS


@mypyc_attr(allow_interpreted_subclasses=True)
class FreeListAllocator(PageAllocator):
    """Hands out pages from a free list; freed pages go to the back (FIFO) or the top (LIFO). Pages a sliding
    window left behind are freed as the window passes (``release_before``)."""

    lifo: ClassVar[bool] = False

    def __init__(self, num_pages: int, page_size: int) -> None:
        super().__init__(num_pages, page_size)
        # Free pages in order; FIFO takes from index ``_head`` (compacted now and then), LIFO from the end.
        # Pages move as slices, not one by one: the simulator allocates millions of them.
        self._free: list[int] = list(range(1, num_pages))
        self._head = 0
        self._used_slots = 0
        self._released: dict[str, int] = {}  # request_id -> leading table entries released (now NULL_PAGE)

    def allocate(self, request_id: str, num_tokens: int) -> bool:
        table = self._tables.get(request_id)
        if table is not None and 0 <= num_tokens <= len(table) * self.page_size:  # the usual decode: no new page
            self._used_slots += num_tokens - self._tokens.get(request_id, 0)
            self._tokens[request_id] = num_tokens
            return True
        if num_tokens < 0:
            raise ValueError(f"request {request_id}: num_tokens must be >= 0, got {num_tokens}")
        if table is None:
            table = []
            need = -(-num_tokens // self.page_size)
            if need > len(self._free) - self._head:
                return False  # all-or-nothing: no entry is made
            self._tables[request_id] = table
        else:
            need = -(-num_tokens // self.page_size) - len(table)
            if need > len(self._free) - self._head:
                return False
        if need > 0:
            self._take(table, need)
        self._used_slots += num_tokens - self._tokens.get(request_id, 0)
        self._tokens[request_id] = num_tokens
        return True

    def _take(self, table: list[int], need: int) -> None:
        free = self._free
        if self.lifo:
            table.extend(reversed(free[-need:]))
            del free[-need:]
            return
        head = self._head
        table.extend(free[head : head + need])
        head += need
        if head >= 1024 and 2 * head >= len(free):
            del free[:head]
            head = 0
        self._head = head

    def free(self, request_id: str) -> None:
        table = self._tables.pop(request_id, None)
        released = self._released.pop(request_id, 0)
        self._used_slots -= self._tokens.pop(request_id, 0) - released * self.page_size
        if table:
            if released:
                table = table[released:]
            self._free.extend(reversed(table) if self.lifo else table)

    def release_before(self, request_id: str, position: int) -> int:
        table = self._tables.get(request_id)
        if table is None:
            return 0
        done = self._released.get(request_id, 0)
        upto = min(position // self.page_size, len(table))
        if upto <= done:
            return 0
        pages = table[done:upto]
        table[done:upto] = [NULL_PAGE] * (upto - done)
        self._released[request_id] = upto
        self._used_slots -= len(pages) * self.page_size  # whole pages, all their slots held tokens
        self._free.extend(reversed(pages) if self.lifo else pages)
        return len(pages)

    def num_released(self, request_id: str) -> int:
        return self._released.get(request_id, 0)

    @property
    def num_free_pages(self) -> int:
        return len(self._free) - self._head

    def free_page_ids(self) -> list[int]:
        return self._free[self._head :]

    def stats(self) -> AllocatorStats:
        free = self.num_free_pages
        used = self.num_usable_pages - free
        return AllocatorStats(
            num_pages=self.num_usable_pages,
            used_pages=used,
            free_pages=free,
            allocated_slots=used * self.page_size,
            used_slots=self._used_slots,
        )


@mypyc_attr(allow_interpreted_subclasses=True)
class LifoFreeListAllocator(FreeListAllocator):
    """Most recently freed pages are reused first (warmer in caches)."""

    lifo: ClassVar[bool] = True


# Registered by call, not decorator: mypyc compiles this module (odrive.accel) and keeps decorated classes
# out of C.
ALLOCATORS.add("free-list", FreeListAllocator)
ALLOCATORS.add("free-list-lifo", LifoFreeListAllocator)
