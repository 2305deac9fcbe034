"""
Calls to etcd's JSON gateway (C{/v3/...}) with treq: a deadline on every
call, fail-over between the cluster's members, and an auth token.

etcd answers every member's gateway for the whole cluster, so a call that
finds its member down, paused or without a leader is simply made again on
the next member, within the same deadline. The member that answered last
is tried first next time.
"""

from __future__ import annotations

import base64
import json
from collections.abc import Callable, Sequence
from typing import Any

from treq.client import HTTPClient
from twisted.internet.defer import CancelledError, Deferred, DeferredLock, fail, succeed
from twisted.internet.defer import TimeoutError as DeferredTimeout
from twisted.internet.error import ConnectingCancelledError
from twisted.internet.interfaces import IConsumer, IReactorTime
from twisted.internet.protocol import Protocol
from twisted.internet.task import deferLater
from twisted.logger import Logger
from twisted.python.failure import Failure
from twisted.web.client import Agent, HTTPConnectionPool, ResponseDone
from twisted.web.http_headers import Headers
from twisted.web.iweb import IBodyProducer, IPolicyForHTTPS, IResponse
from zope.interface import implementer

from txmasse.checks import isDigits
from txmasse.errors import RegistryUnavailable

log = Logger()

MAX_REPLY = 64 * 1024 * 1024
"""A reply larger than this is refused: garbage, or a range gone wild."""

MAX_STREAM_LINE = 64 * 1024 * 1024

_DONE = Failure(ResponseDone())

RETRY_CODES = {4, 8, 14}
"""gRPC codes that say a member cannot answer now (deadline, busy, no leader): try another."""

AUTH_CODES = {16}
"""gRPC code for an invalid or expired auth token: authenticate again."""


class EtcdError(Exception):
    """
    etcd refused a call: C{code} is the gRPC status code, C{message} its words.
    """

    def __init__(self, code: int, message: str):
        super().__init__(message)
        self.code = code
        self.message = message


class _BadReply(ValueError):
    """
    A member answered with something that is not an etcd reply.
    """


def b64(text: str | bytes) -> str:
    raw = text.encode() if isinstance(text, str) else text
    return base64.b64encode(raw).decode("ascii")


def unb64(value: object) -> bytes:
    """
    The bytes of a base64 field, or C{ValueError} for garbage.
    """
    if not isinstance(value, str):
        raise ValueError(f"expected base64 text, got {type(value).__name__}")
    return base64.b64decode(value, validate=True)


def number(value: object, default: int = 0) -> int:
    """
    An int64 field as the gateway writes it (a string), or C{ValueError}.
    """
    if value is None:
        return default
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if isinstance(value, str) and isDigits(value.removeprefix("-")) and len(value) <= 20:
        return int(value)
    raise ValueError(f"expected a number, got {str(value)[:40]!r}")


def prefixEnd(prefix: bytes) -> bytes:
    """
    The C{range_end} that makes a range read every key starting with C{prefix}.
    """
    end = bytearray(prefix)
    while end:
        if end[-1] < 0xFF:
            end[-1] += 1
            return bytes(end)
        end.pop()
    return b"\0"


def _decode(data: bytes) -> dict[str, Any]:
    try:
        reply = json.loads(data)
    except ValueError:
        raise _BadReply(f"not JSON: {data[:60]!r}") from None
    if not isinstance(reply, dict):
        raise _BadReply(f"not a JSON object: {data[:60]!r}")
    return reply


def _error(reply: dict[str, Any]) -> EtcdError | None:
    """
    The error an etcd reply carries, if it is one.
    """
    if "error" not in reply and "code" not in reply:
        return None
    message = reply.get("message") or reply.get("error") or "error"
    if isinstance(message, dict):  # stream errors: {"error": {"grpc_code": ..., "message": ...}}
        code = message.get("grpc_code", message.get("code", 2))
        message = message.get("message", "error")
    else:
        code = reply.get("code", 2)
    if not isinstance(code, int):
        code = 2
    return EtcdError(code, str(message)[:300])


class EtcdClient:
    """
    Makes calls to one etcd cluster through the JSON gateway of any of its
    members.

    @param endpoints: the members, as C{(host, port)}, in the order to try.
    @param url: the registry's URL without password, for messages.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        endpoints: Sequence[tuple[str, int]],
        url: str,
        timeout: float,
        tls: IPolicyForHTTPS | None = None,
        user: str | None = None,
        password: str | None = None,
    ):
        self._reactor = reactor
        self.url = url
        self.timeout = timeout
        scheme = "https" if tls is not None else "http"
        self.bases = [
            f"{scheme}://{f'[{host}]' if ':' in host else host}:{port}".encode()
            for host, port in endpoints
        ]
        self.current = 0
        self._pool = HTTPConnectionPool(reactor, persistent=True)
        self._pool.retryAutomatically = False  # we fail over, within the deadline
        self._pool.maxPersistentPerHost = 32  # a wheel slot of heartbeats, on kept connections
        if tls is not None:
            agent = Agent(reactor, contextFactory=tls, pool=self._pool, connectTimeout=timeout)
        else:
            agent = Agent(reactor, pool=self._pool, connectTimeout=timeout)
        self._agent = agent
        self._http = HTTPClient(agent)  # for streams; calls go through the Agent itself
        self._user = user
        self._password = password
        self._token: str | None = None
        self._headersFor: tuple[str | None, Headers] = (
            None,
            Headers({b"Content-Type": [b"application/json"]}),
        )
        self._authenticating = DeferredLock()
        self.closed = False
        self.lastError: str | None = None

    # Calls

    def call(self, path: str, body: dict[str, Any], what: str) -> Deferred[dict[str, Any]]:
        """
        POST C{body} to C{path} on a member that answers, within the
        deadline; fire with etcd's reply.

        @raise RegistryUnavailable: no member answered in time.
        @raise EtcdError: etcd refused the call.
        """
        if self.closed:
            return fail(RegistryUnavailable(f"registry {self.url} is closed"))
        data = json.dumps(body).encode()
        if self._user is None or self._token is not None:
            # The usual case, kept short: one attempt on the member that answered last.
            start = self._reactor.seconds()
            index = self.current
            attempt = self._attempt(index, path, data, self._attemptTimeout(self.timeout))
            cancelled: list[bool] = []

            def cancel(_: object) -> None:
                cancelled.append(True)
                attempt.cancel()

            outer: Deferred[dict[str, Any]] = Deferred(cancel)

            def passOn(result: object) -> None:
                if cancelled:
                    return  # cancel() fails outer with CancelledError
                if isinstance(result, Failure):
                    outer.errback(result)
                else:
                    outer.callback(result)  # type: ignore[arg-type]

            attempt.addErrback(self._again, index, path, data, what, start, cancelled)
            attempt.addBoth(passOn)
            return outer
        return Deferred.fromCoroutine(self._calls(path, data, what, self._reactor.seconds()))

    def _attemptTimeout(self, remaining: float) -> float:
        if len(self.bases) == 1:
            return remaining
        return min(remaining, self.timeout / 2)

    def _again(
        self,
        failure: Failure,
        index: int,
        path: str,
        data: bytes,
        what: str,
        start: float,
        cancelled: list[bool],
    ) -> Deferred[dict[str, Any]] | Failure:
        if cancelled or not self._retryable(failure, index):
            return self._unavailable(failure, what)
        return Deferred.fromCoroutine(
            self._calls(path, data, what, start, tried=1, lastError=failure)
        )

    async def _calls(
        self,
        path: str,
        data: bytes,
        what: str,
        start: float,
        tried: int = 0,
        lastError: Failure | None = None,
    ) -> dict[str, Any]:
        while True:
            remaining = start + self.timeout - self._reactor.seconds()
            if self.closed:
                raise RegistryUnavailable(f"registry {self.url} is closed")
            if remaining <= 0:
                failure = lastError or Failure(DeferredTimeout())
                raise _exception(self._unavailable(failure, what, timedOut=True))
            if tried and tried % len(self.bases) == 0:
                # Every member failed fast: pause a little before the next round.
                await deferLater(self._reactor, min(0.05, remaining))
                remaining = start + self.timeout - self._reactor.seconds()
                if remaining <= 0:
                    continue
            index = self.current
            try:
                if self._user is not None and self._token is None:
                    await self._authenticate(index, remaining)
                return await self._attempt(index, path, data, self._attemptTimeout(remaining))
            except Exception:
                failure = Failure()
                if self.closed or not self._retryable(failure, index):
                    raise _exception(self._unavailable(failure, what)) from None
                lastError = failure
                tried += 1

    def _retryable(self, failure: Failure, index: int) -> bool:
        """
        Whether the call may be made again (on the next member); moves on
        to the next member when this one could not answer.
        """
        if failure.check(CancelledError):
            return False  # by the caller (a timeout of ours is a TimeoutError)
        if failure.check(EtcdError):
            code = failure.value.code  # type: ignore[union-attr]
            if code in AUTH_CODES and self._user is not None:
                self._token = None
                return True
            if code not in RETRY_CODES:
                return False
        elif failure.check(_BadReply):
            pass
        elif not failure.check(Exception) or failure.check(ValueError, TypeError):
            return False
        why = reason(failure)
        if why != NO_ANSWER or not self.lastError:  # keep what says more
            self.lastError = f"{self.memberName(index)}: {why}"
        if self.current == index:
            self.current = (index + 1) % len(self.bases)
        return True

    def memberName(self, index: int) -> str:
        return self.bases[index].decode().partition("://")[2]

    def _unavailable(self, failure: Failure, what: str, timedOut: bool = False) -> Failure:
        if failure.check(RegistryUnavailable, CancelledError):
            return failure
        if failure.check(EtcdError) and not timedOut:
            error = failure.value
            if error.code not in RETRY_CODES:  # type: ignore[union-attr]
                return failure
        why = reason(failure)
        if timedOut:
            why = f"no answer within {self.timeout:g}s (last error: {self.lastError or why})"
        return Failure(RegistryUnavailable(f"registry {self.url}: {what} failed: {why}"))

    def _headers(self) -> Headers:
        """
        The request headers (Agent copies them before it adds its own).
        """
        token, headers = self._headersFor
        if token != self._token:
            headers = Headers({b"Content-Type": [b"application/json"]})
            if self._token is not None:
                headers.setRawHeaders(b"Authorization", [self._token.encode()])
            self._headersFor = (self._token, headers)
        return headers

    def _attempt(
        self, index: int, path: str, data: bytes, timeout: float
    ) -> Deferred[dict[str, Any]]:
        # Straight through the Agent: treq's URL parsing and cookie handling
        # cost about a third of a loopback round trip (bench/etcd.py).
        d: Deferred[Any] = self._agent.request(
            b"POST", self.bases[index] + path.encode(), self._headers(), BytesBody(data)
        )
        d.addCallback(_readReply)
        d.addTimeout(timeout, self._reactor)
        d.addCallback(self._answered, index)
        return d

    def _answered(self, reply: dict[str, Any], index: int) -> dict[str, Any]:
        error = _error(reply)
        if error is not None:
            raise error
        self.current = index
        self.lastError = None
        return reply

    async def _authenticate(self, index: int, remaining: float) -> None:
        """
        Get a token for the user (one request however many calls wait).
        """
        async with self._authenticating:
            if self._token is not None:
                return  # another call got one meanwhile
            body = json.dumps({"name": self._user, "password": self._password}).encode()
            await self._getToken(index, body, self._attemptTimeout(remaining))

    async def _getToken(self, index: int, body: bytes, timeout: float) -> None:
        reply = await self._attempt(index, "/v3/auth/authenticate", body, timeout)
        token = reply.get("token")
        if not isinstance(token, str) or not token:
            raise _BadReply("authentication gave no token")
        self._token = token

    def tokenRejected(self) -> None:
        """
        etcd refused our token (expired): get a new one on the next call.
        """
        self._token = None

    def member(self, index: int, path: str, body: dict[str, Any]) -> Deferred[dict[str, Any]]:
        """
        One attempt at a call on member C{index} only, within the deadline.
        """

        async def once() -> dict[str, Any]:
            if self._user is not None and self._token is None:
                await self._authenticate(index, self.timeout)
            return await self._attempt(index, path, json.dumps(body).encode(), self.timeout)

        return Deferred.fromCoroutine(once())

    # Streams

    def stream(
        self,
        index: int,
        path: str,
        body: dict[str, Any],
        received: Callable[[dict[str, Any]], None],
    ) -> Deferred[Stream]:
        """
        Open a streaming call (a watch) on member C{index}: C{received} is
        called with each message; fires once the member answers.
        """

        async def open() -> Stream:
            if self._user is not None and self._token is None:
                await self._authenticate(index, self.timeout)
            response = await self._http.post(
                self.bases[index] + path.encode(),
                data=json.dumps(body).encode(),
                headers=self._headers(),
                unbuffered=True,
            )
            if response.code != 200:
                reply = await _readReply(response)
                error = _error(reply)
                if error is not None and error.code in AUTH_CODES:
                    self.tokenRejected()
                raise error or _BadReply(f"HTTP {response.code}")
            lines = _Lines(received)
            response.deliverBody(lines)
            return Stream(lines)

        d = Deferred.fromCoroutine(open())
        d.addTimeout(self.timeout, self._reactor)
        return d

    def close(self) -> Deferred[None]:
        self.closed = True
        d: Deferred[None] = self._pool.closeCachedConnections()
        return d


def _exception(failure: Failure) -> BaseException:
    error = failure.value
    assert isinstance(error, BaseException)
    return error


NO_ANSWER = "no answer in time"


def reason(failure: Failure) -> str:
    """
    Why a call failed, in a few words.
    """
    if failure.check(DeferredTimeout, CancelledError, ConnectingCancelledError):
        return NO_ANSWER
    error = failure.value
    reasons = getattr(error, "reasons", None)  # ResponseNeverReceived and friends
    if reasons:
        return "; ".join(reason(r) for r in reasons if isinstance(r, Failure))[:300]
    return (failure.getErrorMessage() or type(error).__name__)[:300]


def _readReply(response: IResponse) -> Deferred[dict[str, Any]]:
    """
    The JSON object a member answered with (error replies included).
    """
    if response.length is not None and isinstance(response.length, int):
        if response.length > MAX_REPLY:
            raise _BadReply(f"reply of {response.length} bytes is too large")
    d: Deferred[bytes] = Deferred()
    response.deliverBody(_Reply(d))
    return d.addCallback(_decode)


@implementer(IBodyProducer)
class BytesBody:
    """
    A request body in memory (Twisted's C{FileBodyProducer} goes through a
    cooperator: a turn of the reactor more for every call).
    """

    def __init__(self, data: bytes):
        self._data = data
        self.length = len(data)

    def startProducing(self, consumer: IConsumer) -> Deferred[None]:
        consumer.write(self._data)
        return succeed(None)

    def pauseProducing(self) -> None:
        pass

    def resumeProducing(self) -> None:
        pass

    def stopProducing(self) -> None:
        pass


class _Reply(Protocol):
    def __init__(self, done: Deferred[bytes]):
        self._done = done
        self._chunks: list[bytes] = []
        self._size = 0

    def dataReceived(self, data: bytes) -> None:
        self._size += len(data)
        if self._size > MAX_REPLY:
            self._chunks = []
            if self.transport is not None:
                self.transport.stopProducing()  # type: ignore[attr-defined]
            return
        self._chunks.append(data)

    def connectionLost(self, reason: Failure = _DONE) -> None:
        if self._size > MAX_REPLY:
            self._done.errback(_BadReply(f"reply of more than {MAX_REPLY} bytes"))
        elif reason.check(ResponseDone):
            self._done.callback(b"".join(self._chunks))
        else:
            self._done.errback(reason)


class Stream:
    """
    An open streaming call: C{ended} fires when it ends; L{close} ends it.
    """

    def __init__(self, lines: _Lines):
        self._lines = lines
        self.ended = lines.ended

    def close(self) -> None:
        self._lines.close()


class _Lines(Protocol):
    """
    A streaming reply: one JSON message a line.
    """

    def __init__(self, received: Callable[[dict[str, Any]], None]):
        self._received = received
        self.ended: Deferred[None] = Deferred()
        self._buffer = b""
        self._closed = False

    def close(self) -> None:
        self._closed = True
        if self.transport is not None:
            self.transport.stopProducing()  # type: ignore[attr-defined]

    def dataReceived(self, data: bytes) -> None:
        if self._closed:
            return
        self._buffer += data
        *lines, self._buffer = self._buffer.split(b"\n")
        if len(self._buffer) > MAX_STREAM_LINE:
            log.warn("etcd stream: a message of more than {n} bytes; closing", n=MAX_STREAM_LINE)
            self.close()
            return
        for line in lines:
            if self._closed:
                return
            if not line.strip():
                continue
            try:
                message = _decode(line)
            except _BadReply as e:
                log.warn("etcd stream: skipping a message that is {error}", error=str(e))
                continue
            try:
                self._received(message)
            except Exception:
                log.failure("etcd stream: handling a message failed")

    def connectionLost(self, reason: Failure = _DONE) -> None:
        self._closed = True
        if not self.ended.called:
            self.ended.callback(None)
