"""
The etcd registry beside Redis, in the same run: C{python -m bench.etcd}
(C{--quick} for tiny sizes), or C{python -m bench --etcd} to add these
rows to the full table.

Starts its own etcd (Debian's etcd-server, one member on loopback, the
election settings of the tests: 50 ms heartbeat, 500 ms election) and its
own redis-server. Measures lookups against the raw gateway range call
they are made of (through Twisted's Agent and through treq, same member,
same body), connects cold and warm, event latency and SIGKILL ->
C{timedout}, each beside the same figure on Redis.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import random
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Awaitable, Callable
from typing import Any

import attrs
import treq
import txredisapi
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred
from twisted.internet.protocol import Protocol
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers

from bench.children import Child, spawn
from bench.connect import measureConnects
from bench.events import measureDetection, measureEventLatency
from bench.peer import fakeRecord, registerMany, registerSpread
from bench.redis import RedisProcess
from bench.stats import Row, detectionRows, micros, millis, p50, p50p99, p99, ratioRow, table
from txmasse.registry import registryFromURL
from txmasse.registry.etcd_client import BytesBody


@attrs.frozen
class EtcdSizes:
    lookups: int
    connects: int
    events: int
    eventGap: float
    ttls: list[float]
    detectionRounds: int
    leases: int
    leaseTTL: float
    loadWindow: float


FULL = EtcdSizes(
    lookups=2000,
    connects=500,
    events=200,
    eventGap=0.01,
    ttls=[1, 3],
    detectionRounds=2,
    leases=1000,
    leaseTTL=3,
    loadWindow=10,
)
QUICK = EtcdSizes(
    lookups=50,
    connects=20,
    events=10,
    eventGap=0.005,
    ttls=[1],
    detectionRounds=1,
    leases=50,
    leaseTTL=1,
    loadWindow=1,
)


def freePorts(count: int) -> list[int]:
    """
    C{count} different free loopback ports: all held at once while chosen,
    so that none comes back twice (as closing and asking again may).
    """
    sockets = [socket.socket() for _ in range(count)]
    try:
        for s in sockets:
            s.bind(("127.0.0.1", 0))
        return [int(s.getsockname()[1]) for s in sockets]
    finally:
        for s in sockets:
            s.close()


class EtcdProcess:
    """
    One etcd member of the bench's own, on free loopback ports.
    """

    def __init__(self) -> None:
        executable = shutil.which("etcd")
        if executable is None:
            raise SystemExit("bench: etcd is not installed (apt-get install -y etcd-server)")
        self.executable = executable
        self.port, self.peerPort = freePorts(2)
        self.directory = tempfile.TemporaryDirectory(prefix="txmasse-bench-etcd-")
        self.process: subprocess.Popen[bytes] | None = None

    @property
    def url(self) -> str:
        return f"etcd://127.0.0.1:{self.port}/bench"

    def start(self) -> None:
        client, peer = f"http://127.0.0.1:{self.port}", f"http://127.0.0.1:{self.peerPort}"
        self.process = subprocess.Popen(
            [
                self.executable,
                "--name", "bench",
                "--data-dir", f"{self.directory.name}/data",
                "--listen-client-urls", client,
                "--advertise-client-urls", client,
                "--listen-peer-urls", peer,
                "--initial-advertise-peer-urls", peer,
                "--initial-cluster", f"bench={peer}",
                "--heartbeat-interval", "50",
                "--election-timeout", "500",
                "--logger", "zap",
                "--log-level", "error",
            ],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )  # fmt: skip
        deadline = time.monotonic() + 20
        while True:
            try:
                self.version()
                return
            except OSError:
                pass
            if self.process.poll() is not None or time.monotonic() > deadline:
                raise SystemExit(f"bench: etcd on port {self.port} did not start")
            time.sleep(0.05)

    def version(self) -> str:
        with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/version", timeout=2) as r:
            return str(json.loads(r.read()).get("etcdserver", "?"))

    def cpuSeconds(self) -> float:
        assert self.process is not None
        with open(f"/proc/{self.process.pid}/stat") as f:
            fields = f.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def stop(self) -> None:
        if self.process is not None:
            self.process.send_signal(signal.SIGKILL)
            self.process.wait()
            self.process = None
        self.directory.cleanup()


class _Collect(Protocol):
    def __init__(self, done: Deferred[bytes]):
        self._done = done
        self._chunks: list[bytes] = []

    def dataReceived(self, data: bytes) -> None:
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = Failure(ResponseDone())) -> None:  # noqa: B008
        self._done.callback(b"".join(self._chunks))


class RawRange:
    """
    The gateway range call a lookup of C{name} is made of, through Twisted's
    C{Agent} on a persistent pool, with no txmasse code: the yardstick of
    one etcd round trip. Call it for the decoded reply; L{close} when done.
    """

    def __init__(self, port: int, namespace: str, name: str):
        key = f"bench/{namespace}/r/{name}/".encode()
        end = key[:-1] + bytes([key[-1] + 1])
        self.body = json.dumps(
            {"key": base64.b64encode(key).decode(), "range_end": base64.b64encode(end).decode()}
        ).encode()
        self.address = f"http://127.0.0.1:{port}/v3/kv/range"
        self.pool = HTTPConnectionPool(reactor, persistent=True)
        self.agent = Agent(reactor, pool=self.pool)
        self.headers = Headers({b"Content-Type": [b"application/json"]})

    async def __call__(self) -> Any:
        response = await self.agent.request(
            b"POST", self.address.encode(), self.headers, BytesBody(self.body)
        )
        done: Deferred[bytes] = Deferred()
        response.deliverBody(_Collect(done))
        return json.loads(await done)

    async def check(self) -> None:
        """
        Make sure the call reads the name's one record.
        """
        if len((await self()).get("kvs", [])) != 1:
            raise RuntimeError(f"bench: the range call to {self.address} misses the record")

    async def close(self) -> None:
        await self.pool.closeCachedConnections()


async def measureLookups(
    etcd: EtcdProcess, etcdURL: str, redis: RedisProcess, redisURL: str, rounds: int
) -> dict[str, list[float]]:
    """
    Samples (seconds): C{etcd} (txmasse's lookup), C{agent} and C{treq}
    (the same range call, raw), C{redis} (txmasse's Redis lookup) and
    C{get} (a Redis GET), alternating in a shuffled order.
    """
    namespace, name = "gw", "peer-00005"
    registries = [registryFromURL(reactor, etcdURL), registryFromURL(reactor, redisURL)]
    for registry in registries:
        records = [fakeRecord(namespace, f"peer-{i:05d}") for i in range(10)]
        await registerMany(registry, records, ttl=3600)
    etcdRegistry, redisRegistry = registries
    viaAgent = RawRange(etcd.port, namespace, name)
    treqPool = HTTPConnectionPool(reactor, persistent=True)
    redisConnection = await txredisapi.Connection("127.0.0.1", redis.port, reconnect=False)
    await redisConnection.set("bench", "x")

    async def timed(call: Callable[[], Awaitable[Any]]) -> float:
        start = time.perf_counter()
        await call()
        return time.perf_counter() - start

    async def viaTreq() -> Any:
        response = await treq.post(
            viaAgent.address, data=viaAgent.body, headers=viaAgent.headers, pool=treqPool
        )
        return await response.json()

    async def lookup() -> None:
        found = await etcdRegistry.lookup(namespace, name)
        if len(found) != 1:
            raise RuntimeError(f"bench: etcd lookup found {len(found)}")

    variants: dict[str, Callable[[], Awaitable[Any]]] = {
        "etcd": lookup,
        "agent": viaAgent,
        "treq": viaTreq,
        "redis": lambda: redisRegistry.lookup(namespace, name),
        "get": lambda: redisConnection.get("bench"),
    }
    await viaAgent.check()
    samples: dict[str, list[float]] = {name: [] for name in variants}
    order = list(variants)
    for round in range(rounds + 50):  # the first 50 rounds warm up
        random.shuffle(order)
        for variant in order:
            elapsed = await timed(variants[variant])
            if round >= 50:
                samples[variant].append(elapsed)
    await redisConnection.disconnect()
    await viaAgent.close()
    await treqPool.closeCachedConnections()
    return samples


async def measureLoad(etcd: EtcdProcess, url: str, sizes: EtcdSizes) -> Row:
    """
    C{sizes.leases} leases kept alive by one process (a keepalive each per
    ttl/3): etcd's CPU over a window, and whether every lease lived.
    """
    registry = registryFromURL(reactor, url)
    records = [fakeRecord("load", f"load-{i:05d}") for i in range(sizes.leases)]
    await registerSpread(registry, records, sizes.leaseTTL, over=sizes.leaseTTL / 3)
    cpu, start = etcd.cpuSeconds(), time.monotonic()
    await task.deferLater(reactor, sizes.loadWindow, lambda: None)
    used = (etcd.cpuSeconds() - cpu) / (time.monotonic() - start)
    alive = len(await registry.find("load", "load-*"))
    await registry.close()
    beats = sizes.leases / (sizes.leaseTTL / 3)
    return Row(
        "etcd",
        f"etcd: {sizes.leases:,} leases at ttl {sizes.leaseTTL:g} s",
        f"{beats:,.0f} keepalives/s; etcd CPU {used * 100:.0f}%; {alive:,} alive",
        "",
        None,
        "",
        f"all {sizes.leases:,} alive",
        alive == sizes.leases,
        number=beats,
    )


def lookupRows(s: dict[str, list[float]]) -> list[Row]:
    agent, etcd = p50(s["agent"]), p50(s["etcd"])
    return [
        Row("etcd", "gateway range, raw Agent + JSON", p50p99(s["agent"]), "", None, "",
            number=agent),
        ratioRow("etcd", "gateway range, raw treq + JSON", s["treq"], "Agent", agent),
        ratioRow("etcd", "etcd lookup(name), 10 peers", s["etcd"], "Agent", agent, limit="1.2"),
        ratioRow("etcd", "Redis lookup(name), 10 peers", s["redis"], "etcd", etcd),
        ratioRow("etcd", "Redis GET round trip", s["get"], "Agent", agent),
    ]  # fmt: skip


def connectRows(which: str, s: dict[str, list[float]], trip: str, what: str) -> list[Row]:
    """
    Warm and cold against raw TCP, cold's extra in round trips C{what}: the
    samples C{s[trip]}, taken among the connects.
    """
    raw, cold, roundTrip = p50(s["raw"]), p50(s["nocache"]), p50(s[trip])
    extra = (cold - raw) / roundTrip
    return [
        ratioRow("etcd", f"{which}: masse warm (cached)", s["warm"], "raw", raw, limit="1.10"),
        Row("etcd", f"{which}: masse cold (cache=false)", p50p99(s["nocache"]),
            f"raw {micros(raw)} + {what} {micros(roundTrip)}", extra,
            f"raw + {extra:.2f}x {what}", "≤ raw + 1.5x", extra <= 1.5, number=cold),
    ]  # fmt: skip


def eventRow(which: str, latencies: list[float]) -> Row:
    return Row(
        "etcd",
        f"{which}: register -> watcher callback, other process",
        f"p50 {millis(p50(latencies))}, p99 {millis(p99(latencies))}",
        "",
        None,
        "",
        number=p99(latencies),
    )


async def measureEtcd(
    redis: RedisProcess, redisURL: str, sizes: EtcdSizes, say: Callable[[str], None]
) -> tuple[list[Row], str]:
    """
    Every etcd row, each beside Redis; and the etcd version.
    """
    etcd = EtcdProcess()
    etcd.start()
    etcdURL = f"{etcd.url}?timeout=5"
    children: list[Child] = []
    rows: list[Row] = []
    try:
        say(f"etcd {etcd.version()}: lookups against the raw gateway call, {sizes.lookups} rounds")
        lookups = await measureLookups(etcd, etcdURL, redis, redisURL, sizes.lookups)
        rows += lookupRows(lookups)
        say(f"etcd and Redis: connect + echo, {sizes.connects} rounds each")
        # Each registry's round trip is timed among its connects: the
        # lookups above ran in another namespace, at another moment.
        trip = RawRange(etcd.port, "bench-etcd", "echo")
        for which, url, rawTrip, yardstick, what in (
            ("etcd", etcdURL, trip, "trip", "range"),
            ("Redis", redisURL, None, "get", "GET"),
        ):
            server = spawn("serve", url, "bench-etcd")
            children.append(server)
            echoPort = int((await server.expect("ready"))[0])
            if rawTrip is not None:
                await rawTrip.check()
            connects = await measureConnects(
                url, "bench-etcd", echoPort, redis.port, None, sizes.connects, trip=rawTrip
            )
            rows += connectRows(which, connects, yardstick, what)
        await trip.close()
        say(f"etcd and Redis: event latency, {sizes.events} events each")
        for which, url in (("etcd", etcdURL), ("Redis", redisURL)):
            rows.append(
                eventRow(which, await measureEventLatency(url, sizes.events, sizes.eventGap))
            )
        say(f"etcd and Redis: failure detection, ttl {', '.join(f'{t:g}' for t in sizes.ttls)} s")
        for which, url in (("etcd", etcdURL), ("Redis", redisURL)):
            detection = await measureDetection(url, sizes.ttls, sizes.detectionRounds)
            rows += detectionRows("etcd", f"{which}: ", detection)
        say(f"etcd: {sizes.leases} leases at ttl {sizes.leaseTTL:g} s")
        rows.append(await measureLoad(etcd, etcdURL, sizes))
        version = etcd.version()
    finally:
        for child in children:
            await child.stop()
        for url in (etcdURL, redisURL):
            await registryFromURL(reactor, url).close()
        etcd.stop()
    return rows, version


async def run(options: argparse.Namespace) -> int:
    redis = RedisProcess()
    redis.start()
    try:
        rows, version = await measureEtcd(
            redis,
            f"{redis.url}?timeout=5",
            QUICK if options.quick else FULL,
            lambda text: print(f"bench: {text}", flush=True),
        )
        redisVersion = redis.version()
    finally:
        redis.stop()
    print()
    print(f"etcd {version}, Redis {redisVersion}, loopback, one member each")
    print(table(rows))
    if options.json is not None:
        with open(options.json, "w") as f:
            json.dump([attrs.asdict(r) for r in rows], f, indent=1)
    return 0


def main() -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.etcd", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes")
    parser.add_argument("--json", help="also write the rows as JSON here")
    options = parser.parse_args()
    task.react(lambda _: Deferred.fromCoroutine(run(options)))
    sys.exit(0)


if __name__ == "__main__":
    main()
