"""The engine core shared by the simulator and the real engine: requests and sampling parameters, the ``Engine``
step loop, the ``Executor`` interface, metrics, invariants, registries, the KV page formula and the padded batch
layout. Numpy only, no JAX; the policies it drives live in ``odrive.schedulers`` and ``odrive.allocators``.
"""
