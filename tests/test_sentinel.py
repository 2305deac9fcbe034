"""
The Redis registry behind Sentinel: a real failover (master killed, replica
promoted), and the guards against a stale answer, with a fake sentinel.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol, ServerFactory

from tests.certs import Authority
from tests.endpoint_helpers import portNumber
from tests.helpers import (
    Events,
    RedisServer,
    _encode,
    eventually,
    freePort,
    newRegistry,
    record,
    sleep,
)
from txmasse import RegistryUnavailable
from txmasse.registry.redis_sentinel import SentinelEndpoint

MASTER = "m"


class Sentinel(RedisServer):
    """
    A redis-server in sentinel mode watching C{master}, with a config file
    of its own (sentinels rewrite it).
    """

    def __init__(
        self,
        directory: Path,
        master: RedisServer,
        quorum: int = 2,
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ):
        directory.mkdir()
        super().__init__(directory, password=password, tls=tls)
        self.config = directory / "sentinel.conf"
        self.config.write_text(
            f"sentinel monitor {MASTER} 127.0.0.1 {master.port} {quorum}\n"
            f"sentinel down-after-milliseconds {MASTER} 1000\n"
            f"sentinel failover-timeout {MASTER} 5000\n"
            f"sentinel parallel-syncs {MASTER} 1\n"
        )

    def _portArgs(self) -> tuple[str, ...]:
        tls = ("--tls-replication", "yes") if self.tls else ()
        return (str(self.config), "--sentinel", *super()._portArgs(), *tls)

    def master(self, field: str) -> str:
        reply = self.command("SENTINEL", "master", MASTER)
        fields = dict(zip(reply[::2], reply[1::2], strict=True))
        return fields[field.encode()].decode()  # type: ignore[no-any-return]


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[tuple[RedisServer, RedisServer, list[Sentinel]]]:
    """
    A master, its replica, and three sentinels that know them and each other.
    """
    (tmp_path / "master").mkdir()
    (tmp_path / "replica").mkdir()
    master = RedisServer(tmp_path / "master")
    replica = RedisServer(
        tmp_path / "replica", extraArgs=("--replicaof", "127.0.0.1", str(master.port))
    )
    sentinels = [Sentinel(tmp_path / f"sentinel-{i}", master) for i in range(3)]
    servers = [master, replica, *sentinels]
    try:
        for server in servers:
            server.start()
        deadline = time.monotonic() + 20
        while not _ready(replica, sentinels):
            assert time.monotonic() < deadline, "the sentinels did not find each other"
            time.sleep(0.1)
        yield master, replica, sentinels
    finally:
        for server in servers:
            server.stop()


def _ready(replica: RedisServer, sentinels: list[Sentinel]) -> bool:
    info = replica.command("INFO", "replication").decode()
    return "master_link_status:up" in info and all(
        s.master("num-other-sentinels") == "2" and s.master("num-slaves") == "1" for s in sentinels
    )


async def retried(call: Callable[[], Deferred[Any]], timeout: float = 10) -> Any:
    """
    The first result of C{call} that is not L{RegistryUnavailable}.
    """
    start = time.monotonic()
    while True:
        try:
            return await call()
        except RegistryUnavailable:
            if time.monotonic() - start > timeout:
                raise
            await sleep(0.05)


def _role(server: RedisServer) -> str:
    return str(server.command("ROLE")[0].decode())


@pytest_twisted.ensureDeferred
async def test_failover(cluster: tuple[RedisServer, RedisServer, list[Sentinel]]) -> None:
    master, replica, sentinels = cluster
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    url = f"redis+sentinel://{hosts}/{MASTER}/0?timeout=2"
    peer, watcher = newRegistry(url), newRegistry(url)
    fresh = None
    try:
        for i in range(3):
            await peer.register(record(f"db-{i}"), 10)
        events = Events()
        await watcher.watch("dev", "*", events)
        # A dead sentinel first in the URL must not matter either.
        sentinels[0].stop()

        master.stop()
        killed = time.monotonic()
        # Replication is asynchronous: writes made just before the kill may
        # not be on the new master until our leases write them back.
        found: list[Any] = await retried(lambda: peer.lookup("dev", "db-0"), timeout=30)
        while not found:
            assert time.monotonic() - killed < 30, "leases not back on the new master"
            await sleep(0.05)
            found = await retried(lambda: peer.lookup("dev", "db-0"), timeout=30)
        assert [r.name for r in found] == ["db-0"]
        gap = time.monotonic() - killed
        print(f"failover: lease found again {gap:.3f}s after the master was killed")
        assert _role(replica) == "master"

        # Leases are back in the new master, the watcher sees new events,
        # and a new registry connects.
        await eventually(
            lambda: all(replica.command("HLEN", f"masse:{{dev}}:n:db-{i}") for i in range(3)),
            timeout=10,
        )
        await peer.register(record("db-new"), 10)
        await eventually(lambda: ("joined", "db-new") in events.kinds(), timeout=10)
        fresh = newRegistry(url)
        assert len(await fresh.find("dev", "db-*")) == 4
    finally:
        for registry in (peer, watcher, fresh):
            if registry is not None:
                await registry.close()


class _FakeSentinel(Protocol):
    factory: FakeSentinel

    def dataReceived(self, data: bytes) -> None:
        address, epoch = self.factory.address, self.factory.epoch
        assert self.transport is not None
        if address is None:
            self.transport.write(b"*-1\r\n")
        elif epoch is None:  # an address only, as get-master-addr-by-name gives
            self.transport.write(_encode("127.0.0.1", address))
        else:  # as SENTINEL master gives, in part
            fields = ("name", MASTER, "ip", "127.0.0.1", "port", address, "config-epoch", epoch)
            self.transport.write(_encode(*fields))


class FakeSentinel(ServerFactory[_FakeSentinel]):
    """
    A sentinel that names whatever server the test says (C{address}, a
    port), or none.
    """

    protocol = _FakeSentinel

    def __init__(self) -> None:
        self.address: int | None = None
        self.epoch: int | None = None
        self.port = 0


@pytest.fixture
def fakeSentinel() -> Iterator[FakeSentinel]:
    factory = FakeSentinel()
    port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
    factory.port = portNumber(port)
    yield factory
    pytest_twisted.blockon(port.stopListening())


@pytest.fixture
def fakeSentinels() -> Iterator[list[FakeSentinel]]:
    factories, ports = [], []
    for _ in range(3):
        factory = FakeSentinel()
        port = reactor.listenTCP(0, factory, interface="127.0.0.1")  # type: ignore[arg-type]
        factory.port = portNumber(port)
        factories.append(factory)
        ports.append(port)
    yield factories
    for port in ports:
        pytest_twisted.blockon(port.stopListening())


@pytest_twisted.ensureDeferred
async def test_the_newest_configuration_epoch_wins(
    tmp_path: Path, fakeSentinels: list[FakeSentinel]
) -> None:
    """
    Just after a failover the first sentinels asked may still name the old
    master: the answer with the newest epoch is taken, whatever the order;
    a sentinel that does not answer holds nobody up.
    """
    server = RedisServer(tmp_path)
    server.start()
    stale, paused, leader = fakeSentinels
    stale.address, stale.epoch = freePort(), 3  # the old master, dead
    leader.address, leader.epoch = server.port, 4
    silent = reactor.listenTCP(
        0,
        ServerFactory.forProtocol(Protocol),  # type: ignore[arg-type]
        interface="127.0.0.1",
    )
    hosts = ",".join(
        f"127.0.0.1:{port}" for port in (stale.port, portNumber(silent), paused.port, leader.port)
    )
    paused.address, paused.epoch = freePort(), 2
    endpoint = SentinelEndpoint(reactor, _sentinelsOf(hosts), MASTER, timeout=5)
    try:
        started = time.monotonic()
        assert await endpoint.masterAddress() == ("127.0.0.1", server.port)
        took = time.monotonic() - started
        registry = newRegistry(f"redis+sentinel://{hosts}/{MASTER}?timeout=5")
        try:
            await registry.register(record("db"), 10)
            assert server.command("HLEN", "masse:{dev}:n:db") == 1
        finally:
            await registry.close()
        print(f"master address from four sentinels, one silent: {took:.3f}s")
    finally:
        stopped = silent.stopListening()
        if stopped is not None:
            await stopped
        server.stop()


def _sentinelsOf(hosts: str) -> list[tuple[str, int]]:
    return [(host, int(port)) for host, _, port in (h.rpartition(":") for h in hosts.split(","))]


@pytest_twisted.ensureDeferred
async def test_stale_answers(tmp_path: Path, fakeSentinel: FakeSentinel) -> None:
    """
    A replica named by a sentinel is refused; a master demoted under an
    open connection (READONLY) is left for the one the sentinels name now.
    """
    (tmp_path / "a").mkdir()
    (tmp_path / "b").mkdir()
    a, b = RedisServer(tmp_path / "a"), RedisServer(tmp_path / "b")
    a.start()
    b.start()
    # Each call's deadline (3 s) outlasts the longest retry delay (about 1 s).
    registry = newRegistry(f"redis+sentinel://127.0.0.1:{fakeSentinel.port}/{MASTER}?timeout=3")
    try:
        with pytest.raises(RegistryUnavailable, match=f"does not know master '{MASTER}'"):
            await registry.lookup("dev", "db")

        b.command("REPLICAOF", "127.0.0.1", a.port)
        fakeSentinel.address = b.port
        with pytest.raises(RegistryUnavailable, match="is a replica"):
            await registry.register(record("db"), 10)
        assert b.command("DBSIZE") == 0

        fakeSentinel.address = a.port
        await retried(lambda: registry.register(record("db"), 60))
        assert a.command("HLEN", "masse:{dev}:n:db") == 1

        # Failover by hand: a becomes b's replica but keeps its clients. The
        # first write there is refused (READONLY), and made again on the
        # master the sentinels name now, within the call's deadline.
        b.command("REPLICAOF", "NO", "ONE")
        a.command("REPLICAOF", "127.0.0.1", b.port)
        fakeSentinel.address = b.port
        readonlyBefore = a.command("INFO", "errorstats").decode().count("READONLY")
        await registry.register(record("web"), 10)
        assert b.command("HLEN", "masse:{dev}:n:web") == 1
        assert a.command("INFO", "errorstats").decode().count("READONLY") > readonlyBefore

        # Back again, with the scripts gone from the demoted one: EVALSHA
        # finds none (NOSCRIPT), EVAL is refused (READONLY), and that too
        # sends the call to the new master.
        a.command("REPLICAOF", "NO", "ONE")
        b.command("REPLICAOF", "127.0.0.1", a.port)
        b.command("SCRIPT", "FLUSH")
        fakeSentinel.address = a.port
        await registry.register(record("api"), 10)
        assert a.command("HLEN", "masse:{dev}:n:api") == 1
    finally:
        await registry.close()
        a.stop()
        b.stop()


@pytest_twisted.ensureDeferred
async def test_user_not_allowed_role(tmp_path: Path, fakeSentinel: FakeSentinel) -> None:
    """
    A user without @admin (so without ROLE) still connects.
    """
    server = RedisServer(tmp_path)
    server.start()
    server.command("ACL", "SETUSER", "app", "on", ">pw", "~*", "&*", "+@all", "-@admin")
    fakeSentinel.address = server.port
    url = f"redis+sentinel://app:pw@127.0.0.1:{fakeSentinel.port}/{MASTER}?timeout=2"
    registry = newRegistry(url)
    try:
        await registry.register(record("db"), 10)
        assert server.command("HLEN", "masse:{dev}:n:db") == 1
    finally:
        await registry.close()
        server.stop()


def test_endpoint_repr() -> None:
    endpoint = SentinelEndpoint(reactor, [("h", 1), ("::1", 2)], MASTER)
    assert repr(endpoint) == "<SentinelEndpoint m via h:1,::1:2>"


@pytest_twisted.ensureDeferred
async def test_sentinels_with_a_password_over_tls(tmp_path: Path) -> None:
    """
    rediss+sentinel: verified TLS to the sentinel and to the master, and
    the sentinel's own password from sentinel_password=.
    """
    authority = Authority.create(tmp_path)
    certificate = (*authority.issue("127.0.0.1"), authority.caPath)
    (tmp_path / "master").mkdir()
    master = RedisServer(tmp_path / "master", tls=certificate)
    master.start()
    sentinel = Sentinel(tmp_path / "sentinel", master, quorum=1, password="s3cret", tls=certificate)
    sentinel.start()
    where = f"127.0.0.1:{sentinel.port}/{MASTER}/0"
    ca = f"ca={authority.caPath}"
    good = newRegistry(f"rediss+sentinel://{where}?sentinel_password=s3cret&{ca}")
    wrong = newRegistry(f"rediss+sentinel://{where}?sentinel_password=nope&{ca}&timeout=1")
    stranger = Authority.create(tmp_path, name="stranger CA")
    untrusted = newRegistry(
        f"rediss+sentinel://{where}?sentinel_password=s3cret&ca={stranger.caPath}&timeout=1"
    )
    try:
        lease = await good.register(record("db"), 10)
        assert await good.lookup("dev", "db") == [lease.record]
        assert master.command("HLEN", "masse:{dev}:n:db") == 1
        assert "s3cret" not in good.url and "sentinel_password=***" in good.url

        with pytest.raises(RegistryUnavailable) as caught:
            await wrong.lookup("dev", "db")
        assert "WRONGPASS" in str(caught.value) or "invalid password" in str(caught.value)
        assert "nope" not in str(caught.value)

        with pytest.raises(RegistryUnavailable, match="certificate verify failed"):
            await untrusted.lookup("dev", "db")
    finally:
        for registry in (good, wrong, untrusted):
            await registry.close()
        sentinel.stop()
        master.stop()


def _following(replica: RedisServer, master: RedisServer, sentinels: list[Sentinel]) -> bool:
    """
    Whether C{replica} replicates C{master} and every sentinel names C{master}.
    """
    try:
        info = replica.command("INFO", "replication").decode()
        return "master_link_status:up" in info and all(
            s.master("port") == str(master.port) and "failover" not in s.master("flags")
            for s in sentinels
        )
    except OSError:
        return False


def _holdsAll(server: RedisServer, names: list[str]) -> bool:
    return all(server.command("HLEN", f"masse:{{dev}}:n:{name}") for name in names)


FAILOVER_TTL = 4.5
"""
Above the documented minimum for Sentinel (docs/reliability.md: 1.5 times the
time to a new master, about 2 s here with a sentinel paused), and below what a
client that waits out a paused sentinel's deadline (5 s) survives.
"""


@pytest_twisted.ensureDeferred
async def test_failovers_raise_no_false_timeouts(
    cluster: tuple[RedisServer, RedisServer, list[Sentinel]],
) -> None:
    """
    Master SIGKILLed with short leases live, three times over, the first
    time with the first sentinel of the URL paused: the new master is found
    promptly, no watcher hears a false timedout or left, and no find misses
    a live peer (it may fail while there is no master).
    """
    master, replica, sentinels = cluster
    hosts = ",".join(f"127.0.0.1:{s.port}" for s in sentinels)
    url = f"redis+sentinel://{hosts}/{MASTER}/0?timeout=5"
    holder, watcher = newRegistry(url), newRegistry(url)
    names = [f"p{i:02d}" for i in range(12)]
    figures = []
    try:
        for name in names:
            await holder.register(record(name), FAILOVER_TTL)
        events = Events()
        await watcher.watch("dev", "*", events)
        for run in range(3):
            await eventually(partial(_holdsAll, replica, names), timeout=10)
            if run == 0:
                sentinels[0].pause()  # answers nothing: must not hold up the others
            master.stop()  # SIGKILL
            killed = time.monotonic()
            back, promoted, named, short = None, None, None, []
            # Long enough for any lease the outage let lapse to be announced.
            while time.monotonic() - killed < FAILOVER_TTL + 0.5:
                try:
                    found = await watcher.find("dev", "p*")
                except RegistryUnavailable:
                    found = None
                if promoted is None and _role(replica) == "master":
                    promoted = time.monotonic() - killed
                if named is None and any(
                    s.master("port") == str(replica.port) for s in sentinels[1:]
                ):  # (not the one paused in the first run)
                    named = time.monotonic() - killed
                if found is not None:
                    if back is None:
                        back = time.monotonic() - killed
                    if len(found) != len(names):
                        short.append(len(found))
                await sleep(0.05)
            if run == 0:
                sentinels[0].resume()
            assert back is not None, "no master reached"
            removals = [e for e in events if e.kind in ("timedout", "left")]
            times = [round(t if t is not None else -1, 2) for t in (promoted, named, back)]
            figures.append((*times, len(removals), short))
            assert removals == [] and short == [], figures
            assert _role(replica) == "master"
            # The old master comes back as the new one's replica: the next run kills the new one.
            master.extraArgs = ("--replicaof", "127.0.0.1", str(replica.port))
            master.start()
            master, replica = replica, master
            deadline = time.monotonic() + 15
            while not _following(replica, master, sentinels):
                assert time.monotonic() < deadline, "the cluster did not settle"
                await sleep(0.1)
        print(
            "failovers (seconds to the replica's promotion, to a sentinel naming it, "
            "to a find answered, "
            "false removals, short finds):",
            figures,
        )
        assert [e.kind for e in events] == [], events
    finally:
        await holder.close()
        await watcher.close()


@pytest_twisted.ensureDeferred
async def test_sentinel_user_allowed_only_the_address(tmp_path: Path) -> None:
    """
    A sentinel ACL user that may not run SENTINEL MASTER (so no epoch) is
    still asked for the address alone.
    """
    (tmp_path / "master").mkdir()
    master = RedisServer(tmp_path / "master")
    master.start()
    sentinel = Sentinel(tmp_path / "sentinel", master, quorum=1)
    with sentinel.config.open("a") as config:
        config.write("user default on nopass +@all\n")
        config.write("user sam on >sam-pw-1234 -@all +auth +sentinel|get-master-addr-by-name\n")
    sentinel.start()
    url = (
        f"redis+sentinel://127.0.0.1:{sentinel.port}/{MASTER}"
        "?sentinel_username=sam&sentinel_password=sam-pw-1234&timeout=2"
    )
    registry = newRegistry(url)
    try:
        await registry.register(record("db"), 10)
        assert master.command("HLEN", "masse:{dev}:n:db") == 1
    finally:
        await registry.close()
        sentinel.stop()
        master.stop()
