"""
A client that follows a peer wherever it restarts, with Twisted's own
ClientService: every reconnect resolves the name again.

    python -m examples.reconnecting serve &     # a "ticker" on some free port
    python -m examples.reconnecting follow      # prints each tick it receives

Kill the ticker and start it again: it comes back on another port, and the
follower reconnects to it by name and goes on printing.
"""

from __future__ import annotations

import os
import sys
from collections.abc import Callable, Coroutine
from typing import Any

from twisted.application.internet import ClientService, backoffPolicy
from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Factory
from twisted.protocols.basic import LineReceiver

from txmasse import MasseClientEndpoint, MasseServerEndpoint


class Ticker(LineReceiver):
    def connectionMade(self) -> None:
        self.ticks = task.LoopingCall(self.tick)
        self.count = 0
        self.ticks.start(0.2)

    def tick(self) -> None:
        self.count += 1
        self.sendLine(f"tick {self.count} from pid {os.getpid()}".encode())

    def connectionLost(self, reason: object = None) -> None:
        if self.ticks.running:
            self.ticks.stop()


class Printer(LineReceiver):
    def lineReceived(self, line: bytes) -> None:
        print(line.decode(), flush=True)


async def serve(reactor: Any) -> None:
    port = await MasseServerEndpoint(reactor, "ticker", ttl=3).listen(Factory.forProtocol(Ticker))
    print(f"ticker is listening on {port.getHost()}", flush=True)
    await Deferred()


async def follow(reactor: Any) -> None:
    endpoint = MasseClientEndpoint(reactor, "ticker", timeout=5)
    service = ClientService(
        endpoint,
        Factory.forProtocol(Printer),
        retryPolicy=backoffPolicy(initialDelay=0.1, maxDelay=2.0),
    )
    service.startService()
    await Deferred()


if __name__ == "__main__":
    commands: dict[str, Callable[[Any], Coroutine[Any, Any, None]]] = {
        "serve": serve,
        "follow": follow,
    }
    command = commands.get(sys.argv[1] if len(sys.argv) > 1 else "")
    if command is None:
        sys.exit("usage: python -m examples.reconnecting serve | follow")
    chosen: Callable[[Any], Coroutine[Any, Any, None]] = command
    task.react(lambda reactor: Deferred.fromCoroutine(chosen(reactor)))
