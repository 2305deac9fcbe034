"""
Call every peer whose name matches a pattern, all at once: en-masse's
C{rpc.to('*').provide(...)}, with a L{PeerGroup} and AMP.

Start a few workers (any registry; here the embedded one):

    export MASSE_REGISTRY=sqlite:///tmp/masse-demo.db MASSE_NAMESPACE=dev
    python -m examples.group_rpc serve worker-1 &
    python -m examples.group_rpc serve worker-2 &

Then call all of them (waiting for 2 to be connected), one answer a line:

    python -m examples.group_rpc call 'worker-*' 2
"""

from __future__ import annotations

import os
import sys
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import serverFromString
from twisted.internet.interfaces import IProtocol
from twisted.internet.protocol import Factory
from twisted.protocols import amp
from twisted.python.failure import Failure

from txmasse import PeerGroup, PeerRecord, defaultNamespace, registryFromURL


class Hello(amp.Command):
    arguments = [(b"sender", amp.Unicode())]
    response = [(b"answer", amp.Unicode())]


class Worker(amp.AMP):
    def __init__(self, name: str):
        super().__init__()
        self.name = name

    @Hello.responder
    def hello(self, sender: str) -> dict[str, str]:
        return {"answer": f"{self.name} (pid {os.getpid()}) says hello to {sender}"}


async def serve(reactor: Any, name: str) -> None:
    port = await serverFromString(reactor, f"masse:{name}:ttl=3").listen(
        Factory.forProtocol(lambda: Worker(name))
    )
    # Release the name on a clean stop: groups drop this worker at once.
    reactor.addSystemEventTrigger("before", "shutdown", port.stopListening)
    print(f"{name} is listening on {port.getHost()}", flush=True)
    await Deferred()


async def call(reactor: Any, pattern: str, count: int) -> None:
    group = PeerGroup(
        registryFromURL(reactor), defaultNamespace(), pattern, Factory.forProtocol(amp.AMP)
    )
    enough: Deferred[None] = Deferred()

    def added(record: PeerRecord, protocol: IProtocol) -> None:
        if len(group.connections) >= count and not enough.called:
            enough.callback(None)

    group.onPeerAdded(added)
    group.startService()
    try:
        await enough.addTimeout(10, reactor)
        results = await group.callAll(Hello, callTimeout=5, sender=f"pid {os.getpid()}")
        for record, outcome in sorted(results.items(), key=lambda item: item[0].name):
            if isinstance(outcome, Failure):
                print(f"{record.name}: failed: {outcome.getErrorMessage()}")
            else:
                print(f"{record.name}: {outcome['answer']}")  # type: ignore[index]
    finally:
        await group.stopService()


def main(argv: list[str]) -> None:
    if len(argv) == 2 and argv[0] == "serve":
        task.react(lambda reactor: Deferred.fromCoroutine(serve(reactor, argv[1])))
    elif len(argv) in (2, 3) and argv[0] == "call":
        count = int(argv[2]) if len(argv) == 3 else 1
        task.react(lambda reactor: Deferred.fromCoroutine(call(reactor, argv[1], count)))
    else:
        sys.exit("usage: python -m examples.group_rpc serve NAME | call PATTERN [COUNT]")


if __name__ == "__main__":
    main(sys.argv[1:])
