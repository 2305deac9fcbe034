"""
The rules by which a view checks events against the store, step by step on
a MemoryRegistry under a Clock (forged events handed to the subscription as
a backend would hand them over).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs

from tests.helpers import Events, fired, record, warningsIn
from txmasse.records import Glob
from txmasse.registry.base import Snapshot, Subscription
from txmasse.registry.checking import DOUBT_DELAY, Key, Stored
from txmasse.registry.interface import EventKind
from txmasse.registry.memory import MemoryRegistry


def watched(clock: Clock) -> tuple[MemoryRegistry, Any, Events]:
    registry = MemoryRegistry(clock)
    events = Events()
    subscription = fired(registry.watch("dev", "*", events))
    return registry, subscription, events


def names(subscription: Any) -> list[str]:
    return sorted(r.name for r in subscription.peers)


def about(logs: Sequence[LogEvent], instance: str) -> list[str]:
    return [text for text in warningsIn(logs) if instance in text and "namespace dev" in text]


def test_a_forged_timedout_for_a_live_record_changes_nothing() -> None:
    clock = Clock()
    registry, subscription, events = watched(clock)
    lease = fired(registry.register(record("db"), 30))
    with capturedLogs() as logs:
        subscription.received(99, EventKind.TIMEDOUT, lease.record)
        subscription.received(100, EventKind.LEFT, lease.record)
        assert names(subscription) == ["db"] and events.kinds() == [("joined", "db")]
        clock.advance(DOUBT_DELAY)
    (warning,) = about(logs, lease.record.instance)
    assert "does not match the store: the store still holds it" in warning


def test_a_forged_joined_is_taken_back_once_read() -> None:
    clock = Clock()
    _, subscription, events = watched(clock)
    ghost = record("ghost", port=666)
    with capturedLogs() as logs:
        subscription.received(1, EventKind.JOINED, ghost)
        # News of a new instance is shown at once, and taken back as soon
        # as the store is read (at once here: a MemoryRegistry answers so).
        assert events.kinds() == [("joined", "ghost"), ("left", "ghost")]
        assert list(subscription.peers) == []
        assert about(logs, ghost.instance) == []
        clock.advance(DOUBT_DELAY)  # nothing explained it meanwhile
    assert len(about(logs, ghost.instance)) == 1


def test_a_forged_update_or_signed_join_is_never_shown() -> None:
    clock = Clock()
    registry, subscription, events = watched(clock)
    lease = fired(registry.register(record("db"), 30))
    moved = attrs.evolve(lease.record, endpoints=["tcp:host=6.6.6.6:port=666"])
    signed = attrs.evolve(record("ghost"), signature="ab" * 32)
    with capturedLogs() as logs:
        subscription.received(2, EventKind.UPDATED, moved)
        subscription.received(3, EventKind.JOINED, signed)
        clock.advance(DOUBT_DELAY)
    assert list(subscription.peers) == [lease.record]
    assert events.kinds() == [("joined", "db")]
    assert len(about(logs, lease.record.instance)) == 1 and len(about(logs, signed.instance)) == 1


def test_a_true_change_explains_an_earlier_mismatch() -> None:
    """
    A join heard after its record already left is shown, then its left:
    no warning, as the later event explains the difference.
    """
    clock = Clock()
    _, subscription, events = watched(clock)
    gone = record("brief")
    with capturedLogs() as logs:
        subscription.received(1, EventKind.JOINED, gone)  # (never in the store, as if released)
        subscription.received(2, EventKind.LEFT, gone)
        clock.advance(DOUBT_DELAY * 2)
    assert events.kinds() == [("joined", "brief"), ("left", "brief")]
    assert about(logs, gone.instance) == []


@attrs.define
class Departed:
    """
    A store that holds nothing and remembers every instance asked about as
    gone (C{left}): as if a forger replayed a departed instance's join.
    """

    def storedRecords(self, namespace: str, keys: Sequence[Key]) -> Deferred[Stored]:
        return succeed(Stored({}, {instance: EventKind.LEFT for _, instance in keys}))

    def snapshot(self, namespace: str, glob: Glob, known: Sequence[str]) -> Deferred[Snapshot]:
        return succeed(Snapshot(0, []))

    def unwatch(self, subscription: Subscription) -> None:
        pass


def departedWatch(clock: Clock, events: Events) -> Subscription:
    subscription = Subscription(Departed(), "dev", Glob("*"), events, clock)  # type: ignore[arg-type]
    subscription.resync()
    return subscription


def test_a_replayed_join_of_a_departed_instance_is_let_go() -> None:
    """
    Its own left is awaited (it would come, in its place, for a real
    registration gone in a moment); none coming, the instance is let go.
    """
    clock, events = Clock(), Events()
    subscription = departedWatch(clock, events)
    old = record("old")
    with capturedLogs() as logs:
        subscription.received(5, EventKind.JOINED, old)
        assert events.kinds() == [("joined", "old")]
        clock.advance(DOUBT_DELAY)
    assert events.kinds() == [("joined", "old"), ("left", "old")]
    assert list(subscription.peers) == []
    (warning,) = about(logs, old.instance)
    assert "the store says it left already" in warning


@pytest.mark.parametrize("changed", [False, True])
def test_a_replayed_join_sent_again_and_again_is_still_let_go(changed: bool) -> None:
    """
    The same forged join again (or a new record each time) does not
    explain the store's word that the instance left, nor put off letting
    it go; once let go, it is not shown again before the store is read.
    """
    clock, events = Clock(), Events()
    subscription = departedWatch(clock, events)
    old = record("old")
    with capturedLogs() as logs:
        for port in range(4):
            moved = attrs.evolve(old, endpoints=[f"tcp:host=6.6.6.6:port={port}"])
            again = moved if changed else old
            subscription.received(5 + port, EventKind.JOINED, again)
            clock.advance(DOUBT_DELAY / 2)
        assert list(subscription.peers) == []
        clock.advance(DOUBT_DELAY * 2)
    assert [kind for kind, _ in events.kinds()] == ["joined", "left"]
    assert list(subscription.peers) == []
    assert len(about(logs, old.instance)) >= 1


def test_events_caused_by_a_callback_come_after_the_one_heard() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock)
    heard: list[tuple[str, str]] = []
    leases: list[Any] = []

    def callback(event: Any) -> None:
        heard.append((str(event.kind), event.record.name))
        if event.record.name == "first" and event.kind == EventKind.JOINED:
            leases.append(fired(registry.register(record("second"), 30)))

    fired(registry.watch("dev", "*", callback))
    first = fired(registry.register(record("first"), 30))
    fired(first.release())
    assert heard == [("joined", "first"), ("joined", "second"), ("left", "first")]


@attrs.define
class Held:
    """
    A store whose reads answer when the test says, each with the records
    given: as a store read over the network, events arriving meanwhile.
    """

    reads: list[Deferred[Stored]] = attrs.Factory(list)

    def storedRecords(self, namespace: str, keys: Sequence[Key]) -> Deferred[Stored]:
        read: Deferred[Stored] = Deferred()
        self.reads.append(read)
        return read

    def snapshot(self, namespace: str, glob: Glob, known: Sequence[str]) -> Deferred[Snapshot]:
        return succeed(Snapshot(0, []))

    def unwatch(self, subscription: Subscription) -> None:
        pass


def test_a_change_heard_while_the_store_is_read_explains_the_mismatch() -> None:
    """
    A peer drains, then leaves: its C{updated} is checked when the store
    already says it left, and its C{left}, heard meanwhile, explains that.
    """
    clock, events, store = Clock(), Events(), Held()
    subscription = Subscription(store, "dev", Glob("*"), events, clock)  # type: ignore[arg-type]
    subscription.resync()
    peer = record("db")
    draining = attrs.evolve(peer, draining=True)
    with capturedLogs() as logs:
        subscription.received(1, EventKind.JOINED, peer)
        store.reads.pop().callback(Stored({("db", peer.instance): peer}))
        subscription.received(2, EventKind.UPDATED, draining)
        subscription.received(3, EventKind.LEFT, draining)  # while the read for the update is out
        gone = Stored({}, {peer.instance: EventKind.LEFT})
        store.reads.pop(0).callback(gone)
        store.reads.pop(0).callback(gone)
        clock.advance(DOUBT_DELAY * 2)
    assert events.kinds() == [("joined", "db"), ("left", "db")]
    assert list(subscription.peers) == []
    assert about(logs, peer.instance) == []
