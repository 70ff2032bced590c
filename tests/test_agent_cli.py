"""`hdap agent serve | probe-fleet | measure` and `python -m hdap_engine.agent`."""

from __future__ import annotations

import csv
import gzip
import json
import os
import re
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from hdap_engine.agent.client import AgentClient
from hdap_engine.cli import main
from tests.helpers.agents import SHAPE, TOKEN, free_port, onnx_bytes, start_agent, torchscript_bytes
from tests.helpers.paths import ROOT

LISTENING = re.compile(r"listening on (\S+):(\d+)")


@pytest.fixture
def no_token_env(monkeypatch):
    monkeypatch.delenv("HDAP_AGENT_TOKEN", raising=False)


def _start_serve(args: list[str], env_token: str | None = TOKEN):
    env = {k: v for k, v in os.environ.items() if k != "HDAP_AGENT_TOKEN"}
    if env_token:
        env["HDAP_AGENT_TOKEN"] = env_token
    env["PYTHONPATH"] = str(ROOT)
    proc = subprocess.Popen(
        [sys.executable, *args], cwd=ROOT, env=env, stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True,
    )
    line = proc.stdout.readline()
    match = LISTENING.search(line)
    if not match:
        proc.kill()
        raise AssertionError(f"agent did not start: {line!r} {proc.stderr.read()!r}")
    return proc, int(match.group(2))


# -- serve -----------------------------------------------------------------------------------


def test_serve_refuses_to_start_without_a_token(no_token_env, capsys):
    assert main(["agent", "serve", "--port", "0"]) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: no token") and "HDAP_AGENT_TOKEN" in err


def test_serve_refuses_a_short_token(no_token_env, capsys):
    assert main(["agent", "serve", "--port", "0", "--token", "abc"]) == 2
    assert "--insecure-short-token" in capsys.readouterr().err


def test_bad_flags_are_one_error_line(capsys):
    assert main(["agent", "serve", "--port", "many"]) == 2
    assert capsys.readouterr().err.startswith("error: argument --port")
    assert main(["agent"]) == 2


@pytest.mark.slow
def test_device_entry_point_serves_measures_and_stops_on_sigterm(tmp_path):
    # What runs on a Jetson: `python -m hdap_engine.agent serve`, token from the environment.
    proc, port = _start_serve(["-m", "hdap_engine.agent", "serve", "--port", "0",
                               "--device-id", "jetson-07", "--sku", "jetson-nano",
                               "--accelerator", "cpu", "--threads", "1"])
    try:
        client = AgentClient(f"http://127.0.0.1:{port}", TOKEN)
        assert client.health() == {"status": "ok", "device_id": "jetson-07", "sku": "jetson-nano"}
        result = client.measure(torchscript_bytes(), "torchscript", SHAPE, warmup=1, repeats=3)
        assert result.device_id == "jetson-07" and len(result.latencies_ms) == 3
        proc.send_signal(signal.SIGTERM)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "hdap agent stopped" in out
    assert "POST /measure?format=torchscript" in err and " 200 " in err
    assert TOKEN not in out + err
    assert "warning" not in err  # loopback: no exposure warning


@pytest.mark.slow
def test_hdap_agent_serve_warns_on_a_public_bind_and_stops_on_ctrl_c():
    proc, port = _start_serve(["-m", "hdap_engine", "agent", "serve", "--host", "0.0.0.0",
                               "--port", "0", "--insecure-short-token", "--accelerator", "cpu"],
                              env_token="shorttoken")
    try:
        assert AgentClient(f"http://127.0.0.1:{port}", "shorttoken").measure(
            onnx_bytes(), "onnx", SHAPE, repeats=2).repeats == 2
        proc.send_signal(signal.SIGINT)
        out, err = proc.communicate(timeout=30)
    finally:
        proc.kill()
    assert proc.returncode == 0
    assert "warning: agent listens on 0.0.0.0" in err and "LAN or VPN" in err


# -- probe-fleet --------------------------------------------------------------------------


@pytest.fixture
def fleet():
    agents = [
        start_agent(device_id=f"dev-{i}",
                    probe_fn=lambda i=i, **k: {"probe_conv3x3_ms": 1.0 + i / 3, "probe_memcopy_ms": 0.5})
        for i in range(3)
    ]
    yield agents
    for agent in agents:
        agent.stop()


def _read_csv(path: Path) -> list[dict]:
    with open(path, newline="", encoding="utf-8") as handle:
        return list(csv.DictReader(handle))


def test_probe_fleet_writes_telemetry_and_lists_failures(fleet, tmp_path, capsys, no_token_env):
    dead = f"http://127.0.0.1:{free_port()}"
    urls = tmp_path / "agents.txt"
    urls.write_text("# lab bench\n" + "\n".join([fleet[0].url, dead, fleet[1].url, "",
                                                  fleet[2].url]) + "\n")
    out = tmp_path / "telemetry.csv"
    rc = main(["agent", "probe-fleet", "--urls", str(urls), "--out", str(out), "--token", TOKEN,
               "--retries", "0", "--timeout", "5"])
    captured = capsys.readouterr()
    assert rc == 0
    assert f"failed: {dead}" in captured.err and "unavailable" in captured.err
    assert "probed 3 of 4 agents" in captured.out
    rows = _read_csv(out)
    assert list(rows[0]) == ["device_id", "sku", "agent_url", "probe_conv3x3_ms",
                             "probe_memcopy_ms"]
    assert [r["device_id"] for r in rows] == ["dev-0", "dev-1", "dev-2"]
    assert [r["agent_url"] for r in rows] == [a.url for a in fleet]
    # Floats survive the file exactly (1 + 1/3 is not a short decimal).
    assert [float(r["probe_conv3x3_ms"]) for r in rows] == [1.0 + i / 3 for i in range(3)]
    # The agent_url column lets a later study measure on exactly those devices.
    back = AgentClient(rows[1]["agent_url"], TOKEN).measure(onnx_bytes(), "onnx", SHAPE, repeats=1)
    assert back.device_id == "dev-1"


def test_probe_fleet_reads_a_csv_with_device_ids(fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HDAP_AGENT_TOKEN", TOKEN)
    urls = tmp_path / "agents.csv"
    urls.write_text("agent_url,device_id,site\n"
                    f"{fleet[0].url},cam-north,roof\n{fleet[1].url},,lobby\n")
    out = tmp_path / "t.csv.gz"
    assert main(["agent", "probe-fleet", "--urls", str(urls), "--out", str(out)]) == 0
    rows = list(csv.DictReader(gzip.open(out, "rt", encoding="utf-8")))
    assert [r["device_id"] for r in rows] == ["cam-north", "dev-1"]


def test_probe_fleet_fails_only_when_every_agent_fails(tmp_path, capsys, no_token_env):
    urls = tmp_path / "agents.txt"
    urls.write_text(f"http://127.0.0.1:{free_port()}\nhttp://127.0.0.1:{free_port()}\n")
    out = tmp_path / "telemetry.csv"
    rc = main(["agent", "probe-fleet", "--urls", str(urls), "--out", str(out), "--token", TOKEN,
               "--retries", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "error: all 2 agents failed" in err and err.count("failed: ") == 2
    assert not out.exists()


def test_probe_fleet_with_a_wrong_token_lists_the_401(fleet, tmp_path, capsys):
    urls = tmp_path / "agents.txt"
    urls.write_text(fleet[0].url + "\n")
    rc = main(["agent", "probe-fleet", "--urls", str(urls), "--out", str(tmp_path / "t.csv"),
               "--token", "not-the-right-token"])
    err = capsys.readouterr().err
    assert rc == 2 and "401" in err and "refused the token" in err


def test_probe_fleet_leaves_out_mismatched_suites_and_duplicate_ids(tmp_path, capsys):
    odd = start_agent(device_id="odd", probe_fn=lambda **k: {"probe_other_ms": 1.0})
    twin_a = start_agent(device_id="same")
    twin_b = start_agent(device_id="same")
    plain = start_agent(device_id="plain")
    try:
        urls = tmp_path / "agents.txt"
        urls.write_text("\n".join(a.url for a in (odd, twin_a, twin_b, plain)) + "\n")
        out = tmp_path / "t.csv"
        assert main(["agent", "probe-fleet", "--urls", str(urls), "--out", str(out),
                     "--token", TOKEN]) == 0
        err = capsys.readouterr().err
        assert f"failed: {odd.url}" in err and "different probe suite" in err
        assert f"failed: {twin_b.url}" in err and "already used" in err
        assert [r["device_id"] for r in _read_csv(out)] == ["same", "plain"]
    finally:
        for agent in (odd, twin_a, twin_b, plain):
            agent.stop()


@pytest.mark.parametrize(
    "content, message",
    [
        ("", "lists no agent"),
        ("not a url\n", "line 1"),
        ("http://a:1\nhttp://b:2\nhttp://a:1\n", "line 3"),
        ("url,device_id\nhttp://a:1,x\n", "no 'agent_url' column"),
        ("agent_url,device_id\nhttp://a:1,x\nhttp://b:2,x\n", "more than once"),
        ("agent_url\n", "no agent rows"),
    ],
)
def test_a_bad_agents_file_is_one_clear_error(tmp_path, capsys, content, message):
    urls = tmp_path / "agents.txt"
    urls.write_text(content)
    rc = main(["agent", "probe-fleet", "--urls", str(urls), "--out", str(tmp_path / "t.csv"),
               "--token", TOKEN])
    err = capsys.readouterr().err
    assert rc == 2 and err.startswith("error: ") and message in err and str(urls) in err


def test_probe_fleet_without_a_token_says_how_to_give_one(fleet, tmp_path, capsys, no_token_env):
    urls = tmp_path / "agents.txt"
    urls.write_text(fleet[0].url + "\n")
    assert main(["agent", "probe-fleet", "--urls", str(urls), "--out",
                 str(tmp_path / "t.csv")]) == 2
    assert "HDAP_AGENT_TOKEN" in capsys.readouterr().err


# -- measure ---------------------------------------------------------------------------------


def test_measure_prints_the_reply_as_json(fleet, tmp_path, capsys, monkeypatch):
    monkeypatch.setenv("HDAP_AGENT_TOKEN", TOKEN)
    model = tmp_path / "tiny.pt"
    model.write_bytes(torchscript_bytes())
    assert main(["agent", "measure", "--url", fleet[2].url, "--model", str(model),
                 "--shape", "1,3,16,16", "--repeats", "3"]) == 0
    reply = json.loads(capsys.readouterr().out)
    assert reply["device_id"] == "dev-2" and reply["format"] == "torchscript"
    assert len(reply["latencies_ms"]) == 3


def test_measure_needs_a_known_suffix_or_format(fleet, tmp_path, capsys):
    model = tmp_path / "tiny.bin"
    model.write_bytes(onnx_bytes())
    args = ["agent", "measure", "--url", fleet[0].url, "--model", str(model), "--shape",
            "1,3,16,16", "--token", TOKEN]
    assert main(args) == 2
    assert "pass --format" in capsys.readouterr().err
    assert main([*args, "--format", "onnx"]) == 0
