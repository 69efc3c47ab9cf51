"""The Router interface: pick a replica for each arriving request, registered by name."""

from __future__ import annotations

from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Protocol

import numpy as np

from odrive.core.registry import Registry


@dataclass(frozen=True, eq=False)
class Arrivals:
    """What routers may know about the workload's requests, as parallel arrays in arrival order.

    ``prefix_keys`` holds a prefix/group id per request (e.g. a hash of the first prompt tokens) or is
    None when the workload carries neither token ids nor group ids. Output lengths are not given: a
    router must not know how long a request will run.
    """

    times: np.ndarray
    prompt_lens: np.ndarray
    prefix_keys: np.ndarray | None = None

    def __len__(self) -> int:
        return len(self.times)


class ReplicaViews(Protocol):
    """The cluster state a state-dependent router reads at an arrival (time-exact, see ``ReplicaSet``)."""

    @property
    def num_replicas(self) -> int: ...

    def outstanding(self, now: float) -> list[int]:
        """Per replica: requests routed to it and not finished by ``now``."""

    def kv_load(self) -> list[float]:
        """Per replica: fraction of its usable KV pages in use."""


@dataclass
class Router(ABC):
    """Chooses a replica for each arrival.

    State-independent routers return the whole assignment from :meth:`plan`, so every replica knows its
    own arrivals in advance (exact fast-forward horizons, no arrival events). State-dependent routers
    return None there and decide in :meth:`route` at arrival time; :meth:`first_possible` then bounds how
    far a replica may fast-forward: the default (the next unrouted arrival) is always correct.
    """

    num_replicas: int
    seed: int = 0
    notes: list[str] = field(default_factory=list, init=False)
    # True: the router reads ``Arrivals.prefix_keys`` (the cluster derives them from prompt token ids if not given).
    uses_prefix_keys = False

    def __post_init__(self) -> None:
        if self.num_replicas < 1:
            raise ValueError(f"a cluster needs at least one replica, got {self.num_replicas}")

    def prepare(self, arrivals: Arrivals) -> None:
        """Called once with the whole workload before the run (pre-draw randomness, hash keys, ...)."""
        return None

    def plan(self) -> np.ndarray | None:
        """Replica index per request if decisions ignore replica state, else None."""
        return None

    @abstractmethod
    def route(self, index: int, views: ReplicaViews, now: float) -> int:
        """Replica for request ``index`` arriving at ``now``."""

    def first_possible(self, replica: int, next_index: int, views: ReplicaViews, now: float) -> int:
        """Index of the first arrival at or after ``next_index`` (the next unrouted one) that could be
        routed to ``replica``, assuming ``replica``'s outstanding count stays as it is now. Returning
        ``next_index`` is always correct (the cluster's next arrival is the horizon)."""
        return next_index


ROUTERS: Registry[type[Router]] = Registry("router")


def make_router(name: str, num_replicas: int, seed: int = 0) -> Router:
    """Build router ``name`` for ``num_replicas`` replicas."""
    return ROUTERS.get(name)(num_replicas, seed)


def replicas_of(assignment: np.ndarray, num_replicas: int) -> list[np.ndarray]:
    """Per replica, the sorted request indices an assignment gives it."""
    order = np.argsort(assignment, kind="stable")
    bounds = np.searchsorted(assignment[order], np.arange(num_replicas + 1))
    return [order[bounds[r] : bounds[r + 1]] for r in range(num_replicas)]


def check_choice(choice: int, num_replicas: int, router: str) -> int:
    if not 0 <= choice < num_replicas:
        raise ValueError(f"router {router!r} chose replica {choice}; valid: 0..{num_replicas - 1}")
    return choice


def argmin_from(values: Sequence[float], start: int) -> int:
    """Index of the smallest value; ties go to the first at or after ``start`` (cyclically)."""
    n = len(values)
    best, best_i = values[start % n], start % n
    for k in range(1, n):
        i = (start + k) % n
        if values[i] < best:
            best, best_i = values[i], i
    return best_i
