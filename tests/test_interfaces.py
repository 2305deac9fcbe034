"""
Every public class provides the interfaces it claims, method by method.
"""

from __future__ import annotations

from pathlib import Path

import pytest_twisted
from twisted.internet import reactor
from twisted.internet.interfaces import IStreamClientEndpoint, IStreamServerEndpoint
from zope.interface.verify import verifyObject

from tests.helpers import RedisServer, newRegistry
from txmasse import MasseClientEndpoint, MasseServerEndpoint, MemoryRegistry
from txmasse.registry.interface import IRegistry


def test_endpoints_provide_twisted_interfaces() -> None:
    registry = MemoryRegistry(reactor)
    assert verifyObject(IStreamClientEndpoint, MasseClientEndpoint(reactor, "db", "dev", registry))
    assert verifyObject(IStreamServerEndpoint, MasseServerEndpoint(reactor, "db", "dev", registry))


@pytest_twisted.ensureDeferred
async def test_registries_provide_iregistry(redis_server: RedisServer, tmp_path: Path) -> None:
    registries = [
        MemoryRegistry(reactor),
        newRegistry(redis_server.url),
        newRegistry(f"sqlite://{tmp_path}/registry.db"),
    ]
    for registry in registries:
        assert verifyObject(IRegistry, registry)
        await registry.close()
