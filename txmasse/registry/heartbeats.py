"""
Coalesced heartbeats: one timer per store, however many leases it keeps.

A process may hold thousands of leases. One timer and one store call per
lease and per heartbeat cost more client CPU and memory than the leases
themselves, so the leases of one store share a L{HeartbeatWheel}: it keeps
them in slots of L{TICK} seconds, arms one delayed call for the earliest
slot, and when a slot is due extends all of its leases with as few store
calls as it can (one per namespace and ttl, in chunks of L{CHUNK}).

A heartbeat is taken early rather than late: a lease due inside a slot
is renewed at the slot's start, at most L{TICK} seconds before its due
time, never after it.
"""

from __future__ import annotations

import heapq
import math
import weakref
from typing import TYPE_CHECKING, Any

from twisted.internet.defer import Deferred, maybeDeferred
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

from txmasse import metrics
from txmasse.records import PeerRecord

if TYPE_CHECKING:
    from txmasse.registry.base import Lease


TICK = 0.05
"""Seconds per slot: heartbeats due within one slot go together."""

CHUNK = 200
"""
Most leases extended by one store call: sized so that one Redis script
call stays well under a millisecond.
"""


class HeartbeatWheel:
    """
    The heartbeat timer of one store's leases.
    """

    def __init__(self, store: object, clock: IReactorTime):
        self._store = store
        self.clock = clock
        self._slots: dict[int, dict[Lease, None]] = {}
        self._due: list[int] = []  # heap of the slots that hold leases
        self._call: IDelayedCall | None = None
        self._armedFor: int | None = None

    def __repr__(self) -> str:
        waiting = sum(len(leases) for leases in self._slots.values())
        return f"<HeartbeatWheel leases={waiting} slots={len(self._slots)}>"

    def add(self, lease: Lease, due: float) -> None:
        """
        Renew C{lease} at C{due} (reactor seconds), or up to one slot earlier.
        """
        slot = math.floor(due / TICK)
        leases = self._slots.get(slot)
        if leases is None:
            self._slots[slot] = {lease: None}
            heapq.heappush(self._due, slot)
            if self._armedFor is None or slot < self._armedFor:
                self._arm(slot)
        else:
            leases[lease] = None

    def remove(self, lease: Lease, due: float) -> None:
        """
        Forget C{lease}, which was due at C{due}; with no lease left, no
        timer stays armed.
        """
        slot = math.floor(due / TICK)
        leases = self._slots.get(slot)
        if leases is not None:
            leases.pop(lease, None)
            if not leases:
                del self._slots[slot]
        if not self._slots:
            self._due.clear()
            if self._call is not None and self._call.active():
                self._call.cancel()
            self._call = self._armedFor = None

    def _arm(self, slot: int) -> None:
        if self._call is not None and self._call.active():
            self._call.cancel()
        self._armedFor = slot
        delay = max(0.0, slot * TICK - self.clock.seconds())
        self._call = self.clock.callLater(delay, self._fire)

    def _fire(self) -> None:
        now = self.clock.seconds()
        current = max(self._armedFor or 0, math.floor(now / TICK))
        self._call = self._armedFor = None
        groups: dict[tuple[str, float], list[Lease]] = {}
        while self._due and self._due[0] <= current:
            for lease in self._slots.pop(heapq.heappop(self._due), ()):
                if lease.beating:
                    groups.setdefault((lease.record.namespace, lease.ttl), []).append(lease)
        for (_, ttl), leases in groups.items():
            for start in range(0, len(leases), CHUNK):
                self._beat(leases[start : start + CHUNK], ttl, now)
        while self._due and self._due[0] not in self._slots:
            heapq.heappop(self._due)  # emptied by remove()
        if self._due:
            self._arm(self._due[0])

    def _beat(self, leases: list[Lease], ttl: float, now: float) -> None:
        for lease in leases:
            self.add(lease, lease.nextDue(now))
        records = [lease.renewed() for lease in leases]
        d = _heartbeat(self._store, records, ttl)

        def succeeded(_: object) -> None:
            for lease in leases:
                lease.beatSucceeded()

        def failed(failure: Failure) -> None:
            for lease in leases:
                lease.beatFailed(failure)

        d.addCallbacks(succeeded, failed)


@metrics.registryCall("refresh")
def _heartbeat(store: Any, records: list[PeerRecord], ttl: float) -> Deferred[None]:
    """
    One heartbeat call for C{records}: counted and timed as a registry call.
    """
    extend = getattr(store, "extendLeases", None)
    if extend is None:  # a store written before the contract had it
        from txmasse.registry.base import extendByPutting

        return maybeDeferred(extendByPutting, store, records, ttl)
    return maybeDeferred(extend, records, ttl)


_wheels: weakref.WeakValueDictionary[int, HeartbeatWheel] = weakref.WeakValueDictionary()
"""
The wheels in use, by C{id} of their store: a wheel keeps its store alive,
so the id is not reused while the wheel is listed (stores need not be
hashable), and a wheel no lease uses any more goes away.
"""


def wheelFor(store: object, clock: IReactorTime) -> HeartbeatWheel:
    """
    The wheel of C{store}'s leases, made on first use.
    """
    wheel = _wheels.get(id(store))
    if wheel is None or wheel.clock is not clock:
        wheel = _wheels[id(store)] = HeartbeatWheel(store, clock)
    return wheel
