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
  eager on a CPU does not) cost nothing;
- every op of the layer vocabulary has a class: grouped convs are per-group
  GEMMs, linear layers and matrix products on token rows are GEMMs, an
  activation costs by its function (a transcendental one, ``ACT_COST``, several
  times a ReLU), softmax and norms sweep their input more than once, gates,
  concatenations and copies move memory; an ``other`` op is priced by its
  memory traffic, a stated fallback that `Twin.fallback_layers` names.

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

_MAC_OPS = ("conv", "dwconv", "gconv", "linear", "matmul")
"""Ops that run as a GEMM-like kernel: they pay the call cost of a conv / linear
and an element-wise op right after them can be fused into their epilogue."""

# FLOPs per element of an activation by function: (plain arithmetic ops,
# transcendental evaluations). A transcendental (exp, erf, tanh) costs the
# preset's ``transcendental_flops``: SiLU, GELU, sigmoid and tanh cost several
# times a ReLU of the same shape; the piecewise-linear hard variants do not.
ACT_COST: dict[str, tuple[float, float]] = {
    "": (1.0, 0.0),  # an activation the layer table did not name: ReLU, the common case
    "relu": (1.0, 0.0),
    "relu6": (2.0, 0.0),
    "leaky_relu": (2.0, 0.0),
    "hardtanh": (2.0, 0.0),
    "prelu": (2.0, 0.0),
    "hardswish": (4.0, 0.0),
    "hardsigmoid": (3.0, 0.0),
    "sigmoid": (2.0, 1.0),
    "silu": (3.0, 1.0),
    "swish": (3.0, 1.0),
    "tanh": (2.0, 1.0),
    "gelu": (4.0, 1.0),
    "elu": (2.0, 1.0),
    "selu": (3.0, 1.0),
    "celu": (3.0, 1.0),
    "softplus": (2.0, 1.0),
    "logsigmoid": (3.0, 1.0),
    "mish": (4.0, 2.0),
}
_UNKNOWN_ACT = (4.0, 1.0)  # fallback for an activation not listed: priced like a GELU

# Element-wise FLOPs per output element of the other non-GEMM ops. A softmax
# is an exponential per element plus the max, subtract, sum and divide; a
# layer / group norm accumulates a mean and a variance, then normalises and
# applies the affine; copies, concatenations and ops the twin has no class for
# move memory only.
_ELT_FLOPS = {"bn": 2.0, "norm": 5.0, "add": 1.0, "mul": 1.0, "act": 1.0,
              "copy": 0.0, "cat": 0.0, "other": 0.0}
_SOFTMAX_ARITH = 4.0


def _act_cost(fn: str) -> tuple[float, float]:
    return ACT_COST.get(str(fn).lower(), _UNKNOWN_ACT)


def _eltwise_flops(op: np.ndarray, fn: np.ndarray, k: np.ndarray,
                   transcendental: float) -> np.ndarray:
    """(K,) FLOPs per output element of each non-GEMM layer (a pool: its window)."""
    out = np.zeros(len(op))
    for i, (o, f) in enumerate(zip(op, fn, strict=True)):
        if o == "act":
            arith, trans = _act_cost(f)
            out[i] = arith + trans * transcendental
        elif o == "softmax":
            out[i] = _SOFTMAX_ARITH + transcendental
        elif o == "pool":
            out[i] = k[i]
        else:
            out[i] = _ELT_FLOPS.get(str(o), 0.0)
    return out


def fallback_reason(op: str, fn: str) -> str | None:
    """Why the twin prices a layer by a fallback, or None when it has physics for it."""
    if op == "other":
        return f"no cost class for {fn or 'this op'!r}: priced by its memory traffic"
    if op == "act" and str(fn).lower() not in ACT_COST:
        return f"activation {fn!r} not known: priced like a GELU (one transcendental per element)"
    return None


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
    keep: np.ndarray  # (L,) layers that run as their own kernel (K of them)
    mac_mask: np.ndarray  # (K,) which of the K kernels pay the conv / linear call cost
    calls: np.ndarray  # (K,) fixed costs each kernel pays (a global pool may be several)
    dw_mask: np.ndarray  # (K,) depthwise kernels (their own fixed cost on top)


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

    def fallback_layers(self, table: LayerTable) -> list[dict]:
        """Layers the twin prices by a stated fallback rather than by their own physics.

        An ``other`` op (one the pruning space met but has no class for) is
        priced by its memory traffic plus a kernel's fixed cost; an activation
        whose function is not in `ACT_COST` like a GELU. Reports list these so
        that a reader knows which figures rest on a fallback.

        Returns
        -------
        list[dict]
            One ``{"name", "op", "fn", "fallback"}`` per such layer, in table order.
        """
        out = []
        for name, op, fn in zip(table.names, table.op, table.fn, strict=True):
            reason = fallback_reason(str(op), str(fn))
            if reason is not None:
                out.append({"name": name, "op": str(op), "fn": str(fn), "fallback": reason})
        return out

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
        is_g = op == "gconv"
        is_dense = is_conv | is_g  # a GEMM per group (one group for a dense conv)
        is_1x1 = is_conv & (k == 1)
        is_dw = op == "dwconv"
        is_rows = np.isin(op, ("linear", "matmul"))
        is_fc = is_rows & (pix == 1)  # batch-1 GEMV: one row
        is_gemm = is_rows & (pix > 1)  # token rows: a GEMM, shaped like a 1x1 conv
        is_mac = is_dense | is_dw | is_rows
        # A depthwise conv reads as many channels as it writes (groups == channels)
        in_el = np.where(is_dw, cout * (table.h_in * table.w_in)[keep], in_el)
        # A grouped conv is `groups` independent GEMMs of cin/groups x cout/groups:
        # padding, the reduction depth and the re-reads are those of one group.
        groups = np.where(is_g, table.groups[keep].astype(float), 1.0)
        cin_g = cin / groups
        cout_g = cout / groups

        # Arithmetic: 2 FLOPs per MAC; element-wise ops by class (see _eltwise_flops).
        elt_flops = _eltwise_flops(op, table.fn[keep], k, p.transcendental_flops)
        flops = np.where(is_mac, 2.0 * macs, elt_flops * out_el)
        # A global pool (1x1 output) is a streaming reduction; a windowed pool
        # (a ResNet or VGG max-pool) runs the framework's window loop.
        windowed_pool = (op == "pool") & (pix > 1)
        eff = np.select(
            [is_1x1 | is_gemm, is_conv, is_g, is_dw, is_fc, windowed_pool,
             np.isin(op, ("bn", "norm"))],
            [p.eff_conv1x1, p.eff_conv, p.eff_gconv, p.eff_dwconv, p.eff_linear, p.eff_pool,
             p.eff_bn],
            default=p.eff_eltwise,
        )
        # Padding waste: output channels padded to the channel tile, output pixels
        # (rows) to the pixel tile (a GEMM's N and M dimensions); a GEMV has one row.
        ct = float(p.channel_tile)
        pt = float(p.pixel_tile)
        c_pad = np.ceil(cout_g / ct) * ct
        p_eff = np.where(is_fc, 1.0, pix)
        if p.tile_rows:
            w_o = table.w_out[keep].astype(float)
            p_pad = np.where(is_fc, 1.0, np.where(
                is_gemm, np.ceil(pix / pt) * pt, np.ceil(w_o / pt) * pt * table.h_out[keep]))
        else:
            p_pad = np.where(is_fc, 1.0, np.ceil(p_eff / pt) * pt)
        pad = np.where(is_mac, (cout_g / c_pad) * (p_eff / p_pad), 1.0)
        # Blocked layouts pad the input channels of a dense conv too (the GEMM's
        # K dimension); an image input (<= 4 channels) is read in plain layout.
        image_in = is_conv & (cin <= 4)  # a network's stem: its own kernel
        cin_pad = cin_g
        if p.cin_tile > 1:
            cit = float(p.cin_tile)
            cin_pad = np.where(image_in, cin_g, np.ceil(cin_g / cit) * cit)
            pad = np.where(is_dense, pad * cin_g / np.maximum(cin_pad, 1.0), pad)
        if p.misaligned_eff != 1.0:
            mt = float(p.misaligned_tile or p.channel_tile)
            mit = float(p.misaligned_tile or p.cin_tile)
            off = ((np.mod(cout_g, mt) != 0)
                   | (~image_in & (np.mod(cin_g, mit) != 0)))
            pad = np.where(is_dense & off, pad * p.misaligned_eff, pad)
        # A short reduction (few input channels) spends a large share of every
        # tile on loading and storing it rather than on multiply-adds. (An
        # image-input conv, <= 4 channels, has its own kernel and is exempt.)
        if p.k_half > 0:
            kdim = np.where(is_dense, cin_pad * k, cin)
            short_k = (is_dense & ~image_in) | is_rows
            pad = np.where(short_k, pad * kdim / (kdim + p.k_half), pad)
        if p.small_tile_macs > 0:
            # (an image-input stem conv too: it gathers k x k x 3 inputs per pixel)
            work = np.where(is_dense, cin_pad * k * c_pad, cin * c_pad)
            frac = np.minimum(work / p.small_tile_macs, 1.0) ** p.small_tile_exp
            pad = np.where(is_dense | is_gemm, pad * frac, pad)
        # Parallel work items: GEMM tiles for MAC layers (every group's own),
        # grains for element-wise.
        tiles = np.ceil(p_eff / pt) * np.ceil(cout_g / ct) * groups
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
        is_window = is_dense | is_dw
        side = np.sqrt(float(p.reuse_pixel_block)) * table.stride[keep]
        halo = np.where(is_window, ((side + np.sqrt(k) - table.stride[keep]) / side) ** 2, 1.0)
        halo = np.maximum(halo, 1.0)
        n_in_reads = np.where(is_dense | is_rows, np.ceil(cout_g / p.reuse_channel_block),
                              1.0) * halo
        rr_w = np.where(is_window | is_gemm, np.ceil(p_eff / p.reuse_pixel_block) - 1.0, 0.0)
        # Normalisations and softmax sweep their input more than once (statistics
        # first, then the normalised write); the extra sweeps hit the cache when
        # the input fits in it.
        sweeps = np.select([op == "norm", op == "softmax"], [1.0, 2.0], default=0.0)
        traffic = [
            (act_bytes, 1.0 / np.maximum(act_bytes, 1.0)),
            (w_b, np.broadcast_to(1.0 / wtot, w_b.shape)),
            ((n_in_reads - 1.0) * in_b, 1.0 / np.maximum(in_b, 1.0)),
            (rr_w * w_b, 1.0 / np.maximum(w_b, 1.0)),
            (sweeps * in_b, 1.0 / np.maximum(in_b, 1.0)),
        ]
        calls = np.where((op == "pool") & (pix == 1) & (k > 1), p.global_pool_kernels, 1.0)
        n_k = np.full(table.n_candidates, float(calls.sum()))
        n_mac = np.full(table.n_candidates, float(is_mac.sum()))
        return _Prepared(tc_slot=tc_slot, slots=slots, traffic=traffic, n_kernels=n_k,
                         n_mac=n_mac, keep=keep, mac_mask=is_mac, calls=calls, dw_mask=is_dw)

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
            "dw_overhead": p.dw_overhead_us * 1e-6 * np.asarray(states.overhead_scale, float),
        }
        if p.llc_kb > 0:
            inv_llc = 1.0 / (p.llc_gbps * 1e9 * np.asarray(states.mem_bw_scale, float) ** 0.5
                             * speed ** 0.5)
            out["llc"] = p.llc_kb * 1024.0 * cache_scale
            out["d_llc"] = inv_llc - inv_dram
            out["d_cache"] = inv_cache - inv_llc
        return out

    def _expected_seconds(self, prep: _Prepared, dev: dict[str, np.ndarray], *,
                          per_layer: bool = False) -> np.ndarray:
        """(N, D) noiseless latency in seconds; (N, K, D) per kernel with ``per_layer``."""
        n, k = prep.tc_slot.shape
        d = len(dev["inv_speed"])
        out = np.empty((n, k, d) if per_layer else (n, d))
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
            if per_layer:
                out[:, :, sl] = tc
            else:
                out[:, sl] = tc.sum(axis=1, dtype=np.float64)
        if per_layer:
            if not async_launch:
                out += prep.calls[None, :, None] * dev["overhead"][None, None, :]
            out += prep.mac_mask[None, :, None] * dev["mac_overhead"][None, None, :]
            out += prep.dw_mask[None, :, None] * dev["dw_overhead"][None, None, :]
            return out
        if not async_launch:
            out += prep.n_kernels[:, None] * dev["overhead"][None, :]
        out += prep.n_mac[:, None] * dev["mac_overhead"][None, :]
        out += float(prep.dw_mask.sum()) * dev["dw_overhead"][None, :]
        return out

    # -- public API -----------------------------------------------------------

    def expected_ms(self, table: LayerTable, states: DeviceStates) -> np.ndarray:
        """(N, D) noiseless latency in milliseconds of N candidates on D devices."""
        self._check(states)
        return self._expected_seconds(self._prepare(table), self._device_terms(states)) * 1e3

    def layer_ms(self, table: LayerTable, states: DeviceStates) -> np.ndarray:
        """(N, L, D) noiseless milliseconds of every layer; a fused layer costs 0.

        The per-layer split of `expected_ms` (its sum over layers), for
        reports and for comparing the twin with a profiler layer by layer.
        """
        self._check(states)
        prep = self._prepare(table)
        per = self._expected_seconds(prep, self._device_terms(states), per_layer=True) * 1e3
        out = np.zeros((table.n_candidates, table.n_layers, per.shape[2]))
        out[:, prep.keep, :] = per
        return out

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
