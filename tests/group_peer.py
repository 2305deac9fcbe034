"""
An AMP worker for the group tests, in a process of its own:

    python -m tests.group_peer URL NAMESPACE NAME TTL [fail]

Prints C{registered INSTANCE} once registered; on SIGTERM it releases its
name and exits. With C{fail}, every C{Hello} fails.
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory

from examples.group_rpc import Hello, Worker
from txmasse import MasseListeningPort, MasseServerEndpoint


class Failing(Worker):
    @Hello.responder
    def hello(self, sender: str) -> dict[str, str]:
        raise RuntimeError("this worker fails on purpose")


async def main(reactor: Any, url: str, namespace: str, name: str, ttl: str, *mode: str) -> None:
    factory = Factory.forProtocol(lambda: (Failing if mode == ("fail",) else Worker)(name))
    endpoint = MasseServerEndpoint(
        reactor,
        name,
        namespace,
        registry=url,
        endpoint=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1"),
        ttl=float(ttl),
    )
    port = await endpoint.listen(factory)
    assert isinstance(port, MasseListeningPort)
    reactor.addSystemEventTrigger("before", "shutdown", port.stopListening)
    print("registered", port.record.instance, flush=True)
    await Deferred()


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
