"""
Throughput of one stream: raw TCP, C{masse:} with no wrappers, and with
three on both sides; the sizes alternate, one transfer of each per round.
"""

from __future__ import annotations

import random
import time
from typing import Any

from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.python.failure import Failure

from bench.peer import WRAPPERS
from txmasse.endpoints import MasseClientEndpoint
from txmasse.wrappers import parseWrappers


class Sink(Protocol):
    def __init__(self) -> None:
        self.expected = 0
        self.received = 0
        self.done: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        self.received += len(data)
        if self.received >= self.expected and not self.done.called:
            self.done.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)
        if not self.done.called:
            self.done.errback(reason)


async def transferOnce(endpoint: Any, size: int) -> float:
    """
    Seconds from asking the source for C{size} bytes to the last of them.
    """
    protocol = await endpoint.connect(Factory.forProtocol(Sink))
    protocol.expected = size
    start = time.perf_counter()
    protocol.transport.write(b"%d\n" % size)
    await protocol.done
    elapsed = time.perf_counter() - start
    protocol.transport.loseConnection()
    await protocol.lost
    return elapsed


async def measureThroughput(
    url: str, namespace: str, sourcePort: int, size: int, rounds: int
) -> dict[str, list[float]]:
    """
    Bytes per second per variant: C{raw}, C{w0}, C{w3}.
    """
    endpoints = {
        "raw": TCP4ClientEndpoint(reactor, "127.0.0.1", sourcePort),
        "w0": MasseClientEndpoint(reactor, "source", namespace, registry=url),
        "w3": MasseClientEndpoint(
            reactor, "source3", namespace, registry=url, wrappers=parseWrappers(reactor, WRAPPERS)
        ),
    }
    for endpoint in endpoints.values():  # warm-up
        await transferOnce(endpoint, min(size, 1 << 20))
    rates: dict[str, list[float]] = {name: [] for name in endpoints}
    order = list(endpoints)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            rates[name].append(size / await transferOnce(endpoints[name], size))
    return rates
