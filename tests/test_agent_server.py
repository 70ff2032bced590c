"""The device agent's server: protocol, security refusals, one-at-a-time, probes, logging."""

from __future__ import annotations

import ast
import io
import json
import logging
import pickle
import socket
import statistics
import subprocess
import sys
import threading
import time
import zipfile
from pathlib import Path

import pytest
import torch

from hdap_engine.agent import measure as measure_mod
from hdap_engine.agent.config import AgentConfig, detect_sku, is_loopback, sku_from_model_string
from hdap_engine.agent.server import AgentServer
from hdap_engine.errors import HdapError
from tests.helpers.agents import (
    SHAPE,
    TOKEN,
    BlockingProbe,
    connect,
    fake_probes,
    onnx_bytes,
    raw_exchange,
    request,
    split_reply,
    start_agent,
    torchscript_bytes,
)
from tests.helpers.paths import ROOT

SHAPE_Q = ",".join(map(str, SHAPE))
MODELS = {"torchscript": torchscript_bytes, "onnx": onnx_bytes}


@pytest.fixture(scope="module")
def agent():
    server = start_agent(max_body_mb=0.25)  # 256 KiB: the tiny models fit, 1 MiB does not
    yield server
    server.stop()


def measure_path(fmt: str, shape: str = SHAPE_Q, warmup: int = 1, repeats: int = 3) -> str:
    return f"/measure?format={fmt}&shape={shape}&warmup={warmup}&repeats={repeats}"


def assert_still_serving(agent: AgentServer) -> None:
    status, reply = request(agent.url, "POST", measure_path("onnx"), onnx_bytes())
    assert status == 200, reply
    assert len(reply["latencies_ms"]) == 3


# -- import weight and portability --------------------------------------------------------


def test_importing_the_server_pulls_in_no_heavy_dependency():
    code = (
        "import sys, json, hdap_engine.agent.server, hdap_engine.agent.commands;"
        "print(json.dumps(sorted(m for m in sys.modules if '.' not in m)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=60)
    loaded = set(json.loads(out.stdout))
    heavy = {"pandas", "sklearn", "xgboost", "streamlit", "umap", "plotly", "pyarrow",
             "torch_pruning", "torchvision", "onnx", "torch", "numpy"}
    assert not loaded & heavy, f"server import pulled in {sorted(loaded & heavy)}"


@pytest.mark.parametrize("module", ["protocol", "measure", "server", "commands", "__main__"])
def test_device_side_modules_parse_as_python_38(module):
    # Jetson and Raspberry Pi images often ship an older Python than the engine's.
    source = (ROOT / "hdap_engine" / "agent" / f"{module}.py").read_text()
    tree = ast.parse(source, feature_version=(3, 8))
    futures = [n for n in tree.body if isinstance(n, ast.ImportFrom) and n.module == "__future__"]
    assert futures or module == "__main__", "annotations must stay unevaluated on 3.8"


# -- the protocol ------------------------------------------------------------------------


def test_health_needs_no_token_and_names_the_device(agent):
    status, reply = request(agent.url, "GET", "/health", token=None)
    assert status == 200
    assert reply == {"status": "ok", "device_id": "dev-a", "sku": "host"}


def test_probe_returns_one_telemetry_row(agent):
    status, reply = request(agent.url, "GET", "/probe")
    assert status == 200
    assert reply == {"device_id": "dev-a", "sku": "host", **fake_probes()}


@pytest.mark.parametrize("fmt", ["torchscript", "onnx"])
def test_measure_times_a_real_exported_model(agent, fmt):
    status, reply = request(agent.url, "POST", measure_path(fmt, repeats=5), MODELS[fmt]())
    assert status == 200, reply
    latencies = reply["latencies_ms"]
    assert len(latencies) == 5 and all(v > 0 for v in latencies)
    assert reply["median_ms"] == statistics.median(latencies)
    assert reply["device_id"] == "dev-a" and reply["sku"] == "host"
    assert reply["format"] == fmt and reply["shape"] == list(SHAPE)
    expected_runtime = "torch " if fmt == "torchscript" else "onnxruntime "
    assert reply["runtime"].startswith(expected_runtime)
    assert reply["accelerator"] == "cpu" and reply["warmup"] == 1 and reply["repeats"] == 5


def test_several_agents_on_loopback_measure_independently():
    agents = [start_agent(device_id=f"dev-{i}") for i in range(3)]
    try:
        assert len({a.port for a in agents}) == 3
        for i, agent in enumerate(agents):
            fmt = "onnx" if i % 2 else "torchscript"
            status, reply = request(agent.url, "POST", measure_path(fmt), MODELS[fmt]())
            assert status == 200, reply
            assert reply["device_id"] == f"dev-{i}"
    finally:
        for agent in agents:
            agent.stop()


def test_a_torchscript_model_runs_at_the_shape_it_is_asked_for(agent):
    # Traced at 16x16, the model (global pooling) also runs at 64x64: the
    # agent feeds the requested shape, not the traced one.
    status, reply = request(agent.url, "POST", measure_path("torchscript", "1,3,64,64"),
                            torchscript_bytes())
    assert status == 200, reply
    assert reply["shape"] == [1, 3, 64, 64]


# -- security refusals -------------------------------------------------------------------


class _Evil:
    """Unpickling this would create a file; the agent must never do it."""

    target = ""

    def __reduce__(self):
        return (Path.touch, (Path(self.target),))


def _pickle_bomb(tmp_path: Path) -> tuple[bytes, Path]:
    marker = tmp_path / "unpickled"
    _Evil.target = str(marker)
    return pickle.dumps(_Evil()), marker


def _torch_save_checkpoint() -> bytes:
    buffer = io.BytesIO()
    torch.save({"w": torch.ones(2)}, buffer)
    return buffer.getvalue()


def _refusals(tmp_path):
    bomb, _ = _pickle_bomb(tmp_path)
    ts, ox = torchscript_bytes(), onnx_bytes()
    return {
        "no token": ("GET", "/probe", None, None, 401, "token"),
        "no token on measure": ("POST", measure_path("onnx"), ox, None, 401, "token"),
        "wrong token": ("POST", measure_path("onnx"), ox, "x" * 32, 401, "wrong token"),
        "empty token": ("GET", "/probe", None, "", 401, "token"),
        "oversized body": ("POST", measure_path("onnx"), b"\0" * (1 << 20), TOKEN, 413, "limit"),
        "pickle as torchscript": ("POST", measure_path("torchscript"), bomb, TOKEN, 400, "pickle"),
        "pickle as onnx": ("POST", measure_path("onnx"), bomb, TOKEN, 400, "pickle"),
        "garbage as torchscript": ("POST", measure_path("torchscript"), b"garbage" * 50, TOKEN,
                                   400, "not a TorchScript archive"),
        "garbage as onnx": ("POST", measure_path("onnx"), b"garbage" * 50, TOKEN, 400,
                            "not a valid ONNX model"),
        "torch.save checkpoint": ("POST", measure_path("torchscript"), _torch_save_checkpoint(),
                                  TOKEN, 400, "not a TorchScript archive"),
        "onnx sent as torchscript": ("POST", measure_path("torchscript"), ox, TOKEN, 400,
                                     "not a TorchScript archive"),
        "torchscript sent as onnx": ("POST", measure_path("onnx"), ts, TOKEN, 400,
                                     "not a valid ONNX model"),
        "wrong shape for onnx": ("POST", measure_path("onnx", "1,3,32,32"), ox, TOKEN, 400,
                                 "shape 1,3,32,32"),
        "wrong rank for onnx": ("POST", measure_path("onnx", "3,16,16"), ox, TOKEN, 400, "rank"),
        "wrong channels for torchscript": ("POST", measure_path("torchscript", "1,4,16,16"), ts,
                                           TOKEN, 400, "fails on shape 1,4,16,16"),
        "shape not integers": ("POST", measure_path("onnx", "a,b"), ox, TOKEN, 400, "integers"),
        "shape with zero": ("POST", measure_path("onnx", "0,3"), ox, TOKEN, 400, "positive"),
        "shape rank 7": ("POST", measure_path("onnx", "1,1,1,1,1,1,1"), ox, TOKEN, 400,
                         "dimensions"),
        "shape too large": ("POST", measure_path("onnx", "1024,1024,1024"), ox, TOKEN, 400,
                            "elements"),
        "warmup too high": ("POST", measure_path("onnx", warmup=101), ox, TOKEN, 400, "warmup"),
        "repeats zero": ("POST", measure_path("onnx", repeats=0), ox, TOKEN, 400, "repeats"),
        "unknown format": ("POST", "/measure?format=pt&shape=1,3,16,16", ts, TOKEN, 400,
                           "format"),
        "missing shape": ("POST", "/measure?format=onnx", ox, TOKEN, 400, "shape"),
        "unknown parameter": ("POST", measure_path("onnx") + "&device=cuda", ox, TOKEN, 400,
                              "unknown parameter"),
        "repeated parameter": ("POST", measure_path("onnx") + "&repeats=4", ox, TOKEN, 400,
                               "more than once"),
        "empty body": ("POST", measure_path("onnx"), b"", TOKEN, 400, "empty body"),
        "unknown path": ("GET", "/admin", None, TOKEN, 404, "no endpoint"),
        "wrong method": ("GET", measure_path("onnx"), None, TOKEN, 405, "not allowed"),
        "wrong method on health": ("DELETE", "/health", None, TOKEN, 405, "not allowed"),
    }


REFUSAL_NAMES = list(_refusals(Path("/nonexistent")))


@pytest.mark.parametrize("name", REFUSAL_NAMES)
def test_bad_requests_are_refused_with_json_and_the_agent_keeps_serving(agent, tmp_path, name):
    method, path, body, token, want_status, want_text = _refusals(tmp_path)[name]
    status, reply = request(agent.url, method, path, body, token=token)
    assert status == want_status, reply
    assert set(reply) == {"error"} and want_text in reply["error"], reply
    assert "\n" not in reply["error"] and len(reply["error"]) < 600
    assert_still_serving(agent)


def test_a_pickle_is_never_unpickled(agent, tmp_path):
    bomb, marker = _pickle_bomb(tmp_path)
    pickle.loads(bomb)  # proves the bomb works when unpickled...
    assert marker.exists()
    marker.unlink()
    for fmt in ("torchscript", "onnx"):  # ...and that the agent does not unpickle it
        status, _ = request(agent.url, "POST", measure_path(fmt), bomb)
        assert status == 400
    assert not marker.exists()


def test_body_size_is_checked_from_content_length_before_reading(agent):
    # Claims 10 GB and sends nothing: the refusal must come without waiting for a body.
    head = (f"POST {measure_path('onnx')} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\nContent-Length: 10000000000\r\n\r\n").encode()
    started = time.perf_counter()
    status, reply = split_reply(raw_exchange(agent.url, head))
    assert status == 413 and "limit" in reply["error"]
    assert time.perf_counter() - started < 5
    assert_still_serving(agent)


def test_post_without_content_length_gets_411(agent):
    head = (f"POST {measure_path('onnx')} HTTP/1.1\r\nHost: x\r\n"
            f"Authorization: Bearer {TOKEN}\r\n\r\n").encode()
    status, reply = split_reply(raw_exchange(agent.url, head))
    assert status == 411 and "Content-Length" in reply["error"]
    chunked = (f"POST {measure_path('onnx')} HTTP/1.1\r\nHost: x\r\n"
               f"Authorization: Bearer {TOKEN}\r\nTransfer-Encoding: chunked\r\n\r\n").encode()
    status, reply = split_reply(raw_exchange(agent.url, chunked, b"5\r\nhello\r\n0\r\n\r\n"))
    assert status == 411
    assert_still_serving(agent)


def test_a_body_shorter_than_its_content_length_is_refused(agent):
    head = (f"POST {measure_path('onnx')} HTTP/1.0\r\nAuthorization: Bearer {TOKEN}\r\n"
            "Content-Length: 5000\r\n\r\n").encode()
    with connect(agent.url) as sock:
        sock.sendall(head + b"x" * 100)
        sock.shutdown(socket.SHUT_WR)  # the sender gives up early
        raw = b"".join(iter(lambda: sock.recv(65536), b""))
    status, reply = split_reply(raw)
    assert status == 400 and "100 of 5000" in reply["error"]
    assert_still_serving(agent)


def test_malformed_request_line_gets_json(agent):
    status, reply = split_reply(raw_exchange(agent.url, b"GET /health HTTP/x.y\r\n\r\n"))
    assert status == 400 and reply["error"]
    status, reply = split_reply(raw_exchange(agent.url, b"BREW /health HTTP/1.1\r\n\r\n"))
    assert status == 501 and "BREW" in reply["error"]


def test_expect_100_continue_asks_for_the_body_only_after_the_checks(agent):
    body = onnx_bytes()
    head = (f"POST {measure_path('onnx')} HTTP/1.1\r\nHost: x\r\nExpect: 100-continue\r\n"
            f"Content-Length: {len(body)}\r\n").encode()
    # Wrong token: refused at once, no "100 Continue", the body never sent.
    status, reply = split_reply(raw_exchange(agent.url, head + b"Authorization: Bearer nope\r\n\r\n"))
    assert status == 401
    # Right token: "100 Continue" first, then the body, then the timings.
    with connect(agent.url) as sock:
        sock.sendall(head + f"Authorization: Bearer {TOKEN}\r\n\r\n".encode())
        interim = sock.recv(4096)
        assert interim.startswith(b"HTTP/1.1 100")
        sock.sendall(body)
        raw = b"".join(iter(lambda: sock.recv(65536), b""))
    status, reply = split_reply(raw)
    assert status == 200 and len(reply["latencies_ms"]) == 3


def test_torchscript_zip_bomb_is_refused_before_loading(agent):
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
        archive.writestr("archive/constants.pkl", b"\x80\x02).")
        archive.writestr("archive/code/__torch__.py", b"\0" * (8 << 20))  # 8 MiB of zeros
    body = buffer.getvalue()
    assert len(body) < 64 << 10
    status, reply = request(agent.url, "POST", measure_path("torchscript"), body)
    assert status == 400 and "unpacks to" in reply["error"]


def test_onnx_with_external_data_is_refused(agent, monkeypatch):
    import onnx
    from onnx import TensorProto, helper

    weight = TensorProto(name="w", data_type=TensorProto.FLOAT, dims=[4])
    weight.data_location = TensorProto.EXTERNAL
    for key, value in (("location", "/etc/hostname"), ("offset", "0"), ("length", "16")):
        entry = weight.external_data.add()
        entry.key, entry.value = key, value
    graph = helper.make_graph(
        [helper.make_node("Add", ["x", "w"], ["y"])], "g",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [4])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [4])], [weight])
    body = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)]).SerializeToString()
    assert onnx.load_model_from_string(body).graph.initializer[0].data_location == 1
    status, reply = request(agent.url, "POST", "/measure?format=onnx&shape=4", body)
    assert status == 400 and "external data" in reply["error"]
    # On a device without the onnx package the byte scan alone refuses it.
    monkeypatch.setitem(sys.modules, "onnx", None)
    with pytest.raises(measure_mod.ModelRejected, match="external data"):
        measure_mod.check_onnx_self_contained(body)


def test_onnx_without_onnxruntime_is_refused_with_a_hint(agent, monkeypatch):
    monkeypatch.setitem(sys.modules, "onnxruntime", None)  # import now fails, as on a bare device
    status, reply = request(agent.url, "POST", measure_path("onnx"), onnx_bytes())
    assert status == 400
    assert reply["error"] == "onnxruntime not installed on this device; send format=torchscript"
    monkeypatch.undo()
    assert_still_serving(agent)


# -- one measurement at a time -----------------------------------------------------------


def test_a_second_concurrent_measurement_gets_409_busy():
    blocker = BlockingProbe()
    agent = start_agent(probe_fn=blocker, probe_ttl_s=0)
    try:
        probing = threading.Thread(target=request, args=(agent.url, "GET", "/probe"))
        probing.start()
        assert blocker.entered.wait(10)
        status, reply = request(agent.url, "POST", measure_path("onnx"), onnx_bytes())
        assert status == 409
        assert reply == {"error": "busy: another measurement is running; retry later"}
        status, _ = request(agent.url, "GET", "/probe")
        assert status == 409
        blocker.release.set()
        probing.join(10)
        assert_still_serving(agent)
    finally:
        blocker.release.set()
        agent.stop()


def test_two_uploads_at_once_never_run_together(monkeypatch):
    # Real uploads racing; the measurement is slowed so that they overlap.
    import hdap_engine.agent.server as server_mod

    active, peak, lock = [0], [0], threading.Lock()
    real_measure = server_mod.measure_model

    def slow_measure(*args, **kwargs):
        with lock:
            active[0] += 1
            peak[0] = max(peak[0], active[0])
        try:
            time.sleep(0.2)
            return real_measure(*args, **kwargs)
        finally:
            with lock:
                active[0] -= 1

    monkeypatch.setattr(server_mod, "measure_model", slow_measure)
    agent = start_agent()
    results = []
    try:
        def post():
            results.append(request(agent.url, "POST", measure_path("onnx"), onnx_bytes())[0])

        threads = [threading.Thread(target=post) for _ in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(30)
        assert sorted(results).count(200) >= 1 and 409 in results and len(results) == 4
        assert set(results) == {200, 409}
        assert peak[0] == 1
    finally:
        agent.stop()


def test_stop_lets_a_running_measurement_finish():
    blocker = BlockingProbe()
    agent = start_agent(probe_fn=blocker, probe_ttl_s=0)
    replies = []
    probing = threading.Thread(target=lambda: replies.append(request(agent.url, "GET", "/probe")))
    probing.start()
    assert blocker.entered.wait(10)
    stopping = threading.Thread(target=agent.stop)
    stopping.start()
    time.sleep(0.3)
    assert stopping.is_alive(), "stop() returned while a probe was still running"
    blocker.release.set()
    stopping.join(10)
    probing.join(10)
    assert replies and replies[0][0] == 200


def test_models_and_probes_run_on_one_long_lived_thread(monkeypatch):
    # One thread means one warm OpenMP pool and the same thread settings for
    # every measurement, whichever request thread asked.
    import hdap_engine.agent.server as server_mod

    seen = []
    real_measure = server_mod.measure_model

    def recording_measure(*args, **kwargs):
        seen.append(threading.get_ident())
        return real_measure(*args, **kwargs)

    def recording_probe(**kwargs):
        seen.append(threading.get_ident())
        return fake_probes()

    monkeypatch.setattr(server_mod, "measure_model", recording_measure)
    agent = start_agent(probe_fn=recording_probe, probe_ttl_s=0)
    try:
        for _ in range(2):
            assert request(agent.url, "GET", "/probe")[0] == 200
            assert_still_serving(agent)
    finally:
        agent.stop()
    assert len(seen) == 4 and len(set(seen)) == 1
    assert seen[0] != threading.get_ident()


# -- probes --------------------------------------------------------------------------------


def test_probe_rows_are_cached_for_the_ttl():
    calls = []

    def counting(**kwargs):
        calls.append(kwargs)
        return {"probe_x_ms": float(len(calls))}

    cached = start_agent(probe_fn=counting, probe_ttl_s=60, probe_repeats=7, probe_warmup=2)
    try:
        first = request(cached.url, "GET", "/probe")[1]
        second = request(cached.url, "GET", "/probe")[1]
        assert first == second and len(calls) == 1
        assert calls[0] == {"repeats": 7, "warmup": 2}
    finally:
        cached.stop()
    calls.clear()
    fresh = start_agent(probe_fn=counting, probe_ttl_s=0)
    try:
        values = [request(fresh.url, "GET", "/probe")[1]["probe_x_ms"] for _ in range(2)]
        assert values == [1.0, 2.0] and calls == [{}, {}]
    finally:
        fresh.stop()


@pytest.mark.parametrize("bad", [{}, {"probe_x_ms": -1.0}, {"x": 1.0}, {"probe_x_ms": "nan"}])
def test_a_broken_probe_suite_is_a_json_500(bad):
    agent = start_agent(probe_fn=lambda **k: bad)
    try:
        status, reply = request(agent.url, "GET", "/probe")
        assert status == 500 and "probe suite" in reply["error"]
    finally:
        agent.stop()


def test_a_crashing_probe_suite_is_a_json_500_and_the_agent_lives():
    def crash(**kwargs):
        raise RuntimeError("kernel exploded")

    agent = start_agent(probe_fn=crash)
    try:
        status, reply = request(agent.url, "GET", "/probe")
        assert status == 500 and "kernel exploded" in reply["error"]
        assert_still_serving(agent)
    finally:
        agent.stop()


def test_a_missing_probe_suite_is_a_json_501(monkeypatch):
    monkeypatch.setitem(sys.modules, "hdap_engine.fleet.probes", None)
    agent = start_agent(probe_fn=None)
    try:
        status, reply = request(agent.url, "GET", "/probe")
        assert status == 501 and "probe suite not available" in reply["error"]
    finally:
        agent.stop()


def test_the_real_probe_suite_answers_probe():
    agent = start_agent(probe_fn=None, probe_repeats=2, probe_warmup=1)
    try:
        status, reply = request(agent.url, "GET", "/probe", timeout=120)
        assert status == 200, reply
        probes = {k: v for k, v in reply.items() if k.startswith("probe_")}
        assert len(probes) >= 2 and all(k.endswith("_ms") and v > 0 for k, v in probes.items())
    finally:
        agent.stop()


def test_the_probe_suite_imports_without_heavy_dependencies():
    # The agent runs the suite on the device, where pandas & co are absent.
    code = (
        "import sys, json, hdap_engine.fleet.probes;"
        "print(json.dumps(sorted(m for m in sys.modules if '.' not in m)))"
    )
    out = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True,
                         text=True, check=True, timeout=120)
    heavy = {"pandas", "sklearn", "xgboost", "streamlit", "umap", "plotly", "pyarrow"}
    assert not set(json.loads(out.stdout)) & heavy


# -- logging, config, sku ------------------------------------------------------------------


def test_each_request_is_logged_on_one_line_without_the_token(agent, caplog):
    with caplog.at_level(logging.INFO, logger="hdap_engine.agent"):
        request(agent.url, "GET", "/probe")
        request(agent.url, "GET", "/probe", token="wrong-token-wrong-token")
        deadline = time.time() + 5
        while len(caplog.records) < 2 and time.time() < deadline:
            time.sleep(0.01)
    lines = [r.getMessage() for r in caplog.records if r.name == "hdap_engine.agent"]
    assert len(lines) == 2
    # Each handler thread logs after its response is sent, so the two lines may swap.
    ok, refused = sorted(lines, key=lambda line: " 401 " in line)
    assert ok.startswith("GET /probe 200 ") and " ms" in ok
    assert refused.startswith("GET /probe 401 ")
    assert all(TOKEN not in line and "wrong-token" not in line for line in lines)


@pytest.mark.parametrize(
    "options, message",
    [
        ({"token": ""}, "no token"),
        ({"token": "short"}, "at least 16"),
        ({"token": "has space in the token!"}, "printable ASCII"),
        ({"token": TOKEN, "port": 70000}, "port"),
        ({"token": TOKEN, "max_body_mb": 0}, "max body"),
        ({"token": TOKEN, "threads": 0}, "threads"),
        ({"token": TOKEN, "accelerator": "tpu"}, "accelerator"),
        ({"token": TOKEN, "probe_ttl_s": -1}, "TTL"),
        ({"token": TOKEN, "device_id": " "}, "device_id"),
    ],
)
def test_bad_config_is_refused_before_starting(options, message):
    with pytest.raises(HdapError, match=message):
        AgentServer(AgentConfig(**options))


def test_a_short_token_is_accepted_only_when_asked():
    AgentConfig(token="short", allow_short_token=True).validate()


def test_a_port_in_use_is_a_clear_error():
    first = start_agent()
    try:
        with pytest.raises(HdapError, match="cannot listen"):
            start_agent(port=first.port)
    finally:
        first.stop()


@pytest.mark.parametrize(
    "model, sku",
    [
        ("NVIDIA Jetson Nano Developer Kit", "jetson-nano"),
        ("NVIDIA Jetson Xavier NX Developer Kit", "jetson-xavier-nx"),
        ("Raspberry Pi 4 Model B Rev 1.4", "rpi4"),
        ("Raspberry Pi 5 Model B Rev 1.0", "rpi5"),
        ("Raspberry Pi Compute Module 4 Rev 1.0", "rpi-cm4"),
        ("Some x86 board", "host"),
    ],
)
def test_sku_is_named_from_the_device_tree(model, sku):
    assert sku_from_model_string(model) == sku


def test_detect_sku_reads_the_device_tree_file(tmp_path):
    tree = tmp_path / "model"
    tree.write_bytes(b"NVIDIA Jetson Nano Developer Kit\x00")
    assert detect_sku(str(tree)) == "jetson-nano"
    assert detect_sku(str(tmp_path / "missing")) == "host"


@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("localhost", True),
                                            ("::1", True), ("0.0.0.0", False),
                                            ("192.168.1.20", False), ("", False)])
def test_loopback_hosts_are_recognised(host, loopback):
    assert is_loopback(host) is loopback
