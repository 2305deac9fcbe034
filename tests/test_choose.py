"""
Choosing instances, on txmasse.testing's clock: meta.KEY= selection,
prefer.KEY= ordering, health states and drain, as every connect (warm,
cold, pattern, given record, group) honours them; the record format; and
the bad input each option refuses.
"""

from __future__ import annotations

import json
import re
from collections.abc import Sequence
from typing import Any

import attrs
import pytest
from twisted.internet.defer import Deferred, succeed
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, eventAsJSON

from tests.helpers import Events, record, warningsIn
from txmasse import (
    MasseListeningPort,
    MasseServerEndpoint,
    NoReachablePeer,
    PeerGroup,
    PeerNotFound,
)
from txmasse.health import Health, parseCheck, runCheck, worst
from txmasse.records import PeerRecord
from txmasse.resolver import Selection
from txmasse.service import Options, RegistryService
from txmasse.testing import MasseNetwork


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Collector(Protocol):
    def __init__(self) -> None:
        self.received = b""

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def callRemote(self, command: Any, **arguments: object) -> Deferred[object]:
        return succeed(command)


def serve(network: MasseNetwork, description: str, **options: Any) -> MasseListeningPort:
    if options:  # a name, and keyword arguments of MasseServerEndpoint
        endpoint = MasseServerEndpoint(
            network.reactor, description, registry=network.registry, **options
        )
        listening = endpoint.listen(Factory.forProtocol(Echo))
        network.flush()
        port = network.successResultOf(listening)
    else:
        port = network.serve(description, Factory.forProtocol(Echo))
    assert isinstance(port, MasseListeningPort)
    return port


def attempt(network: MasseNetwork, description: str) -> Any:
    """
    The protocol a connect gave, or the exception it failed with.
    """
    outcomes: list[Any] = []
    network.connect(description, Factory.forProtocol(Collector)).addBoth(outcomes.append)
    network.flush()
    (outcome,) = outcomes
    return getattr(outcome, "value", outcome)


def reached(network: MasseNetwork, description: str) -> int:
    outcome = attempt(network, description)
    assert isinstance(outcome, Collector), outcome
    transport: Any = outcome.transport
    return int(transport.getPeer().port)


def portReached(network: MasseNetwork, connecting: Deferred[Any]) -> int:
    """
    The port C{connecting} reached, once the network has run.
    """
    network.flush()
    return int(network.successResultOf(connecting).transport.getPeer().port)


def portOf(port: MasseListeningPort) -> int:
    return int(port.getHost().port)  # type: ignore[attr-defined]


# meta.KEY= and prefer.KEY=


def test_meta_selects_every_connect_and_a_miss_names_the_condition() -> None:
    network = MasseNetwork()
    primary = serve(network, "db:meta.role=primary:meta.zone=a")
    serve(network, "db:meta.role=replica:meta.zone=a")
    assert {reached(network, "db:meta.role=primary") for _ in range(20)} == {portOf(primary)}
    assert reached(network, "db:meta.role=primary:meta.zone=a:cache=false") == portOf(primary)
    assert reached(network, "d*:meta.role=primary") == portOf(primary)  # a pattern too
    missed = attempt(network, "db:meta.role=primary:meta.zone=b")
    assert isinstance(missed, PeerNotFound)
    assert str(missed).startswith("meta.zone=b matched none of the 2 instance(s) of 'db'")
    each = [record(metadata={"role": "replica", "zone": "a"}), record(metadata={"role": "x"})]
    both = Selection(meta=(("role", "replica"), ("zone", "b")))
    assert both.unmatched(each) == "meta.zone=b"
    each.append(record(metadata={"zone": "b"}))
    assert both.unmatched(each) == "meta.role=replica:meta.zone=b (together)"
    assert isinstance(attempt(network, "nothing:meta.role=primary"), PeerNotFound)


def test_prefer_tries_matching_instances_first_and_falls_back() -> None:
    network = MasseNetwork()
    a = serve(network, "db:meta.zone=a:meta.rack=1")
    b = serve(network, "db:meta.zone=b:meta.rack=2")
    c = serve(network, "db:meta.zone=b:meta.rack=1")
    assert {reached(network, "db:prefer.zone=a") for _ in range(10)} == {portOf(a)}
    # Order of importance: zone first, then rack.
    assert {reached(network, "db:prefer.zone=b:prefer.rack=1") for _ in range(10)} == {portOf(c)}
    network.successResultOf(a.stopListening())
    network.flush()
    assert reached(network, "db:prefer.zone=a:prefer.rack=1") == portOf(c)
    network.successResultOf(c.stopListening())
    network.flush()
    assert reached(network, "db:prefer.zone=a:prefer.rack=1") == portOf(b)


def test_pick_orders_within_each_preference_group() -> None:
    network = MasseNetwork()
    a1 = serve(network, "db:meta.zone=a")
    network.advance(1)
    a2 = serve(network, "db:meta.zone=a")
    serve(network, "db:meta.zone=b")
    endpoint: Any = network.clientFromString("masse:db:prefer.zone=a:pick=roundrobin")
    factory = Factory.forProtocol(Collector)
    turns = [portReached(network, endpoint.connect(factory)) for _ in range(4)]
    assert turns == [portOf(a1), portOf(a2)] * 2


def test_an_unchanged_view_is_not_ordered_again() -> None:
    """
    Given the same tuple of records (a watch's view that has not changed),
    a steady order (one instance, or C{pick=first}) is the last answer
    itself; a new view, a random order or a list is ordered afresh.
    """
    one, two = (record(port=1),), (record(port=1), record(port=2))
    first = Selection("first", meta=(("zone", "a"),))
    view = (record(port=1, metadata={"zone": "a"}), record(port=2, metadata={"zone": "b"}))
    matching = first.matching(view)
    assert first.matching(view) is matching and [r.endpoints for r in matching] == [
        ("tcp:host=127.0.0.1:port=1",)
    ]
    for selection, records in ((Selection("random"), one), (Selection("first"), two)):
        candidates = selection.candidates(records, 0, "here")
        assert selection.candidates(records, 0, "here") is candidates
        assert selection.candidates(tuple(records), 0, "elsewhere") is not candidates
        again = selection.candidates((*records, record(port=3)), 0, "here")  # a new view
        assert sorted(c.description[-1] for c in again if c.description) == sorted(
            [*(c.description[-1] for c in candidates if c.description), "3"]
        )
    shuffled = Selection("random")
    assert shuffled.candidates(two, 0, "here") is not shuffled.candidates(two, 0, "here")
    steady, listed = Selection("first"), list(two)  # a list may change in place: never kept
    assert steady.candidates(listed, 0, "h") is not steady.candidates(listed, 0, "h")


def test_health_order_passing_then_warning_never_critical() -> None:
    records = [
        record(port=1, health="critical", reason="disk"),
        record(port=2, health="warning", reason="slow"),
        record(port=3),
        record(port=4, draining=True),
    ]
    for pick in ("random", "first", "roundrobin"):
        candidates = Selection(pick).candidates(records, 0, "here")
        tried = [c.description for c in candidates if c.excluded is None]
        assert tried == ["tcp:host=127.0.0.1:port=3", "tcp:host=127.0.0.1:port=2"]
        assert sorted(str(c.excluded) for c in candidates if c.excluded) == [
            "critical: disk",
            "draining",
        ]
    # Health comes before preference: a passing fallback beats a warning match.
    preferred = Selection("first", prefer=(("zone", "a"),)).ranked(
        [record(port=5, metadata={"zone": "a"}, health="warning"), record(port=6)], 0
    )
    assert [r.endpoints[0][-1] for r in preferred] == ["6", "5"]


def test_roundrobin_shares_turns_evenly_among_usable_instances() -> None:
    """
    A draining or critical instance takes no turn of the rotation: its
    turns would pass to its neighbour, which would then get two.
    """
    for unusable in ({"draining": True}, {"health": "critical", "reason": "disk"}):
        assert firstTurns((record(port=1), record(port=2), record(port=3, **unusable))) == {
            "tcp:host=127.0.0.1:port=1": 150,
            "tcp:host=127.0.0.1:port=2": 150,
        }, unusable
    # Nor does one with no endpoint this client may use (a socket elsewhere).
    elsewhere = PeerRecord("dev", "db", ["unix:/run/db.sock"], host="other-host")
    assert sorted(firstTurns((record(port=1), elsewhere, record(port=2))).values()) == [150, 150]


def firstTurns(records: Sequence[PeerRecord], connects: int = 300) -> dict[str, int]:
    """
    How often each description comes first over C{connects} round-robin turns.
    """
    selection = Selection("roundrobin")
    firsts = [
        selection.candidates(records, selection.takeTurn(), "here")[0].description
        for _ in range(connects)
    ]
    return {str(d): firsts.count(d) for d in set(firsts)}


def test_a_connect_to_a_given_record_takes_no_turn_of_the_rotation() -> None:
    network = MasseNetwork()
    first, second = serve(network, "db"), serve(network, "db")
    endpoint: Any = network.clientFromString("masse:db:pick=roundrobin")
    turns = []
    for _ in range(4):
        turns.append(portReached(network, endpoint.connect(Factory.forProtocol(Collector))))
        given = endpoint.connectToRecord(first.record, Factory.forProtocol(Collector))
        assert portReached(network, given) == portOf(first)
    assert sorted(turns) == sorted([portOf(first), portOf(second)] * 2)
    assert turns[0] != turns[1]


def test_a_matching_cached_instance_gone_after_its_attempt_says_what_was_tried() -> None:
    """
    The cached instance refuses, and by then the registry has no instance
    left: the error names the attempt, not a match among none.
    """
    network = MasseNetwork()
    dead = PeerRecord("default", "db", ["tcp:host=127.0.0.1:port=9"], {"zone": "a"})
    lease = network.successResultOf(network.registry.register(dead, 30))
    assert isinstance(attempt(network, "db:meta.zone=a"), NoReachablePeer)
    network.advance(1)  # the watch it started holds the instance
    outcomes: list[Any] = []
    connecting = network.connect("db:meta.zone=a", Factory.forProtocol(Collector))
    connecting.addBoth(outcomes.append)
    network.successResultOf(lease.release())
    network.flush()
    [failure] = outcomes
    assert failure.check(NoReachablePeer), failure
    assert "tried tcp:host=127.0.0.1:port=9: " in str(failure.value)


def test_every_instance_critical_fails_listing_them_with_reasons() -> None:
    network = MasseNetwork()
    state = Health("critical", "database unreachable")
    serve(network, "db", healthCheck=lambda: state, ttl=3)
    serve(network, "db", healthCheck=lambda: ("critical", "queue full"), ttl=3)
    failed = attempt(network, "db")
    assert isinstance(failed, NoReachablePeer)
    message = str(failed)
    assert ": left out instance " in message and "tried" not in message
    assert "(critical: database unreachable)" in message and "(critical: queue full)" in message


# Health checks and drain on the server


def test_a_failing_check_stops_new_connections_within_one_interval_and_recovers() -> None:
    network = MasseNetwork()
    verdict: list[Any] = ["passing"]
    port = serve(network, "db", healthCheck=lambda: verdict[0], ttl=3)
    events = Events()
    network.successResultOf(network.registry.watch("default", "db", events))
    reached(network, "db")  # warm from here on
    network.advance(0.5)  # checks: at registration, half an interval later, then each interval
    verdict[0] = ("critical", "db gone")
    network.advance(0.999)
    assert events == [] and isinstance(attempt(network, "db"), Collector)
    network.advance(0.001)  # one heartbeat interval (ttl/3) after the last check
    assert [(e.kind, e.record.state) for e in events] == [("updated", "critical: db gone")]
    assert isinstance(attempt(network, "db"), NoReachablePeer)
    assert port.record.state == "critical: db gone"
    verdict[0] = Health("warning", "slow")
    network.advance(1)
    assert isinstance(attempt(network, "db"), Collector)
    assert events[-1].record.state == "warning: slow"
    network.advance(10)
    assert len(events) == 2  # no change, nothing published


def test_a_check_that_raises_hangs_or_answers_garbage_is_critical() -> None:
    clock = Clock()

    def raising() -> str:
        raise RuntimeError("boom")

    outcomes: list[Health] = []
    runCheck(raising, clock, 1).addCallback(outcomes.append)
    runCheck(lambda: 42, clock, 1).addCallback(outcomes.append)
    runCheck(lambda: ("fine", "x"), clock, 1).addCallback(outcomes.append)
    runCheck(Deferred, clock, 1).addCallback(outcomes.append)
    assert [h.state for h in outcomes] == ["critical"] * 3
    clock.advance(0.999)
    assert len(outcomes) == 3
    clock.advance(0.001)
    assert outcomes[0].reason == "check failed: boom"
    assert "answered 42" in outcomes[1].reason and "answered ('fine', 'x')" in outcomes[2].reason
    assert outcomes[3] == Health("critical", "no answer within 1s")
    assert worst([Health("passing"), Health("warning", "a"), Health("warning", "b")]).reason == "a"


def test_drain_keeps_open_connections_and_the_name_but_gets_no_new_ones() -> None:
    network = MasseNetwork()
    drained = serve(network, "db")
    other = serve(network, "db")
    events = Events()
    network.successResultOf(network.registry.watch("default", "db", events))
    # An open connection to the instance about to drain.
    given: Any = network.clientFromString("masse:db")
    connecting = given.connectToRecord(drained.record, Factory.forProtocol(Collector))
    network.flush()
    open_ = network.successResultOf(connecting)
    network.successResultOf(drained.drain())
    network.flush()
    assert [(e.kind, e.record.state) for e in events] == [("updated", "draining")]
    assert {reached(network, "db") for _ in range(10)} == {portOf(other)}
    failing = given.connectToRecord(drained.record, Factory.forProtocol(Collector))
    network.flush()
    assert len(network.successResultOf(network.registry.lookup("default", "db"))) == 2
    open_.transport.write(b"still here")
    network.flush()
    assert open_.received == b"still here"
    outcome: list[Any] = []
    failing.addErrback(outcome.append)
    assert "draining" in str(outcome[0].value)
    network.successResultOf(drained.undrain())
    network.flush()
    assert events[-1].record.state == "passing"
    network.successResultOf(other.stopListening())
    network.flush()
    assert reached(network, "db") == portOf(drained)


def test_graceful_stop_waits_for_open_connections_up_to_drain_seconds() -> None:
    network = MasseNetwork()
    port = serve(network, "db", drain=5.0)
    events = Events()
    network.successResultOf(network.registry.watch("default", "db", events))
    first = network.successResultOf(_connectNow(network))
    second = network.successResultOf(_connectNow(network))
    stopped: list[object] = []
    port.stopListening().addBoth(stopped.append)
    network.flush()
    assert events.kinds() == [("updated", "db")] and events[0].record.draining
    first.transport.loseConnection()
    network.advance(4.9)
    assert stopped == [] and len(events) == 1  # one still open: the name stays
    second.transport.write(b"in flight")
    network.flush()
    assert second.received == b"in flight"
    second.transport.loseConnection()
    network.flush()
    assert stopped == [None] and events.kinds()[-1] == ("left", "db")
    # Up to drain= seconds, no longer.
    late = serve(network, "late", drain=2.0)
    network.successResultOf(_connectNow(network, "late"))
    stopped = []
    late.stopListening().addBoth(stopped.append)
    network.advance(1.999)
    assert stopped == []
    network.advance(0.001)
    assert stopped == [None]


def _connectNow(network: MasseNetwork, name: str = "db") -> Deferred[Any]:
    connecting = network.connect(name, Factory.forProtocol(Collector))
    network.flush()
    return connecting


def test_a_drain_written_elsewhere_is_adopted_and_kept() -> None:
    network = MasseNetwork()
    port = serve(network, "db", ttl=3)
    network.advance(1)
    record = port.record
    outside = attrs.evolve(record, draining=True, drainChanged=record.drainChanged + 10)
    # As masse drain does: write the record for the lease's time left.
    lease = network.successResultOf(network.registry.register(outside, 3))
    lease.stop()
    network.flush()
    assert not port.draining and isinstance(attempt(network, "db"), NoReachablePeer)
    network.advance(1)  # the peer looks at its record once an interval (ttl/3)
    assert port.draining
    network.advance(5)  # heartbeats go on writing the peer's record: still drained
    (stored,) = network.successResultOf(network.registry.lookup("default", "db"))
    assert stored.draining and isinstance(attempt(network, "db"), NoReachablePeer)
    network.successResultOf(port.undrain())
    network.flush()
    assert isinstance(attempt(network, "db"), Collector)


def test_registry_service_peers_take_a_health_check_and_drain() -> None:
    network = MasseNetwork()
    service = RegistryService(network.registry, reactor=network.reactor)
    peer = service.addPeer(
        "db", Factory.forProtocol(Echo), healthCheck=lambda: ("warning", "slow"), drain=3
    )
    service.startService()
    network.flush()
    assert isinstance(peer.port, MasseListeningPort)
    assert peer.port.record.state == "warning: slow"
    (stored,) = network.successResultOf(network.registry.lookup("default", "db"))
    assert stored.state == "warning: slow"
    open_ = network.successResultOf(_connectNow(network))
    stopping = service.stopService()
    network.advance(2.999)
    assert not stopping.called and not open_.transport.disconnected
    network.advance(0.001)
    assert network.successResultOf(stopping) is None


def test_the_log_events_of_health_and_drain_are_json() -> None:
    verdict: list[Any] = ["passing"]
    with capturedLogs() as events:
        network = MasseNetwork()
        port = serve(network, "db", healthCheck=lambda: verdict[0], ttl=3, drain=1.0)
        verdict[0] = ("critical", "disk")
        network.advance(1)
        record = port.record
        outside = attrs.evolve(record, draining=True, drainChanged=record.drainChanged + 10)
        network.successResultOf(network.registry.register(outside, 3)).stop()
        network.advance(1)
        verdict[0] = "passing"
        port.undrain()
        network.advance(1)
        network.successResultOf(_connectNow(network))
        port.stopListening()
        network.advance(2)
        PeerRecord.fromJSON(json.dumps({**json.loads(record.toJSON()), "hs": "bad"}))
    seen = [e for e in events if str(e.get("log_namespace", "")).startswith("txmasse")]
    formats = " ".join(str(e["log_format"]) for e in seen)
    for expected in ("health is now", "from outside", "waiting up to", "still open", "garbage"):
        assert expected in formats
    for event in seen:
        written = json.loads(eventAsJSON(event))
        lost = [k for k, v in written.items() if v == {"unpersistable": True}]
        assert [k for k in lost if not k.startswith("log_")] == [], event["log_format"]


# PeerGroup


def test_group_meta_filter_updates_and_call_all_skips_critical() -> None:
    network = MasseNetwork()
    verdict: list[Any] = ["passing"]
    sick = serve(
        network, "db-1", healthCheck=lambda: verdict[0], ttl=3, metadata={"role": "worker"}
    )
    serve(network, "db-2:meta.role=worker")
    serve(network, "db-3:meta.role=other")
    group = PeerGroup(
        network.registry,
        "default",
        "db-*",
        Factory.forProtocol(Collector),
        includeSelf=True,
        reactor=network.reactor,
        meta={"role": "worker"},
    )
    updates: list[tuple[str, bool]] = []
    group.onPeerUpdated(lambda r, p: updates.append((r.state, p is not None)))
    group.startService()
    network.flush()
    assert sorted(r.name for r in group.connections) == ["db-1", "db-2"]
    verdict[0] = ("critical", "db down")
    network.advance(1)
    assert updates == [("critical: db down", True)]
    assert sorted(r.name for r in group.connections) == ["db-1", "db-2"]  # kept
    answers = network.successResultOf(group.callAll("ping"))
    assert sorted(r.name for r in answers) == ["db-2"]
    everyone = network.successResultOf(group.callAll("ping", includeCritical=True))
    assert sorted(r.name for r in everyone) == ["db-1", "db-2"]
    assert sick.record.health == "critical"
    stopping = group.stopService()
    network.flush()
    network.successResultOf(stopping)


# The record format


def test_state_round_trips_and_older_records_are_passing() -> None:
    plain = record()
    assert b"hs" not in plain.toJSON() and b"dr" not in plain.toJSON()  # as before
    assert PeerRecord.fromJSON(plain.toJSON()).state == "passing"
    sick = attrs.evolve(plain, health="critical", reason="disk", draining=True, drainChanged=5.0)
    again = PeerRecord.fromJSON(sick.toJSON())
    assert again == sick and again.state == "draining" and not again.usable
    assert (again.health, again.reason) == ("critical", "disk")


def test_fields_from_a_newer_txmasse_are_ignored() -> None:
    fields = json.loads(record().toJSON())
    newer = json.dumps({**fields, "weight": 3, "future": {"x": [1]}}).encode()
    assert PeerRecord.fromJSON(newer) == record(instance=fields["id"], registered=fields["t"])
    missing = {k: v for k, v in fields.items() if k != "ep"}
    with pytest.raises(ValueError, match="at least the fields"):
        PeerRecord.fromJSON(json.dumps(missing))


@pytest.mark.parametrize(
    "state",
    [{"hs": "sick"}, {"hs": 1}, {"hs": "warning", "hr": "x" * 500}, {"dr": "yes"}, {"dt": -1}],
)
def test_a_garbage_state_is_critical_with_a_warning(
    state: dict[str, Any], logged: Sequence[LogEvent]
) -> None:
    fields = {**json.loads(record().toJSON()), **state}
    parsed = PeerRecord.fromJSON(json.dumps(fields))
    assert parsed.health == "critical" and not parsed.usable
    (warning,) = [w for w in warningsIn(logged) if "garbage health or drain state" in w]
    assert fields["id"] in warning


@pytest.mark.parametrize(
    "change, message",
    [
        ({"health": "sick"}, "invalid health 'sick'"),
        ({"reason": "a\nb"}, "invalid health reason"),
        ({"draining": 1}, "invalid draining"),
    ],
)
def test_bad_state_is_refused_when_made(change: dict[str, Any], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        record(**change)


# Bad input


@pytest.mark.parametrize(
    "description, message",
    [
        ("masse:db:meta.=x", "meta.='x': the key after 'meta.' is missing"),
        ("masse:db:prefer.zone", "'prefer.zone' needs a value"),
        ("masse:db:prefer.zone=", "'prefer.zone' needs a value"),
        ("masse:db:meta.bad key=x", "invalid metadata key 'bad key'"),
        ("masse:db:prefer.=a", "the key after 'prefer.' is missing"),
    ],
)
def test_bad_client_options(description: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        MasseNetwork().clientFromString(description)
    assert message in str(raised.value) and "\n" not in str(raised.value)


@pytest.mark.parametrize(
    "description, message",
    [
        ("masse:db:check=ftp\\:/x", "check='ftp:/x': must be tcp or http:/PATH"),
        ("masse:db:check=http\\:noslash", "check='http:noslash': the path must start with '/'"),
        ("masse:db:drain=-1", "drain=-1: must be a number of seconds"),
        ("masse:db:drain=soon", "drain='soon' is not a number"),
        ("masse:db:meta.=x", "the key after 'meta.' is missing"),
    ],
)
def test_bad_server_options(description: str, message: str) -> None:
    with pytest.raises(ValueError) as raised:
        MasseNetwork().serverFromString(description)
    assert message in str(raised.value)


def test_checks_parse_and_twistd_takes_them() -> None:
    assert str(parseCheck("tcp")) == "tcp" and parseCheck("http:/health").path == "/health"
    options = Options()
    arguments = ["--name", "db", "--factory", "tests.endpoint_helpers:Echo"]
    options.parseOptions([*arguments, "--check", "http:/ok", "--drain", "7"])
    assert options["check"] == "http:/ok" and options["drain"] == 7
    from twisted.python.usage import UsageError

    for bad, value, message in (
        ("--check", "udp", r"^--check 'udp': must be tcp or http:/PATH$"),  # no escaping to tell
        ("--check", "http:health", r"^--check 'http:health': .* e.g. --check http:/health$"),
        ("--drain", "-2", "--drain '-2'"),
    ):
        with pytest.raises(UsageError, match=message):
            Options().parseOptions(["--name", "db", "--factory", "x:y", bad, value])
    endpointOption = re.escape("check='udp': must be tcp or http:/PATH (escape")
    with pytest.raises(ValueError, match=endpointOption):
        parseCheck("udp")  # as the endpoint option, where ':' is escaped
