"""The prefix-caching allocator: a stateful model check that also plays the executor (it writes each
computed token into its page slot, applying copy-on-write copies first), plus hand-built examples of
hits, LRU eviction, statistics and fork."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import HealthCheck, event, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, initialize, invariant, rule

from odrive.allocators import ALLOCATORS, PageAllocator, PrefixCacheAllocator, make_allocator
from odrive.allocators.block_hash import ROOT_HASH, extend_block_hashes, hash_block
from odrive.core.request import Request
from odrive.core.sampling_params import SamplingParams
from odrive.errors import InvariantViolation

STEMS = ((1, 2, 3, 4, 5, 6, 7, 8), (1, 2, 3, 4, 9, 9), (7, 7, 7, 7, 7, 7))
PARAMS = SamplingParams(max_tokens=1000, ignore_eos=True)


def make_request(rid: str, tokens: list[int] | tuple[int, ...]) -> Request:
    return Request.from_tokens(rid, tokens, PARAMS)


def tokens_of(req: Request) -> tuple[int, ...]:
    return tuple(req.all_token_ids)


class PrefixCacheMachine(RuleBasedStateMachine):
    """Requests are admitted (prefix match, then a first chunk), stepped (prefill chunks, then decodes
    that append a sampled token), forked and freed, exactly in the engine's order: allocate, execute,
    commit. The machine keeps each page's slot contents, so a wrong hit or a write into a shared page
    shows up as a request whose computed tokens are not what its pages hold."""

    def __init__(self) -> None:
        super().__init__()
        self.alloc = PrefixCacheAllocator(2, 1)
        self.reqs: dict[str, Request] = {}
        self.content: dict[int, list[int | None]] = {}
        self.prefix_of: dict[int, tuple[int, ...]] = {}  # cached page -> tokens from position 0 through it
        self.next_id = 0
        self.queries = self.hit_tokens = 0

    @initialize(num_pages=st.integers(2, 16), page_size=st.integers(1, 3))
    def setup(self, num_pages: int, page_size: int) -> None:
        a = make_allocator("prefix-cache", num_pages=num_pages, page_size=page_size)
        assert isinstance(a, PrefixCacheAllocator)
        self.alloc = a
        self.content = {p: [None] * page_size for p in range(num_pages)}

    # --- helpers ------------------------------------------------------------------------------------
    def snapshot(self) -> tuple:
        a = self.alloc
        return ({r: list(t) for r, t in a.owners().items()}, a.free_queue(), {r: a.num_tokens(r) for r in self.reqs},
                a.stats(), a.prefix_stats(), [a.refcount(p) for p in range(a.num_pages)])  # fmt: skip

    def cached_pages(self) -> set[int]:
        return {p for p in range(1, self.alloc.num_pages) if self.alloc.is_cached(p)}

    def run_chunk(self, req: Request, n: int) -> bool:
        """allocate -> execute (copies, then writes) -> commit, as the engine does. False if no pages."""
        a, ps, rid = self.alloc, self.alloc.page_size, req.request_id
        before = self.snapshot()
        old_table = list(a.page_table(rid))
        queue = a.free_queue()
        start = req.num_computed_tokens
        evictions = a.prefix_stats().evictions
        if not a.allocate(rid, start + n):
            assert self.snapshot() == before, "a failed allocate changed the allocator"
            event("allocate failed")
            return False
        if a.prefix_stats().evictions > evictions:
            event("evicted a cached page")
        table = a.page_table(rid)
        # New pages (copy-on-write replacements first, then growth) come from the head of the free queue.
        replaced = [i for i in range(len(old_table)) if table[i] != old_table[i]]
        taken = [table[i] for i in replaced] + table[len(old_table) :]
        assert taken == queue[: len(taken)], "new pages must be taken in eviction order"
        assert all(i == start // ps for i in replaced), "only the page being written may be replaced"
        copies = a.take_pending_copies()
        assert copies == [(old_table[i], table[i]) for i in replaced if start > i * ps]
        if copies:
            event("copy-on-write")
        for src, dst in copies:
            self.content[dst] = list(self.content[src])
        tokens = tokens_of(req)
        for pos in range(start, start + n):
            page = table[pos // ps]
            assert a.refcount(page) == 1 and not a.is_cached(page), f"write into shared/cached page {page}"
            self.content[page][pos % ps] = tokens[pos]
        req.num_computed_tokens += n
        cached_before = self.cached_pages()
        a.commit(req)
        for page in self.cached_pages() - cached_before:
            index = table.index(page)
            assert (index + 1) * ps <= req.num_computed_tokens, "only full computed pages are cached"
            self.prefix_of[page] = tokens[: (index + 1) * ps]
        hitable = {prefix for page, prefix in self.prefix_of.items()}
        for i in range(req.num_computed_tokens // ps):
            assert tokens[: (i + 1) * ps] in hitable, "a committed full page must be hit-able"
        return True

    # --- rules --------------------------------------------------------------------------------------
    @rule(
        stem=st.sampled_from(STEMS),
        keep=st.integers(0, 8),
        suffix=st.lists(st.integers(0, 3), max_size=4),
        chunk=st.integers(1, 8),
    )
    def admit(self, stem: tuple[int, ...], keep: int, suffix: list[int], chunk: int) -> None:
        a, ps = self.alloc, self.alloc.page_size
        prompt = [*stem[:keep], *suffix] or [0]
        rid = f"r{self.next_id}"
        self.next_id += 1
        req = make_request(rid, prompt)
        before = self.snapshot()
        probe = a.cached_prefix_length(req)
        assert self.snapshot() == before, "cached_prefix_length must not change state"
        cached = a.match_prefix(req, req.num_tokens - 1)
        assert cached == probe and cached % ps == 0 and cached <= req.num_tokens - 1
        table = a.page_table(rid)
        tokens = tokens_of(req)
        for i, page in enumerate(table):
            assert self.prefix_of.get(page) == tokens[: (i + 1) * ps], "a hit must hold the request's prefix"
        nxt = len(table)
        if (nxt + 1) * ps <= req.num_tokens - 1:
            assert tokens[: (nxt + 1) * ps] not in set(self.prefix_of.values()), "the match must be maximal"
        req.num_computed_tokens = cached
        self.reqs[rid] = req
        if cached:
            event("prefix hit")
        if not self.run_chunk(req, min(chunk, req.num_tokens_to_compute)):
            a.free(rid)  # as Scheduler.allocate_for_admission does
            del self.reqs[rid]
            return
        self.queries += 1
        self.hit_tokens += cached

    @rule(data=st.data(), chunk=st.integers(1, 8), token=st.integers(0, 3))
    def step(self, data: st.DataObject, chunk: int, token: int) -> None:
        if not self.reqs:
            return
        self.step_request(self.reqs[data.draw(st.sampled_from(sorted(self.reqs)))], chunk, token)

    def step_request(self, req: Request, chunk: int, token: int) -> None:
        if req.num_tokens_to_compute == 0:  # the last step sampled a token: append it, then decode it
            req.output_token_ids.append(token)
            req.num_output_tokens += 1
        self.run_chunk(req, min(chunk, req.num_tokens_to_compute))

    @rule(data=st.data(), then_write=st.booleans(), token=st.integers(0, 3))
    def fork(self, data: st.DataObject, then_write: bool, token: int) -> None:
        """Parallel sampling: a child shares the parent's pages; then (maybe) one of them writes on."""
        if not self.reqs:
            return
        parent = data.draw(st.sampled_from(sorted(self.reqs)))
        src = self.reqs[parent]
        rid = f"r{self.next_id}"
        self.next_id += 1
        child = make_request(rid, list(src.prompt_token_ids or ()))
        child.output_token_ids = list(src.output_token_ids)
        child.num_output_tokens = src.num_output_tokens
        child.num_computed_tokens = src.num_computed_tokens
        self.alloc.fork(parent, rid)
        assert self.alloc.page_table(rid) == self.alloc.page_table(parent)
        self.reqs[rid] = child
        if then_write:
            writer = self.reqs[data.draw(st.sampled_from([parent, rid]))]
            self.step_request(writer, 1, token)

    @rule(data=st.data())
    def free(self, data: st.DataObject) -> None:
        if not self.reqs:
            return
        a = self.alloc
        rid = data.draw(st.sampled_from(sorted(self.reqs)))
        table = list(a.page_table(rid))
        queue = a.free_queue()
        a.free(rid)
        del self.reqs[rid]
        released = [p for p in reversed(table) if a.refcount(p) == 0]
        uncached = [p for p in released if not a.is_cached(p)]
        cached = [p for p in released if a.is_cached(p)]
        after = a.free_queue()
        assert set(after[: len(uncached)]) == set(uncached), "released uncached pages are reused first"
        assert after[len(uncached) : len(uncached) + len(queue)] == queue
        assert after[len(uncached) + len(queue) :] == cached, "released cached pages join the tail, last page first"

    # --- invariants ---------------------------------------------------------------------------------
    @invariant()
    def checks_pass(self) -> None:
        self.alloc.check_invariants()

    @invariant()
    def pages_hold_what_requests_computed(self) -> None:
        a, ps = self.alloc, self.alloc.page_size
        for rid, req in self.reqs.items():
            table = a.page_table(rid)
            tokens = tokens_of(req)
            held = [self.content[table[pos // ps]][pos % ps] for pos in range(req.num_computed_tokens)]
            assert held == list(tokens[: req.num_computed_tokens]), f"request {rid}'s pages hold other tokens"

    @invariant()
    def cached_until_evicted(self) -> None:
        a, ps = self.alloc, self.alloc.page_size
        for page in list(self.prefix_of):
            if not a.is_cached(page):
                del self.prefix_of[page]  # evicted: it was reused for new content
        assert set(self.prefix_of) == self.cached_pages(), "a page became cached outside commit"
        for page, prefix in self.prefix_of.items():
            assert self.content[page] == list(prefix[-ps:])
            assert a.refcount(page) > 0 or page in a.free_queue()

    @invariant()
    def refcounts_and_stats(self) -> None:
        a = self.alloc
        refs = [a.refcount(p) for p in range(a.num_pages)]
        assert min(refs) >= 0 and refs[0] == 0
        owned = {p for t in a.owners().values() for p in t}
        assert not owned & set(a.free_queue()), "a page is both free and owned"
        assert len(owned) + a.num_free_pages == a.num_usable_pages
        s = a.stats()
        assert s.used_pages == len(owned) and s.free_pages == a.num_free_pages
        assert s.allocated_slots == len(owned) * a.page_size and 0 <= s.used_slots <= s.allocated_slots
        ps = a.prefix_stats()
        assert (ps.queries, ps.hit_tokens) == (self.queries, self.hit_tokens)
        assert ps.cached_pages == len(self.cached_pages())

    def teardown(self) -> None:
        a = self.alloc
        for rid in list(a.owners()):
            a.free(rid)
        assert all(a.refcount(p) == 0 for p in range(a.num_pages))
        assert sorted(a.free_queue()) == list(range(1, a.num_pages)), "freeing everything lost a page"
        a.check_invariants()


TestPrefixCacheStateMachine = PrefixCacheMachine.TestCase
TestPrefixCacheStateMachine.settings = settings(
    max_examples=200, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
)


# --- examples -------------------------------------------------------------------------------------


def run_prefill(a: PageAllocator, req: Request) -> int:
    """Admit ``req`` as the scheduler does and compute its whole prompt in one step; returns cached tokens."""
    cached = a.match_prefix(req, req.num_tokens - 1)
    req.num_computed_tokens = req.num_cached_tokens = cached
    assert a.allocate(req.request_id, req.num_tokens)
    req.num_computed_tokens = req.num_tokens
    a.commit(req)
    return cached


def test_registered() -> None:
    assert ALLOCATORS.get("prefix-cache") is PrefixCacheAllocator
    assert make_allocator("prefix-cache", num_pages=4, page_size=2).supports_prefix_caching


def test_block_hash_is_chained_and_stable() -> None:
    a = hash_block(ROOT_HASH, [1, 2, 3])
    assert a == hash_block(ROOT_HASH, np.array([1, 2, 3], dtype=np.int32))  # lists and int32 arrays agree
    assert a == bytes.fromhex(hash_block(ROOT_HASH, (1, 2, 3)).hex())
    assert hash_block(a, [4]) != hash_block(ROOT_HASH, [4])  # the parent matters
    req = make_request("x", [1, 2, 3, 4, 5, 6, 7])
    assert extend_block_hashes([], req, 5, 3) == [a, hash_block(a, [4, 5, 6])]  # only full, known blocks
    sim = Request("s", 7, PARAMS)  # a simulated request: no ids, nothing hashed
    assert extend_block_hashes([], sim, 5, 3) == []


def test_hit_counts_on_a_hand_built_example() -> None:
    a = make_allocator("prefix-cache", num_pages=20, page_size=4)
    assert isinstance(a, PrefixCacheAllocator)
    system = list(range(100, 110))  # 10 tokens: two full pages + 2
    first = make_request("a", [*system, 1, 2, 3])  # 13 tokens: 3 full pages + 1
    assert run_prefill(a, first) == 0
    assert a.prefix_stats().cached_pages == 3
    second = make_request("b", [*system, 7, 7, 7, 7, 7])  # shares 2 full pages (8 tokens) with the first
    assert a.cached_prefix_length(second) == 8
    assert run_prefill(a, second) == 8
    assert a.page_table("b")[:2] == a.page_table("a")[:2]
    assert [a.refcount(p) for p in a.page_table("a")] == [2, 2, 1, 1]
    same = make_request("c", [*system, 1, 2, 3])  # identical to the first: 3 pages, 12 tokens (13 - 1 cap)
    assert run_prefill(a, same) == 12
    short = make_request("d", system[:4])  # exactly one page: the last token must be computed, so no hit
    assert run_prefill(a, short) == 0
    stats = a.prefix_stats()
    assert (stats.queries, stats.hits, stats.query_tokens, stats.hit_tokens) == (4, 2, 13 + 15 + 13 + 4, 20)
    assert stats.hit_rate == pytest.approx(20 / 45)
    for rid in "abcd":
        a.free(rid)
    assert a.num_free_pages == a.num_usable_pages and a.stats().used_pages == 0
    a.check_invariants()
    again = make_request("e", [*system, 1, 2, 3, 4])  # all released pages are still cached and hit
    assert run_prefill(a, again) == 12


def test_eviction_is_lru_and_uncached_pages_go_first() -> None:
    a = make_allocator("prefix-cache", num_pages=7, page_size=2)  # 6 usable pages
    assert isinstance(a, PrefixCacheAllocator)
    x, y = make_request("x", [1, 1, 2, 2, 3]), make_request("y", [4, 4, 5])  # 2 + 1 full pages
    run_prefill(a, x)
    run_prefill(a, y)
    x_pages, y_pages = a.page_table("x"), a.page_table("y")
    assert a.free_queue() == [6]
    a.free("x")  # x's partial last page goes to the head, its cached pages to the tail, deepest first
    a.free("y")
    assert a.free_queue() == [y_pages[1], x_pages[2], 6, x_pages[1], x_pages[0], y_pages[0]]
    assert a.prefix_stats().cached_pages == 3
    assert a.allocate("z", 7)  # 4 pages: the three uncached ones, then x's deepest cached page
    assert a.page_table("z") == [y_pages[1], x_pages[2], 6, x_pages[1]]
    s = a.prefix_stats()
    assert s.evictions == 1 and s.cached_pages == 2 and not a.is_cached(x_pages[1])
    # x's first page and y's page are still hit-able; x's second block is gone, so the match stops there.
    assert a.cached_prefix_length(make_request("x2", [1, 1, 2, 2, 3])) == 2
    assert a.cached_prefix_length(make_request("y2", [4, 4, 5])) == 2
    hit = make_request("y3", [4, 4, 9])
    assert a.match_prefix(hit, 2) == 2 and a.page_table("y3") == [y_pages[0]]
    assert y_pages[0] not in a.free_queue()  # a hit takes the page out of the eviction queue
    a.check_invariants()


def test_fork_shares_pages_and_copy_on_write_copies_the_partial_page() -> None:
    a = make_allocator("prefix-cache", num_pages=10, page_size=4)
    assert isinstance(a, PrefixCacheAllocator)
    parent = make_request("p", [1, 2, 3, 4, 5, 6])  # one full page + 2 tokens
    run_prefill(a, parent)
    shared = list(a.page_table("p"))
    a.fork("p", "c")
    assert a.page_table("c") == shared and [a.refcount(p) for p in shared] == [2, 2]
    assert a.stats().used_pages == 2  # shared pages count once
    assert a.take_pending_copies() == []
    assert a.allocate("c", 7)  # the child writes token 7 into the shared partial page: it gets a copy
    child = a.page_table("c")
    assert child[0] == shared[0] and child[1] not in shared
    assert a.take_pending_copies() == [(shared[1], child[1])]
    assert a.take_pending_copies() == []  # taken once
    assert [a.refcount(p) for p in shared] == [2, 1]
    assert a.allocate("p", 7)  # the parent now owns its partial page alone: no copy
    assert a.page_table("p") == shared and a.take_pending_copies() == []
    assert a.stats().used_slots == 4 + 3 + 3
    with pytest.raises(ValueError, match="already holds pages"):
        a.fork("p", "c")
    a.check_invariants()
    a.free("p")
    a.free("c")
    assert a.num_free_pages == a.num_usable_pages
    a.check_invariants()


def test_failed_admission_counts_no_query_and_releases_matched_pages() -> None:
    a = make_allocator("prefix-cache", num_pages=5, page_size=2)  # 4 usable pages
    run_prefill(a, make_request("a", [1, 2, 3, 4]))
    a.free("a")
    before = a.prefix_stats()
    big = make_request("b", [1, 2, 3, 4, 5, 6, 7, 8, 9, 10])
    assert a.match_prefix(big, big.num_tokens - 1) == 4
    assert not a.allocate("b", 10)  # needs 3 more pages, only 2 free
    a.free("b")  # what Scheduler.allocate_for_admission does after a failed allocate
    assert a.prefix_stats() == before and a.num_free_pages == 4 and before.cached_pages == 2
    a.check_invariants()


def test_requests_without_token_ids_never_hit_nor_crash() -> None:
    a = make_allocator("prefix-cache", num_pages=10, page_size=2)
    for i in range(3):
        req = Request(f"s{i}", 5, PARAMS)  # simulated: lengths only
        assert a.cached_prefix_length(req) == 0
        assert run_prefill(a, req) == 0
    s = a.prefix_stats()
    assert (s.queries, s.hit_tokens, s.cached_pages, s.hit_rate) == (3, 0, 0, 0.0)
    a.check_invariants()


def test_token_count_never_shrinks() -> None:
    a = make_allocator("prefix-cache", num_pages=9, page_size=2)
    assert a.allocate("x", 5) and a.allocate("x", 2)
    assert a.num_tokens("x") == 5 and len(a.page_table("x")) == 3


def test_invariant_check_catches_a_corrupted_refcount() -> None:
    a = make_allocator("prefix-cache", num_pages=5, page_size=2)
    assert isinstance(a, PrefixCacheAllocator)
    assert a.allocate("x", 3)
    a._ref[a.page_table("x")[0]] += 1
    with pytest.raises(InvariantViolation, match="refcount-matches-tables"):
        a.check_invariants()


def test_a_request_is_hashed_once_across_failed_admissions_and_preemption(monkeypatch) -> None:
    import odrive.allocators.block_hash as block_hash

    calls = []
    monkeypatch.setattr(block_hash, "hash_block", lambda parent, ids: calls.append(1) or hash_block(parent, ids))
    a = PrefixCacheAllocator(4, 2)  # 3 usable pages of 2 tokens
    req = make_request("r", list(range(20)))  # needs 10 pages: never fits
    for _ in range(5):  # a head-of-line request retried every step
        a.match_prefix(req, req.num_tokens - 1)
        assert not a.allocate("r", req.num_tokens)
        a.free("r")
    assert len(calls) == 9  # its 9 full blocks below the last token, hashed on the first attempt only
    assert req.block_hashes is not None and req.block_hashes[0] == 2 and len(req.block_hashes[1]) == 9
    other = PrefixCacheAllocator(4, 4)  # another page size: the kept keys do not apply
    other.match_prefix(req, req.num_tokens - 1)
    assert len(calls) == 9 + 4 and req.block_hashes[0] == 4


def test_numpy_prompts_hash_as_lists_do() -> None:
    ids = np.random.default_rng(0).integers(0, 32000, 70).astype(np.int32)
    as_array = Request("a", 70, PARAMS, prompt_token_ids=ids)
    as_list = make_request("b", ids.tolist())
    for req in (as_array, as_list):
        req.output_token_ids.extend([5, 6, 7, 8, 9, 10])  # the last blocks span prompt and outputs
    hashed = extend_block_hashes([], as_array, 3, 16)  # part now, the rest later: the chain continues
    extend_block_hashes(hashed, as_array, 99, 16)
    assert hashed == extend_block_hashes([], as_list, 99, 16) and len(hashed) == 76 // 16
    parent = ROOT_HASH
    for i in range(len(hashed)):
        parent = hash_block(parent, (ids.tolist() + [5, 6, 7, 8, 9, 10])[16 * i : 16 * (i + 1)])
        assert hashed[i] == parent
