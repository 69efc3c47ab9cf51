"""Token-length distributions for synthetic workloads; every sample is an int64 >= 1."""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from dataclasses import dataclass, field

import numpy as np


class LengthDistribution(ABC):
    """Draws token counts."""

    @abstractmethod
    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        """``n`` lengths as an int64 array, each >= 1."""


@dataclass(frozen=True)
class Fixed(LengthDistribution):
    n: int

    def __post_init__(self) -> None:
        if self.n < 1:
            raise ValueError(f"Fixed length must be >= 1, got {self.n}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return np.full(n, self.n, dtype=np.int64)


@dataclass(frozen=True)
class Uniform(LengthDistribution):
    """Integers uniform on ``[lo, hi]``, both ends included."""

    lo: int
    hi: int

    def __post_init__(self) -> None:
        if not 1 <= self.lo <= self.hi:
            raise ValueError(f"Uniform needs 1 <= lo <= hi, got lo={self.lo}, hi={self.hi}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.integers(self.lo, self.hi, size=n, endpoint=True, dtype=np.int64)


@dataclass(frozen=True)
class LogNormal(LengthDistribution):
    """Log-normal with arithmetic mean ``mean`` and log-space std ``sigma``, rounded, clipped to [lo, hi]."""

    mean: float
    sigma: float
    lo: int = 1
    hi: int | None = None

    def __post_init__(self) -> None:
        if not self.mean > 0 or not self.sigma >= 0:
            raise ValueError(f"LogNormal needs mean > 0 and sigma >= 0, got mean={self.mean}, sigma={self.sigma}")
        if self.lo < 1 or (self.hi is not None and self.hi < self.lo):
            raise ValueError(f"LogNormal needs 1 <= lo <= hi, got lo={self.lo}, hi={self.hi}")

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        mu = math.log(self.mean) - self.sigma**2 / 2
        values = np.rint(rng.lognormal(mu, self.sigma, size=n))
        return np.clip(values, self.lo, self.hi).astype(np.int64)


@dataclass(frozen=True, eq=False)
class Empirical(LengthDistribution):
    """Resamples (with replacement) from observed lengths, e.g. a trace column."""

    values: np.ndarray = field(repr=False)

    def __post_init__(self) -> None:
        values = np.asarray(self.values, dtype=np.int64).ravel()
        if len(values) == 0 or (values < 1).any():
            raise ValueError("Empirical needs a non-empty set of lengths, all >= 1")
        object.__setattr__(self, "values", values)

    def sample(self, rng: np.random.Generator, n: int) -> np.ndarray:
        return rng.choice(self.values, size=n, replace=True)

    def __repr__(self) -> str:
        return f"Empirical(n={len(self.values)}, mean={self.values.mean():.1f})"


def as_length_distribution(value: int | LengthDistribution) -> LengthDistribution:
    """Plain ints mean :class:`Fixed`."""
    if isinstance(value, LengthDistribution):
        return value
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return Fixed(int(value))
    raise TypeError(f"expected an int or a LengthDistribution, got {value!r}")
