"""Capacity search: the highest arrival rate each cluster configuration serves within latency SLOs, ranked by
capacity per dollar (``python -m sim.search --grid GRID.yaml --slo ttft_p99=MS,tpot_p99=MS --cost ACCEL=$/h``)."""

from sim.search.capacity import Capacity, Evaluator, SearchSettings, at_rate, find_capacity, search_capacity
from sim.search.grid import expand_search_grid, load_search_grid
from sim.search.run import run_search
from sim.search.slo import SLO

__all__ = [
    "SLO",
    "Capacity",
    "Evaluator",
    "SearchSettings",
    "at_rate",
    "expand_search_grid",
    "find_capacity",
    "load_search_grid",
    "run_search",
    "search_capacity",
]
