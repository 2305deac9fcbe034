"""
C{masse connect}: standard input and output joined to a stream with a peer.

When standard input ends, the stream is not half-closed by default: many
protocols (Twisted's C{wire.Echo} among them) do not support half-close and
drop what they had not flushed yet. Instead, as C{nc -q} does, the relay
keeps reading until the peer closes or nothing has come for C{wait}
seconds. With C{halfClose}, end of input half-closes the stream and the
relay waits for the peer to close, as C{nc -N} does.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.interfaces import IDelayedCall, IHalfCloseableProtocol, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from zope.interface import implementer


class Relay:
    """
    Decides when a relay between our input and output and a peer's stream
    is over, and closes both sides then.

    @ivar done: fires once both sides are closed (our output has had
        everything the peer sent).
    """

    def __init__(self, clock: IReactorTime, wait: float, halfClose: bool):
        self.clock = clock
        self.wait = wait
        self.halfClose = halfClose
        self.local = _Local(self)
        self.remote = _Remote(self)
        self.done: Deferred[None] = gatherResults([self.local.lost, self.remote.lost]).addCallback(
            lambda _: None
        )
        self._idle: IDelayedCall | None = None
        self._inputEnded = False
        self.finished = False

    def fromPeer(self, data: bytes) -> None:
        if self.local.transport is not None:
            self.local.transport.write(data)
        if self._idle is not None and self._idle.active():
            self._idle.reset(self.wait)

    def fromInput(self, data: bytes) -> None:
        if self.remote.transport is not None:
            self.remote.transport.write(data)

    def inputEnded(self) -> None:
        """
        Our input is over: half-close, or wait for the peer to go quiet.
        """
        if self._inputEnded or self.finished:
            return
        self._inputEnded = True
        loseWrite = getattr(self.remote.transport, "loseWriteConnection", None)
        if self.halfClose and loseWrite is not None:
            loseWrite()  # and wait for the peer to close
        else:
            self._idle = self.clock.callLater(self.wait, self.finish)

    def finish(self) -> None:
        """
        Close both sides (each after flushing what it was given).
        """
        if self.finished:
            return
        self.finished = True
        if self._idle is not None and self._idle.active():
            self._idle.cancel()
        for side in (self.remote, self.local):
            if side.transport is not None and side.connected:
                side.transport.loseConnection()


@implementer(IHalfCloseableProtocol)
class _Local(Protocol):
    """
    Our standard input and output.
    """

    def __init__(self, relay: Relay):
        self.relay = relay
        self.lost: Deferred[None] = Deferred()

    def connectionMade(self) -> None:
        if self.relay.finished:  # the peer closed before we got here
            self.transport.loseConnection()  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.relay.fromInput(data)

    def readConnectionLost(self) -> None:
        self.relay.inputEnded()

    def writeConnectionLost(self) -> None:
        self.relay.finish()  # nobody reads our output any more

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self.relay.finish()
        self.lost.callback(None)


@implementer(IHalfCloseableProtocol)
class _Remote(Protocol):
    """
    The stream with the peer: when the peer stops sending, it is over.
    """

    def __init__(self, relay: Relay):
        self.relay = relay
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.relay.fromPeer(data)

    def readConnectionLost(self) -> None:
        self.relay.finish()

    def writeConnectionLost(self) -> None:
        pass

    def connectionLost(self, reason: Failure | None = None) -> None:
        self.connected = False
        self.relay.finish()
        self.lost.callback(None)


async def relayStandardIO(reactor: Any, relay: Relay) -> None:
    """
    Join our standard input and output to C{relay.remote}, already
    connected, until the relay is over.
    """
    from twisted.internet.stdio import StandardIO

    StandardIO(relay.local, reactor=reactor)
    await relay.done
