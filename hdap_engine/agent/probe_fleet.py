"""Collect ``/probe`` from many device agents into one telemetry file.

The file of agents is either one URL per line (blank lines and ``#``
comments ignored) or a CSV with an ``agent_url`` column and an optional
``device_id`` column (the name to use in the telemetry, overriding what the
agent reports). The telemetry written has ``device_id``, ``sku``,
``agent_url`` and the ``probe_<name>_ms`` columns, so a later study can
cluster the devices and measure on the representatives through their agents.

An agent that fails (unreachable, wrong token, a different probe suite, a
duplicate device_id) is listed and left out; only a fleet where every agent
fails is an error.
"""

from __future__ import annotations

import csv
import gzip
import io
from collections import Counter
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from urllib.parse import urlsplit

from hdap_engine.agent.client import AgentClient, AgentError
from hdap_engine.errors import HdapError

FIXED_COLUMNS = ("device_id", "sku", "agent_url")


@dataclass(frozen=True)
class AgentTarget:
    """One agent to probe: its URL, the device_id to use (optional) and where it was listed."""

    agent_url: str
    device_id: str | None = None
    line: int = 0


@dataclass(frozen=True)
class FleetProbe:
    """What `probe_fleet` collected: telemetry rows and ``(agent_url, message)`` failures."""

    rows: list[dict] = field(default_factory=list)
    failures: list[tuple[str, str]] = field(default_factory=list)

    @property
    def probe_columns(self) -> list[str]:
        """The ``probe_*_ms`` columns, in the order the first agent reported them."""
        if not self.rows:
            return []
        return [key for key in self.rows[0] if key.startswith("probe_") and key.endswith("_ms")]


def read_agent_urls(path: str | Path) -> list[AgentTarget]:
    """Read the agents file.

    Parameters
    ----------
    path : str or Path
        One URL per line, or a CSV with ``agent_url`` (and optional ``device_id``).

    Returns
    -------
    list of AgentTarget
        In file order; URLs checked (http/https with a host) and unique.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except OSError as exc:
        raise HdapError(f"cannot read agents file {path}: {exc.strerror or exc}") from None
    except UnicodeDecodeError:
        raise HdapError(f"agents file {path} is not UTF-8 text") from None
    lines = text.splitlines()
    first = next((line for line in lines if line.strip() and not line.lstrip().startswith("#")), "")
    if not first:
        raise HdapError(f"agents file {path} lists no agent; put one URL per line")
    header = [name.strip().lower() for name in next(csv.reader([first]))]
    if "agent_url" in header:
        targets = _read_csv(path, text)
    elif "," in first:
        raise HdapError(
            f"agents file {path} looks like a CSV but has no 'agent_url' column "
            f"(header: {first.strip()[:80]}); add it, or list one URL per line"
        )
    else:
        targets = [
            AgentTarget(line.strip(), None, number)
            for number, line in enumerate(lines, start=1)
            if line.strip() and not line.lstrip().startswith("#")
        ]
    seen: dict[str, int] = {}
    for target in targets:
        parts = urlsplit(target.agent_url)
        if parts.scheme not in ("http", "https") or not parts.hostname:
            raise HdapError(
                f"agents file {path}, line {target.line}: {target.agent_url!r} is not an "
                "http(s) URL; use e.g. http://10.0.0.17:8765"
            )
        key = target.agent_url.rstrip("/")
        if key in seen:
            raise HdapError(
                f"agents file {path}, line {target.line}: {target.agent_url} is already on "
                f"line {seen[key]}; list each agent once"
            )
        seen[key] = target.line
    ids = Counter(t.device_id for t in targets if t.device_id)
    dupes = sorted(name for name, count in ids.items() if count > 1)
    if dupes:
        raise HdapError(f"agents file {path}: device_id {dupes[0]!r} is listed more than once")
    return targets


def _read_csv(path: Path, text: str) -> list[AgentTarget]:
    reader = csv.DictReader(
        line for line in io.StringIO(text) if line.strip() and not line.lstrip().startswith("#")
    )
    reader.fieldnames = [name.strip().lower() for name in reader.fieldnames or []]
    targets = []
    for number, row in enumerate(reader, start=2):
        url = (row.get("agent_url") or "").strip()
        if not url:
            raise HdapError(f"agents file {path}, row {number}: agent_url is empty")
        device_id = (row.get("device_id") or "").strip() or None
        targets.append(AgentTarget(url, device_id, number))
    if not targets:
        raise HdapError(f"agents file {path} has a header but no agent rows")
    return targets


def probe_fleet(
    targets: Sequence[AgentTarget],
    token: str | None,
    *,
    timeout: float = 120.0,
    retries: int = 2,
    backoff: float = 1.0,
    workers: int = 8,
    client_factory: Callable[..., AgentClient] = AgentClient,
) -> FleetProbe:
    """Probe every agent (in parallel) and gather the telemetry rows.

    Parameters
    ----------
    targets : sequence of AgentTarget
    token : str
        The agents' token.
    timeout, retries, backoff : float, int, float
        Per-agent client settings (a probe takes seconds on a device).
    workers : int
        Agents probed at once.
    client_factory : callable
        ``client_factory(url, token, timeout=, retries=, backoff=)``; for tests.

    Returns
    -------
    FleetProbe
        Rows in the order of `targets` (each with ``agent_url``), and failures.
    """
    if not targets:
        raise HdapError("no agents to probe")

    def one(target: AgentTarget):
        try:
            client = client_factory(
                target.agent_url, token, timeout=timeout, retries=retries, backoff=backoff
            )
            row = client.probe()
        except AgentError as exc:
            return target, None, str(exc)
        except HdapError as exc:
            return target, None, str(exc)
        return target, row, None

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(targets)))) as pool:
        results = list(pool.map(one, targets))

    failures: list[tuple[str, str]] = []
    collected: list[tuple[AgentTarget, dict]] = []
    for target, row, error in results:
        if error is not None:
            failures.append((target.agent_url, error))
            continue
        reported = str(row.get("device_id", "")).strip()
        device_id = target.device_id or reported
        probes = {k: v for k, v in row.items() if k.startswith("probe_") and k.endswith("_ms")}
        clean = {"device_id": device_id, "sku": row.get("sku", ""), "agent_url": target.agent_url}
        clean.update(probes)
        collected.append((target, clean))

    # Agents must agree on the probe suite, or the telemetry has holes the
    # clustering cannot use; the most common column set is the fleet's.
    suites = Counter(frozenset(_probe_keys(row)) for _, row in collected)
    reference = suites.most_common(1)[0][0] if suites else frozenset()
    rows: list[dict] = []
    owners: dict[str, str] = {}
    for target, row in collected:
        keys = frozenset(_probe_keys(row))
        if keys != reference:
            missing = sorted(reference - keys)
            extra = sorted(keys - reference)
            failures.append((
                target.agent_url,
                f"agent {target.agent_url} reports a different probe suite (missing {missing}, "
                f"extra {extra}); install the same hdap_engine version on every device",
            ))
            continue
        if row["device_id"] in owners:
            failures.append((
                target.agent_url,
                f"agent {target.agent_url} reports device_id {row['device_id']!r}, already used "
                f"by {owners[row['device_id']]}; start it with a unique --device-id or name it "
                "in the agents file",
            ))
            continue
        owners[row["device_id"]] = target.agent_url
        rows.append(row)
    order = {t.agent_url: i for i, t in enumerate(targets)}
    failures.sort(key=lambda item: order.get(item[0], len(order)))
    return FleetProbe(rows=rows, failures=failures)


def _probe_keys(row: dict) -> list[str]:
    return [key for key in row if key.startswith("probe_") and key.endswith("_ms")]


def write_telemetry(result: FleetProbe, path: str | Path) -> Path:
    """Write the rows as a telemetry CSV (gzip when the name ends in ``.gz``).

    Parameters
    ----------
    result : FleetProbe
    path : str or Path

    Returns
    -------
    Path
        The file written.
    """
    if not result.rows:
        raise HdapError("no agent answered; nothing to write")
    path = Path(path)
    columns = [*FIXED_COLUMNS, *result.probe_columns]
    buffer = io.StringIO()
    writer = csv.DictWriter(buffer, fieldnames=columns, lineterminator="\n")
    writer.writeheader()
    for row in result.rows:
        writer.writerow({key: (repr(row[key]) if isinstance(row[key], float) else row[key])
                         for key in columns})
    data = buffer.getvalue().encode("utf-8")
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        if path.name.endswith(".gz"):
            data = gzip.compress(data, mtime=0)
        path.write_bytes(data)
    except OSError as exc:
        raise HdapError(f"cannot write telemetry to {path}: {exc.strerror or exc}") from None
    return path
