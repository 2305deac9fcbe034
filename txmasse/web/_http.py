"""
What every response of the dashboard shares: its security headers, JSON
bodies, and the error for a bad query.
"""

from __future__ import annotations

import json

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
