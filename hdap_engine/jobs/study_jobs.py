"""The study's job kinds (``study``, ``comparison``, ``sweep``) and a finished study rebuilt.

Settings of these kinds (`study_settings` builds them)::

    {"options": StudyOptions.settings(),      # what defines the study (nested sections)
     "telemetry": "path/to/fleet.csv",        # read by the worker
     "fleet_name": "mine.csv" | None,         # the name an upload had (for messages)
     "fleet_label": "mine.csv",               # the fleet as pages name it
     "upload": false,                         # true: no twin sidecar next to the file
     "context_features": [],                  # earlier versions: now in options.clustering
     "compare": ["uniform", "global"],        # kind "study" / "comparison": other methods
     "sweep": true}                           # kind "study" / "sweep": the budget sweep

`study_options` is the only place where a job's settings become `StudyOptions`
(`StudyOptions.from_settings`: nested sections, or the flat settings of earlier
versions). A study whose options ask for ``finetune_epochs`` fine-tunes its
bundle in place (as ``hdap optimize --finetune-epochs`` does).

The result is plain JSON and enough to draw every chart of the run again in
a page, without the worker: the bundle's report, the bundle path, widths, the
comparison and sweep tables, and the surrogate's training set. The surrogate
itself is saved in the store under ``job:<id>`` (XGBoost's JSON, no pickle),
so that `rebuild_context` can give the what-if page the run's context and
what it learned.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from hdap_engine.errors import HdapError

if TYPE_CHECKING:
    from hdap_engine.jobs.kinds import JobRun

# What a study-like job's result holds (missing parts are None).
STUDY_RESULT = ("report", "bundle", "run_id", "widths", "base_widths", "comparison", "sweep",
                "samples", "sample_ms", "surrogate_key", "test_points", "learned",
                "measurements")


def study_options(settings: dict):
    """The `StudyOptions` of a job's settings (raises HdapError when they are not valid)."""
    from hdap_engine.options import StudyOptions

    try:
        return StudyOptions.from_settings(dict(settings.get("options") or {}))
    except TypeError as exc:
        raise HdapError(f"this job's settings do not describe a study ({exc}); "
                        "start it again from the Run page") from None


def study_settings(options, *, telemetry: str | None, fleet_label: str, upload: bool,
                   compare=(), sweep: bool = False) -> dict:
    """The settings of a study job (module docstring) for ``options`` on a telemetry file.

    ``upload``: the file is an upload (no twin sidecar; its name is ``fleet_label``).
    """
    return {"options": options.settings(), "telemetry": telemetry, "upload": bool(upload),
            "fleet_name": fleet_label if upload else None, "fleet_label": fleet_label,
            "compare": list(compare), "sweep": bool(sweep)}


def what_if_settings(settings: dict, options) -> dict:
    """A finished study's settings with other options, and neither comparison nor sweep
    (the what-if candidate made real)."""
    return {**settings, "options": options.settings(), "compare": [], "sweep": False}


class _CountingStore:
    """The store, counting the measurements it serves and takes: what a job re-used."""

    def __init__(self, store):
        self._store, self.served, self.stored = store, 0, 0

    def __getattr__(self, name):
        return getattr(self._store, name)

    def get_measurements(self, *args, **kwargs):
        rows = self._store.get_measurements(*args, **kwargs)
        self.served += len(rows)
        return rows

    def put_measurements(self, *args, **kwargs):
        n = self._store.put_measurements(*args, **kwargs)
        self.stored += n
        return n


def surrogate_key(job_id: int) -> str:
    """Where a job's final surrogate is kept in the store."""
    return f"job:{int(job_id)}"


def _fleet_and_clustering(settings: dict, options):
    from dataclasses import replace

    from hdap_engine.fleet.clustering import Clustering
    from hdap_engine.fleet.telemetry import load_fleet

    path = settings.get("telemetry")
    if not path:
        raise HdapError("this job names no telemetry file; start it again from the Run page")
    fleet = load_fleet(path, sku=options.sku, name=settings.get("fleet_name"))
    # Jobs of earlier versions kept the context features beside the options.
    wanted = options.clustering.context_features or settings.get("context_features") or ()
    features = tuple(f for f in wanted if f in fleet.numeric_context_columns)
    clustering = None
    if options.measurement.backend != "host":  # host: the fleet is this machine, one cluster
        clustering = Clustering(replace(options.clustering,
                                        context_features=features)).fit(fleet)
    sidecar_path = None if settings.get("upload") else path
    return fleet, clustering, sidecar_path


def run_prepared(settings: dict, run: JobRun, *, study: bool = False, compare: bool = False,
                 sweep: bool = False) -> dict:
    """Prepare the study of ``settings``, then what the kind asks for: the study itself
    (search, prune, verify, export, record), the comparison and the budget sweep the
    settings name. Returns `STUDY_RESULT`; ``measurements`` counts the sampled
    (device, candidate) pairs served from the store and measured now."""
    from dataclasses import replace

    from hdap_engine.export.reading import read_bundle_report
    from hdap_engine.infra.jsonable import jsonable
    from hdap_engine.infra.workspace import new_bundle_dir
    from hdap_engine.jobs.finetune_jobs import tune_bundle
    from hdap_engine.study.compare import compare_context, sweep_budgets, sweep_context
    from hdap_engine.study.prepare import prepare
    from hdap_engine.study.run import run_study

    progress, partial, job_id = run.progress, run.partial, run.job_id
    store = _CountingStore(run.measurement_store())
    options = study_options(settings)
    if run.agent_token:
        options = options.updated(agent_token=run.agent_token)
    if study and options.accuracy.finetune_epochs and not options.model_weights:
        # Refused before the study, not after it: distillation needs a trained teacher.
        raise HdapError("fine-tuning distils from the unpruned model's trained weights, and "
                        "this study's weights are random; choose trained weights on the Model "
                        "page, or set the fine-tune epochs to 0")
    fleet, clustering, sidecar = _fleet_and_clustering(settings, options)
    ctx = prepare(options, fleet, store=store, progress=progress, fleet=fleet,
                  clustering=clustering, telemetry_path=sidecar)
    sampled = {"from_store": store.served, "measured": store.stored}
    out: dict = dict.fromkeys(STUDY_RESULT)
    out.update(base_widths=ctx.space.widths_dict(ctx.space.base_widths),
               measurements=sampled if ctx.learned is not None else None)
    widths, learned, used = None, ctx.learned, 0
    budget = options.query.budget
    if study:
        result = run_study(options, None, context=ctx, store=store, progress=progress,
                           out_dir=new_bundle_dir(f"{options.model}-{options.method}"))
        if result.bundle and options.accuracy.finetune_epochs:
            acc = options.accuracy
            tune_bundle(result.bundle, result.bundle, acc.data, acc.val_data,
                        acc.finetune_epochs, options.seed, progress, partial,
                        model_weights=options.model_weights)
        report = read_bundle_report(result.bundle) if result.bundle else dict(result.report)
        widths, learned, used = result.widths, result.learned, result.device_measurements
        budget = report["budget"]
        out.update(report=report, bundle=str(result.bundle) if result.bundle else None,
                   run_id=_history_id(store, result.bundle),
                   widths=ctx.space.widths_dict(result.widths))
    methods = list(settings.get("compare") or []) if compare else []
    if methods:
        out["comparison"] = compare_context(ctx, budget, methods, widths=widths,
                                            device_measurements=used, telemetry_path=sidecar,
                                            progress=progress)
    if sweep and settings.get("sweep") and learned is not None:
        # No refinement: the sweep reuses the surrogate as the run left it (each budget's
        # finalists are still measured), so five budgets take seconds, not minutes.
        out["sweep"] = sweep_context(ctx, sweep_budgets(ctx.space),
                                     plan=replace(ctx.options.search, refine_rounds=0),
                                     learned=learned, progress=progress)
    if learned is not None and learned.surrogate is not None:
        key = surrogate_key(job_id)
        store.put_surrogate(key, {"model": ctx.space.model, "job": int(job_id)},
                            learned.surrogate.to_bytes())
        tp = learned.surrogate.test_points_
        out.update(samples=learned.widths, sample_ms=learned.ms, surrogate_key=key,
                   test_points=None if tp is None else tp.to_dict(orient="list"),
                   learned={"device_measurements": int(learned.device_measurements),
                            "timing_drift": float(learned.timing_drift),
                            "notes": list(learned.notes)})
    return jsonable(out)


def _history_id(store, bundle) -> int | None:
    """The history row `run_study` just recorded (found by its bundle: other workers
    may have recorded runs since)."""
    if bundle is None:
        return None
    for r in store.list_runs(limit=50):
        full = store.get_run(r["id"])
        if full and full["result"].get("bundle") == str(bundle):
            return int(r["id"])
    return None


def rebuild_context(settings: dict, result: dict, *, store=None,
                    agent_token: str | None = None):
    """(`StudyContext`, `Learned`) as a finished study job ended with, measuring nothing.

    The fleet is read and clustered again, the backend set up again; the
    surrogate and its training set come from the store and the job's result.
    The what-if page searches on them.
    """
    from dataclasses import replace

    import numpy as np

    from hdap_engine.latency.store import Store
    from hdap_engine.latency.surrogate import Surrogate
    from hdap_engine.search.learned import Learned
    from hdap_engine.study.prepare import prepare

    store = store or Store()
    options = study_options(settings)
    if agent_token:
        options = options.updated(agent_token=agent_token)
    fleet, clustering, sidecar = _fleet_and_clustering(settings, options)
    # A baseline method prepares everything but the measurements and the surrogate,
    # which the job already made.
    ctx = prepare(options.updated(method="uniform"), fleet, store=store, fleet=fleet,
                  clustering=clustering, telemetry_path=sidecar, devices_of=options.method)
    learned = None
    key = result.get("surrogate_key")
    if key:
        stored = store.get_surrogate(key)
        if stored is None:
            raise HdapError(f"the store has lost this run's surrogate ({key}); run it again")
        extra = result.get("learned") or {}
        learned = Learned(
            widths=np.asarray(result["samples"], dtype=np.int64),
            ms=np.asarray([[np.nan if v is None else v for v in row]
                           for row in result["sample_ms"]], dtype=np.float64),
            surrogate=Surrogate.from_bytes(ctx.space, stored[1]),
            device_measurements=int(extra.get("device_measurements", 0)),
            # "batch_drift": its name in jobs saved before it was renamed.
            timing_drift=float(extra.get("timing_drift", extra.get("batch_drift", 1.0))),
            notes=tuple(extra.get("notes") or ()))
    return replace(ctx, options=options, learned=learned), learned
