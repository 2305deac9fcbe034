"""
An in-process registry: for tests, and for peers that live in one process.

Deterministic under L{twisted.internet.task.Clock}: leases expire exactly
C{ttl} seconds after their last heartbeat, and the timeout is announced at
that moment (or earlier, by whichever call first notices it).
"""

from __future__ import annotations

import heapq
from collections.abc import Callable, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from zope.interface import implementer

from txmasse import metrics
from txmasse.records import Glob, PeerRecord
from txmasse.registry.base import (
    Lease,
    Snapshot,
    Subscription,
    extendByPutting,
    validateQuery,
    validateSearch,
    validateTTL,
    validateUsage,
)
from txmasse.registry.checking import Key, Stored
from txmasse.registry.interface import (
    EventKind,
    ILease,
    IRegistry,
    ISubscription,
    LeaseStatus,
    PeerEvent,
)
from txmasse.registry.url import RegistryURL


@attrs.define
class _Entry:
    record: PeerRecord
    expires: float


@implementer(IRegistry)
class MemoryRegistry:
    """
    A registry held in this process's memory.
    """

    url = "memory://"

    callTimeout = 0.0  # every call answers at once

    def __init__(self, clock: IReactorTime):
        self.closed = False
        self._clock = clock
        self._names: dict[tuple[str, str], dict[str, _Entry]] = {}
        self._seq: dict[str, int] = {}
        self._leases: set[Lease] = set()
        self._watchers: dict[str, set[Subscription]] = {}
        self._deadlines: list[tuple[float, str, str, str]] = []
        self._sweep: IDelayedCall | None = None

    @classmethod
    def fromURL(cls, reactor: IReactorTime, parsed: RegistryURL) -> MemoryRegistry:
        """
        A new, empty registry (C{memory://}): one per process, as every
        user of the URL shares it.
        """
        return cls(reactor)


    @metrics.registryCall("register")
    def register(self, record: PeerRecord, ttl: float) -> Deferred[ILease]:
        ttl = validateTTL(ttl)
        lease = Lease(self, record, ttl, self._clock)
        self._leases.add(lease)
        lease.start()  # first: watchers hear of the record at once, and it is ours
        self.putRecord(record, ttl)
        return succeed(lease)

    @metrics.registryCall("lookup")
    def lookup(
        self, namespace: str, name: str, stale: float | None = None
    ) -> Deferred[list[PeerRecord]]:
        """
        Never stale: this registry always answers.
        """
        validateQuery(namespace, name, stale)
        self._expire()
        entries = self._names.get((namespace, name), {})
        return succeed([entry.record for entry in entries.values()])

    @metrics.registryCall("find")
    def find(self, namespace: str, pattern: str) -> Deferred[list[PeerRecord]]:
        glob = validateSearch(namespace, pattern)
        return succeed(list(self._matching(namespace, glob)))

    @metrics.registryCall("leases")
    def leases(self, namespace: str, pattern: str) -> Deferred[list[LeaseStatus]]:
        glob = validateSearch(namespace, pattern)
        return succeed(self._statuses(namespace, glob))

    @metrics.registryCall("watch")
    def watch(
        self,
        namespace: str,
        pattern: str,
        callback: Callable[[PeerEvent], object],
        usage: bool = False,
    ) -> Deferred[ISubscription]:
        subscription = Subscription.forPattern(
            self, namespace, pattern, callback, self._clock, usage=usage
        )
        self._watchers.setdefault(namespace, set()).add(subscription)
        return subscription.resync().addCallback(lambda _: subscription)

    @metrics.registryCall("report")
    def report(self, event: PeerEvent) -> Deferred[None]:
        validateUsage(event)
        for subscription in list(self._watchers.get(event.record.namespace, ())):
            subscription.receivedUsage(event)
        return succeed(None)

    def close(self) -> Deferred[None]:
        self.closed = True
        for lease in list(self._leases):
            lease.stop()
        self._leases.clear()
        for subscriptions in list(self._watchers.values()):
            for subscription in list(subscriptions):
                subscription.stop()
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        return succeed(None)

    def _statuses(self, namespace: str, glob: Glob) -> list[LeaseStatus]:
        self._expire()
        now = self._clock.seconds()
        return [
            LeaseStatus(entry.record, entry.expires - now)
            for (ns, name), entries in self._names.items()
            if ns == namespace and glob.matches(name)
            for entry in entries.values()
        ]

    def _matching(self, namespace: str, glob: Glob) -> list[PeerRecord]:
        return [status.record for status in self._statuses(namespace, glob)]

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        self._expire()
        entries = self._names.setdefault((record.namespace, record.name), {})
        old = entries.get(record.instance)
        expires = self._clock.seconds() + ttl
        entries[record.instance] = _Entry(record, expires)
        heapq.heappush(self._deadlines, (expires, record.namespace, record.name, record.instance))
        if old is None:
            self._announce(EventKind.JOINED, record)
        elif old.record != record or old.record.signature != record.signature:
            self._announce(EventKind.UPDATED, record)
        self._scheduleSweep()
        return succeed(None)

    def extendLeases(self, records: Sequence[PeerRecord], ttl: float) -> Deferred[None]:
        return extendByPutting(self, records, ttl)

    def removeRecord(self, record: PeerRecord) -> Deferred[None]:
        self._expire()
        if self._pop(record) is not None:
            self._announce(EventKind.LEFT, record)
        return succeed(None)

    def forgetLease(self, lease: Lease) -> None:
        self._leases.discard(lease)

    def snapshot(self, namespace: str, glob: Glob, known: Sequence[str]) -> Deferred[Snapshot]:
        return succeed(Snapshot(self._seq.get(namespace, 0), self._matching(namespace, glob)))

    def unwatch(self, subscription: Subscription) -> None:
        self._watchers.get(subscription.namespace, set()).discard(subscription)

    def storedRecords(self, namespace: str, keys: Sequence[Key]) -> Deferred[Stored]:
        self._expire()
        stored = {}
        for name, instance in keys:
            entry = self._names.get((namespace, name), {}).get(instance)
            if entry is not None:
                stored[(name, instance)] = entry.record
        return succeed(Stored(stored))

    def _pop(self, record: PeerRecord) -> _Entry | None:
        key = (record.namespace, record.name)
        entries = self._names.get(key, {})
        entry = entries.pop(record.instance, None)
        if not entries:
            self._names.pop(key, None)
        return entry

    def _announce(self, kind: EventKind, record: PeerRecord) -> None:
        seq = self._seq[record.namespace] = self._seq.get(record.namespace, 0) + 1
        for subscription in list(self._watchers.get(record.namespace, ())):
            subscription.received(seq, kind, record)

    def _expire(self) -> None:
        """
        Announce, once, every lease whose time is up.
        """
        now = self._clock.seconds()
        while self._deadlines and self._deadlines[0][0] <= now:
            _, namespace, name, instance = heapq.heappop(self._deadlines)
            entry = self._names.get((namespace, name), {}).get(instance)
            if entry is not None and entry.expires <= now:
                self._pop(entry.record)
                self._announce(EventKind.TIMEDOUT, entry.record)

    def _scheduleSweep(self) -> None:
        if not self._deadlines:
            return
        when = self._deadlines[0][0]
        if self._sweep is not None and self._sweep.active():
            if self._sweep.getTime() <= when:
                return
            self._sweep.cancel()
        self._sweep = self._clock.callLater(max(0.0, when - self._clock.seconds()), self._sweepNow)

    def _sweepNow(self) -> None:
        self._sweep = None
        self._expire()
        self._scheduleSweep()
