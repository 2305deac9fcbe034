"""
A helper process that holds many leases and measures what they cost it:
C{python -m bench.holder URL NS COUNT TTL HOW WINDOW [put]}.

C{HOW} is C{atonce} (registered 200 at a time, as a program starting up
does) or C{spread} (evenly over ttl/3); or C{finds}: C{COUNT} finds of ten
records, for their client CPU. It prints one line, C{result JSON}:
its RSS before and after registering, and the CPU it used over C{WINDOW}
seconds of heartbeats with the number of leases those heartbeats renewed.
With C{put}, every heartbeat writes its whole record again, one script call
per lease (what heartbeats did before L{txmasse.registry.base.Store.extendLeases}):
the baseline. Set C{BENCH_NO_HIREDIS=1} to keep txredisapi off the hiredis
parser even where it is installed.
"""

from __future__ import annotations

import gc
import json
import os
import sys
import time
from collections.abc import Sequence
from typing import Any

if os.environ.get("BENCH_NO_HIREDIS"):
    sys.modules["hiredis"] = None  # type: ignore[assignment]

from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

from bench.peer import fakeRecord, registerMany, registerSpread
from txmasse.records import PeerRecord
from txmasse.registry import registryFromURL
from txmasse.registry.base import extendByPutting


def rss() -> int:
    with open("/proc/self/statm") as f:
        return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")


async def hold(url: str, namespace: str, count: int, ttl: float, how: str, window: float,
               put: bool) -> None:  # fmt: skip
    registry: Any = registryFromURL(reactor, url)
    await registry.lookup(namespace, "warm-up")  # connected, scripts loaded
    renewed = [0]
    store = getattr(registry, "registry", registry)  # under a SignedRegistry
    extend = store.extendLeases

    def counting(records: Sequence[PeerRecord], ttl: float) -> Deferred[None]:
        renewed[0] += len(records)
        if put:
            return extendByPutting(store, records, ttl)
        return extend(records, ttl)  # type: ignore[no-any-return]

    store.extendLeases = counting
    if how == "finds":
        await finds(registry, namespace, count)
        return
    records = [fakeRecord(namespace, f"hold-{i:05d}") for i in range(count)]
    gc.collect()
    before = rss()
    if how == "atonce":
        leases = await registerMany(registry, records, ttl)
    else:
        leases = await registerSpread(registry, records, ttl, over=ttl / 3)
    await task.deferLater(reactor, ttl / 3 + 0.5, lambda: None)  # heartbeats in their stride
    gc.collect()
    after = rss()
    renewed[0] = 0
    cpu0, t0 = time.process_time(), time.monotonic()
    await task.deferLater(reactor, window, lambda: None)
    cpu, elapsed = time.process_time() - cpu0, time.monotonic() - t0
    beats = renewed[0]
    alive = len(await registry.find(namespace, "hold-*"))
    print(
        "result",
        json.dumps(
            {
                "leases": len(leases),
                "before": before,
                "after": after,
                "cpu": cpu,
                "seconds": elapsed,
                "heartbeats": beats,
                "alive": alive,
            }
        ),
        flush=True,
    )
    await registry.close()


async def finds(registry: Any, namespace: str, count: int) -> None:
    """
    The client CPU of a find that returns ten records, C{count} times.
    """
    held = await registerMany(registry, [fakeRecord(namespace, f"f-{i}") for i in range(10)], 60)
    for _ in range(100):
        await registry.find(namespace, "f-*")  # warm
    cpu0 = time.process_time()
    for _ in range(count):
        if len(await registry.find(namespace, "f-*")) != 10:
            raise RuntimeError("bench: find lost records")
    cpu = time.process_time() - cpu0
    print("result", json.dumps({"cpu": cpu, "finds": count, "leases": len(held)}), flush=True)
    await registry.close()


def main(argv: list[str]) -> None:
    url, namespace, count, ttl, how, window, *rest = argv
    task.react(
        lambda _: Deferred.fromCoroutine(
            hold(url, namespace, int(count), float(ttl), how, float(window), rest == ["put"])
        )
    )


if __name__ == "__main__":
    main(sys.argv[1:])
