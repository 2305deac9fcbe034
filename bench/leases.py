"""
Cost at scale: C{python -m bench.leases} (C{--quick} for tiny sizes).

  - what leases cost the process holding them: client CPU per heartbeat
    and RSS per lease, registered at once and spread, against the old
    heartbeat (the whole record written again, one script call per lease)
    measured in the same run; with and without txredisapi's hiredis parser
    where the C{hiredis} package is installed;
  - what they cost Redis: scripts and commands per heartbeat, Redis CPU
    per heartbeat and per event, and from those how many leases (ttl 10 s)
    and events per second one Redis serves at half a core, checked with a
    load generator: many simulated holders, each its own connection;
  - the longest single Redis command during C{find} at 100,000 names, with
    and without a literal prefix (C{SLOWLOG} with C{slowlog-log-slower-than
    0}).

Starts its own redis-server on a free loopback port.
"""

from __future__ import annotations

import argparse
import json
import os
import tempfile
import time
from collections.abc import Sequence
from typing import Any

import attrs
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred, DeferredList

from bench.children import Child, spawn
from bench.peer import fakeRecord
from bench.redis import RedisProcess
from bench.stats import Row, p50, p99, table
from txmasse.registry import registryFromURL
from txmasse.registry.interface import ILease

NAMESPACE = "hold"
KiB = 1024
SCRIPTS = ("evalsha", "eval")


@attrs.frozen
class Sizes:
    leases: int
    ttl: float
    window: float
    names: int
    events: int
    holders: int
    perHolder: int
    processes: int


FULL = Sizes(10_000, 10, 10, 100_000, 2000, 1000, 10, 4)
QUICK = Sizes(300, 1, 1, 2000, 100, 20, 10, 2)


def installed(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


@attrs.frozen
class Holding:
    how: str
    put: bool
    hiredis: bool
    leases: int
    rssPerLease: float
    cpuPerBeat: float  # seconds
    beats: int
    scriptsPerBeat: float
    commandsPerBeat: float
    redisPerBeat: float  # Redis CPU seconds
    alive: int


def counters(redis: RedisProcess) -> tuple[dict[str, int], float]:
    return redis.commandCalls(), redis.cpuSeconds()


async def hold(
    redis: RedisProcess,
    sizes: Sizes,
    how: str,
    put: bool = False,
    hiredis: bool = True,
    secrets: str | None = None,
) -> Holding:
    redis.command("FLUSHALL")
    env = {} if hiredis else {"BENCH_NO_HIREDIS": "1"}
    window = sizes.window
    url = redis.url + "?timeout=10" + (f"&secrets={secrets}" if secrets else "")
    args = [url, NAMESPACE, str(sizes.leases), f"{sizes.ttl:g}", how]
    child = spawnWith(env, *args, f"{window:g}", *(["put"] if put else []))
    try:
        # Redis counters over about the child's window: it starts ttl/3 +
        # 0.5 s after registering, which the child reports as it ends.
        line = await child.expect("result", timeout=900)
    finally:
        await child.stop()
    result = json.loads(" ".join(line))
    return Holding(
        how,
        put,
        hiredis,
        result["leases"],
        (result["after"] - result["before"]) / result["leases"],
        result["cpu"] / max(1, result["heartbeats"]),
        result["heartbeats"],
        0.0,
        0.0,
        0.0,
        result["alive"],
    )


def spawnWith(env: dict[str, str], *args: str) -> Child:
    saved = {key: os.environ.get(key) for key in env}
    os.environ.update(env)
    try:
        return spawn(*args, module="bench.holder")
    finally:
        for key, value in saved.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


async def findCPU(redis: RedisProcess, count: int, hiredis: bool) -> float:
    """
    Client CPU seconds per find of ten records.
    """
    redis.command("FLUSHALL")
    env = {} if hiredis else {"BENCH_NO_HIREDIS": "1"}
    child = spawnWith(env, redis.url + "?timeout=10", NAMESPACE, str(count), "60", "finds", "0")
    try:
        result = json.loads(" ".join(await child.expect("result", timeout=300)))
    finally:
        await child.stop()
    return float(result["cpu"]) / count


async def redisPerBeat(redis: RedisProcess, sizes: Sizes, put: bool) -> tuple[float, float, float]:
    """
    Scripts, commands and Redis CPU seconds per heartbeat, measured over a
    window of a holder with spread leases (its sweeps included).
    """
    redis.command("FLUSHALL")
    args = [redis.url + "?timeout=10", NAMESPACE, str(sizes.leases), f"{sizes.ttl:g}", "spread"]
    child = spawnWith({}, *args, f"{sizes.window * 2:g}", *(["put"] if put else []))
    try:
        await task.deferLater(reactor, sizes.ttl / 3 + sizes.ttl / 3 + 1.0, lambda: None)
        (c0, cpu0), t0 = counters(redis), time.monotonic()
        await task.deferLater(reactor, sizes.window, lambda: None)
        (c1, cpu1), t1 = counters(redis), time.monotonic()
        await child.expect("result", timeout=900)
    finally:
        await child.stop()
    beats = sizes.leases / (sizes.ttl / 3) * (t1 - t0)
    delta = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1}
    delta.pop("info", None)
    sent = sum(delta.get(k, 0) for k in SCRIPTS)
    return sent / beats, sum(delta.values()) / beats, (cpu1 - cpu0) / beats


async def redisPerEvent(redis: RedisProcess, sizes: Sizes) -> float:
    """
    Redis CPU seconds per membership event (a register and a release are
    two), one watcher subscribed.
    """
    redis.command("FLUSHALL")
    registry = registryFromURL(reactor, redis.url + "?timeout=10")
    heard = [0]
    try:
        watch = await registry.watch(
            NAMESPACE, "ev-*", lambda e: heard.__setitem__(0, heard[0] + 1)
        )
        await registry.lookup(NAMESPACE, "warm-up")
        cpu0 = redis.cpuSeconds()
        for start in range(0, sizes.events, 50):
            batch = [
                registry.register(fakeRecord(NAMESPACE, f"ev-{i:05d}"), 30)
                for i in range(start, start + 50)
            ]
            leases: list[ILease] = [
                lease for _, lease in await DeferredList(batch, fireOnOneErrback=True)
            ]
            await DeferredList([lease.release() for lease in leases], fireOnOneErrback=True)
        cpu = redis.cpuSeconds() - cpu0
        watch.stop()
    finally:
        await registry.close()
    return cpu / (2 * sizes.events)


async def loadGenerator(redis: RedisProcess, sizes: Sizes) -> tuple[float, int, float]:
    """
    Redis CPU (share of a core) with C{holders} simulated holders of
    C{perHolder} leases each, every holder its own connection; and the
    number of them alive at the end; and the commands per second.
    """
    redis.command("FLUSHALL")
    per = sizes.holders // sizes.processes
    window = sizes.window
    children = [
        spawn(
            redis.url + "?timeout=10",
            NAMESPACE,
            str(per),
            str(sizes.perHolder),
            f"{sizes.ttl:g}",
            f"{window + sizes.ttl:g}",
            str(p * per),
            module="bench.loadgen",
        )
        for p in range(sizes.processes)
    ]
    try:
        for child in children:
            await child.expect("ready", timeout=900)
        await task.deferLater(reactor, sizes.ttl / 3 + 0.5, lambda: None)
        (c0, cpu0), t0 = counters(redis), time.monotonic()
        await task.deferLater(reactor, window, lambda: None)
        (c1, cpu1), t1 = counters(redis), time.monotonic()
        alive = int(redis.command("ZCARD", f"masse:{{{NAMESPACE}}}:exp"))
    finally:
        for child in children:
            await child.stop()
    delta = {k: c1.get(k, 0) - c0.get(k, 0) for k in c1}
    delta.pop("info", None)
    sent = sum(delta.get(k, 0) for k in SCRIPTS)
    return (cpu1 - cpu0) / (t1 - t0), alive, sent / (t1 - t0)


async def longestFind(redis: RedisProcess, sizes: Sizes) -> dict[str, float]:
    """
    The longest single command (µs, from SLOWLOG) during each find at
    C{names} names.
    """
    redis.command("FLUSHALL")
    url = redis.url + "?timeout=60"
    registry = registryFromURL(reactor, url)
    try:
        records = [fakeRecord("big", f"peer-{i:05d}") for i in range(sizes.names)]
        for start in range(0, len(records), 500):
            await DeferredList(
                [registry.register(r, 3600) for r in records[start : start + 500]],
                fireOnOneErrback=True,
            )
    finally:
        await registry.close()  # no heartbeats or sweeps during the finds
    registry = registryFromURL(reactor, url)
    longest: dict[str, float] = {}
    try:
        await registry.lookup("big", "warm-up")
        redis.command("CONFIG", "SET", "slowlog-max-len", "100000")
        redis.command("CONFIG", "SET", "slowlog-log-slower-than", "0")
        for pattern, expected in (("peer-0000*", 10), ("?eer-00005", 1), ("*", sizes.names)):
            # Three runs, the least of their longest commands: this machine's
            # other processes may deschedule Redis in the middle of one.
            runs = []
            for _ in range(3):
                redis.command("SLOWLOG", "RESET")
                found = await registry.find("big", pattern)
                if len(found) != expected:
                    raise RuntimeError(f"bench: find {pattern!r} gave {len(found)}, not {expected}")
                entries = redis.command("SLOWLOG", "GET", "-1")
                scripts = [e for e in entries if e[3][0].lower() in (b"evalsha", b"eval")]
                durations = sorted(e[2] for e in scripts)
                runs.append((durations[-1], len(scripts), p50(durations), p99(durations)))
            best = min(runs)
            longest[pattern], longest[pattern + " calls"] = best[0], best[1]
            longest[pattern + " p50"], longest[pattern + " p99"] = best[2], best[3]
        redis.command("CONFIG", "SET", "slowlog-log-slower-than", "10000")
    finally:
        await registry.close()
    return longest


def _row(
    section: str,
    figure: str,
    value: str,
    baseline: str,
    ratio: float | None,
    target: str = "",
    passed: bool | None = None,
    number: float = 0.0,
) -> Row:
    text = "" if ratio is None else f"{ratio:.2f}x"
    return Row(section, figure, value, baseline, ratio, text, target, passed, number)


def rows(sizes: Sizes, results: dict[str, Any]) -> list[Row]:
    out: list[Row] = []
    for how in ("atonce", "spread"):
        new, old = results[how], results[how + " put"]
        label = "registered at once" if how == "atonce" else "spread over ttl/3"
        out.append(
            _row(
                "leases",
                f"client CPU per heartbeat, {new.leases:,} leases {label}",
                f"{new.cpuPerBeat * 1e6:.1f} µs ({new.alive:,} alive)",
                f"{old.cpuPerBeat * 1e6:.1f} µs (whole record, a call per lease)",
                new.cpuPerBeat / old.cpuPerBeat,
                "≤ 35 µs",
                new.cpuPerBeat <= 35e-6 and new.alive == new.leases,
                number=new.cpuPerBeat,
            )
        )
        out.append(
            _row(
                "leases",
                f"RSS per lease, {new.leases:,} leases {label}",
                f"{new.rssPerLease / KiB:.2f} KiB",
                f"{old.rssPerLease / KiB:.2f} KiB (old heartbeat)",
                new.rssPerLease / old.rssPerLease if old.rssPerLease > 0 else None,
                "≤ 3 KiB",
                new.rssPerLease <= 3 * KiB,
                number=new.rssPerLease,
            )
        )
    signedHolding = results["signed"]
    out.append(
        _row(
            "leases",
            f"client CPU per heartbeat, {signedHolding.leases:,} leases at once, signed namespace",
            f"{signedHolding.cpuPerBeat * 1e6:.1f} µs ({signedHolding.alive:,} alive)",
            f"{results['atonce'].cpuPerBeat * 1e6:.1f} µs unsigned",
            signedHolding.cpuPerBeat / results["atonce"].cpuPerBeat,
            "≤ 35 µs",
            signedHolding.cpuPerBeat <= 35e-6 and signedHolding.alive == signedHolding.leases,
            number=signedHolding.cpuPerBeat,
        )
    )
    if "no hiredis" in results:
        with_, without = results["atonce"], results["no hiredis"]
        out.append(
            _row(
                "leases",
                "client CPU per heartbeat with txredisapi's hiredis parser",
                f"{with_.cpuPerBeat * 1e6:.1f} µs",
                f"{without.cpuPerBeat * 1e6:.1f} µs (pure-Python parser)",
                with_.cpuPerBeat / without.cpuPerBeat,
                "",
                None,
                number=with_.cpuPerBeat,
            )
        )
    if "finds" in results:
        with_, without = results["finds"]
        out.append(
            _row(
                "leases",
                "client CPU per find of ten records with txredisapi's hiredis parser",
                f"{with_ * 1e6:.1f} µs",
                f"{without * 1e6:.1f} µs (pure-Python parser)",
                with_ / without,
                number=with_,
            )
        )
    scripts, commands, cpu = results["redis"]
    oldScripts, oldCommands, oldCpu = results["redis put"]
    out.append(
        _row(
            "leases",
            "Redis commands per heartbeat (scripts sent; all, inside scripts too)",
            f"{scripts:.3f}; {commands:.2f}",
            f"{oldScripts:.3f}; {oldCommands:.2f} (old heartbeat)",
            commands / oldCommands,
            "≤ 1x",
            commands <= oldCommands and scripts <= oldScripts,
            number=commands,
        )
    )
    event = results["event"]
    interval = sizes.ttl / 3
    out.append(
        _row(
            "capacity",
            f"Redis CPU per heartbeat (ttl {sizes.ttl:g} s, sweeps included) / per event",
            f"{cpu * 1e6:.2f} µs / {event * 1e6:.1f} µs",
            f"old heartbeat {oldCpu * 1e6:.2f} µs",
            cpu / oldCpu,
            "",
            None,
            number=cpu,
        )
    )
    out.append(
        _row(
            "capacity",
            f"one Redis at half a core: leases at ttl {sizes.ttl:g} s / events per s",
            f"{0.5 * interval / cpu:,.0f} leases / {0.5 / event:,.0f} events/s",
            "derived from the row above",
            None,
            number=0.5 * interval / cpu,
        )
    )
    share, alive, sent = results["loadgen"]
    total = sizes.holders * sizes.perHolder
    predicted = total / interval * cpu
    out.append(
        _row(
            "capacity",
            f"load generator: {sizes.holders:,} holders x {sizes.perHolder} leases, "
            "a connection each",
            f"Redis CPU {share * 100:.1f}% of a core, {sent:,.0f} scripts/s, {alive:,} alive",
            f"{predicted * 100:.1f}% predicted from one holder of {sizes.leases:,}",
            share / predicted if predicted else None,
            f"all {total:,} alive",
            alive == total,
            number=share,
        )
    )
    perHolder = max(0.0, share - predicted) / sizes.holders
    holders = 0.5 / (perHolder + sizes.perHolder * cpu / interval)
    out.append(
        _row(
            "capacity",
            "Redis CPU per holder process (its sweeps, every 0.5 s, and its connection)",
            f"{perHolder * 100:.4f}% of a core",
            f"so half a core serves about {holders:,.0f} holders of {sizes.perHolder} leases",
            None,
            number=perHolder,
        )
    )
    longest = results["find"]
    for pattern, label in (
        ("peer-0000*", "literal prefix"),
        ("?eer-00005", "no literal prefix"),
        ("*", "every name"),
    ):
        out.append(
            _row(
                "find",
                f"longest Redis command, find({pattern!r}) at {sizes.names:,} names ({label})",
                f"{longest[pattern]:,.0f} µs; calls: {longest[pattern + ' calls']:.0f}, "
                f"p50 {longest[pattern + ' p50']:,.0f} µs, p99 {longest[pattern + ' p99']:,.0f} µs",
                "SLOWLOG, slowlog-log-slower-than 0; least of 3 runs",
                None,
                "≤ ~1,000 µs",
                longest[pattern] <= 1500,
                number=longest[pattern],
            )
        )
    return out


async def run(options: argparse.Namespace) -> list[Row]:
    return await measure(options.quick)


async def measure(quick: bool) -> list[Row]:
    """
    Every row of this section (C{bench/run.py} adds them to its table).
    """
    sizes = QUICK if quick else FULL
    redis = RedisProcess()
    redis.start()
    results: dict[str, Any] = {}
    say = lambda text: print(f"bench.leases: {text}", flush=True)  # noqa: E731
    try:
        for how in ("atonce", "spread"):
            for put in (False, True):
                say(f"{sizes.leases} leases, {how}{' (old heartbeat)' if put else ''}")
                results[how + (" put" if put else "")] = await hold(redis, sizes, how, put)
        say(f"{sizes.leases} leases, at once, in a signed namespace")
        with tempfile.TemporaryDirectory() as directory:
            secrets = os.path.join(directory, "secrets")
            with open(secrets, "w") as f:
                f.write("bench-secret-bench-secret\n")
            os.chmod(secrets, 0o600)
            results["signed"] = await hold(redis, sizes, "atonce", secrets=secrets)
        if installed("hiredis"):
            say("the same without hiredis; finds of ten records with and without")
            results["no hiredis"] = await hold(redis, sizes, "atonce", hiredis=False)
            finds = sizes.events * 2
            results["finds"] = (
                await findCPU(redis, finds, hiredis=True),
                await findCPU(redis, finds, hiredis=False),
            )
        say("Redis's own cost per heartbeat")
        results["redis"] = await redisPerBeat(redis, sizes, put=False)
        results["redis put"] = await redisPerBeat(redis, sizes, put=True)
        say("Redis's own cost per event")
        results["event"] = await redisPerEvent(redis, sizes)
        say(f"load generator, {sizes.holders} holders x {sizes.perHolder} leases")
        results["loadgen"] = await loadGenerator(redis, sizes)
        say(f"find at {sizes.names} names")
        results["find"] = await longestFind(redis, sizes)
    finally:
        redis.stop()
    return rows(sizes, results)


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench.leases", description=__doc__)
    parser.add_argument("--quick", action="store_true", help="tiny sizes, to check it runs")
    parser.add_argument("--json", help="also write the rows as JSON to this file")
    options = parser.parse_args(argv)

    def start(_: object) -> Deferred[None]:
        async def go() -> None:
            result = await run(options)
            print()
            print(table(result))
            if options.json:
                with open(options.json, "w") as f:
                    json.dump([attrs.asdict(r) for r in result], f, indent=1)

        return Deferred.fromCoroutine(go())

    task.react(start)


if __name__ == "__main__":
    main()
