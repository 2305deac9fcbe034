"""
The one place that turns a name into candidates: the instances to try, in
order, each with the endpoint descriptions a client accepts; and the name
resolutions cached in this process, kept fresh by the registry's events.

A client endpoint asks the registry for a name once, then watches it: while
the watch is live and synced, later connects read the instances from memory
and cost no registry round trip. Joins, updates, leaves and timeouts reach
the cache as events, so it follows the registry within an event's latency;
the endpoint drops an entry whose instance it could not reach and resolves
again, so a stale entry costs at most one failed connection attempt.

An entry is served only while its subscription is synced: from a lost
registry connection until the watch has caught up, connects ask the
registry as if there were no cache (and fail as it fails).
"""

from __future__ import annotations

import weakref
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from random import Random

import attrs
from twisted.internet.defer import Deferred, succeed
from twisted.internet.interfaces import IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmasse.descriptions import transportOf
from txmasse.records import PeerRecord, isPattern, validateName
from txmasse.registry.interface import IRegistry, ISubscription, PeerEvent
from txmasse.retry import retryPolicy

log = Logger()

MAX_ENTRIES = 256
"""Names (or patterns) cached per registry; the least recently used goes first
(one a repeated connect used goes to the back once instead: L{CacheEntry})."""

WATCH_RETRY = retryPolicy(1.0, 30.0)
"""Seconds before a name whose watch failed is watched again, by failures so far."""

WATCH_DELAY = 0.002
"""
Seconds between a lookup and the start of its name's watch: long enough for
the connect that asked to get under way, so that the watch's round trips do
not compete with it (they make a first connect a third slower otherwise).
"""


PICKS = ("random", "first", "roundrobin")


@attrs.frozen
class Candidate:
    """
    One thing a connect may try: an instance, and one of its endpoint
    descriptions (C{None} when the client accepts none of them, or when
    C{excluded} says why the instance is not tried).
    """

    record: PeerRecord
    description: str | None
    excluded: str | None = None


Conditions = tuple[tuple[str, str], ...]
"""C{(KEY, VALUE)} metadata conditions, in the order given."""


def checkConditions(conditions: object, option: str) -> Conditions:
    """
    C{meta.KEY=VALUE} or C{prefer.KEY=VALUE} conditions, from a mapping or
    pairs, checked: keys follow the metadata key rule, values are text.

    @raise ValueError: naming the bad condition.
    """
    if conditions is None:
        return ()
    items = list(conditions.items()) if isinstance(conditions, Mapping) else conditions
    if isinstance(items, str):
        raise ValueError(f"{option}: must be KEY=VALUE pairs, not {items!r}")
    checked = []
    for item in items:  # type: ignore[attr-defined]
        if not (isinstance(item, tuple | list) and len(item) == 2):
            raise ValueError(f"{option}: must be KEY=VALUE pairs, not {item!r}")
        key, value = item
        try:
            validateName(key, "metadata key")
        except ValueError as e:
            raise ValueError(f"{option}.{key}={value}: {e}") from None
        if not isinstance(value, str) or not value:
            raise ValueError(f"{option}.{key}: needs a value ({option}.{key}=VALUE)")
        checked.append((key, value))
    return tuple(checked)


def describeConditions(conditions: Conditions, option: str = "meta") -> str:
    return ":".join(f"{option}.{key}={value}" for key, value in conditions)


_HEALTH_RANK = {"passing": 0, "warning": 1}


@attrs.define(eq=False)
class Selection:
    """
    Which instances a client tries, in which order, over which endpoints.

    Whatever the options, C{critical} and draining instances are never
    tried (they come last, as C{excluded} candidates that only say why),
    and C{warning} ones only after every C{passing} one.

    @ivar pick: C{random}, C{first} (the longest registered) or
        C{roundrobin}: which instance comes first; the others follow.
    @ivar proto: transports accepted, best first; C{None} for any, in the
        peer's order.
    @ivar tlsOnly: only C{tls:} endpoints (a client that requires TLS never
        falls back to plain streams).
    @ivar meta: C{(KEY, VALUE)} conditions an instance's metadata must all
        meet to be a candidate at all.
    @ivar prefer: C{(KEY, VALUE)} conditions, most important first:
        instances meeting more important ones come first, the rest stay as
        fallbacks; C{pick} orders within each group.
    """

    pick: str = "random"
    proto: tuple[str, ...] | None = None
    tlsOnly: bool = False
    meta: Conditions = ()
    prefer: Conditions = ()
    random: Random = attrs.field(factory=Random, repr=False)
    _turns: int = attrs.field(default=0, init=False, repr=False)
    _last: tuple[object, str, tuple[Candidate, ...]] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _lastMatching: tuple[object, tuple[PeerRecord, ...]] | None = attrs.field(
        default=None, init=False, repr=False
    )
    _lastAlone: tuple[PeerRecord, str, tuple[Candidate, ...]] | None = attrs.field(
        default=None, init=False, repr=False
    )

    def __attrs_post_init__(self) -> None:
        if self.pick not in PICKS:
            raise ValueError(f"pick={self.pick!r}: must be one of {', '.join(PICKS)}")

    def takeTurn(self) -> int:
        """
        A connect's turn with C{roundrobin}: it keeps it however often it
        orders the instances again (else a dead instance would hand every
        turn after it to one peer, and concurrent connects would skip some).
        """
        turn = self._turns
        self._turns += 1
        return turn

    def candidates(
        self, records: Sequence[PeerRecord], turn: int, here: str
    ) -> Sequence[Candidate]:
        """
        What to try, in order: each instance per C{pick}, then each of its
        usable descriptions per C{proto}.

        Where the order does not change from one connect to the next (one
        instance, or C{pick=first}), the last answer is kept for the same
        tuple of records: a warm connect to a name whose instances have
        not changed orders nothing.
        """
        steady = self.isSteady(records)
        if steady:
            last = self._last
            if last is not None and last[0] is records and last[1] == here:
                return last[2]
        if len(records) == 1:  # the common case, kept short: nothing to order
            ordered = self._alone(records[0], here)
            if steady:
                self._last = (records, here, ordered)
            return ordered
        # Only the instances that can be tried take turns of the rotation
        # (else a turn landing on another passes to its neighbour, which
        # then gets two); the others follow, for the error message.
        tryable: list[tuple[PeerRecord, list[str]]] = []
        unusable: list[Candidate] = []
        excluded: list[Candidate] = []
        for record in records:
            if not record.usable:
                excluded.append(Candidate(record, None, record.state))
            elif descriptions := self.usable(record, here):
                tryable.append((record, descriptions))
            else:
                unusable.append(Candidate(record, None))
        described = {id(record): descriptions for record, descriptions in tryable}
        candidates = [
            Candidate(record, description)
            for record in self.ranked([record for record, _ in tryable], turn)
            for description in described[id(record)]
        ]
        ordered = (*candidates, *unusable, *excluded)
        if steady:
            self._last = (records, here, ordered)
        return ordered

    def isSteady(self, records: Sequence[PeerRecord]) -> bool:
        """
        Whether L{candidates} orders C{records} the same way each time it is
        given the same tuple: one instance, or C{pick=first}.
        """
        return type(records) is tuple and (len(records) == 1 or self.pick == "first")

    def _alone(self, record: PeerRecord, here: str) -> tuple[Candidate, ...]:
        """
        The candidates of a name's only instance: kept for the same record
        (the registries hand back the same record for the same bytes
        stored, so a cold connect to it orders nothing either).
        """
        last = self._lastAlone
        if last is not None and last[0] is record and last[1] == here:
            return last[2]
        ordered: tuple[Candidate, ...]
        if not record.usable:
            ordered = (Candidate(record, None, record.state),)
        elif descriptions := self.usable(record, here):
            ordered = tuple(Candidate(record, description) for description in descriptions)
        else:
            ordered = (Candidate(record, None),)
        self._lastAlone = (record, here, ordered)
        return ordered

    def matching(self, records: Sequence[PeerRecord]) -> Sequence[PeerRecord]:
        """
        The instances whose metadata meets every C{meta} condition.
        """
        if not self.meta:
            return records
        last = self._lastMatching
        if last is not None and last[0] is records:
            return last[1]  # the same tuple as last time: the same answer, for candidates()
        meta = self.meta
        matching = tuple(r for r in records if all(r.metadata.get(k) == v for k, v in meta))
        if type(records) is tuple:
            self._lastMatching = (records, matching)
        return matching

    def unmatched(self, records: Sequence[PeerRecord]) -> str:
        """
        For a message: the C{meta} conditions that no instance meets, or
        all of them if each is met by some but none meets them all.
        """
        alone = tuple(
            (k, v) for k, v in self.meta if not any(r.metadata.get(k) == v for r in records)
        )
        if alone:
            return describeConditions(alone)
        return f"{describeConditions(self.meta)} (together)"

    def ranked(self, records: Sequence[PeerRecord], turn: int) -> list[PeerRecord]:
        """
        The instances in the order to try them: by health, then by
        C{prefer}, then per C{pick} within each group.
        """
        prefer = self.prefer
        if len(records) == 1 or (
            not prefer and all(r.health == "passing" and not r.draining for r in records)
        ):
            return self.order(records, turn)  # the common cases, kept cheap
        # Unusable instances (draining, critical) rank last, in a group of
        # their own: a turn of the rotation never lands on one, or it would
        # pass to its neighbour, which would then get two turns.
        groups: dict[tuple[int, ...], list[PeerRecord]] = {}
        for record in records:
            metadata = record.metadata
            health = _HEALTH_RANK.get(record.health, 2) if record.usable else 3
            rank = (health, *(metadata.get(k) != v for k, v in prefer))
            groups.setdefault(rank, []).append(record)
        ordered: list[PeerRecord] = []
        for rank in sorted(groups):
            ordered.extend(self.order(groups[rank], turn))
        return ordered

    def order(self, records: Sequence[PeerRecord], turn: int) -> list[PeerRecord]:
        """
        The instances in the order C{pick} gives.
        """
        if len(records) == 1:
            return list(records)
        ordered = sorted(records, key=lambda record: (record.registered, record.instance))
        if self.pick == "random":
            self.random.shuffle(ordered)
        elif self.pick == "roundrobin" and ordered:
            start = turn % len(ordered)
            ordered = ordered[start:] + ordered[:start]
        return ordered

    def usable(self, record: PeerRecord, here: str) -> list[str]:
        """
        The record's endpoints this client may try, best first: never
        C{masse:} (no loops), C{unix:} only on the same host, only C{proto},
        only C{tls:} for a TLS client.
        """
        usable = []
        for description in record.endpoints:
            transport = transportOf(description)
            if transport == "masse" or (transport == "unix" and record.host != here):
                continue
            if self.tlsOnly and transport != "tls":
                continue
            if self.proto is None or transport in self.proto:
                usable.append(description)
        if self.proto is not None:
            proto = self.proto
            usable.sort(key=lambda description: proto.index(transportOf(description)))
        return usable


@attrs.frozen
class Resolution:
    """
    The live instances of a name, and whether they came from the cache.
    """

    records: Sequence[PeerRecord]
    cached: bool


@attrs.define(eq=False)
class CacheEntry:
    """
    One cached name: its watch, while it is starting or running.

    C{used} is set by a warm connect of
    L{txmasse.endpoints.MasseClientEndpoint} that repeats the last one
    instead of asking L{Resolver.cached} (which moves the entry to the back
    of the queue): such an entry goes to the back once instead of out.
    """

    namespace: str
    name: str
    subscription: ISubscription | None = None
    starting: bool = False
    stopped: bool = False
    retryAt: float = 0.0
    failures: int = 0
    used: bool = False

    def records(self) -> Sequence[PeerRecord] | None:
        """
        The instances to connect to from memory, or C{None} to ask the registry.
        """
        subscription = self.subscription
        # A registry of someone else's that does not say whether its watch
        # is current is never served from memory.
        if subscription is None or not getattr(subscription, "synced", False):
            return None
        return subscription.peers or None  # an empty answer is not cached

    def stop(self) -> None:
        self.stopped = True
        if self.subscription is not None:
            self.subscription.stop()
            self.subscription = None


def _ignore(event: PeerEvent) -> None:
    """
    A cache entry reads its subscription's peers; the events themselves are
    not needed.
    """


class Resolver:
    """
    Resolves names in one registry, from memory where a synced watch allows.

    @param maxEntries: names kept; the least recently used one is dropped
        (and its watch stopped) to make room (L{CacheEntry.used}).
    """

    def __init__(self, registry: IRegistry, clock: IReactorTime, maxEntries: int = MAX_ENTRIES):
        if maxEntries < 1:
            raise ValueError(f"maxEntries={maxEntries!r}: must be at least 1")
        self.registry = registry
        self.maxEntries = maxEntries
        self._clock = clock
        self._entries: OrderedDict[tuple[str, str], CacheEntry] = OrderedDict()
        self._watchFailing = False
        self._soon: set[tuple[str, str]] = set()

    def __repr__(self) -> str:
        return f"<Resolver {self.registry.url} entries={len(self._entries)}>"

    def __len__(self) -> int:
        return len(self._entries)

    def __contains__(self, key: tuple[str, str]) -> bool:
        return key in self._entries

    def resolve(self, namespace: str, name: str) -> Deferred[Resolution]:
        """
        The live instances of C{name} (or of the names matching it, if it is
        a pattern): from memory when a synced watch holds some, else from
        the registry, after which a watch starts in the background.
        """
        records = self.cached(namespace, name)
        if records is not None:
            return succeed(Resolution(records, cached=True))
        return self.fetch(namespace, name).addCallback(Resolution, cached=False)

    def fetch(self, namespace: str, name: str) -> Deferred[list[PeerRecord]]:
        """
        The registry's answer for C{name}, as L{ask}; then a watch starts
        in the background, so that the next resolution is from memory.
        """
        return self.ask(namespace, name).addCallback(self._answered, namespace, name)

    def cached(self, namespace: str, name: str) -> Sequence[PeerRecord] | None:
        """
        The instances of C{name} from memory, if a synced watch holds some;
        else C{None}: then L{resolve} asks the registry.
        """
        key = (namespace, name)
        entry = self._entries.get(key)
        if entry is None or self.registry.closed:
            return None
        records = entry.records()
        if records is not None:
            self._entries.move_to_end(key)
            entry.used = False  # its mark is for its place in the queue, which it has again
        return records

    def entry(self, namespace: str, name: str) -> CacheEntry | None:
        """
        C{name}'s cache entry, if it has one.
        """
        return self._entries.get((namespace, name))

    def isWarm(self, namespace: str, name: str) -> bool:
        """
        Whether C{name} would be resolved from memory now.
        """
        entry = self._entries.get((namespace, name))
        return entry is not None and entry.records() is not None and not self.registry.closed

    def forget(self, namespace: str, name: str) -> None:
        """
        Drop C{name}'s entry and stop its watch: the next resolution asks
        the registry (after a failed connect to a cached instance, say).
        """
        entry = self._entries.pop((namespace, name), None)
        if entry is not None:
            entry.stop()

    def clear(self) -> None:
        """
        Drop every entry and stop their watches.
        """
        entries, self._entries = list(self._entries.values()), OrderedDict()
        for entry in entries:
            entry.stop()

    def ask(self, namespace: str, name: str) -> Deferred[list[PeerRecord]]:
        """
        The registry's answer for C{name} (a lookup, or a find for a
        pattern), bypassing the cache.
        """
        if isPattern(name):
            return self.registry.find(namespace, name)
        return self.registry.lookup(namespace, name)

    def _answered(
        self, records: list[PeerRecord], namespace: str, name: str
    ) -> list[PeerRecord]:
        if self.registry.closed:
            self.clear()
        elif records:
            self._watchSoon(namespace, name)
        return records

    def _watchSoon(self, namespace: str, name: str) -> None:
        key = (namespace, name)
        if key not in self._soon:
            self._soon.add(key)
            self._clock.callLater(WATCH_DELAY, self._watch, namespace, name)

    def _watch(self, namespace: str, name: str) -> None:
        """
        Make sure C{name} has an entry with a watch running or starting.
        """
        key = (namespace, name)
        self._soon.discard(key)
        if self.registry.closed:
            return
        entry = self._entries.get(key)
        if entry is None:
            self._makeRoom()
            entry = self._entries[key] = CacheEntry(namespace, name)
        else:
            self._entries.move_to_end(key)
            entry.used = False
            if (
                entry.subscription is not None
                or entry.starting
                or self._clock.seconds() < entry.retryAt
            ):
                return  # running (maybe catching up), starting, or failed just now
        entry.starting = True
        watching = self.registry.watch(namespace, name, _ignore)
        watching.addCallbacks(
            lambda subscription: self._watching(subscription, entry),
            lambda failure: self._watchFailed(failure, entry),
        )

    def _makeRoom(self) -> None:
        """
        Drop the least recently used entries, and stop their watches, until
        there is room for one more; an entry a repeated connect used since
        it was last moved to the back goes to the back instead, once.
        """
        entries = self._entries
        while entries and len(entries) >= self.maxEntries:
            key, oldest = entries.popitem(last=False)
            if oldest.used:
                oldest.used = False
                entries[key] = oldest
            else:
                oldest.stop()

    def _watching(self, subscription: ISubscription, entry: CacheEntry) -> None:
        entry.starting = False
        if entry.stopped or self.registry.closed:
            subscription.stop()
            return
        entry.subscription = subscription
        entry.failures = 0
        if self._watchFailing:
            log.info("{resolver}: watches work again", resolver=str(self))
        self._watchFailing = False

    def _watchFailed(self, failure: Failure, entry: CacheEntry) -> None:
        entry.starting = False
        retry = WATCH_RETRY(entry.failures)
        entry.failures += 1
        entry.retryAt = self._clock.seconds() + retry
        if not self._watchFailing and not entry.stopped:
            log.warn(
                "{resolver}: could not watch {name!r} in namespace {namespace!r}, so connects "
                "to it ask the registry each time (watching again in {retry:g}s): {error}",
                resolver=str(self),
                name=entry.name,
                namespace=entry.namespace,
                retry=retry,
                error=failure.getErrorMessage(),
            )
            self._watchFailing = True


_resolvers: weakref.WeakKeyDictionary[IRegistry, Resolver] = weakref.WeakKeyDictionary()


def resolverFor(registry: IRegistry, clock: IReactorTime) -> Resolver:
    """
    The resolver of C{registry}, one per registry object in this process,
    so every endpoint using that registry shares its cache and watches.
    """
    resolver = _resolvers.get(registry)
    if resolver is None:
        for closed in [r for r in _resolvers if r.closed]:  # their entries hold them
            _resolvers.pop(closed).clear()
        resolver = _resolvers[registry] = Resolver(registry, clock)
    return resolver
