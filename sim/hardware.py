"""Modeled accelerators and interconnects, registered by name.

Rates are vendor datasheet peaks (dense, no sparsity). Real kernels reach a fraction of them: each preset carries
the achieved fraction of its FLOP/s (``flops_efficiency``) and HBM bandwidth (``hbm_efficiency``) from published
measurements (sources next to each preset), which the roofline latency model applies (overridable, e.g.
``--latency-arg flops_efficiency=0.6``, and reported in every run's summary). Tensor-parallel all-reduces run over
the preset's :class:`Link` (latency + size / bus bandwidth).
"""

from __future__ import annotations

from dataclasses import dataclass

from odrive.core.registry import Registry

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
class Link:
    """An interconnect for tensor-parallel collectives (α–β): an all-reduce of ``n`` bytes over ``tp`` devices takes
    ``latency_s + 2 (tp - 1) / tp × n / bus_bandwidth`` seconds, ``bus_bandwidth`` in NCCL's "bus bandwidth"
    convention (bytes per second each device sends), fitted to measured all-reduce times of decode-sized messages."""

    name: str
    latency_s: float
    bus_bandwidth: float

    def __post_init__(self) -> None:
        if not self.latency_s >= 0 or not self.bus_bandwidth > 0:
            raise ValueError(f"link {self.name!r}: need latency_s >= 0 and bus_bandwidth > 0")

    def allreduce_seconds(self, num_bytes: float, tp: int) -> float:
        """One all-reduce of ``num_bytes`` over ``tp`` devices (0 for one device)."""
        return 0.0 if tp <= 1 else self.latency_s + 2 * (tp - 1) / tp * num_bytes / self.bus_bandwidth


LINKS: Registry[Link] = Registry("link")
"""Interconnect presets by name; add entries with :func:`register_link`."""


def register_link(link: Link, *, overwrite: bool = False) -> Link:
    LINKS.add(link.name, link, overwrite=overwrite)
    return link


# H100 SXM5 over NVLink 4 / NVSwitch. Small-message latency: vLLM's custom all-reduce on H100 takes 8.5-10 us for
# messages up to 32 KiB at TP 2/4/8 (sgl-project/sglang pull request #2904); NCCL's NVLS all-reduce ~6 us at TP 2
# with CUDA graphs (NVIDIA/nccl issue #1259). Bandwidth: the fastest of vLLM's all-reduce paths on H100 at TP 6
# takes 13 us for 0.5 MB and 31 us for 4 MB (vllm-project/vllm pull request #24111), i.e. 320 GB/s bus bandwidth
# with 10 us latency (the fit gives 12.7 and 31.8 us).
register_link(Link("nvlink4", latency_s=10e-6, bus_bandwidth=320 * 10**9))
# A100 SXM4 over NVLink 3: same software latency assumed (no decode-size A100 measurement at hand); bus bandwidth
# scaled from the H100 fit by the per-direction NVLink ratio 300/450 (an assumption; override with --latency-arg).
register_link(Link("nvlink3", latency_s=10e-6, bus_bandwidth=213 * 10**9))
# TPU v5e ICI, datasheet 1,600 Gbps = 200 GB/s per chip; latency assumed as NVLink's (not measured).
register_link(Link("ici-v5e", latency_s=10e-6, bus_bandwidth=200 * 10**9))
# Host memory standing in for an interconnect (the 2-core CPU preset): its measured ~4 GB/s copy rate, no latency.
register_link(Link("host-memory", latency_s=0.0, bus_bandwidth=4 * 10**9))


@dataclass(frozen=True)
class Accelerator:
    """One device as the simulator sees it. All rates are per second, sizes in bytes.

    ``flops_efficiency``/``hbm_efficiency``: the fraction of the datasheet FLOP/s and HBM bandwidth real kernels
    reach (1.0: the datasheet number is a measurement). ``interconnect``: the :class:`Link` preset tensor-parallel
    all-reduces use (empty: latency-free at ``interconnect_bandwidth``).
    """

    name: str
    hbm_bytes: int
    hbm_bandwidth: float
    peak_flops_bf16: float
    peak_flops_fp32: float
    host_bandwidth: float
    interconnect_bandwidth: float
    step_overhead_s: float = 0.0
    flops_efficiency: float = 1.0
    hbm_efficiency: float = 1.0
    interconnect: str = ""

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
        for field_name in ("flops_efficiency", "hbm_efficiency"):
            if not 0 < getattr(self, field_name) <= 1:
                raise ValueError(
                    f"accelerator {self.name!r}: {field_name} must be in (0, 1], got {getattr(self, field_name)!r}"
                )

    def link(self) -> Link:
        """The interconnect preset of tensor-parallel all-reduces (latency-free at ``interconnect_bandwidth``
        without one)."""
        if not self.interconnect:
            return Link(f"{self.name}-interconnect", 0.0, self.interconnect_bandwidth)
        return LINKS.get(self.interconnect)

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
        # FlashAttention-3 (Shah et al., 2024, arXiv:2407.08608) reaches 740 TFLOP/s in FP16 on H100 SXM5, 75 % of
        # peak. DeepSeek's FlashMLA decode kernel reaches 3,000 GB/s memory-bound on H800 SXM5 (github.com/
        # deepseek-ai/FlashMLA README), whose HBM3 is the H100's 3.35 TB/s: 90 %.
        flops_efficiency=0.75,
        hbm_efficiency=0.90,
        interconnect="nvlink4",
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
        # FlashAttention-2 (Dao, 2023, arXiv:2307.08691) reaches up to 73 % of the A100's peak FLOP/s. The
        # gpu-benches stream benchmark (github.com/te42kyfo/gpu-benches, cuda-stream/a100_80.txt) reads
        # 1,769 GB/s on an A100 80GB at full occupancy: 87 % of 2,039 GB/s.
        flops_efficiency=0.73,
        hbm_efficiency=0.87,
        interconnect="nvlink3",
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
        # No published achieved-efficiency measurement at hand: datasheet peaks (efficiency 1.0).
        interconnect="ici-v5e",
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
        interconnect="host-memory",  # efficiency 1.0: these rates are measurements
    )
)
