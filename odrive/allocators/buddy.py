"""A buddy allocator over the page pool: power-of-two blocks of pages, split on demand, merged on free."""

from __future__ import annotations

from odrive.allocators.base import AllocatorStats, PageAllocator
from odrive.allocators.registry import ALLOCATORS
from odrive.errors import ConfigError, InvariantViolation

GROWTH_POLICIES = ("double", "exact")


def ceil_log2(n: int) -> int:
    return max(0, n - 1).bit_length()


def binary_orders(n: int) -> list[int]:
    """Orders of the power-of-two blocks summing to ``n``, largest first: 13 -> [3, 2, 0]."""
    return [k for k in range(n.bit_length() - 1, -1, -1) if n >> k & 1]


@ALLOCATORS.register("buddy")
class BuddyAllocator(PageAllocator):
    """Pages ``1 .. num_pages-1`` are addresses ``0 .. U-1``, cut into the largest aligned power-of-two
    blocks (U need not be a power of two). A block of order k holds ``2**k`` pages at an address
    divisible by ``2**k``; its buddy is at ``address ^ 2**k``. Taking a block splits the lowest-address
    smallest sufficient free block; freeing merges a block with its free buddy, repeatedly.

    A request's page table is the pages of its blocks in the order taken. Growth by ``s`` pages
    (``s`` = pages missing for ``num_tokens``) takes, in order of preference:

    1. one block of ``want`` pages rounded up to a power of two, where ``want = s`` for a request
       holding nothing and, with ``growth="double"`` (default), ``max(s, held)`` afterwards, so a
       request's holding doubles (few blocks, up to ~50% slack, like a growable array);
       ``growth="exact"`` uses ``want = s``;
    2. else one block of ``s`` pages rounded up to a power of two;
    3. else the blocks of ``s``'s binary decomposition (5 pages -> 4 + 1), so a request always fits
       an empty pool it fits by size.

    All-or-nothing: if none is available nothing changes and ``allocate`` returns False.
    """

    supports_decode_runs = False  # growth takes whole blocks, possibly more than one page

    def __init__(self, num_pages: int, page_size: int, growth: str = "double") -> None:
        super().__init__(num_pages, page_size)
        if growth not in GROWTH_POLICIES:
            raise ConfigError(f"growth must be one of {GROWTH_POLICIES}, got {growth!r}")
        self.growth = growth
        size = num_pages - 1
        self.max_order = size.bit_length() - 1
        self._free: list[set[int]] = [set() for _ in range(self.max_order + 1)]
        addr = 0
        while addr < size:  # the largest aligned blocks covering [0, size)
            order = min((addr & -addr).bit_length() - 1 if addr else self.max_order, (size - addr).bit_length() - 1)
            self._free[order].add(addr)
            addr += 1 << order
        self._num_free = size
        self._blocks: dict[str, list[tuple[int, int]]] = {}  # request -> (address, order) in order taken
        self._used_slots = 0

    # --- blocks ---------------------------------------------------------------------------------------
    def _feasible(self, orders: list[int]) -> bool:
        """Whether blocks of ``orders`` (largest first) can all be taken now; changes nothing."""
        counts = [len(s) for s in self._free]
        for k in orders:
            j = next((j for j in range(k, len(counts)) if counts[j]), None)
            if j is None:
                return False
            counts[j] -= 1
            for i in range(k, j):
                counts[i] += 1
        return True

    def _take(self, order: int) -> int:
        j = next(j for j in range(order, len(self._free)) if self._free[j])
        addr = min(self._free[j])
        self._free[j].remove(addr)
        while j > order:
            j -= 1
            self._free[j].add(addr + (1 << j))
        self._num_free -= 1 << order
        return addr

    def _give(self, addr: int, order: int) -> None:
        self._num_free += 1 << order
        while order < self.max_order and (buddy := addr ^ (1 << order)) in self._free[order]:
            self._free[order].remove(buddy)
            addr = min(addr, buddy)
            order += 1
        self._free[order].add(addr)

    def growth_orders(self, request_id: str, num_tokens: int) -> list[int] | None:
        """Orders of the blocks ``allocate`` would take ([] if none needed), or None if it would fail."""
        held = len(self._tables.get(request_id, ()))
        short = self.pages_for(num_tokens) - held
        if short <= 0:
            return []
        want = max(short, held) if self.growth == "double" else short
        for orders in ([ceil_log2(want)], [ceil_log2(short)], binary_orders(short)):
            if orders[0] <= self.max_order and self._feasible(orders):
                return orders
        return None

    # --- the interface --------------------------------------------------------------------------------
    def allocate(self, request_id: str, num_tokens: int) -> bool:
        if num_tokens < 0:
            raise ValueError(f"request {request_id}: num_tokens must be >= 0, got {num_tokens}")
        orders = self.growth_orders(request_id, num_tokens)
        if orders is None:
            return False
        table = self._tables.setdefault(request_id, [])
        blocks = self._blocks.setdefault(request_id, [])
        for order in orders:
            addr = self._take(order)
            blocks.append((addr, order))
            table.extend(range(addr + 1, addr + 1 + (1 << order)))
        self._used_slots += num_tokens - self._tokens.get(request_id, 0)
        self._tokens[request_id] = num_tokens
        return True

    def can_allocate(self, request_id: str, num_tokens: int) -> bool:
        return self.growth_orders(request_id, num_tokens) is not None

    def free(self, request_id: str) -> None:
        self._tables.pop(request_id, None)
        self._used_slots -= self._tokens.pop(request_id, 0)
        for addr, order in self._blocks.pop(request_id, ()):
            self._give(addr, order)

    @property
    def num_free_pages(self) -> int:
        return self._num_free

    def free_page_ids(self) -> list[int]:
        return sorted(a + 1 + i for k, s in enumerate(self._free) for a in s for i in range(1 << k))

    def free_blocks(self) -> list[tuple[int, int]]:
        """``(first page, order)`` of each free block, by address."""
        return sorted((a + 1, k) for k, s in enumerate(self._free) for a in s)

    def blocks_of(self, request_id: str) -> list[tuple[int, int]]:
        """``(first page, order)`` of the request's blocks, in the order taken."""
        return [(a + 1, k) for a, k in self._blocks.get(request_id, ())]

    def stats(self) -> AllocatorStats:
        used = self.num_usable_pages - self._num_free
        return AllocatorStats(
            num_pages=self.num_usable_pages,
            used_pages=used,
            free_pages=self._num_free,
            allocated_slots=used * self.page_size,
            used_slots=self._used_slots,
        )

    @property
    def largest_free_block(self) -> int:
        """Pages in the largest free block (the longest run one request can take at once)."""
        return max((1 << k for k, s in enumerate(self._free) if s), default=0)

    def check_invariants(self) -> None:
        super().check_invariants()
        size = self.num_usable_pages
        for k, s in enumerate(self._free):
            for a in s:
                if a % (1 << k) or a + (1 << k) > size:
                    raise InvariantViolation("buddy-block-aligned", f"free block at {a} of order {k}")
                if k < self.max_order and a ^ (1 << k) in s:
                    raise InvariantViolation("buddies-merged", f"free buddies at {a} and {a ^ (1 << k)}, order {k}")
        for rid, blocks in self._blocks.items():
            pages = [a + 1 + i for a, k in blocks for i in range(1 << k)]
            if pages != self._tables[rid] or any(a % (1 << k) for a, k in blocks):
                raise InvariantViolation("buddy-table-of-blocks", f"request {rid}'s table is not its aligned blocks")
        if self._used_slots != sum(self._tokens.values()):
            raise InvariantViolation("stats-counters", "used-slot counter out of sync")
