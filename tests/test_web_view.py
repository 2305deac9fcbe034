"""
The dashboard's bookkeeping under a Clock: what a listener is told and
when, what stays bounded, and health as the page reads it.
"""

from __future__ import annotations

from typing import Any

import attrs
from twisted.internet.task import Clock
from twisted.web.test.requesthelper import DummyRequest

from txmasse.records import PeerRecord
from txmasse.registry import EventKind, PeerEvent
from txmasse.registry.memory import MemoryRegistry
from txmasse.web._collectors import InstancesCollector
from txmasse.web._events import MAX_QUEUED, EventStream
from txmasse.web._records import health, recordJSON
from txmasse.web._view import RECENT, NamespaceView


class Listener:
    def __init__(self, usage: bool = False):
        self.usage = usage
        self.messages: list[tuple[str | None, dict[str, Any]]] = []

    def send(self, event: str | None, data: dict[str, Any]) -> None:
        self.messages.append((event, data))

    def kinds(self) -> list[str]:
        return [data["kind"] for event, data in self.messages if event is None]

    def named(self, name: str) -> list[dict[str, Any]]:
        return [data for event, data in self.messages if event == name]


def record(name: str, **metadata: str) -> PeerRecord:
    return PeerRecord("dev", name, ["tcp:host=10.0.0.1:port=1"], metadata)


def started(clock: Clock) -> tuple[MemoryRegistry, NamespaceView]:
    registry = MemoryRegistry(clock)
    view = NamespaceView(registry, "dev", clock, refresh=1.0)
    view.start()
    return registry, view


def test_a_listener_hears_the_members_then_each_change() -> None:
    clock = Clock()
    registry, view = started(clock)
    registry.register(record("a"), 5)
    listener = Listener()
    view.listen(listener)
    assert listener.named("status") == [{"namespace": "dev", "synced": True, "error": None}]
    assert listener.kinds() == ["present"]
    assert [m["kind"] for m in listener.named("recent")] == ["joined"]  # it came before
    later = listener
    registry.register(record("b"), 5)
    assert later.kinds() == ["present", "joined"]
    assert later.named("leases") == []
    clock.advance(0.05)  # soon after a join, the leases are read
    (leases,) = later.named("leases")
    assert sorted(leases["expiresIn"].values()) == [4.95, 4.95]


def test_an_update_replaces_the_record() -> None:
    clock = Clock()
    registry, view = started(clock)
    leasing = registry.register(record("a", v="1"), 5)
    listener = Listener()
    view.listen(listener)
    leasing.addCallback(lambda lease: lease.update(attrs.evolve(lease.record, metadata={"v": "2"})))
    (updated,) = [data for event, data in listener.messages if data.get("kind") == "updated"]
    assert updated["record"]["metadata"] == {"v": "2"}
    assert [dict(r.metadata) for r in view.members] == [{"v": "2"}]


def test_leases_are_read_only_while_someone_listens() -> None:
    clock = Clock()
    registry, view = started(clock)
    reads = []
    leases = registry.leases

    def counting(namespace: str, pattern: str) -> Any:
        reads.append(clock.seconds())
        return leases(namespace, pattern)

    registry.leases = counting  # type: ignore[method-assign]
    clock.advance(10)
    assert reads == []
    stop = view.listen(Listener())
    clock.advance(0)
    clock.advance(1)
    clock.advance(1)
    assert reads == [0 + 10, 11, 12]
    stop()
    clock.advance(1)  # the poll already due finds nobody
    clock.advance(10)
    assert reads == [10, 11, 12]


def test_recent_events_are_bounded() -> None:
    clock = Clock()
    registry, view = started(clock)
    for i in range(RECENT):
        lease = registry.register(record(f"p{i}"), 5)
        lease.addCallback(lambda lease: lease.release())
    listener = Listener()
    view.listen(listener)
    recent = listener.named("recent")
    assert len(recent) == RECENT  # of 2 * RECENT events: the last ones
    assert recent[-1]["kind"] == "left" and recent[-1]["record"]["name"] == f"p{RECENT - 1}"


def test_stream_use_only_for_listeners_that_ask() -> None:
    clock = Clock()
    registry, view = started(clock)
    registry.register(record("a"), 5)
    plain, usage = Listener(), Listener(usage=True)
    view.listen(plain)
    view.listen(usage)
    registry.report(PeerEvent(EventKind.CONNECTED, record("a"), "client:1"))
    assert usage.kinds()[-1] == "connected"
    assert plain.kinds() == ["present"]
    sources = [data.get("source") for event, data in usage.messages if event is None]
    assert sources == [None, "client:1"]


def test_stop_ends_the_watch() -> None:
    clock = Clock()
    registry, view = started(clock)
    listener = Listener()
    view.listen(listener)
    view.stop()
    registry.register(record("a"), 5)
    clock.advance(5)
    assert listener.kinds() == []
    assert view.members == ()


class Request(DummyRequest):
    lost = False

    def registerProducer(self, producer: object, streaming: bool) -> None:
        self.producer = producer  # DummyRequest's own pulls from it in a loop

    def loseConnection(self) -> None:
        self.lost = True


def test_a_reader_that_falls_behind_is_disconnected() -> None:
    clock = Clock()
    registry, view = started(clock)
    request = Request([b""])
    stream = EventStream(request, False, clock)  # type: ignore[arg-type]
    stream.start([view], {"namespaces": ["dev"]})
    assert b"event: hello" in b"".join(request.written)
    stream.pauseProducing()
    written = len(request.written)
    for i in range(MAX_QUEUED):
        registry.register(record(f"p{i}"), 5)
    assert len(request.written) == written and not request.lost  # kept for when it reads
    stream.resumeProducing()
    assert len(request.written) == written + MAX_QUEUED
    stream.pauseProducing()
    for i in range(MAX_QUEUED + 1):
        registry.register(record(f"q{i}"), 5)
    assert request.lost
    registry.register(record("after"), 5)
    stream.resumeProducing()
    assert len(request.written) == written + MAX_QUEUED  # nothing more: it is over


def test_instances_by_name_and_health() -> None:
    clock = Clock()
    registry, view = started(clock)
    registry.register(record("db"), 5)
    registry.register(record("db"), 5)
    registry.register(record("web"), 5)
    (family,) = InstancesCollector([view]).collect()
    assert family.name == "masse_instances"
    assert {(s.labels["name"], s.labels["health"]): s.value for s in family.samples} == {
        ("db", "passing"): 2,
        ("web", "passing"): 1,
    }


def test_health_as_the_page_shows_it() -> None:
    assert health(record("a")) == ("passing", None)
    assert recordJSON(record("a"))["health"] == "passing"
    slow = attrs.evolve(record("a"), health="warning", reason="slow disk")
    assert health(slow) == ("warning", "slow disk")
    assert recordJSON(slow)["reason"] == "slow disk"
    assert health(attrs.evolve(record("a"), health="critical")) == ("critical", None)
    drained = recordJSON(attrs.evolve(record("a"), draining=True, drainChanged=1.0))
    assert drained["draining"] is True and drained["health"] == "passing"
