"""Accuracy throughput: evaluation images/s and one distillation epoch, on this machine.

Two settings, both on real images (scikit-learn's digits through the product's own
preprocessing), both timed with the product's code (`hdap_engine.accuracy.evaluate`
and `hdap_engine.finetune.trainer.fit`):

- ResNet-56 on digits at 32x32: the demo weights (sample_data/resnet56_digits.pt) as
  teacher; the held-out split (359 images) evaluated; one epoch of distillation of
  the uniform architecture at 25 % MACs on the 1,438 training images.
- ResNet-18 at 224x224 on 256 images: digits resized to 224x224 (ImageNet
  statistics), a 10-class ResNet-18 from a seeded random initialisation (nothing is
  downloaded; speed does not depend on the weights); 256 training images evaluated,
  and one epoch of distillation of the uniform architecture at 50 % MACs on them.

    python -m benchmarks.accuracy [--threads N]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import torch
from torch.utils.data import Subset

from hdap_engine.accuracy.evaluate import evaluate
from hdap_engine.data import load_data
from hdap_engine.finetune.trainer import fit
from hdap_engine.models.zoo import build_model
from hdap_engine.options import FinetuneOptions
from hdap_engine.pruning.apply import prune_to_widths
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.search.baselines import uniform_widths

DEMO = Path(__file__).resolve().parents[1] / "sample_data" / "resnet56_digits.pt"


def _pruned(name: str, weights, fraction: float, classes: int):
    teacher = build_model(name, weights, num_classes=classes)
    student = build_model(name, weights, num_classes=classes)
    space = PruningSpace.for_model(name)
    prune_to_widths(student, space, uniform_widths(space, fraction * space.base_macs))
    return teacher, student


def bench(name: str, weights, fraction: float, train, heldout, batch_size: int) -> dict:
    teacher, student = _pruned(name, weights, fraction, 10)
    evaluate(teacher, Subset(heldout, range(min(64, len(heldout)))))  # warm-up
    ev = evaluate(teacher, heldout, batch_size=batch_size)
    ev_s = evaluate(student, heldout, batch_size=batch_size)
    t0 = time.perf_counter()
    res = fit(student, train, FinetuneOptions(epochs=1, batch_size=64), teacher=teacher)
    epoch_s = time.perf_counter() - t0
    return {"eval_unpruned": ev, "eval_pruned": ev_s, "epoch_s": epoch_s,
            "train_images": len(train), "loss": res.history[-1].loss}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    args = p.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {torch.get_num_threads()} threads, CPU")

    d56 = load_data("digits", model="resnet56")
    weights = str(DEMO) if DEMO.is_file() else None
    r = bench("resnet56", weights, 0.25, d56.train, d56.heldout, 256)
    print(f"resnet56 digits 32x32: evaluate unpruned {r['eval_unpruned'].images_per_s:,.0f} "
          f"images/s, uniform 25% MACs {r['eval_pruned'].images_per_s:,.0f} images/s "
          f"({r['eval_unpruned'].n} held-out images, top-1 {r['eval_unpruned'].top1:.2%}); "
          f"one distillation epoch (25% student, unpruned teacher) on {r['train_images']} "
          f"images: {r['epoch_s']:.1f} s ({r['train_images'] / r['epoch_s']:.0f} images/s)")

    d18 = load_data("digits", model="resnet18")
    train = Subset(d18.train, range(256))
    r = bench("resnet18", None, 0.5, train, train, 64)
    print(f"resnet18 224x224, 256 digits resized: evaluate unpruned "
          f"{r['eval_unpruned'].images_per_s:,.1f} images/s, uniform 50% MACs "
          f"{r['eval_pruned'].images_per_s:,.1f} images/s; one distillation epoch (50% "
          f"student, unpruned teacher) on 256 images: {r['epoch_s']:.1f} s "
          f"({256 / r['epoch_s']:.1f} images/s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
