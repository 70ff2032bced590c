"""Other commands: `hdap models`, `hdap app`, `hdap bench-macs`, `hdap agent`."""

from __future__ import annotations

import argparse
import sys

from hdap_engine.cli.common import print_table
from hdap_engine.cli.flags import add_fields
from hdap_engine.errors import HdapError
from hdap_engine.options import AppOptions, MacsBenchOptions

# -- hdap models ------------------------------------------------------------------------

def _cmd_models(args: argparse.Namespace) -> int:
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
    return 0


def register_models(sub) -> None:
    p = sub.add_parser("models", help="list the models that can be pruned")
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
