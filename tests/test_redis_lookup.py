"""
The Redis registry's lookup as one plain C{HGETALL}, and everything that
sends it to the C{LOOKUP} script instead: a server clock it has not heard
(or not lately), a lease at or past its expiry, and whatever the hash holds
that is not a record as txmasse writes it. Each answer is the one the script
gives; which of the two answered is read from Redis's own command counts
(so records are put without leases: a lease's sweeps would count too).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.logger import capturedLogs

from tests.helpers import (
    Events,
    RedisServer,
    assertNoErrors,
    eventsAbout,
    eventually,
    newRegistry,
    readServerClock,
    record,
    serverMs,
    storeEntry,
    withoutExpiry,
)
from txmasse.errors import RegistryUnavailable
from txmasse.records import PeerRecord
from txmasse.registry import redis_scripts as scripts
from txmasse.registry.server_clock import FRESH_SECONDS, MARGIN_MS, ServerClock

FAR = 600_000  # ms: a lease that is nowhere near its end


async def synced(server: RedisServer) -> Any:
    registry = newRegistry(server.url + "?timeout=2")
    await readServerClock(registry)
    return registry


async def lookedUp(server: RedisServer, registry: Any, name: str) -> tuple[list[Any], str]:
    """
    The lookup's answer, and which answered it: C{"hgetall"} or C{"script"}.
    """
    before = server.commandCalls()
    records = await registry.lookup("dev", name)
    calls = server.callsSince(before)
    return records, "script" if calls.get("evalsha") else "hgetall"


async def answersByScriptThenHGETALL(
    server: RedisServer, registry: Any, db: PeerRecord
) -> None:
    """
    With no reading of the server's clock yet, a lookup of C{db}'s live
    lease is answered by the script; once a lookup has read the clock (the
    first may have been too slow to keep it), by C{HGETALL}.
    """
    assert await lookedUp(server, registry, "db") == ([db], "script")
    await readServerClock(registry)
    assert await lookedUp(server, registry, "db") == ([db], "hgetall")


@pytest_twisted.ensureDeferred
async def test_a_live_lease_is_read_with_one_command(redis_server: RedisServer) -> None:
    registry = await synced(redis_server)
    try:
        db = record("db")
        await registry.putRecord(db, 30)
        before = redis_server.commandCalls()
        assert await registry.lookup("dev", "db") == [db]
        assert redis_server.callsSince(before) == {"hgetall": 1}
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_without_a_reading_of_the_clock_the_script_answers(
    redis_server: RedisServer,
) -> None:
    registry = newRegistry(redis_server.url + "?timeout=2")
    try:
        db = record("db")
        await registry.putRecord(db, 30)
        await answersByScriptThenHGETALL(redis_server, registry, db)
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_an_expired_lease_nobody_swept_is_not_served(redis_server: RedisServer) -> None:
    """
    With no process sweeping the namespace, an expired record stays in the
    hash: the lookup must not serve it, and the script it hands over to
    times it out.
    """
    registry = await synced(redis_server)
    try:
        gone = record("db")
        past = serverMs(redis_server) - 1000
        storeEntry(redis_server, "db", gone.instance, b"@%d %s" % (past, gone.toJSON()), past)
        assert await lookedUp(redis_server, registry, "db") == ([], "script")
        assert redis_server.command("HGETALL", "masse:{dev}:n:db") == []
        assert redis_server.command("HGET", "masse:{dev}:gone", gone.instance) == b"timedout"
    finally:
        await registry.close()


@pytest.mark.parametrize(
    "stored",
    [
        "near",  # the hash's expiry within the clock's margin of now
        "older",  # as txmasse stored records before their expiry was kept beside them
        "bad expiry",
    ],
)
@pytest_twisted.ensureDeferred
async def test_what_it_cannot_decide_on_goes_to_the_script(
    redis_server: RedisServer, stored: str
) -> None:
    """
    The script decides on its own clock and the expiries' sorted set, which
    here says the lease is live: so it is served.
    """
    registry = await synced(redis_server)
    db = record("db")
    value = {
        "near": b"@%d %s" % (serverMs(redis_server) + MARGIN_MS // 2, db.toJSON()),
        "older": db.toJSON(),
        "bad expiry": b"@12x4 " + db.toJSON(),
    }[stored]
    storeEntry(redis_server, "db", db.instance, value, serverMs(redis_server) + FAR)
    try:
        with capturedLogs() as logs:
            assert await lookedUp(redis_server, registry, "db") == ([db], "script")
    finally:
        await registry.close()
    assertNoErrors(logs)


@pytest_twisted.ensureDeferred
async def test_a_key_that_is_not_a_hash_goes_to_the_script(redis_server: RedisServer) -> None:
    registry = await synced(redis_server)
    redis_server.command("SET", "masse:{dev}:n:zzz", "a string, not a hash")
    try:
        with capturedLogs() as logs:
            assert await lookedUp(redis_server, registry, "zzz") == ([], "script")
    finally:
        await registry.close()
    assert eventsAbout(logs, "is not a hash of records")
    assertNoErrors(logs)


@pytest_twisted.ensureDeferred
async def test_a_misplaced_record_is_skipped_by_the_one_command(
    redis_server: RedisServer,
) -> None:
    registry = await synced(redis_server)
    elsewhere = record("web")
    far = serverMs(redis_server) + FAR
    storeEntry(redis_server, "db", "i1", b"@%d %s" % (far, elsewhere.toJSON()), far)
    try:
        with capturedLogs() as logs:
            assert await lookedUp(redis_server, registry, "db") == ([], "hgetall")
    finally:
        await registry.close()
    assert len(eventsAbout(logs, "skipping a bad record")) == 1
    assertNoErrors(logs)


@pytest_twisted.ensureDeferred
async def test_a_clock_read_ahead_of_the_server_only_costs_the_script(
    redis_server: RedisServer,
) -> None:
    """
    Were the reading an hour ahead, every lease would look past its expiry:
    none is hidden for it, the script answers.
    """
    registry = await synced(redis_server)
    try:
        db = record("db")
        await registry.putRecord(db, 30)
        registry._serverClock._offset += 3_600_000
        assert await lookedUp(redis_server, registry, "db") == ([db], "script")
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_a_new_connection_reads_the_clock_again(redis_server: RedisServer) -> None:
    registry = await synced(redis_server)
    try:
        db = record("db")
        await registry.putRecord(db, 30)
        redis_server.command("CLIENT", "KILL", "TYPE", "normal")
        await answersByScriptThenHGETALL(redis_server, registry, db)
    finally:
        await registry.close()


class FakeClocks:
    """
    A monotonic clock and a wall clock, which advance together unless told.
    """

    def __init__(self) -> None:
        self.now = 100.0
        self.wallNow = 1_800_000_000.0

    def monotonic(self) -> float:
        return self.now

    def wall(self) -> float:
        return self.wallNow

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self.wallNow += seconds

    def clock(self) -> ServerClock:
        return ServerClock(self.monotonic, self.wall)


def test_the_clock_is_read_from_a_reply_and_its_round_trip() -> None:
    clocks = FakeClocks()
    clock = clocks.clock()
    assert clock.latestNow() is None
    sent = clock.now()
    clocks.advance(0.004)  # a round trip of 4 ms: the reply was read 2 ms either way
    clock.heard(5_000_000, sent)
    assert clock.latestNow() == pytest.approx(5_000_000 + 2 + 2 + MARGIN_MS)
    clocks.advance(1.0)
    assert clock.latestNow() == pytest.approx(5_001_000 + 2 + 2 + MARGIN_MS)


def test_a_reading_grows_stale_and_a_new_connection_forgets_it() -> None:
    clocks = FakeClocks()
    clock = clocks.clock()
    clock.heard(5_000_000, clock.now())
    clocks.advance(FRESH_SECONDS)
    assert clock.latestNow() is not None
    clocks.advance(0.001)
    assert clock.latestNow() is None
    clock.heard(6_000_000, clock.now())
    clock.forget()
    assert clock.latestNow() is None


def test_a_slow_reply_or_a_clock_gone_back_is_not_a_reading() -> None:
    clocks = FakeClocks()
    clock = clocks.clock()
    sent = clock.now()
    clocks.advance(0.5)  # half a second of round trip: too vague
    clock.heard(5_000_000, sent)
    assert clock.latestNow() is None
    sent = clock.now()
    clocks.now -= 0.001
    clock.heard(5_000_000, sent)
    assert clock.latestNow() is None


def test_a_machine_that_slept_trusts_no_reading_from_before() -> None:
    """
    The monotonic clock stands still while the machine sleeps; the wall
    clock does not: the two disagreeing, the reading is not used.
    """
    clocks = FakeClocks()
    clock = clocks.clock()
    clock.heard(5_000_000, clock.now())
    clocks.advance(1.0)
    assert clock.latestNow() is not None
    clocks.wallNow += 3.0  # asleep for 3 s
    assert clock.latestNow() is None


@pytest_twisted.ensureDeferred
async def test_a_closed_registry_answers_no_lookup(redis_server: RedisServer) -> None:
    registry = await synced(redis_server)
    await registry.close()
    with pytest.raises(RegistryUnavailable, match="is closed"):
        await registry.lookup("dev", "db")


@pytest_twisted.ensureDeferred
async def test_an_event_from_an_earlier_txmasse_is_understood(redis_server: RedisServer) -> None:
    """
    An earlier version's script, dropping a record this one stored,
    announces it with the expiry in front: the event is read all the same.
    """
    registry = newRegistry(redis_server.url + "?timeout=2")
    events = Events()
    try:
        gone = record("db")
        await registry.watch("dev", "db", events)
        value = b"@%d %s" % (serverMs(redis_server) + FAR, gone.toJSON())
        storeEntry(redis_server, "db", gone.instance, value, serverMs(redis_server) + FAR)
        redis_server.command("PUBLISH", "masse:{dev}:events", b"1 joined " + value)
        await eventually(lambda: events.kinds() == [("joined", "db")], timeout=3)
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_a_heartbeat_rewrites_the_expiry_in_the_hash_only_as_it_falls_behind(
    redis_server: RedisServer,
) -> None:
    """
    The hash's expiry may lag the lease's (read as it is, it only sends a
    lookup to the script sooner), never pass it.
    """
    registry = newRegistry(redis_server.url + "?timeout=2")
    db = record("db")
    try:
        await registry.putRecord(db, 600)

        def kept() -> int:
            value = redis_server.command("HGET", "masse:{dev}:n:db", db.instance)
            return int(value.partition(b" ")[0][1:])

        def lease() -> int:
            return int(redis_server.command("ZSCORE", "masse:{dev}:exp", f"db/{db.instance}"))

        def heartbeat(ttl: int) -> None:
            assert redis_server.command(
                "EVALSHA", scripts.EXTEND.sha, 0, "masse:{dev}:", ttl, 2, "db", db.instance
            ) == []

        first = kept()
        assert first == lease()
        heartbeat(700_000)  # still more than half a ttl ahead: left as it was
        assert kept() == first < lease()
        heartbeat(1_300_000)  # less than half of this ttl ahead: rewritten
        assert kept() == lease() > first + 600_000
        longest = kept()
        heartbeat(100_000)  # a shorter ttl: never later than the lease
        assert kept() == lease() < longest
        assert withoutExpiry(
            redis_server.command("HGET", "masse:{dev}:n:db", db.instance)
        ) == db.toJSON()
    finally:
        await registry.close()
