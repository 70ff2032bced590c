"""The twin prior: the SKU's device twin, at each device's probe-fitted state, under the surrogate.

A surrogate learned from a few hundred measurements is confidently wrong
about regions it never measured (on MobileNetV1 at 0.3 G on the Jetson fleet
it read the oracle's region 4.8 % slow). The product already has a physics
model that is right in *shape* everywhere: the SKU's calibrated twin
(`hdap_engine.twin`). The prior is that twin's noiseless latency of a
candidate on a device whose latent state is fitted from the device's own
probe row (`fit_states_from_probes`), the same fit a fleet without a twin
sidecar gets. The surrogate's per-device linear base takes it as one more
non-negative term (`Surrogate`), so the measurements only have to correct
its scale and what it gets wrong, and a device never measured (a new fleet's
cluster in a warm start) gets a prior of its own from its probes.

What the prior knows: the SKU preset (`hdap_engine.twin.presets`, the same
for every device of the SKU) and the probe vectors the study already has
(the telemetry's ``probe_<name>_ms`` columns). It never reads a fleet's
``.twin.parquet`` sidecar, the hidden device states the twin backend and the
oracle measure with. On the twin backend the prior and the devices share
their physics, so there it is as good as the probes' fit; on real devices it
is as good as the twin's realism (`hdap_engine.twin.realism`).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import pandas as pd

# Fitted device states by (preset, probe columns, probe vectors): a search asks for the
# prior of the same few devices thousands of times.
_STATES: dict[tuple, object] = {}
_STATES_KEPT = 64


@dataclass(frozen=True)
class TwinPrior:
    """The twin's latency of candidates on devices known by their probe vectors (plain data).

    Parameters
    ----------
    preset:
        The SKU preset's name (`hdap_engine.twin.PRESETS`).
    probe_columns:
        The names of the device feature columns, in order (``probe_<name>_ms``).
    """

    preset: str
    probe_columns: tuple[str, ...]

    def states(self, device_features: np.ndarray):
        """`DeviceStates` fitted to each row of ``device_features`` (D, p) in ms."""
        from hdap_engine.twin.fit import fit_states_from_probes

        feats = np.ascontiguousarray(np.asarray(device_features, dtype=np.float64))
        key = (self.preset, self.probe_columns, feats.shape, feats.tobytes())
        if key not in _STATES:
            frame = pd.DataFrame(feats, columns=list(self.probe_columns))
            frame.insert(0, "device_id", [f"d{i}" for i in range(len(feats))])
            if len(_STATES) >= _STATES_KEPT:
                _STATES.pop(next(iter(_STATES)))
            _STATES[key] = fit_states_from_probes(frame, self.preset)[0]
        return _STATES[key]

    def ms(self, space, widths, device_features: np.ndarray) -> np.ndarray:
        """(N, D) noiseless twin latency of N candidates on D devices, in ms."""
        from hdap_engine.twin import Twin, get_preset

        table = space.layer_table(np.atleast_2d(widths))
        return Twin(get_preset(self.preset)).latency_ms(table, self.states(device_features),
                                                        noise=False)

    def to_dict(self) -> dict:
        return {"preset": self.preset, "probe_columns": list(self.probe_columns)}

    @classmethod
    def from_dict(cls, doc: dict | None) -> TwinPrior | None:
        if not doc:
            return None
        return cls(str(doc["preset"]), tuple(doc["probe_columns"]))


def twin_prior_for(fleet, twin_preset: str | None = None) -> TwinPrior | None:
    """The prior for ``fleet``'s devices, or None where the twin cannot give one.

    It needs a twin preset for the fleet's SKU (``twin_preset`` overrides the
    fleet's) and at least four standard probe columns, as the probe fit does.
    """
    from hdap_engine.fleet.probes import STANDARD_PROBES, probe_column
    from hdap_engine.twin import PRESETS

    sku = twin_preset or getattr(fleet, "sku", None)
    if sku not in PRESETS:
        return None
    standard = {probe_column(p) for p in STANDARD_PROBES}
    if sum(c in standard for c in fleet.probe_columns) < 4:
        return None
    return TwinPrior(str(sku), tuple(fleet.probe_columns))
