"""
The dashboard as a C{twisted.web} resource: the page, its JSON and event
stream, and the metrics.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Callable, Iterable, Iterator, Sequence
from importlib import resources
from typing import Any

from prometheus_client import REGISTRY, CollectorRegistry
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.metrics_core import Metric
from twisted.internet.defer import FirstError, gatherResults
from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.util import Redirect
from zope.interface import implementer

from txmasse.errors import RegistryUnavailable
from txmasse.records import validateName
from txmasse.registry import IRegistry, LeaseStatus, defaultNamespace
from txmasse.web._records import health, recordJSON
from txmasse.web._view import NamespaceView

KEEPALIVE = 15.0
MAX_QUEUED = 1000
"""Messages kept for a stream whose reader is not keeping up; past that it
is closed, and its browser reconnects to a fresh snapshot."""

_HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
}

_STATIC = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


def _secure(request: Request) -> None:
    for name, value in _HEADERS.items():
        request.setHeader(name, value)


def _json(request: Request, code: int, body: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body, sort_keys=True).encode("ascii")


class _BadQuery(Exception):
    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class _Static(Resource):
    isLeaf = True

    def __init__(self, body: bytes, contentType: bytes):
        super().__init__()
        self._body = body
        self._type = contentType

    def render_GET(self, request: Request) -> bytes:
        _secure(request)
        request.setHeader(b"Content-Type", self._type)
        return self._body


class _Refused(Resource):
    isLeaf = True

    def __init__(self, host: str):
        super().__init__()
        self._host = host

    def render(self, request: Request) -> bytes:
        _secure(request)
        request.setResponseCode(403)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return (f"masse web: Host {self._host!r} is not one this dashboard answers to\n").encode(
            "ascii", "backslashreplace"
        )


class _Peers(Resource):
    isLeaf = True

    def __init__(self, dashboard: DashboardResource):
        super().__init__()
        self._dashboard = dashboard

    def render_GET(self, request: Request) -> bytes | int:
        _secure(request)
        try:
            views = self._dashboard.viewsFor(request)
        except _BadQuery as e:
            return _json(request, e.code, {"error": str(e)})
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def finish(code: int, body: object) -> None:
            if not gone:
                request.write(_json(request, code, body))
                request.finish()

        def answered(results: list[list[LeaseStatus]]) -> None:
            statuses = [status for result in results for status in result]
            statuses.sort(key=lambda s: (s.record.namespace, s.record.name, s.record.registered))
            finish(200, [recordJSON(status.record, status.expiresIn) for status in statuses])

        def failed(failure: Failure) -> None:
            if isinstance(failure.value, FirstError):
                failure = failure.value.subFailure  # the first call that failed
            code = 503 if failure.check(RegistryUnavailable) else 500
            finish(code, {"error": failure.getErrorMessage()})

        asked = [view.registry.leases(view.namespace, "*") for view in views]
        gatherResults(asked, consumeErrors=True).addCallbacks(answered, failed)
        return NOT_DONE_YET


@implementer(IPushProducer)
class _EventStream:
    """
    One Server-Sent Events stream: pauses when its reader does, and is
    closed if the reader falls more than L{MAX_QUEUED} messages behind.
    """

    def __init__(self, request: Request, usage: bool, clock: IReactorTime):
        self.usage = usage
        self._request = request
        self._paused = False
        self._done = False
        self._queue: list[bytes] = []
        self._stops: list[Callable[[], None]] = []
        self._keepalive = LoopingCall(self._write, b": keepalive\n\n")
        self._keepalive.clock = clock

    def start(self, views: Sequence[NamespaceView], hello: dict[str, Any]) -> None:
        request = self._request
        request.setHeader(b"Content-Type", b"text/event-stream; charset=utf-8")
        request.setHeader(b"X-Accel-Buffering", b"no")
        request.registerProducer(self, True)
        request.notifyFinish().addBoth(self._finished)
        self._write(b"retry: 1000\n\n")
        self.send("hello", hello)
        for view in views:
            self._stops.append(view.listen(self))
        self._keepalive.start(KEEPALIVE, now=False)

    def send(self, event: str | None, data: dict[str, Any]) -> None:
        head = f"event: {event}\n" if event is not None else ""
        body = json.dumps(data, separators=(",", ":"), sort_keys=True)
        self._write(f"{head}data: {body}\n\n".encode("ascii"))

    def _write(self, data: bytes) -> None:
        if self._done:
            return
        if not self._paused:
            self._request.write(data)
            return
        self._queue.append(data)
        if len(self._queue) > MAX_QUEUED:
            self._finished(None)
            self._request.loseConnection()

    def pauseProducing(self) -> None:
        self._paused = True

    def resumeProducing(self) -> None:
        self._paused = False
        queued, self._queue = self._queue, []
        for data in queued:
            self._write(data)

    def stopProducing(self) -> None:
        self._finished(None)

    def _finished(self, _: object) -> None:
        if self._done:
            return
        self._done = True
        self._queue = []
        if self._keepalive.running:
            self._keepalive.stop()
        for stop in self._stops:
            stop()


class _Events(Resource):
    isLeaf = True

    def __init__(self, dashboard: DashboardResource):
        super().__init__()
        self._dashboard = dashboard

    def render_GET(self, request: Request) -> bytes | int:
        _secure(request)
        try:
            views = self._dashboard.viewsFor(request)
        except _BadQuery as e:
            return _json(request, e.code, {"error": str(e)})
        usage = request.args.get(b"usage", [b"0"])[-1] in (b"1", b"true", b"yes")
        stream = _EventStream(request, usage, self._dashboard.clock)
        hello = {
            "namespaces": [view.namespace for view in views],
            "usage": usage,
            "registry": self._dashboard.registry.url,
        }
        stream.start(views, hello)
        return NOT_DONE_YET


class _Instances:
    """
    C{masse_instances}: the registry's view, counted at each scrape.
    """

    def __init__(self, views: Iterable[NamespaceView]):
        self._views = list(views)

    def _family(self) -> GaugeMetricFamily:
        return GaugeMetricFamily(
            "masse_instances",
            "Live instances in the registry, as this dashboard sees them.",
            labels=["namespace", "name", "health"],
        )

    def describe(self) -> list[Metric]:
        return [self._family()]

    def collect(self) -> Iterator[Metric]:
        counts: Counter[tuple[str, str, str]] = Counter()
        for view in self._views:
            for record in view.members:  # a tuple, replaced whole: safe from this thread
                counts[(record.namespace, record.name, health(record)[0])] += 1
        family = self._family()
        for labels, count in sorted(counts.items()):
            family.add_metric(list(labels), count)
        yield family


class _ProcessMetrics:
    """
    The metrics of this process (C{prometheus_client}'s default registry).
    """

    def collect(self) -> Iterable[Metric]:
        return REGISTRY.collect()


class DashboardResource(Resource):
    """
    The live dashboard of a registry: mount it anywhere in a site.

    It serves the page (C{/}), C{api/peers} (JSON), C{api/events}
    (Server-Sent Events) and C{metrics} (Prometheus: this process's metrics
    and C{masse_instances}). Read-only: nothing it serves changes the
    registry.

    @param namespaces: the namespaces shown (default: the default
        namespace); the registry has no list of them.
    @param refresh: seconds between two reads of the leases' time left,
        while anyone is looking.
    @param hosts: if given, the only C{Host} names answered (any port),
        against DNS rebinding on a loopback listener; L{None}: any.
    """

    def __init__(
        self,
        registry: IRegistry,
        namespaces: Sequence[str] | None = None,
        reactor: Any = None,
        refresh: float = 1.0,
        hosts: Iterable[str] | None = None,
    ):
        super().__init__()
        if reactor is None:
            from twisted.internet import reactor as _reactor

            reactor = _reactor
        if namespaces is None:
            namespaces = [defaultNamespace()]
        if isinstance(namespaces, str) or not namespaces:
            raise ValueError(f"namespaces={namespaces!r}: must be a list of namespaces")
        self.registry = registry
        self.clock: IReactorTime = reactor
        self.namespaces = list(dict.fromkeys(validateName(ns, "namespace") for ns in namespaces))
        self.hosts = None if hosts is None else frozenset(host.lower() for host in hosts)
        self.views = {ns: NamespaceView(registry, ns, reactor, refresh) for ns in self.namespaces}
        self.metricsRegistry = CollectorRegistry()
        self.metricsRegistry.register(_ProcessMetrics())
        self.metricsRegistry.register(_Instances(self.views.values()))
        for path, (filename, contentType) in _STATIC.items():
            body = resources.files("txmasse.web").joinpath("static", filename).read_bytes()
            self.putChild(path, _Static(body, contentType))
        api = Resource()
        api.putChild(b"peers", _Peers(self))
        api.putChild(b"events", _Events(self))
        self.putChild(b"api", api)
        from prometheus_client.twisted import MetricsResource

        self.putChild(b"metrics", MetricsResource(self.metricsRegistry))
        for view in self.views.values():
            view.start()

    def stop(self) -> None:
        """
        Stop watching the registry (it stays open: it is the caller's).
        """
        for view in self.views.values():
            view.stop()

    def getChildWithDefault(self, path: bytes, request: Request) -> IResource:
        if self.hosts is not None:
            host = request.getRequestHostname().decode("ascii", "replace").lower()
            if host not in self.hosts:
                return _Refused(host)
        child: IResource = super().getChildWithDefault(path, request)
        return child

    def render_GET(self, request: Request) -> bytes:
        # Mounted at /x and asked for /x: the page's relative links need /x/.
        body: bytes = Redirect(request.path + b"/").render(request)
        return body

    def viewsFor(self, request: Request) -> list[NamespaceView]:
        """
        The views a request asks for with C{?ns=} (repeatable; default all).
        """
        asked = request.args.get(b"ns", [])
        if not asked:
            return list(self.views.values())
        views = []
        for raw in asked:
            namespace = raw.decode("utf-8", "replace")
            try:
                validateName(namespace, "namespace")
            except ValueError as e:
                raise _BadQuery(400, f"ns: {e}") from None
            view = self.views.get(namespace)
            if view is None:
                raise _BadQuery(
                    404,
                    f"namespace {namespace!r} is not shown here "
                    f"(shown: {', '.join(self.namespaces)})",
                )
            views.append(view)
        return list(dict.fromkeys(views))
