"""The demo detector pruned to 50 % MACs, calibrated, and fine-tuned with distillation.

A check of the data half of issue 20 before the zoo's detection pruning space exists:
the shipped demo SSDlite is pruned *uniformly* with Torch-Pruning directly (L2
magnitude, the same ratio in every group, the heads' final predictor convolutions never
pruned), its batch-norm statistics re-estimated on training images (adaptive BN), and
fine-tuned by `hdap_engine.finetune.detection.fit_detector` with distillation from the
unpruned detector. Every mAP is on the held-out split of the same shapes data the demo
was trained on (same images, size, seed).

    python -m benchmarks.detector_prune_finetune --macs 0.5
    python -m benchmarks.detector_prune_finetune --bench bench.json --method hdap

With ``--bench`` (a ``hdap bench --model detector_demo --json`` result) the detector is
pruned to that row's widths through the engine's pruning space instead (the search's
answer, or the engine's uniform row).

Prints one JSON line: MACs before / after, and mAP@.5 / mAP@[.5:.95] unpruned, pruned,
calibrated, fine-tuned.
"""

from __future__ import annotations

import argparse
import copy
import json
import time

import torch
from torch import nn

from benchmarks.detector_demo import DEMO_SIZE, load_detector_demo


class _Core(nn.Module):
    """Backbone and head of an SSD on a normalised tensor: what Torch-Pruning traces.

    The eval forward ends in box decoding and NMS (index gathers the tracer cannot
    follow); the heads' raw outputs carry every channel dependency that matters.
    """

    def __init__(self, det: nn.Module):
        super().__init__()
        self.backbone, self.head = det.backbone, det.head

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        feats = list(self.backbone(x).values())
        out = self.head(feats)
        return torch.cat([out["cls_logits"], out["bbox_regression"]], -1)


def _predictors(det: nn.Module) -> list[nn.Module]:
    """The last convolution of every class / box predictor: its outputs are the answer."""
    out = []
    for head in (det.head.classification_head, det.head.regression_head):
        for block in head.module_list:
            convs = [m for m in block.modules() if isinstance(m, nn.Conv2d)]
            out.append(convs[-1])
    return out


def macs_of(det: nn.Module) -> float:
    import torch_pruning as tp

    macs, _ = tp.utils.count_ops_and_params(_Core(det).eval(),
                                           torch.randn(1, 3, DEMO_SIZE, DEMO_SIZE))
    return float(macs)


def prune_uniform(det: nn.Module, ratio: float) -> nn.Module:
    """A copy with every prunable group cut by ``ratio`` (L2 magnitude)."""
    import torch_pruning as tp

    det = copy.deepcopy(det).eval()
    pruner = tp.pruner.MagnitudePruner(
        _Core(det), torch.randn(1, 3, DEMO_SIZE, DEMO_SIZE), importance=tp.importance.
        MagnitudeImportance(p=2), pruning_ratio=ratio, ignored_layers=_predictors(det))
    pruner.step()
    return det


def prune_to_macs(det: nn.Module, target: float) -> tuple[nn.Module, float]:
    """Bisection on the uniform ratio until the MACs are at most ``target`` of the original."""
    base = macs_of(det)
    lo, hi, best = 0.0, 0.9, None
    for _ in range(10):
        mid = (lo + hi) / 2
        pruned = prune_uniform(det, mid)
        share = macs_of(pruned) / base
        if share <= target:
            hi, best = mid, (pruned, share)
        else:
            lo = mid
    if best is None:
        raise SystemExit(f"no uniform ratio reaches {target:.0%} of the MACs")
    return best


def main(argv: list[str] | None = None) -> None:
    from hdap_engine.accuracy.detection import evaluate_detector, recalibrate_detector_bn
    from hdap_engine.data.coco import load_coco
    from hdap_engine.data.shapes import write_shapes
    from hdap_engine.finetune.detection import DETECTION_DISTILL, fit_detector
    from hdap_engine.options import FinetuneOptions, ShapesOptions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="sample_data/detector_demo_shapes.pt")
    p.add_argument("--data-dir", default="/tmp/hdap_shapes_demo")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--macs", type=float, default=0.5)
    p.add_argument("--epochs", type=int, default=12)
    p.add_argument("--lr", type=float, default=2e-3)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--bench", default=None, help="a bench JSON whose row's widths to prune to")
    p.add_argument("--method", default="hdap", help="the row of --bench")
    p.add_argument("--kd-weight", type=float, default=DETECTION_DISTILL["kd_weight"],
                   help="0: fine-tune on the detector's own loss alone (the ablation)")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)

    write_shapes(args.data_dir, ShapesOptions(images=args.images, size=DEMO_SIZE,
                                              seed=args.seed))
    data = load_coco(args.data_dir, val_fraction=0.2, seed=args.seed)
    teacher = load_detector_demo(args.weights, data.num_classes + 1)
    cats = data.categories

    def score(m):
        a = evaluate_detector(m, data.heldout, categories=cats)
        return {"map_50": round(a.map_50, 4), "map": round(a.map, 4)}

    unpruned = score(teacher)
    t0 = time.perf_counter()
    if args.bench:
        import numpy as np

        from hdap_engine.pruning.apply import prune_to_widths
        from hdap_engine.pruning.space import PruningSpace

        with open(args.bench) as f:
            rows = {r["method"]: r for r in json.load(f)["rows"]}
        student = copy.deepcopy(teacher).eval()
        prune_to_widths(student, PruningSpace.for_model("detector_demo"),
                        np.asarray(rows[args.method]["widths"], dtype=np.int64))
        share = macs_of(student) / macs_of(teacher)
    else:
        student, share = prune_to_macs(teacher, args.macs)
    pruned = score(student)
    bn_images = [data.train[i][0] for i in range(min(256, data.n_train))]
    recalibrate_detector_bn(student, bn_images)
    calibrated = score(student)
    options = FinetuneOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              weight_decay=1e-4, schedule="cosine", seed=args.seed,
                              **{**DETECTION_DISTILL, "kd_weight": args.kd_weight})

    def show(r):
        print(f"epoch {r.epoch}/{r.epochs} loss {r.loss:.3f} (own {r.detector_loss:.3f}, "
              f"kd {r.kd_loss:.3f}) {r.seconds:.0f}s", flush=True)

    fit_detector(student, data.train, options,
                 teacher=teacher if options.distills else None, optimizer="adamw",
                 on_epoch=show)
    finetuned = score(student)
    print(json.dumps({"method": args.method if args.bench else "uniform (Torch-Pruning)",
                      "macs_share": round(share, 4), "macs_unpruned": macs_of(teacher),
                      "macs_pruned": macs_of(student), "unpruned": unpruned, "pruned": pruned,
                      "calibrated": calibrated, "finetuned": finetuned,
                      "finetune": {"epochs": args.epochs, "lr": args.lr, "optimizer": "adamw",
                                   "kd_weight": options.kd_weight,
                                   "ce_weight": options.ce_weight,
                                   "temperature": options.temperature},
                      "heldout_images": data.n_heldout,
                      "seconds": round(time.perf_counter() - t0, 1)}))


if __name__ == "__main__":
    main()
