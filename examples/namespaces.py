"""
The same code reaches "db-server-1" in whichever namespace
$MASSE_NAMESPACE names: dev, prod, ... (en-masse's setPeerNamespace).

Start a db-server-1 in two namespaces:

    MASSE_NAMESPACE=dev  python -m examples.namespaces serve &
    MASSE_NAMESPACE=prod python -m examples.namespaces serve &

Then ask whichever one your environment points at:

    MASSE_NAMESPACE=prod python -m examples.namespaces ask   # prints: db-server-1 in prod
"""

from __future__ import annotations

import sys
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory, Protocol

from txmasse import defaultNamespace


class Announce(Protocol):
    """
    Says which namespace it serves, then hangs up.
    """

    transport: Any

    def connectionMade(self) -> None:
        self.transport.write(f"db-server-1 in {defaultNamespace()}\n".encode())
        self.transport.loseConnection()


class Collect(Protocol):
    def __init__(self) -> None:
        self.received = b""
        self.done: Deferred[bytes] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += data

    def connectionLost(self, reason: object = None) -> None:
        self.done.callback(self.received)


async def serve(reactor: object) -> None:
    port = await serverFromString(reactor, "masse:db-server-1").listen(
        Factory.forProtocol(Announce)
    )
    print(f"db-server-1 ({defaultNamespace()}) on {port.getHost()}", flush=True)
    await Deferred()


async def ask(reactor: object) -> None:
    # No namespace here: it comes from $MASSE_NAMESPACE.
    protocol = await clientFromString(reactor, "masse:db-server-1:timeout=10").connect(
        Factory.forProtocol(Collect)
    )
    print((await protocol.done).decode().strip())


if __name__ == "__main__":
    commands: dict[str, Callable[[Any], Coroutine[Any, Any, None]]] = {"serve": serve, "ask": ask}
    command = commands.get(sys.argv[1] if len(sys.argv) > 1 else "")
    if command is None:
        sys.exit("usage: python -m examples.namespaces serve | ask")
    chosen: Callable[[Any], Coroutine[Any, Any, None]] = command
    task.react(lambda reactor: Deferred.fromCoroutine(chosen(reactor)))
