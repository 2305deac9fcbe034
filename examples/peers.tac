"""
A .tac file: one registry connection owning two named peers.

    twistd -ny examples/peers.tac

registers "echo" and "greeter" (namespace from $MASSE_NAMESPACE, registry
from $MASSE_REGISTRY) and releases both names when twistd stops.
"""

import os
import sys

# twistd does not put the current directory on sys.path: make the checkout
# (this file's directory's parent) importable, for examples.greeter.
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from twisted.application.service import Application
from twisted.internet.interfaces import IHalfCloseableProtocol
from twisted.internet.protocol import Factory, Protocol
from zope.interface import implementer

from examples.greeter import factory as greeterFactory
from txmasse import RegistryService


@implementer(IHalfCloseableProtocol)
class Echo(Protocol):
    """
    Echoes, and hangs up once the client has finished sending (after the
    echo is flushed), so `masse connect echo < file` ends by itself.
    """

    def dataReceived(self, data: bytes) -> None:
        self.transport.write(data)  # type: ignore[union-attr]

    def readConnectionLost(self) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]

    def writeConnectionLost(self) -> None:
        pass


application = Application("txmasse peers")
peers = RegistryService()
peers.addPeer("echo", Factory.forProtocol(Echo), ttl=5)
peers.addPeer("greeter", greeterFactory, ttl=5, metadata={"protocol": "amp"})
peers.setServiceParent(application)
