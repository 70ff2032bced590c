"""The `hdap train` and `hdap finetune` commands (and `python -m hdap_engine.finetune`).

The flags live here, beside the code they drive, and are registered into the
main `hdap` parser from `hdap_engine.cli` in one line; `python -m
hdap_engine.finetune ...` (what torchrun starts) parses the same `finetune` flags.
Every recipe flag is built from `hdap_engine.options.FinetuneOptions` (`hdap train`'s
defaults are `SCRATCH`'s). Only rank 0 prints.
"""

from __future__ import annotations

import argparse
import sys

from hdap_engine.cli.flags import add_fields
from hdap_engine.errors import HdapError
from hdap_engine.options import SCRATCH, FinetuneOptions


def _add_recipe_flags(p: argparse.ArgumentParser, base: FinetuneOptions) -> None:
    add_fields(p, FinetuneOptions, "epochs", "batch_size", "lr", "schedule", "seed", base=base)
    flip = p.add_mutually_exclusive_group()
    flip.add_argument("--flip", dest="hflip", action="store_const", const=True, default=None,
                      help="random horizontal flips (default: yes, except for digits)")
    flip.add_argument("--no-flip", dest="hflip", action="store_const", const=False)
    p.add_argument("--resume", action="store_true",
                   help="continue an interrupted run from its last checkpoint")
    p.add_argument("--quiet", action="store_true", help="no per-epoch lines")


def _options(args, base: FinetuneOptions, **extra) -> FinetuneOptions:
    return base.with_changes(epochs=args.epochs, batch_size=args.batch_size, lr=args.lr,
                             schedule=args.schedule, seed=args.seed, hflip=args.hflip, **extra)


def epoch_printer(enabled: bool, world_main: bool):
    """An `on_epoch` callback printing one line per epoch (rank 0 only)."""

    def show(r) -> None:
        if enabled and world_main and hasattr(r, "val_map_50"):  # a detector's epoch
            val = "-" if r.val_map_50 is None else f"{r.val_map_50:.3f}"
            print(f"epoch {r.epoch}/{r.epochs}  loss {r.loss:.4f} (own {r.detector_loss:.4f}, "
                  f"distillation {r.kd_loss:.4f})  held-out mAP@.5 {val}  lr {r.lr:.5f}  "
                  f"{r.seconds:.0f} s", flush=True)
        elif enabled and world_main:
            val = "-" if r.val_top1 is None else f"{r.val_top1:.2%}"
            print(f"epoch {r.epoch}/{r.epochs}  loss {r.loss:.4f}  train top-1 "
                  f"{r.train_top1:.2%}  held-out top-1 {val}  lr {r.lr:.4f}  "
                  f"{r.seconds:.0f} s", flush=True)

    return show


def _cmd_train(args: argparse.Namespace) -> int:
    from hdap_engine.cli.flags import resolve_model_arg
    from hdap_engine.finetune.distributed import setup, teardown
    from hdap_engine.finetune.run import train_model

    resolve_model_arg(args)
    options = _options(args, SCRATCH)
    world = setup()
    try:
        result = train_model(args.model, args.data, args.out, options=options,
                             val_data=args.val_data, resume=args.resume, world=world,
                             on_epoch=epoch_printer(not args.quiet, world.is_main))
        if world.is_main:
            acc, fr = result.record["accuracy"], result.fit
            resumed = f", resumed after epoch {fr.resumed_at}" if fr.resumed_at else ""
            print(f"{args.model} trained for {options.epochs} epochs on {result.record['n_train']} "
                  f"images in {fr.seconds:.0f} s of training{resumed}; held-out top-1 "
                  f"{acc['top1']:.2%} (95% CI {acc['ci95'][0]:.2%}-{acc['ci95'][1]:.2%}) on "
                  f"{result.record['heldout']}")
            print(f"weights: {result.model_weights_path}  "
                  f"(how they were made: {result.model_weights_path}.json)")
    finally:
        teardown(world)
    return 0


def _cmd_finetune(args: argparse.Namespace) -> int:
    from hdap_engine.accuracy.report import METRIC_LABELS, metric_label
    from hdap_engine.finetune.distributed import setup, teardown
    from hdap_engine.finetune.run import finetune_bundle

    options = _options(args, FinetuneOptions(), temperature=args.temperature,
                       kd_weight=args.kd_weight, ce_weight=args.ce_weight)
    world = setup()
    try:
        result = finetune_bundle(args.bundle, args.data, args.out, options=options,
                                 val_data=args.val_data, model_weights=args.model_weights,
                                 resume=args.resume, world=world,
                                 on_epoch=epoch_printer(not args.quiet, world.is_main))
        if world.distributed:
            # One line per rank: that the processes agree is checkable, not assumed.
            from hdap_engine.finetune.trainer import state_digest

            rec = result.fit.history[-1] if result.fit.history else None
            last = getattr(rec, "val_top1", getattr(rec, "val_map_50", None))
            what = "mAP@.5" if hasattr(rec, "val_map_50") else "top-1"
            print(f"rank {world.rank}/{world.size}: weights sha256 "
                  f"{state_digest(result.model)[:16]}, held-out {what} "
                  f"{'-' if last is None else f'{last:.4f}'}", flush=True)
        if world.is_main:
            a = result.accuracy
            ft = a["finetune"]

            def pct(key):
                return "-" if a.get(key) is None else f"{a[key]:.2%}"

            ci = a["ci95"].get("finetuned")
            print(f"held-out {metric_label(a)} on {a['heldout']}: unpruned {pct('unpruned')}, "
                  f"pruned {pct('pruned')}, calibrated {pct('calibrated')}, fine-tuned "
                  f"{pct('finetuned')}" + (f" (95% CI {ci[0]:.2%}-{ci[1]:.2%})" if ci else ""))
            other = {m: v for m, v in (a.get("metrics") or {}).items() if m != a["metric"]}
            for m, values in other.items():
                print(f"held-out {METRIC_LABELS[m]}: " + ", ".join(
                    f"{label} {'-' if values.get(s) is None else f'{values[s]:.2%}'}"
                    for s, label in (("unpruned", "unpruned"), ("pruned", "pruned"),
                                     ("calibrated", "calibrated"),
                                     ("finetuned", "fine-tuned"))))
            print(f"fine-tuned {ft['epochs']} epochs in {ft['seconds']:.0f} s on "
                  f"{ft['processes']} process{'es' if ft['processes'] != 1 else ''}"
                  + (f", distilled from {ft['teacher']}" if ft["teacher"] else ""))
            print(f"bundle: {result.bundle}  (zip: {result.bundle}.zip)")
    finally:
        teardown(world)
    return 0


def add_finetune_arguments(p: argparse.ArgumentParser) -> None:
    """The `finetune` flags (shared by `hdap finetune` and `python -m hdap_engine.finetune`)."""
    p.add_argument("bundle", metavar="BUNDLE", help="export bundle folder or .zip to fine-tune")
    p.add_argument("--data", required=True, metavar="DATA",
                   help="training images: an ImageFolder folder, a .zip of one, or digits "
                        "(a detector's bundle: COCO data, a folder with annotations.json or "
                        "a .zip of one; its recipe defaults are the detector's)")
    p.add_argument("--val-data", default=None, metavar="DATA",
                   help="held-out images for every reported accuracy (default: a seeded "
                        "stratified split of --data)")
    p.add_argument("--model-weights", default=None, metavar="FILE",
                   help="the unpruned model's state dict, the teacher (default: the file the "
                        "bundle's report names)")
    add_fields(p, FinetuneOptions, "temperature", "kd_weight", "ce_weight")
    _add_recipe_flags(p, FinetuneOptions())
    p.add_argument("--out", required=True, metavar="DIR", help="the fine-tuned bundle folder")
    p.set_defaults(func=_cmd_finetune)


def add_parsers(sub) -> None:
    """Register `hdap train` and `hdap finetune` on the main parser's subcommands."""
    from hdap_engine.cli.flags import input_shape_flag

    p = sub.add_parser("train", help="train a model from scratch on labelled images "
                                     "(how the demo weights were made)")
    # Any naming form, resolved when the command runs (so building the parser imports no
    # torch). Not the study's fields: their --data is the search's calibration images.
    p.add_argument("--model", required=True, metavar="MODEL",
                   help="a registered name, torchvision:NAME, timm:NAME or PATH.py:FUNCTION "
                        "(see `hdap models`)")
    p.add_argument("--input-shape", type=input_shape_flag, default=None, metavar="C,H,W",
                   help="the model's input shape (default: what the model says)")
    p.add_argument("--data", required=True, metavar="DATA",
                   help="an ImageFolder folder, a .zip of one, or digits")
    p.add_argument("--val-data", default=None, metavar="DATA",
                   help="held-out images (default: a seeded stratified split of --data)")
    _add_recipe_flags(p, SCRATCH)
    p.add_argument("--out", required=True, metavar="FILE.pt", help="state dict to write")
    p.set_defaults(func=_cmd_train)

    p = sub.add_parser("finetune", help="fine-tune a pruned bundle by distillation from the "
                                        "unpruned model; writes a new bundle")
    add_finetune_arguments(p)


def main(argv: list[str] | None = None) -> int:
    """`python -m hdap_engine.finetune BUNDLE ...` (what torchrun starts in every process)."""
    from hdap_engine.cli.common import Parser

    parser = Parser(prog="python -m hdap_engine.finetune",
                     description="Fine-tune a pruned bundle (one process or under torchrun).")
    add_finetune_arguments(parser)
    try:
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except HdapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted; continue with --resume", file=sys.stderr)
        return 130
