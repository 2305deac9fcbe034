"""
Stream-use events: a client that opts in (C{report=true}) publishes
C{connected} when a stream to an instance is up and C{disconnected} when it
ends, so watchers asking for usage see who talks to whom.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable
from typing import Any
from weakref import WeakKeyDictionary

import attrs
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.interfaces import (
    IProtocol,
    IProtocolFactory,
    IReactorCore,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse.records import PeerRecord
from txmasse.registry.interface import EventKind, IRegistry, PeerEvent
from txmasse.wrappers import innerProtocol

log = Logger()


FLUSH_SECONDS = 2.0
"""How long a stopping reactor waits for the last reports of its streams."""


class _Reporting(ProtocolWrapper):
    """
    Nearest the wire: reports the stream's end once, when it is lost or
    when the reactor stops first.
    """

    reportEnd: Callable[[], Deferred[None]] | None = None

    def endReported(self) -> Deferred[None] | None:
        report, self.reportEnd = self.reportEnd, None
        return None if report is None else report()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.endReported()
        super().connectionLost(reason)


class _ReportingFactory(WrappingFactory):
    noisy = False  # one per connection: no "Starting factory" lines
    protocol = _Reporting


class _OpenStreams:
    """
    The reported streams of one reactor that are still open. When it
    stops, each one's C{disconnected} is published at once (the stream
    ends with the process), and shutdown waits for those reports: a
    client that closes its stream and stops at once (C{task.react}) would
    otherwise lose them, its stream still closing as the process ends.
    """

    def __init__(self, reactor: Any):
        self.streams: set[_Reporting] = set()
        # The reactor is the trigger's argument, not kept here: the table
        # below holds these weakly by reactor, and a reactor is let go.
        reactor.addSystemEventTrigger("before", "shutdown", self.stopping, reactor)

    def stopping(self, reactor: Any) -> Deferred[None] | None:
        reports = [d for stream in list(self.streams) if (d := stream.endReported()) is not None]
        self.streams.clear()
        if not reports:
            return None
        done = DeferredList(reports, consumeErrors=True).addTimeout(FLUSH_SECONDS, reactor)
        return done.addBoth(lambda _: None)


_open: WeakKeyDictionary[object, _OpenStreams] = WeakKeyDictionary()


def _openStreams(reactor: object) -> _OpenStreams | None:
    if not IReactorCore.providedBy(reactor):
        return None  # a bare clock: nothing stops it
    streams = _open.get(reactor)
    if streams is None:
        streams = _open[reactor] = _OpenStreams(reactor)
    return streams


@implementer(IStreamClientEndpoint)
@attrs.frozen
class ReportingEndpoint:
    """
    Connects through C{endpoint} to the instance C{record}, reporting the
    stream's use to C{registry}; fires with the caller's own protocol.
    Given C{reactor}, a stream still open when it stops is reported
    C{disconnected} then, and shutdown waits (at most L{FLUSH_SECONDS})
    for its report.
    """

    endpoint: IStreamClientEndpoint
    registry: IRegistry
    record: PeerRecord
    reactor: object = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self.endpoint.connect(_ReportingFactory(protocolFactory))
        return connecting.addCallback(self._started)

    def _started(self, protocol: IProtocol) -> IProtocol:
        self._publish(EventKind.CONNECTED)
        if isinstance(protocol, _Reporting):
            streams = _openStreams(self.reactor)

            def reportEnd() -> Deferred[None]:
                if streams is not None:
                    streams.streams.discard(protocol)
                return self._publish(EventKind.DISCONNECTED)

            protocol.reportEnd = reportEnd
            if streams is not None:
                streams.streams.add(protocol)
        return innerProtocol(protocol)

    def _publish(self, kind: EventKind) -> Deferred[None]:
        event = PeerEvent(kind, self.record, f"{socket.gethostname()}:{os.getpid()}")
        reporting = self.registry.report(event)
        reporting.addErrback(
            lambda f: log.warn("could not report {kind}: {error}", kind=kind, error=str(f.value))
        )
        return reporting
