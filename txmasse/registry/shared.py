"""
What the registries whose store other processes share (Redis, SQLite) have
in common: checking arguments, keeping leases and watchers, and sweeping
expired leases. A backend supplies the store operations and a few hooks.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Sequence

from twisted.internet.defer import Deferred, fail, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmasse import metrics
from txmasse.errors import RegistryUnavailable
from txmasse.records import Glob, PeerRecord
from txmasse.registry import freshness
from txmasse.registry.base import (
    LastAnswers,
    Lease,
    Registrations,
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
    USAGE_KINDS,
    EventKind,
    ILease,
    ISubscription,
    LeaseStatus,
    PeerEvent,
)

log = Logger()

SWEEP_INTERVAL = 0.5
"""Longest pause between two sweeps of a namespace, in seconds."""

SWEEP_HOLD = 1.0
"""
Least seconds without sweeps after the store came back (a reconnect, a
failover): time for every holder to write its leases back before expiries
that the outage caused are announced. Longer if our own leases beat slower.
"""


class SharedStoreRegistry:
    """
    The C{IRegistry} methods of a registry shared with other processes.

    Every process with leases or watchers in a namespace sweeps it at its
    next expiry (at least every L{SWEEP_INTERVAL} seconds), so timeouts are
    announced without any help from the store's server.
    """

    url: str

    def __init__(self, clock: IReactorTime, grace: float):
        self.closed = False
        self._clock = clock
        self._grace = grace
        self._leases: set[Lease] = set()
        self._leaseNamespaces: Counter[str] = Counter()
        self._watchers: dict[str, set[Subscription]] = {}
        self._sweeps: dict[str, IDelayedCall | None] = {}
        self._lastAnswers = LastAnswers(clock)
        self._closing = False
        self._registrations = Registrations(self)
        self._sweepsHeldUntil = 0.0

    # What a backend provides

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        raise NotImplementedError

    def extendLeases(self, records: Sequence[PeerRecord], ttl: float) -> Deferred[None]:
        return extendByPutting(self, records, ttl)

    def removeRecord(self, record: PeerRecord) -> Deferred[None]:
        raise NotImplementedError

    def snapshot(self, namespace: str, glob: Glob, known: Sequence[str]) -> Deferred[Snapshot]:
        raise NotImplementedError

    def _fetchLookup(self, namespace: str, name: str) -> Deferred[list[PeerRecord]]:
        raise NotImplementedError

    def storedRecords(self, namespace: str, keys: Sequence[Key]) -> Deferred[Stored]:
        raise NotImplementedError

    def _fetchFind(self, namespace: str, glob: Glob) -> Deferred[list[PeerRecord]]:
        return self.snapshot(namespace, glob, ()).addCallback(lambda s: list(s.records))

    def _fetchLeases(self, namespace: str, glob: Glob) -> Deferred[list[LeaseStatus]]:
        raise NotImplementedError

    def _sweepOnce(self, namespace: str) -> Deferred[float | None]:
        """
        Time out the expired leases of C{namespace}; fire with the seconds
        until its next expiry (C{None} if unknown).
        """
        raise NotImplementedError

    def _publishUsage(self, event: PeerEvent) -> Deferred[None]:
        """
        Send a checked C{connected}/C{disconnected} report to every process
        watching the namespace.
        """
        raise NotImplementedError

    def _listen(self, namespace: str) -> Deferred[None]:
        """
        Make sure the events of C{namespace} reach L{_watchers}.
        """
        raise NotImplementedError

    def _unlisten(self, namespace: str) -> None:
        """
        The last watcher of C{namespace} stopped.
        """

    def _disconnect(self) -> Deferred[None]:
        raise NotImplementedError

    # IRegistry

    @metrics.registryCall("register")
    def register(self, record: PeerRecord, ttl: float) -> Deferred[ILease]:
        ttl = validateTTL(ttl)
        lease = Lease(self, record, ttl, self._clock)
        return self._registrations.register(lease, self._registered)

    def _registered(self, lease: Lease) -> None:
        self._leases.add(lease)
        self._leaseNamespaces[lease.record.namespace] += 1
        self._startSweeping(lease.record.namespace)

    @metrics.registryCall("lookup")
    def lookup(
        self, namespace: str, name: str, stale: float | None = None
    ) -> Deferred[list[PeerRecord]]:
        validateQuery(namespace, name, stale)
        key = (namespace, name)
        return self._lastAnswers.answering(self._fetchLookup(namespace, name), key, stale)

    @metrics.registryCall("find")
    def find(self, namespace: str, pattern: str) -> Deferred[list[PeerRecord]]:
        glob = validateSearch(namespace, pattern)
        return self._fetchFind(namespace, glob)

    @metrics.registryCall("leases")
    def leases(self, namespace: str, pattern: str) -> Deferred[list[LeaseStatus]]:
        glob = validateSearch(namespace, pattern)
        return self._fetchLeases(namespace, glob)

    @metrics.registryCall("report")
    def report(self, event: PeerEvent) -> Deferred[None]:
        validateUsage(event)
        return self._publishUsage(event)

    @metrics.registryCall("watch")
    def watch(
        self,
        namespace: str,
        pattern: str,
        callback: Callable[[PeerEvent], object],
        usage: bool = False,
    ) -> Deferred[ISubscription]:
        subscription = Subscription.forPattern(
            self, namespace, pattern, callback, self._clock, self._grace, usage=usage
        )
        if self.closed:
            return fail(RegistryUnavailable(f"registry {self.url} is closed"))
        self._watchers.setdefault(namespace, set()).add(subscription)
        self._startSweeping(namespace)

        async def start() -> ISubscription:
            try:
                await self._listen(namespace)
                await subscription.resync()
            except BaseException:
                subscription.stop()
                raise
            return subscription

        return Deferred.fromCoroutine(start())

    def close(self) -> Deferred[None]:
        if self.closed or self._closing:
            return succeed(None)
        self._closing = True  # calls still go out until closed: the undos need them
        self._registrations.cancelAll()  # and take them back
        for lease in list(self._leases):
            lease.stop()
        for subscriptions in list(self._watchers.values()):
            for subscription in list(subscriptions):
                subscription.stop()
        for namespace in list(self._sweeps):
            self._stopSweeping(namespace)
        self.closed = True
        return self._registrations.takenBack().addCallback(lambda _: self._disconnect())

    # Reading the store

    def _stored(
        self,
        data: object,
        namespace: str,
        glob: Glob | None = None,
        name: str | None = None,
        instance: str | None = None,
    ) -> PeerRecord | None:
        """
        Parse a record read from the store where C{namespace}, C{glob},
        C{name} and C{instance} say it sits, or skip it with a warning: it
        may be garbage, or written by someone else where it does not belong.
        """
        try:
            record = freshness.parsed(data)  # type: ignore[arg-type]
            if (
                record.namespace != namespace
                or (glob is not None and not glob.matches(record.name))
                or name not in (None, record.name)
                or instance not in (None, record.instance)
            ):
                raise ValueError(
                    f"record of {record.namespace}/{record.name} instance "
                    f"{record.instance} is stored in the wrong place"
                )
        except (ValueError, TypeError) as e:
            log.warn(
                "registry {url}: skipping a bad record in namespace {ns}: {error}",
                url=self.url,
                ns=namespace,
                error=str(e),
            )
            return None
        return record

    def _eventReceived(self, namespace: str, seq: int, kind: str, data: object) -> None:
        """
        A membership event read from the store: hand it to the watchers of
        C{namespace}, or skip it with a warning if it is garbage.
        """
        try:
            eventKind = EventKind(kind)
            if eventKind in USAGE_KINDS:
                raise ValueError("a usage kind where a membership event belongs")
        except ValueError as e:
            log.warn(
                "registry {url}: skipping a bad event {seq} in namespace {ns}: {error}",
                url=self.url,
                seq=seq,
                ns=namespace,
                error=str(e),
            )
            return
        record = self._stored(data, namespace)
        if record is None:
            return
        for subscription in list(self._watchers.get(namespace, ())):
            subscription.received(seq, eventKind, record)

    def _usageReceived(self, namespace: str, kind: str, source: str, data: object) -> None:
        """
        A stream-use report read from the store: hand it to the watchers
        that asked, or skip it with a warning if it is garbage.
        """
        record = self._stored(data, namespace)
        if record is None:
            return
        try:
            event = validateUsage(PeerEvent(EventKind(kind), record, source))
        except ValueError as e:
            log.warn(
                "registry {url}: skipping a bad usage event: {error}",
                url=self.url,
                error=str(e),
            )
            return
        for subscription in list(self._watchers.get(namespace, ())):
            subscription.receivedUsage(event)

    def _subscriptions(self) -> list[Subscription]:
        return [s for subscriptions in self._watchers.values() for s in subscriptions]

    def _eventsInterrupted(self) -> None:
        """
        Events may be missed from now on: no watcher's view is current
        until it has caught up again.
        """
        for subscription in self._subscriptions():
            subscription.interrupted()

    # Leases and subscriptions

    def forgetLease(self, lease: Lease) -> None:
        if lease in self._leases:
            self._leases.discard(lease)
            self._leaseNamespaces[lease.record.namespace] -= 1

    def unwatch(self, subscription: Subscription) -> None:
        namespace = subscription.namespace
        subscriptions = self._watchers.get(namespace, set())
        subscriptions.discard(subscription)
        if not subscriptions:
            self._watchers.pop(namespace, None)
            if not self.closed:
                self._unlisten(namespace)

    # Sweeps

    def _startSweeping(self, namespace: str) -> None:
        if namespace not in self._sweeps:
            self._sweeps[namespace] = self._clock.callLater(0, self._sweep, namespace)

    def _stopSweeping(self, namespace: str) -> None:
        call = self._sweeps.pop(namespace, None)
        if call is not None and call.active():
            call.cancel()

    def holdSweeps(self) -> None:
        """
        The store is back after an outage: announce no expiry for one
        heartbeat interval (at least L{SWEEP_HOLD}), so that leases which
        lapsed only because their holders could not reach the store (a
        failover) are written back first.
        """
        hold = max([SWEEP_HOLD, *(lease.interval for lease in self._leases)])
        self._sweepsHeldUntil = max(self._sweepsHeldUntil, self._clock.seconds() + hold)

    def _sweep(self, namespace: str) -> None:
        self._sweeps[namespace] = None
        if not (self._leaseNamespaces[namespace] or self._watchers.get(namespace)):
            self._sweeps.pop(namespace, None)
            return
        held = self._sweepsHeldUntil - self._clock.seconds()
        if held > 0:
            self._sweeps[namespace] = self._clock.callLater(held, self._sweep, namespace)
            return

        def scheduleNext(untilNext: float | None) -> None:
            delay = SWEEP_INTERVAL
            if untilNext is not None:
                delay = min(SWEEP_INTERVAL, untilNext + 0.002)
            if namespace in self._sweeps and not self.closed:
                self._sweeps[namespace] = self._clock.callLater(delay, self._sweep, namespace)

        d = self._sweepOnce(namespace)
        d.addErrback(_logSweepFailure)
        d.addCallback(scheduleNext)


def _logSweepFailure(failure: Failure) -> None:
    log.debug("sweep failed: {error}", error=failure.getErrorMessage())
