"""
What the DNS server knows: one registry watch per namespace asked about,
started by the first query for it and kept current by the registry's
events, so that later queries need no registry round trip. At most
C{maxNamespaces} are watched; the one asked about least recently is
dropped to make room.
"""

from __future__ import annotations

import functools
from collections import OrderedDict
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.interfaces import IReactorTime
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmasse.dns.addresses import HostPort, hostPort
from txmasse.dns.labels import labelOf
from txmasse.records import PeerRecord
from txmasse.registry import IRegistry, ISubscription, PeerEvent

log = Logger()

RETRY_AFTER = 1.0
"""Seconds a namespace whose watch failed answers SERVFAIL before trying again."""


class Unavailable(Exception):
    """
    The registry cannot tell us about this namespace now: SERVFAIL.
    """


@functools.lru_cache(maxsize=4096)
def _streams(description: str) -> HostPort | None:
    """
    L{hostPort}, with a bad description logged once and skipped.
    """
    try:
        return hostPort(description)
    except ValueError as e:
        log.warn("masse dns: skipping endpoint: {error}", error=str(e))
        return None


@attrs.frozen
class Instance:
    """
    One live instance as DNS sees it: its stream endpoints, in the
    record's order of preference.
    """

    record: PeerRecord
    label: str | None
    streams: tuple[HostPort, ...]


@attrs.define
class Name:
    """
    The instances behind one label; ambiguous when several txmasse names
    (or instance ids) fold to it.
    """

    label: str
    names: set[str] = attrs.field(factory=set)
    instances: list[Instance] = attrs.field(factory=list)

    @property
    def ambiguous(self) -> bool:
        return len(self.names) > 1

    def instance(self, label: str) -> list[Instance]:
        return [instance for instance in self.instances if instance.label == label]


def index(records: Sequence[PeerRecord]) -> dict[str, Name]:
    """
    The names of a namespace by label; names DNS cannot express are left out.
    """
    names: dict[str, Name] = {}
    for record in records:
        label = labelOf(record.name)
        if label is None:
            continue
        entry = names.get(label)
        if entry is None:
            entry = names[label] = Name(label)
        entry.names.add(record.name)
        streams = tuple(s for s in map(_streams, record.endpoints) if s is not None)
        entry.instances.append(Instance(record, labelOf(record.instance), streams))
    for entry in names.values():
        entry.instances.sort(key=lambda i: (i.record.registered, i.record.instance))
    return names


class NamespaceView:
    """
    One namespace, as a registry watch keeps it: C{names()} is rebuilt
    only after an event changed it.
    """

    def __init__(self, namespace: str, clock: IReactorTime):
        self.namespace = namespace
        self.subscription: ISubscription | None = None
        self.failedAt: float | None = None
        self.lostAt: float | None = None
        self._clock = clock
        self._names: dict[str, Name] | None = None
        self._waiting: list[Deferred[NamespaceView]] = []
        self._stopped = False
        self.starting: Deferred[ISubscription] | None = None

    def __repr__(self) -> str:
        return f"<NamespaceView {self.namespace!r}>"

    def changed(self, event: PeerEvent) -> None:
        self._names = None

    def names(self) -> dict[str, Name]:
        if self._names is None:
            assert self.subscription is not None
            self._names = index(self.subscription.peers)
        return self._names

    def start(self, registry: IRegistry) -> None:
        self.starting = maybeDeferred(registry.watch, self.namespace, "*", self.changed)
        self.starting.addCallbacks(self._started, self._failed)

    def _started(self, subscription: ISubscription) -> None:
        self.starting = None
        if self._stopped:
            subscription.stop()
            return
        self.subscription = subscription
        self._names = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.callback(self)

    def _failed(self, failure: Failure) -> None:
        self.starting = None
        self.failedAt = self._clock.seconds()
        if not failure.check(CancelledError):
            log.warn(
                "masse dns: cannot watch namespace {namespace!r}: {error}",
                namespace=self.namespace,
                error=failure.getErrorMessage(),
            )
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(Unavailable(f"namespace {self.namespace!r}: {failure.getErrorMessage()}"))

    def whenReady(self, timeout: float) -> Deferred[NamespaceView]:
        """
        Fires with this view once its watch is live, or fails with
        L{Unavailable} after C{timeout} seconds or when the watch fails.
        """
        d: Deferred[NamespaceView] = Deferred()
        self._waiting.append(d)
        timer = self._clock.callLater(timeout, self._late, d, timeout)

        def done(result: Any) -> Any:
            if timer.active():
                timer.cancel()
            return result

        return d.addBoth(done)

    def _late(self, d: Deferred[NamespaceView], timeout: float) -> None:
        if d in self._waiting:
            self._waiting.remove(d)
            d.errback(Unavailable(f"namespace {self.namespace!r}: no watch within {timeout:g}s"))

    def check(self, now: float, stale: float) -> None:
        """
        Note when the watch lost touch with the registry; raise
        L{Unavailable} once its view is older than C{stale} seconds.
        """
        subscription = self.subscription
        if subscription is None:
            return
        if subscription.synced:
            self.lostAt = None
            return
        if self.lostAt is None:
            self.lostAt = now
            log.warn(
                "masse dns: lost the registry for namespace {namespace!r}; answering from "
                "the last view for {stale:g}s",
                namespace=self.namespace,
                stale=stale,
            )
        if now - self.lostAt > stale:
            raise Unavailable(
                f"namespace {self.namespace!r}: registry unreachable for {now - self.lostAt:.0f}s"
            )

    def stop(self) -> None:
        self._stopped = True
        if self.starting is not None:
            self.starting.cancel()
        if self.subscription is not None:
            self.subscription.stop()
            self.subscription = None
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(Unavailable(f"namespace {self.namespace!r}: no longer watched"))


class Views:
    """
    The watched namespaces, at most C{maxNamespaces}, least recently asked
    about dropped first.

    @ivar stale: seconds a namespace whose watch lost the registry is
        still answered from its last view (then SERVFAIL until it is back).
    """

    def __init__(
        self,
        registry: IRegistry,
        clock: IReactorTime,
        maxNamespaces: int = 64,
        stale: float = 30.0,
        watchTimeout: float = 3.0,
    ):
        self.registry = registry
        self.maxNamespaces = maxNamespaces
        self.stale = stale
        self.watchTimeout = watchTimeout
        self._clock = clock
        self._views: OrderedDict[str, NamespaceView] = OrderedDict()
        self._checking: LoopingCall | None = None

    def __len__(self) -> int:
        return len(self._views)

    def __contains__(self, namespace: object) -> bool:
        return namespace in self._views

    def get(self, namespace: str) -> NamespaceView | Deferred[NamespaceView]:
        """
        The namespace's view: at once if it is watched, else a Deferred
        that fires once the watch this starts is live.

        @raise Unavailable: its watch failed less than a second ago, or its
            view is too stale.
        """
        view = self._views.get(namespace)
        now = self._clock.seconds()
        if view is not None:
            self._views.move_to_end(namespace)
            if view.subscription is not None:
                view.check(now, self.stale)
                return view
            if view.starting is not None:
                return view.whenReady(self.watchTimeout)
            assert view.failedAt is not None
            if now - view.failedAt < RETRY_AFTER:
                raise Unavailable(f"namespace {namespace!r}: the registry did not answer")
            del self._views[namespace]
        while len(self._views) >= self.maxNamespaces:
            _, oldest = self._views.popitem(last=False)
            oldest.stop()
        view = self._views[namespace] = NamespaceView(namespace, self._clock)
        self._startChecking()
        waiting = view.whenReady(self.watchTimeout)
        view.start(self.registry)
        return waiting

    def _startChecking(self) -> None:
        if self._checking is None:
            self._checking = LoopingCall(self._checkAll)
            self._checking.clock = self._clock
            self._checking.start(1.0, now=False)

    def _checkAll(self) -> None:
        now = self._clock.seconds()
        for view in self._views.values():
            try:
                view.check(now, self.stale)
            except Unavailable:
                pass

    def stop(self) -> None:
        if self._checking is not None and self._checking.running:
            self._checking.stop()
        self._checking = None
        views, self._views = list(self._views.values()), OrderedDict()
        for view in views:
            view.stop()
