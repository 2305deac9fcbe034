"""
Logs an operator reads: a Redis outage is told once with its progress (not
a few lines per reconnect attempt), and every field of the events we log
survives JSON (twisted.logger's eventAsJSON), as a JSON log file needs.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, TCP4ServerEndpoint, connectProtocol
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.logger import LogEvent, capturedLogs, eventAsJSON, formatEvent

from tests.endpoint_helpers import Echo
from tests.helpers import RedisServer, eventually, newRegistry
from txmasse.errors import RegistryUnavailable
from txmasse.registry._outage import OutageLog
from txmasse.registry.redis_sentinel import SentinelEndpoint
from txmasse.wrappers import parseWrappers

PER_ATTEMPT = ("Starting factory", "Stopping factory", "Scheduling retry")


def unpersistable(event: LogEvent) -> list[str]:
    """
    The fields of C{event} (but the logger itself) that eventAsJSON cannot
    write.
    """
    written = json.loads(eventAsJSON(event))
    flattened = written.pop("log_flattened", {})
    bad = [key for key, value in written.items() if value == {"unpersistable": True}]
    bad += [key for key, value in flattened.items() if value == {"unpersistable": True}]
    return [key for key in bad if key != "log_logger"]


def texts(events: Sequence[LogEvent], namespace: str = "") -> list[str]:
    return [formatEvent(e) for e in events if str(e.get("log_namespace", "")).startswith(namespace)]


# The outage log, on a clock


def test_an_outage_is_logged_once_then_its_progress() -> None:
    clock = Clock()
    outage = OutageLog(clock, "redis://r/0")
    with capturedLogs() as events:
        outage.failed("calls", "refused")
        for _ in range(9):
            clock.advance(1)
            outage.failed("calls", "refused")
        assert texts(events) == [
            "registry redis://r/0 unreachable: refused; reconnecting until it answers"
        ]
        clock.advance(1)
        outage.failed("events", "refused")  # another connection: the same outage
        clock.advance(19)
        outage.failed("calls", "refused")  # progress every 10 s, then 20 s, ...
        clock.advance(1)
        outage.failed("calls", "refused")
        outage.connected("calls")  # the events connection is still down
        assert len(events) == 3
        outage.connected("events")
    assert texts(events)[1:] == [
        "registry redis://r/0 still unreachable after 10s and 11 attempts: refused",
        "registry redis://r/0 still unreachable after 30s and 13 attempts: refused",
        "registry redis://r/0 reachable again after 30.0s and 13 attempts",
    ]
    assert not outage.down
    assert [e["log_level"].name for e in events] == ["warn", "warn", "warn", "info"]
    assert all(unpersistable(e) == [] for e in events)
    outage.connected("calls")  # up and known to be up: nothing to say
    assert len(events) == 4


# A real Redis going away and coming back


@pytest_twisted.ensureDeferred
async def test_redis_outage_is_one_warning_and_one_recovery(redis_server: RedisServer) -> None:
    registry = newRegistry(redis_server.url + "?timeout=0.5")
    try:
        await registry.lookup("dev", "db")
        with capturedLogs() as events:
            redis_server.stop()
            await eventually(lambda: any("unreachable" in t for t in texts(events)))
            with pytest.raises(RegistryUnavailable):
                await registry.lookup("dev", "db")
            outage = registry._commandFactory.outage
            await eventually(lambda: outage.attempts >= 3)  # it retries, quietly
            redis_server.start()
            await eventually(lambda: any("reachable again" in t for t in texts(events)))
            assert await registry.lookup("dev", "db") == []
    finally:
        await registry.close()
    shown = texts(events)
    assert not [t for t in shown if t.startswith(PER_ATTEMPT)], shown
    mine = texts(events, "txmasse.registry._outage")
    assert len(mine) == 2 and "unreachable: " in mine[0], mine
    (recovered,) = [e for e in events if "reachable again" in formatEvent(e)]
    assert recovered["attempts"] >= 3
    assert all(unpersistable(e) == [] for e in events), [unpersistable(e) for e in events]


@pytest_twisted.ensureDeferred
async def test_asking_sentinels_is_quiet(redis_server: RedisServer) -> None:
    """
    Each question to a sentinel is a new connection: it logs nothing by
    itself (here a plain Redis, which does not know SENTINEL, is asked).
    """
    sentinels = SentinelEndpoint(reactor, [("127.0.0.1", redis_server.port)], "mymaster")
    with capturedLogs() as events:
        with pytest.raises(ConnectionError, match="no sentinel gave master 'mymaster'"):
            await sentinels.masterAddress()
    assert not [t for t in texts(events) if t.startswith(PER_ATTEMPT)], texts(events)


# wrap=log


@pytest_twisted.ensureDeferred
async def test_wrap_log_events_are_json_serialisable() -> None:
    [wrapper] = parseWrappers(reactor, "log")
    port = await TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1").listen(
        wrapper(Factory.forProtocol(Echo))
    )
    received: list[bytes] = []

    class Client(Protocol):
        def dataReceived(self, data: bytes) -> None:
            received.append(data)

    try:
        with capturedLogs() as events:
            client = await connectProtocol(
                TCP4ClientEndpoint(reactor, "127.0.0.1", port.getHost().port), Client()
            )
            client.transport.write(b"ping")
            await eventually(lambda: received == [b"ping"])
            client.transport.loseConnection()
            await eventually(lambda: any("closed after" in t for t in texts(events)))
    finally:
        await port.stopListening()
    logged: list[Any] = [e for e in events if e.get("log_namespace") == "txmasse.wrappers"]
    assert [formatEvent(e).split(": ")[-1] for e in logged][1:3] == [
        "received 4 bytes",
        "sent 4 bytes",
    ]
    assert all(unpersistable(e) == [] for e in logged), [unpersistable(e) for e in logged]
    peer = json.loads(eventAsJSON(logged[1]))["peer"]
    assert peer.startswith("IPv4Address(type='TCP', host='127.0.0.1'"), peer
