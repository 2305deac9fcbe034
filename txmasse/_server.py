"""
The server endpoint: listen, and register under a name.

A server endpoint listens on an ordinary inner endpoint and publishes the
address it really got (the port the OS chose, the address that routes to
the registry for a wildcard) under a lease that lives as long as the
listening port.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, maybeDeferred, succeed
from twisted.internet.endpoints import (
    UNIXServerEndpoint,
    quoteStringArgument,
    serverFromString,
)
from twisted.internet.interfaces import (
    IAddress,
    IDelayedCall,
    IListeningPort,
    IProtocolFactory,
    IReactorTime,
    IStreamServerEndpoint,
)
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse.checks import checkNumber, shown
from txmasse.errors import MasseError, RegistryUnavailable
from txmasse.peertls import PeerTLS
from txmasse.records import PeerRecord
from txmasse.registry import MAX_TTL, MIN_TTL, ILease, IRegistry, defaultNamespace
from txmasse.registry.opening import checkRegistry, openRegistry
from txmasse.registry.url import parseRegistryURL
from txmasse.retry import retryPolicy
from txmasse.transports import describeAddress
from txmasse.wrappers import Wrapper, checkWrappers, stackFactory

log = Logger()

DEFAULT_TTL = 10.0

HOST = re.compile(r"[A-Za-z0-9._:%-]{1,253}")
"""What an advertised host or a listening interface may look like."""


def _follow(deferred: Deferred[None]) -> Deferred[None]:
    """
    A new Deferred that fires when C{deferred} does, leaving it untouched.
    """
    follower: Deferred[None] = Deferred()

    def relay(result: object) -> object:
        if isinstance(result, Failure):
            follower.errback(result)
        else:
            follower.callback(None)
        return result

    deferred.addBoth(relay)
    return follower


async def _stopAll(ports: Sequence[IListeningPort]) -> None:
    for port in ports:
        try:
            stopping = port.stopListening()
            if stopping is not None:
                await stopping
        except Exception:
            log.failure("could not stop listening: {port!r}", port=port)


REGISTER_RETRY = retryPolicy(0.25, 3.0)
"""Seconds before registering again while the registry is unreachable, by failures so far."""


@implementer(IListeningPort)
class MasseListeningPort:
    """
    Listening under a name: C{stopListening()} withdraws the name (peers
    see C{left}), then stops listening.

    A port whose registry was unreachable when it started listens all the
    same and keeps registering (L{REGISTER_RETRY}) until the registry
    answers; L{whenRegistered} fires then.

    @ivar port: the inner endpoint's port; C{getHost()} is its address.
    @ivar unixPort: the extra UNIX socket's port, if any.
    @ivar registered: whether the name is registered (then L{lease} is
        the registration).
    """

    def __init__(
        self,
        port: IListeningPort,
        unixPort: IListeningPort | None,
        record: PeerRecord,
        registry: IRegistry,
        ttl: float,
        clock: IReactorTime,
    ):
        self.port = port
        self.unixPort = unixPort
        self._lease: ILease | None = None
        self._record = record
        self._registry = registry
        self._ttl = ttl
        self._clock = clock
        self._attempt: Deferred[ILease] | None = None
        self._retry: IDelayedCall | None = None
        self._failures = 0
        self._waiting: list[Deferred[ILease]] = []
        self._stopping: Deferred[None] | None = None

    def __repr__(self) -> str:
        record = self.record
        return f"<MasseListeningPort {record.namespace}/{record.name} {list(record.endpoints)}>"

    @property
    def registered(self) -> bool:
        return self._lease is not None

    @property
    def lease(self) -> ILease:
        """
        The registration.

        @raise MasseError: if the name is not registered yet (see
            L{whenRegistered}).
        """
        if self._lease is None:
            raise MasseError(f"{self!r} is not registered yet: wait for whenRegistered()")
        return self._lease

    @property
    def record(self) -> PeerRecord:
        return self._record if self._lease is None else self._lease.record

    def getHost(self) -> IAddress:
        return self.port.getHost()

    def startListening(self) -> None:
        """
        Nothing to do: C{listen()} fires with a port that already listens.
        """

    def whenRegistered(self) -> Deferred[ILease]:
        """
        Fires with the lease once the name is registered (at once if it
        is); fails with L{MasseError} if the port stops first.
        """
        if self._lease is not None:
            return succeed(self._lease)
        if self._stopping is not None:
            return fail(MasseError(f"{self!r} stopped before it was registered"))
        waiting: Deferred[ILease] = Deferred()
        self._waiting.append(waiting)
        return waiting

    def register(self) -> Deferred[None]:
        """
        Register the name: fires once registered, or once the registry
        proved unreachable (then registering goes on in the background);
        fails for anything else (the record refused, say).
        """
        return self._register(first=True)

    def _register(self, first: bool = False) -> Deferred[None]:
        self._retry = None
        attempt = self._attempt = maybeDeferred(self._registry.register, self._record, self._ttl)

        def registered(lease: ILease) -> None:
            if attempt is not self._attempt:  # stopped meanwhile: too late to keep
                lease.release().addErrback(lambda _: None)
                return
            self._attempt = None
            self._lease = lease
            if self._failures:
                log.info(
                    "{port}: registered after {failures} failed tries",
                    port=repr(self),
                    failures=self._failures,
                )
            waiting, self._waiting = self._waiting, []
            for d in waiting:
                d.callback(lease)

        def failed(failure: Failure) -> Failure | None:
            if attempt is not self._attempt:
                return None  # stopped meanwhile
            self._attempt = None
            if first and not failure.check(RegistryUnavailable):
                return failure
            delay = REGISTER_RETRY(self._failures)
            self._failures += 1
            if self._failures == 1:
                log.warn(
                    "{port}: listening, but not yet registered (registering again until the "
                    "registry answers): {error}",
                    port=repr(self),
                    error=failure.getErrorMessage(),
                )
            self._retry = self._clock.callLater(delay, self._register)
            return None

        return attempt.addCallbacks(registered, failed)

    def stopListening(self) -> Deferred[None]:
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        return _follow(self._stopping)

    async def _stop(self) -> None:
        if self._retry is not None and self._retry.active():
            self._retry.cancel()
        self._retry = None
        attempt, self._attempt = self._attempt, None
        if attempt is not None:
            attempt.cancel()  # the registry takes back a registration it cancels
        waiting, self._waiting = self._waiting, []
        for d in waiting:
            d.errback(MasseError(f"{self!r} stopped before it was registered"))
        if self._lease is not None:
            try:
                await self._lease.release()
            except Exception as e:
                log.warn(
                    "{port}: could not withdraw the name, it expires in {ttl}s: {error}",
                    port=repr(self),
                    ttl=self._lease.ttl,
                    error=str(e),
                )
        await _stopAll([port for port in (self.unixPort, self.port) if port is not None])


async def addressToward(reactor: Any, registryURL: str) -> str:
    """
    The local address the OS would use to reach the registry's host (what
    its peers most likely reach us by); 127.0.0.1 for a local registry.
    """
    try:
        host = parseRegistryURL(registryURL).host
    except ValueError:
        host = ""
    if not host:
        return "127.0.0.1"
    address = host
    if not (isIPAddress(host) or isIPv6Address(host)):
        try:
            address = await reactor.resolve(host)
        except Exception as e:
            raise MasseError(
                f"cannot tell which address to advertise: resolving the registry host "
                f"{host!r} failed ({e}); set advertise="
            ) from None
    family = socket.AF_INET6 if isIPv6Address(address) else socket.AF_INET
    try:
        with socket.socket(family, socket.SOCK_DGRAM) as probe:
            probe.connect((address, 9))  # UDP: no packet is sent
            return str(probe.getsockname()[0])
    except OSError as e:
        raise MasseError(
            f"cannot tell which address to advertise: no route to the registry host "
            f"{host!r} ({e}); set advertise="
        ) from None


@implementer(IStreamServerEndpoint)
class MasseServerEndpoint:
    """
    Listens on C{endpoint} (default: TCP, any free port) and registers the
    address it got as C{name} in C{namespace}, under a lease of C{ttl}
    seconds kept alive while listening.

    @param advertise: the host to publish for TCP; default: the interface
        listened on, or, for a wildcard, the local address that routes to
        the registry.
    @param unixPath: also listen on this UNIX socket, and advertise it first
        (clients on the same host prefer it).
    @param wrappers: protocol factory wrappers, the first nearest the wire.
    @param tls: serve TLS with this certificate (L{txmasse.peertls.PeerTLS});
        it must list C{NAME.NAMESPACE}. Its CA certificates, if any, must
        sign every client's certificate (mutual TLS). Published as C{tls:};
        TLS peers listen on TCP only (no UNIX sockets).
    @param provides: the AMP commands to publish (L{amp.Command<twisted.protocols.amp.Command>}
        classes, or protocol classes with responders) when the factory's
        own protocol class does not declare them (see L{txmasse.rpc}).
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        namespace: str | None = None,
        registry: IRegistry | str | None = None,
        endpoint: IStreamServerEndpoint | None = None,
        advertise: str | None = None,
        ttl: float = DEFAULT_TTL,
        metadata: Mapping[str, str] | None = None,
        unixPath: str | None = None,
        wrappers: Sequence[Wrapper] = (),
        tls: PeerTLS | None = None,
        provides: Sequence[type] | None = None,
    ):
        from txmasse.rpc.publish import checkProvides

        self.provides = checkProvides(provides)
        namespace = defaultNamespace() if namespace is None else namespace
        metadata = {} if metadata is None else metadata
        # A trial record checks name, namespace and metadata with the registry's rules.
        PeerRecord(namespace, name, ["tcp:host=127.0.0.1:port=1"], metadata)
        self.name = name
        self.namespace = namespace
        self.metadata = dict(metadata)
        self.registry = checkRegistry(registry)
        if endpoint is None:
            endpoint = serverFromString(reactor, "tcp:0")
        if not IStreamServerEndpoint.providedBy(endpoint):
            raise ValueError(f"endpoint {endpoint!r} is not an IStreamServerEndpoint")
        self.endpoint = endpoint
        if advertise is not None and (
            not isinstance(advertise, str) or HOST.fullmatch(advertise) is None
        ):
            raise ValueError(f"advertise={advertise!r}: must be a host name or IP address")
        self.advertise = advertise
        self.ttl = checkNumber(ttl, f"ttl={shown(ttl)}:", low=MIN_TTL, high=MAX_TTL)
        if unixPath is not None and (not isinstance(unixPath, str) or not unixPath):
            raise ValueError(f"unix={unixPath!r}: must be a socket path")
        self.unixPath = None if unixPath is None else os.path.abspath(unixPath)
        self.wrappers = checkWrappers(wrappers)
        if tls is not None:
            if not isinstance(tls, PeerTLS):
                raise ValueError(f"tls={tls!r}: must be a PeerTLS")
            tls.checkServes(name, namespace)
            if unixPath is not None:
                raise ValueError("unix= cannot be used with TLS: TLS peers listen on TCP only")
        self.tls = tls
        self._reactor = reactor

    def __repr__(self) -> str:
        return f"<MasseServerEndpoint {self.namespace}/{self.name}>"

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        """
        Listen, then register the real address. While the registry is
        unreachable the port listens all the same and keeps registering
        until it answers (see L{MasseListeningPort.whenRegistered}); if
        registering fails otherwise, stop listening and fail.
        """
        return Deferred.fromCoroutine(self._listen(protocolFactory))

    async def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        registry = openRegistry(self._reactor, self.registry)
        wrapped = stackFactory(factory, self.wrappers)
        if self.tls is not None:
            wrapped = self.tls.serverFactory(wrapped)
        port: IListeningPort = await self.endpoint.listen(wrapped)
        unixPort: IListeningPort | None = None
        try:
            if self.unixPath is not None:
                unix = UNIXServerEndpoint(self._reactor, self.unixPath, wantPID=True)
                unixPort = await unix.listen(wrapped)
            ports = [p for p in (unixPort, port) if p is not None]
            endpoints = [await self._describe(p.getHost(), registry) for p in ports]
            from txmasse.rpc.publish import published

            metadata = {**self.metadata, **published(factory, self.provides)}
            record = PeerRecord(self.namespace, self.name, endpoints, metadata)
            listening = MasseListeningPort(
                port, unixPort, record, registry, self.ttl, self._reactor
            )
            await listening.register()
        except BaseException:
            await _stopAll([p for p in (unixPort, port) if p is not None])
            raise
        log.info(
            "listening as {namespace}/{name} at {endpoints} (registry {url}{registered})",
            namespace=self.namespace,
            name=self.name,
            endpoints=list(record.endpoints),
            url=registry.url,
            registered="" if listening.registered else ", not yet registered",
        )
        return listening

    async def _describe(self, address: IAddress, registry: IRegistry) -> str:
        """
        The client endpoint description that reaches C{address}.
        """
        if isinstance(address, UNIXAddress) and self.tls is not None:
            raise MasseError(f"cannot advertise {address!r} for TLS: TLS peers listen on TCP")
        if isinstance(address, UNIXAddress) and address.name:
            return f"unix:path={quoteStringArgument(os.fsdecode(address.name))}"
        if isinstance(address, IPv4Address | IPv6Address):
            host = self.advertise
            if host is None and address.host not in ("0.0.0.0", "::", ""):
                host = address.host
            if host is None:
                host = await addressToward(self._reactor, registry.url)
            scheme = "tcp" if self.tls is None else "tls"
            return f"{scheme}:host={quoteStringArgument(host)}:port={address.port}"
        if self.tls is None:
            host = self.advertise or await addressToward(self._reactor, registry.url)
            try:
                description = describeAddress(address, host)
            except ValueError as e:
                raise MasseError(f"cannot advertise {address!r}: {e}") from None
            if description is not None:
                return description
        raise MasseError(
            f"cannot advertise {address!r}: listen on TCP or a UNIX socket, or install the "
            "IMasseTransport plugin of its transport (see txmasse.transports)"
        )
