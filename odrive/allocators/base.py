"""The PageAllocator interface: KV pages of ``page_size`` token slots, page 0 reserved as null."""

from __future__ import annotations

from abc import ABC, abstractmethod
from dataclasses import dataclass
from typing import ClassVar

from mypy_extensions import mypyc_attr

from odrive.core.request import Request
from odrive.errors import ConfigError, InvariantViolation

NULL_PAGE = 0


@dataclass(frozen=True)
class AllocatorStats:
    """A snapshot of pool usage. Fragmentation = allocated slots that hold no token."""

    num_pages: int  # usable pages (excluding the null page)
    used_pages: int
    free_pages: int
    allocated_slots: int
    used_slots: int

    @property
    def utilization(self) -> float:
        return self.used_pages / self.num_pages if self.num_pages else 0.0

    @property
    def internal_fragmentation(self) -> float:
        """Fraction of allocated slots holding no token."""
        if not self.allocated_slots:
            return 0.0
        return 1.0 - self.used_slots / self.allocated_slots


@mypyc_attr(allow_interpreted_subclasses=True)  # compiled by odrive.accel; users subclass it
class PageAllocator(ABC):
    """Owns the KV page pool and each request's page table.

    ``allocate(request_id, num_tokens)`` makes the request's table cover ``num_tokens`` token
    slots, all-or-nothing: on failure nothing changes and False is returned. ``free`` returns
    every page the request holds. Page 0 is never handed out.
    """

    def __init__(self, num_pages: int, page_size: int) -> None:
        if page_size < 1:
            raise ConfigError(f"page_size must be >= 1, got {page_size}")
        if num_pages < 2:
            raise ConfigError(
                f"the KV pool needs at least 2 pages (page 0 is the reserved null page), got {num_pages}; "
                "raise hbm_utilization, shrink the model or the page size"
            )
        self.num_pages = num_pages  # including the null page
        self.page_size = page_size
        self._tables: dict[str, list[int]] = {}  # request_id -> page table
        self._tokens: dict[str, int] = {}  # request_id -> tokens its pages hold

    # --- required -----------------------------------------------------------------------------
    @abstractmethod
    def allocate(self, request_id: str, num_tokens: int) -> bool: ...

    @abstractmethod
    def free(self, request_id: str) -> None: ...

    def page_table(self, request_id: str) -> list[int]:
        return self._tables.get(request_id, [])

    @property
    @abstractmethod
    def num_free_pages(self) -> int: ...

    def num_tokens(self, request_id: str) -> int:
        """Tokens the request's pages hold (as of its last allocate call); 0 if unknown."""
        return self._tokens.get(request_id, 0)

    def owners(self) -> dict[str, list[int]]:
        """request_id → page table, for invariant checks and tests."""
        return dict(self._tables)

    @abstractmethod
    def free_page_ids(self) -> list[int]: ...

    # --- prefix caching hooks (no-ops unless an allocator caches pages) ---------------------------
    supports_prefix_caching: ClassVar[bool] = False

    def match_prefix(self, request: Request, max_tokens: int) -> int:
        """At admission: attach cached full pages holding a prefix of ``request``'s tokens (within its
        first ``max_tokens``) to its page table and return how many tokens they hold (a multiple of
        page_size). The caller treats those tokens as computed. Default: no cache, 0."""
        return 0

    def cached_prefix_length(self, request: Request) -> int:
        """Read-only probe: tokens of ``request`` a ``match_prefix`` would find now (for cache-aware
        scheduling). Must not change any state."""
        return 0

    def commit(self, request: Request) -> None:
        """After a step computed tokens of ``request``: make its newly full pages hit-able. Default no-op."""
        return None

    # --- optional hooks (no-ops unless an allocator needs them) -----------------------------------
    supports_decode_runs: ClassVar[bool] = True
    """True when growing any request by k pages succeeds whenever ``num_free_pages >= k``, so the engine
    may fast-forward a steady decode run by counting free pages. Allocators that grow by contiguous
    runs or power-of-two blocks set it False."""

    def reserve_hint(self, request_id: str, final_tokens: int) -> None:
        """Before a request's first allocation: the most tokens it will ever hold (prompt + max_tokens).
        Allocators that reserve ahead (``contiguous`` with ``reservation="pow2"|"oracle"``) size the
        reservation from it. The hint lasts until ``free(request_id)``. Default no-op."""
        return None

    supports_fork: ClassVar[bool] = False
    """True when ``fork`` shares pages copy-on-write (the engine then forks parallel samples, ``Request.fork_of``)."""

    def fork(self, parent_id: str, child_id: str) -> None:
        """Give ``child_id`` a table sharing every page of ``parent_id`` (parallel sampling)."""
        raise NotImplementedError(f"{type(self).__name__} does not support fork (copy-on-write page sharing)")

    def release_before(self, request_id: str, position: int) -> int:
        """A sliding window has passed: no query of ``request_id`` will attend to a position before ``position``
        again. An allocator may free the pages wholly before it; their table entries become ``NULL_PAGE`` (the
        table keeps its length and token count, kernels mask the positions). Returns the pages freed; the engine
        calls it after every step when ``SchedulerConfig.sliding_window`` is set. Default: keeps them, 0."""
        return 0

    def num_released(self, request_id: str) -> int:
        """Leading entries of ``request_id``'s table that ``release_before`` freed (now ``NULL_PAGE``)."""
        return 0

    def take_pending_copies(self) -> list[tuple[int, int]]:
        """``(src_page, dst_page)`` copies that copy-on-write recorded since the last call (and forgets
        them). The executor must copy each page's K/V before the step writes any K/V. Default: none."""
        return []

    # --- shared helpers -----------------------------------------------------------------------
    @property
    def num_usable_pages(self) -> int:
        return self.num_pages - 1

    def pages_for(self, num_tokens: int) -> int:
        return -(-num_tokens // self.page_size)

    def num_new_pages_needed(self, request_id: str, num_tokens: int) -> int:
        return max(0, self.pages_for(num_tokens) - len(self.page_table(request_id)))

    def can_allocate(self, request_id: str, num_tokens: int) -> bool:
        return self.num_new_pages_needed(request_id, num_tokens) <= self.num_free_pages

    def slots_held(self, request_id: str) -> int:
        return len(self.page_table(request_id)) * self.page_size

    def stats(self) -> AllocatorStats:
        owners = self.owners()
        used = sum(len(t) for t in owners.values())
        return AllocatorStats(
            num_pages=self.num_usable_pages,
            used_pages=used,
            free_pages=self.num_free_pages,
            allocated_slots=used * self.page_size,
            used_slots=sum(self.num_tokens(r) for r in owners),
        )

    def check_invariants(self) -> None:
        """Raise InvariantViolation if any page is lost, doubly owned, or the null page is used. The leading entries
        released behind a sliding window (``num_released``) are the null page and nothing else is."""
        seen: dict[int, str] = {}
        for rid, table in self.owners().items():
            released = self.num_released(rid)
            if table[:released] != [NULL_PAGE] * released:
                raise InvariantViolation(
                    "released-pages-freed", f"request {rid}: its first {released} entries are released: {table[:10]}"
                )
            for page in table[released:]:
                if page == NULL_PAGE:
                    raise InvariantViolation("null-page-never-allocated", f"request {rid} holds page 0")
                if not 0 < page < self.num_pages:
                    raise InvariantViolation("page-in-range", f"request {rid} holds page {page}")
                if page in seen:
                    raise InvariantViolation("page-owned-once", f"page {page} held by both {seen[page]} and {rid}")
                seen[page] = rid
            if self.num_tokens(rid) > len(table) * self.page_size:
                raise InvariantViolation(
                    "tokens-fit-pages", f"request {rid} holds {self.num_tokens(rid)} tokens in {len(table)} pages"
                )
        free = self.free_page_ids()
        if len(set(free)) != len(free):
            raise InvariantViolation("free-list-unique", "a page appears twice in the free list")
        both = set(free) & seen.keys()
        if both:
            raise InvariantViolation("free-or-owned", f"pages both free and owned: {sorted(both)[:10]}")
        if NULL_PAGE in free:
            raise InvariantViolation("null-page-never-allocated", "page 0 is in the free list")
        if len(free) + len(seen) != self.num_usable_pages:
            raise InvariantViolation(
                "no-page-leak",
                f"{len(free)} free + {len(seen)} owned != {self.num_usable_pages} usable pages",
            )
