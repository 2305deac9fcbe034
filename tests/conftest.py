"""
Fixtures only: a private redis-server per test (never the machine's shared
one), registries to test, captured logs, listening ports to close. What the
tests share besides fixtures lives in tests/helpers.py.
"""

from __future__ import annotations

import os
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import Any
from urllib.parse import quote

import pytest
import pytest_twisted
from hypothesis import settings
from twisted.internet import reactor
from twisted.internet.interfaces import IListeningPort
from twisted.logger import LogEvent, capturedLogs

# Importable from here for branches written before tests/helpers.py; new
# code imports them from tests.helpers.
from tests.helpers import RedisServer as RedisServer
from tests.helpers import _encode as _encode
from tests.helpers import _read as _read
from tests.helpers import eventually as eventually
from tests.helpers import freePort as freePort
from tests.helpers import lookupFailure as lookupFailure
from tests.helpers import newRegistry as newRegistry
from tests.helpers import sleep as sleep
from txmasse.registry.interface import IRegistry
from txmasse.registry.memory import MemoryRegistry
from txmasse.registry.signed import SignedRegistry, loadSecrets

# The same examples on every run, so that a red run is a bug anyone can
# reproduce, not a draw; HYPOTHESIS_PROFILE=explore searches afresh each run.
settings.register_profile("ci", derandomize=True)
settings.register_profile("explore", derandomize=False)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci"))

CONTRACT_SECRET = "correct-horse-battery-staple"
"""The secret of the C{signed-*} registries C{make_registry} builds."""


@pytest.fixture
def redis_server(tmp_path: Path) -> Iterator[RedisServer]:
    server = RedisServer(tmp_path)
    server.start()
    yield server
    server.stop()


@pytest.fixture(scope="session")
def etcd_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """
    One etcd member for the whole run; each test keeps to a key prefix of
    its own (see make_registry).
    """
    from tests.etcd_helpers import EtcdCluster

    cluster = EtcdCluster(tmp_path_factory.mktemp("etcd"))
    cluster.start()
    yield cluster
    cluster.stop()


_etcdPrefixes = iter(range(1, 1_000_000))


@pytest.fixture
def make_registry(request: pytest.FixtureRequest) -> Iterator[Any]:
    """
    Build registries of the kind the test is parametrised with (memory,
    redis, sqlite, etcd; C{signed-} before one of them signs with
    L{CONTRACT_SECRET}), closed at the end of the test. Memory registries
    share one store, as in one process; SQLite registries share one file,
    each with a connection of its own; etcd registries of one test share a
    key prefix on the session's etcd member.
    """
    made: list[Any] = []
    kind = request.param if hasattr(request, "param") else "redis"
    signed, _, kind = kind.rpartition("signed-")
    memory = MemoryRegistry(reactor)
    prefix = next(_etcdPrefixes)  # etcd registries of one test share a key prefix

    def plain(**options: Any) -> IRegistry:
        if kind == "memory":
            return memory
        if kind == "sqlite":
            # A new registry on the same file each time, as separate processes.
            path = request.getfixturevalue("tmp_path") / "registry.db"
            registry = newRegistry(f"sqlite://{quote(str(path))}?timeout=2", **options)
            made.append(registry)
            return registry  # type: ignore[no-any-return]
        if kind == "etcd":
            url = request.getfixturevalue("etcd_server").url + f"/test{prefix}?timeout=2"
            registry = newRegistry(url, **options)
            made.append(registry)
            return registry  # type: ignore[no-any-return]
        server = request.getfixturevalue("redis_server")
        registry = newRegistry(server.url + "?timeout=2", **options)
        made.append(registry)
        return registry  # type: ignore[no-any-return]

    def make(**options: Any) -> IRegistry:
        registry = plain(**options)
        if not signed:
            return registry
        secrets = request.getfixturevalue("tmp_path") / "contract-secrets"
        if not secrets.exists():
            secrets.write_text(CONTRACT_SECRET)
            secrets.chmod(0o600)
        return SignedRegistry(registry, loadSecrets(str(secrets)))

    yield make
    for registry in [memory, *made]:
        pytest_twisted.blockon(registry.close())


@pytest.fixture
def logged() -> Iterator[Sequence[LogEvent]]:
    """
    Every log event during the test.
    """
    with capturedLogs() as events:
        yield events


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
