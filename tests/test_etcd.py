"""
The etcd registry on one member of the tests' own: its URLs, its keys and
leases in etcd, left versus timed out, garbage in the store, deadlines.
The contract suite (test_contract.py) runs on it too; the faults of a
cluster are in test_etcd_faults.py.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from typing import Any

import pytest
import pytest_twisted
from prometheus_client import REGISTRY
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, quoteStringArgument, serverFromString
from twisted.internet.protocol import Factory
from twisted.logger import capturedLogs, formatEvent
from zope.interface.verify import verifyObject

from bench.etcd import freePorts
from tests.endpoint_helpers import Collector, Echo
from tests.etcd_helpers import EtcdCluster, b64, etcdExecutable, gateway
from tests.helpers import eventually, lookupFailure, newRegistry, sleep
from txmasse import EventKind, PeerEvent, PeerRecord, RegistryUnavailable
from txmasse.registry import registryFromURL
from txmasse.registry.etcd import ETCD, ETCDS, EtcdRegistry
from txmasse.registry.etcd_url import parseEtcdURL
from txmasse.registry.interface import IRegistry
from txmasse.registry.plugins import schemePlugin
from txmasse.registry.url import parseRegistryURL, redactURL

_prefixes = iter(range(1, 1_000_000))


def record(name: str = "db", namespace: str = "dev", **kwargs: Any) -> PeerRecord:
    return PeerRecord(namespace, name, ["tcp:host=127.0.0.1:port=4000"], **kwargs)


class Events(list[PeerEvent]):
    def __call__(self, event: PeerEvent) -> None:
        self.append(event)

    def kinds(self) -> list[tuple[str, str]]:
        return [(e.kind, e.record.name) for e in self]


@pytest.fixture
def etcd(etcd_server: EtcdCluster) -> Iterator[Callable[..., EtcdRegistry]]:
    """
    Registries on the session's etcd member, under a prefix of this test's own.
    """
    prefix = f"unit{next(_prefixes)}"
    made: list[EtcdRegistry] = []

    def make(query: str = "timeout=2") -> EtcdRegistry:
        registry = newRegistry(f"{etcd_server.url}/{prefix}?{query}")
        assert isinstance(registry, EtcdRegistry)
        registry.testPrefix = prefix  # type: ignore[attr-defined]
        made.append(registry)
        return registry

    yield make
    for registry in made:
        pytest_twisted.blockon(registry.close())


# URLs


def test_url_grammar() -> None:
    parsed = parseEtcdURL("etcd://a:1,b,[::1]:3/app/masse?timeout=0.5&user=u&password=p%40ss")
    assert parsed.endpoints == (("a", 1), ("b", 2379), ("::1", 3))
    assert parsed.prefix == "app/masse"
    assert (parsed.timeout, parsed.user, parsed.password) == (0.5, "u", "p@ss")
    assert parsed.display == "etcd://a:1,b,[::1]:3/app/masse?timeout=0.5&user=u&password=***"
    assert parseEtcdURL("etcds://u:secret@h").display == "etcds://u:***@h"
    assert parseEtcdURL("etcd://h").prefix == "masse"
    assert parseEtcdURL("etcds://h?ca=/x.pem&cert=/c&key=/k").ca == "/x.pem"


@pytest.mark.parametrize(
    "url, message",
    [
        ("etcd://", "endpoint '' has no host"),
        ("etcd://h:0", "port '0' must be a number, 1 to 65535"),
        ("etcd://h:x", "port 'x'"),
        ("etcd://h,,g", "endpoint '' has no host"),
        ("etcd://h_h", "host 'h_h' must be a name or an address"),
        ("etcd://[zz]", "the address does not parse"),
        ("etcd://h/a b", "prefix 'a b' must be up to 8 parts"),
        ("etcd://h/a\tb", "must be at most 2048 printable"),
        ("etcd://h/a//b", "prefix 'a//b'"),
        ("etcd://h/a?x=1", "option 'x' is unknown"),
        ("etcd://h?ca=/x", "(ca, cert and key need etcds://)"),
        ("etcds://h?cert=/c", "options cert and key go together"),
        ("etcd://h?timeout=-1", "timeout '-1' must be a number of seconds"),
        ("etcd://h?password=x", "a password needs a user"),
        ("etcd://h#f", "a fragment is not allowed"),
    ],
)
def test_bad_urls_name_the_bad_part(url: str, message: str) -> None:
    with pytest.raises(ValueError) as caught:
        parseRegistryURL(url)
    assert message in str(caught.value)


def test_passwords_never_shown() -> None:
    for url in ("etcd://u:hunter2@h:0", "etcd://h:0?user=u&password=hunter2"):
        with pytest.raises(ValueError) as caught:
            parseRegistryURL(url)
        assert "hunter2" not in str(caught.value)
        assert "hunter2" not in redactURL(url)
    assert parseRegistryURL("etcd://h:1,g:2?secrets=/s").secrets == "/s"
    assert parseRegistryURL("etcd://h:1,g:2").host == "h"


@pytest_twisted.ensureDeferred
async def test_registry_from_url_is_an_etcd_registry(etcd_server: EtcdCluster) -> None:
    registry = registryFromURL(reactor, etcd_server.url + "/fromurl")
    try:
        assert isinstance(registry, EtcdRegistry)
        assert verifyObject(IRegistry, registry)
        assert schemePlugin("etcd") is ETCD and schemePlugin("etcds") is ETCDS  # entry points
        assert registry.url == etcd_server.url + "/fromurl"
        assert await registry.lookup("dev", "db") == []
    finally:
        await registry.close()


@pytest_twisted.ensureDeferred
async def test_unreachable_cluster_is_unavailable_without_password() -> None:
    ports = ",".join(f"127.0.0.1:{port}" for port in freePorts(2))
    message = await lookupFailure(f"etcd://{ports}/x?timeout=0.5&user=u&password=hunter2")
    assert f"registry etcd://{ports}/x?timeout=0.5&user=u&password=***: lookup of 'db'" in message
    assert "no answer within 0.5s" in message and "hunter2" not in message


@pytest_twisted.ensureDeferred
async def test_paused_member_is_a_deadline(
    etcd: Callable[..., EtcdRegistry], etcd_server: EtcdCluster
) -> None:
    registry = etcd("timeout=0.3")
    assert await registry.lookup("dev", "db") == []
    etcd_server.members[0].pause()
    try:
        with pytest.raises(
            RegistryUnavailable, match=r"lookup of 'db' failed: no answer within 0.3s"
        ):
            await registry.lookup("dev", "db")
    finally:
        etcd_server.members[0].resume()
    assert await registry.lookup("dev", "db") == []


# Keys and leases in etcd


@pytest_twisted.ensureDeferred
async def test_a_lease_is_an_etcd_lease(
    etcd: Callable[..., EtcdRegistry], etcd_server: EtcdCluster
) -> None:
    registry = etcd()
    prefix = registry.testPrefix  # type: ignore[attr-defined]
    lease = await registry.register(record(), 2.5)
    key = f"{prefix}/dev/r/db/{lease.record.instance}"
    keys = etcd_server.keys(f"{prefix}/")
    value, leaseID = keys[key]
    assert PeerRecord.fromJSON(value) == lease.record
    port = etcd_server.members[0].clientPort
    alive = gateway(port, "/v3/lease/timetolive", {"ID": leaseID})
    assert alive["grantedTTL"] == "3"  # whole seconds, rounded up
    await lease.release()
    keys = etcd_server.keys(f"{prefix}/")
    assert key not in keys
    assert keys[f"{prefix}/dev/left/{lease.record.instance}"][0] == b"left"
    gone = gateway(port, "/v3/lease/timetolive", {"ID": leaseID})
    await eventually(lambda: gateway(port, "/v3/lease/timetolive", {"ID": leaseID})["TTL"] == "-1")
    assert gone["ID"] == leaseID


@pytest_twisted.ensureDeferred
async def test_left_and_timedout_each_once(
    etcd: Callable[..., EtcdRegistry], etcd_server: EtcdCluster
) -> None:
    """
    A release is announced as left; a record that goes without its
    marker (its lease expired, or someone deleted it) as timed out.
    """
    registry, peer = etcd(), etcd()
    prefix = registry.testPrefix  # type: ignore[attr-defined]
    events = Events()
    subscription = await registry.watch("dev", "*", events)
    released = await peer.register(record("a"), 5)
    deleted = await peer.register(record("b"), 5)
    await eventually(lambda: len(events) == 2)
    await released.release()
    gateway(
        etcd_server.members[0].clientPort,
        "/v3/kv/deleterange",
        {"key": b64(f"{prefix}/dev/r/b/{deleted.record.instance}")},
    )
    await eventually(lambda: len(events) == 4)
    assert events.kinds()[2:] == [("left", "a"), ("timedout", "b")]
    assert list(subscription.peers) == [] and subscription.synced
    await sleep(0.2)
    assert len(events) == 4


@pytest_twisted.ensureDeferred
async def test_heartbeat_writes_back_a_record_whose_lease_etcd_lost(
    etcd: Callable[..., EtcdRegistry], etcd_server: EtcdCluster
) -> None:
    registry, watching = etcd(), etcd()
    events = Events()
    await watching.watch("dev", "*", events)
    lease = await registry.register(record(), 0.6)
    prefix = registry.testPrefix  # type: ignore[attr-defined]
    leaseID = etcd_server.keys(f"{prefix}/dev/r/")[f"{prefix}/dev/r/db/{lease.record.instance}"][1]
    gateway(etcd_server.members[0].clientPort, "/v3/lease/revoke", {"ID": leaseID})
    await eventually(lambda: len(events) == 3)  # joined, timedout, joined again
    assert events.kinds() == [("joined", "db"), ("timedout", "db"), ("joined", "db")]
    assert await registry.lookup("dev", "db") == [lease.record]


# Garbage


@pytest_twisted.ensureDeferred
async def test_garbage_in_etcd_is_skipped_with_a_warning(
    etcd: Callable[..., EtcdRegistry], etcd_server: EtcdCluster
) -> None:
    registry = etcd()
    prefix = registry.testPrefix  # type: ignore[attr-defined]
    good = record("db")
    await registry.register(good, 5)
    events = Events()
    await registry.watch("dev", "*", events, usage=True)
    misplaced = record("db", instance="elsewhere1")
    garbage: dict[str, bytes | str] = {
        f"{prefix}/dev/r/db/x1": b"not json",
        f"{prefix}/dev/r/db/x2": b'{"v": 1}',
        f"{prefix}/dev/r/db/x3": misplaced.toJSON(),
        f"{prefix}/dev/r/db": good.toJSON(),
        f"{prefix}/dev/u/someone": b"[1, 2]",
        f"{prefix}/dev/u/other": json.dumps(
            {"kind": "joined", "source": "h:1", "record": good.toJSON().decode()}
        ),
    }
    with capturedLogs() as logged:
        for key, value in garbage.items():
            etcd_server.put(key, value)
        await eventually(lambda: sum("skipping a bad" in formatEvent(e) for e in logged) >= 6)
        assert await registry.lookup("dev", "db") == [good]
        assert await registry.find("dev", "d*") == [good]
    warnings = [formatEvent(e) for e in logged if "skipping a bad" in formatEvent(e)]
    assert any("is stored in the wrong place" in w and "x3" in w for w in warnings)
    assert any("only connected/disconnected" in w for w in warnings)
    assert events == []
    await registry.report(PeerEvent(EventKind.CONNECTED, good, "host:1"))
    await eventually(lambda: len(events) == 1)
    assert events[0].source == "host:1"


@pytest_twisted.ensureDeferred
async def test_find_reads_only_the_literal_prefix(etcd: Callable[..., EtcdRegistry]) -> None:
    """
    No full scans: a find over 'db-*' asks etcd for the keys under
    '.../r/db-' only.
    """
    registry = etcd()
    asked: list[dict[str, Any]] = []
    call = registry.client.call

    def spy(path: str, body: dict[str, Any], what: str) -> Any:
        asked.append(body)
        return call(path, body, what)

    registry.client.call = spy  # type: ignore[method-assign]
    await registry.find("dev", "db-*")
    await registry.lookup("dev", "web")
    prefix = registry.testPrefix  # type: ignore[attr-defined]
    assert [a["key"] for a in asked] == [b64(f"{prefix}/dev/r/db-"), b64(f"{prefix}/dev/r/web/")]


# From endpoint strings


@pytest_twisted.ensureDeferred
async def test_endpoint_strings_reach_a_peer_by_name_through_etcd(
    etcd_server: EtcdCluster,
) -> None:
    url = quoteStringArgument(f"{etcd_server.url}/strings?timeout=2")
    server = serverFromString(reactor, f"masse:echo:ns=t:registry={url}:interface=127.0.0.1")
    port = await server.listen(Factory.forProtocol(Echo))
    try:
        client = clientFromString(reactor, f"masse:echo:ns=t:registry={url}")
        protocol = await client.connect(Factory.forProtocol(Collector))
        assert protocol.transport is not None
        protocol.transport.write(b"by name, through etcd")
        await eventually(lambda: protocol.received == b"by name, through etcd")
        protocol.transport.loseConnection()
        await protocol.lost
    finally:
        await port.stopListening()
        await registryFromURL(reactor, f"{etcd_server.url}/strings?timeout=2").close()


def test_masse_command_lists_through_etcd(etcd_server: EtcdCluster) -> None:
    url = f"{etcd_server.url}/command?timeout=2"
    registered = subprocess.Popen(
        [sys.executable, "-m", "txmasse", "--registry", url, "--ns", "t", "register", "web",
         "--endpoint", "tcp:host=127.0.0.1:port=8080"],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.monotonic() + 20
        while True:
            listed = subprocess.run(
                [sys.executable, "-m", "txmasse", "--registry", url, "--ns", "t", "ls"],
                capture_output=True,
                text=True,
                timeout=20,
            )
            assert listed.returncode == 0, listed.stderr
            if "web" in listed.stdout:
                break
            assert registered.poll() is None and time.monotonic() < deadline, listed
            time.sleep(0.1)
        assert "tcp:host=127.0.0.1:port=8080" in listed.stdout
    finally:
        registered.kill()
        registered.wait()


def test_a_missing_etcd_fails_the_tests_with_the_install_command(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("PATH", "/nonexistent")
    with pytest.raises(pytest.fail.Exception, match="apt-get install -y etcd-server"):
        etcdExecutable()


@pytest_twisted.ensureDeferred
async def test_a_lease_that_expires_before_its_record_is_written_is_granted_again(
    etcd: Callable[..., EtcdRegistry],
) -> None:
    """
    An etcd slower than the ttl between granting a lease and writing the
    record on it (here: the first write held back until the lease is
    gone): the write fails with 'lease not found', and the registration
    grants another lease rather than failing.
    """
    registry = etcd()
    write = registry._txnPut
    held: list[int] = []

    async def late(record: PeerRecord, value: bytes, leaseID: int, what: str) -> None:
        if not held:
            held.append(leaseID)
            await sleep(3.5)  # past the lease's ttl (etcd's least, 2 s, for ttl=1)
        await write(record, value, leaseID, what)

    registry._txnPut = lambda *args, **kwargs: Deferred.fromCoroutine(late(*args, **kwargs))  # type: ignore[method-assign]
    with capturedLogs() as events:
        lease = await registry.register(record("db"), 1)
    assert len(held) == 1
    assert [r.instance for r in await registry.lookup("dev", "db")] == [lease.record.instance]
    assert any("expired before its record was written" in formatEvent(e) for e in events)
    await lease.release()


@pytest_twisted.ensureDeferred
async def test_calls_are_counted_and_bad_arguments_fail_the_deferred(
    etcd: Callable[..., EtcdRegistry],
) -> None:
    """
    Like every backend's, etcd's calls are in C{masse_registry_calls}, and
    arguments it refuses fail the call's Deferred with a message naming
    them (counted C{invalid}), rather than raising.
    """
    registry = etcd()

    def count(outcome: str) -> float:
        labels = {"op": "lookup", "outcome": outcome}
        return REGISTRY.get_sample_value("masse_registry_calls_total", labels) or 0.0

    ok, invalid = count("ok"), count("invalid")
    assert await registry.lookup("dev", "db") == []
    refused = registry.lookup("dev", "no names like this!")
    with pytest.raises(ValueError, match="no names like this!"):
        await refused
    assert (count("ok"), count("invalid")) == (ok + 1, invalid + 1)
