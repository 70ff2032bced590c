"""What a job does: ONE entry point from (kind, settings) to the engine, and back.

`execute` is the only place where a job's JSON settings become engine calls
(`prepare.prepare`, `study.run_study`, `benchmark.compare_context`,
`benchmark.sweep_context`, `finetune.run.finetune_bundle`), and `study_options` the only place where they
become `StudyOptions` (`StudyOptions.from_settings`: nested sections, or the
flat settings of earlier versions): when the engine changes shape, these
functions change and nothing else in the job machinery does.

Settings of every kind::

    {"options": StudyOptions.settings(),      # what defines the study (nested sections)
     "telemetry": "path/to/fleet.csv",        # read by the worker
     "fleet_name": "mine.csv" | None,         # the name an upload had (for messages)
     "upload": false,                         # true: no twin sidecar next to the file
     "context_features": [],                  # earlier versions: now in options.clustering
     "compare": ["uniform", "global"],        # kind "study" / "comparison": other methods
     "sweep": true}                           # kind "study" / "sweep": the budget sweep

A ``rollout`` job plans variants on a finished study job, re-using what it
measured: its settings are ``{"rollout": {"job": STUDY_JOB_ID, "variants": K}}``.
A ``reoptimise`` job checks a deployed bundle against a later snapshot:
``{"reoptimise": {"bundle": DIR, "telemetry": NEW, "threshold": 0.03}}``.

A ``finetune`` job fine-tunes an export bundle by distillation from the unpruned
model (`hdap_engine.finetune`'s recipe) into a new bundle::

    {"finetune": {"bundle": "path/to/bundle",   # the pruned model (a study's bundle)
                  "data": "digits" | "x.zip",   # training images (AccuracyPlan.data)
                  "val_data": None,             # held-out images (default: the split)
                  "epochs": 5,                  # FinetuneOptions.epochs
                  "seed": 0,
                  "of_job": STUDY_JOB_ID}}      # where the bundle came from (for pages)

Its result is ``{"bundle", "report", "accuracy", "history", "of_job"}``: the new
bundle, its report.json, the report's accuracy block and one row per epoch. A
study whose options ask for ``finetune_epochs`` fine-tunes its bundle in place
the same way (as ``hdap optimize --finetune-epochs`` does).

While a job trains, ``partial`` (see `execute`) gets ``{"history": [...],
"epochs": N}`` after every epoch, so a page draws the loss and held-out accuracy
live; the progress callback gets ``("finetune", epoch, epochs)``.

The result is plain JSON and enough to draw every chart of the run again in
a page, without the worker: the bundle's report, the bundle path, widths, the
comparison and sweep tables, and the surrogate's training set. The surrogate
itself is saved in the store under ``job:<id>`` (XGBoost's JSON, no pickle),
so that `rebuild_context` can give the what-if page the run's context and
what it learned.
"""

from __future__ import annotations

from collections.abc import Callable

from hdap_engine.errors import HdapError
from hdap_engine.infra.progress import Progress

KINDS = ("study", "comparison", "sweep", "rollout", "reoptimise", "finetune")
Partial = Callable[[dict], None]


def study_options(settings: dict):
    """The `StudyOptions` of a job's settings (raises HdapError when they are not valid)."""
    from hdap_engine.options import StudyOptions

    try:
        return StudyOptions.from_settings(dict(settings.get("options") or {}))
    except TypeError as exc:
        raise HdapError(f"this job's settings do not describe a study ({exc}); "
                        "start it again from the Run page") from None


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


def execute(kind: str, settings: dict, *, job_id: int = 0, store=None,
            progress: Progress | None = None, agent_token: str | None = None,
            partial: Partial | None = None) -> dict:
    """Run one job's work with the engine and return its result (plain JSON data).

    Parameters
    ----------
    kind:
        ``study`` (prepare, search, prune, validate, export, record; then the
        comparison and the sweep the settings ask for), ``comparison`` or ``sweep``
        (prepare, then only that), ``rollout`` (plan variants on a finished study job),
        ``reoptimise`` (a deployed bundle against a model re-optimised for a snapshot),
        ``finetune`` (fine-tune a bundle into a new one).
    settings:
        As in the module docstring.
    job_id:
        The job's id (names its surrogate in the store).
    store:
        The measurement store (default: the workspace's).
    progress:
        Called with (stage, step, total).
    agent_token:
        The device agents' token; never stored with the job.
    partial:
        Called with what the job has produced so far (a fine-tune's epochs), for pages
        that draw it while the job runs.

    Returns
    -------
    {"report", "bundle", "run_id", "widths", "base_widths", "comparison", "sweep",
    "samples", "sample_ms", "surrogate_key", "test_points", "measurements"}; missing
    parts are None. ``measurements`` counts the sampled (device, candidate) pairs
    served from the store and measured now. A ``rollout`` or ``finetune`` job returns
    its own result (module docstring).
    """
    from dataclasses import replace

    from hdap_engine.export.reading import read_bundle_report
    from hdap_engine.infra.jsonable import jsonable
    from hdap_engine.infra.workspace import new_bundle_dir
    from hdap_engine.latency.store import Store
    from hdap_engine.study.compare import compare_context, sweep_budgets, sweep_context
    from hdap_engine.study.prepare import prepare
    from hdap_engine.study.run import run_study

    if kind not in KINDS:
        raise HdapError(f"unknown job kind {kind!r}; choose one of: {', '.join(KINDS)}")
    progress = progress or (lambda stage, step, total: None)
    partial = partial or (lambda data: None)
    if kind == "rollout":
        return _rollout(settings, store or Store(), progress, agent_token)
    if kind == "reoptimise":
        return _reoptimise(settings, store or Store(), progress, agent_token)
    if kind == "finetune":
        return _finetune(settings, progress, partial)
    store = _CountingStore(store or Store())
    options = study_options(settings)
    if agent_token:
        options = options.updated(agent_token=agent_token)
    if kind == "study" and options.accuracy.finetune_epochs and not options.model_weights:
        # Refused before the study, not after it: distillation needs a trained teacher.
        raise HdapError("fine-tuning distils from the unpruned model's trained weights, and "
                        "this study's weights are random; choose trained weights on the Model "
                        "page, or set the fine-tune epochs to 0")
    fleet, clustering, sidecar = _fleet_and_clustering(settings, options)
    ctx = prepare(options, fleet, store=store, progress=progress, fleet=fleet,
                  clustering=clustering, telemetry_path=sidecar)
    sampled = {"from_store": store.served, "measured": store.stored}
    out: dict = {"report": None, "bundle": None, "run_id": None, "widths": None,
                 "base_widths": ctx.space.widths_dict(ctx.space.base_widths),
                 "comparison": None, "sweep": None, "samples": None, "sample_ms": None,
                 "surrogate_key": None, "test_points": None, "learned": None,
                 "measurements": sampled if ctx.learned is not None else None}
    widths, learned, used = None, ctx.learned, 0
    budget = options.query.budget
    if kind == "study":
        result = run_study(options, None, context=ctx, store=store, progress=progress,
                           out_dir=new_bundle_dir(f"{options.model}-{options.method}"))
        if result.bundle and options.accuracy.finetune_epochs:
            acc = options.accuracy
            _tune(result.bundle, result.bundle, acc.data, acc.val_data, acc.finetune_epochs,
                  options.seed, progress, partial, model_weights=options.model_weights)
        report = read_bundle_report(result.bundle) if result.bundle else dict(result.report)
        widths, learned, used = result.widths, result.learned, result.device_measurements
        budget = report["budget"]
        out.update(report=report, bundle=str(result.bundle) if result.bundle else None,
                   run_id=_history_id(store, result.bundle),
                   widths=ctx.space.widths_dict(result.widths))
    methods = list(settings.get("compare") or []) if kind in ("study", "comparison") else []
    if methods:
        out["comparison"] = compare_context(ctx, budget, methods, widths=widths,
                                            device_measurements=used, telemetry_path=sidecar,
                                            progress=progress)
    if kind in ("study", "sweep") and settings.get("sweep") and learned is not None:
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


def _rollout(settings: dict, store, progress: Progress, agent_token: str | None) -> dict:
    """Plan a rollout on a finished study job: ``{"rollout": Rollout.as_dict(), "of_job": ID}``."""
    from hdap_engine.infra.jsonable import jsonable
    from hdap_engine.jobs.table import JobTable
    from hdap_engine.lifecycle.rollout import plan_rollout
    from hdap_engine.options import RolloutOptions

    spec = settings.get("rollout") or {}
    try:
        source_id = int(spec["job"])
        variants = int(spec.get("variants", RolloutOptions().variants))
    except (KeyError, TypeError, ValueError):
        raise HdapError("this rollout job names no study job to plan on; start it again from "
                        "the Rollout page") from None
    source = JobTable(store.path).get(source_id)
    if source is None or source.state != "done" or source.kind != "study":
        raise HdapError(f"job {source_id} is not a finished study, so there is nothing to plan "
                        "a rollout on; run the study again from the Run page")
    ctx, learned = rebuild_context(source.settings, source.result, store=store,
                                   agent_token=agent_token)
    rollout = plan_rollout(ctx, variants, learned=learned, progress=progress)
    return jsonable({"rollout": rollout.as_dict(), "of_job": source_id})


def _tune(bundle, out, data, val_data, epochs: int, seed: int, progress: Progress,
          partial: Partial, *, model_weights=None):
    """`finetune_bundle` with the job's progress: ("finetune", epoch, epochs), and the
    epochs so far as the job's partial result after each one."""
    from dataclasses import asdict

    from hdap_engine.finetune.run import finetune_bundle
    from hdap_engine.options import DISTILL

    recipe = DISTILL.with_changes(epochs=int(epochs), seed=int(seed))
    history: list[dict] = []

    def on_epoch(record) -> None:
        history.append(asdict(record))
        partial({"history": list(history), "epochs": recipe.epochs})
        progress("finetune", record.epoch, record.epochs)

    # Stage "finetune" from the start: the held-out figures and batch-norm
    # re-estimation before the first epoch belong to it.
    progress("finetune", 0, recipe.epochs)
    return finetune_bundle(bundle, data, out, options=recipe, val_data=val_data,
                           model_weights=model_weights, on_epoch=on_epoch)


def _finetune(settings: dict, progress: Progress, partial: Partial) -> dict:
    """Fine-tune a bundle into a new one: ``{"bundle", "report", "accuracy", "history",
    "of_job"}``."""
    from hdap_engine.export.reading import read_bundle_report
    from hdap_engine.infra.jsonable import jsonable
    from hdap_engine.infra.workspace import new_bundle_dir

    spec = settings.get("finetune") or {}
    bundle, data = spec.get("bundle"), spec.get("data")
    if not bundle or not data:
        raise HdapError("this fine-tune job names no bundle or no labelled data; start it "
                        "again from the Fine-tune page")
    try:
        epochs, seed = int(spec.get("epochs", 1)), int(spec.get("seed", 0))
    except (TypeError, ValueError):
        raise HdapError(f"this fine-tune job's epochs ({spec.get('epochs')!r}) are not a "
                        "whole number; start it again from the Fine-tune page") from None
    model = read_bundle_report(bundle).get("model") or "model"
    done = _tune(bundle, new_bundle_dir(f"{model}-finetuned"), data, spec.get("val_data"),
                 epochs, seed, progress, partial, model_weights=spec.get("model_weights"))
    report = read_bundle_report(done.bundle)
    return jsonable({"bundle": str(done.bundle), "report": report,
                     "accuracy": done.accuracy,
                     "history": done.accuracy.get("finetune", {}).get("history") or [],
                     "of_job": spec.get("of_job")})


def _reoptimise(settings: dict, store, progress: Progress, agent_token: str | None) -> dict:
    """`reoptimise_check` of a bundle on a snapshot: ``{"reoptimise": its result}``."""
    from hdap_engine.infra.jsonable import jsonable
    from hdap_engine.lifecycle.reoptimise import read_deployed, reoptimise_check
    from hdap_engine.options import ReoptimiseOptions

    spec = settings.get("reoptimise") or {}
    bundle, telemetry = spec.get("bundle"), spec.get("telemetry")
    if not bundle or not telemetry:
        raise HdapError("this check names no bundle or no snapshot; start it again from the "
                        "Drift page")
    options = read_deployed(bundle)[0]
    if agent_token:
        options = options.updated(agent_token=agent_token)
    result = reoptimise_check(bundle, telemetry, options=options, store=store, progress=progress,
                              threshold=float(spec.get("threshold", ReoptimiseOptions().threshold)))
    return jsonable({"reoptimise": result})


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
    from hdap_engine.search.fleet_search import Learned
    from hdap_engine.study.prepare import prepare

    store = store or Store()
    options = study_options(settings)
    if agent_token:
        options = options.updated(agent_token=agent_token)
    fleet, clustering, sidecar = _fleet_and_clustering(settings, options)
    # A baseline method prepares everything but the measurements and the surrogate,
    # which the job already made.
    ctx = prepare(options.updated(method="uniform"), fleet, store=store, fleet=fleet,
                  clustering=clustering, telemetry_path=sidecar)
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
