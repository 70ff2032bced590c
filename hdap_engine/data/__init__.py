"""Labelled data: ImageFolder directories, zips of them, and scikit-learn's ``digits``.

See `hdap_engine.data.datasets` for the API (``load_data``, ``LabelledData``,
``Preprocess``, ``check_classes``, ``materialise``, ``stratified_indices``) and
`hdap_engine.data.safezip` for safe zip extraction. Detection data (COCO) is
`hdap_engine.data.coco` (``load_coco``, ``DetectionData``, ``check_detector_classes``), the
synthetic shapes dataset `hdap_engine.data.shapes` (``write_shapes``).
"""

from hdap_engine.data.datasets import (
    DIGITS,
    IMAGENET_MEAN,
    IMAGENET_STD,
    LabelledData,
    Preprocess,
    check_classes,
    load_data,
    materialise,
    stratified_indices,
)

__all__ = ["DIGITS", "IMAGENET_MEAN", "IMAGENET_STD", "LabelledData", "Preprocess",
           "check_classes", "load_data", "materialise", "stratified_indices"]
