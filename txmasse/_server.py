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
import time
from collections.abc import Mapping, Sequence
from typing import Any

import attrs
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import Deferred, fail, gatherResults, maybeDeferred, succeed
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
from twisted.internet.protocol import connectionDone
from twisted.internet.task import LoopingCall
from twisted.logger import Logger
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse.checks import checkNumber, shown
from txmasse.errors import MasseError, RegistryUnavailable
from txmasse.health import (
    CHECK_TIMEOUT,
    CheckSpec,
    HealthCheck,
    drainDecidedElsewhere,
    parseCheck,
    runCheck,
    withDrainOf,
    worst,
)
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
            log.failure("could not stop listening: {port}", port=repr(port))


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
        checks: Sequence[HealthCheck] = (),
        drainTimeout: float = 0.0,
        connections: OpenConnections | None = None,
    ):
        self.port = port
        self.unixPort = unixPort
        self._checks = list(checks)
        self._drainTimeout = drainTimeout
        self._connections = connections
        self._upkeep: LoopingCall | None = None
        self._upkeepStart: IDelayedCall | None = None
        self._tending = False
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
            self._startUpkeep()

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
        if self._drainTimeout > 0 and self._lease is not None:
            await self._drainBeforeStopping()
        self._stopUpkeep()
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

    # Health and drain: the state this instance publishes in its record

    @property
    def draining(self) -> bool:
        return self.record.draining

    def drain(self) -> Deferred[None]:
        """
        Take this instance out of rotation: its name and its open
        connections stay, no client opens a new one; watchers see
        C{updated}. Fires once the registry has the change.
        """
        return self._setDraining(True)

    def undrain(self) -> Deferred[None]:
        """
        Put this instance back in rotation.
        """
        return self._setDraining(False)

    def _setDraining(self, draining: bool) -> Deferred[None]:
        record = self.record
        if record.draining == draining:
            return succeed(None)
        what = "draining" if draining else "back in rotation"
        log.info("{port}: {what}", port=repr(self), what=what)
        changed = max(time.time(), record.drainChanged)
        return self._publish(attrs.evolve(record, draining=draining, drainChanged=changed))

    def _publish(self, record: PeerRecord) -> Deferred[None]:
        """
        Make C{record} this instance's, in the registry at once if
        registered (else it is what registering writes).
        """
        self._record = record
        lease = self._lease
        if lease is None or (self._stopping is not None and not record.draining):
            return succeed(None)
        try:
            updating = lease.update(record)
        except ValueError:
            return succeed(None)  # released meanwhile

        def failed(failure: Failure) -> None:
            log.warn(
                "{port}: could not publish its new state ({state}), the next heartbeat "
                "writes it: {error}",
                port=repr(self),
                state=record.state,
                error=failure.getErrorMessage(),
            )

        return updating.addErrback(failed)

    def _startUpkeep(self) -> None:
        """
        Once registered, at every heartbeat interval: adopt a drain decided
        elsewhere, and run the checks.
        """
        if self._upkeep is not None or self._stopping is not None:
            return
        interval = self._ttl / 3
        self._upkeep = LoopingCall(self._tend)
        self._upkeep.clock = self._clock
        if self._checks:
            self._tend()  # the first verdict at once
        # Half an interval away from the heartbeats: a drain written
        # elsewhere just before a heartbeat (which writes our record back)
        # would otherwise never be seen; masse drain writes it again when
        # a heartbeat undid it, and this finds it there.
        self._upkeepStart = self._clock.callLater(interval / 2, self._upkeep.start, interval)

    def _stopUpkeep(self) -> None:
        if self._upkeepStart is not None and self._upkeepStart.active():
            self._upkeepStart.cancel()
        self._upkeepStart = None
        if self._upkeep is not None and self._upkeep.running:
            self._upkeep.stop()
        self._upkeep = None

    def _tend(self) -> Deferred[None]:
        """
        One round of upkeep; the next waits for it (a slow registry or
        check never piles rounds up).
        """
        return Deferred.fromCoroutine(self._tendOnce())

    async def _tendOnce(self) -> None:
        if self._tending:
            return
        self._tending = True
        try:
            await self._adoptDrain()
            if self._checks:
                await self._check()
        except Exception:
            log.failure("{port}: upkeep", port=repr(self))
        finally:
            self._tending = False

    async def _adoptDrain(self) -> None:
        """
        C{masse drain} and C{masse undrain} write this instance's record
        from elsewhere: a newer drain decision than ours is adopted, so our
        own writes keep it. One lookup of our name per interval (no watch:
        a watch hears every event of the namespace).
        """
        theirs = await drainDecidedElsewhere(self._registry, self.record)
        adopted = withDrainOf(self.record, theirs)  # (its health may have changed meanwhile)
        if adopted is None or self._stopping is not None:
            return
        log.info(
            "{port}: {what} from outside",
            port=repr(self),
            what="drained" if adopted.draining else "undrained",
        )
        await self._publish(adopted)

    async def _check(self) -> None:
        timeout = min(CHECK_TIMEOUT, self._ttl / 3)
        verdicts = await gatherResults(
            [runCheck(check, self._clock, timeout) for check in self._checks]
        )
        verdict = worst(verdicts)
        record = self.record
        if (verdict.state, verdict.reason) == (record.health, record.reason):
            return
        if self._stopping is not None:
            return
        log.info("{port}: health is now {state}", port=repr(self), state=verdict.state)
        await self._publish(attrs.evolve(record, health=verdict.state, reason=verdict.reason))

    async def _drainBeforeStopping(self) -> None:
        """
        Graceful stop: drain, then wait up to C{drain=} seconds for the
        open connections to close.
        """
        await self.drain()
        connections = self._connections
        if connections is None or not connections.open:
            return
        log.info(
            "{port}: waiting up to {seconds:g}s for {count} open connection(s) to close",
            port=repr(self),
            seconds=self._drainTimeout,
            count=connections.open,
        )
        idle = connections.whenIdle()
        timer = self._clock.callLater(self._drainTimeout, idle.cancel)
        try:
            await idle
        except Exception:
            log.info(
                "{port}: {count} connection(s) still open after {seconds:g}s; stopping",
                port=repr(self),
                count=connections.open,
                seconds=self._drainTimeout,
            )
        if timer.active():
            timer.cancel()


class _Counted(ProtocolWrapper):
    factory: OpenConnections

    def connectionMade(self) -> None:
        self.factory.open += 1
        super().connectionMade()

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        try:
            super().connectionLost(reason)
        finally:
            self.factory.closed()


class OpenConnections(WrappingFactory[_Counted]):
    """
    Counts the connections open to a factory, for a graceful stop.
    """

    noisy = False  # no "Starting factory" lines
    protocol = _Counted

    def __init__(self, wrappedFactory: IProtocolFactory):
        super().__init__(wrappedFactory)
        self.open = 0
        self._idle: list[Deferred[None]] = []

    def closed(self) -> None:
        self.open -= 1
        if self.open <= 0:
            idle, self._idle = self._idle, []
            for d in idle:
                d.callback(None)

    def whenIdle(self) -> Deferred[None]:
        if self.open <= 0:
            return succeed(None)
        d: Deferred[None] = Deferred(lambda d: self._idle.remove(d) if d in self._idle else None)
        self._idle.append(d)
        return d


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
    @param check: a built-in health check of the listening address:
        C{"tcp"} or C{"http:/PATH"} (see L{txmasse.health}).
    @param healthCheck: a callable the port calls at every heartbeat
        interval; it returns, or fires with, a state (C{passing},
        C{warning}, C{critical}) and a reason. With C{check}, the worse
        verdict counts.
    @param drain: seconds C{stopListening()} waits for open connections to
        close, drained (no new ones), before it withdraws the name; 0 (the
        default) withdraws it at once.
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
        check: str | CheckSpec | None = None,
        healthCheck: HealthCheck | None = None,
        drain: float = 0.0,
    ):
        from txmasse.rpc.publish import checkProvides

        self.check = parseCheck(check) if isinstance(check, str) else check
        if self.check is not None and not isinstance(self.check, CheckSpec):
            raise ValueError(f"check={check!r}: must be tcp or http:/PATH")
        if healthCheck is not None and not callable(healthCheck):
            raise ValueError(f"healthCheck={healthCheck!r}: must be callable")
        if self.check is not None and self.check.kind == "http" and tls is not None:
            raise ValueError(f"check={self.check}: a TLS peer cannot be checked over plain HTTP")
        self.healthCheck = healthCheck
        self.drain = checkNumber(drain, f"drain={shown(drain)}:", low=0, high=MAX_TTL)

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
        connections = None
        if self.drain > 0:
            wrapped = connections = OpenConnections(wrapped)
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
                port,
                unixPort,
                record,
                registry,
                self.ttl,
                self._reactor,
                checks=self._checks(port),
                drainTimeout=self.drain,
                connections=connections,
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

    def _checks(self, port: IListeningPort) -> list[HealthCheck]:
        checks = []
        if self.check is not None:
            timeout = min(CHECK_TIMEOUT, self.ttl / 3)
            checks.append(self.check.bind(self._reactor, port.getHost(), timeout))
        if self.healthCheck is not None:
            checks.append(self.healthCheck)
        return checks

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
