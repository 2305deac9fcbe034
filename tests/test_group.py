"""
PeerGroup: one connection per matching live instance, kept in step with the
registry; fan-out calls.

Unit tests run in-process peers on a MemoryRegistry over the real reactor
(registrations of this process, so they pass includeSelf=True unless they
test leaving them out); the rest run worker processes on a real Redis.
"""

from __future__ import annotations

import os
import random
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IProtocol, IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import LogEvent
from twisted.protocols import amp
from twisted.python.failure import Failure

from examples.group_rpc import Hello, Worker
from tests.endpoint_helpers import ChildProcess, Collector, Echo, Recording
from tests.helpers import (
    REPO,
    Background,
    FakeNetwork,
    RedisServer,
    Workers,
    eventually,
    fired,
    gather,
    newRegistry,
    readUntil,
    sleep,
)
from txmasse import MasseListeningPort, MasseServerEndpoint, PeerGroup, PeerRecord
from txmasse.registry.base import localInstances
from txmasse.registry.interface import EventKind, PeerEvent
from txmasse.registry.memory import MemoryRegistry

NS = "t"
WHERE = "tcp:host=10.0.0.1:port=4000"


def fast(attempt: int) -> float:
    return 0.05


async def serve(registry: Any, name: str, factory: IProtocolFactory) -> MasseListeningPort:
    endpoint = MasseServerEndpoint(
        reactor,
        name,
        NS,
        registry,
        endpoint=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        ttl=5,
    )
    port = await endpoint.listen(factory)
    assert isinstance(port, MasseListeningPort)
    return port


class Seen:
    """
    What a group's observers were told, as (added|removed, name).
    """

    def __init__(self, group: PeerGroup):
        self.calls: list[tuple[str, str]] = []
        group.onPeerAdded(lambda record, protocol: self.calls.append(("added", record.name)))
        group.onPeerRemoved(lambda record, protocol: self.calls.append(("removed", record.name)))


def names(group: PeerGroup) -> list[str]:
    return sorted(record.name for record in group.connections)


def newGroup(registry: Any, pattern: str, factory: IProtocolFactory, **options: Any) -> PeerGroup:
    options.setdefault("includeSelf", True)
    options.setdefault("retryPolicy", fast)
    return PeerGroup(registry, NS, pattern, factory, **options)


# In-process peers on a MemoryRegistry


@pytest_twisted.ensureDeferred
async def test_follows_joins_and_leaves() -> None:
    registry = MemoryRegistry(reactor)
    ports = {name: await serve(registry, name, Factory.forProtocol(Echo)) for name in ("a-1", "b")}
    group = newGroup(registry, "a-*", Factory.forProtocol(Collector))
    seen = Seen(group)
    group.startService()
    await eventually(lambda: names(group) == ["a-1"])
    (protocol,) = group.connections.values()
    assert isinstance(protocol, Collector)  # the application's, not a wrapper's
    ports["a-2"] = await serve(registry, "a-2", Factory.forProtocol(Echo))
    await eventually(lambda: names(group) == ["a-1", "a-2"])
    await ports["a-1"].stopListening()
    await eventually(lambda: names(group) == ["a-2"])
    assert [record.name for record in group.peers] == ["a-2"]
    assert seen.calls == [("added", "a-1"), ("added", "a-2"), ("removed", "a-1")]
    await group.stopService()
    assert group.connections == {} and seen.calls[-1] == ("removed", "a-2")
    for port in ports.values():
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_leaves_out_its_own_process_unless_includeSelf() -> None:
    registry = MemoryRegistry(reactor)
    mine = await serve(registry, "a-mine", Factory.forProtocol(Echo))
    theirs = await serve(registry, "a-theirs", Factory.forProtocol(Echo))
    localInstances.discard(theirs.record.instance)  # as if another process registered it
    default = PeerGroup(registry, NS, "a-*", Factory.forProtocol(Collector))
    everyone = PeerGroup(registry, NS, "a-*", Factory.forProtocol(Collector), includeSelf=True)
    default.startService()
    everyone.startService()
    await eventually(lambda: names(everyone) == ["a-mine", "a-theirs"])
    assert names(default) == ["a-theirs"]
    later = await serve(registry, "a-later", Factory.forProtocol(Echo))
    await eventually(lambda: len(everyone.connections) == 3)
    assert names(default) == ["a-theirs"]
    for group in (default, everyone):
        await group.stopService()
    for port in (mine, theirs, later):
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_observer_errors_are_logged_and_observers_can_stop(
    logged: Sequence[LogEvent],
) -> None:
    registry = MemoryRegistry(reactor)
    port = await serve(registry, "a", Factory.forProtocol(Echo))
    group = newGroup(registry, "a", Factory.forProtocol(Collector))
    calls: list[str] = []

    def broken(record: PeerRecord, protocol: IProtocol) -> None:
        raise ValueError("observer bug")

    def errors() -> list[Any]:
        return [event["log_failure"] for event in logged if "log_failure" in event]

    group.onPeerAdded(broken)
    stop = group.onPeerAdded(lambda record, protocol: calls.append("first"))
    group.onPeerRemoved(lambda record, protocol: calls.append("removed"))
    try:
        group.startService()
        await eventually(lambda: calls == ["first"])
        assert [f.type for f in errors()] == [ValueError]
        stop()
        next(iter(group.connections.values())).transport.loseConnection()  # type: ignore[attr-defined]
        await eventually(lambda: calls == ["first", "removed"] and len(group.connections) == 1)
        assert len(errors()) == 2
    finally:
        await group.stopService()
        await port.stopListening()


# On a fake network and a clock: what the group does when connections
# drop, fail or change, and that nothing more happens after


def onClock(
    *records: PeerRecord, pattern: str | None = None
) -> tuple[MemoryReactorClock, FakeNetwork, list[Any], PeerGroup]:
    """
    A group on a MemoryReactorClock over a MemoryRegistry on the same
    clock, holding C{records}; C{attempts} are the attempt numbers the
    retry policy was asked about (it answers 1 s).
    """
    clock = MemoryReactorClock()
    registry = MemoryRegistry(clock)
    leases = [fired(registry.register(r, 60)) for r in records]
    attempts: list[int] = []

    def policy(attempt: int) -> float:
        attempts.append(attempt)
        return 1.0

    group = newGroup(
        registry,
        pattern or records[0].name,
        Factory.forProtocol(Collector),
        retryPolicy=policy,
        reactor=clock,
    )
    return clock, FakeNetwork(clock), [leases, attempts], group


def fiveMinutesPass(clock: MemoryReactorClock) -> None:
    """
    Second by second, so that heartbeats and retries run as they fall due.
    """
    clock.pump([1.0] * 300)


def test_reconnects_with_backoff_while_registered() -> None:
    """
    A dropped connection is retried on the policy's schedule (0, 1, 2...)
    while the peer is registered, and no longer once it has left.
    """
    clock, network, (leases, attempts), group = onClock(PeerRecord(NS, "a", [WHERE]))
    seen = Seen(group)
    group.startService()
    first = network.accept()
    (protocol,) = group.connections.values()
    assert isinstance(protocol, Collector)  # the application's, not a wrapper's
    network.drop(first)
    assert group.connections == {} and attempts == [0]
    clock.advance(0.999)
    assert network.waiting() == []  # not before the policy's delay
    clock.advance(0.001)
    second = network.accept()
    assert len(group.connections) == 1
    assert seen.calls == [("added", "a"), ("removed", "a"), ("added", "a")]

    # Unreachable but registered: retried with growing attempt numbers.
    network.drop(second)
    for _ in range(3):
        clock.advance(1)
        network.refuse()
    assert attempts == [0, 0, 1, 2, 3] and group.connections == {}
    fired(leases[0].release())
    assert group.peers == []
    tried = len(network.attempts())
    fiveMinutesPass(clock)
    assert len(network.attempts()) == tried and attempts == [0, 0, 1, 2, 3]
    fired(group.stopService())


def test_update_with_new_endpoints_reconnects() -> None:
    """
    New metadata is news, not a reason to reconnect; new endpoints are.
    """
    clock, network, (leases, _), group = onClock(PeerRecord(NS, "a", [WHERE]))
    seen = Seen(group)
    group.startService()
    network.accept()
    (lease,) = leases
    fired(lease.update(attrs.evolve(lease.record, metadata={"v": "2"})))
    fiveMinutesPass(clock)
    (record,) = group.connections
    assert record.metadata == {"v": "2"}
    assert network.attempts() == ["10.0.0.1:4000"]  # no reconnect
    fired(lease.update(attrs.evolve(lease.record, endpoints=["tcp:host=10.0.0.2:port=4000"])))
    assert network.waiting() == ["10.0.0.2:4000"]
    network.accept()
    assert len(group.connections) == 1
    assert seen.calls == [("added", "a"), ("removed", "a"), ("added", "a")]
    fired(group.stopService())


def test_stop_closes_connections_and_cancels_retries() -> None:
    up = PeerRecord(NS, "a-up", [WHERE])
    down = PeerRecord(NS, "a-down", ["tcp:host=10.0.0.9:port=4000"])
    clock, network, (_, attempts), group = onClock(up, down, pattern="a-*")
    group.startService()
    connected = []
    while len(attempts) < 2:  # a-up connects, a-down is refused twice
        while network.waiting():
            if network.waiting()[0] == "10.0.0.1:4000":
                connected.append(network.accept())
            else:
                network.refuse()
        clock.advance(1)
    (protocol,) = group.connections.values()
    assert isinstance(protocol, Collector)
    assert [transport.connected for transport in connected] == [True]
    fired(group.stopService())
    assert protocol.lost.called and not connected[0].connected
    assert group.connections == {} and group.peers == []
    count, tried = len(attempts), len(network.attempts())
    fiveMinutesPass(clock)
    assert (len(attempts), len(network.attempts())) == (count, tried)


# Fan-out, in process


class Slow(amp.AMP):
    @Hello.responder
    def hello(self, sender: str) -> Deferred[dict[str, str]]:
        return Deferred()  # never answers


@pytest_twisted.ensureDeferred
async def test_callAll_reports_each_answer_and_timeout() -> None:
    registry = MemoryRegistry(reactor)
    ports = [
        await serve(registry, "w-1", Factory.forProtocol(lambda: Worker("w-1"))),
        await serve(registry, "w-2", Factory.forProtocol(lambda: Worker("w-2"))),
        await serve(registry, "w-slow", Factory.forProtocol(Slow)),
    ]
    group = newGroup(registry, "w-*", Factory.forProtocol(amp.AMP))
    group.startService()
    await eventually(lambda: len(group.connections) == 3)
    started = time.monotonic()
    results = await group.callAll(Hello, callTimeout=0.3, sender="test")
    assert time.monotonic() - started < 2
    byName = {record.name: outcome for record, outcome in results.items()}
    assert byName["w-1"]["answer"].startswith("w-1 (pid")  # type: ignore[index]
    assert byName["w-2"]["answer"].endswith("says hello to test")  # type: ignore[index]
    slow = byName["w-slow"]
    assert isinstance(slow, Failure) and slow.check(TimeoutError)
    await group.stopService()
    for port in ports:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_broadcast_writes_to_every_peer() -> None:
    registry = MemoryRegistry(reactor)
    servers = [Recording(Collector) for _ in range(3)]
    ports = [await serve(registry, f"r-{i}", server) for i, server in enumerate(servers)]
    group = newGroup(registry, "r-*", Factory.forProtocol(Protocol))
    assert group.broadcast(b"nobody") == 0
    group.startService()
    await eventually(lambda: len(group.connections) == 3)
    assert group.broadcast(b"hello all") == 3

    def received() -> list[bytes]:
        return [s.built[0].received for s in servers if s.built]  # type: ignore[attr-defined]

    await eventually(lambda: received() == [b"hello all"] * 3)
    await group.stopService()
    for port in ports:
        await port.stopListening()


# Worker processes on a real Redis


def instances(group: PeerGroup) -> set[str]:
    return {record.instance for record in group.connections}


@pytest_twisted.ensureDeferred
async def test_churn_converges_within_a_second(redis_server: RedisServer) -> None:
    """
    Five workers start and stop at random for 6 s; after each change the
    group's connections match the registry's live set within 1 s.
    """
    workers = Workers(redis_server.url, ttl=2)
    registry = newRegistry(redis_server.url + "?timeout=2")
    group = PeerGroup(registry, NS, "churn-*", Factory.forProtocol(amp.AMP), retryPolicy=fast)
    group.startService()
    slots: dict[int, tuple[ChildProcess, str]] = {}
    times: list[tuple[str, float]] = []

    async def converged(change: str, new: str | None = None) -> None:
        """
        A stop is timed from SIGTERM; a start from the record's creation in
        the worker, just before it registers (same machine, same clock).
        """
        expected = {instance for _, instance in slots.values()}
        took = await eventually(lambda: instances(group) == expected, timeout=1.0)
        live = {record.instance for record in await registry.find(NS, "churn-*")}
        assert live == expected == instances(group)
        for record in group.connections:
            if record.instance == new:
                took = time.time() - record.registered
                assert took < 1.0
        times.append((change, took))

    try:
        started = await gather([workers.start(f"churn-{i}") for i in range(5)])
        slots.update(enumerate(started))
        await converged("start 5")
        rng = random.Random(5)
        deadline = time.monotonic() + 6
        while time.monotonic() < deadline:
            i = rng.randrange(5)
            if i in slots:
                process, _ = slots.pop(i)
                process.signal("TERM")  # releases its name: left
                await converged(f"stop churn-{i}")
            else:
                slots[i] = await workers.start(f"churn-{i}")
                await converged(f"start churn-{i}", slots[i][1])
            await sleep(rng.uniform(0, 0.3))
    finally:
        await group.stopService()
        await workers.stopAll()
        await registry.close()
    print("\nconvergence times (s):", ", ".join(f"{c}: {t:.3f}" for c, t in times))
    print(f"changes: {len(times)}, max {max(t for _, t in times):.3f}s")
    assert len(times) >= 6


@pytest_twisted.ensureDeferred
async def test_killed_worker_leaves_on_timeout(redis_server: RedisServer) -> None:
    ttl = 1.0
    workers = Workers(redis_server.url, ttl=ttl)
    registry = newRegistry(redis_server.url + "?timeout=2")
    watcher = newRegistry(redis_server.url + "?timeout=2")
    events: list[PeerEvent] = []
    await watcher.watch(NS, "kill-*", events.append)
    group = PeerGroup(registry, NS, "kill-*", Factory.forProtocol(amp.AMP), retryPolicy=fast)
    removed: list[str] = []
    group.onPeerRemoved(lambda record, protocol: removed.append(record.instance))
    group.startService()
    try:
        (victim, victimId), (_, otherId) = await gather(
            [workers.start("kill-1"), workers.start("kill-2")]
        )
        await eventually(lambda: instances(group) == {victimId, otherId}, timeout=2)
        victim.signal("KILL")
        killed = time.monotonic()
        await eventually(lambda: instances(group) == {otherId}, timeout=1)
        gone = await eventually(
            lambda: victimId not in {r.instance for r in group.peers}, timeout=ttl + 1
        )
        print(f"\nkilled worker left the group {time.monotonic() - killed:.3f}s after SIGKILL")
        assert removed == [victimId]
        assert [(e.kind, e.record.instance) for e in events[-1:]] == [
            (EventKind.TIMEDOUT, victimId)
        ]
        assert gone <= ttl + 1
    finally:
        await group.stopService()
        await workers.stopAll()
        await registry.close()
        await watcher.close()


@pytest_twisted.ensureDeferred
async def test_callAll_with_one_failing_worker(redis_server: RedisServer) -> None:
    workers = Workers(redis_server.url, ttl=2)
    registry = newRegistry(redis_server.url + "?timeout=2")
    group = PeerGroup(registry, NS, "rpc-*", Factory.forProtocol(amp.AMP))
    group.startService()
    try:
        await gather(
            [workers.start("rpc-1"), workers.start("rpc-2"), workers.start("rpc-bad", "fail")]
        )
        await eventually(lambda: len(group.connections) == 3, timeout=2)
        results = await group.callAll(Hello, callTimeout=5, sender="test")
        byName = {record.name: outcome for record, outcome in results.items()}
        assert sorted(byName) == ["rpc-1", "rpc-2", "rpc-bad"]
        for name in ("rpc-1", "rpc-2"):
            assert byName[name]["answer"].startswith(f"{name} (pid")  # type: ignore[index]
        bad = byName["rpc-bad"]
        assert isinstance(bad, Failure) and bad.check(amp.UnknownRemoteError)
    finally:
        await group.stopService()
        await workers.stopAll()
        await registry.close()


# The example


def test_group_rpc_example(tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PYTHONPATH": str(REPO),
        "MASSE_REGISTRY": f"sqlite://{tmp_path}/registry.db",
        "MASSE_NAMESPACE": "dev",
    }
    background = Background(env)
    try:
        for name in ("worker-1", "worker-2", "worker-3"):
            server = background.start(sys.executable, "-m", "examples.group_rpc", "serve", name)
            readUntil(server, "is listening")
        out = background.call("-m", "examples.group_rpc", "call", "worker-*", "3")
    finally:
        background.stop()
    lines = out.splitlines()
    assert [line.split(":")[0] for line in lines] == ["worker-1", "worker-2", "worker-3"]
    assert all("says hello to pid" in line for line in lines), out
