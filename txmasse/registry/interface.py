"""
What every registry offers: the only part of the registry that endpoints,
services and groups are allowed to know.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred
from zope.interface import Attribute, Interface

from txmasse.records import PeerRecord

MIN_TTL = 0.1
"""The shortest lease, in seconds, that a registry accepts."""

MAX_TTL = 24 * 60 * 60
"""The longest lease, in seconds."""


class EventKind(enum.StrEnum):
    """
    What happened to a registered instance.
    """

    JOINED = "joined"
    LEFT = "left"
    TIMEDOUT = "timedout"
    UPDATED = "updated"
    CONNECTED = "connected"
    DISCONNECTED = "disconnected"


USAGE_KINDS = (EventKind.CONNECTED, EventKind.DISCONNECTED)
"""Stream-use events: reported by clients that opt in, not membership changes."""


@attrs.frozen
class PeerEvent:
    """
    Delivered to watchers: C{kind} happened to the instance C{record}.

    @ivar source: for C{connected}/C{disconnected}, who opened the stream
        to C{record} (C{HOST:PID} of the client); else C{None}.
    """

    kind: EventKind
    record: PeerRecord
    source: str | None = None


@attrs.frozen
class LeaseStatus:
    """
    A live instance and how long its lease has left without a heartbeat.
    """

    record: PeerRecord
    expiresIn: float


class StaleRecords(list[PeerRecord]):
    """
    What C{lookup(..., stale=...)} fires with when the registry cannot
    answer: the last answer it gave, C{age} seconds old, and why it is not
    a fresh one.
    """

    def __init__(self, records: Sequence[PeerRecord], age: float, reason: str):
        super().__init__(records)
        self.age = age
        self.reason = reason

    def __repr__(self) -> str:
        return f"<StaleRecords age={self.age:.3f}s {list.__repr__(self)}>"


class ILease(Interface):
    """
    A registration kept alive by heartbeats until released.
    """

    record: PeerRecord = Attribute("The record as registered (latest update).")
    ttl: float = Attribute("Seconds the record lives without a heartbeat.")

    def refresh() -> Deferred[None]:
        """
        Heartbeat now; writes the record back if the store lost it.
        """

    def update(record: PeerRecord) -> Deferred[None]:
        """
        Replace the record (same namespace, name and instance); watchers see
        C{updated}. Raises C{ValueError} once the lease is released or
        stopped.
        """

    def release() -> Deferred[None]:
        """
        Stop the heartbeats and remove the record now; watchers see C{left}.
        """

    def stop() -> None:
        """
        Stop the heartbeats but leave the record to expire after C{ttl}, as
        if this process had died; watchers then see C{timedout}.
        """


class ISubscription(Interface):
    """
    A live watch on the names that match a pattern in one namespace.

    A subscription may also keep C{current}, as an attribute of its own
    (a wrapper must not pass its inner watch's through): the tuple
    C{peers} last gave while synced, and C{None} whenever that may no
    longer be the answer (from a change, a lost notification, a catch-up
    or a stop on; so whenever C{synced} is false). A warm connect that
    repeats the last one then checks it, and that the registry is open, in
    two comparisons; without it, the connect asks the resolver's cache.
    """

    peers: Sequence[PeerRecord] = Attribute(
        "The matching live instances as this watcher knows them now."
    )
    synced: bool = Attribute(
        "Whether C{peers} is known to be current: false from a lost connection "
        "to the registry until the watcher has caught up again, and once stopped."
    )

    def stop() -> None:
        """
        Deliver no more events.
        """


class IRegistry(Interface):
    """
    Maps names in namespaces to live instances.

    Every method returns a L{Deferred<twisted.internet.defer.Deferred>}
    that fails with L{txmasse.errors.RegistryUnavailable} if the registry
    does not answer within its deadline.

    A registry may say what that deadline is, as C{callTimeout} (seconds):
    a connect whose own deadline is later then leaves its lookup of a name
    to the registry's, and times nothing itself meanwhile. Without it, the
    connect keeps a timer of its own.
    """

    url: str = Attribute("The registry's URL, without any password.")
    closed: bool = Attribute("Whether L{close} was called.")

    def register(record: PeerRecord, ttl: float) -> Deferred[ILease]:
        """
        Publish C{record} under a lease that expires C{ttl} seconds after its
        last heartbeat; the lease heartbeats by itself about every C{ttl}/3.
        """

    def lookup(
        namespace: str, name: str, stale: float | None = None
    ) -> Deferred[list[PeerRecord]]:
        """
        Every live instance registered under C{name}.

        @param stale: if the registry cannot answer, fire with the last
            answer it gave for this name, if no older than C{stale} seconds,
            as L{StaleRecords} (which says how old it is); by default a
            lookup fails fast with L{txmasse.errors.RegistryUnavailable}.
        """

    def find(namespace: str, pattern: str) -> Deferred[list[PeerRecord]]:
        """
        Every live instance whose name matches the glob C{pattern}.
        """

    def leases(namespace: str, pattern: str) -> Deferred[list[LeaseStatus]]:
        """
        Like L{find}, with the seconds each lease has left: for monitoring.
        """

    def watch(
        namespace: str,
        pattern: str,
        callback: Callable[[PeerEvent], object],
        usage: bool = False,
    ) -> Deferred[ISubscription]:
        """
        Call C{callback} with a L{PeerEvent} each time an instance whose name
        matches C{pattern} joins, leaves, times out or is updated; with
        C{usage}, also when a client reports a stream to it C{connected} or
        C{disconnected}.

        Fires once the subscription is live; its C{peers} are then the
        matching instances, and every change after that is delivered once.
        """

    def report(event: PeerEvent) -> Deferred[None]:
        """
        Publish a C{connected} or C{disconnected} event about C{event.record}
        to the watchers of its namespace that asked for usage events.
        """

    def close() -> Deferred[None]:
        """
        Stop heartbeats and watches and disconnect. Leases are not released:
        they expire unless the process registers them again.
        """
