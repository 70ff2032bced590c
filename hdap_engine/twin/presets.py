"""SKU presets: the nominal physical parameters of each device model the twin simulates.

A preset is plain data (`SkuPreset`); `hdap_engine.twin.physics.Twin` turns
it, a device's latent state and a candidate's layer shapes into latency. The
calibration targets of the shipped presets, and where each figure comes from,
are written next to them below; `python -m hdap_engine.twin.calibration`
prints the twin's nominal latencies against them.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from hdap_engine.errors import HdapError


@dataclass(frozen=True)
class SkuPreset:
    """Nominal physical parameters of one device model (SKU).

    Throughput is ``compute_units * flops_per_cycle * clock_ghz`` GFLOP/s at
    the precision the runtime uses (``bytes_per_elem``). Efficiencies are the
    fraction of that peak a well-shaped layer of each kind reaches; padding and
    parallelism losses come on top, computed from the shapes.
    """

    name: str
    kind: str  # "gpu" or "cpu"
    description: str
    # compute
    compute_units: float  # GPU streaming multiprocessors / CPU cores (threads)
    flops_per_cycle: float  # per unit, at the runtime precision (an FMA counts 2)
    clock_ghz: float
    channel_tile: int  # output channels one vector / GEMM tile covers (padding granularity)
    pixel_tile: int  # output pixels one GEMM tile covers (padding granularity)
    slots_per_unit: float  # work tiles a unit needs in flight to run at full speed
    reuse_pixel_block: int  # output pixels per block that re-reads the weights (GEMM M-block)
    reuse_channel_block: int  # output channels per block that re-reads the input (GEMM N-block)
    eltwise_grain: int  # elements per parallel work item of element-wise ops
    eff_conv: float  # k x k dense convolution (k > 1)
    eff_conv1x1: float
    eff_dwconv: float
    eff_linear: float  # batch-1 fully connected layer (GEMV)
    eff_eltwise: float  # act / add / copy arithmetic
    # memory
    bytes_per_elem: int
    dram_gbps: float  # sustained (not peak) DRAM bandwidth
    cache_kb: float  # near cache (GPU L2 / CPU L2) available to one inference
    cache_gbps: float
    cin_tile: int = 1  # input-channel padding of dense convs (blocked layouts); 1 = none
    # CPU conv kernels block each output row (register blocking along the width),
    # so the pixel tile pads the output width; GPU implicit GEMMs tile all pixels.
    tile_rows: bool = False
    k_half: float = 0.0  # GEMM depth K = cin*kh*kw at which a dense layer reaches half its efficiency
    # A dense layer whose work per output pixel (cin x kh x kw x cout, per
    # group) is below ``small_tile_macs`` runs at (work / small_tile_macs) **
    # ``small_tile_exp`` of its efficiency: it spends its time loading inputs
    # and storing outputs, whichever of K or N is short (0: off). Measured on an
    # AVX-512 CPU (1x1 and 3x3 convs of 8-256 channels): a 16->256 or 256->16
    # 1x1 conv runs at 0.7 of a 256->256 one, 16->16 at ~0.5, 8->8 at ~0.25,
    # while 3x3 16->256 and 256->16 run at full speed: the work per pixel, not
    # K or N alone, and a slow (power 1/6) fall rather than a hyperbola.
    small_tile_macs: float = 0.0
    small_tile_exp: float = 1.0 / 6.0
    misaligned_eff: float = 1.0  # extra efficiency of a dense conv whose channels are off the tile
    misaligned_tile: int = 0  # channel multiple below which the slower kernel is used (0: channel_tile)
    # (libraries switch to a slower generic kernel for such shapes, beyond the padding itself)
    eff_pool: float = 0.25  # windowed pooling (window compares / sums); eager CPU kernels are poor
    eff_bn: float = 0.25  # an unfused batch norm (eager frameworks run it as its own pass)
    # A grouped (not depthwise) convolution: each group is its own small GEMM,
    # and libraries tune grouped kernels far less than dense ones.
    eff_gconv: float = 0.3
    # FLOP-equivalents of one transcendental evaluation (exp, erf, tanh) in the
    # vectorised math library: what makes a sigmoid, SiLU, GELU or softmax cost
    # several times a ReLU of the same shape (measured on an AVX-512 CPU with
    # PyTorch 2: ReLU 0.10 ns per element, sigmoid / SiLU 0.45, GELU 0.5-0.6).
    transcendental_flops: float = 20.0
    llc_kb: float = 0.0  # last-level cache beyond the near cache (0: none)
    llc_gbps: float = 0.0
    # fixed costs and noise
    kernel_overhead_us: float = 10.0
    mac_overhead_us: float = 0.0  # extra fixed cost of a conv / linear call (primitive dispatch)
    dw_overhead_us: float = 0.0  # extra fixed cost of a depthwise call (layout reorders)
    # Kernels one global average pool runs as: PyTorch eager's mean is a sum, a
    # divide and a copy (three fixed costs); a compiled runtime runs one.
    global_pool_kernels: float = 1.0
    # An accelerator runs kernels asynchronously: the host-side launch path
    # (kernel_overhead_us) overlaps with the previous kernel, and only a small
    # device-side cost per kernel (device_overhead_us) is always paid.
    async_launch: bool = False
    device_overhead_us: float = 0.0
    fused_ops: tuple[str, ...] = ()  # element-wise ops folded into the preceding conv/linear
    noise_sigma: float = 0.02  # log-normal sigma of one run
    sources: tuple[str, ...] = field(default=(), compare=False)

    @property
    def peak_gflops(self) -> float:
        """Nominal peak throughput in GFLOP/s."""
        return self.compute_units * self.flops_per_cycle * self.clock_ghz


# --- SKU presets -----------------------------------------------------------
#
# Calibration targets (nominal device, batch 1, 224x224 ImageNet models):
#
# Jetson Nano, TensorRT FP16, MAXN (10 W), GPU at 921.6 MHz:
#   - ResNet-50: about 36 images/s, i.e. ~28 ms. NVIDIA, "Jetson Nano: Deep
#     Learning Inference Benchmarks",
#     https://developer.nvidia.com/embedded/jetson-nano-dl-inference-benchmarks
#     (run with https://github.com/NVIDIA-AI-IOT/jetson_benchmarks, --precision
#     fp16 --gpu_freq 921600000 --power_mode 0).
#   - MobileNet-class models: the same page is quoted at ~60 images/s for
#     MobileNetV2 (github.com/Tony607/tf_jetson_nano issue 5). We found no
#     first-party MobileNetV1 224x224 figure; the twin gives ~5 ms (~200
#     images/s), i.e. depthwise layers make it far less efficient than its 0.57
#     GMACs suggest (at ResNet-50's efficiency it would take ~4 ms of compute
#     alone and no memory time). Treat that number as an estimate.
#   - Memory contention: on Tegra SoCs the GPU shares LPDDR4 with the CPU
#     cores, and memory-heavy co-runners slow GPU kernels by up to 2-3x
#     (Cavicchioli et al., "Memory interference characterization between CPU
#     cores and integrated GPUs in mixed-criticality platforms", ETFA 2017):
#     the range of the background-load mechanism.
#   - Hardware: 128-core Maxwell GPU (one SM), 472 GFLOPS FP16 (= 128 cores x
#     2 (FMA) x 2 (half2) x 0.9216 GHz), 256 KB GPU L2, 4 GB 64-bit LPDDR4 at
#     25.6 GB/s peak. NVIDIA Jetson Nano module data sheet (DA-09366).
#   - Power modes: nvpmodel mode 1 (5 W) caps the GPU at 640 MHz and runs two
#     A57 cores at 918 MHz (Jetson Linux Developer Guide, "Power Management for
#     Jetson Nano").
#
# Raspberry Pi 4 Model B (BCM2711), PyTorch eager FP32 on 4 threads:
#   - ResNet-50: 225 ms model time; ResNet-18: 100 ms. PyTorch tutorial "Real
#     Time Inference on Raspberry Pi 4", benchmark table (float models),
#     https://pytorch.org/tutorials/intermediate/realtime_rpi.html
#   - MobileNetV1 FP32 is not in that table; TF Lite INT8 MobileNetV1 runs at
#     ~26-30 ms on an overclocked Pi 4 (github.com/Qengineering/
#     TensorFlow_Lite_Classification_RPi_64-bits: 38.5 FPS at 1.95 GHz), and
#     FP32 eager PyTorch is a few times slower than that.
#   - Hardware: 4x Cortex-A72 at 1.5 GHz, 128-bit NEON (4 FP32 lanes, two FP
#     pipes: 16 FLOP/cycle/core peak), 1 MB shared L2, 32-bit LPDDR4-3200
#     (12.8 GB/s peak, ~4-6 GB/s sustained copy). Raspberry Pi 4 product brief;
#     Arm Cortex-A72 Software Optimization Guide.
#   - Thermal: the firmware throttles the ARM clock from 80 C (Raspberry Pi
#     documentation, "Frequency management and thermal control").
#
# Result (`python -m hdap_engine.twin.calibration`): Jetson Nano ResNet-50
# 30.0 ms, ResNet-18 10.3 ms, MobileNetV1 4.9 ms; Raspberry Pi 4 ResNet-50
# 241 ms, ResNet-18 101 ms, MobileNetV1 45 ms.

JETSON_NANO = SkuPreset(
    name="jetson-nano",
    kind="gpu",
    description="Jetson-Nano-class GPU: 128-core Maxwell, FP16 TensorRT engine, 25.6 GB/s LPDDR4",
    compute_units=1.0,
    flops_per_cycle=512.0,  # 128 cores x FMA x half2
    clock_ghz=0.9216,
    channel_tile=32,
    pixel_tile=64,
    slots_per_unit=8.0,  # thread blocks one Maxwell SM keeps resident to hide latency
    reuse_pixel_block=64,  # a thread block's tile: operands are re-fetched once per tile
    reuse_channel_block=64,
    k_half=32.0,  # a thread block's K loop has a fixed prologue / epilogue
    eltwise_grain=4096,
    eff_conv=0.95,  # TensorRT picks Winograd for 3x3 convs: above what MACs / peak suggests
    eff_conv1x1=0.80,
    eff_dwconv=0.25,
    eff_linear=0.30,
    eff_eltwise=0.25,
    eff_pool=0.15,
    eff_bn=0.25,
    eff_gconv=0.45,
    transcendental_flops=8.0,  # the SM's special-function units evaluate exp / rcp in hardware
    bytes_per_elem=2,
    dram_gbps=14.0,  # what conv kernels sustain of the 25.6 GB/s peak shared with the CPU
    cache_kb=256.0,
    cache_gbps=90.0,
    kernel_overhead_us=12.0,  # TensorRT enqueue of one layer on a 1.43 GHz A57
    async_launch=True,
    device_overhead_us=3.0,  # kernel start / drain on the GPU
    fused_ops=("bn", "act"),
    noise_sigma=0.02,
    sources=(
        "https://developer.nvidia.com/embedded/jetson-nano-dl-inference-benchmarks",
        "https://github.com/NVIDIA-AI-IOT/jetson_benchmarks",
        "NVIDIA Jetson Nano module data sheet DA-09366",
    ),
)

RPI4 = SkuPreset(
    name="rpi4",
    kind="cpu",
    description="Raspberry-Pi-4-class CPU: 4x Cortex-A72 at 1.5 GHz, NEON FP32, 1 MB L2, PyTorch eager",
    compute_units=4.0,
    flops_per_cycle=16.0,
    clock_ghz=1.5,
    channel_tile=4,  # one NEON register of FP32
    pixel_tile=8,
    tile_rows=True,
    k_half=48.0,
    slots_per_unit=4.0,
    reuse_pixel_block=128,  # cache blocking of the CPU GEMM: re-reads are per block, not per register tile
    reuse_channel_block=64,
    eltwise_grain=32768,  # at::internal::GRAIN_SIZE: smaller element-wise ops stay on one thread
    eff_conv=0.47,
    eff_conv1x1=0.60,
    eff_dwconv=0.08,
    eff_linear=0.25,
    eff_eltwise=0.25,
    eff_pool=0.05,  # PyTorch's CPU max-pool is a scalar loop over windows
    eff_bn=0.10,
    eff_gconv=0.2,
    transcendental_flops=24.0,  # NEON has no exp: a polynomial and a range reduction
    bytes_per_elem=4,
    dram_gbps=4.5,
    cache_kb=1024.0,
    cache_gbps=24.0,
    kernel_overhead_us=25.0,
    fused_ops=(),
    noise_sigma=0.03,
    sources=(
        "https://pytorch.org/tutorials/intermediate/realtime_rpi.html",
        "https://github.com/Qengineering/TensorFlow_Lite_Classification_RPi_64-bits",
        "Raspberry Pi 4 Model B product brief; Arm Cortex-A72 Software Optimization Guide",
    ),
)

PRESETS: dict[str, SkuPreset] = {JETSON_NANO.name: JETSON_NANO, RPI4.name: RPI4}


def generic_cpu_preset(
    *,
    name: str = "cpu",
    cores: float = 4.0,
    clock_ghz: float = 2.0,
    flops_per_cycle: float = 32.0,
    channel_tile: int = 8,
    dram_gbps: float = 10.0,
    cache_kb: float = 1024.0,
    cache_gbps: float = 50.0,
    llc_kb: float = 0.0,
    llc_gbps: float = 0.0,
    kernel_overhead_us: float = 8.0,
    **overrides,
) -> SkuPreset:
    """A CPU-class preset (PyTorch eager, FP32) with the given physical parameters.

    This is the family `hdap_engine.twin.fit.fit_preset_from_probes` fills in
    from a host's own probe row. Any other `SkuPreset` field can be overridden.

    Parameters
    ----------
    name, cores, clock_ghz, flops_per_cycle, channel_tile, dram_gbps, cache_kb,
    cache_gbps, llc_kb, llc_gbps, kernel_overhead_us:
        The physical parameters (see `SkuPreset`).
    **overrides:
        Further `SkuPreset` fields.

    Returns
    -------
    SkuPreset
    """
    base = dict(
        name=name, kind="cpu",
        description=f"generic CPU: {cores:g} threads, FP32, PyTorch eager",
        compute_units=float(cores), flops_per_cycle=float(flops_per_cycle),
        clock_ghz=float(clock_ghz), channel_tile=int(channel_tile), cin_tile=int(channel_tile),
        pixel_tile=8, tile_rows=True,
        slots_per_unit=4.0, reuse_pixel_block=256, reuse_channel_block=128, eltwise_grain=32768,
        eff_conv=0.5, eff_conv1x1=0.45, eff_dwconv=0.08, eff_linear=0.3, eff_eltwise=0.25,
        eff_pool=0.05, eff_bn=0.1, eff_gconv=0.3, transcendental_flops=20.0,
        global_pool_kernels=3.0,
        bytes_per_elem=4, dram_gbps=float(dram_gbps), cache_kb=float(cache_kb),
        cache_gbps=float(cache_gbps), llc_kb=float(llc_kb), llc_gbps=float(llc_gbps),
        kernel_overhead_us=float(kernel_overhead_us), fused_ops=(), noise_sigma=0.03,
    )
    base.update(overrides)
    return SkuPreset(**base)


def get_preset(sku: str) -> SkuPreset:
    """The preset named ``sku``; a clear error listing the known ones otherwise."""
    try:
        return PRESETS[sku]
    except KeyError:
        raise HdapError(
            f"unknown SKU {sku!r}; the twin knows {', '.join(sorted(PRESETS))}"
        ) from None
