"""
Stream-use events: a client that opts in (C{report=true}) publishes
C{connected} when a stream to an instance is up and C{disconnected} when it
ends, so watchers asking for usage see who talks to whom.
"""

from __future__ import annotations

import os
import socket
from collections.abc import Callable

import attrs
from twisted.internet.defer import Deferred
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse.records import PeerRecord
from txmasse.registry.interface import EventKind, IRegistry, PeerEvent
from txmasse.wrappers import innerProtocol

log = Logger()


class _Reporting(ProtocolWrapper):
    """
    Nearest the wire: tells its endpoint when the stream ends.
    """

    ended: Callable[[], object] | None = None

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self.ended is not None:
            self.ended()
        super().connectionLost(reason)


class _ReportingFactory(WrappingFactory):
    noisy = False  # one per connection: no "Starting factory" lines
    protocol = _Reporting


@implementer(IStreamClientEndpoint)
@attrs.frozen
class ReportingEndpoint:
    """
    Connects through C{endpoint} to the instance C{record}, reporting the
    stream's use to C{registry}; fires with the caller's own protocol.
    """

    endpoint: IStreamClientEndpoint
    registry: IRegistry
    record: PeerRecord

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self.endpoint.connect(_ReportingFactory(protocolFactory))
        return connecting.addCallback(self._started)

    def _started(self, protocol: IProtocol) -> IProtocol:
        self._publish(EventKind.CONNECTED)
        if isinstance(protocol, _Reporting):
            protocol.ended = lambda: self._publish(EventKind.DISCONNECTED)
        return innerProtocol(protocol)

    def _publish(self, kind: EventKind) -> None:
        event = PeerEvent(kind, self.record, f"{socket.gethostname()}:{os.getpid()}")
        reporting = self.registry.report(event)
        reporting.addErrback(
            lambda f: log.warn("could not report {kind}: {error}", kind=kind, error=str(f.value))
        )
