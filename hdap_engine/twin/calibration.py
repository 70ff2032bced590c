"""Reference layer tables of unpruned ImageNet networks, to check the twin's presets against published latencies.

The pruning space builds tables from real PyTorch models; these hand-written
tables (same conventions: conv / bn / act / add / pool rows in execution order,
batch 1, 224x224) let the twin be calibrated and tested on its own, and let
candidates with channels moved around be built without a model.

``python -m hdap_engine.twin.calibration`` prints the nominal latency of
ResNet-50, ResNet-18 and MobileNetV1 on every preset next to the published
figure each preset is calibrated against; with ``--speed`` it times the twin
on 150 layers x 100 candidates x 5,000 devices.
"""

from __future__ import annotations

import numpy as np

from hdap_engine.pruning.layers import LayerTable, make_table


class _Builder:
    """Appends layer rows while tracking the spatial size."""

    def __init__(self, hw: int = 224):
        self.rows: list[dict] = []
        self.hw = hw

    def conv(self, name, cin, cout, k, stride=1, *, dw=False, bn=True, act=True):
        h_out = (self.hw + 2 * (k // 2) - k) // stride + 1
        self.rows.append(dict(name=name, op="dwconv" if dw else "conv", cin=cin, cout=cout,
                              kernel=k, stride=stride, h_in=self.hw, w_in=self.hw,
                              h_out=h_out, w_out=h_out))
        self.hw = h_out
        if bn:
            self.rows.append(dict(name=f"{name}.bn", op="bn", cin=cout, cout=cout,
                                  h_in=h_out, w_in=h_out))
        if act:
            self.rows.append(dict(name=f"{name}.act", op="act", cin=cout, cout=cout,
                                  h_in=h_out, w_in=h_out))

    def pool(self, name, c, k, stride, *, out=None):
        h_out = out if out is not None else (self.hw + 2 * (k // 2) - k) // stride + 1
        self.rows.append(dict(name=name, op="pool", cin=c, cout=c, kernel=k, stride=stride,
                              h_in=self.hw, w_in=self.hw, h_out=h_out, w_out=h_out))
        self.hw = h_out

    def add(self, name, c):
        self.rows.append(dict(name=name, op="add", cin=c, cout=c, h_in=self.hw, w_in=self.hw))
        self.rows.append(dict(name=f"{name}.act", op="act", cin=c, cout=c,
                              h_in=self.hw, w_in=self.hw))

    def fc(self, name, cin, cout):
        self.rows.append(dict(name=name, op="linear", cin=cin, cout=cout, h_in=1, w_in=1,
                              has_bias=True))


def _scaled(c: int, s: float) -> int:
    return max(1, int(round(c * s)))


def resnet_rows(depth: int = 50, stage_scales: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)
                ) -> list[dict]:
    """Layer rows of torchvision's ResNet-18/34/50 (bn and act as separate rows).

    ``stage_scales`` scales the inner width of every block of each of the four
    stages (the channels between a block's convolutions, which channel pruning
    removes; block outputs stay, as residual adds need them).
    """
    blocks = {18: [2, 2, 2, 2], 34: [3, 4, 6, 3], 50: [3, 4, 6, 3]}[depth]
    bottleneck = depth >= 50
    b = _Builder(224)
    c = 64
    b.conv("conv1", 3, c, 7, 2)
    b.pool("maxpool", c, 3, 2)
    cin = c
    for stage, n in enumerate(blocks):
        out = 64 * 2 ** stage * (4 if bottleneck else 1)
        mid = _scaled(64 * 2 ** stage, stage_scales[stage])
        for i in range(n):
            s = 2 if (i == 0 and stage > 0) else 1
            name = f"layer{stage + 1}.{i}"
            hw_in = b.hw
            if bottleneck:
                b.conv(f"{name}.conv1", cin, mid, 1)
                b.conv(f"{name}.conv2", mid, mid, 3, s)
                b.conv(f"{name}.conv3", mid, out, 1, act=False)
            else:
                b.conv(f"{name}.conv1", cin, mid, 3, s)
                b.conv(f"{name}.conv2", mid, out, 3, act=False)
            if s != 1 or cin != out:
                hw_out = b.hw
                b.hw = hw_in
                b.conv(f"{name}.downsample", cin, out, 1, s, act=False)
                b.hw = hw_out
            b.add(f"{name}.add", out)
            cin = out
    b.pool("avgpool", cin, b.hw, 1, out=1)
    b.fc("fc", cin, 1000)
    return b.rows


MOBILENET_V1_GROUPS = (0, 0, 1, 1, 2, 2, 2, 2, 2, 2, 2, 3, 3)
"""Width group of each of MobileNetV1's 13 blocks (by output resolution: 112-56, 28, 14, 7)."""


def mobilenet_v1_rows(stage_scales: tuple[float, ...] = (1.0, 1.0, 1.0, 1.0)) -> list[dict]:
    """Layer rows of MobileNetV1 (224x224): a stem conv and 13 depthwise-separable blocks.

    ``stage_scales`` scales the pointwise output width of the blocks of each
    group in `MOBILENET_V1_GROUPS`.
    """
    cfg = [(64, 1), (128, 2), (128, 1), (256, 2), (256, 1), (512, 2),
           (512, 1), (512, 1), (512, 1), (512, 1), (512, 1), (1024, 2), (1024, 1)]
    b = _Builder(224)
    c = 32
    b.conv("stem", 3, c, 3, 2)
    for i, (out, s) in enumerate(cfg):
        out = _scaled(out, stage_scales[MOBILENET_V1_GROUPS[i]])
        b.conv(f"block{i}.dw", c, c, 3, s, dw=True)
        b.conv(f"block{i}.pw", c, out, 1)
        c = out
    b.pool("avgpool", c, b.hw, 1, out=1)
    b.fc("fc", c, 1000)
    return b.rows


def reference_table(model: str) -> LayerTable:
    """Table of one unpruned reference network: resnet50, resnet18 or mobilenet_v1."""
    if model == "resnet50":
        return make_table(resnet_rows(50))
    if model == "resnet18":
        return make_table(resnet_rows(18))
    if model == "mobilenet_v1":
        return make_table(mobilenet_v1_rows())
    raise ValueError(f"unknown reference model {model!r}")


def stack_tables(tables: list[LayerTable]) -> LayerTable:
    """Candidates of one network (same layers, different channels) as one table."""
    first = tables[0]
    for t in tables[1:]:
        if t.names != first.names:
            raise ValueError("tables must have the same layers to be stacked")
    return LayerTable(
        names=first.names, op=first.op, kernel_h=first.kernel_h, kernel_w=first.kernel_w,
        stride=first.stride, h_in=first.h_in, w_in=first.w_in, h_out=first.h_out,
        w_out=first.w_out, has_bias=first.has_bias,
        cin=np.concatenate([t.cin for t in tables]),
        cout=np.concatenate([t.cout for t in tables]),
        groups=first.groups, fn=first.fn,
    )


# Published figures each preset is calibrated against (nominal device, batch 1).
PUBLISHED_MS = {
    ("jetson-nano", "resnet50"): (28.0, "NVIDIA Jetson Nano DL inference benchmarks: ~36 img/s, TensorRT FP16"),
    ("rpi4", "resnet50"): (225.0, "PyTorch 'Real Time Inference on Raspberry Pi 4' table: 225 ms model time"),
    ("rpi4", "resnet18"): (100.0, "PyTorch 'Real Time Inference on Raspberry Pi 4' table: 100 ms model time"),
}


def nominal_report() -> list[dict]:
    """Nominal (noiseless) latency of each reference network on each preset."""
    from hdap_engine.twin.physics import Twin
    from hdap_engine.twin.presets import PRESETS
    from hdap_engine.twin.states import DeviceStates

    out = []
    for sku, preset in PRESETS.items():
        twin = Twin(preset)
        states = DeviceStates.nominal(1, sku=sku)
        for model in ("resnet50", "resnet18", "mobilenet_v1"):
            t = reference_table(model)
            ms = float(twin.latency_ms(t, states, noise=False)[0, 0])
            pub = PUBLISHED_MS.get((sku, model))
            out.append({"sku": sku, "model": model, "gmacs": float(t.macs().sum()) / 1e9,
                        "twin_ms": ms, "published_ms": pub[0] if pub else None,
                        "source": pub[1] if pub else ""})
    return out


def twin_speed(layers: int = 150, candidates: int = 100, devices: int = 5000,
               sku: str = "jetson-nano") -> float:
    """Seconds for one noiseless twin call on candidates x layers x devices (fleet ground truth)."""
    import time
    from dataclasses import replace

    from hdap_engine.twin.physics import Twin
    from hdap_engine.twin.presets import PRESETS
    from hdap_engine.twin.simulate import simulate_fleet
    from hdap_engine.twin.states import DeviceStates

    base = make_table(resnet_rows(50)[:layers], n_candidates=candidates)
    scale = np.random.default_rng(0).uniform(0.3, 1.0, (candidates, 1))
    table = replace(base, cin=np.maximum(1, np.round(base.cin * scale)),
                    cout=np.maximum(1, np.round(base.cout * scale)))
    states = DeviceStates.from_frame(simulate_fleet(sku, devices, seed=0)[1])
    twin = Twin(PRESETS[sku])
    t0 = time.perf_counter()
    twin.latency_ms(table, states, noise=False)
    return time.perf_counter() - t0


def main() -> None:
    import sys

    if "--speed" in sys.argv:
        for sku in ("jetson-nano", "rpi4"):
            print(f"{sku}: 150 layers x 100 candidates x 5000 devices in "
                  f"{twin_speed(sku=sku):.2f} s")
        return
    for r in nominal_report():
        pub = f"{r['published_ms']:.0f} ms ({r['source']})" if r["published_ms"] else "-"
        print(f"{r['sku']:12s} {r['model']:13s} {r['gmacs']:.2f} GMACs  twin {r['twin_ms']:7.1f} ms"
              f"   published {pub}")


if __name__ == "__main__":
    main()
