"""
One namespace as the dashboard sees it: a watch keeps its members, a poll
of the leases (only while someone looks) keeps the time each has left.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any, Protocol

from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.logger import Logger
from twisted.python.failure import Failure

from txmasse.records import PeerRecord
from txmasse.registry import IRegistry, ISubscription, LeaseStatus, PeerEvent
from txmasse.registry.interface import USAGE_KINDS
from txmasse.retry import retryPolicy
from txmasse.web._records import recordJSON

log = Logger()

WATCH_RETRY = retryPolicy(1.0, 10.0)
"""Seconds before watching a namespace again, by failures so far."""

RECENT = 200
"""Events kept for a listener that arrives later (as C{recent} messages)."""


class Listener(Protocol):
    """
    Someone looking at a namespace: an event stream.
    """

    usage: bool

    def send(self, event: str | None, data: dict[str, Any]) -> None:
        """
        Pass on one message: C{event} names it (C{None}: a peer event).
        """


class NamespaceView:
    """
    The live members of one namespace, and the listeners told of changes.

    Heartbeats are no events, so the time a lease has left comes from
    C{leases()} every C{refresh} seconds while anyone listens, and soon
    after each join or update.
    """

    def __init__(
        self, registry: IRegistry, namespace: str, clock: IReactorTime, refresh: float = 1.0
    ):
        self.registry = registry
        self.namespace = namespace
        self.members: tuple[PeerRecord, ...] = ()
        """The live instances; replaced whole, so another thread may read it."""
        self.error: str | None = "not watching yet"
        self._clock = clock
        self._refresh = refresh
        self._subscription: ISubscription | None = None
        self._expires: dict[str, float] = {}
        self._listeners: set[Listener] = set()
        self._recent: deque[tuple[bool, dict[str, Any]]] = deque(maxlen=RECENT)
        self._failures = 0
        self._pending: IDelayedCall | None = None
        self._polling = False
        self._stopped = False
        self._synced = False

    def __repr__(self) -> str:
        return f"<NamespaceView {self.namespace} members={len(self.members)}>"

    @property
    def synced(self) -> bool:
        return self._subscription is not None and self._subscription.synced

    def start(self) -> None:
        """
        Watch the namespace, retrying (1 s, doubling to 10 s) while the
        registry does not answer.
        """
        self._pending = None
        watching = self.registry.watch(self.namespace, "*", self._received, usage=True)
        watching.addCallbacks(self._watching, self._watchFailed)

    def stop(self) -> None:
        self._stopped = True
        self._cancelPending()
        if self._subscription is not None:
            self._subscription.stop()
        for listener in list(self._listeners):
            self._listeners.discard(listener)

    def _watching(self, subscription: ISubscription) -> None:
        if self._stopped:
            subscription.stop()
            return
        self._subscription = subscription
        self._failures = 0
        self.error = None
        self.members = tuple(subscription.peers)
        for record in self.members:
            self._broadcast(None, self._eventJSON("present", record))
        self._statusChanged()
        self._pollSoon()

    def _watchFailed(self, failure: Failure) -> None:
        if self._stopped:
            return
        self.error = failure.getErrorMessage()
        delay = WATCH_RETRY(self._failures)
        self._failures += 1
        log.warn(
            "dashboard: cannot watch namespace {ns}, retrying in {delay:.2f}s: {error}",
            ns=self.namespace,
            delay=delay,
            error=self.error,
        )
        self._statusChanged()
        self._pending = self._clock.callLater(delay, self.start)

    # Listeners

    def listen(self, listener: Listener) -> Callable[[], None]:
        """
        Tell C{listener} of the last events (as C{recent} messages) and the
        current members (as C{present}), then of every change; returns the
        function that stops it.
        """
        self._listeners.add(listener)
        for usage, message in self._recent:
            if listener.usage or not usage:
                listener.send("recent", message)
        listener.send("status", self._statusJSON())
        for record in self.members:
            listener.send(None, self._eventJSON("present", record))
        self._pollSoon()
        return lambda: self._listeners.discard(listener)

    def _broadcast(self, event: str | None, data: dict[str, Any], usage: bool = False) -> None:
        for listener in list(self._listeners):
            if listener.usage or not usage:
                listener.send(event, data)

    def _eventJSON(
        self, kind: str, record: PeerRecord, source: str | None = None
    ) -> dict[str, Any]:
        message: dict[str, Any] = {
            "kind": kind,
            "time": self._clock.seconds(),
            "record": recordJSON(record, self._expires.get(record.instance)),
        }
        if source is not None:
            message["source"] = source
        return message

    def _statusJSON(self) -> dict[str, Any]:
        return {"namespace": self.namespace, "synced": self.synced, "error": self.error}

    def _statusChanged(self) -> None:
        synced = self.synced
        if synced != self._synced or not synced:
            self._synced = synced
            self._broadcast("status", self._statusJSON())

    # Events

    def _received(self, event: PeerEvent) -> None:
        if self._stopped:
            return
        usage = event.kind in USAGE_KINDS
        if not usage and self._subscription is not None:
            self.members = tuple(self._subscription.peers)
        message = self._eventJSON(event.kind, event.record, event.source)
        self._recent.append((usage, message))
        self._broadcast(None, message, usage)
        if not usage:
            self._pollSoon(0.05)

    # Leases

    def _pollSoon(self, delay: float = 0.0) -> None:
        """
        Poll the leases after C{delay} unless a poll is due sooner.
        """
        if self._stopped or self._subscription is None or not self._listeners:
            return
        if self._pending is not None and self._pending.active():
            if self._pending.getTime() <= self._clock.seconds() + delay:
                return
            self._pending.cancel()
        self._pending = self._clock.callLater(delay, self._poll)

    def _poll(self) -> None:
        self._pending = None
        if self._polling or not self._listeners or self._stopped:
            return
        self._polling = True
        d: Deferred[list[LeaseStatus]] = self.registry.leases(self.namespace, "*")
        d.addCallbacks(self._polled, self._pollFailed)
        d.addBoth(self._pollDone)

    def _polled(self, statuses: list[LeaseStatus]) -> None:
        self._expires = {status.record.instance: status.expiresIn for status in statuses}
        if self.error is not None:
            self.error = None
        self._broadcast(
            "leases",
            {
                "namespace": self.namespace,
                "time": self._clock.seconds(),
                "expiresIn": self._expires,
            },
        )
        self._statusChanged()

    def _pollFailed(self, failure: Failure) -> None:
        self.error = failure.getErrorMessage()
        self._statusChanged()

    def _pollDone(self, _: object) -> None:
        self._polling = False
        self._pollSoon(self._refresh)

    def _cancelPending(self) -> None:
        if self._pending is not None and self._pending.active():
            self._pending.cancel()
        self._pending = None
