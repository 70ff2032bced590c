"""`hdap rollout`: would K' model variants, one per cohort of clusters, beat one model?"""

from __future__ import annotations

import argparse

from hdap_engine.cli.common import Bar, print_table, write_json
from hdap_engine.cli.flags import add_fields, add_study_flags, study_options
from hdap_engine.options import RolloutOptions


def _cmd_rollout(args: argparse.Namespace) -> int:
    from pathlib import Path

    from hdap_engine.infra.wording import plural
    from hdap_engine.lifecycle.rollout import check_rollout_method, plan_rollout, write_rollout
    from hdap_engine.pruning.budget import parse_budget
    from hdap_engine.pruning.space import PruningSpace
    from hdap_engine.study.prepare import prepare

    options = study_options(args)
    check_rollout_method(options.method_spec)
    # A budget no candidate can meet is said before the fleet is clustered and measured.
    parse_budget(options.query.budget, PruningSpace.for_model(
        options.model, round_to=options.round_to, min_ratio=options.min_ratio))
    bar = Bar(not args.quiet)
    try:
        ctx = prepare(options, args.telemetry, progress=bar)
        rollout = plan_rollout(ctx, args.variants, progress=bar)
        doc = write_rollout(ctx, rollout, args.out, progress=bar)
    finally:
        bar.close()
    print(f"rollout of {args.model} at {args.budget} MACs on {ctx.fleet.source} "
          f"({plural(ctx.fleet.n_devices, 'device')}, {plural(ctx.k, 'cluster')}), "
          f"objective {options.query.objective}, measured by {rollout.measured_source} "
          f"({rollout.basis}); measurement noise {rollout.noise:.2%}")
    from hdap_engine.lifecycle.rollout import ROLLOUT_COLUMNS, rollout_rows  # torch: not at --help

    print_table(rollout_rows(doc), ROLLOUT_COLUMNS)
    for p in doc["plans"]:
        for note in p["notes"]:
            print(f"note: {p['variants']} variants: {note}")
    for note in doc["notes"]:
        print(f"note: {note}")
    print(f"rollout: {Path(args.out) / 'rollout.json'}  ({rollout.seconds:.0f} s)")
    if args.json:
        write_json(args.json, doc)
        print(f"json: {args.json}")
    return 0


def register_rollout(sub) -> None:
    p = sub.add_parser("rollout", help="K' model variants, one per cohort of clusters, "
                                       "against one model for the fleet")
    add_study_flags(p, query=True, also=("method", "model_weights"))
    add_fields(p, RolloutOptions)
    p.add_argument("--json", default=None, metavar="OUT", help="also write the plans as JSON")
    p.add_argument("--out", required=True, metavar="DIR",
                   help="folder for the bundles, device CSVs and rollout.json")
    p.set_defaults(func=_cmd_rollout)
