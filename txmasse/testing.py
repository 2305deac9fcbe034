"""
Testing code that uses txmasse, without sockets or a Redis.

L{MasseNetwork} pairs an in-memory registry with a fake reactor whose TCP
connections are real protocol pairs over in-memory transports (Twisted's
C{iosim}, as C{treq.testing} uses): serve factories under names with
C{masse:} server endpoints, connect to them with C{masse:} client
endpoints, and drive everything (leases, timeouts, retries, bytes on the
wire) with the reactor's clock::

    network = MasseNetwork()
    network.serve("db", DatabaseFactory())
    connecting = network.connect("masse:db", ClientFactory())
    network.flush()
    protocol = network.successResultOf(connecting)

Endpoint strings need no C{registry=}: the network's registry is the one
C{memory://} names for its reactor, and L{MasseNetwork.clientFromString}
and L{MasseNetwork.serverFromString} default to it.
"""

from __future__ import annotations

from typing import Any

from twisted.internet import endpoints
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.error import ConnectionRefusedError, TimeoutError
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.internet.testing import MemoryReactorClock
from twisted.python.failure import Failure
from twisted.test import iosim
from zope.interface import implementer

from txmasse.registry import IRegistry, registryFromURL

MEMORY_URL = "memory://"
"""The registry URL that names a L{MasseNetwork}'s registry."""


@implementer(IListeningPort)
class FakeListeningPort:
    """
    A listening TCP port of a L{FakeNetworkReactor}.
    """

    def __init__(
        self, reactor: FakeNetworkReactor, address: IPv4Address | IPv6Address, factory: Any
    ):
        self.reactor = reactor
        self.address = address
        self.factory = factory
        self.listening = True

    def getHost(self) -> IAddress:
        return self.address

    def startListening(self) -> None:
        self.listening = True

    def stopListening(self) -> Deferred[None] | None:
        self.listening = False
        self.reactor.ports.pop(self.address.port, None)
        return None


class FakeNetworkReactor(MemoryReactorClock):
    """
    A L{MemoryReactorClock} whose TCP connections reach the factories
    listening on it: a connection attempt succeeds (or is refused) when the
    clock next runs, and bytes move on L{flush}.

    @ivar ports: listening ports by port number (any interface).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ports: dict[int, FakeListeningPort] = {}
        self.pumps: list[iosim.IOPump] = []
        self._nextPort = 40000
        self._timeouts: dict[int, Any] = {}  # connector ids: their pending connect timeouts

    def listenTCP(
        self, port: int, factory: Any, backlog: int = 50, interface: str = ""
    ) -> FakeListeningPort:
        super().listenTCP(port, factory, backlog, interface)
        if port == 0:
            port = self._nextPort
            self._nextPort += 1
        if port in self.ports:
            from twisted.internet.error import CannotListenError

            raise CannotListenError(interface, port, OSError("address already in use"))
        host = interface or "0.0.0.0"
        kind = IPv6Address if ":" in host else IPv4Address
        listening = FakeListeningPort(self, kind("TCP", host, port), factory)
        factory.doStart()
        self.ports[port] = listening
        return listening

    def connectTCP(
        self,
        host: str,
        port: int,
        factory: Any,
        timeout: float = 30,
        bindAddress: Any = None,
    ) -> Any:
        connector = super().connectTCP(host, port, factory, timeout, bindAddress)
        # As a real connector does: give up after timeout, unless connected or stopped.
        self._timeouts[id(connector)] = self.callLater(
            timeout, self._timedOut, host, port, factory, connector
        )
        self.callLater(0, self._connect, host, port, factory, connector)
        return connector

    def _timedOut(self, host: str, port: int, factory: Any, connector: Any) -> None:
        self._timeouts.pop(id(connector), None)
        if not connector.stoppedConnecting:
            connector.stopConnecting()
            factory.clientConnectionFailed(connector, Failure(TimeoutError(f"{host}:{port}")))

    def _connect(self, host: str, port: int, factory: Any, connector: Any) -> None:
        timeout = self._timeouts.pop(id(connector), None)
        if timeout is not None and timeout.active():
            timeout.cancel()
        if connector.stoppedConnecting:
            return  # given up (cancelled, timed out) before it connected
        listening = self.ports.get(port)
        if listening is None or not listening.listening:
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError(host, port)))
            return
        kind = IPv6Address if ":" in host else IPv4Address
        serverAddress = kind("TCP", host, port)
        clientAddress = kind("TCP", host, 50000 + len(self.pumps))
        server = listening.factory.buildProtocol(clientAddress)
        client = factory.buildProtocol(serverAddress)
        if server is None or client is None:
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError(host, port)))
            return
        pump = iosim.connect(
            server,
            iosim.FakeTransport(server, True, serverAddress, clientAddress),
            client,
            iosim.FakeTransport(client, False, clientAddress, serverAddress),
            greet=False,
        )
        self.pumps.append(pump)

    def advanceTo(self, when: float) -> None:
        """
        Run every timer due by C{when}, each at its own time, flushing after
        each; then stop at C{when}.
        """
        self.flush()
        while True:
            due = [call.getTime() for call in self.getDelayedCalls()]
            upcoming = min((t for t in due if t <= when), default=None)
            if upcoming is None:
                break
            self.advance(max(0.0, upcoming - self.seconds()))
            self.flush()
        self.advance(max(0.0, when - self.seconds()))
        self.flush()

    def flush(self) -> None:
        """
        Run what is due now and move every byte waiting, until nothing moves.
        """
        for _ in range(1000):
            self.advance(0)
            moved = False
            for pump in list(self.pumps):
                moved = pump.flush() or moved
            now = self.seconds()
            if not moved and all(call.getTime() > now for call in self.getDelayedCalls()):
                return
        raise RuntimeError("the network did not settle after 1000 rounds")


class MasseNetwork:
    """
    A registry and a fake reactor, for testing code that serves and
    connects by name.

    @ivar reactor: the fake reactor (a L{task.Clock<twisted.internet.task.Clock>}
        too): give it to the code under test.
    @ivar registry: the in-memory registry, which C{memory://} names for
        C{reactor}.
    """

    def __init__(self) -> None:
        self.reactor = FakeNetworkReactor()
        self.registry: IRegistry = registryFromURL(self.reactor, MEMORY_URL)

    def clientFromString(self, description: str) -> IStreamClientEndpoint:
        """
        C{clientFromString} on this network: a C{masse:} description
        without C{registry=} uses this network's registry.
        """
        endpoint: IStreamClientEndpoint = endpoints.clientFromString(
            self.reactor, self._withRegistry(description)
        )
        return endpoint

    def serverFromString(self, description: str) -> IStreamServerEndpoint:
        """
        C{serverFromString} on this network, as L{clientFromString}.
        """
        endpoint: IStreamServerEndpoint = endpoints.serverFromString(
            self.reactor, self._withRegistry(description)
        )
        return endpoint

    def serve(self, description: str, factory: IProtocolFactory) -> IListeningPort:
        """
        Serve C{factory} under the C{masse:} server C{description} (or a
        bare name), registered by the time this returns.
        """
        if not description.startswith("masse:"):
            description = f"masse:{description}"
        listening = self.serverFromString(description).listen(factory)
        self.flush()
        port: IListeningPort = self.successResultOf(listening)
        return port

    def connect(self, description: str, factory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Connect by C{masse:} client C{description} (or a bare name); the
        result fires once L{flush} has run the connection.
        """
        if not description.startswith("masse:"):
            description = f"masse:{description}"
        return self.clientFromString(description).connect(factory)

    def flush(self) -> None:
        """
        Run what is due and move every byte waiting.
        """
        self.reactor.flush()

    def advance(self, seconds: float) -> None:
        """
        Let C{seconds} pass (heartbeats run, leases expire, timeouts fire),
        stopping at each timer on the way, as real time would, and moving
        the bytes each sends before the next.
        """
        self.reactor.advanceTo(self.reactor.seconds() + seconds)

    @staticmethod
    def successResultOf(deferred: Deferred[Any]) -> Any:
        """
        What C{deferred} has fired with.

        @raise AssertionError: if it has not fired, or failed (with that failure).
        """
        results: list[Any] = []
        deferred.addBoth(results.append)
        if not results:
            raise AssertionError(f"{deferred!r} has not fired")
        if isinstance(results[0], Failure):
            results[0].raiseException()
        return results[0]

    @staticmethod
    def assertNoResult(deferred: Deferred[Any]) -> None:
        """
        Check that C{deferred} has not fired yet (a connect still under way,
        say), leaving it as it is.

        @raise AssertionError: naming what it fired with.
        """
        results: list[Any] = []

        def keep(result: object) -> object:
            results.append(result)
            return result

        deferred.addBoth(keep)
        if results:
            raise AssertionError(f"{deferred!r} has fired with {results[0]!r}")

    def _withRegistry(self, description: str) -> str:
        if not description.startswith("masse:") or "registry=" in description:
            return description
        return f"{description}:registry={endpoints.quoteStringArgument(MEMORY_URL)}"
