"""Synthetic open-loop workloads: Poisson or gamma arrivals with sampled token lengths."""

from __future__ import annotations

import numpy as np

from sim.workloads.lengths import LengthDistribution, as_length_distribution
from sim.workloads.request import Workload


def _streams(seed: int) -> tuple[np.random.Generator, np.random.Generator, np.random.Generator]:
    """Independent generators for arrivals, prompts and outputs, so changing one leaves the others."""
    arrivals, prompts, outputs = np.random.SeedSequence(seed).spawn(3)
    return np.random.default_rng(arrivals), np.random.default_rng(prompts), np.random.default_rng(outputs)


def _check(rate: float, num_requests: int) -> None:
    if not rate > 0:
        raise ValueError(f"rate must be > 0 requests/s, got {rate}")
    if num_requests < 1:
        raise ValueError(f"num_requests must be >= 1, got {num_requests}")


def _build(
    gaps: np.ndarray,
    prompt_len: int | LengthDistribution,
    output_len: int | LengthDistribution,
    prompt_rng: np.random.Generator,
    output_rng: np.random.Generator,
    name: str,
) -> Workload:
    n = len(gaps)
    return Workload(
        arrival_times=np.cumsum(gaps),
        prompt_lens=as_length_distribution(prompt_len).sample(prompt_rng, n),
        output_lens=as_length_distribution(output_len).sample(output_rng, n),
        name=name,
    )


def poisson_workload(
    rate: float,
    num_requests: int,
    prompt_len: int | LengthDistribution,
    output_len: int | LengthDistribution,
    seed: int = 0,
) -> Workload:
    """``num_requests`` requests with exponential inter-arrival times of mean ``1 / rate`` seconds."""
    _check(rate, num_requests)
    arrival_rng, prompt_rng, output_rng = _streams(seed)
    gaps = arrival_rng.exponential(1.0 / rate, size=num_requests)
    return _build(gaps, prompt_len, output_len, prompt_rng, output_rng, f"poisson(rate={rate})")


def gamma_workload(
    rate: float,
    cv: float,
    num_requests: int,
    prompt_len: int | LengthDistribution,
    output_len: int | LengthDistribution,
    seed: int = 0,
) -> Workload:
    """Gamma inter-arrival times with mean ``1 / rate`` and coefficient of variation ``cv``.

    ``cv == 1`` is Poisson; larger ``cv`` gives burstier arrivals (shape ``1 / cv**2``).
    """
    _check(rate, num_requests)
    if not cv > 0:
        raise ValueError(f"cv must be > 0, got {cv}")
    arrival_rng, prompt_rng, output_rng = _streams(seed)
    shape = 1.0 / cv**2
    gaps = arrival_rng.gamma(shape, 1.0 / (rate * shape), size=num_requests)
    return _build(gaps, prompt_len, output_len, prompt_rng, output_rng, f"gamma(rate={rate},cv={cv})")
