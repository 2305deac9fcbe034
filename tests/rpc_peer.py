"""
AMP peers for the RPC tests, each in a process of its own:

    python -m tests.rpc_peer URL NAMESPACE NAME KIND [PORT]

KIND: C{greeter} (Greet, Count), C{adder} (Add), C{failing} (Greet that
always fails), C{liar} (publishes Greet answering an Integer, answers
text), C{slow} (Greet, Count, and Stall that answers only once released by
Release, on any connection). Prints C{registered INSTANCE PORT} once
registered; SIGTERM releases the name. With PORT, listens on that port (to
be restarted at the same address).
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.protocol import Factory
from twisted.protocols import amp

from txmasse import MasseListeningPort, MasseServerEndpoint


class GreetingRefused(Exception):
    pass


class Greet(amp.Command):
    arguments = [(b"name", amp.Unicode())]
    response = [(b"greeting", amp.Unicode())]
    errors = {GreetingRefused: b"GREETING_REFUSED"}


class Count(amp.Command):
    arguments = [
        (b"items", amp.ListOf(amp.Integer())),
        (b"scale", amp.Float(optional=True)),
        (b"exact", amp.Boolean(optional=True)),
    ]
    response = [(b"total", amp.Float()), (b"pid", amp.Integer())]


class Add(amp.Command):
    arguments = [(b"a", amp.Integer()), (b"b", amp.Integer())]
    response = [(b"sum", amp.Integer())]


class Stall(amp.Command):
    response = [(b"done", amp.Boolean())]


class Release(amp.Command):
    response = [(b"released", amp.Integer())]


class LyingGreet(amp.Command):
    """What the liar publishes: its answer is text, not an Integer."""

    commandName = b"Greet"
    arguments = [(b"name", amp.Unicode())]
    response = [(b"greeting", amp.Integer())]


class Greeter(amp.AMP):
    @Greet.responder
    def greet(self, name: str) -> dict[str, str]:
        if name == "nobody":
            raise GreetingRefused(f"will not greet {name!r}")
        return {"greeting": f"hi there, {name} (from pid {os.getpid()})"}

    @Count.responder
    def count(
        self, items: list[int], scale: float | None = None, exact: bool | None = None
    ) -> dict[str, object]:
        return {"total": sum(items) * (1.0 if scale is None else scale), "pid": os.getpid()}


class Adder(amp.AMP):
    @Add.responder
    def add(self, a: int, b: int) -> dict[str, int]:
        return {"sum": a + b}


class Failing(amp.AMP):
    @Greet.responder
    def greet(self, name: str) -> dict[str, str]:
        raise GreetingRefused(f"this greeter fails on purpose ({name})")


_stalled: list[Deferred[dict[str, bool]]] = []


class Slow(Greeter):
    @Stall.responder
    def stall(self) -> Deferred[dict[str, bool]]:
        waiting: Deferred[dict[str, bool]] = Deferred()
        _stalled.append(waiting)
        print("stalled", flush=True)
        return waiting

    @Release.responder
    def release(self) -> dict[str, int]:
        count = len(_stalled)
        while _stalled:
            _stalled.pop().callback({"done": True})
        return {"released": count}


KINDS: dict[str, type[amp.AMP]] = {
    "greeter": Greeter,
    "adder": Adder,
    "failing": Failing,
    "liar": Greeter,
    "slow": Slow,
}


async def main(reactor: Any, url: str, namespace: str, name: str, kind: str, *port: str) -> None:
    endpoint = MasseServerEndpoint(
        reactor,
        name,
        namespace,
        registry=url,
        endpoint=TCP4ServerEndpoint(reactor, int(port[0]) if port else 0, interface="127.0.0.1"),
        ttl=10,
        provides=[LyingGreet] if kind == "liar" else None,
    )
    listening = await endpoint.listen(Factory.forProtocol(KINDS[kind]))
    assert isinstance(listening, MasseListeningPort)
    reactor.addSystemEventTrigger("before", "shutdown", listening.stopListening)
    address: Any = listening.getHost()
    print("registered", listening.record.instance, address.port, flush=True)
    await Deferred()


greeterFactory = Factory.forProtocol(Greeter)
"""For C{twistd masse --factory tests.rpc_peer:greeterFactory}."""


if __name__ == "__main__":
    task.react(lambda reactor: Deferred.fromCoroutine(main(reactor, *sys.argv[1:])))
