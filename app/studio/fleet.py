"""The fleet and its clustering on screen: sample fleets, uploads, cluster weight sliders.

Layout glue only: reading, clustering and the weights' rules are calls into
`hdap_engine` (through `studio.cached` where they are heavy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

import streamlit as st

from studio import cached
from studio import state as S

UPLOAD_PREFIX = "uploaded: "
SLIDER_DECIMALS = 3  # a cluster weight slider starts at its device share, rounded to this


@dataclass
class FleetView:
    """The fleet on screen and where it came from."""

    fleet: object
    label: str
    path: str | None  # the telemetry file (None for uploads: no twin sidecar)
    fingerprint: str
    file: str | None = None  # where a worker process reads the telemetry (uploads are saved)


def fleet_choices() -> list[str]:
    """Sample fleet names, then the accepted upload (if any)."""
    choices = list(cached.sample_fleets())
    up = S.get(S.UPLOADED)
    if up is not None:
        choices.append(UPLOAD_PREFIX + up["name"])
    return choices


def accept_upload(name: str, data: bytes) -> str | None:
    """Read uploaded telemetry; on success it becomes the fleet on screen.

    Returns the engine's message when the file is refused; the fleet on
    screen is then left as it was.
    """
    from hdap_engine.errors import HdapError

    try:
        fleet, saved = read_telemetry_upload(name, data)
    except HdapError as exc:
        S.put(S.UPLOAD_ERROR, str(exc))
        return str(exc)
    S.put(S.UPLOADED, {"name": name, "fleet": fleet, "fingerprint": fleet.fingerprint(),
                       "file": str(saved)})
    S.put(S.UPLOAD_ERROR, None)
    S.put(S.FLEET_CHOICE, UPLOAD_PREFIX + name)
    return None


def read_telemetry_upload(name: str, data: bytes):
    """(`Fleet`, saved path) of uploaded telemetry; raises HdapError when it is refused.

    Kept in the workspace: jobs run in worker processes, which read the file.
    """
    from hdap_engine.fleet.telemetry import load_fleet
    from hdap_engine.infra.workspace import save_upload

    fleet = load_fleet(data, name=name)
    return fleet, str(save_upload(bytes(data), name, "telemetry"))


def sample_view(name: str) -> FleetView:
    """A shipped sample fleet on screen, by its name."""
    path = cached.sample_fleets()[name]
    fleet, fp = cached.sample_fleet(path)
    return FleetView(fleet, os.path.basename(path), path, fp, path)


def upload_view(up: dict) -> FleetView:
    """An accepted upload (``{"name", "fleet", "fingerprint", "file"}``) on screen."""
    return FleetView(up["fleet"], up["name"], None, up["fingerprint"], up.get("file"))


def current_fleet() -> FleetView | None:
    """The fleet chosen on the Fleet page; the first sample fleet on a first visit."""
    choices = fleet_choices()
    choice = S.get(S.FLEET_CHOICE)
    if choice not in choices:
        if not choices:
            return None
        choice = choices[0]
        S.put(S.FLEET_CHOICE, choice)
    if choice.startswith(UPLOAD_PREFIX):
        return upload_view(S.get(S.UPLOADED))
    return sample_view(choice)


@dataclass
class ClusterView:
    """The fitted clustering on screen and its cache key."""

    clustering: object
    key: str
    k: int | None  # what was asked (None: automatic)


def clustering_request() -> tuple[int | None, int, tuple[str, ...], int]:
    """(k or None, representatives, context features, seed) from the widgets."""
    k = None if S.get(S.K_MODE) == "automatic" else int(S.get(S.K_FIXED))
    return (k, int(S.get(S.REPRESENTATIVES)), tuple(S.get(S.CONTEXT_FEATURES) or ()),
            int(S.get(S.SEED)))


def context_features(fv: FleetView) -> list[str]:
    """The widgets' context features that this fleet has as numeric columns."""
    _, _, features, _ = clustering_request()
    return [f for f in features if f in fv.fleet.numeric_context_columns]


def current_clustering(fv: FleetView) -> ClusterView:
    """The clustering of the fleet on screen with the widgets' settings (cached)."""
    k, reps, _, seed = clustering_request()
    features = tuple(context_features(fv))
    key = cached.clustering_key(fv.fingerprint, k, reps, features, seed)
    cl = cached.clustering(fv.fleet, key, k, reps, features, seed)
    return ClusterView(cl, key, k)


def slider_value(share) -> float:
    """Where a cluster weight slider starts: the cluster's share of devices, rounded."""
    return round(float(share), SLIDER_DECIMALS)


def chosen_weights(values, shares) -> dict[int, float] | None:
    """The sliders' cluster weights, or None while every slider is at its device share
    (the default, recorded as such)."""
    values = [float(v) for v in values]
    if all(abs(v - slider_value(s)) < 1e-9 for v, s in zip(values, shares, strict=True)):
        return None
    return dict(enumerate(values))


def sync_weight_sliders(cv: ClusterView, *, reset: bool = False) -> None:
    """Point the weight sliders at this clustering; a new clustering starts at device shares."""
    if reset or S.get(S.WEIGHTS_FOR) != cv.key:
        for c, share in enumerate(cv.clustering.shares_):
            S.put(S.weight_key(c), slider_value(share))
        S.put(S.WEIGHTS_FOR, cv.key)


def user_weights(cv: ClusterView) -> dict[int, float] | None:
    """The slider weights, or None while they are the device shares (the default)."""
    shares = cv.clustering.shares_
    if S.get(S.WEIGHTS_FOR) != cv.key:
        return None
    return chosen_weights([S.get(S.weight_key(c), slider_value(s)) for c, s in enumerate(shares)],
                          shares)


def need_fleet() -> tuple[FleetView, ClusterView] | None:
    """The fleet and clustering on screen, or a pointer to the Fleet page."""
    fv = current_fleet()
    if fv is None:
        st.error("No fleet: sample_data/ holds no sample fleet and nothing was uploaded. "
                 "Upload telemetry on the Fleet page.")
        st.page_link("views/fleet.py", label="Go to the Fleet page", icon=":material/hub:")
        return None
    from hdap_engine.errors import HdapError

    try:
        with st.spinner(f"Clustering {fv.fleet.n_devices:,} devices..."):
            cv = current_clustering(fv)
    except HdapError as exc:
        st.error(str(exc))
        return None
    return fv, cv
