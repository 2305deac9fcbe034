"""
Events across processes: register -> a watcher's callback in another
process, and SIGKILL -> C{timedout} at the watcher.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults

from bench.children import Child, spawn
from bench.connect import until
from txmasse.registry import EventKind, PeerEvent, registryFromURL


async def measureEventLatency(url: str, count: int, gap: float) -> list[float]:
    """
    Seconds from the start of C{register()} in a helper process to the
    C{joined} callback here, for C{count} registrations.
    """
    registry = registryFromURL(reactor, url)
    latencies: list[float] = []

    def heard(event: PeerEvent) -> None:
        t0 = event.record.metadata.get("t0")
        if event.kind == EventKind.JOINED and t0 is not None:
            latencies.append(time.monotonic() - float(t0))

    subscription = await registry.watch("ev", "ev-*", heard)
    child = spawn("events", url, "ev", str(count), str(gap))
    try:
        await child.expect("ready")
        child.send("go")
        await child.expect("done", timeout=60 + count * gap * 4)
        await until(lambda: len(latencies) >= count, timeout=10)
    finally:
        subscription.stop()
        await child.stop()
    return latencies


async def measureDetection(url: str, ttls: list[float], rounds: int) -> dict[float, list[float]]:
    """
    Seconds from SIGKILL to C{timedout} here, per ttl. Each helper is
    killed right after a heartbeat, the worst moment: its lease then has
    its whole ttl left.
    """
    registry = registryFromURL(reactor, url)
    timedOut: dict[str, float] = {}

    def heard(event: PeerEvent) -> None:
        if event.kind == EventKind.TIMEDOUT:
            timedOut[event.record.name] = time.monotonic()

    subscription = await registry.watch("fd", "*", heard)
    detection: dict[float, list[float]] = {ttl: [] for ttl in ttls}
    try:
        for round in range(rounds):
            names = {ttl: f"fd-{round}-{ttl:g}".replace(".", "_") for ttl in ttls}
            children = {ttl: spawn("lease", url, "fd", names[ttl], str(ttl)) for ttl in ttls}
            try:
                for child in children.values():
                    await child.expect("ready")

                async def beatThenKill(child: Child) -> None:
                    child.send("beat")
                    await child.expect("beaten")
                    child.kill()

                await gatherResults(
                    [Deferred.fromCoroutine(beatThenKill(child)) for child in children.values()]
                )
                await until(_allIn(set(names.values()), timedOut), timeout=max(ttls) + 10)
            finally:
                for child in children.values():
                    await child.stop()
            for ttl, child in children.items():
                assert child.killedAt is not None
                detection[ttl].append(timedOut[names[ttl]] - child.killedAt)
    finally:
        subscription.stop()
    return detection


def _allIn(names: set[str], heard: dict[str, float]) -> Callable[[], bool]:
    return lambda: names <= heard.keys()
