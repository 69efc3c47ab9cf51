"""Per-step scheduling decisions of an engine run, as a table both the simulator and the real engine fill.

``record_outcomes`` listens to one engine's steps (``Engine.outcome_listeners``) so each ``StepOutcome`` — with
its ``StepPlan`` — is kept; ``plan_table`` turns them into comparable rows keyed by
workload index instead of engine-specific request ids.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping

import pandas as pd

from odrive.core.engine import Engine, StepOutcome

PLAN_COLUMNS = (
    "step",
    "num_steps",
    "num_prefill_seqs",
    "num_decode_seqs",
    "scheduled",
    "preempted",
    "swapped_out",
    "swapped_in",
    "pages_used",
    "pages_used_max",
)
# Per request, what a run decided for it (the simulator must decide alike): tokens made, how often it was preempted
# and how many prompt tokens the prefix cache served at its (last) admission.
OUTCOME_COLUMNS = ("num_output_tokens", "num_preemptions", "num_cached_tokens")


def record_outcomes(engine: Engine) -> list[StepOutcome]:
    """Start keeping every non-empty ``StepOutcome`` of ``engine``; returns the (growing) list
    (:func:`stop_recording` ends it)."""
    outcomes: list[StepOutcome] = []
    engine.outcome_listeners.append(outcomes.append)
    return outcomes


def stop_recording(engine: Engine, outcomes: list[StepOutcome]) -> None:
    """Stop filling ``outcomes`` (a list :func:`record_outcomes` returned for ``engine``)."""
    engine.outcome_listeners.remove(outcomes.append)


def sim_request_index(request_id: str) -> int:
    """The simulator names workload row ``i`` ``r{i}``."""
    return int(request_id[1:])


def plan_table(
    outcomes: list[StepOutcome], steps: pd.DataFrame, index_of: Mapping[str, int] | Callable[[str], int]
) -> pd.DataFrame:
    """One row per step: who was scheduled for how many tokens (``"i:n;..."`` in plan order), who was preempted,
    whose K/V were swapped out to the host or back in (``"i:pages;..."``), and KV pages in use during the step (from
    the engine's own step metrics, ``steps`` rows in step order)."""
    if len(outcomes) != len(steps):
        raise ValueError(f"{len(outcomes)} outcomes but {len(steps)} step rows (record_steps must be on)")
    idx = index_of if callable(index_of) else index_of.__getitem__
    rows = []
    for k, (o, (_, s)) in enumerate(zip(outcomes, steps.iterrows(), strict=True)):
        rows.append((
            k, o.num_steps, int(s["num_prefill_seqs"]), int(s["num_decode_seqs"]),
            ";".join(f"{idx(r)}:{n}" for r, n in o.plan.num_scheduled_tokens.items()),
            ";".join(str(idx(r)) for r in o.plan.preempted),
            ";".join(f"{idx(r)}:{len(p)}" for r, p in o.plan.swap_out.items()),
            ";".join(f"{idx(r)}:{len(p)}" for r, p in o.plan.swap_in.items()),
            float(s["pages_used"]), int(s["pages_used_max"]),
        ))  # fmt: skip
    return pd.DataFrame(rows, columns=list(PLAN_COLUMNS))


def compare_plans(real: pd.DataFrame, sim: pd.DataFrame) -> pd.DataFrame:
    """Rows where the two plan tables differ (empty when every step matches exactly)."""
    n = max(len(real), len(sim))
    cols = [c for c in PLAN_COLUMNS if c not in ("step", "num_steps")]
    return _differences(real.reindex(range(n))[cols], sim.reindex(range(n))[cols], "step")


def compare_outcomes(real: pd.DataFrame, sim: pd.DataFrame) -> pd.DataFrame:
    """Requests (rows of two request frames with ``index``) whose :data:`OUTCOME_COLUMNS` differ; empty when every
    request was served alike."""
    a, b = (f.set_index("index")[list(OUTCOME_COLUMNS)] for f in (real, sim))
    index = a.index.union(b.index)
    return _differences(a.reindex(index), b.reindex(index), "index")


def _differences(a: pd.DataFrame, b: pd.DataFrame, key: str) -> pd.DataFrame:
    """``a`` and ``b`` (same index and columns) side by side where a row differs, the index as column ``key``."""
    differ = ~((a == b) | (a.isna() & b.isna())).all(axis=1)
    out = pd.concat([a[differ].add_prefix("real_"), b[differ].add_prefix("sim_")], axis=1)
    out.insert(0, key, out.index)
    return out.reset_index(drop=True)
