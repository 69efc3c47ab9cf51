"""Free page runs of a contiguous address space: first-fit carving and coalescing on release."""

from __future__ import annotations

from bisect import bisect_left, insort


class FreeRuns:
    """Disjoint, maximal (coalesced) runs ``[start, start + length)`` of free pages, by address."""

    def __init__(self, start: int, length: int) -> None:
        self._starts: list[int] = []  # sorted
        self._length: dict[int, int] = {}  # start -> length
        self._start_of_end: dict[int, int] = {}  # end (exclusive) -> start
        self.num_free = 0
        if length > 0:
            self._add(start, length)

    def _add(self, start: int, length: int) -> None:
        insort(self._starts, start)
        self._length[start] = length
        self._start_of_end[start + length] = start
        self.num_free += length

    def _remove(self, start: int) -> int:
        length = self._length.pop(start)
        del self._starts[bisect_left(self._starts, start)]
        del self._start_of_end[start + length]
        self.num_free -= length
        return length

    def find_first_fit(self, length: int) -> int | None:
        """Lowest start of a run holding ``length`` pages, or None."""
        for start in self._starts:
            if self._length[start] >= length:
                return start
        return None

    def length_at(self, start: int) -> int:
        """Length of the free run beginning exactly at ``start`` (0 if none does)."""
        return self._length.get(start, 0)

    def take(self, start: int, length: int) -> None:
        """Carve ``length`` pages off the front of the run beginning at ``start``."""
        have = self._remove(start)
        if have < length:
            self._add(start, have)
            raise ValueError(f"free run at {start} holds {have} pages, {length} requested")
        if have > length:
            self._add(start + length, have - length)

    def give(self, start: int, length: int) -> None:
        """Return ``[start, start + length)``, merging with free neighbours."""
        if length <= 0:
            return
        left = self._start_of_end.get(start)
        if left is not None:
            length += self._remove(left)
            start = left
        if start + length in self._length:
            length += self._remove(start + length)
        self._add(start, length)

    def runs(self) -> list[tuple[int, int]]:
        """``(start, length)`` of each free run, by address."""
        return [(s, self._length[s]) for s in self._starts]

    @property
    def largest(self) -> int:
        return max(self._length.values(), default=0)

    def __len__(self) -> int:
        return len(self._starts)
