"""Bundles written quickly for tests that only need their widths, weights and report."""

from __future__ import annotations

from pathlib import Path


def export_bundle_fast(result, out: Path) -> Path:
    from hdap_engine.export.bundle import export_bundle

    return export_bundle(result.model, result.space, result.widths, out, result.report,
                         kept=result.kept, formats=("ts",))

