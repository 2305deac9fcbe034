"""
The client endpoint: connect to a peer by name.

A connect reads top to bottom: resolve the name (from the cache when a
synced watch holds it, else from the registry), order the candidates
(L{txmasse.resolver.Selection}), attempt each in turn, and hand back the
application's protocol with the wrappers stacked around it. Warm, cold,
pattern and given-record connects all walk the same list with the same
loop, L{_Connect}. Two shortcuts go in front of it and hand anything but
their one success to it, as if it had made their steps: a warm connect
that would order its candidates as the last one did repeats that one's
first attempt (L{_Repeat}, L{_repeatFirst}), and a cold one whose registry
answers with the same one instance as last time goes straight to the same
attempt (L{_Walked}, L{_walkFirst}).
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from time import perf_counter
from typing import Any, NamedTuple

from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import TCP4ClientEndpoint, UNIXClientEndpoint, clientFromString
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import (
    IDelayedCall,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
)
from twisted.internet.protocol import Protocol
from twisted.logger import Logger
from twisted.plugin import getPlugins
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse import metrics
from txmasse.checks import checkNumber, isDigits, shown
from txmasse.descriptions import parseDescription, transportOf
from txmasse.errors import NoReachablePeer, PeerNotFound
from txmasse.peertls import PeerTLS, certificateName
from txmasse.records import Glob, PeerRecord, isPattern, localHostIdentity, validateName
from txmasse.registry import IRegistry, defaultNamespace
from txmasse.registry.opening import checkRegistry, openRegistry, registryDisplay
from txmasse.resolver import (
    CacheEntry,
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

DEADLINE_SLACK = 0.001
"""Seconds a connect may overrun its deadline by not timing a step this
short (an attempt begun within this of the start keeps the deadline by its
own connect timeout)."""


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
        self._pattern = isinstance(name, str) and isPattern(name)
        if self._pattern:
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
        self._own: set[int] = set()  # ids of the endpoints kept in _endpoints that are our own
        self._opened: IRegistry | None = None
        self._resolver: Resolver | None = None
        self._repeat: _Repeat | None = None
        self._lastWalk: _Walked | None = None
        # The registry opened, if it gives up on a lookup before this endpoint's timeout.
        self._answersInTime: IRegistry | None = None

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
        repeat = self._repeat
        if repeat is not None:
            if repeat.watch.current is repeat.records and not repeat.registry.closed:
                repeat.entry.used = True  # the cache's answer is unchanged
                return _repeatFirst(self, protocolFactory, repeat)
            if repeat.resolver.cached(self.namespace, self.name) is repeat.records:
                return _repeatFirst(self, protocolFactory, repeat)
            self._repeat = None
        walked, registry = self._lastWalk, self._answersInTime
        if walked is not None and registry is not None and not registry.closed:
            return _walkFirst(self, protocolFactory, registry, walked)
        return _Connect(self, protocolFactory).start(None)

    def connectToRecord(
        self, record: PeerRecord, protocolFactory: IProtocolFactory
    ) -> Deferred[IProtocol]:
        """
        Connect to this one instance, already known (from a watch, say),
        without a lookup; as L{connect} otherwise: its endpoints in turn,
        this endpoint's C{proto}, wrappers and timeout.
        """
        return _Connect(self, protocolFactory).start([record])

    def openRegistry(self) -> IRegistry:
        """
        The registry, opened from its URL on first use and again only once
        closed (opening looks the URL up in a per-process table).
        """
        opened = self._opened
        if opened is None or opened.closed:
            opened = self._opened = openRegistry(self._reactor, self.registry)
            limit = getattr(opened, "callTimeout", None)
            self._answersInTime = (
                opened
                if limit is not None
                and self.timeout is not None
                and limit < self.timeout
                and not self._pattern  # a find may take several calls, each with that deadline
                else None
            )
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
        The endpoint that reaches C{candidate}: its description's endpoint,
        reporting if asked, under this client's wrappers (built once and
        reused: parsing a description costs about as much as a loopback
        connect).
        """
        record, description = candidate.record, candidate.description
        assert description is not None
        if self.report:
            inner, _ = self._describedEndpoint(description, record)
            reporting = ReportingEndpoint(inner, registry, record, self._reactor)
            return wrapEndpoint(reporting, self.wrappers)
        key = (description, record.name)
        endpoint = self._endpoints.get(key)
        if endpoint is None:
            if len(self._endpoints) >= ENDPOINT_CACHE:
                self._endpoints.clear()
                self._own.clear()
            inner, own = self._describedEndpoint(description, record)
            endpoint = self._endpoints[key] = wrapEndpoint(inner, self.wrappers)
            if own:
                self._own.add(id(endpoint))
        return endpoint

    def ownEndpoint(self, endpoint: IStreamClientEndpoint) -> bool:
        """
        Whether C{endpoint} is one this client built on Twisted's TCP or
        UNIX endpoint with its own C{timeout} as the connect timeout: such
        an endpoint keeps a connect's deadline itself, and its
        cancellation is Twisted's.
        """
        return id(endpoint) in self._own  # each one alive in _endpoints, so ids are unique

    def _describedEndpoint(
        self, description: str, record: PeerRecord
    ) -> tuple[IStreamClientEndpoint, bool]:
        """
        The endpoint for C{description}, and whether it is one of this
        client's own (L{ownEndpoint}): a plain C{tcp:} or C{unix:} one,
        built with this client's C{timeout} as its connect timeout. A
        C{tls:} one is verified against the record's own name (with C{tls},
        else the system trust roots); any other is what C{clientFromString}
        makes of it.
        """
        transport = transportOf(description)
        if transport == "tls":
            tls = PeerTLS.system() if self.tls is None else self.tls
            return tls.clientEndpoint(self._reactor, description, record), False
        if transport in ("tcp", "unix"):
            timed = timedEndpoint(self._reactor, description, self.timeout)
            if timed is not None:
                return timed, True
        endpoint: IStreamClientEndpoint = clientFromString(self._reactor, description)
        return endpoint, False


class _Connect:
    """
    One C{connect()}: resolve, order, attempt, wrap; its deadline, its
    cancellation, and what it tried, for its error message.

    Each step is a Deferred, and the next one chains onto it, so the
    caller's Deferred is the first step's: cancelling it cancels whichever
    step is in progress, and the connect's outcome is whatever the last
    step gave. Two things are kept only where they are needed, because a
    warm connect would pay for them otherwise (each 2 to 3% of it):

      - the deadline's timer: none while the steps so far are a lookup
        (of a name, not a pattern: one call) that the registry gives up on
        sooner (its C{callTimeout}) and an
        attempt through one of L{MasseClientEndpoint.ownEndpoint}'s
        endpoints begun within L{DEADLINE_SLACK} of the start, whose
        connect timeout is then the deadline itself;
      - a Deferred of this connect's own around an attempt, which knows
        when the caller cancels and disconnects a protocol delivered after
        all: only for endpoints other than those, whose cancellation may
        be anything; Twisted's TCP and UNIX endpoints fail with
        C{ConnectingCancelledError} and deliver nothing late.

    Each outcome goes through L{_ended} once: the attempt that connects
    ends the connect in its own callback, and each failure that ends it
    is ended where it is decided. (The shortcuts, L{_repeatFirst} and
    L{_walkFirst}, build one of these only for what is not their one
    success, L{goingOn} from their steps; that success is counted where it
    connects.)

    What a connect has not needed yet is left to the class's defaults: a
    first warm connect builds one of these, and its cost is part of the
    connect's.
    """

    registry: IRegistry | None = None
    outer: Deferred[Any] | None = None  # the caller's
    pending: Sequence[Candidate] = ()
    next = 0  # the index in pending of the next candidate
    failed: set[str] | None = None  # descriptions that failed
    tried: list[str] | None = None
    skipped: list[str] | None = None  # critical or draining instances, and why
    doing: str | Candidate | None = None  # the step in progress, None before the first
    fromCache = False
    turn = 0
    timer: IDelayedCall | None = None
    cancelled = False
    expired = False
    steady: Sequence[PeerRecord] | None = None  # the cached records, in a steady order
    alone: PeerRecord | None = None  # a registry's answer of one instance

    def __init__(
        self,
        client: MasseClientEndpoint,
        factory: IProtocolFactory,
        started: float | None = None,
        startedOnClock: float | None = None,
    ):
        """
        @param started: when the connect started (C{perf_counter}, for the
            metrics), if before now.
        @param startedOnClock: the same on the reactor's clock, for the
            deadline.
        """
        self.client = client
        self.factory = factory
        self.started = perf_counter() if started is None else started
        timeout = client.timeout
        if timeout is None:
            self.deadline = None
        else:
            clock = client._reactor.seconds() if startedOnClock is None else startedOnClock
            self.deadline = clock + timeout

    @classmethod
    def goingOn(
        cls,
        client: MasseClientEndpoint,
        factory: IProtocolFactory,
        registry: IRegistry,
        outer: Deferred[Any],
        started: float,
        startedOnClock: float,
    ) -> _Connect:
        """
        The connect that a shortcut (L{_repeatFirst}, L{_walkFirst}) began
        at C{started} through C{registry}, the caller holding C{outer}: it
        goes on from where the shortcut left off, as if it had made the
        steps so far.
        """
        connect = cls(client, factory, started, startedOnClock)
        connect.registry, connect.outer = registry, outer
        return connect

    def takeOver(
        self, candidates: Sequence[Candidate], failure: Failure, own: bool, fromCache: bool
    ) -> object:
        """
        Go on from a shortcut's attempt at the first of C{candidates} (from
        the cache if C{fromCache}) that failed with C{failure}, as if this
        connect had made it: C{own} if the endpoint failed it, not if its
        C{connect} raised.
        """
        self.fromCache = fromCache
        self.pending = candidates
        self.next = 1
        candidate = self.doing = candidates[0]
        return self._attemptFailed(failure, candidate, own)

    def __repr__(self) -> str:
        return f"<_Connect to {self.target}: {self._doing()}>"

    @property
    def target(self) -> str:
        """
        What this connect is for, as messages say it (built only for them).
        """
        client = self.client
        url = client._display if self.registry is None else self.registry.url
        return f"{client.name!r} in namespace {client.namespace!r} (registry {url})"

    # Resolve

    def start(self, given: Sequence[PeerRecord] | None) -> Deferred[IProtocol]:
        client = self.client
        try:
            registry = self.registry = client.openRegistry()
        except Exception:
            outer: Deferred[Any] = self._fail(Failure())
        else:
            if given is None and client.selection.pick == "roundrobin":
                self.turn = client.selection.takeTurn()  # a connect to a given record takes none
            if given is not None:
                outer = self._walk(given)
            elif client.cache and (
                records := client.resolverFor(registry).cached(client.namespace, client.name)
            ):
                self.fromCache = True
                client._lastWalk = None  # warm now: no cold walk to shortcut
                outer = self._walk(records)
            else:
                outer = self._resolve()
        self.outer = outer
        return outer

    def _resolver(self) -> Resolver:
        assert self.registry is not None
        return self.client.resolverFor(self.registry)

    def _resolve(self) -> Deferred[Any]:
        client = self.client
        if client._answersInTime is self.registry:
            self.doing = _WAITING  # the registry gives up on its one call first
        else:
            self._arm(_WAITING)
        resolver = self._resolver()
        try:
            if client.cache:  # not cached (start() asked): fetched, and cached from now on
                answer: Deferred[Any] = resolver.fetch(client.namespace, client.name)
            else:
                answer = resolver.ask(client.namespace, client.name)
        except Exception:  # a registry's bug: the connect fails with it
            answer = fail()
        return answer.addCallbacks(self._resolved, self._ended)

    def _resolved(self, records: Sequence[PeerRecord]) -> Deferred[Any]:
        if not records:
            client = self.client
            what = "matches" if client._pattern else "is registered as"
            return self._fail(
                PeerNotFound(
                    f"no peer {what} {client.name!r} in namespace {client.namespace!r} "
                    f"(registry {self.registry.url if self.registry else client._display})"
                )
            )
        return self._walk(records)

    def _resolveAgain(self) -> Deferred[Any]:
        """
        A cached instance failed: drop the name's cache entry and go on
        with the registry's fresh answer (or, if the registry fails too,
        with the cached candidates left).
        """
        self.fromCache = False
        client = self.client
        resolver = self._resolver()
        resolver.forget(client.namespace, client.name)
        self._arm(_WAITING)

        def failed(failure: Failure) -> object:
            if self.cancelled or self.expired or failure.check(CancelledError):
                return self._ended(failure)
            log.info(
                "{target}: could not resolve again ({error}); trying the cached instances left",
                target=self.target,
                error=str(failure.value),
            )
            return self._next()

        resolving = resolver.resolve(client.namespace, client.name)
        return resolving.addCallbacks(lambda resolution: self._walk(resolution.records), failed)

    # Order, attempt

    def _walk(self, records: Sequence[PeerRecord]) -> Deferred[Any]:
        client = self.client
        selection = client.selection
        original = records
        if len(records) == 1 and not self.fromCache and self.failed is None:
            last = client._lastWalk
            # Registries hand back the same record object for the same stored bytes.
            if last is not None and records[0] is last.record:
                self.pending, self.next = last.candidates, 1
                return self._attempt(last.candidates[0], last.endpoint)
            self.alone = records[0]
        if selection.meta and records:  # none left after a failed attempt: say what was tried
            matching = selection.matching(records)
            if not matching:
                return self._fail(self._noneMatching(records))
            records = matching
        here = localHostIdentity()
        self.pending = selection.candidates(records, self.turn, here)
        self.next = 0
        if (
            self.fromCache
            and type(original) is tuple  # the cache's own, not a list changed in place
            and selection.pick != "roundrobin"
            and selection.isSteady(records)
        ):
            self.steady = original  # the next connect may repeat this one's first attempt
        return self._next()

    def _noneMatching(self, records: Sequence[PeerRecord]) -> PeerNotFound:
        conditions = self.client.selection.unmatched(records)
        return PeerNotFound(
            f"{conditions} matched none of the {len(records)} instance(s) of {self.target}"
        )

    def _next(self) -> Deferred[Any]:
        pending, failed = self.pending, self.failed
        while self.next < len(pending):
            candidate = pending[self.next]
            self.next += 1
            if candidate.excluded is not None:
                skipped = f"instance {candidate.record.instance[:8]} ({candidate.excluded})"
                if self.skipped is None:
                    self.skipped = []
                if skipped not in self.skipped:
                    self.skipped.append(skipped)
            elif candidate.description is None:
                self._tell(self._unusable(candidate.record))
            elif failed is None or candidate.description not in failed:
                return self._attempt(candidate)
        return self._fail(NoReachablePeer(f"could not reach {self.target}: {self._told()}"))

    def _attempt(
        self, candidate: Candidate, known: IStreamClientEndpoint | None = None
    ) -> Deferred[Any]:
        """
        Try C{candidate}: through its endpoint, or C{known}, one of
        L{MasseClientEndpoint.ownEndpoint}'s that the last walk used for it.
        """
        assert self.registry is not None
        client = self.client
        first = self.doing is None
        self.doing = candidate
        own = False
        try:
            if known is None:
                endpoint = client.endpointFor(candidate, self.registry)
                own = client.ownEndpoint(endpoint)
            else:
                endpoint, own = known, True
            if own:
                if self.next == 1 and known is None:
                    self._remember(first, endpoint)
                attempt = endpoint.connect(self.factory)
            else:
                answering = _UntilAnswered(self.factory)
                attempt = endpoint.connect(answering).addBoth(answering.answered)
        except Exception:
            own, attempt = False, fail()
        if not (own and self.timer is None and self._onTime()):
            self._arm(candidate)
        if not own:
            attempt = self._guarded(attempt)
        return attempt.addCallbacks(self._ended, self._attemptFailed, errbackArgs=(candidate, own))

    def _remember(self, first: bool, endpoint: IStreamClientEndpoint) -> None:
        """
        Keep this connect's first attempt for the next connects to go
        straight to: a warm one while the cache holds the same records
        (L{_Repeat}), a cold one while the registry answers with the same
        one instance (L{_Walked}).
        """
        client = self.client
        if first and self.steady is not None:
            resolver, steady = self._resolver(), self.steady
            client._repeat = _Repeat.of(resolver, client, steady, self.pending, endpoint)
        elif self.alone is not None:
            connected = metrics.connectedCell(client.namespace, client.name)
            client._lastWalk = _Walked(self.alone, self.pending, endpoint, connected)

    def _attemptFailed(self, failure: Failure, candidate: Candidate, own: bool) -> object:
        if own:
            if failure.check(ConnectingCancelledError):
                self.cancelled = True  # by the caller, or by the timer (then expired too)
            elif failure.check(ConnectTimeout) and self.timer is None and self.deadline is not None:
                self.expired = True  # the endpoint's timeout was the deadline
        if self.cancelled or self.expired:
            return self._ended(failure)
        description = candidate.description
        assert description is not None
        why = str(failure.value) or type(failure.value).__name__
        self._tell(f"{description}: {why}")
        log.info(
            "{target}: {description} failed ({why}); trying the next",
            target=self.target,
            description=description,
            why=why,
        )
        if self.failed is None:
            self.failed = set()
        self.failed.add(description)
        if self.fromCache:
            return self._resolveAgain()  # stale: ask the registry, once
        return self._next()

    def _tell(self, tried: str) -> None:
        if self.tried is None:
            self.tried = []
        self.tried.append(tried)

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

    def _doing(self) -> str:
        doing = self.doing
        if doing is None or isinstance(doing, str):
            return doing or _WAITING
        return f"connecting to {doing.description}"

    # The deadline, foreign endpoints, and the outcome

    def _onTime(self) -> bool:
        """
        Whether an attempt's own connect timeout, the client's C{timeout},
        still ends by the deadline (give or take L{DEADLINE_SLACK}).
        """
        deadline, client = self.deadline, self.client
        if deadline is None or client.timeout is None:
            return True
        now: float = client._reactor.seconds()
        return now + client.timeout <= deadline + DEADLINE_SLACK

    def _arm(self, doing: str | Candidate) -> None:
        """
        Start the deadline's timer, if there is a deadline and it is not
        running yet: from now on, C{doing}.
        """
        self.doing = doing
        if self.timer is None and self.deadline is not None and not self.expired:
            reactor = self.client._reactor
            left = max(self.deadline - reactor.seconds(), 0.0)
            self.timer = reactor.callLater(left, self._expire)

    def _guarded(self, attempt: Deferred[Any]) -> Deferred[Any]:
        """
        C{attempt} behind a Deferred of this connect's own: cancelling that
        marks the connect cancelled, then cancels C{attempt}; a protocol that
        C{attempt} delivers after all (its cancellation ignored) is
        disconnected.
        """

        def cancel(_: object) -> None:
            self.cancelled = True
            try:
                attempt.cancel()
            except Exception:  # the endpoint's bug: the caller still gets its CancelledError
                log.failure(
                    "{target}: cancelling {doing} failed", target=self.target, doing=self._doing()
                )

        mine: Deferred[Any] = Deferred(cancel)

        def relay(result: object) -> None:
            if mine.called:
                if not isinstance(result, Failure):
                    _abort(result)  # type: ignore[arg-type]  # connected as the caller gave up
                return
            if isinstance(result, Failure):
                mine.errback(result)
            else:
                mine.callback(result)

        attempt.addBoth(relay)
        return mine

    def _expire(self) -> None:
        self.timer = None
        self.expired = True
        assert self.outer is not None
        self.outer.cancel()

    def _fail(self, error: Exception | Failure) -> Deferred[Any]:
        """
        End the connect with C{error}.
        """
        ended = self._ended(error if isinstance(error, Failure) else Failure(error))
        assert isinstance(ended, Failure)
        return fail(ended)

    def _ended(self, outcome: object) -> object:
        """
        The connect's outcome, as its caller gets it: a failure after the
        deadline or a cancellation says so; counted in the metrics.
        """
        timer = self.timer
        if timer is not None:
            if timer.active():
                timer.cancel()
            self.timer = None
        if isinstance(outcome, Failure):
            if self.expired:
                outcome = Failure(self._timedOut())
            elif self.cancelled or outcome.check(ConnectingCancelledError):
                outcome = Failure(CancelledError())
        client = self.client
        metrics.connectEnded(client.namespace, client.name, outcome, perf_counter() - self.started)
        return outcome

    def _timedOut(self) -> NoReachablePeer:
        done = f"{self._told()}; " if self.tried or self.skipped else ""
        return NoReachablePeer(
            f"no connection to {self.target} within {self.client.timeout:g}s: "
            f"{done}gave up {self._doing()}"
        )


_WAITING = "waiting for the registry"


class _Repeat(NamedTuple):
    """
    A warm connect's first attempt, which the next connect repeats while
    the cache holds the same C{records}: candidates in a steady order
    (L{Selection.isSteady}) come out the same (this host's identity is read
    once per process), so it goes straight to the first one's C{endpoint}.

    That the cache holds them still is one comparison while the C{entry}'s
    C{watch} keeps C{current} itself (L{txmasse.registry.ISubscription};
    not one it reaches through C{__getattr__}) and the C{registry} is open;
    the repeat then marks the entry used, for the cache's eviction, instead
    of asking the resolver. Otherwise it asks L{Resolver.cached}.
    """

    resolver: Resolver
    registry: IRegistry  # the resolver's, kept for the check
    records: Sequence[PeerRecord]
    watch: Any  # has current: the entry's subscription, or _NOT_KEPT
    entry: CacheEntry
    candidates: Sequence[Candidate]
    endpoint: IStreamClientEndpoint
    connected: list[int]  # the name's metrics.connectedCell, where its successes are counted

    @classmethod
    def of(
        cls,
        resolver: Resolver,
        client: MasseClientEndpoint,
        records: Sequence[PeerRecord],
        candidates: Sequence[Candidate],
        endpoint: IStreamClientEndpoint,
    ) -> _Repeat | None:
        """
        The repeat of C{client}'s attempt at C{candidates}' first over
        C{endpoint}, the cache having answered C{records}; C{None} if the
        cache holds no entry for the name any more.
        """
        entry = resolver.entry(client.namespace, client.name)
        if entry is None:
            return None
        watch: Any = entry.subscription
        if getattr(watch, "__dict__", {}).get("current") is not records:
            watch = _NOT_KEPT  # keeps none of its own (or another answer)
        connected = metrics.connectedCell(client.namespace, client.name)
        return cls(
            resolver, resolver.registry, records, watch, entry, candidates, endpoint, connected
        )


class _NotKept:
    """
    A subscription's stand-in that keeps no C{current}.
    """

    current = None


_NOT_KEPT = _NotKept()


class _Walked(NamedTuple):
    """
    A cold connect's walk of a name's only instance: while the registry
    answers with the very same C{record}, the next walk orders the same
    C{candidates} and tries the first over the same C{endpoint}, so it goes
    straight there, and counts its success in C{connected} (the name's
    L{metrics.connectedCell}).
    """

    record: PeerRecord
    candidates: Sequence[Candidate]
    endpoint: IStreamClientEndpoint
    connected: list[int]


def _repeatFirst(
    client: MasseClientEndpoint, factory: IProtocolFactory, repeat: _Repeat
) -> Deferred[IProtocol]:
    """
    A connect that starts with L{_Repeat}'s attempt, and builds its
    L{_Connect} only if that attempt fails: the rest of the connect (the
    next candidates, the cache asked again, the deadline, the error) is
    that one loop's. The endpoint was built as one of
    L{MasseClientEndpoint.ownEndpoint}'s, whose connect timeout is the
    deadline and whose cancellation is Twisted's, so the attempt needs
    nothing of its own around it.
    """
    started = perf_counter()
    startedOnClock = client._reactor.seconds()
    try:
        attempt = repeat.endpoint.connect(factory)
    except Exception:  # a wrapper's bug: a failed attempt, as in _Connect._attempt
        attempt = fail()
        own = False
    else:
        own = True
    return attempt.addCallbacks(
        metrics.connectedSince,
        _repeatFailed,
        callbackArgs=(started, repeat.connected),
        errbackArgs=(client, factory, repeat, started, startedOnClock, attempt, own),
    )


def _repeatFailed(
    failure: Failure,
    client: MasseClientEndpoint,
    factory: IProtocolFactory,
    repeat: _Repeat,
    started: float,
    startedOnClock: float,
    attempt: Deferred[Any],
    own: bool,
) -> Any:
    connect = _Connect.goingOn(client, factory, repeat.registry, attempt, started, startedOnClock)
    return connect.takeOver(repeat.candidates, failure, own, fromCache=True)


def _walkFirst(
    client: MasseClientEndpoint, factory: IProtocolFactory, registry: IRegistry, walked: _Walked
) -> Deferred[IProtocol]:
    """
    A connect that asks the registry, whose last walk went to the name's
    only instance (L{_Walked}), while the registry gives up on a lookup
    before the connect would (so nothing needs timing meanwhile): the
    lookup (through the cache's L{Resolver.fetch}, if the cache does not
    hold the name), then, if the registry answers with the very same
    instance within L{DEADLINE_SLACK}, that walk's first attempt, over an
    endpoint of L{MasseClientEndpoint.ownEndpoint}'s. Any other answer, a
    failure, or a failed attempt goes on in a L{_Connect}, as if it had
    made these steps.
    """
    started = perf_counter()
    startedOnClock = client._reactor.seconds()
    namespace, name = client.namespace, client.name
    resolver = client.resolverFor(registry) if client.cache else None
    if resolver is not None and resolver.cached(namespace, name) is not None:
        return _Connect(client, factory, started, startedOnClock).start(None)  # the usual way
    selection = client.selection
    turn = selection.takeTurn() if selection.pick == "roundrobin" else 0
    try:
        if resolver is None:
            answer = registry.lookup(namespace, name)
        else:
            answer = resolver.fetch(namespace, name)
    except Exception:  # a registry's bug, as in _Connect._resolve
        answer = fail()
    return answer.addCallbacks(
        _walkedAnswer,
        _walkedUnanswered,
        callbackArgs=(client, factory, registry, walked, started, startedOnClock, turn, answer),
        errbackArgs=(client, factory, registry, started, startedOnClock, answer),
    )


# The callbacks of _walkFirst take its state as arguments: a tuple built
# with no call of Python's, where an object holding it (and its bound
# methods) cost a cold connect 3 to 4 us in place.


def _walkedAnswer(
    records: Sequence[PeerRecord],
    client: MasseClientEndpoint,
    factory: IProtocolFactory,
    registry: IRegistry,
    walked: _Walked,
    started: float,
    startedOnClock: float,
    turn: int,
    outer: Deferred[Any],
) -> Any:
    if (
        len(records) == 1
        and records[0] is walked.record
        and client._reactor.seconds() - startedOnClock <= DEADLINE_SLACK
    ):
        try:
            attempt = walked.endpoint.connect(factory)
        except Exception:  # a wrapper's bug: a failed attempt, as in _Connect._attempt
            attempt, own = fail(), False
        else:
            own = True
        return attempt.addCallbacks(
            metrics.connectedSince,
            _walkedAttemptFailed,
            callbackArgs=(started, walked.connected),
            errbackArgs=(client, factory, registry, walked, started, startedOnClock, outer, own),
        )
    connect = _Connect.goingOn(client, factory, registry, outer, started, startedOnClock)
    connect.turn = turn
    return connect._resolved(records)


def _walkedUnanswered(
    failure: Failure,
    client: MasseClientEndpoint,
    factory: IProtocolFactory,
    registry: IRegistry,
    started: float,
    startedOnClock: float,
    outer: Deferred[Any],
) -> object:
    connect = _Connect.goingOn(client, factory, registry, outer, started, startedOnClock)
    connect.doing = _WAITING
    return connect._ended(failure)


def _walkedAttemptFailed(
    failure: Failure,
    client: MasseClientEndpoint,
    factory: IProtocolFactory,
    registry: IRegistry,
    walked: _Walked,
    started: float,
    startedOnClock: float,
    outer: Deferred[Any],
    own: bool,
) -> object:
    connect = _Connect.goingOn(client, factory, registry, outer, started, startedOnClock)
    return connect.takeOver(walked.candidates, failure, own, fromCache=False)


def timedEndpoint(
    reactor: Any, description: str, timeout: float | None
) -> IStreamClientEndpoint | None:
    """
    Twisted's endpoint for a plain C{tcp:} or C{unix:} client description,
    with C{timeout} (Twisted's default 30 s for C{None}) as its connect
    timeout, which C{clientFromString} would only take in whole seconds;
    C{None} for any other description (one that names its own C{timeout},
    say), left to C{clientFromString}.
    """
    try:
        transport, args, options = parseDescription(description)
    except ValueError:
        return None
    seconds = 30.0 if timeout is None else timeout
    if transport == "tcp" and len(args) <= 2 and set(options) <= {"host", "port", "bindAddress"}:
        for key, value in zip(("host", "port"), args, strict=False):
            if key in options:
                return None
            options[key] = value
        host, port = options.get("host"), options.get("port", "")
        if not host or not isDigits(port):
            return None
        bind = options.get("bindAddress")
        return TCP4ClientEndpoint(
            reactor, host, int(port), seconds, None if bind is None else (bind, 0)
        )
    if transport == "unix" and len(args) <= 1 and set(options) <= {"path"}:
        path = args[0] if args else options.get("path")
        if not path or (args and "path" in options):
            return None
        return UNIXClientEndpoint(reactor, path, seconds)
    return None


@implementer(IProtocolFactory)
class _UntilAnswered:
    """
    The application's factory, as an endpoint other than the client's own
    sees it for one attempt: a connection it makes once that attempt has
    its answer (connected, failed, cancelled or timed out) is dropped. An
    endpoint that ignores cancellation would otherwise leave it open with
    no one holding it.
    """

    done = False

    def __init__(self, factory: IProtocolFactory):
        self.factory = factory

    def answered(self, result: object) -> object:
        self.done = True
        return result

    def buildProtocol(self, addr: Any) -> IProtocol | None:
        if self.done:
            return _Dropped()
        return self.factory.buildProtocol(addr)

    def doStart(self) -> None:
        self.factory.doStart()

    def doStop(self) -> None:
        self.factory.doStop()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.factory, name)  # a ClientFactory's callbacks, say


class _Dropped(Protocol):
    def connectionMade(self) -> None:
        _abort(self)


def _abort(protocol: IProtocol) -> None:
    transport: Any = getattr(protocol, "transport", None)
    if transport is not None:
        transport.abortConnection()
