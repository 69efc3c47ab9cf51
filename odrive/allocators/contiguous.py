"""The pre-paging baseline (FasterTransformer, Orca): one contiguous reservation per request."""

from __future__ import annotations

from odrive.allocators.base import AllocatorStats, PageAllocator
from odrive.allocators.free_runs import FreeRuns
from odrive.allocators.registry import ALLOCATORS
from odrive.errors import ConfigError, InvariantViolation

RESERVATIONS = ("max", "pow2", "oracle")


def next_pow2(n: int) -> int:
    return 1 << max(0, n - 1).bit_length()


@ALLOCATORS.register("contiguous")
class ContiguousAllocator(PageAllocator):
    """At a request's first allocation of >= 1 token, reserve one contiguous run of pages, first-fit
    (lowest address) over the free runs; release returns it and coalesces neighbours. External
    fragmentation is therefore real: free pages may be plentiful and no run long enough.

    The reservation covers ``reservation``:

    - ``"max"``: ``reserve_tokens`` (a maximum sequence length; default 2048), like Orca.
    - ``"pow2"``: the request's final length (from ``reserve_hint``) rounded up to a power of two.
    - ``"oracle"``: exactly the request's final length (from ``reserve_hint``).

    Without a hint, ``pow2`` and ``oracle`` reserve like ``max``. A reservation is never smaller than
    the first allocation and never larger than the pool. Its page table is the whole run, so
    ``stats().internal_fragmentation`` counts reserved slots holding no token (vLLM's finding).
    Growing past the run succeeds only if the pages right after it are free (the run is extended);
    otherwise ``allocate`` returns False and nothing changes.
    """

    supports_decode_runs = False  # growth past a reservation needs adjacent pages, not any free page

    def __init__(self, num_pages: int, page_size: int, reserve_tokens: int = 2048, reservation: str = "max") -> None:
        super().__init__(num_pages, page_size)
        if reservation not in RESERVATIONS:
            raise ConfigError(f"reservation must be one of {RESERVATIONS}, got {reservation!r}")
        if reserve_tokens < 1:
            raise ConfigError(f"reserve_tokens must be >= 1, got {reserve_tokens}")
        self.reserve_tokens = reserve_tokens
        self.reservation = reservation
        self._runs = FreeRuns(1, num_pages - 1)
        self._hints: dict[str, int] = {}
        self._reserved_pages = 0
        self._used_slots = 0

    # --- sizing ---------------------------------------------------------------------------------------
    def reserve_hint(self, request_id: str, final_tokens: int) -> None:
        self._hints[request_id] = final_tokens

    def reservation_pages(self, request_id: str, num_tokens: int) -> int:
        """Pages a first allocation of ``num_tokens`` tokens reserves for ``request_id``."""
        hint = self._hints.get(request_id)
        target = self.reserve_tokens
        if hint is not None and self.reservation == "oracle":
            target = hint
        elif hint is not None and self.reservation == "pow2":
            target = next_pow2(hint)
        need = self.pages_for(num_tokens)
        return max(need, min(self.pages_for(target), self.num_usable_pages))

    # --- the interface --------------------------------------------------------------------------------
    def allocate(self, request_id: str, num_tokens: int) -> bool:
        if num_tokens < 0:
            raise ValueError(f"request {request_id}: num_tokens must be >= 0, got {num_tokens}")
        table = self._tables.get(request_id)
        need = self.pages_for(num_tokens)
        if not table:
            if need:
                size = self.reservation_pages(request_id, num_tokens)
                start = self._runs.find_first_fit(size)
                if start is None:
                    return False
                self._runs.take(start, size)
                table = list(range(start, start + size))
                self._reserved_pages += size
            else:
                table = []
            self._tables[request_id] = table
        elif need > len(table):
            extra, end = need - len(table), table[-1] + 1
            if self._runs.length_at(end) < extra:
                return False
            self._runs.take(end, extra)
            table.extend(range(end, end + extra))
            self._reserved_pages += extra
        self._used_slots += num_tokens - self._tokens.get(request_id, 0)
        self._tokens[request_id] = num_tokens
        return True

    def can_allocate(self, request_id: str, num_tokens: int) -> bool:
        table = self._tables.get(request_id)
        need = self.pages_for(num_tokens)
        if not table:
            return not need or self._runs.find_first_fit(self.reservation_pages(request_id, num_tokens)) is not None
        return need <= len(table) or self._runs.length_at(table[-1] + 1) >= need - len(table)

    def free(self, request_id: str) -> None:
        self._hints.pop(request_id, None)
        table = self._tables.pop(request_id, None)
        self._used_slots -= self._tokens.pop(request_id, 0)
        if table:
            self._runs.give(table[0], len(table))
            self._reserved_pages -= len(table)

    @property
    def num_free_pages(self) -> int:
        return self._runs.num_free

    def free_page_ids(self) -> list[int]:
        return [p for start, length in self._runs.runs() for p in range(start, start + length)]

    def stats(self) -> AllocatorStats:
        return AllocatorStats(
            num_pages=self.num_usable_pages,
            used_pages=self._reserved_pages,
            free_pages=self._runs.num_free,
            allocated_slots=self._reserved_pages * self.page_size,
            used_slots=self._used_slots,
        )

    # --- fragmentation --------------------------------------------------------------------------------
    @property
    def largest_free_run(self) -> int:
        return self._runs.largest

    @property
    def external_fragmentation(self) -> float:
        """Fraction of free pages outside the largest free run (0 when none or all are in one run)."""
        free = self._runs.num_free
        return 1.0 - self._runs.largest / free if free else 0.0

    def free_runs(self) -> list[tuple[int, int]]:
        return self._runs.runs()

    def check_invariants(self) -> None:
        super().check_invariants()
        for rid, table in self._tables.items():
            if table and table != list(range(table[0], table[0] + len(table))):
                raise InvariantViolation("reservation-contiguous", f"request {rid} holds a non-contiguous table")
        runs = self._runs.runs()
        for (s1, n1), (s2, _) in zip(runs, runs[1:], strict=False):
            if s1 + n1 >= s2:
                raise InvariantViolation("free-runs-coalesced", f"free runs at {s1} (+{n1}) and {s2} touch")
        if self._reserved_pages != sum(map(len, self._tables.values())) or self._used_slots != sum(
            self._tokens.values()
        ):
            raise InvariantViolation("stats-counters", "reserved-page or used-slot counter out of sync")
