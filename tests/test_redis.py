"""
The Redis registry against a real redis-server: cost, outages, restarts,
killed peers and garbage in the store.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, gatherResults
from twisted.logger import LogEvent, capturedLogs, formatEvent
from twisted.python.failure import Failure

from tests.helpers import (
    Events,
    RedisServer,
    assertNoErrors,
    clientCount,
    eventsAbout,
    eventually,
    newRegistry,
    readServerClock,
    record,
    sleep,
    subscribers,
)
from txmasse import RegistryUnavailable
from txmasse.registry.redis import RedisRegistry

ROOT = Path(__file__).parent.parent


@pytest.fixture
def registries(redis_server: RedisServer) -> Any:
    made: list[RedisRegistry] = []

    def make(url: str | None = None) -> RedisRegistry:
        registry = newRegistry(url or redis_server.url + "?timeout=2")
        made.append(registry)
        return registry  # type: ignore[no-any-return]

    yield make
    for registry in made:
        pytest_twisted.blockon(registry.close())


@pytest_twisted.ensureDeferred
async def test_lookup_cost_does_not_grow_with_peers(
    redis_server: RedisServer, registries: Any
) -> None:
    registry = registries(redis_server.url + "?timeout=10")
    await registry.putRecord(record("db"), 600)

    async def lookupCost(byScript: bool) -> dict[str, int]:
        if byScript:
            registry._serverClock.forget()  # as on a new connection: the script reads the clock
        else:
            await readServerClock(registry)
        before = redis_server.commandCalls()
        assert len(await registry.lookup("dev", "db")) == 1
        return redis_server.callsSince(before)

    alone = [await lookupCost(byScript=True), await lookupCost(byScript=False)]
    for batch in range(0, 9_999, 1_000):
        peers = [record(f"peer-{i}") for i in range(batch, min(batch + 1_000, 9_999))]
        await gatherResults([registry.putRecord(peer, 600) for peer in peers])
    assert redis_server.command("ZCARD", "masse:{dev}:names") == 10_000
    crowded = [await lookupCost(byScript=True), await lookupCost(byScript=False)]
    assert alone == crowded
    assert sum(alone[0].get(c, 0) for c in ("eval", "evalsha")) == 1
    assert alone[1] == {"hgetall": 1}  # the server's clock known: one plain command
    assert "keys" not in crowded[0] and "scan" not in crowded[0]


@pytest_twisted.ensureDeferred
async def test_find_reads_only_names_under_its_prefix(
    redis_server: RedisServer, registries: Any
) -> None:
    registry = registries(redis_server.url + "?timeout=10")
    await gatherResults([registry.putRecord(record(f"other-{i}"), 600) for i in range(1000)])
    await gatherResults([registry.putRecord(record(f"db-{i}"), 600) for i in range(3)])
    before = redis_server.commandCalls()
    assert len(await registry.find("dev", "db-*")) == 3
    cost = redis_server.callsSince(before)
    assert cost["hgetall"] == 3
    assert cost["zrangebylex"] == 1


@pytest_twisted.ensureDeferred
async def test_redis_restarted_empty(redis_server: RedisServer, registries: Any) -> None:
    peer, watcher = registries(), registries()
    leases = [await peer.register(record(f"db-{i}"), 3) for i in range(3)]
    events = Events()
    subscription = await watcher.watch("dev", "*", events)
    assert len(subscription.peers) == 3

    redis_server.restart()
    assert redis_server.command("DBSIZE") == 0
    restarted = time.monotonic()
    await eventually(lambda: redis_server.command("HLEN", "masse:{dev}:n:db-2") == 1)
    await eventually(
        lambda: all(redis_server.command("HLEN", f"masse:{{dev}}:n:db-{i}") for i in range(3))
    )
    recovered = time.monotonic() - restarted
    print(f"leases back {recovered:.3f}s after the restart")
    assert recovered < leases[0].interval, f"took {recovered:.2f}s"

    # The watcher's view matches the store again, without spurious events.
    found = await watcher.find("dev", "*")
    await sleep(subscription._grace + 0.5)
    assert {r.instance for r in subscription.peers} == {r.instance for r in found}
    assert events == []

    # and it keeps working
    await peer.register(record("db-new"), 3)
    await eventually(lambda: events.kinds() == [("joined", "db-new")])


@pytest_twisted.ensureDeferred
async def test_killed_peer_times_out(redis_server: RedisServer, registries: Any) -> None:
    watcher = registries()
    events = Events()
    await watcher.watch("dev", "victim", events)
    ttl = 1.0
    process = subprocess.Popen(
        [sys.executable, "-m", "tests.peer_process", redis_server.url, "dev", "victim", str(ttl)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    try:
        assert process.stdout is not None
        assert process.stdout.readline().startswith(b"registered")
        await eventually(lambda: events.kinds() == [("joined", "victim")])
        assert len(await watcher.lookup("dev", "victim")) == 1
    finally:
        process.kill()
        process.wait()
    killed = time.monotonic()
    await eventually(lambda: len(events) == 2, timeout=ttl + 3)
    detected = time.monotonic() - killed
    print(f"timedout {detected:.3f}s after SIGKILL (ttl {ttl}s)")
    assert events.kinds() == [("joined", "victim"), ("timedout", "victim")]
    assert detected <= ttl + 1, f"timedout after {detected:.2f}s"
    assert await watcher.lookup("dev", "victim") == []


@pytest_twisted.ensureDeferred
async def test_paused_redis_fails_calls_within_deadline(
    redis_server: RedisServer, registries: Any, logged: Sequence[LogEvent]
) -> None:
    registry = registries(redis_server.url + "?timeout=0.5")
    lease = await registry.register(record("db"), 1.5)
    redis_server.pause()
    try:
        calls = {
            "lookup": lambda: registry.lookup("dev", "db"),
            "find": lambda: registry.find("dev", "*"),
            "register": lambda: registry.register(record("web"), 5),
            "watch": lambda: registry.watch("dev", "*", print),
            "release": lambda: registry.removeRecord(record("x")),
        }
        for name, call in calls.items():
            started = time.monotonic()
            with pytest.raises(RegistryUnavailable) as caught:
                await call()
            elapsed = time.monotonic() - started
            assert elapsed < 0.5 + 0.4, f"{name} took {elapsed:.2f}s"
            assert redis_server.url in str(caught.value)
            assert "no answer within 0.5s" in str(caught.value)
        await eventually(lambda: eventsAbout(logged, "heartbeat failed"))  # meanwhile
    finally:
        redis_server.resume()
    # Heartbeats resume: the lease is still there, or written back.
    await eventually(lambda: eventsAbout(logged, "heartbeat works again"))
    await eventually(lambda: redis_server.command("HLEN", "masse:{dev}:n:db") == 1)
    await lease.refresh()
    assert [r.instance for r in await registry.lookup("dev", "db")] == [lease.record.instance]


@pytest_twisted.ensureDeferred
async def test_registration_without_an_answer_is_taken_back(
    redis_server: RedisServer, registries: Any
) -> None:
    """
    A registration that ran out of time, or that its caller cancelled, may
    still reach Redis: it is taken back, not left to time out unowned.
    """
    peer, watcher = registries(redis_server.url + "?timeout=0.3"), registries()
    events = Events()
    await watcher.watch("dev", "*", events)
    assert await peer.lookup("dev", "ghost") == []  # connected and ready
    redis_server.pause()
    try:
        with pytest.raises(RegistryUnavailable, match=r"no answer within 0\.3s"):
            await peer.register(record("ghost"), 5)
        cancelled = peer.register(record("ghost"), 5)
        cancelled.cancel()
        with pytest.raises(CancelledError):
            await cancelled
    finally:
        redis_server.resume()
    # Sent after both registrations on the same connection: runs after them,
    # and after the removals that take them back.
    assert await peer.lookup("dev", "ghost") == []
    assert redis_server.command("EXISTS", "masse:{dev}:n:ghost") == 0
    await eventually(lambda: len(events) == 4)
    assert events.kinds() == [("joined", "ghost"), ("left", "ghost")] * 2


@pytest_twisted.ensureDeferred
async def test_call_whose_connection_drops_runs_again(
    redis_server: RedisServer, registries: Any
) -> None:
    """
    A call sent on a connection that is then lost runs again on the next
    one, within the caller's deadline.
    """
    registry = registries(redis_server.url + "?timeout=10")
    lease = await registry.register(record("db"), 30)
    first = registry._readyCommands
    with capturedLogs() as events:
        redis_server.pause()  # the lookup is sent, and waits
        try:
            looking = registry.lookup("dev", "db")
            first.transport.abortConnection()
        finally:
            redis_server.resume()
        assert [r.instance for r in await looking] == [lease.record.instance]
    assert registry._readyCommands is not first
    assert any("running the call again" in formatEvent(e) for e in events)


@pytest_twisted.ensureDeferred
async def test_deadline_holds_while_a_call_waits_to_run_again(
    redis_server: RedisServer, registries: Any, logged: Sequence[LogEvent]
) -> None:
    """
    A call whose connection dropped waits for the next one, and its
    deadline still counts: it fails once, in time, and says why.
    """
    registry = registries(redis_server.url + "?timeout=0.5")
    await registry.lookup("dev", "db")  # connected and ready
    redis_server.pause()  # the next connection never gets ready
    try:
        looking = registry.lookup("dev", "db")
        registry._readyCommands.transport.abortConnection()
        outcomes: list[object] = []
        looking.addBoth(outcomes.append)
        await eventually(lambda: outcomes != [], timeout=3)
    finally:
        redis_server.resume()
    (outcome,) = outcomes
    assert isinstance(outcome, Failure) and outcome.check(RegistryUnavailable)
    assert "lookup of 'db' failed: no answer within 0.5s" in str(outcome.value)
    assert await registry.lookup("dev", "db") == []  # and the registry carries on
    # Answered after the failed call would have been run again: it did not
    # fire twice (which Twisted logs as an unhandled AlreadyCalledError).
    assertNoErrors(logged)


@pytest_twisted.ensureDeferred
async def test_dropped_connections_lose_nothing(redis_server: RedisServer, registries: Any) -> None:
    peer, watcher = registries(), registries()
    lease = await peer.register(record("db"), 2)
    events = Events()
    subscription = await watcher.watch("dev", "*", events)
    publishes = redis_server.commandCalls().get("publish", 0)
    clients = clientCount(redis_server)
    for kind in ("normal", "pubsub"):
        redis_server.command("CLIENT", "KILL", "TYPE", kind)
    # Both reconnect by themselves (the watcher resubscribes), as many as before.
    await eventually(lambda: clientCount(redis_server) == clients and subscribers(redis_server))
    assert [r.instance for r in await watcher.lookup("dev", "db")] == [lease.record.instance]
    assert redis_server.commandCalls().get("publish", 0) == publishes
    await peer.register(record("web"), 2)
    await eventually(lambda: events.kinds() == [("joined", "web")])
    assert {r.name for r in subscription.peers} == {"db", "web"}
    # Heard after anything the reconnects published: only web's joined.
    assert redis_server.commandCalls().get("publish", 0) == publishes + 1


@pytest_twisted.ensureDeferred
async def test_timeout_published_once_with_many_sweepers(
    redis_server: RedisServer, registries: Any
) -> None:
    peer = registries()
    watchers = [registries() for _ in range(3)]
    logs = [Events() for _ in watchers]
    for watcher, events in zip(watchers, logs, strict=True):
        await watcher.watch("dev", "*", events)
    lease = await peer.register(record("db"), 0.3)
    await eventually(lambda: all(len(events) == 1 for events in logs))
    publishes = redis_server.commandCalls()["publish"]
    lease.stop()
    await eventually(lambda: all(len(events) == 2 for events in logs))
    await sleep(0.5)
    assert redis_server.commandCalls()["publish"] - publishes == 1
    for events in logs:
        assert events.kinds() == [("joined", "db"), ("timedout", "db")]


@pytest_twisted.ensureDeferred
async def test_garbage_in_the_store_is_skipped(redis_server: RedisServer, registries: Any) -> None:
    registry = registries()
    events = Events()
    await registry.watch("dev", "*", events)
    good = record("db")
    await registry.register(good, 5)
    intruder = record("db", namespace="prod")
    far = int(time.time() * 1000) + 600_000
    for instance, value in [
        ("junk", b"\xff\xfenot json"),
        ("intruder", intruder.toJSON()),
        ("huge", b"[" * 100_000),
    ]:
        redis_server.command("HSET", "masse:{dev}:n:db", instance, value)
        redis_server.command("ZADD", "masse:{dev}:exp", far, f"db/{instance}")
    redis_server.command("PUBLISH", "masse:{dev}:events", b"\x00garbage")
    redis_server.command("PUBLISH", "masse:{dev}:events", b"7 joined " + intruder.toJSON())
    assert await registry.lookup("dev", "db") == [good]
    assert await registry.find("dev", "d*") == [good]
    await registry.register(record("web"), 5)
    await eventually(lambda: events.kinds() == [("joined", "db"), ("joined", "web")])


@pytest_twisted.ensureDeferred
async def test_unreachable_registry_error_hides_password() -> None:
    registry = newRegistry("redis://alice:s3cret@127.0.0.1:1/0?timeout=1")
    try:
        with pytest.raises(RegistryUnavailable) as caught:
            await registry.lookup("dev", "db")
    finally:
        await registry.close()
    message = str(caught.value)
    assert "s3cret" not in message and "s3cret" not in repr(registry)
    assert "redis://alice:***@127.0.0.1:1/0" in message
    assert "Connection refused" in message
    assert message.endswith("set MASSE_REGISTRY=sqlite:///path/to/registry.db")


@pytest_twisted.ensureDeferred
async def test_wrong_password_is_a_clear_error(tmp_path: Path) -> None:
    server = RedisServer(tmp_path, password="right")
    server.start()
    registry = newRegistry(f"redis://:wrong@127.0.0.1:{server.port}/0?timeout=0.5")
    try:
        with pytest.raises(RegistryUnavailable) as caught:
            await registry.lookup("dev", "db")
        assert "could not auth" in str(caught.value)
        assert "wrong" not in str(caught.value).replace("WRONGPASS", "")
        good = newRegistry(f"redis://:right@127.0.0.1:{server.port}/0")
        assert await good.lookup("dev", "db") == []
        await good.close()
    finally:
        await registry.close()
        server.stop()
