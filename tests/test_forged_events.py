"""
Forged events never leave a view disagreeing with the store: a C{joined}
for a record the store does not hold and a C{timedout} for a live peer's
record, PUBLISHed on Redis's event channel or inserted as SQLite event
rows. The live peer is never lost; the ghost is taken back within a second
(plain) or never shown (signed); each is reported with a warning naming
the namespace and instance; with real peer processes.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import LogEvent

from tests.endpoint_helpers import PeerProcess, peerEnvironment, spawnPeer
from tests.helpers import Events, RedisServer, eventually, newRegistry, warningsIn, withoutExpiry
from txmasse import PeerGroup
from txmasse.records import PeerRecord
from txmasse.registry import freshness

NS = "hs"
SECRET = "forged-events-secret-0123456789"


def peerDescription(name: str, url: str) -> str:
    escaped = url.replace(":", "\\:").replace("=", "\\=")
    return f"masse:name={name}:ns={NS}:ttl=30:registry={escaped}"


class Store:
    """
    The forger's hand on the store: read a real record, put an event where
    watchers read them.
    """

    def __init__(self, redis: RedisServer | None = None, path: Path | None = None):
        self.redis, self.path = redis, path

    def recordOf(self, name: str) -> bytes:
        if self.redis is not None:
            stored = self.redis.command("HGETALL", f"masse:{{{NS}}}:n:{name}")
            assert isinstance(stored, list) and len(stored) == 2, stored
            return withoutExpiry(bytes(stored[1]))
        assert self.path is not None
        with sqlite3.connect(self.path) as c:
            rows = c.execute(
                "SELECT record FROM masse_records WHERE namespace = ? AND name = ?", (NS, name)
            ).fetchall()
        assert len(rows) == 1, rows
        return str(rows[0][0]).encode()

    def forge(self, kind: str, data: bytes) -> None:
        if self.redis is not None:
            seq = int(self.redis.command("GET", f"masse:{{{NS}}}:seq") or 0) + 1
            message = f"{seq} {kind} ".encode() + data
            assert self.redis.command("PUBLISH", f"masse:{{{NS}}}:events", message) >= 1
            return
        assert self.path is not None
        with sqlite3.connect(self.path) as c:
            c.execute(
                "INSERT INTO masse_events (namespace, kind, record, at) VALUES (?, ?, ?, ?)",
                (NS, kind, data.decode(), time.time()),
            )


def ghostOf(real: bytes, unsigned: bool) -> bytes:
    fields = json.loads(real)
    fields["name"], fields["id"] = "ghost", "0" * 32
    fields["ep"] = ["tcp:host=6.6.6.6:port=666"]
    if unsigned:
        fields.pop("sig", None)
    return json.dumps(fields).encode()


def names(records: Sequence[PeerRecord]) -> list[str]:
    return sorted(record.name for record in records)


async def forgeAndCheck(
    url: str, store: Store, signed: bool, logged: Sequence[LogEvent], env: dict[str, str]
) -> None:
    peers: list[PeerProcess] = [
        spawnPeer(peerDescription(n, url), env) for n in ("good01", "good02")
    ]
    watcher = newRegistry(url)
    group = PeerGroup(watcher, NS, "good*", Factory.forProtocol(Protocol), reactor=reactor)
    events = Events()
    try:
        for peer in peers:
            await peer.ready
        subscription = await watcher.watch(NS, "*", events)
        group.startService()
        await eventually(lambda: names(subscription.peers) == ["good01", "good02"], timeout=10)
        await eventually(lambda: names(group.peers) == ["good01", "good02"])
        seen = len(events)

        real = freshness.unstamped(store.recordOf("good01"))[1]  # the JSON, not its stamp
        live = PeerRecord.fromJSON(real)
        store.forge("joined", ghostOf(real, unsigned=False))
        store.forge("timedout", real)
        if signed:  # the same, unsigned, as an outsider would
            store.forge("joined", ghostOf(real, unsigned=True))
            fields = json.loads(real)
            fields.pop("sig")
            store.forge("timedout", json.dumps(fields).encode())

        def warned(instance: str) -> bool:
            return any(
                f"in namespace {NS} for" in text and instance in text for text in warningsIn(logged)
            )

        try:
            await eventually(lambda: warned("0" * 32) and warned(live.instance), timeout=5)
        except AssertionError:
            raise AssertionError("\n".join(warningsIn(logged))) from None
        # By then every forged event was read and judged: the live peer was
        # never lost; a plain ghost was shown (news of a new instance is, at
        # once) and taken back, a signed one never shown.
        ghost = [] if signed else [("joined", "ghost"), ("left", "ghost")]
        await eventually(lambda: events.kinds()[seen:] == ghost)
        assert names(subscription.peers) == ["good01", "good02"]
        assert subscription.synced
        await eventually(lambda: names(group.peers) == ["good01", "good02"])
        assert names(await watcher.find(NS, "*")) == ["good01", "good02"]
        assert [e for e in events[seen:] if e.record.name != "ghost"] == []

        # True news still gets through: good02 stops and leaves.
        peers[1].signal("TERM")
        await peers[1].ended
        await eventually(lambda: names(subscription.peers) == ["good01"])
        assert events.kinds()[seen + len(ghost) :] == [("left", "good02")]
        await eventually(lambda: names(group.peers) == ["good01"])
    finally:
        await group.stopService()
        for peer in peers:
            peer.signal("KILL")
            await peer.ended
        await watcher.close()


def secretsURL(url: str, tmp_path: Path, signed: bool) -> str:
    if not signed:
        return url
    path = tmp_path / "secrets"
    path.write_text(SECRET + "\n")
    return url + ("&" if "?" in url else "?") + f"secrets={path}"


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
@pytest_twisted.ensureDeferred
async def test_forged_redis_events(
    redis_server: RedisServer, tmp_path: Path, logged: Sequence[LogEvent], signed: bool
) -> None:
    url = secretsURL(redis_server.url, tmp_path, signed)
    await forgeAndCheck(url, Store(redis=redis_server), signed, logged, peerEnvironment(url))


@pytest.mark.parametrize("signed", [False, True], ids=["plain", "signed"])
@pytest_twisted.ensureDeferred
async def test_forged_sqlite_event_rows(
    tmp_path: Path, logged: Sequence[LogEvent], signed: bool
) -> None:
    path = tmp_path / "registry.db"
    url = secretsURL(f"sqlite://{path}", tmp_path, signed)
    env: dict[str, Any] = peerEnvironment(url)
    await forgeAndCheck(url, Store(path=path), signed, logged, env)
