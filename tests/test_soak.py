"""
The churn soak of C{bench/soak.py}, short: a few hundred leases register,
release and die at random for a few seconds under two watchers (one in a
process of its own), against a real Redis and a SQLite file. Nothing may
leak, and each watcher's log must be exact. (C{python -m bench.soak} runs
it for 60 s with 1,000 leases and reports memory too.)
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor

from bench.soak import SoakConfig, SoakReport, checkLog, soak
from tests.helpers import RedisServer

SHORT = SoakConfig(
    seconds=3.5,
    leases=300,
    registries=3,
    ttl=(0.5, 1.5),
    life=(0.1, 1.5),
    pause=(0.0, 0.5),
    sampleEvery=0.5,
    drainTimeout=10.0,
    settle=0.5,
)


def check(report: SoakReport) -> None:
    print("\n" + report.summary())
    assert report.violations == []
    assert report.leaked == []
    assert report.registered > report.config.leases  # each slot went round more than once
    assert report.released > 0 and report.died > 0
    assert len(report.watchers) == 2
    for watcher in report.watchers:
        counts = watcher.counts
        assert counts["joined"] == counts["left"] + counts["timedout"] > report.config.leases
        assert counts["timedout"] >= report.died


@pytest_twisted.ensureDeferred
async def test_soak_redis(redis_server: RedisServer) -> None:
    report = await soak(reactor, redis_server.url + "?timeout=5", SHORT)
    check(report)
    assert report.kept["events"] == 2 * report.registered  # joined and closed, no more


@pytest_twisted.ensureDeferred
async def test_soak_sqlite(tmp_path: Path) -> None:
    report = await soak(reactor, f"sqlite://{tmp_path}/registry.db?timeout=5", SHORT)
    check(report)


def test_the_log_check_catches_what_it_must() -> None:
    truth = {"a": "released", "b": "died", "c": "released", "d": "died", "e": "unsure"}
    log = [
        ("joined", "a"), ("left", "a"), ("left", "a"),  # closed twice
        ("timedout", "b"),  # before joined
        ("joined", "c"), ("left", "c"), ("updated", "c"),  # after close
        ("joined", "d"), ("left", "d"),  # died, yet left
        ("joined", "x"),  # never registered
        ("joined", "f"), ("joined", "f"), ("timedout", "f"),  # joined twice
        ("joined", "g"), ("left", "g"), ("joined", "g"), ("left", "g"),  # back after left
    ]  # fmt: skip
    truth |= {"f": "died", "g": "released"}
    violations = checkLog("w", log, truth).violations
    assert len(violations) == 8, violations  # g: joined, then left, after it left
    for words in (
        "a: left after it left",
        "b: timedout before joined",
        "c: updated after it left",
        "d: died but left",
        "never registered: x",
        "f: joined again while joined",
        "g: joined again while left",
    ):
        assert any(words in v for v in violations), words
    assert checkLog("w", [("joined", "a")], {"a": "released"}).violations == [
        "w: a: never closed (['joined'], released)"
    ]
    assert "never seen" in checkLog("w", [], {"a": "died"}).violations[0]
    fine = [("joined", "a"), ("updated", "a"), ("timedout", "a"), ("joined", "e")]
    result = checkLog("w", fine, {"a": "released", "e": "unsure"})
    assert result.violations == [] and result.lateReleases == 1
    # Timed out while its heartbeat was late, written back, then released or died.
    late = [("joined", "a"), ("timedout", "a"), ("joined", "a"), ("left", "a")]
    late += [("joined", "d"), ("timedout", "d"), ("joined", "d"), ("timedout", "d")]
    result = checkLog("w", late, {"a": "released", "d": "died"})
    assert result.violations == [] and result.rewritten == 2 and result.lateReleases == 0
    assert checkLog("w", late[:3], {"a": "released"}).violations == [
        "w: a: never closed (['joined', 'timedout', 'joined'], released)"
    ]
