"""
The DNS interface's parts on their own: name <-> label mapping, endpoint
parsing, the zone's answers over a MemoryRegistry on a task.Clock, the
bound on watched namespaces, the stale window, and what the server factory
does with bad packets (written to a collecting protocol, no network).
"""

from __future__ import annotations

import random
import struct
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import _parse
from twisted.internet.task import Clock
from twisted.names import dns
from twisted.python import usage
from twisted.python.failure import Failure

from txmasse.descriptions import parseDescription
from txmasse.dns.addresses import HostPort, answerable, hostPort
from txmasse.dns.authority import MasseAuthority, NoSuchName, Refused
from txmasse.dns.labels import Target, checkDomain, labelOf, parseQueryName
from txmasse.dns.server import MasseDNSFactory
from txmasse.dns.service import Options, Settings
from txmasse.dns.views import Unavailable, Views
from txmasse.records import PeerRecord
from txmasse.registry import MemoryRegistry


def test_labels() -> None:
    assert labelOf("DB-1") == "db-1"
    assert labelOf("a_b") == "a_b"
    assert labelOf("db.primary") is None
    assert labelOf("x" * 64) is None and labelOf("x" * 63) == "x" * 63
    assert checkDomain("Example.COM.") == "example.com"
    with pytest.raises(ValueError, match="bad label 'a_b'"):
        checkDomain("a_b.masse")
    with pytest.raises(ValueError, match="must name a zone"):
        checkDomain(".")


@pytest.mark.parametrize(
    "qname, target",
    [
        (b"masse", Target("apex")),
        (b"MASSE.", Target("apex")),
        (b"prod.masse", Target("namespace", "prod")),
        (b"_tcp.prod.masse", Target("services", "prod")),
        (b"Db.Prod.masse", Target("name", "prod", "db")),
        (b"_db._tcp.prod.masse", Target("service", "prod", "db")),
        (b"abc.db.prod.masse", Target("instance", "prod", "db", "abc")),
        (b"_db.prod.masse", Target("none")),
        (b"a.b.c.prod.masse", Target("none")),
        (b"-x.prod.masse", Target("none")),
        (b"\xff.prod.masse", Target("none")),
        (b"x" * 64 + b".prod.masse", Target("none")),
        (b"example.com", None),
        (b"notmasse", None),
    ],
)
def test_query_names(qname: bytes, target: Target | None) -> None:
    assert parseQueryName(qname, b"masse") == target


def test_endpoint_descriptions() -> None:
    assert hostPort("tcp:host=10.0.0.7:port=4021") == HostPort("10.0.0.7", 4021, 4)
    assert hostPort("tcp:10.0.0.7:4021:timeout=3") == HostPort("10.0.0.7", 4021, 4)
    assert hostPort("TLS:port=443:host=Db.Example.com.") == HostPort("db.example.com", 443, 0)
    assert hostPort("tcp:host=\\:\\:1:port=80") == HostPort("::1", 80, 6)
    assert hostPort("tcp:host=[\\:\\:ffff\\:10.0.0.1]:port=80") == HostPort("10.0.0.1", 80, 4)
    assert hostPort("unix:path=/tmp/x") is None
    assert hostPort("masse:db") is None
    assert parseDescription("tcp:a\\=b:k=v\\:w") == ("tcp", ["a=b"], {"k": "v:w"})
    for bad, part in [
        ("tcp:host=10.0.0.7", "bad port ''"),
        ("tcp:host=10.0.0.7:port=70000", "bad port '70000'"),
        ("tcp:host=a b:port=1", "bad host 'a b'"),
        ("tcp:host=a..b:port=1", "bad host 'a..b'"),
        ("tcp:host=x:port=1:host=y", "option 'host' given twice"),
        ("tcp:1.2.3.4:5:host=y", "host given twice"),
        ("tcp:host=x\\", "lone"),
        ("tcp:host=fe80\\:\\:1%eth0:port=1", "zone"),
    ]:
        with pytest.raises(ValueError, match=part.replace("?", "\\?")):
            hostPort(bad)


@given(st.text(alphabet="ab:=\\", max_size=20))
def test_descriptions_split_as_twisted_splits_them(rest: str) -> None:
    """
    The same grammar as Twisted's own (private) parser, after a prefix
    (records always start with one); where it gives a keyword twice, ours
    refuses.
    """
    description = "tcp:" + rest
    try:
        theirs = _parse(description)
    except RuntimeError:  # a trailing lone backslash
        with pytest.raises(ValueError, match="lone"):
            parseDescription(description)
        return
    try:
        prefix, positional, keywords = parseDescription(description)
    except ValueError as e:
        assert "given twice" in str(e)
        return
    assert ([prefix, *positional], keywords) == theirs


class Zone:
    """
    An authority over a MemoryRegistry on a task.Clock.
    """

    def __init__(self, **views: Any) -> None:
        self.clock = Clock()
        self.registry = MemoryRegistry(self.clock)
        self.views = Views(self.registry, self.clock, **views)
        self.authority = MasseAuthority(self.views, "masse", ttl=5, shuffle=random.Random(1))

    def register(self, namespace: str, name: str, *endpoints: str, **meta: str) -> PeerRecord:
        record = PeerRecord(namespace, name, list(endpoints), meta)
        self.registry.register(record, 30)
        return record

    def ask(self, name: str, type: int = dns.A) -> Any:
        results: list[Any] = []
        self.authority.query(dns.Query(name, type)).addBoth(results.append)
        [result] = results
        return result


def test_answers() -> None:
    zone = Zone()
    one = zone.register("p", "DB", "tcp:host=10.0.0.1:port=1", "tcp:host=10.0.0.2:port=2", r="1")
    zone.register("p", "DB", "tls:host=db.example.com:port=3", "unix:path=/x", r="1")
    zone.register("p", "db.x", "tcp:host=10.0.0.9:port=9")
    zone.register("p", "bad", "tcp:host=10.0.0.8:port=nope")
    answers, authority, _ = zone.ask("db.p.masse")
    assert sorted(a.payload.dottedQuad() for a in answers) == ["10.0.0.1", "10.0.0.2"]
    assert authority == [] and all(a.ttl == 5 and a.auth for a in answers)
    srv, _, additional = zone.ask("_db._tcp.p.masse", dns.SRV)
    assert sorted((s.payload.port, s.payload.target.name) for s in srv) == [
        (1, f"{one.instance}.db.p.masse".encode()),
        (3, b"db.example.com"),
    ]
    assert [a.name.name for a in additional] == [f"{one.instance}.db.p.masse".encode()] * 2
    [txt], _, _ = zone.ask("db.p.masse", dns.TXT)  # the same metadata twice: one record
    assert txt.payload.data == [b"r=1"]
    assert len(zone.ask(f"{one.instance}.db.p.masse")[0]) == 2
    nodata = zone.ask("db.p.masse", dns.MX)
    assert nodata[0] == [] and [r.type for r in nodata[1]] == [dns.SOA]
    assert len(zone.ask("db.p.masse", dns.ALL_RECORDS)[0]) == 2
    for missing in ("db.x.p.masse", "nope.p.masse", "bad.q.masse", "zz.db.p.masse"):
        failure = zone.ask(missing)
        assert isinstance(failure, Failure) and failure.check(NoSuchName), missing
        error: Any = failure.value
        assert [r.type for r in error.authority] == [dns.SOA]
    assert zone.ask("bad.p.masse")[0] == []  # its endpoint is skipped, with a warning
    assert zone.ask("example.com").check(Refused)
    chaos: Any = zone.authority.query(dns.Query("db.p.masse", dns.A, dns.CH))
    assert chaos.result.check(Refused)
    chaos.addErrback(lambda f: None)
    assert [r.type for r in zone.ask("masse", dns.SOA)[0]] == [dns.SOA]
    assert [r.type for r in zone.ask("masse", dns.NS)[0]] == [dns.NS]


def test_critical_and_draining_instances_are_left_out() -> None:
    zone = Zone()
    zone.register("p", "db", "tcp:host=10.0.0.1:port=1")
    zone.register("p", "db", "tcp:host=10.0.0.4:port=4")
    for host, state in (("10.0.0.2", {"health": "critical"}), ("10.0.0.3", {"draining": True})):
        zone.registry.register(PeerRecord("p", "db", [f"tcp:host={host}:port=2"], **state), 30)
    warning = PeerRecord("p", "db", ["tcp:host=10.0.0.5:port=5"], health="warning")
    zone.registry.register(warning, 30)
    answers, _, _ = zone.ask("db.p.masse")
    assert sorted(a.payload.dottedQuad() for a in answers) == ["10.0.0.1", "10.0.0.4", "10.0.0.5"]
    assert answerable(PeerRecord("p", "db", ["tcp:host=10.0.0.1:port=1"]))
    assert not answerable(PeerRecord("p", "db", ["tcp:host=10.0.0.1:port=1"], draining=True))


def test_answers_follow_events_without_registry_calls() -> None:
    zone = Zone()
    assert zone.ask("web.p.masse").check(NoSuchName)
    watches = zone.registry.watch
    zone.registry.watch = lambda *a, **k: pytest.fail("a second watch")  # type: ignore[method-assign]
    record = zone.register("p", "web", "tcp:host=10.0.0.1:port=1")
    assert len(zone.ask("web.p.masse")[0]) == 1
    zone.register("p", "web", "tcp:host=10.0.0.2:port=1")
    assert len(zone.ask("web.p.masse")[0]) == 2
    zone.registry.watch = watches  # type: ignore[method-assign]
    assert record in zone.views.get("p").subscription.peers  # type: ignore[union-attr]


def test_ambiguous_names_are_refused() -> None:
    zone = Zone()
    zone.register("p", "Web", "tcp:host=10.0.0.1:port=1")
    assert len(zone.ask("web.p.masse")[0]) == 1
    zone.register("p", "web", "tcp:host=10.0.0.2:port=1")
    failure = zone.ask("WEB.p.masse")
    assert failure.check(Refused) and "['Web', 'web']" in str(failure.value)


def test_watched_namespaces_are_bounded() -> None:
    zone = Zone(maxNamespaces=2)
    zone.ask("x.a.masse")
    zone.ask("x.b.masse")
    b: Any = zone.views.get("b")
    assert b.subscription.synced
    for namespace in ("a", "c"):
        zone.ask(f"x.{namespace}.masse")
    assert len(zone.views) == 2 and "b" not in zone.views and "c" in zone.views
    assert b.subscription is None


def test_a_watch_that_does_not_start_fails_then_retries() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock)
    pending: list[Deferred[Any]] = []

    def never(*args: Any, **kwargs: Any) -> Deferred[Any]:
        pending.append(Deferred())
        return pending[-1]

    registry.watch = never  # type: ignore[method-assign]
    views = Views(registry, clock, watchTimeout=2)
    authority = MasseAuthority(views)
    results: list[Any] = []
    authority.query(dns.Query("x.p.masse")).addBoth(results.append)
    authority.query(dns.Query("y.p.masse")).addBoth(results.append)
    clock.advance(1.9)
    assert results == [] and len(pending) == 1
    clock.advance(0.2)
    assert [r.check(Unavailable) for r in results] == [Unavailable] * 2
    pending[0].errback(RuntimeError("registry down"))
    again: Any = authority.query(dns.Query("x.p.masse"))
    assert again.result.check(Unavailable)
    again.addErrback(lambda f: None)
    assert len(pending) == 1  # no new watch within a second of a failure
    clock.advance(1)
    authority.query(dns.Query("x.p.masse")).addErrback(lambda f: None)
    assert len(pending) == 2
    views.stop()


def test_stale_view_then_servfail() -> None:
    zone = Zone(stale=3)
    zone.register("p", "db", "tcp:host=10.0.0.1:port=1")
    assert len(zone.ask("db.p.masse")[0]) == 1
    subscription: Any = zone.views.get("p").subscription  # type: ignore[union-attr]
    subscription.interrupted()
    zone.clock.advance(1)  # the periodic check notices
    zone.clock.advance(2)
    assert len(zone.ask("db.p.masse")[0]) == 1  # 2 s into the outage: the last view
    zone.clock.advance(1.5)
    assert zone.ask("db.p.masse").check(Unavailable)
    subscription.resumed()
    assert len(zone.ask("db.p.masse")[0]) == 1
    zone.views.stop()
    assert not [call for call in zone.clock.getDelayedCalls() if "_checkAll" in repr(call)]


class Collecting:
    """
    Stands in for a protocol: keeps what the factory writes.
    """

    def __init__(self) -> None:
        self.sent: list[tuple[bytes, Any]] = []

    def writeBytes(self, data: bytes, address: Any) -> None:
        self.sent.append((data, address))

    def replies(self) -> list[dns.Message]:
        messages = []
        for data, _ in self.sent:
            message = dns.Message()
            message.fromStr(data)
            messages.append(message)
        return messages


def serve(*packets: bytes, udp: bool = True) -> tuple[list[dns.Message], Zone]:
    zone = Zone()
    factory = MasseDNSFactory(zone.authority, zone.clock)
    protocol = Collecting()
    for packet in packets:
        factory.packetReceived(packet, protocol, ("127.0.0.1", 5353) if udp else None)
    return protocol.replies(), zone


def query(name: bytes, type: int = dns.A, cls: int = dns.IN, id: int = 7, **flags: Any) -> bytes:
    message = dns.Message(id=id, **flags)
    message.queries = [dns.Query(name, type, cls)]
    return message.toStr()


def test_bad_packets() -> None:
    header = struct.pack("!HBBHHHH", 99, 1, 0, 1, 0, 0, 0)  # one question, not there
    replies, _ = serve(
        b"",
        b"\x01\x02\x03",
        header,
        query(b"x.p.masse", answer=1),  # a response: silence
        query(b"x.p.masse", id=5, opCode=dns.OP_STATUS),
        query(b"masse", dns.AXFR, id=6),
        query(b"version.bind", dns.TXT, dns.CH, id=8),
        header[:5] + b"\x00" + header[6:] + b"\x00",  # no question at all
    )
    assert [(r.id, r.rCode, r.answer) for r in replies] == [
        (99, dns.EFORMAT, True),
        (5, dns.ENOTIMP, True),
        (6, dns.EREFUSED, True),
        (8, dns.EREFUSED, True),
        (99, dns.EFORMAT, True),
    ]


def test_udp_answers_that_do_not_fit_are_truncated() -> None:
    zone = Zone()
    for i in range(40):
        meta = {"i": str(i), **{f"k{j}": "v" * 200 for j in range(3)}}
        zone.register("p", "big", f"tcp:host=10.0.{i}.1:port=1", **meta)
    factory = MasseDNSFactory(zone.authority, zone.clock)
    udp, tcp = Collecting(), Collecting()
    factory.packetReceived(query(b"big.p.masse", dns.TXT), udp, ("127.0.0.1", 1))
    factory.packetReceived(query(b"big.p.masse", dns.TXT), tcp, None)
    factory.packetReceived(query(b"_big._tcp.p.masse", dns.SRV), udp, ("127.0.0.1", 1))
    [truncated, srv], [whole] = udp.replies(), tcp.replies()
    assert (truncated.trunc, truncated.answers, len(udp.sent[0][0]) <= 512) == (1, [], True)
    assert (whole.trunc, len(whole.answers)) == (0, 40)
    assert (srv.trunc, srv.answers, srv.additional, len(udp.sent[1][0]) <= 512) == (1, [], [], True)
    for i in range(20):
        zone.register("p", "mid", f"tcp:host=10.1.{i}.1:port=1")
    fits = Collecting()
    factory.packetReceived(query(b"mid.p.masse"), fits, ("127.0.0.1", 1))
    [addresses] = fits.replies()
    assert (addresses.trunc, len(addresses.answers)) == (0, 20)


def test_settings_and_twistd_options() -> None:
    assert Settings(port="0", ttl="0").port == 0
    for kwargs, message in [
        ({"port": "65536"}, "--listen '65536'"),
        ({"interface": "localhost"}, "--interface 'localhost'"),
        ({"ttl": "1.5"}, "--ttl '1.5'"),
        ({"maxNamespaces": "0"}, "--max-namespaces '0'"),
        ({"stale": "nan"}, "--stale 'nan'"),
        ({"domain": "bad..name"}, "bad label ''"),
    ]:
        with pytest.raises(ValueError, match=message):
            Settings(**kwargs)
    options = Options()
    options.parseOptions(["--listen", "0", "--domain", "Corp.Example", "--registry", "memory://"])
    assert options["settings"].domain == "corp.example"
    with pytest.raises(usage.UsageError, match="--ttl 'x'"):
        Options().parseOptions(["--ttl", "x"])
    with pytest.raises(usage.UsageError, match="registry"):
        Options().parseOptions(["--registry", "nope://x"])


def test_txt_strings() -> None:
    zone = Zone()
    zone.register("p", "svc", "unix:path=/x", long="x" * 300, city="Zürich", b="")
    [txt], _, _ = zone.ask("svc.p.masse", dns.TXT)
    assert txt.payload.data == [b"b=", "city=Zürich".encode()]  # 'long' cannot fit 255 bytes
    assert zone.ask("svc.p.masse")[0] == []  # a unix: endpoint has no address
    assert zone.ask("_svc._tcp.p.masse", dns.SRV)[0] == []


def test_a_watch_that_raises_is_servfail_not_a_crash() -> None:
    zone = Zone()

    def broken(*args: Any, **kwargs: Any) -> Deferred[Any]:
        raise RuntimeError("registry closed")

    zone.registry.watch = broken  # type: ignore[method-assign]
    for _ in range(2):
        failure = zone.ask("db.p.masse")
        assert failure.check(Unavailable) and "registry closed" in str(failure.value)
        zone.clock.advance(1)
