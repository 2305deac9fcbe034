"""
A helper process that simulates many holder processes, each with a
registry (and so a Redis connection) of its own and a few leases:
C{python -m bench.loadgen URL NS HOLDERS LEASES TTL SECONDS FIRST}.

The holders start evenly over ttl/3, so their heartbeats come at a steady
rate; it prints C{ready} once all are registered, then exits after
C{SECONDS} more, releasing nothing (the leases expire).
"""

from __future__ import annotations

import sys
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, DeferredList

from bench.peer import fakeRecord
from txmasse.registry.opening import openURL
from txmasse.registry.url import parseRegistryURL


async def generate(
    url: str, namespace: str, holders: int, each: int, ttl: float, seconds: float, first: int
) -> None:
    parsed = parseRegistryURL(url)
    registries: list[Any] = []
    started: list[Deferred[Any]] = []
    gap = ttl / 3 / holders
    for h in range(first, first + holders):
        registry = openURL(reactor, parsed)
        registries.append(registry)
        records = [fakeRecord(namespace, f"gen-{h:04d}-{i:02d}") for i in range(each)]
        started += [registry.register(record, ttl) for record in records]
        await task.deferLater(reactor, gap, lambda: None)
    await DeferredList(started, fireOnOneErrback=True, consumeErrors=True)
    print("ready", flush=True)
    await task.deferLater(reactor, seconds, lambda: None)
    for registry in registries:
        await registry.close()


def main(argv: list[str]) -> None:
    url, namespace, holders, each, ttl, seconds, first = argv
    task.react(
        lambda _: Deferred.fromCoroutine(
            generate(
                url, namespace, int(holders), int(each), float(ttl), float(seconds), int(first)
            )
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
