"""`AgentClient`: typed results, retries with backoff, typed errors that name the agent."""

from __future__ import annotations

import socket
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from hdap_engine.agent.client import (
    AgentBusy,
    AgentClient,
    AgentError,
    AgentMeasurement,
    AgentRejected,
    AgentUnavailable,
)
from hdap_engine.errors import HdapError
from tests.helpers.agents import (
    SHAPE,
    TOKEN,
    BlockingProbe,
    fake_probes,
    free_port,
    onnx_bytes,
    start_agent,
    torchscript_bytes,
)


class ScriptedAgent:
    """A fake agent answering from a script: (status, body) pairs, "drop" or "hang"."""

    def __init__(self, script):
        self.script = list(script)
        self.hits = 0
        outer = self

        class Handler(BaseHTTPRequestHandler):
            def _answer(self):
                outer.hits += 1
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                step = outer.script.pop(0) if outer.script else (500, b'{"error": "done"}')
                if step == "drop":
                    self.close_connection = True
                    self.connection.shutdown(socket.SHUT_RDWR)
                    return
                if step == "hang":
                    time.sleep(1.0)
                    return
                status, body = step
                self.send_response(status)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = _answer

            def log_message(self, *args):
                pass

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.httpd.daemon_threads = True
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, kwargs={"poll_interval": 0.05},
                         daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def scripted():
    fakes = []

    def make(*script):
        fake = ScriptedAgent(script)
        fakes.append(fake)
        return fake

    yield make
    for fake in fakes:
        fake.close()


@pytest.fixture(scope="module")
def agent():
    server = start_agent(max_body_mb=0.25)
    yield server
    server.stop()


OK_HEALTH = (200, b'{"status": "ok", "device_id": "d", "sku": "host"}')


# -- against a real agent ------------------------------------------------------------------


@pytest.mark.parametrize("fmt, model", [("torchscript", torchscript_bytes), ("onnx", onnx_bytes)])
def test_client_measures_a_real_model_and_returns_a_typed_result(agent, fmt, model):
    client = AgentClient(agent.url, TOKEN)
    result = client.measure(model(), fmt, SHAPE, warmup=1, repeats=4)
    assert isinstance(result, AgentMeasurement)
    assert result.agent_url == agent.url and result.device_id == "dev-a"
    assert result.format == fmt and result.shape == SHAPE and len(result.latencies_ms) == 4
    assert min(result.latencies_ms) <= result.median_ms <= max(result.latencies_ms)


def test_client_reads_a_model_from_a_path(agent, tmp_path):
    path = tmp_path / "tiny.onnx"
    path.write_bytes(onnx_bytes())
    result = AgentClient(agent.url, TOKEN).measure(path, "onnx", "1,3,16,16", repeats=2)
    assert result.repeats == 2
    with pytest.raises(HdapError, match="cannot read model file"):
        AgentClient(agent.url, TOKEN).measure(tmp_path / "missing.onnx", "onnx", SHAPE)


def test_client_health_and_probe(agent):
    assert AgentClient(agent.url).health()["device_id"] == "dev-a"  # no token needed
    assert AgentClient(agent.url, TOKEN).probe() == {"device_id": "dev-a", "sku": "host",
                                                     **fake_probes()}
    with pytest.raises(HdapError, match="no token"):
        AgentClient(agent.url).probe()


def test_a_wrong_token_is_rejected_at_once_with_the_fix(agent):
    client = AgentClient(agent.url, "not-the-token-at-all", retries=3, backoff=5)
    started = time.perf_counter()
    with pytest.raises(AgentRejected) as info:
        client.probe()
    assert time.perf_counter() - started < 2, "a 401 must not be retried"
    assert info.value.status == 401 and info.value.url == agent.url
    assert agent.url in str(info.value) and "HDAP_AGENT_TOKEN" in str(info.value)


def test_an_oversized_upload_reports_413_not_a_connection_error(agent):
    client = AgentClient(agent.url, TOKEN, retries=0)
    with pytest.raises(AgentRejected) as info:
        client.measure(b"\x08" * (4 << 20), "onnx", SHAPE)  # 4 MiB against a 256 KiB limit
    assert info.value.status == 413 and "--max-body-mb" in str(info.value)


def test_a_refused_upload_is_never_sent(agent, monkeypatch):
    # Expect: 100-continue lets the agent refuse (here 413) before the body travels.
    import http.client

    sent = []
    real_send = http.client.HTTPConnection.send
    monkeypatch.setattr(http.client.HTTPConnection, "send",
                        lambda self, data: sent.append(len(data)) or real_send(self, data))
    with pytest.raises(AgentRejected):
        AgentClient(agent.url, TOKEN, retries=0).measure(b"\x08" * (4 << 20), "onnx", SHAPE)
    assert 0 < sum(sent) < 4096
    sent.clear()
    AgentClient(agent.url, TOKEN).measure(onnx_bytes(), "onnx", SHAPE, repeats=1)
    assert sum(sent) > len(onnx_bytes())


def test_a_server_that_ignores_expect_still_gets_the_body(scripted):
    fake = scripted((200, b'{"device_id": "d", "latencies_ms": [1.0], "median_ms": 1.0}'))
    client = AgentClient(fake.url, TOKEN, retries=0)
    client.expect_wait_s = 0.1
    assert client.measure(onnx_bytes(), "onnx", SHAPE).median_ms == 1.0
    assert fake.hits == 1


def test_a_model_that_fails_is_rejected_with_the_runtime_message(agent):
    with pytest.raises(AgentRejected, match="shape 1,3,32,32") as info:
        AgentClient(agent.url, TOKEN).measure(onnx_bytes(), "onnx", (1, 3, 32, 32))
    assert info.value.status == 400


def test_an_agent_that_went_away_mid_study_is_unavailable():
    agent = start_agent()
    client = AgentClient(agent.url, TOKEN, retries=2, backoff=0.01)
    assert client.measure(onnx_bytes(), "onnx", SHAPE, repeats=2).repeats == 2
    agent.stop()
    with pytest.raises(AgentUnavailable) as info:
        client.measure(onnx_bytes(), "onnx", SHAPE, repeats=2)
    assert not isinstance(info.value, AgentBusy)
    assert agent.url in str(info.value) and "3 attempts" in str(info.value)
    assert isinstance(info.value, HdapError)


def test_a_busy_agent_is_retried_until_it_is_free():
    blocker = BlockingProbe()
    agent = start_agent(probe_fn=blocker, probe_ttl_s=0)
    try:
        holder = threading.Thread(target=AgentClient(agent.url, TOKEN).probe)
        holder.start()
        assert blocker.entered.wait(10)
        threading.Timer(0.3, blocker.release.set).start()
        client = AgentClient(agent.url, TOKEN, retries=10, backoff=0.05)
        result = client.measure(onnx_bytes(), "onnx", SHAPE, repeats=2)
        assert result.repeats == 2
        holder.join(10)
    finally:
        blocker.release.set()
        agent.stop()


def test_an_agent_busy_through_every_retry_raises_agent_busy():
    blocker = BlockingProbe()
    agent = start_agent(probe_fn=blocker, probe_ttl_s=0)
    try:
        holder = threading.Thread(target=AgentClient(agent.url, TOKEN).probe)
        holder.start()
        assert blocker.entered.wait(10)
        with pytest.raises(AgentBusy, match="stayed busy through 3 attempts") as info:
            AgentClient(agent.url, TOKEN, retries=2, backoff=0.01).measure(
                onnx_bytes(), "onnx", SHAPE)
        assert isinstance(info.value, AgentUnavailable) and info.value.status == 409
    finally:
        blocker.release.set()
        agent.stop()


# -- retry policy, against scripted fakes ----------------------------------------------------


def test_5xx_is_retried_with_backoff_then_succeeds(scripted):
    fake = scripted((503, b'{"error": "x"}'), (502, b"bad gateway"), OK_HEALTH)
    started = time.perf_counter()
    assert AgentClient(fake.url, retries=3, backoff=0.1).health()["device_id"] == "d"
    assert fake.hits == 3
    assert time.perf_counter() - started >= 0.1 + 0.2  # waited 0.1 s, then 0.2 s


@pytest.mark.parametrize("status", [400, 403, 404, 413, 501])
def test_4xx_and_501_are_never_retried(scripted, status):
    fake = scripted((status, b'{"error": "no such thing"}'), OK_HEALTH)
    with pytest.raises(AgentRejected, match="no such thing") as info:
        AgentClient(fake.url, TOKEN, retries=3, backoff=0.01).probe()
    assert fake.hits == 1 and info.value.status == status and fake.url in str(info.value)


def test_retries_run_out_into_agent_unavailable_with_the_last_error(scripted):
    fake = scripted(*[(500, b'{"error": "disk on fire"}')] * 3)
    with pytest.raises(AgentUnavailable, match="disk on fire") as info:
        AgentClient(fake.url, TOKEN, retries=2, backoff=0.01).probe()
    assert fake.hits == 3 and info.value.status == 500


def test_a_dropped_connection_is_retried(scripted):
    fake = scripted("drop", OK_HEALTH)
    assert AgentClient(fake.url, retries=1, backoff=0.01).health()["status"] == "ok"
    assert fake.hits == 2
    fake2 = scripted("drop", "drop")
    with pytest.raises(AgentUnavailable, match="connection dropped|Connection"):
        AgentClient(fake2.url, retries=1, backoff=0.01).health()


def test_no_reply_within_the_timeout_is_unavailable(scripted):
    fake = scripted("hang")
    with pytest.raises(AgentUnavailable, match="no reply within 0.2 s"):
        AgentClient(fake.url, timeout=0.2, retries=0).health()


def test_nothing_listening_is_unavailable_naming_the_url():
    url = f"http://127.0.0.1:{free_port()}"
    with pytest.raises(AgentUnavailable, match="connection refused") as info:
        AgentClient(url, TOKEN, retries=1, backoff=0.01).probe()
    assert url in str(info.value) and info.value.status is None


def test_a_server_that_is_not_an_agent_is_a_clear_error(scripted):
    fake = scripted((200, b"<html>router login</html>"))
    with pytest.raises(AgentError, match="is this an HDAP agent"):
        AgentClient(fake.url, TOKEN, retries=0).probe()
    fake2 = scripted((200, b'{"device_id": "d"}'))
    with pytest.raises(AgentError, match="without device_id or probe"):
        AgentClient(fake2.url, TOKEN, retries=0).probe()


@pytest.mark.parametrize(
    "fmt, shape, warmup, repeats, message",
    [
        ("pt", SHAPE, 1, 1, "format"),
        ("onnx", "0,3", 1, 1, "positive"),
        ("onnx", (1.5, 3), 1, 1, "integers"),
        ("onnx", SHAPE, -1, 1, "warmup"),
        ("onnx", SHAPE, 1, 1001, "repeats"),
    ],
)
def test_bad_requests_are_refused_before_uploading(scripted, fmt, shape, warmup, repeats, message):
    fake = scripted(OK_HEALTH)
    with pytest.raises(HdapError, match=message):
        AgentClient(fake.url, TOKEN).measure(onnx_bytes(), fmt, shape, warmup, repeats)
    assert fake.hits == 0


@pytest.mark.parametrize("url", ["10.0.0.1:8765", "ftp://host", "http://", "http://h:99999"])
def test_a_bad_agent_url_is_refused(url):
    with pytest.raises(HdapError, match="agent URL"):
        AgentClient(url, TOKEN)


def test_the_client_keeps_a_path_prefix_and_hides_the_token():
    client = AgentClient("http://10.0.0.1:8765/agents/a/", TOKEN)
    assert client.url == "http://10.0.0.1:8765/agents/a"
    assert TOKEN not in repr(client)
