"""Fleet commands: `hdap validate`, `hdap cluster`, `hdap simulate`, `hdap probe`."""

from __future__ import annotations

import argparse
from pathlib import Path

from hdap_engine.cli.flags import add_fields
from hdap_engine.errors import HdapError
from hdap_engine.options import ClusteringPlan, ProbeOptions, SimulationOptions, StudyOptions


def register_validate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "validate",
        help="check a fleet telemetry file (CSV, CSV.gz, Parquet) and summarise it",
        description="Check a fleet telemetry file against the telemetry contract.",
    )
    p.add_argument("file", help="telemetry: CSV, CSV.gz or Parquet, one row per device")
    add_fields(p, StudyOptions, "sku")
    p.set_defaults(func=_cmd_validate)


def _cmd_validate(args: argparse.Namespace) -> int:
    from hdap_engine.fleet.telemetry import load_fleet

    print(load_fleet(args.file, sku=args.sku).summary())
    return 0


def register_cluster(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser(
        "cluster",
        help="cluster a fleet's devices and print the cluster profiles",
        description="Cluster devices by their probe latencies (k chosen automatically unless --k).",
    )
    p.add_argument("file", help="telemetry: CSV, CSV.gz or Parquet, one row per device")
    add_fields(p, ClusteringPlan, "k")
    add_fields(p, StudyOptions, "sku")
    add_fields(p, ClusteringPlan, "representatives", "context_features")
    add_fields(p, StudyOptions, "seed")
    p.add_argument("--out", metavar="assignments.csv", help="write device_id,cluster to this CSV")
    p.set_defaults(func=_cmd_cluster)


def _cmd_cluster(args: argparse.Namespace) -> int:
    from hdap_engine.fleet.assignments import write_assignments
    from hdap_engine.fleet.clustering import Clustering
    from hdap_engine.fleet.profiles import profile_table
    from hdap_engine.fleet.telemetry import load_fleet

    if args.out:
        # Fail before the work, not after it.
        folder = Path(args.out).resolve().parent
        if not folder.is_dir():
            raise HdapError(f"{args.out}: folder {folder} does not exist; create it or choose another --out")
    fleet = load_fleet(args.file, sku=args.sku)
    options = ClusteringPlan(k=args.k, representatives=args.representatives,
                             context_features=args.context_features, seed=args.seed)
    clustering = Clustering(options).fit(fleet)
    # Written before printing, so that a closed pipe (| head) cannot lose it.
    path = write_assignments(clustering, args.out) if args.out else None
    sku = f", SKU {fleet.sku}" if fleet.sku is not None else ""
    print(f"{fleet.source}: {fleet.n_devices:,} devices, {len(fleet.probe_columns)} probe columns{sku}")
    print(clustering.describe())
    for note in (*fleet.notes, *clustering.notes_):
        print(f"note: {note}")
    print()
    print(profile_table(clustering.profiles_))
    if path is not None:
        print(f"\nwrote {path} ({fleet.n_devices:,} rows: device_id,cluster)")
    return 0


def register_simulate(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("simulate", help="simulate a drifted fleet with the device twin",
                       description="Write PREFIX.csv (telemetry) and PREFIX.twin.parquet "
                                   "(each device's latent state and drift mechanism). With "
                                   "--later-of, the same fleet probed again after a share of "
                                   "its nominal devices took on a drift mechanism (a snapshot "
                                   "for `hdap drift`).")
    add_fields(p, SimulationOptions, "sku", "devices", "seed")
    p.add_argument("--out", required=True, help="output prefix, e.g. sample_data/jetson_nano_fleet")
    p.add_argument("--later-of", metavar="FLEET.csv",
                   help="a simulated fleet (with its twin sidecar) to probe again later; "
                        "--sku and --devices then come from it")
    add_fields(p, SimulationOptions, "changed", "mechanism")
    p.set_defaults(func=_cmd_simulate)


def _cmd_simulate(args: argparse.Namespace) -> int:
    from hdap_engine.twin.simulate import later_snapshot, simulate_fleet, write_fleet

    if args.later_of:
        from hdap_engine.twin.states import load_twin_states

        old = load_twin_states(args.later_of).to_frame()
        telemetry, states, changed = later_snapshot(old, args.changed, args.mechanism,
                                                    seed=args.seed)
        csv_path, twin_path = write_fleet(args.out, telemetry, states)
        print(f"wrote {csv_path}: {args.later_of} probed again, {len(changed):,} of "
              f"{len(telemetry):,} devices now {args.mechanism} (seed {args.seed})")
        print(f"wrote {twin_path} (latent state per device; the changed ones are the truth)")
        return 0
    telemetry, states = simulate_fleet(args.sku, args.devices, seed=args.seed)
    csv_path, twin_path = write_fleet(args.out, telemetry, states)
    counts = states["mechanism"].value_counts()
    print(f"wrote {csv_path} ({len(telemetry)} devices, sku {args.sku}, seed {args.seed})")
    print(f"wrote {twin_path} (latent state per device)")
    for name, c in counts.items():
        print(f"  {name:20s} {c:6d}  ({c / len(states):.0%})")
    return 0


def register_probe(sub: argparse._SubParsersAction) -> None:
    p = sub.add_parser("probe", help="run the standard probe suite on this machine",
                       description="Time the standard probes with PyTorch here and write one "
                                   "telemetry row (sku 'host').")
    p.add_argument("--out", help="CSV file to write (default: print only)")
    p.add_argument("--append", action="store_true", help="append to --out instead of replacing it")
    p.add_argument("--device-id", help="device id (default: this machine's hostname)")
    add_fields(p, ProbeOptions)
    p.set_defaults(func=_cmd_probe)


def _cmd_probe(args: argparse.Namespace) -> int:
    from hdap_engine.fleet.probes import host_probe_row, write_probe_row

    if args.repeats < 1 or args.warmup < 0:
        raise HdapError("--repeats must be at least 1 and --warmup at least 0")
    if args.threads is not None and args.threads < 1:
        raise HdapError("--threads must be at least 1")
    row = host_probe_row(device_id=args.device_id, repeats=args.repeats, warmup=args.warmup,
                         threads=args.threads)
    if args.out:
        write_probe_row(row, args.out, append=args.append)
    for k, v in row.items():
        print(f"{k:24s} {v:.4g}" if isinstance(v, float) else f"{k:24s} {v}")
    if args.out:
        print(f"wrote {args.out}")
    return 0
