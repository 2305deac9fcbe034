"""
The backend contract, and the leases and subscriptions every backend shares.

A backend only stores and fetches: it provides L{Store}, the operations
below (L{extendByPutting} makes L{Store.extendLeases} for a store with no
cheaper way), and hands the events it hears to its subscriptions
(L{Subscription.received}). The logic users depend on (when to heartbeat,
which events a watcher sees, how it catches up after missing some) lives
here once, in L{Lease} and L{Subscription}, so every backend behaves the
same. L{txmasse.registry.shared.SharedStoreRegistry} builds a whole
L{IRegistry} on top for stores that many processes share (Redis, SQLite).
"""

from __future__ import annotations

import re
from collections import OrderedDict
from collections.abc import Callable, Sequence
from typing import Any, Protocol

import attrs
from twisted.internet.defer import Deferred, DeferredList, maybeDeferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse import metrics
from txmasse.checks import checkNumber
from txmasse.errors import RegistryUnavailable
from txmasse.records import Glob, PeerRecord, validateName
from txmasse.registry.checking import REMOVALS, Doubts, EventChecks, Key, Stored, sameRecord
from txmasse.registry.heartbeats import wheelFor
from txmasse.registry.interface import (
    MAX_TTL,
    MIN_TTL,
    USAGE_KINDS,
    EventKind,
    ILease,
    ISubscription,
    PeerEvent,
    StaleRecords,
)
from txmasse.retry import retryPolicy

log = Logger()

CATCH_UP_RETRY = retryPolicy(0.5, 5.0)
"""Seconds before a watch that could not catch up tries again, by failures so far."""

REMOVED_KEPT = 4096
"""Instances a view remembers letting go: news of one again waits for the store."""

localInstances: set[str] = set()
"""Instance ids this process registered and has not released: a group leaves them out."""


def validateTTL(ttl: object) -> float:
    """
    Return C{ttl} as a float if it is a usable lease length in seconds.
    """
    if isinstance(ttl, str):
        raise ValueError(f"invalid ttl {ttl!r}: must be a number, not text")
    return checkNumber(ttl, f"invalid ttl {ttl!r}:", low=MIN_TTL, high=MAX_TTL)


_SOURCE = re.compile(r"[\x21-\x7e]{1,255}")


def validateUsage(event: object) -> PeerEvent:
    """
    Return C{event} if it is a stream-use report that may be published.
    """
    if not isinstance(event, PeerEvent) or event.kind not in USAGE_KINDS:
        raise ValueError(f"only connected/disconnected events can be reported, not {event!r}")
    if not isinstance(event.source, str) or _SOURCE.fullmatch(event.source) is None:
        raise ValueError(
            f"invalid event source {event.source!r}: 1 to 255 printable characters, no spaces"
        )
    return event


def validateSearch(namespace: object, pattern: object) -> Glob:
    """
    Check a namespace and a name pattern; return the pattern compiled.
    """
    validateName(namespace, "namespace")
    return Glob(pattern)  # type: ignore[arg-type]


def validateQuery(namespace: object, name: object, stale: object = None) -> None:
    validateName(namespace, "namespace")
    validateName(name, "name")
    if isinstance(stale, str):
        raise ValueError(f"invalid stale={stale!r}: must be a number of seconds, not text")
    if stale is not None:
        checkNumber(stale, f"invalid stale={stale!r}:", low=0)


class LastAnswers:
    """
    The last answer to each recent lookup, so that C{lookup(stale=...)} can
    fall back on it while the registry is unreachable.
    """

    def __init__(self, clock: IReactorTime, size: int = 1024):
        self._clock = clock
        self._size = size
        self._answers: OrderedDict[tuple[str, str], tuple[float, list[PeerRecord]]] = (
            OrderedDict()
        )

    def answering(
        self, lookup: Deferred[list[PeerRecord]], key: tuple[str, str], stale: float | None
    ) -> Deferred[list[PeerRecord]]:
        """
        C{lookup}, its answer remembered; if it fails and C{stale} is
        given, the last answer instead, if no older than C{stale} seconds.
        """
        lookup.addCallback(self.remember, key)
        if stale is not None:
            lookup.addErrback(self.fallBack, key, stale)
        return lookup

    def remember(self, records: list[PeerRecord], key: tuple[str, str]) -> list[PeerRecord]:
        self._answers[key] = (self._clock.seconds(), list(records))  # the caller may change its own
        self._answers.move_to_end(key)
        if len(self._answers) > self._size:
            self._answers.popitem(last=False)
        return records

    def fallBack(
        self, failure: Failure, key: tuple[str, str], stale: float
    ) -> StaleRecords | Failure:
        """
        The last answer for C{key} if the lookup failed for want of the
        registry and that answer is at most C{stale} seconds old.
        """
        if not failure.check(RegistryUnavailable) or key not in self._answers:
            return failure
        at, records = self._answers[key]
        age = self._clock.seconds() - at
        if age > stale:
            return failure
        reason = failure.getErrorMessage()
        log.warn(
            "lookup of {name!r} in namespace {ns!r} answered from a view {age:.1f}s old: {reason}",
            name=key[1],
            ns=key[0],
            age=age,
            reason=reason,
        )
        return StaleRecords(records, age, reason)


@attrs.frozen
class Snapshot:
    """
    The matching live instances at one moment, as a watcher catches up.

    @ivar seq: the namespace's event counter at that moment: buffered
        events numbered up to it are already reflected in C{records}.
    @ivar gone: for instances the watcher knew but the store no longer
        has, whether they C{left} or C{timedout}, where the store knows.
    """

    seq: int
    records: Sequence[PeerRecord]
    gone: dict[str, EventKind] = attrs.field(factory=dict)


class Store(Protocol):
    """
    The backend contract: what a backend provides to L{Lease} and
    L{Subscription}. Every operation that returns a L{Deferred} must fail
    with L{RegistryUnavailable} (naming the URL without its password)
    rather than wait past the backend's deadline.
    """

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        """
        Write C{record}, or refresh it, to live C{ttl} seconds from now,
        atomically; announce C{joined} to the namespace's watchers if it
        was not there and C{updated} if it differed. Leases call it to
        register, to update, and to write a record back after an outage;
        their heartbeats use L{extendLeases}.
        """

    def extendLeases(self, records: Sequence[PeerRecord], ttl: float) -> Deferred[None]:
        """
        A heartbeat of C{records} (all of one namespace): make each live
        C{ttl} seconds from now without writing it again; write back, as
        L{putRecord} would, those the store lost or let expire. The default,
        L{extendByPutting}, is a L{putRecord} of each; a store that can
        should do it in one call: a process may hold thousands of leases,
        and this is what their heartbeats cost.
        """

    def removeRecord(self, record: PeerRecord) -> Deferred[None]:
        """
        Remove C{record} and announce C{left}, if it was there; nothing if
        it was not (its lease may have expired meanwhile).
        """

    def forgetLease(self, lease: Lease) -> None:
        """
        Stop keeping C{lease} alive: do not write it back after a
        reconnect. Called when a lease is released or stopped.
        """

    def snapshot(self, namespace: str, glob: Glob, known: Sequence[str]) -> Deferred[Snapshot]:
        """
        The live instances matching C{glob} now, with the event counter
        they reflect, and, for the instance ids in C{known} that are gone,
        whether they C{left} or C{timedout} (where the store remembers).
        A watcher catching up compares this with what it had.
        """

    def unwatch(self, subscription: Subscription) -> None:
        """
        Deliver nothing more to C{subscription}; stop listening to the
        namespace when it was the last one there.
        """

    def storedRecords(self, namespace: str, keys: Sequence[Key]) -> Deferred[Stored]:
        """
        The live records stored under C{keys} (name, instance), each under
        its key (a key with no live record, or garbage, is left out), and
        the tombstones of the instances asked about that are gone. A
        subscription checks an event with it before believing it (see
        L{txmasse.registry.checking}).
        """


def extendByPutting(store: Store, records: Sequence[PeerRecord], ttl: float) -> Deferred[None]:
    """
    L{Store.extendLeases} for a store that has no cheaper way: a
    L{Store.putRecord} of each record (fails with the first failure).
    """
    puts = [store.putRecord(record, ttl) for record in records]
    d = DeferredList(puts, fireOnOneErrback=True, consumeErrors=True)
    return d.addCallbacks(lambda _: None, lambda f: f.value.subFailure)


class Registrations:
    """
    A backend's registrations in flight, and the take-backs of those that
    failed: a call that ran out of time or was cancelled may still have
    reached the store, and would otherwise leave a record nobody keeps
    alive (announced C{joined}, then C{timedout}). C{close()} cancels the
    first (L{cancelAll}) and waits for the second (L{takenBack}).
    """

    def __init__(self, store: Store):
        self._store = store
        self.pending: set[Deferred[None]] = set()
        self._undoing: set[Deferred[None]] = set()

    def register(self, lease: Lease, registered: Callable[[Lease], object]) -> Deferred[ILease]:
        """
        Write C{lease}'s record; once it is stored, call C{registered} and
        start the lease's heartbeat; if that fails, take the record back.
        """
        putting = self._store.putRecord(lease.record, lease.ttl)
        self.pending.add(putting)

        def stored(_: None) -> ILease:
            self.pending.discard(putting)
            registered(lease)
            lease.start()
            return lease

        def failed(failure: Failure) -> Failure:
            self.pending.discard(putting)
            self.takeBack(lease.record)
            return failure

        return putting.addCallbacks(stored, failed)

    def takeBack(self, record: PeerRecord) -> None:
        """
        Remove C{record} again; if that fails too, the store is unreachable:
        the registration never got there, or times out there.
        """
        undoing = self._store.removeRecord(record)
        self._undoing.add(undoing)
        undoing.addErrback(lambda _: None)
        undoing.addBoth(lambda _: self._undoing.discard(undoing))

    def cancelAll(self) -> None:
        """
        Cancel every registration in flight (each is then taken back).
        """
        for putting in list(self.pending):
            putting.cancel()

    def takenBack(self) -> Deferred[Any]:
        """
        Fires once every take-back under way has ended.
        """
        return DeferredList(list(self._undoing), consumeErrors=True)


@implementer(ILease)
class Lease:
    """
    Keeps one record alive with a heartbeat every C{ttl}/3 seconds.

    The record is written whole at registration and on update; a heartbeat
    only extends it (L{Store.extendLeases}), and the heartbeats of every
    lease of one store share one timer (L{HeartbeatWheel}), so a process
    may hold many thousands of leases cheaply. A failed heartbeat is
    logged and the next one tries again; a heartbeat that finds the record
    gone (store flushed or restarted) writes it back.
    """

    __slots__ = (
        "__weakref__",  # the masse_leases gauge counts live leases weakly
        "_due",
        "_failing",
        "_released",
        "_stopped",
        "_store",
        "_wheel",
        "record",
        "stamper",
        "ttl",
    )

    def __init__(self, store: Store, record: PeerRecord, ttl: float, clock: IReactorTime):
        self.record = record
        self.ttl = ttl
        self.stamper: Callable[[PeerRecord, float], PeerRecord] | None = None
        self._store = store
        self._released = False
        self._stopped = False
        self._failing = False
        self._wheel = wheelFor(store, clock)
        self._due = 0.0  # when the next heartbeat is due; 0 until started

    def __repr__(self) -> str:
        r = self.record
        return f"<Lease {r.namespace}/{r.name} instance={r.instance} ttl={self.ttl}>"

    @property
    def interval(self) -> float:
        return self.ttl / 3

    @property
    def beating(self) -> bool:
        """
        Whether the heartbeat runs: started, neither stopped nor released.
        """
        return bool(self._due) and not (self._stopped or self._released)

    def start(self) -> None:
        """
        Begin heartbeating, once the record is registered.
        """
        localInstances.add(self.record.instance)
        if self._released or self._stopped or self._due:
            return
        metrics.leaseStarted(self)
        self._due = self._wheel.clock.seconds() + self.interval
        self._wheel.add(self, self._due)

    def renewed(self) -> PeerRecord:
        """
        The record, with its freshness stamp renewed where a signed
        namespace's L{stamper} is set: what a heartbeat sends.
        """
        if self.stamper is not None:
            self.record = self.stamper(self.record, self.ttl)
        return self.record

    def nextDue(self, now: float) -> float:
        """
        The heartbeat due now is being sent: when the next one is due (in
        step with the first, unless that time has passed already).
        """
        self._due += self.interval
        if self._due <= now:
            self._due = now + self.interval
        return self._due

    def stop(self) -> None:
        """
        Stop heartbeating without removing the record (it will expire), as
        a crash would: the store no longer writes it back after an outage.
        """
        if self.beating:
            self._wheel.remove(self, self._due)
        self._stopped = True
        metrics.leaseStopped(self)
        self._store.forgetLease(self)

    def beatSucceeded(self) -> None:
        if self._failing:
            log.info("{lease}: heartbeat works again", lease=str(self))
        self._failing = False

    def beatFailed(self, failure: Failure) -> None:
        metrics.heartbeatFailed()
        if not self._failing:
            log.warn(
                "{lease}: heartbeat failed, retrying every {interval:.2f}s: {error}",
                lease=str(self),
                interval=self.interval,
                error=failure.getErrorMessage(),
            )
        self._failing = True

    @metrics.registryCall("refresh")
    def refresh(self) -> Deferred[None]:
        """
        Write the whole record again now (registration, update, write-back).
        """
        if self._released or self._stopped:
            return succeed(None)
        return self._store.putRecord(self.renewed(), self.ttl)

    def update(self, record: PeerRecord) -> Deferred[None]:
        old = self.record
        if (record.namespace, record.name, record.instance) != (
            old.namespace,
            old.name,
            old.instance,
        ):
            raise ValueError("an update must keep the record's namespace, name and instance")
        if self._released or self._stopped:
            state = "released" if self._released else "stopped"
            raise ValueError(f"{self!r} is {state}: register the record again")
        self.record = record
        return self.refresh()

    @metrics.registryCall("release")
    def release(self) -> Deferred[None]:
        if self._released:
            return succeed(None)
        self._released = True
        localInstances.discard(self.record.instance)
        self.stop()
        self._store.forgetLease(self)
        return self._store.removeRecord(self.record)


@implementer(ISubscription)
class Subscription:
    """
    One watcher's view of the matching instances, kept exact across missed
    messages and reconnects.

    Events may arrive twice (a notification and a snapshot saying the same
    thing) or be missed (while disconnected). The view absorbs both: a
    callback hears of a change only if it changes the view, so every join is
    followed by exactly one C{left} or C{timedout}.

    While a snapshot is being fetched, notifications are buffered and those
    numbered after the snapshot are applied on top of it. An instance the
    store lost without a trace (store restarted empty) is given
    C{grace} seconds to be written back by its lease before it counts as
    timed out.
    """

    @classmethod
    def forPattern(
        cls,
        store: Store,
        namespace: str,
        pattern: str,
        callback: Callable[[PeerEvent], object],
        clock: IReactorTime,
        grace: float = 3.0,
        usage: bool = False,
    ) -> Subscription:
        """
        A subscription to C{pattern} in C{namespace}, both checked first:
        what each backend's C{watch()} starts from.

        @raise ValueError: naming the bad namespace or pattern.
        """
        glob = validateSearch(namespace, pattern)
        return cls(store, namespace, glob, callback, clock, grace, usage=usage)

    def __init__(
        self,
        store: Store,
        namespace: str,
        glob: Glob,
        callback: Callable[[PeerEvent], object],
        clock: IReactorTime,
        grace: float = 3.0,
        maxBuffered: int = 10_000,
        usage: bool = False,
    ):
        self.namespace = namespace
        self.glob = glob
        self.usage = usage
        self._store = store
        self._callback = callback
        self._clock = clock
        self._grace = grace
        self._maxBuffered = maxBuffered
        self._view: dict[str, PeerRecord] = {}
        self._peers: tuple[PeerRecord, ...] | None = None  # the view, as last handed out
        self.current: tuple[PeerRecord, ...] | None = None
        """
        L{peers} as last read while synced, until that may no longer be the
        answer: C{None} from the next change to the view, lost notification,
        catch-up or stop on. A reader that kept the tuple tells in one
        comparison that it is still current (L{ISubscription}).
        """
        self._suspects: set[str] = set()
        # The last REMOVED_KEPT instances the view let go, latest last: news
        # of one again (a replayed join) is not shown before the store is read.
        self._removed: dict[str, None] = {}
        self._buffer: list[tuple[int, EventKind, PeerRecord]] | None = []
        self._generation = 0
        self.initial = True
        self._againAfterStart = False
        self._stopped = False
        self._connected = True
        self._pendingResync: IDelayedCall | None = None
        self._catchUpFailures = 0
        self._checks = EventChecks(
            lambda keys: store.storedRecords(namespace, keys),
            lambda instance: self._view.get(instance),
            self._settle,
            self._checkFailed,
        )
        self._doubts = Doubts(clock, self._contradicted)

    def __repr__(self) -> str:
        return f"<Subscription {self.namespace}/{self.glob.pattern} peers={len(self._view)}>"

    @property
    def peers(self) -> tuple[PeerRecord, ...]:
        """
        The view: the same tuple until it changes, so a connect can tell
        in one comparison that its candidates need no new ordering.
        """
        peers = self._peers
        if peers is None:
            peers = self._peers = tuple(self._view.values())
        if self.synced:
            self.current = peers
        return peers

    @property
    def synced(self) -> bool:
        return self._connected and self._buffer is None and not self._stopped

    def interrupted(self) -> None:
        """
        The store's notifications stopped reaching us: the view may miss
        changes until the next L{resync}, or L{resumed} if none were lost.
        """
        self._connected = False
        self.current = None

    def resumed(self) -> None:
        """
        Notifications reach us again and none were lost on the way.
        """
        self._connected = True

    def reconnected(self) -> None:
        """
        Notifications reach us again, some maybe lost on the way: catch up
        (a watch interrupted while taking its first snapshot takes one more
        after it).
        """
        if self.initial:
            self._againAfterStart = not self._connected
            return
        self._connected = True
        self.resync()

    def stop(self) -> None:
        if self._stopped:
            return
        self._stopped = True
        self.current = None
        self._cancelPendingResync()
        self._checks.clear()
        self._doubts.stop()
        self._store.unwatch(self)

    def received(self, seq: int, kind: EventKind, record: PeerRecord) -> None:
        """
        A notification from the store, numbered C{seq} in its namespace.
        """
        if self._stopped or not self.glob.matches(record.name):
            return
        self._doubts.heard(kind, record.instance)
        if self._buffer is None:
            self._check(kind, record)
            return
        self._buffer.append((seq, kind, record))
        if len(self._buffer) > self._maxBuffered:
            log.warn("{sub}: too many events while catching up; starting over", sub=str(self))
            self.resync()

    def receivedUsage(self, event: PeerEvent) -> None:
        """
        A stream-use report: passed on as it comes, outside the view, to a
        subscription that asked for them.
        """
        if self.usage and not self._stopped and self.glob.matches(event.record.name):
            if self._checks.needed(event):
                self._checks.add(event)  # heard after the events waiting
            else:
                self._deliver(event)

    def resync(self) -> Deferred[None]:
        """
        Catch up with the store: on start, and after every reconnect.
        """
        self._cancelPendingResync()
        self._checks.clear()  # the snapshot covers the events not yet checked
        self._generation += 1
        generation = self._generation
        self._buffer = []
        self.current = None
        return Deferred.fromCoroutine(self._catchUp(generation))

    async def _catchUp(self, generation: int) -> None:
        try:
            snapshot = await maybeDeferred(
                self._store.snapshot, self.namespace, self.glob, list(self._view)
            )
        except Exception as e:
            if generation != self._generation or self._stopped:
                return
            if self.initial:
                raise
            delay = CATCH_UP_RETRY(self._catchUpFailures)
            self._catchUpFailures += 1
            log.warn(
                "{sub}: could not catch up with the registry, retrying in {delay:.2f}s: {error}",
                sub=str(self),
                delay=delay,
                error=str(e),
            )
            self._pendingResync = self._clock.callLater(delay, self.resync)
            return
        if generation == self._generation and not self._stopped:
            self._catchUpFailures = 0
            self._caughtUp(snapshot)

    def _caughtUp(self, snapshot: Snapshot) -> None:
        buffered, self._buffer = self._buffer or [], None
        current = {r.instance: r for r in snapshot.records if self.glob.matches(r.name)}
        if self.initial:
            self.initial = False
            self._view, self._peers = current, None
        else:
            self._reconcile(current, snapshot.gone)
        for seq, kind, record in buffered:
            if seq > snapshot.seq:
                self._check(kind, record)
        if self._againAfterStart:
            self._againAfterStart = False
            self.reconnected()
        elif self._suspects:
            self._pendingResync = self._clock.callLater(self._grace, self.resync)

    def _reconcile(self, current: dict[str, PeerRecord], gone: dict[str, EventKind]) -> None:
        for record in current.values():
            self._apply(EventKind.JOINED, record)
        for instance, record in list(self._view.items()):
            if instance in current:
                continue
            kind = gone.get(instance)
            if kind is not None:
                self._apply(kind, record)
            elif instance in self._suspects:
                self._apply(EventKind.TIMEDOUT, record)
            else:
                self._suspects.add(instance)

    def _check(self, kind: EventKind, record: PeerRecord) -> None:
        """
        Apply an event once the store bears it out; drop at once one that
        would change nothing.

        News of a new instance with an unsigned record is shown at once and
        confirmed one read later (a ghost is taken back then), so that a
        registration gone again in a moment is still seen, and joins cost
        no latency.
        Whatever would change or remove what the view holds, or carries a
        signature (a signed namespace: nothing unproven may show there),
        waits for the store.
        """
        event = PeerEvent(kind, record)
        if not self._checks.needed(event):
            return
        early = (
            kind not in REMOVALS
            and record.signature is None
            and record.instance not in self._view
            and record.instance not in self._removed
            and not self._checks.pending(record.instance)
        )
        if early and not self._checks.busy:
            self._apply(kind, record)  # else in its place, behind those waiting
        self._checks.add(event, early)

    def _settle(self, batch: list[tuple[PeerEvent, bool]], stored: Stored) -> None:
        """
        Apply what the store says of each instance in C{batch}, at its last
        event there; an event the store contradicts is not applied. Usage
        reports, and events that may be shown early, are passed on in their
        place.
        """
        last = {
            event.record.instance: index
            for index, (event, _) in enumerate(batch)
            if event.kind not in USAGE_KINDS
        }
        for index, (event, early) in enumerate(batch):
            if self._stopped:
                return
            kind, record, instance = event.kind, event.record, event.record.instance
            if kind in USAGE_KINDS:
                self._deliver(event)
                continue
            if early:
                self._apply(kind, record)  # (done already if nothing was waiting)
            if last[instance] != index:
                continue  # what the store says now answers the later one
            known = self._view.get(instance)
            if kind in REMOVALS:
                held = stored.get(((known or record).name, instance))
                if held is None:
                    if known is not None:
                        self._apply(kind, known)
                    continue
                self._apply(EventKind.JOINED, held)
                self._doubt(kind, record, "the store still holds it, live")
                continue
            held = stored.get((record.name, instance))
            if held is None and known is not None:
                held = stored.get((known.name, instance))
            if sameRecord(held, record):
                self._apply(kind, record)
            elif held is not None:
                self._apply(EventKind.JOINED, held)
                self._doubt(kind, record, "the store holds another record for it")
            else:
                gone = stored.gone.get(instance)
                if known is not None and gone is None:  # a ghost: take it back
                    self._apply(EventKind.LEFT, known)
                    self._doubt(kind, record, "the store has no live record of it")
                elif known is not None:  # its own removal follows, in its place
                    why = f"the store says it {gone} already"
                    self._doubt(kind, record, why, takeBack=gone)
                else:
                    self._doubt(kind, record, "the store has no live record of it")

    def _doubt(
        self, kind: EventKind, record: PeerRecord, why: str, takeBack: EventKind | None = None
    ) -> None:
        """
        Doubt C{kind} for C{record} (L{Doubts.add}), unless an event about
        the instance heard while the store was read explains it already,
        as one heard later would (L{Doubts.heard}): its drain, then its
        release, checked one after the other, say.
        """
        for later in self._checks.waiting(record.instance):
            if takeBack is None or later in REMOVALS:
                return
        self._doubts.add(kind, record, why, takeBack)

    def _contradicted(
        self, kind: EventKind, record: PeerRecord, why: str, takeBack: EventKind | None
    ) -> None:
        """
        No later event explained why the store contradicted an event: say
        so, and let go of an instance the store says is gone (once the
        store confirms it).
        """
        known = self._view.get(record.instance)
        if takeBack is not None and known is not None and not self._stopped:
            self._check(takeBack, known)
        log.warn(
            "{sub}: a {kind} event in namespace {ns} for {name} instance {instance} "
            "at {endpoint} does not match the store: {why} (a forged or garbled event?)",
            sub=str(self),
            kind=str(kind),
            ns=self.namespace,
            name=record.name,
            instance=record.instance,
            endpoint=record.endpoints[0],
            why=why,
        )

    def _checkFailed(self, failure: Failure) -> None:
        if self._stopped:
            return
        log.warn(
            "{sub}: could not check events against the registry; catching up: {error}",
            sub=str(self),
            error=failure.getErrorMessage(),
        )
        self.resync().addErrback(lambda _: None)

    def _cancelPendingResync(self) -> None:
        if self._pendingResync is not None and self._pendingResync.active():
            self._pendingResync.cancel()
        self._pendingResync = None

    def _apply(self, kind: EventKind, record: PeerRecord) -> None:
        instance = record.instance
        known = self._view.get(instance)
        if kind in (EventKind.JOINED, EventKind.UPDATED):
            self._suspects.discard(instance)
            if known == record and known.signature == record.signature:
                return  # (a new signature is news: a signed watch may now accept it)
            self._view[instance] = record
            self._peers = self.current = None
            self._emit(EventKind.UPDATED if known is not None else EventKind.JOINED, record)
        elif known is not None:
            del self._view[instance]
            self._peers = self.current = None
            self._suspects.discard(instance)
            self._removed.pop(instance, None)  # the latest last
            self._removed[instance] = None
            if len(self._removed) > REMOVED_KEPT:
                del self._removed[next(iter(self._removed))]
            self._emit(kind, record)

    def _emit(self, kind: EventKind, record: PeerRecord) -> None:
        self._deliver(PeerEvent(kind, record))

    def _deliver(self, event: PeerEvent) -> None:
        metrics.watchEvent(event.kind)
        d = maybeDeferred(self._callback, event)
        d.addErrback(lambda f: log.failure("watch callback failed on {event}", f, event=event))
