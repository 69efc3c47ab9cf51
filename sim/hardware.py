"""Modeled accelerators: memory, bandwidth and peak compute, registered by name.

Numbers are vendor datasheet peaks (dense, no sparsity). Real kernels reach a fraction of
them; the roofline latency model uses them as-is and a calibrated model can correct them.
"""

from __future__ import annotations

from dataclasses import dataclass

from odrive.registry import Registry

GB = 10**9
GiB = 2**30
TB = 10**12
TFLOPS = 10**12

_DTYPE_ALIASES = {
    "bf16": "bf16",
    "bfloat16": "bf16",
    "fp16": "bf16",  # half-precision tensor-core peaks equal bf16 on all presets
    "float16": "bf16",
    "f16": "bf16",
    "fp32": "fp32",
    "float32": "fp32",
    "f32": "fp32",
}


@dataclass(frozen=True)
class Accelerator:
    """One device as the simulator sees it. All rates are per second, sizes in bytes."""

    name: str
    hbm_bytes: int
    hbm_bandwidth: float
    peak_flops_bf16: float
    peak_flops_fp32: float
    host_bandwidth: float
    interconnect_bandwidth: float
    step_overhead_s: float = 0.0

    def __post_init__(self) -> None:
        for field_name in (
            "hbm_bytes",
            "hbm_bandwidth",
            "peak_flops_bf16",
            "peak_flops_fp32",
            "host_bandwidth",
            "interconnect_bandwidth",
        ):
            if not getattr(self, field_name) > 0:
                raise ValueError(
                    f"accelerator {self.name!r}: {field_name} must be > 0, got {getattr(self, field_name)!r}"
                )
        if self.step_overhead_s < 0:
            raise ValueError(f"accelerator {self.name!r}: step_overhead_s must be >= 0")

    def peak_flops(self, dtype: str = "bf16") -> float:
        """Dense peak FLOP/s for ``dtype`` ("bf16"/"fp16"/"fp32" and their long names)."""
        key = _DTYPE_ALIASES.get(dtype.lower())
        if key is None:
            raise ValueError(f"unknown dtype {dtype!r}; known: {', '.join(sorted(_DTYPE_ALIASES))}")
        return self.peak_flops_bf16 if key == "bf16" else self.peak_flops_fp32


ACCELERATORS: Registry[Accelerator] = Registry("accelerator")
"""The registered accelerators by name; add entries with :func:`register_accelerator`."""


def register_accelerator(accelerator: Accelerator, *, overwrite: bool = False) -> Accelerator:
    """Register ``accelerator`` under its name; refuses to replace a different one unless ``overwrite``."""
    ACCELERATORS.add(accelerator.name, accelerator, overwrite=overwrite)
    return accelerator


def get_accelerator(name: str) -> Accelerator:
    """Look up a registered accelerator; the error lists the known names."""
    return ACCELERATORS.get(name)


# NVIDIA H100 SXM5 80GB datasheet: 80 GB HBM3 (modeled as 80 GiB), 3.35 TB/s, 989.4 TFLOP/s
# BF16/FP16 dense (1,979 with sparsity), 67 TFLOP/s FP32 (non-tensor-core); PCIe Gen5 x16 = 64 GB/s per
# direction; NVLink 4 = 900 GB/s bidirectional, i.e. 450 GB/s each way.
register_accelerator(
    Accelerator(
        name="h100-80gb",
        hbm_bytes=80 * GiB,
        hbm_bandwidth=3.35 * TB,
        peak_flops_bf16=989.4 * TFLOPS,
        peak_flops_fp32=67 * TFLOPS,
        host_bandwidth=64 * GB,
        interconnect_bandwidth=450 * GB,
        step_overhead_s=50e-6,  # assumed kernel-launch/host cost per step; not a datasheet number
    )
)

# NVIDIA A100 SXM4 80GB datasheet: 80 GB HBM2e, 2,039 GB/s, 312 TFLOP/s BF16/FP16 dense,
# 19.5 TFLOP/s FP32; PCIe Gen4 x16 = 32 GB/s per direction; NVLink 3 = 600 GB/s
# bidirectional (300 GB/s each way).
register_accelerator(
    Accelerator(
        name="a100-80gb",
        hbm_bytes=80 * GiB,
        hbm_bandwidth=2039 * GB,
        peak_flops_bf16=312 * TFLOPS,
        peak_flops_fp32=19.5 * TFLOPS,
        host_bandwidth=32 * GB,
        interconnect_bandwidth=300 * GB,
        step_overhead_s=50e-6,  # assumed
    )
)

# Google Cloud TPU v5e (cloud.google.com/tpu/docs/v5e): 16 GB HBM2, 819 GB/s, 197 TFLOP/s
# BF16, ICI 1,600 Gbps = 200 GB/s per chip. FP32 matmuls run as multi-pass bf16 on the MXU:
# 197/6 (precision=HIGHEST) is an assumption. Host link: assumed PCIe Gen4 x16 (32 GB/s).
register_accelerator(
    Accelerator(
        name="tpu-v5e",
        hbm_bytes=16 * GiB,
        hbm_bandwidth=819 * GB,
        peak_flops_bf16=197 * TFLOPS,
        peak_flops_fp32=197 * TFLOPS / 6,
        host_bandwidth=32 * GB,
        interconnect_bandwidth=200 * GB,
        step_overhead_s=50e-6,  # assumed
    )
)

# This development machine (2 CPU cores, 24 GiB RAM), measured: ~190 GFLOP/s for an f32
# matmul through JAX/XLA and ~4 GB/s memory copy (used as "HBM" bandwidth). XLA on CPU gets
# no faster in bf16, so bf16 uses the f32 figure. Host RAM stands in for HBM, so the host and
# interconnect links are the same memory copy rate.
register_accelerator(
    Accelerator(
        name="cpu-2core",
        hbm_bytes=24 * GiB,
        hbm_bandwidth=4 * GB,
        peak_flops_bf16=190e9,
        peak_flops_fp32=190e9,
        host_bandwidth=4 * GB,
        interconnect_bandwidth=4 * GB,
        step_overhead_s=100e-6,  # assumed JAX dispatch + host bookkeeping per step
    )
)
