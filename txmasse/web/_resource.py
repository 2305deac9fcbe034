"""
The dashboard as a C{twisted.web} resource: the page, its JSON and event
stream, and the metrics.
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from importlib import resources
from typing import Any

from prometheus_client import CollectorRegistry
from twisted.internet.defer import FirstError, gatherResults
from twisted.internet.interfaces import IReactorTime
from twisted.python.failure import Failure
from twisted.web.resource import IResource, Resource
from twisted.web.server import NOT_DONE_YET, Request
from twisted.web.util import Redirect

from txmasse.errors import RegistryUnavailable
from txmasse.records import validateName
from txmasse.registry import IRegistry, LeaseStatus, defaultNamespace
from txmasse.web._collectors import InstancesCollector, ProcessCollector
from txmasse.web._events import EventsResource
from txmasse.web._http import BadQuery, ViewsResource, jsonBody, secure
from txmasse.web._records import recordJSON
from txmasse.web._view import NamespaceView

_STATIC = {
    b"": ("index.html", b"text/html; charset=utf-8"),
    b"dashboard.js": ("dashboard.js", b"text/javascript; charset=utf-8"),
    b"dashboard.css": ("dashboard.css", b"text/css; charset=utf-8"),
}


class _Static(Resource):
    isLeaf = True

    def __init__(self, body: bytes, contentType: bytes):
        super().__init__()
        self._body = body
        self._type = contentType

    def render_GET(self, request: Request) -> bytes:
        secure(request)
        request.setHeader(b"Content-Type", self._type)
        return self._body


class _Refused(Resource):
    isLeaf = True

    def __init__(self, host: str):
        super().__init__()
        self._host = host

    def render(self, request: Request) -> bytes:
        secure(request)
        request.setResponseCode(403)
        request.setHeader(b"Content-Type", b"text/plain; charset=utf-8")
        return (f"masse web: Host {self._host!r} is not one this dashboard answers to\n").encode(
            "ascii", "backslashreplace"
        )


class _Peers(ViewsResource):
    def renderViews(self, request: Request, views: list[NamespaceView]) -> bytes | int:
        gone: list[bool] = []
        request.notifyFinish().addErrback(lambda _: gone.append(True))

        def finish(code: int, body: object) -> None:
            if not gone:
                request.write(jsonBody(request, code, body))
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
        against DNS rebinding on a loopback listener; C{None}: any.
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
        self.metricsRegistry.register(ProcessCollector())
        self.metricsRegistry.register(InstancesCollector(self.views.values()))
        for path, (filename, contentType) in _STATIC.items():
            body = resources.files("txmasse.web").joinpath("static", filename).read_bytes()
            self.putChild(path, _Static(body, contentType))
        api = Resource()
        api.putChild(b"peers", _Peers(self))
        api.putChild(b"events", EventsResource(self))
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
            # Exactly one Host, and one of ours: Twisted would take the last
            # of several, or its own address for none.
            given = request.requestHeaders.getRawHeaders(b"host") or []
            host = request.getRequestHostname().decode("ascii", "replace").lower()
            if len(given) != 1 or host not in self.hosts:
                shown = b", ".join(given).decode("ascii", "replace") if given else "(none)"
                return _Refused(shown if len(given) != 1 else host)
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
                raise BadQuery(400, f"ns: {e}") from None
            view = self.views.get(namespace)
            if view is None:
                raise BadQuery(
                    404,
                    f"namespace {namespace!r} is not shown here "
                    f"(shown: {', '.join(self.namespaces)})",
                )
            views.append(view)
        return list(dict.fromkeys(views))
