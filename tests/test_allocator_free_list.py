"""Free-list page allocators (FIFO and LIFO): a stateful model check plus hand-computed examples."""

from __future__ import annotations

import pytest
from allocator_checks import REQUEST_IDS, AllocatorMachine, allocate_rule, grow_rule, machine_settings, pages_for
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant, rule

from odrive.allocators import (
    ALLOCATORS,
    NULL_PAGE,
    FreeListAllocator,
    LifoFreeListAllocator,
    PageAllocator,
    make_allocator,
)
from odrive.errors import ConfigError


class FreeListMachine(AllocatorMachine):
    """Drives one allocator with allocate / grow / free and checks it against a plain model.

    The model is ``request_id -> tokens``; a request's page count follows from it. Pages are
    checked to come from, and go back to, the free list exactly.
    """

    allocator_name = "free-list"

    def __init__(self) -> None:
        super().__init__()
        self.alloc: PageAllocator = make_allocator(self.allocator_name, num_pages=2, page_size=1)
        self.tokens: dict[str, int] = {}

    @initialize(num_pages=st.integers(2, 14), page_size=st.integers(1, 5))
    def setup(self, num_pages: int, page_size: int) -> None:
        self.alloc = make_allocator(self.allocator_name, num_pages=num_pages, page_size=page_size)
        self.tokens = {}

    # --- helpers ------------------------------------------------------------------------------------
    def do_allocate(self, rid: str, num_tokens: int) -> None:
        a = self.alloc
        before = self.snapshot()
        old_table = list(a.page_table(rid))
        free_before = a.num_free_pages
        need = max(0, pages_for(num_tokens, a.page_size) - len(old_table))
        predicted = a.can_allocate(rid, num_tokens)
        assert predicted == (need <= free_before)
        ok = a.allocate(rid, num_tokens)
        assert ok == (need <= free_before)
        if not ok:
            assert self.snapshot() == before, "a failed allocate changed the allocator"
            return
        table = a.page_table(rid)
        assert table[: len(old_table)] == old_table, "allocate must keep the pages already held"
        assert len(table) == len(old_table) + need
        new_pages = table[len(old_table) :]
        assert set(new_pages) <= set(before[1]), "new pages must come from the free list"
        assert a.num_free_pages == free_before - need
        assert a.num_tokens(rid) == num_tokens
        assert a.slots_held(rid) >= num_tokens
        self.tokens[rid] = num_tokens

    # --- rules --------------------------------------------------------------------------------------
    allocate = allocate_rule(max_fraction=1.3)  # any size, including 0 and more than the whole pool
    grow = grow_rule(max_extra=9)

    @rule()
    def free_everything(self) -> None:
        a = self.alloc
        self.free_all()
        self.tokens.clear()
        self.assert_all_free()
        assert a.num_free_pages == a.num_usable_pages
        assert a.stats().used_pages == 0 and a.stats().used_slots == 0

    # --- invariants ---------------------------------------------------------------------------------
    @invariant()
    def pages_owned_once_never_null(self) -> None:
        a = self.alloc
        owned = [p for t in a.owners().values() for p in t]
        assert len(owned) == len(set(owned)), "a page is owned twice"
        assert NULL_PAGE not in owned and NULL_PAGE not in a.free_page_ids()
        assert all(0 < p < a.num_pages for p in owned + a.free_page_ids())
        assert not set(owned) & set(a.free_page_ids())
        assert a.num_free_pages + len(owned) == a.num_usable_pages
        assert len(a.free_page_ids()) == a.num_free_pages

    @invariant()
    def tables_match_model(self) -> None:
        a = self.alloc
        for rid in REQUEST_IDS:
            expected = self.tokens.get(rid, 0)
            assert a.num_tokens(rid) == expected
            if rid in self.tokens:
                # Tables never shrink, so a request holds at least the pages its tokens need.
                assert len(a.page_table(rid)) >= pages_for(expected, a.page_size)
            else:
                assert a.page_table(rid) == []

    @invariant()
    def stats_match_hand_computation(self) -> None:
        a = self.alloc
        s = a.stats()
        used_pages = sum(len(t) for t in a.owners().values())
        used_slots = sum(self.tokens.values())
        assert s.num_pages == a.num_pages - 1
        assert s.used_pages == used_pages
        assert s.free_pages == a.num_usable_pages - used_pages
        assert s.allocated_slots == used_pages * a.page_size
        assert s.used_slots == used_slots
        assert s.utilization == pytest.approx(used_pages / (a.num_pages - 1))
        expected_frag = (s.allocated_slots - used_slots) / s.allocated_slots if s.allocated_slots else 0.0
        assert s.internal_fragmentation == pytest.approx(expected_frag)
        assert 0.0 <= s.internal_fragmentation <= 1.0
        # The subclass's fast path agrees with the interface's generic computation.
        assert PageAllocator.stats(a) == s


class LifoAllocatorMachine(FreeListMachine):
    allocator_name = "free-list-lifo"


_machine_settings = machine_settings(max_examples=100)
TestFifoAllocatorStateMachine = FreeListMachine.TestCase
TestFifoAllocatorStateMachine.settings = _machine_settings
TestLifoAllocatorStateMachine = LifoAllocatorMachine.TestCase
TestLifoAllocatorStateMachine.settings = _machine_settings


# --- examples -------------------------------------------------------------------------------------


def test_registry_names() -> None:
    assert ALLOCATORS.get("free-list") is FreeListAllocator
    assert ALLOCATORS.get("free-list-lifo") is LifoFreeListAllocator
    with pytest.raises(KeyError, match="free-list"):
        make_allocator("no-such-allocator", num_pages=4, page_size=1)


@pytest.mark.parametrize("name", ["free-list", "free-list-lifo"])
def test_stats_hand_computed(name: str) -> None:
    a = make_allocator(name, num_pages=11, page_size=4)  # 10 usable pages of 4 slots
    assert a.allocate("x", 5)  # 2 pages, 8 slots, 5 used
    assert a.allocate("y", 4)  # 1 page, 4 slots, 4 used
    s = a.stats()
    assert (s.num_pages, s.used_pages, s.free_pages) == (10, 3, 7)
    assert (s.allocated_slots, s.used_slots) == (12, 9)
    assert s.utilization == pytest.approx(0.3)
    assert s.internal_fragmentation == pytest.approx(3 / 12)
    assert a.allocate("x", 8)  # fills x's second page: no new page
    assert a.stats().used_pages == 3 and a.stats().internal_fragmentation == pytest.approx(0.0)
    a.free("x")
    a.free("y")
    s = a.stats()
    assert (s.used_pages, s.allocated_slots, s.used_slots, s.utilization, s.internal_fragmentation) == (
        0,
        0,
        0,
        0.0,
        0.0,
    )


@pytest.mark.parametrize("name", ["free-list", "free-list-lifo"])
def test_failed_allocate_is_all_or_nothing(name: str) -> None:
    a = make_allocator(name, num_pages=5, page_size=2)  # 4 usable pages, 8 slots
    assert a.allocate("x", 3)  # 2 pages
    before = (a.owners(), a.free_page_ids(), a.num_tokens("x"), a.stats())
    assert not a.allocate("x", 9)  # needs 5 pages in all: 3 more, only 2 free
    assert not a.allocate("new", 7)  # needs 4, only 2 free
    assert (a.owners(), a.free_page_ids(), a.num_tokens("x"), a.stats()) == before
    assert "new" not in a.owners()


@pytest.mark.parametrize("name", ["free-list", "free-list-lifo"])
def test_failed_allocate_keeps_empty_table(name: str) -> None:
    # Regression: a request registered with 0 tokens (an empty table) lost its entry when a
    # later allocate failed, so a failed call changed the page tables.
    a = make_allocator(name, num_pages=3, page_size=1)
    assert a.allocate("x", 0)
    assert a.owners() == {"x": []}
    assert not a.allocate("x", 5)
    assert a.owners() == {"x": []}
    a.check_invariants()


def test_negative_token_count_is_refused() -> None:
    a = make_allocator("free-list", num_pages=3, page_size=1)
    with pytest.raises(ValueError, match="num_tokens must be >= 0"):
        a.allocate("x", -1)
    assert a.owners() == {} and a.stats().used_slots == 0


def test_fifo_hands_out_in_order_and_reuses_freed_pages_last() -> None:
    a = make_allocator("free-list", num_pages=6, page_size=1)
    assert a.allocate("x", 2) and a.page_table("x") == [1, 2]
    a.free("x")
    assert a.allocate("y", 3) and a.page_table("y") == [3, 4, 5]
    assert a.allocate("z", 2) and a.page_table("z") == [1, 2]


def test_lifo_reuses_most_recently_freed_pages_first() -> None:
    a = make_allocator("free-list-lifo", num_pages=8, page_size=1)
    assert a.allocate("x", 3)
    x_pages = a.page_table("x")
    a.free("x")
    assert a.allocate("y", 3)
    assert a.page_table("y") == x_pages  # the same pages, in the same order


def test_free_unknown_request_is_a_no_op() -> None:
    a = make_allocator("free-list", num_pages=4, page_size=2)
    a.free("ghost")
    assert a.num_free_pages == 3
    a.check_invariants()


def test_pages_for_and_new_pages_needed() -> None:
    a = make_allocator("free-list", num_pages=10, page_size=4)
    assert [a.pages_for(n) for n in (0, 1, 4, 5, 8, 9)] == [0, 1, 1, 2, 2, 3]
    assert a.allocate("x", 5)
    assert a.num_new_pages_needed("x", 8) == 0
    assert a.num_new_pages_needed("x", 9) == 1
    assert a.num_new_pages_needed("x", 1) == 0  # shrinking needs nothing


@pytest.mark.parametrize("name", ["free-list", "free-list-lifo"])
@pytest.mark.parametrize("num_pages", [-3, 0, 1])
def test_too_few_pages_is_a_config_error(name: str, num_pages: int) -> None:
    with pytest.raises(ConfigError, match=r"at least 2 pages.*null page.*got " + str(num_pages)):
        make_allocator(name, num_pages=num_pages, page_size=16)


@pytest.mark.parametrize("name", ["free-list", "free-list-lifo"])
@pytest.mark.parametrize("page_size", [-1, 0])
def test_bad_page_size_is_a_config_error(name: str, page_size: int) -> None:
    with pytest.raises(ConfigError, match=r"page_size must be >= 1, got " + str(page_size)):
        make_allocator(name, num_pages=8, page_size=page_size)


def test_config_error_is_a_value_error() -> None:
    with pytest.raises(ValueError):
        FreeListAllocator(num_pages=1, page_size=1)


def test_two_pages_is_the_smallest_pool() -> None:
    a = make_allocator("free-list", num_pages=2, page_size=3)
    assert a.num_usable_pages == 1
    assert a.allocate("x", 3) and a.page_table("x") == [1]
    assert not a.allocate("y", 1)
    a.check_invariants()
