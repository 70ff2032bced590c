"""Progress of long work, one shape everywhere: a callable taking (stage, step, total).

The CLI prints it, the app's jobs write it to the job table, tests ignore it.
`stage` is a short word naming the step of the method at work ("measure",
"search", "verify", ...); `step` of `total` says how far that stage is.
"""

from __future__ import annotations

from collections.abc import Callable

Progress = Callable[[str, int, int], None]


def no_progress(stage: str, step: int, total: int) -> None:
    """The default `Progress`: report nothing."""
