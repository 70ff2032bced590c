"""Paths of the checkout that tests read: the repository root, the sample data, the demo weights."""

from __future__ import annotations

from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
SAMPLES = ROOT / "sample_data"
DEMO = SAMPLES / "resnet56_digits.pt"  # the demo weights trained on scikit-learn's digits
