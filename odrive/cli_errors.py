"""One behaviour for every command line (``odrive``, ``python -m sim``, ``python -m sim.cluster``, ``python -m
sim.sweep``, the experiments): a user error is ONE line on stderr and exit status 2; a run that produced nothing
(``RunError``, e.g. every request rejected) one line and status 1; a traceback only with ``--debug`` (or
``ODRIVE_DEBUG=1``).

User errors are ``odrive.errors.UserError`` (``ConfigError``, unknown policy names, ``TraceFormatError``,
``WorkloadSpecError``...), a missing or unreadable file, bad flags (``CLIParser``), and any ``ValueError`` raised
while a command reads what the user gave it (``with user_input("workload"):``).
"""

from __future__ import annotations

import argparse
import functools
import os
import sys
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any, NoReturn

from odrive.errors import RunError, UserError

USAGE_ERROR = 2
RUN_FAILED = 1
FILE_ERRORS = (FileNotFoundError, IsADirectoryError, NotADirectoryError, PermissionError)


class InputError(UserError, ValueError):
    """A ValueError raised while reading the user's input (see ``user_input``); the original is its cause."""


class CLIParser(argparse.ArgumentParser):
    """argparse whose usage errors are one line (``PROG: error: MESSAGE (see --help)``, exit 2), with ``--debug``."""

    def __init__(self, *args: object, **kwargs: object) -> None:
        super().__init__(*args, **kwargs)  # type: ignore[arg-type]
        self.add_argument("--debug", action="store_true", help="show the full traceback of an error")

    def error(self, message: str) -> NoReturn:
        self.exit(USAGE_ERROR, f"{self.prog}: error: {message} (see --help)\n")


def positive_int(text: str) -> int:
    """argparse ``type=`` for a count that must be >= 1 (a bad value is the parser's one-line usage error)."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number >= 1, got {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be >= 1, got {value}")
    return value


def one_line(exc: BaseException) -> str:
    """The exception's message on one line (a KeyError's without its quotes)."""
    text = str(exc.args[0]) if isinstance(exc, KeyError) and exc.args else str(exc)
    return " ".join(text.split()) or type(exc).__name__


@contextmanager
def user_input(what: str) -> Iterator[None]:
    """A ValueError raised inside is the user's (their file, spec or value): re-raised as ``InputError``,
    ``what: message``."""
    try:
        yield
    except UserError:
        raise
    except ValueError as exc:
        raise InputError(f"{what}: {one_line(exc)}") from exc


def check_served(requests: Any) -> None:
    """Raise ``RunError`` if a run served nothing: every request of the ``requests`` frame (one row per request, with
    ``status``, ``finish_reason`` and ``message`` columns) ended without finishing. The message gives the most
    common reason."""
    if len(requests) == 0 or (requests["status"] == "finished").any():
        return
    counts = requests["message"].fillna("").replace("", "(no message)").value_counts()
    reason, count = counts.index[0], int(counts.iloc[0])
    ended = "rejected" if (requests["finish_reason"] == "rejected").all() else "rejected or aborted"
    raise RunError(f"all {len(requests):,} requests were {ended}, none finished: {reason} ({count:,} of them)")


@contextmanager
def quiet_empty_figure() -> Iterator[None]:
    """Drawing the figure of a run in which nothing finished: matplotlib's warnings about empty legends are noise
    next to the one-line reason the command prints."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="No artists with labels found")
        yield


def debug_requested(argv: list[str] | None) -> bool:
    args = sys.argv[1:] if argv is None else argv
    return "--debug" in args or os.environ.get("ODRIVE_DEBUG", "") not in ("", "0")


def cli_main(prog: str) -> Callable[[Callable[[list[str] | None], int]], Callable[[list[str] | None], int]]:
    """Decorate a ``main(argv) -> int``: user errors and failed runs become one line on stderr and their status."""

    def decorate(main: Callable[[list[str] | None], int]) -> Callable[[list[str] | None], int]:
        @functools.wraps(main)
        def run(argv: list[str] | None = None) -> int:
            try:
                return main(argv)
            except RunError as exc:
                return _report(prog, exc, RUN_FAILED, argv)
            except (UserError, *FILE_ERRORS) as exc:
                return _report(prog, exc, USAGE_ERROR, argv)
            except KeyboardInterrupt:
                print(f"{prog}: interrupted", file=sys.stderr)
                return 130

        return run

    return decorate


def _report(prog: str, exc: BaseException, status: int, argv: list[str] | None) -> int:
    if debug_requested(argv):
        raise exc
    print(f"{prog}: error: {one_line(exc)}", file=sys.stderr)
    return status
