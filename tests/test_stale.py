"""
During an outage: stale lookups when the caller allows them, and watchers
that say whether their view is current.
"""

from __future__ import annotations

import time
from typing import Any

import pytest
import pytest_twisted
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.task import Clock
from twisted.python.failure import Failure

from tests.helpers import Events, RedisServer, eventually, newRegistry, record
from txmasse import RegistryUnavailable
from txmasse.registry import MemoryRegistry
from txmasse.registry.base import LastAnswers
from txmasse.registry.interface import StaleRecords


@pytest.fixture
def registry(redis_server: RedisServer) -> Any:
    registry = newRegistry(redis_server.url + "?timeout=0.3")
    yield registry
    pytest_twisted.blockon(registry.close())


@pytest_twisted.ensureDeferred
async def test_stale_lookup_answers_from_the_last_good_view(
    redis_server: RedisServer, registry: Any
) -> None:
    lease = await registry.register(record("db"), 5)
    fresh = await registry.lookup("dev", "db", stale=60)
    assert fresh == [lease.record] and not isinstance(fresh, StaleRecords)
    redis_server.stop()

    # By default a lookup fails fast.
    started = time.monotonic()
    with pytest.raises(RegistryUnavailable):
        await registry.lookup("dev", "db")
    assert time.monotonic() - started < 1.0

    # Allowed, it answers from the last good view and says so.
    answer = await registry.lookup("dev", "db", stale=60)
    assert isinstance(answer, StaleRecords)
    assert list(answer) == [lease.record]
    assert 0 < answer.age < 60
    assert "127.0.0.1" in answer.reason

    # A caller that gives up gets its cancellation, not an old answer.
    cancelled = registry.lookup("dev", "db", stale=60)
    cancelled.cancel()
    with pytest.raises(CancelledError):
        await cancelled

    # Only as stale as allowed, and only for names it has seen.
    with pytest.raises(RegistryUnavailable):
        await registry.lookup("dev", "db", stale=0.0)
    with pytest.raises(RegistryUnavailable):
        await registry.lookup("dev", "never-looked-up", stale=60)

    redis_server.start()
    await eventually(lambda: redis_server.command("HLEN", "masse:{dev}:n:db") == 1)
    again = await registry.lookup("dev", "db", stale=60)
    assert again == [lease.record] and not isinstance(again, StaleRecords)


@pytest.mark.parametrize("stale", [-1, float("nan"), float("inf"), "5", True])
def test_stale_must_be_seconds(stale: object) -> None:
    registry = MemoryRegistry(Clock())
    failures: list[Failure] = []
    registry.lookup("dev", "db", stale=stale).addErrback(failures.append)  # type: ignore[arg-type]
    assert failures and failures[0].check(ValueError)
    assert "stale=" in failures[0].getErrorMessage()


def test_last_answers_age_and_bound() -> None:
    clock = Clock()
    answers = LastAnswers(clock, size=2)
    for name in ("a", "b", "c"):
        answers.remember([record(name)], ("dev", name))
    clock.advance(5)
    unavailable = Failure(RegistryUnavailable("registry redis://x is down"))

    a = answers.fallBack(unavailable, ("dev", "a"), 60)
    assert a is unavailable  # evicted: the oldest of three, two kept
    c = answers.fallBack(unavailable, ("dev", "c"), 60)
    assert isinstance(c, StaleRecords) and c.age == 5 and c[0].name == "c"
    assert answers.fallBack(unavailable, ("dev", "c"), 4.9) is unavailable

    other = Failure(ValueError("a bad name"))
    assert answers.fallBack(other, ("dev", "c"), 60) is other


@pytest_twisted.ensureDeferred
async def test_watch_says_when_its_view_is_not_current(
    redis_server: RedisServer, registry: Any
) -> None:
    events = Events()
    subscription = await registry.watch("dev", "*", events)
    assert subscription.synced

    redis_server.stop()
    await eventually(lambda: not subscription.synced)
    redis_server.start()
    await eventually(lambda: subscription.synced, timeout=5)

    peer = newRegistry(redis_server.url)
    try:
        await peer.register(record("db"), 5)
        await eventually(lambda: events.kinds() == [("joined", "db")])
    finally:
        await peer.close()
    subscription.stop()
    assert not subscription.synced


@pytest_twisted.ensureDeferred
async def test_memory_watch_is_always_synced() -> None:
    registry = MemoryRegistry(Clock())
    subscription = await registry.watch("dev", "*", lambda event: None)
    assert subscription.synced
    subscription.stop()
    assert not subscription.synced
    done: Deferred[None] = registry.close()
    await done
