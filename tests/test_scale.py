"""
Cost at scale, as behaviour (the speed figures are in bench/leases.py):
heartbeats that only extend and share one timer, tombstones that stay
bounded whatever the churn, and finds that never hold Redis for long.
"""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest_twisted
from twisted.internet.defer import Deferred, DeferredList, succeed
from twisted.internet.task import Clock

from tests.helpers import Events, RedisServer, eventually, newRegistry, record
from txmasse.records import Glob, PeerRecord
from txmasse.registry import redis_scripts
from txmasse.registry.base import Lease
from txmasse.registry.heartbeats import CHUNK
from txmasse.registry.interface import EventKind, ILease
from txmasse.registry.memory import MemoryRegistry

EXP = "masse:{dev}:exp"


def test_one_timer_for_every_lease() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock)
    puts: list[str] = []
    put = registry.putRecord

    def counting(record: PeerRecord, ttl: float) -> Deferred[None]:
        puts.append(record.name)
        return put(record, ttl)

    registry.putRecord = counting  # type: ignore[method-assign]
    leases = [registry.register(record(f"p{i:03d}"), 3.0) for i in range(300)]
    assert len(puts) == 300
    assert len(clock.getDelayedCalls()) <= 2  # the heartbeat wheel, the memory sweep
    clock.advance(1.0)
    assert len(puts) == 600  # one heartbeat each, all due together
    assert len(clock.getDelayedCalls()) <= 2
    for d in leases:
        d.addCallback(lambda lease: lease.stop())
    assert not [c for c in clock.getDelayedCalls() if "HeartbeatWheel" in repr(c)]


class _PutOnlyStore:
    """
    A store from before the contract had extendLeases.
    """

    def __init__(self) -> None:
        self.puts: list[str] = []

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        self.puts.append(record.name)
        return succeed(None)

    def forgetLease(self, lease: Lease) -> None:
        pass


def test_a_store_without_extend_leases_gets_a_put_each() -> None:
    clock, store = Clock(), _PutOnlyStore()
    leases = [Lease(store, record(f"p{i}"), 3.0, clock) for i in range(3)]  # type: ignore[arg-type]
    for lease in leases:
        lease.start()
    clock.advance(1.0)
    assert store.puts == ["p0", "p1", "p2"]
    assert all(lease.beating and not lease._failing for lease in leases)


def _statistic(server: RedisServer, name: str) -> int:
    for line in server.command("INFO", "stats").decode().splitlines():
        if line.startswith(name + ":"):
            return int(line.partition(":")[2])
    raise AssertionError(f"no {name} in INFO stats")


def _scores(server: RedisServer) -> list[float]:
    reply = server.command("ZRANGE", EXP, 0, -1, "WITHSCORES")
    return [float(score) for score in reply[1::2]]


async def _registerMany(registry: Any, count: int, ttl: float, name: str = "p") -> list[ILease]:
    leases: list[ILease] = []
    for start in range(0, count, 500):
        names = [f"{name}{i:05d}" for i in range(start, min(start + 500, count))]
        batch = [registry.register(record(n), ttl) for n in names]
        results = await DeferredList(batch, fireOnOneErrback=True)
        leases += [lease for _, lease in results]
    return leases


@pytest_twisted.ensureDeferred
async def test_heartbeats_extend_leases_without_sending_records(redis_server: RedisServer) -> None:
    registry = newRegistry(redis_server.url)
    try:
        count = 2 * CHUNK + 10
        await _registerMany(registry, count, 0.9)
        first = min(_scores(redis_server))
        redis_server.command("CONFIG", "RESETSTAT")
        # Wait (real time: the leases' own heartbeats) until each was renewed twice.
        await eventually(lambda: min(_scores(redis_server)) > first + 500, timeout=5)
        calls = redis_server.commandCalls()
        received = _statistic(redis_server, "total_net_input_bytes")
        assert len(_scores(redis_server)) == count
        extended = calls["zscore"]  # one for each lease at each heartbeat
        assert received / extended < 120, (received, extended)  # a record alone is 180 bytes
        scripts = calls.get("evalsha", 0) + calls.get("eval", 0)
        sweeps = calls.get("zrangebyscore", 0) // 2
        # Two rounds of heartbeats in chunks of up to CHUNK leases, not a call per lease.
        assert scripts - sweeps <= count // 10, calls
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_a_lost_record_is_written_back_by_its_heartbeat(redis_server: RedisServer) -> None:
    registry = newRegistry(redis_server.url)
    try:
        leases = await _registerMany(registry, 20, 0.9)
        redis_server.command("DEL", "masse:{dev}:n:p00003")
        redis_server.command("ZREM", EXP, f"p00007/{leases[7].record.instance}")
        await eventually(lambda: len(_scores(redis_server)) == 20, timeout=3)
        assert [r.name for r in await registry.lookup("dev", "p00003")] == ["p00003"]
        assert [r.name for r in await registry.lookup("dev", "p00007")] == ["p00007"]
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_tombstones_are_capped_oldest_first(redis_server: RedisServer) -> None:
    cap = redis_scripts.GONE_CAP
    registry = newRegistry(redis_server.url)
    try:
        sizes, first = [], None
        for name, count in (("p", cap + 500), ("q", 2000)):
            leases = await _registerMany(registry, count, 60, name)
            first = first or leases[0]
            for start in range(0, len(leases), 500):
                await DeferredList([lease.release() for lease in leases[start : start + 500]])
            assert int(redis_server.command("HLEN", "masse:{dev}:gone")) == cap
            assert int(redis_server.command("ZCARD", "masse:{dev}:gonet")) == cap
            keys = sorted(k.decode() for k in redis_server.command("KEYS", "masse:*"))
            assert keys == ["masse:{dev}:gone", "masse:{dev}:gonet", "masse:{dev}:seq"]
            sizes.append(
                sum(int(redis_server.command("MEMORY", "USAGE", k, "SAMPLES", "0")) for k in keys)
            )
        # Bytes: bounded by the cap, not by the churn (2,000 more would be 19% more).
        assert sizes[1] <= sizes[0] * 1.02, sizes

        # Catch-up after a reconnect still tells left from timedout for recent
        # ones: a watcher misses their events (dropped on the way), then its
        # pub/sub connection is killed and it catches up from the store.
        await registry.register(record("keeper"), 60)  # keeps this registry sweeping
        left = await registry.register(record("left"), 60)
        late = await registry.register(record("late"), 0.3)
        gone = "masse:{dev}:gone"
        watcher = newRegistry(redis_server.url)
        try:
            events = Events()
            await watcher.watch("dev", "l*", events)
            hear = watcher._received
            watcher._received = lambda channel, message: None  # messages lost
            late.stop()
            await left.release()
            timedOut = lambda: redis_server.command("HGET", gone, late.record.instance)  # noqa: E731
            await eventually(lambda: timedOut() == b"timedout", timeout=3)
            watcher._received = hear
            redis_server.command("CLIENT", "KILL", "TYPE", "pubsub")
            await eventually(lambda: len(events) == 2, timeout=5)
            assert sorted(events.kinds()) == [("left", "left"), ("timedout", "late")]
        finally:
            await watcher.close()
        assert first is not None
        known = [left.record.instance, late.record.instance, first.record.instance]
        snapshot = await registry.snapshot("dev", Glob("*"), known)
        assert snapshot.gone == {
            left.record.instance: EventKind.LEFT,
            late.record.instance: EventKind.TIMEDOUT,
        }  # the oldest tombstone was evicted: that one is up to the watcher's grace
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_sqlite_tombstones_are_capped(tmp_path: Path) -> None:
    path = tmp_path / "registry.db"
    registry = newRegistry(f"sqlite:///{path}?timeout=2")
    try:
        registry._db.keepGone = 3
        leases = [await registry.register(record(f"s{i}"), 60) for i in range(8)]
        for lease in leases:
            await lease.release()
        registry._db.prune()
        with sqlite3.connect(path) as c:
            kept = [row[0] for row in c.execute("SELECT instance FROM masse_gone ORDER BY at")]
        assert kept == [lease.record.instance for lease in leases[-3:]]
        snapshot = await registry.snapshot("dev", Glob("*"), [leases[-1].record.instance])
        assert snapshot.gone == {leases[-1].record.instance: EventKind.LEFT}
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_find_without_a_literal_prefix_goes_in_short_calls(
    redis_server: RedisServer,
) -> None:
    count = 3 * redis_scripts.SCAN_CHUNK + 7
    registry = newRegistry(redis_server.url)
    try:
        await _registerMany(registry, count, 60)
        redis_server.command("CONFIG", "SET", "slowlog-log-slower-than", "0")
        redis_server.command("CONFIG", "SET", "slowlog-max-len", "10000")
        for pattern, expected in (("?00005", 1), ("*", count), ("p0000*", 10)):
            redis_server.command("SLOWLOG", "RESET")
            found = await registry.find("dev", pattern)
            assert len(found) == expected
            assert len({r.instance for r in found}) == expected
            entries = redis_server.command("SLOWLOG", "GET", "-1")
            scripts = [e for e in entries if e[3][0].lower() == b"evalsha"]
            if pattern == "p0000*":
                assert len(scripts) == 1  # a literal prefix reads only its own names
            else:
                # bounded chunks: never one call over every name
                assert len(scripts) >= count // redis_scripts.SCAN_CHUNK, pattern
        statuses = await registry.leases("dev", "*")
        assert len(statuses) == count
    finally:
        await registry.close()
