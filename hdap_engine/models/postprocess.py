"""A detector's post-processing on this host, by its key, and how reports state it.

The twin prices a detector's core (`hdap_engine.models.detection.DetectorCore`);
its post-processing (transform, anchors decoded, NMS) is measured here, on this
host, once per model and process (`detection.postprocess_ms`), and stated
beside the twin's figure. Kept apart from `detection` because it builds the
model by key through the zoo, which itself imports `detection`.
"""

from __future__ import annotations

import functools

from hdap_engine.models.detection import postprocess_ms


@functools.lru_cache(maxsize=32)
def host_postprocess_ms(key: str, repeats: int = 10) -> tuple[float, int]:
    """`postprocess_ms` of a model by its key (built once per process, random weights: NMS
    then works on the most boxes a detector keeps, its slowest case)."""
    from hdap_engine.models.zoo import build_model, get_spec

    spec = get_spec(key)
    model = build_model(key)
    return postprocess_ms(model, spec.input_shape, repeats=repeats)


def postprocess_note(key: str) -> str:
    """What a report says about a detector's post-processing and how it is priced."""
    ms, anchors = host_postprocess_ms(key)
    return (f"the twin prices the detector's core (backbone, FPN, heads); its post-processing "
            f"(transform, {anchors} anchors decoded, NMS) is not in the twin's figure: "
            f"{ms:.1f} ms measured on this host; host timing includes it")
