"""
Helpers for the endpoint and wrapper tests: an echo server, a protocol that
collects what it receives, byte-transforming wrappers (also as plugins), and
peer processes started with C{serverFromString} in a subprocess.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, quoteStringArgument
from twisted.internet.interfaces import IProtocolFactory, IReactorTime
from twisted.internet.protocol import Factory, ProcessProtocol, Protocol, connectionDone
from twisted.plugin import IPlugin
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from twisted.python.failure import Failure
from twisted.web.iweb import IAgentEndpointFactory
from zope.interface import implementer

from txmasse.wrappers import IMasseWrapper, Wrapper

REPO = Path(__file__).resolve().parent.parent

quote = quoteStringArgument


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


class Collector(Protocol):
    """
    Keeps what it receives; C{lost} fires when the connection closes.
    """

    def __init__(self) -> None:
        self.received = b""
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


class Recording(Factory):
    """
    Builds C{protocol}s and keeps every one it built.
    """

    def __init__(self, make: Callable[[], Protocol] = Echo):
        self.make = make
        self.built: list[Protocol] = []

    def buildProtocol(self, addr: Any) -> Protocol:
        protocol = self.make()
        protocol.factory = self
        self.built.append(protocol)
        return protocol


# Wrappers that change the bytes, so their order shows on the wire


class _TransformingProtocol(ProtocolWrapper):
    factory: TransformingFactory

    def write(self, data: bytes) -> None:
        super().write(self.factory.encode(data))

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(self.factory.decode(data))


class TransformingFactory(WrappingFactory[_TransformingProtocol]):
    protocol = _TransformingProtocol

    def __init__(
        self,
        wrappedFactory: IProtocolFactory,
        encode: Callable[[bytes], bytes],
        decode: Callable[[bytes], bytes],
    ):
        super().__init__(wrappedFactory)
        self.encode = encode
        self.decode = decode


def addEach(data: bytes, n: int) -> bytes:
    return bytes((b + n) % 256 for b in data)


def xorEach(data: bytes, key: int) -> bytes:
    return bytes(b ^ key for b in data)


def adding(n: int) -> Wrapper:
    return lambda factory: TransformingFactory(
        factory, lambda data: addEach(data, n), lambda data: addEach(data, -n)
    )


def xoring(key: int) -> Wrapper:
    return lambda factory: TransformingFactory(
        factory, lambda data: xorEach(data, key), lambda data: xorEach(data, key)
    )


def _intArgument(argument: str | None, default: int) -> int:
    if argument is None:
        return default
    if not argument.isdigit() or int(argument) > 255:
        raise ValueError(f"argument {argument!r} must be 0 to 255")
    return int(argument)


@implementer(IPlugin, IMasseWrapper)
class _AddPlugin:
    name = "test-add"

    def makeWrapper(self, reactor: IReactorTime, argument: str | None) -> Wrapper:
        return adding(_intArgument(argument, 1))


@implementer(IPlugin, IMasseWrapper)
class _XorPlugin:
    name = "test-xor"

    def makeWrapper(self, reactor: IReactorTime, argument: str | None) -> Wrapper:
        return xoring(_intArgument(argument, 0x55))


addPlugin = _AddPlugin()
xorPlugin = _XorPlugin()


def writePluginDirectory(root: Path) -> Path:
    """
    A C{twisted/plugins} directory under C{root} that offers the test
    wrappers as third-party plugins; put C{root} on the path to use it.
    """
    plugins = root / "twisted" / "plugins"
    plugins.mkdir(parents=True)
    (plugins / "txmasse_test_wrappers.py").write_text(
        "from tests.endpoint_helpers import addPlugin, xorPlugin  # noqa: F401\n"
    )
    return plugins


# Peers in other processes


class ChildProcess(ProcessProtocol):
    """
    A child process: keeps its output (stdout and stderr together); C{ended}
    fires when it exits.
    """

    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""
        self.running = True

    def outReceived(self, data: bytes) -> None:
        self.output += data

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.running = False
        self.ended.callback(None)

    def signal(self, name: str) -> None:
        if self.running:
            assert self.transport is not None
            self.transport.signalProcess(name)


class PeerProcess(ChildProcess):
    """
    A peer started by C{tests/masse_peer.py}: C{ready} fires with the port
    it listens on (and fails if it exits first).
    """

    def __init__(self) -> None:
        super().__init__()
        self.ready: Deferred[int] = Deferred()

    def outReceived(self, data: bytes) -> None:
        super().outReceived(data)
        for line in self.output.splitlines():
            if line.startswith(b"listening ") and not self.ready.called:
                self.ready.callback(int(line.split()[1]))

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(
                RuntimeError(f"peer exited before listening:\n{self.output.decode()[-3000:]}")
            )
        super().processEnded(reason)


def peerPort(protocol: Any) -> int:
    """
    The port number of the far end of C{protocol}'s connection.
    """
    return int(protocol.transport.getPeer().port)


def portNumber(port: Any) -> int:
    """
    The port number a listening port got.
    """
    return int(port.getHost().port)


def peerEnvironment(registryURL: str, *paths: Path | str) -> dict[str, str]:
    """
    The environment for a child process: this repository (and C{paths}) on
    the path, the test's registry as the default.
    """
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([str(REPO), *map(str, paths)])
    env["MASSE_REGISTRY"] = registryURL
    return env


def spawnPeer(description: str, env: dict[str, str]) -> PeerProcess:
    """
    Run C{serverFromString(reactor, description)} with an echo server in a
    process of its own.
    """
    peer = PeerProcess()
    args = [sys.executable, "-m", "tests.masse_peer", description]
    reactor.spawnProcess(peer, sys.executable, args, env=env, path=str(REPO))
    peer.ready.addTimeout(30, reactor)
    return peer


@implementer(IAgentEndpointFactory)
class ByName:
    """
    Agent endpoints from the URL's host name, looked up in the registry.
    """

    def __init__(self, registryURL: str):
        self.registryURL = registryURL

    def endpointForURI(self, uri: Any) -> Any:
        name = uri.host.decode()
        return clientFromString(
            reactor, f"masse:{name}:ns=t:registry={quoteStringArgument(self.registryURL)}"
        )
