"""The twin in INT8: what changes on a device when the model that runs is quantised.

An INT8 model (QDQ, from ONNX Runtime's quantiser) changes four things the
roofline in `physics` reads, and `int8_preset` changes exactly those fields
of a SKU preset, from the figures in `INT8_PHYSICS`:

- throughput per op class: how many times the FP32 (or, on the Jetson, the
  FP16 engine's) rate an INT8 dense conv, 1x1 conv, depthwise conv and GEMV
  reach on that hardware;
- the channel multiple below which the vector or tile width is wasted: an
  INT8 register or tile holds more channels than an FP32 one, so a width that
  was aligned in FP32 can be misaligned in INT8 (``channel_tile``,
  ``cin_tile``);
- bytes: weights and activations between fused QDQ layers are one byte each
  (a quarter of FP32);
- the quantise / dequantise at the model's edges (the FP32 input quantised,
  the logits dequantised): two extra kernels and a pass over the input, added
  by `Int8Twin` to every inference.

The INT8 model runs in ONNX Runtime (or TensorRT), which folds batch norm and
activations into the INT8 conv on every preset.

Sources and what is estimated, by SKU:

- ``jetson-nano``: the Maxwell GPU (sm_53) has neither DP4A (sm_61 and later)
  nor INT8 tensor cores, and TensorRT reports no fast INT8 on it
  (``IBuilder::platformHasFastInt8()`` is false on Nano; NVIDIA's Jetson Nano
  benchmarks are FP16). INT8 layers therefore compute at the FP16 engine's
  rate (ratio 1.0): on this fleet INT8 buys bytes (weights and activations at
  half the FP16 engine's), not arithmetic. A Xavier or Orin would have DP4A /
  INT8 tensor cores; that is another SKU.
- ``rpi4``: Cortex-A72 is Armv8.0-A, without the SDOT/UDOT dot-product
  instructions (Armv8.2-A and later); ONNX Runtime's MLAS runs INT8 GEMMs
  with widening multiply-accumulates (16 INT8 lanes per 128-bit NEON
  register, accumulated in 16/32 bits), about twice the FP32 rate for dense
  convs (estimate; Arm Cortex-A72 Software Optimization Guide for the
  instruction throughputs). Depthwise INT8 kernels gain little. The INT8
  channel multiple is 16 (one NEON register of INT8).
"""

from __future__ import annotations

from dataclasses import dataclass, replace

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.twin.physics import Twin
from hdap_engine.twin.presets import SkuPreset


@dataclass(frozen=True)
class Int8Physics:
    """How a SKU runs INT8, relative to its preset (the precision of ``bytes_per_elem``)."""

    conv_ratio: float  # INT8 / preset throughput of a k x k dense conv
    conv1x1_ratio: float
    dwconv_ratio: float
    linear_ratio: float
    channel_tile: int  # output channels one INT8 vector / tile covers
    cin_tile: int  # input channels one INT8 reduction step covers (1: none)
    kernel_overhead_us: float  # per-kernel dispatch of the INT8 runtime
    note: str


INT8_PHYSICS: dict[str, Int8Physics] = {
    "jetson-nano": Int8Physics(
        conv_ratio=1.0, conv1x1_ratio=1.0, dwconv_ratio=1.0, linear_ratio=1.0,
        channel_tile=32, cin_tile=32, kernel_overhead_us=12.0,
        note="Maxwell has no DP4A or INT8 tensor cores: INT8 computes at the FP16 rate "
             "and saves bytes only"),
    "rpi4": Int8Physics(
        conv_ratio=2.0, conv1x1_ratio=2.0, dwconv_ratio=1.0, linear_ratio=1.5,
        channel_tile=16, cin_tile=16, kernel_overhead_us=8.0,
        note="Cortex-A72 has no SDOT: INT8 GEMMs by widening NEON multiply-adds, about 2x FP32"),
}


def int8_physics(preset: SkuPreset) -> Int8Physics:
    """The INT8 figures of ``preset``; a SKU without any is one clear error."""
    try:
        return INT8_PHYSICS[preset.name]
    except KeyError:
        raise HdapError(f"the twin has no INT8 physics for SKU {preset.name!r} (it has: "
                        f"{', '.join(INT8_PHYSICS)}); use --precision fp32, or the host or "
                        "agent backend") from None


def int8_preset(preset: SkuPreset) -> SkuPreset:
    """``preset`` as it runs an INT8 model: throughput, channel multiples, bytes, fusion.

    The efficiencies carry the per-op-class ratios, so that the preset's peak
    (``flops_per_cycle``) and its probe calibration stay those of the SKU.
    """
    q = int8_physics(preset)
    return replace(
        preset, name=preset.name, description=f"{preset.description}; INT8 (QDQ) model",
        eff_conv=preset.eff_conv * q.conv_ratio,
        eff_conv1x1=preset.eff_conv1x1 * q.conv1x1_ratio,
        eff_dwconv=preset.eff_dwconv * q.dwconv_ratio,
        eff_linear=preset.eff_linear * q.linear_ratio,
        channel_tile=q.channel_tile, cin_tile=q.cin_tile,
        bytes_per_elem=1, fused_ops=("bn", "act"),
        kernel_overhead_us=q.kernel_overhead_us)


class Int8Twin(Twin):
    """The twin of an INT8 model: `int8_preset` physics plus the QDQ edges of the model.

    Parameters
    ----------
    preset:
        The SKU's FP32/FP16 preset (the one the fleet's states were drawn for).
    """

    def __init__(self, preset: SkuPreset, **kwargs):
        super().__init__(int8_preset(preset), **kwargs)
        self.base_preset = preset
        self.physics = int8_physics(preset)

    def edge_ms(self, table, states) -> np.ndarray:
        """(N, D) quantise of the input and dequantise of the logits, in milliseconds."""
        p = self.preset
        dev = self._device_terms(states)
        # The float input is read (4 bytes) and written as INT8 (1 byte), from DRAM;
        # the logits are tiny. Each edge is one more kernel.
        in_el = np.asarray(table.input_elems(), float)[:, 0]
        out_el = np.asarray(table.output_elems(), float)[:, -1]
        seconds = (5.0 * (in_el + out_el))[:, None] * dev["inv_dram"][None, :]
        launches = 2.0 * (dev["overhead"] if not p.async_launch else
                          np.maximum(dev["overhead"], dev["device_overhead"]))
        return (seconds + launches[None, :]) * 1e3

    def expected_ms(self, table, states) -> np.ndarray:
        return super().expected_ms(table, states) + self.edge_ms(table, states)


def int8_backend(twin_backend):
    """The INT8 form of a `TwinBackend`: the same devices and noise, INT8 physics, its own
    store key (``...:int8:device``) and source."""
    from hdap_engine.latency.backends import TwinBackend

    out = TwinBackend(Int8Twin(twin_backend.twin.preset), twin_backend.states,
                      fleet_key=f"{twin_backend.fleet_key}:int8",
                      fit_error=twin_backend.fit_error, seed=twin_backend.seed)
    out.source = "twin (simulated, int8)"
    out.precision = "int8"
    return out


def fp32_backend(int8_twin_backend):
    """The FP32 (preset precision) sibling of an INT8 `TwinBackend` (side-by-side figures)."""
    from hdap_engine.latency.backends import TwinBackend

    twin = int8_twin_backend.twin
    key = int8_twin_backend.fleet_key.removesuffix(":int8")
    return TwinBackend(Twin(twin.base_preset), int8_twin_backend.states, fleet_key=key,
                       fit_error=int8_twin_backend.fit_error, seed=int8_twin_backend.seed)
