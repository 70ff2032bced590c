"""Command-line actions of the agent: ``serve``, ``probe-fleet``, ``measure``.

They hang under ``hdap agent ...`` and, for edge devices that should not load
the whole CLI (and its pandas-heavy commands), under
``python -m hdap_engine.agent ...``. Bodies are thin: parse, call, print.
Imports of the heavier pieces happen inside the actions; this module keeps to
the standard library and Python 3.8 syntax.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from hdap_engine.agent import protocol
from hdap_engine.errors import HdapError


class AgentArgumentParser(argparse.ArgumentParser):
    """argparse that reports a bad flag as an `HdapError` (one ``error:`` line, exit 2)."""

    def error(self, message: str):  # noqa: D102 - argparse API
        raise HdapError(f"{message} (see `{self.prog} --help`)")


def add_agent_parser(sub) -> None:
    """Add ``agent`` with its actions to a subparsers object (the ``hdap`` CLI's)."""
    parser = sub.add_parser(
        "agent",
        help="device agent: serve on an edge device, probe a fleet of agents, measure a model",
        description="The HDAP device agent: a small HTTP server on an edge device that times "
        "uploaded models and runs the probe suite (see docs/agent.md).",
    )
    add_agent_actions(parser)


def add_agent_actions(parser: argparse.ArgumentParser) -> None:
    """Add the ``serve``, ``probe-fleet`` and ``measure`` actions to `parser`."""
    actions = parser.add_subparsers(
        dest="agent_action", metavar="ACTION", parser_class=type(parser)
    )
    actions.required = True

    serve = actions.add_parser(
        "serve", help="run the agent on this device until SIGTERM / Ctrl-C",
        description="Run the agent. Every endpoint but /health needs the token; keep the agent "
        "on loopback or a trusted LAN/VPN.",
    )
    serve.add_argument("--host", default=protocol.DEFAULT_HOST,
                       help="bind address (default %(default)s; 0.0.0.0 for every interface)")
    serve.add_argument("--port", type=int, default=protocol.DEFAULT_PORT,
                       help="port (default %(default)s; 0 picks a free one)")
    serve.add_argument("--token", default=None,
                       help=f"shared secret, at least {protocol.MIN_TOKEN_CHARS} characters "
                       f"(default: env {protocol.TOKEN_ENV}, which keeps it out of `ps`)")
    serve.add_argument("--device-id", default=None, help="name in replies (default: hostname)")
    serve.add_argument("--sku", default=None,
                       help="hardware kind (default: from /proc/device-tree/model, else 'host')")
    serve.add_argument("--max-body-mb", type=float, default=protocol.DEFAULT_MAX_BODY_MB,
                       help="largest accepted model upload in MB (default %(default)g)")
    serve.add_argument("--threads", type=int, default=None,
                       help="intra-op threads for torch / onnxruntime (default: theirs)")
    serve.add_argument("--accelerator", choices=("auto", "cpu", "cuda"), default="auto",
                       help="where models run (default auto: CUDA when torch sees a GPU)")
    serve.add_argument("--probe-ttl", type=float, default=300.0,
                       help="seconds a probe row is served from cache (default %(default)g)")
    serve.add_argument("--probe-repeats", type=int, default=None,
                       help="repeats per probe kernel (default: the probe suite's)")
    serve.add_argument("--probe-warmup", type=int, default=None,
                       help="warm-up runs per probe kernel (default: the probe suite's)")
    serve.add_argument("--insecure-short-token", action="store_true",
                       help=f"accept a token under {protocol.MIN_TOKEN_CHARS} characters")
    serve.add_argument("--log-level", default="INFO", choices=("DEBUG", "INFO", "WARNING"),
                       help="log level of the one-line-per-request log on stderr")
    serve.set_defaults(func=cmd_serve)

    fleet = actions.add_parser(
        "probe-fleet", help="collect /probe from many agents into a telemetry CSV",
        description="Probe every agent listed in --urls and write one telemetry row per device "
        "(device_id, sku, agent_url, probe_*_ms). Failed agents are listed and left out.",
    )
    fleet.add_argument("--urls", required=True,
                       help="file with one agent URL per line, or a CSV with agent_url "
                       "and optional device_id")
    fleet.add_argument("--out", required=True, help="telemetry CSV to write (.csv or .csv.gz)")
    _client_flags(fleet, timeout=120.0)
    fleet.add_argument("--workers", type=int, default=8, help="agents probed at once")
    fleet.set_defaults(func=cmd_probe_fleet)

    measure = actions.add_parser(
        "measure", help="time one exported model on one agent and print the reply as JSON",
    )
    measure.add_argument("--url", required=True, help="agent URL, e.g. http://10.0.0.17:8765")
    measure.add_argument("--model", required=True, help="ONNX file or TorchScript archive")
    measure.add_argument("--format", choices=protocol.FORMATS, default=None,
                         help="model format (default: from the suffix, .onnx or .pt/.ts)")
    measure.add_argument("--shape", required=True, help="input shape, e.g. 1,3,224,224")
    measure.add_argument("--warmup", type=int, default=protocol.DEFAULT_WARMUP)
    measure.add_argument("--repeats", type=int, default=protocol.DEFAULT_REPEATS)
    _client_flags(measure, timeout=30.0)
    measure.set_defaults(func=cmd_measure)


def _client_flags(parser: argparse.ArgumentParser, timeout: float) -> None:
    parser.add_argument("--token", default=None,
                        help=f"the agents' token (default: env {protocol.TOKEN_ENV})")
    parser.add_argument("--timeout", type=float, default=timeout,
                        help="seconds to wait for an agent (default %(default)g)")
    parser.add_argument("--retries", type=int, default=2,
                        help="retries on connection errors, 5xx and busy (default %(default)s)")


def _token(args: argparse.Namespace) -> str | None:
    return args.token or os.environ.get(protocol.TOKEN_ENV) or None


def cmd_serve(args: argparse.Namespace) -> int:
    from hdap_engine.agent.config import AgentConfig
    from hdap_engine.agent.server import serve

    config = AgentConfig(
        token=_token(args) or "",
        host=args.host,
        port=args.port,
        device_id=args.device_id,
        sku=args.sku,
        max_body_mb=args.max_body_mb,
        threads=args.threads,
        accelerator=args.accelerator,
        probe_ttl_s=args.probe_ttl,
        probe_repeats=args.probe_repeats,
        probe_warmup=args.probe_warmup,
        allow_short_token=args.insecure_short_token,
    )
    config.validate()
    logger = logging.getLogger("hdap_engine.agent")
    if not logger.handlers:
        handler = logging.StreamHandler(sys.stderr)
        handler.setFormatter(logging.Formatter("%(asctime)s %(levelname)s %(message)s"))
        logger.addHandler(handler)
    logger.setLevel(args.log_level)
    return serve(config)


def cmd_probe_fleet(args: argparse.Namespace) -> int:
    from hdap_engine.agent.probe_fleet import probe_fleet, read_agent_urls, write_telemetry

    targets = read_agent_urls(args.urls)
    if not _token(args):
        raise HdapError(f"no token for the agents: pass --token or set {protocol.TOKEN_ENV}")
    result = probe_fleet(
        targets, _token(args), timeout=args.timeout, retries=args.retries, workers=args.workers
    )
    for url, message in result.failures:
        print(f"failed: {url}: {message}", file=sys.stderr)
    if not result.rows:
        first = result.failures[0][1] if result.failures else "no reply"
        raise HdapError(f"all {len(targets)} agents failed; first: {first}")
    path = write_telemetry(result, args.out)
    print(
        f"probed {len(result.rows)} of {len(targets)} agents "
        f"({len(result.probe_columns)} probes) -> {path}"
    )
    return 0


def cmd_measure(args: argparse.Namespace) -> int:
    from dataclasses import asdict

    from hdap_engine.agent.client import AgentClient

    fmt = args.format or _format_from_suffix(args.model)
    client = AgentClient(args.url, _token(args), timeout=args.timeout, retries=args.retries)
    result = client.measure(args.model, fmt, args.shape, warmup=args.warmup, repeats=args.repeats)
    print(json.dumps(asdict(result), indent=2))
    return 0


def _format_from_suffix(path: str) -> str:
    name = path.lower()
    if name.endswith(".onnx"):
        return "onnx"
    if name.endswith((".pt", ".ts", ".pth", ".torchscript", ".jit")):
        return "torchscript"
    raise HdapError(f"cannot tell the format of {path} from its suffix; pass --format")


def main(argv: list[str] | None = None) -> int:
    """``python -m hdap_engine.agent``: the agent actions without the rest of the CLI."""
    parser = AgentArgumentParser(
        prog="python -m hdap_engine.agent",
        description="The HDAP device agent (same as `hdap agent`, without the rest of the CLI).",
    )
    try:
        add_agent_actions(parser)
        args = parser.parse_args(argv)
        return int(args.func(args) or 0)
    except HdapError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        return 130
