"""
Transports as plugins: with the example xor: transport's plugins on the
plugin path, a masse: server listens over it and registers the client
description its IMasseTransport plugin gives; clients choose it with
proto= and really speak it. Installed in a fresh virtualenv, the same
from endpoint strings alone.
"""

from __future__ import annotations

import subprocess
import textwrap
from pathlib import Path
from typing import Any

import pytest
import pytest_twisted
from twisted.internet import reactor
from twisted.internet.endpoints import TCP4ClientEndpoint, clientFromString, serverFromString
from twisted.internet.protocol import Factory

import twisted.plugins
from tests.endpoint_helpers import REPO, Collector, Echo
from tests.helpers import FreshVenv, eventually
from txmasse import MasseError, MasseServerEndpoint
from txmasse.registry import MemoryRegistry

EXAMPLE = REPO / "examples" / "xor_transport"
@pytest.fixture
def xorPlugins(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.syspath_prepend(str(EXAMPLE))
    plugins = str(EXAMPLE / "twisted" / "plugins")
    monkeypatch.setattr(twisted.plugins, "__path__", [*twisted.plugins.__path__, plugins])


@pytest_twisted.ensureDeferred
async def test_a_plugin_transport_listens_by_name_and_is_spoken(xorPlugins: None) -> None:
    server = serverFromString(
        reactor, "masse:echo:ns=t:registry=memory\\://:listen=xor\\:0\\:interface=127.0.0.1\\:key=7"
    )
    port: Any = await server.listen(Factory.forProtocol(Echo))
    try:
        [endpoint] = port.record.endpoints
        number = port.getHost().tcp.port
        assert endpoint == f"xor:host=127.0.0.1:port={number}:key=7"
        client = clientFromString(reactor, "masse:echo:ns=t:registry=memory\\://:proto=xor")
        protocol = await client.connect(Factory.forProtocol(Collector))
        assert isinstance(protocol, Collector)
        protocol.transport.write(b"hello")  # type: ignore[union-attr]
        await eventually(lambda: protocol.received == b"hello")
        protocol.transport.loseConnection()  # type: ignore[union-attr]
        # On the wire, every byte is XORed with the key.
        raw: Any = await TCP4ClientEndpoint(reactor, "127.0.0.1", number).connect(
            Factory.forProtocol(Collector)
        )
        raw.transport.write(bytes(b ^ 7 for b in b"abc"))
        await eventually(lambda: raw.received == bytes(b ^ 7 for b in b"abc"))
        raw.transport.loseConnection()
    finally:
        await port.stopListening()


@pytest_twisted.ensureDeferred
async def test_without_its_plugin_an_address_cannot_be_advertised(xorPlugins: None) -> None:
    from masse_xor import serverEndpoint

    registry = MemoryRegistry(reactor)
    endpoint = MasseServerEndpoint(
        reactor, "echo", "t", registry=registry, endpoint=serverEndpoint(reactor, "0", "127.0.0.1")
    )
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr("txmasse.transports.getPlugins", lambda interface: [])
        with pytest.raises(MasseError, match="install the IMasseTransport plugin of its transport"):
            await endpoint.listen(Factory.forProtocol(Echo))
    assert await registry.lookup("t", "echo") == []


ROUND_TRIP = textwrap.dedent(
    r"""
    from twisted.internet import reactor
    from twisted.internet.defer import Deferred
    from twisted.internet.endpoints import clientFromString, serverFromString
    from twisted.internet.protocol import Factory, Protocol

    class Echo(Protocol):
        def dataReceived(self, data):
            self.transport.write(data)

    class Hello(Protocol):
        def connectionMade(self):
            self.transport.write(b"hello over xor")

        def dataReceived(self, data):
            print(data.decode(), flush=True)
            reactor.stop()

    async def main():
        where = r"ns=t:registry=memory\://"
        port = await serverFromString(
            reactor, rf"masse:echo:{where}:listen=xor\:0\:interface=127.0.0.1"
        ).listen(Factory.forProtocol(Echo))
        print(port.record.endpoints[0].split(":")[0], flush=True)
        client = clientFromString(reactor, f"masse:echo:{where}:proto=xor:timeout=5")
        await client.connect(Factory.forProtocol(Hello))

    reactor.callWhenRunning(lambda: Deferred.fromCoroutine(main()).addErrback(print))
    reactor.callLater(20, reactor.stop)
    reactor.run()
    """
)


def test_installed_in_a_fresh_venv_it_works_from_endpoint_strings(tmp_path: Path) -> None:
    venv = FreshVenv.create(tmp_path, EXAMPLE)
    assert (venv.sitePackages / "twisted" / "plugins" / "masse_xor_plugins.py").exists()
    run = venv.run(str(venv.python), "-c", ROUND_TRIP)
    assert run.stdout == "xor\nhello over xor\n", run.stdout + run.stderr
    # twistd masse listens over it too, and the masse command reads it back.
    database = venv.elsewhere / "registry.db"
    env = {**venv.env, "MASSE_REGISTRY": f"sqlite://{database}", "MASSE_NAMESPACE": "t"}
    with venv.twistdMasse(
        "--name", "echo", "--listen", "xor:0:interface=127.0.0.1:key=9",
        "--factory", "twisted.protocols.wire:Echo", env=env,
    ) as (_, line):  # fmt: skip
        assert "['xor:host=127.0.0.1:port=" in line and ":key=9']" in line, line
        resolved = subprocess.run(
            [str(venv.python.parent / "masse"), "resolve", "echo"],
            cwd=venv.elsewhere, env=env, capture_output=True, text=True, timeout=60,
        )  # fmt: skip
        assert resolved.stdout.startswith("xor:host=127.0.0.1:port="), resolved
