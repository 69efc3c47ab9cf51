"""Shared parts of the allocator state machines: the model, the allocate / grow / free rules, the teardown.

Not a test module: ``tests/test_allocator_{free_list,buddy,contiguous}.py`` subclass ``AllocatorMachine``,
each with its own ``setup`` (an ``@initialize`` rule), ``do_allocate`` (one allocate checked against the
model) and invariants, and take the ``allocate`` and ``grow`` rules from ``allocate_rule`` / ``grow_rule``.
"""

from __future__ import annotations

from typing import Any

from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from odrive.allocators import PageAllocator

REQUEST_IDS = ("a", "b", "c", "d", "e")


def pages_for(num_tokens: int, page_size: int) -> int:
    return -(-num_tokens // page_size)


def machine_settings(max_examples: int) -> settings:
    return settings(
        max_examples=max_examples, stateful_step_count=40, deadline=None, suppress_health_check=[HealthCheck.too_slow]
    )


def allocate_rule(max_fraction: float) -> Any:
    """The ``allocate`` rule: any size, from 0 to ``max_fraction`` times the pool (more than all of it if > 1)."""

    @rule(rid=st.sampled_from(REQUEST_IDS), frac=st.floats(0.0, max_fraction))
    def allocate(self: AllocatorMachine, rid: str, frac: float) -> None:
        self.do_allocate(rid, int(frac * self.alloc.num_usable_pages * self.alloc.page_size))

    return allocate


def grow_rule(max_extra: int) -> Any:
    """The ``grow`` rule: a request already allocated asks for 0 to ``max_extra`` more tokens."""

    @precondition(lambda self: bool(self.tokens))
    @rule(data=st.data(), extra=st.integers(0, max_extra))
    def grow(self: AllocatorMachine, data: st.DataObject, extra: int) -> None:
        rid = data.draw(st.sampled_from(sorted(self.tokens)))
        self.do_allocate(rid, self.tokens[rid] + extra)

    return grow


class AllocatorMachine(RuleBasedStateMachine):
    """Drives ``self.alloc`` against the model ``self.tokens`` (request id -> tokens allocated)."""

    alloc: PageAllocator
    tokens: dict[str, int]
    # The allocator lists its free pages in ascending order (checked exactly after a free).
    free_ids_sorted = False

    def do_allocate(self, rid: str, num_tokens: int) -> None:
        raise NotImplementedError

    def free_layout(self) -> object:
        """How the free pages are arranged (blocks, runs), where the allocator keeps that; part of ``snapshot``."""
        return None

    def forget(self, rid: str) -> None:
        """Drop ``rid`` from the subclass's own model once it is freed."""

    def snapshot(self) -> tuple:
        a = self.alloc
        return ({r: list(t) for r, t in a.owners().items()}, a.free_page_ids(), self.free_layout(),
                {r: a.num_tokens(r) for r in REQUEST_IDS}, a.stats())  # fmt: skip

    @rule(rid=st.sampled_from(REQUEST_IDS))
    def free(self, rid: str) -> None:
        a = self.alloc
        table, free_before = list(a.page_table(rid)), a.free_page_ids()
        a.free(rid)
        assert a.page_table(rid) == []
        assert a.num_tokens(rid) == 0
        assert rid not in a.owners()
        free_after = a.free_page_ids() if self.free_ids_sorted else sorted(a.free_page_ids())
        assert free_after == sorted(free_before + table)
        self.tokens.pop(rid, None)
        self.forget(rid)

    @invariant()
    def checks_pass(self) -> None:
        self.alloc.check_invariants()

    def free_all(self) -> None:
        a = self.alloc
        for rid in list(a.owners()):
            a.free(rid)

    def assert_all_free(self) -> None:
        """Called once everything is freed."""
        a = self.alloc
        assert sorted(a.free_page_ids()) == list(range(1, a.num_pages)), "freeing everything lost a page"

    def teardown(self) -> None:
        self.free_all()
        self.assert_all_free()
        self.alloc.check_invariants()
