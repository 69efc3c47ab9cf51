"""Serving benchmarks comparable with ``vllm bench serve``: its result metrics (``odrive.bench.results``, also
written by every simulation), ``odrive bench`` (replay a workload against any OpenAI-compatible server) and
``odrive compare`` (two result files side by side). Importing this package loads nothing else."""
