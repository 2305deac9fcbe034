"""
What every response of the dashboard shares: its security headers, JSON
bodies, the error for a bad query, and the reading of the namespaces a
query asks for.
"""

from __future__ import annotations

import json
from typing import Any, Protocol

from twisted.web.resource import Resource
from twisted.web.server import Request

HEADERS = {
    b"Content-Security-Policy": (
        b"default-src 'none'; script-src 'self'; style-src 'self'; connect-src 'self'; "
        b"img-src 'self'; base-uri 'none'; form-action 'none'; frame-ancestors 'none'"
    ),
    b"X-Content-Type-Options": b"nosniff",
    b"Referrer-Policy": b"no-referrer",
    b"Cache-Control": b"no-store",
}
"""Only the page's own script and style run; nothing is cached or framed."""


def secure(request: Request) -> None:
    for name, value in HEADERS.items():
        request.setHeader(name, value)


def jsonBody(request: Request, code: int, body: object) -> bytes:
    request.setResponseCode(code)
    request.setHeader(b"Content-Type", b"application/json")
    return json.dumps(body, sort_keys=True).encode("ascii")


class BadQuery(Exception):
    """
    A query the dashboard refuses, with the HTTP status to answer.
    """

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code


class _Views(Protocol):
    def viewsFor(self, request: Request) -> list[Any]: ...


class ViewsResource(Resource):
    """
    A leaf answering C{GET} for the namespaces its query names (the
    dashboard's C{viewsFor}): a bad query is answered here, with its
    status and message; L{renderViews} answers the rest.
    """

    isLeaf = True

    def __init__(self, dashboard: _Views):
        super().__init__()
        self._dashboard = dashboard

    def render_GET(self, request: Request) -> bytes | int:
        secure(request)
        try:
            views = self._dashboard.viewsFor(request)
        except BadQuery as e:
            return jsonBody(request, e.code, {"error": str(e)})
        return self.renderViews(request, views)

    def renderViews(self, request: Request, views: list[Any]) -> bytes | int:
        raise NotImplementedError
