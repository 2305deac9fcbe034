"""
The benchmark suite: C{python -m bench} (C{--quick} for tiny sizes).

Starts its own redis-server, peers in helper processes and, when Pyro5 is
installed, a Pyro5 name server with an echo object; measures; prints the
table; and in a full run writes C{BENCHMARKS.md} and the chart
C{bench/lookup_scaling.png}.
"""

from __future__ import annotations

import argparse
import importlib
import json
import sys
from collections.abc import Sequence
from pathlib import Path
from statistics import median

import attrs
from twisted.internet import reactor, task
from twisted.internet.defer import Deferred

from bench import leases as scale
from bench import report
from bench.children import REPO, Child, spawn
from bench.connect import measureConnects
from bench.dns import measureDNS
from bench.events import measureDetection, measureEventLatency
from bench.load import Load, measureLoad
from bench.lookup import measureLookups, populate
from bench.redis import RedisProcess, freePort
from bench.rpc import measureRPC, rpcRows
from bench.stats import Row, detectionRows, micros, millis, p50, p50p99, p99, ratioRow, table
from bench.throughput import measureThroughput
from txmasse.registry import registryFromURL

NAMESPACE = "bench"
MiB = 1 << 20


@attrs.frozen
class Sizes:
    connects: int
    peers: list[int]
    lookups: int
    leases: int
    leaseTTL: float
    loadWindow: float
    events: int
    eventGap: float
    ttls: list[float]
    detectionRounds: int
    transfer: int
    transfers: int


FULL = Sizes(
    connects=2000,
    peers=[10, 100, 1000, 10000],
    lookups=2000,
    leases=10000,
    leaseTTL=10,
    loadWindow=10,
    events=400,
    eventGap=0.01,
    ttls=[1, 3, 10],
    detectionRounds=2,
    transfer=64 * MiB,
    transfers=21,
)
QUICK = Sizes(
    connects=30,
    peers=[10, 100],
    lookups=50,
    leases=200,
    leaseTTL=1,
    loadWindow=1,
    events=20,
    eventGap=0.005,
    ttls=[1],
    detectionRounds=1,
    transfer=1 * MiB,
    transfers=2,
)


def installed(module: str) -> bool:
    try:
        importlib.import_module(module)
    except ImportError:
        return False
    return True


def connectRows(s: dict[str, list[float]]) -> list[Row]:
    raw, get = p50(s["raw"]), p50(s["get"])
    rows = [
        Row(
            "connect", "raw TCP: connect + 1-byte echo", p50p99(s["raw"]), "", None, "", number=raw
        ),
        Row("connect", "Redis GET round trip", p50p99(s["get"]), "", None, "", number=get),
    ]
    warm = p50(s["warm"])
    rows += [
        ratioRow(
            "connect",
            "Redis: the lookup's command alone (HGETALL over txredisapi, no txmasse code)",
            s["command"], "GET", get, digits=2, unit="x GET",
        ),
        ratioRow("connect", "masse: warm (cached)", s["warm"], "raw", raw, limit="1.05"),
        ratioRow(
            "connect", "masse: warm, meta.role= meta.zone= prefer.zone=",
            s["selected"], "warm", warm, limit="1.03",
        ),
    ]  # fmt: skip
    for key, figure in (("nocache", "masse: cold (cache=false)"), ("miss", "masse: cache miss")):
        cold = p50(s[key])
        extra = (cold - raw) / get
        rows.append(
            Row(
                "connect",
                figure,
                p50p99(s[key]),
                f"raw {micros(raw)} + GET {micros(get)}",
                extra,
                f"raw + {extra:.2f}x GET",
                "≤ raw + 1.2x GET",
                extra <= 1.2,
                number=cold,
            )
        )
    byHand, cold = p50(s["byhand"]), p50(s["nocache"])
    rows.append(
        Row(
            "connect",
            "by hand: lookup(), then raw TCP",
            p50p99(s["byhand"]),
            f"raw {micros(raw)} + GET {micros(get)}",
            (byHand - raw) / get,
            f"raw + {(byHand - raw) / get:.2f}x GET",
            number=byHand,
        )
    )
    rows.append(
        Row(
            "connect",
            "masse: cold against by hand",
            micros(cold),
            f"by hand {micros(byHand)}",
            cold / byHand,
            f"{cold / byHand:.3f}x",
            number=cold,
        )
    )
    if "pyro" in s:
        pyro = p50(s["pyro"])
        rows.append(
            Row(
                "connect",
                "Pyro5: name-server lookup + connect + call",
                p50p99(s["pyro"]),
                f"masse cold {micros(cold)}",
                pyro / cold,
                f"masse {pyro / cold:.2f}x faster",
                "≥ 2x faster",
                pyro / cold >= 2,
                number=pyro,
            )
        )
        rows.append(
            Row(
                "connect",
                "Pyro5 against masse warm",
                micros(pyro),
                f"masse warm {micros(warm)}",
                pyro / warm,
                f"masse {pyro / warm:.2f}x faster",
                number=pyro,
            )
        )
    return rows


def lookupRows(samples: dict[str, dict[int, list[float]]]) -> list[Row]:
    rows = []
    for operation, figure in (("lookup", "lookup(name)"), ("find", "find('peer-0000*')")):
        bySize = samples[operation]
        smallest = min(bySize)
        base = p50(bySize[smallest])
        for size in sorted(bySize):
            value = p50(bySize[size])
            last = size == max(bySize) and size > smallest
            rows.append(
                Row(
                    "lookup",
                    f"{figure}, {size:,} peers",
                    p50p99(bySize[size]),
                    f"{smallest} peers {micros(base)}",
                    value / base,
                    f"{value / base:.3f}x",
                    "≤ 1.2x" if last else "",
                    (value / base <= 1.2) if last else None,
                    number=value,
                )
            )
    return rows


def loadRow(load: Load) -> Row:
    heartbeats = load.leases / (load.ttl / 3)
    return Row(
        "load",
        f"{load.leases:,} leases at ttl {load.ttl:g} s: commands sent",
        f"{load.sent:,.0f}/s ({load.total:,.0f}/s counting those inside scripts; "
        f"Redis CPU {load.cpu * 100:.0f}%; {load.alive:,} alive)",
        f"{heartbeats:,.0f} heartbeats/s (one per lease per ttl/3)",
        load.sent / heartbeats,
        f"{load.sent / heartbeats:.3f}x",
        f"all {load.leases:,} alive",
        load.alive == load.leases,
        number=load.sent,
    )


def eventRow(latencies: list[float], get: float) -> Row:
    worst = p99(latencies)
    return Row(
        "events",
        "register -> watcher callback, other process",
        f"p50 {millis(p50(latencies))}, p99 {millis(worst)}",
        f"Redis GET {micros(get)}",
        worst / get,
        f"p99 = {worst / get:.1f}x GET",
        "p99 ≤ 5 ms",
        worst <= 0.005,
        number=worst,
    )


def throughputRows(rates: dict[str, list[float]], size: int) -> list[Row]:
    raw = median(rates["raw"])
    rows = [
        Row(
            "throughput",
            f"raw TCP, {size // MiB} MiB",
            f"{raw / MiB:,.0f} MiB/s",
            "",
            None,
            "",
            number=raw,
        )
    ]
    for key, figure, target in (
        ("w0", "masse:, 0 wrappers", 0.97),
        ("w3", "masse:, 3 wrappers", None),
    ):
        value = median(rates[key])
        rows.append(
            Row(
                "throughput",
                figure,
                f"{value / MiB:,.0f} MiB/s",
                f"raw {raw / MiB:,.0f} MiB/s",
                value / raw,
                f"{value / raw:.3f}x",
                f"≥ {target}x" if target else "",
                (value / raw >= target) if target else None,
                number=value,
            )
        )
    return rows


def cacheNote(s: dict[str, list[float]]) -> list[str]:
    before, after, raw = p50(s["nocache"]), p50(s["warm"]), p50(s["raw"])
    return [
        "## The resolution cache, before and after",
        "",
        f"- before (`cache=false`: every connect looks the name up): p50 {micros(before)}, "
        f"p99 {micros(p99(s['nocache']))}; one registry round trip per connect",
        f"- after (warm cache, kept current by the registry's events): p50 {micros(after)}, "
        f"p99 {micros(p99(s['warm']))}; no registry round trip",
        f"- so a connect costs {(1 - after / before) * 100:.0f}% less; "
        f"masse's overhead over raw TCP ({micros(raw)}) goes from {micros(before - raw)} "
        f"to {micros(after - raw)}",
    ]


async def startPyro(quick: bool, notes: list[str]) -> tuple[str | None, list[Child]]:
    if not installed("Pyro5"):
        if not quick:
            raise SystemExit("bench: Pyro5 is missing: pip install -e '.[bench]'")
        notes.append("Pyro5 not installed: its figure is skipped (pip install -e '.[bench]')")
        return None, []
    port = freePort()
    nameServer = spawn("-n", "127.0.0.1", "-p", str(port), "-x", module="Pyro5.nameserver")
    echo = spawn(str(port), module="bench.pyro_echo")
    await echo.expect("ready")
    return f"PYRONAME:bench.echo@127.0.0.1:{port}", [echo, nameServer]


async def run(options: argparse.Namespace) -> int:
    sizes = QUICK if options.quick else FULL
    notes: list[str] = []
    if not installed("matplotlib") and not options.quick:
        raise SystemExit("bench: matplotlib is missing: pip install -e '.[bench]'")
    redis = RedisProcess()
    redis.start()
    url = f"{redis.url}?timeout=5"
    children: list[Child] = []
    try:
        pyroURI, pyroChildren = await startPyro(options.quick, notes)
        children += pyroChildren
        server = spawn("serve", url, NAMESPACE)
        children.append(server)
        echoPort, sourcePort, _ = (int(p) for p in await server.expect("ready"))
        say = lambda text: print(f"bench: {text}", flush=True)  # noqa: E731

        say(f"connect + echo, {sizes.connects} rounds")
        connects = await measureConnects(
            url, NAMESPACE, echoPort, redis.port, pyroURI, sizes.connects
        )
        rows = connectRows(connects)
        lookups: dict[str, dict[int, list[float]]] = {}
        if not options.only_connect:
            say(f"RPC round trips, {sizes.connects * 2} rounds")
            ampEcho = spawn("serve", url, NAMESPACE, module="bench.rpc")
            children.append(ampEcho)
            ampPort = int((await ampEcho.expect("ready"))[0])
            rows += rpcRows(
                await measureRPC(url, NAMESPACE, ampPort, pyroURI, sizes.connects * 2)
            )
            say(f"throughput, {sizes.transfer // MiB} MiB x {sizes.transfers} rounds")
            rates = await measureThroughput(
                url, NAMESPACE, sourcePort, sizes.transfer, sizes.transfers
            )
            rows += throughputRows(rates, sizes.transfer)
            say(f"lookup and find with {', '.join(map(str, sizes.peers))} peers")
            await populate(f"{redis.url}?timeout=30", sizes.peers)
            lookups = await measureLookups(url, sizes.peers, sizes.lookups)
            rows += lookupRows(lookups)
            say(f"event latency, {sizes.events} events")
            latencies = await measureEventLatency(url, sizes.events, sizes.eventGap)
            rows.append(eventRow(latencies, p50(connects["get"])))
            say(f"failure detection, ttl {', '.join(f'{t:g}' for t in sizes.ttls)} s")
            detection = await measureDetection(url, sizes.ttls, sizes.detectionRounds)
            rows += detectionRows("failure", "", detection)
            say("DNS queries at 1,000/s, masse dns against dnsmasq")
            rows += await measureDNS(url, options.quick, notes)
            await registryFromURL(reactor, url).close()  # its sweeps stay out of the count
            say(f"registry load, {sizes.leases} leases")
            load = await measureLoad(redis, url, sizes.leases, sizes.leaseTTL, sizes.loadWindow)
            rows.append(loadRow(load))
            if options.etcd:  # etcd beside Redis: bench/etcd.py
                from bench import etcd

                etcdSizes = etcd.QUICK if options.quick else etcd.FULL
                etcdRows, etcdVersion = await etcd.measureEtcd(redis, url, etcdSizes, say)
                rows += etcdRows
                notes.append(f"etcd rows: etcd {etcdVersion}, one member on loopback")
            if not options.quick or options.scale:
                say("cost at scale (python -m bench.leases: leases, capacity, find)")
                rows += await scale.measure(options.quick)
        redisVersion = redis.version()
    finally:
        for child in children:
            await child.stop()
        redis.stop()

    print()
    print(table(rows))
    print()
    extra = cacheNote(connects)
    print("\n".join(extra))
    for note in notes:
        print(f"note: {note}")
    if options.json is not None:
        Path(options.json).write_text(json.dumps([attrs.asdict(r) for r in rows], indent=1))
    output = options.output or (
        None if options.quick or options.only_connect else REPO / "BENCHMARKS.md"
    )
    if output is not None:
        output = Path(output)
        chartPath: Path | None = (
            REPO / "bench" / "lookup_scaling.png"
            if not options.quick
            else output.with_name("lookup_scaling.png")
        )
        assert chartPath is not None
        title = f"txmasse on Redis {redisVersion}, loopback"
        if not report.chart(lookups, chartPath, title):
            notes.append("matplotlib not installed: no chart (pip install -e '.[bench]')")
            print(f"note: {notes[-1]}")
            chartPath = None
        pyro: str | None = None
        if pyroURI is not None:
            pyro = importlib.import_module("Pyro5").__version__
        command = "python -m bench" + (" --quick" if options.quick else "")
        output.write_text(
            report.markdown(
                rows,
                report.machine(redisVersion, pyro),
                command,
                [*extra, *(f"\nNote: {n}" for n in notes)],
                chartPath,
                output,
            ),
            encoding="utf-8",
        )
        print(f"bench: wrote {output}" + (f" and {chartPath}" if chartPath else ""))
    return 0


def main(argv: Sequence[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m bench", description=__doc__)
    parser.add_argument(
        "--quick", action="store_true", help="tiny sizes (the test suite's smoke run)"
    )
    parser.add_argument(
        "--output",
        help="where to write the Markdown report "
        "(default: BENCHMARKS.md in a full run, none with --quick)",
    )
    parser.add_argument("--json", help="also write the rows as JSON here")
    parser.add_argument("--etcd", action="store_true", help="add the etcd rows (bench/etcd.py)")
    parser.add_argument(
        "--only-connect",
        action="store_true",
        help="only the connect rows (writes no report unless --output)",
    )
    parser.add_argument(
        "--scale",
        action="store_true",
        help="with --quick, the cost-at-scale rows too (a full run has them)",
    )
    options = parser.parse_args(argv)

    def start(_: object) -> Deferred[int]:
        return Deferred.fromCoroutine(run(options))

    task.react(start)
    sys.exit(0)
