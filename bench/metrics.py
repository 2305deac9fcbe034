"""
What the metrics cost a warm connect: C{python -m bench.metrics [ROUNDS]}.

The same warm C{masse:} connect + 1-byte echo as C{bench/connect.py}, with
the metrics hooks on and replaced by no-ops (twice: the two "off" variants
measure the noise), alternating in a shuffled order, one sample of each per
round; target: on within 2% of off.
"""

from __future__ import annotations

import random
import sys
from statistics import mean
from typing import Any

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

from bench.children import spawn
from bench.connect import echoOnce, until
from bench.redis import RedisProcess
from bench.stats import p50, p99
from txmasse import metrics
from txmasse.endpoints import MasseClientEndpoint
from txmasse.registry import registryFromURL
from txmasse.resolver import resolverFor

NAMESPACE = "bench"


def _noHook(namespace: str, name: str, result: object, seconds: float) -> None:
    pass


def _noCount(protocol: object, started: float, connected: list[int]) -> object:
    return protocol  # a repeated connect's callback, counting nothing


async def measure(url: str, echoPort: int, rounds: int) -> dict[str, list[float]]:
    registry = registryFromURL(reactor, url)
    resolver = resolverFor(registry, reactor)
    endpoint = MasseClientEndpoint(reactor, "echo", NAMESPACE, registry=url)
    hook, count = metrics.connectEnded, metrics.connectedSince

    async def on() -> float:
        return await echoOnce(endpoint)

    async def off() -> float:
        metrics.connectEnded, metrics.connectedSince = _noHook, _noCount  # type: ignore[assignment]
        try:
            return await echoOnce(endpoint)
        finally:
            metrics.connectEnded, metrics.connectedSince = hook, count

    # Two variants with metrics off: their ratio is the noise floor.
    variants = {"on": on, "off": off, "off2": off}
    for run in variants.values():
        for _ in range(20):
            await run()
    await until(lambda: resolver.isWarm(NAMESPACE, "echo"))
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for _ in range(rounds):
        random.shuffle(order)
        for name in order:
            samples[name].append(await variants[name]())
    await registry.close()
    return samples


async def main(reactor_: Any, rounds: int) -> None:
    redis = RedisProcess()
    redis.start()
    url = f"{redis.url}?timeout=5"
    server = spawn("serve", url, NAMESPACE)
    try:
        echoPort = int((await server.expect("ready"))[0])
        samples = await measure(url, echoPort, rounds)
    finally:
        server.transport.signalProcess("KILL")  # type: ignore[union-attr]
        await server.ended
        redis.stop()
    on, off, off2 = samples["on"], samples["off"], samples["off2"]
    for name, values in samples.items():
        print(
            f"warm connect, metrics {name:4}: p50 {p50(values) * 1e6:7.1f} us  "
            f"mean {mean(values) * 1e6:7.1f} us  p99 {p99(values) * 1e6:7.1f} us  "
            f"({len(values)} samples)"
        )
    print(f"ratio on/off:   p50 {p50(on) / p50(off):.4f}  mean {mean(on) / mean(off):.4f}")
    print(f"ratio off2/off: p50 {p50(off2) / p50(off):.4f}  mean {mean(off2) / mean(off):.4f}")


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 3000
    task.react(lambda r: Deferred.fromCoroutine(main(r, count)))
