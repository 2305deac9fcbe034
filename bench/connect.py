"""
Connect + 1-byte echo: raw Twisted TCP, C{masse:} without the cache, on a
cache miss and warm, and Pyro5's name-server lookup + connect + call; with
one Redis GET round trip as the yardstick of a registry round trip. All
alternate, one sample of each per round, in a shuffled order.
"""

from __future__ import annotations

import importlib
import random
import time
from collections.abc import Awaitable, Callable
from typing import Any

import txredisapi
from twisted.internet import reactor
from twisted.internet.defer import Deferred
from twisted.internet.endpoints import TCP4ClientEndpoint
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.internet.task import deferLater
from twisted.python.failure import Failure

from bench.peer import SELECTED
from txmasse.endpoints import MasseClientEndpoint
from txmasse.registry import registryFromURL
from txmasse.registry.opening import openURL
from txmasse.registry.url import parseRegistryURL
from txmasse.resolver import resolverFor


class EchoClient(Protocol):
    def __init__(self) -> None:
        self.echoed: Deferred[None] = Deferred()
        self.lost: Deferred[None] = Deferred()

    def dataReceived(self, data: bytes) -> None:
        if not self.echoed.called:
            self.echoed.callback(None)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        self.lost.callback(None)


async def echoOnce(endpoint: Any) -> float:
    """
    Seconds from C{connect()} to the echo of one byte; then closes.
    """
    start = time.perf_counter()
    protocol = await endpoint.connect(Factory.forProtocol(EchoClient))
    protocol.transport.write(b"x")
    await protocol.echoed
    elapsed = time.perf_counter() - start
    protocol.transport.loseConnection()
    await protocol.lost
    return elapsed


async def until(predicate: Callable[[], bool], timeout: float = 10.0) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise RuntimeError("bench: a condition was not met in time")
        await deferLater(reactor, 0.001, lambda: None)


async def measureConnects(
    url: str,
    namespace: str,
    echoPort: int,
    redisPort: int,
    pyroURI: str | None,
    rounds: int,
    trip: Callable[[], Awaitable[object]] | None = None,
) -> dict[str, list[float]]:
    """
    Samples (seconds) per variant: C{raw}, C{nocache}, C{miss}, C{warm},
    C{selected} (warm, with two C{meta.} conditions and one C{prefer.}),
    C{get}, C{command} (the lookup's HGETALL alone, over txredisapi), C{byhand}
    (a lookup, then C{raw}), C{pyro} if C{pyroURI}, and C{trip} if given
    (another registry's raw round trip, to weigh its cold connects by).
    """
    registry = registryFromURL(reactor, url)
    resolver = resolverFor(registry, reactor)
    raw = TCP4ClientEndpoint(reactor, "127.0.0.1", echoPort)
    cached = MasseClientEndpoint(reactor, "echo", namespace, registry=url)
    # The cache misses run on a registry (and so a resolver) of their own:
    # dropping the name's entry there leaves the warm rows' watch alone, as
    # a first connect to a name does in any process that holds others.
    missRegistry = openURL(reactor, parseRegistryURL(url))
    missResolver = resolverFor(missRegistry, reactor)
    missing = MasseClientEndpoint(reactor, "echo", namespace, registry=missRegistry)
    uncached = MasseClientEndpoint(reactor, "echo", namespace, registry=url, cache=False)
    selecting = MasseClientEndpoint(
        reactor, "echo", namespace, registry=url, meta=SELECTED, prefer={"zone": "a"}
    )
    redis = await txredisapi.Connection("127.0.0.1", redisPort, reconnect=False)
    await redis.set("bench", "x")

    def warm() -> bool:
        return resolver.isWarm(namespace, "echo")

    # Another watch in the namespace, as any process with a cached name has:
    # a cache miss then measures a first connect to a name, not the first
    # subscription to the namespace's events.
    other = await missRegistry.watch(namespace, "other", lambda event: None)

    async def miss() -> float:
        missResolver.forget(namespace, "echo")
        elapsed = await echoOnce(missing)
        # The watch it started is up before anything else is timed.
        await until(lambda: missResolver.isWarm(namespace, "echo"))
        return elapsed

    async def get() -> float:
        start = time.perf_counter()
        await redis.get("bench")
        return time.perf_counter() - start

    lookupCommand = ("HGETALL", f"masse:{{{namespace}}}:n:echo")

    async def command() -> float:
        # The floor of a lookup: its command's round trip through txredisapi,
        # the reply left unread.
        start = time.perf_counter()
        await redis.execute_command(*lookupCommand)
        return time.perf_counter() - start

    async def byHand() -> float:
        # The floor of any connect that asks a registry first: txmasse's own
        # lookup, then the raw endpoint, with no name layer in between.
        start = time.perf_counter()
        await registry.lookup(namespace, "echo")
        return time.perf_counter() - start + await echoOnce(raw)

    api: Any = importlib.import_module("Pyro5.api") if pyroURI is not None else None

    async def pyro() -> float:
        proxy = api.Proxy(pyroURI)
        start = time.perf_counter()
        proxy.echo("x")  # blocking: resolves the name, connects, calls
        elapsed = time.perf_counter() - start
        proxy._pyroRelease()
        return elapsed

    variants: dict[str, Callable[[], Awaitable[float]]] = {
        "raw": lambda: echoOnce(raw),
        "nocache": lambda: echoOnce(uncached),
        "miss": miss,
        "warm": lambda: echoOnce(cached),
        "selected": lambda: echoOnce(selecting),
        "get": get,
        "command": command,
        "byhand": byHand,
    }
    if pyroURI is not None:
        variants["pyro"] = pyro
    if trip is not None:
        roundTrip = trip

        async def timedTrip() -> float:
            start = time.perf_counter()
            await roundTrip()
            return time.perf_counter() - start

        variants["trip"] = timedTrip
    for run in variants.values():  # warm up every path (imports, scripts, the cache)
        for _ in range(3):
            await run()
    await until(warm)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            samples[name].append(await variants[name]())
    await redis.disconnect()
    other.stop()
    await missRegistry.close()
    return samples
