"""
The fault suite: real redis-server and peer processes that the tests kill,
pause and cut off, and what txmasse promises through each fault.

  - Redis killed, kept down 5 s while peers die or leave, then started
    empty: live leases are written back within one heartbeat, watchers see
    each change once with the kind the design gives it, a group converges.
  - Redis paused: every call fails with RegistryUnavailable within its
    deadline, none is left waiting, heartbeats resume after SIGCONT.
  - A peer SIGKILLed under a connected client: a ClientService on a masse:
    endpoint fails over to the other instance well before the dead one
    times out, and the timeout is announced within ttl + 1 s.
  - Connections between registry and Redis cut again and again: no lease
    lost, no event repeated, missed ones delivered once.
"""

from __future__ import annotations

import random
import time
from typing import Any

import pytest_twisted
from twisted.application.internet import ClientService
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, quoteStringArgument
from twisted.internet.protocol import Factory
from twisted.logger import capturedLogs
from twisted.protocols import amp

from examples.group_rpc import Hello
from tests.endpoint_helpers import (
    Collector,
    Recording,
    peerEnvironment,
    peerPort,
    spawnPeer,
)
from tests.helpers import (
    Events,
    RedisServer,
    Workers,
    assertNoErrors,
    clientCount,
    eventually,
    gather,
    newRegistry,
    record,
    sleep,
)
from txmasse import MasseClientEndpoint, PeerGroup, RegistryUnavailable, registryFromURL
from txmasse.registry.interface import EventKind, PeerEvent

NS = "t"
GRACE = 3.0
"""Seconds a watcher waits for a vanished instance to be written back."""


# Helpers


def hashKey(name: str) -> str:
    return f"masse:{{{NS}}}:n:{name}"


def stored(server: RedisServer, name: str, instance: str) -> bool:
    return bool(server.command("HEXISTS", hashKey(name), instance) == 1)


def expiry(server: RedisServer, name: str, instance: str) -> float | None:
    """
    The lease's expiry in Redis (ms, server clock), or None if it has none.
    """
    score = server.command("ZSCORE", f"masse:{{{NS}}}:exp", f"{name}/{instance}")
    return None if score is None else float(score)


def byInstance(events: list[PeerEvent]) -> dict[str, list[str]]:
    log: dict[str, list[str]] = {}
    for event in events:
        log.setdefault(event.record.instance, []).append(str(event.kind))
    return log


# Redis killed for 5 s, started empty


@pytest_twisted.ensureDeferred
async def test_redis_down_five_seconds_then_empty(redis_server: RedisServer) -> None:
    """
    Before the outage: four worker processes, a watcher, a group connected
    to every worker, and a lease of this process. During it (5 s): one
    worker is SIGKILLed, one is stopped cleanly (its release fails: Redis
    is down). Redis then comes back empty.

    What the design promises: the surviving leases are written back within
    one heartbeat interval; the two workers whose records vanished without a
    trace count as timed out once the three-second grace has passed (no
    tombstone says they left); survivors cause no event; a lease released
    once written back is seen as left; a name registered just after the
    restart, while the watcher is still reconnecting, is seen joined once;
    the group ends with exactly the live workers, its connections to the
    survivors untouched by the outage.
    """
    ttl = 6.0  # heartbeats every 2 s: written back within that
    workers = Workers(redis_server.url + "?timeout=1", ttl)
    watcher = newRegistry(redis_server.url + "?timeout=1")
    groupRegistry = newRegistry(redis_server.url + "?timeout=1")
    other = newRegistry(redis_server.url + "?timeout=1")
    late = newRegistry(redis_server.url + "?timeout=1")
    events = Events()
    group = PeerGroup(
        groupRegistry, NS, "out-*", Factory.forProtocol(amp.AMP), retryPolicy=lambda n: 0.1
    )
    removed: list[str] = []
    group.onPeerRemoved(lambda peer, protocol: removed.append(peer.instance))
    try:
        subscription = await watcher.watch(NS, "*", events)
        started = await gather([workers.start(f"out-{i}") for i in range(1, 5)])
        ids = [instance for _, instance in started]
        leaving = await other.register(record("leaving", namespace=NS), ttl)
        group.startService()
        await eventually(lambda: {r.instance for r in group.connections} == set(ids), 10)
        await eventually(lambda: len(events) == 5)
        assert {r.instance for r in subscription.peers} == {*ids, leaving.record.instance}
        events.clear()
        before = dict(group.connections)

        # The outage.
        redis_server.stop()
        down = time.monotonic()
        (killed, killedId), (stopped, stoppedId) = started[0], started[1]
        survivors = {started[2][1]: "out-3", started[3][1]: "out-4"}
        killed.signal("KILL")
        stopped.signal("TERM")  # releasing fails within its 1 s deadline; then it exits
        await killed.ended
        await stopped.ended
        await sleep(5.0 - (time.monotonic() - down))
        assert events == []

        redis_server.start()
        back = time.monotonic()
        assert redis_server.command("DBSIZE") == 0
        newcomer = await late.register(record("newcomer", namespace=NS), ttl)
        expected = {**survivors, leaving.record.instance: "leaving"}
        await eventually(
            lambda: all(stored(redis_server, name, i) for i, name in expected.items()),
            timeout=ttl,
        )
        recovered = time.monotonic() - back
        print(f"\nleases back {recovered:.3f}s after Redis returned (heartbeat every {ttl / 3:g}s)")
        assert recovered < ttl / 3, f"leases took {recovered:.2f}s to come back"
        await leaving.release()

        want = {
            killedId: ["timedout"],
            stoppedId: ["timedout"],
            leaving.record.instance: ["left"],
            newcomer.record.instance: ["joined"],
        }
        await eventually(lambda: byInstance(events) == want, timeout=GRACE + 3)
        settled = time.monotonic() - back
        print(f"watcher settled {settled:.3f}s after Redis returned: {events.kinds()}")
        live = {r.instance for r in await watcher.find(NS, "*")}
        assert live == {*survivors, newcomer.record.instance}
        assert {r.instance for r in subscription.peers} == live

        # The group: exactly the live workers, the survivors' connections kept.
        await eventually(lambda: {r.instance for r in group.peers} == set(survivors), 2)
        assert {r.instance for r in group.connections} == set(survivors)
        for peer, protocol in group.connections.items():
            assert before[peer] is protocol
        assert sorted(removed) == sorted([killedId, stoppedId])
        answers = await group.callAll(Hello, callTimeout=5, sender="test")
        assert sorted(str(a["answer"]).split(" ")[0] for a in answers.values()) == [  # type: ignore[index]
            "out-3",
            "out-4",
        ]
        await sleep(0.5)  # nothing more arrives late
        assert byInstance(events) == want
    finally:
        await group.stopService()
        await workers.stopAll()
        for registry in (watcher, groupRegistry, other, late):
            await registry.close()


# Redis paused


@pytest_twisted.ensureDeferred
async def test_paused_redis_leaves_no_call_waiting(redis_server: RedisServer) -> None:
    """
    With Redis stopped (SIGSTOP), connections stay open and nothing answers:
    every kind of call, on a connection that was ready and on one still
    being set up, fails with RegistryUnavailable within its deadline, and
    no Deferred is left waiting. After SIGCONT the lease's expiry moves
    forward again.
    """
    deadline = 0.5
    url = f"{redis_server.url}?timeout={deadline:g}"
    registry = newRegistry(url)
    lease = await registry.register(record("db", namespace=NS), 1.5)
    spare = await registry.register(record("spare", namespace=NS), 30)
    instance = lease.record.instance
    before = expiry(redis_server, "db", instance)
    assert before is not None
    fresh = None
    with capturedLogs() as logs:
        redis_server.pause()
        try:
            fresh = newRegistry(url)  # connects, but its setup gets no answer
            client = MasseClientEndpoint(reactor, "db", NS, registry, timeout=30)
            usage = PeerEvent(EventKind.CONNECTED, lease.record, "test:1")
            calls = {
                "lookup": lambda: registry.lookup(NS, "db"),
                "find": lambda: registry.find(NS, "*"),
                "leases": lambda: registry.leases(NS, "*"),
                "register": lambda: registry.register(record("web", namespace=NS), 5),
                "watch": lambda: registry.watch(NS, "*", print),
                "refresh": lease.refresh,
                "update": lambda: lease.update(lease.record),
                "release": spare.release,
                "report": lambda: registry.report(usage),
                "connect": lambda: client.connect(Factory.forProtocol(Collector)),
                "fresh lookup": lambda: fresh.lookup(NS, "db"),
                "fresh watch": lambda: fresh.watch(NS, "*", print),
                "fresh register": lambda: fresh.register(record("api", namespace=NS), 5),
            }
            started = time.monotonic()
            outcomes: dict[str, tuple[float, Any]] = {}

            def done(result: Any, name: str) -> None:
                outcomes[name] = (time.monotonic() - started, result)

            pending = [call().addBoth(done, name) for name, call in calls.items()]
            await eventually(lambda: len(outcomes) == len(calls), timeout=deadline + 1.0)
            assert all(d.called for d in pending)
            for name, (elapsed, result) in sorted(outcomes.items()):
                assert getattr(result, "type", None) is RegistryUnavailable, (name, result)
                assert f"no answer within {deadline:g}s" in result.getErrorMessage(), name
                assert elapsed < deadline + 0.6, f"{name} took {elapsed:.2f}s"
            slowest = max(elapsed for elapsed, _ in outcomes.values())
            print(f"\n{len(calls)} calls on a paused Redis all failed within {slowest:.3f}s")
            await eventually(
                lambda: any("heartbeat failed" in str(e.get("log_format")) for e in logs),
                timeout=2,
            )
        finally:
            redis_server.resume()
        resumed = time.monotonic()

        # Heartbeats resume: the expiry moves forward, and keeps moving.
        def moved(than: float) -> bool:
            now = expiry(redis_server, "db", instance)
            return now is not None and now > than

        took = await eventually(lambda: moved(before), timeout=2)
        print(f"heartbeat landed {took:.3f}s after SIGCONT")
        first = expiry(redis_server, "db", instance)
        assert first is not None
        await eventually(lambda: moved(first), timeout=2)
        assert [r.instance for r in await registry.lookup(NS, "db")] == [instance]
        assert [r.instance for r in await fresh.lookup(NS, "db")] == [instance]
        assert time.monotonic() - resumed < 4
    await registry.close()
    if fresh is not None:
        await fresh.close()
    assertNoErrors(logs)


# A peer killed under a connected client


def masse(name: str, url: str, **options: str) -> str:
    extra = "".join(f":{key}={value}" for key, value in options.items())
    return f"masse:{name}:ns={NS}:registry={quoteStringArgument(url)}{extra}"


@pytest_twisted.ensureDeferred
async def test_client_service_fails_over_from_a_killed_peer(redis_server: RedisServer) -> None:
    """
    Two echo processes share a name (ttl 1 s); a ClientService on a masse:
    endpoint is connected to one. SIGKILL it: the service is connected to
    the other, and echoing, well before the dead one's lease runs out; the
    watcher hears it timed out within ttl + 1 s.
    """
    ttl = 1.0
    url = redis_server.url + "?timeout=2"
    env = peerEnvironment(url)
    peers = [spawnPeer(masse("echo", url, ttl=f"{ttl:g}"), env) for _ in range(2)]
    watcher = newRegistry(url)
    events = Events()
    arrived: list[float] = []

    def heard(event: PeerEvent) -> None:
        arrived.append(time.monotonic())
        events(event)

    clients = Recording(Collector)
    service = ClientService(
        clientFromString(reactor, masse("echo", url, timeout="5")),
        clients,
        retryPolicy=lambda attempt: 0.05,
    )
    try:
        ports = [await peer.ready for peer in peers]
        await watcher.watch(NS, "echo", heard)
        instances = {}
        for found in await watcher.lookup(NS, "echo"):
            port = int(found.endpoints[0].rpartition("port=")[2])
            instances[port] = found.instance
        assert sorted(instances) == sorted(ports)
        service.startService()
        protocol = await service.whenConnected()
        victimPort = peerPort(protocol)
        victim = peers[ports.index(victimPort)]
        survivorPort = ports[1 - ports.index(victimPort)]

        def echoing() -> bool:
            last = clients.built[-1]
            return last.transport is not None and peerPort(last) == survivorPort

        victim.signal("KILL")
        killed = time.monotonic()
        await eventually(echoing, timeout=ttl)
        connected = time.monotonic() - killed
        last = clients.built[-1]
        assert isinstance(last, Collector) and last.transport is not None
        last.transport.write(b"still here")
        await eventually(lambda: last.received == b"still here", timeout=ttl)
        failover = time.monotonic() - killed
        await eventually(lambda: len(events) == 1, timeout=ttl + 2)
        detected = arrived[0] - killed
        print(
            f"\nClientService connected to the survivor {connected:.3f}s after SIGKILL, "
            f"echo back at {failover:.3f}s; timedout announced at {detected:.3f}s (ttl {ttl:g}s)"
        )
        assert [(e.kind, e.record.instance) for e in events] == [
            (EventKind.TIMEDOUT, instances[victimPort])
        ]
        assert detected <= ttl + 1
        assert failover < detected
        assert len(clients.built) == 2  # one reconnect, straight to the survivor
    finally:
        await service.stopService()
        for peer in peers:
            peer.signal("KILL")
            await peer.ended
        await watcher.close()
        await registryFromURL(reactor, url).close()  # the one the masse: client used


# Connections cut again and again


@pytest_twisted.ensureDeferred
async def test_cut_connections_lose_no_lease_and_repeat_no_event(
    redis_server: RedisServer,
) -> None:
    """
    For 3 s, every connection to Redis is killed (CLIENT KILL) every
    0.25 s while leases of 1.5 s come and go on two registries. No lease
    is ever lost (no timedout), the watcher's log for each instance is
    exactly what happened to it (joined, then left if it was released),
    missed events included, each once.

    A call may still miss its deadline on a loaded machine; what it did is
    then unknown, and its instance may only close once, with either kind.
    """
    url = redis_server.url + "?timeout=2"
    peers = [newRegistry(url), newRegistry(url)]
    watcher = newRegistry(url)
    events = Events()
    rng = random.Random(7)
    live: dict[str, Any] = {}
    released: set[str] = set()
    born: dict[str, float] = {}
    unsure: set[str] = set()
    kills = 0
    with capturedLogs() as logs:
        try:
            subscription = await watcher.watch(NS, "*", events)
            for i in range(4):
                lease = await peers[i % 2].register(record(f"cut-{i}", namespace=NS), 1.5)
                live[lease.record.instance] = lease
                born[lease.record.instance] = time.monotonic()
            stop = time.monotonic() + 3.0
            n = 4
            while time.monotonic() < stop:
                for kind in ("normal", "pubsub"):
                    kills += redis_server.command("CLIENT", "KILL", "TYPE", kind)
                action = rng.random()
                old = [i for i in live if time.monotonic() - born[i] > 1.0]
                if action < 0.4 and old:
                    instance = rng.choice(old)
                    try:
                        await live.pop(instance).release()
                    except RegistryUnavailable:
                        unsure.add(instance)
                    else:
                        released.add(instance)
                elif action < 0.8:
                    attempt = record(f"cut-{n}", namespace=NS)
                    n += 1
                    try:
                        lease = await peers[n % 2].register(attempt, 1.5)
                    except RegistryUnavailable:
                        unsure.add(attempt.instance)
                    else:
                        live[lease.record.instance] = lease
                        born[lease.record.instance] = time.monotonic()
                await sleep(0.25)
            await sleep(2.0)  # longer than a ttl: a lost lease would time out now
            want = {i: ["joined", "left"] for i in released}
            want.update({i: ["joined"] for i in live})
            either: list[list[str]] = [[], ["joined", "left"], ["joined", "timedout"]]

            def exact() -> bool:
                log = byInstance(events)
                sure = {i: kinds for i, kinds in log.items() if i not in unsure}
                return sure == want and all(log.get(i, []) in either for i in unsure)

            await eventually(exact, timeout=5)
            assert {r.instance for r in await watcher.find(NS, "*")} == set(live)
            assert {r.instance for r in subscription.peers} == set(live)
            print(
                f"\n{kills} connections killed; {n} leases, {len(released)} released, "
                f"{len(events)} events, none lost or repeated; {len(unsure)} calls missed "
                "their deadline"
            )
        finally:
            for registry in (*peers, watcher):
                await registry.close()
    assert kills >= 20
    assertNoErrors(logs)


# A crashed lease stays dead.


@pytest_twisted.ensureDeferred
async def test_stopped_lease_stays_dead_after_a_reconnect(redis_server: RedisServer) -> None:
    registry = newRegistry(redis_server.url + "?timeout=1")
    watcher = newRegistry(redis_server.url + "?timeout=1")
    events = Events()
    try:
        await watcher.watch(NS, "*", events)
        lease = await registry.register(record("db", namespace=NS), 0.5)
        lease.stop()  # as a crash would
        await eventually(lambda: len(events) == 2, timeout=3)
        clients = clientCount(redis_server)
        redis_server.command("CLIENT", "KILL", "TYPE", "normal")
        await eventually(lambda: clientCount(redis_server) == clients, timeout=5)
        # A lease written after the reconnect is heard after anything the
        # reconnect wrote back.
        later = await registry.register(record("later", namespace=NS), 5)
        await later.release()
        await eventually(lambda: len(events) == 4, timeout=3)
        assert events.kinds() == [
            ("joined", "db"),
            ("timedout", "db"),
            ("joined", "later"),
            ("left", "later"),
        ]
        assert await watcher.lookup(NS, "db") == []
        assert registry._leases == set()
    finally:
        await registry.close()
        await watcher.close()
