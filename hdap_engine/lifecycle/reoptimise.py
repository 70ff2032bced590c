"""Is it worth re-optimising? The deployed model against a re-optimised one on the latest snapshot.

`hdap drift OLD NEW --bundle D` asks, besides who moved: how does the model
in bundle D (optimised for OLD) fare on NEW's clusters, and what would a
model re-optimised for NEW reach with the same model, budget, objective and
backend? Both are predicted by a surrogate fitted on NEW's representatives
and then measured there (a few measurements: the two candidates on every
representative). With the store of the first study, the re-optimisation
warm-starts from it (`hdap_engine.study.prepare.measure_samples`): clusters
whose representatives match devices measured before are not measured again,
so only the clusters that moved are. ``recommend_reoptimise`` is true when the deployed model's
measured fleet objective is worse than the re-optimised one's by more than
`ReoptimiseOptions.threshold` (3 % by default): below that, a new rollout does not pay for
itself.
"""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from hdap_engine.errors import HdapError
from hdap_engine.export.reading import model_of
from hdap_engine.infra.progress import Progress, no_progress
from hdap_engine.options import ReoptimiseOptions, StudyOptions
from hdap_engine.pruning.space import PruningSpace
from hdap_engine.study.prepare import prepare


def read_deployed(bundle: str | Path) -> tuple[StudyOptions, np.ndarray, dict]:
    """The options a bundle was made with, its widths, and its report.

    Parameters
    ----------
    bundle:
        A bundle folder (``report.json`` and ``widths.json`` inside).

    Returns
    -------
    (options, widths, report)
    """
    folder = Path(bundle)
    try:
        report = json.loads((folder / "report.json").read_text())
        doc = json.loads((folder / "widths.json").read_text())
    except FileNotFoundError as exc:
        raise HdapError(f"{folder}: not a bundle folder ({Path(exc.filename).name} is missing); "
                        "give the folder `hdap optimize --out` wrote") from None
    except (json.JSONDecodeError, OSError) as exc:
        raise HdapError(f"{folder}: cannot read the bundle ({exc}); export it again") from None
    settings = report.get("settings") or {}
    options = StudyOptions.from_settings(settings) if settings else StudyOptions()
    # A file model's source travels in widths.json and is kept in this workspace here.
    model = model_of(doc) if doc.get("model") else report.get("model")
    if model is None:
        raise HdapError(f"{folder}/widths.json: names no model; export the bundle again")
    if options.model != model:
        options = options.updated(model=model)
    if options.query.latency_ms is not None:
        # Made for a latency budget: the deployed model is judged at the MACs found for it.
        options = options.updated(budget=str(report["budget"]), latency_ms=None)
    space = PruningSpace.for_model(model).with_options(round_to=doc.get("round_to", 8))
    widths = space.widths_from_dict({g["name"]: g["width"] for g in doc["groups"]})
    if not settings:
        # A baseline bundle (`hdap prune`) records no study: re-optimise to its own budget.
        budget = report.get("budget_macs") or float(space.macs(widths))
        options = options.updated(budget=f"{float(budget):.0f}")
    return options, np.asarray(widths, dtype=np.int64), report


def reoptimise_check(bundle: str | Path, telemetry, *,
                     threshold: float = ReoptimiseOptions().threshold,
                     options: StudyOptions | None = None, store=None,
                     progress: Progress = no_progress) -> dict:
    """The deployed model's fleet objective on NEW against a model re-optimised for NEW.

    Parameters
    ----------
    bundle:
        The deployed model's bundle folder.
    telemetry:
        NEW: a telemetry path or `Fleet`.
    threshold:
        Relative gap (0.03 = 3 %) above which re-optimising is recommended.
    options:
        Study options to use instead of the bundle's own (e.g. a smaller search).
    store:
        The measurement store (default: the workspace's).
    progress:
        Called with (stage, step, total).

    Returns
    -------
    ``deployed_objective_ms``, ``reoptimised_objective_ms`` (measured on NEW's
    representatives), their ``predicted`` counterparts, ``gap``,
    ``threshold``, ``recommend_reoptimise``, the objective, the source, the
    re-optimised widths, the measurements spent, per cluster of NEW
    (``cluster_measurements``), and the clusters a warm start knew
    (``known_clusters``: never measured).
    """
    from hdap_engine.study.run import optimize
    from hdap_engine.study.verify import verify_candidate

    ReoptimiseOptions(threshold=threshold)  # refuses a share outside [0, 1)
    own, deployed, _ = read_deployed(bundle)
    options = options or own
    ctx = prepare(options, telemetry, store=store, progress=progress)
    if tuple(deployed.shape) != (ctx.space.n_groups,):
        raise HdapError(f"{bundle}: its widths do not fit {options.model}'s pruning space")
    chosen = optimize(ctx, progress=progress)
    objective = ctx.fleet_objective()
    search = ctx.fleet_search()
    predicted = None
    if ctx.surrogate is not None:
        both = search.predict_clusters(ctx.surrogate, np.stack([deployed, chosen.widths]))
        predicted = [float(v) for v in objective(both)]
    # Measured together on every representative: the comparison the decision rests on.
    measured = [verify_candidate(ctx, w, every_device=False, progress=progress)
                for w in (deployed, chosen.widths)]
    dep_ms, new_ms = (float(objective(m.cluster_measured_ms[None])[0]) for m in measured)
    gap = (dep_ms - new_ms) / dep_ms if dep_ms > 0 else 0.0
    learned = chosen.learned
    per_cluster = {} if learned is None else \
        learned.cluster_pairs(ctx.search_devices().clusters, ctx.k)
    return {
        "objective": objective.label,
        "measured_source": ctx.backend.source,
        "deployed_objective_ms": dep_ms,
        "reoptimised_objective_ms": new_ms,
        "predicted_deployed_objective_ms": None if predicted is None else predicted[0],
        "predicted_reoptimised_objective_ms": None if predicted is None else predicted[1],
        "gap": gap,
        "threshold": threshold,
        "recommend_reoptimise": bool(gap > threshold),
        "reoptimised_widths": [int(x) for x in chosen.widths],
        "device_measurements": int(chosen.device_measurements),
        # Where they went: a warm start from the first study leaves the clusters whose
        # devices it already measured (``known_clusters``) at zero.
        "cluster_measurements": {str(c): n for c, n in per_cluster.items()},
        "known_clusters": [] if learned is None else [int(c) for c in learned.known],
        "k_new": int(ctx.k),
    }


__all__ = ["read_deployed", "reoptimise_check"]
