"""
Garbage written into the Redis registry's keys by someone else: an event
counter that is not a count, keys of the wrong type, records stored where
they do not belong, event numbers Redis could never have written, and
script replies that are not what the scripts return. Each is skipped or
repaired with a logged warning, or fails the call with a clear error; good
records keep being served and events keep flowing.
"""

from __future__ import annotations

import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred, succeed
from twisted.logger import capturedLogs

from tests.helpers import (
    Events,
    RedisServer,
    aclServer,
    assertNoErrors,
    eventsAbout,
    eventually,
    masseURL,
    newRegistry,
    record,
    storeEntry,
)
from txmasse.errors import RegistryUnavailable

SEQ = "masse:{dev}:seq"


@pytest.mark.parametrize(
    "garbage",
    [
        ("SET", SEQ, "garbage"),
        ("SET", SEQ, "-5"),
        ("SET", SEQ, "0005"),
        ("SET", SEQ, "9223372036854775807"),  # the next INCR would overflow
        ("HSET", SEQ, "a", "b"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_garbage_counter_starts_again_from_one(
    redis_server: RedisServer, garbage: tuple[str, ...]
) -> None:
    registry = newRegistry(redis_server.url + "?timeout=2")
    events = Events()
    try:
        with capturedLogs() as logs:
            db = await registry.register(record("db"), 5)
            redis_server.command("DEL", SEQ)
            redis_server.command(*garbage)
            await registry.watch("dev", "*", events)
            assert await registry.find("dev", "*") == [db.record]
            assert await registry.lookup("dev", "db") == [db.record]
            web = await registry.register(record("web"), 5)
            await eventually(lambda: events.kinds() == [("joined", "web")], timeout=3)
            assert redis_server.command("GET", SEQ) == b"1"
            await web.release()
            await eventually(lambda: events.kinds()[-1:] == [("left", "web")], timeout=3)
            assert redis_server.command("GET", SEQ) == b"2"
    finally:
        await registry.close()
    if garbage[2] != "9223372036854775807":  # a count, if the last one
        assert eventsAbout(logs, "bad event counter"), "a garbage counter read without a warning"
    assertNoErrors(logs)


@pytest_twisted.ensureDeferred
async def test_garbage_counter_under_an_acl_without_set(tmp_path: Path) -> None:
    """
    The least-privileged ACL user may not reset the counter: registrations
    still work, and their events still reach a watcher catching up.
    """
    server = aclServer(tmp_path)
    url = masseURL(server) + "?timeout=2"
    registry = newRegistry(url)
    events = Events()
    try:
        with capturedLogs() as logs:
            db = await registry.register(record("db"), 5)
            server.command("SET", SEQ, "garbage")
            await registry.watch("dev", "*", events)
            web = await registry.register(record("web"), 5)
            await eventually(lambda: events.kinds() == [("joined", "web")], timeout=3)
            assert sorted(r.name for r in await registry.find("dev", "*")) == ["db", "web"]
            assert await registry.lookup("dev", "db") == [db.record]
            await web.release()
            await eventually(lambda: events.kinds()[-1:] == [("left", "web")], timeout=3)
    finally:
        await registry.close()
        server.stop()
    assertNoErrors(logs)


@pytest_twisted.ensureDeferred
async def test_a_name_whose_key_is_not_a_hash(redis_server: RedisServer) -> None:
    """
    Lookup of the name finds nothing, with a warning; the rest of the
    namespace is served, leases time out, and registering under the name
    fails with a clear error.
    """
    peer, watcher = (
        newRegistry(redis_server.url + "?timeout=2"),
        newRegistry(redis_server.url + "?timeout=2"),
    )
    events = Events()
    try:
        with capturedLogs() as logs:
            db = await peer.register(record("db"), 5)
            redis_server.command("SET", "masse:{dev}:n:zzz", "a string, not a hash")
            redis_server.command("ZADD", "masse:{dev}:names", 0, "zzz")
            past = int(time.time() * 1000) - 1000
            redis_server.command("ZADD", "masse:{dev}:exp", past, "zzz/i1")  # due: swept
            assert await watcher.lookup("dev", "zzz") == []
            assert eventsAbout(logs, "is not a hash of records")
            assert await watcher.find("dev", "*") == [db.record]
            assert [s.record for s in await watcher.leases("dev", "*")] == [db.record]
            await watcher.watch("dev", "*", events)
            short = await peer.register(record("web"), 0.3)
            await eventually(lambda: ("joined", "web") in events.kinds(), timeout=3)
            short.stop()  # times out: the sweep gets past the bad key
            await eventually(lambda: ("timedout", "web") in events.kinds(), timeout=3)
            with pytest.raises(RegistryUnavailable, match="zzz is not a hash of records"):
                await peer.register(record("zzz"), 5)
    finally:
        await peer.close()
        await watcher.close()
    assert redis_server.command("GET", "masse:{dev}:n:zzz") == b"a string, not a hash"
    assertNoErrors(logs)


@pytest_twisted.ensureDeferred
async def test_misplaced_records_are_skipped_by_leases(redis_server: RedisServer) -> None:
    registry = newRegistry(redis_server.url + "?timeout=2")
    try:
        with capturedLogs() as logs:
            good = await registry.register(record("db"), 5)
            far = int(time.time() * 1000) + 600_000
            storeEntry(redis_server, "dz", "i1", record("db").toJSON(), far)  # misplaced
            storeEntry(redis_server, "db", "i2", record("db").toJSON(), far)  # a stolen id
            assert [s.record for s in await registry.leases("dev", "d*")] == [good.record]
            assert await registry.lookup("dev", "dz") == []
    finally:
        await registry.close()
    assert len(eventsAbout(logs, "skipping a bad record")) == 3
    assertNoErrors(logs)


@pytest_twisted.ensureDeferred
async def test_event_numbers_past_what_redis_counts_are_skipped(
    redis_server: RedisServer,
) -> None:
    registry = newRegistry(redis_server.url + "?timeout=2")
    events = Events()
    try:
        with capturedLogs() as logs:
            await registry.watch("dev", "*", events)
            far = record("far")
            data = far.toJSON()
            # In the store, as a registration leaves it: the event is checked against it.
            redis_server.command("HSET", "masse:{dev}:n:far", far.instance, data)
            redis_server.command("ZADD", "masse:{dev}:exp", 2**52, f"far/{far.instance}")
            for number in [b"9223372036854775808", b"1" * 20, b"\xd9\xa1", b"-1", b"1.5"]:
                redis_server.command("PUBLISH", "masse:{dev}:events", number + b" joined " + data)
            redis_server.command(
                "PUBLISH", "masse:{dev}:events", b"9223372036854775807 joined " + data
            )
            await eventually(lambda: events.kinds() == [("joined", "far")], timeout=3)
    finally:
        await registry.close()
    assert len(eventsAbout(logs, "is not an event number")) == 5
    assertNoErrors(logs)


@pytest.mark.parametrize(
    "reply",
    [
        None,
        b"junk",
        [],
        [b"1"],
        [0, 2, b"1:2:dbi1{}"],  # a record missing
        [0, 0, b"extra"],
        [-1, 0],
        [1, 7, 0, b"x"],  # a bad name that is not a string
    ],
)
@pytest.mark.parametrize("call", ["lookup", "find", "leases", "sweep"])
@pytest_twisted.ensureDeferred
async def test_malformed_replies_are_a_clear_error(
    redis_server: RedisServer, call: str, reply: object
) -> None:
    registry = newRegistry(redis_server.url + "?timeout=2")

    def malformed(what: str, script: object, *args: object) -> Deferred[Any]:
        if call == "find" and isinstance(reply, list):
            return succeed([None, *reply])  # after the event counter
        if call == "lookup" and isinstance(reply, list):
            return succeed([0, *reply])  # after the server's clock
        return succeed(reply)

    registry._eval = malformed
    calls = {
        "lookup": lambda: registry.lookup("dev", "db"),
        "find": lambda: registry.find("dev", "*"),
        "leases": lambda: registry.leases("dev", "*"),
        "sweep": lambda: registry._sweepOnce("dev"),
    }
    try:
        with pytest.raises(RegistryUnavailable, match="unexpected reply from Redis"):
            await calls[call]()
    finally:
        await registry.close()
