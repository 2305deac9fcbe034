"""
Peer groups: one connection to every live instance whose name matches a
pattern, kept up to date from a registry watch, and calls fanned out to all.

A L{PeerGroup} is en-masse's C{to('db-*')} kept open: it connects to each
instance that joins, drops those that leave or time out, reconnects (with
backoff) to those that are still registered when their connection drops,
and reconnects to those whose endpoints change.
"""

from __future__ import annotations

import random
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import attrs
from twisted.application.internet import backoffPolicy
from twisted.application.service import Service
from twisted.internet.defer import Deferred, DeferredList, gatherResults, succeed
from twisted.internet.interfaces import IDelayedCall, IProtocol, IProtocolFactory
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure

from txmasse.endpoints import MasseClientEndpoint
from txmasse.records import Glob, PeerRecord, validateName
from txmasse.registry import IRegistry, ISubscription, PeerEvent, registryFromURL
from txmasse.registry.base import localInstances
from txmasse.registry.interface import EventKind
from txmasse.wrappers import Wrapper

log = Logger()

PeerObserver = Callable[[PeerRecord, IProtocol], object]
UpdateObserver = Callable[[PeerRecord, IProtocol | None], object]


def defaultRetryPolicy() -> Callable[[int], float]:
    """
    0.1 s after the first failure, doubling up to 5 s, plus up to 0.1 s of
    jitter so that many groups do not reconnect to a restarted peer at once.
    """
    return backoffPolicy(
        initialDelay=0.1, maxDelay=5.0, factor=2.0, jitter=lambda: random.uniform(0, 0.1)
    )


class _Wire(ProtocolWrapper):
    """
    Nearest the wire: tells the group when a connection is made and lost.
    """

    factory: _WireFactory

    def makeConnection(self, transport: Any) -> None:
        self.factory.member.wire = self
        super().makeConnection(transport)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.lost(self.factory.member, self)


class _WireFactory(WrappingFactory[_Wire]):
    protocol = _Wire

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        member: _Member,
        lost: Callable[[_Member, _Wire], None],
    ):
        super().__init__(wrappedFactory)
        self.member = member
        self.lost = lost


@attrs.define(eq=False)
class _Member:
    """
    One instance the group wants a connection to, and where that stands.
    """

    record: PeerRecord
    current: bool = True
    protocol: IProtocol | None = None
    wire: _Wire | None = None
    attempt: Deferred[IProtocol] | None = None
    retry: IDelayedCall | None = None
    failures: int = 0
    closed: list[Deferred[None]] = attrs.Factory(list)


class PeerGroup(Service):
    """
    Keeps one connection to every live instance whose name matches
    C{pattern} in C{namespace}.

    The group connects only to instances a client endpoint would (not
    C{critical}, not draining), but keeps its connection to one that turns
    C{critical} or starts draining: L{onPeerUpdated} tells of the change,
    and L{callAll} leaves such peers out unless asked.

    @param registry: an L{IRegistry}, or its URL.
    @param factory: builds the application's protocol for each connection.
    @param wrappers: protocol factory wrappers, the first nearest the wire,
        as for L{MasseClientEndpoint}.
    @param includeSelf: also connect to instances this process registered
        (left out by default, so a peer in its own group does not call
        itself).
    @param proto: transports to accept, as for L{MasseClientEndpoint}.
    @param connectTimeout: seconds for each connection attempt.
    @param retryPolicy: attempt number (0 for the first retry) to seconds
        to wait, as for L{twisted.application.internet.ClientService}.
    @param reactor: default: the global reactor.
    @param meta: metadata an instance must have to be in the group (all
        of it), as C{meta.KEY=VALUE} for a client endpoint.

    @ivar connections: (property) each connected instance's record, to the
        application's protocol.
    @ivar peers: (property) the records of every instance the group wants a
        connection to: live, matching and not left out, connected or not.
    """

    def __init__(
        self,
        registry: IRegistry | str,
        namespace: str,
        pattern: str,
        factory: IProtocolFactory,
        wrappers: Sequence[Wrapper] = (),
        includeSelf: bool = False,
        proto: Sequence[str] | None = None,
        connectTimeout: float = 10.0,
        retryPolicy: Callable[[int], float] | None = None,
        reactor: Any = None,
        meta: Mapping[str, str] | None = None,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.namespace = validateName(namespace, "namespace")
        self.pattern = Glob(pattern).pattern
        self.factory = factory
        self.includeSelf = includeSelf
        self.registry = registry
        self.retryPolicy = defaultRetryPolicy() if retryPolicy is None else retryPolicy
        # Checks wrappers, proto and timeout once, with the endpoint's own rules.
        self._endpoint = MasseClientEndpoint(
            reactor,
            self.pattern,
            namespace,
            registry,
            timeout=connectTimeout,
            proto=proto,
            wrappers=wrappers,
            meta=meta,
        )
        self._reactor = reactor
        self._members: dict[str, _Member] = {}
        self._subscription: ISubscription | None = None
        self._watching: Deferred[ISubscription] | None = None
        self._watchRetry: IDelayedCall | None = None
        self._watchFailures = 0
        self._added: list[PeerObserver] = []
        self._removed: list[PeerObserver] = []
        self._updated: list[UpdateObserver] = []

    def __repr__(self) -> str:
        return f"<PeerGroup {self.namespace}/{self.pattern} connected={len(self.connections)}>"

    @property
    def connections(self) -> dict[PeerRecord, IProtocol]:
        return {
            member.record: member.protocol
            for member in self._members.values()
            if member.protocol is not None
        }

    @property
    def peers(self) -> list[PeerRecord]:
        return [member.record for member in self._members.values()]

    # Observers

    def onPeerAdded(self, callback: PeerObserver) -> Callable[[], None]:
        """
        Call C{callback(record, protocol)} each time a connection enters
        C{connections}. Returns a function that stops the calls.
        """
        return self._observe(self._added, callback)

    def onPeerRemoved(self, callback: PeerObserver) -> Callable[[], None]:
        """
        Call C{callback(record, protocol)} each time a connection leaves
        C{connections}: the peer left or timed out, its connection dropped
        (a reconnect adds it again) or the group stopped.
        """
        return self._observe(self._removed, callback)

    def onPeerUpdated(self, callback: UpdateObserver) -> Callable[[], None]:
        """
        Call C{callback(record, protocol)} each time a member's record
        changes in place (its health, drain state or metadata; the
        protocol is C{None} while it is not connected). Returns a function
        that stops the calls.
        """
        return self._observe(self._updated, callback)

    @staticmethod
    def _observe(observers: list[Any], callback: Any) -> Callable[[], None]:
        observers.append(callback)
        return lambda: observers.remove(callback) if callback in observers else None

    def _notify(
        self, observers: list[PeerObserver], record: PeerRecord, protocol: IProtocol
    ) -> None:
        for callback in list(observers):
            try:
                callback(record, protocol)
            except Exception:
                log.failure(
                    "{group}: observer {callback} failed",
                    group=str(self),
                    callback=repr(callback),
                )

    # Fan-out

    def callAll(
        self,
        command: Any,
        callTimeout: float | None = None,
        includeCritical: bool = False,
        **arguments: object,
    ) -> Deferred[dict[PeerRecord, object]]:
        """
        Call the AMP C{command} on every connected peer at once; those
        C{critical} or draining only with C{includeCritical}.

        Fires with each peer's record mapped to its answer, or to the
        L{Failure<twisted.python.failure.Failure>} it gave (a peer that is
        not AMP, a remote error, a lost connection,
        L{twisted.internet.defer.TimeoutError} after C{callTimeout}
        seconds): one peer's failure does not hide the others.
        """
        records: list[PeerRecord] = []
        calls: list[Deferred[object]] = []
        for record, protocol in self.connections.items():
            if not (includeCritical or record.usable):
                continue
            records.append(record)
            try:
                call: Deferred[object] = protocol.callRemote(command, **arguments)  # type: ignore[attr-defined]
            except Exception:
                call = Deferred()
                call.errback()
            if callTimeout is not None:
                call.addTimeout(callTimeout, self._reactor)
            calls.append(call)
        done = DeferredList(calls, consumeErrors=True)
        return done.addCallback(
            lambda results: {
                record: outcome for record, (_, outcome) in zip(records, results, strict=True)
            }
        )

    def broadcast(self, data: bytes) -> int:
        """
        Write C{data} to every connected peer's transport; the number of
        peers written to.
        """
        written = 0
        for record, protocol in self.connections.items():
            transport: Any = getattr(protocol, "transport", None)
            try:
                transport.write(data)
            except Exception:
                log.failure(
                    "{group}: could not write to {record}", group=str(self), record=str(record)
                )
            else:
                written += 1
        return written

    # The service

    def startService(self) -> None:
        super().startService()
        if isinstance(self.registry, str):
            self.registry = registryFromURL(self._reactor, self.registry)
        self._watch()

    def stopService(self) -> Deferred[None]:
        """
        Stop watching, cancel pending reconnects, close every connection;
        fires once they are all closed.
        """
        super().stopService()
        if self._watchRetry is not None and self._watchRetry.active():
            self._watchRetry.cancel()
        self._watchRetry = None
        # A watch still starting is stopped by _watched when it fires.
        if self._subscription is not None:
            self._subscription.stop()
            self._subscription = None
        closing = [self._drop(instance) for instance in list(self._members)]
        return gatherResults(closing).addCallback(lambda _: None)

    def _watch(self) -> None:
        self._watchRetry = None
        registry: Any = self.registry
        self._watching = registry.watch(self.namespace, self.pattern, self._event)
        self._watching.addCallbacks(self._watched, self._watchFailed)

    def _watched(self, subscription: ISubscription) -> None:
        self._watching = None
        if not self.running:
            subscription.stop()
            return
        self._watchFailures = 0
        self._subscription = subscription
        for record in subscription.peers:
            self._joined(record)

    def _watchFailed(self, failure: Failure) -> None:
        self._watching = None
        if not self.running:
            return
        delay = self.retryPolicy(self._watchFailures)
        self._watchFailures += 1
        log.warn(
            "{group}: cannot watch the registry, retrying in {delay:.2f}s: {error}",
            group=str(self),
            delay=delay,
            error=failure.getErrorMessage(),
        )
        self._watchRetry = self._reactor.callLater(delay, self._watch)

    def _event(self, event: PeerEvent) -> None:
        if not self.running:
            return
        if event.kind in (EventKind.JOINED, EventKind.UPDATED):
            self._joined(event.record)
        else:
            self._drop(event.record.instance)

    def _wanted(self, record: PeerRecord) -> bool:
        return self.includeSelf or record.instance not in localInstances

    def _joined(self, record: PeerRecord) -> None:
        """
        C{record} is live: connect to it, or follow its update.
        """
        if not self._wanted(record):
            return
        member = self._members.get(record.instance)
        if not self._endpoint.selection.matching([record]):
            if member is not None:
                log.info(
                    "{group}: {record} no longer matches", group=repr(self), record=repr(record)
                )
                self._drop(record.instance)
            return
        if member is None:
            member = self._members[record.instance] = _Member(record)
            self._connect(member)
        elif member.record.endpoints == record.endpoints:
            changed = member.record != record
            member.record = record
            if changed:
                self._changed(member)
        else:
            log.info("{group}: {record} moved, reconnecting", group=str(self), record=str(record))
            newcomer = _Member(record)
            self._drop(record.instance).addCallback(lambda _: self._connect(newcomer))
            self._members[record.instance] = newcomer

    def _changed(self, member: _Member) -> None:
        """
        A member's record changed in place: tell, and if it is usable again
        while waiting to reconnect, reconnect now.
        """
        for callback in list(self._updated):
            try:
                callback(member.record, member.protocol)
            except Exception:
                log.failure(
                    "{group}: observer {callback} failed", group=repr(self), callback=repr(callback)
                )
        if member.record.usable and member.retry is not None and member.retry.active():
            member.retry.cancel()
            member.failures = 0
            self._connect(member)

    def _connect(self, member: _Member) -> None:
        member.retry = None
        if not (member.current and self.running):
            return
        endpoint = MasseClientEndpoint(
            self._reactor,
            member.record.name,
            self.namespace,
            self.registry,
            timeout=self._endpoint.timeout,
            proto=self._endpoint.proto,
            wrappers=[
                lambda inner: _WireFactory(inner, member, self._lost),
                *self._endpoint.wrappers,
            ],
        )
        member.attempt = endpoint.connectToRecord(member.record, self.factory)
        member.attempt.addCallbacks(
            lambda protocol: self._connected(member, protocol),
            lambda failure: self._failed(member, failure),
        )

    def _connected(self, member: _Member, protocol: IProtocol) -> None:
        member.attempt = None
        member.failures = 0
        if not member.current:  # cannot happen: dropping cancels the attempt
            _close(member)
            return
        member.protocol = protocol
        log.info("{group}: connected to {record}", group=str(self), record=str(member.record))
        self._notify(self._added, member.record, protocol)

    def _failed(self, member: _Member, failure: Failure) -> None:
        member.attempt = None
        if member.current and self.running:
            self._retry(member, f"cannot connect: {failure.getErrorMessage()}")

    def _retry(self, member: _Member, why: str) -> None:
        delay = self.retryPolicy(member.failures)
        member.failures += 1
        log.info(
            "{group}: {record}: {why}; retrying in {delay:.2f}s",
            group=str(self),
            record=str(member.record),
            why=why,
            delay=delay,
        )
        member.retry = self._reactor.callLater(delay, self._connect, member)

    def _lost(self, member: _Member, wire: _Wire) -> None:
        if member.wire is not wire:
            return
        member.wire = None
        protocol, member.protocol = member.protocol, None
        if protocol is not None:
            self._notify(self._removed, member.record, protocol)
        if member.current and self.running and member.attempt is None and member.retry is None:
            self._retry(member, "connection lost")
        closed, member.closed = member.closed, []
        for waiting in closed:
            waiting.callback(None)

    def _drop(self, instance: str) -> Deferred[None]:
        """
        Forget C{instance}: no more reconnects; fires once its connection is
        closed.
        """
        member = self._members.pop(instance, None)
        if member is None:
            return succeed(None)
        member.current = False
        if member.retry is not None and member.retry.active():
            member.retry.cancel()
        member.retry = None
        if member.attempt is not None:
            member.attempt.cancel()
        return _close(member)


def _close(member: _Member) -> Deferred[None]:
    """
    Close C{member}'s connection; fires once it is closed.
    """
    if member.wire is None:
        return succeed(None)
    closed: Deferred[None] = Deferred()
    member.closed.append(closed)
    transport: Any = member.wire.transport
    transport.loseConnection()
    return closed
