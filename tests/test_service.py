"""
RegistryService, named peers as child services, and `twistd masse`.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.defer import CancelledError, Deferred
from twisted.internet.interfaces import IProtocolFactory
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.task import Clock
from twisted.python import usage

from tests.helpers import Events, RedisServer, eventually, newRegistry
from txmasse.endpoints import MasseListeningPort
from txmasse.registry.memory import MemoryRegistry
from txmasse.service import NamedPeerService, Options, RegistryService, loadFactory

ROOT = Path(__file__).parent.parent


@pytest_twisted.ensureDeferred
async def test_registry_service_registers_and_releases_its_peers() -> None:
    registry = MemoryRegistry(reactor)
    events = Events()
    await registry.watch("dev", "*", events)
    service = RegistryService(registry)
    service.addPeer("echo", Factory.forProtocol(Protocol), namespace="dev", ttl=5)
    service.addPeer("web", Factory.forProtocol(Protocol), namespace="dev", metadata={"v": "1"})
    service.startService()
    await eventually(lambda: len(events) == 2)
    (web,) = await registry.lookup("dev", "web")
    assert web.metadata == {"v": "1"} and web.endpoints[0].startswith("tcp:host=127.0.0.1:port=")
    await service.stopService()
    assert sorted(events.kinds()) == [
        ("joined", "echo"),
        ("joined", "web"),
        ("left", "echo"),
        ("left", "web"),
    ]
    assert registry.closed


@pytest_twisted.ensureDeferred
async def test_peer_waits_for_the_registry(redis_server: RedisServer) -> None:
    """
    A peer started while the registry is down listens at once, and
    registers once the registry is back.
    """
    redis_server.stop()
    registry = newRegistry(redis_server.url + "?timeout=0.3")
    service = RegistryService(registry)
    peer = service.addPeer("late", Factory.forProtocol(Protocol), namespace="dev")
    service.startService()
    try:
        await eventually(lambda: registry._commandFactory.lastError is not None)
        await eventually(lambda: peer.port is not None, timeout=10)  # listening already
        assert redis_server.process is None  # ... with the registry still down
        redis_server.start()
        assert isinstance(peer.port, MasseListeningPort)
        await peer.port.whenRegistered().addTimeout(10, reactor)
        assert redis_server.command("HLEN", "masse:{dev}:n:late") == 1
    finally:
        await service.stopService()
    assert redis_server.command("HLEN", "masse:{dev}:n:late") == 0


@pytest_twisted.ensureDeferred
async def test_peer_stopped_while_registering_leaves_nothing(redis_server: RedisServer) -> None:
    """
    Stopping a peer whose registration has no answer yet takes it back:
    watchers see it leave, not time out a lease nobody keeps.
    """
    watcher = newRegistry(redis_server.url)
    events = Events()
    await watcher.watch("dev", "*", events)
    registry = newRegistry(redis_server.url + "?timeout=0.3")
    assert await registry.lookup("dev", "late") == []  # connected and ready
    service = RegistryService(registry)
    peer = service.addPeer("late", Factory.forProtocol(Protocol), namespace="dev", ttl=30)
    redis_server.pause()
    try:
        service.startService()
        await eventually(lambda: bool(registry._registrations.pending))  # sent, and waiting
        await service.stopService()
        assert peer.port is None
    finally:
        redis_server.resume()
    try:
        await eventually(lambda: len(events) == 2)
        assert events.kinds() == [("joined", "late"), ("left", "late")]
    finally:
        await watcher.close()


class _Attempts:
    """
    An endpoint whose listen() attempts end when the test says; a cancelled
    one goes on until then, as MasseServerEndpoint's does while it closes
    its ports.
    """

    def __init__(self) -> None:
        self.attempts: list[tuple[Deferred[Any], Deferred[Any]]] = []

    def listen(self, factory: object) -> Deferred[Any]:
        waiting: Deferred[Any] = Deferred()
        late: Deferred[Any] = Deferred()
        self.attempts.append((waiting, late))

        async def attempt() -> Any:
            try:
                return await waiting
            except CancelledError:
                return await late

        return Deferred.fromCoroutine(attempt())


class _Port:
    def __init__(self) -> None:
        self.listening = True

    def stopListening(self) -> None:
        self.listening = False

    def getHost(self) -> str:
        return "here"


def test_a_peer_restarted_while_its_last_attempt_ends_keeps_one_port() -> None:
    endpoint = _Attempts()
    peer = NamedPeerService(endpoint, Factory.forProtocol(Protocol), Clock())
    peer.startService()
    stopping = peer.stopService()
    assert stopping is not None
    stopped: list[object] = []
    stopping.addBoth(stopped.append)
    assert stopped == []  # waits for the attempt
    peer.startService()
    (_, first), (second, _) = endpoint.attempts
    late, current = _Port(), _Port()
    first.callback(late)  # the stopped attempt listened after all: closed at once
    assert not late.listening and stopped == [None] and peer.port is None
    second.callback(current)
    assert peer.port is current and current.listening
    peer.stopService()
    assert not current.listening and peer.port is None


def test_a_failed_attempt_of_a_stopped_peer_schedules_nothing() -> None:
    endpoint, clock = _Attempts(), Clock()
    peer = NamedPeerService(endpoint, Factory.forProtocol(Protocol), clock)
    peer.startService()
    peer.stopService()
    peer.startService()
    (_, first), _ = endpoint.attempts
    first.errback(RuntimeError("registry gone"))  # the stopped one's
    assert clock.getDelayedCalls() == [] and peer._listening is not None
    endpoint.attempts[1][0].errback(RuntimeError("registry gone"))  # the current one's
    [retry] = clock.getDelayedCalls()  # retries: after a second, plus jitter
    assert 1.0 <= retry.getTime() <= 1.0 + 1.0 / 4


class NotAFactory:
    pass


def makeFactory() -> Factory:
    return Factory.forProtocol(Protocol)


@pytest.mark.parametrize(
    "spec, message",
    [
        ("nomodule_xyz:factory", "cannot import 'nomodule_xyz'"),
        ("tests.test_service:nothing", "has no 'nothing'"),
        ("tests.test_service", "must be MODULE:ATTRIBUTE"),
        ("tests.test_service:NotAFactory", "not a protocol factory"),
        ("tests.test_service:ROOT", "is not a protocol factory"),
    ],
)
def test_bad_factories(spec: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        loadFactory(spec)


def test_good_factories() -> None:
    for spec in (
        "tests.test_service:makeFactory",
        "examples.greeter:factory",
        "twisted.internet.protocol:Protocol",
    ):
        assert IProtocolFactory.providedBy(loadFactory(spec))


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "--name is required"),
        (["--name", "x"], "--factory is required"),
        (["--name", "bad name", "--factory", "examples.greeter:factory"], "invalid name"),
        (
            ["--name", "g", "--ns", "a/b", "--factory", "examples.greeter:factory"],
            "invalid namespace",
        ),
        (["--name", "g", "--factory", "examples.greeter:factory", "--ttl", "-1"], "--ttl '-1'"),
        (
            ["--name", "g", "--factory", "examples.greeter:factory", "--registry", "x://"],
            "scheme 'x'",
        ),
        (["--name", "g", "--factory", "examples.greeter:factory", "--meta", "nokey"], "KEY=VALUE"),
        (
            ["--name", "g", "--factory", "examples.greeter:factory", "--listen", "garbage"],
            "--listen 'garbage': not a server endpoint",
        ),
        (
            ["--name", "g", "--factory", "examples.greeter:factory", "--listen", "masse:x"],
            "--listen 'masse:x': twistd masse gives the name itself",
        ),
    ],
)
def test_bad_options(args: list[str], message: str) -> None:
    with pytest.raises(usage.UsageError, match=message):
        Options().parseOptions(args)


def test_a_bad_registry_in_the_environment_is_named(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MASSE_REGISTRY", "redis://x:99999")
    with pytest.raises(usage.UsageError, match=r"^\$MASSE_REGISTRY: invalid registry URL"):
        Options().parseOptions(["--name", "g", "--factory", "examples.greeter:factory"])


@pytest_twisted.ensureDeferred
async def test_twistd_masse(redis_server: RedisServer, tmp_path: Path) -> None:
    """
    twistd runs a factory as a named peer, from another directory; stopping
    twistd releases the name (left, not timedout).
    """
    watcher = newRegistry(redis_server.url)
    events = Events()
    await watcher.watch("dev", "greeter", events)
    twistd = Path(sys.executable).parent / "twistd"
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    process = subprocess.Popen(
        [
            str(twistd), "-n", "--pidfile=", "masse",
            "--name", "greeter", "--ns", "dev", "--registry", redis_server.url,
            "--factory", "examples.greeter:factory", "--meta", "lang=amp",
        ],
        cwd=ROOT,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        await eventually(lambda: len(events) == 1, timeout=20)
        assert events[0].kind == "joined" and events[0].record.metadata["lang"] == "amp"
        assert set(events[0].record.metadata) == {"lang", "amp.commands"}  # its AMP commands
        process.send_signal(signal.SIGTERM)
        await eventually(lambda: len(events) == 2, timeout=10)
        assert events[1].kind == "left"
        assert process.wait(10) == -signal.SIGTERM  # twistd exits by the signal that stopped it
    finally:
        process.kill()
        await watcher.close()


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--factory", "nomodule_xyz:f"], "cannot import 'nomodule_xyz'"),
        (  # found only once the service is made
            [
                "--factory", "examples.greeter:factory",
                "--registry", "memory://",
                "--advertise", "a b",
            ],
            "twistd masse: advertise='a b': must be a host name or IP address",
        ),
    ],
)
def test_twistd_masse_usage_error(tmp_path: Path, args: list[str], message: str) -> None:
    twistd = Path(sys.executable).parent / "twistd"
    started = time.monotonic()
    result = subprocess.run(
        [str(twistd), "-n", "--pidfile=", "masse", "--name", "g", *args],
        cwd=tmp_path,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert result.returncode != 0
    assert message in result.stdout + result.stderr
    assert "Traceback" not in result.stdout + result.stderr
    assert time.monotonic() - started < 30
