"""
C{lookup(name)} and C{find("prefix*")} latency against the number of peers
registered: one namespace per size, all filled first, then the sizes
alternate in a shuffled order each round.
"""

from __future__ import annotations

import random
import time

from twisted.internet import reactor

from bench.peer import fakeRecord, registerMany
from txmasse.registry import registryFromURL

NAME = "peer-00005"
PATTERN = "peer-0000*"  # ten names in every namespace of ten peers or more


def namespaceOf(size: int) -> str:
    return f"s{size}"


async def populate(url: str, sizes: list[int]) -> None:
    """
    Register C{size} peers in each size's namespace, with leases long enough
    to outlive the run, through a registry closed afterwards (no heartbeats
    or sweeps left running while lookups are timed).
    """
    registry = registryFromURL(reactor, url)
    try:
        for size in sizes:
            records = [fakeRecord(namespaceOf(size), f"peer-{i:05d}") for i in range(size)]
            await registerMany(registry, records, ttl=3600)
    finally:
        await registry.close()


async def measureLookups(
    url: str, sizes: list[int], rounds: int
) -> dict[str, dict[int, list[float]]]:
    """
    Samples (seconds) for C{lookup} and C{find}, per number of peers.
    """
    registry = registryFromURL(reactor, url)
    samples: dict[str, dict[int, list[float]]] = {
        "lookup": {size: [] for size in sizes},
        "find": {size: [] for size in sizes},
    }
    order = list(sizes)
    for round in range(rounds + 20):  # the first 20 rounds warm up
        random.shuffle(order)
        for size in order:
            namespace = namespaceOf(size)
            start = time.perf_counter()
            found = await registry.lookup(namespace, NAME)
            middle = time.perf_counter()
            matching = await registry.find(namespace, PATTERN)
            end = time.perf_counter()
            if len(found) != 1 or len(matching) != min(10, size):
                raise RuntimeError(
                    f"bench: {namespace}: lookup gave {len(found)}, find {len(matching)}"
                )
            if round >= 20:
                samples["lookup"][size].append(middle - start)
                samples["find"][size].append(end - middle)
    return samples
