"""Detectors: which of torchvision's detectors the product prunes, measured one by one.

For each detector (random initialisation, COCO's 91 classes), each in a fresh process
with a time limit:

1. the model is built and its pruning space (the core: backbone, FPN, heads) is built;
2. the space's MACs are compared with Torch-Pruning's counter on the core, unpruned;
3. the uniform candidate at 50 % of the MACs is pruned for real and the counter's MACs
   compared again;
4. the pruned detector runs end to end (a list of one image) and returns boxes;
5. it is exported to ONNX with its post-processing and compared with PyTorch
   (`hdap_engine.export.detection.check_detector_onnx`; batch-norm statistics are first
   estimated on random batches, `estimate_batch_norm`, or a random detector's scores
   all tie and the check compares nothing);
6. the twin prices the core, unpruned and pruned (Jetson Nano preset, a nominal
   device), and the post-processing is measured on this host.

    python -m benchmarks.detectors                          # the six, at their own size
    python -m benchmarks.detectors --size 3,320,320         # all at one (smaller) size
    python -m benchmarks.detectors --models torchvision:ssdlite320_mobilenet_v3_large
    python -m benchmarks.detectors --table results.jsonl    # the Markdown table again
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

DETECTORS = (
    "torchvision:ssdlite320_mobilenet_v3_large", "torchvision:fasterrcnn_mobilenet_v3_large_320_fpn",
    "torchvision:fasterrcnn_mobilenet_v3_large_fpn", "torchvision:fcos_resnet50_fpn",
    "torchvision:retinanet_resnet50_fpn_v2", "torchvision:ssd300_vgg16", "detector_demo",
)


def one(name: str) -> dict:
    """Every column for one detector key (run in a child process)."""
    import numpy as np
    import torch

    from hdap_engine.export.detection import (
        check_detector_onnx,
        check_images,
        export_detector_onnx,
    )
    from hdap_engine.models.detection import estimate_batch_norm
    from hdap_engine.models.postprocess import host_postprocess_ms
    from hdap_engine.models.zoo import build_model, get_spec
    from hdap_engine.pruning.apply import count_macs_params, prune_to_widths
    from hdap_engine.pruning.cache import build_now
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.search.baselines import uniform_widths
    from hdap_engine.twin import DeviceStates, Twin, get_preset

    res: dict = {"model": name, "stage": "build"}
    t0 = time.perf_counter()
    try:
        spec = get_spec(name)
        res["input"] = "x".join(map(str, spec.input_shape))
        model = build_model(name)
        res["build_s"] = round(time.perf_counter() - t0, 1)
        res["stage"] = "space"
        t1 = time.perf_counter()
        space = PruningSpace.from_data(build_now(name))
        res.update(space_s=round(time.perf_counter() - t1, 1), groups=space.n_groups,
                   kept=len(space.kept), base_macs=space.base_macs)
        counter, _ = count_macs_params(model, space)
        res["macs_err_base"] = abs(space.base_macs - counter) / counter
        res["stage"] = "prune"
        widths = uniform_widths(space, 0.5 * space.base_macs)
        prune_to_widths(model, space, widths)
        macs, _ = count_macs_params(model, space)
        res["macs_ratio"] = round(macs / space.base_macs, 4)
        res["macs_err"] = abs(space.macs(widths) - macs) / macs
        res["stage"] = "run"
        with torch.no_grad():
            out = model([torch.rand(spec.input_shape)])
        res["boxes"] = int(out[0]["boxes"].shape[0])
        res["stage"] = "onnx"
        estimate_batch_norm(model, spec.input_shape)  # else every anchor's scores tie
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_detector_onnx(model, spec.input_shape, path)
            res["onnx"] = check_detector_onnx(model, path, check_images(spec.input_shape))
        res["stage"] = "twin"
        twin = Twin(get_preset("jetson-nano"))
        state = DeviceStates.nominal(1, sku="jetson-nano")
        both = np.stack([space.base_widths, widths])
        res["twin_ms"] = [float(x) for x in np.ravel(twin.expected_ms(space.layer_table(both),
                                                                      state))]
        res["stage"] = "post"
        ms, anchors = host_postprocess_ms(name)
        res.update(post_ms=round(ms, 1), anchors=anchors)
        res["stage"] = "done"
    except Exception as exc:  # the table reports the first error of each detector
        text = str(exc).strip().splitlines()
        res["error"] = f"{type(exc).__name__}: {text[0][:200] if text else ''}"
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def table(rows: list[dict]) -> str:
    def f(r, key, fmt="{}"):
        return fmt.format(r[key]) if key in r else "-"

    lines = ["| detector | input | build s | space s | groups | MACs | MACs vs TP (base / 50 %) "
             "| 50 % MACs ratio | pruned boxes | ONNX matched / compared (max box px, score) "
             "| twin ms (full / 50 %) | post-proc ms (anchors) | first error |",
             "|" + "---|" * 13]
    for r in rows:
        o = r.get("onnx")
        onnx = (f"{o['matched']}/{o['compared']} ({o['max_box_diff']:.1e}, "
                f"{o['max_score_diff']:.1e}){'' if o['ok'] else ' FAIL'}" if o else "-")
        twin = (f"{r['twin_ms'][0]:.1f} / {r['twin_ms'][1]:.1f}" if "twin_ms" in r else "-")
        macs = f"{r['base_macs'] / 1e9:.2f} G" if "base_macs" in r else "-"
        errs = (f"{r['macs_err_base']:.0e} / {r['macs_err']:.0e}" if "macs_err" in r else "-")
        post = f"{r['post_ms']} ({r['anchors']})" if "post_ms" in r else "-"
        lines.append(f"| {r['model']} | {f(r, 'input')} | {f(r, 'build_s')} | {f(r, 'space_s')} "
                     f"| {f(r, 'groups')} | {macs} | {errs} | {f(r, 'macs_ratio')} "
                     f"| {f(r, 'boxes')} | {onnx} | {twin} | {post} | {r.get('error', '')} |")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m benchmarks.detectors")
    p.add_argument("--models", nargs="*", default=list(DETECTORS))
    p.add_argument("--size", help="C,H,W for every detector (default: each one's own)")
    p.add_argument("--timeout", type=float, default=1800.0)
    p.add_argument("--out", default="detectors.jsonl")
    p.add_argument("--table", help="print the table of a results file and stop")
    p.add_argument("--one", help=argparse.SUPPRESS)
    args = p.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args.one)), flush=True)
        return 0
    if args.table:
        print(table([json.loads(x) for x in Path(args.table).read_text().splitlines() if x]))
        return 0
    for name in args.models:
        key = name
        if args.size:
            from hdap_engine.models.zoo import resolve_model

            key = resolve_model(name, input_shape=args.size).key
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.detectors", "--one", key],
                                  capture_output=True, text=True, timeout=args.timeout)
            found = [x for x in proc.stdout.splitlines() if x.startswith("RESULT ")]
            res = (json.loads(found[-1][7:]) if found else
                   {"model": key, "error": (proc.stderr.strip().splitlines() or ["died"])[-1]})
        except subprocess.TimeoutExpired:
            res = {"model": key, "error": f"no result within {args.timeout:.0f} s"}
        with open(args.out, "a") as fh:
            fh.write(json.dumps(res) + "\n")
        print(table([res]).splitlines()[-1], flush=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
