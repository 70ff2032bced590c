"""UI parts shared by the pages: the fleet and clustering on screen, study options, progress.

Everything here is layout, wording, or the glue that turns widget values into
engine arguments; every computation is a call into `hdap_engine` (through
`studio.cached` where it is heavy).
"""

from __future__ import annotations

import os
from dataclasses import dataclass

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
    "data": "reading the labelled data",
    "accuracy": "measuring accuracy (batch-norm re-estimation, held-out images)",
    "finetune": "fine-tuning by distillation from the unpruned model (epochs)",
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
        return FleetView(up["fleet"], up["name"], None, up["fingerprint"], up.get("file"))
    path = cached.sample_fleets()[choice]
    fleet, fp = cached.sample_fleet(path)
    return FleetView(fleet, os.path.basename(path), path, fp, path)


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
        for c, share in enumerate(cv.clustering.shares_):
            S.put(S.weight_key(c), round(float(share), 3))
        S.put(S.WEIGHTS_FOR, cv.key)


def user_weights(cv: ClusterView) -> dict[int, float] | None:
    """The slider weights, or None while they are the device shares (the default)."""
    shares = cv.clustering.shares_
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
    if S.get(S.WEIGHTS_MODE) == "demo":
        from hdap_engine.models.demo import demo_label, demo_weights

        path = demo_weights(S.get(S.MODEL))
        if path is not None:
            return str(path), demo_label(S.get(S.MODEL)) or "trained demo weights"
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


def data_choice() -> tuple[str | None, str]:
    """(data for the engine, label for people) of the Model page's labelled-data choice."""
    mode = S.get(S.DATA_MODE)
    if mode == "digits":
        from hdap_engine.data import DIGITS

        return DIGITS, "digits (built in: scikit-learn's 8x8 digits, 10 classes)"
    df = S.get(S.DATA_FILE)
    if mode == "upload" and df:
        return df["path"], f"uploaded {df['name']}"
    return None, "none: accuracy unknown"


def data_name(data: str | None) -> str:
    """Labelled data as people know it: uploads are kept as data/<digest>-<their name>."""
    if not data:
        return "none"
    from pathlib import Path

    path = Path(data)
    if path.parent.name == "data" and "-" in path.name:
        return path.name.partition("-")[2]
    return str(data)


def accuracy_line(block: dict | None) -> str:
    """The engine's one-line accuracy summary, naming an upload as its user knows it."""
    from hdap_engine.accuracy.report import accuracy_summary

    line = accuracy_summary(block)
    data = (block or {}).get("dataset")
    return line.replace(data, data_name(data)) if data else line


def data_check(data: str | None = None) -> tuple[dict | None, str | None]:
    """(summary, None) when the data fits the model and weights on screen, else (None, why).

    The engine's own reader checks it (`hdap_engine.accuracy.study.check_data`), cached.
    """
    data = data_choice()[0] if data is None else data
    if data is None:
        return None, None
    weights, _ = weights_choice()
    return cached.checked_data(S.get(S.MODEL), weights, data)


def accept_data_upload(name: str, raw: bytes) -> str | None:
    """Check an uploaded dataset zip; on success it becomes the labelled data.

    Returns the engine's message when the zip is refused; the data chosen
    before stays as it was.
    """
    from pathlib import Path

    from hdap_engine.infra.workspace import save_upload

    # Kept in the workspace: jobs run in worker processes, which read the zip.
    path = save_upload(bytes(raw), name, "data")
    _, error = data_check(str(path))
    if error is not None:
        # The engine names the stored copy; the user knows the file by its own name.
        error = error.replace(str(path), name).replace(path.name, name)
        if (S.get(S.DATA_FILE) or {}).get("path") != str(path):
            Path(path).unlink(missing_ok=True)
        S.put(S.DATA_ERROR, error)
        return error
    S.put(S.DATA_FILE, {"path": str(path), "name": name})
    S.put(S.DATA_ERROR, None)
    return None


def min_accuracy() -> str | None:
    """The accuracy floor for the engine (``min_accuracy``), None without data or floor."""
    if data_choice()[0] is None or S.get(S.FLOOR_MODE) == "none":
        return None
    if S.get(S.FLOOR_MODE) == "uniform":
        return "uniform"
    return f"{float(S.get(S.FLOOR_FRACTION)):g}"


def finetune_epochs() -> int:
    """Epochs the study fine-tunes its model: 0 without data or without trained weights
    (distillation needs a trained teacher)."""
    if data_choice()[0] is None or weights_choice()[0] is None:
        return 0
    return int(S.get(S.FINETUNE_EPOCHS) or 0)


def budget_text() -> str:
    """The budget as the engine reads it: a fraction of the model."""
    return f"{float(S.get(S.BUDGET_FRACTION)):.6f}"


def study_options(fv: FleetView, cv: ClusterView):
    """The `StudyOptions` of the widgets (raises HdapError for an impossible combination)."""
    from hdap_engine.options import StudyOptions, search_effort

    path, _ = weights_choice()
    k, reps, features, seed = clustering_request()
    features = tuple(f for f in features if f in fv.fleet.numeric_context_columns)
    objective = S.get(S.OBJECTIVE)
    return StudyOptions.of(
        model=S.get(S.MODEL), budget=budget_text(), objective=objective,
        slo_ms=float(S.get(S.SLO_MS)) if objective == "slo" else None,
        cluster_weights=user_weights(cv), backend=S.get(S.BACKEND), method=S.get(S.METHOD),
        samples=int(S.get(S.SAMPLES)), repeats=int(S.get(S.REPEATS)), representatives=reps,
        k=k, context_features=features, round_to=int(S.get(S.ROUND_TO)), seed=seed,
        sku=fv.fleet.sku,
        model_weights=path, agent_token=S.get(S.AGENT_TOKEN) or None,
        refine_rounds=int(S.get(S.REFINE_ROUNDS)), data=data_choice()[0],
        min_accuracy=min_accuracy(), finetune_epochs=finetune_epochs(),
        **search_effort(S.get(S.SEARCH_EFFORT)))


# -- jobs: the settings of a run, and a finished job on screen -----------------------------

def job_settings(fv: FleetView, cv: ClusterView, options, *, compare=None,
                 sweep: bool | None = None) -> dict:
    """The job settings (`hdap_engine.jobs.execute`) of the study on screen."""
    return {"options": options.settings(), "telemetry": fv.file, "upload": fv.path is None,
            "fleet_name": fv.label if fv.path is None else None, "fleet_label": fv.label,
            "compare": list(S.get(S.COMPARE_METHODS) or []) if compare is None else compare,
            "sweep": bool(S.get(S.SWEEP_ON)) if sweep is None else sweep}


def owner() -> str | None:
    """Who is signed in (None when the server asks nobody to sign in)."""
    from studio import auth

    return auth.user_name()


def elapsed_text(seconds: float | None) -> str:
    if seconds is None:
        return "waiting"
    return f"{seconds:.0f} s" if seconds < 120 else f"{seconds / 60:.1f} min"


# -- jobs -------------------------------------------------------------------------------

def job_progress(job) -> None:
    """A running or queued job: stage, counts, finished stages, Cancel."""
    runner = cached.job_runner(cached.workspace())
    table = cached.jobs()
    who = f" · started by {job.owner}" if job.owner else ""
    if job.state == "queued":
        ahead = [j for j in table.queued() if j.id < job.id]
        st.info(f"Job {job.id} is queued{who}: {len(ahead)} job(s) ahead of it, "
                f"{runner.max_workers} run at once on this server.",
                icon=":material/hourglass_top:")
    else:
        frac = min(max(job.step / job.total, 0.0), 1.0) if job.total else 0.0
        st.markdown(f"**Job {job.id} is running**{who} · {elapsed_text(job.seconds)}")
        text = "starting a worker process" if job.stage is None else \
            f"{STAGE_TEXT.get(job.stage, job.stage)}: {job.step:,} / {job.total:,}"
        st.progress(frac, text=text)
    for s in job.stages:
        st.caption(f":material/check: {STAGE_TEXT.get(s['stage'], s['stage'])} "
                   f"({s['seconds']:.1f} s)")
    if job.cancel_requested:
        st.caption("Cancelling...")
    elif st.button("Cancel", icon=":material/stop_circle:", key="cancel_job"):
        runner.cancel(job.id)


POLL_SECONDS = 1.0  # how often a page re-reads a running job's record


@st.fragment(run_every=POLL_SECONDS)
def follow_job(job_id: int, partial=None) -> None:
    """Polls the store while the job is queued or running; the whole page redraws when it ends.

    ``partial(job)``, when given, draws what the job has produced so far under its
    progress (the Fine-tune page's live chart).
    """
    job = cached.jobs().get(job_id)
    if job is None or not job.active:
        st.rerun(scope="app")
    job_progress(job)
    if partial is not None:
        partial(job)


def finished_job(job_id: int, partial=None):
    """The job once it is done; until then its live progress, or why it ended (returns None).

    ``partial``: as `follow_job` takes it.
    """
    job = cached.jobs().get(job_id)
    if job is None:
        st.error(f"There is no job {job_id} in this workspace.", icon=":material/error:")
        return None
    if job.active:
        follow_job(job_id, partial)
        return None
    if job.state != "done":
        job_ended(job)
        return None
    return job


def run_with_surrogate(purpose: str):
    """The last run when it trained a surrogate; otherwise says why and where to go (None).

    ``purpose`` ends the sentences, e.g. "to plan a rollout".
    """
    run = S.get(S.RUN)
    if run is None:
        st.info(f"Run a study first {purpose}: this page starts from its measurements and "
                "surrogate.")
        st.page_link("views/run.py", label="Go to the Run page", icon=":material/play_circle:")
        return None
    if not run.report.get("surrogate"):
        st.info(f"The last run used the {run.report['method']} method, which trains no "
                f"surrogate. Run a method that searches (HDAP, for one) {purpose}.")
        return None
    return run


def job_ended(job) -> None:
    """A job that did not finish: why, and what to do."""
    runner = cached.job_runner(cached.workspace())
    if job.state == "failed":
        st.error(f"Job {job.id} stopped: {job.error}", icon=":material/error:")
    elif job.state == "cancelled":
        st.warning(f"Job {job.id} was cancelled ({job.error}).", icon=":material/stop_circle:")
    elif job.state == "interrupted":
        st.warning(f"Job {job.id} was interrupted: {job.error}.", icon=":material/restart_alt:")
    if job.state in ("interrupted", "cancelled", "failed") and st.button(
            "Re-queue this job", icon=":material/replay:", key="requeue_job"):
        runner.requeue(job.id)
        st.rerun()


def finetune_job(run):
    """The fine-tune job of a finished run: this session's, else the newest in the table
    (so another tab or a reload finds it), else None."""
    table = cached.jobs()
    mine = S.get(S.FINETUNE_JOB)
    if mine and mine["for"] == run.key:
        job = table.get(mine["job"])
        if job is not None:
            return job
    for job in table.list(limit=200):
        spec = (job.settings or {}).get("finetune") or {}
        if job.kind == "finetune" and spec.get("of_job") == run.job_id:
            return job
    return None


@dataclass
class RunView:
    """A finished study job on screen: everything comes from the job's record in the store."""

    job_id: int
    report: dict  # report.json of the bundle (MACs, widths added at export)
    widths: dict
    base_widths: dict
    test_points: object  # {column: values} or None
    settings: dict
    fleet_label: str
    weights_label: str
    seconds: float
    bundle: str | None = None
    comparison: dict | None = None
    sweep: dict | None = None
    owner: str | None = None
    measurements: dict | None = None

    @property
    def key(self) -> str:
        return f"job{self.job_id}"

    def figures(self) -> dict:
        from hdap_engine.report.charts import study_figures

        return study_figures(self.report, widths=self.widths, base_widths=self.base_widths,
                             test_points=self.test_points, sweep=self.sweep,
                             comparison=self.comparison)


def run_view(job) -> RunView:
    """The results of a finished study job (`hdap_engine.jobs.Job`), as the pages draw them."""
    res = job.result or {}
    report = res["report"]
    return RunView(job_id=job.id, report=report, widths=res["widths"],
                   base_widths=res["base_widths"], test_points=res.get("test_points"),
                   settings=job.settings,
                   fleet_label=job.settings.get("fleet_label") or report.get("fleet_source", ""),
                   weights_label=report.get("model_weights", ""), seconds=job.seconds or 0.0,
                   bundle=res.get("bundle"), comparison=res.get("comparison"),
                   sweep=res.get("sweep"), owner=job.owner,
                   measurements=res.get("measurements"))


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
        _, data_label = data_choice()
        st.markdown(f"**Model:** {S.get(S.MODEL)}  \n**Weights:** {label}  \n"
                    f"**Labelled data:** {data_label.partition(' (')[0]}  \n"
                    f"**Budget:** {float(S.get(S.BUDGET_FRACTION)):.0%} of the model's MACs  \n"
                    f"**Backend:** {S.get(S.BACKEND)}")
        run = S.get(S.RUN)
        if run is not None:
            f = run.report["fleet"]
            acc = run.report.get("accuracy") or {}
            top1 = acc.get("finetuned") if acc.get("finetuned") is not None \
                else acc.get("calibrated")
            st.markdown(f"**Last run:** {f['measured_mean_ms']:.2f} ms fleet mean, "
                        f"{f['speedup']:.2f}x ({run.report['measured_source']}); "
                        + ("accuracy unknown" if top1 is None
                           else f"{100 * top1:.1f}% top-1 held out"))
