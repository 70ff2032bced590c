"""The agent latency backend: which device measures what, replacements, failures, the store.

Most tests use fake agents (a client factory) and a fake exporter, so that
replacement logic is tested in milliseconds; the last ones use real agents on
loopback ports and a dead port.
"""

from __future__ import annotations

import functools
import io
import socket
import threading
import time
import warnings
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from hdap_engine.agent.client import (
    AgentBusy,
    AgentMeasurement,
    AgentRejected,
    AgentUnavailable,
)
from hdap_engine.errors import HdapError
from hdap_engine.fleet.clustering import Clustering
from hdap_engine.fleet.telemetry import fleet_from_frame
from hdap_engine.latency.agent_backend import AgentBackend
from hdap_engine.latency.sampling import sample_candidates
from hdap_engine.latency.store import Store, widths_key
from hdap_engine.options import ClusteringPlan
from hdap_engine.pruning.space import PruningSpace
from tests.helpers.agent_fleet import start_fleet, stop_fleet
from tests.helpers.agents import TOKEN, free_port, onnx_bytes, tiny_model

# -- fakes ------------------------------------------------------------------------------------


class FakeNet:
    """Fake agents by URL: their speed, when they go down, what they were sent."""

    def __init__(self, speed: dict[str, float]):
        self.speed = dict(speed)  # url -> ms of the reference candidate
        self.fail_after: dict[str, int] = {}  # url -> requests answered before it goes down
        self.busy_first: dict[str, int] = {}  # url -> busy answers before it measures
        self.no_onnx: set[str] = set()
        self.wrong_token: set[str] = set()
        self.delay: dict[str, float] = {}  # url -> seconds per measurement (default 0.01)
        self.starts: list[tuple[str, int, dict[str, int]]] = []  # url, index, answers so far
        self.requests: dict[str, list[tuple[str, bytes]]] = {u: [] for u in speed}
        self.answered: dict[str, list[float]] = {u: [] for u in speed}
        self.in_flight: dict[str, int] = dict.fromkeys(speed, 0)
        self.max_in_flight: dict[str, int] = dict.fromkeys(speed, 0)
        self.max_total = 0
        self._lock = threading.Lock()

    def factory(self, url, token, **options):
        assert token == TOKEN
        return FakeClient(self, url.rstrip("/"))

    def latency(self, url: str, body: bytes) -> float:
        return self.speed[url] * (1 + zlib.crc32(body) % 1000 / 1000)


class FakeClient:
    def __init__(self, net: FakeNet, url: str):
        self.net, self.url = net, url

    def measure(self, body, fmt, shape, warmup=3, repeats=10) -> AgentMeasurement:
        net, url = self.net, self.url
        with net._lock:
            net.requests[url].append((fmt, body))
            n = len(net.requests[url])
            if url in net.fail_after and n > net.fail_after[url]:
                raise AgentUnavailable(f"agent {url} is unavailable (POST /measure, 3 attempts): "
                                       "connection refused (is the agent running?)", url=url)
            if net.busy_first.get(url, 0) > 0:
                net.busy_first[url] -= 1
                raise AgentBusy(f"agent {url} stayed busy", url=url, status=409)
            if url in net.wrong_token:
                raise AgentRejected(f"agent {url} refused the token on /measure (401: wrong "
                                    "token)", url=url, status=401)
            if fmt == "onnx" and url in net.no_onnx:
                raise AgentRejected(f"agent {url} refused POST /measure (400): onnxruntime not "
                                    "installed on this device; send format=torchscript",
                                    url=url, status=400)
            net.in_flight[url] += 1
            net.starts.append((url, len(net.answered[url]),
                               {u: len(a) for u, a in net.answered.items()}))
            net.max_in_flight[url] = max(net.max_in_flight[url], net.in_flight[url])
            net.max_total = max(net.max_total, sum(net.in_flight.values()))
        time.sleep(net.delay.get(url, 0.01))  # long enough for requests to overlap
        ms = net.latency(url, body)
        with net._lock:
            net.in_flight[url] -= 1
            net.answered[url].append(ms)
        return AgentMeasurement(agent_url=url, device_id=url, sku="host", format=fmt,
                                shape=tuple(shape), runtime="fake 1.0", accelerator="cpu",
                                warmup=warmup, repeats=repeats, latencies_ms=(ms,) * repeats,
                                median_ms=ms)


class QuickBackend(AgentBackend):
    """The real backend with a stand-in exporter (the model's bytes name the candidate)."""

    exports: list[tuple[str, str]]

    def _export(self, space, widths, fmt):
        self.exports.append((widths_key(widths), fmt))
        return f"{fmt}:{widths_key(widths)}".encode()


# Two clusters of four devices; inside each, devices sit at growing distances from the centre.
DEVICES = [f"a{i}" for i in range(4)] + [f"b{i}" for i in range(4)]


def url_of(device: str) -> str:
    return f"http://10.0.0.{DEVICES.index(device) + 1}:8765"


def make_fleet(without_url=()):
    rows = []
    for i, offset in enumerate((0.0, 0.02, -0.05, 0.09)):
        rows.append({"device_id": f"a{i}", "probe_conv_ms": 1.0 + offset,
                     "probe_copy_ms": 0.2 * (1 + offset)})
        rows.append({"device_id": f"b{i}", "probe_conv_ms": 3.0 * (1 + offset),
                     "probe_copy_ms": 0.6 - offset})
    frame = pd.DataFrame(rows)
    frame["agent_url"] = [None if d in without_url else url_of(d) for d in frame["device_id"]]
    return fleet_from_frame(frame, source="fleet.csv")


def make_clustering(fleet, representatives=2):
    return Clustering(ClusteringPlan(k=2, representatives=representatives, seed=0)).fit(fleet)


@pytest.fixture(scope="module")
def space():
    return PruningSpace.for_model("resnet56")


@pytest.fixture(scope="module")
def candidates(space):
    return sample_candidates(space, 5, seed=0)


def build(fleet, clustering, net=None, **options):
    net = net or FakeNet({url_of(d): 1.0 + DEVICES.index(d) for d in DEVICES})
    backend = QuickBackend.from_fleet(fleet, TOKEN, clustering=clustering,
                                      client_factory=net.factory, backoff=0.0, **options)
    backend.exports = []
    return backend, net


def reps_of(clustering):
    return [d for c in range(clustering.k_) for d in clustering.representatives_[c]]


def spare_of(clustering, cluster: int, skip=()) -> str:
    """The closest device of a cluster that is not a representative (nor in ``skip``)."""
    reps = reps_of(clustering)
    return next(d for d in clustering.ranked_devices(cluster) if d not in reps and d not in skip)


# -- refusing what cannot work ------------------------------------------------------------------


def test_telemetry_without_agent_urls_is_refused_with_what_to_do():
    fleet = make_fleet()
    bare = fleet_from_frame(fleet.frame.drop(columns=["agent_url"]), source="fleet.csv")
    with pytest.raises(HdapError, match=r"fleet\.csv: has no agent_url column.*probe-fleet"):
        AgentBackend.from_fleet(bare, TOKEN)
    empty = make_fleet(without_url=DEVICES)
    with pytest.raises(HdapError, match=r"fleet\.csv: column agent_url is empty for all 8 devices"):
        AgentBackend.from_fleet(empty, TOKEN)


@pytest.mark.parametrize("token", [None, ""])
def test_a_missing_token_is_refused_naming_the_env_variable_and_flag(token):
    with pytest.raises(HdapError, match=r"HDAP_AGENT_TOKEN or pass --agent-token"):
        AgentBackend.from_fleet(make_fleet(), token)


def test_a_bad_or_shared_agent_url_is_refused_naming_the_devices():
    fleet = make_fleet()
    frame = fleet.frame.copy()
    frame.loc[frame.device_id == "b2", "agent_url"] = "10.0.0.7:8765"
    with pytest.raises(HdapError, match=r"agent_url of device b2: .*not an http\(s\) URL"):
        AgentBackend.from_fleet(fleet_from_frame(frame), TOKEN)
    frame.loc[frame.device_id == "b2", "agent_url"] = url_of("a1") + "/"
    with pytest.raises(HdapError, match=r"listed for devices a1 and b2"):
        AgentBackend.from_fleet(fleet_from_frame(frame), TOKEN)


# -- measuring -----------------------------------------------------------------------------------


def test_each_candidate_is_exported_once_and_sent_to_every_representative_at_once(
        space, candidates):
    fleet = make_fleet()
    clustering = make_clustering(fleet)
    backend, net = build(fleet, clustering)
    reps = reps_of(clustering)
    seen_threads = []
    result = backend.measure(space, candidates, reps, repeats=3, warmup=1,
                             progress=lambda done, total: seen_threads.append(
                                 (threading.current_thread(), done, total)))
    assert sorted(backend.exports) == sorted((widths_key(w), "onnx") for w in candidates)
    for j, dev in enumerate(reps):
        url = url_of(dev)
        assert len(net.requests[url]) == len(candidates)
        expected = [net.latency(url, f"onnx:{widths_key(w)}".encode()) for w in candidates]
        np.testing.assert_allclose(result.median_ms[:, j], expected)
    # One request at a time per agent, but the devices measure at the same time.
    assert set(net.max_in_flight.values()) <= {0, 1}
    assert net.max_total > 1
    # Progress comes from the caller's thread and ends with every pair.
    assert {t for t, _, _ in seen_threads} == {threading.current_thread()}
    assert seen_threads[-1][1:] == (len(candidates) * len(reps), len(candidates) * len(reps))
    assert result.source == "agent (real)" and result.notes == []
    assert backend.details()["used"] == sorted(reps)


def test_a_candidate_timed_again_in_a_later_call_is_not_exported_again(space, candidates):
    fleet = make_fleet()
    clustering = make_clustering(fleet)
    backend, net = build(fleet, clustering)
    reps = reps_of(clustering)
    backend.measure(space, candidates[:3], reps, repeats=1)
    # Timing-drift anchors and finalists come back in later calls: measured, not exported.
    again = backend.measure(space, candidates[1:], reps, repeats=1, fresh=True)
    assert sorted(backend.exports) == sorted((widths_key(w), "onnx") for w in candidates)
    assert len(net.requests[url_of(reps[0])]) == 3 + 4
    assert np.isfinite(again.median_ms).all()


def test_a_fast_device_runs_only_a_few_candidates_ahead_of_a_slow_one(space):
    from hdap_engine.latency.agent_backend import EXPORT_WINDOW

    fleet = make_fleet(without_url=[d for d in DEVICES if d not in ("a0", "b0")])
    clustering = make_clustering(fleet, representatives=1)
    backend, net = build(fleet, clustering)
    slow, fast = (url_of(backend.measured_device(clustering.representatives_[c][0]))
                  for c in (0, 1))
    net.delay[slow] = 0.05
    many = sample_candidates(space, 12, seed=2)
    backend.measure(space, many, reps_of(clustering), repeats=1)
    # The fast device's candidate i was sent when the slow one had answered `seen`:
    # it may lead, but by less than the window (bounding the models held in memory).
    leads = [i - seen[slow] for url, i, seen in net.starts if url == fast]
    assert len(leads) == 12 and max(leads) >= 1
    assert max(leads) <= EXPORT_WINDOW
    assert sorted(k for k, _ in backend.exports) == sorted(widths_key(w) for w in many)


def test_a_representative_without_agent_url_is_replaced_by_the_next_closest_with_one(
        space, candidates):
    probe = make_clustering(make_fleet())
    first = probe.representatives_[0][0]
    fleet = make_fleet(without_url=[first])
    clustering = make_clustering(fleet)
    assert clustering.representatives_[0][0] == first
    backend, net = build(fleet, clustering)
    spare = spare_of(clustering, 0)
    assert backend.measured_device(first) == spare
    result = backend.measure(space, candidates, reps_of(clustering), repeats=2)
    j = result.devices.index(first)
    assert len(net.requests[url_of(spare)]) == len(candidates)
    np.testing.assert_allclose(
        result.median_ms[:, j],
        [net.latency(url_of(spare), f"onnx:{widths_key(w)}".encode()) for w in candidates])
    assert any(f"representative {first} of cluster 0 has no agent_url; measured on {spare}" in n
               for n in result.notes)
    assert backend.details()["substituted"] == {first: spare}


def test_a_device_that_fails_is_replaced_within_its_cluster_and_the_call_measured_again(
        space, candidates):
    fleet = make_fleet()
    clustering = make_clustering(fleet)
    backend, net = build(fleet, clustering)
    reps = reps_of(clustering)
    victim = clustering.representatives_[1][0]
    spare = spare_of(clustering, 1)
    net.fail_after[url_of(victim)] = 2
    store = Store()
    result = backend.measure(space, candidates, reps, repeats=2, store=store)
    j = reps.index(victim)
    # The whole column comes from the replacement, the two lost answers included.
    np.testing.assert_allclose(
        result.median_ms[:, j],
        [net.latency(url_of(spare), f"onnx:{widths_key(w)}".encode()) for w in candidates])
    assert np.isfinite(result.median_ms).all()
    # Never a device of the other cluster.
    assert all(not net.requests[url_of(d)] for d in clustering.ranked_devices(0)
               if d not in reps)
    details = backend.details()
    assert details["substituted"] == {victim: spare}
    assert list(details["failed"]) == [victim] and "connection refused" in details["failed"][victim]
    assert details["measurements"].get(victim, 0) == 0  # its two answers were dropped
    assert any(f"{victim} of cluster 1 failed" in n and f"measured on {spare} instead" in n
               for n in result.notes)
    # Stored as the replacement's numbers, under its own key.
    assert backend.device_key(victim).startswith(f"agent:{spare}@")
    wkeys = [widths_key(w) for w in candidates]
    rows = store.get_measurements("agent", space.model, space.input_shape, 2,
                                  [(backend.device_key(victim), k) for k in wkeys])
    assert len(rows) == len(candidates)
    # Later calls go to the replacement straight away.
    net.requests = {u: [] for u in net.requests}
    more = sample_candidates(space, 7, seed=1)[:2]
    backend.measure(space, more, reps, repeats=2)
    assert not net.requests[url_of(victim)] and len(net.requests[url_of(spare)]) == 2


def test_with_no_device_left_the_column_is_empty_unstored_and_a_later_run_retries_it(
        space, candidates):
    # Only the representatives have agents: nothing can replace one.
    probe = make_clustering(make_fleet())
    fleet = make_fleet(without_url=[d for d in DEVICES if d not in reps_of(probe)])
    clustering = make_clustering(fleet)
    reps = reps_of(clustering)
    victim, other = clustering.representatives_[0]
    backend, net = build(fleet, clustering)
    net.fail_after[url_of(victim)] = 1
    store = Store()
    result = backend.measure(space, candidates, reps, repeats=2, store=store)
    j = reps.index(victim)
    assert np.isnan(result.median_ms[:, j]).all()
    assert np.isfinite(np.delete(result.median_ms, j, axis=1)).all()
    assert any(f"no other device of cluster 0 has a working agent, so cluster 0 continues with "
               f"its other representatives ({other})" in n for n in result.notes)
    assert backend.details()["measured_on"][victim] is None
    wkeys = [widths_key(w) for w in candidates]
    assert store.get_measurements("agent", space.model, space.input_shape, 2,
                                  [(f"agent:{victim}@{url_of(victim)[7:]}/onnx", k)
                                   for k in wkeys]) == {}
    # A later run: the device is back; only its column is measured, the rest is stored.
    again, net2 = build(fleet, make_clustering(fleet))
    later = again.measure(space, candidates, reps, repeats=2, store=store)
    assert len(net2.requests[url_of(victim)]) == len(candidates)
    assert sum(len(r) for u, r in net2.requests.items() if u != url_of(victim)) == 0
    assert np.isfinite(later.median_ms).all() and later.from_store[:, j].sum() == 0
    # Devices served from the store count as used, though this backend did not measure them.
    assert again.details()["used"] == sorted(reps)
    assert again.details()["measurements"] == {victim: len(candidates)}


def test_a_cluster_that_loses_every_device_is_named_and_the_others_go_on(space, candidates):
    probe = make_clustering(make_fleet())
    fleet = make_fleet(without_url=[d for d in DEVICES if d.startswith("b")
                                    and d not in reps_of(probe)])
    clustering = make_clustering(fleet)
    backend, net = build(fleet, clustering)
    for dev in clustering.representatives_[1]:
        net.fail_after[url_of(dev)] = 0
    result = backend.measure(space, candidates, reps_of(clustering), repeats=2)
    cluster1 = np.array([d in clustering.representatives_[1] for d in result.devices])
    assert np.isnan(result.median_ms[:, cluster1]).all()
    assert np.isfinite(result.median_ms[:, ~cluster1]).all()
    assert any("cluster 1 has no device left to measure on" in n for n in result.notes)
    assert backend.details()["clusters_without_device"] == [1]


def test_when_no_device_is_left_at_all_the_error_says_why(space, candidates):
    fleet = make_fleet(without_url=[d for d in DEVICES if d not in ("a0", "b0")])
    clustering = make_clustering(fleet, representatives=1)
    backend, net = build(fleet, clustering)
    for url in net.speed:
        net.fail_after[url] = 0
    with pytest.raises(HdapError, match=r"no device could be measured \(.*connection refused"):
        backend.measure(space, candidates, reps_of(clustering), repeats=2)


def test_a_token_no_agent_takes_is_one_error_not_a_walk_through_the_fleet(space, candidates):
    fleet = make_fleet()
    clustering = make_clustering(fleet)
    backend, net = build(fleet, clustering)
    net.wrong_token |= set(net.speed)
    with pytest.raises(HdapError, match=r"agent backend: agent .* refused the token"):
        backend.measure(space, candidates, reps_of(clustering), repeats=2)
    assert sum(len(r) for r in net.requests.values()) <= len(reps_of(clustering))


def test_a_device_that_refuses_a_token_others_take_is_replaced(space, candidates):
    fleet = make_fleet()
    clustering = make_clustering(fleet)
    backend, net = build(fleet, clustering)
    victim = clustering.representatives_[0][1]
    net.wrong_token.add(url_of(victim))
    net.busy_first[url_of(victim)] = 1  # so that the others answer first
    backend.measure(space, candidates, reps_of(clustering), repeats=2)
    assert "refused the token" in backend.failed[victim]
    assert backend.measured_device(victim) == spare_of(clustering, 0)


def test_replacements_stop_after_max_replacements(space, candidates):
    fleet = make_fleet()
    clustering = make_clustering(fleet, representatives=1)
    backend, net = build(fleet, clustering, max_replacements=1)
    rep = clustering.representatives_[0][0]
    for dev in clustering.ranked_devices(0):
        net.fail_after[url_of(dev)] = 0
    backend.measure(space, candidates[:1], reps_of(clustering), repeats=1)
    assert len(backend.failed) == 2  # the representative and one replacement
    assert backend.measured_device(rep) is None
    assert any("1 replacements failed too, so cluster 0 has no device left" in n
               for n in backend.events)


def test_a_busy_agent_is_waited_for_and_a_device_without_onnxruntime_gets_torchscript(
        space, candidates, monkeypatch):
    monkeypatch.setattr("hdap_engine.latency.agent_backend.BUSY_POLL_S", 0.01)
    fleet = make_fleet()
    clustering = make_clustering(fleet)
    backend, net = build(fleet, clustering, busy_wait_s=30)
    busy, no_onnx = clustering.representatives_[0][0], clustering.representatives_[1][0]
    net.busy_first[url_of(busy)] = 2
    net.no_onnx.add(url_of(no_onnx))
    result = backend.measure(space, candidates, reps_of(clustering), repeats=2)
    assert np.isfinite(result.median_ms).all()
    assert backend.failed == {}
    assert {f for f, _ in net.requests[url_of(no_onnx)][1:]} == {"torchscript"}
    assert sorted(k for k, f in backend.exports if f == "torchscript") == \
        sorted(widths_key(w) for w in candidates)
    assert backend.device_key(no_onnx).endswith("/torchscript")
    assert any(f"{no_onnx} has no onnxruntime" in n for n in result.notes)


def test_a_busy_agent_that_stays_busy_counts_as_failed(space, candidates):
    fleet = make_fleet()
    clustering = make_clustering(fleet)
    backend, net = build(fleet, clustering, busy_wait_s=0)
    victim = clustering.representatives_[0][1]
    net.busy_first[url_of(victim)] = 10**6
    backend.measure(space, candidates[:1], reps_of(clustering), repeats=1)
    assert "stayed busy" in backend.failed[victim]
    assert backend.measured_device(victim) == spare_of(clustering, 0)


# -- real agents --------------------------------------------------------------------------------


@functools.lru_cache(maxsize=1)
def tiny_onnx_32() -> bytes:
    buffer = io.BytesIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.onnx.export(tiny_model(), (torch.randn(1, 3, 32, 32),), buffer, dynamo=False,
                          input_names=["x"], output_names=["y"])
    return buffer.getvalue()


class TinyModelBackend(AgentBackend):
    """The real backend with a tiny real ONNX model, so that real agents time real runs."""

    def _export(self, space, widths, fmt):
        return tiny_onnx_32()


class WrongShapeBackend(AgentBackend):
    def _export(self, space, widths, fmt):
        return onnx_bytes()  # a 16x16 input: every agent refuses it for a 32x32 model


def test_a_model_every_agent_would_refuse_stops_at_once_without_blaming_devices(
        space, candidates):
    agents = start_fleet({"a0": 1.0, "a1": 1.1})
    try:
        frame = pd.DataFrame({"device_id": ["a0", "a1"], "probe_conv_ms": [1.0, 1.1],
                              "probe_copy_ms": [0.2, 0.2],
                              "agent_url": [agents["a0"].url, agents["a1"].url]})
        fleet = fleet_from_frame(frame)
        clustering = Clustering(ClusteringPlan(k=1, representatives=1, seed=0)).fit(fleet)
        backend = WrongShapeBackend.from_fleet(fleet, TOKEN, clustering=clustering)
        with pytest.raises(HdapError, match=r"agent backend: agent .* refused .*\(400\): ONNX "
                                            r"input 'x' has shape"):
            backend.measure(space, candidates[:1], clustering.representatives_[0], repeats=1)
        assert backend.failed == {} and backend.assigned == {}
    finally:
        stop_fleet(agents)


def test_real_agents_measure_and_an_unreachable_one_is_replaced(space, candidates):
    agents = start_fleet({"a0": 1.0, "a1": 1.0})
    try:
        # Two devices of one cluster: the representative's agent is not running.
        frame = pd.DataFrame({
            "device_id": ["dead", "a0", "a1"],
            "probe_conv_ms": [1.01, 1.0, 1.025], "probe_copy_ms": [0.2, 0.2, 0.2],
            "agent_url": [f"http://127.0.0.1:{free_port()}", agents["a0"].url, agents["a1"].url],
        })
        fleet = fleet_from_frame(frame, source="agents.csv")
        clustering = Clustering(ClusteringPlan(k=1, representatives=2, seed=0)).fit(fleet)
        reps = clustering.representatives_[0]
        assert "dead" in reps
        backend = TinyModelBackend.from_fleet(fleet, TOKEN, clustering=clustering, backoff=0.05,
                                              timeout=5)
        spare = next(d for d in clustering.ranked_devices(0) if d not in reps)
        result = backend.measure(space, candidates[:2], reps, repeats=3, warmup=1)
        j = reps.index("dead")
        assert backend.measured_device("dead") == spare
        assert "connection refused" in backend.failed["dead"]
        # The numbers are the agents' own.
        for col, dev in enumerate(reps):
            used = backend.measured_device(dev)
            replies = agents[used].replies
            assert len(replies) == 2
            assert result.times_ms[0][col] == replies[0]["latencies_ms"]
            assert result.median_ms[1, col] == pytest.approx(replies[1]["median_ms"])
        assert np.isfinite(result.median_ms[:, j]).all()
        assert backend.details()["runtime"][spare].startswith("onnxruntime")
    finally:
        stop_fleet(agents)


def test_an_agent_that_never_answers_is_given_up_after_the_timeout_and_replaced(
        space, candidates):
    agents = start_fleet({"a0": 1.0})
    # Accepts connections (the kernel's backlog) but never answers a request.
    hung = socket.socket()
    hung.bind(("127.0.0.1", 0))
    hung.listen(8)
    try:
        # "hung" is the middle device, so the representative.
        frame = pd.DataFrame({
            "device_id": ["hung", "a0", "offline"], "probe_conv_ms": [1.0, 0.98, 1.03],
            "probe_copy_ms": [0.2, 0.2, 0.2],
            "agent_url": [f"http://127.0.0.1:{hung.getsockname()[1]}", agents["a0"].url, ""]})
        fleet = fleet_from_frame(frame)
        clustering = Clustering(ClusteringPlan(k=1, representatives=1, seed=0)).fit(fleet)
        assert clustering.representatives_[0] == ["hung"]
        backend = TinyModelBackend.from_fleet(fleet, TOKEN, clustering=clustering, timeout=0.5,
                                              measure_timeout=0.5, retries=1, backoff=0.05)
        t0 = time.perf_counter()
        result = backend.measure(space, candidates[:1], ["hung"], repeats=2)
        assert time.perf_counter() - t0 < 15
        assert "no reply within 0.5 s" in backend.failed["hung"]
        assert backend.measured_device("hung") == "a0"
        assert result.median_ms[0, 0] == pytest.approx(agents["a0"].replies[0]["median_ms"])
    finally:
        hung.close()
        stop_fleet(agents)
