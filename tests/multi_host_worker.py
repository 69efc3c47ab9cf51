"""One process of the two-process multi-host test (``tests/test_multi_host.py`` starts two of them).

Usage: ``python tests/multi_host_worker.py RANK PORT CHECKPOINT``, with ``XLA_FLAGS=
--xla_force_host_platform_device_count=2`` (two CPU devices per process) and ``JAX_PLATFORMS=cpu``. Follows
docs/multi_host.md: ``jax.distributed.initialize`` before any other JAX call, then every process runs the same
program. Prints one JSON line ``RESULT {...}`` with each case's greedy outputs and the dense reference's.
"""

from __future__ import annotations

import json
import os
import sys

import jax

PROMPTS = [
    [1, 17, 5, 99, 23, 64, 8, 8, 41, 77, 3, 120, 56],
    [1, 42, 42, 7, 90, 31, 12, 100, 66],
    [5, 4, 3, 2, 1, 9, 8, 7, 6, 5],
]
NUM_NEW = 10


def main() -> None:
    if os.environ.get("ODRIVE_MH_FAIL_RANK") == sys.argv[1]:  # tests/test_multi_host.py: a process that dies
        raise SystemExit("injected failure")
    rank, port, checkpoint = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
    jax.config.update("jax_cpu_collectives_implementation", "gloo")  # cross-process collectives on CPU
    jax.distributed.initialize(coordinator_address=f"localhost:{port}", num_processes=2, process_id=rank)

    from odrive import SamplingParams, load_model, vSurge
    from odrive.models import dense_greedy_generate

    model = load_model(checkpoint)  # for the dense reference, on this process's first device
    reference = [[int(t) for t in dense_greedy_generate(model.params, model.config, p, NUM_NEW)] for p in PROMPTS]
    greedy = SamplingParams(max_tokens=NUM_NEW, temperature=0.0, ignore_eos=True)
    limits = dict(max_prefill_length=16, prefill_lengths=[16], page_size=4, max_concurrent_prefill=1, max_length=32)
    cases = {
        # tensor parallel over all 4 devices of both processes; the checkpoint loads straight onto the shards
        "tp4_across_processes": dict(tensor_parallel_size=4, num_pages=24, max_concurrent_decodes=3),
        # each process its own engine on its own 2 devices (data parallel: a router would spread requests)
        "tp2_per_process": dict(tensor_parallel_size=2, num_pages=24, max_concurrent_decodes=3),
        # swap preemption with the KV pool sharded over both processes (host copies are all-gathered)
        # the page pool sized from measured memory: the processes must agree on it
        "tp4_measured_memory": dict(tensor_parallel_size=4, hbm_utilization=0.01, max_concurrent_decodes=3),
        "tp4_swap": dict(tensor_parallel_size=4, num_pages=12, max_concurrent_decodes=3, preemption_mode="swap",
                         swap_space_pages=8),
    }  # fmt: skip
    from odrive.parallel.memory import smallest_over_processes

    result: dict[str, object] = {"rank": rank, "process_count": jax.process_count(), "reference": reference,
                                 "smallest": smallest_over_processes((1000 - 7 * rank) * 2**20 + 5)}  # fmt: skip
    for name, options in cases.items():
        surge = vSurge.create_odriver(checkpoint, **limits, **options)
        outputs = [r.token_ids for r in surge.generate(PROMPTS, greedy)]
        result[name] = {
            "outputs": outputs,
            "devices": sorted(d.id for d in surge.executor.mesh.devices.flat),
            "local_devices": sorted(d.id for d in jax.local_devices()),
            "swapped_out": surge.engine.swap_stats.requests_out,
            "pages_back": surge.num_free_pages == surge.num_usable_pages,
            "num_pages": surge.memory_plan.num_pages,
            "device_bytes": surge.memory_plan.device_bytes,
        }
    print("RESULT " + json.dumps(result), flush=True)


if __name__ == "__main__":
    main()
