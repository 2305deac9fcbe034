"""
The client endpoint: connect to a peer by name.

A connect reads top to bottom: resolve the name (from the cache when a
synced watch holds it, else from the registry), order the candidates
(L{txmasse.resolver.Selection}), attempt each in turn, and hand back the
application's protocol with the wrappers stacked around it. Warm, cold,
pattern and given-record connects all walk the same list with the same
loop, L{_Connect}.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse import metrics
from txmasse.checks import checkNumber, shown
from txmasse.descriptions import transportOf
from txmasse.errors import NoReachablePeer, PeerNotFound
from txmasse.peertls import PeerTLS, certificateName
from txmasse.records import Glob, PeerRecord, isPattern, localHostIdentity, validateName
from txmasse.registry import IRegistry, defaultNamespace
from txmasse.registry.opening import checkRegistry, openRegistry, registryDisplay
from txmasse.resolver import (
    Candidate,
    Resolver,
    Selection,
    checkConditions,
    resolverFor,
)
from txmasse.usage import ReportingEndpoint
from txmasse.wrappers import Wrapper, checkWrappers, wrapEndpoint

log = Logger()

DEFAULT_TIMEOUT = 30.0

ENDPOINT_CACHE = 64
"""Endpoints built from descriptions kept per client endpoint."""


def knownTransports() -> set[str]:
    """
    Endpoint prefixes C{clientFromString} knows here, C{masse} aside.
    """
    known = {"tcp", "unix", "ssl"}
    for parser in getPlugins(IStreamClientEndpointStringParserWithReactor):
        known.add(str(parser.prefix).lower())
    known.discard("masse")
    return known


@implementer(IStreamClientEndpoint)
class MasseClientEndpoint:
    """
    Connects to a live instance of C{name} in C{namespace}, looked up in the
    registry at every C{connect()}.

    @param registry: an L{IRegistry}, or its URL (default C{$MASSE_REGISTRY}).
    @param timeout: seconds for the whole connect, lookup included; C{None}
        for no limit.
    @param pick: which instance to try first: C{random}, C{first} (the
        longest registered) or C{roundrobin}; the others follow in order.
    @param proto: transports to accept, in order of preference (e.g.
        C{["unix", "tcp"]}); C{None} for any, in the peer's order.
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
    @param meta: metadata an instance must have to be tried: a mapping or
        C{(KEY, VALUE)} pairs, all of which must match (C{meta.KEY=VALUE}).
    @param prefer: metadata to try first, most important first (a mapping
        in order, or pairs); the other instances stay as fallbacks
        (C{prefer.KEY=VALUE}). See L{txmasse.resolver.Selection}.
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
        meta: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
        prefer: Mapping[str, str] | Sequence[tuple[str, str]] | None = None,
    ):
        if isinstance(name, str) and isPattern(name):
            Glob(name)
        else:
            validateName(name, "name")
        self.name = name
        self.namespace = validateName(
            defaultNamespace() if namespace is None else namespace, "namespace"
        )
        self.registry = checkRegistry(registry)
        self.timeout = (
            None
            if timeout is None
            else checkNumber(timeout, f"timeout={shown(timeout)}:", low=0.001, high=1e6)
        )
        checkedProto = None if proto is None else self._checkProto(proto)
        if tls is not None and not isinstance(tls, PeerTLS):
            raise ValueError(f"tls={tls!r}: must be a PeerTLS")
        if tls is not None and checkedProto is not None and "tls" not in checkedProto:
            raise ValueError(f"proto={','.join(checkedProto)}: TLS clients connect only by tls")
        self.selection = Selection(
            pick,
            checkedProto,
            tlsOnly=tls is not None,
            meta=checkConditions(meta, "meta"),
            prefer=checkConditions(prefer, "prefer"),
        )
        self.wrappers = checkWrappers(wrappers)
        self.report = bool(report)
        self.cache = bool(cache)
        self.tls = tls
        self._reactor = reactor
        # Parsed once: parsing costs as much as a loopback connect.
        self._display = registryDisplay(self.registry)
        self._endpoints: dict[tuple[str, str], IStreamClientEndpoint] = {}
        self._opened: IRegistry | None = None
        self._resolver: Resolver | None = None

    @property
    def pick(self) -> str:
        return self.selection.pick

    @property
    def proto(self) -> tuple[str, ...] | None:
        return self.selection.proto

    def __repr__(self) -> str:
        return f"<MasseClientEndpoint {self.namespace}/{self.name}>"

    @staticmethod
    def _checkProto(proto: Sequence[str]) -> tuple[str, ...]:
        if isinstance(proto, str) or not proto:
            raise ValueError(f"proto={proto!r}: must be a list of transports, e.g. unix,tcp")
        known = knownTransports()
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
        return _Connect(self, protocolFactory, None).start()

    def connectToRecord(
        self, record: PeerRecord, protocolFactory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """
        Connect to this one instance, already known (from a watch, say),
        without a lookup; as L{connect} otherwise: its endpoints in turn,
        this endpoint's C{proto}, wrappers and timeout.
        """
        return _Connect(self, protocolFactory, [record]).start()

    def openRegistry(self) -> IRegistry:
        """
        The registry, opened from its URL on first use and again only once
        closed (opening looks the URL up in a per-process table).
        """
        opened = self._opened
        if opened is None or opened.closed:
            opened = self._opened = openRegistry(self._reactor, self.registry)
        return opened

    def resolverFor(self, registry: IRegistry) -> Resolver:
        """
        The process's resolver for C{registry} (shared by every endpoint
        using it), remembered for the registry this endpoint opened.
        """
        resolver = self._resolver
        if resolver is None or resolver.registry is not registry:
            resolver = self._resolver = resolverFor(registry, self._reactor)
        return resolver

    def endpointFor(self, candidate: Candidate, registry: IRegistry) -> IStreamClientEndpoint:
        """
        The endpoint that reaches C{candidate}: its description's endpoint
        (built once and reused: parsing one costs about as much as a
        loopback connect), reporting if asked, under this client's wrappers.
        """
        record, description = candidate.record, candidate.description
        assert description is not None
        key = (description, record.name)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= ENDPOINT_CACHE:
                self._endpoints.clear()
            endpoint = self._describedEndpoint(description, record)
            self._endpoints[key] = endpoint
        if self.report:
            endpoint = ReportingEndpoint(endpoint, registry, record)
        return wrapEndpoint(endpoint, self.wrappers)

    def _describedEndpoint(self, description: str, record: PeerRecord) -> IStreamClientEndpoint:
        """
        A C{tls:} description is verified against the record's own name
        (with C{tls}, else the system trust roots); any other is what
        C{clientFromString} makes of it.
        """
        if transportOf(description) == "tls":
            tls = PeerTLS.system() if self.tls is None else self.tls
            return tls.clientEndpoint(self._reactor, description, record)
        endpoint: IStreamClientEndpoint = clientFromString(self._reactor, description)
        return endpoint


class _Connect:
    """
    One C{connect()}: resolve, order, attempt, wrap; its timeout, its
    cancellation, and what it tried, for its error message.

    A plain class with slots: a warm connect builds one, and its cost is
    part of every connect's.
    """

    __slots__ = (
        "cancelled",
        "client",
        "doing",
        "expired",
        "factory",
        "failed",
        "fromCache",
        "given",
        "pending",
        "registry",
        "result",
        "skipped",
        "step",
        "timer",
        "tried",
        "turn",
    )

    def __init__(
        self,
        client: MasseClientEndpoint,
        factory: IProtocolFactory,
        given: Sequence[PeerRecord] | None,
    ):
        self.client = client
        self.factory = factory
        self.given = given
        self.result: Deferred[IProtocol] = Deferred(self._cancel)
        metrics.connectStarted(self.result, client.namespace, client.name)
        self.registry: IRegistry | None = None
        self.pending: list[Candidate] = []
        self.failed: set[str] = set()
        self.tried: list[str] = []
        self.skipped: list[str] = []  # critical or draining instances, and why
        self.doing = "waiting for the registry"
        self.fromCache = False
        self.turn = client.selection.takeTurn() if client.pick == "roundrobin" else 0
        self.step: Deferred[Any] | None = None  # the lookup or attempt in progress
        self.timer: IDelayedCall | None = None
        self.cancelled = False
        self.expired = False

    def __repr__(self) -> str:
        return f"<_Connect to {self.target}: {self.doing}>"

    @property
    def target(self) -> str:
        """
        What this connect is for, as messages say it (built only for them).
        """
        client = self.client
        url = client._display if self.registry is None else self.registry.url
        return f"{client.name!r} in namespace {client.namespace!r} (registry {url})"

    # Resolve

    def start(self) -> Deferred[IProtocol]:
        client = self.client
        if client.timeout is not None:
            # One delayed call rather than Deferred.addTimeout: a third of
            # what a warm connect costs beyond the TCP connect itself.
            self.timer = client._reactor.callLater(client.timeout, self._expire)
        try:
            self.registry = client.openRegistry()
        except Exception:
            self._finish(Failure())
            return self.result
        if self.given is not None:
            self._walk(self.given)
            return self.result
        if client.cache:
            records = self._resolver().cached(client.namespace, client.name)
            if records:
                self.fromCache = True
                self._walk(records)
                return self.result
        self._resolve()
        return self.result

    def _resolver(self) -> Resolver:
        assert self.registry is not None
        return self.client.resolverFor(self.registry)

    def _resolve(self) -> None:
        client = self.client
        self.doing = "waiting for the registry"
        resolver = self._resolver()
        if client.cache:
            answer: Deferred[Any] = resolver.resolve(client.namespace, client.name)
            answer.addCallback(lambda resolution: resolution.records)
        else:
            answer = resolver.ask(client.namespace, client.name)
        self._wait(answer, self._resolved, self._finish)

    def _resolved(self, records: Sequence[PeerRecord]) -> None:
        if not records:
            client = self.client
            what = "matches" if isPattern(client.name) else "is registered as"
            self._finish(
                Failure(
                    PeerNotFound(
                        f"no peer {what} {client.name!r} in namespace {client.namespace!r} "
                        f"(registry {self.registry.url if self.registry else client._display})"
                    )
                )
            )
            return
        self._walk(records)

    def _resolveAgain(self) -> None:
        """
        A cached instance failed: drop the name's cache entry and go on
        with the registry's fresh answer (or, if the registry fails too,
        with the cached candidates left).
        """
        self.fromCache = False
        client = self.client
        resolver = self._resolver()
        resolver.forget(client.namespace, client.name)
        self.doing = "waiting for the registry"

        def failed(failure: Failure) -> None:
            log.info(
                "{target}: could not resolve again ({error}); trying the cached instances left",
                target=self.target,
                error=str(failure.value),
            )
            self._next()

        resolving = resolver.resolve(client.namespace, client.name)
        self._wait(resolving, lambda resolution: self._walk(resolution.records), failed)

    # Order, attempt

    def _walk(self, records: Sequence[PeerRecord]) -> None:
        selection = self.client.selection
        if selection.meta:
            matching = selection.matching(records)
            if not matching:
                self._finish(Failure(self._noneMatching(records)))
                return
            records = matching
        self.pending = selection.candidates(records, self.turn, localHostIdentity())
        self._next()

    def _noneMatching(self, records: Sequence[PeerRecord]) -> PeerNotFound:
        conditions = self.client.selection.unmatched(records)
        return PeerNotFound(
            f"{conditions} matched none of the {len(records)} instance(s) of {self.target}"
        )

    def _next(self) -> None:
        while self.pending:
            candidate = self.pending.pop(0)
            if candidate.excluded is not None:
                skipped = f"instance {candidate.record.instance[:8]} ({candidate.excluded})"
                if skipped not in self.skipped:
                    self.skipped.append(skipped)
            elif candidate.description is None:
                self.tried.append(self._unusable(candidate.record))
            elif candidate.description not in self.failed:
                self._attempt(candidate)
                return
        self._finish(Failure(NoReachablePeer(f"could not reach {self.target}: {self._told()}")))

    def _attempt(self, candidate: Candidate) -> None:
        assert self.registry is not None and candidate.description is not None
        self.doing = f"connecting to {candidate.description}"
        try:
            endpoint = self.client.endpointFor(candidate, self.registry)
            attempt = endpoint.connect(self.factory)
        except Exception as e:
            self._attemptFailed(candidate, Failure(e))
            return
        self._wait(attempt, self._finish, lambda failure: self._attemptFailed(candidate, failure))

    def _attemptFailed(self, candidate: Candidate, failure: Failure) -> None:
        if self.cancelled:
            self._finish(failure)
            return
        assert candidate.description is not None
        why = str(failure.value) or type(failure.value).__name__
        self.tried.append(f"{candidate.description}: {why}")
        log.info(
            "{target}: {description} failed ({why}); trying the next",
            target=self.target,
            description=candidate.description,
            why=why,
        )
        self.failed.add(candidate.description)
        if self.fromCache:
            self._resolveAgain()  # stale: ask the registry, once
        else:
            self._next()

    def _unusable(self, record: PeerRecord) -> str:
        why = "no endpoint this client accepts"
        if self.client.tls is not None:
            expected = certificateName(record.name, record.namespace)
            why = f"refused: not TLS, and this client requires TLS to {expected!r}"
        return f"instance {record.instance[:8]}: {why} among {list(record.endpoints)}"

    def _told(self) -> str:
        told = [f"tried {'; '.join(self.tried)}"] if self.tried else []
        if self.skipped:
            told.append(f"left out {', '.join(self.skipped)}")
        return "; ".join(told)

    # The outcome

    def _wait(self, step: Deferred[Any], succeeded: Any, failed: Any) -> None:
        self.step = step
        step.addCallbacks(succeeded, failed)
        step.addErrback(self._finish)  # a bug in a callback fails the connect

    def _cancel(self, _: object) -> None:
        self.cancelled = True
        if self.step is not None:
            self.step.cancel()

    def _expire(self) -> None:
        self.timer = None
        self.expired = True
        self._cancel(None)
        if not self.result.called:  # the step ignored its cancellation
            self._finish(Failure(CancelledError()))

    def _finish(self, outcome: IProtocol | Failure) -> None:
        if self.timer is not None and self.timer.active():
            self.timer.cancel()
        self.timer = None
        if self.result.called:
            if not isinstance(outcome, Failure):
                _abort(outcome)  # connected just as the caller gave up
            return
        if isinstance(outcome, Failure):
            if self.expired:
                outcome = Failure(self._timedOut())
            elif self.cancelled:
                outcome = Failure(CancelledError())
            self.result.errback(outcome)
        else:
            self.result.callback(outcome)

    def _timedOut(self) -> NoReachablePeer:
        done = f"{self._told()}; " if self.tried or self.skipped else ""
        return NoReachablePeer(
            f"no connection to {self.target} within {self.client.timeout:g}s: "
            f"{done}gave up {self.doing}"
        )


def _abort(protocol: IProtocol) -> None:
    transport: Any = getattr(protocol, "transport", None)
    if transport is not None:
        transport.abortConnection()
