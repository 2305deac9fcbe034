"""
A proxy for C{masse://NS/PEER}: one AMP connection to an instance of the
peer, kept by L{ClientService<twisted.application.internet.ClientService>}
over a C{masse:} endpoint, so that when it is lost the proxy reconnects
by name (to the restarted peer, wherever it now listens, through the
connect cache).

A call waits for the connection; a call in flight when the connection
drops fails with L{CallInterrupted} and is never sent again.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from twisted.application.internet import ClientService
from twisted.application.service import Service
from twisted.internet.defer import Deferred, TimeoutError
from twisted.internet.error import ConnectionClosed
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, connectionDone
from twisted.internet.task import deferLater
from twisted.protocols import amp
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse.endpoints import MasseClientEndpoint
from txmasse.group import defaultRetryPolicy
from txmasse.registry import IRegistry, registryFromURL
from txmasse.rpc.calls import DEFAULT_TIMEOUT, checkTimeout
from txmasse.rpc.errors import CallInterrupted, ProxyUnavailable, RPCError
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
    proxy: Proxy | None = None

    where = "?"

    def connectionMade(self) -> None:
        super().connectionMade()
        address: Any = self.transport.getPeer() if self.transport is not None else None
        self.where = f"{getattr(address, 'host', '?')}:{getattr(address, 'port', '?')}"
        if self.proxy is not None:
            self.proxy._current = self

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost = True
        if self.proxy is not None and self.proxy._current is self:
            self.proxy._current = None
        super().connectionLost(reason)


class Proxy(Service):
    """
    Calls AMP commands on one instance of C{masse://NS/PEER}, over a kept
    connection.

    @param timeout: seconds a call may take, waiting for the connection
        included.
    @param connectTimeout: seconds for each connection attempt.
    @param retryPolicy: failed attempts in a row to seconds to wait, as for
        L{ClientService<twisted.application.internet.ClientService>}; default:
        0.1 s doubling to 5 s, with jitter.
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
        self.timeout = checkTimeout(timeout)
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
            Factory.forProtocol(self._newConnection),
            retryPolicy=defaultRetryPolicy() if retryPolicy is None else retryPolicy,
            clock=reactor,
        )

        self._current: _Connection | None = None
        self._pending: dict[Deferred[Any], tuple[float, _Connection]] = {}
        self._expired: set[Deferred[Any]] = set()
        self._sweep: IDelayedCall | None = None
        self._tick = max(0.01, min(1.0, self.timeout / 10))

    def _newConnection(self) -> _Connection:
        connection = _Connection()
        connection.proxy = self
        return connection

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
        if self._sweep is not None and self._sweep.active():
            self._sweep.cancel()
        self._sweep = None
        return self._client.stopService()

    def callRemote(self, command: type[amp.Command], **arguments: object) -> Deferred[Any]:
        """
        Call C{command} once connected; fires with the answer.

        Fails with L{ProxyUnavailable} when no connection comes within the
        deadline (or the proxy is stopped), L{CallInterrupted} when the
        connection drops with the call in flight, L{RPCError} on timeout,
        or the peer's own AMP error.
        """
        current = self._current
        if current is not None and self.running:  # warm: no coroutine, no waiting
            return self._send(current, command, arguments, self._reactor.seconds() + self.timeout)
        return Deferred.fromCoroutine(self._call(command, arguments))

    def _send(
        self, protocol: _Connection, command: type[amp.Command], arguments: Any, deadline: float
    ) -> Deferred[Any]:
        """
        Send now; the answer is AMP's own Deferred. Its deadline is kept by
        one sweep for all calls in flight, not a timer per call: on the
        warm path that is most of a proxy's cost.
        """
        sent: Deferred[Any] = protocol.callRemote(command, **arguments)
        if sent.called:  # refused at once (bad arguments): nothing in flight
            return sent
        self._pending[sent] = (deadline, protocol)
        if self._sweep is None:
            self._sweep = self._reactor.callLater(self._tick, self._sweepNow)
        return sent.addBoth(self._settled, sent)

    def _settled(self, outcome: Any, sent: Deferred[Any]) -> Any:
        _, protocol = self._pending.pop(sent, (0.0, None))
        if isinstance(outcome, Failure):
            where = f"{self.uri.peer} at {getattr(protocol, 'where', '?')}"
            if sent in self._expired:
                self._expired.discard(sent)
                return Failure(
                    RPCError(f"{self.uri}: no answer from {where} within {self.timeout:g}s")
                )
            if outcome.check(ConnectionClosed):
                return Failure(
                    CallInterrupted(
                        f"{self.uri}: the connection to {where} was lost with the call in "
                        f"flight (not retried: it may have run): {outcome.getErrorMessage()}"
                    )
                )
        return outcome

    def _sweepNow(self) -> None:
        self._sweep = None
        now = self._reactor.seconds()
        for sent, (deadline, _) in list(self._pending.items()):
            if deadline <= now:
                self._expired.add(sent)
                sent.cancel()  # AMP's Deferred: its late answer is then dropped
        if self._pending:
            self._sweep = self._reactor.callLater(self._tick, self._sweepNow)

    async def _call(self, command: type[amp.Command], arguments: dict[str, object]) -> Any:
        if not self.running:
            raise ProxyUnavailable(f"{self.uri}: the proxy is not running")
        deadline = self._reactor.seconds() + self.timeout
        protocol = await self._connection(deadline)
        return await self._send(protocol, command, arguments, deadline)

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
