"""
Churn soak: many leases registering, releasing and dying at random under
watchers, then checks that nothing leaked and every watcher's log is exact.

    python -m bench.soak --seconds 60 --leases 1000 [--registry URL]

Without C{--registry} it starts a redis-server of its own on a free port;
C{--registry sqlite:///path.db} soaks the SQLite registry. Leases are spread
over a few registry instances, each with a connection of its own, as if in
as many processes. Each of the C{--leases} slots loops: register (ttl 1 to
3 s), live 0.2 to 4 s, then release it (C{left}) or stop its heartbeats as
a crash would (C{timedout}), pause, again. Two watchers see everything: one
in this process, one in a process of its own that writes its events to a
file and whose memory (RSS) is sampled throughout.

Afterwards, once every lease is released or expired:

  - leaked: Redis keys of the namespace other than its event counter and
    its tombstones (C{seq}, C{gone}, C{gonet}: kept ten minutes by design),
    or SQLite rows left in C{masse_records}: must be none;
  - each watcher's log: per instance, C{joined}, any C{updated}, then
    exactly one C{left} or C{timedout}, nothing before the join or after
    the close, except a new join after C{timedout} (a heartbeat that came
    too late writes the record back; counted as rewritten); a lease that
    was stopped must end C{timedout}, one released C{left} (or C{timedout}
    if its heartbeats had fallen behind, counted as late releases); every
    instance the soak registered must be seen;
  - the watcher process's RSS after warm-up (the first quarter): flat means
    its fitted growth over the rest of the run is under 5% or 2 MiB.

Prints a summary; exit status 1 on any violation.
"""

from __future__ import annotations

import argparse
import json
import os
import random
import sqlite3
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import attrs
from twisted.internet import task
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.python.failure import Failure

from txmasse.records import PeerRecord
from txmasse.registry.interface import ILease, IRegistry, PeerEvent
from txmasse.registry.opening import openURL
from txmasse.registry.url import parseRegistryURL

REPO = Path(__file__).resolve().parent.parent
MiB = 1 << 20

ALLOWED_KEYS = {"seq", "gone", "gonet"}
"""What a namespace keeps in Redis once it has no live lease."""


@attrs.define
class SoakConfig:
    seconds: float = 60.0
    leases: int = 1000
    registries: int = 4
    namespace: str = "soak"
    ttl: tuple[float, float] = (1.0, 3.0)
    life: tuple[float, float] = (0.2, 4.0)
    pause: tuple[float, float] = (0.0, 1.0)
    dying: float = 0.3
    names: int = 50
    externalWatcher: bool = True
    sampleEvery: float = 1.0
    drainTimeout: float = 30.0
    settle: float = 1.0
    seed: int = 1


@attrs.define
class WatcherLog:
    """
    What one watcher saw, and what is wrong with it.
    """

    name: str
    counts: Counter[str] = attrs.Factory(Counter)
    violations: list[str] = attrs.Factory(list)
    lateReleases: int = 0
    rewritten: int = 0


@attrs.define
class RSS:
    """
    Resident memory samples (seconds since start, bytes) of one process.
    """

    samples: list[tuple[float, int]] = attrs.Factory(list)

    def afterWarmUp(self, warmUp: float) -> list[tuple[float, int]]:
        return [(t, rss) for t, rss in self.samples if t >= warmUp]

    def growth(self, warmUp: float) -> float:
        """
        Fitted growth (bytes) from the first sample after warm-up to the last.
        """
        points = self.afterWarmUp(warmUp)
        if len(points) < 3:
            return 0.0
        n = len(points)
        meanT = sum(t for t, _ in points) / n
        meanR = sum(r for _, r in points) / n
        var = sum((t - meanT) ** 2 for t, _ in points)
        if var == 0:
            return 0.0
        slope = sum((t - meanT) * (r - meanR) for t, r in points) / var
        return slope * (points[-1][0] - points[0][0])

    def flat(self, warmUp: float) -> bool:
        points = self.afterWarmUp(warmUp)
        if len(points) < 3:
            return True
        mean = sum(r for _, r in points) / len(points)
        return self.growth(warmUp) < max(2 * MiB, 0.05 * mean)

    def describe(self, warmUp: float) -> str:
        points = self.afterWarmUp(warmUp) or self.samples
        if not points:
            return "no samples"
        start, end = points[0][1], points[-1][1]
        peak = max(r for _, r in self.samples)
        return (
            f"start {start / MiB:.1f} MiB, end {end / MiB:.1f} MiB, peak {peak / MiB:.1f} MiB, "
            f"fitted growth after warm-up {self.growth(warmUp) / MiB:+.2f} MiB "
            f"({'flat' if self.flat(warmUp) else 'GROWING'})"
        )


@attrs.define
class SoakReport:
    url: str
    config: SoakConfig
    registered: int = 0
    released: int = 0
    died: int = 0
    failed: Counter[str] = attrs.Factory(Counter)
    watchers: list[WatcherLog] = attrs.Factory(list)
    leaked: list[str] = attrs.Factory(list)
    kept: dict[str, int] = attrs.Factory(dict)
    watcherRSS: RSS = attrs.Factory(RSS)
    ownRSS: RSS = attrs.Factory(RSS)
    drained: float = 0.0
    elapsed: float = 0.0
    heldLeases: int = 0
    violations: list[str] = attrs.Factory(list)

    @property
    def warmUp(self) -> float:
        return self.config.seconds / 4

    @property
    def ok(self) -> bool:
        return not self.violations

    def summary(self) -> str:
        c = self.config
        lines = [
            f"soak of {self.url}: {c.leases} lease slots on {c.registries} registries, "
            f"{c.seconds:g}s of churn, drained in {self.drained:.1f}s",
            f"  leases registered {self.registered}, released {self.released}, "
            f"died {self.died}; failed calls {dict(self.failed) or 'none'}",
        ]
        for watcher in self.watchers:
            counts = watcher.counts
            lines.append(
                f"  watcher {watcher.name}: joined {counts['joined']}, left {counts['left']}, "
                f"timedout {counts['timedout']}, updated {counts['updated']}, "
                f"late releases {watcher.lateReleases}, rewritten after a late heartbeat "
                f"{watcher.rewritten}, violations {len(watcher.violations)}"
            )
        lines.append(
            f"  leaked: {', '.join(self.leaked) or 'nothing'}; kept by design: {self.kept}"
        )
        lines.append(
            f"  lease objects still held by the soak's registries: {self.heldLeases}"
        )
        lines.append(f"  watcher process RSS: {self.watcherRSS.describe(self.warmUp)}")
        lines.append(
            f"  soak process RSS (it keeps every event for the checks): "
            f"{self.ownRSS.describe(self.warmUp)}"
        )
        if self.violations:
            lines.append(f"  VIOLATIONS ({len(self.violations)}):")
            lines.extend(f"    {v}" for v in self.violations[:30])
        else:
            lines.append("  no violations")
        return "\n".join(lines)


def readRSS(pid: int) -> int | None:
    """
    Resident set size of process C{pid} in bytes (Linux), None if gone.
    """
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        return None
    return None


# Checking a watcher's log

CLOSING = ("left", "timedout")


def checkLog(name: str, events: Sequence[tuple[str, str]], truth: dict[str, str]) -> WatcherLog:
    """
    Check C{events} (kind, instance) against what the soak did to each
    instance: C{released}, C{died}, or C{unsure} (a call failed: it may or
    may not have happened).

    Each instance lives as C{joined}, any C{updated}, then one C{left} or
    C{timedout}. Only a C{timedout} may be followed by another life: a
    heartbeat that came after the lease expired writes the record back
    (counted as rewritten, as honest as a late release).
    """
    result = WatcherLog(name)
    seen: dict[str, list[str]] = {}
    for kind, instance in events:
        result.counts[kind] += 1
        seen.setdefault(instance, []).append(kind)
    bad = result.violations
    for instance, kinds in seen.items():
        fate = truth.get(instance)
        if fate is None:
            bad.append(f"{name}: events for an instance the soak never registered: {instance}")
            continue
        state = None  # then "joined", "left" or "timedout"
        for kind in kinds:
            if kind == "joined" and state in (None, "timedout"):
                if state == "timedout":
                    result.rewritten += 1
                state = kind
            elif kind == "joined":
                bad.append(f"{name}: {instance}: joined again while {state} ({kinds})")
            elif state is None:
                bad.append(f"{name}: {instance}: {kind} before joined ({kinds})")
            elif state != "joined":
                bad.append(f"{name}: {instance}: {kind} after it {state} ({kinds})")
            elif kind in CLOSING:
                state = kind
        if state == "joined" and fate in ("released", "died"):
            bad.append(f"{name}: {instance}: never closed ({kinds}, {fate})")
        elif fate == "died" and state == "left":
            bad.append(f"{name}: {instance}: died but left ({kinds})")
        elif fate == "released" and state == "timedout":
            result.lateReleases += 1
    for instance, fate in truth.items():
        if fate in ("released", "died") and instance not in seen:
            bad.append(f"{name}: {instance} ({fate}) was never seen")
    return result


def closedAll(events: Sequence[tuple[str, str]], truth: dict[str, str]) -> bool:
    """
    Whether every instance the soak is sure of has its closing event.
    """
    closed = {instance for kind, instance in events if kind in CLOSING}
    return all(i in closed for i, fate in truth.items() if fate in ("released", "died"))


# The watcher in a process of its own


class _WatcherProcess(ProcessProtocol):
    def __init__(self) -> None:
        self.output = b""
        self.ended: Deferred[None] = Deferred()
        self.ready: Deferred[None] = Deferred()

    def outReceived(self, data: bytes) -> None:
        self.output += data
        if b"watching" in self.output and not self.ready.called:
            self.ready.callback(None)

    def errReceived(self, data: bytes) -> None:
        sys.stderr.write(f"[soak watcher] {data.decode(errors='replace')}")

    def processEnded(self, reason: Failure) -> None:
        if not self.ready.called:
            self.ready.errback(RuntimeError(f"soak watcher exited: {self.output.decode()}"))
        self.ended.callback(None)


def readEventFile(path: Path) -> list[tuple[str, str]]:
    events = []
    try:
        text = path.read_text()
    except FileNotFoundError:
        return []
    for line in text.splitlines():
        parts = line.split()
        if len(parts) == 3:
            events.append((parts[1], parts[2]))
    return events


async def watchToFile(reactor: Any, url: str, namespace: str, path: str) -> None:
    """
    The separate watcher: every event of C{namespace} as a line of C{path}
    (time, kind, instance), flushed every 0.1 s and on exit.
    """
    registry = openURL(reactor, parseRegistryURL(url))
    out = open(path, "w")  # closed at shutdown
    flusher = task.LoopingCall(out.flush)

    def write(event: PeerEvent) -> None:
        out.write(f"{time.time():.3f} {event.kind} {event.record.instance}\n")

    def shutdown() -> None:
        if flusher.running:
            flusher.stop()
        out.flush()
        out.close()

    reactor.addSystemEventTrigger("before", "shutdown", shutdown)
    await registry.watch(namespace, "*", write)
    flusher.clock = reactor
    flusher.start(0.1)
    print("watching", flush=True)
    await Deferred()


# The soak


async def _sleep(reactor: Any, seconds: float) -> None:
    await task.deferLater(reactor, seconds, lambda: None)


async def soak(
    reactor: Any,
    url: str,
    config: SoakConfig,
    keyCheck: Callable[[str], tuple[list[str], dict[str, int]]] | None = None,
    say: Callable[[str], None] = lambda text: None,
) -> SoakReport:
    """
    Run the churn against the registry at C{url} and check the outcome.

    @param keyCheck: given the namespace, returns what the store still
        holds beyond what it keeps by design, and what it keeps (counts);
        default: by the URL's scheme, L{redisKeys} or L{sqliteRows}.
    """
    report = SoakReport(url, config)
    rng = random.Random(config.seed)
    ns = config.namespace
    registries: list[IRegistry] = [
        openURL(reactor, parseRegistryURL(url)) for _ in range(config.registries)
    ]
    watcherRegistry: IRegistry = openURL(reactor, parseRegistryURL(url))
    local: list[tuple[str, str]] = []
    truth: dict[str, str] = {}
    started = time.monotonic()
    process: _WatcherProcess | None = None
    eventFile = Path(tempfile.mkdtemp(prefix="txmasse-soak-")) / "events.log"

    def sample() -> None:
        now = time.monotonic() - started
        own = readRSS(os.getpid())
        if own is not None:
            report.ownRSS.samples.append((now, own))
        if process is not None and process.transport is not None and not process.ended.called:
            pid = process.transport.pid
            rss = readRSS(pid) if pid is not None else None
            if rss is not None:
                report.watcherRSS.samples.append((now, rss))

    sampler = task.LoopingCall(sample)
    sampler.clock = reactor
    try:
        await watcherRegistry.watch(
            ns, "*", lambda event: local.append((str(event.kind), event.record.instance))
        )
        if config.externalWatcher:
            process = _WatcherProcess()
            args = [sys.executable, "-m", "bench.soak", "--watch-to", str(eventFile), url, ns]
            env = {**os.environ, "PYTHONPATH": str(REPO)}
            reactor.spawnProcess(process, sys.executable, args, env=env, path=str(REPO))
            await process.ready.addTimeout(60, reactor)
        sampler.start(config.sampleEvery)
        say(f"churning {config.leases} lease slots for {config.seconds:g}s on {url}")

        deadline = time.monotonic() + config.seconds

        async def slot(i: int) -> None:
            await _sleep(reactor, rng.uniform(0, min(1.0, config.seconds / 4)))
            while time.monotonic() < deadline:
                registry = rng.choice(registries)
                record = PeerRecord(
                    ns, f"s{i % config.names}", [f"tcp:host=127.0.0.1:port={10000 + i}"]
                )
                try:
                    lease: ILease = await registry.register(record, rng.uniform(*config.ttl))
                except Exception as e:
                    report.failed[f"register: {type(e).__name__}"] += 1
                    truth[record.instance] = "unsure"
                    await _sleep(reactor, 0.5)
                    continue
                report.registered += 1
                truth[record.instance] = "live"
                life = rng.uniform(*config.life)
                await _sleep(reactor, max(0.0, min(life, deadline - time.monotonic())))
                if rng.random() < config.dying:
                    lease.stop()  # as a crash would: no more heartbeats, it expires
                    truth[record.instance] = "died"
                    report.died += 1
                else:
                    try:
                        await lease.release()
                    except Exception as e:
                        report.failed[f"release: {type(e).__name__}"] += 1
                        truth[record.instance] = "unsure"
                    else:
                        truth[record.instance] = "released"
                        report.released += 1
                await _sleep(reactor, rng.uniform(*config.pause))

        await gatherResults([Deferred.fromCoroutine(slot(i)) for i in range(config.leases)])
        churned = time.monotonic()
        say(f"churn over after {churned - started:.1f}s; waiting for every lease to close")

        # Drain: every lease released or expired, and both watchers told.
        drainDeadline = churned + config.ttl[1] + config.drainTimeout
        while time.monotonic() < drainDeadline:
            if closedAll(local, truth) and (
                process is None or closedAll(readEventFile(eventFile), truth)
            ):
                break
            await _sleep(reactor, 0.2)
        # Anything late or repeated would show now.
        await _sleep(reactor, config.settle)
        report.drained = time.monotonic() - churned
        report.heldLeases = sum(len(getattr(r, "_leases", ())) for r in registries)
        if report.heldLeases:
            report.violations.append(
                f"{report.heldLeases} released or stopped leases still held by their registries"
            )
    finally:
        if sampler.running:
            sampler.stop()
        for registry in [*registries, watcherRegistry]:
            await registry.close()
        if process is not None:
            if not process.ended.called:
                assert process.transport is not None
                process.transport.signalProcess("TERM")
            await process.ended
    report.elapsed = time.monotonic() - started

    report.watchers.append(checkLog("in-process", local, truth))
    if process is not None:
        report.watchers.append(checkLog("separate process", readEventFile(eventFile), truth))
    check = keyCheck or _defaultKeyCheck(url)
    report.leaked, report.kept = check(ns)
    for watcher in report.watchers:
        report.violations.extend(watcher.violations)
    report.violations.extend(f"leaked: {item}" for item in report.leaked)
    if report.registered == 0:
        report.violations.append("no lease was registered")
    if config.seconds >= 30 and process is not None and not report.watcherRSS.flat(report.warmUp):
        report.violations.append(
            f"watcher process memory grows: {report.watcherRSS.describe(report.warmUp)}"
        )
    eventFile.unlink(missing_ok=True)
    eventFile.parent.rmdir()
    return report


# What is left in the store


def redisKeys(
    host: str, port: int, db: int | None
) -> Callable[[str], tuple[list[str], dict[str, int]]]:
    """
    Every C{masse:*} key of the database (SCAN, after the soak only): those
    of the namespace beyond what it keeps by design are leaked.
    """
    import socket

    from bench.redis import _encode, _read

    def run(*args: object) -> Any:
        with socket.create_connection((host, port), timeout=10) as s, s.makefile("rb") as f:
            s.sendall(_encode("SELECT", db or 0) + _encode(*args))
            _read(f)
            return _read(f)

    def check(namespace: str) -> tuple[list[str], dict[str, int]]:
        prefix = f"masse:{{{namespace}}}:"
        keys: list[str] = []
        cursor = b"0"
        while True:
            cursor, batch = run("SCAN", cursor, "MATCH", "masse:*", "COUNT", 1000)
            keys.extend(key.decode() for key in batch)
            if cursor == b"0":
                break
        leaked, kept = [], {}
        for key in sorted(keys):
            suffix = key[len(prefix) :] if key.startswith(prefix) else None
            if suffix not in ALLOWED_KEYS:
                leaked.append(key)
            elif suffix == "seq":
                kept["events"] = int(run("GET", key))
            elif suffix == "gone":
                kept["tombstones"] = int(run("HLEN", key))
        return leaked, kept

    return check


def sqliteRows(path: str) -> Callable[[str], tuple[list[str], dict[str, int]]]:
    def check(namespace: str) -> tuple[list[str], dict[str, int]]:
        with sqlite3.connect(path) as c:
            rows = c.execute(
                "SELECT name, instance FROM masse_records WHERE namespace = ?", (namespace,)
            ).fetchall()
            events = c.execute(
                "SELECT COUNT(*) FROM masse_events WHERE namespace = ?", (namespace,)
            ).fetchone()[0]
            gone = c.execute(
                "SELECT COUNT(*) FROM masse_gone WHERE namespace = ?", (namespace,)
            ).fetchone()[0]
        c.close()
        leaked = [f"masse_records row {name}/{instance}" for name, instance in rows]
        return leaked, {"events": events, "tombstones": gone}

    return check


def _defaultKeyCheck(url: str) -> Callable[[str], tuple[list[str], dict[str, int]]]:
    parsed = parseRegistryURL(url)
    if parsed.scheme == "redis":
        return redisKeys(parsed.host, parsed.port, parsed.db)
    if parsed.scheme == "sqlite":
        return sqliteRows(os.path.abspath(parsed.path))
    return lambda namespace: ([], {"unchecked (not redis:// or sqlite:)": 0})


# Command line


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(
        prog="python -m bench.soak", description=__doc__.split("\n\n")[0]
    )
    parser.add_argument("--seconds", type=float, default=60.0, help="churn duration (default 60)")
    parser.add_argument("--leases", type=int, default=1000, help="lease slots (default 1000)")
    parser.add_argument("--registries", type=int, default=4, help="registry instances (4)")
    parser.add_argument("--registry", metavar="URL", help="default: a private redis-server")
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", action="store_true", help="also print the report as JSON")
    parser.add_argument("--watch-to", metavar="FILE", help=argparse.SUPPRESS)
    parser.add_argument("rest", nargs="*", help=argparse.SUPPRESS)
    args = parser.parse_args(argv)

    if args.watch_to:
        url, namespace = args.rest
        task.react(
            lambda reactor: Deferred.fromCoroutine(
                watchToFile(reactor, url, namespace, args.watch_to)
            )
        )
        return

    config = SoakConfig(
        seconds=args.seconds, leases=args.leases, registries=args.registries, seed=args.seed
    )
    server = None
    url = args.registry
    if url is None:
        from bench.redis import RedisProcess

        server = RedisProcess()
        server.start()
        url = server.url + "?timeout=5"
    outcome: list[SoakReport] = []

    async def run(reactor: Any) -> None:
        outcome.append(await soak(reactor, url, config, say=lambda text: print(text, flush=True)))

    try:
        task.react(lambda reactor: Deferred.fromCoroutine(run(reactor)))
    except SystemExit as e:
        if e.code not in (0, None):
            raise
    finally:
        if server is not None:
            server.stop()
    report = outcome[0]
    print(report.summary())
    if args.json:
        print(json.dumps(attrs.asdict(report), default=str))
    sys.exit(0 if report.ok else 1)


if __name__ == "__main__":
    main()
