"""Errors raised by the engine core, and the two kinds every command line reports as one line."""


class UserError(Exception):
    """Marker: the user's input is wrong (a flag, a file, a spec). Command lines print the message as one line and
    exit 2 (see ``odrive.cli_errors``); ``--debug`` shows the traceback."""


class RunError(Exception):
    """Marker: a run finished but produced nothing to report (e.g. every request was rejected). Command lines print
    the message as one line and exit 1."""


class InvariantViolation(AssertionError):
    """A scheduler or allocator broke one of the engine's invariants (named in ``invariant``)."""

    def __init__(self, invariant: str, detail: str) -> None:
        super().__init__(f"invariant {invariant!r} violated: {detail}")
        self.invariant = invariant
        self.detail = detail

    def __reduce__(self) -> tuple[type, tuple[str, str]]:  # picklable across sweep worker processes
        return (type(self), (self.invariant, self.detail))


class ConfigError(UserError, ValueError):
    """An engine configuration that cannot work."""


class UnknownNameError(ConfigError, KeyError):
    """A policy, router or model name that is not registered (the message lists the registered ones). A KeyError
    too, so ``except KeyError`` around a registry lookup keeps working."""

    def __str__(self) -> str:  # KeyError would quote the message
        return str(self.args[0]) if self.args else ""


class ModelSourceError(UserError, ValueError):
    """A model file or folder this project cannot load (the message says why)."""


class ModelNotFoundError(UserError, FileNotFoundError):
    """A model reference that names nothing: no such path, an unknown name, or a package that is not installed
    (the message says what was tried and the ``pip install`` that fixes it)."""
