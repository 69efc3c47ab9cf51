"""Errors raised by the engine core."""


class InvariantViolation(AssertionError):
    """A scheduler or allocator broke one of the engine's invariants (named in ``invariant``)."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"invariant {invariant!r} violated: {detail}")
        self.invariant = invariant
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across sweep worker processes
        return (type(self), (self.invariant, self.detail))


class ConfigError(ValueError):
    """An engine configuration that cannot work."""
