"""
A transport plugin, small and complete: C{xor:}, TCP with every byte XORed
with a one-byte key (an obfuscating layer, not encryption).

With the package installed, a server listens under a name over it and
clients reach it by name, choosing it with C{proto=}::

    twistd web --listen "masse:name=www:listen=xor\\:8080\\:key=90" --path .
    clientFromString(reactor, "masse:www:proto=xor")

Three plugins do it (C{twisted/plugins/masse_xor_plugins.py}): Twisted's
client and server endpoint parsers for C{xor:}, and txmasse's
L{IMasseTransport<txmasse.transports.IMasseTransport>}, which turns the
address the server listens on into the client description peers use.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet.address import IPv4Address, IPv6Address
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import (
    TCP4ServerEndpoint,
    TCP6ServerEndpoint,
    clientFromString,
    quoteStringArgument,
)
from twisted.internet.interfaces import (
    IAddress,
    IListeningPort,
    IProtocol,
    IProtocolFactory,
    IStreamClientEndpoint,
    IStreamServerEndpoint,
)
from twisted.protocols.policies import ProtocolWrapper, WrappingFactory
from zope.interface import implementer

from txmasse.wrappers import innerProtocol

DEFAULT_KEY = 0x5A


def _xor(data: bytes, key: int) -> bytes:
    return bytes(byte ^ key for byte in data)


class _Xor(ProtocolWrapper):
    factory: XorFactory

    def write(self, data: bytes) -> None:
        super().write(_xor(data, self.factory.key))

    def writeSequence(self, data: Sequence[bytes]) -> None:
        self.write(b"".join(data))

    def dataReceived(self, data: bytes) -> None:
        super().dataReceived(_xor(data, self.factory.key))


class XorFactory(WrappingFactory):
    protocol = _Xor

    def __init__(self, wrappedFactory: IProtocolFactory, key: int):
        super().__init__(wrappedFactory)
        self.key = key


@implementer(IAddress)
@attrs.frozen
class XorAddress:
    """
    Where an C{xor:} port listens: a TCP address, and the key.
    """

    tcp: IPv4Address | IPv6Address
    key: int


@implementer(IListeningPort)
@attrs.define
class XorPort:
    port: IListeningPort
    key: int

    def getHost(self) -> IAddress:
        address = self.port.getHost()
        assert isinstance(address, IPv4Address | IPv6Address)
        return XorAddress(address, self.key)

    def startListening(self) -> None:
        self.port.startListening()

    def stopListening(self) -> Any:
        return self.port.stopListening()


@implementer(IStreamServerEndpoint)
@attrs.frozen
class XorServerEndpoint:
    tcp: IStreamServerEndpoint
    key: int

    def listen(self, protocolFactory: IProtocolFactory) -> Deferred[IListeningPort]:
        listening = self.tcp.listen(XorFactory(protocolFactory, self.key))
        return listening.addCallback(lambda port: XorPort(port, self.key))


@implementer(IStreamClientEndpoint)
@attrs.frozen
class XorClientEndpoint:
    tcp: IStreamClientEndpoint
    key: int

    def connect(self, protocolFactory: IProtocolFactory) -> Deferred[IProtocol]:
        connecting = self.tcp.connect(XorFactory(protocolFactory, self.key))
        return connecting.addCallback(innerProtocol)


def parseKey(text: str) -> int:
    if not text.isdigit() or int(text) > 255:
        raise ValueError(f"xor: key={text!r} must be a whole number from 0 to 255")
    return int(text)


def serverEndpoint(reactor: Any, port: str = "0", interface: str = "", key: str = "") -> Any:
    """
    C{xor:PORT[:interface=ADDRESS][:key=N]}.
    """
    if not port.isdigit():
        raise ValueError(f"xor: port {port!r} must be a number")
    kind = TCP6ServerEndpoint if ":" in interface else TCP4ServerEndpoint
    tcp = kind(reactor, int(port), interface=interface)
    return XorServerEndpoint(tcp, parseKey(key) if key else DEFAULT_KEY)


def clientEndpoint(reactor: Any, host: str = "", port: str = "", key: str = "") -> Any:
    """
    C{xor:host=HOST:port=PORT[:key=N]}.
    """
    if not host or not port.isdigit():
        raise ValueError("xor: give host= and port=")
    tcp = clientFromString(reactor, f"tcp:host={quoteStringArgument(host)}:port={port}")
    return XorClientEndpoint(tcp, parseKey(key) if key else DEFAULT_KEY)


def describe(address: IAddress, host: str) -> str | None:
    """
    The client description of an C{xor:} port's address.
    """
    if not isinstance(address, XorAddress):
        return None
    if address.tcp.host not in ("0.0.0.0", "::", ""):
        host = address.tcp.host
    return f"xor:host={quoteStringArgument(host)}:port={address.tcp.port}:key={address.key}"
