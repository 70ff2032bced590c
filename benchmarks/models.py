"""Model coverage: which classifiers the product can prune, measured one by one.

For every classifier of ``torchvision.models`` and a list of edge-relevant timm
classifiers (random initialisation, the model's own input size), each in a
fresh process with a time limit:

1. the pruning space is built (`PruningSpace.for_model`);
2. the candidate at 50 % of the base MACs, every group at about the same ratio
   (`budget.repair`), is pruned for real (`prune_to_widths`);
3. the space's MACs are compared with Torch-Pruning's counter on the pruned
   model (within 1 %);
4. the pruned model runs (batch-norm statistics are first estimated on two
   random batches, as random initialisation leaves activations growing layer
   after layer and a comparison of outputs in the millions means nothing);
5. it is exported to ONNX and run in ONNX Runtime: max abs difference to
   PyTorch <= 1e-3;
6. the twin prices its layer table (Jetson Nano preset, a nominal device).

    python -m benchmarks.models                    # everything (hours on 2 cores)
    python -m benchmarks.models --only timm        # the timm list
    python -m benchmarks.models --models torchvision:resnet18 timm:efficientnet_b0
    python -m benchmarks.models --table results.jsonl   # the Markdown table again

Each result is one JSON line (appended to ``--out``), so a long run can stop
and resume (``--resume`` skips models already in the file).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

# Edge-relevant timm classifiers (mobile CNNs, efficient nets, hybrids, small ViTs).
TIMM_MODELS = (
    "mobilenetv3_large_100", "mobilenetv3_small_100", "mobilenetv4_conv_small",
    "mobilenetv4_conv_medium", "mobilenetv2_100", "mobilenetv1_100", "efficientnet_b0",
    "efficientnet_b1", "efficientnet_lite0", "efficientnet_es", "tf_efficientnetv2_b0",
    "mixnet_s", "mnasnet_100", "fbnetc_100", "ghostnet_100", "ghostnetv2_100",
    "regnety_004", "regnetx_004", "regnety_008", "rexnet_100", "hardcorenas_a",
    "lcnet_050", "resnet18", "resnet50", "resnet18d", "cspresnet50", "dla34",
    "convnext_atto", "convnext_femto", "convnext_pico", "edgenext_xx_small",
    "fastvit_t8", "efficientvit_b0", "efficientformer_l1", "mobilevit_xxs",
    "mobilevitv2_050", "levit_128s", "deit_tiny_patch16_224", "vit_tiny_patch16_224",
    "tiny_vit_5m_224", "repvgg_a0", "densenet121", "res2net50_26w_4s", "resnext50_32x4d",
)
MACS_TOL = 0.01
ONNX_TOL = 1e-3


def names(only: str | None) -> list[str]:
    import torchvision

    tv = [f"torchvision:{n}" for n in torchvision.models.list_models(module=torchvision.models)]
    timm = [f"timm:{n}" for n in TIMM_MODELS]
    return {"torchvision": tv, "timm": timm}.get(only, tv + timm)


def _calibrate_bn(model, example) -> None:
    """Batch-norm statistics of random inputs, so that a random model's outputs are O(1)."""
    import torch

    bns = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm)]
    for m in bns:
        m.reset_running_stats()
        m.momentum = None  # a plain average of the batches
        m.train()
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for _ in range(2):
            model(torch.randn((2, *example.shape[1:]), generator=gen))
    model.eval()


def one(name: str) -> dict:
    """Every column for one model (run in a fresh process)."""
    import numpy as np
    import onnxruntime as ort
    import torch

    from hdap_engine.export.bundle import export_onnx
    from hdap_engine.models.zoo import build_model, get_spec
    from hdap_engine.pruning.apply import count_macs_params, prune_to_widths
    from hdap_engine.pruning.budget import repair
    from hdap_engine.pruning.cache import build_now
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.twin import DeviceStates, Twin, get_preset

    res: dict = {"model": name, "stage": "space"}
    t0 = time.perf_counter()
    try:
        space = PruningSpace.from_data(build_now(name))  # this process is the time limit's child
        res.update(space_s=round(time.perf_counter() - t0, 1), groups=space.n_groups,
                   kept=len(space.kept), kept_why=sorted({w for _, w in space.kept})[:2],
                   uncounted=list(space.uncounted), base_macs=space.base_macs)
        res["stage"] = "prune"
        widths = repair(space, np.ones(space.n_groups), 0.5 * space.base_macs, step_up=True)
        model = build_model(name)
        prune_to_widths(model, space, widths)
        macs, _ = count_macs_params(model, space)
        res["macs_ratio"] = round(macs / space.base_macs, 4)
        res["macs_err"] = abs(space.macs(widths) - macs) / macs
        res["stage"] = "run"
        example = get_spec(name).example_input()
        _calibrate_bn(model, example)
        with torch.no_grad():
            out = model(example)
        res["out_scale"] = float(out.abs().max())
        res["stage"] = "onnx"
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "model.onnx"
            export_onnx(model, example, path)
            sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
            got = sess.run(None, {"input": example.numpy()})[0]
        res["onnx_diff"] = float(np.abs(got - out.numpy()).max())
        res["stage"] = "twin"
        twin = Twin(get_preset("jetson-nano"))
        table = space.layer_table(widths)
        ms = twin.expected_ms(table, DeviceStates.nominal(1, sku="jetson-nano"))
        res["twin_ms"] = float(np.ravel(ms)[0])
        res["stage"] = "done"
    except Exception as exc:  # the table reports the first error of each model
        text = str(exc).strip().splitlines()
        res["error"] = f"{type(exc).__name__}: {text[0][:220] if text else ''}"
    res["seconds"] = round(time.perf_counter() - t0, 1)
    return res


def passes(r: dict) -> bool:
    return (r.get("stage") == "done" and r["macs_err"] <= MACS_TOL
            and r["onnx_diff"] <= ONNX_TOL and abs(r["macs_ratio"] - 0.5) <= 0.02)


def table(results: list[dict]) -> str:
    """The Markdown coverage table (docs/models.md); a model run again counts its last line."""
    results = list({r["model"]: r for r in results}.values())
    lines = ["| model | space (s) | groups | kept full | MACs after / before | MACs vs TP |"
             " ONNX max diff | twin ms | passes | first error |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for r in results:
        def f(key, fmt, r=r):
            return fmt.format(r[key]) if key in r else "-"
        lines.append(
            f"| {r['model']} | {f('space_s', '{:.1f}')} | {f('groups', '{}')} | "
            f"{f('kept', '{}')} | {f('macs_ratio', '{:.3f}')} | {f('macs_err', '{:.1e}')} | "
            f"{f('onnx_diff', '{:.1e}')} | {f('twin_ms', '{:.2f}')} | "
            f"{'yes' if passes(r) else 'no'} | {r.get('error', '').replace('|', '/')[:120]} |")
    for lib in ("torchvision", "timm"):
        rs = [r for r in results if r["model"].startswith(lib + ":")]
        if rs:
            lines.append(f"\n{lib}: {sum(passes(r) for r in rs)} of {len(rs)} pass every column.")
    return "\n".join(lines)


def main(argv=None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--only", choices=("torchvision", "timm"))
    parser.add_argument("--models", nargs="*")
    parser.add_argument("--timeout", type=float, default=900.0, help="seconds per model")
    parser.add_argument("--out", default="model_coverage.jsonl")
    parser.add_argument("--resume", action="store_true")
    parser.add_argument("--table", metavar="JSONL", help="print the table of a results file")
    parser.add_argument("--one", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.one:
        print("RESULT " + json.dumps(one(args.one)), flush=True)
        return
    if args.table:
        rows = [json.loads(line) for line in Path(args.table).read_text().splitlines() if line]
        print(table(rows))
        return
    todo = args.models or names(args.only)
    out = Path(args.out)
    done = set()
    if args.resume and out.is_file():
        done = {json.loads(line)["model"] for line in out.read_text().splitlines() if line}
    for name in todo:
        if name in done:
            continue
        env = dict(os.environ, HDAP_HOME=tempfile.mkdtemp(prefix="hdap-cov-"))
        try:
            proc = subprocess.run([sys.executable, "-m", "benchmarks.models", "--one", name],
                                  capture_output=True, text=True, timeout=args.timeout, env=env)
            got = [ln for ln in proc.stdout.splitlines() if ln.startswith("RESULT ")]
            res = (json.loads(got[-1][7:]) if got else
                   {"model": name, "error": f"the process died: {proc.stderr.strip()[-200:]}"})
        except subprocess.TimeoutExpired:
            res = {"model": name, "error": f"no result within {args.timeout:.0f} s"}
        with out.open("a") as fh:
            fh.write(json.dumps(res) + "\n")
        print(f"{name}: {'pass' if passes(res) else res.get('error', 'fails a column')}",
              flush=True)


if __name__ == "__main__":
    main()
