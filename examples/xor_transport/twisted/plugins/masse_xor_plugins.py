"""
The C{xor:} transport's plugins: Twisted's endpoint parsers and txmasse's
transport description. Imports only what declaring them needs.
"""

from __future__ import annotations

from typing import Any

from twisted.internet.interfaces import (
    IAddress,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer

from txmasse.transports import IMasseTransport


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _Server:
    prefix = "xor"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from masse_xor import serverEndpoint

        return serverEndpoint(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _Client:
    prefix = "xor"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> Any:
        from masse_xor import clientEndpoint

        return clientEndpoint(reactor, *args, **kwargs)


@implementer(IPlugin, IMasseTransport)
class _Transport:
    prefix = "xor"

    def describe(self, address: IAddress, host: str) -> str | None:
        from masse_xor import describe

        description: str | None = describe(address, host)
        return description


xorServer = _Server()
xorClient = _Client()
xorTransport = _Transport()
