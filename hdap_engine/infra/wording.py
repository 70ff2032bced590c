"""Small wording helpers shared by the engine's messages and the CLI's output."""

from __future__ import annotations


def plural(n: int, word: str) -> str:
    """``1 device``, ``2 devices``, ``5,000 devices``."""
    return f"{n:,} {word}" if n == 1 else f"{n:,} {word}s"
