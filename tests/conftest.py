"""
Fixtures: a private redis-server per test (never the machine's shared one),
registries to test, and a helper to wait for a condition.
"""

from __future__ import annotations

import os
import shutil
import signal
import socket
import ssl
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import settings
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.internet.task import deferLater

# One RESP client for the bench and the tests; re-exported for the tests.
from bench.redis import _encode as _encode
from bench.redis import _read as _read
from bench.redis import freePort as freePort
from txmasse.errors import RegistryUnavailable
from txmasse.registry.interface import IRegistry
from txmasse.registry.memory import MemoryRegistry
from txmasse.registry.opening import openURL
from txmasse.registry.url import parseRegistryURL

# The same examples on every run, so that a red run is a bug anyone can
# reproduce, not a draw; HYPOTHESIS_PROFILE=explore searches afresh each run.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

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
        deadline = time.monotonic() + 10
        while True:
            try:
                if self.command("PING") == "PONG":
                    return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(f"redis-server on port {self.port} did not start")
            time.sleep(0.02)

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


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


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


@pytest.fixture
def make_registry(request: pytest.FixtureRequest) -> Iterator[Callable[..., Any]]:
    """
    Build registries of the kind the test is parametrised with, closed at the
    end of the test. Memory registries share one store, as in one process;
    SQLite registries share one file, each with a connection of its own.
    """
    made: list[Any] = []
    kind = request.param if hasattr(request, "param") else "redis"
    memory = MemoryRegistry(reactor)

    def make(**options: Any) -> IRegistry:
        if kind == "memory":
            return memory
        if kind == "sqlite":
            # A new registry on the same file each time, as separate processes.
            path = request.getfixturevalue("tmp_path") / "registry.db"
            registry = newRegistry(f"sqlite://{quote(str(path))}?timeout=2", **options)
            made.append(registry)
            return registry  # type: ignore[no-any-return]
        server = request.getfixturevalue("redis_server")
        registry = newRegistry(server.url + "?timeout=2", **options)
        made.append(registry)
        return registry  # type: ignore[no-any-return]

    yield make
    for registry in [memory, *made]:
        pytest_twisted.blockon(registry.close())


async def eventually(
    predicate: Callable[[], object], timeout: float = 5.0, interval: float = 0.01
) -> float:
    """
    Wait until C{predicate()} is true; return how long that took.
    """
    start = time.monotonic()
    while not predicate():
        if time.monotonic() - start > timeout:
            raise AssertionError(f"condition not met within {timeout}s")
        await deferLater(reactor, interval, lambda: None)
    return time.monotonic() - start


async def sleep(seconds: float) -> None:
    await deferLater(reactor, seconds, lambda: None)


@pytest.fixture(autouse=True)
def _no_shared_registry(monkeypatch: pytest.MonkeyPatch) -> None:
    """
    No test may reach the machine's shared Redis by accident.
    """
    monkeypatch.setenv("MASSE_REGISTRY", "redis://127.0.0.1:1/0?timeout=0.5")
    monkeypatch.delenv("MASSE_NAMESPACE", raising=False)


@pytest.fixture
def ports() -> Iterator[list[IListeningPort]]:
    """
    Listening ports to stop at the end of the test.
    """
    made: list[IListeningPort] = []
    yield made
    for port in made:
        pytest_twisted.blockon(port.stopListening())
