"""
Deadlines for a registry's calls in flight, kept by one timer.

C{Deferred.addTimeout} schedules a delayed call per call and cancels it
when the answer comes: on loopback that is a tenth of what a lookup costs
its caller beyond the round trip. All of a registry's calls have the same
deadline, so they end in the order they started: one timer, at the oldest
unanswered call's deadline, keeps them all. It runs while calls are in
flight (and once more, at most one deadline after the last one ended);
L{Deadlines.stop} cancels it when the registry closes.
"""

from __future__ import annotations

from collections import deque
from typing import Any, TypeVar

from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.interfaces import IDelayedCall, IReactorTime
from twisted.python.failure import Failure

T = TypeVar("T")


class _Call:
    __slots__ = ("deadline", "deferred", "ended", "timedOut")

    def __init__(self, deadline: float, deferred: Deferred[Any]):
        self.deadline = deadline
        self.deferred = deferred
        self.ended = False
        self.timedOut = False


class Deadlines:
    """
    Bounds Deferreds to C{seconds} each, as C{addTimeout} does: one that
    has not fired in time is cancelled, and fails with
    C{twisted.internet.defer.TimeoutError}.
    """

    def __init__(self, clock: IReactorTime, seconds: float):
        self.clock = clock
        self.seconds = seconds
        self._calls: deque[_Call] = deque()
        self._timer: IDelayedCall | None = None
        self._stopped = False

    def bound(self, deferred: Deferred[T]) -> Deferred[T]:
        """
        C{deferred}, with its deadline: add this before any errback that
        should see the timeout.
        """
        calls = self._calls
        while calls and calls[0].ended:
            calls.popleft()  # so that they stay as few as the calls in flight
        call = _Call(self.clock.seconds() + self.seconds, deferred)
        calls.append(call)
        deferred.addBoth(_ended, call)
        if self._timer is None and not self._stopped:
            self._timer = self.clock.callLater(self.seconds, self._expire)
        return deferred

    def stop(self) -> None:
        """
        Keep no deadline from now on (the registry is closed: its calls
        fail at once, or are answered as the connection closes).
        """
        self._stopped = True
        if self._timer is not None and self._timer.active():
            self._timer.cancel()
        self._timer = None

    def _expire(self) -> None:
        self._timer = None
        now = self.clock.seconds()
        calls = self._calls
        while calls and (calls[0].ended or calls[0].deadline <= now):
            call = calls.popleft()
            if not call.ended:
                call.timedOut = True
                call.deferred.cancel()
        if calls and not self._stopped:
            self._timer = self.clock.callLater(max(calls[0].deadline - now, 0.0), self._expire)


def _ended(result: object, call: _Call) -> object:
    call.ended = True
    if call.timedOut and isinstance(result, Failure) and result.check(CancelledError):
        return Failure(DeferredTimeout(f"no answer within the deadline: {result.value}"))
    return result
