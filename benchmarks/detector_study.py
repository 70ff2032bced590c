"""Issue 20's must-show: the demo detector in a study, ``hdap`` against ``uniform``, a mAP
floor, fine-tuned; one table.

The shipped demo detector (`sample_data/detector_demo_shapes.pt`) on the synthetic shapes
data it was trained on (`hdap data shapes --images 1000 --size 160 --seed 0`: 800 training
images, a seeded 20 % = 200 held out), at a MACs budget on the Jetson twin fleet, through
the engine's own bench (`hdap_engine.study.compare.run_bench`, what ``hdap bench`` runs):
both methods searched / pruned in the study, each row's held-out mAP pruned and after
adaptive BN, the search under ``--min-accuracy`` on calibrated mAP (the accuracy surrogate
fitted on sampled candidates), then every row fine-tuned with the same detector recipe
(`hdap_engine.finetune.detection.DETECTION_RECIPE`: own loss + distillation from the
unpruned detector, AdamW lr 2e-3, cosine, batch 32).

    python -m benchmarks.detector_study --out det_study.json
    python -m benchmarks.detector_study --table det_study.json

With fine-tuning, a floor no candidate keeps before training is searched at the uniform
candidate's calibrated mAP and checked on the fine-tuned detector (the table's last
column). When the engine refuses a floor (``--finetune-epochs 0`` and a floor the budget
cannot meet), ``--fallback-floor uniform`` runs the study again with that floor and the
JSON records both.
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import torch

from benchmarks.detector_demo import DEMO_SIZE

STAGES = ("unpruned", "pruned", "calibrated", "finetuned")


def run(args) -> dict:
    from hdap_engine.data.shapes import write_shapes
    from hdap_engine.errors import HdapError
    from hdap_engine.options import ShapesOptions, StudyOptions
    from hdap_engine.study.compare import run_bench

    data = Path(args.data_dir)
    if not (data / "annotations.json").exists():
        write_shapes(data, ShapesOptions(images=args.images, size=DEMO_SIZE, seed=args.seed))

    def bench(floor: str) -> dict:
        options = StudyOptions.of(
            model="detector_demo", model_weights=args.weights, budget=args.macs,
            data=str(data), min_accuracy=floor, accuracy_metric=args.metric,
            finetune_epochs=args.finetune_epochs, accuracy_samples=args.accuracy_samples,
            calibration_images=args.calibration_images, calibration_eval=args.calibration_eval,
            seed=args.seed)
        t0 = time.perf_counter()
        out = run_bench(options, args.telemetry, methods=["hdap", "uniform"])
        out["floor_text"] = floor
        out["seconds"] = round(time.perf_counter() - t0, 1)
        return out

    result: dict = {"settings": vars(args).copy(), "runs": []}
    try:
        result["runs"].append(bench(args.min_accuracy))
    except HdapError as exc:
        print(f"--min-accuracy {args.min_accuracy}: {exc}", flush=True)
        result["refused"] = {"floor": args.min_accuracy, "message": str(exc)}
        if args.fallback_floor:
            result["runs"].append(bench(args.fallback_floor))
    return result


def _pct(v) -> str:
    return "-" if v is None else f"{v:.3f}"


def _met(floor: dict | None) -> str:
    """Whether the fine-tuned detector meets the floor, held out (`floor.finetuned_check`)."""
    if not floor or floor.get("finetuned_met") is None:
        return "-"
    word = "yes" if floor["finetuned_met"] else "NO"
    return f"{word} (>= {floor['finetuned_threshold']:.3f})"


def table(result: dict) -> str:
    """Markdown: per run and method, MACs, fleet mean, p95, measurements, mAPs by stage."""
    lines = []
    if result.get("refused"):
        lines.append(f"`--min-accuracy {result['refused']['floor']}`: "
                     f"{result['refused']['message']}\n")
    head = ("| floor | method | MACs | fleet mean ms | p95 ms | device measurements | "
            "floor (calibrated, calib. split) | mAP@.5 calibrated | mAP@.5 fine-tuned | "
            "mAP@[.5:.95] calibrated | mAP@[.5:.95] fine-tuned | floor met (fine-tuned) |")
    lines += [head, "|" + "---|" * (head.count("|") - 1)]
    for run in result["runs"]:
        unpruned = None
        for r in run["rows"]:
            acc = r["accuracy"]
            m = acc["metrics"]
            unpruned = unpruned or m
            s = r.get("search_accuracy") or {}
            floor = ("-" if s.get("threshold") is None else
                     f"{s['threshold']:.3f} (chosen {s.get('chosen_calibrated', 0):.3f})")
            lines.append(
                f"| {run['floor_text']} | `{r['method']}` | {r['macs'] / 1e6:.2f} M | "
                f"{r['fleet_mean_ms']:.2f} | {r['p95_ms']:.2f} | "
                f"{r['device_measurements']:,} | {floor} | "
                f"{_pct(m['map_50']['calibrated'])} | {_pct(m['map_50']['finetuned'])} | "
                f"{_pct(m['map']['calibrated'])} | {_pct(m['map']['finetuned'])} | "
                f"{_met(acc.get('floor'))} |")
        if unpruned:
            lines.append(f"| | unpruned | | {run['unpruned_mean_ms']:.2f} | | | | "
                         f"{_pct(unpruned['map_50']['unpruned'])} | | "
                         f"{_pct(unpruned['map']['unpruned'])} | | |")
    return "\n".join(lines)


def main(argv=None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--weights", default="sample_data/detector_demo_shapes.pt")
    p.add_argument("--data-dir", default="/tmp/hdap_shapes_demo")
    p.add_argument("--images", type=int, default=1000)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--macs", default="50%")
    p.add_argument("--telemetry", default="sample_data/jetson_nano_fleet.csv")
    p.add_argument("--min-accuracy", default="95%")
    p.add_argument("--fallback-floor", default="uniform")
    p.add_argument("--metric", default="map_50", choices=("map_50", "map"))
    p.add_argument("--finetune-epochs", type=int, default=12)
    p.add_argument("--accuracy-samples", type=int, default=24)
    p.add_argument("--calibration-images", type=int, default=256)
    p.add_argument("--calibration-eval", type=int, default=512)
    p.add_argument("--threads", type=int, default=1)
    p.add_argument("--out", default="det_study.json")
    p.add_argument("--table", default=None, help="print the table of a saved JSON and stop")
    args = p.parse_args(argv)
    if args.table:
        print(table(json.loads(Path(args.table).read_text())))
        return
    torch.set_num_threads(args.threads)
    t0 = time.perf_counter()
    result = run(args)
    result["seconds"] = round(time.perf_counter() - t0, 1)
    from hdap_engine.infra.jsonable import jsonable

    Path(args.out).write_text(json.dumps(jsonable(result), indent=1) + "\n")
    print(table(result))
    print(f"{result['seconds']:.0f} s; json: {args.out}")


if __name__ == "__main__":
    main()
