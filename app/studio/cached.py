"""Engine calls behind Streamlit's caches.

Heavy modules (torch, scikit-learn, UMAP, XGBoost) are imported inside these
functions, so the first page is served before any of them loads. Arguments
with a leading underscore are not hashed: the string key next to them (a
fleet fingerprint, a clustering key) says what they are.

Cached objects are shared by every session; the app treats them as read-only.
"""

from __future__ import annotations

import streamlit as st


def sample_fleets() -> dict[str, str]:
    """The shipped sample fleets: name -> telemetry path."""
    from hdap_engine.fleet.samples import sample_dir

    return _sample_fleets(str(sample_dir()))


def _in_background(name: str, work) -> None:
    import contextlib
    import threading

    def run() -> None:
        # A failure here only makes a later page slower; pages report real errors.
        with contextlib.suppress(Exception):
            work()

    threading.Thread(target=run, name=name, daemon=True).start()


@st.cache_resource(show_spinner=False)
def warm_up_map() -> None:
    """Once per server, on the first page view: get UMAP ready in the background.

    Importing UMAP and loading (or, on a new machine, compiling) its numba
    kernels overlaps with loading and clustering the fleet.
    """

    def work() -> None:
        from hdap_engine.fleet.embedding import warm_up

        warm_up()

    _in_background("hdap-warm-up-map", work)


@st.cache_resource(show_spinner=False)
def warm_up_engine() -> None:
    """Once per server, after the first fleet map: import PyTorch, XGBoost and the study.

    The model and run pages then open without waiting seconds for imports.
    Started after the map so that it does not compete with it for the CPU.
    """

    def work() -> None:
        import xgboost  # noqa: F401

        import hdap_engine.study.run  # noqa: F401  (torch, torch-pruning)

    _in_background("hdap-warm-up-engine", work)


@st.cache_data(show_spinner=False, ttl=60)
def _sample_fleets(folder: str) -> dict[str, str]:
    from hdap_engine.fleet.samples import sample_fleets as listed

    return {s.name: str(s.path) for s in listed(folder)}


@st.cache_resource(show_spinner=False, max_entries=4)
def sample_fleet(path: str):
    """A shipped sample fleet: (Fleet, fingerprint)."""
    from hdap_engine.fleet.telemetry import load_fleet

    fleet = load_fleet(path)
    return fleet, fleet.fingerprint()


def clustering_key(fingerprint: str, k: int | None, representatives: int,
                   context_features: tuple[str, ...], seed: int) -> str:
    """The text that names one clustering of one fleet."""
    return f"{fingerprint}|k={k or 'auto'}|r={representatives}|f={','.join(context_features)}" \
           f"|s={seed}"


@st.cache_resource(show_spinner=False, max_entries=16)
def clustering(_fleet, key: str, k: int | None, representatives: int,
               context_features: tuple[str, ...], seed: int):
    """The fleet's clustering (`hdap_engine.fleet.clustering.Clustering`, fitted)."""
    from hdap_engine.fleet.clustering import Clustering
    from hdap_engine.options import ClusteringPlan

    options = ClusteringPlan(k=k, representatives=representatives,
                             context_features=tuple(context_features), seed=seed)
    return Clustering(options).fit(_fleet)


@st.cache_resource(show_spinner=False, max_entries=16)
def embedding(_fleet, _clustering, key: str):
    """The 2-D map of the fleet (`hdap_engine.fleet.embedding.embed`)."""
    from hdap_engine.fleet.embedding import embed

    return embed(_fleet, _clustering, seed=0)


@st.cache_resource(show_spinner=False, max_entries=12)
def space(model: str, round_to: int = 8):
    """The pruning space of a model (traced once per process)."""
    from hdap_engine.pruning.space import PruningSpace

    return PruningSpace.for_model(model, round_to=round_to)


@st.cache_data(show_spinner=False)
def model_names() -> list[str]:
    from hdap_engine.models.zoo import model_names as names

    return names()


@st.cache_data(show_spinner=False)
def catalogue(source: str) -> list[str]:
    """Every classifier name of a library ("torchvision" or "timm")."""
    from hdap_engine.models.library import catalogue as names

    return list(names(source))


@st.cache_data(show_spinner=False)
def has_published_weights(model: str) -> bool:
    """Whether torchvision or timm publish weights for ``model`` (the local cache may have them)."""
    from hdap_engine.errors import HdapError
    from hdap_engine.models.zoo import get_spec

    try:
        spec = get_spec(model)
    except HdapError:
        return False
    return bool(spec.torchvision_weights or spec.timm_hf_id)


@st.cache_data(show_spinner=False)
def model_task(model: str) -> str:
    """"detection" or "classification" (`ModelSpec.task`); a name that does not resolve is
    left to the page that builds it to explain."""
    from hdap_engine.errors import HdapError
    from hdap_engine.models.zoo import get_spec

    try:
        return get_spec(model).task
    except HdapError:
        return "classification"


@st.cache_data(show_spinner=False)
def model_description(model: str) -> str:
    from hdap_engine.models.zoo import get_spec

    return get_spec(model).description


@st.cache_resource(show_spinner=False, max_entries=8)
def checked_weights(model: str, path: str) -> str:
    """Load user weights into ``model`` once (raises HdapError when they do not fit)."""
    from hdap_engine.models.zoo import build_model, weights_label

    build_model(model, path)
    return weights_label(path, model)


@st.cache_data(show_spinner=False, max_entries=16)
def checked_data(model: str, weights: str | None, data: str) -> tuple[dict | None, str | None]:
    """Labelled data read and checked for ``model`` with ``weights`` once: (summary, None),
    or (None, the engine's message). A refusal is kept too, so a bad zip is not read again
    on every rerun."""
    from hdap_engine.accuracy.study import check_data
    from hdap_engine.errors import HdapError

    try:
        return check_data(model, weights, data), None
    except HdapError as exc:
        return None, str(exc)


SHAPES_FOLDER = "demo-data"  # the workspace's folder of generated demo data


@st.cache_resource(show_spinner=False, max_entries=2)
def shapes_data(home: str, images: int, size: int, seed: int) -> str:
    """The synthetic shapes dataset (`hdap_engine.data.shapes`) in the workspace ``home``,
    generated once per workspace: a folder a job's worker reads like any COCO data.

    Written to a temporary folder and renamed, so a second server (or a crash) never
    leaves a half-written dataset under the final name.
    """
    import shutil
    import tempfile
    from pathlib import Path

    from hdap_engine.data.shapes import write_shapes
    from hdap_engine.options import ShapesOptions

    root = Path(home) / SHAPES_FOLDER
    final = root / f"shapes-{size}px-{images}-seed{seed}"
    if not (final / "annotations.json").is_file():
        root.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(dir=root, prefix=".shapes-"))
        write_shapes(tmp, ShapesOptions(images=images, size=size, seed=seed))
        try:
            tmp.rename(final)
        except OSError:  # another process finished first: theirs is the same data
            shutil.rmtree(tmp, ignore_errors=True)
    return str(final)


@st.cache_resource(show_spinner=False, max_entries=4)
def study_detectors(bundle: str, model: str, weights: str | None, data: str,
                    val_data: str | None, seed: int):
    """A detector study's two detectors and held-out images
    (`hdap_engine.report.detections.study_detectors`), read once per run."""
    from hdap_engine.report.detections import study_detectors as read

    return read(bundle, model, weights, data, val_data=val_data, seed=seed)


@st.cache_data(show_spinner=False, max_entries=32)
def study_picture(bundle: str, model: str, weights: str | None, data: str,
                  val_data: str | None, seed: int, threshold: float) -> tuple[bytes, str]:
    """A detector study's picture at a score threshold: (PNG bytes, caption)."""
    pic = study_detectors(bundle, model, weights, data, val_data, seed).picture(threshold)
    return pic.png(), pic.caption()


@st.cache_resource(show_spinner=False)
def store(home: str):
    """The measurement store of the workspace ``home``."""
    from hdap_engine.latency.store import Store

    return Store()


@st.cache_resource(show_spinner=False, max_entries=64)
def whatif(_ctx, _learned, context_key: str, budget: str,
           weights: tuple[float, ...] | None, objective: str, slo_ms: float | None,
           method: str):
    """The surrogate's best candidate for other settings; measures nothing.

    ``context_key`` (the run's key) stands for the context and what the run
    learned, which Streamlit cannot hash.
    """
    from hdap_engine.options import Query
    from hdap_engine.study.run import optimize

    user = None if weights is None else dict(enumerate(weights))
    query = Query(budget=budget, objective=objective, cluster_weights=user, slo_ms=slo_ms)
    return optimize(_ctx, query, method=method, plan=_ctx.options.search.quick(),
                    learned=_learned)


@st.cache_data(show_spinner=False, max_entries=32)
def report_page(_figures, _report, key: str) -> str:
    """The HTML report of a run (built once per run)."""
    from hdap_engine.report.page import report_html

    return report_html(_report, _figures)


def workspace() -> str:
    """The workspace folder of this server (``HDAP_HOME``)."""
    from hdap_engine.infra.workspace import home

    return str(home())


@st.cache_resource(show_spinner=False)
def job_runner(home: str):
    """The server's job runner for the workspace ``home`` (started on the first page view).

    Starting it marks jobs that a stopped server left running as interrupted
    and starts the queued ones.
    """
    from pathlib import Path

    from hdap_engine.jobs import runner

    return runner(Path(home) / "store.sqlite")


def jobs():
    """The job table of this workspace (a cheap handle; every read is fresh)."""
    from hdap_engine.infra.workspace import home
    from hdap_engine.jobs import JobTable

    return JobTable(home() / "store.sqlite")


@st.cache_resource(show_spinner=False, max_entries=8)
def job_context(job_id: int, _settings: dict, _result: dict):
    """(`StudyContext`, `Learned`) a finished study job ended with, rebuilt once per server.

    Nothing is measured: measurements and the surrogate come from the store.
    """
    from hdap_engine.jobs import rebuild_context

    return rebuild_context(_settings, _result)


@st.cache_resource(show_spinner=False, max_entries=4)
def drift(_old, _new, key: str, k: int | None, seed: int):
    """Two snapshots compared (`hdap_engine.fleet.drift.compare`); ``key`` names the pair."""
    from hdap_engine.fleet.drift import compare
    from hdap_engine.options import ClusteringPlan, DriftOptions

    return compare(_old, _new, DriftOptions(clustering=ClusteringPlan(k=k, seed=seed)))
