"""
The client-side resolution cache: what it serves from memory, what makes it
ask the registry again, its bound, and the endpoint's use of it; in memory
under a fake clock, and against a real redis-server.
"""

from __future__ import annotations

import socket
from collections import Counter
from collections.abc import Callable, Iterator, Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.internet.endpoints import TCP4ServerEndpoint, clientFromString
from twisted.internet.interfaces import IListeningPort, IStreamClientEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.task import Clock
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from zope.interface import implementer

from tests.endpoint_helpers import Collector, Echo, Recording, quote
from tests.helpers import FakeNetwork, RedisServer, eventually, fired
from txmasse.endpoints import MasseClientEndpoint, MasseListeningPort, MasseServerEndpoint
from txmasse.errors import NoReachablePeer, RegistryUnavailable
from txmasse.records import PeerRecord
from txmasse.registry import (
    ILease,
    IRegistry,
    ISubscription,
    LeaseStatus,
    MemoryRegistry,
    PeerEvent,
    registryFromURL,
)
from txmasse.resolver import WATCH_DELAY, WATCH_RETRY, CacheEntry, Resolver, resolverFor


@implementer(IRegistry)
class Counting:
    """
    A registry that counts the calls made to it and keeps the subscriptions
    it handed out; C{failWatches} makes watches fail.
    """

    def __init__(self, registry: IRegistry):
        self.inner = registry
        self.url = registry.url
        self.calls: Counter[str] = Counter()
        self.subscriptions: list[ISubscription] = []
        self.failWatches = False

    @property
    def closed(self) -> bool:
        return self.inner.closed

    def register(self, record: PeerRecord, ttl: float) -> Deferred[ILease]:
        return self.inner.register(record, ttl)

    def lookup(
        self, namespace: str, name: str, stale: float | None = None
    ) -> Deferred[list[PeerRecord]]:
        self.calls["lookup"] += 1
        return self.inner.lookup(namespace, name, stale)

    def find(self, namespace: str, pattern: str) -> Deferred[list[PeerRecord]]:
        self.calls["find"] += 1
        return self.inner.find(namespace, pattern)

    def leases(self, namespace: str, pattern: str) -> Deferred[list[LeaseStatus]]:
        return self.inner.leases(namespace, pattern)

    def watch(
        self,
        namespace: str,
        pattern: str,
        callback: Callable[[PeerEvent], object],
        usage: bool = False,
    ) -> Deferred[ISubscription]:
        self.calls["watch"] += 1
        if self.failWatches:
            return fail(RegistryUnavailable("registry memory://: watch failed: no"))
        return self.inner.watch(namespace, pattern, callback, usage).addCallback(self._keep)

    def _keep(self, subscription: ISubscription) -> ISubscription:
        self.subscriptions.append(subscription)
        return subscription

    def report(self, event: PeerEvent) -> Deferred[None]:
        return self.inner.report(event)

    def close(self) -> Deferred[None]:
        return self.inner.close()


def record(name: str = "db", port: int = 4000, namespace: str = "t") -> PeerRecord:
    return PeerRecord(namespace, name, [f"tcp:host=127.0.0.1:port={port}"])


def resolved(resolver: Resolver, name: str = "db") -> tuple[list[int], bool]:
    """
    The ports C{name} resolves to (sorted) and whether they came from memory;
    only for resolutions that fire at once (memory registry). Then lets the
    fake clock reach the start of the watch that a lookup schedules.
    """
    outcomes: list[Any] = []
    resolver.resolve("t", name).addBoth(outcomes.append)
    if isinstance(resolver._clock, Clock):
        resolver._clock.advance(WATCH_DELAY)
    [resolution] = outcomes
    ports = sorted(int(r.endpoints[0].rpartition("=")[2]) for r in resolution.records)
    return ports, resolution.cached


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
def counting(clock: Clock) -> Iterator[Counting]:
    registry = Counting(MemoryRegistry(clock))
    yield registry
    registry.close()


def registered(registry: IRegistry, rec: PeerRecord, ttl: float = 10) -> ILease:
    leases: list[ILease] = []
    registry.register(rec, ttl).addCallback(leases.append)
    return leases[0]


# The resolver alone, in memory


def test_first_resolution_asks_then_memory_answers(counting: Counting, clock: Clock) -> None:
    registered(counting, record(port=4000))
    resolver = Resolver(counting, clock)
    assert resolved(resolver) == ([4000], False)
    assert counting.calls == {"lookup": 1, "watch": 1}
    for _ in range(3):
        assert resolved(resolver) == ([4000], True)
    assert counting.calls == {"lookup": 1, "watch": 1}  # no round trip when warm


def test_events_keep_the_entry_current(counting: Counting, clock: Clock) -> None:
    first = registered(counting, record(port=4000), ttl=5)
    resolver = Resolver(counting, clock)
    resolved(resolver)
    second = registered(counting, record(port=4001), ttl=50)
    assert resolved(resolver) == ([4000, 4001], True)  # joined
    moved = PeerRecord("t", "db", ["tcp:host=127.0.0.1:port=4002"], instance=second.record.instance)
    second.update(moved)
    assert resolved(resolver) == ([4000, 4002], True)  # updated
    first.stop()
    clock.advance(5)
    assert resolved(resolver) == ([4002], True)  # timedout
    assert counting.calls["lookup"] == 1
    second.release()
    assert resolved(resolver) == ([], False)  # left: nothing cached, the registry is asked
    assert counting.calls["lookup"] == 2


def test_a_pattern_is_found_and_watched(counting: Counting, clock: Clock) -> None:
    registered(counting, record("db-1", 4000))
    resolver = Resolver(counting, clock)
    assert resolved(resolver, "db-*") == ([4000], False)
    registered(counting, record("db-2", 4001))
    registered(counting, record("web", 4002))
    assert resolved(resolver, "db-*") == ([4000, 4001], True)
    assert counting.calls == {"find": 1, "watch": 1}


def test_unknown_names_are_not_watched(counting: Counting, clock: Clock) -> None:
    resolver = Resolver(counting, clock)
    assert resolved(resolver, "nobody") == ([], False)
    assert resolved(resolver, "nobody") == ([], False)
    assert counting.calls == {"lookup": 2} and len(resolver) == 0


def test_forget_stops_the_watch(counting: Counting, clock: Clock) -> None:
    registered(counting, record())
    resolver = Resolver(counting, clock)
    resolved(resolver)
    [subscription] = counting.subscriptions
    resolver.forget("t", "db")
    assert not subscription.synced  # stopped
    assert resolved(resolver) == ([4000], False)
    assert counting.calls == {"lookup": 2, "watch": 2}


def test_least_recently_used_entries_go_first(counting: Counting, clock: Clock) -> None:
    for port, name in enumerate(["a", "b", "c"], start=4000):
        registered(counting, record(name, port))
    resolver = Resolver(counting, clock, maxEntries=2)
    resolved(resolver, "a")
    resolved(resolver, "b")
    resolved(resolver, "a")  # a is now the most recently used
    resolved(resolver, "c")  # makes room by dropping b
    a, b, c = counting.subscriptions
    assert (a.synced, b.synced, c.synced) == (True, False, True)
    assert ("t", "b") not in resolver and len(resolver) == 2
    assert resolved(resolver, "a")[1] and not resolved(resolver, "b")[1]


def aMarkedUsed(counting: Counting, clock: Clock) -> tuple[Resolver, CacheEntry]:
    """
    Names a to d registered; a resolver of two entries that holds a, then
    b, a marked used (as a repeated connect does): the resolver and a's
    entry.
    """
    for port, name in enumerate(["a", "b", "c", "d"], start=4000):
        registered(counting, record(name, port))
    resolver = Resolver(counting, clock, maxEntries=2)
    resolved(resolver, "a")
    resolved(resolver, "b")
    entry = resolver.entry("t", "a")
    assert entry is not None and not entry.used
    entry.used = True
    return resolver, entry


def test_an_entry_a_repeated_connect_used_goes_to_the_back_once(
    counting: Counting, clock: Clock
) -> None:
    """
    A connect that repeats the last one marks the entry used instead of
    asking the resolver: making room passes over it once (clearing the
    mark), and drops it the next time if nothing used it meanwhile.
    """
    resolver, entry = aMarkedUsed(counting, clock)
    resolved(resolver, "c")  # room made by dropping b, not a
    assert ("t", "a") in resolver and ("t", "b") not in resolver and not entry.used
    resolved(resolver, "d")  # a's mark was spent: now it goes
    assert ("t", "a") not in resolver and ("t", "c") in resolver and ("t", "d") in resolver
    assert resolver.entry("t", "a") is None
    a, b, c, d = counting.subscriptions
    assert (a.synced, b.synced, c.synced, d.synced) == (False, False, True, True)


def test_a_used_mark_is_spent_once_the_entry_is_moved_to_the_back(
    counting: Counting, clock: Clock
) -> None:
    """
    An entry asked of the cache goes to the back of the queue, and its
    mark from a repeated connect before that is spent: it is then dropped
    before an entry used after it.
    """
    resolver, entry = aMarkedUsed(counting, clock)  # long ago
    resolved(resolver, "a")  # asked of the cache: a to the back
    assert not entry.used
    resolved(resolver, "c")  # drops b
    resolved(resolver, "d")  # drops a, used before c
    assert ("t", "a") not in resolver and ("t", "c") in resolver
    c = resolver.entry("t", "c")
    assert c is not None and c.subscription is not None
    c.used = True
    c.subscription.interrupted()  # type: ignore[attr-defined]  # as on a lost connection
    assert resolved(resolver, "c") == ([4002], False)  # asked of the registry: c to the back
    assert not c.used


def test_making_room_when_every_entry_was_used_keeps_the_new_one(
    counting: Counting, clock: Clock
) -> None:
    for port, name in enumerate(["a", "b"], start=4000):
        registered(counting, record(name, port))
    resolver = Resolver(counting, clock, maxEntries=1)
    resolved(resolver, "a")
    entry = resolver.entry("t", "a")
    assert entry is not None
    entry.used = True
    resolved(resolver, "b")
    assert ("t", "b") in resolver and len(resolver) == 1
    assert resolved(resolver, "b")[1]  # served from memory: its watch runs


def test_an_unsynced_entry_is_not_served(counting: Counting, clock: Clock) -> None:
    registered(counting, record())
    resolver = Resolver(counting, clock)
    resolved(resolver)
    [subscription] = counting.subscriptions
    subscription.interrupted()  # type: ignore[attr-defined]  # as on a lost connection
    assert resolved(resolver) == ([4000], False)
    assert resolved(resolver) == ([4000], False)
    assert counting.calls == {"lookup": 3, "watch": 1}  # the watch catches up by itself
    subscription.resumed()  # type: ignore[attr-defined]
    assert resolved(resolver) == ([4000], True)


def test_a_failed_watch_is_logged_once_and_tried_again_later(
    counting: Counting, clock: Clock
) -> None:
    registered(counting, record("a", 4000))
    registered(counting, record("b", 4001))
    resolver = Resolver(counting, clock)
    counting.failWatches = True
    with capturedLogs() as events:
        for name in ["a", "a", "b", "a"]:
            assert resolved(resolver, name)[1] is False
    warnings = [formatEvent(e) for e in events if "could not watch" in e["log_format"]]
    assert len(warnings) == 1 and "watch failed: no" in warnings[0]
    assert counting.calls["watch"] == 2  # a once, b once: not again within WATCH_RETRY
    counting.failWatches = False
    clock.advance(2 * WATCH_RETRY(0))
    assert resolved(resolver, "a") == ([4000], False)
    assert counting.calls["watch"] == 3
    assert resolved(resolver, "a") == ([4000], True)


def test_a_closed_registry_is_not_served_from_memory(counting: Counting, clock: Clock) -> None:
    registered(counting, record())
    resolver = Resolver(counting, clock)
    resolved(resolver)
    counting.close()
    assert resolved(resolver) == ([4000], False)  # a closed memory registry still answers
    assert len(resolver) == 0 and counting.calls["watch"] == 1


def test_one_resolver_per_registry(clock: Clock) -> None:
    one, other = MemoryRegistry(clock), MemoryRegistry(clock)
    assert resolverFor(one, clock) is resolverFor(one, clock)
    assert resolverFor(one, clock) is not resolverFor(other, clock)
    with pytest.raises(ValueError, match="maxEntries=0: must be at least 1"):
        Resolver(one, clock, maxEntries=0)


# The endpoint, over real TCP


@pytest.fixture
def memory() -> Iterator[Counting]:
    registry = Counting(MemoryRegistry(reactor))
    yield registry
    pytest_twisted.blockon(registry.close())


async def listen(ports: list[IListeningPort], registry: IRegistry, ttl: float = 10) -> Any:
    endpoint = MasseServerEndpoint(
        reactor,
        "echo",
        "t",
        registry=getattr(registry, "inner", registry),  # counted: the clients' calls only
        endpoint=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        ttl=ttl,
    )
    port = await endpoint.listen(Recording(Echo))
    assert isinstance(port, MasseListeningPort)
    ports.append(port)
    return port


async def echoes(client: Any, data: bytes = b"x") -> int:
    """
    Connect, check the peer echoes C{data}, close; return the peer's port.
    """
    protocol = await client.connect(Factory.forProtocol(Collector))
    assert isinstance(protocol, Collector) and protocol.transport is not None
    protocol.transport.write(data)
    await eventually(lambda: protocol.received == data)
    peer: Any = protocol.transport.getPeer()
    protocol.transport.loseConnection()
    await protocol.lost
    return int(peer.port)


async def warmed(registry: IRegistry, name: str = "echo") -> None:
    """
    Wait until C{name} is served from memory: its watch starts just after
    the lookup that found it.
    """
    resolver = resolverFor(registry, reactor)
    await eventually(lambda: resolver.isWarm("t", name))


def test_cache_option() -> None:
    on, off = (clientFromString(reactor, f"masse:db{extra}") for extra in ("", ":cache=false"))
    assert isinstance(on, MasseClientEndpoint) and isinstance(off, MasseClientEndpoint)
    assert on.cache is True and off.cache is False
    with pytest.raises(ValueError, match="cache='sometimes': must be true or false"):
        clientFromString(reactor, "masse:db:cache=sometimes")


@pytest_twisted.ensureDeferred
async def test_warm_connects_ask_nothing(memory: Counting, ports: list[IListeningPort]) -> None:
    port = await listen(ports, memory)
    client = MasseClientEndpoint(reactor, "echo", "t", registry=memory)
    await echoes(client)
    await warmed(memory)
    for _ in range(5):
        assert await echoes(client) == port.getHost().port
    assert memory.calls == {"lookup": 1, "watch": 1}
    uncached = MasseClientEndpoint(reactor, "echo", "t", registry=memory, cache=False)
    for _ in range(3):
        await echoes(uncached)
    assert memory.calls == {"lookup": 4, "watch": 1}


@implementer(IStreamClientEndpoint)
class Hanging:
    """
    An endpoint whose connection attempts never finish until cancelled.
    """

    def __init__(self) -> None:
        self.cancelled = 0

    def connect(self, factory: Any) -> Deferred[Any]:
        def cancel(_: object) -> None:
            self.cancelled += 1

        return Deferred(cancel)


@pytest_twisted.ensureDeferred
async def test_a_warm_connect_times_out_and_cancels(
    memory: Counting, ports: list[IListeningPort]
) -> None:
    """
    A warm connect tries the cache's first choice straight away: its
    timeout and its cancellation still reach that attempt.
    """
    await listen(ports, memory)
    client = MasseClientEndpoint(reactor, "echo", "t", registry=memory, timeout=0.2)
    await echoes(client)
    await warmed(memory)
    hanging = Hanging()
    client.endpointFor = lambda candidate, registry: hanging  # type: ignore[method-assign]
    with pytest.raises(NoReachablePeer, match=r"within 0.2s: gave up connecting to tcp:"):
        await client.connect(Factory.forProtocol(Collector))
    assert hanging.cancelled == 1
    attempt = client.connect(Factory.forProtocol(Collector))
    attempt.cancel()
    with pytest.raises(CancelledError):
        await attempt
    assert hanging.cancelled == 2
    assert memory.calls == {"lookup": 1, "watch": 1}  # both were warm: no registry call


@implementer(IStreamClientEndpoint)
class Raising:
    """
    An endpoint that raises instead of returning a Deferred.
    """

    def connect(self, factory: Any) -> Deferred[Any]:
        raise OSError("no such thing")


def test_a_warm_endpoint_that_raises_fails_the_connect_cleanly() -> None:
    clock = MemoryReactorClock()
    network = FakeNetwork(clock)
    memory = Counting(MemoryRegistry(clock))
    fired(memory.register(record("echo"), 60))
    client = MasseClientEndpoint(clock, "echo", "t", registry=memory, timeout=0.2)
    first = client.connect(Factory.forProtocol(Collector))
    network.accept()
    assert isinstance(fired(first), Collector)
    clock.advance(WATCH_DELAY)
    assert resolverFor(memory, clock).isWarm("t", "echo")
    client.endpointFor = lambda candidate, registry: Raising()  # type: ignore[method-assign]
    with capturedLogs() as events:
        attempt = client.connect(Factory.forProtocol(Collector))  # does not raise
        with pytest.raises(NoReachablePeer, match="no such thing"):
            fired(attempt)
        clock.pump([0.1] * 10)  # well past the timeout: nothing fires
    assert [e for e in events if e.get("isError") or e.get("log_failure")] == []
    assert network.waiting() == [] and len(network.attempts()) == 1
    assert memory.calls["lookup"] == 2  # the first connect, then once after the failure


@pytest_twisted.ensureDeferred
async def test_a_stale_entry_costs_one_failed_attempt(
    memory: Counting, ports: list[IListeningPort]
) -> None:
    old = await listen(ports, memory, ttl=60)
    oldPort = old.getHost().port
    client = MasseClientEndpoint(reactor, "echo", "t", registry=memory, pick="first")
    await echoes(client)
    await warmed(memory)
    # The peer dies without a word (its lease outlives it) and starts again elsewhere.
    ports.remove(old)
    old.lease.stop()
    await old.port.stopListening()
    new = await listen(ports, memory)
    with capturedLogs() as events:
        assert await echoes(client) == new.getHost().port
    failed = [formatEvent(e) for e in events if "failed" in e["log_format"]]
    assert len(failed) == 1 and f"port={oldPort} failed" in failed[0]
    assert memory.calls["lookup"] == 2  # the first connect, then once after the failure
    # The registry still holds the dead instance (its lease lives on), so the
    # next connect tries it first again, and again costs one failed attempt.
    await warmed(memory)
    with capturedLogs() as events:
        assert await echoes(client) == new.getHost().port
    assert len([e for e in events if "failed" in e["log_format"]]) == 1
    assert memory.calls["lookup"] == 3
    await old.lease.release()
    await warmed(memory)
    assert await echoes(client) == new.getHost().port
    assert memory.calls["lookup"] == 3  # left: the entry forgot it, no failure, no lookup


@pytest_twisted.ensureDeferred
async def test_fresh_answer_used_when_the_cache_missed_a_move(
    ports: list[IListeningPort],
) -> None:
    """
    The cache holds only the old address (its events are late); the
    registry already knows the new one: one failed attempt, then the
    registry's answer, in the same connect().
    """
    inner = MemoryRegistry(reactor)
    registry = Counting(inner)
    try:
        old = await listen(ports, registry)
        oldRecord = old.lease.record
        ports.remove(old)
        await old.stopListening()
        new = await listen(ports, registry)
        resolver = resolverFor(registry, reactor)
        stale = _FrozenSubscription([oldRecord])
        resolver._entries[("t", "echo")] = _entryFor(stale)
        client = MasseClientEndpoint(reactor, "echo", "t", registry=registry)
        assert await echoes(client) == new.getHost().port
        assert stale.stopped  # the stale entry was dropped
        await warmed(registry)
        assert registry.calls == {"lookup": 1, "watch": 1}  # asked once, watching afresh
        assert await echoes(client) == new.getHost().port
        assert registry.calls == {"lookup": 1, "watch": 1}
    finally:
        await registry.close()


@implementer(ISubscription)
class _FrozenSubscription:
    def __init__(self, peers: Sequence[PeerRecord]):
        self.peers = list(peers)
        self.synced = True
        self.stopped = False

    def stop(self) -> None:
        self.stopped = True
        self.synced = False


def _entryFor(subscription: ISubscription) -> Any:
    return CacheEntry("t", "echo", subscription=subscription)


# Real Redis


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    url = f"{redis_server.url}?timeout=1"
    yield url
    pytest_twisted.blockon(registryFromURL(reactor, url).close())


@pytest_twisted.ensureDeferred
async def test_warm_connects_send_redis_nothing(
    redis_server: RedisServer, redis_url: str, ports: list[IListeningPort]
) -> None:
    registry = registryFromURL(reactor, redis_url)
    await listen(ports, registry)
    client = clientFromString(reactor, f"masse:echo:ns=t:registry={quote(redis_url)}")
    await echoes(client)
    await warmed(registry)
    before = redis_server.commandCalls()
    for _ in range(10):
        await echoes(client)
    after = redis_server.commandCalls()
    # Every lookup (and snapshot) reads the name's hash; sweeps do not.
    assert after.get("hgetall", 0) == before.get("hgetall", 0)
    uncached = clientFromString(reactor, f"masse:echo:ns=t:cache=false:registry={quote(redis_url)}")
    for _ in range(10):
        await echoes(uncached)
    assert redis_server.commandCalls()["hgetall"] == after.get("hgetall", 0) + 10


@pytest_twisted.ensureDeferred
async def test_redis_outage_is_not_hidden_by_the_cache(
    redis_server: RedisServer, redis_url: str, ports: list[IListeningPort]
) -> None:
    registry = registryFromURL(reactor, redis_url)
    port = await listen(ports, registry)
    client = clientFromString(reactor, f"masse:echo:ns=t:timeout=5:registry={quote(redis_url)}")
    await echoes(client)
    await warmed(registry)
    resolver = resolverFor(registry, reactor)
    redis_server.stop()
    await eventually(lambda: not resolver.isWarm("t", "echo"))  # the lost connection unsyncs it
    with pytest.raises(RegistryUnavailable):
        await client.connect(Factory.forProtocol(Collector))
    redis_server.start()  # empty: the lease writes itself back, the watch catches up
    await eventually(lambda: resolver.isWarm("t", "echo"), timeout=10)
    hgetall = redis_server.commandCalls().get("hgetall", 0)
    assert await echoes(client) == port.getHost().port
    assert redis_server.commandCalls().get("hgetall", 0) == hgetall  # warm again


@pytest_twisted.ensureDeferred
async def test_redis_events_invalidate_the_entry(
    redis_server: RedisServer, redis_url: str, ports: list[IListeningPort]
) -> None:
    registry = registryFromURL(reactor, redis_url)
    first = await listen(ports, registry)
    client = clientFromString(reactor, f"masse:echo:ns=t:registry={quote(redis_url)}")
    await echoes(client)
    await warmed(registry)
    entry = resolverFor(registry, reactor).entry("t", "echo")
    assert entry is not None
    for _ in range(2):  # from the cache, then repeating that connect's attempt
        assert await echoes(client) == first.getHost().port
    assert entry.used  # the repeat was told by the watch alone
    second = await listen(ports, registry, ttl=0.5)
    await eventually(lambda: len(entry.records() or ()) == 2)  # joined
    await first.stopListening()
    await eventually(lambda: len(entry.records() or ()) == 1)  # left
    assert await echoes(client) == second.getHost().port
    second.lease.stop()
    await eventually(lambda: entry.records() is None)  # timedout: nothing left to serve


@pytest_twisted.ensureDeferred
async def test_a_warm_connect_to_a_peer_that_never_answers_times_out(memory: Counting) -> None:
    """
    Over real sockets: a peer whose accept queue is full never completes a
    handshake. A warm connect to it ends at its deadline, which its TCP
    attempt's own timeout keeps, with the deadline's message; so did the
    cold connect before it, under the connect's timer.
    """
    stuck = socket.socket()
    stuck.bind(("127.0.0.1", 0))
    stuck.listen(0)
    port = stuck.getsockname()[1]
    fillers: list[socket.socket] = []
    try:
        for _ in range(4):  # handshakes past the queue's room get no answer
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex(("127.0.0.1", port))
            fillers.append(filler)
        record = PeerRecord("t", "stuck", [f"tcp:host=127.0.0.1:port={port}"])
        lease = await memory.inner.register(record, 30)
        client = MasseClientEndpoint(reactor, "stuck", "t", registry=memory, timeout=0.5)
        expected = f"within 0.5s: gave up connecting to tcp:host=127.0.0.1:port={port}"
        for _ in ("cold", "warm"):
            with pytest.raises(NoReachablePeer) as caught:
                await client.connect(Factory.forProtocol(Collector))
            assert str(caught.value).endswith(expected)
            await warmed(memory, "stuck")
        assert memory.calls["lookup"] == 1  # the second connect was warm
        await lease.release()
    finally:
        for s in [stuck, *fillers]:
            s.close()
