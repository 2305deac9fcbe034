"""
Signed freshness: in a signed namespace a record is believed only while
its holder's stamp of the lease's expiry is current, so an old record
written back into the store (a replay) is refused everywhere.
"""

from __future__ import annotations

import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path

import attrs
import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogEvent

from tests.helpers import (
    Events,
    RedisServer,
    eventually,
    newRegistry,
    record,
    serverMs,
    storeEntry,
    warningsIn,
    withoutExpiry,
)
from txmasse import MasseClientEndpoint, PeerNotFound
from txmasse.registry import freshness, signed
from txmasse.registry.signed import LAPSED, SignedRegistry

SECRET = "correct-horse-battery-staple"


def _secrets(tmp_path: Path) -> str:
    path = tmp_path / "secrets"
    path.write_text(SECRET + "\n")
    path.chmod(0o600)
    return str(path)


def _writeBack(server: RedisServer, data: bytes, name: str, instance: str) -> None:
    """
    Put a record into Redis by hand, alive for ten minutes, as anyone who
    can write to it could.
    """
    expires = serverMs(server) + 600_000
    storeEntry(server, name, instance, b"@%d %s" % (expires, data), expires)


@pytest_twisted.ensureDeferred
async def test_a_replayed_signed_record_is_believed_nowhere(
    redis_server: RedisServer,
    tmp_path: Path,
    logged: Sequence[LogEvent],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setattr(signed, "FRESHNESS_SLACK", 0.05)  # clocks here agree
    registry: SignedRegistry = newRegistry(f"{redis_server.url}?secrets={_secrets(tmp_path)}")
    try:
        lease = await registry.register(record("db", port=4001), 0.6)
        instance = lease.record.instance
        stored = withoutExpiry(redis_server.command("HGET", "masse:{dev}:n:db", instance))
        captured = freshness.parsed(stored)
        assert captured.freshness is not None and registry.problem(captured) is None
        # Heartbeats renew the stamp in the store, not the record.
        key = "masse:{dev}:n:db"

        def inStore() -> bytes:
            return withoutExpiry(redis_server.command("HGET", key, instance))

        await eventually(lambda: inStore() != stored)
        renewed = freshness.parsed(inStore())
        assert renewed == captured and renewed.freshness != captured.freshness
        await lease.release()
        assert await registry.lookup("dev", "db") == []

        # The captured record, its stamp lapsed, written back by hand and
        # announced by hand to a watcher already live.
        live = Events()
        liveWatch = await registry.watch("dev", "*", live)
        await eventually(lambda: registry.problem(captured) == LAPSED, timeout=3)
        _writeBack(redis_server, stored, "db", instance)
        redis_server.command("PUBLISH", "masse:{dev}:events", b"1000000 joined " + stored)
        web = await registry.register(record("web"), 30)  # news after the forgery
        await eventually(lambda: live.kinds() == [("joined", "web")], timeout=3)
        assert [r.name for r in liveWatch.peers] == ["web"]
        liveWatch.stop()
        await web.release()
        plain = newRegistry(redis_server.url)  # a reader without the secret sees it stored
        try:
            assert [r.instance for r in await plain.lookup("dev", "db")] == [instance]
        finally:
            await plain.close()

        assert await registry.lookup("dev", "db") == []
        assert await registry.find("dev", "d*") == []
        assert await registry.leases("dev", "*") == []
        events = Events()
        watch = await registry.watch("dev", "*", events)
        assert list(watch.peers) == [] and list(events) == []
        watch.stop()
        endpoint = MasseClientEndpoint(reactor, "db", namespace="dev", registry=registry)
        with pytest.raises(PeerNotFound):
            await endpoint.connect(Factory.forProtocol(Protocol))
        warnings = [w for w in warningsIn(logged) if "lapsed freshness" in w]
        assert len(warnings) == 1 and instance in warnings[0]  # logged once, naming it
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_a_record_without_a_current_stamp_is_refused(
    redis_server: RedisServer, tmp_path: Path
) -> None:
    registry: SignedRegistry = newRegistry(f"{redis_server.url}?secrets={_secrets(tmp_path)}")
    try:
        good = registry.stamp(registry.sign(record("db")), 60)
        unstamped = registry.sign(record("web"))
        wrong = registry.stamp(registry.sign(record("api")), 60)
        expiry, _, code = (wrong.freshness or "").partition(".")
        forged = attrs.evolve(wrong, freshness=f"{int(expiry) + 10**6}.{code}")  # extended
        for rec in (good, unstamped, forged):
            _writeBack(redis_server, freshness.stored(rec), rec.name, rec.instance)
        assert [r.name for r in await registry.find("dev", "*")] == ["db"]
        assert registry.problem(unstamped) == signed.NO_FRESHNESS
        assert registry.problem(forged) == signed.WRONG_FRESHNESS
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_a_replayed_signed_row_is_refused_by_sqlite(
    tmp_path: Path, logged: Sequence[LogEvent], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(signed, "FRESHNESS_SLACK", 0.05)
    path = tmp_path / "registry.db"
    registry: SignedRegistry = newRegistry(f"sqlite:///{path}?secrets={_secrets(tmp_path)}")
    try:
        lease = await registry.register(record("db"), 0.6)
        with sqlite3.connect(path) as c:
            (stored,) = c.execute("SELECT record FROM masse_records").fetchone()
        captured = freshness.parsed(stored)
        await lease.release()
        await eventually(lambda: registry.problem(captured) == LAPSED, timeout=3)
        with sqlite3.connect(path) as c:
            c.execute(
                "INSERT INTO masse_records (namespace, name, instance, record, expires)"
                " VALUES ('dev', 'db', ?, ?, ?)",
                (captured.instance, stored, time.time() + 600),
            )
        assert await registry.lookup("dev", "db") == []
        assert await registry.find("dev", "*") == []
        assert any("lapsed freshness" in w for w in warningsIn(logged))
    finally:
        await registry.close()


def test_the_same_stored_bytes_are_parsed_once() -> None:
    """
    Records are immutable, so what the store holds is parsed once and the
    record reused; garbage is never kept, and fails every time.
    """
    plain = record("db")
    stamped = attrs.evolve(plain, freshness="12ab.34")
    for kept in (plain, stamped):
        data = freshness.stored(kept)
        assert freshness.parsed(data) == kept and freshness.parsed(data).freshness == kept.freshness
        assert freshness.parsed(data) is freshness.parsed(bytes(bytearray(data)))
    for _ in range(2):
        with pytest.raises(ValueError):
            freshness.parsed(b'{"namespace": "dev"}')
