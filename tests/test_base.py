"""
Leases and watchers over a scripted store: retries, catching up, and the
exactly-once rules, step by step under a Clock.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.task import Clock

from tests.helpers import Events, record
from txmasse import RegistryUnavailable
from txmasse.records import Glob, PeerRecord
from txmasse.registry.base import Lease, Snapshot, Subscription, extendByPutting
from txmasse.registry.checking import Key, Stored
from txmasse.registry.interface import EventKind


@attrs.define
class ScriptedStore:
    """
    A store whose answers the test sets.
    """

    failPuts: int = 0
    puts: list[PeerRecord] = attrs.Factory(list)
    snapshots: list[Deferred[Snapshot]] = attrs.Factory(list)
    live: dict[Key, PeerRecord] = attrs.Factory(dict)

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        self.puts.append(record)
        if self.failPuts:
            self.failPuts -= 1
            return fail(RegistryUnavailable("registry memory://: down"))
        return succeed(None)

    def extendLeases(self, records: Sequence[PeerRecord], ttl: float) -> Deferred[None]:
        return extendByPutting(self, records, ttl)

    def removeRecord(self, record: PeerRecord) -> Deferred[None]:
        return succeed(None)

    def forgetLease(self, lease: Lease) -> None:
        pass

    def snapshot(self, namespace: str, glob: Glob, known: Sequence[str]) -> Deferred[Snapshot]:
        d: Deferred[Snapshot] = Deferred()
        self.snapshots.append(d)
        return d

    def unwatch(self, subscription: Subscription) -> None:
        pass

    def storedRecords(self, namespace: str, keys: Sequence[Key]) -> Deferred[Stored]:
        return succeed(Stored({key: self.live[key] for key in keys if key in self.live}))


def hear(
    store: ScriptedStore, subscription: Subscription, seq: int, kind: EventKind, r: PeerRecord
) -> None:
    """
    The store changes as C{kind} says, then C{subscription} hears of it.
    """
    if kind in (EventKind.JOINED, EventKind.UPDATED):
        store.live[(r.name, r.instance)] = r
    else:
        store.live.pop((r.name, r.instance), None)
    subscription.received(seq, kind, r)


def test_failed_heartbeats_are_retried() -> None:
    clock, store = Clock(), ScriptedStore(failPuts=2)
    lease = Lease(store, record(), 3.0, clock)
    lease.start()
    clock.advance(1.0)
    clock.advance(1.0)
    assert lease._failing and lease.beating
    clock.advance(1.0)
    assert not lease._failing
    assert len(store.puts) == 3


def watching(store: ScriptedStore, clock: Clock, pattern: str = "*") -> tuple[Subscription, Events]:
    events = Events()
    subscription = Subscription(store, "dev", Glob(pattern), events, clock, grace=3.0)
    subscription.resync()
    return subscription, events


def test_initial_snapshot_is_silent_and_buffered_events_apply_after_it() -> None:
    clock, store = Clock(), ScriptedStore()
    a, b, c = record("a"), record("b"), record("c")
    subscription, events = watching(store, clock)
    hear(store, subscription, 4, EventKind.JOINED, a)  # already in the snapshot (seq 5)
    hear(store, subscription, 6, EventKind.LEFT, a)
    hear(store, subscription, 7, EventKind.JOINED, c)
    assert events == []
    store.snapshots[0].callback(Snapshot(5, [a, b]))
    assert events.kinds() == [("left", "a"), ("joined", "c")]
    assert {r.name for r in subscription.peers} == {"b", "c"}


def test_duplicates_are_absorbed() -> None:
    clock, store = Clock(), ScriptedStore()
    a = record("a")
    subscription, events = watching(store, clock)
    store.snapshots[0].callback(Snapshot(0, []))
    for seq, kind in enumerate([EventKind.JOINED, EventKind.JOINED, EventKind.UPDATED]):
        hear(store, subscription, seq + 1, kind, a)
    hear(store, subscription, 4, EventKind.TIMEDOUT, a)
    hear(store, subscription, 5, EventKind.LEFT, a)
    assert events.kinds() == [("joined", "a"), ("timedout", "a")]


def test_catching_up_reports_what_was_missed_with_its_kind() -> None:
    clock, store = Clock(), ScriptedStore()
    a, b, c, d = record("a"), record("b"), record("c"), record("d")
    subscription, events = watching(store, clock)
    store.snapshots[0].callback(Snapshot(1, [a, b, c]))
    subscription.resync()  # e.g. after a reconnect
    b2 = attrs.evolve(b, metadata={"v": "2"})
    gone = {a.instance: EventKind.LEFT, c.instance: EventKind.TIMEDOUT}
    store.snapshots[1].callback(Snapshot(9, [b2, d], gone))
    assert sorted(events.kinds()) == [
        ("joined", "d"),
        ("left", "a"),
        ("timedout", "c"),
        ("updated", "b"),
    ]


def test_lost_without_a_trace_gets_a_grace_period() -> None:
    clock, store = Clock(), ScriptedStore()
    a, b = record("a"), record("b")
    subscription, events = watching(store, clock)
    store.snapshots[0].callback(Snapshot(3, [a, b]))
    subscription.resync()  # the store came back empty
    store.snapshots[1].callback(Snapshot(0, []))
    assert events == [] and len(subscription.peers) == 2
    hear(store, subscription, 1, EventKind.JOINED, a)  # a's lease wrote it back
    clock.advance(3.0)
    store.snapshots[2].callback(Snapshot(1, [a]))
    assert events.kinds() == [("timedout", "b")]
    assert [r.name for r in subscription.peers] == ["a"]
    clock.advance(10)
    assert len(store.snapshots) == 3


def test_failed_catch_up_is_retried_but_a_failed_start_fails() -> None:
    clock, store = Clock(), ScriptedStore()
    subscription, _ = watching(store, clock)
    failures: list[object] = []
    first = subscription.resync()
    first.addErrback(failures.append)
    store.snapshots[1].errback(RegistryUnavailable("down"))
    assert len(failures) == 1  # the initial catch-up reports its failure
    store.snapshots[0].callback(Snapshot(0, []))  # stale generation: ignored
    again = subscription.resync()
    store.snapshots[2].callback(Snapshot(0, [record("a")]))
    assert again.called
    subscription.resync()
    store.snapshots[3].errback(RegistryUnavailable("down"))
    clock.advance(1.0)
    assert len(store.snapshots) == 5  # retried after a second
    subscription.stop()
    clock.advance(10)
    assert len(store.snapshots) == 5


def test_a_catch_up_while_notifications_are_down_is_not_current() -> None:
    """
    A resync of the view's own (after the grace period, say) while the
    store's notifications are down leaves the view unsynced; only the
    store's reconnect makes it current again.
    """
    clock, store = Clock(), ScriptedStore()
    a = record("a")
    subscription, _ = watching(store, clock)
    store.snapshots[0].callback(Snapshot(1, [a]))
    assert subscription.synced
    subscription.interrupted()
    subscription.resync()
    store.snapshots[1].callback(Snapshot(1, [a]))
    assert not subscription.synced
    subscription.reconnected()
    store.snapshots[2].callback(Snapshot(1, [a]))
    assert subscription.synced


def test_a_reconnect_during_the_first_snapshot_catches_up_after_it() -> None:
    clock, store = Clock(), ScriptedStore()
    a, b = record("a"), record("b")
    subscription, events = watching(store, clock)
    subscription.interrupted()
    subscription.reconnected()  # before the first snapshot is in
    store.snapshots[0].callback(Snapshot(1, [a]))
    assert not subscription.synced and len(store.snapshots) == 2
    store.snapshots[1].callback(Snapshot(2, [a, b]))  # b joined while we were away
    assert subscription.synced
    assert events.kinds() == [("joined", "b")]


def test_current_is_the_peers_last_read_while_synced_until_they_may_differ() -> None:
    """
    C{current} is the tuple C{peers} gave while synced, and C{None} from
    the first thing after which it may not be the answer: a join or a
    leave, lost notifications, a catch-up, a stop. A reading while not
    synced keeps it C{None}.
    """
    clock, store = Clock(), ScriptedStore()
    a, b = record("a"), record("b")
    subscription, _ = watching(store, clock)
    assert subscription.peers == () and subscription.current is None  # still catching up
    store.snapshots[0].callback(Snapshot(1, [a]))
    assert subscription.current is None  # nobody read the view since it changed
    peers = subscription.peers
    assert subscription.current is peers

    def changedBy(change: Callable[[], object]) -> None:
        peers = subscription.peers
        assert subscription.current is peers
        change()
        assert subscription.current is None, change

    changedBy(lambda: hear(store, subscription, 2, EventKind.JOINED, b))
    changedBy(lambda: hear(store, subscription, 3, EventKind.LEFT, b))
    changedBy(subscription.interrupted)
    subscription.peers  # noqa: B018  (read while unsynced)
    assert subscription.current is None
    subscription.resumed()
    before = subscription.peers
    changedBy(subscription.resync)
    subscription.peers  # noqa: B018  (read while catching up)
    assert subscription.current is None
    store.snapshots[1].callback(Snapshot(3, [a]))
    assert subscription.peers is before  # unchanged by the catch-up, and current again
    assert subscription.current is before
    hear(store, subscription, 4, EventKind.JOINED, a)  # nothing new: the view stands
    assert subscription.current is before
    changedBy(subscription.stop)
    subscription.peers  # noqa: B018
    assert subscription.current is None
