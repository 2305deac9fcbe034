"""
The bench's helper processes, driven over stdin and stdout by L{bench.children}:

  - C{serve URL NS}: peers C{echo}, C{source} and C{source3} (the last with
    three wrappers on its side too); prints C{ready ECHO SOURCE SOURCE3}
    (their ports).
  - C{lease URL NS NAME TTL}: one registration; on C{beat}, heartbeats at
    once and prints C{beaten}; the bench then kills it.
  - C{leases URL NS COUNT TTL}: COUNT registrations kept alive; prints
    C{ready}, then C{alive N} on C{count}.
  - C{events URL NS COUNT GAP}: on C{go}, registers and releases a record
    COUNT times, GAP seconds apart, the registration's C{time.monotonic()}
    in its metadata; prints C{done}.
"""

from __future__ import annotations

import math
import sys
import time
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, DeferredList
from twisted.internet.endpoints import TCP4ServerEndpoint
from twisted.internet.interfaces import IConsumer, IProtocolFactory, IPullProducer
from twisted.internet.protocol import Factory, Protocol
from twisted.internet.stdio import StandardIO
from twisted.protocols.basic import LineReceiver
from zope.interface import implementer

from txmasse.endpoints import MasseServerEndpoint
from txmasse.records import PeerRecord
from txmasse.registry import ILease, IRegistry, registryFromURL
from txmasse.wrappers import Wrapper, parseWrappers

WRAPPERS = "idle=60,limit=100000000000,log"
"""The three wrappers of the throughput figure: C{limit} far above any rate reached."""

CHUNK = 256 * 1024


def say(*words: object) -> None:
    sys.stdout.write(" ".join(str(w) for w in words) + "\n")
    sys.stdout.flush()


class Commands(LineReceiver):
    """
    Lines from the bench, one command each.
    """

    delimiter = b"\n"

    def __init__(self) -> None:
        self.waiting: dict[str, Deferred[None]] = {}
        self.handlers: dict[str, Any] = {}

    def lineReceived(self, line: bytes) -> None:
        command = line.decode().strip()
        handler = self.handlers.get(command)
        if handler is not None:
            handler()
        waiter = self.waiting.pop(command, None)
        if waiter is not None:
            waiter.callback(None)

    def waitFor(self, command: str) -> Deferred[None]:
        d: Deferred[None] = Deferred()
        self.waiting[command] = d
        return d

    def connectionLost(self, reason: object = None) -> None:
        if reactor.running:
            reactor.stop()


def commands() -> Commands:
    protocol = Commands()
    StandardIO(protocol)
    return protocol


class Echo(Protocol):
    def dataReceived(self, data: bytes) -> None:
        assert self.transport is not None
        self.transport.write(data)


@implementer(IPullProducer)
class _Bytes:
    """
    Writes C{count} bytes to C{consumer}, a chunk each time it asks.
    """

    def __init__(self, consumer: IConsumer, count: int):
        self.consumer = consumer
        self.left = count
        self.chunk = b"\x00" * CHUNK

    def resumeProducing(self) -> None:
        if self.left <= 0:
            self.consumer.unregisterProducer()
            return
        n = min(CHUNK, self.left)
        self.left -= n
        self.consumer.write(self.chunk if n == CHUNK else self.chunk[:n])

    def stopProducing(self) -> None:
        self.left = 0


class Source(LineReceiver):
    """
    On a line C{N}, sends N bytes.
    """

    delimiter = b"\n"

    def lineReceived(self, line: bytes) -> None:
        transport: Any = self.transport
        transport.registerProducer(_Bytes(transport, int(line)), False)


SELECTED = {"role": "primary", "zone": "a"}
"""The echo's metadata: the bench's selecting connect asks for both, prefers one."""


async def serve(url: str, namespace: str) -> None:
    ports = []
    services: list[tuple[str, IProtocolFactory, list[Wrapper]]] = [
        ("echo", Factory.forProtocol(Echo), []),
        ("source", Factory.forProtocol(Source), []),
        ("source3", Factory.forProtocol(Source), parseWrappers(reactor, WRAPPERS)),
    ]
    for name, factory, wrappers in services:
        endpoint = MasseServerEndpoint(
            reactor,
            name,
            namespace,
            registry=url,
            endpoint=TCP4ServerEndpoint(reactor, 0, interface="127.0.0.1", backlog=1024),
            wrappers=wrappers,
            metadata=SELECTED,  # what the selecting warm connect asks for
        )
        port = await endpoint.listen(factory)
        ports.append(port.getHost().port)  # type: ignore[attr-defined]
    commands()  # ends this process when the bench closes our stdin
    say("ready", *ports)
    await Deferred()  # until the bench closes stdin or kills us


def fakeRecord(namespace: str, name: str, **metadata: str) -> PeerRecord:
    return PeerRecord(namespace, name, ["tcp:host=127.0.0.1:port=9"], metadata)


async def lease(url: str, namespace: str, name: str, ttl: float) -> None:
    registry = registryFromURL(reactor, url)
    held = await registry.register(fakeRecord(namespace, name), ttl)
    control = commands()

    def beat() -> None:
        held.refresh().addCallback(lambda _: say("beaten"))

    control.handlers["beat"] = beat
    say("ready")
    await Deferred()


async def registerMany(
    registry: IRegistry, records: list[PeerRecord], ttl: float, inFlight: int = 200
) -> list[ILease]:
    """
    Register C{records}, C{inFlight} at a time.
    """
    leases: list[ILease] = []
    for start in range(0, len(records), inFlight):
        batch = [registry.register(r, ttl) for r in records[start : start + inFlight]]
        for _, result in await DeferredList(batch, fireOnOneErrback=True, consumeErrors=True):
            leases.append(result)
    return leases


async def registerSpread(
    registry: IRegistry, records: list[PeerRecord], ttl: float, over: float
) -> list[ILease]:
    """
    Register C{records} evenly over C{over} seconds, so that their
    heartbeats (every C{ttl}/3) come at a steady rate, not in bursts.
    """
    tick = 0.01
    perTick = max(1, math.ceil(len(records) * tick / over))
    started: list[Deferred[ILease]] = []
    for start in range(0, len(records), perTick):
        started += [registry.register(r, ttl) for r in records[start : start + perTick]]
        await task.deferLater(reactor, tick, lambda: None)
    return [lease for _, lease in await DeferredList(started, fireOnOneErrback=True)]


async def leases(url: str, namespace: str, count: int, ttl: float) -> None:
    registry = registryFromURL(reactor, url)
    records = [fakeRecord(namespace, f"load-{i:05d}") for i in range(count)]
    await registerSpread(registry, records, ttl, over=ttl / 3)
    control = commands()

    def count_() -> None:
        registry.find(namespace, "load-*").addCallback(lambda found: say("alive", len(found)))

    control.handlers["count"] = count_
    say("ready")
    await Deferred()


async def events(url: str, namespace: str, count: int, gap: float) -> None:
    registry = registryFromURL(reactor, url)
    await registry.lookup(namespace, "warm-up")  # connected and scripts loaded
    control = commands()
    say("ready")
    await control.waitFor("go")
    for i in range(count):
        record = fakeRecord(namespace, f"ev-{i % 100}", t0=repr(time.monotonic()))
        held = await registry.register(record, 30)
        await task.deferLater(reactor, gap, lambda: None)
        await held.release()
        await task.deferLater(reactor, gap, lambda: None)
    say("done")
    await Deferred()


def main(argv: list[str]) -> None:
    mode, *args = argv
    modes: dict[str, Any] = {
        "serve": lambda: serve(args[0], args[1]),
        "lease": lambda: lease(args[0], args[1], args[2], float(args[3])),
        "leases": lambda: leases(args[0], args[1], int(args[2]), float(args[3])),
        "events": lambda: events(args[0], args[1], int(args[2]), float(args[3])),
    }
    task.react(lambda _: Deferred.fromCoroutine(modes[mode]()))


if __name__ == "__main__":
    main(sys.argv[1:])
