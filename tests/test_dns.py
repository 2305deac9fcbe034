"""
C{masse dns} as a user runs it: a real process answering from a real
redis-server about real peer processes, asked with C{twisted.names.client}
and with C{dig}, over UDP and TCP.
"""

from __future__ import annotations

import socket
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.names import dns

from tests.conftest import RedisServer, sleep
from tests.dns_helpers import LineProcess, addresses, ask, dig, payloads, register, startDNS
from tests.endpoint_helpers import peerEnvironment, quote, spawnPeer


@pytest.fixture(scope="module")
def shared(tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, int]]:
    """
    One redis-server and one C{masse dns} for the module (TTL 1 s); each
    test uses namespaces of its own.
    """
    redis = RedisServer(tmp_path_factory.mktemp("redis"))
    redis.start()
    url = f"{redis.url}?timeout=2"
    process, port = pytest_twisted.blockon(Deferred.fromCoroutine(startDNS(url, "--ttl", "1")))
    yield url, port
    process.signal("KILL")
    pytest_twisted.blockon(process.ended)
    redis.stop()
    assert b"Traceback" not in process.output, process.output.decode()


@pytest.fixture
def children() -> Iterator[list[LineProcess]]:
    made: list[LineProcess] = []
    yield made
    for child in made:
        child.signal("KILL")
        pytest_twisted.blockon(child.ended)


def rows(digOutput: str) -> list[list[str]]:
    """
    The resource records in dig's output, each split into words.
    """
    return [line.split() for line in digOutput.splitlines() if line and line[0] != ";"]


def rcode(message: dns.Message) -> int:
    return int(message.rCode)


@pytest_twisted.ensureDeferred
async def test_a_srv_txt_of_a_listening_peer(
    shared: tuple[str, int], children: list[LineProcess]
) -> None:
    url, port = shared
    peer = spawnPeer(
        f"masse:name=Web:ns=t1:registry={quote(url)}"
        ":interface=127.0.0.1:meta.role=front:meta.zone=a",
        peerEnvironment(url),
    )
    try:
        peerPort = await peer.ready
        for tcp in (False, True):
            answer = await ask(port, "web.t1.masse", dns.A, tcp=tcp)
            assert (rcode(answer), answer.auth, addresses(answer)) == (dns.OK, True, ["127.0.0.1"])
            assert answer.answers[0].ttl == 1
            srv = await ask(port, "_web._tcp.T1.masse", dns.SRV, tcp=tcp)
            [record] = payloads(srv)
            target = record.target.name.decode()
            assert (record.priority, record.port) == (0, peerPort)
            assert target.endswith(".web.t1.masse") and len(target.split(".")[0]) == 32
            assert addresses(await ask(port, target, dns.A, tcp=tcp)) == ["127.0.0.1"]
            [txt] = payloads(await ask(port, "web.t1.masse", dns.TXT, tcp=tcp))
            assert txt.data == [b"role=front", b"zone=a"]
        assert (await dig(port, "+short", "web.t1.masse")).split() == ["127.0.0.1"]
        shortSRV = await dig(port, "+short", "+tcp", "_web._tcp.t1.masse", "SRV")
        assert shortSRV.split() == ["0", "1", str(peerPort), target + "."]
        assert await dig(port, "+short", "web.t1.masse", "TXT") == '"role=front" "zone=a"\n'
        full = await dig(port, "_web._tcp.t1.masse", "SRV")
        assert "status: NOERROR" in full and " aa" in full.split("flags:")[1].split(";")[0]
        assert [target + ".", "1", "IN", "A", "127.0.0.1"] in rows(full)  # additional
    finally:
        peer.signal("TERM")
        await peer.ended


@pytest_twisted.ensureDeferred
async def test_nxdomain_nodata_refused(
    shared: tuple[str, int], children: list[LineProcess]
) -> None:
    url, port = shared
    process, _ = await register(url, "t2", "db", "tcp:host=10.1.2.3:port=5432")
    children.append(process)
    for tcp in (False, True):
        missing = await ask(port, "nope.t2.masse", dns.A, tcp=tcp)
        assert (rcode(missing), missing.auth, missing.answers) == (dns.ENAME, True, [])
        [soa] = missing.authority
        assert (soa.type, soa.name.name) == (dns.SOA, b"masse")
        nodata = await ask(port, "db.t2.masse", dns.AAAA, tcp=tcp)
        assert (rcode(nodata), nodata.answers) == (dns.OK, [])
        assert [r.type for r in nodata.authority] == [dns.SOA]
        outside = await ask(port, "example.com", dns.A, tcp=tcp)
        assert (rcode(outside), outside.answers) == (dns.EREFUSED, [])
    text = await dig(port, "nope.t2.masse")
    assert "status: NXDOMAIN" in text
    assert ["masse.", "1", "IN", "SOA", "masse.", "hostmaster.masse."] in [
        row[:6] for row in rows(text)
    ]
    assert "status: REFUSED" in await dig(port, "+tcp", "www.example.com")
    assert "status: NXDOMAIN" in await dig(port, "nobody-here.masse")  # empty namespace
    assert "status: NOERROR" in await dig(port, "masse", "SOA")


@pytest_twisted.ensureDeferred
async def test_two_instances_shuffled_and_ipv6(
    shared: tuple[str, int], children: list[LineProcess]
) -> None:
    url, port = shared
    for endpoints in (
        ["tcp:host=127.0.0.2:port=80", "tcp:host=\\:\\:1:port=80"],
        ["tcp:127.0.0.3:81", "unix:path=/tmp/x.sock"],
    ):
        process, _ = await register(url, "t3", "api", *endpoints)
        children.append(process)
    orders = set()
    for _ in range(64):
        orders.add(tuple(addresses(await ask(port, "api.t3.masse"))))
        if len(orders) == 2:
            break
    assert orders == {("127.0.0.2", "127.0.0.3"), ("127.0.0.3", "127.0.0.2")}
    [aaaa] = payloads(await ask(port, "api.t3.masse", dns.AAAA))
    assert socket.inet_ntop(socket.AF_INET6, aaaa.address) == "::1"
    assert sorted((await dig(port, "+short", "api.t3.masse", "A")).split()) == [
        "127.0.0.2",
        "127.0.0.3",
    ]
    srv = payloads(await ask(port, "_api._tcp.t3.masse", dns.SRV, tcp=True))
    assert sorted(record.port for record in srv) == [80, 81]


@pytest_twisted.ensureDeferred
async def test_killed_instance_gone_within_ttl_released_one_promptly(
    shared: tuple[str, int], children: list[LineProcess]
) -> None:
    url, port = shared
    killed, _ = await register(url, "t4", "job", "tcp:host=127.0.0.4:port=9", ttl="1")
    released, _ = await register(url, "t4", "job", "tcp:host=127.0.0.5:port=9", ttl="10")
    children += [killed, released]
    assert sorted(addresses(await ask(port, "job.t4.masse"))) == ["127.0.0.4", "127.0.0.5"]

    current: list[str] = []

    async def poll(expected: list[str], bound: float) -> float:
        start = time.monotonic()
        while True:
            current[:] = sorted(addresses(await ask(port, "job.t4.masse")))
            if current == expected:
                return time.monotonic() - start
            assert time.monotonic() - start < bound, current
            await sleep(0.01)

    killed.signal("KILL")
    gone = await poll(["127.0.0.5"], bound=1 + 1)  # lease ttl + 1 s
    released.signal("TERM")
    left = await poll([], bound=5)
    print(f"SIGKILLed instance gone after {gone:.3f}s; released one after {left * 1000:.0f} ms")
    assert rcode(await ask(port, "job.t4.masse")) == dns.ENAME


@pytest_twisted.ensureDeferred
async def test_registry_down_stale_then_servfail(tmp_path: Path) -> None:
    redis = RedisServer(tmp_path)
    redis.start()
    url = f"{redis.url}?timeout=1"
    dnsProcess, port = await startDNS(url, "--stale", "1")
    peer, _ = await register(url, "t5", "db", "tcp:host=10.9.9.9:port=1")
    try:
        assert addresses(await ask(port, "db.t5.masse")) == ["10.9.9.9"]
        redis.stop()
        codes: list[int] = []

        async def failing() -> bool:
            codes.append(rcode(await ask(port, "db.t5.masse")))
            return codes[-1] == dns.ESERVER

        start = time.monotonic()
        while not await failing():
            assert time.monotonic() - start < 15, codes
        assert set(codes) <= {dns.OK, dns.ESERVER}, codes
        assert rcode(await ask(port, "db.t5.masse", tcp=True)) == dns.ESERVER
        redis.start()  # back, empty: the peer registers again, the watch catches up
        start = time.monotonic()
        while addresses(await ask(port, "db.t5.masse")) != ["10.9.9.9"]:
            assert time.monotonic() - start < 20
    finally:
        for process in (peer, dnsProcess):
            process.signal("KILL")
            await process.ended
        redis.stop()
