"""
One timer for all of a registry's calls in flight (L{Deadlines}), on a Clock.
"""

from __future__ import annotations

from typing import Any

import pytest
from twisted.internet.defer import Deferred
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.task import Clock

from txmasse.registry.deadlines import Deadlines


def pending(canceller: Any = None) -> Deferred[Any]:
    return Deferred(canceller)


def outcomes(d: Deferred[Any]) -> list[Any]:
    seen: list[Any] = []
    d.addBoth(seen.append)
    return seen


def test_calls_answered_in_time_pass_through_and_share_one_timer() -> None:
    clock = Clock()
    deadlines = Deadlines(clock, 5)
    calls = [deadlines.bound(pending()) for _ in range(3)]
    assert len(clock.getDelayedCalls()) == 1
    seen = [outcomes(call) for call in calls]
    clock.advance(4)
    for i, call in enumerate(calls):
        call.callback(i)
    assert seen == [[0], [1], [2]]
    clock.advance(1)  # the timer finds them all answered, and is not set again
    assert clock.getDelayedCalls() == []


def test_a_call_without_an_answer_is_cancelled_at_its_deadline() -> None:
    clock = Clock()
    deadlines = Deadlines(clock, 5)
    cancelled: list[object] = []
    early = deadlines.bound(pending(cancelled.append))
    clock.advance(2)
    late = deadlines.bound(pending(cancelled.append))
    seenEarly, seenLate = outcomes(early), outcomes(late)
    clock.advance(2.9)
    assert seenEarly == [] and cancelled == []
    clock.advance(0.1)
    [failure] = seenEarly
    assert failure.check(DeferredTimeout) and "no answer within the deadline" in str(failure.value)
    assert seenLate == [] and len(cancelled) == 1
    [timer] = clock.getDelayedCalls()  # now for the later call's deadline
    assert timer.getTime() == pytest.approx(7)
    clock.advance(2)
    assert seenLate[0].check(DeferredTimeout) and len(cancelled) == 2
    assert clock.getDelayedCalls() == []


def test_a_call_waiting_on_another_is_timed_out_through_it() -> None:
    clock = Clock()
    deadlines = Deadlines(clock, 1)
    inner: Deferred[Any] = Deferred()
    outer: Deferred[Any] = Deferred()
    outer.addCallback(lambda _: inner)  # a retry, say: the deadline bounds the whole
    outer.callback(None)
    seen = outcomes(deadlines.bound(outer))
    clock.advance(1)
    assert seen[0].check(DeferredTimeout)
    assert inner.called  # cancelled with it


def test_stopped_deadlines_leave_no_timer() -> None:
    clock = Clock()
    deadlines = Deadlines(clock, 5)
    call = deadlines.bound(pending())
    deadlines.stop()
    assert clock.getDelayedCalls() == []
    deadlines.bound(pending())
    assert clock.getDelayedCalls() == []
    call.callback("late")
    assert outcomes(call) == ["late"]
