"""
A server that starts before its registry listens at once, logs one
warning, and registers as soon as the registry answers: on a clock, and
with C{twistd web} and a real Redis started seconds later.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.internet.testing import MemoryReactorClock
from twisted.logger import capturedLogs, formatEvent
from twisted.web.client import Agent, readBody
from zope.interface import implementer

from tests.endpoint_helpers import ByName, ChildProcess, Echo, peerEnvironment
from tests.helpers import RedisServer, eventually, freePort, sleep
from txmasse._server import REGISTER_RETRY
from txmasse.endpoints import MasseListeningPort, MasseServerEndpoint
from txmasse.errors import RegistryUnavailable
from txmasse.records import PeerRecord
from txmasse.registry import IRegistry, MemoryRegistry, registryFromURL


@implementer(IRegistry)
class UnreachableRegistry(MemoryRegistry):
    """
    Unreachable for its first C{failures} registrations, then a memory registry.
    """

    url = "unreachable://"

    def __init__(self, clock: Any, failures: int):
        super().__init__(clock)
        self.failures = failures
        self.attempts = 0

    def register(self, record: PeerRecord, ttl: float) -> Any:
        self.attempts += 1
        if self.attempts <= self.failures:
            raise RegistryUnavailable(f"registry unreachable:// refused (try {self.attempts})")
        return super().register(record, ttl)


def unreachableServer(failures: int) -> tuple[MemoryReactorClock, UnreachableRegistry, Any]:
    clock = MemoryReactorClock()
    registry = UnreachableRegistry(clock, failures)
    inner = TCP4ServerEndpoint(clock, 4000, interface="127.0.0.1")
    endpoint = MasseServerEndpoint(clock, "db", "t", registry=registry, endpoint=inner)
    listening = endpoint.listen(Factory.forProtocol(Echo))
    ports: list[Any] = []
    listening.addCallback(ports.append)
    assert len(ports) == 1  # listening at once, registered or not
    return clock, registry, ports[0]


def test_an_unreachable_registry_still_listens_and_registers_once_it_answers() -> None:
    with capturedLogs() as events:
        clock, registry, port = unreachableServer(failures=5)
        assert isinstance(port, MasseListeningPort) and not port.registered
        assert clock.tcpServers[0][0] == 4000  # listening all the same
        registered: list[Any] = []
        port.whenRegistered().addCallback(registered.append)
        for _ in range(5):
            clock.advance(REGISTER_RETRY(10) + 1)  # past the longest delay, jitter included
        assert registry.attempts == 6 and port.registered and registered == [port.lease]
    found: list[Any] = []
    registry.lookup("t", "db").addCallback(found.extend)
    assert [r.endpoints for r in found] == [("tcp:host=127.0.0.1:port=4000",)]
    warnings = [formatEvent(e) for e in events if "not yet registered" in e["log_format"]]
    assert len(warnings) == 1 and "refused (try 1)" in warnings[0]  # one warning, not five
    assert any("registered after 5 failed tries" in formatEvent(e) for e in events)


def test_backing_off_while_the_registry_is_unreachable() -> None:
    clock, _, _ = unreachableServer(failures=1000)
    delays = []
    for _ in range(8):
        [call] = clock.getDelayedCalls()
        delays.append(call.getTime() - clock.seconds())
        clock.advance(delays[-1])
    jitter = 0.25 / 4
    for failures, delay in enumerate(delays):
        base = min(0.25 * 2**failures, 3.0)  # doubling from 0.25 s, capped at 3 s
        assert base <= delay <= base + jitter, (failures, delay)


def test_stopping_before_registering_stops_trying() -> None:
    clock, registry, port = unreachableServer(failures=1000)
    waiting = port.whenRegistered()
    failures: list[Any] = []
    waiting.addErrback(failures.append)
    port.stopListening()
    assert len(failures) == 1 and "stopped before it was registered" in str(failures[0].value)
    attempts = registry.attempts
    clock.advance(3600)
    assert registry.attempts == attempts  # nothing registers after the stop
    assert clock.getDelayedCalls() == []


@pytest.mark.filterwarnings("ignore:Using readBody with a transport")  # Twisted's own proxy (#8227)
@pytest_twisted.ensureDeferred
async def test_twistd_web_started_before_redis_is_reachable_by_name_once_it_runs(
    tmp_path: Path,
) -> None:
    server = RedisServer(tmp_path)  # not started yet
    (tmp_path / "hello.txt").write_text("hello by name\n")
    twistd = shutil.which("twistd", path=os.path.dirname(sys.executable)) or "twistd"
    description = "masse:name=www:ns=t"  # the registry comes from $MASSE_REGISTRY
    args = [twistd, "-n", "--pidfile=", "web", "--listen", description, "--path", str(tmp_path)]
    process = ChildProcess()
    reactor.spawnProcess(
        process, twistd, args, env=peerEnvironment(server.url), path=str(tmp_path)
    )
    try:
        await eventually(lambda: b"not yet registered" in process.output, timeout=15)
        await sleep(4)  # the registry comes up 4 s after the server
        server.start()
        registry = registryFromURL(reactor, server.url)
        found: list[PeerRecord] = []
        for _ in range(100):
            found = await registry.lookup("t", "www")
            if found or process.ended.called:
                break
            await sleep(0.05)
        assert found, f"twistd did not register:\n{process.output.decode()[-3000:]}"
        agent = Agent.usingEndpointFactory(reactor, ByName(server.url))
        response = await agent.request(b"GET", b"http://www/hello.txt")
        assert response.code == 200 and await readBody(response) == b"hello by name\n"
        assert b"Unhandled Error" not in process.output
        assert process.output.count(b"registering again until the registry answers") == 1
    finally:
        process.signal("TERM")
        await process.ended
        server.stop()


# A registry whose host refuses connections


@pytest_twisted.ensureDeferred
async def test_a_refused_registry_fails_calls_at_once_then_serves_once_up(tmp_path: Path) -> None:
    """
    With nothing on the port, a call fails with the refusal long before its
    30 s deadline; once Redis listens there, calls are served again.
    """
    server = RedisServer(tmp_path)
    registry = registryFromURL(reactor, f"{server.url}?timeout=30")
    try:
        for _ in range(3):  # a fresh registry, then one that knows it is refused
            lookup = registry.lookup("t", "db").addTimeout(10, reactor)
            with pytest.raises(RegistryUnavailable, match="refused") as caught:
                await lookup
            assert server.url in str(caught.value)
        server.start()
        for _ in range(100):  # the reconnect loop backs off at most 1 s
            try:
                answer = await registry.lookup("t", "db")
                break
            except RegistryUnavailable:
                await sleep(0.05)
        assert answer == []
    finally:
        await registry.close()
        server.stop()


def test_masse_ls_against_a_dead_port_exits_1_naming_the_refusal() -> None:
    url = f"redis://127.0.0.1:{freePort()}/0?timeout=30"
    result = subprocess.run(
        [sys.executable, "-m", "txmasse", "--registry", url, "ls"],
        capture_output=True,
        text=True,
        timeout=10,  # a third of the deadline: it must not wait for it
        env={**os.environ, "PYTHONPATH": str(Path(__file__).parent.parent)},
    )
    assert result.returncode == 1, result
    assert "refused" in result.stderr and len(result.stderr.strip().splitlines()) == 1
