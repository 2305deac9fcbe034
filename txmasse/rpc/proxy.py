"""
A proxy for C{masse://NS/PEER}: one AMP connection to an instance of the
peer, kept by L{ClientService} over a C{masse:} endpoint, so that when it
is lost the proxy reconnects by name (to the restarted peer, wherever it
now listens, through the connect cache).

A call waits for the connection; a call in flight when the connection
drops fails with L{CallInterrupted} and is never sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.interfaces import IProtocol, IProtocolFactory, IStreamClientEndpoint
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse.endpoints import MasseClientEndpoint
from txmasse.group import defaultRetryPolicy
from txmasse.registry import IRegistry, registryFromURL
from txmasse.rpc.calls import DEFAULT_TIMEOUT, sendCall
from txmasse.rpc.errors import ProxyUnavailable
from txmasse.rpc.uri import parseURI


@implementer(IStreamClientEndpoint)
class _Remembering:
    """
    An endpoint that remembers why its last connect failed, for the
    message of a call that found no connection in time.
    """

    def __init__(self, endpoint: IStreamClientEndpoint):
        self.endpoint = endpoint
        self.lastError: str | None = None

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        def failed(failure: Failure) -> Failure:
            self.lastError = failure.getErrorMessage()
            return failure

        def connected(protocol: IProtocol) -> IProtocol:
            self.lastError = None
            return protocol

        return self.endpoint.connect(protocolFactory).addCallbacks(connected, failed)


class _Connection(amp.AMP):
    """
    The proxy's side of the connection; knows once it is lost (the service
    hears of it a moment later).
    """

    lost = False

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        super().connectionLost(reason)


class Proxy(Service):
    """
    Calls AMP commands on one instance of C{masse://NS/PEER}, over a kept
    connection.

    @param timeout: seconds a call may take, waiting for the connection
        included.
    @param connectTimeout: seconds for each connection attempt.
    @param retryPolicy: failed attempts in a row to seconds to wait, as for
        L{ClientService}; default: 0.1 s doubling to 5 s, with jitter.
    @param clientOptions: more L{MasseClientEndpoint} options (C{pick},
        C{proto}, C{tls}...).
    """

    def __init__(
        self,
        uri: str,
        registry: IRegistry | str | None = None,
        reactor: Any = None,
        timeout: float = DEFAULT_TIMEOUT,
        connectTimeout: float = 10.0,
        retryPolicy: Callable[[int], float] | None = None,
        **clientOptions: Any,
    ):
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        self.uri = parseURI(uri, command=False)
        if isinstance(timeout, bool) or not isinstance(timeout, int | float) or not 0 < timeout:
            raise ValueError(f"timeout={timeout!r}: must be a positive number of seconds")
        self.timeout = float(timeout)
        self.registry: IRegistry = (
            registryFromURL(reactor, registry)
            if registry is None or isinstance(registry, str)
            else registry
        )
        self._reactor = reactor
        self._endpoint = _Remembering(
            MasseClientEndpoint(
                reactor,
                self.uri.peer,
                self.uri.namespace,
                self.registry,
                timeout=connectTimeout,
                **clientOptions,
            )
        )
        self._client = ClientService(
            self._endpoint,
            Factory.forProtocol(_Connection),
            retryPolicy=defaultRetryPolicy() if retryPolicy is None else retryPolicy,
            clock=reactor,
        )

    def __repr__(self) -> str:
        return f"<Proxy {self.uri}>"

    def startService(self) -> None:
        super().startService()
        self._client.startService()

    def stopService(self) -> Deferred[None]:
        """
        Close the connection; calls still waiting for one fail.
        """
        super().stopService()
        return self._client.stopService()

    def callRemote(self, command: type[amp.Command], **arguments: object) -> Deferred[Any]:
        """
        Call C{command} once connected; fires with the answer.

        Fails with L{ProxyUnavailable} when no connection comes within the
        deadline (or the proxy is stopped), L{CallInterrupted} when the
        connection drops with the call in flight, L{RPCError} on timeout,
        or the peer's own AMP error.
        """
        return Deferred.fromCoroutine(self._call(command, arguments))

    async def _call(self, command: type[amp.Command], arguments: dict[str, object]) -> Any:
        if not self.running:
            raise ProxyUnavailable(f"{self.uri}: the proxy is not running")
        deadline = self._reactor.seconds() + self.timeout
        protocol = await self._connection(deadline)
        address: Any = protocol.transport.getPeer() if protocol.transport is not None else None
        where = (
            f"{self.uri.peer} at {getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        )
        remaining = max(deadline - self._reactor.seconds(), 0.001)
        return await sendCall(
            self._reactor, protocol, command, arguments, remaining, str(self.uri), where
        )

    async def _connection(self, deadline: float) -> _Connection:
        """
        The live connection, or the next one, by C{deadline}.
        """
        while True:
            if self._reactor.seconds() > deadline:
                raise ProxyUnavailable(f"{self.uri}: no connection within {self.timeout:g}s")
            connected = self._client.whenConnected()
            connected.addTimeout(max(deadline - self._reactor.seconds(), 0.001), self._reactor)
            try:
                protocol: Any = await connected
            except TimeoutError:
                why = self._endpoint.lastError
                raise ProxyUnavailable(
                    f"{self.uri}: no connection within {self.timeout:g}s"
                    + (f" (last attempt: {why})" if why else "")
                ) from None
            except Exception as e:  # CancelledError: the proxy was stopped
                raise ProxyUnavailable(
                    f"{self.uri}: the proxy stopped before connecting ({e!r})"
                ) from None
            if not protocol.lost:
                return protocol  # type: ignore[no-any-return]
            # Lost, and the service has not heard yet: it will by the next turn.
            await deferLater(self._reactor, 0, lambda: None)
