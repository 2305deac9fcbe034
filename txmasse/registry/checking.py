"""
Membership events checked against the store before a view believes them.

Anyone who can publish on a namespace's event channel (or insert a row in
SQLite's events table) can send any event: a C{joined} for an address of
their choosing, a C{timedout} for a peer that is alive. The store is the
truth and events are only news about it, so a view (a
L{txmasse.registry.base.Subscription}, and through it groups and the connect
cache) reads the instance back from the store for every event that would
change it:

  - C{left}/C{timedout} is applied only once the store no longer holds the
    instance, and C{updated} (or a C{joined} for an instance the view
    holds, or a signed record) only once the store holds that very record;
  - C{joined} of a new instance with an unsigned record is shown at once
    (joins cost no latency, and a registration gone again in a moment is
    still seen), then confirmed one read later: if the store never had it
    (no tombstone), it is taken back at once, as C{left}; if it went
    already, its own C{left} or C{timedout} is on the way and is applied
    in its place (or, if none comes within L{DOUBT_DELAY}, the one the
    store's tombstone names: the same join again, replayed, neither
    explains the store's word nor puts that off); an instance a view let
    go lately is not shown early again.

Events that would change nothing cost nothing. The others are read back in
batches, one read in flight per view: under a burst, the events that arrive
during a read share the next one, and every event waits behind those
already waiting, so all are heard in order. An event the store contradicts
is not applied (the view takes what the store holds instead) and, unless a
later event about the same instance explains it (a record that changed
again meanwhile, heard while the store was read or within L{DOUBT_DELAY}
after), a warning names the namespace and instance.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from txmasse.records import PeerRecord
from txmasse.registry.interface import USAGE_KINDS, EventKind, PeerEvent

REMOVALS = (EventKind.LEFT, EventKind.TIMEDOUT)

DOUBT_DELAY = 1.0
"""
Seconds a contradicted event waits for a later event about the same
instance (which would explain it) before it is reported as not matching
the store.
"""

Key = tuple[str, str]
"""(name, instance): where the store keeps a record."""

@attrs.frozen
class Stored:
    """
    What the store holds for the keys asked.

    @ivar records: each live record, under its key.
    @ivar gone: for instances asked about that the store no longer holds,
        whether they C{left} or C{timedout}, where it remembers.
    """

    records: Mapping[Key, PeerRecord] = attrs.field(factory=dict)
    gone: Mapping[str, EventKind] = attrs.field(factory=dict)

    def get(self, key: Key) -> PeerRecord | None:
        return self.records.get(key)


def sameRecord(a: PeerRecord | None, b: PeerRecord | None) -> bool:
    """
    Whether C{a} and C{b} are the same record, signature included.
    """
    return a is not None and b is not None and a == b and a.signature == b.signature


class EventChecks:
    """
    The events a view has heard but not yet checked, and the read of the
    store that checks them.

    @param fetch: reads the live records stored under some keys.
    @param known: the record the view has for an instance, if any.
    @param settle: given a batch of events, in order, each with whether it
        may be shown before it is confirmed, and what the store holds for
        them, applies what is true. Once events wait, every later one
        waits behind them (usage reports too), so that all are heard in
        order.
    @param failed: the read failed: the view must catch up another way.
    """

    def __init__(
        self,
        fetch: Callable[[Sequence[Key]], Deferred[Stored]],
        known: Callable[[str], PeerRecord | None],
        settle: Callable[[list[tuple[PeerEvent, bool]], Stored], None],
        failed: Callable[[Failure], None],
    ):
        self._fetch = fetch
        self._known = known
        self._settle = settle
        self._failed = failed
        self._queued: list[tuple[PeerEvent, bool]] = []
        self._reading: list[tuple[PeerEvent, bool]] | None = None
        self._instances: dict[str, int] = {}  # queued or being read: how many events each
        self._generation = 0

    def pending(self, instance: str) -> bool:
        """
        Whether an event about C{instance} waits for the store's word.
        """
        return instance in self._instances

    def waiting(self, instance: str) -> list[EventKind]:
        """
        The kinds of the events about C{instance} queued behind the read in
        flight: heard later than those it checks.
        """
        return [event.kind for event, _ in self._queued if event.record.instance == instance]

    @property
    def busy(self) -> bool:
        """
        Whether any event waits: a new one must then wait behind it.
        """
        return bool(self._instances)

    def needed(self, event: PeerEvent) -> bool:
        """
        Whether C{event} could change the view (or must wait behind one
        that could), so that it goes through the store.
        """
        record = event.record
        if self.busy:
            return True
        if event.kind in USAGE_KINDS:
            return False
        known = self._known(record.instance)
        if event.kind in REMOVALS:
            return known is not None
        return not sameRecord(known, record)

    def add(self, event: PeerEvent, early: bool = False) -> None:
        """
        Check C{event}; C{early} if it may be shown before it is confirmed.
        """
        instance = event.record.instance
        self._queued.append((event, early))
        self._instances[instance] = self._instances.get(instance, 0) + 1
        if self._reading is None:
            self._read()

    def clear(self) -> None:
        """
        Forget every unchecked event: a snapshot of the store covers them.
        """
        self._generation += 1
        self._queued = []
        self._reading = None
        self._instances = {}

    def _read(self) -> None:
        batch, self._queued = self._queued, []
        self._reading = batch
        keys: dict[Key, None] = {}
        for event, _ in batch:
            record = event.record
            if event.kind in USAGE_KINDS:
                continue
            keys[(record.name, record.instance)] = None
            known = self._known(record.instance)
            if known is not None:
                keys[(known.name, record.instance)] = None
        generation = self._generation
        d = self._fetch(list(keys)) if keys else succeed(Stored())
        d.addCallbacks(
            self._readDone,
            self._readFailed,
            callbackArgs=(generation, batch),
            errbackArgs=(generation,),
        )

    def _readDone(
        self, stored: Stored, generation: int, batch: list[tuple[PeerEvent, bool]]
    ) -> None:
        if generation != self._generation:
            return
        try:
            # Still reading meanwhile: an event the settling causes (a
            # callback that registers, say) waits behind the batch.
            self._settle(batch, stored)
        finally:
            if generation == self._generation:
                self._reading = None
                for event, _ in batch:
                    instance = event.record.instance
                    left = self._instances[instance] - 1
                    if left:
                        self._instances[instance] = left
                    else:
                        del self._instances[instance]
                if self._queued:
                    self._read()

    def _readFailed(self, failure: Failure, generation: int) -> None:
        if generation != self._generation:
            return
        self.clear()
        self._failed(failure)


class Doubts:
    """
    Events the store contradicted, each reported with a warning unless a
    later event about the same instance arrives within L{DOUBT_DELAY}.
    """

    def __init__(
        self,
        clock: IReactorTime,
        report: Callable[[EventKind, PeerRecord, str, EventKind | None], None],
    ):
        self._clock = clock
        self._report = report
        self._doubts: dict[str, tuple[float, EventKind, PeerRecord, str, EventKind | None]] = {}
        self._call: IDelayedCall | None = None

    def add(
        self, kind: EventKind, record: PeerRecord, why: str, takeBack: EventKind | None = None
    ) -> None:
        """
        Report C{kind} for C{record}, and C{why}, unless explained in time;
        with C{takeBack}, the view holds an instance that the store says
        went that way, and must let it go then.
        """
        now = at = self._clock.seconds()
        earlier = self._doubts.get(record.instance)
        if earlier is not None:  # its time is kept: more of the same puts nothing off
            at, takeBack = earlier[0], takeBack or earlier[4]
        self._doubts[record.instance] = (at, kind, record, why, takeBack)
        if self._call is None:
            self._call = self._clock.callLater(max(0.0, at + DOUBT_DELAY - now), self._due)

    def heard(self, kind: EventKind, instance: str) -> None:
        """
        A later event about C{instance}: it explains an earlier mismatch,
        but for an instance the store says is gone, only its removal does
        (another join, forged again, must not keep it in the view).
        """
        earlier = self._doubts.get(instance)
        if earlier is not None and (earlier[4] is None or kind in REMOVALS):
            del self._doubts[instance]

    def stop(self) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._call = None
        self._doubts = {}

    def _due(self) -> None:
        self._call = None
        now = self._clock.seconds()
        for instance, (at, kind, record, why, takeBack) in list(self._doubts.items()):
            if now - at >= DOUBT_DELAY:
                del self._doubts[instance]
                self._report(kind, record, why, takeBack)
        if self._doubts:
            first = min(doubt[0] for doubt in self._doubts.values())
            self._call = self._clock.callLater(max(0.0, first + DOUBT_DELAY - now), self._due)
