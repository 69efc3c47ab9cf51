"""Device meshes for tensor parallelism: one named ``model`` axis (other axes, e.g. ``data``, may exist)."""

from __future__ import annotations

from collections.abc import Sequence

import jax
import numpy as np
from jax.sharding import Mesh

TP_AXIS = "model"


def make_tp_mesh(tp: int, devices: Sequence[jax.Device] | None = None, axis: str = TP_AXIS) -> Mesh:
    """A 1-D mesh of ``tp`` devices (the first ``tp`` of ``devices``) named ``axis``.

    Default devices: this process's own (``jax.local_devices()``) when ``tp`` of them exist — after
    ``jax.distributed.initialize()`` every process then runs its own engine on its own devices — else all
    processes' (``jax.devices()``): one engine spanning hosts, every process running the same program
    (docs/multi_host.md). In a single process both are ``jax.devices()``.
    """
    if devices is None:
        devices = jax.local_devices() if tp <= jax.local_device_count() else jax.devices()
    devices = list(devices)
    if tp < 1 or tp > len(devices):
        raise ValueError(f"tensor_parallel_size={tp} needs 1 <= tp <= {len(devices)} available devices")
    return Mesh(np.array(devices[:tp]), (axis,))


def tp_size(mesh: Mesh, axis: str = TP_AXIS) -> int:
    """Devices along the tensor-parallel axis of ``mesh``."""
    if axis not in mesh.axis_names:
        raise ValueError(f"mesh axes {mesh.axis_names} have no tensor-parallel axis {axis!r}")
    return int(mesh.shape[axis])
