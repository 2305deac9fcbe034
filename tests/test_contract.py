"""
The registry contract (L{txmasse.contract}) over every built-in backend,
plain and signed, over the real reactor (and, for Redis, a real
redis-server); and what only networked backends promise.
"""

from __future__ import annotations

import pytest
import pytest_twisted
from twisted.internet.defer import Deferred
from twisted.python.failure import Failure

from tests.helpers import MakeRegistry, record
from txmasse import RegistryUnavailable
from txmasse.contract import *  # noqa: F403 (the contract's tests, collected here)

BACKENDS = [
    "memory",
    "redis",
    "sqlite",
    "etcd",
    "signed-memory",
    "signed-redis",
    "signed-sqlite",
    "signed-etcd",
]
"""Every backend, plain and signed (records signed with one shared secret)."""


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    """
    Run each contract test over every backend (the unsigned ones only, for
    tests marked C{unsignedOnly}), unless the test names its own.
    """
    if "make_registry" not in metafunc.fixturenames:
        return
    marks = metafunc.definition.iter_markers("parametrize")
    if any(mark.args and mark.args[0] == "make_registry" for mark in marks):
        return
    signedToo = getattr(metafunc.function, "signedToo", True)
    kinds = [kind for kind in BACKENDS if signedToo or not kind.startswith("signed-")]
    metafunc.parametrize("make_registry", kinds, indirect=True)


@pytest.mark.parametrize("make_registry", ["redis", "sqlite", "etcd"], indirect=True)
@pytest_twisted.ensureDeferred
async def test_close_cancels_registrations_and_closes_once(make_registry: MakeRegistry) -> None:
    """
    close() cancels a registration in flight; closing again from its
    errback neither closes twice nor fails.
    """
    registry = make_registry()
    registering = registry.register(record(), 5)
    again: list[Deferred[None]] = []

    def closeAgain(failure: Failure) -> None:
        again.append(registry.close())

    registering.addErrback(closeAgain)
    await registry.close()
    assert len(again) == 1
    await again[0]
    with pytest.raises(RegistryUnavailable, match="closed"):
        await registry.lookup("dev", "db")


