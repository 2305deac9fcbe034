"""
The registry contract, as tests any registry can run: the checks every
built-in registry passes, importable by the authors of other registries.

In a pytest module of your own, import them and give them a
C{make_registry} fixture: a callable that returns a new registry each time
it is called, every one of them over the same store (as separate processes
would see it), closed by the fixture at the end of the test::

    from txmasse.contract import *  # noqa: F403 (pytest collects the tests)

    @pytest.fixture
    def make_registry():
        made = []
        def make():
            made.append(MyRegistry(reactor, ...))
            return made[-1]
        yield make
        for registry in made:
            pytest_twisted.blockon(registry.close())

The tests run on the real reactor with C{pytest-twisted} (they need
C{pytest} and C{pytest-twisted} installed); a test marked
L{unsignedOnly} is about lease bookkeeping that a signing wrapper leaves to
the registry it wraps.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from typing import Any, TypeVar

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.task import deferLater

from txmasse.records import PeerRecord
from txmasse.registry.interface import EventKind, ILease, IRegistry, ISubscription, PeerEvent

__all__ = [
    "Events",
    "eventually",
    "record",
    "sleep",
    "test_bad_arguments",
    "test_find_globs",
    "test_heartbeats_keep_a_lease_alive",
    "test_leases_show_time_left",
    "test_no_update_after_release_or_stop",
    "test_register_lookup_release",
    "test_several_instances_share_a_name",
    "test_timeout_announced_once_and_never_returned",
    "test_usage_events_reach_only_watchers_that_ask",
    "test_watch_callback_errors_are_contained",
    "test_watch_sees_joined_updated_left",
    "unsignedOnly",
]

MakeRegistry = Callable[..., IRegistry]
"""The C{make_registry} fixture: builds a new registry over the shared store."""

F = TypeVar("F", bound=Callable[..., Any])


def unsignedOnly(test: F) -> F:
    """
    Mark C{test} as one a signing wrapper need not pass (its C{signedToo}
    is false): a parametrisation over signed registries can leave it out.
    """
    test.signedToo = False  # type: ignore[attr-defined]
    return test


def record(name: str = "db", namespace: str = "dev", port: int = 4000, **kwargs: Any) -> PeerRecord:
    """
    A record of C{name} in C{namespace} at C{tcp:host=127.0.0.1:port=PORT}.
    """
    return PeerRecord(namespace, name, [f"tcp:host=127.0.0.1:port={port}"], **kwargs)


class Events(list[PeerEvent]):
    """
    A watch callback that keeps every event.
    """

    def __call__(self, event: PeerEvent) -> None:
        self.append(event)

    def kinds(self, name: str | None = None) -> list[tuple[str, str]]:
        """
        C{(kind, name)} of each event (of C{name}'s only, if given).
        """
        return [(e.kind, e.record.name) for e in self if name in (None, e.record.name)]


async def eventually(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01
) -> float:
    """
    Wait until C{predicate()} is true; return how long that took.

    @raise AssertionError: if it is not within C{timeout} seconds.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, interval, lambda: None)
    return time.monotonic() - start


async def sleep(seconds: float) -> None:
    """
    Let C{seconds} of real time pass on the reactor.
    """
    await deferLater(reactor, seconds, lambda: None)


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


@pytest_twisted.ensureDeferred
async def test_several_instances_share_a_name(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    one, two = record(port=1), record(port=2)
    await registry.register(one, 5)
    await registry.register(two, 5)
    found = await registry.lookup("dev", "db")
    assert sorted(r.instance for r in found) == sorted([one.instance, two.instance])


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


@unsignedOnly
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


@unsignedOnly
@pytest_twisted.ensureDeferred
async def test_heartbeats_keep_a_lease_alive(make_registry: MakeRegistry) -> None:
    registry = make_registry()
    await registry.register(record(), 0.3)
    await sleep(1.0)
    assert len(await registry.lookup("dev", "db")) == 1


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
