"""
An AMP peer that provides C{Greet}, and a client that calls it by name.

Serve it under the name "greeter" (any registry; here the embedded one):

    export MASSE_REGISTRY=sqlite:///tmp/masse-demo.db
    twistd -n masse --name greeter --factory examples.greeter:factory

or without twistd:

    python -m examples.greeter serve

Then, from anywhere on the machine:

    python -m examples.greeter call Alice      # prints: hi there, Alice (from pid ...)
"""

from __future__ import annotations

import os
import sys

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString, serverFromString
from twisted.internet.protocol import Factory
from twisted.protocols import amp


class Greet(amp.Command):
    arguments = [(b"name", amp.Unicode())]
    response = [(b"greeting", amp.Unicode())]


class Greeter(amp.AMP):
    @Greet.responder
    def greet(self, name: str) -> dict[str, str]:
        return {"greeting": f"hi there, {name} (from pid {os.getpid()})"}


factory = Factory.forProtocol(Greeter)


async def serve(reactor: object) -> None:
    port = await serverFromString(reactor, "masse:greeter:ttl=3").listen(factory)
    # Release the name on a clean stop: peers see "left" at once.
    reactor.addSystemEventTrigger("before", "shutdown", port.stopListening)  # type: ignore[attr-defined]
    print(f"greeter is listening on {port.getHost()}", flush=True)
    await Deferred()


async def call(reactor: object, name: str) -> None:
    endpoint = clientFromString(reactor, "masse:greeter:timeout=10")
    protocol = await endpoint.connect(Factory.forProtocol(amp.AMP))
    answer = await protocol.callRemote(Greet, name=name)
    print(answer["greeting"])
    protocol.transport.loseConnection()


def main(argv: list[str]) -> None:
    if argv[:1] == ["serve"]:
        task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor)))
    elif len(argv) == 2 and argv[0] == "call":
        task.react(lambda reactor: Deferred.fromCoroutine(call(reactor, argv[1])))
    else:
        sys.exit("usage: python -m examples.greeter serve | call NAME")


if __name__ == "__main__":
    main(sys.argv[1:])
