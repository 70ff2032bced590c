"""The device twin: per-layer physics that turns layer shapes and a device's latent state into latency.

The twin is the `twin` latency backend and the ground truth of the shipped
sample fleets. It is a roofline with the effects that make structured pruning
hardware-dependent:

- per layer, ``time = kernel overhead + max(compute time, memory time)``; on
  an accelerator that launches kernels asynchronously (the Jetson preset) the
  host's launch path overlaps with the previous kernel, so a layer costs
  ``max(launch path, device time + small device-side overhead)``;
- compute time is FLOPs over the device's throughput times an efficiency that
  depends on the op (depthwise convolutions, batch-1 GEMVs, eager pooling and
  batch norm are poor), on padding waste when channels or output pixels /
  rows do not fill the hardware's vector or tile width (and, on CPUs, the
  slower generic kernel libraries fall back to for such shapes), on a short
  GEMM reduction (few input channels), and on parallelism: a layer with fewer
  work tiles than the device has parallel slots leaves units idle;
- memory time is the bytes each operand moves (activations, weights, and the
  re-reads of a blocked GEMM: the input once per output-channel block, the
  weights once per pixel block) over a bandwidth that depends on where that
  operand lives (near cache, last-level cache, DRAM): it drops when an operand
  no longer fits the (possibly stolen) cache;
- element-wise layers that the runtime folds into the preceding kernel
  (TensorRT fuses batch norm and activation into the convolution; PyTorch
  eager on a CPU does not) cost nothing.

Each device of a fleet has a latent state (`DeviceStates`): clock, share of the
compute engine, active units, DRAM bandwidth, cache capacity and per-kernel
overhead multipliers. Drift mechanisms (see `hdap_engine.fleet.mechanisms`)
move different ones, so different devices are bound by different bottlenecks
and prefer different architectures. Every run is multiplied by log-normal
measurement noise of a few per cent.

All arithmetic is vectorised over candidates x layers x devices (devices in
chunks), because the search oracle and the fleet ground truth call it a lot.
"""

from __future__ import annotations

from dataclasses import dataclass, field, fields, replace

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.pruning.layers import LayerTable

# Latent per-device multipliers (1.0 = the preset's nominal device). Order is
# the column order of `DeviceStates.to_frame`.
LATENT_FIELDS = (
    "clock_scale",      # compute clock (GPU clock on a Jetson, CPU clock on a Pi); cache bandwidth follows it
    "compute_share",    # share of the compute engine this workload gets (time-slicing with other work)
    "unit_fraction",    # fraction of compute units available (cores online / all-core power cap)
    "mem_bw_scale",     # DRAM bandwidth (memory clock, contention)
    "cache_scale",      # effective cache capacity (other processes evict our lines)
    "overhead_scale",   # fixed per-kernel cost (launch path on a Jetson's CPU, op dispatch on a Pi)
    "noise_scale",      # run-to-run jitter relative to the preset's noise level
)


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
    misaligned_eff: float = 1.0  # extra efficiency of a dense conv whose channels are off the tile
    # (libraries switch to a slower generic kernel for such shapes, beyond the padding itself)
    eff_pool: float = 0.25  # windowed pooling (window compares / sums); eager CPU kernels are poor
    eff_bn: float = 0.25  # an unfused batch norm (eager frameworks run it as its own pass)
    llc_kb: float = 0.0  # last-level cache beyond the near cache (0: none)
    llc_gbps: float = 0.0
    # fixed costs and noise
    kernel_overhead_us: float = 10.0
    mac_overhead_us: float = 0.0  # extra fixed cost of a conv / linear call (primitive dispatch)
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
# Result (`python -m hdap_engine.fleet.calibration`): Jetson Nano ResNet-50
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

    This is the family `hdap_engine.fleet.fit.fit_preset_from_probes` fills in
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
        eff_pool=0.05, eff_bn=0.1,
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


# --- per-device latent state -----------------------------------------------


@dataclass(frozen=True)
class DeviceStates:
    """Latent state of D devices of one SKU (plain arrays of shape (D,)).

    ``mechanism`` names the drift mechanism that produced each state and
    ``severity`` (0..1) how strongly it acts; both are labels for evaluation,
    the twin only reads the `LATENT_FIELDS`.
    """

    device_id: np.ndarray
    mechanism: np.ndarray
    severity: np.ndarray
    clock_scale: np.ndarray
    compute_share: np.ndarray
    unit_fraction: np.ndarray
    mem_bw_scale: np.ndarray
    cache_scale: np.ndarray
    overhead_scale: np.ndarray
    noise_scale: np.ndarray
    sku: str = ""

    def __post_init__(self):
        n = len(self.device_id)
        for f in fields(self):
            if f.name == "sku":
                continue
            arr = getattr(self, f.name)
            if len(arr) != n:
                raise ValueError(f"DeviceStates.{f.name} has {len(arr)} entries, expected {n}")

    def __len__(self) -> int:
        return len(self.device_id)

    @classmethod
    def nominal(cls, n: int = 1, *, sku: str = "", prefix: str = "dev") -> DeviceStates:
        """``n`` devices exactly at the preset's nominal state (no variation)."""
        ones = np.ones(n)
        return cls(
            device_id=np.array([f"{prefix}-{i:05d}" for i in range(n)], dtype=object),
            mechanism=np.array(["nominal"] * n, dtype=object),
            severity=np.zeros(n),
            **{name: ones.copy() for name in LATENT_FIELDS},
            sku=sku,
        )

    def select(self, index) -> DeviceStates:
        """The states of some devices (``index`` into the device axis)."""
        idx = np.atleast_1d(np.arange(len(self))[index])
        kw = {f.name: np.asarray(getattr(self, f.name))[idx] for f in fields(self) if f.name != "sku"}
        return DeviceStates(**kw, sku=self.sku)

    def with_latent(self, **changes: np.ndarray | float) -> DeviceStates:
        """A copy with some latent fields replaced (scalars broadcast)."""
        for k in changes:
            if k not in LATENT_FIELDS:
                raise ValueError(f"{k!r} is not a latent field; expected one of {LATENT_FIELDS}")
        return replace(self, **{k: np.broadcast_to(np.asarray(v, float), (len(self),)).copy()
                                for k, v in changes.items()})

    def to_frame(self) -> pd.DataFrame:
        """One row per device: device_id, sku, mechanism, severity, latent fields."""
        df = pd.DataFrame({
            "device_id": pd.Series(self.device_id, dtype=str),
            "sku": self.sku,
            "mechanism": pd.Series(self.mechanism, dtype=str),
            "severity": np.asarray(self.severity, float),
        })
        for name in LATENT_FIELDS:
            df[name] = np.asarray(getattr(self, name), float)
        return df

    @classmethod
    def from_frame(cls, df: pd.DataFrame, *, sku: str | None = None) -> DeviceStates:
        """Rebuild states from `to_frame` output; missing latent columns default to 1."""
        if "device_id" not in df.columns:
            raise HdapError("twin states need a 'device_id' column")
        n = len(df)
        if sku is None:
            sku = str(df["sku"].iloc[0]) if "sku" in df.columns and n else ""
        latent = {}
        for name in LATENT_FIELDS:
            if name in df.columns:
                col = pd.to_numeric(df[name], errors="coerce").to_numpy(float)
                if not np.all(np.isfinite(col)) or np.any(col <= 0):
                    raise HdapError(f"twin states column {name!r} must be finite and > 0")
                latent[name] = col
            else:
                latent[name] = np.ones(n)
        mech = df["mechanism"].astype(str).to_numpy(object) if "mechanism" in df.columns \
            else np.array(["unknown"] * n, dtype=object)
        sev = pd.to_numeric(df["severity"], errors="coerce").fillna(0.0).to_numpy(float) \
            if "severity" in df.columns else np.zeros(n)
        return cls(device_id=df["device_id"].astype(str).to_numpy(object), mechanism=mech,
                   severity=sev, **latent, sku=sku)


def select_states(states: DeviceStates, devices) -> DeviceStates:
    """The states of the listed device ids, in that order.

    Parameters
    ----------
    states:
        States of a fleet.
    devices:
        Device ids to pick.

    Returns
    -------
    DeviceStates
    """
    index = {str(d): i for i, d in enumerate(states.device_id)}
    devices = [str(d) for d in devices]
    missing = [d for d in devices if d not in index]
    if missing:
        raise HdapError(f"no twin state for device {missing[0]!r} "
                        f"({len(missing)} device(s) missing from the twin states)")
    return states.select(np.array([index[d] for d in devices], dtype=np.int64))


def load_twin_states(path) -> DeviceStates:
    """Latent device states of a simulated fleet (see `hdap_engine.fleet.simulate.load_twin_states`)."""
    from hdap_engine.fleet.simulate import load_twin_states as _load

    return _load(path)


# --- the physics -------------------------------------------------------------

_MAC_OPS = ("conv", "dwconv", "linear")


def _resolve_rng(rng) -> np.random.Generator:
    if isinstance(rng, np.random.Generator):
        return rng
    return np.random.default_rng(0 if rng is None else rng)


@dataclass(frozen=True)
class _Prepared:
    """Per (candidate, layer) quantities that do not depend on the device.

    Memory traffic is a list of operands, each with the bytes it moves and the
    size of the data that must stay cached for that traffic to hit the cache.
    """

    tc_slot: np.ndarray  # (N, K) seconds of compute on one parallel slot at nominal clock
    slots: np.ndarray  # (N, K) parallel work items the layer offers (>= 1)
    traffic: list[tuple[np.ndarray, np.ndarray]]  # (bytes, 1 / resident size), both (N, K)
    n_kernels: np.ndarray  # (N,) kernels that pay the fixed overhead
    n_mac: np.ndarray  # (N,) conv / linear kernels among them


class Twin:
    """Latency of candidate networks on the devices of one SKU.

    Parameters
    ----------
    preset:
        The SKU's nominal physical parameters.
    chunk_elems:
        Upper bound on candidates x layers x devices held in memory at once.
    """

    def __init__(self, preset: SkuPreset, *, chunk_elems: int = 2_000_000):
        self.preset = preset
        self.chunk_elems = int(chunk_elems)

    # -- shape-only part ------------------------------------------------------

    def kept_layers(self, table: LayerTable) -> np.ndarray:
        """(L,) mask of layers that run as their own kernel (not fused away)."""
        keep = np.ones(table.n_layers, dtype=bool)
        prev_fusable = False
        for i, op in enumerate(table.op):
            if op in self.preset.fused_ops and prev_fusable:
                keep[i] = False  # folded into the preceding kernel's epilogue
                continue
            prev_fusable = op in _MAC_OPS
        return keep

    def _prepare(self, table: LayerTable) -> _Prepared:
        p = self.preset
        keep = self.kept_layers(table)
        op = table.op[keep]
        k = (table.kernel_h * table.kernel_w)[keep].astype(float)
        pix = (table.h_out * table.w_out)[keep].astype(float)
        cin = table.cin[:, keep]
        cout = table.cout[:, keep]
        macs = table.macs()[:, keep]
        out_el = table.output_elems()[:, keep]
        in_el = table.input_elems()[:, keep]
        w_el_all = table.weight_elems()
        w_el = w_el_all[:, keep]

        is_conv = op == "conv"
        is_1x1 = is_conv & (k == 1)
        is_dw = op == "dwconv"
        is_fc = op == "linear"
        is_mac = is_conv | is_dw | is_fc

        # Arithmetic: 2 FLOPs per MAC; element-wise ops a few per element.
        elt_flops = np.select(
            [op == "bn", op == "act", op == "add", op == "pool"],
            [2.0, 1.0, 1.0, k], default=0.0,
        )
        flops = np.where(is_mac, 2.0 * macs, elt_flops * out_el)
        # A global pool (1x1 output) is a streaming reduction; a windowed pool
        # (a ResNet or VGG max-pool) runs the framework's window loop.
        windowed_pool = (op == "pool") & (pix > 1)
        eff = np.select(
            [is_1x1, is_conv, is_dw, is_fc, windowed_pool, op == "bn"],
            [p.eff_conv1x1, p.eff_conv, p.eff_dwconv, p.eff_linear, p.eff_pool, p.eff_bn],
            default=p.eff_eltwise,
        )
        # Padding waste: output channels padded to the channel tile, output pixels
        # to the pixel tile (a GEMM's N and M dimensions); a GEMV has one pixel.
        ct = float(p.channel_tile)
        pt = float(p.pixel_tile)
        c_pad = np.ceil(cout / ct) * ct
        p_eff = np.where(is_fc, 1.0, pix)
        if p.tile_rows:
            w_o = table.w_out[keep].astype(float)
            p_pad = np.where(is_fc, 1.0, np.ceil(w_o / pt) * pt * table.h_out[keep])
        else:
            p_pad = np.where(is_fc, 1.0, np.ceil(p_eff / pt) * pt)
        pad = np.where(is_mac, (cout / c_pad) * (p_eff / p_pad), 1.0)
        # Blocked layouts pad the input channels of a dense conv too (the GEMM's
        # K dimension); an image input (<= 4 channels) is read in plain layout.
        cin_pad = cin
        if p.cin_tile > 1:
            cit = float(p.cin_tile)
            cin_pad = np.where(cin <= 4, cin, np.ceil(cin / cit) * cit)
            pad = np.where(is_conv, pad * cin / np.maximum(cin_pad, 1.0), pad)
        if p.misaligned_eff != 1.0:
            off = (np.mod(cout, ct) != 0) | ((cin > 4) & (np.mod(cin, float(p.cin_tile)) != 0))
            pad = np.where(is_conv & off, pad * p.misaligned_eff, pad)
        # A short reduction (few input channels) spends a large share of every
        # tile on loading and storing it rather than on multiply-adds. (An
        # image-input conv, <= 4 channels, has its own kernel and is exempt.)
        if p.k_half > 0:
            kdim = np.where(is_conv, cin_pad * k, cin)
            short_k = (is_conv & (cin > 4)) | is_fc
            pad = np.where(short_k, pad * kdim / (kdim + p.k_half), pad)
        # Parallel work items: GEMM tiles for MAC layers, grains for element-wise.
        tiles = np.ceil(p_eff / pt) * np.ceil(cout / ct)
        grains = np.ceil(np.maximum(out_el, in_el) / float(p.eltwise_grain))
        slots = np.maximum(np.where(is_mac, tiles, grains), 1.0)

        slot_flops = p.flops_per_cycle * p.clock_ghz * 1e9 / p.slots_per_unit
        tc_slot = flops / (slot_flops * eff * pad)

        b = float(p.bytes_per_elem)
        in_b = in_el * b
        out_b = out_el * b
        w_b = w_el * b
        # First touch: activations were just written by the previous layer, so
        # they are in cache when input + output fit; weights come from cache only
        # when all of the candidate's weights fit (repeated inference).
        act_bytes = in_b + out_b
        wtot = np.maximum(w_el_all.sum(axis=1, keepdims=True) * b, 1.0)
        # Re-reads of a blocked GEMM: the input once per output-channel block,
        # the weights once per output-pixel block. They hit the cache only when
        # the operand itself stays resident, so big operands on a small (or
        # stolen) cache go back to DRAM. A depthwise conv reads its input once.
        # A k x k window also reads a halo around each block of output pixels
        # (a square block of side sqrt(B) needs (sqrt(B) * s + k - s)^2 inputs).
        side = np.sqrt(float(p.reuse_pixel_block)) * table.stride[keep]
        halo = np.where(is_conv | is_dw, ((side + np.sqrt(k) - table.stride[keep]) / side) ** 2, 1.0)
        halo = np.maximum(halo, 1.0)
        n_in_reads = np.where(is_conv | is_fc, np.ceil(cout / p.reuse_channel_block), 1.0) * halo
        rr_w = np.where(is_conv | is_dw, np.ceil(p_eff / p.reuse_pixel_block) - 1.0, 0.0)
        traffic = [
            (act_bytes, 1.0 / np.maximum(act_bytes, 1.0)),
            (w_b, np.broadcast_to(1.0 / wtot, w_b.shape)),
            ((n_in_reads - 1.0) * in_b, 1.0 / np.maximum(in_b, 1.0)),
            (rr_w * w_b, 1.0 / np.maximum(w_b, 1.0)),
        ]
        n_k = np.full(table.n_candidates, float(keep.sum()))
        n_mac = np.full(table.n_candidates, float(is_mac.sum()))
        return _Prepared(tc_slot=tc_slot, slots=slots, traffic=traffic, n_kernels=n_k,
                         n_mac=n_mac)

    # -- device part ----------------------------------------------------------

    def _device_terms(self, states: DeviceStates) -> dict[str, np.ndarray]:
        p = self.preset
        clock = np.asarray(states.clock_scale, float)
        share = np.asarray(states.compute_share, float)
        speed = clock * share
        units = np.maximum(p.compute_units * np.asarray(states.unit_fraction, float), 1e-3)
        cache_scale = np.asarray(states.cache_scale, float)
        inv_dram = 1.0 / (p.dram_gbps * 1e9 * np.asarray(states.mem_bw_scale, float))
        inv_cache = 1.0 / (p.cache_gbps * 1e9 * speed)
        out = {
            "inv_speed": 1.0 / speed,
            "slot_cap": units * p.slots_per_unit,
            "cache": p.cache_kb * 1024.0 * cache_scale,
            "inv_dram": inv_dram,
            "d_cache": inv_cache - inv_dram,
            "overhead": p.kernel_overhead_us * 1e-6 * np.asarray(states.overhead_scale, float),
            "mac_overhead": p.mac_overhead_us * 1e-6 * np.asarray(states.overhead_scale, float),
            "device_overhead": np.full(len(states), p.device_overhead_us * 1e-6),
        }
        if p.llc_kb > 0:
            inv_llc = 1.0 / (p.llc_gbps * 1e9 * np.asarray(states.mem_bw_scale, float) ** 0.5
                             * speed ** 0.5)
            out["llc"] = p.llc_kb * 1024.0 * cache_scale
            out["d_llc"] = inv_llc - inv_dram
            out["d_cache"] = inv_cache - inv_llc
        return out

    def _expected_seconds(self, prep: _Prepared, dev: dict[str, np.ndarray]) -> np.ndarray:
        """(N, D) noiseless latency in seconds."""
        n, k = prep.tc_slot.shape
        d = len(dev["inv_speed"])
        out = np.empty((n, d))
        f32 = np.float32
        tc_slot = prep.tc_slot.astype(f32)[:, :, None]
        slots = prep.slots.astype(f32)[:, :, None]
        # Drop operands that move nothing for any candidate (e.g. no re-reads).
        traffic = [(bb.astype(f32)[:, :, None], inv.astype(f32)[:, :, None])
                   for bb, inv in prep.traffic if np.any(bb > 0)]
        total_bytes = sum(bb for bb, _ in traffic)
        levels = [("cache", "d_cache")] + ([("llc", "d_llc")] if "llc" in dev else [])
        async_launch = self.preset.async_launch
        step = max(1, self.chunk_elems // max(1, n * k))
        for s in range(0, d, step):
            sl = slice(s, min(d, s + step))
            # compute: tiles spread over the slots the device has, at its clock
            tc = np.minimum(slots, dev["slot_cap"][sl].astype(f32))
            np.divide(tc_slot, tc, out=tc)
            tc *= dev["inv_speed"][sl].astype(f32)
            # memory: every byte at DRAM speed, minus the saving of the share of
            # each operand that stays resident in each cache level
            tm = total_bytes * dev["inv_dram"][sl].astype(f32)
            for size_key, delta_key in levels:
                size = dev[size_key][sl].astype(f32)
                delta = dev[delta_key][sl].astype(f32)
                for bb, inv in traffic:
                    hit = np.minimum(inv * size, f32(1.0))
                    hit *= bb
                    hit *= delta
                    tm += hit
            np.maximum(tc, tm, out=tc)
            if async_launch:
                # The host enqueues the next kernel while this one runs: a kernel
                # shorter than the launch path waits for it, a longer one hides it.
                tc += dev["device_overhead"][sl].astype(f32)
                np.maximum(tc, dev["overhead"][sl].astype(f32), out=tc)
            out[:, sl] = tc.sum(axis=1, dtype=np.float64)
        if not async_launch:
            out += prep.n_kernels[:, None] * dev["overhead"][None, :]
        out += prep.n_mac[:, None] * dev["mac_overhead"][None, :]
        return out

    # -- public API -----------------------------------------------------------

    def expected_ms(self, table: LayerTable, states: DeviceStates) -> np.ndarray:
        """(N, D) noiseless latency in milliseconds of N candidates on D devices."""
        self._check(states)
        return self._expected_seconds(self._prepare(table), self._device_terms(states)) * 1e3

    def raw_latency_ms(self, table: LayerTable, states: DeviceStates, *, runs: int = 1,
                       rng=None, noise: bool = True) -> np.ndarray:
        """(N, D, runs) latency of every run in milliseconds.

        Parameters
        ----------
        table:
            Layer shapes of N candidates.
        states:
            Latent state of D devices of this SKU.
        runs:
            Runs per candidate and device.
        rng:
            Seed or `numpy.random.Generator` for the measurement noise (None: seed 0).
        noise:
            False gives the noiseless expectation repeated ``runs`` times.

        Returns
        -------
        numpy.ndarray
        """
        if runs < 1:
            raise ValueError("runs must be >= 1")
        base = self.expected_ms(table, states)
        if not noise:
            return np.repeat(base[:, :, None], runs, axis=2)
        g = _resolve_rng(rng)
        sigma = self.noise_sigma(states)
        z = g.standard_normal((base.shape[0], base.shape[1], runs))
        return base[:, :, None] * np.exp(z * sigma[None, :, None])

    def latency_ms(self, table: LayerTable, states: DeviceStates, *, runs: int = 1,
                   rng=None, noise: bool = True) -> np.ndarray:
        """(N, D) median latency over ``runs`` noisy runs, in milliseconds.

        Parameters
        ----------
        table, states, runs, rng, noise:
            As in `raw_latency_ms`.

        Returns
        -------
        numpy.ndarray
        """
        if not noise:
            self._check(states)
            return self.expected_ms(table, states)
        if runs == 1:
            return self.raw_latency_ms(table, states, runs=1, rng=rng)[:, :, 0]
        return np.median(self.raw_latency_ms(table, states, runs=runs, rng=rng), axis=2)

    def probe_ms(self, states: DeviceStates, *, runs: int = 20, rng=None,
                 noise: bool = True) -> pd.DataFrame:
        """The standard probe suite on every device: one row per device.

        Parameters
        ----------
        states:
            Latent state of D devices.
        runs:
            Noisy runs per probe; the median is reported, as `hdap probe` does.
        rng:
            Seed or Generator for the noise (None: seed 0).
        noise:
            False gives the noiseless expectation.

        Returns
        -------
        pandas.DataFrame
            ``device_id`` and one ``probe_<name>_ms`` column per standard probe.
        """
        from hdap_engine.fleet.probes import probe_column, probe_tables

        g = _resolve_rng(rng)
        cols = {"device_id": pd.Series(states.device_id, dtype=str)}
        for name, table in probe_tables().items():
            cols[probe_column(name)] = self.latency_ms(table, states, runs=runs, rng=g,
                                                       noise=noise)[0]
        return pd.DataFrame(cols)

    def noise_sigma(self, states: DeviceStates) -> np.ndarray:
        """(D,) log-normal sigma of one run's measurement noise on each device."""
        return self.preset.noise_sigma * np.asarray(states.noise_scale, float)

    def _check(self, states: DeviceStates) -> None:
        if states.sku and states.sku != self.preset.name:
            raise HdapError(
                f"these device states are for SKU {states.sku!r} but the twin simulates "
                f"{self.preset.name!r}; build the twin with that SKU's preset"
            )
