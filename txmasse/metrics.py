"""
Prometheus metrics kept by every process that uses txmasse.

They live in C{prometheus_client}'s default registry, so an application that
already mounts C{prometheus_client.twisted.MetricsResource()} shows them
with its own; L{metricsResource} and L{metricsService} serve them otherwise
(C{twistd masse --metrics ENDPOINT}).

The names are public and stable. Each hook the rest of txmasse calls is one
line and costs a few microseconds: the label children are looked up once
and kept, since C{labels()} costs more than the increment itself.
"""

from __future__ import annotations

import functools
import weakref
from collections.abc import Callable
from time import perf_counter
from typing import Any, ParamSpec, TypeVar

from prometheus_client import Counter, Gauge, Histogram
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
    start = perf_counter()

    def done(result: object) -> object:
        _child(connects, namespace, name, outcomeOf(result)).inc()
        connectSeconds.observe(perf_counter() - start)
        return result

    connecting.addBoth(done)


def _callDone(result: object, op: str, start: float) -> object:
    _child(registryCalls, op, outcomeOf(result)).inc()
    _child(registryCallSeconds, op).observe(perf_counter() - start)
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
    _child(watchEvents, kind).inc()


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
