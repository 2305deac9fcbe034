"""
What test modules share, in one place; no test module imports another.

Where things live:
  - tests/helpers.py (this module): a redis-server of the test's own,
    registries, waiting for a condition on the real reactor, a fake
    network for unit tests on a MemoryReactorClock, records and event
    recorders, log checks, the masse command, example and worker
    processes, Redis ACLs.
  - tests/endpoint_helpers.py: protocols (echo, collector), byte-changing
    wrappers and their plugins, peer processes; child processes import it,
    so it stays light.
  - tests/certs.py: a throwaway certificate authority.
  - tests/conftest.py: fixtures only.
"""

from __future__ import annotations

import contextlib
import gc
import os
import re
import shutil
import signal
import site
import socket
import ssl
import subprocess
import sys
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

import attrs
import pytest
from twisted.internet import reactor
from twisted.internet.address import IPv4Address
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.error import ConnectionRefusedError
from twisted.internet.testing import MemoryReactorClock, StringTransportWithDisconnection
from twisted.logger import LogEvent, LogLevel, formatEvent
from twisted.python.failure import Failure

# One RESP client for the bench and the tests.
from bench.redis import _encode as _encode
from bench.redis import _read as _read
from bench.redis import answersPing
from bench.redis import freePort as freePort
from tests.endpoint_helpers import REPO as REPO
from tests.endpoint_helpers import ChildProcess, peerEnvironment
from txmasse.contract import Events as Events
from txmasse.contract import eventually as eventually
from txmasse.contract import record as record
from txmasse.contract import sleep as sleep
from txmasse.errors import RegistryUnavailable
from txmasse.registry.interface import IRegistry
from txmasse.registry.opening import openURL
from txmasse.registry.url import parseRegistryURL

MakeRegistry = Callable[..., IRegistry]
"""The C{make_registry} fixture: builds a registry of the test's kind."""

# Registries and a redis-server of the test's own

INSTALL_HINT = (
    "redis-server is not installed: the tests need it. Install it with "
    "'apt-get install -y redis-server' (the README's test command does this), "
    "or put a redis-server on PATH."
)


class RedisServer:
    """
    A redis-server of the test's own, on a free loopback port, that tests
    may stop, restart empty, kill, pause and resume.
    """

    def __init__(
        self,
        directory: Path,
        extraArgs: tuple[str, ...] = (),
        password: str | None = None,
        tls: tuple[Path, Path, Path] | None = None,
    ):
        self.executable = shutil.which("redis-server")
        if self.executable is None:
            pytest.fail(INSTALL_HINT, pytrace=False)
        self.directory = directory
        self.port = freePort()
        self.extraArgs = extraArgs
        self.password = password
        self.tls = tls
        self.socketPath = directory / "redis.sock"
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def _portArgs(self) -> tuple[str, ...]:
        if self.tls is None:
            return ("--port", str(self.port))
        cert, key, ca = self.tls
        return (
            "--port", "0",
            "--tls-port", str(self.port),
            "--tls-cert-file", str(cert),
            "--tls-key-file", str(key),
            "--tls-ca-cert-file", str(ca),
            "--tls-auth-clients", "no",
        )  # fmt: skip

    def start(self) -> None:
        assert self.executable is not None
        self.process = subprocess.Popen(
            [
                self.executable,
                *self._portArgs(),
                "--unixsocket",
                str(self.socketPath),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "no",
                "--dir",
                str(self.directory),
                *(("--requirepass", self.password) if self.password else ()),
                *self.extraArgs,
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        if not answersPing(self.process, self.command):
            raise RuntimeError(f"redis-server on port {self.port} did not start")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGCONT)
            self.process.kill()
            self.process.wait()
            self.process = None

    def restart(self) -> None:
        self.stop()
        self.start()

    def pause(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def resume(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)

    def command(self, *args: object) -> Any:
        """
        Run one command on a connection of its own (blocking; test use only).
        """
        with socket.create_connection(("127.0.0.1", self.port), timeout=5) as plain:
            s = plain
            if self.tls is not None:
                context = ssl.create_default_context(cafile=str(self.tls[2]))
                context.check_hostname = False  # the tests check names; this only pings
                s = context.wrap_socket(plain, server_hostname="127.0.0.1")
            with s.makefile("rb") as f:
                if self.password:
                    s.sendall(_encode("AUTH", self.password))
                    _read(f)
                s.sendall(_encode(*args))
                return _read(f)

    def commandCalls(self) -> dict[str, int]:
        """
        Calls per command so far (including those made inside scripts).
        """
        info = self.command("INFO", "commandstats").decode()
        calls = {}
        for line in info.splitlines():
            if line.startswith("cmdstat_"):
                name, _, stats = line.partition(":")
                calls[name[len("cmdstat_") :]] = int(stats.split(",")[0].split("=")[1])
        return calls

    def callsSince(self, before: dict[str, int]) -> dict[str, int]:
        """
        Calls per command since L{commandCalls} gave C{before} (C{INFO} aside).
        """
        after = self.commandCalls()
        return {
            name: count - before.get(name, 0)
            for name, count in after.items()
            if name != "info" and count != before.get(name, 0)
        }


def serverMs(server: RedisServer) -> int:
    """
    The Redis server's clock, in ms.
    """
    seconds, micros = server.command("TIME")
    return int(seconds) * 1000 + int(micros) // 1000


def storeEntry(
    server: RedisServer, name: str, instance: str, value: bytes, expiry: int, namespace: str = "dev"
) -> None:
    """
    Write an entry into Redis by hand as a registration would (and as anyone
    who can write to it could): C{value} as is in the name's hash, C{expiry}
    (server ms) among the expiries, the name among the names.
    """
    prefix = f"masse:{{{namespace}}}:"
    server.command("HSET", f"{prefix}n:{name}", instance, value)
    server.command("ZADD", f"{prefix}exp", expiry, f"{name}/{instance}")
    server.command("ZADD", f"{prefix}names", 0, name)


async def readServerClock(registry: Any, namespace: str = "dev") -> int:
    """
    Look up until the Redis C{registry} holds a reading of its server's
    clock, which a lookup by script gives unless its round trip was too
    slow to be kept (a loaded machine): the lookups it took.
    """
    for tries in range(1, 51):
        await registry.lookup(namespace, "nobody-is-registered-as-this")
        if registry._serverClock.latestNow() is not None:
            return tries
    raise AssertionError("50 lookups and no reading of the server's clock kept")


def withoutExpiry(value: bytes) -> bytes:
    """
    A record as the Redis registry's hash keeps it, C{@EXPIRY RECORD},
    without the lease's expiry: the record as stored (its freshness stamp
    and JSON).
    """
    expiry, space, data = value.partition(b" ")
    assert expiry[:1] == b"@" and expiry[1:].isdigit() and space, value[:40]
    return data


def clientCount(server: RedisServer) -> int:
    """
    Connections to C{server}, but for the one asking.
    """
    return len(server.command("CLIENT", "LIST").splitlines()) - 1


def subscribers(server: RedisServer, namespace: str = "dev") -> int:
    """
    Connections subscribed to C{namespace}'s events on C{server}.
    """
    return int(server.command("PUBSUB", "NUMSUB", f"masse:{{{namespace}}}:events")[1])


def newRegistry(url: str, **options: Any) -> Any:
    """
    A registry of its own (not the per-process shared one), for tests that
    need several clients.
    """
    parsed = parseRegistryURL(url)
    registry = openURL(reactor, parsed)
    for name, value in options.items():
        setattr(registry, name, value)
    return registry


async def lookupFailure(url: str) -> str:
    """
    The message of the L{RegistryUnavailable} a lookup through a new
    registry at C{url} fails with (the registry is closed after).
    """
    registry = newRegistry(url)
    try:
        with pytest.raises(RegistryUnavailable) as caught:
            await registry.lookup("dev", "db")
    finally:
        await registry.close()
    return str(caught.value)


# Waiting on the real reactor


async def gather(coroutines: Sequence[Coroutine[Any, Any, Any]]) -> list[Any]:
    """
    Run coroutines side by side; their results in order.
    """
    return await gatherResults([Deferred.fromCoroutine(c) for c in coroutines])


def fired(deferred: Deferred[Any]) -> Any:
    """
    The result of a Deferred that has fired already (on a fake clock, most
    do at once); fails the test if it has not, or failed.
    """
    results: list[Any] = []
    deferred.addBoth(results.append)
    assert results, f"{deferred!r} has not fired"
    if isinstance(results[0], Failure):
        results[0].raiseException()
    return results[0]


class FakeNetwork:
    """
    Answers the TCP connection attempts made on a C{MemoryReactorClock}, in
    the order they were made, as the test says: accept one (the client
    gets a transport that records what it writes), refuse one, drop a
    connection. With the clock, a unit test decides what the network does
    and when retries come, and "nothing more happens" is checked by
    advancing the clock, not by waiting.
    """

    def __init__(self, reactor: MemoryReactorClock):
        self.reactor = reactor
        self._answered = 0

    def attempts(self) -> list[str]:
        """
        C{host:port} of every attempt so far, answered or not.
        """
        return [f"{host}:{port}" for host, port, *_ in self.reactor.tcpClients]

    def waiting(self) -> list[str]:
        """
        C{host:port} of the attempts not answered yet (nor given up).
        """
        return [
            f"{host}:{port}"
            for (host, port, *_), connector in list(
                zip(self.reactor.tcpClients, self.reactor.connectors, strict=True)
            )[self._answered :]
            if not connector.stoppedConnecting
        ]

    def _next(self) -> tuple[str, int, Any, Any]:
        clients = self.reactor.tcpClients
        while self._answered < len(clients):
            index = self._answered
            self._answered += 1
            connector = self.reactor.connectors[index]
            if not connector.stoppedConnecting:
                host, port, factory, *_ = clients[index]
                return host, port, factory, connector
        raise AssertionError("no connection attempt is waiting")

    def accept(self) -> StringTransportWithDisconnection:
        """
        Connect the oldest waiting attempt; its transport (whose
        C{protocol} is the client's protocol, as the endpoint built it).
        """
        host, port, factory, _ = self._next()
        protocol = factory.buildProtocol(IPv4Address("TCP", host, port))
        transport = StringTransportWithDisconnection(
            peerAddress=IPv4Address("TCP", host, port)
        )
        transport.protocol = protocol
        protocol.makeConnection(transport)
        return transport

    def refuse(self) -> None:
        """
        Refuse the oldest waiting attempt.
        """
        _, _, factory, connector = self._next()
        factory.clientConnectionFailed(connector, Failure(ConnectionRefusedError()))

    @staticmethod
    def drop(transport: StringTransportWithDisconnection) -> None:
        """
        The far end closes the connection.
        """
        transport.loseConnection()


# Records and events


# Logs (captured with twisted.logger.capturedLogs or the `logged` fixture)


def errorsIn(events: Sequence[LogEvent]) -> list[LogEvent]:
    """
    The events that mean something went unhandled: a logged Failure, or
    level error or critical.
    """
    return [
        event
        for event in events
        if "log_failure" in event or event.get("log_level") in (LogLevel.error, LogLevel.critical)
    ]


def eventsAbout(events: Sequence[LogEvent], text: str) -> list[LogEvent]:
    """
    The events whose format string holds C{text}.
    """
    return [e for e in events if text in str(e.get("log_format"))]


def warningsIn(events: Sequence[LogEvent]) -> list[str]:
    """
    The text of every warning among C{events}.
    """
    return [formatEvent(e) for e in events if e.get("log_level") == LogLevel.warn]


def formatted(events: Sequence[LogEvent]) -> str:
    """
    C{events} as text, with the traceback of any logged Failure.
    """
    out = []
    for event in events:
        text = formatEvent(event)
        failure = event.get("log_failure")
        if failure is not None:
            text += "\n" + failure.getTraceback()
        out.append(text)
    return "\n".join(out)


def assertNoErrors(events: Sequence[LogEvent]) -> None:
    """
    Nothing went unhandled, not even in a lost Deferred (which logs its
    error when it is collected).
    """
    gc.collect()
    errors = errorsIn(events)
    assert errors == [], formatted(errors)


# The masse command, run as a user would


def _masseEnvironment(registry: str | None) -> dict[str, str]:
    env = {**os.environ, "PYTHONPATH": str(REPO), "MASSE_NAMESPACE": "dev"}
    if registry is not None:
        env["MASSE_REGISTRY"] = registry
    return env


def masse(
    *args: str,
    registry: str | None,
    stdin: str = "",
    timeout: float = 30,
    env: dict[str, str] | None = None,
) -> subprocess.CompletedProcess[str]:
    """
    Run C{masse ARGS} to its end, from another directory (C{env}: more
    environment variables).
    """
    return subprocess.run(
        [sys.executable, "-m", "txmasse", *args],
        capture_output=True,
        text=True,
        input=stdin,
        timeout=timeout,
        env={**_masseEnvironment(registry), **(env or {})},
        cwd="/",
    )


def startMasse(*args: str, registry: str) -> subprocess.Popen[str]:
    """
    Start C{masse ARGS} in the background; the caller stops it.
    """
    return subprocess.Popen(
        [sys.executable, "-m", "txmasse", *args],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_masseEnvironment(registry),
        cwd="/",
    )


# Example processes


class Background:
    """
    Example processes started for one test and stopped at its end.
    """

    def __init__(self, env: dict[str, str]):
        self.env = env
        self.processes: list[subprocess.Popen[str]] = []

    def start(self, *args: str, **env: str) -> subprocess.Popen[str]:
        process = subprocess.Popen(
            [*args],
            cwd=REPO,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            env={**self.env, **env},
        )
        self.processes.append(process)
        return process

    def call(self, *args: str, **env: str) -> str:
        """
        Run C{python ARGS} to its end in this environment; its output.
        """
        result = subprocess.run(
            [sys.executable, *args],
            cwd=REPO,
            capture_output=True,
            text=True,
            timeout=60,
            env={**self.env, **env},
        )
        assert result.returncode == 0, result.stdout + result.stderr
        return result.stdout

    def stop(self) -> None:
        for process in self.processes:
            process.kill()
            process.wait()


def readUntil(process: subprocess.Popen[str], text: str) -> str:
    """
    Read C{process}'s output up to the first line that holds C{text}.
    """
    assert process.stdout is not None
    while True:
        line = process.stdout.readline()
        assert line, f"process ended before printing {text!r}"
        if text in line:
            return line


class Workers:
    """
    C{tests/group_peer.py} processes; C{start} fires with the instance id
    once registered.
    """

    def __init__(self, url: str, ttl: float, namespace: str = "t"):
        self.url = url
        self.ttl = ttl
        self.namespace = namespace
        self.env = peerEnvironment(url)
        self.running: list[ChildProcess] = []

    async def start(self, name: str, *mode: str) -> tuple[ChildProcess, str]:
        process = ChildProcess()
        args = [
            sys.executable, "-m", "tests.group_peer",
            self.url, self.namespace, name, str(self.ttl), *mode,
        ]  # fmt: skip
        reactor.spawnProcess(process, sys.executable, args, env=self.env, path=str(REPO))
        self.running.append(process)

        # The whole line: the pipe may deliver it in pieces.
        def line() -> re.Match[bytes] | None:
            return re.search(rb"registered (\S+)\n", process.output)

        await eventually(lambda: line() is not None or not process.running, 30)
        registered = line()
        assert registered is not None, process.output.decode()
        return process, registered.group(1).decode()

    async def stopAll(self) -> None:
        for process in self.running:
            process.signal("KILL")
        for process in self.running:
            await process.ended


# Redis access control

ADMIN_PASSWORD = "admin-0f9e8d7c"
PASSWORD = "Pw-s3cret-a1b2c3"
"""The masse user's password: must never show anywhere."""

MASSE_ACL = (
    "resetkeys ~masse:* resetchannels &masse:* -@all "
    "+select +script|load +evalsha +eval +publish +subscribe +unsubscribe "
    "+time +get +incr +exists +hget +hset +hdel +hexists +hgetall "
    "+zadd +zrem +zscore +zrange +zrangebylex +zrangebyscore"
)
"""All that txmasse needs of Redis: its own keys and channels, its scripts
and the commands they run. The ACL line of docs/security.md."""


def aclServer(directory: Path, rules: str = MASSE_ACL, **options: Any) -> RedisServer:
    """
    A Redis whose default user is the admin (for the test's own commands)
    and whose user C{masse} has C{rules}.
    """
    user = ("--user", "masse", "on", f">{PASSWORD}", *rules.split())
    server = RedisServer(directory, extraArgs=user, password=ADMIN_PASSWORD, **options)
    server.start()
    return server


def masseURL(server: RedisServer, password: str = PASSWORD, user: str = "masse") -> str:
    return f"redis://{user}:{password}@127.0.0.1:{server.port}/0"


# Installing txmasse somewhere else


def copySource(destination: Path) -> Path:
    """
    The files a build needs, so pip leaves no build output in the tree.
    """
    destination.mkdir(exist_ok=True)
    ignore = shutil.ignore_patterns("__pycache__", "dropin.cache", "*.pyc")
    for name in ("setup.py", "README.md", "pyproject.toml", "LICENSE"):
        if (REPO / name).exists():
            shutil.copy(REPO / name, destination / name)
    for name in ("txmasse", "twisted", "examples"):
        shutil.copytree(REPO / name, destination / name, ignore=ignore)
    return destination


TWISTD = "import sys; from twisted.scripts.twistd import run; sys.argv[0] = 'twistd'; run()"
"""twistd, in a virtualenv that has Twisted only through a .pth file."""


@attrs.frozen
class FreshVenv:
    """
    A new virtualenv with txmasse (copied from the checkout) and C{packages}
    installed by pip, not editable; the test environment's own packages
    (Twisted, txredisapi...) reused through a .pth file, to stay quick.
    """

    python: Path
    sitePackages: Path
    elsewhere: Path
    env: dict[str, str]

    @classmethod
    def create(cls, root: Path, *packages: Path) -> FreshVenv:
        venv = root / "venv"
        subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(venv)], check=True)
        python = venv / "bin" / "python"
        [sitePackages] = (venv / "lib").glob("python*/site-packages")
        (sitePackages / "_txmasse_test_deps.pth").write_text(
            "\n".join(site.getsitepackages()) + "\n"
        )
        source = copySource(root / "source")
        pip = [sys.executable, "-m", "pip", "--python", str(python), "--disable-pip-version-check"]
        install = subprocess.run(
            [*pip, "install", "--quiet", "--no-deps", str(source), *map(str, packages)],
            capture_output=True,
            text=True,
            timeout=180,
        )
        assert install.returncode == 0, install.stdout + install.stderr
        elsewhere = root / "elsewhere"
        elsewhere.mkdir()
        env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "MASSE_REGISTRY")}
        return cls(python, sitePackages, elsewhere, env)

    @contextlib.contextmanager
    def twistdMasse(
        self, *args: str, env: dict[str, str] | None = None
    ) -> Iterator[tuple[subprocess.Popen[str], str]]:
        """
        C{twistd -n masse ARGS} run from this virtualenv in another
        directory, until it logs that it listens under its name (or a
        traceback): the process and that line, the process stopped after.
        """
        twistd = subprocess.Popen(
            [str(self.python), "-c", TWISTD, "-n", "--pidfile=", "masse", *args],
            cwd=self.elsewhere,
            env=self.env if env is None else env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        try:
            assert twistd.stdout is not None
            line = ""
            for line in twistd.stdout:
                if "listening as" in line or "Traceback" in line:
                    break
            yield twistd, line
        finally:
            twistd.terminate()
            twistd.wait(timeout=30)

    def run(self, *args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
        """
        Run C{args} in another directory, with this virtualenv's environment.
        """
        return subprocess.run(
            list(args), cwd=self.elsewhere, env=self.env, capture_output=True, text=True,
            timeout=timeout,
        )  # fmt: skip
