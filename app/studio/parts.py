"""UI parts shared by the pages: the fleet and clustering on screen, study options, progress.

Everything here is layout, wording, or the glue that turns widget values into
engine arguments; every computation is a call into `hdap_engine` (through
`studio.cached` where it is heavy).
"""

from __future__ import annotations

import os
import time
from dataclasses import dataclass, field

import streamlit as st

from studio import cached
from studio import state as S

UPLOAD_PREFIX = "uploaded: "

# What each engine stage is doing, in the user's words.
STAGE_TEXT = {
    "fleet": "reading the fleet",
    "cluster": "clustering devices",
    "measure": "measuring candidates on cluster representatives",
    "fit": "training the latency surrogate",
    "search": "searching widths on the surrogate (generations)",
    "prune": "pruning the model with Torch-Pruning",
    "verify": "measuring the pruned and the unpruned model per cluster",
    "export": "exporting TorchScript, ONNX and torch.export",
    "compare": "pruning and measuring the other methods",
    "sweep": "budget sweep (searches and measurements)",
}
OBJECTIVE_TEXT = {
    "mean": "weighted mean latency over clusters",
    "p95": "95th-percentile latency over devices",
    "worst": "latency of the slowest cluster",
    "slo": "share of devices slower than a latency target (SLO)",
}
BACKEND_TEXT = {
    "twin": "twin: a simulated twin of every device (simulated, labelled so)",
    "host": "host: this machine, real PyTorch timings (the fleet becomes one cluster)",
    "agent": "agent: real devices running the HDAP agent (uses the agent_url column)",
}


def method_text(name: str) -> str:
    """A method's one-line description from the engine's registry."""
    from hdap_engine.search.methods import get_method

    return get_method(name).description


def method_choices(*, searches: bool | None = None) -> list[str]:
    """Registered method names (only searching or baseline ones)."""
    from hdap_engine.search.methods import method_names

    return list(method_names(searches=searches))


# -- the fleet on screen ------------------------------------------------------------------

@dataclass
class FleetView:
    """The fleet on screen and where it came from."""

    fleet: object
    label: str
    path: str | None  # the telemetry file (None for uploads: no twin sidecar)
    fingerprint: str


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
    from hdap_engine.fleet.telemetry import load_fleet

    try:
        fleet = load_fleet(data, name=name)
    except HdapError as exc:
        S.put(S.UPLOAD_ERROR, str(exc))
        return str(exc)
    S.put(S.UPLOADED, {"name": name, "fleet": fleet, "fingerprint": fleet.fingerprint()})
    S.put(S.UPLOAD_ERROR, None)
    S.put(S.FLEET_CHOICE, UPLOAD_PREFIX + name)
    return None


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
        up = S.get(S.UPLOADED)
        return FleetView(up["fleet"], up["name"], None, up["fingerprint"])
    path = cached.sample_fleets()[choice]
    fleet, fp = cached.sample_fleet(path)
    return FleetView(fleet, os.path.basename(path), path, fp)


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


def current_clustering(fv: FleetView) -> ClusterView:
    """The clustering of the fleet on screen with the widgets' settings (cached)."""
    k, reps, features, seed = clustering_request()
    features = tuple(f for f in features if f in fv.fleet.numeric_context_columns)
    key = cached.clustering_key(fv.fingerprint, k, reps, features, seed)
    cl = cached.clustering(fv.fleet, key, k, reps, features, seed)
    return ClusterView(cl, key, k)


def sync_weight_sliders(cv: ClusterView, *, reset: bool = False) -> None:
    """Point the weight sliders at this clustering; a new clustering starts at device shares."""
    if reset or S.get(S.WEIGHTS_FOR) != cv.key:
        for c, share in enumerate(cv.clustering.weights_):
            S.put(S.weight_key(c), round(float(share), 3))
        S.put(S.WEIGHTS_FOR, cv.key)


def user_weights(cv: ClusterView) -> dict[int, float] | None:
    """The slider weights, or None while they are the device shares (the default)."""
    shares = cv.clustering.weights_
    if S.get(S.WEIGHTS_FOR) != cv.key:
        return None
    values = [float(S.get(S.weight_key(c), round(float(s), 3))) for c, s in enumerate(shares)]
    if all(abs(v - round(float(s), 3)) < 1e-9 for v, s in zip(values, shares, strict=True)):
        return None
    return dict(enumerate(values))


# -- model and study options --------------------------------------------------------------

def weights_choice() -> tuple[str | None, str]:
    """(model_weights for the engine, label for people) of the model on screen."""
    wf = S.get(S.WEIGHTS_FILE)
    if S.get(S.WEIGHTS_MODE) == "upload" and wf and wf["model"] == S.get(S.MODEL):
        return wf["path"], f"user-supplied state dict ({wf['name']})"
    return None, "random initialisation (seeded)"


def weights_badge() -> None:
    """Say plainly whether the model's weights are random or the user's."""
    path, label = weights_choice()
    if path is None:
        st.warning(f"Model weights: **{label}**. Latency does not depend on the weight values, "
                   "so the study is valid, but the exported model is untrained: upload your "
                   "trained state dict on the Model page to export a usable model. (Pretrained "
                   "weights cannot be downloaded on this machine.)", icon=":material/casino:")
    else:
        st.success(f"Model weights: **{label}**", icon=":material/upload_file:")


def budget_text() -> str:
    """The budget as the engine reads it: a fraction of the model."""
    return f"{float(S.get(S.BUDGET_FRACTION)):.6f}"


def study_options(fv: FleetView, cv: ClusterView):
    """The `StudyOptions` of the widgets (raises HdapError for an impossible combination)."""
    from hdap_engine.options import StudyOptions

    path, _ = weights_choice()
    k, reps, _, seed = clustering_request()
    objective = S.get(S.OBJECTIVE)
    return StudyOptions.of(
        model=S.get(S.MODEL), budget=budget_text(), objective=objective,
        slo_ms=float(S.get(S.SLO_MS)) if objective == "slo" else None,
        cluster_weights=user_weights(cv), backend=S.get(S.BACKEND), method=S.get(S.METHOD),
        samples=int(S.get(S.SAMPLES)), repeats=int(S.get(S.REPEATS)), representatives=reps,
        k=k, round_to=int(S.get(S.ROUND_TO)), seed=seed, sku=fv.fleet.sku,
        model_weights=path, agent_token=S.get(S.AGENT_TOKEN) or None,
        refine_rounds=int(S.get(S.REFINE_ROUNDS)))


# -- progress -----------------------------------------------------------------------------

@dataclass
class StageReporter:
    """An engine progress callback drawn as a bar and one line per finished stage."""

    container: object
    min_interval: float = 0.15
    _stage: str | None = None
    _started: float = 0.0
    _last: float = 0.0
    _bar: object = None
    _t0: float = field(default_factory=time.perf_counter)

    def __call__(self, stage: str, step: int, total: int) -> None:
        now = time.perf_counter()
        if stage != self._stage:
            if self._stage is not None:
                self.container.write(f":material/check: {STAGE_TEXT.get(self._stage, self._stage)}"
                                     f" ({now - self._started:.1f} s)")
            self._stage, self._started, self._last = stage, now, 0.0
            if self._bar is None:
                self._bar = self.container.progress(0.0)
        elif now - self._last < self.min_interval and step < total:
            return
        self._last = now
        frac = min(max(step / total, 0.0), 1.0) if total else 1.0
        self._bar.progress(frac, text=f"{STAGE_TEXT.get(stage, stage)}: {step:,} / {total:,}")

    def finish(self) -> float:
        """Close the last stage; returns the seconds since the reporter started."""
        now = time.perf_counter()
        if self._stage is not None:
            self.container.write(f":material/check: {STAGE_TEXT.get(self._stage, self._stage)} "
                                 f"({now - self._started:.1f} s)")
            self._stage = None
        return now - self._t0


# -- a run --------------------------------------------------------------------------------

@dataclass
class RunView:
    """The latest run on screen: the engine's result and what the charts need."""

    result: object  # hdap_engine.study.StudyResult
    report: dict  # report.json of the bundle (MACs, widths added at export)
    widths: dict
    base_widths: dict
    test_points: object  # DataFrame or None
    fleet_label: str
    weights_label: str
    seconds: float
    comparison: dict | None = None
    sweep: dict | None = None
    key: str = ""

    def figures(self) -> dict:
        from hdap_engine.charts import study_figures

        return study_figures(self.report, widths=self.widths, base_widths=self.base_widths,
                             test_points=self.test_points, sweep=self.sweep,
                             comparison=self.comparison)


def run_view(result, *, fleet_label: str, weights_label: str, seconds: float,
             comparison=None, sweep=None) -> RunView:
    """Collect what the result pages show about ``result``."""
    import uuid

    from hdap_engine.report import read_bundle_report

    ctx = result.context
    report = read_bundle_report(result.bundle) if result.bundle else dict(result.report)
    sur = result.surrogate
    return RunView(result=result, report=report, widths=ctx.space.widths_dict(result.widths),
                   base_widths=ctx.space.widths_dict(ctx.space.base_widths),
                   test_points=None if sur is None else sur.test_points_,
                   fleet_label=fleet_label, weights_label=weights_label, seconds=seconds,
                   comparison=comparison, sweep=sweep, key=uuid.uuid4().hex)


def fleet_headline(report: dict) -> None:
    """The fleet's headline numbers, each naming where it comes from."""
    fleet = report["fleet"]
    source = report["measured_source"]
    c = st.columns(4)
    c[0].metric("Fleet mean latency", f"{fleet['measured_mean_ms']:.2f} ms",
                delta=f"{fleet['measured_mean_ms'] - fleet['unpruned_mean_ms']:+.2f} ms vs "
                      "unpruned", delta_color="inverse", help=f"measured: {source}")
    c[1].metric("Fleet p95 latency", f"{fleet['measured_p95_ms']:.2f} ms",
                delta=f"{fleet['measured_p95_ms'] - fleet['unpruned_p95_ms']:+.2f} ms vs "
                      "unpruned", delta_color="inverse", help=f"measured: {source}")
    c[2].metric("Speedup", f"{fleet['speedup']:.2f}x",
                help="unpruned fleet mean / pruned fleet mean, both measured the same way")
    pred = fleet.get("predicted_mean_ms")
    c[3].metric("Predicted fleet mean", "–" if pred is None else f"{pred:.2f} ms",
                help="the surrogate's prediction, weighted by device share")
    st.caption(f"Measured: **{source}**, over {fleet['basis']}. Unpruned fleet mean "
               f"{fleet['unpruned_mean_ms']:.2f} ms, p95 {fleet['unpruned_p95_ms']:.2f} ms.")


def show_figure(fig, key: str) -> None:
    st.plotly_chart(fig, key=key, config={"displaylogo": False})


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


def sidebar() -> None:
    """Where the user stands: fleet, model, weights, last run."""
    with st.container():
        st.caption("HDAP Studio prunes one network for a whole fleet of drifted devices.")
        choice = S.get(S.FLEET_CHOICE)
        if choice:
            st.markdown(f"**Fleet:** {choice.removeprefix(UPLOAD_PREFIX)}")
        _, label = weights_choice()
        st.markdown(f"**Model:** {S.get(S.MODEL)}  \n**Weights:** {label}  \n"
                    f"**Budget:** {float(S.get(S.BUDGET_FRACTION)):.0%} of the model's MACs  \n"
                    f"**Backend:** {S.get(S.BACKEND)}")
        run = S.get(S.RUN)
        if run is not None:
            f = run.report["fleet"]
            st.markdown(f"**Last run:** {f['measured_mean_ms']:.2f} ms fleet mean, "
                        f"{f['speedup']:.2f}x ({run.report['measured_source']})")
