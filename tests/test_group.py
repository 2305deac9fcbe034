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
from twisted.logger import LogEvent
from twisted.protocols import amp
from twisted.python.failure import Failure

from examples.group_rpc import Hello, Worker
from tests.endpoint_helpers import ChildProcess, Collector, Echo, Recording
from tests.helpers import (
    REPO,
    Background,
    RedisServer,
    Workers,
    eventually,
    freePort,
    gather,
    newRegistry,
    readUntil,
    sleep,
)
from txmasse import MasseListeningPort, MasseServerEndpoint, PeerGroup, PeerRecord
from txmasse.registry._base import localInstances
from txmasse.registry.interface import EventKind, PeerEvent
from txmasse.registry.memory import MemoryRegistry

NS = "t"


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
async def test_reconnects_with_backoff_while_registered() -> None:
    """
    A dropped connection is retried on the policy's schedule (0, 1, 2...)
    while the peer is registered, and no longer once it has left.
    """
    registry = MemoryRegistry(reactor)
    server = Recording(Echo)
    port = await serve(registry, "a", server)
    attempts: list[int] = []

    def policy(attempt: int) -> float:
        attempts.append(attempt)
        return 0.05

    group = newGroup(registry, "a", Factory.forProtocol(Collector), retryPolicy=policy)
    seen = Seen(group)
    group.startService()
    await eventually(lambda: len(group.connections) == 1)
    first = next(iter(group.connections.values()))
    server.built[-1].transport.loseConnection()  # type: ignore[union-attr]
    await eventually(lambda: len(server.built) == 2 and len(group.connections) == 1)
    assert next(iter(group.connections.values())) is not first
    assert attempts == [0] and seen.calls == [("added", "a"), ("removed", "a"), ("added", "a")]

    # Unreachable but registered: retried with growing attempt numbers.
    await port.port.stopListening()  # type: ignore[misc]
    server.built[-1].transport.loseConnection()  # type: ignore[union-attr]
    await eventually(lambda: attempts[-4:] == [0, 1, 2, 3] and len(attempts) == 5)
    assert group.connections == {}
    await port.lease.release()
    await eventually(lambda: group.peers == [])
    count = len(attempts)
    await sleep(0.2)
    assert len(attempts) == count
    await group.stopService()


@pytest_twisted.ensureDeferred
async def test_update_with_new_endpoints_reconnects() -> None:
    registry = MemoryRegistry(reactor)
    one, two = Recording(Echo), Recording(Echo)
    port1 = await serve(registry, "a", one)
    port2 = await serve(registry, "other", two)
    group = newGroup(registry, "a", Factory.forProtocol(Collector))
    seen = Seen(group)
    group.startService()
    await eventually(lambda: len(one.built) == 1 and len(group.connections) == 1)
    lease = port1.lease
    await lease.update(attrs.evolve(lease.record, metadata={"v": "2"}))
    await sleep(0.1)
    (record,) = group.connections
    assert record.metadata == {"v": "2"} and len(one.built) == 1  # no reconnect
    await lease.update(attrs.evolve(lease.record, endpoints=port2.record.endpoints))
    await eventually(lambda: len(two.built) == 1 and len(group.connections) == 1)
    assert seen.calls == [("added", "a"), ("removed", "a"), ("added", "a")]
    await group.stopService()
    await port1.stopListening()
    await port2.stopListening()


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


@pytest_twisted.ensureDeferred
async def test_stop_closes_connections_and_cancels_retries() -> None:
    registry = MemoryRegistry(reactor)
    server = Recording(Echo)
    port = await serve(registry, "a-up", server)
    dead = PeerRecord(NS, "a-down", [f"tcp:host=127.0.0.1:port={freePort()}"])
    lease = await registry.register(dead, ttl=5)
    attempts: list[int] = []

    def policy(attempt: int) -> float:
        attempts.append(attempt)
        return 0.05

    group = newGroup(registry, "a-*", Factory.forProtocol(Collector), retryPolicy=policy)
    group.startService()
    await eventually(lambda: len(group.connections) == 1 and len(attempts) >= 2)
    (protocol,) = group.connections.values()
    assert isinstance(protocol, Collector)
    await group.stopService()
    assert protocol.lost.called and group.connections == {} and group.peers == []
    count = len(attempts)
    await sleep(0.2)
    assert len(attempts) == count
    await lease.release()
    await port.stopListening()


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
