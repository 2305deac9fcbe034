"""
The registry contract: every backend must pass these, over the real reactor
(and, for Redis, a real redis-server).
"""

from __future__ import annotations

from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.helpers import Events, MakeRegistry, eventually, record, sleep
from txmasse import EventKind, PeerEvent, RegistryUnavailable
from txmasse.registry.interface import ILease, ISubscription

PLAIN = pytest.mark.parametrize("make_registry", ["memory", "redis", "sqlite"], indirect=True)
BACKENDS = pytest.mark.parametrize(
    "make_registry",
    ["memory", "redis", "sqlite", "signed-memory", "signed-redis", "signed-sqlite"],
    indirect=True,
)
"""Every backend, plain and signed (records signed with one shared secret)."""


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_register_lookup_release(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    db = record("db")
    lease = await registry.register(db, 5)
    assert ILease.providedBy(lease)
    await registry.register(record("db", namespace="prod"), 5)
    assert await registry.lookup("dev", "db") == [db]
    assert await registry.lookup("dev", "web") == []
    await lease.release()
    assert await registry.lookup("dev", "db") == []
    await lease.release()  # twice is harmless


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_several_instances_share_a_name(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    one, two = record(port=1), record(port=2)
    await registry.register(one, 5)
    await registry.register(two, 5)
    found = await registry.lookup("dev", "db")
    assert sorted(r.instance for r in found) == sorted([one.instance, two.instance])


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_find_globs(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    names = ["db-1", "db-2", "db-10", "dbx", "web-1", "db.a"]
    for name in names:
        await registry.register(record(name), 5)
    await registry.register(record("db-3", namespace="prod"), 5)

    async def found(pattern: str) -> list[str]:
        return sorted(r.name for r in await registry.find("dev", pattern))

    assert await found("db-*") == ["db-1", "db-10", "db-2"]
    assert await found("db-?") == ["db-1", "db-2"]
    assert await found("db-[12]") == ["db-1", "db-2"]
    assert await found("db-[^1]") == ["db-2"]
    assert await found("db-[!1]") == ["db-2"]
    assert await found("*-1") == ["db-1", "web-1"]
    assert await found("db.a") == ["db.a"]
    assert await found("*") == sorted(names)
    assert await found("nothing*") == []


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_watch_sees_joined_updated_left(make_registry: MakeRegistry) -> None:
    registry, other = make_registry(), make_registry()
    await other.register(record("db-0"), 5)
    events = Events()
    subscription = await registry.watch("dev", "db-*", events)
    assert ISubscription.providedBy(subscription)
    assert [r.name for r in subscription.peers] == ["db-0"]

    lease = await other.register(record("db-1"), 5)
    await other.register(record("web"), 5)
    await other.register(record("db-1", namespace="prod"), 5)
    await eventually(lambda: events.kinds() == [("joined", "db-1")])

    changed = record("db-1", instance=lease.record.instance, metadata={"v": "2"})
    await lease.update(changed)
    await eventually(lambda: len(events) == 2)
    assert events[1].kind == EventKind.UPDATED and events[1].record.metadata == {"v": "2"}

    await lease.refresh()  # a heartbeat changes nothing
    await lease.release()
    await eventually(lambda: len(events) == 3)
    assert events[2].kind == "left" and events[2].record == changed
    assert [r.name for r in subscription.peers] == ["db-0"]

    subscription.stop()
    still = Events()  # a watch of the same registry, to know db-2 has been heard
    await registry.watch("dev", "db-*", still)
    await other.register(record("db-2"), 5)
    await eventually(lambda: still.kinds() == [("joined", "db-2")])
    assert len(events) == 3


@PLAIN
@pytest_twisted.ensureDeferred
async def test_no_update_after_release_or_stop(make_registry: MakeRegistry) -> None:
    """
    Updating a lease that is gone is a mistake to hear about, not a no-op.
    """
    registry = make_registry()
    for end in ("release", "stop"):
        lease = await registry.register(record(), 5)
        if end == "release":
            await lease.release()
        else:
            lease.stop()
        changed = record(instance=lease.record.instance, metadata={"v": "2"})
        state = "released" if end == "release" else "stopped"
        with pytest.raises(ValueError, match=f"is {state}: register the record again"):
            lease.update(changed)
        assert lease.record.metadata == {}


@pytest.mark.parametrize("make_registry", ["redis", "sqlite"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_close_cancels_registrations_and_closes_once(make_registry: MakeRegistry) -> None:
    """
    close() cancels a registration in flight; closing again from its
    errback neither closes twice nor fails.
    """
    registry = make_registry()
    registering = registry.register(record(), 5)
    again: list[Deferred[None]] = []

    def closeAgain(failure: Failure) -> None:
        again.append(registry.close())

    registering.addErrback(closeAgain)
    await registry.close()
    assert len(again) == 1
    await again[0]
    with pytest.raises(RegistryUnavailable, match="closed"):
        await registry.lookup("dev", "db")


@PLAIN
@pytest_twisted.ensureDeferred
async def test_heartbeats_keep_a_lease_alive(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    await registry.register(record(), 0.3)
    await sleep(1.0)
    assert len(await registry.lookup("dev", "db")) == 1


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_timeout_announced_once_and_never_returned(make_registry: MakeRegistry) -> None:
    peer, watching, looking = make_registry(), make_registry(), make_registry()
    first, second = Events(), Events()
    await watching.watch("dev", "*", first)
    await looking.watch("dev", "db", second)
    lease = await peer.register(record(), 0.5)
    await eventually(lambda: len(first) == len(second) == 1)
    lease.stop()  # as if the process died: no more heartbeats, no release
    await sleep(0.6)
    assert await looking.lookup("dev", "db") == []
    await eventually(lambda: len(first) == len(second) == 2)
    await sleep(0.3)
    assert first.kinds() == second.kinds() == [("joined", "db"), ("timedout", "db")]


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_watch_callback_errors_are_contained(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    seen = Events()

    def broken(event: PeerEvent) -> None:
        seen(event)
        raise RuntimeError("boom")

    await registry.watch("dev", "*", broken)
    await registry.register(record("a"), 5)
    await registry.register(record("b"), 5)
    await eventually(lambda: len(seen) == 2)
    assert len(await registry.find("dev", "*")) == 2


@BACKENDS
@pytest.mark.parametrize(
    "call, message",
    [
        (lambda r: r.lookup("dev", "bad name"), "invalid name 'bad name'"),
        (lambda r: r.lookup("dev/x", "db"), "invalid namespace 'dev/x'"),
        (lambda r: r.find("dev", "db-[a"), "invalid pattern"),
        (lambda r: r.find("dev", "*:*"), "invalid pattern '*:*'"),
        (lambda r: r.watch("dev", "{x}", print), "invalid pattern '{x}'"),
        (lambda r: r.register(record(), 0), "invalid ttl 0"),
        (lambda r: r.register(record(), float("nan")), "invalid ttl nan"),
    ],
)
@pytest_twisted.ensureDeferred
async def test_bad_arguments(make_registry: MakeRegistry, call: Any, message: str) -> None:
    registry = make_registry()
    with pytest.raises(ValueError) as caught:
        await call(registry)
    assert message in str(caught.value)


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_leases_show_time_left(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    await registry.register(record("db-1"), 5)
    await registry.register(record("web"), 30)
    (status,) = await registry.leases("dev", "db-*")
    assert status.record.name == "db-1"
    assert 4 < status.expiresIn <= 5
    statuses = await registry.leases("dev", "*")
    assert sorted(s.record.name for s in statuses) == ["db-1", "web"]


@BACKENDS
@pytest_twisted.ensureDeferred
async def test_usage_events_reach_only_watchers_that_ask(make_registry: MakeRegistry) -> None:
    client, watching = make_registry(), make_registry()
    db = record("db")
    await watching.register(db, 5)
    asked, plain = Events(), Events()
    await watching.watch("dev", "d*", asked, usage=True)
    await watching.watch("dev", "*", plain)
    await client.report(PeerEvent(EventKind.CONNECTED, db, "host:42"))
    await client.report(PeerEvent(EventKind.CONNECTED, record("web"), "host:42"))
    await client.report(PeerEvent(EventKind.DISCONNECTED, db, "host:42"))
    await eventually(lambda: len(asked) == 2)
    assert [(e.kind, e.record, e.source) for e in asked] == [
        ("connected", db, "host:42"),
        ("disconnected", db, "host:42"),
    ]
    # Published after the reports, so heard after them.
    await client.register(record("dz"), 5)
    await eventually(lambda: plain.kinds() == [("joined", "dz")])
    await eventually(lambda: len(asked) == 3)
    assert plain.kinds() == [("joined", "dz")] and asked.kinds()[2] == ("joined", "dz")
    with pytest.raises(ValueError, match="only connected/disconnected"):
        await client.report(PeerEvent(EventKind.JOINED, db))
    with pytest.raises(ValueError, match="invalid event source"):
        await client.report(PeerEvent(EventKind.CONNECTED, db, "two words"))
