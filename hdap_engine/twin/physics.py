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

Each device of a fleet has a latent state (`hdap_engine.twin.states.DeviceStates`): clock, share of the
compute engine, active units, DRAM bandwidth, cache capacity and per-kernel
overhead multipliers. Drift mechanisms (see `hdap_engine.twin.mechanisms`)
move different ones, so different devices are bound by different bottlenecks
and prefer different architectures. Every run is multiplied by log-normal
measurement noise of a few per cent.

All arithmetic is vectorised over candidates x layers x devices (devices in
chunks), because the search oracle and the fleet ground truth call it a lot.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

from hdap_engine.errors import HdapError
from hdap_engine.fleet.probes import probe_column, probe_tables
from hdap_engine.pruning.layers import LayerTable
from hdap_engine.twin.presets import SkuPreset
from hdap_engine.twin.states import DeviceStates

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
