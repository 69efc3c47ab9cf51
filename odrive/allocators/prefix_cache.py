"""vLLM-v1-style automatic prefix caching: refcounted pages, full pages keyed by chained block hash,
released cached pages kept hit-able in an LRU eviction queue, copy-on-write for forked sequences."""

from __future__ import annotations

import operator
from array import array
from collections import OrderedDict
from dataclasses import dataclass
from itertools import chain

import numpy as np

from odrive.allocators.base import NULL_PAGE, AllocatorStats, PageAllocator
from odrive.allocators.block_hash import extend_block_hashes
from odrive.allocators.registry import ALLOCATORS
from odrive.core.request import Request
from odrive.errors import InvariantViolation


@dataclass(frozen=True)
class PrefixCacheStats:
    """Cache lookups counted once per admission that got its pages (a failed admission attempt is not
    counted). ``query_tokens`` sums the looked-up requests' lengths; ``hit_tokens`` the tokens found."""

    queries: int = 0
    hits: int = 0  # lookups that found at least one page
    query_tokens: int = 0
    hit_tokens: int = 0
    evictions: int = 0  # cached pages reused for new content
    cached_pages: int = 0  # pages hit-able now

    @property
    def hit_rate(self) -> float:
        return self.hit_tokens / self.query_tokens if self.query_tokens else 0.0


@ALLOCATORS.register("prefix-cache")
class PrefixCacheAllocator(PageAllocator):
    """Pages carry refcounts and may be shared. A page is *cached* once it is full and ``commit``
    registered it under its chained block hash; ``match_prefix`` attaches the longest run of cached
    pages matching a new request's first full blocks (refcount + 1 each). Two requests that computed the
    same block at once both keep their page cached; lookups take the first registered.

    Free pages (refcount 0) wait in one queue, and new pages are taken from its head: uncached free
    pages sit at the head (worthless), cached ones join the tail when released (a request's pages in
    reverse order, so its deepest blocks are evicted first) — least recently released cached pages are
    evicted first, and each stays hit-able until then. A hit takes a page out of the queue.

    Copy-on-write: ``fork`` shares every page of a sequence with a new one. Before a sequence writes into
    a page it does not own alone (its partial last page after a fork), ``allocate`` gives it a private
    copy and records ``(src, dst)`` for ``take_pending_copies``; the executor must copy those pages'
    K/V before the step writes any (the engine forks parallel samples, ``Request.fork_of``, and has its executor
    copy them: ``Executor.copy_pages``).

    A request's token count never shrinks: ``allocate`` with fewer tokens than held is a no-op.
    Simulated requests without token ids are never hashed, so they never hit.
    """

    supports_prefix_caching = True
    supports_fork = True

    def __init__(self, num_pages: int, page_size: int) -> None:
        super().__init__(num_pages, page_size)
        self._ref = array("q", bytes(8 * num_pages))  # int64 refcounts (numpy views them without copying)
        self._fill = array("q", bytes(8 * num_pages))  # token slots written (owned and cached pages)
        self._page_hash: list[bytes | None] = [None] * num_pages
        self._cache: dict[bytes, dict[int, None]] = {}  # key -> pages holding that block, first registered first
        self._num_cached = 0
        self._free: OrderedDict[int, None] = OrderedDict.fromkeys(range(1, num_pages))
        self._hashes: dict[str, list[bytes]] = {}  # a request's chained block keys computed so far
        self._committed: dict[str, int] = {}  # leading table pages already registered (or matched)
        self._pending_query: dict[str, tuple[int, int]] = {}  # (query, hit) tokens, counted on allocate
        self._pending_copies: list[tuple[int, int]] = []
        self._used_slots = 0
        self._queries = self._hits = self._query_tokens = self._hit_tokens = self._evictions = 0

    # --- pages ----------------------------------------------------------------------------------------
    def _pop_free(self) -> int:
        page, _ = self._free.popitem(last=False)
        key = self._page_hash[page]
        if key is not None:  # evict
            pages = self._cache[key]
            del pages[page]
            if not pages:
                del self._cache[key]
            self._page_hash[page] = None
            self._num_cached -= 1
            self._evictions += 1
        self._fill[page] = 0
        self._ref[page] = 1
        return page

    def _acquire(self, page: int) -> None:
        if self._ref[page] == 0:
            del self._free[page]
            self._used_slots += self._fill[page]
        self._ref[page] += 1

    def _release(self, page: int) -> None:
        self._ref[page] -= 1
        if self._ref[page] < 0:
            raise InvariantViolation("refcount-non-negative", f"page {page} released more often than taken")
        if self._ref[page] == 0:
            self._used_slots -= self._fill[page]
            self._free[page] = None
            if self._page_hash[page] is None:
                self._free.move_to_end(page, last=False)

    def _hashes_of(self, request: Request, num_blocks: int) -> list[bytes]:
        hashes = self._hashes.get(request.request_id)
        if hashes is None:  # this request's keys from an earlier attempt (they outlive ``free``), else new ones
            kept = request.block_hashes
            hashes = kept[1] if kept is not None and kept[0] == self.page_size else []
            self._hashes[request.request_id] = hashes
            request.block_hashes = (self.page_size, hashes)
        return extend_block_hashes(hashes, request, num_blocks, self.page_size)

    # --- prefix caching -------------------------------------------------------------------------------
    def _lookup(self, request: Request, max_tokens: int) -> list[int]:
        if request.prompt_token_ids is None:
            return []
        num_blocks = max(0, min(max_tokens, request.num_tokens)) // self.page_size
        pages = []
        for key in self._hashes_of(request, num_blocks)[:num_blocks]:
            holders = self._cache.get(key)
            if holders is None:
                break
            pages.append(next(iter(holders)))
        return pages

    def match_prefix(self, request: Request, max_tokens: int) -> int:
        rid = request.request_id
        if self._tables.get(rid):
            return 0  # already holds pages: nothing to attach
        pages = self._lookup(request, max_tokens)
        cached = len(pages) * self.page_size
        self._pending_query[rid] = (request.num_tokens, cached)
        if pages:
            for page in pages:
                self._acquire(page)
            self._tables[rid] = pages
            self._tokens[rid] = cached
            self._committed[rid] = len(pages)
        return cached

    def cached_prefix_length(self, request: Request) -> int:
        return len(self._lookup(request, request.num_tokens - 1)) * self.page_size

    def commit(self, request: Request) -> None:
        rid = request.request_id
        table = self._tables.get(rid)
        if not table or request.prompt_token_ids is None:
            return
        full = min(request.num_computed_tokens, self._tokens[rid]) // self.page_size
        done = self._committed.get(rid, 0)
        if full <= done:
            return
        hashes = self._hashes_of(request, full)  # may hold more (a lookup hashed ahead) or fewer (unknown ids)
        full = min(full, len(hashes))
        for index in range(done, full):
            page, key = table[index], hashes[index]
            if self._page_hash[page] is None:  # a duplicate of a cached block is cached too (hit once that one goes)
                self._page_hash[page] = key
                self._cache.setdefault(key, {})[page] = None
                self._num_cached += 1
        self._committed[rid] = max(done, full)

    def prefix_stats(self) -> PrefixCacheStats:
        return PrefixCacheStats(self._queries, self._hits, self._query_tokens, self._hit_tokens, self._evictions,
                                self._num_cached)  # fmt: skip

    def is_cached(self, page: int) -> bool:
        """Whether ``page`` is registered under a block hash (hit-able, or owned)."""
        return self._page_hash[page] is not None

    def refcount(self, page: int) -> int:
        return self._ref[page]

    def free_queue(self) -> list[int]:
        """Free pages in eviction order: the next page taken comes first."""
        return list(self._free)

    # --- copy on write --------------------------------------------------------------------------------
    def fork(self, parent_id: str, child_id: str) -> None:
        if child_id in self._tables:
            raise ValueError(f"fork: request {child_id!r} already holds pages")
        table = list(self._tables.get(parent_id, ()))
        for page in table:
            self._acquire(page)
        self._tables[child_id] = table
        self._tokens[child_id] = self._tokens.get(parent_id, 0)
        self._hashes[child_id] = list(self._hashes.get(parent_id, ()))
        self._committed[child_id] = self._committed.get(parent_id, 0)

    def take_pending_copies(self) -> list[tuple[int, int]]:
        copies, self._pending_copies = self._pending_copies, []
        return copies

    def _shared_in_write_range(self, table: list[int], old: int, new: int) -> list[int]:
        """Indices of pages that tokens ``old .. new-1`` would write into but this request does not own alone."""
        stop = min(len(table), self.pages_for(new))
        return [i for i in range(old // self.page_size, stop) if self._ref[table[i]] > 1 or self.is_cached(table[i])]

    # --- the interface --------------------------------------------------------------------------------
    def allocate(self, request_id: str, num_tokens: int) -> bool:
        if num_tokens < 0:
            raise ValueError(f"request {request_id}: num_tokens must be >= 0, got {num_tokens}")
        table = self._tables.get(request_id)
        old = self._tokens.get(request_id, 0)
        if table is not None and num_tokens <= old:
            self._count_query(request_id)
            return True
        current = table or []
        cow = self._shared_in_write_range(current, old, num_tokens)
        new_pages = max(0, self.pages_for(num_tokens) - len(current))
        if new_pages + len(cow) > len(self._free):
            return False
        if table is None:
            table = self._tables[request_id] = []
        ps = self.page_size
        replaced = []
        for index in cow:  # take every new page before releasing any, so none is reused within this call
            src, dst = table[index], self._pop_free()
            if old > index * ps:
                self._pending_copies.append((src, dst))
                self._fill[dst] = min(ps, old - index * ps)
                self._used_slots += self._fill[dst]
            table[index] = dst
            replaced.append(src)
        table.extend(self._pop_free() for _ in range(new_pages))
        for src in replaced:
            self._release(src)
        for index in range(old // ps, len(table)):
            page = table[index]
            fill = min(ps, num_tokens - index * ps)
            self._used_slots += fill - self._fill[page]
            self._fill[page] = fill
        self._tokens[request_id] = num_tokens
        self._count_query(request_id)
        return True

    def _count_query(self, request_id: str) -> None:
        query = self._pending_query.pop(request_id, None)
        if query is not None:
            self._queries += 1
            self._hits += query[1] > 0
            self._query_tokens += query[0]
            self._hit_tokens += query[1]

    def can_allocate(self, request_id: str, num_tokens: int) -> bool:
        table = self._tables.get(request_id, [])
        old = self._tokens.get(request_id, 0)
        if num_tokens <= old:
            return True
        cow = self._shared_in_write_range(table, old, num_tokens)
        return max(0, self.pages_for(num_tokens) - len(table)) + len(cow) <= len(self._free)

    def free(self, request_id: str) -> None:
        table = self._tables.pop(request_id, None)
        self._tokens.pop(request_id, None)
        self._hashes.pop(request_id, None)
        self._committed.pop(request_id, None)
        self._pending_query.pop(request_id, None)
        for page in reversed(table or ()):
            self._release(page)

    @property
    def num_free_pages(self) -> int:
        """Pages an allocation may take: never used, released, or cached but unreferenced."""
        return len(self._free)

    def free_page_ids(self) -> list[int]:
        return list(self._free)

    def stats(self) -> AllocatorStats:
        """Physical pages: a shared page counts once, with the most tokens any owner keeps in it."""
        used = self.num_usable_pages - len(self._free)
        return AllocatorStats(
            num_pages=self.num_usable_pages,
            used_pages=used,
            free_pages=len(self._free),
            allocated_slots=used * self.page_size,
            used_slots=self._used_slots,
        )

    # --- invariants -----------------------------------------------------------------------------------
    def check_invariants(self) -> None:
        """Refcounts equal table occurrences and are never negative; a page is free iff unreferenced;
        no page is lost; cache keys and pages agree; cached pages are full; uncached free pages are
        evicted first; slot counts add up. Vectorized: it runs after every simulated step."""
        ps, n = self.page_size, self.num_pages
        ref = np.frombuffer(self._ref, dtype=np.int64)
        if (ref < 0).any():
            raise InvariantViolation("refcount-non-negative", f"negative refcounts at {np.flatnonzero(ref < 0)[:10]}")
        tables = self._tables
        pages = np.fromiter(chain.from_iterable(tables.values()), np.int64, sum(map(len, tables.values())))
        if len(pages) and (pages.min() <= NULL_PAGE or pages.max() >= n):
            raise InvariantViolation("page-in-range", "a table holds the null page or a page outside the pool")
        fills = []
        for rid, table in tables.items():
            tokens = self._tokens.get(rid, 0)
            if len(table) != self.pages_for(tokens):
                raise InvariantViolation("tokens-fit-pages", f"request {rid}: {tokens} tokens in {len(table)} pages")
            if len(set(table)) != len(table):
                raise InvariantViolation("page-once-per-table", f"request {rid} holds a page twice")
            fills.append(np.clip(tokens - ps * np.arange(len(table)), 0, ps))
        if ref[NULL_PAGE] or not np.array_equal(np.bincount(pages, minlength=n), ref):
            raise InvariantViolation("refcount-matches-tables", "refcounts differ from table occurrences")
        free = np.fromiter(self._free, np.int64, len(self._free))
        if len(free) and (free.min() <= NULL_PAGE or ref[free].any()):
            raise InvariantViolation("free-or-owned", "the null page, or a referenced page, is in the free queue")
        if len(free) + int(np.count_nonzero(ref)) != self.num_usable_pages:
            raise InvariantViolation("no-page-leak", "free + referenced pages != usable pages")
        cached = np.fromiter(chain.from_iterable(self._cache.values()), np.int64)
        keys = chain.from_iterable([key] * len(pages) for key, pages in self._cache.items())
        keys_match = all(map(operator.eq, map(self._page_hash.__getitem__, cached.tolist()), keys))
        num_keyed = len(self._page_hash) - self._page_hash.count(None)
        if not keys_match or not len(cached) == num_keyed == self._num_cached:
            raise InvariantViolation("cache-index", "cache keys and pages' keys disagree")
        fill = np.frombuffer(self._fill, dtype=np.int64)
        if (fill[cached] != ps).any():
            raise InvariantViolation("cached-pages-full", "a cached page is not full")
        is_cached = np.zeros(n, dtype=np.int8)
        is_cached[cached] = 1
        if (np.diff(is_cached[free]) < 0).any():
            raise InvariantViolation("free-queue-order", "an uncached free page waits behind a cached one")
        expected = np.zeros(n, dtype=np.int64)
        if fills:
            np.maximum.at(expected, pages, np.concatenate(fills))
        owned = ref > 0
        if not np.array_equal(fill[owned], expected[owned]) or self._used_slots != int(expected.sum()):
            raise InvariantViolation("stats-counters", "used-slot accounting out of sync with the tables")
