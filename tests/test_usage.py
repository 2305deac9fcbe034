"""
Stream-use events: a client with report=true tells the registry when it
connects to a peer and when the stream ends; without it, nothing is sent.
"""

from __future__ import annotations

import os
import socket
import subprocess
import sys
from pathlib import Path

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol

from tests.cli_helpers import Lines
from tests.endpoint_helpers import Collector
from tests.helpers import REPO, Events, RedisServer, eventually, newRegistry, startMasse
from txmasse.registry.interface import USAGE_KINDS


def streams(events: Events) -> list[str]:
    return [e.kind for e in events if e.kind in USAGE_KINDS]


def escaped(url: str) -> str:
    return url.replace(":", "\\:")


@pytest_twisted.ensureDeferred
async def test_report_true_publishes_connected_and_disconnected(
    redis_server: RedisServer,
) -> None:
    registry = newRegistry(redis_server.url)
    usage = Events()
    await registry.watch("dev", "*", usage, usage=True)
    where = f"ns=dev:registry={escaped(redis_server.url)}"
    port = await serverFromString(reactor, f"masse:echo:{where}").listen(
        Factory.forProtocol(Protocol)
    )
    try:
        quiet = await clientFromString(reactor, f"masse:echo:{where}").connect(
            Factory.forProtocol(Collector)
        )
        publishes = redis_server.commandCalls().get("publish", 0)
        assert quiet.transport is not None
        quiet.transport.loseConnection()
        await quiet.lost

        client = await clientFromString(reactor, f"masse:echo:{where}:report=true").connect(
            Factory.forProtocol(Protocol)
        )
        assert type(client) is Protocol  # the application's protocol, not the reporter
        await eventually(lambda: streams(usage) == ["connected"])
        # Heard after anything the quiet client could have published (one
        # registry, one connection): off costs nothing.
        assert redis_server.commandCalls().get("publish", 0) == publishes + 1
        assert client.transport is not None
        client.transport.loseConnection()
        await eventually(lambda: streams(usage) == ["connected", "disconnected"])
        source = f"{socket.gethostname()}:{os.getpid()}"
        reported = [e for e in usage if e.kind in USAGE_KINDS]
        assert {(e.record.name, e.source) for e in reported} == {("echo", source)}
    finally:
        await port.stopListening()
        await registry.close()


def test_masse_watch_shows_reported_streams(redis_server: RedisServer) -> None:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASSE_REGISTRY": redis_server.url}
    watcher = subprocess.Popen(
        [sys.executable, "-m", "txmasse", "--ns", "dev", "watch"],
        stdout=subprocess.PIPE,
        text=True,
        env=env,
    )
    try:
        script = (
            "from twisted.internet import task, defer\n"
            "from twisted.internet.endpoints import clientFromString, serverFromString\n"
            "from twisted.internet.protocol import Factory, Protocol\n"
            "async def main(reactor):\n"
            "    await task.deferLater(reactor, 1.0, lambda: None)\n"
            "    port = await serverFromString(reactor, 'masse:db:ns=dev').listen(\n"
            "        Factory.forProtocol(Protocol))\n"
            "    p = await clientFromString(reactor, 'masse:db:ns=dev:report=true').connect(\n"
            "        Factory.forProtocol(Protocol))\n"
            "    p.transport.loseConnection()\n"
            "    await task.deferLater(reactor, 0.5, lambda: None)\n"
            "    await port.stopListening()\n"
            "task.react(lambda r: defer.Deferred.fromCoroutine(main(r)))\n"
        )
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=30)
        assert watcher.stdout is not None
        kinds = [watcher.stdout.readline().split()[1] for _ in range(4)]
    finally:
        watcher.kill()
        watcher.wait()
    assert kinds == ["joined", "connected", "disconnected", "left"]


@pytest.mark.parametrize("kind", ["redis", "sqlite"])
def test_a_client_that_stops_at_once_still_reports_its_stream_ended(
    redis_server: RedisServer, tmp_path: Path, kind: str
) -> None:
    """
    The README's client: it closes its stream and returns, and task.react
    stops the reactor while the stream is still closing. Its disconnected
    is published as the reactor stops.
    """
    url = redis_server.url if kind == "redis" else f"sqlite://{tmp_path}/masse.db"
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASSE_REGISTRY": url}
    anchor = startMasse("--ns", "dev", "register", "anchor", "--endpoint", "tcp:h:1", registry=url)
    watcher = startMasse("--ns", "dev", "watch", registry=url)
    try:
        assert anchor.stdout is not None and watcher.stdout is not None
        Lines(anchor.stdout).waitFor("registered dev/anchor")
        lines = Lines(watcher.stdout)
        lines.waitFor(" dev/anchor ")  # its watch is up (present, or joined after it)
        script = (
            "from twisted.internet import task, defer\n"
            "from twisted.internet.endpoints import clientFromString, serverFromString\n"
            "from twisted.internet.protocol import Factory, Protocol\n"
            "async def main(reactor):\n"
            "    await serverFromString(reactor, 'masse:db:ns=dev').listen(\n"
            "        Factory.forProtocol(Protocol))\n"
            "    p = await clientFromString(reactor, 'masse:db:ns=dev:report=true').connect(\n"
            "        Factory.forProtocol(Protocol))\n"
            "    p.transport.loseConnection()\n"
            "task.react(lambda r: defer.Deferred.fromCoroutine(main(r)))\n"
        )
        subprocess.run([sys.executable, "-c", script], env=env, check=True, timeout=30)
        kinds = [lines.waitFor(" dev/db ").split()[1] for _ in range(3)]
    finally:
        for process in (watcher, anchor):
            process.kill()
            process.wait()
    assert kinds == ["joined", "connected", "disconnected"]
