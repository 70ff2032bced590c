"""Other commands: `hdap models`, `hdap app`, `hdap bench-macs`, `hdap agent`."""

from __future__ import annotations

import argparse
import sys

from hdap_engine.cli.common import print_table
from hdap_engine.cli.flags import add_fields, resolve_model_arg
from hdap_engine.errors import HdapError
from hdap_engine.options import AppOptions, MacsBenchOptions, ModelCheckOptions

# -- hdap models ------------------------------------------------------------------------

def _cmd_models(args: argparse.Namespace) -> int:
    if args.check:
        from hdap_engine.models.check import check_model

        result = check_model(args.check, input_shape=args.input_shape,
                             timeout_s=args.timeout_s)
        print(result.line)
        return 0 if result.ok else 1
    from hdap_engine.models.library import catalogue
    from hdap_engine.models.zoo import get_spec, model_names
    from hdap_engine.pruning.budget import format_macs
    from hdap_engine.pruning.space import PruningSpace

    rows = []
    for name in model_names():
        spec = get_spec(name)
        space = PruningSpace.for_model(name)
        rows.append({
            "model": name,
            "input": "x".join(str(d) for d in spec.input_shape),
            "MACs": format_macs(space.base_macs),
            "params": f"{space.base_params / 1e6:.2f} M",
            "groups": space.n_groups,
            "description": spec.description,
        })
    print_table(rows, ["model", "input", "MACs", "params", "groups", "description"])
    tv, tm = len(catalogue("torchvision")), len(catalogue("timm"))
    det = len(catalogue("torchvision-detection"))
    print(f"""
Any other classifier is named by where it comes from (--model NAME):
  torchvision:NAME      {tv} torchvision classifiers, e.g. torchvision:efficientnet_b0
                        (torchvision.models.list_models(module=torchvision.models))
                        and {det} torchvision detectors, e.g.
                        torchvision:ssdlite320_mobilenet_v3_large (docs/detection.md)
  timm:NAME             {tm} timm models, e.g. timm:mobilenetv3_large_100 (timm.list_models())
  PATH.py:FUNCTION      your own builder returning an nn.Module (optionally taking
                        num_classes), with --input-shape C,H,W unless the model says it
Random initialisation unless --model-weights FILE (a state dict) or 'pretrained' (only
from the local torchvision / Hugging Face cache: nothing is downloaded).
`hdap models --check NAME` says in one line whether NAME can be pruned, and if not why.""")
    return 0


def register_models(sub) -> None:
    p = sub.add_parser("models", help="list the models that can be pruned, and how to name "
                                      "any other; --check NAME tries one")
    add_fields(p, ModelCheckOptions)
    p.set_defaults(func=_cmd_models)


# -- hdap app --------------------------------------------------------------------------

def _cmd_app(args: argparse.Namespace) -> int:
    import os
    import subprocess
    from pathlib import Path

    root = Path(__file__).resolve().parents[2]
    home = root / "app" / "Home.py"
    if not home.is_file():
        raise HdapError(f"the app is not installed next to the engine ({home} is missing)")
    cmd = [sys.executable, "-m", "streamlit", "run", str(home),
           "--server.headless", "true", "--server.port", str(args.port),
           "--server.address", args.address, "--browser.gatherUsageStats", "false"]
    print(f"HDAP Studio on http://{args.address}:{args.port}", flush=True)
    # Run from the project root so that .streamlit/config.toml (upload limit) applies.
    return subprocess.call(cmd, cwd=root, env={**os.environ, "PYTHONPATH": str(root)})


def register_app(sub) -> None:
    p = sub.add_parser("app", help="start the web app (headless Streamlit server)")
    add_fields(p, AppOptions)
    p.set_defaults(func=_cmd_app)


# -- hdap bench-macs --------------------------------------------------------------------

def _cmd_bench_macs(args: argparse.Namespace) -> int:
    from hdap_engine.pruning.timing import time_analytic_macs

    resolve_model_arg(args)
    t = time_analytic_macs(args.model, args.candidates, args.repeats)
    print(f"analytic MACs, {t.model} ({t.n_groups} groups, {t.n_layers} "
          f"layers): {t.candidates_per_s:,.0f} candidates/s "
          f"(median of {t.repeats} runs of {t.candidates:,} candidates, {t.median_s * 1e3:.1f} ms)")
    return 0


def register_bench_macs(sub) -> None:
    p = sub.add_parser("bench-macs", help="benchmark the analytic MACs formula")
    add_fields(p, MacsBenchOptions)
    p.set_defaults(func=_cmd_bench_macs)


def register_agent(sub: argparse._SubParsersAction) -> None:
    # The agent's flags live in its package so that a device can run
    # `python -m hdap_engine.agent` without this module's other commands.
    from hdap_engine.agent.commands import add_agent_parser

    add_agent_parser(sub)


def register_training(sub: argparse._SubParsersAction) -> None:
    # `hdap train` and `hdap finetune` keep their flags in their package, which
    # `python -m hdap_engine.finetune` (torchrun's entry point) parses too.
    from hdap_engine.finetune.commands import add_parsers

    add_parsers(sub)
