"""
Redis behind Sentinel: an endpoint that asks the sentinels where the master
is each time it connects.

L{RedisRegistry}'s L{ClientService<twisted.application.internet.ClientService>}
reconnects through this endpoint, so after
a failover it reaches the new master with no help from the registry. A
sentinel may still name a master that has just been demoted: each new
connection checks C{ROLE} and refuses a replica, and the service tries again.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

from twisted.internet.defer import Deferred
from twisted.internet.endpoints import wrapClientTLS
from twisted.internet.interfaces import (
    IOpenSSLClientConnectionCreator,
    IReactorTime,
    IStreamClientEndpoint,
)
from twisted.internet.protocol import Factory, Protocol, connectionDone
from twisted.logger import Logger
from twisted.python.failure import Failure
from zope.interface import implementer

from txmasse._tcp import tcpEndpoint

log = Logger()

MAX_REPLY = 64 * 1024

ANSWER_GRACE = 0.2
"""
Seconds the other sentinels have to answer once one has: a sentinel that is
slow or paused must not hold up every connection for the whole deadline.
"""

MAJORITY_GRACE = 0.02
"""...and once most of them have answered, only this long."""


class _Incomplete(Exception):
    """
    More bytes are needed to read the reply.
    """


def _command(*args: str) -> bytes:
    out = [b"*%d\r\n" % len(args)]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


def _parse(data: bytes, start: int = 0) -> tuple[Any, int]:
    """
    One RESP2 reply (error, integer, status, bulk string or array) at
    C{start}, and where it ends.

    @raise _Incomplete: if C{data} stops before the reply does.
    @raise ValueError: if it is not a reply.
    """
    end = data.find(b"\r\n", start)
    if end < 0:
        raise _Incomplete()
    kind, body, after = data[start : start + 1], data[start + 1 : end], end + 2
    if kind in (b"+", b"-"):
        return (body if kind == b"+" else RuntimeError(body.decode("utf-8", "replace"))), after
    size = int(body)  # ValueError on garbage
    if kind == b":":
        return size, after
    if kind == b"$":
        if size < 0:
            return None, after
        if len(data) < after + size + 2:
            raise _Incomplete()
        return data[after : after + size], after + size + 2
    if kind == b"*":
        if size < 0:
            return None, after
        items = []
        for _ in range(size):
            item, after = _parse(data, after)
            items.append(item)
        return items, after
    raise ValueError(f"not a Redis reply: {data[start:end][:40]!r}")


class _Question(Protocol):
    """
    Send a few commands at once, read their replies, hang up: the answer is
    the first error among them, else the last reply.
    """

    def __init__(self, *commands: bytes):
        self.commands = commands
        self.buffer = b""
        self.answer: Deferred[Any] = Deferred()

    def connectionMade(self) -> None:
        self.transport.write(b"".join(self.commands))  # type: ignore[union-attr]

    def dataReceived(self, data: bytes) -> None:
        self.buffer += data
        replies: list[Any] = []
        start = 0
        try:
            while len(replies) < len(self.commands):
                reply, start = _parse(self.buffer, start)
                replies.append(reply)
        except _Incomplete:
            if len(self.buffer) > MAX_REPLY:
                self._done(Failure(ValueError("reply too long")))
            return
        except ValueError as e:
            self._done(Failure(e))
            return
        errors = [reply for reply in replies if isinstance(reply, Exception)]
        self._done(errors[0] if errors else replies[-1])

    def _done(self, result: object) -> None:
        self.transport.loseConnection()  # type: ignore[union-attr]
        if not self.answer.called:
            if isinstance(result, Failure):
                self.answer.errback(result)
            else:
                self.answer.callback(result)

    def connectionLost(self, reason: Failure = connectionDone) -> None:
        if not self.answer.called:
            self.answer.errback(reason)


class NotMaster(ConnectionError):
    """
    The server a sentinel named is not (or no longer) the master.
    """


@implementer(IStreamClientEndpoint)
class SentinelEndpoint:
    """
    Connects to the current master of C{master}, as the sentinels tell.

    @param sentinels: C{(host, port)} of each sentinel, all asked at once;
        the answer with the newest configuration epoch is taken.
    @param timeout: deadline for each sentinel's answer and for the
        connection to the master, in seconds.
    @param username: the sentinels' own ACL user, if any.
    @param password: the sentinels' own password (C{requirepass}), if any;
        the master's comes with the registry's connection.
    @param tls: if given, speak TLS to the sentinels and the master, with
        the client options it makes for the host reached.
    """

    def __init__(
        self,
        reactor: IReactorTime,
        sentinels: Sequence[tuple[str, int]],
        master: str,
        timeout: float = 2.0,
        username: str | None = None,
        password: str | None = None,
        tls: Callable[[str], IOpenSSLClientConnectionCreator] | None = None,
    ):
        self._reactor = reactor
        self._sentinels = list(sentinels)
        self._master = master
        self._timeout = timeout
        self._auth: tuple[bytes, ...] = ()
        if password is not None:
            self._auth = (_command("AUTH", *((username,) if username else ()), password),)
        self._tls = tls

    def __repr__(self) -> str:
        where = ",".join(f"{host}:{port}" for host, port in self._sentinels)
        return f"<SentinelEndpoint {self._master} via {where}>"

    def connect(self, protocolFactory: Any) -> Deferred[Any]:
        return Deferred.fromCoroutine(self._connect(protocolFactory))

    async def _connect(self, protocolFactory: Any) -> Any:
        host, port = await self.masterAddress()
        return await self._endpoint(host, port).connect(protocolFactory)

    def _endpoint(self, host: str, port: int) -> IStreamClientEndpoint:
        endpoint = tcpEndpoint(self._reactor, host, port, timeout=self._timeout)
        if self._tls is None:
            return endpoint
        return wrapClientTLS(self._tls(host), endpoint)

    async def masterAddress(self) -> tuple[str, int]:
        """
        The master's address, from every sentinel at once: the one whose
        configuration epoch is newest wins. Just after a failover only the
        leader may know the new master while the others still name the old
        one, so the first to answer is not enough.

        @raise ConnectionError: if none knows it, with each sentinel's reason.
        """
        asked = [Deferred.fromCoroutine(self._answer(host, port)) for host, port in self._sentinels]
        answers = await _firstThenOthers(self._reactor, asked, ANSWER_GRACE)
        best: tuple[int, str, int] | None = None
        reasons: list[str] = []
        for (host, port), answer in zip(self._sentinels, answers, strict=True):
            if answer is None:
                reasons.append(f"{host}:{port}: no answer within {ANSWER_GRACE:g}s of the first")
            elif isinstance(answer, Failure):
                reasons.append(f"{host}:{port}: {answer.getErrorMessage()}")
            elif best is None or answer[0] > best[0]:
                best = answer
        if best is None:
            raise ConnectionError(
                f"no sentinel gave master {self._master!r}: {'; '.join(reasons)}"
            )
        return best[1], best[2]

    async def _answer(self, host: str, port: int) -> tuple[int, str, int]:
        """
        What the sentinel at C{host}:C{port} says: the configuration epoch
        of its view (-1 if it does not tell), and the master's address.
        """
        reply = await self._ask(host, port, "master")
        if isinstance(reply, Exception) and "NOPERM" in str(reply):
            # A sentinel ACL user allowed only the address: no epoch then.
            reply = await self._ask(host, port, "get-master-addr-by-name")
        if isinstance(reply, Exception):
            if "No such master" in str(reply):
                raise LookupError(f"does not know master {self._master!r}")
            raise reply
        if not isinstance(reply, list) or not reply:
            raise LookupError(f"does not know master {self._master!r}")
        if len(reply) == 2:  # an address only (get-master-addr-by-name's form)
            return -1, reply[0].decode("ascii"), int(reply[1])
        fields = dict(zip(reply[::2], reply[1::2], strict=False))
        try:
            epoch = int(fields.get(b"config-epoch", b"-1"))
            return epoch, fields[b"ip"].decode("ascii"), int(fields[b"port"])
        except (KeyError, ValueError, UnicodeDecodeError):
            raise ValueError(f"unexpected answer about master {self._master!r}") from None

    async def _ask(self, host: str, port: int, subcommand: str) -> Any:
        question = _Question(*self._auth, _command("SENTINEL", subcommand, self._master))
        factory = Factory.forProtocol(lambda: question)
        factory.noisy = False  # no "Starting factory" for every question
        d = self._endpoint(host, port).connect(factory)
        d.addCallback(lambda _: question.answer)
        d.addTimeout(self._timeout, self._reactor)
        try:
            return await d
        finally:
            if question.transport is not None:
                question.transport.abortConnection()  # type: ignore[attr-defined]

    def checkConnection(self, protocol: Any) -> Deferred[None]:
        """
        Refuse a connection to a replica (a sentinel's stale answer), so
        that nothing is written there; the registry reconnects.
        """

        def checked(reply: Any) -> None:
            role = reply[0] if isinstance(reply, list) and reply else reply
            if role != b"master":
                log.info(
                    "sentinel master {master!r}: {peer} is not the master (role {role!r}); "
                    "asking the sentinels again",
                    master=self._master,
                    peer=str(protocol.transport.getPeer()),
                    role=role,
                )
                raise NotMaster(f"the server named for master {self._master!r} is a replica")

        def notAllowed(failure: Failure) -> None:
            # ROLE is an @admin command: a restricted ACL user may not run
            # it. Redis still refuses writes on a replica, and a READONLY
            # reply drops the connection.
            if "NOPERM" not in str(failure.value):
                failure.raiseException()
            log.info(
                "sentinel master {master!r}: not allowed to check ROLE ({error}); "
                "relying on READONLY replies",
                master=self._master,
                error=failure.getErrorMessage(),
            )

        d: Deferred[None] = protocol.execute_command("ROLE")
        return d.addCallbacks(checked, notAllowed)


async def _firstThenOthers(
    reactor: IReactorTime, asked: list[Deferred[Any]], grace: float
) -> list[Any]:
    """
    The result (or L{Failure}) of each of C{asked}, waiting for all of them
    but no longer than C{grace} seconds after the first success, nor more
    than a moment once most have answered; C{None} for those still out then
    (they are cancelled).
    """
    results: list[Any] = [None] * len(asked)
    done: Deferred[None] = Deferred()
    left, answered, majority = len(asked), 0, len(asked) // 2 + 1
    timers: list[Any] = []

    def finish() -> None:
        if not done.called:
            done.callback(None)

    def settled(result: Any, index: int) -> None:
        nonlocal left, answered
        results[index] = result
        left -= 1
        if not isinstance(result, Failure):
            answered += 1
            if answered == 1:
                timers.append(reactor.callLater(grace, finish))
            if answered == majority:
                timers.append(reactor.callLater(MAJORITY_GRACE, finish))
        if left == 0:
            finish()

    for index, d in enumerate(asked):
        d.addBoth(settled, index)
    if not asked:
        finish()
    await done
    for timer in timers:
        if timer.active():
            timer.cancel()
    final = list(results)
    for index, d in enumerate(asked):
        if final[index] is None:
            d.cancel()
    return final


def _describe(error: BaseException) -> str:
    return str(error) or type(error).__name__
