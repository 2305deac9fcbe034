"""
The C{masse:} endpoints: connect to a peer by name, listen under a name.

A client endpoint resolves the name at every C{connect()} (from a cache the
registry's events keep current), so
L{ClientService<twisted.application.internet.ClientService>} follows a peer
that restarted elsewhere. A server endpoint listens on an ordinary inner
endpoint and publishes the address it really got under a lease that lives
as long as the listening port.

L{parseClient} and L{parseServer} turn endpoint-string options into these
classes; the C{masse} parsers in C{twisted/plugins/txmasse_plugins.py} call
them, so C{clientFromString} and C{serverFromString} understand C{masse:}.

The work is done in private modules, one job each: C{_client} (resolve,
order, attempt, wrap), C{_server} (listen, describe, register) and
C{_parsers} (endpoint strings).
"""

from txmasse._client import DEFAULT_TIMEOUT, MasseClientEndpoint
from txmasse._parsers import CLIENT_OPTIONS, SERVER_OPTIONS, parseClient, parseServer
from txmasse._server import (
    DEFAULT_TTL,
    MasseListeningPort,
    MasseServerEndpoint,
    addressToward,
)
from txmasse.resolver import PICKS

__all__ = [
    "CLIENT_OPTIONS",
    "DEFAULT_TIMEOUT",
    "DEFAULT_TTL",
    "PICKS",
    "SERVER_OPTIONS",
    "MasseClientEndpoint",
    "MasseListeningPort",
    "MasseServerEndpoint",
    "addressToward",
    "parseClient",
    "parseServer",
]
