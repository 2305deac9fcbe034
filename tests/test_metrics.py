"""
The Prometheus metrics every txmasse process keeps: counted where the work
happens (connects, registry calls, leases, heartbeats, watch events), and
served by C{twistd masse --metrics}.
"""

from __future__ import annotations

import gc
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from pathlib import Path
from time import perf_counter
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import REGISTRY, CollectorRegistry, Counter, Histogram
from prometheus_client.parser import text_string_to_metric_families
from twisted.internet import reactor
from twisted.internet.defer import Deferred, succeed
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.error import CannotListenError
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock, deferLater
from twisted.internet.testing import MemoryReactorClock
from twisted.internet.threads import deferToThread
from twisted.logger import capturedLogs
from twisted.python import usage
from twisted.web.server import Site

from tests.conftest import freePort
from tests.helpers import errorsIn, warningsIn
from txmasse import metrics
from txmasse.endpoints import MasseClientEndpoint
from txmasse.errors import PeerNotFound, RegistryUnavailable
from txmasse.records import PeerRecord
from txmasse.registry.base import Lease
from txmasse.registry.memory import MemoryRegistry
from txmasse.service import Options

ROOT = Path(__file__).parent.parent
NAMES = (
    "masse_connects",
    "masse_connect_seconds",
    "masse_registry_calls",
    "masse_registry_call_seconds",
    "masse_leases",
    "masse_heartbeat_failures",
    "masse_watch_events",
)


def value(sample: str, /, **labels: str) -> float:
    return REGISTRY.get_sample_value(sample, labels) or 0.0


def test_names_are_the_public_ones() -> None:
    exposed = {family.name for family in REGISTRY.collect()}
    assert set(NAMES) <= exposed
    assert value("masse_leases") >= 0


def test_registry_calls_by_op_and_outcome() -> None:
    registry = MemoryRegistry(Clock())
    before = value("masse_registry_calls_total", op="lookup", outcome="ok")
    seconds = value("masse_registry_call_seconds_count", op="lookup")
    invalid = value("masse_registry_calls_total", op="lookup", outcome="invalid")
    registry.lookup("dev", "db")
    registry.lookup("dev", "no names like this!").addErrback(lambda f: f.trap(ValueError))
    assert value("masse_registry_calls_total", op="lookup", outcome="ok") == before + 1
    assert value("masse_registry_calls_total", op="lookup", outcome="invalid") == invalid + 1
    assert value("masse_registry_call_seconds_count", op="lookup") == seconds + 2


def test_outcomes() -> None:
    from twisted.internet.defer import CancelledError
    from twisted.python.failure import Failure

    from txmasse.errors import NoReachablePeer

    assert metrics.outcomeOf(object()) == "ok"
    for error, outcome in [
        (PeerNotFound("x"), "notfound"),
        (NoReachablePeer("x"), "unreachable"),
        (RegistryUnavailable("x"), "unavailable"),
        (CancelledError(), "cancelled"),
        (ValueError("x"), "invalid"),
        (KeyError("x"), "error"),
    ]:
        assert metrics.outcomeOf(Failure(error)) == outcome


def test_leases_and_watch_events() -> None:
    gc.collect()  # leases other tests left behind go now, not between two readings
    gc.disable()
    try:
        leasesAndWatchEvents()
    finally:
        gc.enable()


def leasesAndWatchEvents() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock)
    joined = value("masse_watch_events_total", kind="joined")
    left = value("masse_watch_events_total", kind="left")
    registry.watch("dev", "*", lambda event: None)
    leases = value("masse_leases")
    lease = registry.register(PeerRecord("dev", "db", ["tcp:host=h:port=1"]), 5)
    assert value("masse_leases") == leases + 1
    assert value("masse_watch_events_total", kind="joined") == joined + 1
    refreshes = value("masse_registry_calls_total", op="refresh", outcome="ok")
    clock.advance(5 / 3)  # a heartbeat
    assert value("masse_registry_calls_total", op="refresh", outcome="ok") == refreshes + 1
    lease.addCallback(lambda lease: lease.release())
    assert value("masse_leases") == leases
    assert value("masse_watch_events_total", kind="left") == left + 1
    lease.addCallback(lambda _: registry.close())
    assert value("masse_leases") == leases  # stopping again counts nothing


class _FailingStore:
    """
    A store whose every write fails, as a registry does while unreachable.
    """

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        failed: Deferred[None] = Deferred()
        failed.errback(RegistryUnavailable("redis://x: unreachable"))
        return failed

    def removeRecord(self, record: PeerRecord) -> Deferred[None]:
        return succeed(None)

    def forgetLease(self, lease: Lease) -> None:
        pass


def test_heartbeat_failures() -> None:
    clock = Clock()
    lease = Lease(_FailingStore(), PeerRecord("dev", "db", ["tcp:host=h:port=1"]), 3, clock)  # type: ignore[arg-type]
    before = value("masse_heartbeat_failures_total")
    unavailable = value("masse_registry_calls_total", op="refresh", outcome="unavailable")
    lease.start()
    clock.advance(1)
    clock.advance(1)
    assert value("masse_heartbeat_failures_total") == before + 2
    assert (
        value("masse_registry_calls_total", op="refresh", outcome="unavailable") == unavailable + 2
    )
    lease.stop()
    clock.advance(1)
    assert value("masse_heartbeat_failures_total") == before + 2


@pytest_twisted.ensureDeferred
async def test_connects_by_outcome_over_tcp() -> None:
    """
    A connect by name to a real listening socket counts C{ok} and is timed;
    one to a name nobody registered counts C{notfound}.
    """
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(Protocol)
    )
    registry = MemoryRegistry(reactor)
    try:
        record = PeerRecord("metrics", "echo", [f"tcp:host=127.0.0.1:port={port.getHost().port}"])
        await registry.register(record, 5)
        ok = value("masse_connects_total", namespace="metrics", name="echo", outcome="ok")
        missing = value(
            "masse_connects_total", namespace="metrics", name="nobody", outcome="notfound"
        )
        timed = value("masse_connect_seconds_count")
        endpoint = MasseClientEndpoint(reactor, "echo", "metrics", registry=registry)
        for _ in range(2):  # cold, then warm from the cache
            protocol: Any = await endpoint.connect(Factory.forProtocol(Protocol))
            protocol.transport.loseConnection()
        with pytest.raises(PeerNotFound):
            await MasseClientEndpoint(reactor, "nobody", "metrics", registry=registry).connect(
                Factory.forProtocol(Protocol)
            )
        assert value("masse_connects_total", namespace="metrics", name="echo", outcome="ok") == (
            ok + 2
        )
        assert value(
            "masse_connects_total", namespace="metrics", name="nobody", outcome="notfound"
        ) == (missing + 1)
        assert value("masse_connect_seconds_count") == timed + 3
    finally:
        await registry.close()
        await port.stopListening()


def test_twistd_masse_metrics(tmp_path: Path) -> None:
    """
    C{twistd masse --metrics ENDPOINT} serves the peer's metrics, and they
    parse: one lease, heartbeating.
    """
    portNumber = freePort()
    twistd = Path(sys.executable).parent / "twistd"
    process = subprocess.Popen(
        [
            str(twistd), "-n", "--pidfile=", "masse",
            "--name", "greeter", "--ns", "dev", "--ttl", "0.3",
            "--registry", f"sqlite:///{tmp_path}/registry.db",
            "--factory", "examples.greeter:factory",
            "--metrics", f"tcp:{portNumber}:interface=127.0.0.1",
        ],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with urllib.request.urlopen(
                    f"http://127.0.0.1:{portNumber}/metrics", timeout=5
                ) as response:
                    families = {
                        f.name: f for f in text_string_to_metric_families(response.read().decode())
                    }
                refreshed = [
                    s.value
                    for s in families["masse_registry_calls"].samples
                    if s.labels == {"op": "refresh", "outcome": "ok"} and s.name.endswith("_total")
                ]
                if families["masse_leases"].samples[0].value == 1 and refreshed:
                    break
            except (urllib.error.URLError, ConnectionError):
                pass
            assert process.poll() is None, "twistd exited"
            assert time.monotonic() < deadline, "no metrics with a heartbeating lease"
            time.sleep(0.05)
        assert set(NAMES) <= set(families)
    finally:
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(10)
        except subprocess.TimeoutExpired:
            process.kill()  # never left behind, whatever went wrong
            process.wait()
            raise


def test_bad_metrics_endpoint() -> None:
    with pytest.raises(usage.UsageError, match="--metrics 'nosuch:1': not a server endpoint"):
        Options().parseOptions(
            ["--name", "g", "--factory", "examples.greeter:factory", "--metrics", "nosuch:1"]
        )
    with pytest.raises(ValueError, match="--metrics 'nosuch:1': not a server endpoint"):
        metrics.metricsService(reactor, "nosuch:1")


class _TakenOnce(MemoryReactorClock):
    """
    A reactor whose first C{listenTCP} finds the port taken.
    """

    taken = True

    def listenTCP(self, port: int, factory: Any, backlog: int = 50, interface: str = "") -> Any:
        if self.taken:
            self.taken = False
            raise CannotListenError(interface, port, OSError(98, "Address already in use"))
        return super().listenTCP(port, factory, backlog, interface)


def test_metrics_on_a_taken_port_say_so_and_listen_once_free() -> None:
    clock = _TakenOnce()
    service = metrics.metricsService(clock, "tcp:9108:interface=127.0.0.1")
    with capturedLogs() as events:
        service.startService()
    assert errorsIn(events) == []
    [warning] = warningsIn(events)
    assert warning.startswith(
        "metrics at tcp:9108:interface=127.0.0.1: could not listen, retrying in 1."
    )
    assert "Address already in use" in warning
    assert clock.tcpServers == []
    clock.advance(1.25)  # the first retry, jitter included
    [(port, site, _, interface)] = clock.tcpServers
    assert (port, interface) == (9108, "127.0.0.1") and isinstance(site, Site)
    service.stopService()


@pytest_twisted.ensureDeferred
async def test_metrics_wait_for_their_port_over_real_sockets() -> None:
    holder = socket.socket()
    holder.bind(("127.0.0.1", 0))
    holder.listen()
    portNumber = holder.getsockname()[1]
    service = metrics.metricsService(reactor, f"tcp:{portNumber}:interface=127.0.0.1")
    try:
        with capturedLogs() as events:
            service.startService()
            holder.close()  # freed: the next attempt listens
            deadline = time.monotonic() + 10
            while service.port is None:
                assert time.monotonic() < deadline, "metrics never listened"
                await deferLater(reactor, 0.05, lambda: None)
        assert errorsIn(events) == []
        assert any("could not listen, retrying" in text for text in warningsIn(events))
        scraped = await deferToThread(scrape, portNumber)
        assert "masse_connects" in scraped
    finally:
        holder.close()
        await service.stopService()


def scrape(portNumber: int) -> str:
    with urllib.request.urlopen(f"http://127.0.0.1:{portNumber}/metrics", timeout=5) as response:
        return str(response.read().decode())


def test_counts_show_at_once() -> None:
    """
    Counts are plain integers read at each scrape: the next scrape shows
    every one made before it.
    """
    before = value("masse_watch_events_total", kind="counted")
    for _ in range(3):
        metrics.watchEvent("counted")
    assert value("masse_watch_events_total", kind="counted") == before + 3
    metrics.watchEvent("counted")
    assert value("masse_watch_events_total", kind="counted") == before + 4


def test_a_kept_cell_counts_as_adding_does() -> None:
    """
    A connect that repeats an attempt counts into its name's cell, kept
    from before: the next scrape shows it as any other connect, timed.
    """
    labels = {"namespace": "cells", "name": "db", "outcome": "ok"}
    cell = metrics.connectedCell("cells", "db")
    assert metrics.connectedCell("cells", "db") is cell
    assert REGISTRY.get_sample_value("masse_connects_total", labels) == 0.0  # shown from now on
    timed = REGISTRY.get_sample_value("masse_connect_seconds_count", {}) or 0.0
    protocol = object()
    assert metrics.connectedSince(protocol, perf_counter(), cell) is protocol
    metrics.connectEnded("cells", "db", protocol, 0.001)
    assert REGISTRY.get_sample_value("masse_connects_total", labels) == 2.0
    assert REGISTRY.get_sample_value("masse_connect_seconds_count", {}) == timed + 2


def test_timings_expose_what_prometheus_client_would() -> None:
    """
    L{metrics.Timings} and L{metrics.Tally} show the same samples as
    C{prometheus_client}'s own C{Histogram} and C{Counter} fed the same
    observations, C{le} bounds inclusive, C{_created} beside each.
    """
    observed = [0.05, 0.1, 0.5, 5.0, 0.1, 2.0]
    theirs = CollectorRegistry()
    histogram = Histogram("t_seconds", "doc", ["op"], buckets=(0.1, 1.0), registry=theirs)
    counter = Counter("t_calls", "doc", ["op"], registry=theirs)
    timings = metrics.Timings("t_seconds", "doc", ["op"], (0.1, 1.0))
    tally = metrics.Tally("t_calls", "doc", ["op"])
    for seconds in observed:
        histogram.labels("a").observe(seconds)
        counter.labels("a").inc()
        timings.observe(("a",), seconds)
        tally.add(("a",))

    def samples(families: Any) -> dict[tuple[str, str | None], float]:
        return {
            (s.name, s.labels.get("le")): s.value
            for family in families
            for s in family.samples
            if not s.name.endswith("_created")
        }

    ours = samples([timings.collect(), tally.collect()])
    assert ours == samples(theirs.collect())
    assert ours[("t_seconds_bucket", "0.1")] == 3  # 0.05 and both 0.1
    names = {s.name for family in (timings.collect(), tally.collect()) for s in family.samples}
    assert {"t_seconds_created", "t_calls_created"} <= names


def test_the_overhead_bench_runs() -> None:
    """
    C{python -m bench.metrics}, tiny: it keeps working (figures in
    docs/metrics.md come from full runs).
    """
    result = subprocess.run(
        [sys.executable, "-m", "bench.metrics", "20"],
        cwd=ROOT,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    assert "ratio on/off:" in result.stdout
    assert "(20 samples)" in result.stdout
