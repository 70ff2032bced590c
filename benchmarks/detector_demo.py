"""The detection demo's weights: a small SSDlite trained here on the synthetic shapes.

Reproduces ``sample_data/detector_demo_shapes.pt`` (fp16 state dict) and its
``.json`` record (data, split, seed, recipe, held-out mAP with a bootstrap
interval). Everything is seeded; on 2 CPU cores the default run takes about a
quarter of an hour.

    python -m benchmarks.detector_demo --out sample_data/detector_demo_shapes.pt

The model: torchvision's ``ssdlite320_mobilenet_v3_large`` with a MobileNetV3
backbone at ``width_mult`` 0.5, no pretrained weights (nothing is downloaded),
``num_classes`` = 4 shapes + background, its fixed input size set to 160x160
(the SSD transform resizes every image to it; the anchors are relative, so
they follow). The architecture is the zoo's ``detector_demo``
(`hdap_engine.models.zoo`), the one builder.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

DEMO_SIZE = 160  # the zoo's detector_demo input (3x160x160)
DEMO_WIDTH = 0.5  # its MobileNetV3 width (recorded beside the weights)


def build_detector_demo(num_classes: int = 5) -> torch.nn.Module:
    """The demo detector, untrained: the zoo's ``detector_demo`` (SSDlite, MobileNetV3 at
    width 0.5, 160x160). ``num_classes`` counts the background (torchvision's convention)."""
    from hdap_engine.models.zoo import get_spec

    return get_spec("detector_demo").builder(num_classes=num_classes)


def load_detector_demo(path: str | Path, num_classes: int = 5) -> torch.nn.Module:
    """The shipped weights (fp16 on disk) in the demo detector, float32, eval mode."""
    model = build_detector_demo(num_classes)
    state = torch.load(path, map_location="cpu", weights_only=True)
    model.load_state_dict({k: v.float() if v.is_floating_point() else v
                           for k, v in state.items()})
    return model.eval()


def main(argv: list[str] | None = None) -> None:
    from hdap_engine.accuracy.detection import evaluate_detector
    from hdap_engine.data.coco import check_detector_classes, load_coco
    from hdap_engine.data.shapes import write_shapes
    from hdap_engine.finetune.detection import fit_detector
    from hdap_engine.options import FinetuneOptions, ShapesOptions

    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--out", default="sample_data/detector_demo_shapes.pt")
    p.add_argument("--data-dir", default="/tmp/hdap_shapes_demo")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--epochs", type=int, default=25)
    p.add_argument("--batch-size", type=int, default=32)
    p.add_argument("--lr", type=float, default=3e-3)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--n-boot", type=int, default=200)
    p.add_argument("--checkpoint", default=None, help="resume from / save to this file")
    args = p.parse_args(argv)
    torch.set_num_threads(args.threads)
    torch.manual_seed(args.seed)

    spec = ShapesOptions(images=args.images, size=DEMO_SIZE, seed=args.seed)
    write_shapes(args.data_dir, spec)
    data = load_coco(args.data_dir, val_fraction=0.2, seed=args.seed)
    model = build_detector_demo(data.num_classes + 1)
    check_detector_classes(data, data.num_classes + 1)
    options = FinetuneOptions(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                              weight_decay=1e-4, schedule="onecycle", kd_weight=0.0,
                              ce_weight=1.0, seed=args.seed)
    t0 = time.perf_counter()

    def show(r):
        print(f"epoch {r.epoch}/{r.epochs} loss {r.loss:.3f} "
              f"val mAP@.5 {r.val_map_50 if r.val_map_50 is None else round(r.val_map_50, 3)} "
              f"{r.seconds:.0f}s", flush=True)

    fit = fit_detector(model, data.train, options, val_set=data.heldout,
                       categories=data.categories, optimizer="adamw", val_images=60,
                       checkpoint=args.checkpoint, resume=bool(args.checkpoint)
                       and Path(args.checkpoint).is_file(), on_epoch=show)
    train_s = time.perf_counter() - t0
    acc = evaluate_detector(model, data.heldout, categories=data.categories,
                            n_boot=args.n_boot, seed=args.seed)
    out = Path(args.out)
    out.parent.mkdir(parents=True, exist_ok=True)
    torch.save({k: v.half() if v.is_floating_point() else v
                for k, v in model.state_dict().items()}, out)
    # The figures of the file as shipped (fp16 weights loaded back as float32).
    shipped = evaluate_detector(load_detector_demo(out, data.num_classes + 1), data.heldout,
                                categories=data.categories, n_boot=args.n_boot,
                                seed=args.seed)
    record = {
        "model": "ssdlite320_mobilenet_v3_large", "width_mult": DEMO_WIDTH,
        "input_size": [DEMO_SIZE, DEMO_SIZE], "num_classes": data.num_classes + 1,
        "categories": list(data.categories),
        "data": {"generator": "hdap data shapes", "images": args.images, "size": DEMO_SIZE,
                 "seed": args.seed, "train_images": data.n_train,
                 "heldout_images": data.n_heldout, "heldout": data.describe_heldout()},
        "recipe": {**options.settings(), "optimizer": "adamw", "hflip": True},
        "train_seconds": round(train_s, 1), "threads": args.threads,
        "accuracy_fp32": acc.as_dict(), "accuracy": shipped.as_dict(),
        "history": fit.summary()["history"],
        "command": f"python -m benchmarks.detector_demo --images {args.images} --seed "
                   f"{args.seed} --epochs {args.epochs} --batch-size {args.batch_size} "
                   f"--lr {args.lr}",
    }
    out.with_name(out.name + ".json").write_text(json.dumps(record, indent=1) + "\n")
    print(json.dumps({"map": shipped.map, "map_50": shipped.map_50,
                      "map_50_interval": shipped.map_50_interval,
                      "train_seconds": round(train_s, 1)}))


if __name__ == "__main__":
    main()
