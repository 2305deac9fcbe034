"""
Registry load: the Redis commands per second that many leases generate,
counted by the Redis server itself, with its CPU time.
"""

from __future__ import annotations

import time

import attrs
from twisted.internet import reactor
from twisted.internet.task import deferLater

from bench.children import spawn
from bench.redis import RedisProcess

SCRIPTS = ("evalsha", "eval", "script")
"""What txmasse sends itself: every registry operation is one Lua script."""


@attrs.frozen
class Load:
    leases: int
    ttl: float
    seconds: float
    sent: float  # commands per second that clients sent (scripts)
    total: float  # commands per second, those run inside scripts included
    cpu: float  # Redis CPU seconds per second
    alive: int  # leases still registered at the end


async def measureLoad(redis: RedisProcess, url: str, count: int, ttl: float, window: float) -> Load:
    child = spawn("leases", url, "load", str(count), str(ttl))
    try:
        await child.expect("ready", timeout=600)
        await deferLater(reactor, ttl / 3 + 0.5, lambda: None)  # heartbeats in their stride
        before, cpu0, t0 = redis.commandCalls(), redis.cpuSeconds(), time.monotonic()
        await deferLater(reactor, window, lambda: None)
        after, cpu1, t1 = redis.commandCalls(), redis.cpuSeconds(), time.monotonic()
        child.send("count")
        alive = int((await child.expect("alive", timeout=60))[0])
    finally:
        await child.stop()
    elapsed = t1 - t0
    delta = {name: after.get(name, 0) - before.get(name, 0) for name in after}
    delta.pop("info", None)  # our own counting
    sent = sum(delta.get(name, 0) for name in SCRIPTS)
    return Load(
        leases=count,
        ttl=ttl,
        seconds=elapsed,
        sent=sent / elapsed,
        total=sum(delta.values()) / elapsed,
        cpu=(cpu1 - cpu0) / elapsed,
        alive=alive,
    )
