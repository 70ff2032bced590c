"""Study commands: `hdap prune`, `hdap surrogate`, `hdap optimize`, `hdap bench`."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from hdap_engine.cli.common import Bar, print_table, write_json
from hdap_engine.cli.flags import (
    add_fields,
    add_option_flags,
    add_study_flags,
    methods_flag,
    resolve_model_arg,
    study_options,
)

# -- hdap prune -------------------------------------------------------------------------

def _cmd_prune(args: argparse.Namespace) -> int:
    from hdap_engine.pruning.baseline import export_result, prune_baseline
    from hdap_engine.pruning.budget import format_macs

    resolve_model_arg(args)
    result = prune_baseline(args.model, args.budget, args.method,
                            model_weights=args.model_weights, round_to=args.round_to,
                            min_ratio=args.min_ratio, seed=args.seed)
    out = export_result(result, args.out)
    macs = result.space.macs(result.widths)
    print(f"{args.model} pruned with {args.method} to {format_macs(macs)} MACs "
          f"(budget {format_macs(result.report['budget_macs'])}, "
          f"{macs / result.space.base_macs:.1%} of the model)")
    print(f"bundle: {out}  (zip: {out}.zip)")
    return 0


def register_prune(sub) -> None:
    from hdap_engine.options import StudyOptions, cli_fields
    from hdap_engine.search.methods import method_names

    p = sub.add_parser("prune", help="prune a model to a MACs budget with a baseline method")
    wanted = ("model", "input_shape", "budget", "model_weights", "round_to", "min_ratio", "seed")
    add_option_flags(p, [f for f in cli_fields("", "query") if f.name in wanted],
                      required=("model", "budget"))
    # A baseline method: the first of the registry's baselines unless named.
    add_fields(p, StudyOptions, "method", choices={"method": method_names(searches=False)})
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    p.set_defaults(func=_cmd_prune)


# -- hdap surrogate ---------------------------------------------------------------------

def _cmd_surrogate(args: argparse.Namespace) -> int:
    import json

    from hdap_engine.infra.wording import plural
    from hdap_engine.study.prepare import prepare

    # per-cluster is the paper's surrogate; its method fits it that way.
    method = "paper" if args.mode == "per-cluster" else "hdap"
    options = study_options(args, method=method)
    bar = Bar(not args.quiet and not args.json)
    try:
        ctx = prepare(options, args.telemetry, progress=bar)
    finally:
        bar.close()
    report = ctx.surrogate.report_
    if args.json:
        from hdap_engine.infra.jsonable import jsonable

        print(json.dumps(jsonable({"model": args.model, "backend": ctx.backend.name,
                          "measured_source": ctx.backend.source, "mode": report["mode"],
                          "k": ctx.k, "devices_measured": len(ctx.rep_devices),
                          "overall": report["overall"], "per_cluster": report["per_cluster"],
                          "notes": list(ctx.notes) + list(ctx.learned.notes)})))
        return 0
    o = report["overall"]
    print(f"surrogate ({report['mode']}) for {args.model} on {ctx.fleet.source}, "
          f"{ctx.backend.source}: {plural(ctx.k, 'cluster')}, "
          f"{plural(len(ctx.rep_devices), 'device')} measured")
    rows = [{"cluster": "all", "MAPE": f"{o['mape']:.2%}", "within 5%": f"{o['within_5pct']:.1%}",
             "within 10%": f"{o['within_10pct']:.1%}", "train": o["n_train"], "test": o["n_test"]}]
    for c in report["per_cluster"]:
        rows.append({"cluster": c["cluster"], "MAPE": f"{c['mape']:.2%}",
                     "within 5%": f"{c['within_5pct']:.1%}",
                     "within 10%": f"{c['within_10pct']:.1%}", "train": c["n_train"],
                     "test": c["n_test"]})
    print_table(rows, ["cluster", "MAPE", "within 5%", "within 10%", "train", "test"])
    for note in dict.fromkeys(list(ctx.notes) + list(ctx.learned.notes)):
        print(f"note: {note}")
    return 0


def register_surrogate(sub) -> None:
    from hdap_engine.options import SurrogatePlan

    p = sub.add_parser("surrogate", help="measure candidates, train the latency surrogate, "
                                         "report its held-out accuracy")
    add_study_flags(p)
    add_fields(p, SurrogatePlan, "mode")
    p.add_argument("--json", action="store_true", help="print one JSON object")
    p.set_defaults(func=_cmd_surrogate)


# -- hdap optimize ----------------------------------------------------------------------

def _cmd_optimize(args: argparse.Namespace) -> int:
    from hdap_engine.pruning.budget import format_macs
    from hdap_engine.study.run import run_study

    options = study_options(args)
    bar = Bar(not args.quiet)
    try:
        result = run_study(options, args.telemetry, out_dir=args.out, progress=bar)
    finally:
        bar.close()
    r = result.report
    f = r["fleet"]
    lb = r.get("latency_budget")
    budget = (f"budget {format_macs(result.target_macs)}" if lb is None else
              f"latency budget {lb['latency_ms']:g} ms {lb['objective']}: "
              f"{format_macs(lb['macs'])} MACs found, measured {lb['measured_ms']:.2f} ms, "
              f"{'met' if lb['met'] else 'NOT met'}")
    print(f"{args.model} pruned with {args.method} to "
          f"{format_macs(result.context.space.macs(result.widths))} MACs "
          f"({budget}); measured by {r['measured_source']}")
    rows = [{"cluster": c["cluster"], "devices": c["devices"], "weight": f"{c['weight']:.3f}",
             "predicted ms": "-" if c["predicted_ms"] is None else f"{c['predicted_ms']:.2f}",
             "measured ms": f"{c['measured_ms']:.2f}",
             "unpruned ms": f"{c['unpruned_ms']:.2f}"} for c in r["clusters"]]
    print_table(rows, ["cluster", "devices", "weight", "predicted ms", "measured ms",
                        "unpruned ms"])
    if result.context.backend.replaces_devices:
        for c in r["clusters"]:
            print(f"cluster {c['cluster']} measured on: "
                  f"{', '.join(c['measured_devices_ms']) or 'no device'}")
    pred = "-" if f["predicted_mean_ms"] is None else f"{f['predicted_mean_ms']:.2f}"
    print(f"fleet: predicted mean {pred} ms, measured mean {f['measured_mean_ms']:.2f} ms, "
          f"p95 {f['measured_p95_ms']:.2f} ms, unpruned {f['unpruned_mean_ms']:.2f} ms, "
          f"speedup {f['speedup']:.2f}x ({f['basis']})")
    if options.accuracy.finetune_epochs:
        r = _finetune_result(result.bundle, options, quiet=args.quiet)
    from hdap_engine.accuracy.report import accuracy_summary

    print(accuracy_summary(r.get("accuracy")))
    if r.get("precision") == "int8":
        from hdap_engine.quantize.bundle import quantization_line

        print(quantization_line(r.get("quantization")))
        side = r.get("fp32_side_by_side")
        if side:
            print(f"int8 fleet mean {side['int8_mean_ms']:.2f} ms, the same widths in fp32 "
                  f"{side['fp32_mean_ms']:.2f} ms ({side['source']})")
    if result.context.accuracy is not None and result.context.accuracy.is_detection:
        from hdap_engine.report.detections import write_study_picture

        acc = options.accuracy
        pic = write_study_picture(result.bundle, options.model, options.model_weights,
                                  acc.data, val_data=acc.val_data, seed=options.seed)
        print(f"detections: {pic} (the unpruned and the pruned detector on one held-out image)")
    for note in r["notes"]:
        print(f"note: {note}")
    print(f"bundle: {result.bundle}  (zip: {result.bundle}.zip)")
    return 0


def _finetune_result(bundle, options, *, quiet: bool) -> dict:
    """Fine-tune a study's bundle in place (`hdap_engine.finetune`); returns its new report."""
    from hdap_engine.finetune.commands import epoch_printer
    from hdap_engine.finetune.run import finetune_bundle
    from hdap_engine.options import DISTILL

    acc = options.accuracy
    recipe = DISTILL.with_changes(epochs=acc.finetune_epochs, seed=options.seed)
    done = finetune_bundle(bundle, acc.data, bundle, options=recipe, val_data=acc.val_data,
                           model_weights=options.model_weights,
                           on_epoch=epoch_printer(not quiet, True))
    ft = done.accuracy["finetune"]
    print(f"fine-tuned {ft['epochs']} epochs by distillation in {ft['seconds']:.0f} s")
    return json.loads((Path(done.bundle) / "report.json").read_text())


def register_optimize(sub) -> None:
    p = sub.add_parser("optimize", help="prune a model for a fleet: cluster, measure, fit, "
                                        "search, prune, verify, export")
    add_study_flags(p, query=True, also=("method", "model_weights"))
    p.add_argument("--out", required=True, metavar="DIR", help="bundle folder to write")
    p.set_defaults(func=_cmd_optimize)


# -- hdap bench -------------------------------------------------------------------------

def _cmd_bench(args: argparse.Namespace) -> int:

    from hdap_engine.accuracy.report import metric_label
    from hdap_engine.accuracy.study import accuracy_columns
    from hdap_engine.infra.wording import plural
    from hdap_engine.study.compare import format_rows, run_bench, run_sweep

    options = study_options(args)
    bar = Bar(not args.quiet)
    if args.clustering_check:
        from hdap_engine.study.compare import clustering_check

        try:
            result = clustering_check(options, args.telemetry, progress=bar)
        finally:
            bar.close()
        rows = [{"candidate": r["candidate"], "MACs": f"{r['macs'] / 1e9:.3f} G",
                 "representatives ms": f"{r['estimate_ms']:.3f}",
                 "all devices ms": f"{r['fleet_mean_ms']:.3f}", "error": f"{r['error']:+.2%}"}
                for r in result["rows"]]
        print_table(rows, ["candidate", "MACs", "representatives ms", "all devices ms", "error"])
        print(f"{result['devices_measured']} devices measured ({result['k']} clusters) instead of "
              f"{result['n_devices']:,}: {result['reduction']:.0f}x fewer; largest error "
              f"{result['max_abs_error']:.2%}, mean {result['mean_abs_error']:.2%}")
        if args.json:
            write_json(args.json, result)
        return 0
    try:
        if args.sweep:
            result = run_sweep(options, args.telemetry, [b.strip() for b in args.sweep.split(",")
                                                         if b.strip()], progress=bar)
        else:
            result = run_bench(options, args.telemetry, methods=args.methods,
                               oracle=args.oracle, progress=bar)
    finally:
        bar.close()
    if args.sweep:
        rows = format_rows(result["points"])
        for r, p in zip(rows, result["points"], strict=True):
            r["budget"] = p["budget"]
        columns = ["budget", "method", "MACs", "fleet mean ms", "p95 ms", "speedup"]
        measured = [p["accuracy"] for p in result["points"]
                    if (p.get("accuracy") or {}).get("dataset")]
        if measured:
            columns += [f"calibrated {metric_label(measured[0])}"]
        print_table(rows, columns)
    else:
        print(f"{args.model} at {args.budget} MACs on {result['fleet']} "
              f"({plural(result['n_devices'], 'device')}, {plural(result['k'], 'cluster')}), "
              f"measured by {result['measured_source']}; "
              f"unpruned fleet mean {result['unpruned_mean_ms']:.2f} ms")
        columns = ["method", "MACs", "fleet mean ms", "p95 ms", "worst cluster ms", "speedup",
                   "search s", "device measurements", "device s"]
        measured = [r["accuracy"] for r in result["rows"]
                    if (r.get("accuracy") or {}).get("dataset")]
        if measured:  # named after the metric: top-1, or a detector's mAP@.5 / mAP@[.5:.95]
            columns += list(accuracy_columns(measured[0]))
        print_table(format_rows(result["rows"]), columns)
        # "validation": the key's name in results saved before it was renamed.
        verification = result.get("verification") or result.get("validation")
        if verification:
            print(f"verification: {verification}")
        for note in result.get("notes", []):
            print(f"note: {note}")
        for r in result["rows"]:
            stop = (r.get("measurement") or {}).get("stop")
            if stop:
                print(f"{r['method']}: {r['device_measurements']:,} device measurements "
                      f"({stop['batches']} sequential batches); stopped: {stop['reason']}")
    if args.json:
        write_json(args.json, result)
        print(f"json: {args.json}")
    return 0


def register_bench(sub) -> None:
    from hdap_engine.search.methods import method_names

    p = sub.add_parser("bench", help="every method on the same fleet and budget, one table")
    add_study_flags(p, query=True, also=("model_weights",))
    p.add_argument("--methods", type=methods_flag, default=None, metavar="M1,M2,...",
                   help=f"methods to compare (default: all of {', '.join(method_names())})")
    p.add_argument("--oracle", action="store_true",
                   help="also search on the twin's ground truth over every device (slow)")
    p.add_argument("--sweep", default=None, metavar="B1,B2,...",
                   help="budget sweep (ours and uniform) for a Pareto curve instead of the table")
    p.add_argument("--clustering-check", action="store_true",
                   help="instead: compare the representatives' estimate of the fleet mean with "
                        "every device's ground truth for random candidates (twin only)")
    p.add_argument("--json", default=None, metavar="OUT", help="also write the result as JSON")
    p.set_defaults(func=_cmd_bench)
