"""
The main demo: two greeter peers on the embedded SQLite registry (no Redis
needed), reached by name; one is killed and seen timing out, and calls go
on to the other.

    python -m examples.demo

It makes a registry file in a temporary directory, starts two
"python -m examples.greeter serve" processes, and prints what happens.
"""

from __future__ import annotations

import os
import signal
import sys
import tempfile
from typing import Any

from twisted.internet import task
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import clientFromString
from twisted.internet.protocol import Factory, ProcessProtocol
from twisted.protocols import amp

from examples.greeter import Greet
from txmasse import PeerEvent, registryFromURL


class Peer(ProcessProtocol):
    """
    A greeter process; its output goes to ours.
    """

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(data.decode(errors="replace"))


def say(text: str) -> None:
    print(text, flush=True)


async def demo(reactor: Any) -> None:
    directory = tempfile.mkdtemp(prefix="masse-demo-")
    url = f"sqlite://{directory}/registry.db"
    os.environ["MASSE_REGISTRY"] = url
    os.environ["MASSE_NAMESPACE"] = "demo"
    say(f"registry: {url}")

    registry = registryFromURL(reactor)
    events: list[PeerEvent] = []
    waiters: list[tuple[str, int, Deferred[None]]] = []

    def seen(kind: str) -> int:
        return sum(event.kind == kind for event in events)

    def show(event: PeerEvent) -> None:
        say(f"  event: {event.kind} {event.record.name} {event.record.endpoints[0]}")
        events.append(event)
        for waiter in list(waiters):
            if seen(waiter[0]) >= waiter[1]:
                waiters.remove(waiter)
                waiter[2].callback(None)

    def until(kind: str, count: int = 1) -> Deferred[None]:
        """
        Fires once C{count} events of C{kind} have been seen.
        """
        d: Deferred[None] = Deferred()
        if seen(kind) >= count:
            d.callback(None)
        else:
            waiters.append((kind, count, d))
        return d

    await registry.watch("demo", "*", show)

    root = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([root, os.environ.get("PYTHONPATH", "")])}
    peers = [
        reactor.spawnProcess(
            Peer(),
            sys.executable,
            [sys.executable, "-m", "examples.greeter", "serve"],
            env=env,
            path=root,
        )
        for _ in range(2)
    ]
    await until("joined", 2)
    say("two greeters registered as 'greeter'")

    endpoint = clientFromString(reactor, "masse:greeter:pick=roundrobin:timeout=10")

    async def greet(name: str) -> None:
        protocol = await endpoint.connect(Factory.forProtocol(amp.AMP))
        answer = await protocol.callRemote(Greet, name=name)
        say(f"  {answer['greeting']}")
        protocol.transport.loseConnection()

    for name in ("Alice", "Bob"):
        await greet(name)

    victim, survivor = peers
    say(f"killing greeter pid {victim.pid} with SIGKILL (its lease has a 3 s ttl)")
    victim.signalProcess("KILL")
    await until("timedout")
    await greet("Carol")

    say(f"stopping greeter pid {survivor.pid} cleanly (SIGTERM)")
    survivor.signalProcess("TERM")
    await until("left")
    await registry.close()
    say("done")


if __name__ == "__main__":
    signal.signal(signal.SIGINT, signal.default_int_handler)
    task.react(lambda reactor: Deferred.fromCoroutine(demo(reactor)))
