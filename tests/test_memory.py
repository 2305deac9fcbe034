"""
MemoryRegistry under a Clock: exact heartbeat and expiry timing.
"""

from __future__ import annotations

from typing import cast

from twisted.internet.task import Clock

from tests.helpers import Events, record
from txmasse.registry.base import Lease
from txmasse.registry.memory import MemoryRegistry


def registered(registry: MemoryRegistry, ttl: float, name: str = "db") -> Lease:
    results: list[object] = []
    registry.register(record(name), ttl).addCallback(results.append)
    return cast(Lease, results[0])


def looked(registry: MemoryRegistry, name: str = "db") -> list[str]:
    results: list[list[str]] = []
    registry.lookup("dev", name).addCallback(lambda rs: results.append([r.name for r in rs]))
    return results[0]


def test_heartbeat_every_third_of_the_ttl() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock)
    beats: list[float] = []
    put = registry.putRecord

    def counting(r, ttl):  # type: ignore[no-untyped-def]
        beats.append(clock.seconds())
        return put(r, ttl)

    registry.putRecord = counting  # type: ignore[method-assign]
    registered(registry, 3.0)
    clock.pump([0.5] * 20)
    assert beats == [0.0] + [float(n) for n in range(1, 11)]  # registration, then beats
    assert looked(registry) == ["db"]


def test_expires_exactly_ttl_after_last_heartbeat() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock)
    events = Events()
    registry.watch("dev", "*", events)
    lease = registered(registry, 3.0)
    clock.advance(2.0)  # heartbeat at 1.0 and 2.0
    lease.stop()
    clock.advance(2.999)
    assert events.kinds() == [("joined", "db")]
    clock.advance(0.001)
    assert events.kinds() == [("joined", "db"), ("timedout", "db")]
    clock.advance(100)
    assert len(events) == 2
    assert looked(registry) == []


def test_expired_record_never_returned_even_before_the_sweep() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock)
    events = Events()
    registry.watch("dev", "*", events)
    lease = registered(registry, 1.0)
    lease.stop()
    clock.rightNow += 5  # time passes, no scheduled call has run
    assert looked(registry) == []
    assert events.kinds() == [("joined", "db"), ("timedout", "db")]
    clock.advance(0)
    assert len(events) == 2


def test_release_is_left_not_timedout() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock)
    events = Events()
    registry.watch("dev", "*", events)
    lease = registered(registry, 1.0)
    lease.release()
    clock.advance(10)
    assert events.kinds() == [("joined", "db"), ("left", "db")]


def test_close_stops_heartbeats_without_releasing() -> None:
    clock = Clock()
    registry = MemoryRegistry(clock)
    lease = registered(registry, 1.0)
    registry.close()
    assert not lease.beating
    assert clock.getDelayedCalls() == []
