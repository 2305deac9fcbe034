"""
Twisted plugins for txmasse: the C{masse:} prefix for C{clientFromString}
and C{serverFromString}.

Twisted imports every module here when it scans for plugins, so this one
imports only what declaring the parsers needs; txmasse itself (and its
registry backends) load on first use.
"""

from __future__ import annotations

from typing import Any

from twisted.application.service import ServiceMaker
from twisted.internet.interfaces import (
    IStreamClientEndpoint,
    IStreamClientEndpointStringParserWithReactor,
    IStreamServerEndpoint,
    IStreamServerEndpointStringParser,
)
from twisted.plugin import IPlugin
from zope.interface import implementer


@implementer(IPlugin, IStreamClientEndpointStringParserWithReactor)
class _MasseClientParser:
    """
    C{masse:NAME:ns=...}: connect to a peer by name.
    """

    prefix = "masse"

    def parseStreamClient(self, reactor: Any, *args: Any, **kwargs: Any) -> IStreamClientEndpoint:
        from txmasse.endpoints import parseClient

        return parseClient(reactor, *args, **kwargs)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _MasseServerParser:
    """
    C{masse:NAME:ns=...}: listen, and register under a name.
    """

    prefix = "masse"

    def parseStreamServer(self, reactor: Any, *args: Any, **kwargs: Any) -> IStreamServerEndpoint:
        from txmasse.endpoints import parseServer

        return parseServer(reactor, *args, **kwargs)


masseClientParser = _MasseClientParser()
masseServerParser = _MasseServerParser()
masseServiceMaker = ServiceMaker(
    "txmasse", "txmasse.service", "Run a protocol factory as a peer reachable by name", "masse"
)
