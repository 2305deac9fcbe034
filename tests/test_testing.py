"""
txmasse.testing: serving and connecting by name with no sockets and no
Redis, on a clock; and the connect path's rules, checked on it.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from typing import Any

import pytest
from prometheus_client import REGISTRY
from twisted.application.internet import ClientService
from twisted.internet.defer import CancelledError, Deferred, fail, succeed
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.error import TimeoutError as ConnectTimeout
from twisted.internet.interfaces import IStreamClientEndpoint
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse import MasseListeningPort, NoReachablePeer, PeerNotFound, RegistryUnavailable
from txmasse.endpoints import MasseClientEndpoint
from txmasse.records import PeerRecord
from txmasse.registry import EventKind, IRegistry, ISubscription, PeerEvent
from txmasse.resolver import resolverFor
from txmasse.testing import MasseNetwork


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Collector(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.lost = False

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.lost = True


def served(network: MasseNetwork, description: str) -> MasseListeningPort:
    port = network.serve(description, Factory.forProtocol(Echo))
    assert isinstance(port, MasseListeningPort)
    return port


def connected(network: MasseNetwork, description: str) -> Collector:
    connecting = network.connect(description, Factory.forProtocol(Collector))
    network.flush()
    protocol = network.successResultOf(connecting)
    assert isinstance(protocol, Collector)
    return protocol


def portOf(protocol: Protocol) -> int:
    transport: Any = protocol.transport
    return int(transport.getPeer().port)


def test_serve_and_connect_by_name_with_bytes_both_ways() -> None:
    network = MasseNetwork()
    port = served(network, "db:ns=t")
    assert port.record.endpoints == ("tcp:host=127.0.0.1:port=40000",)
    client = connected(network, "masse:db:ns=t")
    assert client.transport is not None
    client.transport.write(b"ping")
    network.flush()
    assert client.received == b"ping"


def test_an_unknown_name_is_not_found() -> None:
    network = MasseNetwork()
    connecting = network.connect("masse:nobody:ns=t", Factory.forProtocol(Collector))
    network.flush()
    with pytest.raises(PeerNotFound, match="'nobody' in namespace 't'"):
        network.successResultOf(connecting)


def test_a_dead_instance_fails_over_to_the_next_and_is_named() -> None:
    network = MasseNetwork()
    dead = served(network, "db:ns=t")
    alive = served(network, "db:ns=t")
    dead.port.stopListening()  # crashed: its name is still registered
    for _ in range(4):
        assert portOf(connected(network, "masse:db:ns=t:pick=first")) == alive.getHost().port  # type: ignore[attr-defined]
    alive.port.stopListening()
    connecting = network.connect("masse:db:ns=t", Factory.forProtocol(Collector))
    network.flush()
    with pytest.raises(NoReachablePeer) as caught:
        network.successResultOf(connecting)
    assert "port=40000" in str(caught.value) and "port=40001" in str(caught.value)


def test_roundrobin_takes_turns() -> None:
    network = MasseNetwork()
    ports = [served(network, "db:ns=t").getHost().port for _ in range(3)]  # type: ignore[attr-defined]
    endpoint = network.clientFromString("masse:db:ns=t:pick=roundrobin")
    seen = []
    for _ in range(6):
        connecting = endpoint.connect(Factory.forProtocol(Collector))
        network.flush()
        seen.append(portOf(network.successResultOf(connecting)))
    assert seen == ports + ports


def test_a_crashed_peer_times_out_on_the_clock() -> None:
    network = MasseNetwork()
    events: list[PeerEvent] = []
    network.registry.watch("t", "*", events.append)
    port = served(network, "db:ns=t:ttl=2")
    port.lease.stop()  # the process died: no more heartbeats
    network.advance(1.9)
    assert [e.kind for e in events] == [EventKind.JOINED]  # not yet
    network.advance(0.2)
    assert [e.kind for e in events] == [EventKind.JOINED, EventKind.TIMEDOUT]


def test_a_connect_times_out_on_the_clock_and_cancels_its_attempt() -> None:
    network = MasseNetwork()
    served(network, "db:ns=t")
    network.reactor.ports.clear()  # attempts now hang... until refused:
    network.reactor._connect = lambda *args: None  # type: ignore[method-assign]
    timesOutAtThreeSeconds(
        network, network.connect("masse:db:ns=t:timeout=3", Factory.forProtocol(Collector))
    )


def timesOutAtThreeSeconds(network: MasseNetwork, connecting: Deferred[Any]) -> None:
    """
    A connect with C{timeout=3} whose attempts hang: no result just before
    the deadline, the deadline's message just after, its attempt stopped.
    """
    network.advance(2.9)
    network.assertNoResult(connecting)
    network.advance(0.2)
    with pytest.raises(NoReachablePeer, match="within 3s: gave up connecting to tcp:"):
        network.successResultOf(connecting)
    assert network.reactor.connectors[-1].stoppedConnecting


def test_cancelling_a_connect() -> None:
    network = MasseNetwork()
    served(network, "db:ns=t")
    connecting = network.connect("masse:db:ns=t", Factory.forProtocol(Collector))
    connecting.cancel()
    with pytest.raises(CancelledError):
        network.successResultOf(connecting)
    network.advance(60)
    assert network.reactor.pumps == []  # nothing connected later
    assert not [call for call in network.reactor.getDelayedCalls() if "_Connect" in repr(call)]


def warmed(network: MasseNetwork, description: str, cached: int = 0) -> IStreamClientEndpoint:
    """
    An endpoint whose name this process has cached: one connect, then the
    watch that keeps the cache, started and synced; then C{cached} connects
    served from the cache (after one, the next connect repeats its first
    attempt while the cache holds the same instances).
    """
    endpoint = network.clientFromString(description)
    connecting = endpoint.connect(Factory.forProtocol(Collector))
    network.flush()
    network.successResultOf(connecting)
    network.advance(0.01)
    assert resolverFor(network.registry, network.reactor).isWarm("t", "db")
    for _ in range(cached):
        again = endpoint.connect(Factory.forProtocol(Collector))
        network.flush()
        network.successResultOf(again)
    return endpoint


FIRST_CACHED_OR_REPEATED = pytest.mark.parametrize(
    "cached", [0, 1], ids=["first-cached-connect", "repeated-connect"]
)


def hangingAttempts(network: MasseNetwork, *refused: int) -> None:
    """
    From now on, connects to the C{refused} ports are refused and the
    others hang (until they time out or are cancelled).
    """
    reactor = network.reactor

    def connect(host: str, port: int, factory: Any, connector: Any) -> None:
        if port in refused:
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError(host, port)))

    reactor._connect = connect  # type: ignore[method-assign]


@FIRST_CACHED_OR_REPEATED
def test_a_warm_connect_schedules_no_timer_of_its_own(cached: int) -> None:
    """
    A warm connect over TCP is its TCP attempt: the endpoint's connect
    timeout is the connect's deadline, so it schedules what a raw TCP
    connect does, and no more.
    """
    network = MasseNetwork()
    port = served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t", cached)
    raw = TCP4ClientEndpoint(network.reactor, "127.0.0.1", port.getHost().port)  # type: ignore[attr-defined]

    def scheduled(endpoint: IStreamClientEndpoint) -> int:
        before = set(network.reactor.getDelayedCalls())
        connecting = endpoint.connect(Factory.forProtocol(Collector))
        added = [call for call in network.reactor.getDelayedCalls() if call not in before]
        network.flush()
        network.successResultOf(connecting)
        return len(added)

    assert scheduled(endpoint) == scheduled(raw) == 2  # the attempt, and its timeout


@FIRST_CACHED_OR_REPEATED
def test_a_warm_connect_times_out_and_cancels_on_its_endpoints_timeout(cached: int) -> None:
    network = MasseNetwork()
    served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t:timeout=3", cached)
    hangingAttempts(network)
    timesOutAtThreeSeconds(network, endpoint.connect(Factory.forProtocol(Collector)))
    cancelled = endpoint.connect(Factory.forProtocol(Collector))
    cancelled.cancel()
    with pytest.raises(CancelledError):
        network.successResultOf(cancelled)
    assert network.reactor.connectors[-1].stoppedConnecting
    pending = [call for call in network.reactor.getDelayedCalls() if call.active()]
    network.advance(60)
    assert len(network.reactor.pumps) == 1 + cached  # the warming connects only
    assert all("_Connect" not in repr(call) for call in pending)


@FIRST_CACHED_OR_REPEATED
def test_after_a_failed_warm_attempt_a_timer_keeps_the_deadline(cached: int) -> None:
    """
    Once the first attempt failed (refused), the next steps (asking the
    registry again, the next instance) run under a timer for what is left
    of the deadline, and the message names what was tried.
    """
    network = MasseNetwork()
    first = served(network, "db:ns=t")
    second = served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t:pick=first:timeout=3", cached)
    hangingAttempts(network, first.getHost().port)  # type: ignore[attr-defined]
    connecting = endpoint.connect(Factory.forProtocol(Collector))
    network.advance(2.9)
    network.assertNoResult(connecting)
    network.advance(0.2)
    with pytest.raises(NoReachablePeer) as caught:
        network.successResultOf(connecting)
    message = str(caught.value)
    assert "within 3s: tried tcp:host=127.0.0.1:port=40000: Connection was refused" in message
    assert message.endswith(
        f"gave up connecting to tcp:host=127.0.0.1:port={second.getHost().port}"  # type: ignore[attr-defined]
    )


@FIRST_CACHED_OR_REPEATED
def test_a_refused_warm_attempt_goes_on_to_the_next_instance(cached: int) -> None:
    network = MasseNetwork()
    first = served(network, "db:ns=t")
    second = served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t:pick=first", cached)
    network.reactor._connect = _connectingExcept(network, first.getHost().port)  # type: ignore[attr-defined,method-assign]
    connecting = endpoint.connect(Factory.forProtocol(Collector))
    network.flush()
    protocol = network.successResultOf(connecting)
    assert portOf(protocol) == second.getHost().port  # type: ignore[attr-defined]


@FIRST_CACHED_OR_REPEATED
def test_a_warm_attempt_that_raises_fails_the_connect_with_its_message(
    cached: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    network = MasseNetwork()
    served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t:timeout=3", cached)

    def raising(self: object, factory: object) -> Deferred[Any]:
        raise OSError("no such thing")

    monkeypatch.setattr(TCP4ClientEndpoint, "connect", raising)
    with capturedLogs() as events:
        connecting = endpoint.connect(Factory.forProtocol(Collector))  # does not raise
        network.flush()
        with pytest.raises(NoReachablePeer, match=re.escape("port=40000: no such thing")):
            network.successResultOf(connecting)
        network.advance(10)
    assert [e for e in events if e.get("isError") or e.get("log_failure")] == []


@FIRST_CACHED_OR_REPEATED
def test_an_attempt_that_raises_a_timeout_goes_on_to_the_next_instance(
    cached: int, monkeypatch: pytest.MonkeyPatch
) -> None:
    """
    An endpoint whose C{connect} raises has not kept the deadline, even
    if what it raises says timeout: the connect goes on.
    """
    network = MasseNetwork()
    first = served(network, "db:ns=t")
    second = served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t:pick=first:timeout=3", cached)
    connect = TCP4ClientEndpoint.connect
    refused = first.getHost().port  # type: ignore[attr-defined]

    def raising(self: Any, factory: Any) -> Deferred[Any]:
        if self._port == refused:
            raise ConnectTimeout("raised, not timed")
        return connect(self, factory)

    monkeypatch.setattr(TCP4ClientEndpoint, "connect", raising)
    connecting = endpoint.connect(Factory.forProtocol(Collector))
    network.flush()
    assert portOf(network.successResultOf(connecting)) == second.getHost().port  # type: ignore[attr-defined]


def _connectingExcept(network: MasseNetwork, refused: int) -> Any:
    """
    The network's own connecting, but for C{refused}, which refuses.
    """
    connect = type(network.reactor)._connect.__get__(network.reactor)

    def connecting(host: str, port: int, factory: Any, connector: Any) -> None:
        if port == refused:
            factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError(host, port)))
        else:
            connect(host, port, factory, connector)

    return connecting


def test_repeated_connects_are_counted_and_timed_as_any() -> None:
    network = MasseNetwork()
    served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t:timeout=3", cached=1)

    def counted() -> tuple[float, float, float]:
        sample = REGISTRY.get_sample_value
        labels = {"namespace": "t", "name": "db"}
        return (
            sample("masse_connects_total", {**labels, "outcome": "ok"}) or 0.0,
            sample("masse_connects_total", {**labels, "outcome": "cancelled"}) or 0.0,
            sample("masse_connect_seconds_count", {}) or 0.0,
        )

    ok, cancelled, timed = counted()
    for _ in range(3):
        network.successResultOf(connectedAfterFlush(network, endpoint))
    hangingAttempts(network)
    gaveUp = endpoint.connect(Factory.forProtocol(Collector))
    gaveUp.cancel()
    gaveUp.addErrback(lambda failure: failure.trap(CancelledError))
    assert counted() == (ok + 3, cancelled + 1, timed + 4)


def connectedAfterFlush(network: MasseNetwork, endpoint: IStreamClientEndpoint) -> Deferred[Any]:
    connecting = endpoint.connect(Factory.forProtocol(Collector))
    network.flush()
    return connecting


def goesStraightToTheSecond(
    network: MasseNetwork,
    endpoint: IStreamClientEndpoint,
    first: MasseListeningPort,
    second: MasseListeningPort,
) -> None:
    """
    Once C{first} has stopped (and left), C{endpoint}'s next connect
    reaches C{second} with no attempt at C{first}'s address.
    """
    first.stopListening()
    network.flush()
    tried = len(network.reactor.tcpClients)
    connecting = endpoint.connect(Factory.forProtocol(Collector))
    network.flush()
    secondPort = second.getHost().port  # type: ignore[attr-defined]
    assert portOf(network.successResultOf(connecting)) == secondPort
    assert [port for _, port, *_ in network.reactor.tcpClients[tried:]] == [secondPort]


def test_a_connect_does_not_repeat_an_attempt_once_the_instances_changed() -> None:
    """
    A connect repeats the last one's first attempt only while the cache
    holds the same instances: once the first has gone, the next connect
    tries the second at once, with no attempt at the first's address.
    """
    network = MasseNetwork()
    first = served(network, "db:ns=t")
    second = served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t:pick=first", cached=2)
    goesStraightToTheSecond(network, endpoint, first, second)


def askedTheCache(
    network: MasseNetwork,
    endpoint: IStreamClientEndpoint,
    connects: int,
    registry: IRegistry | None = None,
) -> int:
    """
    How many times C{connects} connects by C{endpoint} asked the cache of
    C{registry} (the network's by default), each connected to the same port
    as the one before.
    """
    resolver = resolverFor(registry or network.registry, network.reactor)
    asked = 0
    cached = resolver.cached

    def counted(namespace: str, name: str) -> Any:
        nonlocal asked
        asked += 1
        return cached(namespace, name)

    resolver.cached = counted  # type: ignore[method-assign]
    try:
        ports = {portOf(network.successResultOf(connectedAfterFlush(network, endpoint)))}
        for _ in range(connects - 1):
            ports.add(portOf(network.successResultOf(connectedAfterFlush(network, endpoint))))
    finally:
        del resolver.cached
    assert len(ports) == 1
    return asked


def countedLookups(network: MasseNetwork) -> list[tuple[Any, ...]]:
    """
    The lookups the network's registry is asked from now on (their
    arguments), as they are made.
    """
    asked: list[tuple[Any, ...]] = []
    registry: Any = network.registry
    lookup = registry.lookup

    def counted(*args: Any) -> Any:
        asked.append(args)
        return lookup(*args)

    registry.lookup = counted
    return asked


def test_a_repeated_connect_checks_the_watch_alone_and_marks_the_entry_used() -> None:
    """
    While the name's watch keeps C{current}, a repeated connect tells from
    it alone that the cache still holds the same instances: it asks the
    resolver nothing, and marks the cache entry used for its eviction. Once
    the watch lost its notifications and got them back, the next connect
    asks the resolver (the same instances: it repeats all the same), and
    the one after that needs the watch alone again.
    """
    network = MasseNetwork()
    served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t", cached=1)
    entry = resolverFor(network.registry, network.reactor).entry("t", "db")
    assert entry is not None and entry.subscription is not None
    entry.used = False
    assert askedTheCache(network, endpoint, 3) == 0
    assert entry.used
    subscription: Any = entry.subscription
    subscription.interrupted()
    subscription.resumed()
    assert askedTheCache(network, endpoint, 1) == 1
    assert askedTheCache(network, endpoint, 2) == 0


@implementer(ISubscription)
class _Plain:
    """
    A watch that keeps no C{current}: only C{peers} and C{synced}, as
    another registry's watch may.
    """

    def __init__(self, inner: Any):
        self.inner = inner

    @property
    def peers(self) -> Any:
        return self.inner.peers

    @property
    def synced(self) -> bool:
        return bool(self.inner.synced)

    def stop(self) -> None:
        self.inner.stop()


def test_a_watch_without_current_is_asked_at_every_repeated_connect() -> None:
    network = MasseNetwork()
    served(network, "db:ns=t")
    registry = _WrappedWatches(network.registry, _Plain)
    endpoint = MasseClientEndpoint(network.reactor, "db", "t", registry=registry)
    network.successResultOf(connectedAfterFlush(network, endpoint))
    network.advance(0.01)
    network.successResultOf(connectedAfterFlush(network, endpoint))  # the first from the cache
    repeat = endpoint._repeat
    assert repeat is not None
    assert askedTheCache(network, endpoint, 3, registry) == 3
    assert endpoint._repeat is repeat  # each of them repeated the first


def failsTryingNothing(
    network: MasseNetwork, endpoint: IStreamClientEndpoint, error: type[Exception]
) -> None:
    """
    C{endpoint}'s next connect fails at once with C{error}, having made no
    attempt to connect.
    """
    tried = len(network.reactor.tcpClients)
    outcomes: list[Any] = []
    connectedAfterFlush(network, endpoint).addBoth(outcomes.append)
    [failure] = outcomes
    assert failure.check(error), failure
    assert len(network.reactor.tcpClients) == tried


def test_a_closed_registry_ends_the_repeats() -> None:
    """
    Closing the registry stops its watches, so no connect repeats an
    attempt through it: the next one asks the registry, which has nothing
    (a closed memory registry has dropped its leases), and tries nothing.
    """
    network = MasseNetwork()
    served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t", cached=1)
    network.registry.close()
    failsTryingNothing(network, endpoint, PeerNotFound)


def test_a_repeat_is_not_fooled_by_a_newer_view_read_elsewhere() -> None:
    """
    The instance moved, and another endpoint read the name's new view
    first (so the watch's C{current} is the new tuple): the repeating
    endpoint goes to the new address, with no attempt at the old.
    """
    network = MasseNetwork()
    first = served(network, "db:ns=t")
    endpoint = warmed(network, "masse:db:ns=t", cached=1)
    first.stopListening()
    second = served(network, "db:ns=t")
    network.flush()
    other = network.clientFromString("masse:db:ns=t")
    network.successResultOf(connectedAfterFlush(network, other))
    entry = resolverFor(network.registry, network.reactor).entry("t", "db")
    assert entry is not None and getattr(entry.subscription, "current", None) is not None
    tried = len(network.reactor.tcpClients)
    reached = network.successResultOf(connectedAfterFlush(network, endpoint))
    secondPort = second.getHost().port  # type: ignore[attr-defined]
    assert portOf(reached) == secondPort
    assert [port for _, port, *_ in network.reactor.tcpClients[tried:]] == [secondPort]


class _Forwarding(_Plain):
    """
    A watch wrapped by another registry, which passes on what it does not
    define (C{current} among it) and is synced only while not C{paused}.
    """

    paused = False

    @property
    def synced(self) -> bool:
        return bool(self.inner.synced) and not self.paused

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def test_a_watch_is_trusted_only_with_a_current_of_its_own() -> None:
    """
    The C{current} a wrapper passes on is its inner watch's, not its own:
    the repeat asks the cache, which reads the wrapper's C{synced}.
    """
    network = MasseNetwork()
    served(network, "db:ns=t")
    wrapped: list[_Forwarding] = []

    def wrap(inner: Any) -> _Forwarding:
        wrapped.append(_Forwarding(inner))
        return wrapped[-1]

    registry = _WrappedWatches(network.registry, wrap)
    endpoint = MasseClientEndpoint(network.reactor, "db", "t", registry=registry)
    network.successResultOf(connectedAfterFlush(network, endpoint))
    network.advance(0.01)
    network.successResultOf(connectedAfterFlush(network, endpoint))  # from the cache
    assert askedTheCache(network, endpoint, 2, registry) == 2  # repeated, each time asked
    [watch] = wrapped
    watch.paused = True  # it no longer vouches for its peers
    asked = countedLookups(network)
    network.successResultOf(connectedAfterFlush(network, endpoint))
    assert len(asked) == 1  # not repeated: the registry was asked


@implementer(ISubscription)
class _OneList:
    """
    A watch whose C{peers} is one list, kept current in place (as another
    registry's watch may keep it): the same object before and after a
    change.
    """

    def __init__(self, inner: Any):
        self.inner = inner
        self.list: list[Any] = []

    @property
    def peers(self) -> list[Any]:
        self.list[:] = self.inner.peers
        return self.list

    @property
    def synced(self) -> bool:
        return bool(self.inner.synced)

    def stop(self) -> None:
        self.inner.stop()


@implementer(IRegistry)
class _WrappedWatches:  # the methods it does not change: __getattr__
    """
    The network's registry, each of its watches behind C{wrap}'s.
    """

    def __init__(self, inner: Any, wrap: Callable[[Any], ISubscription]):
        self.inner = inner
        self.url = inner.url
        self.wrap = wrap

    @property
    def closed(self) -> bool:
        return bool(self.inner.closed)

    def lookup(self, namespace: str, name: str, stale: float | None = None) -> Deferred[Any]:
        return self.inner.lookup(namespace, name, stale)  # type: ignore[no-any-return]

    def watch(self, namespace: str, pattern: str, callback: Any, usage: bool = False) -> Any:
        return self.inner.watch(namespace, pattern, callback, usage).addCallback(self.wrap)

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)  # the rest (find, register, close...) as they are


@pytest.mark.parametrize("selecting", ["", ":meta.zone=b"])
def test_a_watch_whose_peers_change_in_place_is_never_repeated_stale(selecting: str) -> None:
    network = MasseNetwork()
    first = served(network, "db:ns=t:meta.zone=b")
    second = served(network, "db:ns=t:meta.zone=b")
    registry = _WrappedWatches(network.registry, _OneList)
    endpoint = MasseClientEndpoint(
        network.reactor,
        "db",
        "t",
        registry=registry,
        pick="first",
        meta=[("zone", "b")] if selecting else None,
    )
    for _ in range(3):  # a lookup, then two cached connects, to the first
        connecting = endpoint.connect(Factory.forProtocol(Collector))
        network.flush()
        assert portOf(network.successResultOf(connecting)) == first.getHost().port  # type: ignore[attr-defined]
        network.advance(0.01)
    goesStraightToTheSecond(network, endpoint, first, second)


class _ClosingView(_WrappedWatches):
    """
    A view of the network's registry with a close of its own, which leaves
    the registry (and so its watches) to the others sharing it.
    """

    viewClosed = False

    @property
    def closed(self) -> bool:
        return self.viewClosed

    def lookup(self, namespace: str, name: str, stale: float | None = None) -> Deferred[Any]:
        if self.viewClosed:
            return fail(RegistryUnavailable(f"registry {self.url} is closed"))
        return super().lookup(namespace, name, stale)

    def close(self) -> Deferred[None]:
        self.viewClosed = True
        return succeed(None)


def test_no_repeat_goes_through_a_closed_registry_whose_watches_run_on() -> None:
    network = MasseNetwork()
    served(network, "db:ns=t")
    view = _ClosingView(network.registry, lambda watch: watch)
    endpoint = MasseClientEndpoint(network.reactor, "db", "t", registry=view)
    network.successResultOf(connectedAfterFlush(network, endpoint))
    network.advance(0.01)
    for _ in range(2):  # from the cache, then repeated from the watch alone
        network.successResultOf(connectedAfterFlush(network, endpoint))
    view.close()
    failsTryingNothing(network, endpoint, RegistryUnavailable)


def test_client_service_follows_a_peer_that_restarted() -> None:
    network = MasseNetwork()
    first = served(network, "db:ns=t")
    endpoint = network.clientFromString("masse:db:ns=t")
    service = ClientService(endpoint, Factory.forProtocol(Collector), clock=network.reactor)
    service.startService()
    network.flush()
    protocol: Any = network.successResultOf(service.whenConnected())
    assert portOf(protocol) == first.getHost().port  # type: ignore[attr-defined]
    first.stopListening()
    protocol.transport.loseConnection()
    second = served(network, "db:ns=t")
    network.advance(10)
    again: Any = network.successResultOf(service.whenConnected())
    assert again is not protocol and portOf(again) == second.getHost().port  # type: ignore[attr-defined]
    service.stopService()


def walkedCold(network: MasseNetwork, description: str, before: int) -> IStreamClientEndpoint:
    """
    An endpoint that asks the registry at every connect (C{cache=false}),
    after C{before} connects: after one, the next walk of the name's only
    instance goes straight to the attempt the last one made (L{_Walked}).
    """
    endpoint = network.clientFromString(description)
    for _ in range(before):
        network.successResultOf(connectedAfterFlush(network, endpoint))
    return endpoint


FIRST_OR_WALKED_AGAIN = pytest.mark.parametrize(
    "before", [0, 1], ids=["first-cold-connect", "walked-again"]
)


@FIRST_OR_WALKED_AGAIN
def test_a_cold_connect_times_out_and_cancels_on_its_endpoints_timeout(before: int) -> None:
    """
    The memory registry answers at once (its C{callTimeout} is 0): the
    attempt's connect timeout is the deadline, and no timer of the connect's.
    """
    network = MasseNetwork()
    served(network, "db:ns=t")
    endpoint = walkedCold(network, "masse:db:ns=t:timeout=3:cache=false", before)
    hangingAttempts(network)
    connecting = endpoint.connect(Factory.forProtocol(Collector))
    assert not [c for c in network.reactor.getDelayedCalls() if "_Connect" in repr(c)]
    timesOutAtThreeSeconds(network, connecting)
    cancelled = endpoint.connect(Factory.forProtocol(Collector))
    cancelled.cancel()
    with pytest.raises(CancelledError):
        network.successResultOf(cancelled)
    assert network.reactor.connectors[-1].stoppedConnecting


@FIRST_OR_WALKED_AGAIN
def test_a_refused_cold_attempt_says_what_it_tried(before: int) -> None:
    network = MasseNetwork()
    port = served(network, "db:ns=t").getHost().port  # type: ignore[attr-defined]
    endpoint = walkedCold(network, "masse:db:ns=t:cache=false", before)
    hangingAttempts(network, port)
    connecting = endpoint.connect(Factory.forProtocol(Collector))
    network.flush()
    with pytest.raises(NoReachablePeer) as caught:
        network.successResultOf(connecting)
    assert str(caught.value) == (
        "could not reach 'db' in namespace 't' (registry memory://): "
        f"tried tcp:host=127.0.0.1:port={port}: Connection was refused by other side: "
        f"127.0.0.1: {port}."
    )


def test_a_cold_connect_walks_again_once_the_instance_changed() -> None:
    """
    The next walk goes straight to the last one's attempt only while the
    registry answers with the very same instance: a new one (here the
    peer listening again elsewhere) is ordered and tried afresh, with no
    attempt at the old address; a drained one is left out.
    """
    network = MasseNetwork()
    first = served(network, "db:ns=t")
    endpoint = walkedCold(network, "masse:db:ns=t:cache=false", before=2)
    first.stopListening()
    network.flush()
    second = served(network, "db:ns=t")
    tried = len(network.reactor.tcpClients)
    reached = network.successResultOf(connectedAfterFlush(network, endpoint))
    secondPort = second.getHost().port  # type: ignore[attr-defined]
    assert portOf(reached) == secondPort
    assert [port for _, port, *_ in network.reactor.tcpClients[tried:]] == [secondPort]
    network.successResultOf(second.drain())
    drained = endpoint.connect(Factory.forProtocol(Collector))
    with pytest.raises(NoReachablePeer, match=r"left out instance \w+ \(draining\)"):
        network.successResultOf(drained)


def test_a_cold_connect_to_the_same_instance_orders_nothing(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    network = MasseNetwork()
    served(network, "db:ns=t")
    endpoint = walkedCold(network, "masse:db:ns=t:cache=false", before=1)
    looked: list[object] = []
    endpointFor = MasseClientEndpoint.endpointFor

    def counted(self: MasseClientEndpoint, candidate: Any, registry: Any) -> Any:
        looked.append(candidate)
        return endpointFor(self, candidate, registry)

    monkeypatch.setattr(MasseClientEndpoint, "endpointFor", counted)
    for _ in range(3):
        network.successResultOf(connectedAfterFlush(network, endpoint))
    assert looked == []
    served(network, "db:ns=t")  # two instances: walked in full
    network.successResultOf(connectedAfterFlush(network, endpoint))
    assert len(looked) == 1


def test_a_cold_connect_to_the_same_instance_builds_no_loop_and_is_counted_once(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """
    While the registry answers with the very same instance, a cold connect
    is the lookup and the last walk's attempt: no L{_Connect} is built, and
    each connect is counted once.
    """
    from txmasse import _client

    network = MasseNetwork()
    served(network, "db:ns=t")
    endpoint = walkedCold(network, "masse:db:ns=t:cache=false", before=1)
    built: list[object] = []
    init = _client._Connect.__init__

    def counted(self: Any, *args: Any) -> None:
        built.append(self)
        init(self, *args)

    monkeypatch.setattr(_client._Connect, "__init__", counted)
    labels = {"namespace": "t", "name": "db", "outcome": "ok"}
    before = REGISTRY.get_sample_value("masse_connects_total", labels) or 0.0
    timed = REGISTRY.get_sample_value("masse_connect_seconds_count", {}) or 0.0
    for _ in range(3):
        network.successResultOf(connectedAfterFlush(network, endpoint))
    assert built == []
    assert REGISTRY.get_sample_value("masse_connects_total", labels) == before + 3
    assert REGISTRY.get_sample_value("masse_connect_seconds_count", {}) == timed + 3


def test_a_cold_connect_whose_walked_attempt_fails_asks_the_registry_once() -> None:
    """
    The last walk's attempt failing goes on as a cold connect does: the
    instance's next endpoint, with no second lookup.
    """
    network = MasseNetwork()
    ports = [4001, 4002]
    record = PeerRecord("t", "db", [f"tcp:host=127.0.0.1:port={port}" for port in ports])
    network.registry.register(record, 60)
    endpoint = network.clientFromString("masse:db:ns=t:cache=false:pick=first")
    hangingAttempts(network, *ports)
    refused = connectedAfterFlush(network, endpoint)  # walks the instance: both refused
    refused.addErrback(lambda failure: failure.trap(NoReachablePeer))
    hangingAttempts(network, ports[0])  # now the second hangs, until it times out
    asked = countedLookups(network)
    tried = len(network.reactor.tcpClients)
    connectedAfterFlush(network, endpoint).addErrback(lambda failure: None)
    assert [port for _, port, *_ in network.reactor.tcpClients[tried:]] == ports
    assert len(asked) == 1
