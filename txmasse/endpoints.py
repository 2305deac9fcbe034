"""
The C{masse:} endpoints: connect to a peer by name, listen under a name.

A client endpoint asks the registry for the name at every C{connect()}, so
L{ClientService} follows a peer that restarted elsewhere. A server endpoint
listens on an ordinary inner endpoint and publishes the address it really
got under a lease that lives as long as the listening port.

L{parseClient} and L{parseServer} turn endpoint-string options into these
classes; the C{masse} parsers in C{twisted/plugins/txmasse_plugins.py} call
them, so C{clientFromString} and C{serverFromString} understand C{masse:}.
"""

from __future__ import annotations

import math
import os
import re
import socket
from collections.abc import Callable, Mapping, Sequence
from random import Random
from typing import Any

import attrs
from twisted.internet.abstract import isIPAddress, isIPv6Address
from twisted.internet.address import IPv4Address, IPv6Address, UNIXAddress
from twisted.internet.defer import CancelledError, Deferred, maybeDeferred
from twisted.internet.endpoints import (
    UNIXServerEndpoint,
    quoteStringArgument,
    serverFromString,
)
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
)
from twisted.internet.protocol import connectionDone
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse import metrics
from txmasse.errors import MasseError, NoReachablePeer, PeerNotFound
from txmasse.peertls import PeerTLS, certificateName, peerClientEndpoint, tlsFromOptions
from txmasse.records import Glob, PeerRecord, localHostIdentity, validateName
from txmasse.registry import (
    EventKind,
    ILease,
    IRegistry,
    PeerEvent,
    defaultNamespace,
    defaultRegistryURL,
    parseRegistryURL,
    registryFromURL,
)
from txmasse.registry._base import MAX_TTL, MIN_TTL
from txmasse.registry.url import redactText, redactURL
from txmasse.resolver import Resolver, resolverFor
from txmasse.wrappers import Wrapper, parseWrappers, stackFactory, unwrapProtocol

log = Logger()

DEFAULT_TIMEOUT = 30.0
DEFAULT_TTL = 10.0
PICKS = ("random", "first", "roundrobin")

CLIENT_OPTIONS = (
    "name",
    "ns",
    "registry",
    "timeout",
    "pick",
    "proto",
    "wrap",
    "report",
    "cache",
    "tls",
    "ca",
    "cert",
    "key",
)
SERVER_OPTIONS = (
    "name",
    "ns",
    "registry",
    "listen",
    "port",
    "interface",
    "advertise",
    "ttl",
    "unix",
    "wrap",
    "meta.KEY",
    "cert",
    "key",
    "ca",
)

_HOST = re.compile(r"[A-Za-z0-9._:%-]{1,253}")


# Checks shared by both endpoints


def isGlob(name: str) -> bool:
    """
    Whether C{name} is a pattern (C{db-*}) rather than one name.
    """
    return any(char in name for char in "*?[")


def _checkRegistry(registry: IRegistry | str | None) -> IRegistry | str:
    """
    The registry object, or a URL checked now and opened at each use.
    """
    if registry is None:
        url = defaultRegistryURL()
        try:
            parseRegistryURL(url)
        except ValueError as e:
            raise ValueError(f"$MASSE_REGISTRY: {e}") from None
        return url
    if isinstance(registry, str):
        parseRegistryURL(registry)
        return registry
    if not IRegistry.providedBy(registry):
        raise ValueError(f"registry must be a URL or an IRegistry, not {registry!r}")
    return registry


def _openRegistry(reactor: Any, registry: IRegistry | str) -> IRegistry:
    return registryFromURL(reactor, registry) if isinstance(registry, str) else registry


def _checkWrappers(wrappers: Sequence[Wrapper]) -> tuple[Wrapper, ...]:
    for wrapper in wrappers:
        if not callable(wrapper):
            raise ValueError(f"wrapper {wrapper!r} is not callable")
    return tuple(wrappers)


def _checkSeconds(option: str, value: object, low: float, high: float) -> float:
    if (
        isinstance(value, bool)
        or not isinstance(value, int | float)
        or not math.isfinite(value)
        or not low <= value <= high
    ):
        shown = f"{value:g}" if isinstance(value, float | int) else repr(value)
        raise ValueError(f"{option}={shown}: must be {low:g} to {high:g} seconds")
    return float(value)


def _knownTransports() -> set[str]:
    """
    Endpoint prefixes C{clientFromString} knows here, C{masse} aside.
    """
    known = {"tcp", "unix", "ssl"}
    for parser in getPlugins(IStreamClientEndpointStringParserWithReactor):
        known.add(str(parser.prefix).lower())
    known.discard("masse")
    return known


def _transport(description: str) -> str:
    return description.partition(":")[0].lower()


# The client


def _abort(protocol: IProtocol) -> None:
    transport: Any = getattr(protocol, "transport", None)
    if transport is not None:
        transport.abortConnection()


@attrs.define
class _Progress:
    """
    What one C{connect()} tried, for its error message.
    """

    target: str
    tried: list[str] = attrs.Factory(list)
    doing: str = "waiting for the registry"
    cancelled: bool = False
    expired: bool = False
    turn: int | None = None  # with pick=roundrobin, once this connect has taken one

    def timedOut(self, timeout: float) -> Failure:
        done = f"tried {'; '.join(self.tried)}; " if self.tried else ""
        return Failure(
            NoReachablePeer(
                f"no connection to {self.target} within {timeout:g}s: {done}gave up {self.doing}"
            )
        )


class _Reporting(ProtocolWrapper):
    """
    Nearest the wire of a C{report=true} client: publishes C{connected}
    once the stream is up and C{disconnected} when it ends.
    """

    _ended: Callable[[], object] | None = None

    @staticmethod
    def wrap(factory: IProtocolFactory) -> IProtocolFactory:
        return _ReportingFactory(factory)

    @staticmethod
    def start(protocol: IProtocol, registry: IRegistry, record: PeerRecord) -> None:
        source = f"{socket.gethostname()}:{os.getpid()}"

        def publish(kind: EventKind) -> None:
            d = registry.report(PeerEvent(kind, record, source))
            d.addErrback(lambda f: log.warn("could not report {kind}: {f.value}", kind=kind, f=f))

        publish(EventKind.CONNECTED)
        if isinstance(protocol, _Reporting):
            protocol._ended = lambda: publish(EventKind.DISCONNECTED)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if self._ended is not None:
            self._ended()
        super().connectionLost(reason)


class _ReportingFactory(WrappingFactory):
    protocol = _Reporting


@implementer(IStreamClientEndpoint)
class MasseClientEndpoint:
    """
    Connects to a live instance of C{name} in C{namespace}, looked up in the
    registry at every C{connect()}.

    @param registry: an L{IRegistry}, or its URL (default C{$MASSE_REGISTRY}).
    @param timeout: seconds for the whole connect, lookup included; L{None}
        for no limit.
    @param pick: which instance to try first: C{random}, C{first} (the
        longest registered) or C{roundrobin}; the others follow in order.
    @param proto: transports to accept, in order of preference (e.g.
        C{["unix", "tcp"]}); L{None} for any, in the peer's order.
    @param wrappers: protocol factory wrappers, the first nearest the wire.
    @param report: publish C{connected} and C{disconnected} events for each
        stream (watchers see them with C{usage=True}); off, it costs nothing.
    @param cache: resolve from this process's cache (L{txmasse.resolver})
        while the registry's events keep it current, so a connect costs no
        registry round trip; off, every C{connect()} asks the registry.
    @param tls: require verified TLS (L{txmasse.peertls.PeerTLS}: the CA to
        trust, a client certificate for mutual TLS): only C{tls:} endpoints
        are used, each verified against its instance's C{NAME.NAMESPACE}.
        Without it, C{tls:} endpoints are still verified, against the
        system trust roots.
    """

    def __init__(
        self,
        reactor: Any,
        name: str,
        namespace: str | None = None,
        registry: IRegistry | str | None = None,
        timeout: float | None = DEFAULT_TIMEOUT,
        pick: str = "random",
        proto: Sequence[str] | None = None,
        wrappers: Sequence[Wrapper] = (),
        report: bool = False,
        cache: bool = True,
        tls: PeerTLS | None = None,
    ):
        if isinstance(name, str) and isGlob(name):
            Glob(name)
        else:
            validateName(name, "name")
        self.name = name
        self.namespace = validateName(
            defaultNamespace() if namespace is None else namespace, "namespace"
        )
        self.registry = _checkRegistry(registry)
        self.timeout = None if timeout is None else _checkSeconds("timeout", timeout, 0.001, 1e6)
        if pick not in PICKS:
            raise ValueError(f"pick={pick!r}: must be one of {', '.join(PICKS)}")
        self.pick = pick
        self.proto = None if proto is None else self._checkProto(proto)
        self.wrappers = _checkWrappers(wrappers)
        self.report = bool(report)
        self.cache = bool(cache)
        if tls is not None and not isinstance(tls, PeerTLS):
            raise ValueError(f"tls={tls!r}: must be a PeerTLS")
        if tls is not None and self.proto is not None and "tls" not in self.proto:
            raise ValueError(f"proto={','.join(self.proto)}: TLS clients connect only by tls")
        self.tls = tls
        self._reactor = reactor
        self._random = Random()
        self._turn = 0
        # Parsed once: parsing costs as much as a loopback connect.
        self._display = (
            parseRegistryURL(self.registry).display if isinstance(self.registry, str) else ""
        )
        self._endpoints: dict[tuple[str, str], IStreamClientEndpoint] = {}

    def __repr__(self) -> str:
        return f"<MasseClientEndpoint {self.namespace}/{self.name}>"

    @staticmethod
    def _checkProto(proto: Sequence[str]) -> tuple[str, ...]:
        if isinstance(proto, str) or not proto:
            raise ValueError(f"proto={proto!r}: must be a list of transports, e.g. unix,tcp")
        known = _knownTransports()
        for transport in proto:
            if transport not in known:
                raise ValueError(
                    f"proto: unknown transport {transport!r} (known: {', '.join(sorted(known))})"
                )
        return tuple(proto)

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        """
        Resolve the name, then try each instance's endpoints in turn.

        Fails with L{PeerNotFound}, L{NoReachablePeer} (also on timeout) or
        the registry's L{txmasse.errors.RegistryUnavailable}. Cancelling
        cancels the attempt in progress.
        """
        return self._start(protocolFactory, None)

    def connectToRecord(
        self, record: PeerRecord, protocolFactory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """
        Connect to this one instance, already known (from a watch, say),
        without a lookup; as L{connect} otherwise: its endpoints in turn,
        this endpoint's C{proto}, wrappers and timeout.
        """
        return self._start(protocolFactory, [record])

    def _start(
        self, protocolFactory: IProtocolFactory, records: Sequence[PeerRecord] | None
    ) -> Deferred[IProtocol]:
        registry = self.registry
        url = self._display if isinstance(registry, str) else registry.url
        progress = _Progress(f"{self.name!r} in namespace {self.namespace!r} (registry {url})")
        stack = [_Reporting.wrap, *self.wrappers] if self.report else self.wrappers
        wrapped, depth = stackFactory(protocolFactory, stack), len(stack)
        attempts: list[Deferred[Any]] = []  # the last one is in progress

        def cancel(_: object) -> None:
            progress.cancelled = True
            attempts[-1].cancel()

        connecting: Deferred[IProtocol] = Deferred(cancel)
        metrics.connectStarted(connecting, self.namespace, self.name)
        timeout = self.timeout
        # One delayed call rather than Deferred.addTimeout: a third of what
        # a warm connect costs beyond the TCP connect itself.
        timer = None if timeout is None else self._reactor.callLater(timeout, lambda: expire())

        def expire() -> None:
            progress.expired = True
            cancel(None)
            if not connecting.called:  # the attempt ignored its cancellation
                connecting.errback(progress.timedOut(timeout or 0))

        def relay(outcome: IProtocol | Failure) -> None:
            if timer is not None and timer.active():
                timer.cancel()
            if not connecting.called:
                if isinstance(outcome, Failure):
                    connecting.errback(
                        progress.timedOut(timeout or 0) if progress.expired else outcome
                    )
                else:
                    connecting.callback(outcome)
            elif not isinstance(outcome, Failure):
                _abort(outcome)  # connected just as the caller gave up

        def tryAll(staleFailed: str | None) -> None:
            running = Deferred.fromCoroutine(
                self._connect(wrapped, depth, progress, records, staleFailed)
            )
            attempts.append(running)
            running.addBoth(relay)

        first = self._warmFirst(progress) if records is None else None
        if first is None:
            tryAll(None)
            return connecting

        # Warm: the cache's first choice, straight away, without the
        # coroutine; if it fails, the full search starts from there.
        cachedRegistry, record, description, endpoint = first

        def succeeded(protocol: IProtocol) -> None:
            try:
                application = self._connected(protocol, cachedRegistry, record, depth)
            except Exception:
                relay(Failure())
                return
            relay(application)

        def failed(failure: Failure) -> None:
            if progress.cancelled:
                relay(Failure(CancelledError()))
                return
            self._attemptFailed(progress, description, failure.value)
            tryAll(description)

        progress.doing = f"connecting to {description}"
        attempt = maybeDeferred(endpoint.connect, wrapped)  # an endpoint may raise at once
        attempts.append(attempt)
        attempt.addCallbacks(succeeded, failed)
        return connecting

    def _warmFirst(
        self, progress: _Progress
    ) -> tuple[IRegistry, PeerRecord, str, IStreamClientEndpoint] | None:
        """
        The registry, instance, description and endpoint that a connect
        tries first, when the cache answers and that first choice is clear;
        else L{None}, and the full search decides (and reports why).
        """
        if not self.cache:
            return None
        try:
            registry = _openRegistry(self._reactor, self.registry)
            records = resolverFor(registry, self._reactor).cached(self.namespace, self.name)
            if not records:
                return None
            record = self._order(records, progress)[0]
            descriptions = self._usable(record, localHostIdentity())
            if not descriptions:
                return None
            return registry, record, descriptions[0], self._endpointFor(descriptions[0], record)
        except Exception:
            return None  # the full search meets it again, and fails with it

    async def _connect(
        self,
        wrapped: IProtocolFactory,
        depth: int,
        progress: _Progress,
        records: Sequence[PeerRecord] | None,
        staleFailed: str | None,
    ) -> IProtocol:
        """
        Endpoints fail in their own ways when cancelled: report a
        cancellation as L{CancelledError}, whatever was interrupted.
        """
        try:
            return await self._tryAll(wrapped, depth, progress, records, staleFailed)
        except Exception:
            if progress.cancelled:
                raise CancelledError() from None
            raise

    async def _tryAll(
        self,
        wrapped: IProtocolFactory,
        depth: int,
        progress: _Progress,
        records: Sequence[PeerRecord] | None,
        staleFailed: str | None,
    ) -> IProtocol:
        """
        Resolve (unless given C{records}), then try each instance's
        endpoints in turn. C{staleFailed}: a cached endpoint that just
        failed; the cache entry is dropped and the registry asked again.
        """
        registry = _openRegistry(self._reactor, self.registry)
        progress.target = f"{self.name!r} in namespace {self.namespace!r} (registry {registry.url})"
        resolver = resolverFor(registry, self._reactor) if self.cache and records is None else None
        cached = False
        failed: set[str] = set()
        if resolver is not None and staleFailed is not None:
            failed.add(staleFailed)
            stale = self._order(resolver.cached(self.namespace, self.name) or (), progress)
            pending = await self._resolveAgain(resolver, stale, progress)
        else:
            if resolver is not None:
                records = resolver.cached(self.namespace, self.name)
                cached = records is not None
                if records is None:
                    records = (await resolver.resolve(self.namespace, self.name)).records
            elif records is None and isGlob(self.name):
                records = await registry.find(self.namespace, self.name)
            elif records is None:
                records = await registry.lookup(self.namespace, self.name)
            if not records:
                what = "matches" if isGlob(self.name) else "is registered as"
                raise PeerNotFound(
                    f"no peer {what} {self.name!r} in namespace {self.namespace!r} "
                    f"(registry {registry.url})"
                )
            pending = self._order(records, progress)
        here = localHostIdentity()
        while pending:
            record = pending.pop(0)
            descriptions = self._usable(record, here)
            if not descriptions:
                why = "no endpoint this client accepts"
                if self.tls is not None:
                    expected = certificateName(record.name, record.namespace)
                    why = f"refused: not TLS, and this client requires TLS to {expected!r}"
                progress.tried.append(
                    f"instance {record.instance[:8]}: {why} among {list(record.endpoints)}"
                )
            for description in descriptions:
                if description in failed:
                    continue  # it failed in this connect, before the cache was refreshed
                progress.doing = f"connecting to {description}"
                try:
                    endpoint = self._endpointFor(description, record)
                    protocol = await endpoint.connect(wrapped)
                except Exception as e:
                    if progress.cancelled:
                        raise
                    self._attemptFailed(progress, description, e)
                    failed.add(description)
                    if cached and resolver is not None:
                        cached = False  # stale: ask the registry, once, and go on with its answer
                        pending = await self._resolveAgain(resolver, pending, progress)
                        break
                    continue
                return self._connected(protocol, registry, record, depth)
        raise NoReachablePeer(
            f"could not reach {progress.target}: tried {'; '.join(progress.tried)}"
        )

    def _attemptFailed(
        self, progress: _Progress, description: str, error: BaseException | None
    ) -> None:
        why = (str(error) or type(error).__name__) if error is not None else "failed"
        progress.tried.append(f"{description}: {why}")
        log.info(
            "{target}: {description} failed ({why}); trying the next",
            target=progress.target,
            description=description,
            why=why,
        )

    def _connected(
        self, protocol: IProtocol, registry: IRegistry, record: PeerRecord, depth: int
    ) -> IProtocol:
        """
        The application's protocol, once connected to C{record}: reported
        (with C{report}), unwrapped from the C{depth} wrappers.
        """
        if self.report:
            _Reporting.start(protocol, registry, record)
        return self._unwrap(protocol, depth)

    def _endpointFor(self, description: str, record: PeerRecord) -> IStreamClientEndpoint:
        """
        The endpoint for one of C{record}'s descriptions, built once and
        reused: endpoints are reusable, and parsing a description costs
        about as much as a loopback connect.
        """
        key = (description, record.name)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= 64:
                self._endpoints.clear()
            endpoint = peerClientEndpoint(self._reactor, description, record, self.tls)
            self._endpoints[key] = endpoint
        return endpoint

    async def _resolveAgain(
        self, resolver: Resolver, pending: list[PeerRecord], progress: _Progress
    ) -> list[PeerRecord]:
        """
        After a cached instance failed: drop the name's cache entry and
        return the registry's fresh answer (the rest of C{pending} if the
        registry fails too).
        """
        resolver.forget(self.namespace, self.name)
        progress.doing = "waiting for the registry"
        try:
            resolution = await resolver.resolve(self.namespace, self.name)
        except Exception as e:
            if progress.cancelled:
                raise
            log.info(
                "{target}: could not resolve again ({error}); trying the cached instances left",
                target=progress.target,
                error=e,
            )
            return pending
        return self._order(resolution.records, progress)

    def _unwrap(self, protocol: IProtocol, depth: int) -> IProtocol:
        try:
            return unwrapProtocol(protocol, depth)
        except TypeError:
            _abort(protocol)
            raise

    def _order(self, records: Sequence[PeerRecord], progress: _Progress) -> list[PeerRecord]:
        """
        Instances in the order to try them, per C{pick}. With C{roundrobin},
        each connect takes one turn and keeps it however often it orders
        the instances again (else a dead instance would hand every turn
        after it to one peer, and concurrent connects would skip some).
        """
        ordered = sorted(records, key=lambda record: (record.registered, record.instance))
        if self.pick == "random":
            self._random.shuffle(ordered)
        elif self.pick == "roundrobin" and ordered:
            if progress.turn is None:
                progress.turn = self._turn
                self._turn += 1
            start = progress.turn % len(ordered)
            ordered = ordered[start:] + ordered[:start]
        return ordered

    def _usable(self, record: PeerRecord, here: str) -> list[str]:
        """
        The record's endpoints this client may try, best first: never
        C{masse:} (no loops), C{unix:} only on the same host, only C{proto},
        only C{tls:} for a TLS client.
        """
        usable = []
        for description in record.endpoints:
            transport = _transport(description)
            if transport == "masse" or (transport == "unix" and record.host != here):
                continue
            if self.tls is not None and transport != "tls":
                continue  # a TLS client never falls back to plain streams
            if self.proto is None or transport in self.proto:
                usable.append(description)
        if self.proto is not None:
            proto = self.proto
            usable.sort(key=lambda description: proto.index(_transport(description)))
        return usable


# The server


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


@implementer(IListeningPort)
class MasseListeningPort:
    """
    Listening under a name: C{stopListening()} withdraws the name (peers
    see C{left}), then stops listening.

    @ivar port: the inner endpoint's port; C{getHost()} is its address.
    @ivar unixPort: the extra UNIX socket's port, if any.
    @ivar lease: the registration.
    """

    def __init__(self, port: IListeningPort, unixPort: IListeningPort | None, lease: ILease):
        self.port = port
        self.unixPort = unixPort
        self.lease = lease
        self._stopping: Deferred[None] | None = None

    def __repr__(self) -> str:
        record = self.record
        return f"<MasseListeningPort {record.namespace}/{record.name} {list(record.endpoints)}>"

    @property
    def record(self) -> PeerRecord:
        return self.lease.record

    def getHost(self) -> IAddress:
        return self.port.getHost()

    def startListening(self) -> None:
        """
        Nothing to do: C{listen()} fires with a port that already listens.
        """

    def stopListening(self) -> Deferred[None]:
        if self._stopping is None:
            self._stopping = Deferred.fromCoroutine(self._stop())
        return _follow(self._stopping)

    async def _stop(self) -> None:
        try:
            await self.lease.release()
        except Exception as e:
            log.warn(
                "{port}: could not withdraw the name, it expires in {ttl}s: {error}",
                port=self,
                ttl=self.lease.ttl,
                error=e,
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
    ):
        namespace = defaultNamespace() if namespace is None else namespace
        metadata = {} if metadata is None else metadata
        # A trial record checks name, namespace and metadata with the registry's rules.
        PeerRecord(namespace, name, ["tcp:host=127.0.0.1:port=1"], metadata)
        self.name = name
        self.namespace = namespace
        self.metadata = dict(metadata)
        self.registry = _checkRegistry(registry)
        if endpoint is None:
            endpoint = serverFromString(reactor, "tcp:0")
        if not IStreamServerEndpoint.providedBy(endpoint):
            raise ValueError(f"endpoint {endpoint!r} is not an IStreamServerEndpoint")
        self.endpoint = endpoint
        if advertise is not None and (
            not isinstance(advertise, str) or _HOST.fullmatch(advertise) is None
        ):
            raise ValueError(f"advertise={advertise!r}: must be a host name or IP address")
        self.advertise = advertise
        self.ttl = _checkSeconds("ttl", ttl, MIN_TTL, MAX_TTL)
        if unixPath is not None and (not isinstance(unixPath, str) or not unixPath):
            raise ValueError(f"unix={unixPath!r}: must be a socket path")
        self.unixPath = None if unixPath is None else os.path.abspath(unixPath)
        self.wrappers = _checkWrappers(wrappers)
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
        Listen, then register the real address; if registering fails, stop
        listening and fail.
        """
        return Deferred.fromCoroutine(self._listen(protocolFactory))

    async def _listen(self, factory: IProtocolFactory) -> IListeningPort:
        registry = _openRegistry(self._reactor, self.registry)
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
            record = PeerRecord(self.namespace, self.name, endpoints, self.metadata)
            lease = await registry.register(record, self.ttl)
        except BaseException:
            await _stopAll([p for p in (unixPort, port) if p is not None])
            raise
        log.info(
            "listening as {namespace}/{name} at {endpoints} (registry {url})",
            namespace=self.namespace,
            name=self.name,
            endpoints=list(record.endpoints),
            url=registry.url,
        )
        return MasseListeningPort(port, unixPort, lease)

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
        raise MasseError(f"cannot advertise {address!r}: listen on TCP or a UNIX socket")


# Endpoint strings


class _InvalidDescription(ValueError):
    """
    A C{masse:} description is wrong; the message names the part.
    """


def _bad(detail: str | ValueError) -> ValueError:
    if isinstance(detail, _InvalidDescription):
        return detail  # already says which part, prefixed
    # One line: a control character in the description is shown escaped;
    # and no password, should a part quoted here hold a URL's.
    shown = "".join(c if c.isprintable() else repr(c)[1:-1] for c in str(detail))
    return _InvalidDescription(f"invalid masse: endpoint: {redactText(shown)}")


def _isKnown(key: str, known: Sequence[str]) -> bool:
    return key in known or ("meta.KEY" in known and key.startswith("meta."))


def _checkRegistryCut(args: Sequence[str], kwargs: Mapping[str, str], known: Sequence[str]) -> None:
    """
    A C{registry=} URL with a C{:} left unescaped is cut there: the rest,
    password included, lands in stray parts (or, past an C{=}, in unknown
    options). Say so before any other check quotes one of those parts,
    showing the URL put back together without its password.
    """
    url = kwargs.get("registry")
    if url is None or "://" not in url:
        return
    stray = [part for i, part in enumerate(args) if i > 0 or "name" in kwargs or "@" in part]
    stray += [f"{key}={value}" for key, value in kwargs.items() if not _isKnown(key, known)]
    authority = url.partition("://")[2].partition("/")[0]
    credentialsCut = "@" not in authority and any("@" in part for part in stray)
    if credentialsCut or (stray and "password=" in url):
        whole = redactURL(":".join([url, *stray]))
        raise _bad(
            f"registry= was cut at an unescaped ':' (the URL looks like {whole!r}): "
            "escape each ':' inside registry= as '\\:'"
        )


def _takeName(args: Sequence[str], kwargs: dict[str, str]) -> str:
    if len(args) > 1:
        raise _bad(
            f"unexpected part {args[1]!r}: give one name, then KEY=VALUE options "
            "(escape ':' inside a value as '\\:')"
        )
    if args and "name" in kwargs:
        raise _bad(f"name given twice ({args[0]!r} and name={kwargs['name']!r})")
    name = args[0] if args else kwargs.pop("name", None)
    if not name:
        raise _bad("the name is missing (masse:NAME or masse:name=NAME)")
    return name


def _checkKeys(kwargs: Mapping[str, str], known: Sequence[str]) -> None:
    for key in kwargs:
        if not _isKnown(key, known):
            raise _bad(f"unknown option {key!r} (known: {', '.join(known)})")


def _number(option: str, text: str) -> float:
    try:
        return float(text)
    except ValueError:
        raise _bad(f"{option}={text!r} is not a number") from None


def _list(option: str, text: str) -> list[str]:
    items = [item.strip() for item in text.split(",")]
    if not all(items):
        raise _bad(f"{option}={text!r} has an empty item")
    return items


def _registryOption(kwargs: dict[str, str]) -> str | None:
    url = kwargs.pop("registry", None)
    if url is not None:
        try:
            parseRegistryURL(url)
        except ValueError as e:
            hint = "" if "://" in url else " (escape ':' inside registry= as '\\:')"
            raise _bad(f"registry: {e}{hint}") from None
    return url


def _wrapOption(reactor: Any, kwargs: dict[str, str]) -> list[Wrapper]:
    spec = kwargs.pop("wrap", None)
    if spec is None:
        return []
    try:
        return parseWrappers(reactor, spec)
    except ValueError as e:
        raise _bad(e) from None


def parseClient(reactor: Any, /, *args: str, **kwargs: str) -> MasseClientEndpoint:
    """
    A L{MasseClientEndpoint} from the parts of C{masse:NAME:KEY=VALUE...}.

    @raise ValueError: naming the bad part.
    """
    _checkRegistryCut(args, kwargs, CLIENT_OPTIONS)
    _checkKeys(kwargs, CLIENT_OPTIONS)
    name = _takeName(args, kwargs)
    registry = _registryOption(kwargs)
    wrappers = _wrapOption(reactor, kwargs)
    timeout = _number("timeout", kwargs["timeout"]) if "timeout" in kwargs else DEFAULT_TIMEOUT
    proto = _list("proto", kwargs["proto"]) if "proto" in kwargs else None
    try:
        return MasseClientEndpoint(
            reactor,
            name,
            namespace=kwargs.get("ns"),
            registry=registry,
            timeout=timeout,
            pick=kwargs.get("pick", "random"),
            proto=proto,
            wrappers=wrappers,
            report=_flag("report", kwargs.get("report", "false")),
            cache=_flag("cache", kwargs.get("cache", "true")),
            tls=tlsFromOptions(kwargs, server=False),
        )
    except ValueError as e:
        raise _bad(e) from None


def _flag(option: str, text: str) -> bool:
    if text.lower() in ("true", "yes", "1"):
        return True
    if text.lower() in ("false", "no", "0"):
        return False
    raise _bad(f"{option}={text!r}: must be true or false")


def parseServer(reactor: Any, /, *args: str, **kwargs: str) -> MasseServerEndpoint:
    """
    A L{MasseServerEndpoint} from the parts of C{masse:NAME:KEY=VALUE...}.

    @raise ValueError: naming the bad part.
    """
    _checkRegistryCut(args, kwargs, SERVER_OPTIONS)
    _checkKeys(kwargs, SERVER_OPTIONS)
    name = _takeName(args, kwargs)
    registry = _registryOption(kwargs)
    wrappers = _wrapOption(reactor, kwargs)
    metadata = {key[5:]: value for key, value in kwargs.items() if key.startswith("meta.")}
    ttl = _number("ttl", kwargs["ttl"]) if "ttl" in kwargs else DEFAULT_TTL
    try:
        return MasseServerEndpoint(
            reactor,
            name,
            namespace=kwargs.get("ns"),
            registry=registry,
            endpoint=_innerServer(reactor, kwargs),
            advertise=kwargs.get("advertise"),
            ttl=ttl,
            metadata=metadata,
            unixPath=kwargs.get("unix"),
            wrappers=wrappers,
            tls=tlsFromOptions(kwargs, server=True),
        )
    except ValueError as e:
        raise _bad(e) from None


def _innerServer(reactor: Any, kwargs: Mapping[str, str]) -> IStreamServerEndpoint:
    """
    The endpoint to really listen on: C{listen=}, or C{port=}/C{interface=}.
    """
    listen = kwargs.get("listen")
    port = kwargs.get("port")
    interface = kwargs.get("interface")
    if listen is not None and (port is not None or interface is not None):
        raise _bad("give listen= or port=/interface=, not both")
    if listen is None:
        if port is not None and (not port.isdigit() or int(port) > 65535):
            raise _bad(f"port={port!r} must be a whole number from 0 to 65535")
        listen = f"tcp:{port or 0}"
        if interface is not None:
            if _HOST.fullmatch(interface) is None:
                raise _bad(f"interface={interface!r} must be an IP address")
            listen += f":interface={quoteStringArgument(interface)}"
    if _transport(listen) == "masse":
        raise _bad(f"listen={listen!r}: cannot listen on a masse: endpoint")
    try:
        endpoint: IStreamServerEndpoint = serverFromString(reactor, listen)
    except Exception as e:
        raise _bad(f"listen={listen!r}: {e} (escape ':' as '\\:' inside listen=)") from None
    return endpoint
