"""
Twisted plugins for txmasse: the C{masse:} prefix for C{clientFromString}
and C{serverFromString}, and C{twistd masse} and C{twistd masse-dns}.

Twisted imports every module here when it scans for plugins, so this one
imports only what declaring the parsers needs; txmasse itself (and its
registry backends) load on first use.

Twisted calls a parser with the reactor first, by position, and the
description's options as keywords: so no parameter here or in
C{parseClient}/C{parseServer} may be named like an option (C{self},
C{reactor}); they are positional-only, and C{masse:db:reactor=x} is refused
as an unknown option (a L{ValueError}), not a L{TypeError}.
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

    def parseStreamClient(self, /, *args: Any, **kwargs: Any) -> IStreamClientEndpoint:
        from txmasse.endpoints import parseClient

        return parseClient(*args, **kwargs)


@implementer(IPlugin, IStreamServerEndpointStringParser)
class _MasseServerParser:
    """
    C{masse:NAME:ns=...}: listen, and register under a name.
    """

    prefix = "masse"

    def parseStreamServer(self, /, *args: Any, **kwargs: Any) -> IStreamServerEndpoint:
        from txmasse.endpoints import parseServer

        return parseServer(*args, **kwargs)


masseClientParser = _MasseClientParser()
masseServerParser = _MasseServerParser()
masseServiceMaker = ServiceMaker(
    "txmasse", "txmasse.service", "Run a protocol factory as a peer reachable by name", "masse"
)
masseDNSServiceMaker = ServiceMaker(
    "txmasse DNS", "txmasse.dns.service", "Answer DNS for a txmasse registry's peers", "masse-dns"
)
