"""Name → factory registries, so experiments pick policies with a string or a CLI flag."""

from __future__ import annotations

import inspect
from collections.abc import Callable, Iterator, Mapping
from typing import Any, Generic, TypeVar

from odrive.errors import ConfigError, UnknownNameError

T = TypeVar("T")


class Registry(Generic[T]):
    """A named collection of factories (classes or functions) of one kind."""

    def __init__(self, kind: str) -> None:
        self.kind = kind
        self._entries: dict[str, T] = {}

    def register(self, name: str) -> Callable[[T], T]:
        """Decorator: ``@SCHEDULERS.register("fcfs")``."""

        def decorate(obj: T) -> T:
            self.add(name, obj)
            return obj

        return decorate

    def add(self, name: str, obj: T, *, overwrite: bool = False) -> None:
        """Register ``obj``; re-registering an equal object is a no-op, a different one needs ``overwrite``."""
        if name in self._entries and self._entries[name] != obj and not overwrite:
            raise ValueError(f"{self.kind} {name!r} is already registered")
        self._entries[name] = obj

    def remove(self, name: str) -> None:
        """Unregister ``name`` (e.g. a policy a test or a notebook registered for a while)."""
        self.get(name)  # an unknown name is an UnknownNameError that lists the registered ones
        del self._entries[name]

    def get(self, name: str) -> T:
        try:
            return self._entries[name]
        except KeyError:
            known = ", ".join(sorted(self._entries)) or "(none)"
            raise UnknownNameError(f"unknown {self.kind} {name!r}; registered: {known}") from None

    def create(self, name: str, *args: Any, options: Mapping[str, Any] | None = None, **fixed: Any) -> Any:
        """``get(name)(*args, **fixed, **options)``, where ``options`` are the user's (``--allocator-arg``...): a name
        the factory does not take, or a value it refuses, is a ConfigError naming the policy and its options."""
        factory: Any = self.get(name)
        options = dict(options or {})
        accepted = _keyword_names(factory, skip=len(args), fixed=fixed)
        unknown = sorted(set(options) - accepted) if accepted is not None else []
        if unknown:
            known = ", ".join(sorted(accepted or ())) or "none"
            raise ConfigError(f"{self.kind} {name!r} has no option {', '.join(unknown)}; its options: {known}")
        try:
            return factory(*args, **fixed, **options)
        except ConfigError:
            raise
        except (TypeError, ValueError) as err:
            if not options:
                raise
            raise ConfigError(f"{self.kind} {name!r} rejected options {options}: {err}") from err

    def __getitem__(self, name: str) -> T:
        return self.get(name)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def __contains__(self, name: object) -> bool:
        return name in self._entries

    def __iter__(self) -> Iterator[str]:
        return iter(self.names())


def _keyword_names(factory: Callable[..., Any], skip: int, fixed: Mapping[str, Any]) -> set[str] | None:
    """Keyword options ``factory`` takes besides its first ``skip`` positional and its ``fixed`` arguments; None if
    it takes ``**kwargs`` (or has no readable signature), so any name may be right."""
    try:
        params = list(inspect.signature(factory).parameters.values())
    except (TypeError, ValueError):
        return None
    if any(p.kind is p.VAR_KEYWORD for p in params):
        return None
    consumed = {p.name for p in params[:skip]} if skip else set()
    return {p.name for p in params if p.kind in (p.POSITIONAL_OR_KEYWORD, p.KEYWORD_ONLY)} - consumed - set(fixed)
