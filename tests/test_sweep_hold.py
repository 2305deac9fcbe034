"""
After the store comes back (a reconnect, a failover), no expiry is swept
for one heartbeat interval: holders write their leases back first.
"""

from __future__ import annotations

from twisted.internet.defer import Deferred, succeed
from twisted.internet.task import Clock

from tests.helpers import record
from txmasse.records import PeerRecord
from txmasse.registry.shared import SWEEP_HOLD, SWEEP_INTERVAL, SharedStoreRegistry


class CountingSweeps(SharedStoreRegistry):
    url = "test://"

    def __init__(self, clock: Clock):
        super().__init__(clock, grace=3.0)
        self.sweeps: list[float] = []
        self._testClock = clock

    def putRecord(self, record: PeerRecord, ttl: float) -> Deferred[None]:
        return succeed(None)

    def removeRecord(self, record: PeerRecord) -> Deferred[None]:
        return succeed(None)

    def _sweepOnce(self, namespace: str) -> Deferred[float | None]:
        self.sweeps.append(self._testClock.seconds())
        return succeed(None)


def test_sweeps_wait_a_heartbeat_interval_after_the_store_is_back() -> None:
    clock = Clock()
    registry = CountingSweeps(clock)
    registry.register(record("db"), 6.0)  # heartbeat every 2 s: longer than SWEEP_HOLD
    clock.advance(0)
    assert registry.sweeps == [0.0]
    clock.advance(SWEEP_INTERVAL)
    assert registry.sweeps == [0.0, SWEEP_INTERVAL]
    registry.holdSweeps()
    held = clock.seconds()
    clock.advance(1.99)
    assert registry.sweeps == [0.0, SWEEP_INTERVAL]  # none for the 2 s interval
    clock.advance(0.02)
    assert len(registry.sweeps) == 3 and abs(registry.sweeps[-1] - (held + 2.0)) < 0.05
    clock.advance(SWEEP_INTERVAL)
    assert len(registry.sweeps) == 4  # sweeping as before


def test_without_leases_the_hold_is_the_least() -> None:
    clock = Clock()
    registry = CountingSweeps(clock)
    registry._startSweeping("dev")
    registry._watchers["dev"] = set()  # a watcher's namespace, with no lease here
    registry._watchers["dev"].add(object())  # type: ignore[arg-type]
    clock.advance(0)
    registry.holdSweeps()
    clock.advance(SWEEP_HOLD - 0.01)
    assert registry.sweeps == [0.0]
    clock.advance(0.02)
    assert len(registry.sweeps) == 2
