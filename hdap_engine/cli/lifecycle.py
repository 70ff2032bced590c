"""After the first model ships: `hdap drift` (snapshots, optionally a deployed bundle).

`hdap rollout` (variants per cohort of clusters) is `hdap_engine.cli.rollout`.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from hdap_engine.cli.common import print_table, write_json
from hdap_engine.cli.flags import add_fields
from hdap_engine.options import ClusteringPlan, ReoptimiseOptions, StudyOptions


def register_drift(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "drift",
        help="compare two telemetry snapshots: devices new, gone and moved between clusters",
        description="Match devices by device_id, assign NEW's devices to OLD's clusters, cluster NEW "
                    "afresh, and report moves, shifted clusters and clusters only in NEW. With "
                    "--bundle, also compare the deployed model with one re-optimised for NEW.",
    )
    p.add_argument("old", help="the snapshot the deployed model was optimised for")
    p.add_argument("new", help="the latest snapshot (same probe suite)")
    add_fields(p, ClusteringPlan, "k")
    add_fields(p, StudyOptions, "sku", "seed")
    p.add_argument("--bundle", metavar="DIR",
                   help="the deployed model's bundle: its fleet objective on NEW against a model "
                        "re-optimised for NEW (same model, budget, objective and backend)")
    add_fields(p, ReoptimiseOptions, "threshold")
    p.add_argument("--json", metavar="OUT", help="write the report as JSON")
    p.add_argument("--html", metavar="OUT", help="write the Sankey of the moves as HTML")
    p.add_argument("--quiet", action="store_true", help="no progress output")
    p.set_defaults(func=_cmd_drift)


def _cmd_drift(args: argparse.Namespace) -> int:
    from hdap_engine.fleet.drift import compare
    from hdap_engine.fleet.telemetry import load_fleet
    from hdap_engine.infra.wording import plural
    from hdap_engine.options import DriftOptions

    if args.bundle and not Path(args.bundle).is_dir():
        from hdap_engine.errors import HdapError

        raise HdapError(f"{args.bundle}: no such bundle folder; give the folder `hdap optimize --out` wrote")
    old = load_fleet(args.old, sku=args.sku)
    new = load_fleet(args.new, sku=args.sku)
    report = compare(old, new, DriftOptions(clustering=ClusteringPlan(k=args.k, seed=args.seed)))
    if args.bundle:
        from hdap_engine.cli.common import Bar
        from hdap_engine.lifecycle.reoptimise import reoptimise_check

        bar = Bar(not args.quiet)
        try:
            report.bundle = reoptimise_check(args.bundle, args.new, threshold=args.threshold,
                                             progress=bar)
        finally:
            bar.close()
    d = report.to_dict()
    print(f"{old.source} -> {new.source}: {d['devices_matched']:,} devices in both, "
          f"{plural(d['devices_new'], 'new device')}, {plural(d['devices_gone'], 'device')} gone, "
          f"{plural(d['devices_moved'], 'device')} moved ({d['share_moved']:.1%} of those in both)")
    print(f"clusters of {old.source}: {report.old_clustering.describe()}")
    if d["moves"]:
        print_table([{"from": m["from"], "to": m["to"], "devices": f"{m['devices']:,}"}
                     for m in d["moves"][:12]], ["from", "to", "devices"])
    rows = [{"cluster": c["cluster"], "share then": f"{c['old_share']:.1%}",
             "share now": f"{c['new_share']:.1%}",
             "probes shifted (median now / then)": ", ".join(
                 f"{p} {c['probes'][p]:+.1%}" for p in c["shifted_probes"]) or "-",
             "shifted": "yes" if c["shifted"] else ""} for c in d["clusters"]]
    print()
    print_table(rows, ["cluster", "share then", "share now", "probes shifted (median now / then)",
                       "shifted"])
    for c in d["clusters_only_in_new"]:
        print(f"only in {new.source}: {c['devices']:,} devices ({c['share']:.1%}), "
              f"{c['distance']:.1f} radii from cluster {c['nearest_old']}")
    if report.bundle:
        b = report.bundle
        print(f"\ndeployed model on {new.source}: {b['deployed_objective_ms']:.2f} ms, re-optimised "
              f"{b['reoptimised_objective_ms']:.2f} ms ({b['objective']}, measured by "
              f"{b['measured_source']}; gap {b['gap']:+.1%}, threshold {b['threshold']:.0%}): "
              f"{'re-optimise' if b['recommend_reoptimise'] else 'keep the deployed model'}")
        known = set(b.get("known_clusters") or ())
        print(f"re-optimising measured {b['device_measurements']:,} (device, candidate) pairs: "
              + ", ".join(f"cluster {c} {n:,}" + (" (known from the first study)"
                                                  if int(c) in known else "")
                          for c, n in (b.get("cluster_measurements") or {}).items()))
    for note in (*old.notes, *new.notes, *d["notes"]):
        print(f"note: {note}")
    if args.json:
        write_json(args.json, d)
        print(f"json: {args.json}")
    if args.html:
        from hdap_engine.report.charts import drift_sankey

        drift_sankey(report.flows, report.old_clustering.k_, old_label=old.source,
                     new_label=new.source).write_html(args.html, include_plotlyjs=True)
        print(f"sankey: {args.html}")
    return 0
