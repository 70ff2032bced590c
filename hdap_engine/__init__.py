"""HDAP Studio engine: hardware-aware pruning of one network for a fleet of drifted devices.

The engine is importable and usable without the app. The data flow is
telemetry file -> `Fleet` -> `Clustering` -> `PruningSpace` -> measurements ->
`Surrogate` -> search -> candidate -> pruned model -> verification -> export.
"""

from hdap_engine.errors import HdapError

__version__ = "0.1.0"

__all__ = ["HdapError", "__version__"]
