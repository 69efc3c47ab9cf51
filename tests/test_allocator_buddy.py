"""The buddy allocator: a stateful model check plus hand-computed splits, merges and growth."""

from __future__ import annotations

import pytest
from allocator_checks import AllocatorMachine, allocate_rule, grow_rule, machine_settings, pages_for
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.stateful import initialize, invariant

from odrive.allocators import ALLOCATORS, BuddyAllocator, PageAllocator, make_allocator
from odrive.allocators.buddy import binary_orders
from odrive.errors import ConfigError


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


def initial_blocks(num_pages: int) -> list[tuple[int, int]]:
    """The largest aligned power-of-two blocks covering pages 1 .. num_pages-1, as (first page, order)."""
    blocks, addr, size = [], 0, num_pages - 1
    while addr < size:
        order = max(k for k in range(size.bit_length()) if addr % (1 << k) == 0 and addr + (1 << k) <= size)
        blocks.append((addr + 1, order))
        addr += 1 << order
    return blocks


class BuddyMachine(AllocatorMachine):
    """Allocate / grow / free; checks each growth against the documented block-size policy."""

    free_ids_sorted = True

    def __init__(self) -> None:
        super().__init__()
        self.alloc = BuddyAllocator(2, 1)
        self.tokens: dict[str, int] = {}

    @initialize(num_pages=st.integers(2, 40), page_size=st.integers(1, 3), growth=st.sampled_from(["double", "exact"]))
    def setup(self, num_pages: int, page_size: int, growth: str) -> None:
        a = make_allocator("buddy", num_pages=num_pages, page_size=page_size, growth=growth)
        assert isinstance(a, BuddyAllocator)
        self.alloc, self.tokens = a, {}

    def free_layout(self) -> object:
        return self.alloc.free_blocks()

    def do_allocate(self, rid: str, num_tokens: int) -> None:
        a = self.alloc
        before = self.snapshot()
        old = list(a.page_table(rid))
        free = set(a.free_page_ids())
        short = pages_for(num_tokens, a.page_size) - len(old)
        all_free = len(free) == a.num_usable_pages
        predicted = a.can_allocate(rid, num_tokens)
        ok = a.allocate(rid, num_tokens)
        assert ok == predicted
        if not ok:
            assert short > 0
            assert self.snapshot() == before, "a failed allocate changed the allocator"
            # Any block of >= short pages could have been split to fit: failing means there was none.
            assert short > max((1 << k for _, k in before[2]), default=0)
            assert not all_free or short > a.num_usable_pages
            return
        table = a.page_table(rid)
        assert table[: len(old)] == old, "growth keeps the pages already held"
        new = table[len(old) :]
        assert set(new) <= free and len(set(new)) == len(new)
        if short <= 0:
            assert new == []
        else:
            want = max(short, len(old)) if a.growth == "double" else short
            assert len(new) in (next_pow2(want), next_pow2(short), short)
            assert len(new) >= short
        self.tokens[rid] = num_tokens

    allocate = allocate_rule(max_fraction=1.2)
    grow = grow_rule(max_extra=7)

    @invariant()
    def stats_consistent(self) -> None:
        a = self.alloc
        s = a.stats()
        held = sum(len(t) for t in a.owners().values())
        assert (s.used_pages, s.free_pages, s.used_slots) == (held, a.num_free_pages, sum(self.tokens.values()))
        assert held + a.num_free_pages == a.num_usable_pages
        assert PageAllocator.stats(a) == s
        for rid, table in a.owners().items():
            assert sum(1 << k for _, k in a.blocks_of(rid)) == len(table) >= pages_for(self.tokens[rid], a.page_size)

    def assert_all_free(self) -> None:
        a = self.alloc
        assert a.free_blocks() == initial_blocks(a.num_pages), "freeing everything must merge every buddy back"


TestBuddyStateMachine = BuddyMachine.TestCase
TestBuddyStateMachine.settings = machine_settings(max_examples=150)


# --- examples -------------------------------------------------------------------------------------


def test_registered_with_options() -> None:
    assert ALLOCATORS.get("buddy") is BuddyAllocator
    with pytest.raises(ConfigError, match="growth"):
        make_allocator("buddy", num_pages=9, page_size=1, growth="triple")


@pytest.mark.parametrize("num_pages", [2, 3, 8, 9, 17, 23, 100])
def test_initial_blocks_cover_a_pool_of_any_size(num_pages: int) -> None:
    a = make_allocator("buddy", num_pages=num_pages, page_size=1)
    assert isinstance(a, BuddyAllocator)
    assert a.free_blocks() == initial_blocks(num_pages)
    assert a.num_free_pages == num_pages - 1


def test_split_then_merge() -> None:
    a = make_allocator("buddy", num_pages=17, page_size=1)  # one block of 16 pages
    assert isinstance(a, BuddyAllocator)
    assert a.free_blocks() == [(1, 4)]
    assert a.allocate("x", 3)  # a 4-page block: 16 -> 8 + 4 + (4)
    assert a.page_table("x") == [1, 2, 3, 4]
    assert a.free_blocks() == [(5, 2), (9, 3)]
    assert a.allocate("y", 1) and a.page_table("y") == [5]
    assert a.free_blocks() == [(6, 0), (7, 1), (9, 3)]
    s = a.stats()
    assert (s.used_pages, s.allocated_slots, s.used_slots) == (5, 5, 4)
    a.free("x")
    assert a.free_blocks() == [(1, 2), (6, 0), (7, 1), (9, 3)]  # x's buddy (y's block) is taken: no merge
    a.free("y")
    assert a.free_blocks() == [(1, 4)]  # everything merges back


def test_double_growth_doubles_the_holding() -> None:
    a = make_allocator("buddy", num_pages=65, page_size=1, growth="double")
    sizes = []
    for tokens in range(1, 40):
        assert a.allocate("x", tokens)
        sizes.append(len(a.page_table("x")))
    assert sorted(set(sizes)) == [1, 2, 4, 8, 16, 32, 64]
    assert isinstance(a, BuddyAllocator) and [k for _, k in a.blocks_of("x")] == [0, 0, 1, 2, 3, 4, 5]


def test_exact_growth_takes_the_shortfall_rounded_up() -> None:
    a = make_allocator("buddy", num_pages=65, page_size=4, growth="exact")
    assert a.allocate("x", 20)  # 5 pages -> one 8-page block
    assert len(a.page_table("x")) == 8
    assert a.allocate("x", 33)  # 9 pages: short 1 -> one page
    assert len(a.page_table("x")) == 9
    assert a.allocate("x", 37 + 3 * 4)  # 13 pages: short 4 -> a 4-page block
    assert len(a.page_table("x")) == 13


def test_fragmented_pool_falls_back_to_smaller_blocks() -> None:
    a = make_allocator("buddy", num_pages=9, page_size=1, growth="double")  # one 8-page block
    for rid in "abcdefgh":
        assert a.allocate(rid, 1)
    for rid in "aceg":  # free every other page: 4 free pages, no two buddies
        a.free(rid)
    assert a.num_free_pages == 4 and isinstance(a, BuddyAllocator) and a.largest_free_block == 1
    assert not a.can_allocate("x", 2) and not a.allocate("x", 2)  # external fragmentation
    assert a.allocate("b", 2)  # b holds 1, needs 1 more: want 1 page
    assert len(a.page_table("b")) == 2


@given(num_pages=st.integers(2, 300), data=st.data())
@settings(max_examples=60, deadline=None)
def test_an_empty_pool_fits_any_request_it_fits_by_size(num_pages: int, data: st.DataObject) -> None:
    a = make_allocator("buddy", num_pages=num_pages, page_size=1)
    n = data.draw(st.integers(1, num_pages - 1))
    assert a.allocate("x", n)
    assert len(a.page_table("x")) >= n
    a.check_invariants()


def test_binary_orders() -> None:
    assert binary_orders(13) == [3, 2, 0]
    assert binary_orders(1) == [0] and binary_orders(0) == []
