"""
Prometheus metrics kept by every process that uses txmasse.

They live in C{prometheus_client}'s default registry, so an application that
already mounts C{prometheus_client.twisted.MetricsResource()} shows them
with its own; L{metricsResource} and L{metricsService} serve them otherwise
(C{twistd masse --metrics ENDPOINT}).

The names are public and stable. Each hook the rest of txmasse calls is one
line. What is counted per connect, call or event is counted in plain
integers (L{Tally}, L{Timings}: a dict increment, a bisect) and handed to
C{prometheus_client} as a custom collector at each scrape: its own metric
objects take a lock and a label lookup per count, which cost a warm connect
about 4%.
"""

from __future__ import annotations

import functools
import time
import weakref
from bisect import bisect_left
from collections.abc import Callable, Iterator, Sequence
from time import perf_counter
from typing import Any, ParamSpec, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge
from prometheus_client.core import CounterMetricFamily, HistogramMetricFamily
from prometheus_client.metrics_core import Metric
from prometheus_client.samples import Sample
from prometheus_client.utils import floatToGoString
from twisted.internet.defer import CancelledError, Deferred, fail
from twisted.python.failure import Failure

from txmasse.errors import NoReachablePeer, PeerNotFound, RegistryUnavailable

P = ParamSpec("P")
T = TypeVar("T")

SECONDS_BUCKETS = (
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
    30.0,
)
"""From a warm loopback connect (under 1 ms) to a connect's default deadline."""


class Tally:
    """
    A counter by label values, counted by the reactor's thread in plain
    integers and read by whichever thread scrapes (copies of a dict are
    atomic under the GIL, so a scrape sees every count made before it).

    Each count is a one-item list, its cell (L{cell}), so that a caller
    counting the same labels often keeps the cell and adds to it directly.
    """

    def __init__(self, name: str, documentation: str, labels: Sequence[str]):
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.counts: dict[tuple[str, ...], list[int]] = {}
        self.created: dict[tuple[str, ...], float] = {}

    def add(self, labels: tuple[str, ...]) -> None:
        cell = self.counts.get(labels)
        if cell is None:
            cell = self.cell(labels)
        cell[0] += 1

    def cell(self, labels: tuple[str, ...]) -> list[int]:
        """
        The count of C{labels}, from now on shown (at 0 until counted).
        """
        cell = self.counts.get(labels)
        if cell is None:
            self.created[labels] = time.time()
            cell = self.counts[labels] = [0]
        return cell

    def collect(self) -> Metric:
        family = CounterMetricFamily(self.name, self.documentation, labels=self.labels)
        created = self.created
        for labels, cell in list(self.counts.items()):
            family.add_metric(labels, cell[0], created=created.get(labels))
        return family


class Timings:
    """
    A histogram by label values, kept as plain bucket counts and a sum per
    label set; like L{Tally}, cheap to count and read at each scrape.
    """

    def __init__(
        self, name: str, documentation: str, labels: Sequence[str], buckets: Sequence[float]
    ):
        self.name = name
        self.documentation = documentation
        self.labels = tuple(labels)
        self.bounds = tuple(buckets)
        self.series: dict[tuple[str, ...], list[float]] = {}
        self.created: dict[tuple[str, ...], float] = {}
        if not self.labels:  # one series, shown from the start, as prometheus_client does
            self.series[()] = [0] * (len(self.bounds) + 2)
            self.created[()] = time.time()

    def observe(self, labels: tuple[str, ...], seconds: float) -> None:
        """
        One observation: its bucket's count (the last is +Inf), then the sum.
        """
        series = self.series.get(labels)
        if series is None:
            self.created[labels] = time.time()
            series = self.series[labels] = [0] * (len(self.bounds) + 2)
        series[bisect_left(self.bounds, seconds)] += 1
        series[-1] += seconds

    def collect(self) -> Metric:
        family = HistogramMetricFamily(self.name, self.documentation, labels=self.labels)
        for labels, series in list(self.series.items()):
            *counts, total = list(series)
            cumulative, buckets = 0.0, []
            for bound, count in zip((*self.bounds, float("inf")), counts, strict=True):
                cumulative += count
                buckets.append((floatToGoString(bound), cumulative))
            family.add_metric(labels, buckets, total)
            family.samples.append(
                Sample(
                    f"{self.name}_created",
                    dict(zip(self.labels, labels, strict=True)),
                    self.created.get(labels, 0.0),
                )
            )
        return family


class _Collector:
    """
    The tallies and timings, as one custom collector of the default registry.
    """

    def __init__(self, *metrics: Tally | Timings):
        self.metrics = metrics

    def describe(self) -> list[Metric]:
        return [
            (CounterMetricFamily if isinstance(m, Tally) else HistogramMetricFamily)(
                m.name, m.documentation, labels=m.labels
            )
            for m in self.metrics
        ]

    def collect(self) -> Iterator[Metric]:
        for metric in self.metrics:
            yield metric.collect()


connects = Tally(
    "masse_connects",
    "Connects by name, by outcome: "
    "ok, notfound, unreachable, unavailable, cancelled, invalid, error.",
    ["namespace", "name", "outcome"],
)
connectSeconds = Timings(
    "masse_connect_seconds",
    "Seconds from connect() to a connected protocol or a failure, lookup included.",
    [],
    SECONDS_BUCKETS,
)
registryCalls = Tally(
    "masse_registry_calls",
    "Registry calls by operation and outcome: ok, unavailable, invalid, cancelled, error.",
    ["op", "outcome"],
)
registryCallSeconds = Timings(
    "masse_registry_call_seconds",
    "Seconds a registry call took, by operation.",
    ["op"],
    SECONDS_BUCKETS,
)
watchEvents = Tally(
    "masse_watch_events",
    "Events delivered to this process's watchers, by kind (one per watcher).",
    ["kind"],
)
REGISTRY.register(
    _Collector(connects, connectSeconds, registryCalls, registryCallSeconds, watchEvents)
)

leases = Gauge("masse_leases", "Leases this process is keeping alive with heartbeats.")
heartbeatFailures = Counter(
    "masse_heartbeat_failures", "Lease heartbeats that failed (each is retried)."
)

_running: weakref.WeakSet[object] = weakref.WeakSet()
leases.set_function(lambda: len(_running))


def outcomeOf(result: object) -> str:
    """
    The C{outcome} label for what a Deferred fired with.
    """
    if not isinstance(result, Failure):
        return "ok"
    error = result.value
    if isinstance(error, CancelledError):
        return "cancelled"
    if isinstance(error, PeerNotFound):
        return "notfound"
    if isinstance(error, NoReachablePeer):
        return "unreachable"
    if isinstance(error, RegistryUnavailable):
        return "unavailable"
    if isinstance(error, ValueError):
        return "invalid"
    return "error"


_NO_LABELS = ()


_connectSeries = connectSeconds.series[_NO_LABELS]


def connectEnded(namespace: str, name: str, result: object, seconds: float) -> None:
    """
    Count and time one connect by name, as it ends with C{result} (a
    protocol or a failure, counted by L{outcomeOf}).
    """
    connects.add((namespace, name, "ok" if not isinstance(result, Failure) else outcomeOf(result)))
    _timeConnect(seconds)


def connectedCell(namespace: str, name: str) -> list[int]:
    """
    The cell of L{connects} that counts C{name}'s connects that succeeded,
    for L{connectedSince}.
    """
    return connects.cell((namespace, name, "ok"))


def connectedSince(protocol: T, started: float, connected: list[int]) -> T:
    """
    Count and time a connect that connected C{protocol}, begun at
    C{started} (C{perf_counter}), in its name's L{connectedCell}: the
    callback of a connect that repeats an attempt, where every line
    counts (a dictionary lookup less than L{connectEnded}).
    """
    seconds = perf_counter() - started
    connected[0] += 1
    _timeConnect(seconds)
    return protocol


def _timeConnect(seconds: float) -> None:
    series = _connectSeries  # Timings.observe, inline: every connect pays it
    series[bisect_left(SECONDS_BUCKETS, seconds)] += 1
    series[-1] += seconds


def _callDone(result: object, op: str, start: float) -> object:
    registryCalls.add((op, outcomeOf(result)))
    registryCallSeconds.observe((op,), perf_counter() - start)
    return result


def registryCall(op: str) -> Callable[[Callable[P, Deferred[T]]], Callable[P, Deferred[T]]]:
    """
    Decorate a registry method that returns a Deferred: count it under
    C{op} with its outcome, and time it. What the method raises at once
    (arguments it refuses, a C{ValueError} naming the bad one) fails the
    Deferred instead, as C{maybeDeferred} does, so each backend checks its
    arguments in a plain line.
    """

    def decorate(method: Callable[P, Deferred[T]]) -> Callable[P, Deferred[T]]:
        @functools.wraps(method)
        def counted(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
            start = perf_counter()
            try:
                d = method(*args, **kwargs)
            except Exception:
                d = fail()
            d.addBoth(_callDone, op, start)
            return d

        return counted

    return decorate


def leaseStarted(lease: object) -> None:
    """
    C{lease} heartbeats from now on (counted until L{leaseStopped}).
    """
    _running.add(lease)


def leaseStopped(lease: object) -> None:
    """
    C{lease} heartbeats no more; idempotent.
    """
    _running.discard(lease)


def heartbeatFailed() -> None:
    heartbeatFailures.inc()


def watchEvent(kind: str) -> None:
    """
    One event delivered to one watcher.
    """
    watchEvents.add((kind,))


def metricsResource() -> Any:
    """
    C{prometheus_client}'s Twisted resource for the default registry: it
    renders in the reactor's thread pool, off the reactor thread.
    """
    from prometheus_client.twisted import MetricsResource

    return MetricsResource()


def metricsService(reactor: Any, description: str) -> Any:
    """
    An C{IService} serving these metrics at C{/metrics} on the server
    endpoint C{description} (e.g. C{tcp:9108:interface=127.0.0.1}). If it
    cannot listen (the port is taken), it says so and tries again, as a
    peer does (L{txmasse.service.ListeningService}).

    @raise ValueError: naming C{description} if it is not a server endpoint.
    """
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    from txmasse.descriptions import serverEndpoint
    from txmasse.service import ListeningService  # which imports this module

    endpoint = serverEndpoint(reactor, description, "--metrics")
    root = Resource()
    root.putChild(b"metrics", metricsResource())
    site = Site(root)
    site.noisy = False
    service = ListeningService(endpoint, site, reactor)
    service.setName(f"metrics at {description}")
    return service
