"""
C{api/events}: the dashboard's Server-Sent Events, one stream per reader.
"""

from __future__ import annotations

import json
from collections.abc import Callable, Sequence
from typing import Any, Protocol

from twisted.internet.interfaces import IPushProducer, IReactorTime
from twisted.internet.task import LoopingCall
from twisted.web.server import NOT_DONE_YET, Request
from zope.interface import implementer

from txmasse.registry import IRegistry
from txmasse.web._http import ViewsResource
from txmasse.web._view import NamespaceView

KEEPALIVE = 15.0
MAX_QUEUED = 1000
"""Messages kept for a stream whose reader is not keeping up; past that it
is closed, and its browser reconnects to a fresh snapshot."""


class Dashboard(Protocol):
    registry: IRegistry
    clock: IReactorTime

    def viewsFor(self, request: Request) -> list[NamespaceView]: ...


@implementer(IPushProducer)
class EventStream:
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


class EventsResource(ViewsResource):
    def __init__(self, dashboard: Dashboard):
        super().__init__(dashboard)
        self._dashboard: Dashboard = dashboard

    def renderViews(self, request: Request, views: list[NamespaceView]) -> bytes | int:
        usage = request.args.get(b"usage", [b"0"])[-1] in (b"1", b"true", b"yes")
        stream = EventStream(request, usage, self._dashboard.clock)
        hello = {
            "namespaces": [view.namespace for view in views],
            "usage": usage,
            "registry": self._dashboard.registry.url,
        }
        stream.start(views, hello)
        return NOT_DONE_YET
