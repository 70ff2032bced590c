"""Tiny torchvision detectors for tests: no downloads, a few hundred milliseconds a step."""

from __future__ import annotations

import torch


def tiny_ssd(num_classes: int = 5, size: int = 64, width_mult: float = 0.25,
             seed: int = 0) -> torch.nn.Module:
    """SSDlite with a MobileNetV3 at ``width_mult``, its fixed input size set to ``size``."""
    from torchvision.models.detection import ssdlite320_mobilenet_v3_large

    from hdap_engine.models.detection import set_input_size

    torch.manual_seed(seed)
    model = ssdlite320_mobilenet_v3_large(weights=None, weights_backbone=None,
                                          num_classes=num_classes, width_mult=width_mult)
    return set_input_size(model, size, size).eval()


def tiny_fasterrcnn(num_classes: int = 5, size: int = 64, seed: int = 0) -> torch.nn.Module:
    """Faster R-CNN with a MobileNetV3 FPN backbone at a tiny input size, untrained."""
    from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_320_fpn

    torch.manual_seed(seed)
    return fasterrcnn_mobilenet_v3_large_320_fpn(
        weights=None, weights_backbone=None, num_classes=num_classes, min_size=size,
        max_size=size, rpn_pre_nms_top_n_test=50, rpn_post_nms_top_n_test=50).eval()
