"""
Prometheus metrics kept by every process that uses txmasse.

They live in C{prometheus_client}'s default registry, so an application that
already mounts C{prometheus_client.twisted.MetricsResource()} shows them
with its own; L{metricsResource} and L{metricsService} serve them otherwise
(C{twistd masse --metrics ENDPOINT}).

The names are public and stable. Each hook the rest of txmasse calls is one
line. Counting on the spot costs a warm connect about 4% (the metrics'
locks and lookups, cold in the middle of a connect), so the hooks only note
what happened; the notes are added to the metrics in batches, at each
scrape and every L{FOLD_AT} notes, where they cost a fraction of that.
"""

from __future__ import annotations

import functools
import weakref
from collections import deque
from collections.abc import Callable
from time import perf_counter
from typing import Any, ParamSpec, TypeVar

from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client.metrics_core import Metric
from twisted.internet.defer import CancelledError, Deferred
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

FOLD_AT = 1024
"""Notes kept before they are added to the metrics without waiting for a scrape."""

_Note = tuple[Any, tuple[str, ...], Any, tuple[str, ...], float]
_notes: deque[_Note] = deque()
"""(counter, its labels, histogram or None, its labels, seconds): appended by
the reactor's thread, taken by whichever thread folds (deques are safe so)."""


def fold() -> None:
    """
    Add the notes taken so far to the metrics.
    """
    while True:
        try:
            counter, labels, histogram, histogramLabels, seconds = _notes.popleft()
        except IndexError:
            return
        _child(counter, *labels).inc()
        if histogram is not None:
            (_child(histogram, *histogramLabels) if histogramLabels else histogram).observe(seconds)


def _note(note: _Note) -> None:
    _notes.append(note)
    if len(_notes) >= FOLD_AT:
        fold()


class _Folding:
    """
    Registered before the metrics, so a scrape folds the notes in first.
    """

    def describe(self) -> list[Metric]:
        return []

    def collect(self) -> list[Metric]:
        fold()
        return []


REGISTRY.register(_Folding())

connects = Counter(
    "masse_connects",
    "Connects by name, by outcome: ok, notfound, unreachable, unavailable, cancelled, error.",
    ["namespace", "name", "outcome"],
)
connectSeconds = Histogram(
    "masse_connect_seconds",
    "Seconds from connect() to a connected protocol or a failure, lookup included.",
    buckets=SECONDS_BUCKETS,
)
registryCalls = Counter(
    "masse_registry_calls",
    "Registry calls by operation and outcome: ok, unavailable, invalid, cancelled, error.",
    ["op", "outcome"],
)
registryCallSeconds = Histogram(
    "masse_registry_call_seconds",
    "Seconds a registry call took, by operation.",
    ["op"],
    buckets=SECONDS_BUCKETS,
)
leases = Gauge("masse_leases", "Leases this process is keeping alive with heartbeats.")
heartbeatFailures = Counter(
    "masse_heartbeat_failures", "Lease heartbeats that failed (each is retried)."
)
watchEvents = Counter(
    "masse_watch_events",
    "Events delivered to this process's watchers, by kind (one per watcher).",
    ["kind"],
)

_MAX_CHILDREN = 10_000
_children: dict[tuple[Any, ...], Any] = {}
_running: weakref.WeakSet[object] = weakref.WeakSet()
leases.set_function(lambda: len(_running))


def _child(metric: Any, *labels: str) -> Any:
    key = (metric, *labels)
    child = _children.get(key)
    if child is None:
        if len(_children) >= _MAX_CHILDREN:
            _children.clear()  # only a cache: prometheus_client keeps the series
        child = _children[key] = metric.labels(*labels)
    return child


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


def connectStarted(connecting: Deferred[Any], namespace: str, name: str) -> None:
    """
    Count and time a connect by name: call as it starts, with the Deferred
    its caller gets (the result passes through untouched).
    """
    connecting.addBoth(_connectDone, namespace, name, perf_counter())


def _connectDone(result: object, namespace: str, name: str, start: float) -> object:
    labels = (namespace, name, outcomeOf(result))
    _note((connects, labels, connectSeconds, (), perf_counter() - start))
    return result


def _callDone(result: object, op: str, start: float) -> object:
    _note(
        (registryCalls, (op, outcomeOf(result)), registryCallSeconds, (op,), perf_counter() - start)
    )
    return result


def registryCall(op: str) -> Callable[[Callable[P, Deferred[T]]], Callable[P, Deferred[T]]]:
    """
    Decorate a registry method that returns a Deferred: count it under
    C{op} with its outcome, and time it.
    """

    def decorate(method: Callable[P, Deferred[T]]) -> Callable[P, Deferred[T]]:
        @functools.wraps(method)
        def counted(*args: P.args, **kwargs: P.kwargs) -> Deferred[T]:
            start = perf_counter()
            d = method(*args, **kwargs)
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
    _note((watchEvents, (kind,), None, (), 0.0))


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
    endpoint C{description} (e.g. C{tcp:9108:interface=127.0.0.1}).

    @raise ValueError: naming C{description} if it is not a server endpoint.
    """
    from twisted.application.internet import StreamServerEndpointService
    from twisted.internet.endpoints import serverFromString
    from twisted.web.resource import Resource
    from twisted.web.server import Site

    try:
        endpoint = serverFromString(reactor, description)
    except (ValueError, TypeError, KeyError) as e:
        raise ValueError(f"--metrics {description!r}: not a server endpoint ({e})") from None
    root = Resource()
    root.putChild(b"metrics", metricsResource())
    site = Site(root)
    site.noisy = False
    return StreamServerEndpointService(endpoint, site)
