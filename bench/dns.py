"""
DNS query latency on loopback from a Twisted Names client, at a fixed
rate: C{masse dns} answering from a Redis registry against C{dnsmasq}
answering a static hosts entry, in alternating rounds of the same run;
and how soon a join or a release shows in C{masse dns}'s answers.
"""

from __future__ import annotations

import random
import shutil
import tempfile
import time
from pathlib import Path

import attrs
from twisted.internet import reactor
from twisted.internet.defer import Deferred, gatherResults
from twisted.internet.protocol import ProcessProtocol
from twisted.internet.task import deferLater
from twisted.names import client, dns
from twisted.python.failure import Failure

from bench.children import Child, spawn
from bench.redis import freePort
from bench.stats import Row, micros, millis, p50, p99
from txmasse.records import PeerRecord
from txmasse.registry import IRegistry, registryFromURL

RATE = 1000.0
NAMESPACE = "benchdns"
NAME = "db"
ADDRESS = "10.0.0.7"
STATIC = "db.static.test"


@attrs.frozen
class DNSSizes:
    rounds: int
    perRound: int
    changes: int


FULL = DNSSizes(rounds=10, perRound=500, changes=20)
QUICK = DNSSizes(rounds=2, perRound=100, changes=2)


class _Quiet(ProcessProtocol):
    def __init__(self) -> None:
        self.ended: Deferred[None] = Deferred()
        self.output = b""

    def errReceived(self, data: bytes) -> None:
        self.output += data

    def processEnded(self, reason: Failure) -> None:
        self.ended.callback(None)


def dnsmasqPath() -> str | None:
    return shutil.which("dnsmasq") or shutil.which("dnsmasq", path="/usr/sbin:/sbin")


async def ask(resolver: client.Resolver, name: str) -> list[str]:
    message = await resolver.queryUDP([dns.Query(name, dns.A)], timeout=[2])
    return [r.payload.dottedQuad() for r in message.answers if r.type == dns.A]


async def answering(resolver: client.Resolver, name: str, what: str) -> None:
    deadline = time.monotonic() + 30
    while True:
        try:
            if ADDRESS in await ask(resolver, name):
                return
        except Exception:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: {what} does not answer {name}")
        await deferLater(reactor, 0.05, lambda: None)


async def paced(resolver: client.Resolver, name: str, count: int) -> list[float]:
    """
    C{count} queries sent at L{RATE} per second whatever the answers do
    (open loop); the seconds each took.
    """
    latencies: list[float] = []
    start = time.perf_counter()
    pending = []

    def send() -> None:
        sent = time.perf_counter()

        def done(addresses: list[str]) -> None:
            if addresses != [ADDRESS]:
                raise RuntimeError(f"bench: {name} answered {addresses}")
            latencies.append(time.perf_counter() - sent)

        pending.append(Deferred.fromCoroutine(ask(resolver, name)).addCallback(done))

    for i in range(count):
        delay = start + i / RATE - time.perf_counter()
        if delay > 0:
            await deferLater(reactor, delay, lambda: None)
        send()
    await gatherResults(pending, consumeErrors=True)
    return latencies


async def showing(resolver: client.Resolver, name: str, address: str, shown: bool) -> None:
    deadline = time.monotonic() + 10
    while (address in await ask(resolver, name)) != shown:
        if time.monotonic() > deadline:
            raise RuntimeError(f"bench: {address} still {'missing' if shown else 'answered'}")
        await deferLater(reactor, 0.001, lambda: None)


async def changes(
    registry: IRegistry, resolver: client.Resolver, rounds: int
) -> dict[str, list[float]]:
    """
    Seconds from the start of C{register()} (and of C{release()}) here to
    the first answer of C{masse dns} that shows it, polling every ms.
    """
    name = f"{NAME}.{NAMESPACE}.masse"
    seconds: dict[str, list[float]] = {"join": [], "leave": []}
    for i in range(rounds):
        address = f"10.1.{i // 250}.{i % 250 + 1}"
        record = PeerRecord(NAMESPACE, NAME, [f"tcp:host={address}:port=1"])
        start = time.perf_counter()
        lease = await registry.register(record, 30)
        await showing(resolver, name, address, True)
        seconds["join"].append(time.perf_counter() - start)
        start = time.perf_counter()
        await lease.release()
        await showing(resolver, name, address, False)
        seconds["leave"].append(time.perf_counter() - start)
    return seconds


async def measureDNS(url: str, quick: bool, notes: list[str]) -> list[Row]:
    sizes = QUICK if quick else FULL
    executable = dnsmasqPath()
    if executable is None:
        if not quick:
            raise SystemExit("bench: dnsmasq is missing (apt-get install -y dnsmasq-base)")
        notes.append("dnsmasq not installed: the DNS baseline is skipped")
    registry = registryFromURL(reactor, url)
    lease = await registry.register(
        PeerRecord(NAMESPACE, NAME, [f"tcp:host={ADDRESS}:port=5432"]), 3600
    )
    children: list[Child] = []
    dnsmasq: _Quiet | None = None
    directory = tempfile.TemporaryDirectory(prefix="txmasse-bench-dns-")
    try:
        masse = spawn("--registry", url, "dns", "--listen", "0", module="txmasse")
        children.append(masse)
        words = await masse.expect("masse")
        massePort = int(words[words.index("port") + 1])
        targets = {
            "masse": (
                client.Resolver(servers=[("127.0.0.1", massePort)]),
                f"{NAME}.{NAMESPACE}.masse",
            )
        }
        if executable is not None:
            hosts = Path(directory.name) / "hosts"
            hosts.write_text(f"{ADDRESS} {STATIC}\n")
            port = freePort()
            dnsmasq = _Quiet()
            argv = [
                executable, "--no-daemon", "--no-resolv", "--no-hosts", "--conf-file=/dev/null",
                f"--addn-hosts={hosts}", "-p", str(port), "--listen-address=127.0.0.1",
                "--bind-interfaces", "--local-ttl=1", "--pid-file=", "--user=" + _user(),
            ]  # fmt: skip
            reactor.spawnProcess(dnsmasq, executable, argv, env={})
            targets["dnsmasq"] = (client.Resolver(servers=[("127.0.0.1", port)]), STATIC)
        for what, (resolver, name) in targets.items():
            await answering(resolver, name, what)
        samples: dict[str, list[float]] = {what: [] for what in targets}
        for round in range(sizes.rounds + 1):  # the first round warms up
            order = list(targets)
            random.shuffle(order)
            for what in order:
                resolver, name = targets[what]
                latencies = await paced(resolver, name, sizes.perRound)
                if round > 0:
                    samples[what] += latencies
        moved = await changes(registry, targets["masse"][0], sizes.changes)
    finally:
        await lease.release()
        await registry.close()
        for child in children:
            await child.stop()
        if dnsmasq is not None and dnsmasq.transport is not None and not dnsmasq.ended.called:
            dnsmasq.transport.signalProcess("KILL")
            await dnsmasq.ended
        directory.cleanup()
    return dnsRows(samples, moved)


def _user() -> str:
    """
    The user dnsmasq runs as: itself when not root (it cannot change), else nobody.
    """
    import os
    import pwd

    return pwd.getpwuid(os.getuid()).pw_name if os.getuid() != 0 else "nobody"


def dnsRows(samples: dict[str, list[float]], moved: dict[str, list[float]]) -> list[Row]:
    masse = samples["masse"]
    value = f"p50 {micros(p50(masse))}, p99 {micros(p99(masse))}"
    rows = []
    if "dnsmasq" in samples:
        base = samples["dnsmasq"]
        ratio = p99(masse) / p99(base)
        rows.append(
            Row(
                "dns",
                f"dnsmasq, static hosts entry, A at {RATE:,.0f} q/s",
                f"p50 {micros(p50(base))}, p99 {micros(p99(base))}",
                "",
                None,
                "",
                number=p99(base),
            )
        )
        rows.append(
            Row(
                "dns",
                f"masse dns, A from a Redis watch, at {RATE:,.0f} q/s",
                value,
                f"dnsmasq p99 {micros(p99(base))}",
                ratio,
                f"p99 {ratio:.2f}x dnsmasq (p50 {p50(masse) / p50(base):.2f}x)",
                "p99 ≤ 1 ms and ≤ 2x",
                p99(masse) <= 0.001 and ratio <= 2,
                number=p99(masse),
            )
        )
    else:
        rows.append(
            Row(
                "dns",
                f"masse dns, A from a Redis watch, at {RATE:,.0f} q/s",
                value,
                "",
                None,
                "",
                "p99 ≤ 1 ms",
                p99(masse) <= 0.001,
                number=p99(masse),
            )
        )
    for kind, figure in (
        ("join", "register() -> in DNS answers"),
        ("leave", "release() -> out of DNS answers"),
    ):
        worst = max(moved[kind])
        rows.append(
            Row(
                "dns",
                figure,
                f"max {millis(worst)} (p50 {millis(p50(moved[kind]))}, {len(moved[kind])} rounds)",
                "",
                None,
                "",
                "≤ 100 ms",
                worst <= 0.1,
                number=worst,
            )
        )
    return rows


async def main() -> None:
    from bench.redis import RedisProcess
    from bench.stats import table

    redis = RedisProcess()
    redis.start()
    try:
        notes: list[str] = []
        rows = await measureDNS(f"{redis.url}?timeout=5", False, notes)
    finally:
        redis.stop()
    print(table(rows))
    for note in notes:
        print(f"note: {note}")


if __name__ == "__main__":
    from twisted.internet import task

    task.react(lambda _: Deferred.fromCoroutine(main()))
