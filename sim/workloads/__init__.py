"""Workloads: requests to replay, from traces or synthetic arrival processes."""

from sim.workloads.lengths import Empirical, Fixed, LengthDistribution, LogNormal, Uniform
from sim.workloads.parse import (
    WORKLOAD_KINDS,
    WorkloadSpecError,
    parse_length,
    parse_workload,
    register_workload_kind,
)
from sim.workloads.request import RequestSpec, Workload
from sim.workloads.shared_prefix import SegmentPrompts, multi_turn_workload, shared_prefix_workload
from sim.workloads.synthetic import gamma_workload, poisson_workload
from sim.workloads.trace import TraceFormatError, load_trace

__all__ = [
    "WORKLOAD_KINDS",
    "Empirical",
    "Fixed",
    "LengthDistribution",
    "LogNormal",
    "RequestSpec",
    "SegmentPrompts",
    "TraceFormatError",
    "Uniform",
    "Workload",
    "WorkloadSpecError",
    "gamma_workload",
    "load_trace",
    "multi_turn_workload",
    "parse_length",
    "parse_workload",
    "poisson_workload",
    "register_workload_kind",
    "shared_prefix_workload",
]
