"""One rank of a torchrun detector fine-tuning (`tests/test_detection_finetune.py`).

    python -m torch.distributed.run --nproc_per_node 2 -m tests.helpers.detector_ddp DIR

Trains a tiny SSDlite on the shapes in DIR with distillation from a wider one and prints
``rank R/N: weights sha256 DIGEST kd LOSS`` so the test can compare the ranks.
"""

from __future__ import annotations

import sys

import torch

from hdap_engine.data.coco import load_coco
from hdap_engine.finetune.detection import fit_detector
from hdap_engine.finetune.distributed import setup, teardown
from hdap_engine.finetune.trainer import state_digest
from hdap_engine.options import FinetuneOptions
from tests.helpers.detectors import tiny_ssd


def main() -> None:
    torch.set_num_threads(1)
    world = setup("cpu")
    data = load_coco(sys.argv[1], val_fraction=0.2, seed=0)
    teacher = tiny_ssd(data.num_classes + 1, width_mult=0.5, seed=1)
    student = tiny_ssd(data.num_classes + 1, seed=2)
    options = FinetuneOptions(epochs=1, batch_size=4, lr=1e-3, kd_weight=1.0, ce_weight=1.0,
                              weight_decay=0.0, seed=0)
    fit = fit_detector(student, data.train, options, teacher=teacher, world=world)
    print(f"rank {world.rank}/{world.size}: weights sha256 {state_digest(student)[:16]} "
          f"kd {fit.history[-1].kd_loss:.6f}", flush=True)
    teardown(world)


if __name__ == "__main__":
    main()
