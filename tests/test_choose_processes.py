"""
Choosing instances across real processes and a real Redis (and SQLite):
meta.KEY= selection, prefer.KEY= failover, an HTTP health check that
fails and recovers, masse drain, and a graceful SIGTERM with drain=.
"""

from __future__ import annotations

import json
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote as urlquote

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.endpoints import TCP4ServerEndpoint, clientFromString
from twisted.internet.protocol import Factory, Protocol
from twisted.logger import capturedLogs

from tests.endpoint_helpers import (
    REPO,
    ChildProcess,
    Collector,
    PeerProcess,
    peerEnvironment,
    peerPort,
    quote,
    spawnPeer,
)
from tests.helpers import (
    Events,
    RedisServer,
    errorsIn,
    eventsAbout,
    eventually,
    freePort,
    masse,
    newRegistry,
    readUntil,
    record,
    sleep,
    startMasse,
)
from txmasse import MasseClientEndpoint, NoReachablePeer, PeerNotFound
from txmasse.health import Health, parseCheck, runCheck, tcpCheck
from txmasse.registry import IRegistry, registryFromURL

NS = "dev"  # the masse command's namespace (tests.helpers.masse)


@pytest.fixture(params=["redis", "sqlite"])
def url(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "redis":
        server: RedisServer = request.getfixturevalue("redis_server")
        made = f"{server.url}?timeout=2"
    else:
        made = f"sqlite://{urlquote(str(tmp_path / 'registry.db'))}?timeout=2"
    yield made
    pytest_twisted.blockon(registryFromURL(reactor, made).close())


@pytest.fixture
def redis_url(redis_server: RedisServer) -> Iterator[str]:
    made = f"{redis_server.url}?timeout=2"
    yield made
    pytest_twisted.blockon(registryFromURL(reactor, made).close())


@pytest.fixture
def peers() -> Iterator[list[PeerProcess]]:
    spawned: list[PeerProcess] = []
    yield spawned
    for peer in spawned:
        peer.signal("KILL")
        pytest_twisted.blockon(peer.ended)


def described(name: str, url: str, **options: str) -> str:
    extra = "".join(f":{key}={value}" for key, value in options.items())
    return f"masse:{name}:ns={NS}:registry={quote(url)}{extra}"


async def start(peers: list[PeerProcess], url: str, name: str = "db", **options: str) -> int:
    peer = spawnPeer(described(name, url, **options), peerEnvironment(url))
    peers.append(peer)
    return await peer.ready


async def reach(url: str, name: str = "db", **options: str) -> Collector:
    client = clientFromString(reactor, described(name, url, timeout="5", **options))
    protocol: Collector = await client.connect(Factory.forProtocol(Collector))
    return protocol


async def reachedPort(url: str, name: str = "db", **options: str) -> int:
    protocol = await reach(url, name, **options)
    port = peerPort(protocol)
    assert protocol.transport is not None
    protocol.transport.loseConnection()
    return port


async def echoes(protocol: Collector, data: bytes) -> None:
    assert protocol.transport is not None
    protocol.transport.write(data)
    await eventually(lambda: protocol.received.endswith(data), timeout=5)


@pytest_twisted.ensureDeferred
async def test_meta_reaches_only_the_primary(url: str, peers: list[PeerProcess]) -> None:
    primary = await start(peers, url, **{"meta.role": "primary"})
    await start(peers, url, **{"meta.role": "replica"})
    reached = [await reachedPort(url, **{"meta.role": "primary"}) for _ in range(20)]
    assert set(reached) == {primary}
    with pytest.raises(PeerNotFound, match=r"meta\.role=witness matched none of the 2"):
        await reach(url, **{"meta.role": "witness"})
    listed = masseOK("ls", "--meta", "role=primary", "--jsonl", url=url).splitlines()
    assert [json.loads(line)["metadata"] for line in listed] == [{"role": "primary"}]
    resolved = masseOK("resolve", "db", "--meta", "role=primary", url=url)
    assert resolved == f"tcp:host=127.0.0.1:port={primary}\n"
    missed = masse("resolve", "db", "--meta", "role=witness", registry=url)
    assert missed.returncode == 1
    assert "--meta role=witness matched none of the 2 instance(s) of 'db'" in missed.stderr


@pytest_twisted.ensureDeferred
async def test_prefer_zone_fails_over_to_the_other_zone(
    redis_url: str, peers: list[PeerProcess]
) -> None:
    a = await start(peers, redis_url, ttl="60", **{"meta.zone": "a"})
    b = await start(peers, redis_url, ttl="60", **{"meta.zone": "b"})
    assert {await reachedPort(redis_url, **{"prefer.zone": "a"}) for _ in range(5)} == {a}
    assert {await reachedPort(redis_url, **{"prefer.zone": "b"}) for _ in range(5)} == {b}
    peers[0].signal("KILL")
    await peers[0].ended
    # Its lease has not expired: the connect tries zone a, is refused, falls back.
    assert {await reachedPort(redis_url, **{"prefer.zone": "a"}) for _ in range(3)} == {b}


async def connectable(url: str, name: str) -> bool:
    try:
        protocol = await reach(url, name)
    except NoReachablePeer:
        return False
    assert protocol.transport is not None
    protocol.transport.loseConnection()
    return True


@pytest_twisted.ensureDeferred
async def test_a_failing_health_page_stops_new_connections_until_it_recovers(
    redis_url: str, peers: list[PeerProcess], tmp_path: Path
) -> None:
    status = tmp_path / "status"
    status.write_text("200")
    peer = PeerProcess()
    description = described("web", redis_url, ttl="1.5", check="http\\:/health")
    args = [sys.executable, "-m", "tests.health_peer", description, str(status)]
    reactor.spawnProcess(peer, sys.executable, args, env=peerEnvironment(redis_url), path=str(REPO))
    peers.append(peer)
    await peer.ready
    registry = registryFromURL(reactor, redis_url)
    events = Events()
    await registry.watch(NS, "web", events)
    assert await connectable(redis_url, "web")
    status.write_text("503")
    failedAt = time.monotonic()
    # Watchers hear of it within one heartbeat interval (0.5 s) plus the
    # check itself; the bound here is generous, the figure is printed.
    await eventually(lambda: any(e.record.health == "critical" for e in events), timeout=5)
    heard = time.monotonic() - failedAt
    assert not await connectable(redis_url, "web")
    refused = time.monotonic() - failedAt
    print(f"failing check -> updated {heard:.3f}s, -> no new connections {refused:.3f}s")
    (sick,) = await registry.lookup(NS, "web")
    assert sick.state == "critical: GET /health: 503 Service Unavailable"
    with pytest.raises(NoReachablePeer, match="critical: GET /health: 503"):
        await reach(redis_url, "web")
    status.write_text("429")
    await eventually(lambda: events[-1].record.health == "warning", timeout=5)
    assert await connectable(redis_url, "web")  # warning: still used
    status.write_text("200")
    await eventually(lambda: events[-1].record.health == "passing", timeout=5)
    assert [e.kind for e in events] == ["updated"] * 3


async def heartbeats(registry: IRegistry, instance: str, count: int, draining: bool) -> None:
    """
    Wait for C{count} heartbeats of C{instance} (its lease's time left goes
    up), checking after each that the store says C{draining}.
    """
    deadline = time.monotonic() + 10
    last = None
    while count:
        assert time.monotonic() < deadline, f"no {count} more heartbeats with draining={draining}"
        statuses = {s.record.instance: s for s in await registry.leases(NS, "db")}
        status = statuses[instance]
        if status.record.draining == draining:
            if last is not None and status.expiresIn > last + 0.05:
                count -= 1
            last = status.expiresIn
        await sleep(0.05)  # real time: the peer's heartbeats


def masseOK(*args: str, url: str) -> str:
    result = masse(*args, registry=url)
    assert result.returncode == 0, result.stderr
    return result.stdout


@pytest_twisted.ensureDeferred
async def test_masse_drain_moves_new_connections_and_keeps_the_open_one(
    url: str, peers: list[PeerProcess]
) -> None:
    drained = await start(peers, url, ttl="1.5")
    other = await start(peers, url, ttl="1.5")
    registry: IRegistry = registryFromURL(reactor, url)
    (target,) = [
        r for r in await registry.lookup(NS, "db") if r.endpoints[0].endswith(f"port={drained}")
    ]
    client: Any = clientFromString(reactor, described("db", url))
    open_ = await client.connectToRecord(target, Factory.forProtocol(Collector))
    watcher = startMasse("watch", "db", registry=url)
    assert "present" in readUntil(watcher, "present")  # the watch is live
    out = masseOK("drain", "db", "--instance", target.instance[:12], url=url)
    shown = readUntil(watcher, "draining")
    watcher.kill()
    watcher.wait()
    assert " updated " in shown and target.instance[:12] in shown, shown
    assert out == f"db {target.instance[:12]}: draining\n"
    # The peer adopts the drain and keeps it through its own heartbeats.
    await heartbeats(registry, target.instance, 2, draining=True)
    first = {"pick": "first", "cache": "false"}  # the drained one is the first registered
    assert {await reachedPort(url, **first) for _ in range(10)} == {other}
    await echoes(open_, b"still served")
    listed = masseOK("ls", url=url)
    assert "draining" in next(line for line in listed.splitlines() if target.instance[:12] in line)
    rows = [json.loads(line) for line in masseOK("ls", "--jsonl", url=url).splitlines()]
    assert {row["instance"]: row["draining"] for row in rows}[target.instance] is True
    masseOK("undrain", "db", "--instance", target.instance[:12], url=url)
    await heartbeats(registry, target.instance, 2, draining=False)
    assert await reachedPort(url, **first) == drained
    nothing = masse("drain", "nothing", registry=url)
    assert nothing.returncode == 1 and "nothing to drain: no live instance of 'nothing'" in (
        nothing.stderr
    )
    bad = masse("ls", "--meta", "role", registry=url)
    assert bad.returncode == 2 and "--meta 'role': must be KEY=VALUE" in bad.stderr
    assert open_.transport is not None
    open_.transport.loseConnection()


class TwistdProcess(ChildProcess):
    """
    C{twistd -n masse ...}; C{ready} once its name is registered.
    """


async def startTwistd(peers: list[Any], url: str, tmp_path: Path, *options: str) -> None:
    peer = TwistdProcess()
    twistd = str(Path(sys.executable).parent / "twistd")
    args = [twistd, "-n", "--pidfile=", "masse", "--name", "db", "--ns", NS]
    args += ["--registry", url, "--factory", "tests.endpoint_helpers:Echo", *options]
    reactor.spawnProcess(peer, twistd, args, env=peerEnvironment(url), path=str(tmp_path))
    peers.append(peer)
    registry = registryFromURL(reactor, url)
    deadline = time.monotonic() + 30
    while not await registry.lookup(NS, "db"):
        assert peer.running and time.monotonic() < deadline, peer.output.decode()[-3000:]
        await sleep(0.05)  # real time: twistd starting


@pytest.mark.parametrize("how", ["serverFromString", "twistd masse"])
@pytest_twisted.ensureDeferred
async def test_sigterm_with_drain_lets_an_open_request_finish(
    redis_url: str, peers: list[Any], how: str, tmp_path: Path
) -> None:
    if how == "twistd masse":
        await startTwistd(peers, redis_url, tmp_path, "--drain", "5", "--check", "tcp")
    else:
        await start(peers, redis_url, drain="5")
    registry = registryFromURL(reactor, redis_url)
    events = Events()
    await registry.watch(NS, "db", events)
    open_ = await reach(redis_url)
    peers[0].signal("TERM")
    await eventually(lambda: len(events) == 1, timeout=5)
    assert events[0].kind == "updated" and events[0].record.draining
    assert len(await registry.lookup(NS, "db")) == 1  # the name stays while it drains
    with pytest.raises(NoReachablePeer, match="draining"):
        await reach(redis_url)
    await echoes(open_, b"the rest of the request")
    assert peers[0].running and events.kinds() == [("updated", "db")]
    assert open_.transport is not None
    open_.transport.loseConnection()
    await peers[0].ended
    # The event may reach this watcher just after the process is gone.
    await eventually(lambda: events.kinds() == [("updated", "db"), ("left", "db")], timeout=5)
    assert b"waiting up to 5s for 1 open connection(s) to close" in peers[0].output
    assert await registry.lookup(NS, "db") == []


@pytest_twisted.ensureDeferred
async def test_a_garbage_state_in_redis_is_critical_with_a_warning(
    redis_server: RedisServer, redis_url: str
) -> None:
    registry = registryFromURL(reactor, redis_url)
    good = await registry.register(record("db", namespace=NS, port=9), 5)
    fields = {**json.loads(good.record.toJSON()), "hs": "splendid", "future": [1, 2]}
    key = f"masse:{{{NS}}}:n:db"
    redis_server.command("HSET", key, good.record.instance, json.dumps(fields))
    reader = newRegistry(redis_url)
    try:
        with capturedLogs() as logs:
            (stored,) = await reader.lookup(NS, "db")
            assert stored.state == "critical: garbage health state in the record"
            client = MasseClientEndpoint(reactor, "db", NS, registry=reader, cache=False)
            leftOut = r"left out instance \w{8} \(critical: garbage health"
            with pytest.raises(NoReachablePeer, match=leftOut):
                await client.connect(Factory.forProtocol(Collector))
        assert eventsAbout(logs, "garbage health or drain state, counted as critical")
        assert errorsIn(logs) == []
    finally:
        await good.release()
        await reader.close()


class _Silent(Protocol):
    """
    Accepts a connection and never answers.
    """


@pytest_twisted.ensureDeferred
async def test_built_in_checks_over_real_sockets(ports: list[Any]) -> None:
    listening = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        Factory.forProtocol(_Silent)
    )
    ports.append(listening)
    port = listening.getHost().port
    assert await tcpCheck(reactor, "127.0.0.1", port, 1) == Health("passing")
    refused = await tcpCheck(reactor, "127.0.0.1", freePort(), 1)
    assert refused.state == "critical" and "refused" in refused.reason.lower()
    spec = parseCheck("http:/health")
    silent = spec.bind(reactor, listening.getHost(), 0.2)
    assert await runCheck(silent, reactor, 0.2) == Health("critical", "no answer within 0.2s")
    bound = parseCheck("tcp").bind(reactor, IPv4Address("TCP", "0.0.0.0", port), 1)
    assert await runCheck(bound, reactor, 1) == Health("passing")  # a wildcard: on loopback


@pytest_twisted.ensureDeferred
async def test_sigterm_with_drain_withdraws_the_name_from_sqlite(
    peers: list[Any], tmp_path: Path
) -> None:
    """
    The embedded registry stays open until a draining peer has withdrawn
    its name: watchers see it leave, not time out. (Its drain may be gone
    from the store by the time a watcher checks it: the release heard
    meanwhile explains that, tests/test_checking.py.)
    """
    url = f"sqlite:///{tmp_path}/registry.db"
    await startTwistd(peers, url, tmp_path, "--drain", "1")
    registry = registryFromURL(reactor, url)
    events = Events()
    await registry.watch(NS, "db", events)
    peers[0].signal("TERM")
    await peers[0].ended
    await eventually(lambda: ("left", "db") in events.kinds(), timeout=5)
    assert set(events.kinds()) <= {("updated", "db"), ("left", "db")}
    assert b"could not withdraw" not in peers[0].output
    assert await registry.lookup(NS, "db") == []
